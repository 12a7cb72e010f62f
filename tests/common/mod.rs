//! Integration-test harness: real PostgreSQL clusters in temporary directories.
//!
//! Usage from an integration test (`tests/foo.rs`):
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[test]
//! fn streams() {
//!     for major in available_majors() {
//!         let pg = PgCluster::start(major, ClusterOpts::default());
//!         pg.psql("CREATE TABLE t(x int)");
//!         let lsn = pg.switch_wal();
//!         // ... run lifeboat against pg.conninfo(REPL_USER, Some(REPL_PASSWORD)) ...
//!     }
//! }
//! ```
//!
//! Binaries come from `scripts/install-pg.sh` (see there for the cache layout):
//! `<cache>/pg/<major>/bin`, where `<cache>` is `$LIFEBOAT_CACHE`, else
//! `/var/cache/lifeboat` when running as root, else `$HOME/.cache/lifeboat`.
//! `LIFEBOAT_PG_BIN_<major>` overrides the bin dir of one major; `LIFEBOAT_PG_MAJORS`
//! (e.g. "15 18") restricts `available_majors()`.
//!
//! `initdb`/`postgres` refuse to run as root. When the tests run as root (CI), every
//! server-side program (initdb, pg_ctl, postgres, pg_basebackup for standbys) runs as the
//! unprivileged OS user `lifeboat-test` via `runuser -u lifeboat-test --`; each cluster's
//! temp dir is chowned to that user. Client programs (psql, pgbench, pg_receivewal, the
//! lifeboat binary) run as the invoking user (root), which can reach the socket dir.
//!
//! Layout of one cluster's temp dir (`PgCluster::base_dir`, under /tmp when root, else
//! `$TMPDIR`; `LIFEBOAT_TEST_TMP` overrides):
//!   data/          the data directory (`datadir`)
//!   sock/          unix socket directory (`socket_dir`)
//!   postgres.log   server log (`log_path`; outside datadir so base backups don't copy it)
//!   tls/           CA + server cert/key when `ssl: true` (`ca_cert_path()`)
//!
//! Env knobs: `LIFEBOAT_KEEP_PG=1` keeps temp dirs (always); `LIFEBOAT_KEEP_PG_ON_FAILURE=1`
//! keeps them when the test panics. On a panic the server log tail is printed to stderr.
//! Temp dirs are removed by a detached `rm -rf` (deleting a fresh data dir takes seconds
//! on this box's ext4+discard); `LIFEBOAT_SYNC_CLEANUP=1` removes them synchronously.
//!
//! Server settings (postgresql.conf additions): listen_addresses='127.0.0.1',
//! wal_level=replica, max_wal_senders=10, max_replication_slots=10, wal_keep_size=0,
//! fsync=on, shared_buffers=32MB, password_encryption=scram-sha-256, log_connections,
//! log_replication_commands, timezone=UTC, recovery_init_sync_method=syncfs (else every
//! crash/backup recovery start fsyncs each file: ~3 s per standby here), then
//! `include 'lifeboat_local.conf'` (port, unix_socket_directories), then
//! `ClusterOpts::extra_conf`. initdb: `-U postgres --auth=trust --no-locale -E UTF8 -N`.
//!
//! pg_hba.conf, in order:
//!   local all all trust / local replication all trust
//!   host {replication,all} rejected 127.0.0.1/32 reject
//!   host {replication,all} md5user 127.0.0.1/32 md5
//!   host {replication,all} plainuser 127.0.0.1/32 password
//!   (ssl only) hostssl {replication,all} tlsonly 127.0.0.1/32 scram-sha-256
//!   hostnossl {replication,all} tlsonly 127.0.0.1/32 reject
//!   host replication all 127.0.0.1/32 scram-sha-256
//!   host all all 127.0.0.1/32 scram-sha-256
//!
//! Roles (created by `start`, unless `ClusterOpts::create_roles` is false):
//!   postgres    superuser, trust over the unix socket only
//!   lifeboat    LOGIN REPLICATION, scram-sha-256, password `lifeboat-secret`
//!   md5user     LOGIN REPLICATION, md5-hashed password `md5-secret`, pg_hba method md5
//!   plainuser   LOGIN REPLICATION, password `plain-secret`, pg_hba method `password` (cleartext)
//!   norepl      LOGIN (no REPLICATION), password `norepl-secret`
//!   rejected    LOGIN REPLICATION, password `x`, pg_hba `reject` over TCP
//!   tlsonly     LOGIN REPLICATION, password `tls-secret`; `hostssl` scram, `hostnossl` reject
#![allow(dead_code)]

use std::collections::HashSet;
use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

// ------------------------------------------------------------------------------------
// Constants

pub const TEST_OS_USER: &str = "lifeboat-test";
pub const SUPERUSER: &str = "postgres";
pub const ALL_MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

