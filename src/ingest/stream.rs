//! `lifeboat stream`: the dedicated replication-slot consumer.
//!
//! One task owns the replication connection. WAL bytes go to a spool file per segment;
//! a complete segment, or the unsent tail of one after `wal.max_delay`, becomes an upload
//! job. Jobs are sealed (zstd, age, CRC32) in parallel on blocking threads and handed in
//! submission order to the outbox (`ingest::outbox`), which delivers them to every provider
//! and reports the end positions that may be acknowledged.
//!
//! Invariants:
//! - `acked` (the flush LSN we report) only ever takes an end position the outbox has
//!   reported durable (stored on every provider, or held in the fsync'd outbox for one that
//!   is down), and never decreases.
//! - Objects are started in LSN order, several at once per provider, so a crash can leave
//!   a provider with a hole just before its newest objects. Every acknowledged position is
//!   recorded durably first (`<spool>/acknowledged`), and a restart resumes from the lowest
//!   of that and each provider's newest end, which leaves no hole.
//! - A restart re-streams from the start of the segment holding the resume point (like
//!   pg_receivewal), so a complete segment can always be sealed from the spool.
//! - A job that cannot be sealed, or an outbox that cannot be written, ends the run with an
//!   error ([`ArchivingFailed`]): nothing after it could ever be acknowledged, so waiting
//!   would only hide the failure while the slot grows. The service manager restarts
//!   lifeboat, which streams the unacknowledged WAL again from the slot.
//! - A server that keeps asking for a reply while lifeboat has received everything it sent
//!   but cannot acknowledge it (a shutdown waits for that) is not held: after
//!   [`SERVER_WAIT_PATIENCE`] lifeboat disconnects. The slot keeps the WAL; lifeboat
//!   reconnects once the providers have stored what it received.
//! - A stop (SIGTERM, Ctrl-C) archives what was received while the providers make
//!   progress, and gives up after [`STOP_PATIENCE`] without any: what is not stored is not
//!   acknowledged, and the slot keeps it for the next start.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::archive::Archive;
use crate::config::Config;
use crate::core::catalog;
use crate::core::wal::{Lsn, SegmentName, TimelineHistory, TimelineId, WalSegSize};
use crate::ingest::outbox::{Ack, Delivery, Outgoing};
use crate::pg::conninfo::ConnParams;
use crate::pg::replication::{StartOutcome, StreamEvent};
use crate::pg::{Connection, PgError};
use crate::pipeline::{Sealed, Sealer};

/// How many sealed-but-unstored jobs may be in flight (bounds memory).
const PIPELINE_DEPTH: usize = 2;

/// After a stop is asked for, how long to wait for the providers without any
/// acknowledgement before exiting with WAL not yet stored.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// How long the server may wait on an acknowledgement lifeboat cannot give (it asks for
/// replies while everything it sent is received but not stored: a shutdown waits for
/// that) before lifeboat disconnects rather than hold it.
const SERVER_WAIT_PATIENCE: Duration = Duration::from_secs(5);

/// The archiving pipeline failed for good: a job could not be sealed, or the outbox or the
/// acknowledged position cannot be written. Nothing after the acknowledged position can be
/// acknowledged any more, so the run ends with this error (the message carries its hint).
#[derive(Debug)]
pub struct ArchivingFailed(pub String);

impl std::fmt::Display for ArchivingFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArchivingFailed {}

/// A stop was asked for and the providers made no progress for [`STOP_PATIENCE`]: WAL was
/// received that is not stored (nor acknowledged).
#[derive(Debug)]
struct StoppedUnfinished;

impl std::fmt::Display for StoppedUnfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped before everything received was stored")
    }
}

impl std::error::Error for StoppedUnfinished {}

/// Resolves [`STOP_PATIENCE`] after `stop` turns true (never, if it never does).
async fn stop_patience_over(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(STOP_PATIENCE).await;
}

enum JobKind {
    Segment,
    Part {
        start: u64,
        end: u64,
        last: bool,
    },
    History {
        parent: TimelineId,
        switch: Lsn,
        content: Bytes,
    },
    /// An object already sealed (read from a provider that holds it), stored as it is
    /// under its key: WAL that no server can stream again, for a provider that lacks it.
    Copy {
        key: String,
        sealed: Bytes,
    },
}

struct Job {
    name: SegmentName,
    kind: JobKind,
    spool: PathBuf,
    /// The position this job makes durable once stored.
    end: Lsn,
}

struct Uploader {
    queue: mpsc::Sender<(Job, JoinHandle<Result<Sealed, String>>)>,
    acks: mpsc::UnboundedReceiver<Ack>,
    sealer: Sealer,
    seg: WalSegSize,
    /// Sealing is CPU-bound: at most one job per core at a time.
    sealing: std::sync::Arc<tokio::sync::Semaphore>,
    storer: JoinHandle<()>,
    delivery: Delivery,
    providers: Vec<std::sync::Arc<dyn crate::storage::ObjectStore>>,
}

