//! `lifeboat stream`: run the replication-slot consumer.

use anyhow::anyhow;

use super::{Ctx, Failure};
use crate::core::wal::Lsn;
use crate::ingest::stream::{self, StreamOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Exit 0 once all WAL before this LSN is durably archived.
    #[arg(long)]
    endpos: Option<String>,
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
    stream::run(&ctx.cfg, StreamOptions { endpos }).await?;
    Ok(())
}
