//! `lifeboat sqlite snapshot`: one database's page images, read in ONE read transaction on
//! a dedicated read-only connection (the pages in a WAL frame through `sqlite_dbpage`, the
//! others from the database file directly: see [`wal_pages`]), `quick_check` in the same
//! transaction (a delta skips it while its chain passed one within `quick_check_every`),
//! sealed and stored on every provider by the part writer; `snapshot.json` last.
//!
//! Deltas: this host keeps the SHA-256 of every page of the last snapshot it stored
//! (`<spool_dir>/sqlite/<NAME>.pages`: a JSON line naming the snapshot, then per block of
//! [`sqlite::probe_pages`] pages a 32-byte BLAKE3 probe of the block's bytes and each
//! page's 32-byte SHA-256), read in step with the pages so memory stays bounded whatever
//! the database's size. A delta stores the pages whose hash changed (and the new ones), as
//! ascending runs; a block whose probe is unchanged keeps its pages' hashes without
//! SHA-256 (a third of the cost of hashing every page).
//! The file is replaced (crash-safe) only after `snapshot.json` is stored; a delta is taken
//! only when the file names the archive's newest snapshot, so a crash anywhere means the
//! next snapshot is full, never a delta on the wrong base.
//!
//! Invariants: the database is opened read-only (no write, no checkpoint, no journal mode
//! change); a database not in WAL mode is refused; a snapshot whose WAL growth passes the
//! budget is abandoned; nothing is visible before `snapshot.json`.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rusqlite::OpenFlags;

use crate::archive::Archive;
use crate::config::{Config, SqliteConfig};
use crate::core::catalog::{self, backup_id_from_rfc3339};
use crate::core::plan::Timestamp;
use crate::core::sqlite::{
    self, decide, push_run, DeltaPolicy, LocalState, SnapshotKind, SnapshotMeta, GROUP_PAGES,
    PAGES_STREAM,
};
use crate::ingest::parts::PartWriter;
use crate::pipeline::Sealer;
use crate::storage::{durable, Mirror};

const CHUNK: usize = 256 << 10;
/// How `quick_check` in `snapshot.json` begins when a delta did not run it.
pub const NOT_RUN: &str = "not run";
/// Parts of SQLite snapshots are at most this big (`backup.part_size` when smaller): the
/// part writer holds about (cores + 2) of them, and a host of small services should keep a
/// snapshot's memory under 64 MiB (4 MiB parts: 59 MiB peak RSS against 79 MiB with 8 MiB).
const MAX_PART: usize = 4 << 20;

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Where this host keeps the page hashes of database `name`'s last snapshot.
pub fn state_path(cfg: &Config, name: &str) -> PathBuf {
    cfg.wal
        .spool_dir
        .join("sqlite")
        .join(format!("{name}.pages"))
}

/// The state file's first line, if it is readable.
fn read_state(path: &Path) -> Option<(LocalState, BufReader<std::fs::File>)> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).ok()?;
    let st: LocalState = serde_json::from_slice(&line).ok()?;
    Some((st, r))
}

/// What reading the pages found.
struct Read1 {
    page_size: u32,
    page_count: u64,
    change_counter: u32,
    runs: Vec<(u64, u64)>,
    group_hashes: Vec<String>,
    quick_check: String,
    time: Timestamp,
}

struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn push(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx
                .blocking_send(chunk)
                .map_err(|_| anyhow!("the archive writer stopped"))?;
        }
        Ok(())
    }
}

/// A set of page numbers.
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(page_count: u64) -> PageSet {
        PageSet(vec![0; (page_count as usize + 1).div_ceil(64)])
    }
    fn insert(&mut self, pgno: u64) {
        if let Some(w) = self.0.get_mut((pgno / 64) as usize) {
            *w |= 1 << (pgno % 64);
        }
    }
    fn contains(&self, pgno: u64) -> bool {
        self.0
            .get((pgno / 64) as usize)
            .is_some_and(|w| w & (1 << (pgno % 64)) != 0)
    }
}

