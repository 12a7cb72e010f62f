//! `lifeboat sqlite restore`: the snapshot for a target (the newest at or before a time,
//! one by id, or the newest) and its delta chain applied, full snapshot first, into a
//! temporary file beside the destination (positioned writes while the next parts are
//! fetched and opened); every page checked against the snapshot's group hashes
//! (hashed as written, read back only where no write was seen or the image is too big to
//! keep a hash per page); `integrity_check` at the same time as that check and the fsync;
//! renamed into place once all three succeeded.
//!
//! Invariants: the destination is never written in place: it appears whole or not at all,
//! and an existing file is replaced only with `--force` (its stale `-wal` and `-shm` are
//! removed first, so SQLite cannot replay an old WAL onto the restored image).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

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

/// The page hashes of the image being built, by page number, each taken as the page is
/// written (the last write of a page wins): the finished image's group hashes come from
/// them without reading the file back. Pages no snapshot wrote (none, in a sound chain)
/// are read back and hashed by [`check`].
struct WrittenHashes {
    page_size: u64,
    pages: Vec<Option<[u8; 32]>>,
    /// The page being hashed when a write ends inside it.
    partial: Option<(u64, Sha256)>,
}

/// Above this many bytes of page hashes (about 2 GiB of 4 KiB pages) the image is read
/// back and hashed instead: a restore's memory stays bounded whatever the database's size.
const WRITTEN_HASHES_MAX: u64 = 16 << 20;

impl WrittenHashes {
    /// For an image of `page_count` pages, or `None` when they would take too much memory.
    fn new(page_size: u32, page_count: u64) -> Option<WrittenHashes> {
        let bytes = page_count.checked_mul(std::mem::size_of::<Option<[u8; 32]>>() as u64)?;
        (bytes <= WRITTEN_HASHES_MAX).then(|| WrittenHashes {
            page_size: page_size as u64,
            pages: vec![None; page_count as usize],
            partial: None,
        })
    }

    /// `data` was written at byte `offset` of the file.
    fn wrote(&mut self, offset: u64, mut data: &[u8]) {
        let ps = self.page_size;
        let mut pos = offset;
        while !data.is_empty() {
            let pgno = pos / ps + 1;
            let within = (pos % ps) as usize;
            let take = (ps as usize - within).min(data.len());
            let (chunk, rest) = data.split_at(take);
            let done = if within == 0 && take == ps as usize {
                Some(super::page_hash(chunk))
            } else {
                let h = match self.partial.take() {
                    Some((p, h)) if p == pgno && within > 0 => h,
                    _ => Sha256::new(),
                };
                let mut h = h;
                h.update(chunk);
                if within + take == ps as usize {
                    Some(h.finalize().into())
                } else {
                    self.partial = Some((pgno, h));
                    None
                }
            };
            if let (Some(d), Some(slot)) = (done, self.pages.get_mut(pgno as usize - 1)) {
                *slot = Some(d);
            }
            pos += take as u64;
            data = rest;
        }
    }

    /// The file was cut (or grown) to `page_count` pages: the pages past it are gone.
    fn resized(&mut self, page_count: u64) {
        for p in self.pages.iter_mut().skip(page_count as usize) {
            *p = None;
        }
        self.partial = None;
    }
}

/// Writes a snapshot's stream of pages at their places in the file (positioned writes),
/// hashing them as they go when `hashes` is kept.
struct PageWriter<'a> {
    file: &'a std::fs::File,
    meta: &'a SnapshotMeta,
    hashes: Option<&'a mut WrittenHashes>,
    run: usize,
    /// Bytes of the current run already written.
    done: u64,
}

impl PageWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
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
            let at = (first - 1) * ps + self.done;
            self.file.write_all_at(&data[..n], at)?;
            if let Some(h) = self.hashes.as_deref_mut() {
                h.wrote(at, &data[..n]);
            }
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

/// Check every page of `file` against `meta`'s group hashes: from the hashes taken while
/// writing where there are any, else by reading the page back.
fn check(file: &std::fs::File, meta: &SnapshotMeta, written: Option<&WrittenHashes>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let ps = meta.page_size as usize;
    let len = file.metadata()?.len();
    if len != meta.page_count * ps as u64 {
        bail!(
            "the restored image has {len} bytes, and snapshot {} says {} pages of {ps}",
            meta.id,
            meta.page_count
        );
    }
    let groups = meta.page_count.div_ceil(GROUP_PAGES) as usize;
    if meta.group_hashes.len() != groups {
        bail!(
            "snapshot {} lists {} group hashes for {} pages",
            meta.id,
            meta.group_hashes.len(),
            meta.page_count
        );
    }
    let mut buf = vec![0u8; ps * GROUP_PAGES as usize];
    let mut group = Vec::with_capacity(GROUP_PAGES as usize);
    for (g, want) in meta.group_hashes.iter().enumerate() {
        let first = g as u64 * GROUP_PAGES + 1;
        let last = (first + GROUP_PAGES - 1).min(meta.page_count);
        let known =
            |pgno: u64| written.and_then(|w| w.pages.get(pgno as usize - 1).copied().flatten());
        group.clear();
        if (first..=last).all(|p| known(p).is_some()) {
            group.extend((first..=last).map(|p| known(p).expect("checked")));
        } else {
            // Read the group back (all of it when nothing was hashed on the way).
            let bytes = &mut buf[..(last - first + 1) as usize * ps];
            file.read_exact_at(bytes, (first - 1) * ps as u64)?;
            for (i, page) in bytes.chunks_exact(ps).enumerate() {
                group.push(known(first + i as u64).unwrap_or_else(|| super::page_hash(page)));
            }
        }
        if super::group_hash(&group) != *want {
            bail!(
                "the restored image of snapshot {} differs from its record in pages {first} to {last}\nhint: the archive may be damaged: `lifeboat verify --full`; try an older snapshot (`lifeboat sqlite list`)",
                meta.id
            );
        }
    }
    Ok(())
}

