//! `lifeboat init`: the first command a new user runs.
//!
//! - On the restore (vault) host, `--identity-out FILE` generates the age key pair, writes
//!   the identity to FILE (mode 0600, never over an existing file without `--force`) and
//!   prints only the recipient, which is all the database host needs.
//! - On the database host, it writes a commented configuration file (never over an existing
//!   one without `--force`) with the recipient, the archive and the conninfo.
//! - With a conninfo (or `--check` and the configuration's), it connects and checks the
//!   server the way an operator would: version, `wal_level`, free WAL senders and slots,
//!   `max_slot_wal_keep_size`, the role's REPLICATION attribute, and a replication
//!   connection (pg_hba.conf). Every check prints one pass/fail line and a hint with the
//!   exact SQL or pg_hba.conf line; `--apply` runs the SQL where the role may.
//!
//! The config file is parsed back before it is written, so `init` never leaves a file the
//! other commands refuse.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use anyhow::Context;

use super::{Ctx, Failure, Global};
use crate::pg::conn::Connection;
use crate::pg::conninfo::ConnParams;
use crate::pg::protocol::quote_ident;

#[derive(clap::Args)]
pub struct Args {
    /// Generate an age key pair: the identity goes to FILE (keep it off the database host),
    /// the recipient is printed.
    #[arg(long, value_name = "FILE")]
    identity_out: Option<PathBuf>,
    /// The age recipient (age1...) backups are encrypted to (default: the generated one).
    #[arg(long, value_name = "AGE")]
    recipient: Option<String>,
    /// The archive: file:///path or s3://bucket/prefix.
    #[arg(
        long,
        value_name = "URL",
        default_value = "file:///var/lib/lifeboat/archive"
    )]
    archive: String,
    /// How lifeboat reaches PostgreSQL; checks the server.
    #[arg(long, value_name = "CONNINFO")]
    conninfo: Option<String>,
    /// Where sealed WAL waits for a provider that is down (wal.spool_dir).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lifeboat/spool")]
    spool_dir: PathBuf,
    /// Only check the server (the conninfo of --conninfo, else of the configuration).
    #[arg(long)]
    check: bool,
    /// Run the SQL that fixes a failed check, where the role may (ALTER SYSTEM, ALTER ROLE).
    #[arg(long)]
    apply: bool,
    /// Overwrite an existing configuration or identity file.
    #[arg(long)]
    force: bool,
}

/// What `init --json` prints: what was written and each check's outcome.
#[derive(Default, serde::Serialize)]
struct Report {
    /// The identity file written (--identity-out).
    identity: Option<PathBuf>,
    /// The recipient the configuration encrypts to.
    recipient: Option<String>,
    /// The configuration file written.
    configuration: Option<PathBuf>,
    checks: Vec<CheckJson>,
    /// The SQL --apply ran, each with its error if it failed.
    applied: Vec<Applied>,
    /// Whether the server passed every check (absent when it was not checked).
    ready: Option<bool>,
}

#[derive(serde::Serialize)]
struct CheckJson {
    /// "ok", "warn" or "fail".
    outcome: &'static str,
    text: String,
    hint: Option<String>,
    fix: Option<String>,
}

#[derive(serde::Serialize)]
struct Applied {
    sql: String,
    error: Option<String>,
}

/// `init` runs before there is a configuration: it takes the global options only.
pub async fn run(global: &Global, a: &Args) -> Result<(), Failure> {
    let mut report = Report::default();
    let result = init(global, a, &mut report).await;
    // Bad usage prints no document; a run that wrote something or checked the server does.
    if global.json && (result.is_ok() || report.ready.is_some()) {
        super::print_json(&report)?;
    }
    result
}

