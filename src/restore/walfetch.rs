//! `lifeboat wal-fetch SEGMENT DEST`: PostgreSQL's restore_command.
//!
//! Everything is read through the archive's one reader (`archive::read`), across every
//! provider: a complete segment comes from a `.seg` on any provider; a segment the streamer
//! had not finished is rebuilt from the parts of all providers and zero-filled to the
//! segment size, which PostgreSQL reads as the end of WAL, only when it is the newest WAL
//! of its timeline. A partial with later WAL after it, or a hole, is Unusable (exit 126):
//! recovery stops instead of ending early. Every object is verified (CRC32, age
//! authentication, length) before anything is written; the file appears at DEST atomically.
//!
//! # Prefetching (`--prefetch N`)
//!
//! PostgreSQL asks for one segment at a time and waits for each. With prefetching, a
//! detached worker process fetches the next N segments in parallel into a local queue
//! directory (default `<dir of DEST>/lifeboat-prefetch`, i.e. inside `pg_wal`, so that a
//! `rename()` moves a queued segment into place), and `wal-fetch` serves from the queue.
//!
//! Queue directory layout (a cache: anything in it may be deleted at any time):
//!
//! ```text
//! <SEGMENT>        a complete, verified, fsynced segment, ready to be renamed to DEST
//! <SEGMENT>.tmp    the worker is fetching this segment right now
//! want             the segment PostgreSQL last received (written by the foreground)
//! archive          the archive the queued segments came from (system identifier, size)
//! worker.lock      flock'ed (exclusive) by the one running worker
//! worker.log       the worker's stderr
//! ```
//!
//! Rules that keep the queue exactly as trustworthy as the archive:
//! - Only complete `.seg` objects are queued. A partial segment may be completed later, so
//!   it is always fetched on demand; file names carry the timeline, and archive objects are
//!   immutable, so a queued file is byte for byte what a direct fetch would write.
//! - A queued file is served only when the queue is known to belong to this archive: either
//!   a worker is running (it checked `archive` against the archive when it started, and
//!   removes that file until it has), or, with no worker, the foreground compares `archive`
//!   with the archive's `archive.json` itself. A queue left over from another cluster is
//!   never served.
//! - Any problem with the queue falls back to fetching directly: prefetching can make
//!   wal-fetch faster, never make it fail. NotFound (exit 1) and Unusable (exit 126) keep
//!   their meaning, and a NotFound leaves the queue alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::archive::read::{Segment, WalError};
use crate::archive::Archive;
use crate::core::catalog;
use crate::core::wal::{SegNo, SegmentName, WalFileName, WalSegSize};
use crate::pipeline::{self, Opener};
use crate::storage::durable;

/// The file is not in the archive (PostgreSQL's normal "no more WAL" answer).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in the archive")]
pub struct NotFound(pub String);

/// The file is in the archive but cannot be used: PostgreSQL must stop, not end recovery.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// How wal-fetch prefetches.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// How many segments after the requested one a worker fetches ahead (0 = off). At most
    /// [`MAX_PREFETCH`].
    pub prefetch: usize,
    /// The queue directory; default `<dir of DEST>/lifeboat-prefetch`. It must be private
    /// to this data directory, and should be on DEST's file system (else segments are
    /// copied instead of renamed).
    pub queue_dir: Option<PathBuf>,
}

/// Upper bound on `--prefetch` (the queue holds up to this many segments on disk).
pub const MAX_PREFETCH: usize = 64;
/// The default queue directory's name, created beside DEST.
pub const QUEUE_DIR_NAME: &str = "lifeboat-prefetch";

const WANT_FILE: &str = "want";
const IDENTITY_FILE: &str = "archive";
const LOCK_FILE: &str = "worker.lock";
const LOG_FILE: &str = "worker.log";
/// The worker's log is started afresh when it grows past this.
const LOG_MAX: u64 = 1 << 20;
/// How long the foreground waits for a segment the worker is fetching.
const WAIT_MAX: Duration = Duration::from_secs(30);
const WAIT_POLL: Duration = Duration::from_millis(20);
/// A `<SEGMENT>.tmp` older than this is not waited for.
const TMP_FRESH: Duration = Duration::from_secs(30);
/// At most this many bytes of stored objects in flight in the worker (at most 4 fetches,
/// at least 1).
const IN_FLIGHT_BUDGET: u64 = 256 << 20;

pub async fn run(archive: &Archive, opener: &Opener, file: &str, dest: &Path) -> Result<()> {
    run_with(archive, opener, file, dest, &FetchOptions::default(), None).await
}

/// wal-fetch with prefetching. `worker_cmd` is the command line prefix that starts a
/// worker: the lifeboat binary with its global options, `wal-fetch --prefetch-worker`;
/// this function appends `--prefetch K --queue-dir Q SEGMENT DEST`. `None` serves from
/// the queue but never starts a worker.
pub async fn run_with(
    archive: &Archive,
    opener: &Opener,
    file: &str,
    dest: &Path,
    opts: &FetchOptions,
    worker_cmd: Option<Command>,
) -> Result<()> {
    let name: WalFileName = file.parse().map_err(|e| anyhow!("{e}"))?;
    let segment = match name {
        WalFileName::Segment(s) if opts.prefetch > 0 => s,
        _ => {
            let (seg, _) = archive_meta(archive, file).await?;
            return fetch_direct(archive, opener, file, name, seg, dest).await;
        }
    };
    let depth = opts.prefetch.min(MAX_PREFETCH);
    let q = match open_queue(opts, dest) {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "prefetch queue unavailable; fetching directly");
            let (seg, _) = archive_meta(archive, file).await?;
            return fetch_direct(archive, opener, file, name, seg, dest).await;
        }
    };
    let alive = q.worker_alive();
    let mut meta = None;
    let trusted = if alive {
        q.read_identity()
    } else {
        let m = archive_meta(archive, file).await?;
        let id = q
            .read_identity()
            .filter(|i| i.system_identifier == m.1 && i.seg_bytes == m.0.bytes());
        meta = Some(m);
        id
    };
    if let Some(id) = trusted {
        if q.take(segment, dest, id.seg_bytes, alive).await {
            tracing::debug!(segment = %segment, "served from the prefetch queue");
            q.after_serve(segment, depth, worker_cmd, dest);
            return Ok(());
        }
    }
    let (seg, _) = match meta {
        Some(m) => m,
        None => archive_meta(archive, file).await?,
    };
    fetch_direct(archive, opener, file, name, seg, dest).await?;
    q.after_serve(segment, depth, worker_cmd, dest);
    Ok(())
}

/// The archive's segment size and system identifier; NotFound when the archive is empty.
async fn archive_meta(archive: &Archive, file: &str) -> Result<(WalSegSize, String)> {
    let meta = archive
        .meta()
        .await?
        .ok_or_else(|| NotFound(format!("{file} (the archive is empty)")))?;
    Ok((meta.wal_segment_size, meta.system_identifier))
}

/// Fetch through the archive's one reader ([`Archive::read_segment`],
/// [`Archive::read_history`]): a `.seg` from any provider, else the parts of every
/// provider merged, zero-filled only when nothing later exists on the timeline.
async fn fetch_direct(
    archive: &Archive,
    opener: &Opener,
    file: &str,
    name: WalFileName,
    seg: WalSegSize,
    dest: &Path,
) -> Result<()> {
    let res = match name {
        WalFileName::History(tli) => archive
            .read_history(opener, tli)
            .await
            .map(|plain| write_atomically(dest, |f| f.write_all(&plain))),
        WalFileName::Segment(s) => archive
            .read_segment(opener, s, seg)
            .await
            .map(|got| write_segment(dest, s, seg, &got)),
    };
    match res {
        Ok(written) => written,
        Err(WalError::NotFound(_)) => Err(NotFound(file.to_string()).into()),
        Err(WalError::Unusable(why)) => Err(Unusable(why).into()),
    }
}

