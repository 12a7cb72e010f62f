//! The SQLite sibling mode: page-image snapshots of WAL-mode databases taken in one read
//! transaction (`snapshot`), page deltas between full snapshots, restore to a point in time
//! (`restore`) and restore drills (`drill`). Snapshots go through the same pipeline (zstd,
//! age, CRC32) and part writer as base backups, to every provider; `snapshot.json` is
//! written last.
//!
//! Invariants: lifeboat never writes to the application's database, never checkpoints it
//! and never changes its journal mode: it opens it read-only, and refuses a database that
//! is not in WAL mode (a long read there would block every writer).

pub mod daemon;
pub mod drill;
pub mod restore;
pub mod snapshot;

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// What the first 100 bytes of a database file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    /// Bytes 18 and 19 are 2 (WAL mode).
    pub wal: bool,
    pub change_counter: u32,
}

/// Parse a database header; `None` when it is not one.
pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 100 || &b[..16] != b"SQLite format 3\0" {
        return None;
    }
    let raw = u16::from_be_bytes([b[16], b[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    Some(Header {
        page_size,
        wal: b[18] == 2 && b[19] == 2,
        change_counter: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

/// The checks before a snapshot: the file exists, is a database, and is in WAL mode. Each
/// error names the database and the file, with a hint.
pub fn inspect(name: &str, path: &Path) -> Result<Header> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "sqlite \"{name}\": {} does not exist\nhint: check the path of [[sqlite]] \"{name}\" in the configuration; lifeboat never creates a database",
            path.display()
        ),
        Err(e) => bail!(
            "sqlite \"{name}\": cannot open {}: {e}\nhint: lifeboat needs read access to the database, its -wal and -shm files, and their directory",
            path.display()
        ),
    };
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!(
            "sqlite \"{name}\": {} is a directory\nhint: name the database file in [[sqlite]] \"{name}\"",
            path.display()
        );
    }
    let mut b = Vec::with_capacity(100);
    (&mut f)
        .take(100)
        .read_to_end(&mut b)
        .with_context(|| format!("sqlite \"{name}\": reading {}", path.display()))?;
    let Some(h) = parse_header(&b) else {
        bail!(
            "sqlite \"{name}\": {} is not an SQLite database (its header is not \"SQLite format 3\")\nhint: check the path of [[sqlite]] \"{name}\"; an encrypted database (SQLCipher, SEE) cannot be snapshotted page by page",
            path.display()
        );
    };
    if !h.wal {
        bail!(
            "sqlite \"{name}\": {} is in rollback-journal mode; lifeboat snapshots only WAL-mode databases (a read there blocks every writer)\nhint: switch it to WAL once, while its application is stopped: sqlite3 {} 'PRAGMA journal_mode=WAL;' (the setting is kept in the file)",
            path.display(),
            path.display()
        );
    }
    Ok(h)
}

/// How a snapshot shares the host's CPUs with the application (`LIFEBOAT_SQLITE_PRIORITY`):
/// - `spare` (the default): every thread of lifeboat runs on all the CPUs it may use but
///   one, which is left to the application; a host (or an affinity mask) with one CPU is
///   left as it is. A snapshot whose read transaction lets the WAL grow by an eighth of
///   `wal_budget` takes every CPU back to end sooner ([`use_every_cpu`]). On the bench's
///   2-core host the writer's pooled p99 commit latency was 1.10-1.14x its baseline with
///   the archive on another device and 1.26-1.42x with it on the database's disk (5.1-5.5x
///   using every CPU), for a full snapshot 1.6-1.7x as long (docs/DESIGN.md "A CPU left to
///   the application", docs/BENCHMARKS.md).
/// - `all`: every CPU, at normal priority, and the `file://` provider's usual writes: the
///   fastest snapshot. Every other value writes through to the device 256 KiB at a time
///   ([`crate::storage::flush_as_written`]).
/// - `low`: every CPU, at nice 10 and best-effort I/O priority 7.
/// - `idle`: every CPU under the SCHED_IDLE policy: any other thread that wakes up preempts
///   lifeboat's. On the bench host it did worse than `spare`: the waking writer is placed
///   on a CPU running lifeboat and waits for the kernel to switch (+20 to +250%).
///
/// Applied to every thread now running, and so to every thread they start. Best effort: a
/// refused system call is logged, not fatal; an unknown value is an error.
pub fn background_priority() -> Result<()> {
    let how = std::env::var("LIFEBOAT_SQLITE_PRIORITY").unwrap_or_default();
    if how != "all" {
        crate::storage::flush_as_written();
    }
    match how.as_str() {
        "" | "spare" => spare_a_cpu(),
        "all" => {}
        "idle" => idle_policy(),
        "low" => low_priority(),
        other => bail!(
            "LIFEBOAT_SQLITE_PRIORITY is {other:?}, which is not a priority lifeboat knows\nhint: use spare (the default: leave one CPU to the application), all, low or idle"
        ),
    }
    Ok(())
}

/// The CPU affinity before [`spare_a_cpu`] left one CPU out, while it is left out.
#[cfg(target_os = "linux")]
static SPARED: std::sync::Mutex<Option<(libc::cpu_set_t, libc::cpu_set_t)>> =
    std::sync::Mutex::new(None);
/// Whether [`use_every_cpu`] has widened the affinity since.
#[cfg(target_os = "linux")]
static WIDENED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set the CPU affinity of every thread of this process.
#[cfg(target_os = "linux")]
fn set_affinity(set: &libc::cpu_set_t) {
    for tid in own_threads() {
        // SAFETY: sched_setaffinity(2) on one of this process's own threads, with a set of
        // the right size holding at least one CPU it may already use.
        if unsafe {
            libc::sched_setaffinity(
                tid as libc::pid_t,
                std::mem::size_of::<libc::cpu_set_t>(),
                set,
            )
        } != 0
        {
            tracing::debug!(tid, error = %std::io::Error::last_os_error(), "cannot set the CPU affinity");
        }
    }
}

/// While a CPU is left to the application, give lifeboat every CPU again: a snapshot whose
/// read transaction has let the WAL grow by an eighth of its budget serves the application
/// better by ending sooner. True when this changed anything. [`spare_again`] undoes it.
pub fn use_every_cpu() -> bool {
    #[cfg(target_os = "linux")]
    if let Some((all, _)) = *SPARED.lock().unwrap_or_else(|e| e.into_inner()) {
        if !WIDENED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            set_affinity(&all);
            return true;
        }
    }
    false
}