impl Uploader {
    fn start(
        providers: Vec<std::sync::Arc<dyn crate::storage::ObjectStore>>,
        sealer: Sealer,
        seg: WalSegSize,
        outbox: PathBuf,
        max_spool: u64,
    ) -> Result<Uploader> {
        let (tx, mut rx) =
            mpsc::channel::<(Job, JoinHandle<Result<Sealed, String>>)>(PIPELINE_DEPTH);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let delivery = Delivery::start(providers.clone(), outbox, max_spool, ack_tx.clone())?;
        let input = delivery.input.clone();
        let storer = tokio::spawn(async move {
            // Sealing runs in parallel; objects leave in submission order.
            while let Some((job, handle)) = rx.recv().await {
                let sealed = match handle.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let _ = ack_tx.send(Err(e));
                        return;
                    }
                    Err(e) => {
                        let _ = ack_tx.send(Err(format!("sealing task failed: {e}")));
                        return;
                    }
                };
                let key = match &job.kind {
                    JobKind::Segment => catalog::segment_key(job.name),
                    JobKind::Part { start, end, .. } => catalog::part_key(job.name, *start, *end),
                    JobKind::History { parent, switch, .. } => {
                        catalog::history_key(job.name.tli, *parent, *switch)
                    }
                    JobKind::Copy { key, .. } => key.clone(),
                };
                let remove = match job.kind {
                    JobKind::Segment => true,
                    JobKind::Part { last, .. } => last,
                    JobKind::History { .. } | JobKind::Copy { .. } => false,
                };
                tracing::debug!(key, stored = sealed.bytes.len(), plain = sealed.plain_len, end = %job.end, "sealed");
                let out = Outgoing {
                    key,
                    // A history file acknowledges nothing new (its end is the position
                    // already acknowledged, which may lie on the parent timeline), nor
                    // does a copy of an object some provider already holds.
                    end: match job.kind {
                        JobKind::History { .. } | JobKind::Copy { .. } => None,
                        _ => Some((job.name.tli, job.end)),
                    },
                    bytes: Bytes::from(sealed.bytes),
                    remove_after: remove.then_some(job.spool),
                };
                if input.send(out).await.is_err() {
                    return;
                }
            }
        });
        Ok(Uploader {
            queue: tx,
            acks: ack_rx,
            sealer,
            seg,
            sealing: std::sync::Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            storer,
            delivery,
            providers,
        })
    }

    async fn submit(&self, job: Job) -> Result<()> {
        let sealer = self.sealer.clone();
        let seg = self.seg.bytes();
        let spool = job.spool.clone();
        let range = match &job.kind {
            JobKind::Segment => Some((0, seg)),
            JobKind::Part { start, end, .. } => Some((*start, *end)),
            JobKind::History { .. } | JobKind::Copy { .. } => None,
        };
        let content = match &job.kind {
            JobKind::History { content, .. } => Some(content.clone()),
            _ => None,
        };
        if let JobKind::Copy { sealed, .. } = &job.kind {
            let sealed = Sealed {
                bytes: sealed.to_vec(),
                plain_len: 0,
                crc32: 0,
            };
            let handle = tokio::spawn(async move { Ok(sealed) });
            return self
                .queue
                .send((job, handle))
                .await
                .map_err(|_| anyhow!("the archiving task stopped"));
        }
        let permit = self
            .sealing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| anyhow!("the archiving task stopped"))?;
        let handle = tokio::task::spawn_blocking(move || -> Result<Sealed, String> {
            let _permit = permit;
            match (range, content) {
                (Some((start, end)), _) => seal_range(&sealer, &spool, start, end)
                    .map_err(|e| format!("cannot seal {}: {e:#}\nhint: the spool file changed under lifeboat: make sure nothing else writes, truncates or deletes files in wal.spool_dir; this WAL was not acknowledged, so the replication slot keeps it and the next start streams it again", spool.display())),
                (None, Some(c)) => sealer
                    .seal(&c)
                    .map_err(|e| format!("cannot seal a timeline history file: {e}")),
                (None, None) => Err("empty job".into()),
            }
        });
        self.queue
            .send((job, handle))
            .await
            .map_err(|_| anyhow!("the archiving task stopped"))
    }
}

fn seal_range(sealer: &Sealer, path: &Path, start: u64, end: u64) -> Result<Sealed> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < end {
        bail!("spool file has {len} bytes, expected at least {end}");
    }
    let reader = RangeReader { f, pos: start };
    // WAL typically compresses 3-4x: reserve for that rather than growing by doubling.
    let hint = ((end - start) / 3) as usize;
    // Exactly the job's bytes (a segment: the segment size; a part: its range), even if
    // the file shrinks while it is read.
    Ok(sealer.seal_reader_exact(
        std::io::BufReader::with_capacity(256 * 1024, reader),
        end - start,
        hint,
    )?)
}

struct RangeReader {
    f: File,
    pos: u64,
}

impl std::io::Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The segment being received, in the spool.
struct SpoolFile {
    name: SegmentName,
    path: PathBuf,
    file: File,
}

/// Positions of the stream. `acked <= submitted <= written` on one timeline.
struct State {
    seg: WalSegSize,
    tli: TimelineId,
    /// End of WAL written to the spool.
    written: Lsn,
    /// End of WAL handed to the uploader.
    submitted: Lsn,
    /// The flush position reported to the server: stored on every provider.
    acked: Lsn,
    /// The timeline whose history `acked` is a position in. Positions compare as
    /// (timeline, LSN): on a newer timeline, WAL up to its switch point is shared history.
    acked_tli: TimelineId,
    pending_since: Option<Instant>,
    spool_dir: PathBuf,
    current: Option<SpoolFile>,
    histories: HashSet<TimelineId>,
}

impl State {
    fn spool_path(&self, name: SegmentName) -> PathBuf {
        self.spool_dir.join(format!("{name}.partial"))
    }

    /// Write WAL received at `start`, cutting at segment boundaries; returns the jobs for
    /// segments this completed.
    fn write(&mut self, start: Lsn, data: &[u8]) -> Result<Vec<Job>> {
        if start != self.written {
            bail!(
                "the server sent WAL at {start}, but lifeboat expected {} (protocol violation)",
                self.written
            );
        }
        let mut jobs = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let off = self.written.segment_offset(self.seg);
            let n = ((self.seg.bytes() - off) as usize).min(rest.len());
            let name = SegmentName::new(self.tli, self.written.segno(self.seg), self.seg);
            if self.current.as_ref().map(|c| c.name) != Some(name) {
                let path = self.spool_path(name);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .read(true)
                    .truncate(off == 0)
                    .open(&path)
                    .with_context(|| format!("opening spool file {}", path.display()))?;
                self.current = Some(SpoolFile { name, path, file });
            }
            let cur = self.current.as_ref().expect("just set");
            cur.file
                .write_all_at(&rest[..n], off)
                .with_context(|| format!("writing spool file {}", cur.path.display()))?;
            self.written = Lsn(self.written.0 + n as u64);
            rest = &rest[n..];
            if self.pending_since.is_none() && self.written > self.submitted {
                self.pending_since = Some(Instant::now());
            }
            if self.written.segment_offset(self.seg) == 0 {
                let cur = self.current.take().expect("writing into it");
                jobs.push(Job {
                    name: cur.name,
                    kind: JobKind::Segment,
                    spool: cur.path,
                    end: self.written,
                });
                self.submitted = self.written;
                self.pending_since = None;
            }
        }
        Ok(jobs)
    }

    /// The unsent tail of the current segment as a part, if there is one.
    fn take_part(&mut self, last: bool) -> Option<Job> {
        if self.written <= self.submitted {
            return None;
        }
        let cur = self.current.as_ref()?;
        let seg_start = self.written.segment_start(self.seg);
        let start = self.submitted.max(seg_start).0 - seg_start.0;
        let end = self.written.0 - seg_start.0;
        self.submitted = self.written;
        self.pending_since = None;
        let job = Job {
            name: cur.name,
            kind: JobKind::Part { start, end, last },
            spool: cur.path.clone(),
            end: self.written,
        };
        if last {
            self.current = None;
        }
        Some(job)
    }
}