/// Write a segment to `dest`, zero-filled after the bytes the archive holds.
fn write_segment(dest: &Path, name: SegmentName, seg: WalSegSize, got: &Segment) -> Result<()> {
    if let [(0, whole)] = got.chunks.as_slice() {
        if whole.len() as u64 == seg.bytes() {
            return write_atomically(dest, |f| f.write_all(whole));
        }
    }
    if got.end < seg.bytes() {
        tracing::info!(segment = %name, bytes = got.end, "serving a partial segment, zero-filled after its last archived byte");
    }
    write_atomically(dest, |f| {
        f.set_len(seg.bytes())?;
        for (off, c) in &got.chunks {
            f.write_all_at(c, *off)?;
        }
        Ok(())
    })
}

fn check_segment_len(key: &str, len: u64, seg: WalSegSize) -> Result<()> {
    if len != seg.bytes() {
        bail!("{key}: holds {len} bytes, a segment has {}", seg.bytes());
    }
    Ok(())
}

/// Write to a temporary file beside `dest`, fsync, rename over `dest`, fsync the directory.
pub fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let fname = dest
        .file_name()
        .ok_or_else(|| anyhow!("destination {} has no file name", dest.display()))?;
    let tmp = dir.join(format!(".{}.lifeboat-tmp", fname.to_string_lossy()));
    durable::replace_with(dest, &tmp, |t| {
        let mut f = std::fs::File::create(t)?;
        fill(&mut f)?;
        Ok(f)
    })
    .map_err(|e: std::io::Error| anyhow!("cannot write {}: {e}", dest.display()))
}

// ------------------------------------------------------------------------------------
// The queue

/// The segments after `want` on its timeline that a worker fetches ahead.
fn candidates(want: SegmentName, depth: usize, seg: WalSegSize) -> Vec<SegmentName> {
    let Some(n) = want.segno(seg) else {
        return Vec::new();
    };
    (1..=depth as u64)
        .map(|i| SegmentName::new(want.tli, SegNo(n.0 + i), seg))
        .collect()
}

/// Whether a queued segment can no longer be asked for once PostgreSQL has received
/// `want`: PostgreSQL reads forward and never goes back to an older timeline. (Segment
/// names of one timeline sort like their segment numbers, whatever the segment size.)
fn is_stale(queued: SegmentName, want: SegmentName) -> bool {
    queued.tli != want.tli || (queued.log, queued.seg) <= (want.log, want.seg)
}

/// The listing prefixes covering `names`: one per 16 consecutive segment names, so that a
/// listing returns a few dozen keys at most, never a whole timeline, and is reused as the
/// window moves.
fn list_prefixes(names: &[SegmentName]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let s = n.to_string();
        let p = format!("wal/{:08X}/{}", n.tli.0, &s[..23]);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// How many fetches the worker runs at once.
fn concurrency(depth: usize, seg: WalSegSize) -> usize {
    ((IN_FLIGHT_BUDGET / seg.bytes()) as usize)
        .clamp(1, 4)
        .min(depth.max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Seg(SegmentName),
    Tmp(SegmentName),
}

fn classify(file_name: &str) -> Option<Entry> {
    match file_name.strip_suffix(".tmp") {
        Some(stem) => stem.parse().ok().map(Entry::Tmp),
        None => file_name.parse().ok().map(Entry::Seg),
    }
}

/// Which archive a queue's segments came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueIdentity {
    system_identifier: String,
    seg_bytes: u64,
}

impl QueueIdentity {
    fn render(&self) -> String {
        format!(
            "lifeboat-prefetch 1\nsystem_identifier {}\nwal_segment_size {}\n",
            self.system_identifier, self.seg_bytes
        )
    }

    fn parse(text: &str) -> Option<QueueIdentity> {
        let mut lines = text.lines();
        if lines.next()? != "lifeboat-prefetch 1" {
            return None;
        }
        let system_identifier = lines.next()?.strip_prefix("system_identifier ")?;
        let seg_bytes = lines
            .next()?
            .strip_prefix("wal_segment_size ")?
            .parse()
            .ok()?;
        Some(QueueIdentity {
            system_identifier: system_identifier.to_string(),
            seg_bytes,
        })
    }
}

fn open_queue(opts: &FetchOptions, dest: &Path) -> Result<Queue> {
    let dir = match &opts.queue_dir {
        Some(d) => d.clone(),
        None => dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(QUEUE_DIR_NAME),
    };
    let dir =
        std::path::absolute(&dir).with_context(|| format!("queue directory {}", dir.display()))?;
    if !dir.is_dir() {
        // Private: the queue holds decrypted WAL.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow!("cannot create {}: {e}", dir.display())),
        }
    }
    Ok(Queue { dir })
}

