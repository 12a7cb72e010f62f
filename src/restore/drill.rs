//! `lifeboat drill`: the restore drill, automated. Restore a backup (random, latest or
//! chosen) to a target (a random point of the PITR window, latest, or a time) in a scratch
//! directory, start PostgreSQL on a free local port, wait for it to reach the target and
//! promote, check that every table reads (and the operator's own checks pass), time every
//! phase, record the result in the archive, clean up.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;

use crate::archive::Archive;
use crate::core::catalog::{BackupMeta, CheckResult, DrillReport, Phases, TableCount};
use crate::core::plan::{self, Target, TimelineChoice, Timestamp};
use crate::core::wal::Lsn;
use crate::pg::conn::Connection;
use crate::pg::conninfo::ConnParams;
use crate::pipeline::Opener;
use crate::restore::{self, shell_quote, RestoreOptions, TargetAction};

#[derive(Debug, Clone)]
pub enum BackupChoice {
    Random,
    Latest,
    Id(String),
}

#[derive(Debug, Clone)]
pub enum DrillTarget {
    Random,
    Latest,
    Time(Timestamp),
}

pub struct DrillOptions {
    pub backup: BackupChoice,
    pub target: DrillTarget,
    pub pg_bin: Option<PathBuf>,
    pub check_sql: Option<PathBuf>,
    /// The database the check queries run in.
    pub check_db: String,
    pub keep: bool,
    /// The OS user PostgreSQL runs as when lifeboat runs as root.
    pub run_as: Option<String>,
    /// Where the scratch directory is made.
    pub scratch_parent: PathBuf,
    /// Upper bound for recovery to reach the target.
    pub timeout: Duration,
    pub config_path: PathBuf,
    pub identity_path: PathBuf,
    pub jobs: usize,
    /// Segments the restore_command fetches ahead during replay.
    pub wal_prefetch: u16,
    /// The configured recipients: the canary of this set is the one the identity must open.
    pub recipients: Vec<String>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn drill_id(started: &str) -> String {
    started.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// Split a file of SQL into statements at top-level semicolons (quotes, dollar quotes and
/// comments respected).
pub fn split_sql(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$
                let rest = &text[i + 1..];
                if let Some(end) = rest.find('$') {
                    let tag = &rest[..end];
                    if tag.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        let delim = format!("${tag}$");
                        if let Some(close) = text[i + delim.len()..].find(&delim) {
                            i += delim.len() + close + delim.len();
                            continue;
                        }
                    }
                }
            }
            b';' => {
                let s = text[start..i].trim();
                if !strip_comments(s).is_empty() {
                    out.push(s.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let s = text[start.min(text.len())..].trim();
    if !strip_comments(s).is_empty() {
        out.push(s.to_string());
    }
    out
}

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// The OS user PostgreSQL runs as: (uid, gid, name). `None` when not root (then it runs
/// as the current user).
pub fn server_user(run_as: Option<&str>) -> Result<Option<(u32, u32, String)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if let Some(u) = run_as {
            bail!(
                "--run-as {u} needs root (lifeboat runs PostgreSQL as the current user otherwise)"
            );
        }
        return Ok(None);
    }
    let name = run_as.unwrap_or("postgres");
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("--run-as: bad user name"))?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy what we need at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        bail!(
            "PostgreSQL refuses to run as root, and there is no user \"{name}\" to run it as\nhint: pass --run-as USER (an unprivileged account), or run the drill as that user"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if uid == 0 {
        bail!("--run-as {name}: that is root; PostgreSQL refuses to run as root");
    }
    Ok(Some((uid, gid, name.to_string())))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    if dir.is_dir() && !dir.is_symlink() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn as_user(cmd: &mut std::process::Command, user: Option<&(u32, u32, String)>) {
    if let Some((uid, gid, _)) = user {
        let (uid, gid) = (*uid, *gid);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[derive(Clone)]
struct Server {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    sock: PathBuf,
    user: Option<(u32, u32, String)>,
}

impl Server {
    fn pg_ctl(&self, args: &[&str], timeout: Duration) -> Result<std::process::Output> {
        let mut c = std::process::Command::new(self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(args);
        c.current_dir(self.data.parent().unwrap_or(Path::new("/")));
        c.stdin(std::process::Stdio::null());
        if args.contains(&"start") || args.contains(&"stop") {
            c.args(["-t", &timeout.as_secs().max(1).to_string()]);
        }
        as_user(&mut c, self.user.as_ref());
        c.output()
            .with_context(|| format!("running {}/pg_ctl", self.bin.display()))
    }

    fn running(&self) -> bool {
        self.pg_ctl(&["status"], Duration::from_secs(10))
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    async fn connect(&self, user: &str, db: &str) -> Result<Connection> {
        let ci = format!(
            "host={} port={} user={} dbname={} sslmode=disable connect_timeout=10",
            self.sock.display(),
            self.port,
            user,
            db
        );
        let params = ConnParams::parse(&ci, &|_| None).map_err(anyhow::Error::new)?;
        Connection::connect(&params, false)
            .await
            .map_err(anyhow::Error::new)
    }
}

/// Whether a backup's first part large enough to be moved (prune keeps smaller ones in the
/// standard class) is in an archive storage class on every provider that holds it: the
/// monthly tier's parts move together.
async fn is_cold(archive: &Archive, b: &BackupMeta) -> bool {
    let Some(first) = b
        .parts
        .iter()
        .find(|p| p.stored_len >= crate::core::retention::COLD_MIN_SIZE)
    else {
        return false;
    };
    crate::archive::thaw::survey(archive, std::slice::from_ref(&first.key), false)
        .await
        .is_ok_and(|s| !s.cold.is_empty())
}

/// Choose the backup: among those from which the archive reaches at least consistency.
fn restorable(inv: &plan::Inventory) -> Vec<&BackupMeta> {
    inv.backups
        .iter()
        .filter(|b| {
            plan::plan(inv, &Target::Immediate, TimelineChoice::Latest, Some(&b.id)).is_ok()
        })
        .collect()
}

fn choose_backup<'a>(inv: &'a plan::Inventory, choice: &BackupChoice) -> Result<&'a BackupMeta> {
    let restorable = restorable(inv);
    match choice {
        BackupChoice::Id(id) => inv
            .backups
            .iter()
            .find(|b| &b.id == id)
            .ok_or_else(|| anyhow!("backup {id} is not in the archive\nhint: `lifeboat list` shows the backups")),
        BackupChoice::Latest => restorable
            .iter()
            .max_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)))
            .copied()
            .ok_or_else(|| anyhow!("the archive holds no restorable backup\nhint: `lifeboat list` shows which backups lack WAL")),
        BackupChoice::Random => {
            if restorable.is_empty() {
                bail!("the archive holds no restorable backup\nhint: `lifeboat list` shows which backups lack WAL");
            }
            Ok(restorable[rand::thread_rng().gen_range(0..restorable.len())])
        }
    }
}

/// Run a drill. Returns the report (also when the drill failed: `ok` says so); `Err` only
/// when no drill could be attempted at all (bad options, unreadable archive).
pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    exe: &Path,
    opts: &DrillOptions,
) -> Result<DrillReport> {
    let t0 = Instant::now();
    let started_at = now_rfc3339();
    let id = drill_id(&started_at);
    let user = server_user(opts.run_as.as_deref())?;
    let sql = match &opts.check_sql {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--check-sql {}", p.display()))?;
            let v = split_sql(&text);
            if v.is_empty() {
                bail!(
                    "--check-sql {}: the file holds no SQL statement",
                    p.display()
                );
            }
            v
        }
        None => Vec::new(),
    };
    let (inv, _) = restore::inventory(archive).await?;
    let mut backup = choose_backup(&inv, &opts.backup)?.clone();
    // A random pick prefers a backup readable at once: one moved to an archive class (the
    // monthly tier's) would cost a thaw of hours. It is swapped for a random warm one; if
    // every backup is cold, the pick is thawed and restored (restore does it).
    if matches!(opts.backup, BackupChoice::Random) && is_cold(archive, &backup).await {
        let mut warm = Vec::new();
        for b in restorable(&inv) {
            if !is_cold(archive, b).await {
                warm.push(b);
            }
        }
        if !warm.is_empty() {
            let other = warm[rand::thread_rng().gen_range(0..warm.len())];
            tracing::info!(
                cold = backup.id,
                chosen = other.id,
                "the random backup is in an archive storage class; drilling a warm one"
            );
            backup = other.clone();
        }
    }
    let target = match &opts.target {
        DrillTarget::Latest => Target::Latest,
        DrillTarget::Time(t) => Target::Time(*t),
        DrillTarget::Random => {
            // A random LSN between the backup's consistency point and the end of the WAL
            // that follows it (its PITR window).
            let latest = plan::plan(
                &inv,
                &Target::Latest,
                TimelineChoice::Latest,
                Some(&backup.id),
            )
            .map_err(|e| anyhow!(e))?;
            // Not inside the last archived segment: a segment finished by a WAL switch is
            // zero padding after the switch record, and a target past the last record is
            // never reached. Any earlier point has a record after it.
            let last_seg = Lsn(latest.wal_end_lsn.0.saturating_sub(1)).segment_start(inv.seg);
            let (lo, hi) = (backup.end_lsn.0, last_seg.0);
            if hi > lo + 1 {
                Target::Lsn(Lsn(rand::thread_rng().gen_range(lo..hi)))
            } else {
                Target::Immediate
            }
        }
    };
    let mut report = DrillReport {
        format: 1,
        id: id.clone(),
        ok: false,
        started_at,
        backup: Some(backup.id.clone()),
        target: match &opts.target {
            DrillTarget::Random => "random".into(),
            DrillTarget::Latest => "latest".into(),
            DrillTarget::Time(t) => t.to_string(),
        },
        recovery_target: Some(target.to_string()),
        pg_version: None,
        phases: Phases::default(),
        tables: Vec::new(),
        checks: Vec::new(),
        error: None,
        scratch_dir: None,
        kept: opts.keep,
        created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        key_check: None,
        restored_bytes: None,
        replayed_wal_bytes: None,
    };
    // Key custody: the identity must open the archive's canary (a drill that restores
    // without it proves the backup, this proves the key for what is written now).
    let key_check = crate::archive::keys::prove(
        archive,
        &opener,
        &opts.identity_path.display().to_string(),
        &opts.recipients,
    )
    .await;
    let key_failed = key_check.canary.is_some() && !key_check.ok;
    report.key_check = Some(key_check);
    std::fs::create_dir_all(&opts.scratch_parent)
        .with_context(|| format!("creating {}", opts.scratch_parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("lifeboat-drill-{id}-"))
        .tempdir_in(&opts.scratch_parent)
        .with_context(|| {
            format!(
                "making a scratch directory in {}",
                opts.scratch_parent.display()
            )
        })?;
    report.scratch_dir = Some(scratch.path().display().to_string());
    let outcome = match report.key_check.as_ref().filter(|_| key_failed) {
        // The identity cannot open what is written now: say that, not what the restore
        // would stumble on.
        Some(k) => Err(anyhow!(
            "{}",
            k.error.as_deref().unwrap_or("the key check failed")
        )),
        None => {
            drill_in(
                archive,
                opener,
                exe,
                opts,
                &backup,
                target,
                scratch.path(),
                user.as_ref(),
                &sql,
                &mut report,
                t0,
            )
            .await
        }
    };
    if let Err(e) = outcome {
        report.error = Some(format!("{e:#}"));
    }
    report.ok = report.error.is_none()
        && report.checks.iter().all(|c| c.ok)
        && report.tables.iter().all(|t| t.error.is_none());
    report.phases.total = t0.elapsed().as_secs_f64();
    // The identity copy never outlives the drill.
    let _ = std::fs::remove_file(scratch.path().join("identity"));
    if opts.keep {
        let kept = scratch.keep();
        tracing::info!(dir = %kept.display(), "scratch directory kept (--keep)");
    } else {
        drop(scratch);
    }
    archive.record_drill(&report).await;
    Ok(report)
}

