//! `lifeboat status`: is this host's archiving healthy? Exit 0 healthy, 1 degraded,
//! 2 failing (also when status cannot run at all: monitoring reads 1 as degraded).

use super::{print_json, Ctx, Failure};
use crate::archive::Archive;
use crate::ingest::custody;
use crate::ingest::health::{self, Report};

pub async fn run(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let archive = Archive::open(&ctx.cfg).map_err(|e| Failure {
        code: 2,
        err: e,
        quiet: false,
    })?;
    let schedule = ctx.cfg.schedule.clone().unwrap_or_default();
    let mut report = health::run(
        &ctx.cfg.wal.spool_dir,
        &archive,
        ctx.cfg.retention.prune_interval,
        schedule.drill,
        schedule.rto_target,
        &health::Scope {
            postgres: ctx.cfg.has_postgres || ctx.cfg.sqlite.is_empty(),
            sqlite: &ctx
                .cfg
                .sqlite
                .iter()
                .map(|d| health::SqliteDb {
                    name: d.name.clone(),
                    every: d.interval(ctx.cfg.schedule.as_ref()),
                })
                .collect::<Vec<_>>(),
        },
    )
    .await;
    // Key custody: no identity that decrypts the archive on this host; the last key check
    // a drill recorded.
    let scan = custody::scan(&ctx.cfg, &ctx.cfg_path);
    let drills = archive.drills().await.unwrap_or_default();
    let last = drills
        .iter()
        .rev()
        .find_map(|d| d.key_check.as_ref().map(|k| (d.id.as_str(), k)));
    let now = std::time::SystemTime::now();
    let last = last.map(|(id, k)| {
        let age = humantime::parse_rfc3339(&k.checked_at)
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0, |d| d.as_secs());
        (id, k, age)
    });
    for c in custody::status_checks(&scan, last) {
        report.push(c);
    }
    if ctx.json() {
        print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    match report.level().exit_code() {
        0 => Ok(()),
        code => Err(Failure {
            code,
            err: anyhow::anyhow!("status: {}", report.status),
            quiet: true,
        }),
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for c in &r.checks {
        // A hint goes on its own line, under the message.
        s.push_str(&format!(
            "{:<9} {:<9} {}\n",
            c.status.word(),
            c.check,
            c.message.replace('\n', "\n                    ")
        ));
    }
    s.push_str(&format!("{}\n", r.status));
    s
}
