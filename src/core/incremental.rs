//! Incremental base backups (PostgreSQL 17+): the index of a backup's tar members, built as
//! the tar streams by, and the header of PostgreSQL's `INCREMENTAL.*` files.
//!
//! An `INCREMENTAL.<relfile>` file (PostgreSQL's `src/backend/backup/basebackup_incremental.c`)
//! starts with, in the server's byte order (little-endian on every platform lifeboat runs
//! on): the magic `0xd3ae1f0d`, the block count `n`, the truncation block length, then `n`
//! block numbers; when `n > 0` the header is padded to a multiple of BLCKSZ and the `n`
//! blocks follow in that order.
//!
//! Pure: bytes in, an index out.

use serde::{Deserialize, Serialize};

/// `INCREMENTAL_MAGIC` of PostgreSQL 17.
pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;
/// Upper bound on the block count of one file: RELSEG_SIZE (131072 blocks of 8 kB).
pub const MAX_BLOCKS: u32 = 131_072;
/// PostgreSQL's default (and lifeboat's only supported) block size.
pub const BLCKSZ: u64 = 8192;

/// The header of an `INCREMENTAL.*` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalHeader {
    /// The relation segment's length in blocks when the backup started: blocks at or past
    /// it do not exist in the result.
    pub truncation_block_length: u32,
    /// The blocks this file carries, in file order.
    pub blocks: Vec<u32>,
}

impl IncrementalHeader {
    /// Bytes before the first block (the header, padded to BLCKSZ when there are blocks).
    pub fn header_len(&self) -> u64 {
        let raw = 12 + 4 * self.blocks.len() as u64;
        if self.blocks.is_empty() {
            raw
        } else {
            raw.div_ceil(BLCKSZ) * BLCKSZ
        }
    }

    /// The file size the header implies.
    pub fn file_len(&self) -> u64 {
        self.header_len() + BLCKSZ * self.blocks.len() as u64
    }
}

/// Why an `INCREMENTAL.*` header is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("bad magic 0x{0:08x} (expected 0x{INCREMENTAL_MAGIC:08x})")]
    Magic(u32),
    #[error("{0} blocks is more than a relation segment holds ({MAX_BLOCKS})")]
    TooManyBlocks(u32),
    #[error("truncation block length {0} is more than a relation segment holds ({MAX_BLOCKS})")]
    Truncation(u32),
    #[error("the file is {have} bytes, shorter than its header ({need} bytes)")]
    Short { have: u64, need: u64 },
    #[error("the file is {have} bytes; its header says {want}")]
    Length { have: u64, want: u64 },
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// How many leading bytes of a file are needed to read its header, given what is known so
/// far (`None`: not enough to tell yet, 12 bytes are needed).
fn needed(prefix: &[u8]) -> Option<u64> {
    if prefix.len() < 12 {
        return None;
    }
    Some(12 + 4 * u64::from(le32(prefix, 4).min(MAX_BLOCKS + 1)))
}

/// Parse the header from the first bytes of an `INCREMENTAL.*` file of `file_len` bytes.
pub fn parse_header(prefix: &[u8], file_len: u64) -> Result<IncrementalHeader, HeaderError> {
    if prefix.len() < 12 {
        return Err(HeaderError::Short {
            have: file_len.min(prefix.len() as u64),
            need: 12,
        });
    }
    let magic = le32(prefix, 0);
    if magic != INCREMENTAL_MAGIC {
        return Err(HeaderError::Magic(magic));
    }
    let n = le32(prefix, 4);
    if n > MAX_BLOCKS {
        return Err(HeaderError::TooManyBlocks(n));
    }
    let trunc = le32(prefix, 8);
    if trunc > MAX_BLOCKS {
        return Err(HeaderError::Truncation(trunc));
    }
    let need = 12 + 4 * n as usize;
    if prefix.len() < need {
        return Err(HeaderError::Short {
            have: file_len.min(prefix.len() as u64),
            need: need as u64,
        });
    }
    let blocks: Vec<u32> = (0..n as usize).map(|i| le32(prefix, 12 + 4 * i)).collect();
    let h = IncrementalHeader {
        truncation_block_length: trunc,
        blocks,
    };
    if h.file_len() != file_len {
        return Err(HeaderError::Length {
            have: file_len,
            want: h.file_len(),
        });
    }
    Ok(h)
}

