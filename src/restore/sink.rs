//! Where restored files are written: the disk-speed half of `restore`.
//!
//! A [`Sink`] owns the durability of one restore. Files are created with a size hint
//! ([`Sink::create`]), fed chunks of any size ([`FileWriter::write`]) and closed with
//! [`FileWriter::finish`]; [`Sink::finish`] then makes the whole restore durable.
//!
//! Invariants:
//! - Large files (≥ [`DIRECT_MIN`]) are `fallocate`d to their size and written with
//!   `O_DIRECT` in whole [`ALIGN`] blocks from pooled aligned buffers (no page-cache copy,
//!   no dirty pages to flush); the unaligned tail, and every small file, is written
//!   buffered. A file system that refuses `O_DIRECT` (`EINVAL`, at open or at the first
//!   write) gets buffered writes from then on, the same bytes, nothing lost.
//! - `global/pg_control` is held in memory and written **last**, after every other file and
//!   directory is durable, through temp + fsync + rename + fsync of `global/`. A crash at
//!   any earlier point leaves a directory PostgreSQL refuses to start ("could not open
//!   file global/pg_control"); [`INCOMPLETE_MARKER`] in the data directory, removed only
//!   after `pg_control` is in place, makes lifeboat refuse to reuse it (preflight).
//! - [`SyncMethod::Fsync`] fsyncs each file as it is finished (on two threads, overlapping
//!   extraction); [`SyncMethod::Syncfs`] calls `syncfs(2)` once per target file system at
//!   the end. Either way directories are fsynced before `pg_control` is written.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{start_writeback, sync_dirs, Syncer, SyncerHandle, WRITEBACK_CHUNK};

/// How the restored files are made durable (PostgreSQL's `recovery_init_sync_method`
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// fsync every file as it is finished, and every directory.
    #[default]
    Fsync,
    /// `syncfs(2)` each target file system once at the end, then fsync the directories.
    /// Also waits for unrelated dirty data on the same file systems.
    Syncfs,
}

impl SyncMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMethod::Fsync => "fsync",
            SyncMethod::Syncfs => "syncfs",
        }
    }
}

/// Files this large are written with `O_DIRECT` (smaller ones are not worth a device
/// round trip per file).
pub const DIRECT_MIN: u64 = 256 * 1024;
/// `O_DIRECT` alignment of memory, offsets and lengths: 4 KiB suits 512-byte and 4 KiB
/// logical blocks alike.
pub const ALIGN: usize = 4096;
/// Size of one pooled aligned buffer: bytes per direct `write(2)`.
pub const CHUNK: usize = 1 << 20;
/// Left in the data directory while a restore is under way; removed after `pg_control`.
pub const INCOMPLETE_MARKER: &str = "lifeboat.restore-incomplete";
/// `pg_control`'s place, relative to the data directory.
const PG_CONTROL: &str = "global/pg_control";

/// A heap buffer of [`CHUNK`] bytes starting at an [`ALIGN`]ed address.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let raw = vec![0u8; CHUNK + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, off }
    }
    /// A placeholder while the real buffer is with a writer (never written to).
    fn empty() -> AlignedBuf {
        AlignedBuf {
            raw: Vec::new(),
            off: 0,
        }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + CHUNK]
    }
    fn as_ref(&self) -> &[u8] {
        &self.raw[self.off..self.off + CHUNK]
    }
}

/// Aligned buffers a restore may hold at once (being filled, queued or written): bounds
/// memory at `MAX_BUFS` × [`CHUNK`].
const MAX_BUFS: usize = 8;
/// Threads issuing direct writes, so that extraction goes on while the device writes.
const WRITERS: usize = 2;

/// What the sink and its writer threads share.
struct Shared {
    direct: AtomicBool,
    /// Free buffers, and how many exist.
    pool: Mutex<(Vec<AlignedBuf>, usize)>,
    returned: Condvar,
    /// [`FAULT_ENV`]: direct writes left before every one is refused as the kernel would
    /// (`u64::MAX`: no fault).
    fault_after: AtomicU64,
}

impl Shared {
    fn take_buf(&self) -> AlignedBuf {
        let mut g = self.pool.lock().expect("pool lock not poisoned");
        loop {
            if let Some(b) = g.0.pop() {
                return b;
            }
            if g.1 < MAX_BUFS {
                g.1 += 1;
                return AlignedBuf::new();
            }
            g = self.returned.wait(g).expect("pool lock not poisoned");
        }
    }