async fn init(global: &Global, a: &Args, report: &mut Report) -> Result<(), Failure> {
    let json = global.json;
    let cfg_path = global
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_CONFIG));
    if a.check {
        let conninfo = match &a.conninfo {
            Some(c) => c.clone(),
            None => {
                let ctx = Ctx::load(global)?;
                ctx.cfg.postgres.conninfo.clone()
            }
        };
        return check_server(&conninfo, a.apply, json, report).await;
    }
    let mut recipient = a.recipient.clone();
    if let Some(path) = &a.identity_out {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        write_new(
            path,
            format!(
                "# lifeboat identity, created by `lifeboat init`: keep it on the restore host only\n# public key: {public}\n{}\n",
                id.to_string().expose_secret()
            )
            .as_bytes(),
            0o600,
            a.force,
        )
        .map_err(|e| super::usage(format!("{e:#}")))?;
        if !json {
            println!(
                "identity: {} (mode 0600; keep it off the database host)",
                path.display()
            );
            println!("recipient: {public}");
        }
        report.identity = Some(path.clone());
        recipient.get_or_insert(public);
    }
    let Some(recipient) = recipient else {
        return Err(super::usage(
            "init needs the recipient backups are encrypted to\nhint: on the restore host run `lifeboat init --identity-out /etc/lifeboat/identity.txt` and pass the recipient it prints with --recipient age1..."
                .to_string(),
        ));
    };
    if age::x25519::Recipient::from_str(recipient.trim()).is_err() {
        return Err(super::usage(format!(
            "--recipient \"{recipient}\" is not an age X25519 recipient\nhint: it starts with age1 (`age-keygen -y IDENTITY` prints it)"
        )));
    }
    let conninfo = a
        .conninfo
        .clone()
        .unwrap_or_else(|| "host=/var/run/postgresql user=lifeboat".into());
    let text = config_text(
        &conninfo,
        recipient.trim(),
        &a.archive,
        &a.spool_dir.display().to_string(),
    );
    let cfg =
        crate::config::Config::parse(&text, &cfg_path.display().to_string()).map_err(|e| {
            super::usage(format!(
                "the configuration init would write is refused: {e}"
            ))
        })?;
    report.recipient = Some(recipient.trim().to_string());
    write_new(&cfg_path, text.as_bytes(), 0o640, a.force)
        .map_err(|e| super::usage(format!("{e:#}")))?;
    report.configuration = Some(cfg_path.clone());
    if !json {
        println!("configuration: {}", cfg_path.display());
    }
    custody(&cfg, &cfg_path, a.identity_out.is_none(), json).await;
    if a.conninfo.is_some() {
        return check_server(&conninfo, a.apply, json, report).await;
    }
    if !json {
        println!("next: lifeboat init --check (with the conninfo in the file) checks the server");
    }
    Ok(())
}

/// Key custody at set-up: the archive gets the key canary of the recipient (the restore
/// host proves its identity against it), and on the database host (no key pair made here)
/// an identity that decrypts the archive must not be readable. Reported, never fatal: the
/// streamer writes the canary at start, and `keys check` repeats the search.
async fn custody(cfg: &crate::config::Config, cfg_path: &Path, db_host: bool, json: bool) {
    use crate::archive::keys::Ensured;
    // With --json, stdout holds the one document: these lines go to stderr.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    match super::ensure_canary(cfg, false).await {
        Ok(Ensured::Written { key, .. }) => say(format!(
            "canary: {key} written to the archive (on the restore host, lifeboat keys check --identity FILE proves the identity opens it)"
        )),
        Ok(Ensured::Present { key }) => say(format!("canary: {key} is in the archive")),
        Ok(Ensured::Unchecked { reason }) => say(format!(
            "canary: not written yet ({reason}); lifeboat stream and backup write it when they start"
        )),
        Err(f) => say(format!(
            "canary: not written: {}",
            format!("{:#}", f.err).replace('\n', "\n        ")
        )),
    }
    if db_host {
        let scan = crate::ingest::custody::scan(cfg, cfg_path);
        for f in scan.decrypting() {
            say(format!("WARNING: {}", crate::ingest::custody::warning(f)));
        }
    }
}

/// Write a file that must not exist yet (unless `force`): a temporary file beside it, then
/// a rename, so a reader never sees half of it.
fn write_new(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() && !force {
        anyhow::bail!(
            "{} already exists: init does not overwrite it\nhint: pass --force to replace it, or give another path",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.init.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn config_text(conninfo: &str, recipient: &str, archive: &str, spool: &str) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"# lifeboat configuration, written by `lifeboat init` (README: Configuration).

[postgres]
# How lifeboat reaches PostgreSQL as a replication client. No password here: use
# ~/.pgpass or PGPASSWORD in the service's environment.
conninfo = "{conninfo}"
slot = "lifeboat"                # the replication slot lifeboat consumes (created if missing)

[encryption]
# Public keys only: the identity (private key) stays on the restore host.
recipients = ["{recipient}"]

[wal]
max_delay = "1s"                 # WAL leaves the host at least this often (RPO)
spool_dir = "{spool}"

[retention]                      # the strategy's policy; applied by `lifeboat prune`
pitr_days = 7
daily_days = 30
weekly_weeks = 52
monthly_months = 84
min_backups = 2

[schedule]                       # run by `lifeboat stream`, no cron needed; `lifeboat schedule` shows it
backup = "daily"                 # a base backup a day, as the retention tiers need
# backup_at = "02:30"            # at this time of day (UTC) instead of a day after the last one
drill = "quarterly"              # at a random time each quarter; needs the identity, so it runs on the
                                 # restore host (`lifeboat schedule --run`); status here warns when late
verify = "weekly"
# dump = "daily"                 # logical dumps (pg_dump) as well
# prune = "daily"                # needs delete rights: run it on the vault host
# rto_target = "30m"             # take a base backup when a restore would take longer

[metrics]
# listen = "127.0.0.1:9187"      # Prometheus endpoint of `lifeboat stream` (docs/ALERTS.md)

[[storage]]
name = "primary"
url = "{archive}"

# A second, independent provider (another company, another region):
# [[storage]]
# name = "offsite"
# url = "s3://bucket/prefix"
# region = "eu-central-1"
# access_key_id_env = "OFFSITE_KEY_ID"
# secret_access_key_env = "OFFSITE_SECRET"
# object_lock = {{ mode = "governance", days = 8 }}
"#,
        conninfo = q(conninfo),
        recipient = q(recipient),
        archive = q(archive),
        spool = q(spool)
    )
}

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Warn,
    Fail,
}

