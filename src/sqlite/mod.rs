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

use std::collections::BTreeMap;
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
///   one, which is left to the application: the one that serves the interrupts of the
///   disks holding `dbs` (the writer's fsyncs complete there), else the lowest-numbered. A
///   host (or an affinity mask) with one CPU is left as it is. A snapshot whose read
///   transaction lets the WAL grow by an eighth of `wal_budget` takes every CPU back to end
///   sooner ([`use_every_cpu`]). On the bench's 2-core host the writer's pooled p99 commit
///   latency was 0.98-1.10x its baseline in four runs with the archive on the database's
///   disk (1.26-1.42x leaving the CPU that served none of the disk's interrupts; 4.7-6.8x
///   using every CPU) (docs/DESIGN.md "A CPU left to the application", docs/BENCHMARKS.md).
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
pub fn background_priority(dbs: &[&Path]) -> Result<()> {
    let how = std::env::var("LIFEBOAT_SQLITE_PRIORITY").unwrap_or_default();
    if how != "all" {
        crate::storage::flush_as_written();
    }
    match how.as_str() {
        "" | "spare" => spare_a_cpu(&disk_interrupts(dbs)),
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

/// Run every thread on the CPUs this process may use, all but the one [`cpu_to_spare`]
/// picks from `load` (interrupts by CPU).
fn spare_a_cpu(load: &BTreeMap<usize, u64>) {
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
        let spared = cpu_to_spare(&cpus, load);
        // SAFETY: CPU_CLR on a set this function owns, with a CPU number below CPU_SETSIZE.
        unsafe { libc::CPU_CLR(spared, &mut set) };
        set_affinity(&set);
        *SPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some((all, set));
        tracing::debug!(
            spared,
            of = cpus.len(),
            disk_interrupts = load.get(&spared).copied().unwrap_or(0),
            "a CPU is left to the application"
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = load;
}

/// The CPU of `allowed` (not empty) that serves the most of `load`, the lowest-numbered
/// one on a tie or without any.
///
/// The CPU to leave to the application is the one where its fsyncs complete. With the disk's
/// interrupts served by the CPU lifeboat runs on, each completion (and the block layer's
/// work after it) waited behind lifeboat: on the bench's 2-core VM, whose one disk queue
/// interrupts CPU 1, leaving CPU 0 put the writer's p99 at 1.21x and 1.22x its baseline
/// (4.1x in a third, disturbed run), leaving CPU 1 at 0.95-0.99x in the same pooled runs.
fn cpu_to_spare(allowed: &[usize], load: &BTreeMap<usize, u64>) -> usize {
    allowed
        .iter()
        .copied()
        .max_by_key(|c| (load.get(c).copied().unwrap_or(0), std::cmp::Reverse(*c)))
        .unwrap_or(0)
}

/// The interrupts raised by the controllers of the block devices holding `paths` (a file,
/// or its directory when the file is missing), by the CPU they are now routed to: each
/// interrupt line's count so far, shared among the CPUs of its `effective_affinity_list`
/// (or, without one, as `/proc/interrupts` counted it). Stacked devices (device-mapper,
/// md) count the devices under them. Empty where Linux tells nothing (tmpfs, no sysfs).
fn disk_interrupts(paths: &[&Path]) -> BTreeMap<usize, u64> {
    let mut load = BTreeMap::new();
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let mut lines = std::collections::BTreeSet::new();
        for p in paths {
            let Some(dev) = std::fs::metadata(p)
                .or_else(|e| std::fs::metadata(p.parent().ok_or(e)?))
                .ok()
                .map(|m| m.dev())
            else {
                continue;
            };
            let node = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
            irq_lines(Path::new(&node), &mut lines, 0);
        }
        if lines.is_empty() {
            return load;
        }
        let counts =
            parse_interrupts(&std::fs::read_to_string("/proc/interrupts").unwrap_or_default());
        for irq in lines {
            let Some(by_cpu) = counts.get(&irq) else {
                continue;
            };
            let routed =
                std::fs::read_to_string(format!("/proc/irq/{irq}/effective_affinity_list"))
                    .ok()
                    .and_then(|l| parse_cpu_list(&l))
                    .filter(|cpus| !cpus.is_empty());
            match routed {
                Some(cpus) => {
                    let total: u64 = by_cpu.iter().map(|(_, n)| n).sum();
                    for c in &cpus {
                        *load.entry(*c).or_default() += total / cpus.len() as u64;
                    }
                }
                None => {
                    for (c, n) in by_cpu {
                        *load.entry(*c).or_default() += n;
                    }
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = paths;
    load
}

/// The interrupt lines of the controller of the block device at `node` (a `/sys/dev/block`
/// or `slaves` entry): the `msi_irqs` (or the `irq`) of its nearest device ancestor.
#[cfg(target_os = "linux")]
fn irq_lines(node: &Path, lines: &mut std::collections::BTreeSet<u32>, depth: u32) {
    let Ok(mut dir) = node.canonicalize() else {
        return;
    };
    if depth > 8 {
        return;
    }
    if dir.join("partition").exists() {
        dir.pop();
    }
    let under: Vec<_> = std::fs::read_dir(dir.join("slaves"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !under.is_empty() {
        for u in under {
            irq_lines(&u, lines, depth + 1);
        }
        return;
    }
    for at in dir
        .ancestors()
        .take_while(|a| a.starts_with("/sys/devices/"))
    {
        if let Ok(msi) = std::fs::read_dir(at.join("msi_irqs")) {
            lines.extend(
                msi.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
            );
            return;
        }
        if let Some(irq) = std::fs::read_to_string(at.join("irq"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&n| n > 0)
        {
            lines.insert(irq);
            return;
        }
    }
}

/// `/proc/interrupts`: each numbered line's counts, by CPU (the header names the columns).
fn parse_interrupts(table: &str) -> BTreeMap<u32, Vec<(usize, u64)>> {
    let mut rows = table.lines();
    let cpus: Vec<usize> = rows
        .next()
        .map(|h| {
            h.split_whitespace()
                .filter_map(|c| c.strip_prefix("CPU")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for row in rows {
        let mut fields = row.split_whitespace();
        let Some(irq) = fields
            .next()
            .and_then(|f| f.strip_suffix(':'))
            .and_then(|f| f.parse().ok())
        else {
            continue;
        };
        let counts = cpus
            .iter()
            .zip(fields)
            .map_while(|(&c, n)| Some((c, n.parse().ok()?)))
            .collect();
        out.insert(irq, counts);
    }
    out
}

/// A CPU list as Linux writes it ("0-3,6"); None if it is not one.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for range in list.trim().split(',').filter(|r| !r.is_empty()) {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?);
    }
    Some(cpus)
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
        spare_a_cpu(&BTreeMap::new());
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

    /// The CPU left to the application is the one serving the disk's interrupts.
    #[test]
    fn the_cpu_serving_the_disk_is_spared() {
        let load = |pairs: &[(usize, u64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(cpu_to_spare(&[0, 1], &load(&[(1, 26_393_727), (0, 3)])), 1);
        assert_eq!(
            cpu_to_spare(&[0, 1], &load(&[])),
            0,
            "nothing known: the lowest"
        );
        assert_eq!(
            cpu_to_spare(&[2, 3, 5], &load(&[(3, 7), (5, 7)])),
            3,
            "a tie: the lowest"
        );
        assert_eq!(
            cpu_to_spare(&[2, 3], &load(&[(0, 900), (3, 5)])),
            3,
            "only CPUs lifeboat may use"
        );
        assert_eq!(cpu_to_spare(&[4, 6], &load(&[(1, 5)])), 4);
    }

    #[test]
    fn interrupt_tables_and_cpu_lists() {
        let table = "           CPU0       CPU1       \n \
             31:          0       5829 PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats\n \
             36:          2   26393727 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n\
            NMI:          0          0   Non-maskable interrupts\n\
            LOC:    1234567    7654321   Local timer interrupts\n";
        let t = parse_interrupts(table);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[&36], vec![(0, 2), (1, 26_393_727)]);
        assert_eq!(t[&31], vec![(0, 0), (1, 5829)]);
        assert_eq!(parse_cpu_list("0-3,6\n"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    /// On Linux the database's own disk is found: this file's (the test's) device has a
    /// controller with interrupts, unless it is a memory file system or a container's.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_disk_s_interrupts_are_found_or_nothing_is_claimed() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let load = disk_interrupts(&[&here]);
        let cpus: Vec<usize> = std::fs::read_to_string("/proc/interrupts")
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .filter_map(|c| c.strip_prefix("CPU")?.parse().ok())
            .collect();
        assert!(load.keys().all(|c| cpus.contains(c)), "{load:?} {cpus:?}");
        assert!(disk_interrupts(&[Path::new("/proc/self/status")]).is_empty());
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