/// Apply `chain` (full first) into `file`, each page hashed as it is written. The parts
/// are fetched and opened ahead by [`stream_parts`] while the current one is written; a
/// writer thread of its own was tried and only held more parts in memory (more RSS, no
/// gain: the opening tasks already overlap the writes).
async fn apply(
    archive: &Archive,
    opener: &Arc<Opener>,
    chain: &[&SnapshotMeta],
    file: std::fs::File,
) -> Result<(std::fs::File, Option<WrittenHashes>)> {
    let last = chain.last().expect("a chain has its snapshot");
    let mut hashes = WrittenHashes::new(last.page_size, last.page_count);
    for s in chain {
        let w = Mutex::new(PageWriter {
            file: &file,
            meta: s,
            hashes: hashes.as_mut(),
            run: 0,
            done: 0,
        });
        stream_parts(archive, opener, &s.parts, |plain| {
            let r = w.lock().expect("not poisoned").write(&plain);
            async move { r.map(|_| true) }
        })
        .await
        .with_context(|| format!("applying snapshot {}", s.id))?;
        if !w.into_inner().expect("not poisoned").complete() {
            bail!(
                "snapshot {} holds fewer page bytes than its runs name (its parts are incomplete)",
                s.id
            );
        }
        file.set_len(s.page_count * s.page_size as u64)
            .context("sizing the restored image")?;
        if let Some(h) = hashes.as_mut() {
            h.resized(s.page_count);
        }
    }
    Ok((file, hashes))
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
    let (file, written) = apply(archive, &opener, &chain, file).await?;
    // The part buffers are free now: give them back before integrity_check fills its page
    // cache, so the restore's peak RSS is the larger of the two phases, not their sum.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    // The page check with the fsync, and integrity_check, at once: both only read the
    // image (from the page cache); the rename below waits for both, and either failing
    // refuses the restore.
    let meta = last.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<()> {
        check(&file, &meta, written.as_ref())?;
        file.sync_all().context("syncing the restored database")
    });
    let tp = tmp_path.to_path_buf();
    let integrity = tokio::task::spawn_blocking(move || super::integrity_check(&tp));
    let (checked, integrity) = tokio::join!(checked, integrity);
    checked.map_err(|e| anyhow!("the checking task failed: {e}"))??;
    let integrity = integrity.map_err(|e| anyhow!("the checking task failed: {e}"))??;
    if integrity != "ok" {
        let when = if last.quick_check == "ok" {
            "the snapshot's quick_check passed when it was taken"
        } else {
            "the snapshot ran no quick_check of its own (its chain's last check passed)"
        };
        bail!(
            "integrity_check of the restored snapshot {} failed: {}\nhint: {when}; try an older snapshot (`lifeboat sqlite list`)",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages split across writes at any byte (parts need not end on a page) hash as whole
    /// pages; a rewrite replaces the hash; pages cut off by a shrink are forgotten.
    #[test]
    fn pages_hashed_as_written_match_their_images() {
        let ps = 512u32;
        let image: Vec<u8> = (0..ps as usize * 6).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = WrittenHashes::new(ps, 6).unwrap();
        // Pages 2..=5 in uneven pieces, then page 1 whole; page 6 never written.
        let mut at = ps as usize;
        for n in [100, 900, 3, 1045] {
            w.wrote(at as u64, &image[at..at + n]);
            at += n;
        }
        assert_eq!(at, 5 * ps as usize);
        w.wrote(0, &image[..ps as usize]);
        for (i, page) in image.chunks(ps as usize).enumerate().take(5) {
            assert_eq!(
                w.pages[i],
                Some(super::super::page_hash(page)),
                "page {}",
                i + 1
            );
        }
        assert_eq!(w.pages[5], None);
        let other = vec![9u8; ps as usize];
        w.wrote(ps as u64, &other);
        assert_eq!(w.pages[1], Some(super::super::page_hash(&other)));
        w.resized(3);
        assert!(w.pages[3..].iter().all(Option::is_none));
        assert!(w.pages[..3].iter().all(Option::is_some));
        // Too many pages to keep a hash each: none kept (the image is read back).
        assert!(WrittenHashes::new(4096, 1 << 40).is_none());
    }
}