/// Every page number in a frame of the database's WAL as it is now, read inside the
/// snapshot's read transaction: a superset of the pages whose image the snapshot takes from
/// the WAL. Every other page the snapshot reads from the database file, and nothing writes
/// it there while the transaction lasts (a checkpoint copies only frames the oldest reader
/// may see, and those pages are in the set; a reader of the file alone holds off every
/// checkpoint), so those pages are read from the file directly, in large reads, instead of
/// one by one through SQLite.
///
/// The WAL is stable while the transaction reads from it (SQLite restarts it only when no
/// reader uses it); frames of this generation carry the header's salts and come first, so
/// the scan stops at the first frame with other salts (left over from an earlier
/// generation). `None` when the WAL cannot be read or is not one SQLite wrote for this page
/// size: every page then comes through SQLite.
fn wal_pages(path: &Path, page_size: u32, page_count: u64) -> Option<PageSet> {
    let mut set = PageSet::new(page_count);
    let f = match std::fs::File::open(wal_path(path)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(set),
        Err(_) => return None,
    };
    let len = f.metadata().ok()?.len();
    if len < 32 {
        // No header, no frame: SQLite reads nothing from it.
        return Some(set);
    }
    let mut hdr = [0u8; 32];
    f.read_exact_at(&mut hdr, 0).ok()?;
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if !matches!(be(&hdr[0..4]), 0x377f_0682 | 0x377f_0683) || be(&hdr[8..12]) != page_size {
        return None;
    }
    let salts = &hdr[16..24];
    let frame = 24 + u64::from(page_size);
    let mut fh = [0u8; 24];
    let mut at = 32;
    while at + frame <= len {
        f.read_exact_at(&mut fh, at).ok()?;
        if &fh[8..16] != salts {
            break;
        }
        set.insert(u64::from(be(&fh[0..4])));
        at += frame;
    }
    Some(set)
}

/// The database's WAL: `<path>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut w = path.as_os_str().to_owned();
    w.push("-wal");
    PathBuf::from(w)
}

/// Where the WAL stood: its wal-index header's salt and last frame (`mxFrame`), when the
/// `-shm` file can be read, and the WAL file's length.
struct WalMark {
    index: Option<(u64, u32)>,
    len: u64,
}

impl WalMark {
    /// `shm`: a descriptor of `<path>-shm` that stays open while SQLite's connection is.
    fn now(path: &Path, shm: Option<&std::fs::File>) -> WalMark {
        WalMark {
            index: shm.and_then(wal_index),
            len: std::fs::metadata(wal_path(path)).map_or(0, |m| m.len()),
        }
    }

    /// Bytes of WAL frames appended since `self`. From the wal-index's frame counts when
    /// both marks have them: the WAL file keeps its largest size (SQLite reuses it from
    /// the start after a checkpoint, unless `journal_size_limit` is set), so its length
    /// does not grow until the frames pass it. A new salt means the WAL restarted since:
    /// every frame in it is new.
    fn grown_since(&self, start: &WalMark, page_size: u32) -> u64 {
        match (start.index, self.index) {
            (Some((salt0, mx0)), Some((salt, mx))) => {
                let frames = if salt == salt0 {
                    mx.saturating_sub(mx0)
                } else {
                    mx
                };
                u64::from(frames) * (24 + u64::from(page_size))
            }
            _ => self.len.saturating_sub(start.len),
        }
    }
}

/// The database's wal-index: `<path>-shm`.
fn shm_path(path: &Path) -> PathBuf {
    let mut w = path.as_os_str().to_owned();
    w.push("-shm");
    PathBuf::from(w)
}

/// The wal-index header read from `f`, the `-shm` file (SQLite's shared memory, in the
/// host's byte order): the salt and `mxFrame` of its first copy when it is initialised and
/// its two copies agree (a writer updates the second copy, then the first). Never open and
/// close the file here: see [`read_pages`] on descriptors and SQLite's locks.
fn wal_index(f: &std::fs::File) -> Option<(u64, u32)> {
    let mut h = [0u8; 96];
    for _ in 0..3 {
        f.read_exact_at(&mut h, 0).ok()?;
        if h[..48] == h[48..] && h[12] == 1 {
            let mx = u32::from_ne_bytes(h[16..20].try_into().ok()?);
            let salt = u64::from_ne_bytes(h[32..40].try_into().ok()?);
            return Some((salt, mx));
        }
    }
    None
}

/// The previous snapshot's page state, read block by block in step with the pages.
struct PrevState {
    r: BufReader<std::fs::File>,
    page_count: u64,
    /// One block's record: the probe, then a SHA-256 a page.
    rec: Vec<u8>,
}