pub struct StreamOptions {
    pub endpos: Option<Lsn>,
}

/// Run the streamer until `endpos` is archived, a signal arrives, or a permanent error.
pub async fn run(cfg: &Config, opts: StreamOptions) -> Result<()> {
    let params = ConnParams::parse_with_process_env(&cfg.postgres.conninfo)
        .map_err(|e| anyhow!("postgres.conninfo: {e}"))?;
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.wal.compression_level)?;
    let archive = Archive::open(cfg)?;
    std::fs::create_dir_all(&cfg.wal.spool_dir).with_context(|| {
        format!(
            "cannot create spool directory {}\nhint: set wal.spool_dir to a writable directory",
            cfg.wal.spool_dir.display()
        )
    })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: archiving what was received, then exiting");
        crate::ingest::notify::stopping();
        let _ = stop_tx.send(true);
    });

    let mut streamer: Option<Streamer> = None;
    let mut backoff = Duration::from_secs(1);
    let mut ever_streamed = false;
    loop {
        let attempt = async {
            let mut conn = Connection::connect(&params, true).await?;
            let ident = conn.identify_system().await?;
            let seg = conn.wal_segment_size().await?;
            Ok::<_, anyhow::Error>((conn, ident, seg))
        };
        let attempt = tokio::select! {
            a = crate::ingest::notify::keep_alive(attempt) => a,
            _ = stop_requested(&stop_rx) => return Ok(()),
        };
        let (mut conn, ident, seg) = match attempt {
            Ok(x) => x,
            Err(e) => {
                let permanent = e
                    .downcast_ref::<PgError>()
                    .is_some_and(PgError::is_permanent);
                // A one-shot run (--endpos) fails at once when it cannot start at all; the
                // service keeps trying, as pg_receivewal does.
                if !ever_streamed && (permanent || opts.endpos.is_some()) {
                    return Err(e);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cannot connect");
                crate::ingest::notify::status(&format!("not streaming: cannot connect: {e:#}"));
                if let Some(s) = &streamer {
                    s.write_status(false, Some(format!("cannot connect: {e:#}")));
                }
                if wait_or_stop(backoff, &stop_rx).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let s = match &mut streamer {
            Some(s) => {
                if s.system_id != ident.system_id {
                    bail!("the server at {} is database system {}, but this streamer archives system {}\nhint: never mix two clusters in one archive", conn.target, ident.system_id, s.system_id);
                }
                s
            }
            None => {
                archive.ensure_meta(ident.system_id, seg).await?;
                crate::ingest::outbox::claim_spool(&cfg.wal.spool_dir, ident.system_id)?;
                let outbox = cfg.wal.spool_dir.join("outbox");
                let pending: Vec<String> = crate::ingest::outbox::leftovers(&outbox)?
                    .into_iter()
                    .map(|(_, key, _, _)| key)
                    .collect();
                // With several writes in flight per provider, the newest object may sit
                // after a hole left by a crash: never resume past what was acknowledged.
                let acknowledged = crate::ingest::outbox::acknowledged(&outbox);
                let resume = archive.resume_point(seg, &pending, acknowledged).await?;
                // WAL an operator accepted as lost (`lifeboat accept-gap`): resume after it.
                let gaps = archive.gaps().await?;
                let resume = resume.map(|(t, l)| {
                    let after = crate::ingest::gap::after_gaps(&gaps, t, l);
                    if after.1 != l {
                        tracing::warn!(timeline = %t, from = %l, to = %after.1, "resuming after the accepted WAL gap");
                    }
                    after
                });
                if let (Some(r), Some(a)) = (resume, acknowledged) {
                    if r == a {
                        tracing::info!(acknowledged = %a.1, "resuming from the last acknowledged position; newer objects are sent again");
                    }
                }
                // The histories every provider holds: one that a provider lacks (it was
                // slow when the others stored it, and the run was killed) is sent again
                // when its timeline is streamed, and so is every history for a provider
                // that cannot be listed now (a re-sent history is stored as identical).
                let mut histories: Option<HashSet<TimelineId>> = None;
                for p in &archive.mirror.providers {
                    let held: HashSet<TimelineId> = match archive.inventory(p.as_ref(), seg).await {
                        Ok(inv) => inv.histories.keys().copied().collect(),
                        Err(e) if acknowledged.is_some() => {
                            tracing::debug!(provider = p.name(), error = %format!("{e:#}"), "provider unavailable at start");
                            HashSet::new()
                        }
                        Err(e) => return Err(e),
                    };
                    histories = Some(match histories {
                        None => held,
                        Some(h) => h.intersection(&held).copied().collect(),
                    });
                }
                let histories = histories.unwrap_or_default();
                let uploader = Uploader::start(
                    archive.mirror.providers.clone(),
                    sealer.clone(),
                    seg,
                    outbox,
                    cfg.spool_max_size(),
                )?;
                let status_reporter = StatusReporter::start(
                    cfg.wal.spool_dir.clone(),
                    uploader.delivery.health.clone(),
                );
                streamer.insert(Streamer {
                    system_id: ident.system_id,
                    uploader,
                    state: State {
                        seg,
                        tli: resume.map(|r| r.0).unwrap_or(ident.timeline),
                        written: Lsn::INVALID,
                        submitted: resume.map(|r| r.1).unwrap_or(Lsn::INVALID),
                        acked: resume.map(|r| r.1).unwrap_or(Lsn::INVALID),
                        acked_tli: resume.map(|r| r.0).unwrap_or(ident.timeline),
                        pending_since: None,
                        spool_dir: cfg.wal.spool_dir.clone(),
                        current: None,
                        histories,
                    },
                    resume_known: resume.is_some(),
                    floor_from_slot: resume.is_some() && acknowledged.is_none(),
                    max_delay: cfg.max_delay(),
                    status_interval: cfg.status_interval(),
                    slot: cfg.postgres.slot.clone(),
                    create_slot: cfg.postgres.create_slot,
                    status: Some(status_reporter),
                    stop: stop_rx.clone(),
                    failed: None,
                })
            }
        };
        // The end position is one on the server's timeline: archived WAL of an older
        // timeline past that LSN is not on the server's history (positions compare as
        // (timeline, LSN)).
        let endpos = opts.endpos.map(|e| (ident.timeline, e));
        if let Some(end) = endpos {
            if s.state.tli == end.0 && (s.state.acked_tli, s.state.acked) >= end {
                tracing::info!(endpos = %end.1, timeline = %end.0, "everything before the end position is archived");
                return Ok(());
            }
        }
        let result = s
            .stream(&mut conn, ident.timeline, ident.xlogpos, endpos, &stop_rx)
            .await;
        // The server is not held while the providers catch up (a shutdown waits for this
        // connection); a COPY that ended cleanly has nothing more to say either.
        let conn_target = conn.target.clone();
        conn.close().await;
        if let Err(e) = &result {
            // A failed pipeline cannot drain: end the run (the slot keeps what was not
            // acknowledged, and the service manager restarts lifeboat).
            if e.is::<ArchivingFailed>() {
                return result.map(|_| ());
            }
            if e.is::<StoppedUnfinished>() {
                s.warn_unfinished();
                return Ok(());
            }
        }
        // Whatever happened, let every submitted job finish before touching the spool again.
        if !matches!(result, Ok(Outcome::Done)) {
            s.write_status(
                false,
                Some("disconnected: waiting for the providers to store what was received".into()),
            );
        }
        if let Err(e) = s.drain().await {
            if e.is::<StoppedUnfinished>() {
                s.warn_unfinished();
                return Ok(());
            }
            return Err(e);
        }
        match result {
            Ok(Outcome::Done) => return Ok(()),
            Ok(Outcome::Reconnect(why)) => {
                ever_streamed = true;
                backoff = Duration::from_secs(1);
                tracing::warn!(reason = %why, "stream ended; reconnecting");
                s.write_status(false, Some(format!("stream ended: {why}; reconnecting")));
            }
            Err(e) => {
                if let Some(said) = crate::ingest::gap::server_lost_wal(&e) {
                    // Nothing gets past lost WAL but an operator's decision: stop, say
                    // exactly what is lost, and leave the reason for `status`.
                    let lost = crate::ingest::gap::measure(
                        &params,
                        &conn_target,
                        s.state.tli,
                        s.state.seg,
                        s.state.submitted,
                        ident.xlogpos,
                    )
                    .await
                    .with_context(|| format!("measuring the WAL lost after: {said}"))?;
                    let msg = crate::ingest::gap::lost_message(&lost, s.slot.as_deref(), &said);
                    s.write_status(false, Some(msg.clone()));
                    if let Some(r) = &s.status {
                        r.write_now();
                    }
                    return Err(anyhow!(msg));
                }
                let permanent = e
                    .downcast_ref::<PgError>()
                    .is_some_and(PgError::is_permanent);
                if !ever_streamed && permanent {
                    return Err(e);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "stream failed; reconnecting");
                s.write_status(false, Some(format!("stream failed: {e:#}; reconnecting")));
            }
        }
        if wait_or_stop(backoff, &stop_rx).await {
            return Ok(());
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One streaming session over a walsender connection that is already open and holds
/// `slot` (e.g. a temporary slot that lives only as long as the connection).
pub struct Session<'a> {
    pub slot: &'a str,
    pub system_id: u64,
    pub seg: WalSegSize,
    /// Timeline of `start`.
    pub timeline: TimelineId,
    /// Streaming starts at the beginning of the segment holding it.
    pub start: Lsn,
    /// The timeline of `endpos` (the backup's end timeline).
    pub end_timeline: TimelineId,
    /// Streaming stops once everything before it is archived.
    pub endpos: Lsn,
    /// A spool directory of this session's own (spool files and outbox): never a running
    /// streamer's.
    pub spool_dir: PathBuf,
}

/// Archive the WAL from `s.start` to `s.endpos` over `conn` with the streamer's pipeline:
/// the same objects (`.seg` for complete segments, parts for the tail), sealed the same
/// way, stored in LSN order on every provider. Follows timeline switches. Returns the end
/// position archived (`>= s.endpos`). The caller owns `conn` and the spool directory.
///
/// `lifeboat backup` uses this to archive its own WAL from a temporary slot, as
/// `pg_basebackup -X stream` does.
pub async fn archive_range(
    cfg: &Config,
    archive: &Archive,
    conn: &mut Connection,
    s: Session<'_>,
) -> Result<Lsn> {
    std::fs::create_dir_all(&s.spool_dir).with_context(|| {
        format!(
            "cannot create spool directory {}\nhint: set wal.spool_dir to a writable directory",
            s.spool_dir.display()
        )
    })?;
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.wal.compression_level)?;
    let mut histories = HashSet::new();
    for p in &archive.mirror.providers {
        let inv = archive.inventory(p.as_ref(), s.seg).await?;
        histories.extend(inv.histories.keys().copied());
    }
    let uploader = Uploader::start(
        archive.mirror.providers.clone(),
        sealer,
        s.seg,
        s.spool_dir.join("outbox"),
        cfg.spool_max_size(),
    )?;
    let start = s.start.segment_start(s.seg);
    // Never signalled: the session ends at `endpos` (the sender must outlive it).
    let (_stop_tx, stop_rx) = watch::channel(false);
    let mut streamer = Streamer {
        system_id: s.system_id,
        uploader,
        state: State {
            seg: s.seg,
            tli: s.timeline,
            written: Lsn::INVALID,
            submitted: start,
            acked: start,
            acked_tli: s.timeline,
            pending_since: None,
            spool_dir: s.spool_dir.clone(),
            current: None,
            histories,
        },
        resume_known: true,
        floor_from_slot: false,
        max_delay: cfg.max_delay(),
        status_interval: cfg.status_interval(),
        slot: Some(s.slot.to_string()),
        create_slot: false,
        status: None,
        stop: stop_rx.clone(),
        failed: None,
    };
    let result = streamer
        .follow(conn, Some((s.end_timeline, s.endpos)), &stop_rx)
        .await;
    if matches!(&result, Err(e) if e.is::<ArchivingFailed>()) {
        return result.map(|_| streamer.state.acked);
    }
    streamer.drain().await?;
    match result? {
        Outcome::Done => Ok(streamer.state.acked),
        Outcome::Reconnect(why) => bail!(
            "the WAL stream ended at {} before {}: {why}",
            streamer.state.written,
            s.endpos
        ),
    }
}

/// Resolves once a stop is asked for.
async fn stop_requested(stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = crate::ingest::notify::keep_alive(tokio::time::sleep(d)) => false,
        _ = stop.changed() => true,
    }
}

enum Outcome {
    Done,
    Reconnect(String),
}

struct Streamer {
    system_id: u64,
    uploader: Uploader,
    state: State,
    resume_known: bool,
    /// The spool had no acknowledged position (a first run, or a lost spool): the archive's
    /// newest end may lie beyond a hole, so the slot's restart_lsn (what an earlier run
    /// reported durable) is the floor the first start may not pass.
    floor_from_slot: bool,
    max_delay: Duration,
    status_interval: Duration,
    slot: Option<String>,
    create_slot: bool,
    /// Writes `<spool>/status.json` for `lifeboat status` (the service, not a backup's
    /// own session).
    status: Option<StatusReporter>,
    /// True once a stop is asked for.
    stop: watch::Receiver<bool>,
    /// Why the archiving pipeline failed, once it has (see [`ArchivingFailed`]).
    failed: Option<String>,
}

/// A task that rewrites `<spool>/status.json` every second from a shared snapshot, so the
/// report stays fresh even while the streamer waits (e.g. on a full spool).
struct StatusReporter {
    shared: std::sync::Arc<std::sync::Mutex<crate::ingest::status::StreamStatus>>,
    health: std::sync::Arc<std::sync::Mutex<crate::ingest::outbox::Health>>,
    spool_dir: PathBuf,
    task: JoinHandle<()>,
}

impl StatusReporter {
    fn start(
        spool_dir: PathBuf,
        health: std::sync::Arc<std::sync::Mutex<crate::ingest::outbox::Health>>,
    ) -> StatusReporter {
        let shared =
            std::sync::Arc::new(std::sync::Mutex::new(crate::ingest::status::StreamStatus {
                pid: std::process::id(),
                updated: 0,
                timeline: None,
                received: Lsn::INVALID,
                acknowledged: Lsn::INVALID,
                connected: false,
                error: Some("starting".into()),
                delivery: crate::ingest::outbox::Health::default(),
            }));
        let snap = shared.clone();
        let (dir, h) = (spool_dir.clone(), health.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                write_status_file(&snap, &h, &dir);
            }
        });
        StatusReporter {
            shared,
            health,
            spool_dir,
            task,
        }
    }

    /// Write the status file now (the last word of a run that ends).
    fn write_now(&self) {
        write_status_file(&self.shared, &self.health, &self.spool_dir);
    }
}