/// One regular file of a backup's tar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarMember {
    /// The tar it is in (`base.tar`, `<oid>.tar`).
    pub tar: String,
    /// Its path inside that tar.
    pub path: String,
    /// Offset of its content in the tar's plain stream.
    pub offset: u64,
    pub size: u64,
    /// For `INCREMENTAL.*` files: the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalHeader>,
}

/// A tar stream that cannot be indexed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("{tar}: unreadable tar header at offset {offset}: {what}")]
    Tar {
        tar: String,
        offset: u64,
        what: String,
    },
    #[error("{tar}: {path}: INCREMENTAL header: {source}")]
    Header {
        tar: String,
        path: String,
        source: HeaderError,
    },
}

enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Inside a member's content: `left` bytes of it, then `pad` bytes of padding.
    Content { left: u64, pad: u64 },
    /// After the end-of-archive blocks.
    End,
}

/// Indexes one tar stream fed in arbitrary pieces.
pub struct TarIndexer {
    tar: String,
    offset: u64,
    state: State,
    buf: Vec<u8>,
    /// The member being read: index into `members`, and its header prefix when it is an
    /// `INCREMENTAL.*` file.
    current: Option<(usize, Option<Vec<u8>>)>,
    long_name: Option<String>,
    /// The content of a GNU long-name member being read.
    long_buf: Option<Vec<u8>>,
    members: Vec<TarMember>,
    zero_blocks: u32,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256 (GNU), used for sizes of 8 GiB and more
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Whether a tar path names an `INCREMENTAL.*` file.
pub fn is_incremental(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|b| b.starts_with("INCREMENTAL."))
}

impl TarIndexer {
    pub fn new(tar: impl Into<String>) -> TarIndexer {
        TarIndexer {
            tar: tar.into(),
            offset: 0,
            state: State::Header,
            buf: Vec::with_capacity(512),
            current: None,
            long_name: None,
            long_buf: None,
            members: Vec::new(),
            zero_blocks: 0,
        }
    }

    fn tar_err(&self, what: impl Into<String>) -> IndexError {
        IndexError::Tar {
            tar: self.tar.clone(),
            offset: self.offset,
            what: what.into(),
        }
    }

    /// Feed the next bytes of the stream.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), IndexError> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Header => {
                    let take = (512 - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == 512 {
                        let h = std::mem::take(&mut self.buf);
                        self.header(&h)?;
                        self.offset += 512;
                    }
                }
                State::Content { left, pad } => {
                    if *left > 0 {
                        let take = (*left).min(data.len() as u64) as usize;
                        let piece = &data[..take];
                        *left -= take as u64;
                        if let Some((_, Some(prefix))) = &mut self.current {
                            // The block count, once read, says how much more is needed.
                            let mut used = 0;
                            loop {
                                let want = needed(prefix).unwrap_or(12) as usize;
                                if prefix.len() >= want || used == piece.len() {
                                    break;
                                }
                                let more = (want - prefix.len()).min(piece.len() - used);
                                prefix.extend_from_slice(&piece[used..used + more]);
                                used += more;
                            }
                        }
                        if let Some(lb) = &mut self.long_buf {
                            lb.extend_from_slice(piece);
                        }
                        data = &data[take..];
                        self.offset += take as u64;
                        if *left == 0 {
                            self.finish_member()?;
                        }
                    } else {
                        let take = (*pad).min(data.len() as u64);
                        *pad -= take;
                        data = &data[take as usize..];
                        self.offset += take;
                    }
                    if let State::Content { left: 0, pad: 0 } = self.state {
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8]) -> Result<(), IndexError> {
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        self.zero_blocks = 0;
        let size = octal(&h[124..136]).ok_or_else(|| self.tar_err("bad size field"))?;
        let kind = h[156];
        let magic_ustar = &h[257..262] == b"ustar";
        let mut name = cstr(&h[0..100]);
        if magic_ustar {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(l) = self.long_name.take() {
            name = l;
        }
        let pad = (512 - size % 512) % 512;
        match kind {
            b'0' | 0 | b'7' => {
                let prefix = is_incremental(&name).then(Vec::new);
                self.members.push(TarMember {
                    tar: self.tar.clone(),
                    path: name,
                    offset: self.offset + 512,
                    size,
                    incremental: None,
                });
                self.current = Some((self.members.len() - 1, prefix));
            }
            b'L' => self.long_buf = Some(Vec::new()),
            _ => {}
        }
        self.state = State::Content { left: size, pad };
        if size == 0 {
            self.finish_member()?;
            if pad == 0 {
                self.state = State::Header;
            }
        }
        Ok(())
    }

    fn finish_member(&mut self) -> Result<(), IndexError> {
        if let Some(lb) = self.long_buf.take() {
            self.long_name = Some(cstr(&lb));
        }
        if let Some((i, Some(prefix))) = self.current.take() {
            let m = &mut self.members[i];
            let h = parse_header(&prefix, m.size).map_err(|source| IndexError::Header {
                tar: m.tar.clone(),
                path: m.path.clone(),
                source,
            })?;
            m.incremental = Some(h);
        }
        Ok(())
    }

    /// The members seen, in stream order.
    pub fn finish(self) -> Vec<TarMember> {
        self.members
    }
}

/// Where one block of a reconstructed file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSource {
    /// A block no backup holds below the length: zeros (WAL replay fixes it up, as
    /// `pg_combinebackup` trusts too).
    Zero,
    /// `len` bytes at `offset` in the content of member `member` of backup `backup`
    /// (indexes into the chain and its `members`).
    From {
        backup: usize,
        member: usize,
        offset: u64,
    },
}