    fn give_buf(&self, b: AlignedBuf) {
        self.pool.lock().expect("pool lock not poisoned").0.push(b);
        self.returned.notify_one();
    }

    fn refused(&self, e: &std::io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::info!(error = %e, "the restore's file system refuses O_DIRECT: buffered writes from now on");
        }
    }

    /// Write `data` (aligned) at `at` of `f`, opened with `O_DIRECT`. A refusal (`EINVAL`,
    /// or the fault injection) turns direct writes off for the restore, clears `O_DIRECT`
    /// on `f` and writes the same bytes buffered; `Ok(false)` says so.
    fn write_direct_at(&self, f: &std::fs::File, data: &[u8], at: u64) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let r = if self.fault() {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            f.write_all_at(data, at)
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refused(&e);
                clear_direct(f).and_then(|_| f.write_all_at(data, at))?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the fault injection refuses this direct write.
    fn fault(&self) -> bool {
        let mut left = self.fault_after.load(Ordering::Relaxed);
        loop {
            match left {
                u64::MAX => return false,
                0 => return true,
                n => match self.fault_after.compare_exchange(
                    n,
                    n - 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return false,
                    Err(now) => left = now,
                },
            }
        }
    }
}

/// A file's direct writes in flight, and the first error of one.
#[derive(Default)]
struct Pending {
    state: Mutex<(usize, Option<std::io::Error>)>,
    done: Condvar,
}

impl Pending {
    /// Wait until no write is in flight; the first error, if any.
    fn wait(&self) -> std::io::Result<()> {
        let mut g = self.state.lock().expect("not poisoned");
        while g.0 > 0 {
            g = self.done.wait(g).expect("not poisoned");
        }
        g.1.take().map_or(Ok(()), Err)
    }
}

/// One whole chunk for a writer thread.
struct Job {
    f: Arc<std::fs::File>,
    at: u64,
    buf: AlignedBuf,
    len: usize,
    pending: Arc<Pending>,
}

/// Write jobs until the channel closes. A refusal (`EINVAL`) clears `O_DIRECT` on that
/// file and writes the same bytes buffered.
fn writer(shared: Arc<Shared>, rx: Arc<Mutex<std::sync::mpsc::Receiver<Job>>>) {
    loop {
        let next = rx.lock().expect("not poisoned").recv();
        let Ok(job) = next else { return };
        let data = &job.buf.as_ref()[..job.len];
        let res = shared.write_direct_at(&job.f, data, job.at).map(|_| ());
        let Job {
            f, buf, pending, ..
        } = job;
        drop(f);
        shared.give_buf(buf);
        let mut g = pending.state.lock().expect("not poisoned");
        g.0 -= 1;
        if let Err(e) = res {
            g.1.get_or_insert(e);
        }
        drop(g);
        pending.done.notify_all();
    }
}

/// The durability of one restore: see the module documentation.
pub struct Sink {
    pgdata: PathBuf,
    shared: Arc<Shared>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    writers: Vec<std::thread::JoinHandle<()>>,
    syncer: Option<SyncerHandle>,
    held: Mutex<Option<(Vec<u8>, u32)>>,
}

/// For tests of the fallback on a kernel whose file systems all take `O_DIRECT`:
/// `LIFEBOAT_FAULT_DIRECT_EINVAL=N` refuses every direct write after the first N with
/// `EINVAL`, as a file system without direct I/O does; nothing else is faked.
pub const FAULT_ENV: &str = "LIFEBOAT_FAULT_DIRECT_EINVAL";

impl Sink {
    /// Start a restore into `pgdata` (which exists): leaves [`INCOMPLETE_MARKER`] there,
    /// durably, before anything else is written.
    pub fn new(method: SyncMethod, pgdata: &Path, direct: bool) -> Result<Sink> {
        let marker = pgdata.join(INCOMPLETE_MARKER);
        std::fs::write(
            &marker,
            b"a lifeboat restore is writing this directory; until it finishes, global/pg_control is missing\n",
        )
        .with_context(|| format!("creating {}", marker.display()))?;
        std::fs::File::open(&marker)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::File::open(pgdata)?.sync_all())
            .with_context(|| format!("fsync {}", marker.display()))?;
        let shared = Arc::new(Shared {
            direct: AtomicBool::new(direct && cfg!(target_os = "linux")),
            pool: Mutex::new((Vec::new(), 0)),
            returned: Condvar::new(),
            fault_after: AtomicU64::new(
                std::env::var(FAULT_ENV)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u64::MAX),
            ),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(MAX_BUFS);
        let rx = Arc::new(Mutex::new(rx));
        let writers = (0..WRITERS)
            .map(|_| {
                let (shared, rx) = (shared.clone(), rx.clone());
                std::thread::spawn(move || writer(shared, rx))
            })
            .collect();
        Ok(Sink {
            pgdata: pgdata.to_path_buf(),
            shared,
            jobs: Some(tx),
            writers,
            syncer: (method == SyncMethod::Fsync).then(|| Syncer::start(2)),
            held: Mutex::new(None),
        })
    }

