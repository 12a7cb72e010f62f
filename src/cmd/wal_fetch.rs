//! `lifeboat wal-fetch`: PostgreSQL's restore_command. Exit 0 with the segment written,
//! 1 (quietly) when the archive does not hold it, and 126 when the archive holds
//! something it cannot serve: above 125 PostgreSQL stops recovery instead of treating the
//! file as the end of WAL, so a damaged archive never ends recovery early.

use std::path::PathBuf;

use super::{absolute, Ctx, Failure, LogFormat};
use crate::archive::Archive;
use crate::restore::walfetch::{self, FetchOptions};

#[derive(clap::Args)]
pub struct Args {
    segment: String,
    dest: PathBuf,
    /// Fetch this many of the following segments ahead, in parallel, in a background
    /// worker, so that recovery does not wait for each one (0 = off).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    prefetch: u16,
    /// Where prefetched segments wait (default: DEST's directory/lifeboat-prefetch, i.e.
    /// inside pg_wal). Decrypted WAL: one private directory per data directory.
    #[arg(long)]
    queue_dir: Option<PathBuf>,
    /// Internal: run as the prefetch worker wal-fetch starts.
    #[arg(long, hide = true, requires = "queue_dir")]
    prefetch_worker: bool,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let archive = Archive::open(&ctx.cfg)?;
    let op = ctx.opener()?;
    if a.prefetch_worker {
        // Detached from PostgreSQL: nobody reads its exit status; its stderr is
        // <queue>/worker.log.
        let q = a.queue_dir.as_deref().expect("clap requires --queue-dir");
        walfetch::prefetch_worker(&archive, &op, q, usize::from(a.prefetch)).await?;
        return Ok(());
    }
    let opts = FetchOptions {
        prefetch: usize::from(a.prefetch),
        queue_dir: a.queue_dir.clone(),
    };
    let worker = if a.prefetch > 0 {
        prefetch_worker_command(ctx)
    } else {
        None
    };
    match walfetch::run_with(&archive, &op, &a.segment, &a.dest, &opts, worker).await {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<walfetch::NotFound>().is_some() => {
            tracing::debug!("{e}");
            Err(Failure {
                code: 1,
                err: e,
                quiet: true,
            })
        }
        Err(e) => Err(Failure {
            code: 126,
            err: e,
            quiet: false,
        }),
    }
}

/// How wal-fetch starts its prefetch worker: this binary with the options that found the
/// configuration and the identity, and the logging options; `walfetch::run_with` appends
/// `--prefetch K --queue-dir Q SEGMENT DEST`. `None` (no worker, still correct) when the
/// binary cannot be located.
fn prefetch_worker_command(ctx: &Ctx<'_>) -> Option<std::process::Command> {
    let g = ctx.global;
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config").arg(absolute(&ctx.cfg_path));
    if let Some(id) = &g.identity {
        cmd.arg("--identity").arg(absolute(id));
    }
    if g.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..g.verbose {
        cmd.arg("--verbose");
    }
    if matches!(g.log_format, LogFormat::Json) {
        cmd.arg("--log-format").arg("json");
    }
    cmd.arg("wal-fetch").arg("--prefetch-worker");
    Some(cmd)
}
