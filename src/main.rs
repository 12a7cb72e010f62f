//! The `lifeboat` command line: parses arguments, loads the configuration, runs one command
//! and maps its outcome to the documented exit codes (0 success, 1 failure, 2 bad usage or
//! configuration; wal-fetch follows PostgreSQL's restore_command contract).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use lifeboat::archive::Archive;
use lifeboat::config::{Config, ConfigError};
use lifeboat::pipeline::Opener;
use lifeboat::plan::{Target, TimelineChoice};
use lifeboat::restore::{self, RestoreOptions, TargetAction};
use lifeboat::wal::Lsn;
use lifeboat::{backup, drill, list, status, stream, verify, walfetch};

const DEFAULT_CONFIG: &str = "/etc/lifeboat/lifeboat.toml";

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Point-in-time recovery for PostgreSQL: WAL streaming into an encrypted, verifiable, mirrored archive"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "LIFEBOAT_CONFIG")]
    config: Option<PathBuf>,
    /// Print one JSON document on stdout where the output is data.
    #[arg(long, global = true)]
    json: bool,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// age identity file for commands that decrypt.
    #[arg(long, global = true, env = "LIFEBOAT_IDENTITY_FILE")]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the replication-slot consumer.
    Stream {
        /// Exit 0 once all WAL before this LSN is durably archived.
        #[arg(long)]
        endpos: Option<String>,
    },
    /// Archive integrity: CRC of every object, WAL continuity and timeline history.
    Verify {
        /// Also decrypt every object (needs the identity).
        #[arg(long)]
        full: bool,
        /// Compare the providers' inventories instead.
        #[arg(long)]
        providers: bool,
        /// With --providers: copy what a provider lacks from another (no key needed).
        #[arg(long, requires = "providers")]
        repair: bool,
    },
    /// The restore_command: write WAL file SEGMENT to DEST.
    WalFetch {
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
    },
    /// Take a base backup over BASE_BACKUP and archive it.
    Backup {
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
    },
    /// Backups and WAL coverage per timeline.
    List,
    /// Health of this host's archiving: exit 0 healthy, 1 degraded, 2 failing.
    Status,
    /// Restore a base backup into --pgdata and configure recovery to a target
    /// (default: the end of the archived WAL); then `pg_ctl start` finishes the job.
    Restore(RestoreArgs),
    /// Restore drill: restore into a scratch directory, start PostgreSQL, run checks,
    /// report timings, record the result in the archive.
    Drill {
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
    },
}

#[derive(clap::Args)]
struct RestoreArgs {
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
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Promote,
    Pause,
    Shutdown,
}

fn usage(msg: String) -> Failure {
    Failure {
        code: 2,
        err: anyhow!(msg),
        quiet: false,
    }
}

fn parse_target(a: &RestoreArgs) -> Result<Target, Failure> {
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

/// How wal-fetch starts its prefetch worker: this binary with the options that found the
/// configuration and the identity, and the logging options; walfetch::run_with appends
/// `--prefetch K --queue-dir Q SEGMENT DEST`. `None` (no worker, still correct) when the
/// binary cannot be located.
fn prefetch_worker_command(cli: &Cli, cfg_path: &str) -> Option<std::process::Command> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config")
        .arg(absolute(std::path::Path::new(cfg_path)));
    if let Some(id) = &cli.identity {
        cmd.arg("--identity").arg(absolute(id));
    }
    if cli.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..cli.verbose {
        cmd.arg("--verbose");
    }
    if matches!(cli.log_format, LogFormat::Json) {
        cmd.arg("--log-format").arg("json");
    }
    cmd.arg("wal-fetch").arg("--prefetch-worker");
    Some(cmd)
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The restore_command PostgreSQL will run: this binary, this configuration, this identity.
fn restore_command(
    cli: &Cli,
    cfg: &Config,
    cfg_path: &str,
    prefetch: u16,
) -> Result<String, Failure> {
    let exe = std::env::current_exe().context("locating the lifeboat binary")?;
    let id = cli
        .identity
        .clone()
        .or_else(|| cfg.encryption.identity_file.clone())
        .ok_or_else(|| usage("no age identity given".into()))?;
    let q = |p: &std::path::Path| restore::shell_quote(&absolute(p).to_string_lossy());
    Ok(restore::restore_command_line(
        &q(&exe),
        &q(std::path::Path::new(cfg_path)),
        &q(&id),
        prefetch,
    ))
}

/// The `--json` form of a command's report, on stdout.
fn print_json<T: serde::Serialize>(report: &T) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).context("encoding the report")?
    );
    Ok(())
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    err: anyhow::Error,
    quiet: bool,
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        let code = if err.downcast_ref::<ConfigError>().is_some() {
            2
        } else {
            1
        };
        Failure {
            code,
            err,
            quiet: false,
        }
    }
}

