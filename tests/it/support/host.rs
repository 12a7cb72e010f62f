//! Where the test programs are and who runs them: the binary cache of
//! `scripts/install-pg.sh`, the PostgreSQL majors installed there, the unprivileged OS user
//! the servers run as when the tests run as root, and the temp dirs they share.
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

use std::env;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::run_timeout;

pub const TEST_OS_USER: &str = "lifeboat-test";
pub const ALL_MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

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

/// The oldest and the newest available major (one, when only one is installed); panics
/// like `require_majors()` when none is.
pub fn oldest_and_newest_majors() -> Vec<u32> {
    let majors = require_majors();
    let mut picks = vec![*majors.iter().min().unwrap(), *majors.iter().max().unwrap()];
    picks.dedup();
    picks
}

/// PostgreSQL 15 and the newest available major (the failover, slot and S3 end-to-end tests
/// run on both).
pub fn fifteen_and_newest_majors() -> Vec<u32> {
    let mut majors = vec![15];
    if let Some(n) = newest_major() {
        if n != 15 {
            majors.push(n);
        }
    }
    majors
}

/// The highest available major, if any.
pub fn newest_major() -> Option<u32> {
    available_majors().into_iter().max()
}

/// (uid, gid) of the unprivileged server user when running as root; None otherwise.
/// Creates the user (like scripts/install-pg.sh) if it is missing.
pub(super) fn pg_os_ids() -> Option<(u32, u32)> {
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

pub(super) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Write a file that the server must read: owned by the server user, given mode.
pub(super) fn write_pg_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown_to_pg_user(path);
    set_mode(path, mode);
}

pub(super) fn append_file(path: &Path, text: &str) {
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