struct Line {
    outcome: Outcome,
    text: String,
    hint: Option<String>,
    /// SQL that fixes it, run by --apply.
    fix: Option<String>,
}

async fn check_server(
    conninfo: &str,
    apply: bool,
    json: bool,
    report: &mut Report,
) -> Result<(), Failure> {
    let params = ConnParams::parse_with_process_env(conninfo)
        .map_err(|e| super::usage(format!("--conninfo: {e}")))?;
    let mut conn = Connection::connect(&params, false).await.map_err(|e| {
        super::failed(format!(
            "cannot connect to PostgreSQL ({e})\nhint: check the conninfo, that the server runs, and pg_hba.conf for a normal connection of user {}",
            params.user
        ))
    })?;
    let lines = checks(&mut conn, &params)
        .await
        .map_err(|e| super::failed(format!("{e:#}")))?;
    let mut failed = false;
    let mut fixes = Vec::new();
    for l in &lines {
        let word = match l.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        report.checks.push(CheckJson {
            outcome: match l.outcome {
                Outcome::Ok => "ok",
                Outcome::Warn => "warn",
                Outcome::Fail => "fail",
            },
            text: l.text.clone(),
            hint: l.hint.clone().filter(|_| l.outcome != Outcome::Ok),
            fix: l.fix.clone().filter(|_| l.outcome != Outcome::Ok),
        });
        if !json {
            println!("{word}  {}", l.text);
            if l.outcome != Outcome::Ok {
                if let Some(h) = &l.hint {
                    println!("      hint: {h}");
                }
            }
        }
        failed |= l.outcome == Outcome::Fail;
        if l.outcome != Outcome::Ok {
            fixes.extend(l.fix.clone());
        }
    }
    if apply && !fixes.is_empty() {
        for sql in &fixes {
            let error = conn.simple_query(sql).await.err().map(|e| e.to_string());
            if !json {
                match &error {
                    None => println!("applied: {sql}"),
                    Some(e) => println!("not applied: {sql}: {e}"),
                }
            }
            report.applied.push(Applied {
                sql: sql.clone(),
                error,
            });
        }
        let _ = conn.simple_query("SELECT pg_reload_conf()").await;
        if !json {
            println!("applied settings marked (restart) take effect after a server restart; run `lifeboat init --check` again");
        }
    }
    conn.close().await;
    report.ready = Some(!failed);
    if failed {
        return Err(super::failed(
            "the server is not ready for lifeboat\nhint: apply the fixes above (or run init --check --apply as a superuser), then check again".to_string(),
        ));
    }
    Ok(())
}

async fn value(conn: &mut Connection, sql: &str) -> anyhow::Result<Option<String>> {
    let r = conn.query_one_set(sql).await?;
    Ok(r.rows
        .first()
        .and_then(|row| row.first().cloned())
        .flatten())
}