pub const REPL_USER: &str = "lifeboat";
pub const REPL_PASSWORD: &str = "lifeboat-secret";
pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5-secret";
pub const PLAIN_USER: &str = "plainuser";
pub const PLAIN_PASSWORD: &str = "plain-secret";
pub const NOREPL_USER: &str = "norepl";
pub const NOREPL_PASSWORD: &str = "norepl-secret";
pub const REJECTED_USER: &str = "rejected";
pub const REJECTED_PASSWORD: &str = "x";
pub const TLS_USER: &str = "tlsonly";
pub const TLS_PASSWORD: &str = "tls-secret";

/// Timeout for pg_ctl waits (seconds).
const PG_CTL_TIMEOUT_S: u32 = 60;
/// Default timeout for one client command (psql etc.).
const CMD_TIMEOUT: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------------------------
// Environment discovery

/// Effective uid of this process (from /proc/self/status; `id -u` as fallback).
pub fn euid() -> u32 {
    static E: OnceLock<u32> = OnceLock::new();
    *E.get_or_init(|| {
        if let Ok(s) = fs::read_to_string("/proc/self/status") {
            for l in s.lines() {
                if let Some(rest) = l.strip_prefix("Uid:") {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    if f.len() >= 2 {
                        if let Ok(u) = f[1].parse() {
                            return u;
                        }
                    }
                }
            }
        }
        Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(u32::MAX)
    })
}

pub fn is_root() -> bool {
    euid() == 0
}

/// Cache root; same rule as scripts/install-pg.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(v) = env::var_os("LIFEBOAT_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    if is_root() {
        return PathBuf::from("/var/cache/lifeboat");
    }
    let home = env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("lifeboat")
}

/// Bin dir of a PostgreSQL major: `$LIFEBOAT_PG_BIN_<major>`, else `<cache>/pg/<major>/bin`.
pub fn pg_bin_dir(major: u32) -> PathBuf {
    if let Some(v) = env::var_os(format!("LIFEBOAT_PG_BIN_{major}")).filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    cache_dir().join("pg").join(major.to_string()).join("bin")
}

/// Majors in 14..=18 whose `initdb` exists, filtered by `$LIFEBOAT_PG_MAJORS` if set
/// (space- or comma-separated).
pub fn available_majors() -> Vec<u32> {
    let filter: Option<Vec<u32>> = env::var("LIFEBOAT_PG_MAJORS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|_| panic!("bad LIFEBOAT_PG_MAJORS entry {t:?}"))
                })
                .collect()
        });
    ALL_MAJORS
        .iter()
        .copied()
        .filter(|m| filter.as_ref().map_or(true, |f| f.contains(m)))
        .filter(|m| pg_bin_dir(*m).join("initdb").is_file())
        .collect()
}

/// Like `available_majors()` but panics (with install instructions) when none is found.
pub fn require_majors() -> Vec<u32> {
    let m = available_majors();
    assert!(
        !m.is_empty(),
        "no PostgreSQL installation found under {} (run scripts/install-pg.sh, or set LIFEBOAT_PG_BIN_<major>)",
        cache_dir().join("pg").display()
    );
    m
}

/// The highest available major, if any.
pub fn newest_major() -> Option<u32> {
    available_majors().into_iter().max()
}

/// (uid, gid) of the unprivileged server user when running as root; None otherwise.
/// Creates the user (like scripts/install-pg.sh) if it is missing.
fn pg_os_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let lookup = || -> Option<(u32, u32)> {
            let q = |flag: &str| -> Option<u32> {
                let o = Command::new("id").arg(flag).arg(TEST_OS_USER).output().ok()?;
                if !o.status.success() {
                    return None;
                }
                String::from_utf8_lossy(&o.stdout).trim().parse().ok()
            };
            Some((q("-u")?, q("-g")?))
        };
        if let Some(ids) = lookup() {
            return Some(ids);
        }
        let shell = if Path::new("/usr/sbin/nologin").exists() { "/usr/sbin/nologin" } else { "/bin/false" };
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell, "--user-group"])
            .arg(TEST_OS_USER)
            .status();
        Some(lookup().unwrap_or_else(|| {
            panic!("OS user {TEST_OS_USER} does not exist and could not be created (run scripts/install-pg.sh)")
        }))
    })
}

