//! `lifeboat stream`: run the replication-slot consumer, and the `[schedule]` beside it.

use anyhow::anyhow;

use super::{absolute, Ctx, Failure};
use crate::core::wal::Lsn;
use crate::ingest::schedule;
use crate::ingest::stream::{self, StreamOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Exit 0 once all WAL before this LSN is durably archived (no schedule runs).
    #[arg(long)]
    endpos: Option<String>,
    /// Do not run the [schedule] jobs in this process.
    #[arg(long)]
    no_schedule: bool,
    /// Start even when encryption.recipients shares no recipient with the sets the archive
    /// was written for (the new identity is on the restore host): writes its key canary.
    #[arg(long)]
    accept_new_recipients: bool,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    ctx.require_for_writing()?;
    let endpos = a
        .endpos
        .as_deref()
        .map(|s| s.parse::<Lsn>())
        .transpose()
        .map_err(|e| Failure {
            code: 2,
            err: anyhow!("--endpos: {e}"),
            quiet: false,
        })?;
    super::ensure_canary(&ctx.cfg, a.accept_new_recipients).await?;
    // The Prometheus endpoint: a port that cannot be had is an error at start.
    let metrics = match ctx.cfg.metrics.listen {
        Some(addr) if endpos.is_none() => {
            Some(crate::ingest::metrics::start(addr, &ctx.cfg).await?)
        }
        _ => None,
    };
    // The schedule runs beside the stream, in its own task; its jobs are child processes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sched = (endpos.is_none() && !a.no_schedule && ctx.cfg.schedule.is_some()).then(|| {
        let (cfg, path) = (ctx.cfg.clone(), absolute(&ctx.cfg_path));
        tokio::spawn(async move {
            if let Err(e) = schedule::run(cfg, path, stop_rx).await {
                tracing::error!(error = %format!("{e:#}"), "the schedule stopped");
            }
        })
    });
    let result = stream::run(&ctx.cfg, StreamOptions { endpos }).await;
    let _ = stop_tx.send(true);
    if let Some(s) = sched {
        let _ = s.await;
    }
    if let Some(m) = metrics {
        m.abort();
    }
    result?;
    Ok(())
}
