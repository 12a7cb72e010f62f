//! `lifeboat status`: is this host's archiving healthy? Exit 0 healthy, 1 degraded,
//! 2 failing (also when status cannot run at all: monitoring reads 1 as degraded).

use super::{print_json, Ctx, Failure};
use crate::archive::Archive;
use crate::ingest::health::{self, Report};

pub async fn run(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let archive = Archive::open(&ctx.cfg).map_err(|e| Failure {
        code: 2,
        err: e,
        quiet: false,
    })?;
    let report = health::run(
        &ctx.cfg.wal.spool_dir,
        &archive,
        ctx.cfg.retention.prune_interval,
        ctx.cfg.schedule.clone().unwrap_or_default().drill,
    )
    .await;
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
