//! `lifeboat dump`: pg_dump (custom format) of each database, and the globals, through the
//! pipeline into the archive.

use std::path::PathBuf;

use super::{absolute, print_json, usage, Ctx, Failure};
use crate::core::fmt;
use crate::ingest::dump::{self, DumpOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A database to dump (repeatable; default: every database that accepts connections,
    /// except templates).
    #[arg(long = "db", value_name = "NAME")]
    db: Vec<String>,
    /// The bin directory of the pg_dump to run (default: the server's major version, found
    /// like `restore` finds the server).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    if a.db.iter().any(|d| d.is_empty()) {
        return Err(usage(
            "--db: a database name cannot be empty\nhint: leave --db out to dump every database that accepts connections".into(),
        ));
    }
    ctx.require_for_writing()?;
    let meta = dump::run(
        &ctx.cfg,
        &DumpOptions {
            databases: a.db.clone(),
            pg_bin: a.pg_bin.as_deref().map(absolute),
        },
    )
    .await?;
    if ctx.json() {
        return print_json(&meta);
    }
    println!(
        "dump {}: {} database{} and the globals, {} ({} stored), PostgreSQL {} with pg_dump {}",
        meta.id,
        meta.databases.len(),
        if meta.databases.len() == 1 { "" } else { "s" },
        fmt::size(meta.plain_size),
        fmt::size(meta.stored_size),
        meta.server_version,
        meta.pg_dump_version
    );
    for d in &meta.databases {
        println!(
            "  {:<24} {:>10} {:>10}  snapshot at {}",
            d.database.as_deref().unwrap_or("-"),
            fmt::size(d.plain_size),
            fmt::size(d.stored_size),
            d.started_at
        );
    }
    Ok(())
}