/// Leave the CPU out again after [`use_every_cpu`] (the daemon, before each snapshot).
pub fn spare_again() {
    #[cfg(target_os = "linux")]
    if WIDENED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        if let Some((_, spared)) = *SPARED.lock().unwrap_or_else(|e| e.into_inner()) {
            set_affinity(&spared);
        }
    }
}

/// The CPUs in `set`, in order.
#[cfg(target_os = "linux")]
fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET reads a set this function borrows, with numbers below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// Run every thread on the CPUs this process may use, all but the lowest-numbered one.
fn spare_a_cpu() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity(2) fills it for this
        // thread, with its true size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot read the CPU affinity");
            return;
        }
        let cpus = cpus_of(&set);
        if cpus.len() < 2 {
            return;
        }
        let all = set;
        // SAFETY: CPU_CLR on a set this function owns, with a CPU number below CPU_SETSIZE.
        unsafe { libc::CPU_CLR(cpus[0], &mut set) };
        set_affinity(&set);
        *SPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some((all, set));
        tracing::debug!(
            spared = cpus[0],
            of = cpus.len(),
            "a CPU is left to the application"
        );
    }
}

fn idle_policy() {
    #[cfg(target_os = "linux")]
    for tid in own_threads() {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(2) on one of this process's own threads, with a
        // valid parameter for SCHED_IDLE.
        if unsafe { libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!(tid, error = %std::io::Error::last_os_error(), "cannot lower the priority");
        }
    }
}

fn low_priority() {
    #[cfg(target_os = "linux")]
    {
        // IOPRIO_CLASS_BE (2) << IOPRIO_CLASS_SHIFT (13) | level 7.
        const IOPRIO: libc::c_long = (2 << 13) | 7;
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        for tid in own_threads() {
            // SAFETY: setpriority(2) and ioprio_set(2) on this process's own threads; on
            // Linux both act on the one thread named.
            let (n, io) = unsafe {
                (
                    libc::setpriority(libc::PRIO_PROCESS, tid, 10),
                    libc::syscall(
                        libc::SYS_ioprio_set,
                        IOPRIO_WHO_PROCESS,
                        tid as libc::c_long,
                        IOPRIO,
                    ),
                )
            };
            if n != 0 || io != 0 {
                tracing::debug!(tid, error = %std::io::Error::last_os_error(), "cannot lower the priority");
            }
        }
    }
}

