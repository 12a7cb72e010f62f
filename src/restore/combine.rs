//! Restore of an incremental backup: its chain (full backup first) combined into the
//! target directories with `pg_combinebackup`'s semantics, planned from the tar indexes in
//! `backup.json` alone (`core::incremental::plan_combine`).
//!
//! - Every file of the newest backup is streamed as a plain restore streams it: its
//!   directories, links and plain files are written as they come; of each `INCREMENTAL.*`
//!   file only the blocks the plan takes from it are written, at their offsets in the
//!   reconstructed file (created beforehand at its final length, so that blocks nobody holds
//!   read as zeros).
//! - Of the older backups only the parts holding a needed block are fetched, each once, in
//!   parallel with the stream (at most `jobs` parts in memory); each needed byte range is
//!   written once, at its offset.
//! - The newest backup's files are checked against its manifest as they stream by; the
//!   reconstructed files are read back for their checksums, and a new `backup_manifest` is
//!   written for the combined directory, as `pg_combinebackup` writes one (CRC32C for what
//!   it rebuilt, the recorded checksums for what it copied; `backup_label` without its
//!   `INCREMENTAL FROM` lines).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::sink::Sink;
use super::{
    copy_to_sink, fetch_open_in, finish_restore, free_bytes, make_dir, make_symlink, safe_relative,
    Algo, Hasher, PartBuffers, PartReader, RestoreOptions, Syncer,
};
use crate::archive::Archive;
use crate::core::catalog::{BackupMeta, BackupPart};
use crate::core::fmt;
use crate::core::incremental::{parse_header, plan_combine, BlockSource, Combine, BLCKSZ};
use crate::core::plan::Plan;
use crate::pipeline::Opener;

/// One file entry of a backup manifest, as written.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// Written as `Encoded-Path` (hex) rather than `Path`.
    encoded: bool,
    size: u64,
    mtime: String,
    algo: String,
    checksum: String,
}

struct Manifest {
    version: serde_json::Value,
    system_identifier: Option<serde_json::Value>,
    files: Vec<Entry>,
    wal_ranges: Vec<serde_json::Value>,
}

fn algo_of(name: &str) -> Result<Algo> {
    Ok(match name {
        "NONE" => Algo::None,
        "CRC32C" => Algo::Crc32c,
        "SHA224" => Algo::Sha224,
        "SHA256" => Algo::Sha256,
        "SHA384" => Algo::Sha384,
        "SHA512" => Algo::Sha512,
        other => bail!("the backup manifest uses an unknown checksum algorithm {other}"),
    })
}

fn read_manifest(bytes: &[u8]) -> Result<Manifest> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("the backup manifest is not JSON")?;
    let mut files = Vec::new();
    for f in v["Files"]
        .as_array()
        .ok_or_else(|| anyhow!("the backup manifest has no Files"))?
    {
        let (path, encoded) = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
            (Some(p), _) => (p.to_string(), false),
            (None, Some(e)) => (
                String::from_utf8_lossy(
                    &super::hex_decode(e).ok_or_else(|| anyhow!("bad Encoded-Path {e}"))?,
                )
                .into_owned(),
                true,
            ),
            _ => bail!("a manifest entry has no path"),
        };
        let algo = f["Checksum-Algorithm"]
            .as_str()
            .unwrap_or("NONE")
            .to_string();
        algo_of(&algo)?;
        files.push(Entry {
            path,
            encoded,
            size: f["Size"]
                .as_u64()
                .ok_or_else(|| anyhow!("a manifest entry has no Size"))?,
            mtime: f["Last-Modified"].as_str().unwrap_or("").to_string(),
            algo,
            checksum: f["Checksum"].as_str().unwrap_or("").to_ascii_lowercase(),
        });
    }
    Ok(Manifest {
        version: v["PostgreSQL-Backup-Manifest-Version"].clone(),
        system_identifier: v.get("System-Identifier").cloned(),
        files,
        wal_ranges: v["WAL-Ranges"].as_array().cloned().unwrap_or_default(),
    })
}

