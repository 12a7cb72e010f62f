//! Delivery of sealed objects to every provider through an fsync'd outbox.
//!
//! Sealed objects are handed to one lane per provider. Each lane starts its objects in
//! order with up to [`LANE_IN_FLIGHT`] writes at once (hiding an object store's
//! per-request latency) and retries each with backoff; a provider whose write fails is marked down
//! until a write succeeds again. While every provider is up, objects stay in memory only
//! (acknowledged when all have them); when one goes down, every object it still lacks is
//! written to `<spool>/outbox/` and fsync'd, and so is every new object until it is back.
//!
//! Which provider is down, what goes to the outbox, what may be acknowledged and what may be
//! forgotten are decided by the pure [`Ledger`]; the loop here only does the I/O
//! (channels, retried writes, the fsync'd outbox, the acknowledged-position file).
//!
//! Invariants:
//! - An object's end position is acknowledged once, for every provider, it is stored there
//!   or the provider is down and the object is in the fsync'd outbox (the documented
//!   default policy). Acknowledgements are in order and never go backwards (see
//!   [`crate::core::ledger`]).
//! - An outbox file is deleted only when every provider has stored it; after a crash the
//!   outbox is replayed to every provider before anything newer.
//! - When the outbox reaches its size limit no new object is accepted, so nothing more is
//!   acknowledged: the replication slot holds the WAL on the server. This is logged loudly.
//! - Several writes in flight mean a crash can leave a provider with an object and without
//!   the one before it. So every acknowledged position is first written durably to
//!   `<spool>/acknowledged`; a restart resumes from there when it is behind the archive's
//!   newest object, re-sending whatever a hole may hide. Objects in memory are bounded by
//!   [`MEM_LIMIT`]: a slow provider slows acceptance instead of growing the heap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::ledger::Ledger;
use crate::core::wal::{Lsn, TimelineId};
use crate::storage::durable;
use crate::storage::ObjectStore;

/// Writes in flight per provider.
pub const LANE_IN_FLIGHT: usize = 4;

/// Sealed bytes held in memory (not yet on every provider, not in the outbox) before new
/// objects wait.
const MEM_LIMIT: u64 = 48 << 20;

/// The file beside the outbox directory holding the last acknowledged position.
const ACKNOWLEDGED: &str = "acknowledged";

/// `<spool>/acknowledged` for the outbox `<spool>/outbox`.
fn ack_path(outbox: &Path) -> PathBuf {
    outbox.parent().unwrap_or(outbox).join(ACKNOWLEDGED)
}

/// A sealed object on its way out.
pub struct Outgoing {
    pub key: String,
    /// The WAL position (and its timeline) this object makes durable (`None`:
    /// acknowledges nothing).
    pub end: Option<(TimelineId, Lsn)>,
    pub bytes: Bytes,
    /// A raw spool file that may go once the object is in the outbox.
    pub remove_after: Option<PathBuf>,
}

struct Obj {
    seq: u64,
    key: String,
    len: u64,
    body: Mutex<Body>,
}

/// In memory until spooled; then only in the outbox file.
struct Body {
    mem: Option<Bytes>,
    spooled: Option<PathBuf>,
}

impl Obj {
    fn body(&self) -> std::io::Result<Bytes> {
        let path = {
            let b = self.body.lock().expect("not poisoned");
            if let Some(m) = &b.mem {
                return Ok(m.clone());
            }
            b.spooled.clone()
        };
        let path = path.ok_or_else(|| std::io::Error::other("object has no body"))?;
        let raw = std::fs::read(&path)?;
        let (_, body) = split_outbox_file(&raw).ok_or_else(|| {
            std::io::Error::other(format!("outbox file {} is damaged", path.display()))
        })?;
        Ok(Bytes::copy_from_slice(body))
    }

    /// Write to the outbox (fsync'd) and drop the in-memory copy.
    async fn spool(&self, dir: &Path) -> std::io::Result<()> {
        let data = {
            let b = self.body.lock().expect("not poisoned");
            if b.spooled.is_some() {
                return Ok(());
            }
            b.mem.clone()
        };
        let data = data.ok_or_else(|| std::io::Error::other("object has no body"))?;
        let (dir, seq, key) = (dir.to_path_buf(), self.seq, self.key.clone());
        let path = tokio::task::spawn_blocking(move || write_durably(&dir, seq, &key, &data))
            .await
            .map_err(std::io::Error::other)??;
        let mut b = self.body.lock().expect("not poisoned");
        b.spooled = Some(path);
        b.mem = None;
        Ok(())
    }
}

enum LaneEvent {
    Stored(usize, u64),
    /// Lane, object sequence number, error.
    Failed(usize, u64, String),
}

/// What the delivery task reports: the new acknowledged position as (timeline, LSN), or
/// why the pipeline failed.
pub type Ack = std::result::Result<(TimelineId, Lsn), String>;