/// Sealed WAL objects are multi-megabyte buffers allocated and freed on several threads.
/// glibc raises its mmap threshold after the first such free and then keeps the freed
/// blocks in per-thread arenas, which more than doubled peak RSS in the stream benchmark
/// (67 MiB vs 25 MiB). A fixed threshold returns them to the system at once.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.quiet {
                eprintln!("error: {:#}", f.err);
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "warn"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("lifeboat={level},warn")));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn load_config(cli: &Cli) -> Result<(Config, String), Failure> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let cfg = Config::load(&path).map_err(|e| Failure::from(anyhow::Error::new(e)))?;
    Ok((cfg, path.display().to_string()))
}

fn opener(cli: &Cli, cfg: &Config) -> Result<Opener, Failure> {
    let path = cli
        .identity
        .clone()
        .or_else(|| cfg.encryption.identity_file.clone())
        .ok_or_else(|| Failure {
            code: 2,
            err: anyhow!("this command decrypts, and no age identity was given\nhint: pass --identity FILE, set LIFEBOAT_IDENTITY_FILE, or set encryption.identity_file (on restore hosts only)"),
            quiet: false,
        })?;
    Opener::from_file(&path).map_err(|e| Failure {
        code: 2,
        err: e.into(),
        quiet: false,
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let (cfg, cfg_path) = load_config(&cli)?;
    match &cli.command {
        Command::Stream { endpos } => {
            cfg.require_for_writing(&cfg_path)
                .map_err(|e| Failure::from(anyhow::Error::new(e)))?;
            let endpos = endpos
                .as_deref()
                .map(|s| s.parse::<Lsn>())
                .transpose()
                .map_err(|e| Failure {
                    code: 2,
                    err: anyhow!("--endpos: {e}"),
                    quiet: false,
                })?;
            stream::run(&cfg, stream::StreamOptions { endpos }).await?;
            Ok(())
        }
        Command::Verify {
            providers: true,
            repair,
            ..
        } => {
            let archive = Archive::open(&cfg)?;
            let rep = verify::providers(&archive, *repair).await?;
            if cli.json {
                print_json(&rep)?;
            } else {
                println!(
                    "{} providers ({}), {} objects",
                    rep.providers.len(),
                    rep.providers.join(", "),
                    rep.objects
                );
                for (k, who) in &rep.missing {
                    println!("  missing: {k} on {}", who.join(", "));
                }
                for (k, sizes) in &rep.differing {
                    println!("  differs: {k} ({})", sizes.join(", "));
                }
                for (k, how) in &rep.repaired {
                    println!("  repaired: {k} ({how})");
                }
                for p in &rep.problems {
                    println!("  problem: {p}");
                }
                if rep.ok() {
                    println!("  ok: every provider holds every object");
                }
            }
            if rep.ok() {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    err: anyhow!("the providers differ (hint: lifeboat verify --providers --repair copies what is missing)"),
                    quiet: false,
                })
            }
        }
        Command::Verify { full, .. } => {
            let archive = Archive::open(&cfg)?;
            let op = if *full {
                Some(opener(&cli, &cfg)?)
            } else {
                None
            };
            let report = verify::run(&archive, op.as_ref()).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                for p in &report.providers {
                    println!(
                        "storage \"{}\": {} objects, {} bytes, {} backup{}, {}",
                        p.provider,
                        p.objects,
                        p.bytes,
                        p.backups,
                        if p.backups == 1 { "" } else { "s" },
                        if p.problems.is_empty() {
                            "ok"
                        } else {
                            "PROBLEMS"
                        }
                    );
                    for r in &p.wal {
                        println!(
                            "  timeline {}: WAL {} – {}",
                            r.timeline, r.start_lsn, r.end_lsn
                        );
                    }
                    if !p.unreferenced.is_empty() {
                        println!(
                            "  {} objects under backups/ belong to no backup.json (left by an interrupted backup; they are never read)",
                            p.unreferenced.len()
                        );
                    }
                    for pr in &p.problems {
                        println!("  problem: {pr}");
                    }
                }
            }
            if report.ok() {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    err: anyhow!("verification found problems"),
                    quiet: false,
                })
            }
        }
        Command::Backup {
            label,
            fast,
            wal_timeout,
        } => {
            cfg.require_for_writing(&cfg_path)
                .map_err(|e| Failure::from(anyhow::Error::new(e)))?;
            let wal_timeout =
                humantime::parse_duration(wal_timeout.trim()).map_err(|e| Failure {
                    code: 2,
                    err: anyhow!("--wal-timeout: \"{wal_timeout}\" is not a duration ({e})"),
                    quiet: false,
                })?;
            let out = backup::run(
                &cfg,
                backup::BackupOptions {
                    label: label.clone(),
                    fast: *fast,
                    wal_timeout,
                },
            )
            .await?;
            if cli.json {
                print_json(&out)?;
            } else {
                println!(
                    "backup {}: {} parts, {} bytes ({} stored), WAL {} – {} on timeline {}, {}",
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
            }
            Ok(())
        }
        Command::Status => {
            // Monitoring reads 1 as degraded: a status that cannot even run is failing.
            let archive = Archive::open(&cfg).map_err(|e| Failure {
                code: 2,
                err: e,
                quiet: false,
            })?;
            let report = status::run(&cfg.wal.spool_dir, &archive).await;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", status::render(&report));
            }
            match report.level().exit_code() {
                0 => Ok(()),
                code => Err(Failure {
                    code,
                    err: anyhow::anyhow!("status: {}", report.status),
                    quiet: true,
                }),
            }
        }
        Command::List => {
            let archive = Archive::open(&cfg)?;
            let report = list::run(&archive).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", list::render(&report));
            }
            Ok(())
        }
        Command::Restore(a) => {
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
            let archive = Archive::open(&cfg)?;
            let op = std::sync::Arc::new(opener(&cli, &cfg)?);
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
                restore_command: restore_command(&cli, &cfg, &cfg_path, a.wal_prefetch)?,
                jobs: a.jobs,
            };
            if a.dry_run {
                let (plan, meta, _) = restore::make_plan(
                    &archive,
                    &opts.target,
                    opts.timeline,
                    opts.backup.as_deref(),
                )
                .await?;
                let (problems, pg, _) = restore::preflight(&archive, &op, &meta, &opts).await;
                if cli.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "plan": plan,
                            "preflight": problems,
                            "pg_bin": pg.as_ref().map(|p| p.bin.clone()),
                        }))
                        .context("encoding the plan")?
                    );
                } else {
                    print!("{}", plan.render());
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
            if cli.json {
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
        Command::Drill {
            backup,
            target,
            pg_bin,
            check_sql,
            check_db,
            keep,
            run_as,
            scratch_dir,
            timeout,
            jobs,
            wal_prefetch,
        } => {
            let backup = match backup.as_str() {
                "random" => drill::BackupChoice::Random,
                "latest" => drill::BackupChoice::Latest,
                id => drill::BackupChoice::Id(id.to_string()),
            };
            let target = match target.as_str() {
                "random" => drill::DrillTarget::Random,
                "latest" => drill::DrillTarget::Latest,
                t => drill::DrillTarget::Time(
                    restore::resolve_time(t).map_err(|e| usage(format!("--target: {e}")))?,
                ),
            };
            let timeout = humantime::parse_duration(timeout.trim())
                .map_err(|e| usage(format!("--timeout: \"{timeout}\" is not a duration ({e})")))?;
            let identity_path = cli
                .identity
                .clone()
                .or_else(|| cfg.encryption.identity_file.clone())
                .ok_or_else(|| usage("this command decrypts, and no age identity was given\nhint: pass --identity FILE, set LIFEBOAT_IDENTITY_FILE, or set encryption.identity_file".into()))?;
            let archive = Archive::open(&cfg)?;
            let op = std::sync::Arc::new(opener(&cli, &cfg)?);
            let exe = std::env::current_exe().context("locating the lifeboat binary")?;
            let opts = drill::DrillOptions {
                backup,
                target,
                pg_bin: pg_bin.clone(),
                check_sql: check_sql.clone(),
                check_db: check_db.clone(),
                keep: *keep,
                run_as: run_as.clone(),
                scratch_parent: absolute(scratch_dir),
                timeout,
                config_path: absolute(std::path::Path::new(&cfg_path)),
                identity_path: absolute(&identity_path),
                jobs: *jobs,
                wal_prefetch: *wal_prefetch,
            };
            let rep = drill::run(&archive, op, &exe, &opts).await?;
            if cli.json {
                print_json(&rep)?;
            } else {
                print!("{}", drill::render(&rep));
            }
            if rep.ok {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    err: anyhow!(
                        "drill {} failed{}",
                        rep.id,
                        rep.checks
                            .iter()
                            .find(|c| !c.ok)
                            .map(|c| format!(": check {} {}", c.query.replace('\n', " "), c.result))
                            .or_else(|| rep
                                .error
                                .as_ref()
                                .map(|e| format!(": {}", e.lines().next().unwrap_or(""))))
                            .unwrap_or_default()
                    ),
                    quiet: false,
                })
            }
        }
        Command::WalFetch {
            segment,
            dest,
            prefetch,
            queue_dir,
            prefetch_worker,
        } => {
            let archive = Archive::open(&cfg)?;
            let op = opener(&cli, &cfg)?;
            if *prefetch_worker {
                // Detached from PostgreSQL: nobody reads its exit status; its stderr is
                // <queue>/worker.log.
                let q = queue_dir.as_deref().expect("clap requires --queue-dir");
                walfetch::prefetch_worker(&archive, &op, q, usize::from(*prefetch)).await?;
                return Ok(());
            }
            let opts = walfetch::FetchOptions {
                prefetch: usize::from(*prefetch),
                queue_dir: queue_dir.clone(),
            };
            let worker = if *prefetch > 0 {
                prefetch_worker_command(&cli, &cfg_path)
            } else {
                None
            };
            match walfetch::run_with(&archive, &op, segment, dest, &opts, worker).await {
                Ok(()) => Ok(()),
                Err(e) if e.downcast_ref::<walfetch::NotFound>().is_some() => {
                    tracing::debug!("{e}");
                    Err(Failure {
                        code: 1,
                        err: e,
                        quiet: true,
                    })
                }
                // Exit status above 125 makes PostgreSQL stop recovery instead of treating
                // the file as the end of WAL: a damaged archive must never end recovery early.
                Err(e) if e.downcast_ref::<walfetch::Unusable>().is_some() => Err(Failure {
                    code: 126,
                    err: e,
                    quiet: false,
                }),
                Err(e) => Err(Failure {
                    code: 126,
                    err: e,
                    quiet: false,
                }),
            }
        }
    }
}
