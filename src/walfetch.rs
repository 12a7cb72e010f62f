//! `lifeboat wal-fetch SEGMENT DEST`: PostgreSQL's restore_command.
//!
//! A complete segment comes from its one `.seg` object. A segment the streamer had not
//! finished is rebuilt from its parts and zero-filled to the segment size, which
//! PostgreSQL reads as the end of WAL. Every object is verified (CRC32, age
//! authentication, length) before anything is written; the file appears at DEST atomically.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::Archive;
use crate::catalog::{self, WalInventory};
use crate::pipeline::{self, Opener};
use crate::storage::ObjectStore;
use crate::wal::{WalFileName, WalSegSize};

/// The file is not in the archive (PostgreSQL's normal "no more WAL" answer).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in the archive")]
pub struct NotFound(pub String);

/// The file is in the archive but cannot be used: PostgreSQL must stop, not end recovery.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

pub async fn run(archive: &Archive, opener: &Opener, file: &str, dest: &Path) -> Result<()> {
    let name: WalFileName = file.parse().map_err(|e| anyhow!("{e}"))?;
    let meta = archive
        .meta()
        .await?
        .ok_or_else(|| NotFound(format!("{file} (the archive is empty)")))?;
    let seg = WalSegSize::new(meta.wal_segment_size)?;
    let mut problems = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for p in &archive.mirror.providers {
        let res = match name {
            WalFileName::History(tli) => fetch_history(p.as_ref(), opener, tli, dest).await,
            WalFileName::Segment(s) => fetch_segment(p.as_ref(), opener, s, seg, dest).await,
        };
        match res {
            Ok(true) => {
                if !problems.is_empty() || !missing.is_empty() {
                    tracing::warn!(
                        provider = p.name(),
                        file,
                        missing_on = ?missing,
                        "served from the fallback provider"
                    );
                }
                return Ok(());
            }
            Ok(false) => missing.push(p.name().to_string()),
            Err(e) => {
                tracing::warn!(provider = p.name(), file, error = %format!("{e:#}"), "unusable copy");
                problems.push(format!("storage \"{}\": {e:#}", p.name()));
            }
        }
    }
    if problems.is_empty() {
        Err(NotFound(file.to_string()).into())
    } else {
        Err(Unusable(format!(
            "{file} is in the archive but no copy could be used: {}",
            problems.join("; ")
        ))
        .into())
    }
}

async fn fetch_history(
    p: &dyn ObjectStore,
    opener: &Opener,
    tli: crate::wal::TimelineId,
    dest: &Path,
) -> Result<bool> {
    let objs = p.list(&catalog::history_prefix(tli)).await?;
    let Some(o) = objs.first() else {
        return Ok(false);
    };
    let Some(b) = p.get(&o.key).await? else {
        return Ok(false);
    };
    let plain = opener.open(&b).with_context(|| o.key.clone())?;
    write_atomically(dest, |f| f.write_all(&plain))?;
    Ok(true)
}

async fn fetch_segment(
    p: &dyn ObjectStore,
    opener: &Opener,
    name: crate::wal::SegmentName,
    seg: WalSegSize,
    dest: &Path,
) -> Result<bool> {
    let listed = p.list(&catalog::segment_prefix(name)).await?;
    let inv = WalInventory::from_keys(listed.iter().map(|m| m.key.as_str()), seg);
    let objs = inv.segment_objects(name);
    if objs.is_empty() {
        return Ok(false);
    }
    if objs[0].complete {
        let o = objs[0];
        let b = p
            .get(&o.key)
            .await?
            .ok_or_else(|| anyhow!("{} vanished while reading", o.key))?;
        let plain = opener.open(&b).with_context(|| o.key.clone())?;
        if plain.len() as u64 != seg.bytes() {
            bail!(
                "{}: holds {} bytes, a segment has {}",
                o.key,
                plain.len(),
                seg.bytes()
            );
        }
        write_atomically(dest, |f| f.write_all(&plain))?;
        return Ok(true);
    }
    let (parts, end) = catalog::assemble_plan(&objs);
    if parts.is_empty() {
        bail!(
            "the parts of {name} do not start at the segment's first byte (the archive has a hole)"
        );
    }
    let mut chunks = Vec::with_capacity(parts.len());
    for o in &parts {
        let b = p
            .get(&o.key)
            .await?
            .ok_or_else(|| anyhow!("{} vanished while reading", o.key))?;
        pipeline::check(&b).with_context(|| o.key.clone())?;
        let plain = opener.open(&b).with_context(|| o.key.clone())?;
        if plain.len() as u64 != o.end - o.start {
            bail!(
                "{}: holds {} bytes, its name says {}",
                o.key,
                plain.len(),
                o.end - o.start
            );
        }
        chunks.push((o.start, plain));
    }
    tracing::info!(segment = %name, bytes = end, "serving a partial segment, zero-filled after its last archived byte");
    write_atomically(dest, |f| {
        f.set_len(seg.bytes())?;
        for (off, c) in &chunks {
            f.write_all_at(c, *off)?;
        }
        Ok(())
    })?;
    Ok(true)
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
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("cannot write {}: {e}", dest.display()));
    }
    Ok(())
}