/// Pages arrive in batches of this many blocks on the hashing thread.
const BATCH_BLOCKS: usize = 32;

/// The hashing side of a snapshot, on its own thread while SQLite reads the pages: each
/// block of pages is probed, what changed is hashed and sent on, and its record written
/// to the new state.
struct Blocks {
    prev: Option<PrevState>,
    page_size: usize,
    /// The page number of the next block's first page.
    first: u64,
    state: BufWriter<std::fs::File>,
    out: ChunkSender,
    runs: Vec<(u64, u64)>,
    group: Vec<[u8; 32]>,
    group_hashes: Vec<String>,
}

impl Blocks {
    /// Take batches of whole blocks (the last one may end short) until the reader is done,
    /// handing each buffer back for reuse (a fresh megabyte a batch costs page faults).
    fn run(
        mut self,
        batches: std::sync::mpsc::Receiver<Vec<u8>>,
        empties: std::sync::mpsc::Sender<Vec<u8>>,
        block: usize,
    ) -> Result<Self> {
        for mut batch in batches {
            for b in batch.chunks(block) {
                self.block(b)?;
            }
            batch.clear();
            let _ = empties.send(batch);
        }
        if !self.group.is_empty() {
            self.group_hashes.push(super::group_hash(&self.group));
            self.group.clear();
        }
        self.out.flush()?;
        Ok(self)
    }

    fn block(&mut self, buf: &[u8]) -> Result<()> {
        let n = buf.len() / self.page_size;
        if n == 0 {
            return Ok(());
        }
        let probe = blake3::hash(buf);
        // The previous snapshot's record of the pages at the same place (a shorter one
        // where it ended inside this block).
        let prev = match self.prev.as_mut() {
            Some(p) if p.page_count >= self.first => {
                let pn = (p.page_count - self.first + 1).min(n as u64) as usize;
                match p.r.read_exact(&mut p.rec[..32 + 32 * pn]) {
                    Ok(()) => Some((pn, &p.rec[..32 + 32 * pn])),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let unchanged = prev.is_some_and(|(pn, rec)| pn == n && rec[..32] == probe.as_bytes()[..]);
        self.state.write_all(probe.as_bytes())?;
        for j in 0..n {
            let page = &buf[j * self.page_size..(j + 1) * self.page_size];
            let old: Option<[u8; 32]> = prev.and_then(|(pn, rec)| {
                (j < pn).then(|| rec[32 + 32 * j..64 + 32 * j].try_into().expect("32 bytes"))
            });
            let h = match old {
                Some(h) if unchanged => h,
                _ => super::page_hash(page),
            };
            if old != Some(h) {
                push_run(&mut self.runs, self.first + j as u64);
                self.out.push(page)?;
            }
            self.state.write_all(&h)?;
            self.group.push(h);
            if self.group.len() == GROUP_PAGES as usize {
                self.group_hashes.push(super::group_hash(&self.group));
                self.group.clear();
            }
        }
        self.first += n as u64;
        Ok(())
    }
}

/// Read every page in one read transaction; send the pages a full snapshot (`prev` is
/// `None`) or a delta needs; write the new page state to `new_state` (the blocks' records,
/// completed by the caller with the JSON line and a rename). `prev` is the previous
/// snapshot's state (after its JSON line) and its page count. `skip_check`: why this
/// delta runs no `quick_check` (its chain passed one recently).
fn read_pages(
    db: &SqliteConfig,
    prev: Option<(BufReader<std::fs::File>, u64)>,
    skip_check: Option<String>,
    new_state: &Path,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(Read1, Vec<u8>)> {
    let name = &db.name;
    let path = &db.path;
    // lifeboat's own descriptors on the database and its `-shm` file, declared before the
    // connection so that they close after it, on every path: closing any descriptor of a
    // file drops every POSIX lock this process holds on it (fcntl(2)), SQLite's included:
    // its SHARED lock on the database, its read mark and dead-man switch in `-shm`. With its
    // read mark gone, a checkpoint copies frames newer than the snapshot into the database
    // under its read transaction (sqlite.org/howtocorrupt.html, 2.2).
    let file = std::fs::File::open(path)
        .with_context(|| format!("sqlite \"{name}\": opening {}", path.display()))?;
    let shm: Option<std::fs::File>;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("sqlite \"{name}\": opening {} read-only", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let locked = |e: rusqlite::Error| {
        if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        ) {
            anyhow!("sqlite \"{name}\": {} is locked (waited 10s for a read transaction): {e}\nhint: an application holding an exclusive lock (locking_mode=EXCLUSIVE) blocks readers; the next snapshot tries again", path.display())
        } else if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase)
        ) {
            anyhow!("sqlite \"{name}\": {} is not an SQLite database, or is encrypted or damaged: {e}\nhint: check the path of [[sqlite]] \"{name}\"", path.display())
        } else {
            anyhow!("sqlite \"{name}\": reading {}: {e}", path.display())
        }
    };
    // A small page cache: the pages are read once, in order. No memory map: the mapped file
    // would count in lifeboat's RSS (1 GiB for a 1 GiB database), for no gain in speed.
    conn.execute_batch("PRAGMA cache_size = -2048; PRAGMA mmap_size = 0;")
        .map_err(locked)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(locked)?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "sqlite \"{name}\": {} is in rollback-journal mode (journal_mode={mode}); lifeboat snapshots only WAL-mode databases (a read there blocks every writer)\nhint: switch it to WAL once, while its application is stopped: sqlite3 {} 'PRAGMA journal_mode=WAL;' (the setting is kept in the file)",
            path.display(),
            path.display()
        );
    }
    // The connection's first read above opened (or created) the `-shm` file.
    shm = std::fs::File::open(shm_path(path)).ok();
    let wal_start = WalMark::now(path, shm.as_ref());
    conn.execute_batch("BEGIN DEFERRED").map_err(locked)?;
    // The first read starts the read transaction: the image is of this moment.
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(locked)?;
    let page_count: u64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(locked)?;
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(locked)?;
    let time = now();