/// One provider as the delivery task sees it, for `lifeboat status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProviderHealth {
    pub name: String,
    pub up: bool,
    /// The last write error while down.
    pub error: Option<String>,
    /// Unix seconds when it went down.
    pub down_since: Option<u64>,
}

/// What the delivery task is doing, for `lifeboat status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub providers: Vec<ProviderHealth>,
    /// Bytes held in the fsync'd outbox for providers that lack them, and the limit.
    pub spool_held: u64,
    pub spool_limit: u64,
    /// False once the outbox is full: nothing new is acknowledged.
    pub acknowledging: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Handle to the delivery task.
pub struct Delivery {
    pub input: mpsc::Sender<Outgoing>,
    pub health: Arc<Mutex<Health>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// False once any of its tasks has ended: they end only on a fatal error (reported on
    /// the acknowledgement channel first) or a panic, and nothing more will be stored.
    pub fn is_running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn outbox_file_bytes(key: &str, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len() + body.len());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(body);
    v
}

fn split_outbox_file(raw: &[u8]) -> Option<(&str, &[u8])> {
    let n = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(raw.get(4..4 + n)?).ok()?;
    Some((key, &raw[4 + n..]))
}

/// Objects left in the outbox by an earlier run, oldest first: (seq, key, path, len).
pub fn leftovers(dir: &Path) -> Result<Vec<(u64, String, PathBuf, u64)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(seq) = name
            .strip_suffix(".obj")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue; // temporary files of an interrupted write
        };
        let raw = std::fs::read(e.path())?;
        match split_outbox_file(&raw) {
            Some((key, body)) if crate::pipeline::check(body).is_ok() => {
                out.push((seq, key.to_string(), e.path(), raw.len() as u64))
            }
            _ => {
                tracing::warn!(file = %e.path().display(), "ignoring a damaged outbox file");
            }
        }
    }
    out.sort_by_key(|o| o.0);
    Ok(out)
}

/// The file in a spool directory naming the database system whose WAL it holds.
const SYSTEM_FILE: &str = "system_identifier";

/// Claim the spool directory `spool` for database system `system_id`, or refuse one that
/// holds another system's state: its outbox would upload that system's WAL into this
/// archive, and its acknowledged position would be taken for this system's. A spool from
/// before this file existed is claimed as it is.
pub fn claim_spool(spool: &Path, system_id: u64) -> Result<()> {
    let path = spool.join(SYSTEM_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == system_id.to_string() => return Ok(()),
        Ok(text) if text.trim().parse::<u64>().is_err() => bail!(
            "{} does not hold a database system identifier\nhint: it names the cluster whose WAL the spool holds; if you know the spool is this cluster's, write {system_id} into it",
            path.display()
        ),
        Ok(text) => bail!(
            "spool directory {} holds the WAL state of database system {}, but the server is system {system_id}\nhint: a spool belongs to one cluster: point wal.spool_dir at an empty directory for this one, and empty the old one only once the other cluster's WAL it holds is archived or no longer needed",
            spool.display(),
            text.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}\nhint: check wal.spool_dir", path.display()))
        }
    }
    durable::replace(
        &path,
        &path.with_extension("tmp"),
        format!("{system_id}\n").as_bytes(),
    )
    .with_context(|| format!("cannot write {}\nhint: check wal.spool_dir", path.display()))
}

/// The last position an earlier run acknowledged, from `<spool>/acknowledged` beside the
/// outbox `dir`.
pub fn acknowledged(dir: &Path) -> Option<(TimelineId, Lsn)> {
    let text = std::fs::read_to_string(ack_path(dir)).ok()?;
    let (tli, lsn) = text.trim().split_once(' ')?;
    Some((tli.parse().ok()?, lsn.parse().ok()?))
}

/// Before the first acknowledgement of a run: record where streaming starts unless a
/// position is recorded already, so that a crash before anything is acknowledged still
/// resumes at or before any hole the run leaves.
pub fn ensure_acknowledged(dir: &Path, tli: TimelineId, lsn: Lsn) -> std::io::Result<()> {
    if ack_path(dir).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(ack_path(dir).parent().expect("has a parent"))?;
    write_acknowledged(dir, tli, lsn)
}

/// Set the acknowledged position outright (`accept-gap` moves it past a recorded gap).
pub fn set_acknowledged(dir: &Path, tli: TimelineId, lsn: Lsn) -> std::io::Result<()> {
    std::fs::create_dir_all(ack_path(dir).parent().expect("has a parent"))?;
    write_acknowledged(dir, tli, lsn)
}

fn write_acknowledged(dir: &Path, tli: TimelineId, lsn: Lsn) -> std::io::Result<()> {
    let path = ack_path(dir);
    durable::replace(
        &path,
        &path.with_extension("tmp"),
        format!("{} {lsn}\n", tli.0).as_bytes(),
    )
}