/// This process's threads.
#[cfg(target_os = "linux")]
fn own_threads() -> Vec<libc::id_t> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The SHA-256 of one page.
pub fn page_hash(page: &[u8]) -> [u8; 32] {
    Sha256::digest(page).into()
}

/// The hash of a group of pages: SHA-256 over their page hashes, hex.
pub fn group_hash(page_hashes: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for p in page_hashes {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A `file:` URI that opens `path` read-only and immutable (no locks, no -wal or -shm
/// files): for restored copies nobody else has open.
pub fn immutable_uri(path: &Path) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SET: &AsciiSet = &CONTROLS.add(b' ').add(b'?').add(b'#').add(b'%').add(b'"');
    format!(
        "file:{}?immutable=1",
        utf8_percent_encode(&path.display().to_string(), SET)
    )
}

/// `PRAGMA integrity_check` (or `quick_check`) of a restored copy: `ok`, or the problems.
pub fn integrity_check(path: &Path) -> Result<String> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    // An 8 MiB page cache (SQLite's default is 2 MiB): measured on 256 MiB, 370 ms of CPU
    // against 480 ms (fewer reads of the same index pages); larger caches cost more than
    // they save (the memory is touched as it fills) and count against the restore's RSS.
    conn.execute_batch("PRAGMA cache_size = -8192")?;
    check_rows(&conn, "integrity_check")
        .map_err(|e| anyhow!("integrity_check of {}: {e}", path.display()))
}

/// The rows of `PRAGMA <pragma>` (`integrity_check` or `quick_check`), joined: `ok`, or the
/// problems. A check that stops on a damaged page (SQLITE_CORRUPT, SQLITE_NOTADB) found a
/// problem too: its message is the result, not an error.
pub fn check_rows(conn: &rusqlite::Connection, pragma: &str) -> rusqlite::Result<String> {
    let run = || -> rusqlite::Result<String> {
        let mut st = conn.prepare(&format!("PRAGMA {pragma}"))?;
        let rows: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows.join("\n"))
    };
    match run() {
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            Ok(e.to_string())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    #[cfg(target_os = "linux")]
    fn allowed() -> Vec<usize> {
        // SAFETY: as in spare_a_cpu.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
        cpus_of(&set)
    }

    /// The spared CPU is left out, given back by use_every_cpu (once), and left out again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_spared_cpu_is_given_back_and_left_out_again() {
        let mine = allowed();
        if mine.len() < 2 {
            return;
        }
        assert!(!use_every_cpu(), "nothing spared yet");
        spare_a_cpu();
        assert_eq!(allowed(), mine[1..]);
        assert!(use_every_cpu());
        assert_eq!(allowed(), mine);
        assert!(!use_every_cpu(), "already widened");
        spare_again();
        assert_eq!(allowed(), mine[1..]);
        spare_again();
        assert_eq!(allowed(), mine[1..], "spare_again twice");
        assert!(use_every_cpu());
        assert_eq!(allowed(), mine);
    }

    #[test]
    fn headers() {
        let mut b = vec![0u8; 100];
        b[..16].copy_from_slice(b"SQLite format 3\0");
        b[16..18].copy_from_slice(&4096u16.to_be_bytes());
        b[18] = 2;
        b[19] = 2;
        b[24..28].copy_from_slice(&7u32.to_be_bytes());
        let h = parse_header(&b).unwrap();
        assert_eq!((h.page_size, h.wal, h.change_counter), (4096, true, 7));
        b[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(parse_header(&b).unwrap().page_size, 65536);
        b[18] = 1;
        assert!(!parse_header(&b).unwrap().wal);
        b[0] = b'X';
        assert!(parse_header(&b).is_none());
        assert!(parse_header(b"SQLite format 3\0").is_none());
    }

    #[test]
    fn uris_escape_what_sqlite_reads_as_syntax() {
        assert_eq!(
            immutable_uri(Path::new("/tmp/a b?#%.db")),
            "file:/tmp/a%20b%3F%23%25.db?immutable=1"
        );
    }
}
