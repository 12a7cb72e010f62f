//! The BASE_BACKUP command and its response, as a stream of events.
//!
//! Two wire formats exist:
//! - PostgreSQL 14 (keyword syntax): one CopyOutResponse per tablespace, in the order of the
//!   tablespace result set, each carrying a raw tar **without** its two 512-byte end blocks
//!   (the [`Decoder`] appends them), then one CopyOut with the manifest.
//! - 15+ (parenthesised syntax): a single CopyOutResponse whose CopyData payloads start with
//!   a type byte: `'n'` new archive (name, tablespace location), `'d'` data, `'p'` progress
//!   (Int64), `'m'` the manifest follows (as `'d'` messages). The server terminates its tars.
//!
//! Both are framed by a start row (LSN, timeline) and a tablespace result set before the
//! COPY, and an end row, CommandComplete and ReadyForQuery after it.
//!
//! The [`Decoder`] is pure (backend messages in, events out) and is tested from byte
//! fixtures; [`BaseBackup`] only pulls messages off a [`Connection`] into it, so a caller
//! streams the archives without ever holding a whole tar.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::{Connection, PgError};
use crate::core::wal::{Lsn, TimelineId};
use crate::pg::protocol::{quote_literal, Backend};

/// Two 512-byte zero blocks: the end of a tar archive.
pub const TAR_END: [u8; 1024] = [0u8; 1024];

/// What to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRequest {
    pub label: String,
    /// Immediate checkpoint rather than a spread one.
    pub fast: bool,
    /// Server-side rate limit in kB/s (32..=1048576), as pg_basebackup's `--max-rate`.
    pub max_rate: Option<u32>,
    /// `INCREMENTAL` (17+): relative to the manifest uploaded with `UPLOAD_MANIFEST` on
    /// the same connection.
    pub incremental: bool,
}

/// The BASE_BACKUP command for a server of major version `major`.
pub fn command(major: u32, req: &BackupRequest) -> String {
    let label = quote_literal(&req.label);
    if major < 15 {
        let mut s = format!("BASE_BACKUP LABEL {label} PROGRESS");
        if req.fast {
            s.push_str(" FAST");
        }
        s.push_str(" NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'");
        if let Some(r) = req.max_rate {
            s.push_str(&format!(" MAX_RATE {r}"));
        }
        s.push_str(" TABLESPACE_MAP");
        s
    } else {
        let mut s = format!(
            "BASE_BACKUP (LABEL {label}, PROGRESS, CHECKPOINT '{}', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP",
            if req.fast { "fast" } else { "spread" }
        );
        if let Some(r) = req.max_rate {
            s.push_str(&format!(", MAX_RATE {r}"));
        }
        if req.incremental && major >= 17 {
            s.push_str(", INCREMENTAL");
        }
        s.push(')');
        s
    }
}

/// One row of the tablespace result set. The base directory has no oid and no location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in bytes (the server reports kB; `None` without PROGRESS).
    pub size: Option<u64>,
}

impl Tablespace {
    /// The archive name PostgreSQL gives this tablespace's tar.
    pub fn archive_name(&self) -> String {
        match self.oid {
            Some(o) => format!("{o}.tar"),
            None => "base.tar".into(),
        }
    }
}

/// What the server said before the first archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    pub start_lsn: Lsn,
    pub timeline: TimelineId,
    pub tablespaces: Vec<Tablespace>,
}

impl BackupStart {
    /// Sum of the tablespace size estimates, in bytes.
    pub fn estimated_size(&self) -> u64 {
        self.tablespaces
            .iter()
            .filter_map(|t| t.size)
            .fold(0u64, u64::saturating_add)
    }
}

