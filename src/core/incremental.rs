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
    #[error("block {0} is not below the truncation block length {1}")]
    BlockPastTruncation(u32, u32),
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
    if let Some(b) = blocks.iter().find(|&&b| b >= trunc) {
        return Err(HeaderError::BlockPastTruncation(*b, trunc));
    }
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
        // a block at or past the truncation length
        let tar = tar_of(&[("base/1/INCREMENTAL.1259", incremental_file(&[5], 5))]);
        let e = TarIndexer::new("base.tar").push(&tar).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("block 5 is not below the truncation block length 5"),
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
}
