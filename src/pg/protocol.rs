//! The PostgreSQL wire messages lifeboat speaks on a replication connection: bytes in,
//! messages out, no sockets.
//!
//! Backend framing is done here rather than with `postgres_protocol::message::backend`,
//! whose parser does not know CopyBothResponse (`'W'`) and NegotiateProtocolVersion (`'v'`).
//! Frontend messages are written with `postgres_protocol::message::frontend`.
//!
//! Invariant: [`split_message`] consumes bytes only when it returns a complete message, so a
//! reader may call it after every read (cancel-safe framing).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::core::wal::Lsn;
use crate::pg::sqlstate::SqlState;

/// Largest backend message we accept (a CopyData of WAL is at most 128 KiB; a base backup
/// chunk or a history file is far smaller than this).
const MAX_MESSAGE: usize = 1 << 30;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("protocol violation: {0}")]
    Violation(String),
}

fn violation(s: impl Into<String>) -> ProtocolError {
    ProtocolError::Violation(s.into())
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    /// `None` when the server sent no `C` field, or one that is not a SQLSTATE.
    pub code: Option<SqlState>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        Ok(())
    }
}

/// An authentication request (`'R'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    Other(u32),
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Auth(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData,
    ReadyForQuery(u8),
    RowDescription(Vec<String>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(String),
    EmptyQuery,
    CopyOutResponse,
    CopyBothResponse,
    CopyInResponse,
    CopyData(Bytes),
    CopyDone,
    Error(ErrorFields),
    Notice(ErrorFields),
    NegotiateProtocolVersion,
    /// A message we do not use (NotificationResponse, ParameterDescription, ...).
    Other(u8),
}

/// Take one complete backend message off the front of `buf`, or `None` if more bytes are
/// needed (nothing is consumed then).
/// The most [`split_message`] reserves ahead of a message's bytes (WAL and tar data come in
/// CopyData messages of at most 128 KiB; larger messages grow the buffer as they arrive).
const RESERVE_AHEAD: usize = 1 << 20;

pub fn split_message(buf: &mut BytesMut) -> Result<Option<Backend>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(violation(format!(
            "message '{}' has impossible length {len}",
            tag as char
        )));
    }
    if buf.len() < 1 + len {
        // Room for the rest, but never more than RESERVE_AHEAD before the bytes arrive:
        // a declared length is the peer's word, and 5 bytes must not allocate 1 GiB.
        buf.reserve((1 + len - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    parse_body(tag, body).map(Some)
}

struct Reader {
    b: Bytes,
    what: char,
}

impl Reader {
    fn short(&self) -> ProtocolError {
        violation(format!("message '{}' is truncated", self.what))
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        if self.b.remaining() < 1 {
            return Err(self.short());
        }
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        if self.b.remaining() < 2 {
            return Err(self.short());
        }
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        if self.b.remaining() < 4 {
            return Err(self.short());
        }
        Ok(self.b.get_u32())
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        self.u32().map(|v| v as i32)
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        if self.b.remaining() < 8 {
            return Err(self.short());
        }
        Ok(self.b.get_u64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if self.b.remaining() < n {
            return Err(self.short());
        }
        Ok(self.b.split_to(n))
    }
    fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| self.short())?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b.advance(end + 1);
        Ok(s)
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.b)
    }
}

fn parse_fields(r: &mut Reader) -> Result<ErrorFields, ProtocolError> {
    let mut f = ErrorFields::default();
    loop {
        let t = r.u8()?;
        if t == 0 {
            break;
        }
        let v = r.cstr()?;
        match t {
            b'V' => f.severity = v,
            b'S' if f.severity.is_empty() => f.severity = v,
            b'C' => f.code = v.parse().ok(),
            b'M' => f.message = v,
            b'D' => f.detail = Some(v),
            b'H' => f.hint = Some(v),
            _ => {}
        }
    }
    Ok(f)
}

