//! `lifeboat sqlite restore`: the snapshot for a target (the newest at or before a time,
//! one by id, or the newest) and its delta chain applied, full snapshot first, into a
//! temporary file beside the destination; every page checked against the snapshot's
//! group hashes; `integrity_check`; fsync; renamed into place.
//!
//! Invariants: the destination is never written in place: it appears whole or not at all,
//! and an existing file is replaced only with `--force` (its stale `-wal` and `-shm` are
//! removed first, so SQLite cannot replay an old WAL onto the restored image).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::archive::Archive;
use crate::core::plan::Timestamp;
use crate::core::sqlite::{choose_chain, SnapshotMeta, GROUP_PAGES};
use crate::pipeline::Opener;
use crate::restore::dump::stream_parts;

pub struct RestoreOptions {
    pub name: String,
    pub at: Option<Timestamp>,
    pub snapshot: Option<String>,
    pub to: PathBuf,
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub name: String,
    pub snapshot: String,
    /// The point in time the restored database is from.
    pub time: Timestamp,
    /// The snapshots applied, full first.
    pub chain: Vec<String>,
    pub page_size: u32,
    pub page_count: u64,
    pub bytes: u64,
    pub integrity_check: String,
    pub to: String,
}

fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a snapshot's stream of pages at their places in the file.
struct PageWriter<'a> {
    file: &'a mut std::fs::File,
    meta: &'a SnapshotMeta,
    run: usize,
    /// Bytes of the current run already written.
    done: u64,
}

impl PageWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let ps = self.meta.page_size as u64;
        while !data.is_empty() {
            let Some(&(first, count)) = self.meta.runs.get(self.run) else {
                bail!(
                    "snapshot {} holds more page bytes than its runs name",
                    self.meta.id
                );
            };
            let left = count * ps - self.done;
            let n = left.min(data.len() as u64) as usize;
            self.file
                .seek(SeekFrom::Start((first - 1) * ps + self.done))?;
            self.file.write_all(&data[..n])?;
            data = &data[n..];
            self.done += n as u64;
            if self.done == count * ps {
                self.run += 1;
                self.done = 0;
            }
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.run == self.meta.runs.len() && self.done == 0
    }
}

/// Check every page of `file` against `meta`'s group hashes.
fn verify(file: &mut std::fs::File, meta: &SnapshotMeta) -> Result<()> {
    let ps = meta.page_size as usize;
    let len = file.metadata()?.len();
    if len != meta.page_count * ps as u64 {
        bail!(
            "the restored image has {len} bytes, and snapshot {} says {} pages of {ps}",
            meta.id,
            meta.page_count
        );
    }
    file.seek(SeekFrom::Start(0))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, &mut *file);
    let mut page = vec![0u8; ps];
    let mut group = Vec::with_capacity(GROUP_PAGES as usize);
    let mut g = 0usize;
    let groups = meta.page_count.div_ceil(GROUP_PAGES) as usize;
    if meta.group_hashes.len() != groups {
        bail!(
            "snapshot {} lists {} group hashes for {} pages",
            meta.id,
            meta.group_hashes.len(),
            meta.page_count
        );
    }
    for pgno in 1..=meta.page_count {
        r.read_exact(&mut page)?;
        group.push(super::page_hash(&page));
        if group.len() == GROUP_PAGES as usize || pgno == meta.page_count {
            if super::group_hash(&group) != meta.group_hashes[g] {
                let first = g as u64 * GROUP_PAGES + 1;
                bail!(
                    "the restored image of snapshot {} differs from its record in pages {first} to {pgno}\nhint: the archive may be damaged: `lifeboat verify --full`; try an older snapshot (`lifeboat sqlite list`)",
                    meta.id
                );
            }
            group.clear();
            g += 1;
        }
    }
    Ok(())
}

