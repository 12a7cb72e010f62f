//! `lifeboat restore`: restore a base backup into --pgdata and configure recovery to a
//! target; `pg_ctl start` then replays WAL through `lifeboat wal-fetch`.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::ValueEnum;

use super::{absolute, print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::core::plan::{Target, TimelineChoice};
use crate::core::wal::Lsn;
use crate::restore::sink::SyncMethod;
use crate::restore::{self, RestoreOptions, TargetAction};

#[derive(clap::Args)]
pub struct Args {
    /// The (empty) data directory to restore into.
    #[arg(long)]
    pgdata: PathBuf,
    /// Stop at this time: RFC 3339 or YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]; without a zone,
    /// this host's local time.
    #[arg(long, group = "target", value_name = "TIME")]
    target_time: Option<String>,
    #[arg(long, group = "target", value_name = "LSN")]
    target_lsn: Option<String>,
    #[arg(long, group = "target", value_name = "XID")]
    target_xid: Option<String>,
    /// A restore point made with pg_create_restore_point().
    #[arg(long, group = "target", value_name = "NAME")]
    target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long, group = "target")]
    target_immediate: bool,
    /// latest, current (the backup's) or a timeline id.
    #[arg(long, default_value = "latest", value_name = "TLI")]
    target_timeline: String,
    #[arg(long, value_enum, default_value = "promote")]
    target_action: ActionArg,
    /// Restore this backup instead of the newest that reaches the target.
    #[arg(long, value_name = "ID")]
    backup: Option<String>,
    /// Delete what is in --pgdata (and tablespace directories) first.
    #[arg(long)]
    force: bool,
    /// Put tablespace OID in DIR instead of its original location (repeatable).
    #[arg(long = "tablespace", value_name = "OID=DIR")]
    tablespaces: Vec<String>,
    /// Print the plan and the preflight checks; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The bin directory of the PostgreSQL installation that will run the restored data.
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// Parts fetched and decrypted in parallel.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Segments the restore_command fetches ahead during replay (0 = one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=64))]
    wal_prefetch: u16,
    /// How the restored files are made durable: fsync each file as it is written, or
    /// syncfs each target file system once at the end (PostgreSQL's names). Either way
    /// global/pg_control is written last.
    #[arg(long, value_enum, default_value = "fsync", value_name = "METHOD")]
    sync_method: SyncArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Fsync,
    Syncfs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Promote,
    Pause,
    Shutdown,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let target = parse_target(a)?;
    let timeline = parse_timeline(&a.target_timeline)?;
    let mut tablespaces = Vec::new();
    for t in &a.tablespaces {
        let (oid, dir) = t
            .split_once('=')
            .and_then(|(o, d)| Some((o.trim().parse::<u32>().ok()?, d)))
            .filter(|(_, d)| !d.is_empty())
            .ok_or_else(|| {
                usage(format!(
                    "--tablespace: \"{t}\" is not OID=DIR (e.g. 16384=/srv/ts1)"
                ))
            })?;
        tablespaces.push((oid, absolute(std::path::Path::new(dir))));
    }
    let archive = Archive::open(&ctx.cfg)?;
    let op = std::sync::Arc::new(ctx.opener()?);
    let opts = RestoreOptions {
        pgdata: absolute(&a.pgdata),
        target,
        timeline,
        action: match a.target_action {
            ActionArg::Promote => TargetAction::Promote,
            ActionArg::Pause => TargetAction::Pause,
            ActionArg::Shutdown => TargetAction::Shutdown,
        },
        backup: a.backup.clone(),
        force: a.force,
        tablespaces,
        pg_bin: a.pg_bin.clone(),
        restore_command: restore::restore_command_line(
            &std::env::current_exe().context("locating the lifeboat binary")?,
            &ctx.cfg_path,
            &ctx.identity_path()?,
            a.wal_prefetch,
        ),
        jobs: a.jobs,
        sync_method: match a.sync_method {
            SyncArg::Fsync => SyncMethod::Fsync,
            SyncArg::Syncfs => SyncMethod::Syncfs,
        },
    };
    if a.dry_run {
        let (plan, meta, inv) = restore::make_plan(
            &archive,
            &opts.target,
            opts.timeline,
            opts.backup.as_deref(),
        )
        .await?;
        let (problems, pg, _) = restore::preflight(&archive, &op, &meta, &opts).await;
        let chain: Vec<_> = plan
            .chain
            .iter()
            .filter_map(|id| inv.backups.iter().find(|b| &b.id == id).cloned())
            .collect();
        let keys = restore::chain_keys(&meta, &chain);
        let cold = crate::archive::thaw::survey(&archive, &keys, false).await?;
        if ctx.json() {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "plan": plan,
                    "cold": cold.cold.iter().map(|(k, p)| serde_json::json!({"key": k, "provider": p})).collect::<Vec<_>>(),
                    "preflight": problems,
                    "pg_bin": pg.as_ref().map(|p| p.bin.clone()),
                }))
                .context("encoding the plan")?
            );
        } else {
            print!("{}", plan.render());
            if !cold.cold.is_empty() {
                println!(
                    "cold      {} of {} objects are in an archive storage class (first: {} on \"{}\"): restore requests their thaw and waits (hours for Deep Archive)",
                    cold.cold.len(),
                    keys.len(),
                    cold.cold[0].0,
                    cold.cold[0].1
                );
            }
            if let Some(pg) = &pg {
                println!("postgres  {} (PostgreSQL {})", pg.bin.display(), pg.version);
            }
            if problems.is_empty() {
                println!("preflight ok");
            }
            for p in &problems {
                println!("preflight problem: {}", p.replace('\n', "\n          "));
            }
        }
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(Failure {
                code: 1,
                err: anyhow!("preflight failed ({} problems)", problems.len()),
                quiet: false,
            })
        };
    }
    let rep = restore::run(&archive, op, &opts).await?;
    if ctx.json() {
        print_json(&rep)?;
    } else {
        print!("{}", rep.plan.render());
        println!(
                "restored backup {} into {}: {} files, {} bytes in {:.1} s (fetch {:.1} s, extract and verify {:.1} s)",
                rep.plan.backup,
                rep.pgdata.display(),
                rep.files,
                rep.bytes,
                rep.total_seconds,
                rep.fetch_seconds,
                rep.extract_seconds
            );
        println!(
                "next: start PostgreSQL on it ({}/pg_ctl -D {} start); it replays WAL through lifeboat wal-fetch{}",
                rep.pg_bin.display(),
                rep.pgdata.display(),
                match rep.plan.target {
                    Target::Latest => " to the end of the archive and promotes".to_string(),
                    _ => format!(" to {} and then does: {}", rep.plan.target_text, opts.action.as_str()),
                }
            );
    }
    Ok(())
}