fn write_status_file(
    snap: &std::sync::Mutex<crate::ingest::status::StreamStatus>,
    health: &std::sync::Mutex<crate::ingest::outbox::Health>,
    spool_dir: &Path,
) {
    let mut st = snap.lock().expect("not poisoned").clone();
    st.updated = crate::ingest::status::now();
    st.delivery = health.lock().expect("not poisoned").clone();
    crate::ingest::notify::status(&crate::ingest::notify::status_line(&st));
    if let Err(e) = crate::ingest::status::write(spool_dir, &st) {
        tracing::debug!(error = %e, "cannot write the status file");
    }
}

impl Drop for StatusReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Streamer {
    /// Send the standby status update: written, and acknowledged as the flush position.
    async fn report(&self, conn: &mut Connection) -> Result<()> {
        conn.send_status(self.state.written, self.state.acked, false)
            .await?;
        crate::ingest::metrics::get().reported(self.state.acked);
        Ok(())
    }

    /// Update what `lifeboat status` will read (written by the reporter task).
    fn write_status(&self, connected: bool, error: Option<String>) {
        let Some(r) = &self.status else {
            return;
        };
        if connected {
            crate::ingest::notify::ready();
        }
        let mut st = r.shared.lock().expect("not poisoned");
        st.timeline = Some(self.state.tli);
        st.received = self.state.written;
        st.acknowledged = self.state.acked;
        st.connected = connected;
        st.error = error;
    }

