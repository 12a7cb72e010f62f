//! `lifeboat schedule`: the jobs the daemon runs by itself (`[schedule]`), when each last
//! succeeded or failed and when it is next due (`--now` for another moment); `--run` runs
//! the schedule without a streamer (the restore host: drills, prune).

use serde::Serialize;

use super::{print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::core::plan::Timestamp;
use crate::core::schedule;
use crate::ingest::schedule as engine;

#[derive(clap::Args)]
pub struct Args {
    /// Show what would be due at this time (UTC, e.g. 2026-12-24T03:00:00Z) instead of now.
    #[arg(long, value_name = "TIME", conflicts_with = "run")]
    now: Option<String>,
    /// Run the scheduled jobs until stopped (SIGTERM/SIGINT), without streaming.
    #[arg(long)]
    run: bool,
}

#[derive(Serialize)]
struct JobReport {
    job: String,
    every: String,
    last_success: Option<String>,
    last_failure: Option<String>,
    next_due: Option<String>,
    due: bool,
}

#[derive(Serialize)]
struct Report {
    at: String,
    jobs: Vec<JobReport>,
    /// What is not scheduled on this host, and why.
    notes: Vec<String>,
    /// The newest recorded run of each job.
    last_runs: Vec<engine::Run>,
    /// With `rto_target`: the estimate now and what the budget asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    rto: Option<RtoReport>,
}

#[derive(Serialize)]
struct RtoReport {
    target: String,
    /// within, backup (the schedule takes one), wait, or unreachable.
    decision: &'static str,
    estimate: crate::core::rto::Estimate,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    if ctx.cfg.schedule.is_none() {
        return Err(usage(format!(
            "{} has no [schedule] section: nothing is scheduled\nhint: add [schedule] (the defaults: a base backup daily, a drill quarterly, verify weekly); lifeboat init writes one",
            ctx.cfg_name()
        )));
    }
    if a.run {
        let _metrics = match ctx.cfg.metrics.listen {
            Some(addr) => Some(crate::ingest::metrics::start(addr, &ctx.cfg).await?),
            None => None,
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        engine::run(ctx.cfg.clone(), super::absolute(&ctx.cfg_path), rx).await?;
        return Ok(());
    }
    let now = match &a.now {
        Some(s) => Timestamp::parse_utc(s).map_err(|e| {
            usage(format!(
                "--now: {e}\nhint: a UTC time like 2026-12-24T03:00:00Z"
            ))
        })?,
        None => Timestamp::from_system_time(std::time::SystemTime::now()),
    };
    let archive = Archive::open(&ctx.cfg)?;
    let (jobs, notes) = engine::jobs(&ctx.cfg, engine::identity_here(&ctx.cfg));
    let rec = engine::read_record(&ctx.cfg.wal.spool_dir);
    let known = engine::seen(&archive, &rec, &jobs).await;
    let seed = engine::seed(&archive).await;
    let rto = match ctx.cfg.schedule.as_ref().and_then(|s| s.rto_target) {
        None => None,
        Some(target) => {
            use crate::core::rto::Decision;
            match engine::rto_decision(&archive, &ctx.cfg.wal.spool_dir, target).await {
                Ok((d, estimate)) => Some(RtoReport {
                    target: crate::core::fmt::interval(target),
                    decision: match d {
                        Decision::Within => "within",
                        Decision::Backup => "backup",
                        Decision::Wait => "wait",
                        Decision::Unreachable => "unreachable",
                    },
                    estimate,
                }),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "no RTO estimate");
                    None
                }
            }
        }
    };
    let report = Report {
        at: now.rfc3339(),
        jobs: known
            .iter()
            .map(|(spec, seen)| {
                let next = schedule::next_due(spec, seen, seed);
                JobReport {
                    job: spec.name.clone(),
                    every: crate::core::fmt::interval(spec.every),
                    last_success: seen.last_success.map(|t| t.rfc3339()),
                    last_failure: seen.last_failure.map(|t| t.rfc3339()),
                    next_due: (next.0 != i64::MIN).then(|| next.rfc3339()),
                    due: next <= now,
                }
            })
            .collect(),
        notes,
        last_runs: engine::last_runs(&rec).into_iter().cloned().collect(),
        rto,
    };
    if ctx.json() {
        return print_json(&report);
    }
    println!(
        "{:<16} {:<8} {:<22} {:<22} next due",
        "job", "every", "last success", "last failure"
    );
    for j in &report.jobs {
        println!(
            "{:<16} {:<8} {:<22} {:<22} {}",
            j.job,
            j.every,
            j.last_success.as_deref().unwrap_or("never"),
            j.last_failure.as_deref().unwrap_or("-"),
            if j.due {
                "now".to_string()
            } else {
                j.next_due.clone().unwrap_or_default()
            }
        );
    }
    if let Some(r) = &report.rto {
        println!(
            "rto: a restore now takes {}; target {}: {}",
            r.estimate.describe(),
            r.target,
            match r.decision {
                "within" => "within",
                "backup" => "over: a base backup is due now",
                "wait" => "over: a base backup is due once the last one is old enough",
                _ => "over even right after a backup: backups cannot meet it",
            }
        );
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    Ok(())
}
