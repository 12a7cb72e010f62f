//! The commands: one file each, holding its clap arguments, the call into the engines
//! below, and its text and `--json` rendering. What they share (the global options, the
//! loaded configuration, the identity lookup, the failure type and the JSON printer) is
//! here; a command never imports another command.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::pipeline::Opener;

pub mod accept_gap;
pub mod backup;
pub mod check;
pub mod completions;
pub mod drill;
pub mod dump;
pub mod dump_restore;
pub mod get;
pub mod init;
pub mod keys;
pub mod list;
pub mod man;
pub mod plan;
pub mod prune;
pub mod put;
pub mod recover_table;
pub mod restore;
pub mod schedule;
pub mod sqlite;
pub mod status;
pub mod stream;
pub mod verify;
pub mod wal_fetch;

const DEFAULT_CONFIG: &str = "/etc/lifeboat/lifeboat.toml";

/// Options every command takes.
#[derive(Args)]
pub struct Global {
    /// Configuration file.
    #[arg(long, global = true, env = "LIFEBOAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout where the output is data.
    #[arg(long, global = true)]
    pub json: bool,
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// age identity file for commands that decrypt.
    #[arg(long, global = true, env = "LIFEBOAT_IDENTITY_FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Set up: generate the age key pair (--identity-out, on the restore host), write a
    /// commented configuration, and check the server (wal_level, senders, slots, the role,
    /// pg_hba.conf) with the exact SQL for what fails (--apply runs it).
    Init(init::Args),
    /// Run the replication-slot consumer.
    Stream(stream::Args),
    /// Archive integrity: CRC of every object, WAL continuity and timeline history.
    Verify(verify::Args),
    /// The restore_command: write WAL file SEGMENT to DEST.
    WalFetch(wal_fetch::Args),
    /// Take a base backup over BASE_BACKUP and archive it.
    Backup(backup::Args),
    /// Backups and WAL coverage per timeline.
    List,
    /// Health of this host's archiving: exit 0 healthy, 1 degraded, 2 failing.
    Status,
    /// For monitoring systems: one Nagios plugin line with perfdata (or --json); exit 0 OK,
    /// 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Reads the streamer's status file where there is
    /// one, and the archive.
    Check(check::Args),
    /// Key custody: on the database host no identity that decrypts the archive may be
    /// readable (WARNING, exit 1); on the restore host (--identity) the identity must open
    /// the archive's key canary.
    Keys(keys::Args),
    /// Restore a base backup into --pgdata and configure recovery to a target
    /// (default: the end of the archived WAL); then `pg_ctl start` finishes the job.
    Restore(restore::Args),
    /// Restore drill: restore into a scratch directory, start PostgreSQL, run checks,
    /// report timings, record the result in the archive.
    Drill(drill::Args),
    /// After the streamer stopped on lost WAL: record the gap in the archive, make the
    /// replication slot usable again, and let archiving resume after the gap.
    AcceptGap,
    /// Apply the [retention] policy: keep the recovery points its tiers name, delete the
    /// rest in a crash-safe order (--dry-run: print the plan only).
    Prune(prune::Args),
    /// The cost plan of the [retention] policy: stored bytes and USD a month per tier and
    /// provider, storage and requests, with the wal.max_delay trade-off; from the archive's
    /// sizes or from --db-size and --wal-per-day.
    Plan(plan::Args),
    /// Logical copies: pg_dump (custom format) of each database and the globals, through
    /// the pipeline into the archive; dump.json is written last.
    Dump(dump::Args),
    /// Restore a database of a dump with pg_restore (all of it, --table, --schema), print
    /// its table of contents (--list), or write the custom-format file (--output).
    DumpRestore(dump_restore::Args),
    /// Tables as of a point in time, beside today's data: the right backup restored into
    /// a scratch server, replayed to the target, the tables loaded under new names
    /// (--into) or written as a dump (--output).
    RecoverTable(recover_table::Args),
    /// Store files, a directory tree or stdin (any other service's export) through the
    /// pipeline; export.json is written last.
    Put(put::Args),
    /// Fetch an export back: the newest, or the newest put at or before --at.
    Get(get::Args),
    /// The jobs of [schedule] (run by `stream`): last success, last failure, next due;
    /// --run runs them without streaming (the restore host: drills, prune).
    Schedule(schedule::Args),
    /// Shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(completions::Args),
    /// The manual page (roff) on stdout, or lifeboat.1 and a page per command into --dir.
    Man(man::Args),
    /// The SQLite sibling mode: snapshots of WAL-mode databases (page images in one read
    /// transaction, page deltas), list, restore to a time, drills.
    Sqlite(sqlite::Args),
}

