//! `lifeboat check`: one line for a monitoring system (Nagios plugin conventions: exit 0
//! OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; `LIFEBOAT STATE - summary | perfdata`), or one
//! JSON document with `--json`. On the database host it also reads the streamer's status
//! file; anywhere else it judges the archive alone (read credentials suffice).

use super::{print_json, Ctx, Failure};
use crate::archive::Archive;
use crate::core::check::{
    self, Figures, Limits, ProviderFigures, State, StreamFigures, Thresholds,
};
use crate::core::plan::Timestamp;
use crate::core::retention::backup_id_time;
use crate::ingest::{health, status};

#[derive(clap::Args)]
pub struct Args {
    /// The Nagios plugin line (the default output; accepted for explicitness).
    #[arg(long)]
    nagios: bool,
    /// Warn when a provider's newest WAL is this old (critical at --wal-crit).
    #[arg(long, value_name = "DUR", default_value = "5m")]
    wal_warn: String,
    #[arg(long, value_name = "DUR", default_value = "15m")]
    wal_crit: String,
    /// Warn when the newest restorable backup ended this long ago (critical at --backup-crit).
    #[arg(long, value_name = "DUR", default_value = "26h")]
    backup_warn: String,
    #[arg(long, value_name = "DUR", default_value = "50h")]
    backup_crit: String,
    /// Warn when the last restore drill is this old.
    #[arg(long, value_name = "DUR", default_value = "100days")]
    drill_warn: String,
}

fn secs(flag: &str, s: &str) -> Result<u64, Failure> {
    Ok(super::parse_duration_arg(flag, s)?.as_secs())
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let _ = a.nagios;
    let t = Thresholds {
        wal_age: Limits {
            warn: secs("--wal-warn", &a.wal_warn)?,
            crit: Some(secs("--wal-crit", &a.wal_crit)?),
        },
        backup_age: Limits {
            warn: secs("--backup-warn", &a.backup_warn)?,
            crit: Some(secs("--backup-crit", &a.backup_crit)?),
        },
        drill_age: Limits {
            warn: secs("--drill-warn", &a.drill_warn)?,
            crit: None,
        },
    };
    let verdict = match figures(ctx).await {
        Ok(f) => check::judge_figures(&f, &t),
        Err(e) => check::Verdict {
            state: State::Unknown,
            problems: vec![format!("{e:#}").replace('\n', "; ")],
            perfdata: Vec::new(),
        },
    };
    if ctx.json() {
        print_json(&serde_json::json!({
            "state": verdict.state,
            "code": verdict.state.code(),
            "problems": verdict.problems,
            "perfdata": verdict.perfdata,
            "line": verdict.line(),
        }))?;
    } else {
        println!("{}", verdict.line());
    }
    match verdict.state.code() {
        0 => Ok(()),
        code => Err(Failure {
            code,
            err: anyhow::anyhow!("check: {}", verdict.state.word()),
            quiet: true,
        }),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn age_of(t: Timestamp, now: u64) -> u64 {
    now.saturating_sub(t.0.div_euclid(1_000_000).max(0) as u64)
}

/// The figures: the streamer's status file where there is one, and the archive.
async fn figures(ctx: &Ctx<'_>) -> anyhow::Result<Figures> {
    let now = now_secs();
    let archive = Archive::open(&ctx.cfg)?;
    let stream = status::read(&ctx.cfg.wal.spool_dir).map(|st| StreamFigures {
        alive: health::streamer_alive(&st, now),
        connected: st.connected,
        acknowledging: st.delivery.acknowledging,
        lag_bytes: st.received.0.saturating_sub(st.acknowledged.0),
        spool_bytes: st.delivery.spool_held,
        spool_limit: st.delivery.spool_limit,
        down: st
            .delivery
            .providers
            .iter()
            .filter(|p| !p.up)
            .map(|p| p.name.clone())
            .collect(),
        error: st.error.clone(),
    });
    let mut providers = Vec::new();
    for p in &archive.mirror.providers {
        let (error, wal_age) = match p.list("wal/").await {
            Ok(l) => (
                None,
                l.iter()
                    .filter_map(|o| o.modified)
                    .max()
                    .map(|m| age_of(Timestamp::from_system_time(m), now)),
            ),
            Err(e) => (Some(e.message.clone()), None),
        };
        providers.push(ProviderFigures {
            name: p.name().to_string(),
            error,
            wal_age,
        });
    }
    let summary = crate::archive::summary::run(&archive, None).await?;
    let backup = summary
        .backups
        .iter()
        .filter(|b| b.restorable)
        .max_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)))
        .and_then(|b| {
            Timestamp::parse_utc(&b.end_time)
                .ok()
                .map(|t| (b.id.clone(), age_of(t, now)))
        });
    let drill = summary
        .last_drill
        .as_ref()
        .and_then(|d| backup_id_time(&d.id).map(|t| (d.id.clone(), age_of(t, now), d.ok)));
    Ok(Figures {
        providers,
        backup,
        drill,
        stream,
    })
}
