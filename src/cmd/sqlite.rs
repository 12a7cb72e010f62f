//! `lifeboat sqlite snapshot|list|restore|drill`: the SQLite sibling mode.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::{absolute, failed, print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::core::fmt;
use crate::core::sqlite::{is_db_name, SnapshotKind, SnapshotMeta};
use crate::restore::resolve_time;
use crate::sqlite::{drill, restore, snapshot};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Snapshot the [[sqlite]] databases (all, or those named): one read transaction,
    /// page images through the pipeline, quick_check, snapshot.json last. Later snapshots
    /// store only the pages that changed (deltas), with a full one every full_every.
    Snapshot {
        /// Database names of [[sqlite]] entries (default: every one).
        names: Vec<String>,
        /// A full snapshot even where a delta would do.
        #[arg(long)]
        full: bool,
    },
    /// The daemon of a host of SQLite services: snapshots every [[sqlite]] database on its
    /// own interval ([[sqlite]] every, else [schedule] sqlite, else hourly), one at a time;
    /// a database that fails (locked, missing, replaced) is retried later and the others go
    /// on. Writes <spool_dir>/sqlite-status.json for `lifeboat status`. SIGTERM stops it; a
    /// snapshot in progress is abandoned, never half visible.
    Run,
    /// The snapshots in the archive (of NAME, or of every database).
    List { name: Option<String> },
    /// Restore database NAME as of a time (the newest snapshot at or before it), a
    /// snapshot, or the newest, into a new file.
    Restore {
        name: String,
        #[arg(long, value_name = "TIME", conflicts_with_all = ["snapshot", "latest"])]
        target_time: Option<String>,
        #[arg(long, value_name = "ID", conflicts_with = "latest")]
        snapshot: Option<String>,
        /// The newest snapshot (the default).
        #[arg(long)]
        latest: bool,
        /// The file to write (never over an existing one without --force).
        #[arg(long, visible_alias = "output", value_name = "PATH")]
        to: PathBuf,
        /// Replace an existing file (and remove its stale -wal and -shm).
        #[arg(long)]
        force: bool,
    },
    /// Restore drill: a snapshot restored into a scratch directory, integrity_check, the
    /// database's check_sql; timed and recorded in the archive. Exit 1 when it failed.
    Drill {
        name: String,
        /// random, latest, or a snapshot id.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Where the scratch directory is made (default: the system's temporary directory).
        #[arg(long, value_name = "DIR")]
        scratch_dir: Option<PathBuf>,
    },
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    match &a.command {
        Sub::Snapshot { names, full } => snapshot_cmd(ctx, names, *full).await,
        Sub::Run => {
            ctx.require_for_writing()?;
            if ctx.cfg.sqlite.is_empty() {
                return Err(usage(format!(
                    "{}: no [[sqlite]] database is configured\nhint: add [[sqlite]] name = \"app\" path = \"/srv/app/app.db\"",
                    ctx.cfg_name()
                )));
            }
            let paths: Vec<_> = ctx.cfg.sqlite.iter().map(|d| d.path.as_path()).collect();
            crate::sqlite::background_priority(&paths).map_err(|e| usage(format!("{e:#}")))?;
            let stop = crate::sqlite::daemon::stop_on_signals();
            crate::sqlite::daemon::run(ctx.cfg.clone(), stop).await?;
            Ok(())
        }
        Sub::List { name } => list(ctx, name.as_deref()).await,
        Sub::Restore {
            name,
            target_time,
            snapshot,
            latest: _,
            to,
            force,
        } => {
            check_name(name)?;
            let at = target_time
                .as_deref()
                .map(|t| resolve_time(t).map_err(|e| usage(format!("--target-time: {e}"))))
                .transpose()?;
            let opener = Arc::new(ctx.opener()?);
            let archive = Archive::open(&ctx.cfg)?;
            let rep = restore::run(
                &archive,
                opener,
                &restore::RestoreOptions {
                    name: name.clone(),
                    at,
                    snapshot: snapshot.clone(),
                    to: absolute(to),
                    force: *force,
                },
            )
            .await?;
            if ctx.json() {
                return print_json(&rep);
            }
            println!(
                "sqlite {} restored to {}: snapshot {} (as of {}), {} pages of {} ({}), chain of {}, integrity_check ok",
                rep.name,
                rep.to,
                rep.snapshot,
                rep.time,
                rep.page_count,
                rep.page_size,
                fmt::size(rep.bytes),
                rep.chain.len()
            );
            Ok(())
        }
        Sub::Drill {
            name,
            snapshot,
            scratch_dir,
        } => drill_cmd(ctx, name, snapshot, scratch_dir.clone()).await,
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    if !is_db_name(name) {
        return Err(usage(format!(
            "sqlite: \"{name}\" is not a database name\nhint: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
        )));
    }
    Ok(())
}