/// Run one command.
pub async fn run(global: &Global, command: &Command) -> Result<(), Failure> {
    crate::archive::progress::set_quiet(global.quiet);
    if let Command::Init(a) = command {
        return init::run(global, a).await;
    }
    let ctx = Ctx::load(global)?;
    let needs_postgres = match command {
        Command::Stream(_) => Some("stream"),
        Command::Backup(_) => Some("backup"),
        Command::AcceptGap => Some("accept-gap"),
        Command::Dump(_) => Some("dump"),
        Command::RecoverTable(_) => Some("recover-table"),
        _ => None,
    };
    if let Some(c) = needs_postgres {
        ctx.cfg
            .require_postgres(&ctx.cfg_name(), c)
            .map_err(|e| Failure::from(anyhow::Error::new(e)))?;
    }
    match command {
        Command::Init(_) => unreachable!("init runs before the configuration is loaded"),
        Command::Completions(_) | Command::Man(_) => {
            unreachable!("generated by main from the clap definitions")
        }
        Command::Stream(a) => stream::run(&ctx, a).await,
        Command::Verify(a) => verify::run(&ctx, a).await,
        Command::WalFetch(a) => wal_fetch::run(&ctx, a).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::List => list::run(&ctx).await,
        Command::Status => status::run(&ctx).await,
        Command::Check(a) => check::run(&ctx, a).await,
        Command::Keys(a) => keys::run(&ctx, a).await,
        Command::Restore(a) => restore::run(&ctx, a).await,
        Command::Drill(a) => drill::run(&ctx, a).await,
        Command::AcceptGap => accept_gap::run(&ctx).await,
        Command::Prune(a) => prune::run(&ctx, a).await,
        Command::Plan(a) => plan::run(&ctx, a).await,
        Command::Dump(a) => dump::run(&ctx, a).await,
        Command::DumpRestore(a) => dump_restore::run(&ctx, a).await,
        Command::RecoverTable(a) => recover_table::run(&ctx, a).await,
        Command::Put(a) => put::run(&ctx, a).await,
        Command::Get(a) => get::run(&ctx, a).await,
        Command::Schedule(a) => schedule::run(&ctx, a).await,
        Command::Sqlite(a) => sqlite::run(&ctx, a).await,
    }
}

/// What a command runs with: the global options and the loaded configuration.
pub struct Ctx<'a> {
    pub global: &'a Global,
    pub cfg: Config,
    /// The configuration file, as given.
    pub cfg_path: PathBuf,
}

impl<'a> Ctx<'a> {
    fn load(global: &'a Global) -> Result<Ctx<'a>, Failure> {
        let cfg_path = global
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let cfg = Config::load(&cfg_path).map_err(|e| Failure::from(anyhow::Error::new(e)))?;
        Ok(Ctx {
            global,
            cfg,
            cfg_path,
        })
    }

    /// The configuration file as error messages name it.
    pub fn cfg_name(&self) -> String {
        self.cfg_path.display().to_string()
    }

    /// Commands that write to the archive need a complete configuration.
    pub fn require_for_writing(&self) -> Result<(), Failure> {
        self.cfg
            .require_for_writing(&self.cfg_name())
            .map_err(|e| Failure::from(anyhow::Error::new(e)))
    }

    /// The age identity file of a command that decrypts: `--identity`,
    /// `LIFEBOAT_IDENTITY_FILE`, or `encryption.identity_file`. The one lookup.
    pub fn identity_path(&self) -> Result<PathBuf, Failure> {
        self.global
            .identity
            .clone()
            .or_else(|| self.cfg.encryption.identity_file.clone())
            .ok_or_else(|| {
                usage("this command decrypts, and no age identity was given\nhint: pass --identity FILE, set LIFEBOAT_IDENTITY_FILE, or set encryption.identity_file (on restore hosts only)".into())
            })
    }

    /// The identity, opened.
    pub fn opener(&self) -> Result<Opener, Failure> {
        let path = self.identity_path()?;
        Opener::from_file(&path).map_err(|e| Failure {
            code: 2,
            err: e.into(),
            quiet: false,
        })
    }

    /// The `--json` flag.
    pub fn json(&self) -> bool {
        self.global.json
    }
}

/// At a writer's start (stream, backup, init): the archive holds the key canary of the
/// configured recipients, or gets it; a recipient set nobody is known to hold an identity
/// for is refused (exit 2) unless `accept_new` (see `archive::keys::ensure_canary`).
pub async fn ensure_canary(
    cfg: &Config,
    accept_new: bool,
) -> Result<crate::archive::keys::Ensured, Failure> {
    let archive = crate::archive::Archive::open(cfg)?;
    crate::archive::keys::ensure_canary(&archive, &cfg.encryption.recipients, accept_new)
        .await
        .map_err(|e| {
            let code = if e
                .downcast_ref::<crate::archive::keys::RecipientsRefused>()
                .is_some()
            {
                2
            } else {
                1
            };
            Failure {
                code,
                err: e,
                quiet: false,
            }
        })
}

/// A failure with its exit code.
pub struct Failure {
    pub code: u8,
    pub err: anyhow::Error,
    /// Already reported (or nothing to say): print no `error:` line.
    pub quiet: bool,
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

/// Bad usage: exit 2.
pub fn usage(msg: String) -> Failure {
    Failure {
        code: 2,
        err: anyhow!(msg),
        quiet: false,
    }
}

/// Exit 1 with this message.
pub fn failed(msg: String) -> Failure {
    Failure {
        code: 1,
        err: anyhow!(msg),
        quiet: false,
    }
}

/// The `--json` form of a command's report, on stdout.
pub fn print_json<T: serde::Serialize>(report: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Failure::from(anyhow!("encoding the report: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Write generated text on stdout; a reader that went away (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> std::process::ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A path made absolute against the current directory (kept as is if that fails).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A duration option such as `--timeout 1h`.
pub fn parse_duration_arg(flag: &str, s: &str) -> Result<std::time::Duration, Failure> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        usage(format!(
            "{flag}: \"{s}\" is not a duration ({e})\nhint: e.g. {flag} 90s, 15m, 26h or 100days"
        ))
    })
}
