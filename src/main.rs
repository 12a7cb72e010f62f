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
use lifeboat::wal::Lsn;
use lifeboat::{backup, list, stream, verify, walfetch};

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
    WalFetch { segment: String, dest: PathBuf },
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rep).context("encoding the report")?
                );
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                for p in &report.providers {
                    println!(
                        "storage \"{}\": {} objects, {} bytes, {}",
                        p.provider,
                        p.objects,
                        p.bytes,
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).context("encoding the report")?
                );
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
        Command::List => {
            let archive = Archive::open(&cfg)?;
            let report = list::run(&archive).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                print!("{}", list::render(&report));
            }
            Ok(())
        }
        Command::WalFetch { segment, dest } => {
            let archive = Archive::open(&cfg)?;
            let op = opener(&cli, &cfg)?;
            match walfetch::run(&archive, &op, segment, dest).await {
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