#[derive(Serialize)]
struct SnapshotLine {
    name: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn snapshot_cmd(ctx: &Ctx<'_>, names: &[String], full: bool) -> Result<(), Failure> {
    ctx.require_for_writing()?;
    if ctx.cfg.sqlite.is_empty() {
        return Err(usage(format!(
            "{}: no [[sqlite]] database is configured\nhint: add [[sqlite]] name = \"app\" path = \"/srv/app/app.db\"",
            ctx.cfg_name()
        )));
    }
    let mut dbs = Vec::new();
    for n in names {
        match ctx.cfg.sqlite.iter().find(|d| &d.name == n) {
            Some(d) => dbs.push(d),
            None => {
                return Err(usage(format!(
                    "sqlite snapshot: {} has no [[sqlite]] database named \"{n}\"\nhint: the configured ones: {}",
                    ctx.cfg_name(),
                    ctx.cfg.sqlite.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    if dbs.is_empty() {
        dbs = ctx.cfg.sqlite.iter().collect();
    }
    let paths: Vec<_> = dbs.iter().map(|d| d.path.as_path()).collect();
    crate::sqlite::background_priority(&paths).map_err(|e| usage(format!("{e:#}")))?;
    let mut lines = Vec::new();
    let mut failures = 0;
    for db in dbs {
        // One database failing (missing, locked, replaced) does not stop the others.
        match snapshot::run(&ctx.cfg, db, full).await {
            Ok((m, why)) => {
                if !ctx.json() {
                    println!(
                        "sqlite {} {}: {} ({why}), as of {}: {} of {} pages stored in {} run{} ({}), {} in the archive, quick_check {}",
                        m.name,
                        m.id,
                        match m.kind {
                            SnapshotKind::Full => "full",
                            SnapshotKind::Delta => "delta",
                        },
                        m.time,
                        m.pages_stored(),
                        m.page_count,
                        m.runs.len(),
                        if m.runs.len() == 1 { "" } else { "s" },
                        fmt::size(m.plain_size),
                        fmt::size(m.stored_size),
                        m.quick_check,
                    );
                }
                lines.push(SnapshotLine {
                    name: db.name.clone(),
                    ok: true,
                    snapshot: Some(m),
                    why: Some(why.into()),
                    error: None,
                });
            }
            Err(e) => {
                failures += 1;
                eprintln!("error: {e:#}");
                lines.push(SnapshotLine {
                    name: db.name.clone(),
                    ok: false,
                    snapshot: None,
                    why: None,
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
    if ctx.json() {
        print_json(&lines)?;
    }
    if failures > 0 {
        return Err(Failure {
            code: 1,
            err: anyhow::anyhow!("{failures} snapshot(s) failed"),
            quiet: true,
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct ListRow<'a> {
    name: &'a str,
    id: &'a str,
    kind: SnapshotKind,
    base: Option<&'a str>,
    time: String,
    page_size: u32,
    page_count: u64,
    pages_stored: u64,
    plain_size: u64,
    stored_size: u64,
}

async fn list(ctx: &Ctx<'_>, name: Option<&str>) -> Result<(), Failure> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let archive = Archive::open(&ctx.cfg)?;
    let snaps = archive.sqlite_snapshots(name).await?;
    if ctx.json() {
        let rows: Vec<ListRow> = snaps
            .iter()
            .map(|s| ListRow {
                name: &s.name,
                id: &s.id,
                kind: s.kind,
                base: s.base.as_deref(),
                time: s.time.rfc3339(),
                page_size: s.page_size,
                page_count: s.page_count,
                pages_stored: s.pages_stored(),
                plain_size: s.plain_size,
                stored_size: s.stored_size,
            })
            .collect();
        return print_json(&serde_json::json!({ "snapshots": rows }));
    }
    if snaps.is_empty() {
        println!("no sqlite snapshots");
        return Ok(());
    }
    println!(
        "{:<16} {:<20} {:<6} {:<30} {:>10} {:>10} {:>10}",
        "database", "snapshot", "kind", "as of", "pages", "stored", "size"
    );
    for s in &snaps {
        println!(
            "{:<16} {:<20} {:<6} {:<30} {:>10} {:>10} {:>10}",
            s.name,
            s.id,
            match s.kind {
                SnapshotKind::Full => "full",
                SnapshotKind::Delta => "delta",
            },
            s.time.to_string(),
            s.pages_stored(),
            fmt::size(s.stored_size),
            fmt::size(s.page_count * s.page_size as u64),
        );
    }
    Ok(())
}

async fn drill_cmd(
    ctx: &Ctx<'_>,
    name: &str,
    which: &str,
    scratch_dir: Option<PathBuf>,
) -> Result<(), Failure> {
    check_name(name)?;
    let opener = Arc::new(ctx.opener()?);
    let archive = Archive::open(&ctx.cfg)?;
    let snaps = archive.sqlite_snapshots(Some(name)).await?;
    if snaps.is_empty() {
        return Err(failed(format!(
            "the archive holds no snapshot of sqlite database \"{name}\"\nhint: `lifeboat sqlite snapshot {name}` takes one"
        )));
    }
    let snapshot = match which {
        "latest" => snaps.last().expect("not empty").id.clone(),
        "random" => snaps
            .choose(&mut rand::thread_rng())
            .expect("not empty")
            .id
            .clone(),
        id => id.to_string(),
    };
    let check_sql = ctx
        .cfg
        .sqlite
        .iter()
        .find(|d| d.name == name)
        .and_then(|d| d.check_sql.clone());
    let rep = drill::run(
        &archive,
        opener,
        &drill::DrillOptions {
            name: name.to_string(),
            snapshot,
            check_sql,
            scratch_dir,
        },
    )
    .await?;
    if ctx.json() {
        print_json(&rep)?;
    } else {
        println!(
            "sqlite drill {} of {}: snapshot {} (as of {}): {}",
            rep.id,
            rep.name,
            rep.snapshot,
            rep.snapshot_time,
            if rep.ok { "passed" } else { "FAILED" }
        );
        println!(
            "  integrity_check  {}",
            if rep.integrity_check.is_empty() {
                "-"
            } else {
                &rep.integrity_check
            }
        );
        for (sql, verdict) in &rep.checks {
            println!("  check            {verdict}: {sql}");
        }
        println!(
            "  restore {:.2}s, checks {:.2}s, total {:.2}s",
            rep.restore_secs, rep.checks_secs, rep.total_secs
        );
        if let Some(e) = &rep.error {
            println!("  error: {e}");
        }
    }
    if !rep.ok {
        return Err(Failure {
            code: 1,
            err: anyhow::anyhow!("the drill failed"),
            quiet: ctx.json(),
        });
    }
    Ok(())
}