fn write_durably(dir: &Path, seq: u64, key: &str, body: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{seq:020}.obj"));
    let tmp = dir.join(format!("{seq:020}.tmp"));
    durable::replace(&path, &tmp, &outbox_file_bytes(key, body))?;
    Ok(path)
}

impl Delivery {
    /// Start delivering to `providers`, replaying what an earlier run left in `dir`.
    /// Acknowledged end positions (or a fatal error) are sent on `ack_tx`.
    pub fn start(
        providers: Vec<Arc<dyn ObjectStore>>,
        dir: PathBuf,
        max_bytes: u64,
        ack_tx: mpsc::UnboundedSender<Ack>,
    ) -> Result<Delivery> {
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the outbox {}\nhint: check wal.spool_dir",
                dir.display()
            )
        })?;
        let old = leftovers(&dir)?;
        let (in_tx, mut in_rx) = mpsc::channel::<Outgoing>(1);
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<LaneEvent>();
        let mut tasks = Vec::new();
        let mut lanes = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Obj>>();
            let ev = ev_tx.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let slots = Arc::new(tokio::sync::Semaphore::new(LANE_IN_FLIGHT));
                let mut writes = tokio::task::JoinSet::new();
                while let Some(obj) = rx.recv().await {
                    // Started in order; at most LANE_IN_FLIGHT at once.
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    while writes.try_join_next().is_some() {}
                    let (p, ev) = (p.clone(), ev.clone());
                    writes.spawn(async move {
                        let _permit = permit;
                        let mut backoff = Duration::from_millis(500);
                        loop {
                            let began = std::time::Instant::now();
                            let res = match obj.body() {
                                // A re-send after a lost response may meet a provider
                                // that refuses overwrites: an identical copy is stored.
                                Ok(b) => crate::storage::put_or_identical(p.as_ref(), &obj.key, b)
                                    .await
                                    .map_err(|e| e.to_string()),
                                Err(e) => Err(e.to_string()),
                            };
                            match res {
                                Ok(()) => {
                                    crate::ingest::metrics::get().stored(
                                        p.name(),
                                        obj.len,
                                        began.elapsed(),
                                    );
                                    let _ = ev.send(LaneEvent::Stored(i, obj.seq));
                                    break;
                                }
                                Err(e) => {
                                    crate::ingest::metrics::get().store_failed(p.name());
                                    let _ = ev.send(LaneEvent::Failed(i, obj.seq, e));
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(30));
                                }
                            }
                        }
                    });
                }
                while writes.join_next().await.is_some() {}
            }));
            lanes.push(tx);
        }
        let names: Vec<String> = providers.iter().map(|p| p.name().to_string()).collect();
        let n = providers.len();
        let health = Arc::new(Mutex::new(Health {
            providers: names
                .iter()
                .map(|name| ProviderHealth {
                    name: name.clone(),
                    up: true,
                    ..Default::default()
                })
                .collect(),
            spool_limit: max_bytes,
            acknowledging: true,
            ..Default::default()
        }));
        let shared = health.clone();
        let main = tokio::spawn(async move {
            // What may be acknowledged, which provider is down, what to spool and what to
            // forget are the ledger's decisions; this loop does the I/O they call for.
            let mut ledger = Ledger::new(n);
            // The objects the ledger has not forgotten, by sequence number.
            let mut objs: BTreeMap<u64, Arc<Obj>> = BTreeMap::new();
            let mut bytes_held: u64 = 0;
            // Sealed bytes only in memory.
            let mut mem_held: u64 = 0;
            let mut next_seq: u64 = old.last().map_or(0, |o| o.0 + 1);
            let mut full_logged = false;
            for (seq, key, path, len) in old {
                tracing::info!(key, "replaying an object left in the outbox");
                let obj = Arc::new(Obj {
                    seq,
                    key,
                    len,
                    body: Mutex::new(Body {
                        mem: None,
                        spooled: Some(path),
                    }),
                });
                bytes_held += len;
                for l in &lanes {
                    let _ = l.send(obj.clone());
                }
                ledger.record(seq, None, true);
                objs.insert(seq, obj);
            }
            loop {
                let accept = bytes_held < max_bytes && mem_held < MEM_LIMIT;
                if bytes_held >= max_bytes && !full_logged {
                    tracing::error!(
                        held = bytes_held,
                        limit = max_bytes,
                        "the spool is full while a provider is down: lifeboat stops acknowledging WAL, the replication slot keeps it on the server"
                    );
                    full_logged = true;
                }
                tokio::select! {
                    ev = ev_rx.recv() => {
                        let Some(ev) = ev else { return };
                        match ev {
                            LaneEvent::Stored(l, seq) => {
                                let stored = ledger.stored(l, seq);
                                if stored.back_up {
                                    tracing::warn!(provider = names[l], "provider is back: backfilling from the spool");
                                }
                                if ledger.is_up(l) {
                                    let mut h = shared.lock().expect("not poisoned");
                                    let p = &mut h.providers[l];
                                    p.up = true;
                                    p.error = None;
                                    p.down_since = None;
                                }
                                // Stored everywhere: no lane needs the bytes any more, even
                                // while an older object holds up the queue.
                                if stored.everywhere {
                                    if let Some(obj) = objs.get(&seq) {
                                        if obj.body.lock().expect("not poisoned").mem.take().is_some() {
                                            mem_held = mem_held.saturating_sub(obj.len);
                                        }
                                    }
                                }
                            }
                            LaneEvent::Failed(l, seq, err) => {
                                if ledger.failed(l, seq) {
                                    tracing::error!(provider = names[l], error = %err, "provider is down: WAL is held in the fsync'd spool for it and acknowledged from there");
                                } else {
                                    tracing::debug!(provider = names[l], error = %err, "still down");
                                }
                                {
                                    let mut h = shared.lock().expect("not poisoned");
                                    let p = &mut h.providers[l];
                                    if p.up {
                                        p.down_since = Some(unix_now());
                                    }
                                    p.up = false;
                                    p.error = Some(err.clone());
                                }
                                // Everything it lacks goes to the outbox, in order; it reads
                                // from there when it returns.
                                for seq in ledger.to_spool(l) {
                                    let obj = objs.get(&seq).expect("the ledger lists only objects it holds");
                                    match obj.spool(&dir).await {
                                        Ok(()) => {
                                            ledger.spooled(seq);
                                            bytes_held += obj.len;
                                            mem_held = mem_held.saturating_sub(obj.len);
                                        }
                                        Err(err) => {
                                            tracing::error!(error = %err, dir = %dir.display(), "cannot write the spool outbox: WAL stays unacknowledged\nhint: free space there or set wal.spool_dir");
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    out = in_rx.recv(), if accept => {
                        let Some(out) = out else { return };
                        let seq = next_seq;
                        next_seq += 1;
                        if let Some(raw) = out.remove_after {
                            let _ = std::fs::remove_file(raw);
                        }
                        let obj = Arc::new(Obj {
                            seq,
                            key: out.key,
                            len: out.bytes.len() as u64,
                            body: Mutex::new(Body { mem: Some(out.bytes), spooled: None }),
                        });
                        let spool = ledger.any_down();
                        if spool {
                            // A provider is down: hold this object for it.
                            if let Err(e) = obj.spool(&dir).await {
                                let _ = ack_tx.send(Err(format!("cannot write the spool outbox in {}: {e}\nhint: free space there or set wal.spool_dir", dir.display())));
                                return;
                            }
                            bytes_held += obj.len;
                            full_logged = false;
                        } else {
                            mem_held += obj.len;
                        }
                        for l in &lanes {
                            let _ = l.send(obj.clone());
                        }
                        ledger.record(seq, out.end, spool);
                        objs.insert(seq, obj);
                    }
                }
                {
                    let mut h = shared.lock().expect("not poisoned");
                    h.spool_held = bytes_held;
                    h.acknowledging = bytes_held < max_bytes;
                }
                if let Some((tli, end)) = ledger.acknowledge() {
                    // Durable before PostgreSQL can hear of it: a restart never resumes
                    // past a hole that this acknowledgement did not cover.
                    let d = dir.clone();
                    let written =
                        tokio::task::spawn_blocking(move || write_acknowledged(&d, tli, end))
                            .await
                            .map_err(std::io::Error::other)
                            .and_then(|r| r);
                    if let Err(e) = written {
                        let _ = ack_tx.send(Err(format!("cannot record the acknowledged position in {}: {e}\nhint: free space there or set wal.spool_dir", dir.display())));
                        return;
                    }
                    if ack_tx.send(Ok((tli, end))).is_err() {
                        return;
                    }
                }
                // Forget what every provider has.
                for seq in ledger.forget() {
                    let obj = objs
                        .remove(&seq)
                        .expect("the ledger forgets only recorded objects");
                    let (path, in_mem) = {
                        let mut b = obj.body.lock().expect("not poisoned");
                        (b.spooled.take(), b.mem.take().is_some())
                    };
                    if let Some(path) = path {
                        let _ = std::fs::remove_file(path);
                        bytes_held = bytes_held.saturating_sub(obj.len);
                    }
                    if in_mem {
                        mem_held = mem_held.saturating_sub(obj.len);
                    }
                }
            }
        });
        tasks.push(main);
        Ok(Delivery {
            input: in_tx,
            health,
            tasks,
        })
    }
}