fn parse_body(tag: u8, body: Bytes) -> Result<Backend, ProtocolError> {
    let mut r = Reader {
        b: body,
        what: tag as char,
    };
    Ok(match tag {
        b'R' => Backend::Auth(match r.u32()? {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => {
                let s = r.bytes(4)?;
                AuthRequest::Md5 {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(r.rest()),
            12 => AuthRequest::SaslFinal(r.rest()),
            n => AuthRequest::Other(n),
        }),
        b'S' => Backend::ParameterStatus {
            name: r.cstr()?,
            value: r.cstr()?,
        },
        b'K' => Backend::BackendKeyData,
        b'Z' => Backend::ReadyForQuery(r.u8()?),
        b'T' => {
            let n = r.u16()?;
            let mut cols = Vec::with_capacity(n as usize);
            for _ in 0..n {
                cols.push(r.cstr()?);
                r.bytes(18)?; // table oid, attnum, type oid, typlen, typmod, format
            }
            Backend::RowDescription(cols)
        }
        b'D' => {
            let n = r.u16()?;
            let mut vals = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let len = r.i32()?;
                if len < 0 {
                    vals.push(None);
                } else {
                    vals.push(Some(r.bytes(len as usize)?));
                }
            }
            Backend::DataRow(vals)
        }
        b'C' => Backend::CommandComplete(r.cstr()?),
        b'I' => Backend::EmptyQuery,
        b'H' => Backend::CopyOutResponse,
        b'W' => Backend::CopyBothResponse,
        b'G' => Backend::CopyInResponse,
        b'd' => Backend::CopyData(r.rest()),
        b'c' => Backend::CopyDone,
        b'E' => Backend::Error(parse_fields(&mut r)?),
        b'N' => Backend::Notice(parse_fields(&mut r)?),
        b'v' => Backend::NegotiateProtocolVersion,
        other => Backend::Other(other),
    })
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    now - PG_EPOCH_UNIX_SECS * 1_000_000
}

/// A message inside the CopyBoth stream of `START_REPLICATION`, server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes starting at `start`. `wal_end` is the server's send limit, not this
    /// chunk's end: the chunk ends at `start + data.len()`.
    XLogData {
        start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

impl ReplicationMessage {
    pub fn parse(payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
        let mut r = Reader {
            b: payload,
            what: 'd',
        };
        match r.u8()? {
            b'w' => Ok(ReplicationMessage::XLogData {
                start: Lsn(r.u64()?),
                wal_end: Lsn(r.u64()?),
                send_time: r.u64()? as i64,
                data: r.rest(),
            }),
            b'k' => Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(r.u64()?),
                send_time: r.u64()? as i64,
                reply_requested: r.u8()? != 0,
            }),
            t => Err(violation(format!(
                "unexpected replication message type '{}' in the WAL stream",
                t as char
            ))),
        }
    }
}

/// A standby status update (`'r'`), framed as a CopyData message ready to send.
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: i64,
    reply_requested: bool,
) -> Bytes {
    let mut b = BytesMut::with_capacity(40);
    b.put_u8(b'd');
    b.put_u32(4 + 1 + 8 * 4 + 1);
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(now);
    b.put_u8(reply_requested as u8);
    b.freeze()
}

/// CopyData messages, client to server, carrying `payload` in pieces of at most `chunk`
/// bytes (a CopyIn such as UPLOAD_MANIFEST's).
pub fn copy_data(payload: &[u8], chunk: usize) -> Vec<Bytes> {
    payload
        .chunks(chunk.max(1))
        .map(|c| {
            let mut b = BytesMut::with_capacity(c.len() + 5);
            b.put_u8(b'd');
            b.put_u32(4 + c.len() as u32);
            b.put_slice(c);
            b.freeze()
        })
        .collect()
}

/// CopyDone, client to server.
pub fn copy_done() -> Bytes {
    Bytes::from_static(&[b'c', 0, 0, 0, 4])
}