/// How one file of the combined backup is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Combine {
    /// Copied whole from the newest backup (`member` of the last backup of the chain).
    Copy { member: usize },
    /// Rebuilt block by block: `blocks.len()` blocks of BLCKSZ.
    Reconstruct { blocks: Vec<BlockSource> },
}

/// One file of the combined backup: its tar, its path (without `INCREMENTAL.`), how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CombinedFile {
    pub tar: String,
    pub path: String,
    pub how: Combine,
}

/// A chain that cannot be combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CombineError {
    #[error("the chain is empty")]
    Empty,
    #[error("backup {0} of the chain has no file index (taken by an older lifeboat)")]
    NoIndex(usize),
    #[error("{tar}: {path} is incremental in backup {backup} of the chain, but the backup before it has neither {path} nor its INCREMENTAL file")]
    Missing {
        tar: String,
        path: String,
        backup: usize,
    },
}

/// The path a member stands for, and whether it is incremental: `dir/INCREMENTAL.16384`
/// stands for `dir/16384`.
pub fn real_path(path: &str) -> (String, bool) {
    match path.rsplit_once('/') {
        Some((dir, base)) if base.starts_with("INCREMENTAL.") => {
            (format!("{dir}/{}", &base["INCREMENTAL.".len()..]), true)
        }
        None if path.starts_with("INCREMENTAL.") => {
            (path["INCREMENTAL.".len()..].to_string(), true)
        }
        _ => (path.to_string(), false),
    }
}