    /// Wait until everything submitted is stored. Fails at once when the pipeline has
    /// failed ([`ArchivingFailed`]), and with [`StoppedUnfinished`] when a stop is asked
    /// for and no acknowledgement came for [`STOP_PATIENCE`].
    async fn drain(&mut self) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut progress = Instant::now();
        while (self.state.acked_tli, self.state.acked) < (self.state.tli, self.state.submitted) {
            self.check_pipeline()?;
            tokio::select! {
                a = self.uploader.acks.recv() => match a {
                    Some(a) => {
                        self.on_ack(a)?;
                        progress = Instant::now();
                    }
                    None => return Err(self.fail("the archiving task stopped".into())),
                },
                _ = tick.tick() => {
                    crate::ingest::notify::watchdog();
                    if *self.stop.borrow() && progress.elapsed() >= STOP_PATIENCE {
                        return Err(StoppedUnfinished.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Remember that the pipeline failed; the error that ends the run.
    fn fail(&mut self, why: String) -> anyhow::Error {
        let why = self.failed.get_or_insert(why).clone();
        tracing::debug!(error = why, "the archiving pipeline failed");
        ArchivingFailed(why).into()
    }

    fn on_ack(&mut self, a: Ack) -> Result<()> {
        let (tli, end) = a.map_err(|e| self.fail(e))?;
        if (tli, end) > (self.state.acked_tli, self.state.acked) {
            self.state.acked_tli = tli;
            self.state.acked = end;
        }
        Ok(())
    }

    /// Take the acknowledgements that are waiting, and fail if the pipeline has failed or
    /// one of its tasks ended.
    fn check_pipeline(&mut self) -> Result<()> {
        while let Ok(a) = self.uploader.acks.try_recv() {
            self.on_ack(a)?;
        }
        if let Some(why) = &self.failed {
            return Err(ArchivingFailed(why.clone()).into());
        }
        if self.uploader.storer.is_finished() || !self.uploader.delivery.is_running() {
            return Err(self.fail("the archiving task stopped".into()));
        }
        Ok(())
    }

    /// Hand jobs to the pipeline. Waits while it is full; once a stop is asked for, for
    /// [`STOP_PATIENCE`] at most.
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        for j in jobs {
            let submitted = tokio::select! {
                r = crate::ingest::notify::keep_alive(self.uploader.submit(j)) => Some(r),
                _ = stop_patience_over(self.stop.clone()) => None,
            };
            match submitted {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    // The pipeline ended: report why, if it said.
                    self.check_pipeline()?;
                    return Err(self.fail(format!("{e:#}")));
                }
                None => return Err(StoppedUnfinished.into()),
            }
        }
        Ok(())
    }

    /// Log that the run stops with WAL that is not stored (and so not acknowledged).
    fn warn_unfinished(&self) {
        tracing::warn!(
            acknowledged = %self.state.acked,
            received = %self.state.written,
            "stopping with WAL not yet stored on every provider: it is not acknowledged, so the replication slot keeps it and the next start archives it"
        );
    }

    async fn ensure_history(&mut self, conn: &mut Connection, tli: TimelineId) -> Result<()> {
        if tli.0 <= 1 || self.state.histories.contains(&tli) {
            return Ok(());
        }
        let content = conn.timeline_history(tli).await?;
        let text = String::from_utf8_lossy(&content);
        let hist = TimelineHistory::parse(&text)
            .with_context(|| format!("timeline history of timeline {tli}"))?;
        let parent = hist
            .parent()
            .ok_or_else(|| anyhow!("the history file of timeline {tli} is empty"))?
            .clone();
        let name = SegmentName {
            tli,
            log: 0,
            seg: 0,
        };
        self.submit(vec![Job {
            name,
            kind: JobKind::History {
                parent: parent.tli,
                switch: parent.switch_lsn,
                content,
            },
            spool: PathBuf::new(),
            // A history file makes no WAL durable: it acknowledges what already is.
            end: self.state.acked,
        }])
        .await?;
        self.drain().await?;
        self.state.histories.insert(tli);
        tracing::info!(timeline = %tli, parent = %parent.tli, switch = %parent.switch_lsn, "archived timeline history");
        Ok(())
    }

    /// Continue on timeline `next`, which branched off the current one at `at`. The WAL
    /// up to `at` is shared history: what was acknowledged of it stays acknowledged, and
    /// nothing past `at` is (on the new timeline it is other WAL).
    fn switch_timeline(&mut self, next: TimelineId, at: Lsn) {
        self.state.tli = next;
        // Parts of the new timeline's first segment start at its offset 0.
        self.state.submitted = at.segment_start(self.state.seg);
        self.state.acked = self.state.acked.min(at);
        self.state.acked_tli = next;
    }

    /// Bring the archive's position onto the server's history before streaming. A server
    /// on a newer timeline than the archive (a promoted standby, a cluster restored to a
    /// point in time) descends from the archive's timeline at a fork: when the archive
    /// ends before the fork, the server ends the old timeline there and the stream follows
    /// it; when the archive holds WAL of the old timeline past the fork (a standby that
    /// lagged was promoted), that WAL is not in the server's history, so archiving goes on
    /// from the fork on the child timeline, and the flush position reported to this server
    /// never passes the fork before the new timeline's WAL is stored.
    async fn reconcile_timeline(
        &mut self,
        conn: &mut Connection,
        server_tli: TimelineId,
    ) -> Result<()> {
        let tli = self.state.tli;
        if server_tli == tli {
            return Ok(());
        }
        let (target, archived) = (conn.target.clone(), self.state.submitted);
        let not_ours = |why: String| {
            anyhow!(
                "the server at {target} is on timeline {server_tli}, {why}; the archive ends at {archived} on timeline {tli}\nhint: point postgres.conninfo at the current primary of the archived cluster (or one of its standbys); a server whose history leaves the archive's is a different branch: archive it to a new storage prefix"
            )
        };
        if server_tli < tli {
            return Err(not_ours(format!(
                "older than the archive's timeline {tli} (a former primary that was not rebuilt after a failover?)"
            )));
        }
        let content = conn.timeline_history(server_tli).await?;
        let hist = TimelineHistory::parse(&String::from_utf8_lossy(&content))
            .with_context(|| format!("timeline history of timeline {server_tli}"))?;
        let Some(i) = hist.entries.iter().position(|e| e.tli == tli) else {
            return Err(not_ours(format!(
                "whose history does not contain timeline {tli}"
            )));
        };
        let fork = hist.entries[i].switch_lsn;
        self.mirror_abandoned(tli, fork).await?;
        if self.state.submitted <= fork {
            // The server ends timeline `tli` at the fork and the stream follows it.
            return Ok(());
        }
        let child = hist.entries.get(i + 1).map_or(server_tli, |e| e.tli);
        tracing::warn!(
            timeline = %tli,
            fork = %fork,
            archived = %self.state.submitted,
            next = %child,
            "the server's history left timeline {tli} at {fork}, before the archive's end: the archived WAL of timeline {tli} after {fork} is not part of it (a standby that lagged was promoted, or a cluster restored to an earlier point). That WAL stays in the archive (a restore can still reach it with --target-timeline {tli}); archiving goes on on timeline {child} from {fork}"
        );
        self.switch_timeline(child, fork);
        Ok(())
    }

    /// WAL of timeline `tli` past `fork`, where the server's history left it, is streamed
    /// by no server again: a provider that lacks such an object (it was down or slow when
    /// the others stored it, and lifeboat stopped before it caught up) gets a copy from one
    /// that holds it, through the outbox like any object, so every provider keeps the
    /// abandoned branch a restore with `--target-timeline` may need. The copies are
    /// submitted before any WAL of the new timeline: nothing of it is acknowledged before
    /// they are stored everywhere or in the fsync'd outbox (a crash before that resumes on
    /// `tli` and copies again).
    async fn mirror_abandoned(&mut self, tli: TimelineId, fork: Lsn) -> Result<()> {
        let seg = self.state.seg;
        let providers = self.uploader.providers.clone();
        let prefix = format!("wal/{:08X}/", tli.0);
        // Each provider's keys of the branch past the fork; `None`: it cannot list now.
        let mut held: Vec<Option<HashSet<String>>> = Vec::new();
        for p in &providers {
            match p.list(&prefix).await {
                // The segments that end past the fork (a listing of a long timeline is
                // large; only these matter).
                Ok(listed) => held.push(Some(
                    listed
                        .into_iter()
                        .map(|m| m.key)
                        .filter(|k| {
                            catalog::parse_wal_key(k, seg)
                                .is_some_and(|o| o.segno.start_lsn(seg).0 + seg.bytes() > fork.0)
                        })
                        .collect(),
                )),
                Err(e) => {
                    tracing::warn!(provider = p.name(), error = %e, "cannot list the WAL of timeline {tli}: every object of it past {fork} is copied to this provider");
                    held.push(None);
                }
            }
        }
        // Every object past the fork, in key order (segment, then start).
        let listed: std::collections::BTreeSet<String> = held
            .iter()
            .flatten()
            .flatten()
            .filter(|k| catalog::parse_wal_key(k, seg).is_some_and(|o| o.end_lsn(seg) > fork))
            .cloned()
            .collect();
        // A part whose complete segment some provider holds adds nothing: the segment is
        // what gets copied.
        let past_fork: Vec<String> = listed
            .iter()
            .filter(|k| !catalog::superseding_segment_key(k).is_some_and(|s| listed.contains(&s)))
            .cloned()
            .collect();
        let held_keys: Vec<Option<Vec<&str>>> = held
            .iter()
            .map(|h| {
                h.as_ref()
                    .map(|keys| keys.iter().map(String::as_str).collect())
            })
            .collect();
        let lacks = |i: usize, key: &str| match (&held[i], &held_keys[i]) {
            (Some(set), Some(keys)) => !set.contains(key) && !catalog::part_covered(key, keys),
            _ => true,
        };
        let mut copied = 0;
        for key in past_fork {
            let lacking: Vec<&str> = (0..providers.len())
                .filter(|&i| lacks(i, &key))
                .map(|i| providers[i].name())
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let mut good = None;
            for (i, p) in providers.iter().enumerate() {
                if !held[i].as_ref().is_some_and(|k| k.contains(&key)) {
                    continue;
                }
                match p.get(&key).await {
                    Ok(Some(b)) if crate::pipeline::check(&b).is_ok() => {
                        good = Some(b);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(provider = p.name(), key, error = %e, "cannot read a copy")
                    }
                }
            }
            let Some(sealed) = good else {
                tracing::warn!(key, lacking = lacking.join(", "), "WAL of the abandoned timeline {tli} that some providers lack has no readable copy now: `lifeboat verify --providers --repair` copies it later");
                continue;
            };
            tracing::info!(key, to = lacking.join(", "), "copying WAL of the abandoned timeline {tli} (past {fork}) to the providers that lack it");
            let name = catalog::parse_wal_key(&key, seg)
                .expect("listed above as a WAL key")
                .name;
            self.submit(vec![Job {
                name,
                kind: JobKind::Copy { key, sealed },
                spool: PathBuf::new(),
                end: self.state.acked,
            }])
            .await?;
            copied += 1;
        }
        if copied > 0 {
            tracing::warn!(objects = copied, "WAL of timeline {tli} past {fork}, which the server's history left, was on some providers only: copied to the others");
        }
        Ok(())
    }

    async fn stream(
        &mut self,
        conn: &mut Connection,
        server_tli: TimelineId,
        server_pos: Lsn,
        endpos: Option<(TimelineId, Lsn)>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Outcome> {
        let seg = self.state.seg;
        if let Some(slot) = self.slot.clone() {
            if self.create_slot {
                if conn.create_physical_slot(&slot, false).await? {
                    if self.resume_known {
                        // Never silently: a slot that vanished under an archive may have
                        // let the server remove WAL the archive lacks (the start checks).
                        tracing::warn!(slot, archived = %self.state.submitted, "the replication slot did not exist on the server and was created again: if it was dropped, WAL after the archive's end may be gone (streaming from there stops with an explanation if it is)");
                    } else {
                        tracing::info!(slot, "created physical replication slot");
                    }
                }
            } else if let Some(info) = conn.read_replication_slot(&slot).await? {
                if info.restart_lsn.is_none() {
                    return Err(PgError::SlotMissing { slot }.into());
                }
            }
        }
        if std::mem::take(&mut self.floor_from_slot) {
            if let Some(slot) = self.slot.clone() {
                let info = conn.read_replication_slot(&slot).await?;
                match info.and_then(|i| Some((i.restart_tli?, i.restart_lsn?))) {
                    Some(floor) if floor < (self.state.tli, self.state.submitted) => {
                        tracing::info!(slot, restart_lsn = %floor.1, archived = %self.state.submitted, "no acknowledged position in the spool: resuming from the slot's restart_lsn; newer objects are sent again");
                        self.state.tli = floor.0;
                        self.state.submitted = floor.1.segment_start(seg);
                        self.state.acked = floor.1;
                        self.state.acked_tli = floor.0;
                    }
                    Some(_) => {}
                    None => tracing::warn!(slot, "no acknowledged position in the spool, and the slot's restart_lsn cannot be read here (READ_REPLICATION_SLOT needs PostgreSQL 15): resuming from the archive's newest end"),
                }
            }
        }
        if !self.resume_known {
            // Empty archive: start where the slot holds WAL, else at the server's position.
            let mut start = (server_tli, server_pos);
            if let Some(slot) = self.slot.clone() {
                if let Some(info) = conn.read_replication_slot(&slot).await? {
                    if let (Some(l), Some(t)) = (info.restart_lsn, info.restart_tli) {
                        start = (t, l);
                    }
                }
            }
            self.state.tli = start.0;
            self.state.acked_tli = start.0;
            self.state.submitted = start.1.segment_start(seg);
            // Nothing before the start is the archive's to hold: the first drain (a history
            // file on a timeline above 1) must not wait for an acknowledgement of it.
            self.state.acked = self.state.submitted;
            self.resume_known = true;
            tracing::info!(timeline = %start.0, start = %self.state.submitted, "archive is empty: starting at the server's position");
        }
        self.reconcile_timeline(conn, server_tli).await?;
        self.follow(conn, endpos, stop).await
    }

    /// Stream from the start of the segment holding `state.submitted` on `state.tli`,
    /// following timeline switches, until `endpos` is archived, a stop, or the server ends
    /// the stream. The slot, if any, must exist.
    async fn follow(
        &mut self,
        conn: &mut Connection,
        endpos: Option<(TimelineId, Lsn)>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Outcome> {
        let seg = self.state.seg;
        loop {
            let tli = self.state.tli;
            self.ensure_history(conn, tli).await?;
            let start = self.state.submitted.segment_start(seg);
            self.state.written = start;
            self.state.current = None;
            tracing::info!(timeline = %tli, start = %start, "starting replication");
            let outbox = self.state.spool_dir.join("outbox");
            crate::ingest::outbox::ensure_acknowledged(&outbox, tli, start).with_context(|| {
                format!(
                    "cannot record the starting position in {}\nhint: check wal.spool_dir",
                    self.state.spool_dir.display()
                )
            })?;
            let outcome = conn
                .start_replication(self.slot.as_deref(), start, tli)
                .await?;
            let next = match outcome {
                StartOutcome::TimelineEnded {
                    next_tli,
                    next_start,
                } => Some((next_tli, next_start)),
                StartOutcome::Streaming => match self.copy_both(conn, endpos, stop).await? {
                    CopyEnd::TimelineEnded(n) => n,
                    CopyEnd::Stopped => return Ok(Outcome::Done),
                    CopyEnd::ServerShutdown => {
                        return Ok(Outcome::Reconnect("the server shut down".into()))
                    }
                    CopyEnd::ServerWaiting => {
                        return Ok(Outcome::Reconnect(
                            "disconnected: the server waited for an acknowledgement".into(),
                        ))
                    }
                },
            };
            let Some((next_tli, next_start)) = next else {
                return Ok(Outcome::Reconnect("the server ended the stream".into()));
            };
            // The old timeline's last segment is partial: archive its tail, then follow.
            if let Some(j) = self.state.take_part(true) {
                self.submit(vec![j]).await?;
            }
            self.drain().await?;
            if let Some(cur) = self.state.current.take() {
                let _ = std::fs::remove_file(cur.path);
            }
            tracing::info!(from = %tli, to = %next_tli, at = %next_start, "timeline switch");
            self.switch_timeline(next_tli, next_start);
        }
    }

    /// Stop cleanly: archive the tail, report it, then end the COPY.
    async fn finish_copy(&mut self, conn: &mut Connection) -> Result<()> {
        if let Some(j) = self.state.take_part(false) {
            self.submit(vec![j]).await?;
        }
        self.drain().await?;
        self.report(conn).await?;
        conn.stop_streaming().await?;
        Ok(())
    }

    async fn copy_both(
        &mut self,
        conn: &mut Connection,
        endpos: Option<(TimelineId, Lsn)>,
        stop: &watch::Receiver<bool>,
    ) -> Result<CopyEnd> {
        let mut stop = stop.clone();
        let tick =
            (self.max_delay / 4).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = Instant::now();
        let mut reported = Lsn::INVALID;
        self.write_status(true, None);
        let mut last_report = Instant::now();
        // Since when the server has been asking for replies, one after another (as a
        // shutdown does, not as an idle server's keepalive every wal_sender_timeout / 2),
        // at this end of its WAL while the acknowledgement lags behind it; and its last ask.
        let mut server_waits: Option<(Lsn, Instant, Instant)> = None;
        self.report(conn).await?;
        loop {
            tokio::select! {
                ev = conn.next_event() => {
                    match ev? {
                        StreamEvent::Wal { start, data, server_end } => {
                            crate::ingest::metrics::get().server_at(server_end);
                            let jobs = self.state.write(start, &data)?;
                            self.submit(jobs).await?;
                            if let Some(end) = endpos {
                                if (self.state.tli, self.state.written) >= end {
                                    self.finish_copy(conn).await?;
                                    tracing::info!(endpos = %end.1, timeline = %end.0, archived = %self.state.acked, "end position reached and archived");
                                    return Ok(CopyEnd::Stopped);
                                }
                            }
                        }
                        StreamEvent::Keepalive { wal_end, reply_requested } => {
                            crate::ingest::metrics::get().server_at(wal_end);
                            if reply_requested {
                                // The server waits on us (e.g. to shut down): send the tail now.
                                if self.state.written >= wal_end {
                                    if let Some(j) = self.state.take_part(false) {
                                        self.submit(vec![j]).await?;
                                    }
                                }
                                self.report(conn).await?;
                                last_status = Instant::now();
                                reported = self.state.acked;
                                if self.state.written >= wal_end && self.state.acked < wal_end {
                                    match &mut server_waits {
                                        Some((end, since, last))
                                            if *end == wal_end
                                                && last.elapsed() < Duration::from_secs(1) =>
                                        {
                                            *last = Instant::now();
                                            if since.elapsed() >= SERVER_WAIT_PATIENCE {
                                                tracing::warn!(
                                                    acknowledged = %self.state.acked,
                                                    server_end = %wal_end,
                                                    waited = ?since.elapsed(),
                                                    "the server waits for an acknowledgement lifeboat cannot give yet (a provider is slow or the spool is full): disconnecting so that it is not held; the slot keeps the WAL"
                                                );
                                                return Ok(CopyEnd::ServerWaiting);
                                            }
                                        }
                                        _ => {
                                            server_waits =
                                                Some((wal_end, Instant::now(), Instant::now()))
                                        }
                                    }
                                } else {
                                    server_waits = None;
                                }
                            }
                        }
                        StreamEvent::Ended { next } => return Ok(CopyEnd::TimelineEnded(next)),
                        StreamEvent::ServerShutdown => return Ok(CopyEnd::ServerShutdown),
                    }
                }
                ack = self.uploader.acks.recv() => {
                    match ack {
                        Some(a) => self.on_ack(a)?,
                        None => return Err(self.fail("the archiving task stopped".into())),
                    }
                }
                _ = ticker.tick() => {
                    crate::ingest::notify::watchdog();
                    self.check_pipeline()?;
                    if let Some(since) = self.state.pending_since {
                        if since.elapsed() >= self.max_delay {
                            if let Some(j) = self.state.take_part(false) {
                                self.submit(vec![j]).await?;
                            }
                        }
                    }
                }
                _ = stop.changed() => {
                    self.finish_copy(conn).await?;
                    return Ok(CopyEnd::Stopped);
                }
            }
            if self.state.acked != reported || last_status.elapsed() >= self.status_interval {
                self.report(conn).await?;
                reported = self.state.acked;
                last_status = Instant::now();
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                self.write_status(true, None);
                last_report = Instant::now();
            }
        }
    }
}

enum CopyEnd {
    TimelineEnded(Option<(TimelineId, Lsn)>),
    Stopped,
    ServerShutdown,
    /// The server kept asking for an acknowledgement that cannot come yet.
    ServerWaiting,
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.storer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        let id = age::x25519::Identity::generate();
        Sealer::new(&[id.to_public().to_string()], 1).expect("sealer")
    }

    /// A spool file that yields fewer bytes than its range (truncated while it is read)
    /// must fail the seal, not become a short object. A sysfs file stands in for the
    /// truncation: its size says 4096 bytes and reading it yields a few.
    #[test]
    fn a_spool_file_shorter_than_its_range_fails_the_seal() {
        let short = Path::new("/sys/devices/system/cpu/online");
        let Ok(meta) = std::fs::metadata(short) else {
            eprintln!("skipped: no {}", short.display());
            return;
        };
        let got = std::fs::read(short).expect("read").len() as u64;
        assert!(got < meta.len(), "{} is not short", short.display());
        let err = seal_range(&sealer(), short, 0, meta.len())
            .expect_err("a short read must fail the seal");
        assert_eq!(
            format!("{err:#}"),
            format!("read {got} bytes to seal, expected {} (the source was truncated or changed while it was read)", meta.len())
        );
    }

    #[test]
    fn a_range_is_sealed_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("seg.partial");
        std::fs::write(&p, vec![7u8; 10_000]).expect("write");
        let s = seal_range(&sealer(), &p, 1000, 9000).expect("seal");
        assert_eq!(s.plain_len, 8000);
        // Shorter than the range: refused before reading.
        assert!(seal_range(&sealer(), &p, 0, 10_001).is_err());
    }
}