    /// Whether direct writes are still in use (a refusal turns them off for good).
    pub fn direct(&self) -> bool {
        self.shared.direct.load(Ordering::Relaxed)
    }

    /// Create the file at `path` (its parent exists) that will hold `size_hint` bytes,
    /// with permission bits `mode`.
    pub fn create(&self, path: &Path, size_hint: u64, mode: u32) -> Result<FileWriter<'_>> {
        if path == self.pgdata.join(PG_CONTROL) {
            return Ok(FileWriter {
                sink: self,
                path: path.to_path_buf(),
                mode,
                hint: size_hint,
                out: Out::Held(Vec::with_capacity(size_hint as usize)),
                len: 0,
                flushed: 0,
            });
        }
        let mut file = None;
        if size_hint >= DIRECT_MIN && self.direct() {
            match std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => file = Some((f, true)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.shared.refused(&e),
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        let (f, direct) = match file {
            Some(x) => x,
            None => (
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
                false,
            ),
        };
        if size_hint > 0 {
            fallocate(&f, size_hint);
        }
        Ok(FileWriter {
            sink: self,
            path: path.to_path_buf(),
            mode,
            hint: size_hint,
            out: if direct {
                Out::Direct {
                    f: Arc::new(f),
                    buf: self.shared.take_buf(),
                    fill: 0,
                    at: 0,
                    pending: Arc::default(),
                }
            } else {
                Out::Buffered(f)
            },
            len: 0,
            flushed: 0,
        })
    }

    /// Make the restore durable and complete: every file (fsync each, or syncfs each file
    /// system of `roots`), every directory under `roots`, then `global/pg_control` through
    /// temp + fsync + rename + fsync of `global/`, then the marker is removed.
    pub fn finish(mut self, roots: &[PathBuf]) -> Result<()> {
        // Every file was finished (its writes waited for): the writers are idle.
        drop(self.jobs.take());
        for w in self.writers.drain(..) {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))?;
        }
        match self.syncer.take() {
            Some(s) => s.finish()?,
            None => syncfs_all(roots)?,
        }
        for r in roots {
            sync_dirs(r)?;
        }
        let held = self.held.lock().expect("not poisoned").take();
        if let Some((bytes, mode)) = held {
            let path = self.pgdata.join(PG_CONTROL);
            let tmp = self.pgdata.join("global/pg_control.lifeboat-tmp");
            crate::storage::durable::replace_with(&path, &tmp, |t| -> std::io::Result<_> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(t)?;
                f.write_all(&bytes)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                Ok(f)
            })
            .with_context(|| format!("writing {}", path.display()))?;
        }
        let marker = self.pgdata.join(INCOMPLETE_MARKER);
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        crate::storage::durable::sync_dir(&self.pgdata)
            .with_context(|| format!("fsync {}", self.pgdata.display()))?;
        Ok(())
    }
}

/// A file written at block offsets (a chain restore's rebuilt relation files): whole
/// [`ALIGN`] multiples at [`ALIGN`]ed offsets, copied through a pooled aligned buffer and
/// written with `O_DIRECT` while the sink uses it, buffered otherwise (the same fallback
/// as [`FileWriter`]: `EINVAL` turns direct writes off and the bytes are written again).
/// The caller fsyncs the file when it is complete.
pub struct BlockFile<'s> {
    sink: &'s Sink,
    f: std::fs::File,
    direct: bool,
    path: PathBuf,
    /// A buffered descriptor for the unaligned ends of a write, opened when first needed.
    unaligned: Option<std::fs::File>,
}

