//! `lifeboat recover-table`: one table (or a few) brought back as of a point in time,
//! beside today's data. The backup that reaches the target is restored into a scratch
//! directory and started on a free local port (the drill's machinery), recovery replays
//! to the target and promotes, `pg_dump -t` takes the tables from it, and `pg_restore`
//! loads them into the live database under new names, or the dump is written to a file.
//!
//! Invariants:
//! - Nothing is ever loaded over an existing table: every new name is checked before the
//!   restore starts, and the load runs in one transaction that fails on any error (so a
//!   table created meanwhile stops it and leaves nothing half-loaded).
//! - The scratch server is stopped and its directory removed whatever happens: success,
//!   an error, SIGINT or SIGTERM.
//! - The new tables are standalone copies: their indexes and owned sequences get names
//!   derived from the new table name, their foreign keys are dropped (the rows come from
//!   another moment than the tables they pointed to).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::archive::Archive;
use crate::core::plan::{Target, TimelineChoice, Timestamp};
use crate::pg::conninfo::ConnParams;
use crate::pg::tools;
use crate::pg::Connection;
use crate::pipeline::Opener;
use crate::restore::drill::{self, ScratchSpec, ServerSlot};
use crate::restore::dump::{pg_restore_for, run_pg_restore};

/// `SCHEMA.TABLE`, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `schema.table`, `"My Schema"."odd.name"`; a name without a schema is in `public`.
    pub fn parse(s: &str) -> Result<TableName, String> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = s.chars().peekable();
        let mut quoted = false;
        let mut was_quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => {
                    quoted = !quoted;
                    was_quoted = true;
                }
                '.' if !quoted => {
                    parts.push((std::mem::take(&mut cur), was_quoted));
                    was_quoted = false;
                }
                c => cur.push(c),
            }
        }
        if quoted {
            return Err(format!(
                "\"{s}\" has an unterminated quote\nhint: write SCHEMA.TABLE, quoting a part that holds dots or capitals: '\"Sales\".\"Orders\"'"
            ));
        }
        parts.push((cur, was_quoted));
        // Unquoted names fold to lower case, as PostgreSQL folds them.
        let mut names: Vec<String> = parts
            .into_iter()
            .map(|(n, q)| if q { n } else { n.to_lowercase() })
            .collect();
        if names.iter().any(|n| n.is_empty()) || names.len() > 2 {
            return Err(format!(
                "\"{s}\" is not a table name (SCHEMA.TABLE, e.g. public.orders)\nhint: quote a part that holds dots or capitals: '\"Sales\".\"Orders\"'"
            ));
        }
        let table = names.pop().expect("one name at least");
        let schema = names.pop().unwrap_or_else(|| "public".into());
        Ok(TableName { schema, table })
    }

    /// Quoted for SQL: `"public"."orders"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name of at most 63 bytes: `base` cut (on a character boundary) to leave room for
/// `suffix`.
fn fit(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len());
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
}

/// The default new name of a table recovered as of `t`: `orders_at_20261124_143041`.
pub fn default_new_name(table: &str, t: Timestamp) -> String {
    let r = t.rfc3339();
    let stamp: String = r
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .replace('T', "_");
    fit(table, &format!("_at_{stamp}"))
}