async fn checks(conn: &mut Connection, params: &ConnParams) -> anyhow::Result<Vec<Line>> {
    let mut out = Vec::new();
    let num: u32 = value(conn, "SHOW server_version_num")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    out.push(if (140_000..190_000).contains(&num) {
        Line {
            outcome: Outcome::Ok,
            text: format!("PostgreSQL {} (lifeboat supports 14 to 18)", num / 10_000),
            hint: None,
            fix: None,
        }
    } else {
        Line {
            outcome: Outcome::Fail,
            text: format!("PostgreSQL server_version_num {num}: lifeboat supports 14 to 18"),
            hint: Some("upgrade the server (pg_upgrade) to a supported major".into()),
            fix: None,
        }
    });
    let wal_level = value(conn, "SHOW wal_level").await?.unwrap_or_default();
    out.push(if wal_level == "replica" || wal_level == "logical" {
        Line {
            outcome: Outcome::Ok,
            text: format!("wal_level = {wal_level}"),
            hint: None,
            fix: None,
        }
    } else {
        Line {
            outcome: Outcome::Fail,
            text: format!("wal_level = {wal_level}: physical replication needs replica"),
            hint: Some("ALTER SYSTEM SET wal_level = 'replica'; then restart the server".into()),
            fix: Some("ALTER SYSTEM SET wal_level = 'replica'".into()),
        }
    });
    let senders: i64 = value(conn, "SHOW max_wal_senders")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Senders held by others (standbys, other tools): lifeboat's own (a streamer already
    // running when init --check runs again) are the ones it needs, not a shortage.
    let used: i64 = value(
        conn,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name NOT LIKE 'lifeboat%'",
    )
    .await?
    .and_then(|v| v.parse().ok())
    .unwrap_or(0);
    // The streamer holds one sender, a base backup another.
    out.push(if senders - used >= 2 {
        Line {
            outcome: Outcome::Ok,
            text: format!("max_wal_senders = {senders}, {used} in use by others: room for the streamer and a backup"),
            hint: None,
            fix: None,
        }
    } else {
        Line {
            outcome: Outcome::Fail,
            text: format!("max_wal_senders = {senders}, {used} in use by others: lifeboat needs 2 (the streamer and a backup)"),
            hint: Some(format!("ALTER SYSTEM SET max_wal_senders = {}; then restart the server", used + 2)),
            fix: Some(format!("ALTER SYSTEM SET max_wal_senders = {}", used + 2)),
        }
    });
    let slots: i64 = value(conn, "SHOW max_replication_slots")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let slots_used: i64 = value(conn, "SELECT count(*) FROM pg_replication_slots")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    out.push(if slots - slots_used >= 1 {
        Line {
            outcome: Outcome::Ok,
            text: format!("max_replication_slots = {slots}, {slots_used} in use"),
            hint: None,
            fix: None,
        }
    } else {
        Line {
            outcome: Outcome::Fail,
            text: format!(
                "max_replication_slots = {slots}, {slots_used} in use: lifeboat needs one slot"
            ),
            hint: Some(format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart the server",
                slots_used + 1
            )),
            fix: Some(format!(
                "ALTER SYSTEM SET max_replication_slots = {}",
                slots_used + 1
            )),
        }
    });
    let keep = value(conn, "SHOW max_slot_wal_keep_size")
        .await?
        .unwrap_or_default();
    out.push(if keep == "-1" {
        Line {
            outcome: Outcome::Ok,
            text: "max_slot_wal_keep_size = -1: the server never drops WAL lifeboat has not archived".into(),
            hint: None,
            fix: None,
        }
    } else {
        Line {
            outcome: Outcome::Warn,
            text: format!("max_slot_wal_keep_size = {keep}: past it the server invalidates lifeboat's slot and WAL is lost before it is archived"),
            hint: Some("ALTER SYSTEM SET max_slot_wal_keep_size = -1; SELECT pg_reload_conf(); (or keep the limit above what an outage of your providers can hold back)".into()),
            fix: Some("ALTER SYSTEM SET max_slot_wal_keep_size = -1".into()),
        }
    });
    let role = value(
        conn,
        "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user",
    )
    .await?
    .unwrap_or_default();
    let user = &params.user;
    out.push(if role == "true" {
        Line {
            outcome: Outcome::Ok,
            text: format!("role {user} may replicate"),
            hint: None,
            fix: None,
        }
    } else {
        let sql = format!("ALTER ROLE {} REPLICATION", quote_ident(user));
        Line {
            outcome: Outcome::Fail,
            text: format!("role {user} lacks the REPLICATION attribute"),
            hint: Some(format!("as a superuser: {sql};")),
            fix: Some(sql),
        }
    });
    // A replication connection: pg_hba.conf has its own `replication` lines.
    let may_replicate = role == "true";
    out.push(match Connection::connect(params, true).await {
        Ok(c) => {
            c.close().await;
            Line {
                outcome: Outcome::Ok,
                text: "a replication connection is accepted (pg_hba.conf)".into(),
                hint: None,
                fix: None,
            }
        }
        Err(e) if !may_replicate => Line {
            outcome: Outcome::Fail,
            text: format!("a replication connection is refused: {e}"),
            hint: Some(format!("grant {user} REPLICATION first (above)")),
            fix: None,
        },
        Err(e) => {
            let addr = value(conn, "SELECT host(inet_client_addr())").await?;
            let hba = match addr {
                Some(a) => format!(
                    "host replication {} {a}/{} scram-sha-256",
                    quote_ident(user).trim_matches('"'),
                    if a.contains(':') { 128 } else { 32 }
                ),
                None => format!(
                    "local replication {} peer",
                    quote_ident(user).trim_matches('"')
                ),
            };
            Line {
                outcome: Outcome::Fail,
                text: format!("a replication connection is refused: {e}"),
                hint: Some(format!(
                    "add to pg_hba.conf, above any line that rejects it: {hba}; then SELECT pg_reload_conf();"
                )),
                fix: None,
            }
        }
    });
    Ok(out)
}