/// `flock(op | LOCK_NB)`: `Ok(false)` when someone else holds a conflicting lock.
fn flock_nb(f: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock only takes a file descriptor, which `f` keeps open for the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Write a small file atomically (no fsync: the queue is a cache).
fn write_small(dir: &Path, name: &str, data: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

struct Queue {
    dir: PathBuf,
}

impl Queue {
    /// The default queue (`<pgdata>/pg_wal/lifeboat-prefetch`) belongs to a data directory
    /// whose recovery has ended once PostgreSQL removed its signal file: nothing more will
    /// be asked. Unknown for a queue elsewhere.
    fn recovery_over(&self) -> bool {
        if self.dir.file_name() != Some(std::ffi::OsStr::new(QUEUE_DIR_NAME)) {
            return false;
        }
        let Some(pg_wal) = self.dir.parent() else {
            return false;
        };
        if pg_wal.file_name() != Some(std::ffi::OsStr::new("pg_wal")) {
            return false;
        }
        let Some(pgdata) = pg_wal.parent() else {
            return false;
        };
        pgdata.join("PG_VERSION").exists()
            && !pgdata.join("recovery.signal").exists()
            && !pgdata.join("standby.signal").exists()
    }

    fn seg_path(&self, n: SegmentName) -> PathBuf {
        self.dir.join(n.to_string())
    }

    fn tmp_path(&self, n: SegmentName) -> PathBuf {
        self.dir.join(format!("{n}.tmp"))
    }

    fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(c) = e?.file_name().to_str().and_then(classify) {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn queued(&self) -> HashSet<SegmentName> {
        self.entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Seg(n) => Some(n),
                Entry::Tmp(_) => None,
            })
            .collect()
    }

    /// Remove the queued segments (not the `.tmp` files) for which `stale` holds.
    fn remove_segments(&self, stale: impl Fn(SegmentName) -> bool) -> usize {
        let mut n = 0;
        for e in self.entries().unwrap_or_default() {
            if let Entry::Seg(s) = e {
                if stale(s) && std::fs::remove_file(self.seg_path(s)).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Remove every `<SEGMENT>.tmp` and leftover temporary file (the worker's, when it
    /// starts and stops).
    fn remove_tmps(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if matches!(classify(name), Some(Entry::Tmp(_)))
                || name.starts_with(&format!(".{WANT_FILE}."))
                || name.starts_with(&format!(".{IDENTITY_FILE}."))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn read_want(&self) -> Option<SegmentName> {
        std::fs::read_to_string(self.dir.join(WANT_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn read_identity(&self) -> Option<QueueIdentity> {
        QueueIdentity::parse(&std::fs::read_to_string(self.dir.join(IDENTITY_FILE)).ok()?)
    }

    fn write_identity(&self, id: &QueueIdentity) -> io::Result<()> {
        write_small(&self.dir, IDENTITY_FILE, &id.render())
    }

    fn remove_identity(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(IDENTITY_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn lock_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(LOCK_FILE))
    }

    /// Whether a worker holds the lock. Probes with a shared lock, released at once.
    fn worker_alive(&self) -> bool {
        match self.lock_file() {
            Ok(f) => matches!(flock_nb(&f, libc::LOCK_SH), Ok(false)),
            Err(_) => false,
        }
    }

    /// The worker's exclusive lock, or `None` when another worker holds it. Retries for a
    /// moment: a foreground's liveness probe holds a shared lock for microseconds.
    fn lock_exclusive(&self) -> io::Result<Option<File>> {
        let f = self.lock_file()?;
        for _ in 0..20 {
            if flock_nb(&f, libc::LOCK_EX)? {
                return Ok(Some(f));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }

    /// The directory's identity: a worker stops when its queue directory is removed (or
    /// replaced by a new one, which its lock no longer guards).
    fn dir_id(&self) -> Option<(u64, u64)> {
        std::fs::metadata(&self.dir)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| (m.dev(), m.ino()))
    }

    /// Move a queued segment to `dest`. `Ok(false)` when it is not queued.
    fn try_take(&self, name: SegmentName, dest: &Path, seg_bytes: u64) -> Result<bool> {
        let src = self.seg_path(name);
        let len = match std::fs::metadata(&src) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => bail!("{}: {e}", src.display()),
        };
        if len != seg_bytes {
            let _ = std::fs::remove_file(&src);
            bail!("queued {name} holds {len} bytes, a segment has {seg_bytes}");
        }
        match std::fs::rename(&src, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // The queue is on another file system than DEST: copy.
                write_atomically(dest, |f| {
                    io::copy(&mut File::open(&src)?, f)?;
                    Ok(())
                })?;
                let _ = std::fs::remove_file(&src);
                Ok(true)
            }
            Err(e) => bail!("cannot move {} to {}: {e}", src.display(), dest.display()),
        }
    }

    /// Serve `name` from the queue, waiting for it while a live worker is fetching it.
    async fn take(&self, name: SegmentName, dest: &Path, seg_bytes: u64, alive: bool) -> bool {
        let take = || match self.try_take(name, dest, seg_bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(segment = %name, error = %format!("{e:#}"), "cannot use the queued segment; fetching directly");
                None
            }
        };
        match take() {
            Some(true) => return true,
            Some(false) => {}
            None => return false,
        }
        if !alive {
            return false;
        }
        let tmp = self.tmp_path(name);
        let fresh = std::fs::metadata(&tmp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < TMP_FRESH);
        if !fresh {
            return false;
        }
        let start = Instant::now();
        let mut probed = Instant::now();
        loop {
            tokio::time::sleep(WAIT_POLL).await;
            match take() {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
            if !tmp.exists() {
                // Renamed into place just now, or the worker gave up on it.
                return take() == Some(true);
            }
            if start.elapsed() >= WAIT_MAX {
                tracing::warn!(segment = %name, waited = ?start.elapsed(), "the prefetch worker is still fetching this segment; fetching directly");
                return false;
            }
            if probed.elapsed() >= Duration::from_millis(250) {
                probed = Instant::now();
                if !self.worker_alive() {
                    tracing::warn!(segment = %name, "the prefetch worker stopped while fetching this segment; fetching directly");
                    return false;
                }
            }
        }
    }

    /// After PostgreSQL received `served`: tell the worker, drop what can no longer be
    /// asked for, and start a worker when none runs. Failures only cost speed.
    fn after_serve(
        &self,
        served: SegmentName,
        depth: usize,
        worker_cmd: Option<Command>,
        dest: &Path,
    ) {
        if let Err(e) = write_small(&self.dir, WANT_FILE, &format!("{served}\n")) {
            tracing::warn!(queue = %self.dir.display(), error = %e, "cannot record the request for the prefetch worker");
            return;
        }
        self.remove_segments(|q| is_stale(q, served));
        if let Some(cmd) = worker_cmd {
            if !self.worker_alive() {
                match self.spawn_worker(cmd, depth, served, dest) {
                    Ok(pid) => {
                        tracing::debug!(pid, queue = %self.dir.display(), "started a prefetch worker")
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot start the prefetch worker; fetching without prefetch")
                    }
                }
            }
        }
    }

    /// Start a worker in its own session, its stdio away from PostgreSQL's; not waited for.
    fn spawn_worker(
        &self,
        mut cmd: Command,
        depth: usize,
        served: SegmentName,
        dest: &Path,
    ) -> Result<u32> {
        let dest = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
        cmd.arg("--prefetch")
            .arg(depth.to_string())
            .arg("--queue-dir")
            .arg(&self.dir)
            .arg(served.to_string())
            .arg(dest);
        let log_path = self.dir.join(LOG_FILE);
        let mut oo = OpenOptions::new();
        oo.create(true).mode(0o600);
        if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_MAX) {
            oo.write(true).truncate(true);
        } else {
            oo.append(true);
        }
        let log = oo
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it
        // detaches the worker from PostgreSQL's session and terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start the prefetch worker")?;
        Ok(child.id())
    }

    /// Decrypt a complete segment's object into `<SEGMENT>.tmp`, verify it as a direct
    /// fetch does (CRC32, age authentication, length), fsync, rename to `<SEGMENT>`.
    fn store(
        &self,
        name: SegmentName,
        stored: &[u8],
        opener: &Opener,
        seg: WalSegSize,
    ) -> Result<()> {
        let tmp = self.tmp_path(name);
        let key = catalog::segment_key(name);
        durable::replace_with(&self.seg_path(name), &tmp, |t| -> Result<std::fs::File> {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(t)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let n = opener
                .open_into(stored, &mut w)
                .with_context(|| key.clone())?;
            check_segment_len(&key, n, seg)?;
            Ok(w.into_inner().map_err(|e| e.into_error())?)
        })
    }
}

// ------------------------------------------------------------------------------------
// The worker

#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Between rounds while fetching or just after a request.
    poll_active: Duration,
    poll_idle: Duration,
    /// Stop after this long without a new request when nothing is queued.
    idle_exit: Duration,
    /// Stop after this long without a new request, removing the queued segments:
    /// recovery has ended or paused (a slow replay still gets its queue until then).
    linger: Duration,
    /// How often a listing is repeated while the window's next segment is not archived.
    relist: Duration,
    relist_idle: Duration,
    /// A segment that failed is left to the foreground for this long.
    retry_failed: Duration,
}

impl Timing {
    const DEFAULT: Timing = Timing {
        poll_active: Duration::from_millis(20),
        poll_idle: Duration::from_millis(200),
        idle_exit: Duration::from_secs(10),
        linger: Duration::from_secs(300),
        relist: Duration::from_secs(1),
        relist_idle: Duration::from_secs(10),
        retry_failed: Duration::from_secs(10),
    };
}

/// The prefetch worker (`wal-fetch --prefetch-worker`): keeps the `depth` segments after
/// the last one PostgreSQL received in `queue_dir`. Exits at once when another worker
/// runs or the queue directory does not exist; otherwise when PostgreSQL stops asking.
pub async fn prefetch_worker(
    archive: &Archive,
    opener: &Opener,
    queue_dir: &Path,
    depth: usize,
) -> Result<()> {
    worker_with(archive, opener, queue_dir, depth, Timing::DEFAULT).await
}

async fn worker_with(
    archive: &Archive,
    opener: &Opener,
    queue_dir: &Path,
    depth: usize,
    t: Timing,
) -> Result<()> {
    let q = Queue {
        dir: queue_dir.to_path_buf(),
    };
    let Some(dir_id) = q.dir_id() else {
        tracing::debug!(queue = %q.dir.display(), "no queue directory; nothing to do");
        return Ok(());
    };
    let Some(_lock) = q
        .lock_exclusive()
        .with_context(|| format!("{}", q.dir.join(LOCK_FILE).display()))?
    else {
        tracing::debug!(queue = %q.dir.display(), "another prefetch worker is running");
        return Ok(());
    };
    q.remove_tmps();
    // Until the queue is checked against the archive, nobody may trust it.
    let old = q.read_identity();
    q.remove_identity()?;
    let meta = archive
        .meta()
        .await?
        .ok_or_else(|| anyhow!("the archive is empty"))?;
    let seg = meta.wal_segment_size;
    let id = QueueIdentity {
        system_identifier: meta.system_identifier,
        seg_bytes: seg.bytes(),
    };
    if old.as_ref() != Some(&id) {
        let n = q.remove_segments(|_| true);
        if n > 0 {
            tracing::info!(
                removed = n,
                "removed queued segments not known to come from this archive"
            );
        }
    }
    q.write_identity(&id)?;
    let depth = depth.clamp(1, MAX_PREFETCH);
    let conc = concurrency(depth, seg);
    tracing::info!(depth, concurrency = conc, queue = %q.dir.display(), "prefetch worker started");
    let res = Worker {
        q: &q,
        archive,
        opener,
        seg,
        depth,
        conc,
        t,
        dir_id,
        known: BTreeMap::new(),
        listed: HashMap::new(),
        failed: HashMap::new(),
        warned: HashMap::new(),
    }
    .run()
    .await;
    q.remove_tmps();
    res
}

struct Worker<'a> {
    q: &'a Queue,
    archive: &'a Archive,
    opener: &'a Opener,
    seg: WalSegSize,
    depth: usize,
    conc: usize,
    t: Timing,
    dir_id: (u64, u64),
    /// Complete segments seen in listings, and the provider that listed each first.
    known: BTreeMap<SegmentName, usize>,
    /// When each prefix was last listed.
    listed: HashMap<String, Instant>,
    /// Segments whose fetch failed, and when.
    failed: HashMap<SegmentName, Instant>,
    /// Rate limit for listing errors, per provider.
    warned: HashMap<String, Instant>,
}

/// A downloaded copy and the providers still to try should it not decrypt, or why none
/// could be downloaded.
type Download = std::result::Result<(Bytes, Vec<usize>), String>;

impl Worker<'_> {
    async fn run(&mut self) -> Result<()> {
        let mut want: Option<SegmentName> = None;
        let mut changed_at = Instant::now();
        let mut set: tokio::task::JoinSet<(SegmentName, Download)> = tokio::task::JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, SegmentName> = HashMap::new();
        loop {
            if self.q.dir_id() != Some(self.dir_id) {
                tracing::info!(queue = %self.q.dir.display(), "the queue directory is gone; stopping");
                return Ok(());
            }
            if self.q.recovery_over() {
                let n = self.q.remove_segments(|_| true);
                tracing::info!(
                    removed = n,
                    "recovery has ended (the data directory has no recovery.signal or standby.signal); stopping"
                );
                return Ok(());
            }
            if let Some(w) = self.q.read_want() {
                if want != Some(w) {
                    want = Some(w);
                    changed_at = Instant::now();
                    self.q.remove_segments(|s| is_stale(s, w));
                    self.known.retain(|n, _| !is_stale(*n, w));
                    self.failed.retain(|n, _| !is_stale(*n, w));
                }
            }
            let idle = changed_at.elapsed();
            let queued = self.q.queued();
            if set.is_empty() {
                if idle >= self.t.linger {
                    let n = self.q.remove_segments(|_| true);
                    tracing::info!(removed = n, "no request for a long time; stopping");
                    return Ok(());
                }
                if idle >= self.t.idle_exit && queued.is_empty() {
                    tracing::info!("no new request; stopping");
                    return Ok(());
                }
            }
            let fetching: HashSet<SegmentName> = in_flight.values().copied().collect();
            if let Some(w) = want {
                let retry = self.t.retry_failed;
                self.failed.retain(|_, at| at.elapsed() < retry);
                let window = candidates(w, self.depth, self.seg);
                let unknown: Vec<SegmentName> = window
                    .iter()
                    .copied()
                    .filter(|c| {
                        !self.known.contains_key(c) && !queued.contains(c) && !fetching.contains(c)
                    })
                    .collect();
                if !unknown.is_empty() {
                    let relist = if idle < self.t.idle_exit {
                        self.t.relist
                    } else {
                        self.t.relist_idle
                    };
                    self.refresh(&unknown, relist).await;
                }
                for c in window {
                    if queued.contains(&c) || fetching.contains(&c) || self.failed.contains_key(&c)
                    {
                        continue;
                    }
                    // Fetch ahead only as far as the archive holds complete segments.
                    let Some(&first) = self.known.get(&c) else {
                        break;
                    };
                    if in_flight.len() >= self.conc {
                        break;
                    }
                    // Claim it: the foreground waits for a fresh `.tmp`.
                    if let Err(e) = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(self.q.tmp_path(c))
                    {
                        tracing::warn!(segment = %c, error = %e, "cannot write to the prefetch queue");
                        self.failed.insert(c, Instant::now());
                        continue;
                    }
                    // The provider that listed it first, then the others.
                    let order: Vec<usize> = std::iter::once(first)
                        .chain((0..self.archive.mirror.providers.len()).filter(|i| *i != first))
                        .collect();
                    let archive = Archive {
                        mirror: self.archive.mirror.clone(),
                    };
                    let h = set.spawn(download(archive, order, c));
                    in_flight.insert(h.id(), c);
                }
            }
            let poll = if !set.is_empty() || idle < Duration::from_secs(2) {
                self.t.poll_active
            } else {
                self.t.poll_idle
            };
            tokio::select! {
                Some(r) = set.join_next_with_id(), if !set.is_empty() => {
                    let (name, res) = match r {
                        Ok((id, d)) => {
                            in_flight.remove(&id);
                            d
                        }
                        Err(e) => {
                            let Some(name) = in_flight.remove(&e.id()) else { continue };
                            (name, Err(format!("the fetch task failed: {e}")))
                        }
                    };
                    let current = self.q.read_want().or(want);
                    self.finish(name, res, current).await;
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// List the prefixes covering `unknown` (not listed in the last `relist`), on each
    /// provider in turn until the segments are found.
    async fn refresh(&mut self, unknown: &[SegmentName], relist: Duration) {
        for prefix in list_prefixes(unknown) {
            if self
                .listed
                .get(&prefix)
                .is_some_and(|at| at.elapsed() < relist)
            {
                continue;
            }
            self.listed.insert(prefix.clone(), Instant::now());
            let wanted: Vec<SegmentName> = unknown
                .iter()
                .copied()
                .filter(|n| catalog::segment_key(*n).starts_with(&prefix))
                .collect();
            for (i, p) in self.archive.mirror.providers.iter().enumerate() {
                match p.list(&prefix).await {
                    Ok(objs) => {
                        for o in objs {
                            if let Some(w) = catalog::parse_wal_key(&o.key, self.seg) {
                                if w.complete {
                                    self.known.entry(w.name).or_insert(i);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let quiet = self
                            .warned
                            .get(p.name())
                            .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
                        if !quiet {
                            self.warned.insert(p.name().to_string(), Instant::now());
                            tracing::warn!(provider = p.name(), error = %e, "prefetch: cannot list; trying the other providers");
                        }
                    }
                }
                if wanted.iter().all(|n| self.known.contains_key(n)) {
                    break;
                }
            }
        }
        self.listed
            .retain(|_, at| at.elapsed() < Duration::from_secs(600));
    }

    /// Queue a downloaded segment: decrypt it into `<SEGMENT>.tmp`, verify, rename. A copy
    /// that passed its CRC32 but does not decrypt (or has the wrong length) is replaced by
    /// the next provider's copy, read through the same reader.
    async fn finish(&mut self, name: SegmentName, res: Download, want: Option<SegmentName>) {
        let tmp = self.q.tmp_path(name);
        if want.is_some_and(|w| is_stale(name, w)) {
            // PostgreSQL got it meanwhile (fetched directly).
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let (stored, rest) = match res {
            Ok(got) => got,
            Err(problem) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(segment = %name, problem, "prefetch failed; the segment will be fetched on demand");
                self.failed.insert(name, Instant::now());
                return;
            }
        };
        let (q, opener, seg) = (self.q, self.opener, self.seg);
        let store = |b: Bytes| async move {
            blocking(|| q.store(name, &b, opener, seg)).map_err(|e| format!("{e:#}"))
        };
        let first = store(stored).await;
        let res = match first {
            Ok(()) => Ok(()),
            Err(why) if rest.is_empty() => Err(why),
            Err(why) => {
                tracing::warn!(segment = %name, error = %why, "unusable copy; trying the other providers");
                self.archive
                    .read_among(&catalog::segment_key(name), &rest, store)
                    .await
                    .map(|_| ())
                    .map_err(|nc| format!("{why}; {}", nc.problems()))
            }
        };
        match res {
            Ok(()) => tracing::debug!(segment = %name, "prefetched"),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(segment = %name, error = %e, "prefetch failed; the segment will be fetched on demand");
                self.failed.insert(name, Instant::now());
            }
        }
    }
}

/// Download a complete segment's object through the archive's reader: the first copy (in
/// `order`) that passes its CRC32 check, and the providers after the one it came from.
async fn download(
    archive: Archive,
    order: Vec<usize>,
    name: SegmentName,
) -> (SegmentName, Download) {
    let key = catalog::segment_key(name);
    let check = |b: Bytes| async move { pipeline::check(&b).map(|_| b).map_err(|e| e.to_string()) };
    let res = match archive.read_among(&key, &order, check).await {
        Ok((b, from)) => {
            let after = order.iter().position(|i| *i == from).map_or(0, |p| p + 1);
            Ok((b, order[after..].to_vec()))
        }
        Err(nc) => Err(nc.problems()),
    };
    (name, res)
}

/// Run CPU and disk work without stalling the runtime's other tasks (the opener cannot
/// move to another thread).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wal::TimelineId;
    use crate::pipeline::Sealer;
    use crate::storage::{FileStore, Mirror, ObjectStore};
    use age::secrecy::ExposeSecret;
    use std::sync::Arc;

    fn mib() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    fn name(segno: u64) -> SegmentName {
        SegmentName::new(TimelineId(1), SegNo(segno), mib())
    }

    fn plain(segno: u64) -> Vec<u8> {
        (0..mib().bytes())
            .map(|i| ((i % 251) as u8) ^ (segno as u8))
            .collect()
    }

    struct Fixture {
        _d: tempfile::TempDir,
        dir: PathBuf,
        archive: Archive,
        store: Arc<dyn ObjectStore>,
        /// Every provider, in configuration order (`store` is the first).
        stores: Vec<Arc<dyn ObjectStore>>,
        sealer: Sealer,
        opener: Opener,
    }

    impl Fixture {
        async fn new() -> Fixture {
            Fixture::with_providers(1).await
        }

        /// `n` file:// providers, named a, b, ... (one is named "local").
        async fn with_providers(n: usize) -> Fixture {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().to_path_buf();
            let id = age::x25519::Identity::generate();
            let idf = dir.join("identity");
            std::fs::write(&idf, format!("{}\n", id.to_string().expose_secret())).unwrap();
            let stores: Vec<Arc<dyn ObjectStore>> = (0..n)
                .map(|i| {
                    let name = if n == 1 {
                        "local".to_string()
                    } else {
                        ((b'a' + i as u8) as char).to_string()
                    };
                    Arc::new(FileStore::new(&name, dir.join(format!("archive-{name}"))))
                        as Arc<dyn ObjectStore>
                })
                .collect();
            let archive = Archive {
                mirror: Mirror::new(stores.clone()),
            };
            archive.ensure_meta(7, mib()).await.unwrap();
            std::fs::create_dir(dir.join("pg_wal")).unwrap();
            Fixture {
                _d: d,
                archive,
                store: stores[0].clone(),
                stores,
                sealer: Sealer::new(&[id.to_public().to_string()], 1).unwrap(),
                opener: Opener::from_file(&idf).unwrap(),
                dir,
            }
        }

        /// Put segment `n` of timeline `tli` on provider `on`: the whole segment, or
        /// its bytes [start, end) as a part.
        async fn put_on(&self, on: usize, tli: u32, segno: u64, range: Option<(u64, u64)>) {
            let n = SegmentName::new(TimelineId(tli), SegNo(segno), mib());
            let (key, bytes) = match range {
                None => (catalog::segment_key(n), plain(segno)),
                Some((s, e)) => (
                    catalog::part_key(n, s, e),
                    plain(segno)[s as usize..e as usize].to_vec(),
                ),
            };
            let sealed = self.sealer.seal(&bytes).unwrap();
            self.stores[on]
                .put(&key, Bytes::from(sealed.bytes))
                .await
                .unwrap();
        }

        /// Provider `on` holds a copy of segment `n` sealed for someone else: its CRC is
        /// fine, it does not decrypt.
        async fn put_undecryptable_on(&self, on: usize, segno: u64) {
            let other = age::x25519::Identity::generate().to_public().to_string();
            let s = Sealer::new(&[other], 1)
                .unwrap()
                .seal(&plain(segno))
                .unwrap();
            self.stores[on]
                .put(&catalog::segment_key(name(segno)), Bytes::from(s.bytes))
                .await
                .unwrap();
        }

        /// What wal-fetch wrote: `[0, end)` of segment `n` and zeros after it.
        fn assert_served(&self, segno: u64, end: u64) {
            let got = std::fs::read(self.dest()).unwrap();
            assert_eq!(got.len() as u64, mib().bytes());
            assert!(
                got[..end as usize] == plain(segno)[..end as usize],
                "bytes [0, {end:#x}) of segment {segno}"
            );
            let zeros = got[end as usize..].iter().position(|b| *b != 0);
            assert_eq!(zeros, None, "zero-filled after {end:#x}");
        }

        async fn put_seg(&self, segno: u64) {
            let s = self.sealer.seal(&plain(segno)).unwrap();
            self.store
                .put(&catalog::segment_key(name(segno)), Bytes::from(s.bytes))
                .await
                .unwrap();
        }

        async fn put_part(&self, segno: u64, end: u64) {
            let s = self.sealer.seal(&plain(segno)[..end as usize]).unwrap();
            self.store
                .put(
                    &catalog::part_key(name(segno), 0, end),
                    Bytes::from(s.bytes),
                )
                .await
                .unwrap();
        }

        fn qdir(&self) -> PathBuf {
            self.dir.join("pg_wal").join(QUEUE_DIR_NAME)
        }

        fn queue(&self) -> Queue {
            std::fs::create_dir_all(self.qdir()).unwrap();
            Queue { dir: self.qdir() }
        }

        fn dest(&self) -> PathBuf {
            self.dir.join("pg_wal").join("RECOVERYXLOG")
        }

        async fn fetch(&self, segno: u64, prefetch: usize) -> Result<()> {
            let opts = FetchOptions {
                prefetch,
                queue_dir: None,
            };
            run_with(
                &self.archive,
                &self.opener,
                &name(segno).to_string(),
                &self.dest(),
                &opts,
                None,
            )
            .await
        }
    }

    const FAST: Timing = Timing {
        poll_active: Duration::from_millis(5),
        poll_idle: Duration::from_millis(20),
        idle_exit: Duration::from_millis(1000),
        linger: Duration::from_secs(3),
        relist: Duration::from_millis(20),
        relist_idle: Duration::from_millis(50),
        retry_failed: Duration::from_millis(200),
    };

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn put_file(path: &Path, data: &[u8]) {
        let tmp = path.with_extension("writing");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn candidates_follow_segment_numbers_across_log_ids() {
        let seg = WalSegSize::DEFAULT;
        let want: SegmentName = "0000000200000001000000FE".parse().unwrap();
        let c: Vec<String> = candidates(want, 3, seg)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            c,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        // A name impossible for the size has no successors.
        let bad: SegmentName = "000000010000000100000100".parse().unwrap();
        assert!(candidates(bad, 3, seg).is_empty());
        assert!(candidates(want, 0, seg).is_empty());
    }

    #[test]
    fn stale_entries() {
        let p = |s: &str| s.parse::<SegmentName>().unwrap();
        let want = p("000000020000000100000010");
        // Older or equal on the same timeline, and any other timeline, are stale.
        assert!(is_stale(p("000000020000000100000010"), want));
        assert!(is_stale(p("00000002000000010000000F"), want));
        assert!(is_stale(p("0000000200000000000000FF"), want));
        assert!(is_stale(p("000000010000000100000011"), want));
        assert!(is_stale(p("000000030000000100000011"), want));
        // Newer on the same timeline is what the queue is for.
        assert!(!is_stale(p("000000020000000100000011"), want));
        assert!(!is_stale(p("000000020000000200000000"), want));
    }

    #[test]
    fn listing_prefixes_cover_sixteen_names() {
        let seg = WalSegSize::DEFAULT;
        let want: SegmentName = "0000000100000001000000FC".parse().unwrap();
        let c = candidates(want, 6, seg);
        assert_eq!(
            list_prefixes(&c),
            [
                "wal/00000001/0000000100000001000000F",
                "wal/00000001/00000001000000020000000"
            ]
        );
        for n in &c {
            let k = catalog::segment_key(*n);
            assert!(list_prefixes(&c).iter().any(|p| k.starts_with(p.as_str())));
        }
    }

    #[test]
    fn queue_names_and_identity() {
        let n: SegmentName = "00000001000000010000002A".parse().unwrap();
        assert_eq!(classify("00000001000000010000002A"), Some(Entry::Seg(n)));
        assert_eq!(
            classify("00000001000000010000002A.tmp"),
            Some(Entry::Tmp(n))
        );
        for other in [
            WANT_FILE,
            IDENTITY_FILE,
            LOCK_FILE,
            LOG_FILE,
            ".want.123",
            "00000002.history",
            "00000001000000010000002A.partial",
            "00000000000000010000002A",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
        let id = QueueIdentity {
            system_identifier: "7434187123456789012".into(),
            seg_bytes: 16 << 20,
        };
        assert_eq!(QueueIdentity::parse(&id.render()), Some(id));
        assert_eq!(QueueIdentity::parse("garbage"), None);
        assert_eq!(concurrency(8, WalSegSize::DEFAULT), 4);
        assert_eq!(concurrency(2, WalSegSize::DEFAULT), 2);
        assert_eq!(concurrency(8, WalSegSize::new(1 << 30).unwrap()), 1);
    }

    #[test]
    fn default_queue_is_beside_dest() {
        let opts = FetchOptions {
            prefetch: 4,
            queue_dir: None,
        };
        let d = tempfile::tempdir().unwrap();
        let q = open_queue(&opts, &d.path().join("RECOVERYXLOG")).unwrap();
        assert_eq!(q.dir, d.path().join(QUEUE_DIR_NAME));
        let mode = std::fs::metadata(&q.dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Relative DEST (as PostgreSQL passes it): made absolute for the worker.
        let q = open_queue(
            &FetchOptions {
                prefetch: 4,
                queue_dir: Some(d.path().join("q")),
            },
            Path::new("pg_wal/RECOVERYXLOG"),
        )
        .unwrap();
        assert_eq!(q.dir, d.path().join("q"));
        assert!(std::path::absolute(Path::new("pg_wal/RECOVERYXLOG"))
            .unwrap()
            .is_absolute());
    }

    #[test]
    fn after_serve_records_the_request_drops_stale_entries_and_starts_a_worker() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue {
            dir: d.path().to_path_buf(),
        };
        let other_tli = SegmentName::new(TimelineId(2), SegNo(7), mib());
        for n in [name(4), name(5), name(6), other_tli] {
            std::fs::write(q.seg_path(n), b"x").unwrap();
        }
        q.after_serve(
            name(5),
            4,
            Some(Command::new("true")),
            &d.path().join("RECOVERYXLOG"),
        );
        assert_eq!(q.read_want(), Some(name(5)));
        assert_eq!(q.queued(), HashSet::from([name(6)]));
        assert!(d.path().join(LOG_FILE).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreground_waits_for_a_segment_being_fetched() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue {
            dir: d.path().join("q"),
        };
        std::fs::create_dir(&q.dir).unwrap();
        let dest = d.path().join("RECOVERYXLOG");
        assert!(!q.worker_alive());
        let lock = q.lock_exclusive().unwrap().unwrap();
        assert!(q.worker_alive());
        assert!(q.lock_exclusive().unwrap().is_none());

        // The worker finishes while the foreground waits.
        std::fs::write(q.tmp_path(name(3)), b"").unwrap();
        let worker = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(q.tmp_path(name(3)), plain(3)).unwrap();
            std::fs::rename(q.tmp_path(name(3)), q.seg_path(name(3))).unwrap();
        };
        let (got, ()) = tokio::join!(q.take(name(3), &dest, mib().bytes(), true), worker);
        assert!(got);
        assert_eq!(std::fs::read(&dest).unwrap(), plain(3));
        assert!(!q.seg_path(name(3)).exists());

        // The worker gives up: the foreground stops waiting at once.
        std::fs::write(q.tmp_path(name(4)), b"").unwrap();
        let worker = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::remove_file(q.tmp_path(name(4))).unwrap();
        };
        let start = Instant::now();
        let (got, ()) = tokio::join!(q.take(name(4), &dest, mib().bytes(), true), worker);
        assert!(!got);
        assert!(start.elapsed() < Duration::from_secs(5));

        // The worker dies: its claim is not waited for long.
        std::fs::write(q.tmp_path(name(5)), b"").unwrap();
        drop(lock);
        let start = Instant::now();
        assert!(!q.take(name(5), &dest, mib().bytes(), true).await);
        assert!(start.elapsed() < Duration::from_secs(5));
        // No worker: a claim is a leftover.
        assert!(!q.take(name(5), &dest, mib().bytes(), false).await);

        // A queued file of the wrong size is refused and removed.
        std::fs::write(q.seg_path(name(6)), b"short").unwrap();
        assert!(!q.take(name(6), &dest, mib().bytes(), false).await);
        assert!(!q.seg_path(name(6)).exists());
        assert_eq!(std::fs::read(&dest).unwrap(), plain(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_worker_the_queue_is_checked_against_the_archive() {
        let f = Fixture::new().await;
        for n in 1..=3 {
            f.put_seg(n).await;
        }
        let q = f.queue();
        let marker = vec![0x5Au8; mib().bytes() as usize];

        // Left by a worker for another archive: not served.
        q.write_identity(&QueueIdentity {
            system_identifier: "8".into(),
            seg_bytes: mib().bytes(),
        })
        .unwrap();
        put_file(&q.seg_path(name(2)), &marker);
        f.fetch(2, 8).await.unwrap();
        assert_eq!(std::fs::read(f.dest()).unwrap(), plain(2));
        assert_eq!(q.read_want(), Some(name(2)));
        assert!(!q.seg_path(name(2)).exists(), "stale once served");

        // This archive's: served from the queue (the marker proves where it came from).
        q.write_identity(&QueueIdentity {
            system_identifier: "7".into(),
            seg_bytes: mib().bytes(),
        })
        .unwrap();
        put_file(&q.seg_path(name(3)), &marker);
        f.fetch(3, 8).await.unwrap();
        assert_eq!(std::fs::read(f.dest()).unwrap(), marker);
        assert!(!q.seg_path(name(3)).exists());

        // With prefetching off the queue is not looked at.
        put_file(&q.seg_path(name(4)), &marker);
        let e = f.fetch(4, 0).await.unwrap_err();
        assert!(e.downcast_ref::<NotFound>().is_some(), "{e:#}");
        f.fetch(4, 8).await.unwrap();
        assert_eq!(std::fs::read(f.dest()).unwrap(), marker);

        // Not in the archive nor queued: NotFound, and the queue is left alone.
        let e = f.fetch(5, 8).await.unwrap_err();
        assert!(e.downcast_ref::<NotFound>().is_some(), "{e:#}");
        assert_eq!(q.read_want(), Some(name(4)));

        // History files never go through the queue.
        let e = run_with(
            &f.archive,
            &f.opener,
            "00000002.history",
            &f.dest(),
            &FetchOptions {
                prefetch: 8,
                queue_dir: None,
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(e.downcast_ref::<NotFound>().is_some(), "{e:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_prefetches_complete_segments_and_the_foreground_serves_them() {
        let f = Fixture::new().await;
        for n in [1, 2, 3, 4, 6] {
            f.put_seg(n).await;
        }
        f.put_part(5, 0x1000).await;
        let q = f.queue();
        write_small(&q.dir, WANT_FILE, &format!("{}\n", name(1))).unwrap();
        let queued = |n: u64| q.seg_path(name(n)).exists();
        let worker = worker_with(&f.archive, &f.opener, &q.dir, 8, FAST);
        let check = async {
            wait_until("2, 3 and 4 queued", || (2..=4).all(queued)).await;
            assert_eq!(std::fs::read(q.seg_path(name(3))).unwrap(), plain(3));
            assert_eq!(
                q.read_identity().map(|i| i.system_identifier),
                Some("7".into())
            );
            // The partial 5 is never queued, so neither is anything after it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!queued(5) && !queued(6));
            assert!(!q.tmp_path(name(5)).exists());

            // Served from the queue while the worker runs (no archive access needed:
            // the marker shows where it came from).
            let marker = vec![0xA5u8; mib().bytes() as usize];
            put_file(&q.seg_path(name(2)), &marker);
            f.fetch(2, 8).await.unwrap();
            assert_eq!(std::fs::read(f.dest()).unwrap(), marker);
            assert_eq!(q.read_want(), Some(name(2)));

            // The partial is fetched on demand; with 6 archived it is not the newest
            // WAL, so it is not zero-filled: recovery stops instead.
            let e = f.fetch(5, 8).await.unwrap_err();
            assert!(e.downcast_ref::<Unusable>().is_some(), "{e:#}");
            // Once the rest of 5 is archived, it is served whole.
            f.put_seg(5).await;
            f.fetch(5, 8).await.unwrap();
            assert_eq!(std::fs::read(f.dest()).unwrap(), plain(5));
            assert!(!queued(3) && !queued(4), "stale once 5 was served");

            // Now 6 is the next complete segment.
            wait_until("6 queued", || queued(6)).await;
            f.fetch(6, 8).await.unwrap();
            assert_eq!(std::fs::read(f.dest()).unwrap(), plain(6));
            assert!(!queued(6));

            // The end of the archive: NotFound.
            let e = f.fetch(7, 8).await.unwrap_err();
            assert!(e.downcast_ref::<NotFound>().is_some(), "{e:#}");

            // Archived later: the worker picks it up.
            f.put_seg(7).await;
            wait_until("7 queued", || queued(7)).await;
            f.fetch(7, 8).await.unwrap();

            // The newest partial is fetched on demand and zero-filled.
            f.put_part(8, 0x1000).await;
            f.fetch(8, 8).await.unwrap();
            f.assert_served(8, 0x1000);
            assert!(!q.tmp_path(name(8)).exists() && !queued(8));

            // Removing the queue stops the worker.
            std::fs::remove_dir_all(&q.dir).unwrap();
        };
        let (res, ()) = tokio::join!(worker, check);
        res.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_stops_when_idle_and_drops_its_queue_after_lingering() {
        let f = Fixture::new().await;
        for n in 1..=2 {
            f.put_seg(n).await;
        }
        let q = f.queue();
        let t = Timing {
            idle_exit: Duration::from_millis(200),
            linger: Duration::from_millis(800),
            ..FAST
        };

        // Nothing ahead of the request; a leftover of another archive is removed.
        write_small(&q.dir, WANT_FILE, &format!("{}\n", name(2))).unwrap();
        put_file(&q.seg_path(name(9)), b"from elsewhere");
        std::fs::write(q.tmp_path(name(8)), b"half").unwrap();
        let start = Instant::now();
        worker_with(&f.archive, &f.opener, &q.dir, 4, t)
            .await
            .unwrap();
        assert!(start.elapsed() >= t.idle_exit);
        assert!(q.entries().unwrap().is_empty());
        assert_eq!(
            q.read_identity(),
            Some(QueueIdentity {
                system_identifier: "7".into(),
                seg_bytes: mib().bytes()
            })
        );

        // A queued segment keeps the worker until it lingered, then it is removed.
        write_small(&q.dir, WANT_FILE, &format!("{}\n", name(1))).unwrap();
        let start = Instant::now();
        let worker = worker_with(&f.archive, &f.opener, &q.dir, 4, t);
        let seen = async {
            wait_until("2 queued", || q.seg_path(name(2)).exists()).await;
        };
        let (res, ()) = tokio::join!(worker, seen);
        res.unwrap();
        assert!(start.elapsed() >= t.linger);
        assert!(q.entries().unwrap().is_empty());

        // One worker at a time: with the lock held, it leaves at once (a running worker
        // would queue 2 and linger).
        let _lock = q.lock_exclusive().unwrap().unwrap();
        let start = Instant::now();
        worker_with(&f.archive, &f.opener, &q.dir, 4, t)
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(600));
        assert!(!q.seg_path(name(2)).exists());
        // No queue directory: nothing to do.
        worker_with(&f.archive, &f.opener, &f.dir.join("nowhere"), 4, t)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_leaves_an_unusable_segment_to_the_foreground() {
        let f = Fixture::new().await;
        f.put_seg(1).await;
        // Sealed for someone else: CRC is fine, decryption is not.
        let other = age::x25519::Identity::generate().to_public().to_string();
        let s = Sealer::new(&[other], 1).unwrap().seal(&plain(2)).unwrap();
        f.store
            .put(&catalog::segment_key(name(2)), Bytes::from(s.bytes))
            .await
            .unwrap();
        f.put_seg(3).await;
        let q = f.queue();
        write_small(&q.dir, WANT_FILE, &format!("{}\n", name(1))).unwrap();
        let worker = worker_with(&f.archive, &f.opener, &q.dir, 4, FAST);
        let check = async {
            wait_until("3 queued", || q.seg_path(name(3)).exists()).await;
            assert!(!q.seg_path(name(2)).exists() && !q.tmp_path(name(2)).exists());
            let e = f.fetch(2, 4).await.unwrap_err();
            assert!(e.downcast_ref::<Unusable>().is_some(), "{e:#}");
            assert_eq!(
                q.read_want(),
                Some(name(1)),
                "an error is not a request served"
            );
            std::fs::remove_dir_all(&q.dir).unwrap();
        };
        let (res, ()) = tokio::join!(worker, check);
        res.unwrap();
    }

    /// A provider that cannot be reached: every call fails.
    struct Down;

    impl ObjectStore for Down {
        fn name(&self) -> &str {
            "down"
        }
        fn features(&self) -> crate::storage::Features {
            crate::storage::Features::default()
        }
        fn put<'a>(
            &'a self,
            key: &'a str,
            _: Bytes,
        ) -> crate::storage::BoxFut<'a, Result<(), crate::storage::StorageError>> {
            Box::pin(async move { Err(down("put", key)) })
        }
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::storage::BoxFut<'a, Result<Option<Bytes>, crate::storage::StorageError>>
        {
            Box::pin(async move { Err(down("get", key)) })
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
        ) -> crate::storage::BoxFut<
            'a,
            Result<Vec<crate::storage::ObjectMeta>, crate::storage::StorageError>,
        > {
            Box::pin(async move { Err(down("list", prefix)) })
        }
        fn delete<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::storage::BoxFut<'a, Result<(), crate::storage::StorageError>> {
            Box::pin(async move { Err(down("delete", key)) })
        }
    }

    fn down(op: &'static str, key: &str) -> crate::storage::StorageError {
        crate::storage::StorageError {
            provider: "down".into(),
            op,
            key: key.into(),
            message: "connection refused".into(),
            hint: None,
            retryable: true,
        }
    }

    fn kind(r: &Result<()>) -> &'static str {
        match r {
            Ok(()) => "written",
            Err(e) if e.downcast_ref::<NotFound>().is_some() => "not found",
            Err(e) if e.downcast_ref::<Unusable>().is_some() => "unusable",
            Err(_) => "other error",
        }
    }

    /// The hardening issue's sequence: provider a went down in the middle of segment 5
    /// holding `5.0-X.part`; `5.seg` and everything later went to b. Plain wal-fetch
    /// (no prefetch) served a's `[0, X)` and zeros, and PostgreSQL promoted there, losing
    /// everything after X that b holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_fetch_serves_a_seg_from_any_provider_before_a_partial_from_the_first() {
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0, 0x1000))).await;
        f.put_on(1, 1, 5, None).await;
        f.put_on(1, 1, 6, None).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(5, mib().bytes());
        // The prefetching path (served on demand: nothing is queued without a worker).
        let r = f.fetch(5, 4).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(5, mib().bytes());
    }

    /// Parts of one segment spread over the providers are merged; nothing after them
    /// anywhere on the timeline, so the tail is zero-filled (the newest partial WAL).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_fetch_merges_parts_across_providers() {
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0, 0x1000))).await;
        f.put_on(1, 1, 5, Some((0x1000, 0x3000))).await;
        f.put_on(0, 1, 5, Some((0x3000, 0x4000))).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(5, 0x4000);

        // The first provider holds only the later part: still merged from offset 0.
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0x1000, 0x2000))).await;
        f.put_on(1, 1, 5, Some((0, 0x1000))).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(5, 0x2000);

        // Later WAL on another timeline is not later on this one: (timeline, LSN).
        f.put_on(1, 2, 9, None).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(5, 0x2000);
    }

    /// A partial segment is never zero-filled while later WAL of its timeline exists on
    /// any provider, nor past a hole: PostgreSQL must stop (126), not promote early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_fetch_refuses_to_zero_fill_before_later_wal() {
        // The next segment exists (on the other provider).
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0, 0x1000))).await;
        f.put_on(1, 1, 6, None).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
        assert_eq!(
            r.unwrap_err().to_string(),
            "000000010000000000000005 is archived only up to 0/501000 (its first 0x1000 bytes), \
             but later WAL of timeline 1 exists (wal/00000001/000000010000000000000006.seg on \
             storage \"b\"): serving the rest as zeros would end recovery at 0/501000 and lose \
             what follows\nhint: the rest of this segment is on no provider; run lifeboat verify \
             to see what each provider lacks"
        );
        assert!(!f.dest().exists(), "nothing written");
        // A later part of a later segment on the same provider, with prefetching.
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0, 0x1000))).await;
        f.put_on(0, 1, 0x30, Some((0, 0x10))).await;
        let r = f.fetch(5, 4).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
        // A hole inside the segment.
        let f = Fixture::with_providers(2).await;
        f.put_on(0, 1, 5, Some((0, 0x1000))).await;
        f.put_on(1, 1, 5, Some((0x2000, 0x3000))).await;
        let r = f.fetch(5, 0).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("hole"), "{e}");
        assert!(!f.dest().exists(), "nothing written");
    }

    /// A copy that fails its CRC32 or decryption on one provider is read from the next
    /// one, by a direct fetch and by the prefetch worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_copy_is_read_from_the_next_provider() {
        let f = Fixture::with_providers(2).await;
        f.put_seg(1).await;
        f.put_undecryptable_on(0, 2).await;
        f.put_on(1, 1, 2, None).await;
        // Flipped bit on a, good on b.
        f.put_on(0, 1, 3, None).await;
        let p = f.dir.join("archive-a").join(catalog::segment_key(name(3)));
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(&p, &b).unwrap();
        f.put_on(1, 1, 3, None).await;
        for n in [2, 3] {
            let r = f.fetch(n, 0).await;
            assert_eq!(kind(&r), "written", "{n}: {r:?}");
            f.assert_served(n, mib().bytes());
        }

        // The worker queues both from b.
        let q = f.queue();
        write_small(&q.dir, WANT_FILE, &format!("{}\n", name(1))).unwrap();
        let worker = worker_with(&f.archive, &f.opener, &q.dir, 4, FAST);
        let check = async {
            wait_until("2 and 3 queued", || {
                q.seg_path(name(2)).exists() && q.seg_path(name(3)).exists()
            })
            .await;
            assert_eq!(std::fs::read(q.seg_path(name(2))).unwrap(), plain(2));
            assert_eq!(std::fs::read(q.seg_path(name(3))).unwrap(), plain(3));
            std::fs::remove_dir_all(&q.dir).unwrap();
        };
        let (res, ()) = tokio::join!(worker, check);
        res.unwrap();
    }

    /// A provider that cannot be listed: a complete segment comes from another one, but
    /// "not there" and "partial, zero-filled" are answers only every provider can give.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_provider_never_makes_a_partial_look_final() {
        let f = Fixture::with_providers(1).await;
        f.put_seg(1).await;
        f.put_part(2, 0x1000).await;
        let archive = Archive {
            mirror: Mirror::new(vec![Arc::new(Down), f.store.clone()]),
        };
        let fetch = |n: u64| {
            let archive = &archive;
            let f = &f;
            async move { run(archive, &f.opener, &name(n).to_string(), &f.dest()).await }
        };
        let r = fetch(1).await;
        assert_eq!(kind(&r), "written", "{r:?}");
        f.assert_served(1, mib().bytes());
        let r = fetch(2).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("000000010000000000000002 is partial (0x1000 of 0x100000 bytes, up to 0/201000) on the providers that answered, and a provider could not be listed: storage \"down\": list wal/00000001/000000010000000000000002.: connection refused"),
            "{e}"
        );
        let r = fetch(3).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("000000010000000000000003 is on no provider that answered, and a provider could not be listed: "), "{e}");
        // History files are whole: served from any provider that has one; not there
        // is not an answer while a provider is down.
        let r = run(&archive, &f.opener, "00000002.history", &f.dest()).await;
        assert_eq!(kind(&r), "unusable", "{r:?}");
    }
}