pub struct RecoverOptions {
    pub target_time: Timestamp,
    pub tables: Vec<TableName>,
    /// The database the tables are in.
    pub db: String,
    /// Load into this database (a connection string).
    pub into: Option<String>,
    /// The new name (one table only).
    pub as_name: Option<String>,
    /// Write the dump (custom format) of the tables, as they were, here.
    pub output: Option<PathBuf>,
    pub spec: ScratchSpec,
    pub run_as: Option<String>,
    pub scratch_parent: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct RecoveredTable {
    pub table: String,
    /// The name it was loaded as (with --into).
    pub loaded_as: Option<String>,
    /// Rows as of the target.
    pub rows: i64,
    /// Rows in the loaded copy.
    pub loaded_rows: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct RecoverReport {
    pub backup: String,
    pub database: String,
    /// The recovery target.
    pub target_time: Timestamp,
    /// The commit time of the last transaction replayed: the rows are as of then.
    pub last_commit: Option<String>,
    pub tables: Vec<RecoveredTable>,
    pub output: Option<String>,
    pub into: Option<String>,
    pub seconds: f64,
}

/// The live database's connection and the tables' new names, checked free.
async fn check_target(
    into: &str,
    tables: &[TableName],
    as_name: Option<&str>,
    t: Timestamp,
) -> Result<(ConnParams, Vec<TableName>)> {
    let params = ConnParams::parse_with_process_env(into).map_err(|e| anyhow!("--into: {e}"))?;
    let news: Vec<TableName> = tables
        .iter()
        .map(|tn| TableName {
            schema: tn.schema.clone(),
            table: match as_name {
                Some(n) => n.to_string(),
                None => default_new_name(&tn.table, t),
            },
        })
        .collect();
    let mut c = Connection::connect(&params, false)
        .await
        .map_err(|e| anyhow::Error::new(e).context("connecting to --into"))?;
    let db = params.dbname.clone().unwrap_or_else(|| params.user.clone());
    for n in &news {
        let r = c
            .query_one_set(&format!(
                "SELECT to_regclass({})::text, to_regnamespace({})::text",
                literal(&n.sql()),
                literal(&ident(&n.schema))
            ))
            .await?;
        if r.rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .is_some()
        {
            c.close().await;
            bail!(
                "{n} already exists in database \"{db}\": recover-table never loads over an existing table\nhint: choose another name with --as, or drop or rename {n} first"
            );
        }
        if r.rows
            .first()
            .and_then(|row| row.get(1).cloned().flatten())
            .is_none()
        {
            c.close().await;
            bail!(
                "schema \"{}\" does not exist in database \"{db}\"\nhint: create it first, or recover into a database that has it",
                n.schema
            );
        }
    }
    c.close().await;
    Ok((params, news))
}

fn one_value(r: &crate::pg::conn::QueryResult) -> Option<String> {
    r.rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
}

/// Run a PostgreSQL program to completion; its stderr in the error.
async fn run_tool(mut cmd: tokio::process::Command, what: &str) -> Result<()> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let how = out
            .status
            .code()
            .map_or_else(|| out.status.to_string(), |c| format!("exit status {c}"));
        bail!(
            "{what} failed ({how}):\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Make the copy standalone before it is dumped under its new name (in the scratch
/// server, which is thrown away): rename the table, its indexes and owned sequences, drop
/// its foreign keys.
async fn rename_in_scratch(c: &mut Connection, old: &TableName, new: &TableName) -> Result<()> {
    let oid = literal(&old.sql());
    let fks = c
        .query_one_set(&format!(
            "SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = {oid}::regclass AND contype = 'f'"
        ))
        .await?;
    for row in fks.rows {
        if let Some(name) = row.into_iter().next().flatten() {
            c.simple_query(&format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                old.sql(),
                ident(&name)
            ))
            .await?;
        }
    }
    let rels = c
        .query_one_set(&format!(
            "SELECT i.relname, 'INDEX' FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = {oid}::regclass \
             UNION ALL \
             SELECT s.relname, 'SEQUENCE' FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = {oid}::regclass AND d.deptype IN ('a', 'i') AND s.relkind = 'S'"
        ))
        .await?;
    for row in rels.rows {
        let mut it = row.into_iter();
        let (Some(Some(name)), Some(Some(kind))) = (it.next(), it.next()) else {
            continue;
        };
        let renamed = match name.strip_prefix(&old.table) {
            Some(rest) => fit(&new.table, rest),
            None => fit(&new.table, &format!("_{name}")),
        };
        c.simple_query(&format!(
            "ALTER {kind} {}.{} RENAME TO {}",
            ident(&old.schema),
            ident(&name),
            ident(&renamed)
        ))
        .await?;
    }
    c.simple_query(&format!(
        "ALTER TABLE {} RENAME TO {}",
        old.sql(),
        ident(&new.table)
    ))
    .await?;
    Ok(())
}

/// Recover the tables. The scratch server is gone when this returns, however it ends.
pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    exe: &Path,
    opts: &RecoverOptions,
) -> Result<RecoverReport> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let user = drill::server_user(opts.run_as.as_deref())?;
    std::fs::create_dir_all(&opts.scratch_parent)
        .with_context(|| format!("creating {}", opts.scratch_parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("lifeboat-recover-")
        .tempdir_in(&opts.scratch_parent)
        .with_context(|| {
            format!(
                "making a scratch directory in {}",
                opts.scratch_parent.display()
            )
        })?;
    let slot = ServerSlot::default();
    let work = recover_in(
        archive,
        opener,
        exe,
        opts,
        scratch.path(),
        user.as_ref(),
        &slot,
    );
    let result = tokio::select! {
        r = work => r,
        _ = sigint.recv() => Err(anyhow!("interrupted (SIGINT): the scratch server was stopped and its directory removed")),
        _ = sigterm.recv() => Err(anyhow!("terminated (SIGTERM): the scratch server was stopped and its directory removed")),
    };
    let handle = slot.lock().expect("not poisoned").take();
    if let Some(h) = handle {
        tokio::task::spawn_blocking(move || h.stop())
            .await
            .map_err(|e| anyhow!("stopping the scratch server: {e}"))?;
    }
    let _ = std::fs::remove_file(scratch.path().join("identity"));
    drop(scratch);
    result
}

async fn recover_in(
    archive: &Archive,
    opener: Arc<Opener>,
    exe: &Path,
    opts: &RecoverOptions,
    scratch: &Path,
    user: Option<&(u32, u32, String)>,
    slot: &ServerSlot,
) -> Result<RecoverReport> {
    let t0 = std::time::Instant::now();
    let target = Target::Time(opts.target_time);
    // Fail before the long part: the plan, the new names.
    let (plan, backup, _) =
        crate::restore::make_plan(archive, &target, TimelineChoice::Latest, None).await?;
    let live = match &opts.into {
        Some(into) => Some(
            check_target(
                into,
                &opts.tables,
                opts.as_name.as_deref(),
                opts.target_time,
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(backup = plan.backup, target = %opts.target_time, "restoring into a scratch directory");
    let server = drill::start_scratch(
        archive, opener, exe, &opts.spec, &backup, target, scratch, user, slot,
    )
    .await?;
    let mut report = RecoverReport {
        backup: backup.id.clone(),
        database: opts.db.clone(),
        target_time: opts.target_time,
        last_commit: None,
        tables: Vec::new(),
        output: None,
        into: None,
        seconds: 0.0,
    };
    let mut c = server.connect(&opts.db).await.with_context(|| {
        format!(
            "connecting to database \"{}\" as of {}",
            opts.db, opts.target_time
        )
    })?;
    report.last_commit = one_value(
        &c.query_one_set("SELECT pg_catalog.pg_last_xact_replay_timestamp()::text")
            .await?,
    );
    for t in &opts.tables {
        let r = c
            .query_one_set(&format!("SELECT to_regclass({})::text", literal(&t.sql())))
            .await?;
        if one_value(&r).is_none() {
            c.close().await;
            bail!(
                "table {t} did not exist at {} in database \"{}\" (restored from backup {})\nhint: check the name and the time; `lifeboat drill --target TIME --keep` keeps a restored copy to look around in",
                opts.target_time,
                opts.db,
                backup.id
            );
        }
        let n = c
            .query_one_set(&format!("SELECT count(*) FROM {}", t.sql()))
            .await?;
        report.tables.push(RecoveredTable {
            table: t.to_string(),
            loaded_as: None,
            rows: one_value(&n).and_then(|v| v.parse().ok()).unwrap_or(0),
            loaded_rows: None,
        });
    }
    let pg_dump = tools::find_tool(
        Some(server.bin()),
        "pg_dump",
        backup.pg_version / 10000,
        &format!("the backup is PostgreSQL {}", backup.pg_version / 10000),
    )
    .map_err(|e| anyhow!(e))?;
    let dump_cmd = |tables: &[TableName], file: &Path| {
        let mut cmd = tokio::process::Command::new(&pg_dump.path);
        cmd.arg("--format=custom")
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg(format!("--dbname={}", server.conninfo(&opts.db)))
            .arg(format!("--file={}", file.display()));
        for t in tables {
            cmd.arg(format!("--table={}", t.sql()));
        }
        cmd
    };
    if let Some(out) = &opts.output {
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".lifeboat-recover-")
            .tempfile_in(&dir)
            .with_context(|| {
                format!(
                    "--output {}: cannot create a file in {}",
                    out.display(),
                    dir.display()
                )
            })?;
        run_tool(dump_cmd(&opts.tables, tmp.path()), "pg_dump").await?;
        tmp.as_file().sync_all()?;
        tmp.persist(out)
            .map_err(|e| anyhow!("--output {}: {}", out.display(), e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        report.output = Some(out.display().to_string());
    }
    if let Some((params, news)) = live {
        for (old, new) in opts.tables.iter().zip(&news) {
            rename_in_scratch(&mut c, old, new)
                .await
                .with_context(|| format!("preparing {old} as {new}"))?;
        }
        let file = scratch.join("tables.dump");
        run_tool(dump_cmd(&news, &file), "pg_dump").await?;
        let (tool, conn) = pg_restore_for(
            &params,
            backup.pg_version / 10000,
            "the backup",
            Some(opts.spec.pg_bin.as_deref().unwrap_or(server.bin())),
        )
        .await?;
        let args = vec![
            format!("--dbname={}", conn.conninfo),
            "--no-password".into(),
            "--exit-on-error".into(),
            "--single-transaction".into(),
            "--no-owner".into(),
            "--no-privileges".into(),
        ];
        run_pg_restore(&tool, args, Some(&conn), Some(&file), None)
            .await
            .context("loading the recovered tables")?;
        report.into = Some(conn.conninfo.clone());
        let mut lc = Connection::connect(&params, false)
            .await
            .map_err(|e| anyhow::Error::new(e).context("connecting to --into"))?;
        for (t, new) in report.tables.iter_mut().zip(&news) {
            t.loaded_as = Some(new.to_string());
            let n = lc
                .query_one_set(&format!("SELECT count(*) FROM {}", new.sql()))
                .await?;
            t.loaded_rows = one_value(&n).and_then(|v| v.parse().ok());
        }
        lc.close().await;
    }
    c.close().await;
    server.stop();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = TableName::parse("public.orders").unwrap();
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("public", "orders"));
        let t = TableName::parse("Orders").unwrap();
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("public", "orders"));
        let t = TableName::parse("\"My Schema\".\"odd.\"\"name\"").unwrap();
        assert_eq!(
            (t.schema.as_str(), t.table.as_str()),
            ("My Schema", "odd.\"name")
        );
        assert_eq!(t.sql(), "\"My Schema\".\"odd.\"\"name\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("a.").is_err());
        assert!(TableName::parse("\"a").is_err());
    }

    #[test]
    fn new_names_fit_in_63_bytes() {
        let t = Timestamp::parse_utc("2026-11-24 14:30:41.5").unwrap();
        assert_eq!(default_new_name("orders", t), "orders_at_20261124_143041");
        let long = "x".repeat(70);
        let n = default_new_name(&long, t);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("_at_20261124_143041"));
    }
}
