//! `lifeboat recover-table`: tables brought back as of a point in time, beside today's
//! data (loaded under new names, or written as a dump).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::{absolute, parse_duration_arg, print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::pg::conninfo::ConnParams;
use crate::restore::drill::ScratchSpec;
use crate::restore::recover_table::{self, RecoverOptions, RecoverReport, TableName};
use crate::restore::{self};

#[derive(clap::Args)]
pub struct Args {
    /// The point in time the rows come from.
    #[arg(long, value_name = "TIME")]
    target_time: String,
    /// A table to recover, SCHEMA.TABLE (repeatable).
    #[arg(long = "table", value_name = "SCHEMA.TABLE", required = true)]
    table: Vec<String>,
    /// Load the tables into this database (a connection string), under new names.
    #[arg(long, value_name = "CONNINFO")]
    into: Option<String>,
    /// The new name of the table (one --table only; default TABLE_at_YYYYMMDD_HHMMSS).
    #[arg(long = "as", value_name = "NEW_NAME")]
    as_name: Option<String>,
    /// Write the tables, as they were, to this file (pg_dump custom format).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The database the tables are in (default: the database of --into, else of
    /// postgres.conninfo, else postgres).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// The bin directory of the PostgreSQL to run (default: found by version).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// The OS user PostgreSQL runs as when lifeboat runs as root (default postgres).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Where the scratch directory is made.
    #[arg(long, default_value = "/var/tmp", value_name = "DIR")]
    scratch_dir: PathBuf,
    /// Upper bound for recovery to reach the target.
    #[arg(long, default_value = "1h")]
    timeout: String,
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Segments the restore_command fetches ahead during replay (0 = one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=64))]
    wal_prefetch: u16,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let target_time =
        restore::resolve_time(&a.target_time).map_err(|e| usage(format!("--target-time: {e}")))?;
    let tables = a
        .table
        .iter()
        .map(|t| TableName::parse(t).map_err(|e| usage(format!("--table: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if a.into.is_none() && a.output.is_none() {
        return Err(usage(
            "recover-table: say where the tables go: --into CONNINFO (loaded under new names) and/or --output FILE (a pg_dump file)\nhint: --into takes a connection string such as \"host=db1 dbname=app\"".into(),
        ));
    }
    if let Some(n) = &a.as_name {
        if a.into.is_none() {
            return Err(usage(
                "--as names the table loaded with --into\nhint: add --into CONNINFO".into(),
            ));
        }
        if tables.len() != 1 {
            return Err(usage(format!(
                "--as names one table, and {} were given\nhint: recover them one at a time, or let each get its default name TABLE_at_YYYYMMDD_HHMMSS",
                tables.len()
            )));
        }
        if n.is_empty() || n.len() > 63 {
            return Err(usage(format!(
                "--as: \"{n}\" is not a table name (1 to 63 bytes)\nhint: the new table goes into the same schema; give its name only"
            )));
        }
    }
    let db = match &a.db {
        Some(d) => d.clone(),
        None => {
            let from = |ci: &str| {
                ConnParams::parse_with_process_env(ci)
                    .ok()
                    .and_then(|p| p.dbname)
            };
            a.into
                .as_deref()
                .and_then(from)
                .or_else(|| from(&ctx.cfg.postgres.conninfo))
                .unwrap_or_else(|| "postgres".into())
        }
    };
    let timeout = parse_duration_arg("--timeout", &a.timeout)?;
    let identity_path = ctx.identity_path()?;
    let archive = Archive::open(&ctx.cfg)?;
    let op = Arc::new(ctx.opener()?);
    let exe = std::env::current_exe()
        .context("locating the lifeboat binary")
        .map_err(Failure::from)?;
    let opts = RecoverOptions {
        target_time,
        tables,
        db,
        into: a.into.clone(),
        as_name: a.as_name.clone(),
        output: a.output.as_deref().map(absolute),
        spec: ScratchSpec {
            pg_bin: a.pg_bin.as_deref().map(absolute),
            config_path: absolute(&ctx.cfg_path),
            identity_path: absolute(&identity_path),
            jobs: a.jobs,
            wal_prefetch: a.wal_prefetch,
            timeout,
            cluster_name: "lifeboat-recover-table",
        },
        run_as: a.run_as.clone(),
        scratch_parent: absolute(&a.scratch_dir),
    };
    let rep = recover_table::run(&archive, op, &exe, &opts).await?;
    if ctx.json() {
        return print_json(&rep);
    }
    print!("{}", render(&rep));
    Ok(())
}

/// The human report: where the rows come from, then each table.
pub fn render(rep: &RecoverReport) -> String {
    let mut s = format!(
        "as of {} (backup {}, last transaction replayed committed at {}), database {}:\n",
        rep.target_time,
        rep.backup,
        rep.last_commit.as_deref().unwrap_or("-"),
        rep.database
    );
    for t in &rep.tables {
        match (&t.loaded_as, t.loaded_rows) {
            (Some(n), Some(r)) => s.push_str(&format!(
                "  {}: {} rows, loaded as {n} ({r} rows)\n",
                t.table, t.rows
            )),
            _ => s.push_str(&format!("  {}: {} rows\n", t.table, t.rows)),
        }
    }
    if let Some(o) = &rep.output {
        s.push_str(&format!("written to {o}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plan::Timestamp;
    use crate::restore::recover_table::RecoveredTable;

    #[test]
    fn report() {
        let rep = RecoverReport {
            backup: "20261124T083012Z".into(),
            database: "app".into(),
            target_time: Timestamp::parse_utc("2026-11-24 14:30:41+00").unwrap(),
            last_commit: Some("2026-11-24 14:30:40.912345+00".into()),
            tables: vec![RecoveredTable {
                table: "public.orders".into(),
                loaded_as: Some("public.orders_back".into()),
                rows: 1500,
                loaded_rows: Some(1500),
            }],
            output: Some("/tmp/orders.dump".into()),
            into: Some("host=db1 dbname=app".into()),
            seconds: 12.0,
        };
        assert_eq!(
            render(&rep),
            "as of 2026-11-24 14:30:41+00 (backup 20261124T083012Z, last transaction replayed committed at 2026-11-24 14:30:40.912345+00), database app:\n\
             \x20 public.orders: 1500 rows, loaded as public.orders_back (1500 rows)\n\
             written to /tmp/orders.dump\n"
        );
    }
}