fn parse_target(a: &Args) -> Result<Target, Failure> {
    if let Some(t) = &a.target_time {
        return restore::resolve_time(t)
            .map(Target::Time)
            .map_err(|e| usage(format!("--target-time: {e}")));
    }
    if let Some(l) = &a.target_lsn {
        return l
            .parse::<Lsn>()
            .map(Target::Lsn)
            .map_err(|e| usage(format!("--target-lsn: {e}")));
    }
    if let Some(x) = &a.target_xid {
        return x
            .trim()
            .parse::<u64>()
            .map(Target::Xid)
            .map_err(|_| usage(format!("--target-xid: \"{x}\" is not a transaction id (a decimal number, e.g. from SELECT pg_current_xact_id())")));
    }
    if let Some(n) = &a.target_name {
        if n.is_empty() || n.len() > 63 {
            return Err(usage(format!(
                "--target-name: \"{n}\" is not a restore point name (1 to 63 bytes)"
            )));
        }
        return Ok(Target::Name(n.clone()));
    }
    if a.target_immediate {
        return Ok(Target::Immediate);
    }
    Ok(Target::Latest)
}

fn parse_timeline(s: &str) -> Result<TimelineChoice, Failure> {
    match s.trim() {
        "latest" => Ok(TimelineChoice::Latest),
        "current" => Ok(TimelineChoice::Current),
        t => {
            let v = if let Some(h) = t.strip_prefix("0x") {
                u32::from_str_radix(h, 16).ok()
            } else {
                t.parse::<u32>().ok()
            };
            match v {
                Some(v) if v >= 1 => Ok(TimelineChoice::Id(v)),
                _ => Err(usage(format!("--target-timeline: \"{s}\" is not latest, current or a timeline id (1, 2, ...)"))),
            }
        }
    }
}