/// chown a path to the server OS user (no-op when not root).
pub fn chown_to_pg_user(path: &Path) {
    if let Some((u, g)) = pg_os_ids() {
        std::os::unix::fs::chown(path, Some(u), Some(g))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Recursively chown a tree to the server OS user (no-op when not root).
pub fn chown_tree_to_pg_user(path: &Path) {
    if pg_os_ids().is_some() {
        let out = run_timeout(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{TEST_OS_USER}:"))
                .arg(path),
            Duration::from_secs(120),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "chown -R {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Write a file that the server must read: owned by the server user, given mode.
fn write_pg_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown_to_pg_user(path);
    set_mode(path, mode);
}

fn append_file(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// Root of per-cluster temp dirs: `$LIFEBOAT_TEST_TMP`, else /tmp when root (the server
/// user must be able to traverse it, and socket paths must stay short), else `$TMPDIR`.
fn temp_root() -> PathBuf {
    if let Some(v) = env::var_os("LIFEBOAT_TEST_TMP").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let t = env::temp_dir();
    // unix socket paths are limited to ~107 bytes: .../sock/.s.PGSQL.NNNNN
    if is_root() || t.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        t
    }
}

/// A fresh temp dir owned by the server user (mode 0755, so root and the server user can
/// both use it). Removed on drop.
pub fn pg_tempdir(prefix: &str) -> tempfile::TempDir {
    let root = temp_root();
    fs::create_dir_all(&root).ok();
    let t = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .unwrap_or_else(|e| panic!("tempdir in {}: {e}", root.display()));
    chown_to_pg_user(t.path());
    set_mode(t.path(), 0o755);
    t
}

// ------------------------------------------------------------------------------------
// Ports

/// A free TCP port on 127.0.0.1. Picks randomly below the kernel's ephemeral range (so
/// outgoing connections cannot grab it between now and the server's bind), checks it by
/// binding, and never hands out the same port twice in this process.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut used = USED
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let eph_lo: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or(32768);
    if eph_lo > 12000 {
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let p: u16 = rng.gen_range(10000..eph_lo);
            if used.contains(&p) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", p)).is_ok() {
                used.insert(p);
                return p;
            }
        }
    }
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        drop(l);
        if used.insert(p) {
            return p;
        }
    }
    panic!("could not find a free port");
}

// ------------------------------------------------------------------------------------
// Running commands with timeouts

/// A Command with PG* env vars removed (so CI settings like PGHOST can't leak in),
/// LC_ALL=C (English messages, no locale surprises) and a libpq connect timeout.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            c.env_remove(&k);
        }
    }
    c.env("LC_ALL", "C");
    c.env("PGCONNECT_TIMEOUT", "10");
    c
}

/// Rebuild `cmd` so that it runs as the server OS user (`runuser -u lifeboat-test --`)
/// when we are root; otherwise an identical copy. Program, args, env changes and current
/// dir are carried over (env_clear() is not visible through Command's getters).
pub fn as_pg_user(cmd: &Command) -> Command {
    let mut c = if pg_os_ids().is_some() {
        let mut c = Command::new("runuser");
        c.arg("-u")
            .arg(TEST_OS_USER)
            .arg("--")
            .arg(cmd.get_program());
        c
    } else {
        Command::new(cmd.get_program())
    };
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion with a timeout, capturing stdout/stderr. `stdin` is fed
/// (then closed) if given, else stdin is /dev/null. On timeout the child is killed and an
/// Err is returned. A non-zero exit is NOT an error here (check `status`).
pub fn run_timeout(
    cmd: &mut Command,
    timeout: Duration,
    stdin: Option<&[u8]>,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn `{}`: {e}", describe(cmd)))?;
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        let _ = tx.send((0, b));
    });
    thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        let _ = tx2.send((1, b));
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut parts = [Vec::new(), Vec::new()];
                    while let Ok((i, b)) = rx.recv_timeout(Duration::from_millis(500)) {
                        parts[i] = b;
                    }
                    return Err(format!(
                        "`{}` timed out after {:?}\nstdout: {}\nstderr: {}",
                        describe(cmd),
                        timeout,
                        String::from_utf8_lossy(&parts[0]),
                        String::from_utf8_lossy(&parts[1])
                    ));
                }
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("wait `{}`: {e}", describe(cmd))),
        }
    };
    // A grandchild could keep a pipe open; don't wait for it forever.
    let mut parts = [Vec::new(), Vec::new()];
    let grace = Instant::now() + Duration::from_secs(10);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, b)) => parts[i] = b,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = parts;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run, panic on timeout or non-zero exit (message includes both streams); returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run_timeout(cmd, timeout, None).unwrap_or_else(|e| panic!("{e}"));
    if !out.status.success() {
        panic!(
            "`{}` failed ({})\nstdout: {}\nstderr: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------------------------
// Processes

/// (state, ppid) of a process from /proc/<pid>/stat; None if it does not exist.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive = exists and is not a zombie (PID 1 in containers does not always reap).
fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((_, pp)) = proc_stat(p) {
                    if pp == pid {
                        v.push(p);
                    }
                }
            }
        }
    }
    v
}

fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn wait_dead(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !pid_alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------
// Cluster

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Enable TLS with a freshly generated CA + server cert (CN/SAN localhost, IP 127.0.0.1).
    pub ssl: bool,
    /// Extra postgresql.conf lines, appended last (they override the harness defaults).
    pub extra_conf: Vec<String>,
    /// `initdb --wal-segsize` in MB (power of two, 1..=1024).
    pub wal_segsize_mb: Option<u32>,
    /// Some(true): `initdb -k`; Some(false): no checksums (`--no-data-checksums` on 18+,
    /// where checksums are the default); None: the major's default.
    pub data_checksums: Option<bool>,
    /// Extra initdb arguments.
    pub initdb_args: Vec<String>,
    /// Create the test roles (lifeboat, md5user, ...). Default true.
    pub create_roles: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            ssl: false,
            extra_conf: Vec::new(),
            wal_segsize_mb: None,
            data_checksums: None,
            initdb_args: Vec::new(),
            create_roles: true,
        }
    }
}

