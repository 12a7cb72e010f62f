//! Cutting byte streams into parts and sealing and storing them in parallel, bounded: the
//! machinery `backup` (tar streams of BASE_BACKUP) and `dump` (pg_dump's output) share.
//!
//! Invariants: at most `cores` parts are being sealed and at most `cores + 2` sealed parts
//! are being stored; when all slots are taken, `push` waits (and so does whoever feeds it:
//! the server, or pg_dump's pipe). A part is on every provider before `finish` returns it.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::core::catalog::{self, BackupPart};
use crate::pipeline::{BufPool, Sealer};
use crate::storage::Mirror;

/// Cuts tar streams into parts and seals and stores them in parallel, bounded.
pub struct PartWriter {
    mirror: Mirror,
    sealer: Sealer,
    /// Where the parts go: `backups/<ID>/`, `dumps/<ID>/`.
    prefix: String,
    part_size: usize,
    slots: Arc<Semaphore>,
    /// Sealed parts being written to the providers.
    store_slots: Arc<Semaphore>,
    /// Part buffers, reused: one per slot plus the one being filled.
    buffers: BufPool,
    tasks: JoinSet<Result<BackupPart>>,
    done: Vec<BackupPart>,
    /// The tar being received: name, next sequence number, buffered bytes.
    cur: Option<(String, u32, Vec<u8>)>,
}

impl PartWriter {
    pub fn new(mirror: Mirror, sealer: Sealer, prefix: String, part_size: usize) -> PartWriter {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PartWriter {
            mirror,
            sealer,
            prefix,
            part_size,
            // One part sealing per core.
            slots: Arc::new(Semaphore::new(cores)),
            store_slots: Arc::new(Semaphore::new(cores + 2)),
            buffers: BufPool::new(cores + 2),
            tasks: JoinSet::new(),
            done: Vec::new(),
            cur: None,
        }
    }

    /// Collect finished parts; fail on the first error.
    fn reap(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.try_join_next() {
            self.done
                .push(r.map_err(|e| anyhow!("a part task failed: {e}"))??);
        }
        Ok(())
    }

    pub async fn begin_tar(&mut self, name: String) -> Result<()> {
        self.end_tar().await?;
        if self.done.iter().any(|p| p.tar == name) {
            bail!("the server sent archive {name} twice");
        }
        self.cur = Some((name, 0, self.buffers.take(self.part_size)));
        Ok(())
    }

    /// Push every chunk a producer task sends until it closes the channel, or stop at the
    /// first failed push (the caller drops `rx`, so the producer's next send fails and it
    /// ends; its own error is the caller's to take).
    pub async fn push_all(&mut self, rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Result<()> {
        while let Some(chunk) = rx.recv().await {
            self.push(&chunk).await?;
        }
        Ok(())
    }

    pub async fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let part_size = self.part_size;
            let (_, _, buf) = self
                .cur
                .as_mut()
                .ok_or_else(|| anyhow!("the server sent archive data before an archive began"))?;
            let n = (part_size - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == part_size {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    /// Hand the buffered bytes of the current tar to a sealing task.
    pub async fn flush_part(&mut self) -> Result<()> {
        let part_size = self.part_size;
        let Some((tar, seq, buf)) = self.cur.as_mut() else {
            return Ok(());
        };
        let data = std::mem::replace(buf, self.buffers.take(part_size));
        let (tar, this) = (tar.clone(), *seq);
        *seq += 1;
        self.reap()?;
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let key = catalog::stream_part_key(&self.prefix, &tar, this);
        let sealer = self.sealer.clone();
        let mirror = self.mirror.clone();
        let buffers = self.buffers.clone();
        let store_slots = self.store_slots.clone();
        self.tasks.spawn(async move {
            let plain_len = data.len() as u64;
            let seal = sealer.clone();
            let (sealed, data) = tokio::task::spawn_blocking(move || (seal.seal(&data[..]), data))
                .await
                .map_err(|e| anyhow!("sealing task failed: {e}"))?;
            buffers.give(data);
            let sealed = sealed?;
            // Hold the sealing slot until a store slot is free, so sealed parts waiting to
            // be stored stay bounded too.
            let _store = store_slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            drop(permit);
            let part = BackupPart {
                key: key.clone(),
                tar,
                seq: this,
                plain_len,
                stored_len: sealed.stored_len(),
                crc32: sealed.crc32,
            };
            let bytes = Bytes::from(sealed.bytes);
            mirror.put(&key, bytes.clone()).await?;
            // Every provider is done with it: its buffer serves the next part.
            if let Ok(b) = bytes.try_into_mut() {
                sealer.recycle(b.into());
            }
            tracing::debug!(
                key,
                plain = plain_len,
                stored = part.stored_len,
                "part stored"
            );
            Ok(part)
        });
        Ok(())
    }

    /// The current tar is complete: its last (possibly short) part goes out.
    pub async fn end_tar(&mut self) -> Result<()> {
        if self.cur.is_some() {
            self.flush_part().await?;
            if let Some((_, _, buf)) = self.cur.take() {
                self.buffers.give(buf);
            }
        }
        Ok(())
    }

    /// After a failure: wait until every part task has ended (stored or failed), so that
    /// nothing lands after the caller removes what was written. Dropping the writer instead
    /// would abort the tasks at their next await, but a part already handed to a blocking
    /// write would still land, after the cleanup had listed the prefix.
    pub async fn settle(mut self) {
        self.cur = None;
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait for every part; returns them in (tar order of `tars`, seq) order.
    pub async fn finish(mut self, tars: &[String]) -> Result<Vec<BackupPart>> {
        self.end_tar().await?;
        while let Some(r) = self.tasks.join_next().await {
            self.done
                .push(r.map_err(|e| anyhow!("a part task failed: {e}"))??);
        }
        let order = |t: &str| tars.iter().position(|x| x == t).unwrap_or(usize::MAX);
        self.done.sort_by_key(|p| (order(&p.tar), p.seq));
        Ok(self.done)
    }
}

/// A fresh id for something that starts at `base` (`YYYYMMDDTHHMMSSZ`): `base` itself, or
/// `base-N` when the first provider already holds objects under `prefix(id)` (two backups,
/// dumps or exports in the same second). `what` names it in the error.
pub async fn fresh_id(
    mirror: &Mirror,
    base: &str,
    prefix: impl Fn(&str) -> String,
    what: &str,
) -> Result<String> {
    let first = mirror
        .providers
        .first()
        .ok_or_else(|| anyhow!("no storage provider"))?;
    for n in 0..1000u32 {
        let id = if n == 0 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        };
        if first.list(&prefix(&id)).await?.is_empty() {
            return Ok(id);
        }
    }
    bail!("cannot find a free {what} id for {base}")
}