/// One event of the backup stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new tar archive begins; `Data` events until the next `Archive` or `ManifestStart`
    /// belong to it.
    Archive {
        name: String,
        tablespace_oid: Option<u32>,
        location: Option<String>,
    },
    Data(Bytes),
    /// Cumulative bytes sent by the server (15+ only).
    Progress(u64),
    /// The backup manifest follows as `Data` events.
    ManifestStart,
    /// The backup is complete (CommandComplete and ReadyForQuery were received).
    End {
        end_lsn: Lsn,
        timeline: TimelineId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the start row.
    Start,
    /// Reading the tablespace result set.
    Tablespaces,
    /// 14: inside the CopyOut of tablespace `i` (`i == tablespaces.len()`: the manifest).
    Copy14(usize),
    /// 14: between CopyOuts, `i` done.
    Between14(usize),
    /// 15+: inside the single CopyOut.
    Copy15,
    /// After the COPY: the end row, CommandComplete, ReadyForQuery.
    After,
    Done,
}

/// The BASE_BACKUP response state machine: feed it backend messages, take events out.
#[derive(Debug)]
pub struct Decoder {
    new_format: bool,
    phase: Phase,
    start_lsn: Option<(Lsn, TimelineId)>,
    tablespaces: Vec<Tablespace>,
    tablespace_columns: bool,
    end: Option<(Lsn, TimelineId)>,
    events: VecDeque<Event>,
}