/// Apply `chain` (full first) into `file`.
async fn apply(
    archive: &Archive,
    opener: &Arc<Opener>,
    chain: &[&SnapshotMeta],
    file: std::fs::File,
) -> Result<std::fs::File> {
    let mut file = file;
    for s in chain {
        let w = Mutex::new(PageWriter {
            file: &mut file,
            meta: s,
            run: 0,
            done: 0,
        });
        stream_parts(archive, opener, &s.parts, |plain| {
            let r = w.lock().expect("not poisoned").write(&plain);
            async move { r.map(|_| true) }
        })
        .await
        .with_context(|| format!("applying snapshot {}", s.id))?;
        let w = w.into_inner().expect("not poisoned");
        if !w.complete() {
            bail!(
                "snapshot {} holds fewer page bytes than its runs name (its parts are incomplete)",
                s.id
            );
        }
        w.file
            .set_len(s.page_count * s.page_size as u64)
            .context("sizing the restored image")?;
    }
    Ok(file)
}

/// Restore into `opts.to`.
pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let to = &opts.to;
    if to.is_dir() {
        bail!(
            "--to {}: that is a directory\nhint: name the database file to write",
            to.display()
        );
    }
    if to.exists() && !opts.force {
        bail!(
            "--to {}: the file exists\nhint: name a new file, or pass --force to replace it (stop its application first)",
            to.display()
        );
    }
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    for s in ["-wal", "-shm"] {
        let p = side(to, s);
        if p.exists() && !opts.force {
            bail!(
                "--to {}: {} exists, and SQLite would apply it to the restored database\nhint: remove it, or pass --force (which removes it)",
                to.display(),
                p.display()
            );
        }
    }
    let all = archive.sqlite_snapshots(Some(&opts.name)).await?;
    let chain = choose_chain(&all, &opts.name, opts.at, opts.snapshot.as_deref())
        .map_err(|e| anyhow!(e))?;
    let last = *chain.last().expect("a chain has its snapshot");
    let tmp = tempfile::Builder::new()
        .prefix(".lifeboat-sqlite-")
        .tempfile_in(&dir)
        .with_context(|| {
            format!(
                "--to {}: cannot create a file in {}",
                to.display(),
                dir.display()
            )
        })?;
    let (file, tmp_path) = tmp.into_parts();
    let file = apply(archive, &opener, &chain, file).await?;
    let tp = tmp_path.to_path_buf();
    let meta = last.clone();
    let integrity = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut file = file;
        verify(&mut file, &meta)?;
        file.sync_all().context("syncing the restored database")?;
        drop(file);
        super::integrity_check(&tp)
    })
    .await
    .map_err(|e| anyhow!("the checking task failed: {e}"))??;
    if integrity != "ok" {
        bail!(
            "integrity_check of the restored snapshot {} failed: {}\nhint: the snapshot's quick_check passed when it was taken; try an older snapshot (`lifeboat sqlite list`)",
            last.id,
            integrity.lines().take(5).collect::<Vec<_>>().join("; ")
        );
    }
    if opts.force {
        for s in ["-wal", "-shm"] {
            let p = side(to, s);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("--force: cannot remove {}: {e}", p.display()),
            }
        }
        tmp_path
            .persist(to)
            .map_err(|e| anyhow!("--to {}: {}", to.display(), e.error))?;
    } else {
        tmp_path.persist_noclobber(to).map_err(|e| {
            anyhow!(
                "--to {}: {}\nhint: the file appeared while restoring; name a new file or pass --force",
                to.display(),
                e.error
            )
        })?;
    }
    let _ = crate::storage::durable::sync_dir(&dir);
    Ok(RestoreReport {
        name: opts.name.clone(),
        snapshot: last.id.clone(),
        time: last.time,
        chain: chain.iter().map(|s| s.id.clone()).collect(),
        page_size: last.page_size,
        page_count: last.page_count,
        bytes: last.page_count * last.page_size as u64,
        integrity_check: integrity,
        to: to.display().to_string(),
    })
}