impl Sink {
    /// Open the existing file at `path` for [`BlockFile::write_at`].
    pub fn open_blocks(&self, path: &Path) -> Result<BlockFile<'_>> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if self.direct() {
            match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => {
                    return Ok(BlockFile {
                        sink: self,
                        f,
                        direct: true,
                        path: path.to_path_buf(),
                        unaligned: None,
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.shared.refused(&e),
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            }
        }
        let f = opts
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(BlockFile {
            sink: self,
            f,
            direct: false,
            path: path.to_path_buf(),
            unaligned: None,
        })
    }
}

impl BlockFile<'_> {
    /// Write `data` at `at`: the [`ALIGN`]ed middle direct, the unaligned ends (a run
    /// split where a backup part ends) buffered, through a second descriptor. Two writes
    /// never share a 4 KiB page unless both are buffered there.
    pub fn write_at(&mut self, data: &[u8], at: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if !self.direct {
            return self
                .f
                .write_all_at(data, at)
                .with_context(|| format!("writing {}", self.path.display()));
        }
        let end = at + data.len() as u64;
        let first = at.next_multiple_of(ALIGN as u64).min(end);
        let last = (end / ALIGN as u64 * ALIGN as u64).max(first);
        for (from, to) in [(at, first), (last, end)] {
            if from < to {
                if self.unaligned.is_none() {
                    self.unaligned = Some(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&self.path)
                            .with_context(|| format!("opening {}", self.path.display()))?,
                    );
                }
                let u = self.unaligned.as_ref().expect("opened above");
                u.write_all_at(&data[(from - at) as usize..(to - at) as usize], from)
                    .with_context(|| format!("writing {}", self.path.display()))?;
            }
        }
        if first < last {
            self.write_direct(&data[(first - at) as usize..(last - at) as usize], first)?;
        }
        Ok(())
    }

    /// Write whole [`ALIGN`] multiples at an aligned offset through a pooled buffer.
    fn write_direct(&mut self, data: &[u8], at: u64) -> Result<()> {
        let mut buf = self.sink.shared.take_buf();
        let mut res = Ok(());
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let b = &mut buf.as_mut()[..chunk.len()];
            b.copy_from_slice(chunk);
            match self
                .sink
                .shared
                .write_direct_at(&self.f, b, at + (i * CHUNK) as u64)
            {
                Ok(direct) => self.direct &= direct,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        self.sink.shared.give_buf(buf);
        res.with_context(|| format!("writing {}", self.path.display()))
    }
}

/// `syncfs(2)` once per file system among `roots`.
fn syncfs_all(roots: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut done = Vec::new();
    for r in roots {
        let f = std::fs::File::open(r).with_context(|| format!("opening {}", r.display()))?;
        let dev = f
            .metadata()
            .with_context(|| format!("stat {}", r.display()))?
            .dev();
        if done.contains(&dev) {
            continue;
        }
        // SAFETY: syncfs only takes a valid descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("syncfs {}", r.display()));
        }
        done.push(dev);
    }
    Ok(())
}

/// Reserve `len` bytes for `f` (contiguous extents, no allocation during the writes).
/// Best effort: a file system without it just allocates as it goes.
pub(super) fn fallocate(f: &std::fs::File, len: u64) {
    // SAFETY: fallocate only takes a valid descriptor and a range.
    unsafe {
        libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t);
    }
}

/// Clear `O_DIRECT` on `f`: what follows is written through the page cache.
fn clear_direct(f: &std::fs::File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

enum Out {
    Held(Vec<u8>),
    Buffered(std::fs::File),
    Direct {
        f: Arc<std::fs::File>,
        /// Being filled; handed to a writer thread when full.
        buf: AlignedBuf,
        fill: usize,
        /// File offset of `buf`'s first byte (everything before it is handed off).
        at: u64,
        pending: Arc<Pending>,
    },
}

/// What [`FileWriter::fill_from`] read, and what is left to do with it.
pub enum FillResult {
    /// `k` bytes are in the direct buffer.
    Read(usize),
    /// `k` bytes filled the direct buffer: it goes to a writer.
    Flush(usize),
    /// `k` bytes are in the scratch buffer, to be written.
    Write(usize),
}

/// One file being written; end it with [`FileWriter::finish`].
pub struct FileWriter<'s> {
    sink: &'s Sink,
    path: PathBuf,
    mode: u32,
    /// The size hint (what `fallocate` reserved).
    hint: u64,
    out: Out,
    len: u64,
    flushed: u64,
}