impl ClusterOpts {
    pub fn ssl() -> Self {
        ClusterOpts {
            ssl: true,
            ..Default::default()
        }
    }
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }
    pub fn wal_segsize(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }
}

/// Where a standby's replication slot lives (dropped when the standby is dropped).
struct UpstreamSlot {
    psql: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    slot: String,
}

pub struct PgCluster {
    pub major: u32,
    pub port: u16,
    pub datadir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_path: PathBuf,
    /// The cluster's temp dir (parent of datadir/socket_dir/log).
    pub base_dir: PathBuf,
    pub bin_dir: PathBuf,
    ca_cert: Option<PathBuf>,
    upstream_slot: Option<UpstreamSlot>,
    tmp: Option<tempfile::TempDir>,
}

const LOCAL_CONF: &str = "lifeboat_local.conf";

fn harness_conf(opts: &ClusterOpts) -> String {
    let mut s = String::from(
        "\n# ---- lifeboat test harness ----\n\
         listen_addresses = '127.0.0.1'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_keep_size = 0\n\
         fsync = on\n\
         shared_buffers = 32MB\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%a %u@%d '\n\
         log_connections = on\n\
         log_replication_commands = on\n\
         password_encryption = 'scram-sha-256'\n\
         datestyle = 'iso, mdy'\n\
         timezone = 'UTC'\n\
         recovery_init_sync_method = syncfs\n",
    );
    if opts.ssl {
        // Relative to the data dir, so base backups / standbys carry them along.
        s.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    }
    // port + unix_socket_directories (rewritten for standbys / adopted data dirs)
    s.push_str(&format!("include '{LOCAL_CONF}'\n"));
    for l in &opts.extra_conf {
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn hba_conf(ssl: bool) -> String {
    let mut s = String::from(
        "# lifeboat test harness (order matters: first match wins)\n\
         local all all trust\n\
         local replication all trust\n\
         host replication rejected 127.0.0.1/32 reject\n\
         host all rejected 127.0.0.1/32 reject\n\
         host replication md5user 127.0.0.1/32 md5\n\
         host all md5user 127.0.0.1/32 md5\n\
         host replication plainuser 127.0.0.1/32 password\n\
         host all plainuser 127.0.0.1/32 password\n",
    );
    if ssl {
        s.push_str("hostssl replication tlsonly 127.0.0.1/32 scram-sha-256\n");
        s.push_str("hostssl all tlsonly 127.0.0.1/32 scram-sha-256\n");
    }
    s.push_str(
        "hostnossl replication tlsonly 127.0.0.1/32 reject\n\
         hostnossl all tlsonly 127.0.0.1/32 reject\n\
         host replication all 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    s
}

const ROLES_SQL: &str = "\
CREATE ROLE lifeboat LOGIN REPLICATION PASSWORD 'lifeboat-secret';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-secret';
RESET password_encryption;
CREATE ROLE plainuser LOGIN REPLICATION PASSWORD 'plain-secret';
CREATE ROLE norepl LOGIN PASSWORD 'norepl-secret';
CREATE ROLE rejected LOGIN REPLICATION PASSWORD 'x';
CREATE ROLE tlsonly LOGIN REPLICATION PASSWORD 'tls-secret';
";

/// Generate a self-signed CA and a server cert (CN localhost, SAN DNS:localhost,
/// IP:127.0.0.1), ECDSA P-256, into `dir` (ca.crt, ca.key, server.crt, server.key).
pub fn generate_tls(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let t = Duration::from_secs(60);
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(dir);
        run_ok(&mut c, t);
    };
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-sha256",
        "-subj",
        "/CN=lifeboat-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let serial = format!("0x{:016x}", rand::thread_rng().gen::<u64>() >> 1);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    for f in ["ca.crt", "server.crt"] {
        set_mode(&dir.join(f), 0o644);
    }
    set_mode(dir, 0o755);
}

impl PgCluster {
    /// initdb + configure + start a new cluster; creates the test roles.
    pub fn start(major: u32, opts: ClusterOpts) -> PgCluster {
        let bin_dir = pg_bin_dir(major);
        assert!(
            bin_dir.join("initdb").is_file(),
            "PostgreSQL {major} not installed at {} (run scripts/install-pg.sh or set LIFEBOAT_PG_BIN_{major})",
            bin_dir.display()
        );
        let tmp = pg_tempdir(&format!("lbpg{major}-"));
        let mut pg = PgCluster::new_layout(major, bin_dir, tmp);

        let mut c = clean_command(pg.bin("initdb"));
        c.arg("-D").arg(&pg.datadir);
        c.args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        if let Some(mb) = opts.wal_segsize_mb {
            c.arg(format!("--wal-segsize={mb}"));
        }
        match opts.data_checksums {
            Some(true) => {
                c.arg("--data-checksums");
            }
            Some(false) if major >= 18 => {
                c.arg("--no-data-checksums");
            }
            _ => {}
        }
        c.args(&opts.initdb_args);
        c.current_dir(&pg.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), Duration::from_secs(180), None)
            .unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!(
                "initdb (PostgreSQL {major}) failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        if opts.ssl {
            let tls = pg.base_dir.join("tls");
            generate_tls(&tls);
            write_pg_file(
                &pg.datadir.join("server.crt"),
                &fs::read(tls.join("server.crt")).unwrap(),
                0o644,
            );
            write_pg_file(
                &pg.datadir.join("server.key"),
                &fs::read(tls.join("server.key")).unwrap(),
                0o600,
            );
            pg.ca_cert = Some(tls.join("ca.crt"));
        }
        append_file(&pg.datadir.join("postgresql.conf"), &harness_conf(&opts));
        write_pg_file(
            &pg.datadir.join("pg_hba.conf"),
            hba_conf(opts.ssl).as_bytes(),
            0o600,
        );

        pg.start_fresh_port(Duration::from_secs(PG_CTL_TIMEOUT_S as u64));
        if opts.create_roles {
            pg.psql(ROLES_SQL);
        }
        pg
    }

    /// Start a server on an existing data directory (e.g. one lifeboat restored). The
    /// directory is moved (or copied, across file systems) into a new temp dir, chowned to
    /// the server user, given a fresh port/socket dir, and started with `pg_ctl -w`
    /// (waiting up to `timeout` for recovery to reach a state that accepts connections).
    /// Recovery settings (recovery.signal, restore_command...) are the caller's business.
    pub fn start_from_datadir(major: u32, src: &Path, timeout: Duration) -> PgCluster {
        let bin_dir = pg_bin_dir(major);
        let tmp = pg_tempdir(&format!("lbpg{major}r-"));
        let mut pg = PgCluster::new_layout(major, bin_dir, tmp);
        if fs::rename(src, &pg.datadir).is_err() {
            fs::create_dir_all(&pg.datadir).unwrap();
            let mut c = Command::new("cp");
            c.arg("-a")
                .arg(format!("{}/.", src.display()))
                .arg(&pg.datadir);
            run_ok(&mut c, Duration::from_secs(600));
        }
        chown_tree_to_pg_user(&pg.datadir);
        set_mode(&pg.datadir, 0o700);
        let _ = fs::remove_file(pg.datadir.join("postmaster.pid"));
        let conf = pg.datadir.join("postgresql.conf");
        let text = fs::read_to_string(&conf).unwrap_or_default();
        if !text.contains(&format!("include '{LOCAL_CONF}'")) {
            if conf.exists() {
                append_file(&conf, &format!("\ninclude '{LOCAL_CONF}'\n"));
            } else {
                write_pg_file(&conf, format!("include '{LOCAL_CONF}'\n").as_bytes(), 0o600);
            }
        }
        pg.start_fresh_port(timeout);
        pg
    }

    fn new_layout(major: u32, bin_dir: PathBuf, tmp: tempfile::TempDir) -> PgCluster {
        let base = tmp.path().to_path_buf();
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).unwrap();
        chown_to_pg_user(&socket_dir);
        set_mode(&socket_dir, 0o755);
        PgCluster {
            major,
            port: 0,
            datadir: base.join("data"),
            socket_dir,
            log_path: base.join("postgres.log"),
            base_dir: base,
            bin_dir,
            ca_cert: None,
            upstream_slot: None,
            tmp: Some(tmp),
        }
    }

    fn write_local_conf(&self) {
        let conf = format!(
            "# written by the lifeboat test harness\nport = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir.display()
        );
        write_pg_file(&self.datadir.join(LOCAL_CONF), conf.as_bytes(), 0o600);
    }

    /// Pick a port, start; retry with another port if the bind failed (port race).
    fn start_fresh_port(&mut self, timeout: Duration) {
        let mut last = String::new();
        for _attempt in 0..5 {
            self.port = free_port();
            self.write_local_conf();
            let log_before = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            match self.pg_ctl_start(timeout) {
                Ok(()) => return,
                Err(e) => {
                    let log = fs::read(&self.log_path).unwrap_or_default();
                    let new = String::from_utf8_lossy(&log[(log_before as usize).min(log.len())..])
                        .into_owned();
                    if new.contains("could not bind") || new.contains("Address already in use") {
                        last = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!(
            "could not start PostgreSQL {} after 5 port attempts: {last}",
            self.major
        );
    }

    fn pg_ctl_start(&self, timeout: Duration) -> Result<(), String> {
        let secs = timeout.as_secs().max(1);
        let mut c = clean_command(self.bin("pg_ctl"));
        c.arg("-D").arg(&self.datadir).arg("-l").arg(&self.log_path);
        c.args(["-w", "-t", &secs.to_string(), "start"]);
        c.current_dir(&self.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), timeout + Duration::from_secs(30), None)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start (PostgreSQL {}, port {}) failed ({}):\nstdout: {}\nstderr: {}\n--- server log tail ({}) ---\n{}",
                self.major,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_path.display(),
                self.log_tail()
            ))
        }
    }

    fn pg_ctl(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut c = clean_command(self.bin("pg_ctl"));
        c.arg("-D").arg(&self.datadir).args(args);
        c.current_dir(&self.base_dir);
        run_timeout(&mut as_pg_user(&c), timeout, None)
    }

    fn pg_ctl_ok(&self, args: &[&str]) {
        let mut a: Vec<&str> = args.to_vec();
        let t = PG_CTL_TIMEOUT_S.to_string();
        a.extend(["-w", "-t", &t]);
        let out = self
            .pg_ctl(&a, Duration::from_secs(PG_CTL_TIMEOUT_S as u64 + 30))
            .unwrap_or_else(|e| panic!("{e}\n--- server log tail ---\n{}", self.log_tail()));
        if !out.status.success() {
            panic!(
                "pg_ctl {} (PostgreSQL {}) failed ({}):\nstdout: {}\nstderr: {}\n--- server log tail ---\n{}",
                args.join(" "),
                self.major,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
    }

    /// Path of a program in this cluster's bin dir.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A clean Command (see `clean_command`) for a program of this cluster's bin dir, with
    /// PGHOST/PGPORT/PGUSER/PGDATABASE pointing at this cluster's unix socket as superuser.
    /// Runs as the invoking user (root in CI).
    pub fn command(&self, name: &str) -> Command {
        let mut c = clean_command(self.bin(name));
        c.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres");
        c
    }

    /// Run a command as the server OS user (runuser when root); cwd defaults to base_dir.
    /// Returns the Output whatever the exit status; panics only on spawn failure/timeout.
    pub fn run_as_pg_user(&self, cmd: &mut Command) -> Output {
        if cmd.get_current_dir().is_none() {
            cmd.current_dir(&self.base_dir);
        }
        run_timeout(&mut as_pg_user(cmd), CMD_TIMEOUT, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// psql as superuser over the unix socket; Err(stderr) on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = clean_command(self.bin("psql"));
        c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-f",
                "-",
            ]);
        let out = run_timeout(&mut c, CMD_TIMEOUT, Some(sql.as_bytes()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// psql as superuser over the unix socket (`-X -At -v ON_ERROR_STOP=1`, SQL fed on
    /// stdin so multiple statements run separately); panics on failure; trimmed stdout.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL {} port {}: {e}\nSQL: {sql}\n--- server log tail ---\n{}",
                self.major,
                self.port,
                self.log_tail()
            )
        })
    }

    /// psql with an arbitrary libpq connection string (e.g. from `conninfo`), to check
    /// authentication paths. Err(stderr) on failure.
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let mut c = clean_command(self.bin("psql"));
        c.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-f",
            "-",
        ]);
        let out = run_timeout(&mut c, CMD_TIMEOUT, Some(sql.as_bytes()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Poll `sql` until its output equals `expected`; panics after `timeout`.
    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = self.try_psql(sql);
            if matches!(&last, Ok(v) if v == expected) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL {} port {}: `{sql}` did not return {expected:?} within {timeout:?} (last: {last:?})\n--- server log tail ---\n{}",
                    self.major,
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// libpq keyword string over TCP: `host=127.0.0.1 port=N user=U [password=P]
    /// dbname=postgres sslmode=disable`.
    pub fn conninfo(&self, user: &str, password: Option<&str>) -> String {
        self.conninfo_sslmode(user, password, "disable")
    }

    /// Like `conninfo` with another sslmode; adds `sslrootcert=<ca>` when the cluster has
    /// TLS. For verify-full use `conninfo_verify_full`.
    pub fn conninfo_sslmode(&self, user: &str, password: Option<&str>, sslmode: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={user}", self.port);
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s.push_str(&format!(" dbname=postgres sslmode={sslmode}"));
        if sslmode != "disable" {
            if let Some(ca) = &self.ca_cert {
                s.push_str(&format!(" sslrootcert={}", ca.display()));
            }
        }
        s
    }

    /// TLS with certificate + host name verification: `host=localhost hostaddr=127.0.0.1
    /// ... sslmode=verify-full sslrootcert=<ca>`.
    pub fn conninfo_verify_full(&self, user: &str, password: Option<&str>) -> String {
        let ca = self
            .ca_cert
            .as_ref()
            .expect("cluster was not started with ssl: true");
        let mut s = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user}",
            self.port
        );
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s.push_str(&format!(
            " dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        s
    }

    /// libpq keyword string over the unix socket (trust auth for every role).
    pub fn socket_conninfo(&self, user: &str) -> String {
        format!(
            "host={} port={} user={user} dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// CA certificate that signed the server cert (Some only with `ssl: true`).
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.ca_cert.clone()
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.datadir.join("pg_wal")
    }

    /// PID of the postmaster from postmaster.pid, if the file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let s = fs::read_to_string(self.datadir.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_alive)
    }

    /// `pg_ctl stop -m fast -w`.
    pub fn stop(&self) {
        self.pg_ctl_ok(&["stop", "-m", "fast"]);
    }

    /// `pg_ctl stop -m immediate -w` (crash-like, but orderly for the processes).
    pub fn stop_immediate(&self) {
        self.pg_ctl_ok(&["stop", "-m", "immediate"]);
    }

    /// Start a stopped cluster again (same port, same config).
    pub fn start_again(&self) {
        if let Some(pid) = self.postmaster_pid() {
            if !pid_alive(pid) {
                // stale lock files of a dead (possibly zombie) postmaster
                self.remove_stale_lock_files();
            }
        }
        self.pg_ctl_start(Duration::from_secs(PG_CTL_TIMEOUT_S as u64))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// SIGKILL the postmaster (a crash). Waits until it and its children are gone (they
    /// exit on their own when they notice the postmaster died; SIGKILLed after 30 s).
    /// `start_again()` then performs crash recovery.
    pub fn kill9_postmaster(&self) {
        let pid = self
            .postmaster_pid()
            .expect("no postmaster.pid: server not running");
        let kids = children_of(pid);
        send_signal(pid, "KILL");
        assert!(
            wait_dead(&[pid], Duration::from_secs(10)),
            "postmaster {pid} survived SIGKILL"
        );
        if !wait_dead(&kids, Duration::from_secs(30)) {
            for k in &kids {
                if pid_alive(*k) {
                    send_signal(*k, "KILL");
                }
            }
            wait_dead(&kids, Duration::from_secs(10));
        }
        // If the dead postmaster lingers as a zombie (non-reaping PID 1), PostgreSQL would
        // think the lock file is still held; the processes are all gone, so remove it.
        if proc_stat(pid).is_some() {
            self.remove_stale_lock_files();
        }
    }

    /// Remove postmaster.pid and the socket lock file of a dead postmaster.
    fn remove_stale_lock_files(&self) {
        let _ = fs::remove_file(self.datadir.join("postmaster.pid"));
        let _ = fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// `pgbench -i -s scale` (as superuser over the socket).
    pub fn pgbench_init(&self, scale: u32) {
        let mut c = self.command("pgbench");
        c.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
        run_ok(&mut c, Duration::from_secs(900));
    }

    /// Background `pgbench -n -T seconds -c clients` (stdout/stderr piped). The caller
    /// waits for or kills the child. Runs as the invoking user (a direct child, so
    /// `kill()` really stops it).
    pub fn pgbench(&self, seconds: u32, clients: u32) -> Child {
        let clients = clients.max(1);
        let mut c = self.command("pgbench");
        c.args([
            "-n",
            "-T",
            &seconds.to_string(),
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "postgres",
        ]);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap_or_else(|e| panic!("spawn pgbench: {e}"))
    }

    /// New streaming standby of this cluster: `pg_basebackup -R -X stream -C -S <slot>`
    /// (a physical slot on this primary keeps the WAL the standby needs; it is dropped
    /// when the standby is dropped), own port/socket dir, started, and waited for until
    /// it is in recovery and its WAL receiver is streaming.
    pub fn create_standby(&self) -> PgCluster {
        let tmp = pg_tempdir(&format!("lbpg{}s-", self.major));
        let mut sb = PgCluster::new_layout(self.major, self.bin_dir.clone(), tmp);
        let slot = format!("lb_standby_{}", rand::thread_rng().gen::<u32>());
        let mut c = clean_command(self.bin("pg_basebackup"));
        c.arg("-D").arg(&sb.datadir);
        c.arg("-h").arg(&self.socket_dir);
        c.args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-C",
            "-S",
            &slot,
            "--no-sync",
        ]);
        c.current_dir(&sb.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), Duration::from_secs(600), None)
            .unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!(
                "pg_basebackup for standby failed ({}):\nstdout: {}\nstderr: {}\n--- primary log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        sb.upstream_slot = Some(UpstreamSlot {
            psql: self.bin("psql"),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            slot,
        });
        if let Some(ca) = &self.ca_cert {
            let dst = sb.base_dir.join("tls");
            fs::create_dir_all(&dst).unwrap();
            fs::copy(ca, dst.join("ca.crt")).unwrap();
            sb.ca_cert = Some(dst.join("ca.crt"));
        }
        sb.start_fresh_port(Duration::from_secs(PG_CTL_TIMEOUT_S as u64));
        sb.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(60));
        sb.wait_for(
            "SELECT status FROM pg_stat_wal_receiver",
            "streaming",
            Duration::from_secs(60),
        );
        sb
    }

    /// `pg_ctl promote -w`, then wait until the server is out of recovery.
    pub fn promote(&self) {
        self.pg_ctl_ok(&["promote"]);
        self.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(60));
    }

    pub fn is_in_recovery(&self) -> bool {
        self.psql("SELECT pg_is_in_recovery()") == "t"
    }

    /// pg_current_wal_lsn() on a primary; on a standby the last received LSN (or the
    /// last replayed one if nothing was received).
    pub fn current_lsn(&self) -> String {
        self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() \
             THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
             ELSE pg_current_wal_lsn() END",
        )
    }

    /// Force a WAL segment switch and return pg_switch_wal()'s LSN (the end of the switch
    /// record). A small WAL record is written first so the switch always happens, even
    /// on an idle server.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_logical_emit_message(false, 'lifeboat-test', 'switch') IS NOT NULL;\nSELECT pg_switch_wal();")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Name of the WAL segment file holding `lsn` (primary only: uses pg_walfile_name).
    pub fn walfile_name(&self, lsn: &str) -> String {
        self.psql(&format!("SELECT pg_walfile_name('{lsn}')"))
    }

    /// Current timeline (primary: from the current WAL file name; standby: from the
    /// WAL receiver / control file).
    pub fn timeline(&self) -> u32 {
        let s = self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() \
             THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver)::text, \
                           (SELECT timeline_id FROM pg_control_checkpoint())::text) \
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END",
        );
        s.parse().unwrap_or_else(|_| panic!("bad timeline {s:?}"))
    }

    /// The cluster's system identifier (pg_control_system()).
    pub fn system_identifier(&self) -> u64 {
        let s = self.psql("SELECT system_identifier FROM pg_control_system()");
        s.parse()
            .unwrap_or_else(|_| panic!("bad system identifier {s:?}"))
    }

    /// WAL segment size in bytes.
    pub fn wal_segment_size(&self) -> u64 {
        // current_setting reports e.g. "16MB"; pg_settings.setting is in bytes on 11+.
        let s = self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'");
        s.parse()
            .unwrap_or_else(|_| panic!("bad wal_segment_size {s:?}"))
    }

    /// Last ~80 lines of the server log.
    pub fn log_tail(&self) -> String {
        let s = fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Full server log.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            eprintln!(
                "--- PostgreSQL {} (port {}, {}) log tail ---\n{}",
                self.major,
                self.port,
                self.base_dir.display(),
                self.log_tail()
            );
        }
        if let Some(pid) = self.postmaster_pid() {
            if pid_alive(pid) {
                let kids = children_of(pid);
                let _ = self.pg_ctl(
                    &["stop", "-m", "immediate", "-w", "-t", "30"],
                    Duration::from_secs(40),
                );
                if pid_alive(pid) {
                    send_signal(pid, "KILL");
                    wait_dead(&[pid], Duration::from_secs(5));
                }
                if !wait_dead(&kids, Duration::from_secs(10)) {
                    for k in kids {
                        send_signal(k, "KILL");
                    }
                }
            }
        }
        if let Some(up) = self.upstream_slot.take() {
            // The walsender may take a moment to release the slot.
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}'",
                up.slot
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while up.socket_dir.exists() {
                let mut c = clean_command(&up.psql);
                c.args(["-X", "-q", "-At", "-h"]).arg(&up.socket_dir).args([
                    "-p",
                    &up.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-c",
                    &sql,
                ]);
                c.env("PGCONNECT_TIMEOUT", "3");
                match run_timeout(&mut c, Duration::from_secs(10), None) {
                    Ok(o) if o.status.success() => break,
                    Ok(o)
                        if String::from_utf8_lossy(&o.stderr).contains("is active")
                            && Instant::now() < deadline =>
                    {
                        thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
        }
        let keep = env::var_os("LIFEBOAT_KEEP_PG").is_some_and(|v| !v.is_empty() && v != "0")
            || (panicking
                && env::var_os("LIFEBOAT_KEEP_PG_ON_FAILURE")
                    .is_some_and(|v| !v.is_empty() && v != "0"));
        if let Some(t) = self.tmp.take() {
            if keep {
                eprintln!(
                    "keeping PostgreSQL {} cluster dir {}",
                    self.major,
                    t.path().display()
                );
                std::mem::forget(t);
            } else if env::var_os("LIFEBOAT_SYNC_CLEANUP").is_none() {
                // Deleting a freshly written data dir can take seconds (ext4 with `discard`,
                // unsynced pages); let a detached `rm -rf` do it so tests don't wait. It
                // outlives this process if need be.
                let spawned = Command::new("rm")
                    .arg("-rf")
                    .arg(t.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match spawned {
                    Ok(mut child) => {
                        std::mem::forget(t);
                        thread::spawn(move || child.wait()); // reap it if we live long enough
                    }
                    Err(_) => drop(t),
                }
            } else {
                drop(t);
            }
        }
    }
}