/// What a scratch server needs besides the archive and the backup.
pub struct ScratchSpec {
    pub pg_bin: Option<PathBuf>,
    pub config_path: PathBuf,
    pub identity_path: PathBuf,
    pub jobs: usize,
    pub wal_prefetch: u16,
    /// Upper bound for recovery to reach the target.
    pub timeout: Duration,
    /// `cluster_name` of the scratch server (shows in `ps`).
    pub cluster_name: &'static str,
}

/// A restored server running on a free local port in a scratch directory, promoted.
pub struct ScratchServer {
    server: Server,
    /// The role it is queried as (the backup's bootstrap superuser).
    pub superuser: String,
    /// `version()`.
    pub pg_version: Option<String>,
    pub restore: restore::RestoreReport,
    pub replay_seconds: f64,
    /// The last WAL record replayed (`pg_last_wal_replay_lsn()` after promotion).
    pub replay_end: Option<Lsn>,
}

/// Who stops a scratch server whatever happens (an error, a signal that drops the work):
/// filled as soon as the server is started.
pub type ServerSlot = std::sync::Mutex<Option<ServerHandle>>;

/// Enough to stop a scratch server.
#[derive(Clone)]
pub struct ServerHandle(Server);

impl ServerHandle {
    /// Stop it (fast shutdown; immediate if that fails). Idempotent.
    pub fn stop(&self) {
        let s = &self.0;
        if !s.data.join("postmaster.pid").exists() {
            return;
        }
        let ok = s
            .pg_ctl(&["stop", "-m", "fast", "-w"], Duration::from_secs(60))
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let _ = s.pg_ctl(&["stop", "-m", "immediate", "-w"], Duration::from_secs(30));
        }
    }
}