impl FileWriter<'_> {
    /// Append `data` (any length).
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.len += data.len() as u64;
        match &mut self.out {
            Out::Held(v) => v.extend_from_slice(data),
            Out::Buffered(f) => {
                f.write_all(data)
                    .with_context(|| format!("writing {}", self.path.display()))?;
                if self.len - self.flushed >= WRITEBACK_CHUNK {
                    start_writeback(f, self.flushed, self.len - self.flushed);
                    self.flushed = self.len;
                }
            }
            Out::Direct { .. } => {
                while !data.is_empty() {
                    let Out::Direct { buf, fill, .. } = &mut self.out else {
                        unreachable!("a direct file stays direct until finished")
                    };
                    let k = data.len().min(CHUNK - *fill);
                    buf.as_mut()[*fill..*fill + k].copy_from_slice(&data[..k]);
                    *fill += k;
                    data = &data[k..];
                    if *fill == CHUNK {
                        self.flush_direct()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Read the next bytes of the file from `r` (0 at its end), handing them to `seen`
    /// first. A direct file reads straight into its aligned buffer (no copy in between);
    /// any other goes through `scratch`.
    pub fn fill_from(
        &mut self,
        r: &mut impl std::io::Read,
        scratch: &mut [u8],
        seen: &mut impl FnMut(&[u8]),
    ) -> std::io::Result<FillResult> {
        if let Out::Direct { buf, fill, .. } = &mut self.out {
            let space = &mut buf.as_mut()[*fill..];
            let k = r.read(space)?;
            seen(&space[..k]);
            *fill += k;
            self.len += k as u64;
            if *fill == CHUNK {
                return Ok(FillResult::Flush(k));
            }
            return Ok(FillResult::Read(k));
        }
        let k = r.read(scratch)?;
        seen(&scratch[..k]);
        Ok(FillResult::Write(k))
    }

    /// After [`FileWriter::fill_from`]: finish what it began (a full direct buffer handed
    /// to a writer, or the scratch bytes written).
    pub fn filled(&mut self, f: FillResult, scratch: &[u8]) -> Result<usize> {
        match f {
            FillResult::Read(k) => Ok(k),
            FillResult::Flush(k) => self.flush_direct().map(|()| k),
            FillResult::Write(k) => self.write(&scratch[..k]).map(|()| k),
        }
    }

    /// Hand the full buffer to a writer thread and go on with a fresh one (taken after
    /// the handover, so that buffers always come back to the pool).
    fn flush_direct(&mut self) -> Result<()> {
        let Out::Direct {
            f,
            buf,
            fill,
            at,
            pending,
        } = &mut self.out
        else {
            unreachable!("only called on a direct file")
        };
        debug_assert_eq!(*fill, CHUNK);
        {
            let mut g = pending.state.lock().expect("not poisoned");
            if let Some(e) = g.1.take() {
                return Err(e).with_context(|| format!("writing {}", self.path.display()));
            }
            g.0 += 1;
        }
        let job = Job {
            f: f.clone(),
            at: *at,
            buf: std::mem::replace(buf, AlignedBuf::empty()),
            len: CHUNK,
            pending: pending.clone(),
        };
        *fill = 0;
        *at += CHUNK as u64;
        let jobs = self.sink.jobs.as_ref().expect("writers run until finish");
        // The writers receive until the sink finishes, after every file.
        if jobs.send(job).is_err() {
            return Err(anyhow::anyhow!("the writer threads stopped"));
        }
        *buf = self.sink.shared.take_buf();
        Ok(())
    }

    /// Leave direct writes: wait for the writes in flight, then what is in the aligned
    /// buffer goes out buffered at its offset, the buffer back to the pool.
    fn go_buffered(&mut self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let out = std::mem::replace(&mut self.out, Out::Held(Vec::new()));
        let Out::Direct {
            f,
            buf,
            fill,
            at,
            pending,
        } = out
        else {
            unreachable!("only called on a direct file")
        };
        let res = (|| -> Result<std::fs::File> {
            pending
                .wait()
                .with_context(|| format!("writing {}", self.path.display()))?;
            let mut f = Arc::try_unwrap(f).map_err(|_| {
                anyhow::anyhow!("{}: a write still holds the file", self.path.display())
            })?;
            clear_direct(&f)
                .and_then(|_| f.seek(SeekFrom::Start(at)).map(|_| ()))
                .and_then(|_| f.write_all(&buf.as_ref()[..fill]))
                .with_context(|| format!("writing {}", self.path.display()))?;
            Ok(f)
        })();
        self.sink.shared.give_buf(buf);
        self.out = Out::Buffered(res?);
        Ok(())
    }

    /// Finish the file: the tail written, permissions set, handed to the fsync threads
    /// (fsync method). Returns its length.
    pub fn finish(mut self) -> Result<u64> {
        // The last partial chunk goes out buffered, once the direct writes are done.
        if matches!(self.out, Out::Direct { .. }) {
            self.go_buffered()?;
        }
        let len = self.len;
        let path = std::mem::take(&mut self.path);
        match std::mem::replace(&mut self.out, Out::Held(Vec::new())) {
            Out::Held(v) => {
                *self.sink.held.lock().expect("not poisoned") = Some((v, self.mode));
            }
            Out::Buffered(f) => {
                // fallocate may have reserved more than arrived (a short tar member is
                // an error later, but leave no stale length behind).
                if len < self.hint {
                    f.set_len(len)
                        .with_context(|| format!("truncating {}", path.display()))?;
                }
                f.set_permissions(std::fs::Permissions::from_mode(self.mode))
                    .with_context(|| format!("chmod {}", path.display()))?;
                match &self.sink.syncer {
                    Some(s) => {
                        start_writeback(&f, self.flushed, len - self.flushed);
                        s.syncer.sync(f, path);
                    }
                    None => start_writeback(&f, self.flushed, len - self.flushed),
                }
            }
            Out::Direct { .. } => unreachable!("switched to buffered above"),
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sink_in(dir: &Path, method: SyncMethod, direct: bool) -> Sink {
        Sink::new(method, dir, direct).unwrap()
    }

    /// A reader that returns at most the given sizes (cycled) per read.
    struct Ragged<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        i: usize,
    }

    impl std::io::Read for Ragged<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = self.sizes[self.i % self.sizes.len()]
                .max(1)
                .min(buf.len())
                .min(self.data.len());
            self.i += 1;
            buf[..k].copy_from_slice(&self.data[..k]);
            self.data = &self.data[k..];
            Ok(k)
        }
    }

    /// Read straight into the sink ([`FileWriter::fill_from`]), direct and buffered
    /// files alike, in ragged reads; every byte seen once, in order.
    #[test]
    fn fill_from_reads_into_the_file_whole() {
        let d = tempfile::tempdir().unwrap();
        let sink = sink_in(d.path(), SyncMethod::Fsync, true);
        for (name, len, sizes) in [
            ("big", 3 * CHUNK + 4097, &[CHUNK, 7, 65536, CHUNK - 1][..]),
            ("small", 1000, &[3, 500][..]),
            ("empty", 0, &[1][..]),
        ] {
            let data = pattern(len, 3);
            let p = d.path().join(name);
            let mut w = sink.create(&p, len as u64, 0o600).unwrap();
            let mut r = Ragged {
                data: &data,
                sizes,
                i: 0,
            };
            let mut scratch = vec![0u8; 4096];
            let mut seen = Vec::new();
            loop {
                let got = w
                    .fill_from(&mut r, &mut scratch, &mut |b| seen.extend_from_slice(b))
                    .unwrap();
                if w.filled(got, &scratch).unwrap() == 0 {
                    break;
                }
            }
            assert_eq!(w.finish().unwrap(), len as u64);
            assert_eq!(seen, data, "{name}");
            assert_eq!(std::fs::read(&p).unwrap(), data, "{name}");
        }
        sink.finish(&[d.path().to_path_buf()]).unwrap();
    }

    /// Write `data` in the given chunk sizes (cycled) and read it back.
    fn roundtrip(dir: &Path, sink: &Sink, name: &str, data: &[u8], chunks: &[usize]) {
        let p = dir.join(name);
        let mut w = sink.create(&p, data.len() as u64, 0o600).unwrap();
        let mut at = 0;
        let mut i = 0;
        while at < data.len() {
            let k = chunks[i % chunks.len()].max(1).min(data.len() - at);
            w.write(&data[at..at + k]).unwrap();
            at += k;
            i += 1;
        }
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), data, "{name}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// Block files: aligned runs written direct, out of order, through the pool; an
    /// unaligned write is written buffered; with direct writes refused, the same bytes.
    #[test]
    fn block_files_take_runs_at_offsets_in_any_order() {
        for fault in [false, true] {
            let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
            let sink = sink_in(dir.path(), SyncMethod::Fsync, true);
            if fault {
                sink.shared.fault_after.store(1, Ordering::Relaxed);
            }
            let p = dir.path().join("16384");
            let data = pattern(3 * CHUNK + 5 * 8192, 7);
            std::fs::File::create(&p)
                .unwrap()
                .set_len(data.len() as u64 + 8192)
                .unwrap();
            let mut f = sink.open_blocks(&p).unwrap();
            let cut = [0, 8192, CHUNK + 16384, 2 * CHUNK, data.len()];
            for w in cut.windows(2).rev() {
                f.write_at(&data[w[0]..w[1]], w[0] as u64).unwrap();
            }
            f.write_at(b"tail", data.len() as u64 + 100).unwrap();
            drop(f);
            let got = std::fs::read(&p).unwrap();
            assert_eq!(&got[..data.len()], &data[..], "fault {fault}");
            assert_eq!(&got[data.len() + 100..data.len() + 104], b"tail");
            assert_eq!(sink.direct(), !fault);
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
            .collect()
    }

    #[test]
    fn direct_writes_at_the_edges_of_blocks_and_chunks() {
        let d = tempfile::tempdir().unwrap();
        let sink = sink_in(d.path(), SyncMethod::Fsync, true);
        let sizes = [
            0,
            1,
            ALIGN - 1,
            DIRECT_MIN as usize - 1,
            DIRECT_MIN as usize,
            DIRECT_MIN as usize + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            CHUNK + ALIGN,
            3 * CHUNK + 17,
        ];
        for (i, n) in sizes.iter().enumerate() {
            roundtrip(
                d.path(),
                &sink,
                &format!("f{i}"),
                &pattern(*n, i as u8),
                &[65536, 1, 4095, 1 << 20],
            );
        }
        // The test's file system is the repository's disk: direct I/O was really used.
        assert!(sink.direct(), "the test's file system refused O_DIRECT");
        sink.finish(&[d.path().to_path_buf()]).unwrap();
        assert!(!d.path().join(INCOMPLETE_MARKER).exists());
    }

    #[test]
    fn pg_control_is_held_until_the_end_and_written_last() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("global")).unwrap();
        let sink = sink_in(d.path(), SyncMethod::Syncfs, true);
        assert!(d.path().join(INCOMPLETE_MARKER).exists());
        let ctl = d.path().join(PG_CONTROL);
        let mut w = sink.create(&ctl, 8192, 0o600).unwrap();
        w.write(&[7u8; 8192]).unwrap();
        w.finish().unwrap();
        roundtrip(
            d.path(),
            &sink,
            "global/1262",
            &pattern(300_000, 3),
            &[8192],
        );
        assert!(!ctl.exists(), "pg_control is not written before the end");
        sink.finish(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(std::fs::read(&ctl).unwrap(), vec![7u8; 8192]);
        assert!(!d.path().join(INCOMPLETE_MARKER).exists());
        assert!(!d.path().join("global/pg_control.lifeboat-tmp").exists());
        let mode = std::fs::metadata(&ctl).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A file system that refuses `O_DIRECT` mid-file (the fault stands in for the
    /// kernel's EINVAL; tmpfs accepts direct I/O since Linux 6.6): the file and those after
    /// it go on buffered, and every byte arrives.
    #[test]
    fn a_refused_direct_write_goes_on_buffered_with_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let sink = sink_in(d.path(), SyncMethod::Fsync, true);
        sink.shared.fault_after.store(2, Ordering::Relaxed);
        let data = pattern(5 * CHUNK + 5, 9);
        roundtrip(d.path(), &sink, "f", &data, &[CHUNK / 2 + 3]);
        assert!(!sink.direct(), "the refusal turned direct writes off");
        roundtrip(d.path(), &sink, "g", &pattern(2 * CHUNK, 1), &[4096]);
        sink.finish(&[d.path().to_path_buf()]).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_size_in_any_chunks_reads_back(
            len in 0usize..(3 * CHUNK + 3 * ALIGN),
            chunks in prop::collection::vec(1usize..(CHUNK + 2 * ALIGN), 1..5),
            direct in any::<bool>(),
        ) {
            let d = tempfile::tempdir().unwrap();
            let sink = sink_in(d.path(), SyncMethod::Fsync, direct);
            roundtrip(d.path(), &sink, "f", &pattern(len, len as u8), &chunks);
            sink.finish(&[d.path().to_path_buf()]).unwrap();
        }
    }
}