    let f = std::fs::File::create(new_state)
        .with_context(|| format!("creating {}", new_state.display()))?;
    let block = sqlite::probe_pages(page_size) as usize * page_size as usize;
    let blocks = Blocks {
        prev: prev.map(|(r, page_count)| PrevState {
            r,
            page_count,
            rec: vec![0; 32 + 32 * sqlite::probe_pages(page_size) as usize],
        }),
        page_size: page_size as usize,
        first: 1,
        state: BufWriter::new(f),
        out: ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        runs: Vec::new(),
        group: Vec::with_capacity(GROUP_PAGES as usize),
        group_hashes: Vec::new(),
    };
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let hasher = std::thread::Builder::new()
        .name("sqlite-hash".into())
        .spawn(move || blocks.run(batch_rx, empty_tx, block))
        .context("starting the hashing thread")?;
    let mut batch: Vec<u8> = Vec::with_capacity(block * BATCH_BLOCKS);
    // The hashing thread's own error explains a closed channel.
    let hashing_stopped = |hasher: std::thread::JoinHandle<Result<Blocks>>| -> anyhow::Error {
        match hasher.join() {
            Ok(Err(e)) => e,
            _ => anyhow!("the hashing thread stopped"),
        }
    };
    let mut change_counter = 0;
    let mut page1 = Vec::new();
    // Pages the snapshot may read from the WAL come through SQLite; every other page is
    // read from the database file in large reads (see `wal_pages`).
    let in_wal = wal_pages(path, page_size, page_count);
    let ps = page_size as usize;
    let cap = block * BATCH_BLOCKS;
    {
        let mut st = conn
            .prepare("SELECT data FROM sqlite_dbpage('main') WHERE pgno = ?1")
            .map_err(|e| anyhow!("sqlite \"{name}\": this lifeboat was built without the sqlite_dbpage table: {e}"))?;
        let mut pgno = 1u64;
        let mut budget_checked = 0u64;
        while pgno <= page_count {
            let from_wal = in_wal.as_ref().map_or(true, |w| w.contains(pgno));
            let before = batch.len();
            if from_wal {
                let data: Vec<u8> = st.query_row([pgno as i64], |r| r.get(0)).map_err(locked)?;
                if data.len() != ps {
                    bail!(
                        "sqlite \"{name}\": sqlite_dbpage returned {} bytes for page {pgno} of {page_size}",
                        data.len()
                    );
                }
                batch.extend_from_slice(&data);
                pgno += 1;
            } else {
                // A run of pages not in the WAL, up to the batch's room.
                let room = ((cap - batch.len()) / ps) as u64;
                let mut end = pgno + 1;
                while end <= page_count
                    && end - pgno < room
                    && !in_wal.as_ref().is_some_and(|w| w.contains(end))
                {
                    end += 1;
                }
                let n = ((end - pgno) as usize) * ps;
                batch.resize(before + n, 0);
                file.read_exact_at(&mut batch[before..], (pgno - 1) * u64::from(page_size))
                    .with_context(|| {
                        format!(
                            "sqlite \"{name}\": reading pages {pgno}-{} of {}",
                            end - 1,
                            path.display()
                        )
                    })?;
                pgno = end;
            }
            if page1.is_empty() && batch.len() >= 100 {
                let d = &batch[..100];
                change_counter = u32::from_be_bytes([d[24], d[25], d[26], d[27]]);
                page1 = d.to_vec();
            }
            if batch.len() == cap {
                let next = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(cap));
                let full = std::mem::replace(&mut batch, next);
                if batch_tx.send(full).is_err() {
                    return Err(hashing_stopped(hasher));
                }
            }
            if pgno - budget_checked >= 4096 {
                budget_checked = pgno;
                let grown = WalMark::now(path, shm.as_ref()).grown_since(&wal_start, page_size);
                if grown > db.wal_budget.bytes() / 8 && super::use_every_cpu() {
                    tracing::info!(
                        db = name,
                        grown = %crate::core::fmt::size(grown),
                        "the WAL grew by an eighth of wal_budget during the snapshot: every CPU until it ends"
                    );
                }
                if grown > db.wal_budget.bytes() {
                    bail!(
                        "sqlite \"{name}\": snapshot abandoned: the WAL of {} grew by {} while the snapshot held its read transaction (wal_budget {})\nhint: raise sqlite.wal_budget, or snapshot when the database is less busy",
                        path.display(),
                        crate::core::fmt::size(grown),
                        db.wal_budget
                    );
                }
            }
        }
    }
    if !batch.is_empty() && batch_tx.send(batch).is_err() {
        return Err(hashing_stopped(hasher));
    }
    drop(batch_tx);
    // quick_check in the same transaction: the checked image is the stored one.
    let checked = skip_check.is_none();
    let quick_check = match skip_check {
        Some(why) => why,
        None => super::check_rows(&conn, "quick_check").map_err(locked)?,
    };
    conn.execute_batch("COMMIT").map_err(locked)?;
    drop(conn);
    if checked && quick_check != "ok" {
        bail!(
            "sqlite \"{name}\": quick_check of {} failed: {}\nhint: the database is damaged; no snapshot was stored (the earlier ones remain: `lifeboat sqlite list`)",
            path.display(),
            quick_check.lines().take(5).collect::<Vec<_>>().join("; ")
        );
    }
    let Blocks {
        state: hashes,
        runs,
        group_hashes,
        ..
    } = hasher
        .join()
        .map_err(|_| anyhow!("the hashing thread panicked"))??;
    let f = hashes
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {e}", new_state.display()))?;
    f.sync_all()?;
    Ok((
        Read1 {
            page_size,
            page_count,
            change_counter,
            runs,
            group_hashes,
            quick_check,
            time,
        },
        page1,
    ))
}