/// Plan the combination of a chain (`chain[0]` the full backup, the last the newest, each
/// given by its tar index) with `pg_combinebackup`'s semantics:
/// - the newest backup's file list decides what exists; its plain files are copied;
/// - each of its `INCREMENTAL.*` files is rebuilt: its own blocks first; its length is its
///   truncation block length (or past its highest block); then older backups, newest
///   first, give the blocks still missing below the newest truncation block length, an
///   older incremental file its blocks and the first full copy found every block it has,
///   which ends the search; blocks nobody holds are zeros.
pub fn plan_combine(chain: &[&[TarMember]]) -> Result<Vec<CombinedFile>, CombineError> {
    let Some((newest, older)) = chain.split_last() else {
        return Err(CombineError::Empty);
    };
    if let Some(i) = chain.iter().position(|m| m.is_empty()) {
        return Err(CombineError::NoIndex(i));
    }
    // Per backup: (tar, path as stored) -> member index.
    let index: Vec<std::collections::HashMap<(&str, &str), usize>> = older
        .iter()
        .map(|ms| {
            ms.iter()
                .enumerate()
                .map(|(i, m)| ((m.tar.as_str(), m.path.as_str()), i))
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(newest.len());
    for (mi, m) in newest.iter().enumerate() {
        let (path, _) = real_path(&m.path);
        let Some(h) = &m.incremental else {
            out.push(CombinedFile {
                tar: m.tar.clone(),
                path,
                how: Combine::Copy { member: mi },
            });
            continue;
        };
        let trunc = h.truncation_block_length;
        let length = h.blocks.iter().map(|b| b + 1).fold(trunc, u32::max);
        let mut blocks = vec![BlockSource::Zero; length as usize];
        let mut have = vec![false; length as usize];
        let newest_ix = chain.len() - 1;
        for (i, &b) in h.blocks.iter().enumerate() {
            if !have[b as usize] {
                have[b as usize] = true;
                blocks[b as usize] = BlockSource::From {
                    backup: newest_ix,
                    member: mi,
                    offset: h.header_len() + BLCKSZ * i as u64,
                };
            }
        }
        let inc_name = match path.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/INCREMENTAL.{base}"),
            None => format!("INCREMENTAL.{path}"),
        };
        for bi in (0..older.len()).rev() {
            if let Some(&fi) = index[bi].get(&(m.tar.as_str(), path.as_str())) {
                let f = &older[bi][fi];
                for b in 0..trunc.min(length) {
                    if !have[b as usize] && u64::from(b) * BLCKSZ < f.size {
                        have[b as usize] = true;
                        blocks[b as usize] = BlockSource::From {
                            backup: bi,
                            member: fi,
                            offset: u64::from(b) * BLCKSZ,
                        };
                    }
                }
                break;
            }
            let Some(&ii) = index[bi].get(&(m.tar.as_str(), inc_name.as_str())) else {
                return Err(CombineError::Missing {
                    tar: m.tar.clone(),
                    path,
                    backup: bi + 1,
                });
            };
            let f = &older[bi][ii];
            if let Some(oh) = &f.incremental {
                for (i, &b) in oh.blocks.iter().enumerate() {
                    if b < trunc && !have[b as usize] {
                        have[b as usize] = true;
                        blocks[b as usize] = BlockSource::From {
                            backup: bi,
                            member: ii,
                            offset: oh.header_len() + BLCKSZ * i as u64,
                        };
                    }
                }
            }
        }
        out.push(CombinedFile {
            tar: m.tar.clone(),
            path,
            how: Combine::Reconstruct { blocks },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incremental_file(blocks: &[u32], trunc: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
        v.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
        v.extend_from_slice(&trunc.to_le_bytes());
        for b in blocks {
            v.extend_from_slice(&b.to_le_bytes());
        }
        if !blocks.is_empty() {
            v.resize(8192, 0);
            for b in blocks {
                v.extend(std::iter::repeat_n(*b as u8, 8192));
            }
        }
        v
    }

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn indexes_members_and_incremental_headers_in_any_piece_size() {
        let inc = incremental_file(&[3, 7, 1], 9);
        let empty = incremental_file(&[], 4);
        let tar = tar_of(&[
            ("PG_VERSION", b"17\n".to_vec()),
            ("base/5/INCREMENTAL.16384", inc.clone()),
            ("base/5/INCREMENTAL.16390", empty.clone()),
            ("global/pg_control", vec![1u8; 8192]),
        ]);
        for piece in [1usize, 7, 511, 512, 513, 4096, 1 << 20] {
            let mut ix = TarIndexer::new("base.tar");
            for c in tar.chunks(piece) {
                ix.push(c).unwrap();
            }
            let m = ix.finish();
            assert_eq!(m.len(), 4, "piece {piece}");
            assert_eq!(m[0].path, "PG_VERSION");
            assert_eq!(&tar[m[0].offset as usize..][..3], b"17\n");
            assert_eq!(m[1].size, inc.len() as u64);
            assert_eq!(
                m[1].incremental,
                Some(IncrementalHeader {
                    truncation_block_length: 9,
                    blocks: vec![3, 7, 1]
                })
            );
            assert_eq!(&tar[m[1].offset as usize..][..inc.len()], &inc[..]);
            assert_eq!(
                m[2].incremental,
                Some(IncrementalHeader {
                    truncation_block_length: 4,
                    blocks: vec![]
                })
            );
            assert_eq!(m[3].incremental, None);
            assert_eq!(m[3].size, 8192);
        }
    }

    #[test]
    fn corrupt_headers_are_refused_with_the_file_named() {
        let mut bad = incremental_file(&[1], 2);
        bad[0] ^= 0xff;
        let tar = tar_of(&[("base/1/INCREMENTAL.1259", bad)]);
        let mut ix = TarIndexer::new("base.tar");
        let e = ix.push(&tar).unwrap_err();
        assert_eq!(
            e.to_string(),
            "base.tar: base/1/INCREMENTAL.1259: INCREMENTAL header: bad magic 0xd3ae1ff2 (expected 0xd3ae1f0d)"
        );
        // too many blocks for a segment (upstream's pg_combinebackup refuses it too)
        let mut f = incremental_file(&[], 2);
        f[4..8].copy_from_slice(&(MAX_BLOCKS + 1).to_le_bytes());
        let tar = tar_of(&[("base/1/INCREMENTAL.1259", f)]);
        let e = TarIndexer::new("base.tar").push(&tar).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("131073 blocks is more than a relation segment holds (131072)"),
            "{e}"
        );
        // a size that disagrees with the header
        let mut f = incremental_file(&[1], 2);
        f.pop();
        let tar = tar_of(&[("base/1/INCREMENTAL.1259", f)]);
        let e = TarIndexer::new("base.tar").push(&tar).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("the file is 16383 bytes; its header says 16384"),
            "{e}"
        );
    }

    /// Fuzzed: any bytes as an INCREMENTAL file give a header or an error, never a panic,
    /// and an accepted header describes exactly the file.
    #[test]
    fn arbitrary_headers_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let mut f: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if x % 3 == 0 && f.len() >= 4 {
                f[..4].copy_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
            }
            if let Ok(h) = parse_header(&f, f.len() as u64) {
                assert_eq!(h.file_len(), f.len() as u64);
            }
        }
    }

    fn member(tar: &str, path: &str, size: u64, inc: Option<(&[u32], u32)>) -> TarMember {
        TarMember {
            tar: tar.into(),
            path: path.into(),
            offset: 0,
            size,
            incremental: inc.map(|(b, t)| IncrementalHeader {
                truncation_block_length: t,
                blocks: b.to_vec(),
            }),
        }
    }

    fn from(backup: usize, member: usize, offset: u64) -> BlockSource {
        BlockSource::From {
            backup,
            member,
            offset,
        }
    }

    /// pg_combinebackup's rules on one relation across full + 2 incrementals: the newest
    /// blocks win, the newest truncation length bounds the older sources, the full copy
    /// ends the search, and the newest file list decides what exists.
    #[test]
    fn combine_follows_pg_combinebackups_rules() {
        let full = vec![
            member("base.tar", "PG_VERSION", 3, None),
            member("base.tar", "base/5/16384", 6 * BLCKSZ, None),
            member("base.tar", "base/5/dropped", BLCKSZ, None),
        ];
        // incremental 1: blocks 1 and 4 changed, the relation then had 6 blocks
        let inc1 = vec![
            member("base.tar", "PG_VERSION", 3, None),
            member(
                "base.tar",
                "base/5/INCREMENTAL.16384",
                3 * BLCKSZ,
                Some((&[4, 1], 6)),
            ),
            member("base.tar", "base/5/dropped", BLCKSZ, None),
        ];
        // incremental 2: truncated to 5 blocks, block 1 changed again, grown to block 7
        let inc2 = vec![
            member("base.tar", "PG_VERSION", 3, None),
            member(
                "base.tar",
                "base/5/INCREMENTAL.16384",
                3 * BLCKSZ,
                Some((&[7, 1], 5)),
            ),
        ];
        let plan = plan_combine(&[&full, &inc1, &inc2]).unwrap();
        assert_eq!(plan.len(), 2, "the dropped file is gone");
        assert_eq!(plan[0].how, Combine::Copy { member: 0 });
        assert_eq!(plan[1].path, "base/5/16384");
        let Combine::Reconstruct { blocks } = &plan[1].how else {
            panic!("{plan:?}")
        };
        assert_eq!(
            blocks,
            &vec![
                from(0, 1, 0),
                from(2, 1, BLCKSZ + BLCKSZ), // inc2's second block
                from(0, 1, 2 * BLCKSZ),
                from(0, 1, 3 * BLCKSZ),
                from(1, 1, BLCKSZ), // inc1's first block (block 4)
                BlockSource::Zero,  // past inc2's truncation length: not taken from older
                BlockSource::Zero,
                from(2, 1, BLCKSZ),
            ]
        );
    }

    #[test]
    fn combine_refuses_a_broken_chain() {
        let full = vec![member("base.tar", "PG_VERSION", 3, None)];
        let inc = vec![member(
            "base.tar",
            "base/5/INCREMENTAL.1",
            BLCKSZ * 2,
            Some((&[0], 1)),
        )];
        assert_eq!(
            plan_combine(&[&full, &inc]).unwrap_err().to_string(),
            "base.tar: base/5/1 is incremental in backup 1 of the chain, but the backup before it has neither base/5/1 nor its INCREMENTAL file"
        );
        assert_eq!(plan_combine(&[]).unwrap_err(), CombineError::Empty);
        assert_eq!(
            plan_combine(&[&[], &inc]).unwrap_err(),
            CombineError::NoIndex(0)
        );
    }
}