/// A backup manifest in PostgreSQL's layout (one file per line, the checksum over every
/// line before the last).
fn write_manifest(m: &Manifest, files: &[Entry]) -> Vec<u8> {
    use sha2::Digest;
    let q = |s: &str| serde_json::to_string(s).expect("a string encodes");
    let mut s = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": {},\n",
        m.version
    );
    if let Some(id) = &m.system_identifier {
        s.push_str(&format!("\"System-Identifier\": {id},\n"));
    }
    s.push_str("\"Files\": [");
    for (i, f) in files.iter().enumerate() {
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        let path = if f.encoded {
            format!(
                "\"Encoded-Path\": \"{}\"",
                f.path
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        } else {
            format!("\"Path\": {}", q(&f.path))
        };
        s.push_str(&format!(
            "{{ {path}, \"Size\": {}, \"Last-Modified\": {}",
            f.size,
            q(&f.mtime)
        ));
        if f.algo != "NONE" {
            s.push_str(&format!(
                ", \"Checksum-Algorithm\": {}, \"Checksum\": {}",
                q(&f.algo),
                q(&f.checksum)
            ));
        }
        s.push_str(" }");
    }
    s.push_str(" ],\n\"WAL-Ranges\": [");
    for (i, r) in m.wal_ranges.iter().enumerate() {
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        s.push_str(&format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": {}, \"End-LSN\": {} }}",
            r["Timeline"], r["Start-LSN"], r["End-LSN"]
        ));
    }
    s.push_str("\n],\n");
    let sum = sha2::Sha256::digest(s.as_bytes());
    s.push_str(&format!(
        "\"Manifest-Checksum\": \"{}\"}}\n",
        sum.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    s.into_bytes()
}

/// `backup_label` as `pg_combinebackup` writes it: without the `INCREMENTAL FROM` lines.
fn strip_label(label: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len());
    for line in label.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"INCREMENTAL FROM LSN: ")
            || line.starts_with(b"INCREMENTAL FROM TLI: ")
        {
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

/// A file rebuilt block by block.
struct Rebuilt {
    path: PathBuf,
    /// Its manifest name (tablespace prefix included, without `INCREMENTAL.`).
    name: String,
    len: u64,
    /// The CRC32C of each block as written (of a zero block until then), folded into the
    /// file's manifest checksum at the end: the file is never read back.
    crcs: Vec<AtomicU32>,
}

/// A piece of a block cut where a backup part ends: where it was written and its CRC32C.
struct CutPiece {
    target: usize,
    at: u64,
    len: u64,
    crc: u32,
}

/// CRC32C arithmetic on whole blocks: the manifest checksum of a rebuilt file from its
/// blocks' CRCs, in file order, whatever order they were written in.
struct BlockCrc {
    /// `shift[k][b]`: the CRC32C operator "append one block of zeros" applied to `b << 8k`
    /// (it is linear, so four lookups apply it to any CRC).
    shift: [[u32; 256]; 4],
    /// The CRC32C of one zero block.
    zero: u32,
}

impl BlockCrc {
    fn new() -> BlockCrc {
        let mut shift = [[0u32; 256]; 4];
        for (k, t) in shift.iter_mut().enumerate() {
            for (b, v) in t.iter_mut().enumerate() {
                *v = crc32c::crc32c_combine((b as u32) << (8 * k), 0, BLCKSZ as usize);
            }
        }
        BlockCrc {
            shift,
            zero: crc32c::crc32c(&[0u8; BLCKSZ as usize]),
        }
    }

    /// The CRC32C of `a`'s bytes followed by a block whose CRC32C is `block`.
    fn append(&self, a: u32, block: u32) -> u32 {
        let s = &self.shift;
        s[0][(a & 0xff) as usize]
            ^ s[1][((a >> 8) & 0xff) as usize]
            ^ s[2][((a >> 16) & 0xff) as usize]
            ^ s[3][(a >> 24) as usize]
            ^ block
    }

    /// The CRC32C of a whole file from its blocks' CRCs.
    fn fold(&self, crcs: &[AtomicU32]) -> u32 {
        crcs.iter()
            .fold(0, |a, c| self.append(a, c.load(Ordering::Relaxed)))
    }

    /// Record the CRCs of `data` written at byte `dst` of rebuilt file `target`: whole
    /// blocks at once; a block cut where a backup part ends arrives in two pieces (from
    /// two parts, in any order), whose CRCs are kept in `cut` and joined at the end.
    fn record_at(
        crcs: &[AtomicU32],
        cut: &Mutex<Vec<CutPiece>>,
        target: usize,
        dst: u64,
        data: &[u8],
    ) -> Result<()> {
        let end = dst + data.len() as u64;
        let whole_from = dst.next_multiple_of(BLCKSZ).min(end);
        let whole_to = (end / BLCKSZ * BLCKSZ).max(whole_from);
        for (from, to) in [(dst, whole_from), (whole_to, end)] {
            if from < to {
                let bytes = &data[(from - dst) as usize..(to - dst) as usize];
                cut.lock().expect("not poisoned").push(CutPiece {
                    target,
                    at: from,
                    len: to - from,
                    crc: crc32c::crc32c(bytes),
                });
            }
        }
        BlockCrc::record(
            crcs,
            whole_from / BLCKSZ,
            &data[(whole_from - dst) as usize..(whole_to - dst) as usize],
        )
    }

    /// Join the pieces of cut blocks into their blocks' CRCs.
    fn join_cut(rebuilt: &[Rebuilt], mut cut: Vec<CutPiece>) -> Result<()> {
        cut.sort_by_key(|c| (c.target, c.at));
        let mut i = 0;
        while i < cut.len() {
            let (t, block) = (cut[i].target, cut[i].at / BLCKSZ);
            let mut crc = 0u32;
            let mut next = block * BLCKSZ;
            while i < cut.len() && cut[i].target == t && cut[i].at / BLCKSZ == block {
                if cut[i].at != next {
                    bail!("{}: block {block} was not written whole", rebuilt[t].name);
                }
                crc = crc32c::crc32c_combine(crc, cut[i].crc, cut[i].len as usize);
                next += cut[i].len;
                i += 1;
            }
            if next != (block + 1) * BLCKSZ {
                bail!("{}: block {block} was not written whole", rebuilt[t].name);
            }
            rebuilt[t].crcs[block as usize].store(crc, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Record the CRCs of `data` (whole blocks) as blocks `first`, `first + 1`, ...
    fn record(crcs: &[AtomicU32], first: u64, data: &[u8]) -> Result<()> {
        for (i, b) in data.chunks(BLCKSZ as usize).enumerate() {
            crcs.get(first as usize + i)
                .ok_or_else(|| anyhow!("a block past the end of its rebuilt file"))?
                .store(crc32c::crc32c(b), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What the newest backup's stream writes of one of its `INCREMENTAL.*` files: into
/// rebuilt file `target`, (offset in the incremental file, offset in the rebuilt one) per
/// block, ascending.
struct OwnBlocks {
    target: usize,
    blocks: Vec<(u64, u64)>,
    header: crate::core::incremental::IncrementalHeader,
}

/// A byte range of one part to write: (offset in the part, length, rebuilt file, offset
/// in it).
type Piece = (u64, u64, usize, u64);

/// Per (backup, tar): byte runs of its tar stream to write, (offset in the stream, length,
/// rebuilt file, offset in it), coalesced.
type Runs = BTreeMap<(usize, String), Vec<(u64, u64, usize, u64)>>;

/// What streaming the newest backup saw: per manifest name, the bytes written, the
/// rewritten `backup_label`.
type Streamed = (BTreeMap<String, Seen>, u64, Option<Vec<u8>>);

/// What streaming the newest backup saw of one file.
struct Seen {
    size: u64,
    checksum: String,
}

/// The newest backup's tar stream: plain files, directories and links written; of its
/// `INCREMENTAL.*` files the blocks in `own`. Returns what it saw per manifest name, the
/// bytes written, and the rewritten `backup_label`.
#[allow(clippy::too_many_arguments)]
fn extract_newest(
    reader: PartReader,
    dest: &Path,
    prefix: &str,
    algos: &HashMap<String, Algo>,
    own: &HashMap<String, OwnBlocks>,
    rebuilt: &[Rebuilt],
    sink: &Sink,
) -> Result<Streamed> {
    let mut ar = tar::Archive::new(reader);
    let mut seen = BTreeMap::new();
    let mut bytes = 0u64;
    let mut label = None;
    let mut buf = vec![0u8; 1 << 20];
    for entry in ar.entries().context("reading the backup tar")? {
        let mut entry = entry.context("reading the backup tar")?;
        let rel = safe_relative(&entry.path().context("a tar entry path")?)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dir(&path, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let name = format!("{prefix}{}", rel.to_string_lossy());
                let mut h = Hasher::new(algos.get(&name).copied().unwrap_or(Algo::None));
                if let Some(o) = own.get(&name) {
                    // Its header first, checked against the index before anything is
                    // written; then only the blocks the plan takes from it, at their places
                    // (buffered: they are the few changed blocks), each block's CRC kept.
                    let t = &rebuilt[o.target];
                    let size = entry.size();
                    let hl = o.header.header_len();
                    let mut head = vec![0u8; hl.min(size) as usize];
                    entry
                        .read_exact(&mut head)
                        .with_context(|| format!("reading {name} from the backup"))?;
                    h.update(&head);
                    let got = parse_header(&head, size)
                        .map_err(|e| anyhow!("{name}: INCREMENTAL header: {e}"))?;
                    if got != o.header {
                        bail!("{name}: its INCREMENTAL header differs from the one backup.json indexed\nhint: backup.json was changed or damaged after the backup (`lifeboat verify` checks every backup); restore another backup with --backup");
                    }
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&t.path)
                        .with_context(|| format!("opening {}", t.path.display()))?;
                    let mut pos = hl;
                    let mut next = 0;
                    let batch = buf.len() / BLCKSZ as usize * BLCKSZ as usize;
                    while pos < size {
                        let k = ((size - pos) as usize).min(batch);
                        entry
                            .read_exact(&mut buf[..k])
                            .with_context(|| format!("reading {name} from the backup"))?;
                        h.update(&buf[..k]);
                        let end = pos + k as u64;
                        while let Some(&(src, dst)) = o.blocks.get(next) {
                            if src >= end {
                                break;
                            }
                            let at = (src - pos) as usize;
                            let block = &buf[at..at + BLCKSZ as usize];
                            f.write_all_at(block, dst)
                                .with_context(|| format!("writing {}", t.path.display()))?;
                            BlockCrc::record(&t.crcs, dst / BLCKSZ, block)?;
                            bytes += BLCKSZ;
                            next += 1;
                        }
                        pos = end;
                    }
                    seen.insert(
                        name,
                        Seen {
                            size: pos,
                            checksum: h.hex(),
                        },
                    );
                    continue;
                }
                let size = entry.header().size().unwrap_or(0);
                if name == "backup_label" {
                    // Without its INCREMENTAL FROM lines, as pg_combinebackup writes it.
                    let mut whole = Vec::new();
                    entry
                        .read_to_end(&mut whole)
                        .with_context(|| format!("reading {name} from the backup"))?;
                    h.update(&whole);
                    let stripped = strip_label(&whole);
                    let mut unhashed = Hasher::new(Algo::None);
                    bytes += copy_to_sink(
                        &mut &stripped[..],
                        sink,
                        &path,
                        mode,
                        stripped.len() as u64,
                        &name,
                        &mut unhashed,
                        &mut buf,
                    )?;
                    label = Some(stripped);
                    seen.insert(
                        name,
                        Seen {
                            size: whole.len() as u64,
                            checksum: h.hex(),
                        },
                    );
                    continue;
                }
                // Through the sink, as a plain restore writes (global/pg_control last).
                let n = copy_to_sink(&mut entry, sink, &path, mode, size, &name, &mut h, &mut buf)?;
                bytes += n;
                seen.insert(
                    name,
                    Seen {
                        size: n,
                        checksum: h.hex(),
                    },
                );
            }
            tar::EntryType::Symlink => make_symlink(&entry, &rel, &path)?,
            other => {
                tracing::warn!(path = %rel.display(), kind = ?other, "skipping an unexpected tar entry")
            }
        }
    }
    Ok((seen, bytes, label))
}

/// Write the pieces of one fetched part of an older backup (direct writes through the
/// sink: these are most of the restored bytes), keeping each block's CRC.
fn write_pieces(
    plain: &[u8],
    pieces: &[Piece],
    rebuilt: &[Rebuilt],
    sink: &Sink,
    cut: &Mutex<Vec<CutPiece>>,
) -> Result<u64> {
    let mut open: Option<(usize, super::sink::BlockFile<'_>)> = None;
    let mut n = 0;
    for &(off, len, target, dst) in pieces {
        let data = plain
            .get(off as usize..(off + len) as usize)
            .ok_or_else(|| anyhow!("a part is shorter than backup.json's index says"))?;
        if open.as_ref().map(|(t, _)| *t) != Some(target) {
            open = Some((target, sink.open_blocks(&rebuilt[target].path)?));
        }
        let (_, f) = open.as_mut().expect("opened above");
        f.write_at(data, dst)?;
        BlockCrc::record_at(&rebuilt[target].crcs, cut, target, dst, data)?;
        n += len;
    }
    Ok(n)
}

/// What to fetch, in this order: the newest backup's parts (streamed), then the parts of
/// older backups that hold needed blocks.
enum Job {
    Stream(BackupPart),
    Pieces(BackupPart, Vec<Piece>),
}

impl Job {
    fn part(&self) -> &BackupPart {
        match self {
            Job::Stream(p) | Job::Pieces(p, _) => p,
        }
    }
}

/// The parts of older backups holding needed blocks, with what to write from each:
/// `runs` per (backup, tar): (offset in the tar stream, length, rebuilt file, offset in
/// it), coalesced.
fn part_jobs(chain: &[BackupMeta], runs: Runs) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for ((bi, tar), mut runs) in runs.into_iter().rev() {
        let b = &chain[bi];
        let mut parts: Vec<&BackupPart> = b.parts.iter().filter(|p| p.tar == tar).collect();
        parts.sort_by_key(|p| p.seq);
        runs.sort_by_key(|r| r.0);
        let mut start = 0u64;
        let mut ri = 0;
        // a run may span parts: `carry` is how much of runs[ri] is already placed
        let mut carry = 0u64;
        for p in parts {
            let end = start + p.plain_len;
            let mut pieces = Vec::new();
            while ri < runs.len() {
                let (pos, len, t, dst) = runs[ri];
                let from = pos + carry;
                if from >= end {
                    break;
                }
                let to = (pos + len).min(end);
                pieces.push((from - start, to - from, t, dst + carry));
                if to == pos + len {
                    ri += 1;
                    carry = 0;
                } else {
                    carry = to - pos;
                    break;
                }
            }
            if !pieces.is_empty() {
                jobs.push(Job::Pieces(p.clone(), pieces));
            }
            start = end;
        }
        if ri < runs.len() {
            bail!(
                "backup {}: {tar} is shorter in backup.json's parts than its index says",
                b.id
            );
        }
    }
    Ok(jobs)
}

/// Restore `chain` (full backup first; the planned backup last) into `dests`: combine,
/// check, write the new manifest, then everything a plain restore does after its files.
/// `manifest` is the newest backup's manifest. Returns (files, bytes written, fetch time,
/// total time).
pub(super) async fn extract_chain(
    archive: &Archive,
    opener: &Arc<Opener>,
    chain: &[BackupMeta],
    dests: &[(String, Option<u32>, PathBuf)],
    opts: &RestoreOptions,
    plan: &Plan,
    manifest: &[u8],
) -> Result<(u64, u64, Duration, Duration)> {
    let start = Instant::now();
    let newest = chain.last().ok_or_else(|| anyhow!("an empty chain"))?;
    let ni = chain.len() - 1;
    let index: Vec<&[crate::core::incremental::TarMember]> =
        chain.iter().map(|b| &b.members[..]).collect();
    let ids = || {
        chain
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let files = plan_combine(&index).map_err(|e| {
        anyhow!(
            "backup {} cannot be combined with its chain ({}): {e}\nhint: restore a full backup with --backup (`lifeboat list` shows them)",
            newest.id,
            ids()
        )
    })?;
    let m = read_manifest(manifest).with_context(|| format!("backup {}", newest.id))?;
    let dir_of: HashMap<&str, (&PathBuf, String)> = dests
        .iter()
        .map(|(tar, oid, dir)| {
            (
                tar.as_str(),
                (
                    dir,
                    oid.map(|o| format!("pg_tblspc/{o}/")).unwrap_or_default(),
                ),
            )
        })
        .collect();

    // The rebuilt files, what the newest stream writes of each, and what older backups do.
    let bc = BlockCrc::new();
    let mut rebuilt: Vec<Rebuilt> = Vec::new();
    let mut own: HashMap<String, OwnBlocks> = HashMap::new();
    let mut runs: Runs = BTreeMap::new();
    let mut need: BTreeMap<&PathBuf, u64> = BTreeMap::new();
    for f in &files {
        let (dir, prefix) = dir_of.get(f.tar.as_str()).ok_or_else(|| {
            anyhow!(
                "backup {}: {} is in {}, which backup.json lists no tablespace for",
                newest.id,
                f.path,
                f.tar
            )
        })?;
        let Combine::Reconstruct { blocks } = &f.how else {
            continue;
        };
        let ti = rebuilt.len();
        let len = blocks.len() as u64 * BLCKSZ;
        *need.entry(dir).or_default() += len;
        rebuilt.push(Rebuilt {
            path: dir.join(safe_relative(Path::new(&f.path))?),
            name: format!("{prefix}{}", f.path),
            len,
            crcs: (0..blocks.len()).map(|_| AtomicU32::new(bc.zero)).collect(),
        });
        for (b, src) in blocks.iter().enumerate() {
            let BlockSource::From {
                backup,
                member,
                offset,
            } = *src
            else {
                continue;
            };
            let dst = b as u64 * BLCKSZ;
            let mem = &chain[backup].members[member];
            if backup == ni {
                let o = own
                    .entry(format!("{prefix}{}", mem.path))
                    .or_insert_with(|| OwnBlocks {
                        target: ti,
                        blocks: Vec::new(),
                        header: mem.incremental.clone().unwrap_or(
                            crate::core::incremental::IncrementalHeader {
                                truncation_block_length: 0,
                                blocks: Vec::new(),
                            },
                        ),
                    });
                o.blocks.push((offset, dst));
                continue;
            }
            let pos = mem.offset + offset;
            let v = runs.entry((backup, mem.tar.clone())).or_default();
            match v.last_mut() {
                Some(r) if r.2 == ti && r.0 + r.1 == pos && r.3 + r.1 == dst => r.1 += BLCKSZ,
                _ => v.push((pos, BLCKSZ, ti, dst)),
            }
        }
    }
    // An INCREMENTAL file none of whose blocks is taken is still read (and checked).
    for (mi, mem) in newest.members.iter().enumerate() {
        let Some(h) = &mem.incremental else { continue };
        let (_, prefix) = &dir_of[mem.tar.as_str()];
        let name = format!("{prefix}{}", mem.path);
        if own.contains_key(&name) {
            continue;
        }
        let real = crate::core::incremental::real_path(&mem.path).0;
        let target = rebuilt
            .iter()
            .position(|r| r.name == format!("{prefix}{real}"))
            .ok_or_else(|| anyhow!("{name}: not in the combine plan (index {mi})"))?;
        own.insert(
            name,
            OwnBlocks {
                target,
                blocks: Vec::new(),
                header: h.clone(),
            },
        );
    }
    for o in own.values_mut() {
        o.blocks.sort_unstable();
    }
    // Space: the combined files, plus what the plain files of the newest backup take.
    for (tar, _, dir) in dests {
        let plain: u64 = newest
            .members
            .iter()
            .filter(|m| &m.tar == tar && m.incremental.is_none())
            .map(|m| m.size)
            .sum();
        *need.entry(dir).or_default() += plain;
    }
    for (dir, n) in &need {
        if let Some(free) = free_bytes(dir) {
            let want = n + n / 20 + (256 << 20);
            if free < want {
                bail!(
                    "not enough disk space for {}: the combined backup needs {} there, {} is free\nhint: free space or restore elsewhere (--pgdata, --tablespace OID=DIR)",
                    dir.display(),
                    fmt::size(want),
                    fmt::size(free)
                );
            }
        }
    }
    // The rebuilt files at their final length: blocks nobody holds read as zeros.
    for r in &rebuilt {
        if let Some(parent) = r.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let f = std::fs::File::create(&r.path)
            .with_context(|| format!("creating {}", r.path.display()))?;
        super::sink::fallocate(&f, r.len);
        f.set_len(r.len)
            .with_context(|| format!("sizing {}", r.path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", r.path.display()))?;
    }
    tracing::info!(
        chain = %ids(),
        rebuilt = rebuilt.len(),
        "combining the incremental chain"
    );

    // The jobs: the newest backup's parts (base tar last), then the older parts needed.
    let mut stream_parts: Vec<BackupPart> = newest.parts.clone();
    stream_parts.sort_by_key(|p| (p.tar == "base.tar", p.tar.clone(), p.seq));
    for (tar, _, _) in dests {
        let mut seqs: Vec<u32> = stream_parts
            .iter()
            .filter(|p| &p.tar == tar)
            .map(|p| p.seq)
            .collect();
        seqs.sort();
        if seqs.is_empty() || seqs.iter().enumerate().any(|(i, s)| *s as usize != i) {
            bail!(
                "backup.json of {} lists the parts of {tar} with a hole",
                newest.id
            );
        }
    }
    let mut jobs: Vec<Job> = stream_parts.into_iter().map(Job::Stream).collect();
    let older = part_jobs(chain, runs)?;
    let skipped: usize = chain[..ni].iter().map(|b| b.parts.len()).sum::<usize>() - older.len();
    tracing::info!(
        fetched = older.len(),
        skipped,
        "parts of older backups: fetched (with needed blocks), skipped (none)"
    );
    jobs.extend(older);

    let rebuilt = Arc::new(rebuilt);
    let own = Arc::new(own);
    let algos: Arc<HashMap<String, Algo>> = Arc::new(
        m.files
            .iter()
            .map(|e| Ok((e.path.clone(), algo_of(&e.algo)?)))
            .collect::<Result<_>>()?,
    );
    let sync = Syncer::start(2);
    // The interrupted-restore marker first; global/pg_control, held by the sink, last.
    let sink = Arc::new(Sink::new(opts.sync_method, &opts.pgdata, true)?);
    let mut feeds = HashMap::new();
    let mut extractors = Vec::new();
    let cut: Arc<Mutex<Vec<CutPiece>>> = Arc::default();
    // Part buffers, reused (as in a plain restore).
    let pool = PartBuffers::new(opts.jobs.max(1) + 2 * dests.len());
    for (tar, oid, dir) in dests {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        feeds.insert(tar.clone(), tx);
        let dir = dir.clone();
        let prefix = oid.map(|o| format!("pg_tblspc/{o}/")).unwrap_or_default();
        let (algos, own, rebuilt) = (algos.clone(), own.clone(), rebuilt.clone());
        let tar_name = tar.clone();
        let sink = sink.clone();
        let plain = pool.plain.clone();
        extractors.push(tokio::task::spawn_blocking(move || {
            extract_newest(
                PartReader::pooled(rx, plain),
                &dir,
                &prefix,
                &algos,
                &own,
                &rebuilt,
                &sink,
            )
            .with_context(|| format!("extracting {tar_name}"))
        }));
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let (htx, mut hrx) = tokio::sync::mpsc::unbounded_channel();
    let total: u64 = jobs.iter().map(|j| j.part().plain_len).sum();
    let driver = {
        let sem = sem.clone();
        let mirror = archive.mirror.clone();
        let opener = opener.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            for j in jobs {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                let mirror = mirror.clone();
                let opener = opener.clone();
                let pool = pool.clone();
                let h = tokio::spawn(async move {
                    let a = Archive { mirror };
                    let r = fetch_open_in(&a, &opener, j.part(), Some(&pool)).await;
                    (j, r, permit)
                });
                if htx.send(h).is_err() {
                    break;
                }
            }
        })
    };
    let progress = crate::archive::progress::Progress::bytes(
        format!("restore {} (chain of {})", newest.id, chain.len()),
        total,
    );
    let mut writers = Vec::new();
    let mut fetch_done = Duration::ZERO;
    let mut failed: Option<anyhow::Error> = None;
    let mut feed_err: Option<anyhow::Error> = None;
    while let Some(h) = hrx.recv().await {
        let (job, r, permit) = h.await.map_err(|e| anyhow!("fetch task failed: {e}"))?;
        let plain = match r {
            Ok(p) => p,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let n = plain.len() as u64;
        match job {
            Job::Stream(p) => {
                let tx = feeds.get(&p.tar).expect("tar has a feed");
                if tx.send(plain).await.is_err() {
                    // The extractor stopped: its error, collected below, is the cause.
                    feed_err = Some(anyhow!("extraction stopped before {}", p.key));
                    break;
                }
                drop(permit);
            }
            Job::Pieces(p, pieces) => {
                let (rebuilt, sink, back) = (rebuilt.clone(), sink.clone(), pool.plain.clone());
                let cut = cut.clone();
                writers.push(tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let r = write_pieces(&plain, &pieces, &rebuilt, &sink, &cut)
                        .with_context(|| format!("writing blocks from {}", p.key));
                    back.give(plain);
                    r
                }));
            }
        }
        progress.add(1, n);
        fetch_done = start.elapsed();
    }
    progress.finish();
    driver.abort();
    feeds.clear();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut bytes = 0;
    let mut label = None;
    let mut first_err = failed;
    for x in extractors {
        match x.await.map_err(|e| anyhow!("extract task failed: {e}"))? {
            Ok((s, b, l)) => {
                seen.extend(s);
                bytes += b;
                label = label.or(l);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    for w in writers {
        match w.await.map_err(|e| anyhow!("write task failed: {e}"))? {
            Ok(b) => bytes += b,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err.or(feed_err) {
        let _ = tokio::task::spawn_blocking(move || sync.finish()).await;
        return Err(e);
    }

    // The newest backup's files, against its manifest.
    let mut bad = Vec::new();
    for e in &m.files {
        match seen.get(&e.path) {
            None => bad.push(format!(
                "{} is in the manifest but not in the backup",
                e.path
            )),
            Some(x) if x.size != e.size => bad.push(format!(
                "{}: {} bytes, the manifest says {}",
                e.path, x.size, e.size
            )),
            Some(x) if e.algo != "NONE" && x.checksum != e.checksum => bad.push(format!(
                "{}: checksum {} does not match the manifest's {}",
                e.path, x.checksum, e.checksum
            )),
            _ => {}
        }
    }
    if !bad.is_empty() {
        bad.sort();
        let n = bad.len();
        bad.truncate(10);
        bail!(
            "{n} files of backup {} do not match its manifest:\n  {}",
            newest.id,
            bad.join("\n  ")
        );
    }

    // The rebuilt files' checksums, folded from their blocks' CRCs (the files are not
    // read back), then their fsync.
    let cut = std::mem::take(&mut *cut.lock().expect("not poisoned"));
    BlockCrc::join_cut(&rebuilt, cut)?;
    let sums: Vec<String> = {
        let mut out = Vec::with_capacity(rebuilt.len());
        for r in rebuilt.iter() {
            out.push(
                bc.fold(&r.crcs)
                    .to_le_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open(&r.path)
                .with_context(|| format!("opening {}", r.path.display()))?;
            sync.syncer.sync(w, r.path.clone());
        }
        out
    };
    let sum_of: HashMap<&str, (&Rebuilt, &String)> = rebuilt
        .iter()
        .zip(&sums)
        .map(|(r, s)| (r.name.as_str(), (r, s)))
        .collect();

    // The combined directory's manifest: the newest's entries, rebuilt files renamed and
    // re-summed, backup_label without its INCREMENTAL lines.
    let mut out = Vec::with_capacity(m.files.len());
    for e in &m.files {
        let mut e = e.clone();
        let real = crate::core::incremental::real_path(&e.path);
        if real.1 {
            let (r, sum) = sum_of
                .get(real.0.as_str())
                .ok_or_else(|| anyhow!("{}: rebuilt, but not planned", real.0))?;
            e.path = real.0;
            e.size = r.len;
            e.algo = "CRC32C".into();
            e.checksum = (*sum).clone();
        } else if e.path == "backup_label" {
            let l = label
                .as_deref()
                .ok_or_else(|| anyhow!("the backup has no backup_label"))?;
            let mut h = Hasher::new(Algo::Crc32c);
            h.update(l);
            e.size = l.len() as u64;
            e.algo = "CRC32C".into();
            e.checksum = h.hex();
        }
        out.push(e);
    }
    let combined = write_manifest(&m, &out);
    finish_restore(newest, dests, opts, plan, combined, sink, Some(sync)).await?;
    let nfiles = m.files.len() as u64;
    Ok((nfiles, bytes, fetch_done, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's CRC32C folded from its blocks' CRCs, recorded in any order, is the CRC32C
    /// of the file; unwritten blocks count as zeros.
    #[test]
    fn block_crcs_fold_into_the_files_crc32c() {
        let bc = BlockCrc::new();
        let n = 37usize;
        let mut file = vec![0u8; n * BLCKSZ as usize];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for b in file.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // blocks 3 and 20 are never written: zeros
        for z in [3usize, 20] {
            file[z * BLCKSZ as usize..(z + 1) * BLCKSZ as usize].fill(0);
        }
        let crcs: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(bc.zero)).collect();
        let bs = BLCKSZ as usize;
        // written backwards, as runs of 1 to 3 blocks
        let mut i = n;
        while i > 0 {
            let len = (i % 3 + 1).min(i);
            let first = i - len;
            if first != 3 && first != 20 && i - 1 != 3 && i - 1 != 20 {
                BlockCrc::record(&crcs, first as u64, &file[first * bs..i * bs]).unwrap();
            } else {
                for b in first..i {
                    if b != 3 && b != 20 {
                        BlockCrc::record(&crcs, b as u64, &file[b * bs..(b + 1) * bs]).unwrap();
                    }
                }
            }
            i = first;
        }
        assert_eq!(bc.fold(&crcs), crc32c::crc32c(&file));
        assert_eq!(bc.fold(&[]), crc32c::crc32c(b""));
        assert!(BlockCrc::record(&crcs, n as u64, &file[..bs]).is_err());
    }

    /// Runs cut at arbitrary bytes (where backup parts end), recorded in any order, give
    /// the same file CRC; a block left half written is an error.
    #[test]
    fn cut_blocks_join_into_their_crcs() {
        let bc = BlockCrc::new();
        let bs = BLCKSZ as usize;
        let file: Vec<u8> = (0..6 * bs).map(|i| (i * 7 % 251) as u8).collect();
        let rebuilt = vec![Rebuilt {
            path: PathBuf::from("x"),
            name: "base/5/16384".into(),
            len: file.len() as u64,
            crcs: (0..6).map(|_| AtomicU32::new(bc.zero)).collect(),
        }];
        let cut = Mutex::new(Vec::new());
        // pieces [0, 5000), [5000, 3 blocks + 17), [3 blocks + 17, 6 blocks), last first
        let at = [0, 5000, 3 * bs + 17, 6 * bs];
        for w in at.windows(2).rev() {
            BlockCrc::record_at(&rebuilt[0].crcs, &cut, 0, w[0] as u64, &file[w[0]..w[1]]).unwrap();
        }
        BlockCrc::join_cut(&rebuilt, cut.into_inner().unwrap()).unwrap();
        assert_eq!(bc.fold(&rebuilt[0].crcs), crc32c::crc32c(&file));
        let half = Mutex::new(Vec::new());
        BlockCrc::record_at(&rebuilt[0].crcs, &half, 0, 0, &file[..5000]).unwrap();
        let e = BlockCrc::join_cut(&rebuilt, half.into_inner().unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "base/5/16384: block 0 was not written whole");
    }

    #[test]
    fn label_loses_its_incremental_lines_only() {
        let l = b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000080\nINCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n";
        assert_eq!(
            strip_label(l),
            b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000080\nSTART TIMELINE: 1\n"
        );
    }

    /// Runs are split at part boundaries, parts without a needed byte are not fetched.
    #[test]
    fn runs_split_at_parts_and_unneeded_parts_are_skipped() {
        let part = |seq: u32, len: u64| BackupPart {
            key: format!("p{seq}"),
            tar: "base.tar".into(),
            seq,
            plain_len: len,
            stored_len: len,
            crc32: 0,
        };
        let mut b: BackupMeta = serde_json::from_value(serde_json::json!({
            "format": 1, "id": "A", "label": "", "system_identifier": "1", "pg_version": 170000,
            "timeline": 1, "start_lsn": "0/0", "end_timeline": 1, "end_lsn": "0/0",
            "start_time": "2026-11-24T08:00:00Z", "end_time": "2026-11-24T08:00:00Z",
            "plain_size": 0, "stored_size": 0, "tablespaces": [], "parts": [],
            "manifest": {"key": "m", "tar": "", "seq": 0, "plain_len": 0, "stored_len": 0, "crc32": 0},
            "extensions": null, "shared_preload_libraries": null, "data_checksums": true,
            "wal_segment_size": 16777216, "from_standby": false, "created_by": "t"
        }))
        .unwrap();
        b.parts = vec![part(0, 100), part(1, 100), part(2, 100), part(3, 100)];
        let mut runs = BTreeMap::new();
        // 50..250 spans parts 0, 1 and 2; part 3 holds nothing needed
        runs.insert((0, "base.tar".to_string()), vec![(50, 200, 7, 1000)]);
        let jobs = part_jobs(&[b.clone()], runs).unwrap();
        let got: Vec<(String, Vec<Piece>)> = jobs
            .iter()
            .map(|j| match j {
                Job::Pieces(p, v) => (p.key.clone(), v.clone()),
                Job::Stream(_) => panic!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("p0".into(), vec![(50, 50, 7, 1000)]),
                ("p1".into(), vec![(0, 100, 7, 1050)]),
                ("p2".into(), vec![(0, 50, 7, 1150)]),
            ]
        );
        let mut runs = BTreeMap::new();
        runs.insert((0, "base.tar".to_string()), vec![(350, 100, 1, 0)]);
        assert!(part_jobs(&[b], runs).is_err());
    }
}