fn text(v: &[Option<Bytes>], i: usize) -> Option<String> {
    v.get(i)
        .and_then(|b| b.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn bad(what: impl Into<String>) -> PgError {
    PgError::Protocol(format!("BASE_BACKUP: {}", what.into()))
}

fn lsn_row(v: &[Option<Bytes>], which: &str) -> Result<(Lsn, TimelineId), PgError> {
    let lsn = text(v, 0)
        .and_then(|s| s.parse::<Lsn>().ok())
        .ok_or_else(|| bad(format!("unreadable {which} position {:?}", text(v, 0))))?;
    let tli = text(v, 1)
        .and_then(|s| s.parse::<TimelineId>().ok())
        .ok_or_else(|| bad(format!("unreadable {which} timeline {:?}", text(v, 1))))?;
    Ok((lsn, tli))
}

impl Decoder {
    /// A decoder for a server of major version `major`.
    pub fn new(major: u32) -> Decoder {
        Decoder {
            new_format: major >= 15,
            phase: Phase::Start,
            start_lsn: None,
            tablespaces: Vec::new(),
            tablespace_columns: false,
            end: None,
            events: VecDeque::new(),
        }
    }

    /// The start row and tablespaces, once the first archive has begun.
    pub fn start(&self) -> Option<BackupStart> {
        if matches!(self.phase, Phase::Start | Phase::Tablespaces) {
            return None;
        }
        let (start_lsn, timeline) = self.start_lsn?;
        Some(BackupStart {
            start_lsn,
            timeline,
            tablespaces: self.tablespaces.clone(),
        })
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The next decoded event, if any.
    pub fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Feed one backend message.
    pub fn feed(&mut self, msg: Backend) -> Result<(), PgError> {
        match msg {
            Backend::Notice(_) | Backend::ParameterStatus { .. } => return Ok(()),
            // The server goes to ReadyForQuery after an error; we report it at once.
            Backend::Error(f) => return Err(PgError::from_server(f)),
            _ => {}
        }
        match self.phase {
            Phase::Start => match msg {
                Backend::CommandComplete(_) if self.start_lsn.is_some() => {
                    self.phase = Phase::Tablespaces;
                    Ok(())
                }
                // The CommandComplete after the start row is not sent by every version.
                Backend::RowDescription(_) | Backend::CopyOutResponse
                    if self.start_lsn.is_some() =>
                {
                    self.phase = Phase::Tablespaces;
                    self.feed(msg)
                }
                Backend::RowDescription(_) => Ok(()),
                Backend::DataRow(v) => {
                    self.start_lsn = Some(lsn_row(&v, "start")?);
                    Ok(())
                }
                other => Err(bad(format!("unexpected {other:?} before the start row"))),
            },
            Phase::Tablespaces => match msg {
                Backend::RowDescription(cols) if !self.tablespace_columns => {
                    if cols.len() < 2 {
                        return Err(bad(format!("unexpected tablespace columns {cols:?}")));
                    }
                    self.tablespace_columns = true;
                    Ok(())
                }
                Backend::DataRow(v) if self.tablespace_columns => {
                    let oid = match text(&v, 0) {
                        None => None,
                        Some(s) => Some(
                            s.parse::<u32>()
                                .map_err(|_| bad(format!("unreadable tablespace oid {s:?}")))?,
                        ),
                    };
                    let size = text(&v, 2)
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(|kb| kb.saturating_mul(1024));
                    self.tablespaces.push(Tablespace {
                        oid,
                        location: text(&v, 1),
                        size,
                    });
                    Ok(())
                }
                Backend::CommandComplete(_) => Ok(()),
                Backend::CopyOutResponse if self.tablespace_columns => {
                    if self.new_format {
                        self.phase = Phase::Copy15;
                    } else {
                        self.begin14(0)?;
                    }
                    Ok(())
                }
                other => Err(bad(format!(
                    "unexpected {other:?} in the tablespace header"
                ))),
            },
            Phase::Copy14(i) => match msg {
                Backend::CopyData(d) => {
                    if !d.is_empty() {
                        self.events.push_back(Event::Data(d));
                    }
                    Ok(())
                }
                Backend::CopyDone => {
                    if i < self.tablespaces.len() {
                        self.events
                            .push_back(Event::Data(Bytes::from_static(&TAR_END)));
                    }
                    self.phase = Phase::Between14(i);
                    Ok(())
                }
                other => Err(bad(format!("unexpected {other:?} inside an archive"))),
            },
            Phase::Between14(i) => match msg {
                Backend::CopyOutResponse if i < self.tablespaces.len() => self.begin14(i + 1),
                Backend::CommandComplete(_) => Ok(()),
                Backend::RowDescription(_) | Backend::DataRow(_)
                    if i + 1 >= self.tablespaces.len() =>
                {
                    self.phase = Phase::After;
                    self.feed(msg)
                }
                other => Err(bad(format!("unexpected {other:?} between archives"))),
            },
            Phase::Copy15 => match msg {
                Backend::CopyData(mut d) => {
                    if d.is_empty() {
                        return Err(bad("empty CopyData"));
                    }
                    let kind = d.get_u8();
                    match kind {
                        b'n' => {
                            let name = cstr(&mut d)?;
                            let loc = cstr(&mut d)?;
                            let ts = self
                                .tablespaces
                                .iter()
                                .find(|t| t.location.as_deref() == Some(loc.as_str()));
                            let tablespace_oid = if loc.is_empty() {
                                None
                            } else {
                                ts.and_then(|t| t.oid)
                            };
                            self.events.push_back(Event::Archive {
                                name,
                                tablespace_oid,
                                location: (!loc.is_empty()).then_some(loc),
                            });
                        }
                        b'd' => {
                            if !d.is_empty() {
                                self.events.push_back(Event::Data(d));
                            }
                        }
                        b'p' => {
                            if d.len() < 8 {
                                return Err(bad("truncated progress message"));
                            }
                            self.events.push_back(Event::Progress(d.get_u64()));
                        }
                        b'm' => self.events.push_back(Event::ManifestStart),
                        t => {
                            return Err(bad(format!(
                                "unknown archive message type '{}'",
                                t as char
                            )))
                        }
                    }
                    Ok(())
                }
                Backend::CopyDone => {
                    self.phase = Phase::After;
                    Ok(())
                }
                other => Err(bad(format!("unexpected {other:?} inside the COPY"))),
            },
            Phase::After => match msg {
                Backend::RowDescription(_) => Ok(()),
                Backend::DataRow(v) => {
                    self.end = Some(lsn_row(&v, "end")?);
                    Ok(())
                }
                Backend::CommandComplete(_) => Ok(()),
                Backend::ReadyForQuery(_) => {
                    let (end_lsn, timeline) = self
                        .end
                        .ok_or_else(|| bad("the server finished without an end position"))?;
                    self.phase = Phase::Done;
                    self.events.push_back(Event::End { end_lsn, timeline });
                    Ok(())
                }
                other => Err(bad(format!("unexpected {other:?} after the archives"))),
            },
            Phase::Done => Err(bad(format!("unexpected {msg:?} after the end"))),
        }
    }

    fn begin14(&mut self, i: usize) -> Result<(), PgError> {
        self.phase = Phase::Copy14(i);
        match self.tablespaces.get(i) {
            Some(t) => self.events.push_back(Event::Archive {
                name: t.archive_name(),
                tablespace_oid: t.oid,
                location: t.location.clone(),
            }),
            None => self.events.push_back(Event::ManifestStart),
        }
        Ok(())
    }
}

fn cstr(b: &mut Bytes) -> Result<String, PgError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| bad("unterminated string in a new-archive message"))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

/// A running BASE_BACKUP on a connection.
pub struct BaseBackup<'a> {
    conn: &'a mut Connection,
    dec: Decoder,
    pub start: BackupStart,
}

impl<'a> BaseBackup<'a> {
    /// Send BASE_BACKUP and read up to the first archive.
    pub async fn begin(conn: &'a mut Connection, req: &BackupRequest) -> Result<Self, PgError> {
        let major = conn.server_major();
        conn.send_query(&command(major, req)).await?;
        let mut dec = Decoder::new(major);
        loop {
            if let Some(start) = dec.start() {
                return Ok(BaseBackup { conn, dec, start });
            }
            let msg = conn.recv().await?;
            dec.feed(msg)?;
        }
    }

    /// The next event; `None` after [`Event::End`].
    pub async fn next(&mut self) -> Result<Option<Event>, PgError> {
        loop {
            if let Some(e) = self.dec.pop() {
                return Ok(Some(e));
            }
            if self.dec.is_done() {
                return Ok(None);
            }
            let msg = self.conn.recv().await?;
            self.dec.feed(msg)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::protocol::split_message;
    use bytes::{BufMut, BytesMut};

    fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
        out.put_u8(tag);
        out.put_u32(body.len() as u32 + 4);
        out.put_slice(body);
    }

    fn row_desc(out: &mut BytesMut, cols: &[&str]) {
        let mut b = BytesMut::new();
        b.put_u16(cols.len() as u16);
        for c in cols {
            b.put_slice(c.as_bytes());
            b.put_u8(0);
            b.put_slice(&[0u8; 18]);
        }
        msg(out, b'T', &b);
    }

    fn data_row(out: &mut BytesMut, vals: &[Option<&str>]) {
        let mut b = BytesMut::new();
        b.put_u16(vals.len() as u16);
        for v in vals {
            match v {
                None => b.put_i32(-1),
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
        msg(out, b'D', &b);
    }

    fn complete(out: &mut BytesMut, tag: &str) {
        msg(out, b'C', format!("{tag}\0").as_bytes());
    }

    fn header(out: &mut BytesMut, with_cc: bool) {
        row_desc(out, &["recptr", "tli"]);
        data_row(out, &[Some("0/2000028"), Some("1")]);
        if with_cc {
            complete(out, "SELECT");
        }
        row_desc(out, &["spcoid", "spclocation", "size"]);
        data_row(out, &[Some("16384"), Some("/ts/one"), Some("10")]);
        data_row(out, &[None, None, Some("30000")]);
        complete(out, "SELECT");
    }

    fn trailer(out: &mut BytesMut) {
        row_desc(out, &["recptr", "tli"]);
        data_row(out, &[Some("0/2000100"), Some("1")]);
        complete(out, "SELECT");
        complete(out, "BASE_BACKUP");
        msg(out, b'Z', b"I");
    }

    fn decode(major: u32, mut wire: BytesMut) -> (Option<BackupStart>, Vec<Event>) {
        let mut d = Decoder::new(major);
        let mut start = None;
        let mut events = Vec::new();
        // Feed in small reads, as a socket would deliver them.
        let all = wire.split().freeze();
        let mut buf = BytesMut::new();
        for chunk in all.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(m) = split_message(&mut buf).unwrap() {
                d.feed(m).unwrap();
                if start.is_none() {
                    start = d.start();
                }
                while let Some(e) = d.pop() {
                    events.push(e);
                }
            }
        }
        assert!(d.is_done());
        (start, events)
    }

    /// Merge consecutive Data events per archive, for comparison.
    fn merged(events: Vec<Event>) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for e in events {
            match e {
                Event::Archive { name, .. } => out.push((name, Vec::new())),
                Event::ManifestStart => out.push(("manifest".into(), Vec::new())),
                Event::Data(d) => out.last_mut().unwrap().1.extend_from_slice(&d),
                Event::Progress(_) => {}
                Event::End { end_lsn, timeline } => {
                    out.push((format!("end {end_lsn} {timeline}"), Vec::new()))
                }
            }
        }
        out
    }

    #[test]
    fn commands_per_version() {
        let req = BackupRequest {
            label: "it's mine".into(),
            fast: true,
            max_rate: Some(1024),
            incremental: false,
        };
        assert_eq!(
            command(14, &req),
            "BASE_BACKUP LABEL 'it''s mine' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' MAX_RATE 1024 TABLESPACE_MAP"
        );
        assert_eq!(
            command(15, &req),
            "BASE_BACKUP (LABEL 'it''s mine', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP, MAX_RATE 1024)"
        );
        let spread = BackupRequest {
            label: "x".into(),
            fast: false,
            max_rate: None,
            incremental: false,
        };
        let incr = BackupRequest {
            incremental: true,
            ..spread.clone()
        };
        assert_eq!(
            command(17, &incr),
            "BASE_BACKUP (LABEL 'x', PROGRESS, CHECKPOINT 'spread', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP, INCREMENTAL)"
        );
        assert_eq!(
            command(17, &spread),
            "BASE_BACKUP (LABEL 'x', PROGRESS, CHECKPOINT 'spread', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP)"
        );
        assert_eq!(
            command(14, &spread),
            "BASE_BACKUP LABEL 'x' PROGRESS NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP"
        );
    }

    /// Found by reading the decoder for fuzzing: a size near 2^64 kB overflowed (a panic
    /// in debug builds). Seen failing before the fix (attempt to multiply with overflow).
    #[test]
    fn huge_tablespace_sizes_saturate() {
        let mut w = BytesMut::new();
        row_desc(&mut w, &["recptr", "tli"]);
        data_row(&mut w, &[Some("0/2000028"), Some("1")]);
        complete(&mut w, "SELECT");
        row_desc(&mut w, &["spcoid", "spclocation", "size"]);
        data_row(
            &mut w,
            &[Some("16384"), Some("/ts/one"), Some("18446744073709551615")],
        );
        data_row(&mut w, &[None, None, Some("18014398509481984")]);
        complete(&mut w, "SELECT");
        for body in [&b"tablespace-tar"[..], &b"base-tar-1"[..]] {
            msg(&mut w, b'H', &[0, 0, 0]);
            msg(&mut w, b'd', body);
            msg(&mut w, b'c', b"");
        }
        msg(&mut w, b'H', &[0, 0, 0]);
        msg(&mut w, b'd', b"{\"manifest\":1}");
        msg(&mut w, b'c', b"");
        trailer(&mut w);
        let (start, _) = decode(14, w);
        let start = start.unwrap();
        assert_eq!(start.tablespaces[0].size, Some(u64::MAX));
        assert_eq!(start.estimated_size(), u64::MAX);
    }

    #[test]
    fn pg14_one_copy_per_tablespace_gets_tar_end_blocks() {
        let mut w = BytesMut::new();
        header(&mut w, true);
        for body in [&b"tablespace-tar"[..], &b"base-tar-1"[..]] {
            msg(&mut w, b'H', &[0, 0, 0]);
            msg(&mut w, b'd', body);
            msg(&mut w, b'd', b"+more");
            msg(&mut w, b'c', b"");
        }
        msg(&mut w, b'H', &[0, 0, 0]);
        msg(&mut w, b'd', b"{\"manifest\":1}");
        msg(&mut w, b'c', b"");
        trailer(&mut w);
        let (start, events) = decode(14, w);
        let start = start.unwrap();
        assert_eq!(start.start_lsn, Lsn(0x2000028));
        assert_eq!(start.timeline, TimelineId(1));
        assert_eq!(start.tablespaces.len(), 2);
        assert_eq!(start.tablespaces[0].oid, Some(16384));
        assert_eq!(start.tablespaces[1].oid, None);
        assert_eq!(start.estimated_size(), 30010 * 1024);
        assert!(events.contains(&Event::Archive {
            name: "16384.tar".into(),
            tablespace_oid: Some(16384),
            location: Some("/ts/one".into())
        }));
        let m = merged(events);
        let mut ts = b"tablespace-tar+more".to_vec();
        ts.extend_from_slice(&TAR_END);
        let mut base = b"base-tar-1+more".to_vec();
        base.extend_from_slice(&TAR_END);
        assert_eq!(
            m,
            vec![
                ("16384.tar".into(), ts),
                ("base.tar".into(), base),
                ("manifest".into(), b"{\"manifest\":1}".to_vec()),
                ("end 0/2000100 1".into(), vec![]),
            ]
        );
    }

    #[test]
    fn pg15_typed_copy_stream() {
        let mut w = BytesMut::new();
        header(&mut w, false);
        msg(&mut w, b'H', &[0, 0, 0]);
        msg(&mut w, b'd', b"nbase.tar\0\0");
        msg(&mut w, b'd', b"dbase-bytes");
        let mut p = vec![b'p'];
        p.extend_from_slice(&4096u64.to_be_bytes());
        msg(&mut w, b'd', &p);
        msg(&mut w, b'd', b"n16384.tar\0/ts/one\0");
        msg(&mut w, b'd', b"dts-bytes");
        msg(&mut w, b'd', b"m");
        msg(&mut w, b'd', b"d{\"m\":");
        msg(&mut w, b'd', b"d2}");
        msg(&mut w, b'c', b"");
        trailer(&mut w);
        let (start, events) = decode(16, w);
        assert_eq!(start.unwrap().tablespaces.len(), 2);
        assert!(events.contains(&Event::Progress(4096)));
        assert!(events.contains(&Event::Archive {
            name: "16384.tar".into(),
            tablespace_oid: Some(16384),
            location: Some("/ts/one".into())
        }));
        assert!(events.contains(&Event::Archive {
            name: "base.tar".into(),
            tablespace_oid: None,
            location: None
        }));
        assert_eq!(
            merged(events),
            vec![
                ("base.tar".into(), b"base-bytes".to_vec()),
                ("16384.tar".into(), b"ts-bytes".to_vec()),
                ("manifest".into(), b"{\"m\":2}".to_vec()),
                ("end 0/2000100 1".into(), vec![]),
            ]
        );
    }

    #[test]
    fn server_error_is_returned_with_its_fields() {
        let mut w = BytesMut::new();
        msg(
            &mut w,
            b'E',
            b"SERROR\0C53300\0Mnumber of requested standby connections exceeds max_wal_senders (currently 1)\0\0",
        );
        let mut d = Decoder::new(16);
        let m = split_message(&mut w).unwrap().unwrap();
        let e = d.feed(m).unwrap_err();
        assert_eq!(
            e.code(),
            Some(crate::pg::sqlstate::SqlState::TOO_MANY_CONNECTIONS)
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut w = BytesMut::new();
        header(&mut w, true);
        msg(&mut w, b'H', &[0, 0, 0]);
        msg(&mut w, b'd', b"xwhat");
        let mut d = Decoder::new(15);
        let mut err = None;
        while let Some(m) = split_message(&mut w).unwrap() {
            if let Err(e) = d.feed(m) {
                err = Some(e);
            }
        }
        assert_eq!(
            err.unwrap().to_string(),
            "BASE_BACKUP: unknown archive message type 'x'"
        );
    }
}
