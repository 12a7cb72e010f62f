//! `lifeboat backup`: take a base backup over BASE_BACKUP and archive it.

use super::{parse_duration_arg, print_json, Ctx, Failure};
use crate::ingest::backup::{self, BackupOptions, ParentChoice};

#[derive(clap::Args)]
pub struct Args {
    /// The backup label (default: "lifeboat <ID>").
    #[arg(long)]
    label: Option<String>,
    /// Request an immediate checkpoint instead of a spread one.
    #[arg(long)]
    fast: bool,
    /// Upper bound on waiting for the backup's WAL to be archived: a running
    /// `lifeboat stream` gets a short grace period (2 x wal.max_delay), after which the
    /// backup archives the WAL itself from its temporary slot; the whole wait only
    /// applies when that slot could not be created.
    #[arg(long, default_value = "60s")]
    wal_timeout: String,
    /// Start even when encryption.recipients shares no recipient with the sets the archive
    /// was written for (the new identity is on the restore host): writes its key canary.
    #[arg(long)]
    accept_new_recipients: bool,
    /// Take an incremental backup (PostgreSQL 17+, summarize_wal on) relative to the newest
    /// backup (`latest`, the default) or the newest full one (`full`). Falls back to a full
    /// backup, saying why, when the server or the archive cannot take one.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "latest")]
    incremental: Option<ParentChoice>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    ctx.require_for_writing()?;
    let wal_timeout = parse_duration_arg("--wal-timeout", &a.wal_timeout)?;
    super::ensure_canary(&ctx.cfg, a.accept_new_recipients).await?;
    let out = backup::run(
        &ctx.cfg,
        BackupOptions {
            label: a.label.clone(),
            fast: a.fast,
            wal_timeout,
            incremental: a.incremental,
        },
    )
    .await?;
    if ctx.json() {
        return print_json(&out);
    }
    if let Some(r) = &out.meta.full_reason {
        println!("full backup instead of an incremental one: {r}");
    }
    let kind = match &out.meta.incremental {
        Some(i) => format!(
            "; incremental on {} (chain length {})",
            i.parent, i.chain_length
        ),
        None => String::new(),
    };
    println!(
        "backup {}: {} parts, {} bytes ({} stored), WAL {} – {} on timeline {}, {}{kind}",
        out.meta.id,
        out.meta.parts.len(),
        out.meta.plain_size,
        out.meta.stored_size,
        out.meta.start_lsn,
        out.meta.end_lsn,
        out.meta.end_timeline,
        if out.restorable {
            "restorable"
        } else {
            "not restorable until its WAL is archived"
        }
    );
    Ok(())
}
