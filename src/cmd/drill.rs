//! `lifeboat drill`: the restore drill, automated; its report and its exit status.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::{absolute, parse_duration_arg, print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::core::catalog::{DrillReport, TableCount};
use crate::restore::{self, drill};

#[derive(clap::Args)]
pub struct Args {
    /// random, latest or a backup id.
    #[arg(long, default_value = "random")]
    backup: String,
    /// random (a point of the backup's PITR window), latest, or a time.
    #[arg(long, default_value = "random")]
    target: String,
    /// The bin directory of the PostgreSQL to run (default: found by version).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// SQL statements that must succeed and return true.
    #[arg(long, value_name = "FILE")]
    check_sql: Option<PathBuf>,
    /// The database the --check-sql statements run in.
    #[arg(long, default_value = "postgres")]
    check_db: String,
    /// Keep the scratch directory.
    #[arg(long)]
    keep: bool,
    /// The OS user PostgreSQL runs as when lifeboat runs as root (default postgres).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Where the scratch directory is made.
    #[arg(long, default_value = "/var/tmp", value_name = "DIR")]
    scratch_dir: PathBuf,
    /// Upper bound for recovery to reach its target.
    #[arg(long, default_value = "1h")]
    timeout: String,
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Segments the restore_command fetches ahead during replay (0 = one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=64))]
    wal_prefetch: u16,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let backup = match a.backup.as_str() {
        "random" => drill::BackupChoice::Random,
        "latest" => drill::BackupChoice::Latest,
        id => drill::BackupChoice::Id(id.to_string()),
    };
    let target = match a.target.as_str() {
        "random" => drill::DrillTarget::Random,
        "latest" => drill::DrillTarget::Latest,
        t => drill::DrillTarget::Time(
            restore::resolve_time(t).map_err(|e| usage(format!("--target: {e}")))?,
        ),
    };
    let timeout = parse_duration_arg("--timeout", &a.timeout)?;
    let identity_path = ctx.identity_path()?;
    let archive = Archive::open(&ctx.cfg)?;
    let op = Arc::new(ctx.opener()?);
    let exe = std::env::current_exe().context("locating the lifeboat binary")?;
    let opts = drill::DrillOptions {
        backup,
        target,
        pg_bin: a.pg_bin.clone(),
        check_sql: a.check_sql.clone(),
        check_db: a.check_db.clone(),
        keep: a.keep,
        run_as: a.run_as.clone(),
        scratch_parent: absolute(&a.scratch_dir),
        timeout,
        config_path: absolute(&ctx.cfg_path),
        identity_path: absolute(&identity_path),
        jobs: a.jobs,
        wal_prefetch: a.wal_prefetch,
        recipients: ctx.cfg.encryption.recipients.clone(),
    };
    let rep = drill::run(&archive, op, &exe, &opts).await?;
    if ctx.json() {
        print_json(&rep)?;
    } else {
        print!("{}", render(&rep));
    }
    if rep.ok {
        return Ok(());
    }
    let why = rep
        .checks
        .iter()
        .find(|c| !c.ok)
        .map(|c| format!(": check {} {}", c.query.replace('\n', " "), c.result))
        .or_else(|| {
            rep.error
                .as_ref()
                .map(|e| format!(": {}", e.lines().next().unwrap_or("")))
        })
        .unwrap_or_default();
    Err(Failure {
        code: 1,
        err: anyhow!("drill {} failed{why}", rep.id),
        quiet: false,
    })
}

/// The human report.
pub fn render(r: &DrillReport) -> String {
    let mut s = format!(
        "drill {}: {}\nbackup {}  target {}\n",
        r.id,
        if r.ok { "PASSED" } else { "FAILED" },
        r.backup.as_deref().unwrap_or("-"),
        r.recovery_target.as_deref().unwrap_or(&r.target)
    );
    if let Some(v) = &r.pg_version {
        s.push_str(&format!("server {v}\n"));
    }
    s.push_str(&format!(
        "{:<10} {:>9}\n{:<10} {:>8.1}s\n{:<10} {:>8.1}s\n{:<10} {:>8.1}s\n{:<10} {:>8.1}s\n{:<10} {:>8.1}s  (the measured RTO)\n",
        "PHASE", "SECONDS", "fetch", r.phases.fetch, "extract", r.phases.extract, "replay", r.phases.replay, "checks", r.phases.checks, "total", r.phases.total
    ));
    s.push_str(&format!(
        "tables: {} read, {} rows",
        r.tables.len(),
        r.tables_rows()
    ));
    let bad: Vec<&TableCount> = r.tables.iter().filter(|t| t.error.is_some()).collect();
    if bad.is_empty() {
        s.push('\n');
    } else {
        s.push_str(&format!(", {} unreadable:\n", bad.len()));
        for t in bad {
            s.push_str(&format!(
                "  {}.{}: {}\n",
                t.database,
                t.table,
                t.error.as_deref().unwrap_or("")
            ));
        }
    }
    match &r.key_check {
        Some(k) if k.ok => s.push_str(&format!(
            "key: the identity opens {}\n",
            k.canary.as_deref().unwrap_or("-")
        )),
        Some(k) => s.push_str(&format!(
            "key: NOT PROVEN: {}\n",
            k.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        )),
        None => {}
    }
    for c in &r.checks {
        s.push_str(&format!(
            "check {}: {} ({})\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.query.replace('\n', " "),
            c.result
        ));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("error: {e}\n"));
    }
    if r.kept {
        if let Some(d) = &r.scratch_dir {
            s.push_str(&format!("kept: {d}\n"));
        }
    }
    s
}
