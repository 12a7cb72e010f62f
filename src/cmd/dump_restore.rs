//! `lifeboat dump-restore`: a dump's database streamed into pg_restore (all of it, or
//! tables or schemas), its table of contents (--list), or the custom-format file
//! (--output).

use std::path::PathBuf;
use std::sync::Arc;

use super::{absolute, print_json, usage, Ctx, Failure};
use crate::core::catalog;
use crate::core::fmt;
use crate::restore::dump::{self, DumpRestoreOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The dump's id (`lifeboat list` shows them).
    id: String,
    /// Where to restore: a libpq connection string or URI; the database must exist.
    #[arg(long, value_name = "CONNINFO")]
    dbname: Option<String>,
    /// Which database of the dump (needed when it holds more than one).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// Restore only this table (repeatable; pg_restore --table).
    #[arg(long = "table", value_name = "T")]
    table: Vec<String>,
    /// Restore only this schema (repeatable; pg_restore --schema).
    #[arg(long = "schema", value_name = "S")]
    schema: Vec<String>,
    /// pg_restore --jobs: with more than 1 the dump is written to a temporary file first
    /// (pg_restore needs to seek in it).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print pg_restore's table of contents of the dump.
    #[arg(long)]
    list: bool,
    /// Write the plain custom-format dump file here instead (for pg_restore elsewhere).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The bin directory of the pg_restore to run.
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// Where the temporary file of --jobs goes (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    if !catalog::is_backup_id(&a.id) {
        return Err(usage(format!(
            "dump-restore: \"{}\" is not a dump id (YYYYMMDDTHHMMSSZ)\nhint: `lifeboat list` shows the dumps",
            a.id
        )));
    }
    let modes = [a.dbname.is_some(), a.list, a.output.is_some()]
        .iter()
        .filter(|m| **m)
        .count();
    if modes != 1 {
        return Err(usage(
            "dump-restore: give exactly one of --dbname CONNINFO (restore into that database), --list or --output FILE\nhint: the database named by --dbname must exist (createdb it first)".into(),
        ));
    }
    if a.output.is_some() && (!a.table.is_empty() || !a.schema.is_empty()) {
        return Err(usage(
            "dump-restore: --output writes the whole dump; --table and --schema select what is restored\nhint: pass --table/--schema to pg_restore when you restore the file".into(),
        ));
    }
    if a.jobs == 0 {
        return Err(usage(
            "--jobs: must be at least 1\nhint: --jobs 1 streams the dump into pg_restore; more writes a temporary file first".into(),
        ));
    }
    let opener = Arc::new(ctx.opener()?);
    let archive = crate::archive::Archive::open(&ctx.cfg)?;
    let rep = dump::run(
        &archive,
        opener,
        &DumpRestoreOptions {
            id: a.id.clone(),
            db: a.db.clone(),
            dbname: a.dbname.clone(),
            tables: a.table.clone(),
            schemas: a.schema.clone(),
            jobs: a.jobs,
            list: a.list,
            output: a.output.as_deref().map(absolute),
            pg_bin: a.pg_bin.as_deref().map(absolute),
            temp_dir: a.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
        },
    )
    .await?;
    if ctx.json() {
        return print_json(&rep);
    }
    match rep.action {
        // The table of contents is pg_restore's own output, on stdout.
        "list" => {}
        "output" => println!(
            "dump {} database {}: {} written to {}",
            rep.id,
            rep.database,
            fmt::size(rep.bytes),
            rep.target.as_deref().unwrap_or("-")
        ),
        _ => println!(
            "dump {} database {}: {} restored with pg_restore {} in {:.1} s",
            rep.id,
            rep.database,
            fmt::size(rep.bytes),
            rep.pg_restore.as_deref().unwrap_or("-"),
            rep.seconds
        ),
    }
    Ok(())
}
