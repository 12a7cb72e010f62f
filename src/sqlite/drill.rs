//! `lifeboat sqlite drill`: a snapshot (the newest, a random one, or one by id) restored
//! into a scratch directory through the restore path (chain applied, page hashes checked,
//! `integrity_check`), the database's check SQL run on the copy, every phase timed, and
//! the result recorded as `sqlite/<NAME>/drills/<ID>.json`. The scratch copy is removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use fallible_iterator::FallibleIterator;
use rusqlite::OpenFlags;

use crate::archive::Archive;
use crate::core::catalog::{self, backup_id_from_rfc3339};
use crate::core::plan::Timestamp;
use crate::core::sqlite::SqliteDrillReport;
use crate::pipeline::Opener;

use super::restore::{self, RestoreOptions};

pub struct DrillOptions {
    pub name: String,
    /// A snapshot id, or `None` for the one chosen by the caller.
    pub snapshot: String,
    pub check_sql: Option<String>,
    pub scratch_dir: Option<PathBuf>,
}

/// Run each statement of `sql` on the database at `path`: each must return a first row
/// whose first column is true (a non-zero integer).
fn run_checks(path: &std::path::Path, sql: &str) -> Result<Vec<(String, String)>> {
    let conn = rusqlite::Connection::open_with_flags(
        super::immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?;
    let mut out = Vec::new();
    let mut batch = rusqlite::Batch::new(&conn, sql);
    while let Some(mut st) = batch.next().map_err(|e| anyhow!("check SQL: {e}"))? {
        let text = st.expanded_sql().unwrap_or_default().trim().to_string();
        let r: rusqlite::Result<Option<i64>> = st.query_row([], |r| r.get::<_, Option<i64>>(0));
        let verdict = match r {
            Ok(Some(v)) if v != 0 => "true".to_string(),
            Ok(v) => format!("false ({})", v.map_or("NULL".into(), |v| v.to_string())),
            Err(e) => format!("error: {e}"),
        };
        out.push((text, verdict));
    }
    Ok(out)
}

pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    opts: &DrillOptions,
) -> Result<SqliteDrillReport> {
    let started = Instant::now();
    let start_time = Timestamp::from_system_time(SystemTime::now());
    let secs = Timestamp::from_unix_secs(start_time.0.div_euclid(1_000_000));
    let scratch = match &opts.scratch_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("lifeboat-sqlite-drill-")
            .tempdir_in(d),
        None => tempfile::Builder::new()
            .prefix("lifeboat-sqlite-drill-")
            .tempdir(),
    }
    .context("creating the scratch directory")?;
    let to = scratch.path().join(format!("{}.db", opts.name));
    let mut report = SqliteDrillReport {
        format: catalog::FORMAT_VERSION,
        name: opts.name.clone(),
        id: backup_id_from_rfc3339(&secs.rfc3339()),
        snapshot: opts.snapshot.clone(),
        snapshot_time: Timestamp(0),
        start_time,
        restore_secs: 0.0,
        checks_secs: 0.0,
        total_secs: 0.0,
        integrity_check: String::new(),
        checks: Vec::new(),
        ok: false,
        error: None,
    };
    let restored = restore::run(
        archive,
        opener,
        &RestoreOptions {
            name: opts.name.clone(),
            at: None,
            snapshot: Some(opts.snapshot.clone()),
            to: to.clone(),
            force: false,
        },
    )
    .await;
    report.restore_secs = started.elapsed().as_secs_f64();
    match restored {
        Err(e) => report.error = Some(format!("{e:#}")),
        Ok(r) => {
            report.snapshot_time = r.time;
            report.integrity_check = r.integrity_check;
            let t = Instant::now();
            if let Some(sql) = &opts.check_sql {
                let p = to.clone();
                let sql = sql.clone();
                match tokio::task::spawn_blocking(move || run_checks(&p, &sql)).await {
                    Ok(Ok(c)) => report.checks = c,
                    Ok(Err(e)) => report.error = Some(format!("{e:#}")),
                    Err(e) => report.error = Some(format!("the check task failed: {e}")),
                }
            }
            report.checks_secs = t.elapsed().as_secs_f64();
            report.ok = report.error.is_none()
                && report.integrity_check == "ok"
                && report.checks.iter().all(|c| c.1 == "true");
        }
    }
    report.total_secs = started.elapsed().as_secs_f64();
    drop(scratch);
    archive.record_sqlite_drill(&report).await;
    Ok(report)
}