impl ScratchServer {
    /// A connection to database `db` as the superuser.
    pub async fn connect(&self, db: &str) -> Result<Connection> {
        self.server.connect(&self.superuser, db).await
    }

    /// A libpq connection string to database `db` (unix socket, trust).
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            crate::pg::tools::conninfo_value(&self.server.sock.display().to_string()),
            self.server.port,
            crate::pg::tools::conninfo_value(&self.superuser),
            crate::pg::tools::conninfo_value(db)
        )
    }

    /// The bin directory of the server (its pg_dump too).
    pub fn bin(&self) -> &Path {
        &self.server.bin
    }

    pub fn stop(&self) {
        ServerHandle(self.server.clone()).stop();
    }
}

/// Restore `backup` to `target` into `scratch/data`, start PostgreSQL on it (as `user`)
/// on a free local port, and wait for recovery to reach the target and promote. The
/// server is in `slot` from the moment it is started; on an error it is stopped again.
#[allow(clippy::too_many_arguments)]
pub async fn start_scratch(
    archive: &Archive,
    opener: Arc<Opener>,
    exe: &Path,
    spec: &ScratchSpec,
    backup: &BackupMeta,
    target: Target,
    scratch: &Path,
    user: Option<&(u32, u32, String)>,
    slot: &ServerSlot,
) -> Result<ScratchServer> {
    let data = scratch.join("data");
    let sock = scratch.join("sock");
    std::fs::create_dir_all(&sock)?;
    // The server runs the restore_command as its own user: give it the configuration and
    // the identity in the scratch directory (mode 0600, removed when the drill ends).
    let (config, identity) = if user.is_some() {
        let c = scratch.join("lifeboat.toml");
        let i = scratch.join("identity");
        std::fs::copy(&spec.config_path, &c)
            .with_context(|| format!("copying {}", spec.config_path.display()))?;
        std::fs::copy(&spec.identity_path, &i)
            .with_context(|| format!("copying {}", spec.identity_path.display()))?;
        for f in [&c, &i] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
        }
        (c, i)
    } else {
        (spec.config_path.clone(), spec.identity_path.clone())
    };
    let restore_command = restore::restore_command_line(exe, &config, &identity, spec.wal_prefetch);
    let ropts = RestoreOptions {
        pgdata: data.clone(),
        target,
        timeline: TimelineChoice::Latest,
        action: TargetAction::Promote,
        backup: Some(backup.id.clone()),
        force: false,
        tablespaces: backup
            .tablespaces
            .iter()
            .filter_map(|t| t.oid)
            .map(|oid| (oid, scratch.join(format!("tablespace-{oid}"))))
            .collect(),
        pg_bin: spec.pg_bin.clone(),
        restore_command,
        jobs: spec.jobs,
        sync_method: Default::default(),
    };
    let rep = restore::run(archive, opener, &ropts).await?;
    let bin = rep.pg_bin.clone();
    // Settings this host needs whatever the backed-up server had: no archiving into the
    // production archive, no TLS files, only local connections, a config file if the
    // original lived outside the data directory (Debian).
    let port = free_port()?;
    std::fs::write(
        scratch.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )?;
    std::fs::write(scratch.join("pg_ident.conf"), "")?;
    if !data.join("postgresql.conf").exists() {
        std::fs::write(
            data.join("postgresql.conf"),
            "# written by lifeboat drill\n",
        )?;
    }
    if let Some((uid, gid, _)) = user {
        chown_tree(scratch, *uid, *gid)?;
    }
    let server = Server {
        bin: bin.clone(),
        data: data.clone(),
        log: scratch.join("postgres.log"),
        port,
        sock: sock.clone(),
        user: user.cloned(),
    };
    let settings = [
        format!("port={port}"),
        "listen_addresses=127.0.0.1".into(),
        format!("unix_socket_directories={}", sock.display()),
        format!("hba_file={}", scratch.join("pg_hba.conf").display()),
        format!("ident_file={}", scratch.join("pg_ident.conf").display()),
        "archive_mode=off".into(),
        "ssl=off".into(),
        "logging_collector=off".into(),
        "hot_standby=on".into(),
        format!("cluster_name={}", spec.cluster_name),
    ];
    let o = settings
        .iter()
        .map(|s| format!("-c {}", shell_quote(s)))
        .collect::<Vec<_>>()
        .join(" ");
    let t_replay = Instant::now();
    let log = server.log.display().to_string();
    *slot.lock().expect("not poisoned") = Some(ServerHandle(server.clone()));
    let start = server.pg_ctl(&["start", "-w", "-l", &log, "-o", &o], spec.timeout)?;
    let su = backup
        .bootstrap_superuser
        .clone()
        .unwrap_or_else(|| "postgres".into());
    let result = async {
        if !start.status.success() && !server.running() {
            bail!(
                "PostgreSQL did not start: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&start.stderr).trim(),
                log_tail(&server.log, 30)
            );
        }
        // Wait for recovery to reach the target and promote.
        let deadline = Instant::now() + spec.timeout;
        loop {
            if !server.running() {
                bail!(
                    "PostgreSQL stopped during recovery\n--- server log ---\n{}",
                    log_tail(&server.log, 30)
                );
            }
            if let Ok(mut c) = server.connect(&su, "postgres").await {
                if let Ok(r) = c
                    .query_one_set(
                        "SELECT pg_is_in_recovery()::text, version(), pg_last_wal_replay_lsn()::text AS replayed",
                    )
                    .await
                {
                    if r.get(0, "pg_is_in_recovery") == Some("false") {
                        let v = r.get(0, "version").map(str::to_string);
                        let replayed = r.get(0, "replayed").and_then(|l| l.parse::<Lsn>().ok());
                        c.close().await;
                        return Ok((v, replayed));
                    }
                }
                c.close().await;
            }
            if Instant::now() > deadline {
                bail!(
                    "recovery did not reach the target within {:?}\n--- server log ---\n{}",
                    spec.timeout,
                    log_tail(&server.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    match result {
        Ok((pg_version, replay_end)) => Ok(ScratchServer {
            server,
            superuser: su,
            pg_version,
            restore: rep,
            replay_seconds: t_replay.elapsed().as_secs_f64(),
            replay_end,
        }),
        Err(e) => {
            ServerHandle(server).stop();
            *slot.lock().expect("not poisoned") = None;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn drill_in(
    archive: &Archive,
    opener: Arc<Opener>,
    exe: &Path,
    opts: &DrillOptions,
    backup: &BackupMeta,
    target: Target,
    scratch: &Path,
    user: Option<&(u32, u32, String)>,
    sql: &[String],
    report: &mut DrillReport,
    t0: Instant,
) -> Result<()> {
    let spec = ScratchSpec {
        pg_bin: opts.pg_bin.clone(),
        config_path: opts.config_path.clone(),
        identity_path: opts.identity_path.clone(),
        jobs: opts.jobs,
        wal_prefetch: opts.wal_prefetch,
        timeout: opts.timeout,
        cluster_name: "lifeboat-drill",
    };
    let slot = ServerSlot::default();
    let server = start_scratch(
        archive, opener, exe, &spec, backup, target, scratch, user, &slot,
    )
    .await?;
    report.phases.fetch = server.restore.fetch_seconds;
    report.phases.extract = server.restore.extract_seconds;
    report.recovery_target = Some(server.restore.plan.target_text.clone());
    report.pg_version = server.pg_version.clone();
    report.phases.replay = server.replay_seconds;
    report.restored_bytes = Some(server.restore.bytes);
    report.replayed_wal_bytes = server
        .replay_end
        .map(|e| e.0.saturating_sub(server.restore.plan.backup_start_lsn.0));
    let t_checks = Instant::now();
    let result = checks(
        &server.server,
        &server.superuser,
        &opts.check_db,
        sql,
        report,
    )
    .await;
    report.phases.checks = t_checks.elapsed().as_secs_f64();
    server.stop();
    let _ = t0;
    result
}

async fn checks(
    server: &Server,
    su: &str,
    check_db: &str,
    sql: &[String],
    report: &mut DrillReport,
) -> Result<()> {
    let mut c = server.connect(su, "postgres").await?;
    let dbs = c
        .query_one_set("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")
        .await
        .map_err(|e| anyhow::Error::new(e).context("listing databases"))?;
    c.close().await;
    for row in dbs.rows {
        let Some(db) = row.first().cloned().flatten() else {
            continue;
        };
        let mut c = server
            .connect(su, &db)
            .await
            .with_context(|| format!("connecting to database {db}"))?;
        let tables = c
            .query_one_set(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1",
            )
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("listing the tables of {db}")))?;
        for t in tables.rows {
            let Some(name) = t.first().cloned().flatten() else {
                continue;
            };
            match c
                .query_one_set(&format!("SELECT count(*) FROM {name}"))
                .await
            {
                Ok(r) => report.tables.push(TableCount {
                    database: db.clone(),
                    table: name,
                    rows: r
                        .rows
                        .first()
                        .and_then(|x| x.first().cloned().flatten())
                        .and_then(|v| v.parse().ok()),
                    error: None,
                }),
                Err(e) => report.tables.push(TableCount {
                    database: db.clone(),
                    table: name,
                    rows: None,
                    error: Some(e.to_string()),
                }),
            }
        }
        c.close().await;
    }
    if !sql.is_empty() {
        let mut c = server
            .connect(su, check_db)
            .await
            .with_context(|| format!("connecting to database {check_db} for the checks"))?;
        for q in sql {
            let res = c.simple_query(q).await;
            let (ok, result) = match res {
                Ok(sets) => {
                    let v = sets
                        .iter()
                        .rev()
                        .find(|s| !s.rows.is_empty())
                        .and_then(|s| s.rows.first())
                        .and_then(|r| r.first().cloned().flatten());
                    match v {
                        Some(v) if v == "t" || v == "true" => (true, v),
                        Some(v) => (false, format!("returned {v}, not true")),
                        None => (false, "returned no row".into()),
                    }
                }
                Err(e) => (false, format!("failed: {e}")),
            };
            report.checks.push(CheckResult {
                query: q.clone(),
                ok,
                result,
            });
        }
        c.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_splits_at_top_level_semicolons() {
        let v = split_sql(
            "-- header; not a statement\nSELECT 'a;b' = 'a;b';\nSELECT $x$ ; $x$ <> ''; /* c; */ SELECT \"we;ird\" FROM t\n;\n  \n",
        );
        assert_eq!(
            v,
            vec![
                "-- header; not a statement\nSELECT 'a;b' = 'a;b'",
                "SELECT $x$ ; $x$ <> ''",
                "/* c; */ SELECT \"we;ird\" FROM t"
            ]
        );
        assert!(split_sql("-- only a comment\n").is_empty());
    }

    #[test]
    fn drill_ids_sort_by_time() {
        assert_eq!(drill_id("2026-11-24T08:30:12Z"), "20261124T083012Z");
    }
}
