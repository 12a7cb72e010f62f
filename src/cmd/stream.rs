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
    stream::run(&ctx.cfg, StreamOptions { endpos }).await?;
    Ok(())
}