async fn cleanup(mirror: &Mirror, name: &str, id: &str) {
    for p in &mirror.providers {
        if !p.features().delete {
            continue;
        }
        if let Ok(objs) = p.list(&sqlite::snapshot_prefix(name, id)).await {
            for o in objs {
                let _ = p.delete(&o.key).await;
            }
        }
    }
}

/// An exclusive lock on this host's state of database `name`: two snapshots of one
/// database never run at once.
fn lock(dir: &Path, name: &str) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let p = dir.join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "sqlite \"{name}\": another lifeboat is snapshotting this database ({} is locked)\nhint: wait for it to finish",
            p.display()
        );
    }
    Ok(f)
}

/// Take one snapshot of `db`: full or delta as [`decide`] says (`force_full`: full).
pub async fn run(
    cfg: &Config,
    db: &SqliteConfig,
    force_full: bool,
) -> Result<(SnapshotMeta, &'static str)> {
    run_until(cfg, db, force_full, None).await
}

/// Why a snapshot ended early: `stop` turned true (the daemon is stopping).
pub const STOPPED: &str = "stopped before it was stored";

/// [`run`], abandoned when `stop` turns true: what it stored so far is removed (from the
/// providers that allow deletes; without `snapshot.json` it is invisible everywhere) and
/// the error says [`STOPPED`].
pub async fn run_until(
    cfg: &Config,
    db: &SqliteConfig,
    force_full: bool,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(SnapshotMeta, &'static str)> {
    let name = db.name.clone();
    // If the snapshot before took every CPU back, this one starts with the CPU left out.
    super::spare_again();
    let header = super::inspect(&name, &db.path)?;
    let state_dir = cfg.wal.spool_dir.join("sqlite");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let _lock = lock(&state_dir, &name)?;
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.backup.compression_level)?;
    let archive = Archive::open(cfg)?;
    let snaps = archive.sqlite_snapshots(Some(&name)).await?;
    let newest = snaps.last();
    let state_file = state_path(cfg, &name);
    let local = read_state(&state_file);
    let policy = DeltaPolicy {
        full_every: db.full_every,
        max_chain_fraction: db.max_delta_fraction,
    };
    let (kind, why) = decide(
        newest,
        local.as_ref().map(|l| &l.0),
        header.page_size,
        &policy,
        force_full,
    );
    let prev = match kind {
        SnapshotKind::Delta => local.map(|l| (l.1, l.0.page_count)),
        SnapshotKind::Full => None,
    };
    // A delta on a chain that passed quick_check recently does not run it again: on a
    // large database it costs more than reading and hashing the pages.
    let skip_check = match (kind, newest) {
        (SnapshotKind::Delta, Some(n)) => {
            sqlite::recent_check(&snaps, n, now(), db.quick_check_every).map(|c| {
                format!(
                "{NOT_RUN}: snapshot {} of this chain passed it {} before (quick_check_every {})",
                c.id,
                humantime::format_duration(std::time::Duration::from_secs(
                    now().0.saturating_sub(c.time.0).max(0) as u64 / 1_000_000
                )),
                humantime::format_duration(db.quick_check_every)
            )
            })
        }
        _ => None,
    };
    let start_time = now();
    let secs = Timestamp::from_unix_secs(start_time.0.div_euclid(1_000_000));
    let id = crate::ingest::parts::fresh_id(
        &archive.mirror,
        &backup_id_from_rfc3339(&secs.rfc3339()),
        |id| sqlite::snapshot_prefix(&name, id),
        "snapshot",
    )
    .await?;
    let tmp_state = state_dir.join(format!("{name}.pages.tmp"));
    let pages_tmp = state_dir.join(format!("{name}.pages.new"));
    let store = async {
        tracing::info!(name, id, kind = ?kind, why, "sqlite snapshot starting");
        let mut writer = PartWriter::new(
            archive.mirror.clone(),
            sealer,
            sqlite::snapshot_prefix(&name, &id),
            cfg.backup_part_size().min(MAX_PART),
        );
        writer.begin_tar(PAGES_STREAM.to_string()).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let dbc = db.clone();
        let pt = pages_tmp.clone();
        let reader =
            tokio::task::spawn_blocking(move || read_pages(&dbc, prev, skip_check, &pt, tx));
        // A stop while the pages are read abandons the snapshot; once they are all read
        // it is completed (the last parts and snapshot.json: moments).
        let pushed = match stop {
            None => writer.push_all(&mut rx).await,
            Some(mut stop) => tokio::select! {
                r = writer.push_all(&mut rx) => r,
                _ = stop.wait_for(|s| *s) => {
                    drop(rx);
                    let _ = reader.await;
                    // The parts on their way land before the cleanup removes them.
                    let _ = writer.finish(&[PAGES_STREAM.to_string()]).await;
                    let _ = std::fs::remove_file(&pages_tmp);
                    bail!("sqlite \"{name}\": snapshot {id} {STOPPED}");
                }
            },
        };
        drop(rx);
        let read = reader
            .await
            .map_err(|e| anyhow!("the reading task failed: {e}"));
        let outcome = async {
            let storing = || format!("sqlite \"{name}\": storing snapshot {id}");
            // The writer's own error first: a stopped writer also stops the reader.
            pushed.with_context(storing)?;
            let (read, _page1) = read??;
            writer.end_tar().await.with_context(storing)?;
            let parts = writer
                .finish(&[PAGES_STREAM.to_string()])
                .await
                .with_context(storing)?;
            Ok::<_, anyhow::Error>((read, parts))
        }
        .await;
        let (read, parts) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&pages_tmp);
                return Err(e);
            }
        };
        let stored: u64 = read.runs.iter().map(|r| r.1).sum();
        let (base, full, chain_len, chain_pages) = match (kind, newest) {
            (SnapshotKind::Delta, Some(n)) => (
                Some(n.id.clone()),
                n.full.clone(),
                n.chain_len + 1,
                n.chain_pages + stored,
            ),
            _ => (None, id.clone(), 0, 0),
        };
        let meta = SnapshotMeta {
            format: catalog::FORMAT_VERSION,
            name: name.clone(),
            id: id.clone(),
            kind,
            base,
            full,
            chain_len,
            chain_pages,
            path: db.path.display().to_string(),
            time: read.time,
            start_time,
            end_time: now(),
            page_size: read.page_size,
            page_count: read.page_count,
            change_counter: read.change_counter,
            quick_check: read.quick_check,
            runs: read.runs,
            group_hashes: read.group_hashes,
            plain_size: parts.iter().map(|p| p.plain_len).sum(),
            stored_size: parts.iter().map(|p| p.stored_len).sum(),
            parts,
            created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        };
        let body = serde_json::to_vec_pretty(&meta).context("encoding snapshot.json")?;
        if let Err(e) = archive
            .mirror
            .put(&sqlite::snapshot_meta_key(&name, &id), Bytes::from(body))
            .await
        {
            let _ = std::fs::remove_file(&pages_tmp);
            return Err(anyhow::Error::from(e).context(format!(
                "sqlite \"{name}\": storing snapshot {id}'s snapshot.json"
            )));
        }
        Ok(meta)
    };
    let meta = match store.await {
        Ok(m) => m,
        Err(e) => {
            // Nothing of it is visible (no snapshot.json); remove the parts.
            cleanup(&archive.mirror, &name, &id).await;
            return Err(e);
        }
    };
    // The snapshot exists: the page hashes on this host now describe it.
    let st = LocalState {
        id: id.clone(),
        page_size: meta.page_size,
        page_count: meta.page_count,
        probe_pages: sqlite::probe_pages(meta.page_size),
    };
    let saved = durable::replace_with(&state_file, &tmp_state, |t| -> Result<std::fs::File> {
        let mut w = BufWriter::new(std::fs::File::create(t)?);
        w.write_all(&serde_json::to_vec(&st)?)?;
        w.write_all(b"\n")?;
        std::io::copy(&mut std::fs::File::open(&pages_tmp)?, &mut w)?;
        w.into_inner().map_err(|e| anyhow!("{e}"))
    });
    let _ = std::fs::remove_file(&pages_tmp);
    if let Err(e) = saved {
        // Harmless for the archive: the next snapshot is a full one.
        tracing::warn!(error = %e, path = %state_file.display(), "cannot save the page hashes; the next snapshot will be full");
        let _ = std::fs::remove_file(&state_file);
    }
    tracing::info!(
        name,
        id,
        pages = meta.pages_stored(),
        stored = meta.stored_size,
        "sqlite snapshot stored"
    );
    Ok((meta, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_growth_counts_frames_and_restarts() {
        let mark = |index, len| WalMark { index, len };
        let start = mark(Some((7, 100)), 50_000_000);
        // The file keeps its size while frames are appended inside it.
        assert_eq!(
            mark(Some((7, 150)), 50_000_000).grown_since(&start, 4096),
            50 * 4120
        );
        // A restart (a new salt): every frame is new.
        assert_eq!(
            mark(Some((8, 30)), 50_000_000).grown_since(&start, 4096),
            30 * 4120
        );
        // Without the wal-index on both sides: the file's length.
        assert_eq!(mark(None, 50_004_120).grown_since(&start, 4096), 4120);
        assert_eq!(
            mark(Some((7, 150)), 10).grown_since(&mark(None, 20), 4096),
            0
        );
    }
}