/// Quote a string literal for the replication grammar (`'...'`, `''` doubling; there is no
/// `E''` form there).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quote an identifier (slot names) with `"..."`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Found by reading the codec for fuzzing: five bytes declaring a 1 GiB message made
    /// the buffer reserve 1 GiB before any of it arrived. Seen failing before the fix
    /// (capacity 1073741829).
    #[test]
    fn a_declared_length_does_not_allocate_ahead_of_the_bytes() {
        let mut b = BytesMut::from(&[b'd', 0x40, 0, 0, 0][..]);
        assert_eq!(split_message(&mut b).unwrap(), None);
        assert!(b.capacity() <= 2 * RESERVE_AHEAD, "{}", b.capacity());
        assert_eq!(b.len(), 5);
        // The message still arrives whole, however it is cut.
        let whole = frame(b'd', &vec![7u8; 3 * RESERVE_AHEAD]);
        let mut b = BytesMut::new();
        let mut got = None;
        for chunk in whole.chunks(100_000) {
            b.extend_from_slice(chunk);
            if let Some(m) = split_message(&mut b).unwrap() {
                got = Some(m);
            }
        }
        assert!(got.is_some() && b.is_empty());
    }

    #[test]
    fn partial_input_consumes_nothing() {
        let whole = frame(b'Z', b"I");
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(split_message(&mut b).unwrap(), None);
            assert_eq!(b.len(), cut);
        }
        let mut b = BytesMut::from(&whole[..]);
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::ReadyForQuery(b'I'))
        );
        assert!(b.is_empty());
    }

    #[test]
    fn impossible_length_is_a_violation() {
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert_eq!(
            split_message(&mut b).unwrap_err().to_string(),
            "protocol violation: message 'd' has impossible length 2"
        );
    }

    #[test]
    fn copy_both_and_negotiate_are_known() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&frame(b'W', &[0, 0, 0]));
        b.extend_from_slice(&frame(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::CopyBothResponse)
        );
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::NegotiateProtocolVersion)
        );
    }

    #[test]
    fn auth_requests() {
        let cases: Vec<(Vec<u8>, AuthRequest)> = vec![
            (vec![0, 0, 0, 0], AuthRequest::Ok),
            (vec![0, 0, 0, 3], AuthRequest::Cleartext),
            (
                vec![0, 0, 0, 5, 1, 2, 3, 4],
                AuthRequest::Md5 { salt: [1, 2, 3, 4] },
            ),
            (
                b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0".to_vec(),
                AuthRequest::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
                },
            ),
            (
                b"\0\0\0\x0br=abc".to_vec(),
                AuthRequest::SaslContinue(Bytes::from_static(b"r=abc")),
            ),
            (
                b"\0\0\0\x0cv=xyz".to_vec(),
                AuthRequest::SaslFinal(Bytes::from_static(b"v=xyz")),
            ),
        ];
        for (body, want) in cases {
            let mut b = BytesMut::from(&frame(b'R', &body)[..]);
            assert_eq!(split_message(&mut b).unwrap(), Some(Backend::Auth(want)));
        }
        let mut b = BytesMut::from(&frame(b'R', &[0, 0, 0, 5, 1])[..]);
        assert!(split_message(&mut b).is_err());
    }

    #[test]
    fn error_response_fields() {
        let body = b"SFATAL\0VFATAL\0C28000\0Mno pg_hba.conf entry for replication connection\0Hsome hint\0\0";
        let mut b = BytesMut::from(&frame(b'E', body)[..]);
        match split_message(&mut b).unwrap() {
            Some(Backend::Error(f)) => {
                assert_eq!(f.severity, "FATAL");
                assert_eq!(f.code, Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION));
                assert_eq!(f.message, "no pg_hba.conf entry for replication connection");
                assert_eq!(f.hint.as_deref(), Some("some hint"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn identify_system_result_rows() {
        // RowDescription with 4 columns then a DataRow with a NULL dbname, as a PG 16
        // walsender sends for IDENTIFY_SYSTEM.
        let mut t = vec![0, 4];
        for name in ["systemid", "timeline", "xlogpos", "dbname"] {
            t.extend_from_slice(name.as_bytes());
            t.push(0);
            t.extend_from_slice(&[0; 18]);
        }
        let mut d = vec![0, 4];
        for v in [&b"7441234567890123456"[..], b"1", b"0/3000148"] {
            d.extend_from_slice(&(v.len() as i32).to_be_bytes());
            d.extend_from_slice(v);
        }
        d.extend_from_slice(&(-1i32).to_be_bytes());
        let mut b = BytesMut::new();
        b.extend_from_slice(&frame(b'T', &t));
        b.extend_from_slice(&frame(b'D', &d));
        b.extend_from_slice(&frame(b'C', b"IDENTIFY_SYSTEM\0"));
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::RowDescription(vec![
                "systemid".into(),
                "timeline".into(),
                "xlogpos".into(),
                "dbname".into()
            ]))
        );
        match split_message(&mut b).unwrap() {
            Some(Backend::DataRow(v)) => {
                assert_eq!(v.len(), 4);
                assert_eq!(v[2].as_deref(), Some(&b"0/3000148"[..]));
                assert_eq!(v[3], None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::CommandComplete("IDENTIFY_SYSTEM".into()))
        );
    }

    #[test]
    fn xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x1_2A00_0000u64.to_be_bytes());
        w.extend_from_slice(&0x1_2B00_0000u64.to_be_bytes());
        w.extend_from_slice(&42u64.to_be_bytes());
        w.extend_from_slice(b"WALBYTES");
        assert_eq!(
            ReplicationMessage::parse(Bytes::from(w)).unwrap(),
            ReplicationMessage::XLogData {
                start: Lsn(0x1_2A00_0000),
                wal_end: Lsn(0x1_2B00_0000),
                send_time: 42,
                data: Bytes::from_static(b"WALBYTES"),
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x500u64.to_be_bytes());
        k.extend_from_slice(&7u64.to_be_bytes());
        k.push(1);
        assert_eq!(
            ReplicationMessage::parse(Bytes::from(k.clone())).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0x500),
                send_time: 7,
                reply_requested: true
            }
        );
        assert!(ReplicationMessage::parse(Bytes::from(k[..10].to_vec())).is_err());
        assert!(ReplicationMessage::parse(Bytes::from_static(b"x")).is_err());
    }

    /// The four ways a stream ends, as byte sequences a walsender sends.
    #[test]
    fn stream_endings() {
        // 1. end of a historic timeline: CopyDone, a (next_tli, next_tli_startpos) row,
        //    CommandComplete, CommandComplete, ReadyForQuery.
        let mut t = vec![0, 2];
        for name in ["next_tli", "next_tli_startpos"] {
            t.extend_from_slice(name.as_bytes());
            t.push(0);
            t.extend_from_slice(&[0; 18]);
        }
        let mut d = vec![0, 2];
        for v in [&b"2"[..], b"0/5000060"] {
            d.extend_from_slice(&(v.len() as i32).to_be_bytes());
            d.extend_from_slice(v);
        }
        let mut b = BytesMut::new();
        b.extend_from_slice(&frame(b'c', b""));
        b.extend_from_slice(&frame(b'T', &t));
        b.extend_from_slice(&frame(b'D', &d));
        b.extend_from_slice(&frame(b'C', b"SELECT 1\0"));
        b.extend_from_slice(&frame(b'C', b"START_STREAMING\0"));
        b.extend_from_slice(&frame(b'Z', b"I"));
        let mut got = Vec::new();
        while let Some(m) = split_message(&mut b).unwrap() {
            got.push(m);
        }
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], Backend::CopyDone);
        assert!(
            matches!(&got[2], Backend::DataRow(v) if v[1].as_deref() == Some(&b"0/5000060"[..]))
        );
        assert_eq!(got[5], Backend::ReadyForQuery(b'I'));
        // 3. server shutdown: CommandComplete "COPY 0" with no CopyDone.
        let mut b = BytesMut::from(&frame(b'C', b"COPY 0\0")[..]);
        assert_eq!(
            split_message(&mut b).unwrap(),
            Some(Backend::CommandComplete("COPY 0".into()))
        );
        // 4. an error at any time.
        let mut b = BytesMut::from(
            &frame(
                b'E',
                b"SERROR\0C58P01\0Mrequested WAL segment 000000010000000000000001 has already been removed\0\0",
            )[..],
        );
        assert!(
            matches!(split_message(&mut b).unwrap(), Some(Backend::Error(f)) if f.code == Some(SqlState::UNDEFINED_FILE))
        );
    }

    #[test]
    fn status_update_bytes() {
        let b = standby_status_update(Lsn(1), Lsn(2), Lsn(0), 5, true);
        assert_eq!(b.len(), 1 + 4 + 34);
        assert_eq!(&b[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&b[6..14], &1u64.to_be_bytes());
        assert_eq!(&b[14..22], &2u64.to_be_bytes());
        assert_eq!(&b[30..38], &5u64.to_be_bytes());
        assert_eq!(b[38], 1);
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
