//! The fuzz targets' bodies, shared by the `cargo fuzz` targets (this file is the
//! `lifeboat_fuzz` library) and by `tests/it/fuzz_corpus.rs`, which replays the saved corpus
//! through the very same functions (`#[path]` module) as an ordinary test.
//!
//! One function per decoder of bytes lifeboat did not write. Each must not panic on any
//! input, and asserts the round-trip or consistency property its decoder promises.

use std::io::Write;
use std::str::FromStr;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use lifeboat::config::{parse_duration, parse_size, Config};
use lifeboat::core::catalog::{
    assemble_plan, history_key, is_backup_id, parse_backup_meta_key, parse_history_key,
    parse_wal_key, part_key, segment_key, superseding_segment_key, WalInventory,
};
use lifeboat::core::wal::{
    Lsn, SegNo, SegmentName, TimelineHistory, TimelineId, WalFileName, WalSegSize,
};
use lifeboat::pg::basebackup::{Decoder, Event};
use lifeboat::pg::conninfo::ConnParams;
use lifeboat::pg::protocol::{split_message, Backend, ReplicationMessage};
use lifeboat::pipeline::{check, Opener, Sealer};

/// A target's body: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// The targets, by corpus directory name (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("protocol", protocol),
    ("basebackup", basebackup),
    ("object", object),
    ("wal_inventory", wal_inventory),
    ("wal_names", wal_names),
    ("conninfo", conninfo),
    ("config", config),
];

/// A TEST-ONLY age key pair, made with age-keygen for the fuzz corpus. It protects nothing:
/// the `object` seeds are sealed to it so the fuzzer can reach past decryption.
pub const TEST_IDENTITY: &str =
    "AGE-SECRET-KEY-1A3H8SXRSDKT2YMAZ2X9F9PRKZ5CC49GSY0FPZUUTHTLTU5JVU69QCLUZ75";
pub const TEST_RECIPIENT: &str = "age10ujc0lf20rye9twwljsq2042nkxdxnq4pf7jjyu4xsqj4w2egussylum3f";

/// A WAL segment size chosen by one input byte: 1 MiB .. 1 GiB.
fn seg_size(b: u8) -> WalSegSize {
    WalSegSize::new(1u64 << (20 + u64::from(b) % 11)).expect("a power of two in range")
}

/// Take the backend messages off `wire` delivered in reads of the given sizes; stops at the
/// first protocol error. Returns the messages and whether an error ended them.
fn frame_all(wire: &[u8], reads: &[usize]) -> (Vec<Backend>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut i = 0;
    loop {
        let n = if rest.is_empty() {
            0
        } else {
            reads[i % reads.len()].clamp(1, rest.len())
        };
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.clone();
            match split_message(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {
                    // Cancel-safe framing: nothing is consumed until a message is whole.
                    assert_eq!(buf, before, "split_message consumed a partial message");
                    break;
                }
                Err(_) => return (out, true),
            }
        }
        if rest.is_empty() {
            return (out, false);
        }
    }
}

/// The wire codec (`pg::protocol`): backend framing, every message body, and the
/// START_REPLICATION CopyData payloads (XLogData, keepalive). The first byte picks the read
/// sizes; the framing must not depend on how the bytes arrive.
pub fn protocol(data: &[u8]) {
    let Some((&r, wire)) = data.split_first() else {
        return;
    };
    let (whole, whole_err) = frame_all(wire, &[wire.len().max(1)]);
    let reads = [usize::from(r % 16) + 1, usize::from(r / 16) + 1, 3];
    let (chunked, chunked_err) = frame_all(wire, &reads);
    assert_eq!(whole, chunked, "messages depend on read sizes");
    assert_eq!(whole_err, chunked_err);
    for m in whole {
        let payload = match m {
            Backend::CopyData(p) => p,
            _ => continue,
        };
        let len = payload.len();
        if let Ok(ReplicationMessage::XLogData { data, .. }) = ReplicationMessage::parse(payload) {
            assert_eq!(data.len(), len - 25, "XLogData header is 25 bytes");
        }
    }
    // The payload parser on its own, on the raw input (it is also fed by other framers).
    let _ = ReplicationMessage::parse(Bytes::copy_from_slice(wire));
}

/// The BASE_BACKUP response decoder (`pg::basebackup::Decoder`). The first byte picks the
/// server major (14: one CopyOut per tablespace; 15+: typed CopyData), the rest is the wire.
pub fn basebackup(data: &[u8]) {
    let Some((&m, wire)) = data.split_first() else {
        return;
    };
    let major = if m & 1 == 0 {
        14
    } else {
        15 + u32::from(m >> 1) % 4
    };
    let (msgs, _) = frame_all(wire, &[wire.len().max(1)]);
    let mut d = Decoder::new(major);
    let mut events = Vec::new();
    let mut started = false;
    for msg in msgs {
        let done_before = d.is_done();
        // NoticeResponse and ParameterStatus may come at any time, the end included
        // (protocol flow "asynchronous operations"): the decoder rightly accepts them.
        let asynchronous = matches!(msg, Backend::Notice(_) | Backend::ParameterStatus { .. });
        let r = d.feed(msg);
        if done_before && !asynchronous {
            assert!(r.is_err(), "a message after the end was accepted");
        }
        if r.is_err() {
            break;
        }
        if let Some(s) = d.start() {
            started = true;
            let _ = s.estimated_size();
        } else {
            assert!(!started, "the start went away");
        }
        while let Some(e) = d.pop() {
            events.push(e);
        }
    }
    let ends = events
        .iter()
        .filter(|e| matches!(e, Event::End { .. }))
        .count();
    assert!(ends <= 1, "{ends} End events");
    if ends == 1 {
        assert!(matches!(events.last(), Some(Event::End { .. })));
        assert!(d.is_done());
    }
    if d.is_done() {
        assert!(started, "done without a start");
    }
}

fn opener() -> &'static Opener {
    static O: OnceLock<Opener> = OnceLock::new();
    O.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().expect("temp file for the test identity");
        writeln!(f, "{TEST_IDENTITY}").expect("write the test identity");
        Opener::from_file(f.path()).expect("the test identity parses")
    })
}

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::new(&[TEST_RECIPIENT.into()], 1).expect("the test recipient"))
}

/// Our framing around any age body: header, body, plain_len, the CRC32 that makes it pass
/// `check`, trailer magic.
fn frame_object(body: &[u8], plain_len: u64) -> Vec<u8> {
    let mut v = b"LBOBJ\x01\0\0".to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(&plain_len.to_be_bytes());
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v.extend_from_slice(b"LBT1");
    v
}

/// The object opener (`pipeline::check`, `Opener::open`) with a fixed test identity. The
/// first byte picks how far in the fuzzer starts:
/// - 0: the input is a stored object as read from a provider;
/// - 1: the input is the age body (framed with a valid CRC here, so age's parser is reached);
/// - 2: the input is the zstd frame (encrypted to the test recipient here, so the
///   decompressor and the length check are reached);
/// - 3: the input is plain data: seal then open must give it back.
pub fn object(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stored = match mode % 4 {
        0 => rest.to_vec(),
        1 | 2 => {
            let (len, body) = match rest.split_first_chunk::<8>() {
                Some((l, b)) => (u64::from_be_bytes(*l) % (1 << 20), b),
                None => (0, rest),
            };
            let body = if mode % 4 == 1 {
                body.to_vec()
            } else {
                let recipient =
                    age::x25519::Recipient::from_str(TEST_RECIPIENT).expect("the test recipient");
                let enc = age::Encryptor::with_recipients(std::iter::once(
                    &recipient as &dyn age::Recipient,
                ))
                .expect("one recipient");
                let mut out = Vec::new();
                let mut w = enc.wrap_output(&mut out).expect("age writer");
                w.write_all(body).expect("age write");
                w.finish().expect("age finish");
                out
            };
            frame_object(&body, len)
        }
        _ => {
            let sealed = sealer().seal(rest).expect("sealing never fails");
            let c = check(&sealed.bytes).expect("a fresh object checks");
            assert_eq!((c.plain_len, c.crc32), (rest.len() as u64, sealed.crc32));
            let opened = opener().open(&sealed.bytes).expect("a fresh object opens");
            assert_eq!(opened, rest, "seal/open round trip");
            return;
        }
    };
    let checked = check(&stored);
    if let Ok(plain) = opener().open(&stored) {
        let c = checked.expect("an object that opens passes check");
        assert_eq!(plain.len() as u64, c.plain_len, "opened length != trailer");
    }
}

/// WAL key parsing and the inventory built from a listing (`core::catalog`): ranges,
/// resume point, the parts chosen to rebuild a segment. The first byte picks the segment
/// size; the rest is a listing, one key per line.
pub fn wal_inventory(data: &[u8]) {
    let Some((&s, rest)) = data.split_first() else {
        return;
    };
    let seg = seg_size(s);
    let text = String::from_utf8_lossy(rest);
    let keys: Vec<&str> = text.split('\n').collect();
    for k in &keys {
        if let Some(o) = parse_wal_key(k, seg) {
            let again = if o.complete {
                segment_key(o.name)
            } else {
                part_key(o.name, o.start, o.end)
            };
            assert!(again.eq_ignore_ascii_case(k), "{k:?} re-renders as {again}");
            assert!(o.start < o.end && o.end <= seg.bytes());
            assert!(o.start_lsn(seg) < o.end_lsn(seg));
            if !o.complete {
                let sup = superseding_segment_key(k).expect("a part has a segment");
                assert!(sup.eq_ignore_ascii_case(&segment_key(o.name)));
            }
        }
        if let Some(h) = parse_history_key(k) {
            let again = history_key(h.tli, h.parent, h.switch);
            assert!(again.eq_ignore_ascii_case(k), "{k:?} re-renders as {again}");
        }
        if let Some(id) = parse_backup_meta_key(k) {
            assert!(is_backup_id(id));
        }
    }
    let inv = WalInventory::from_keys(keys.iter().copied(), seg);
    let ranges = inv.ranges(seg);
    for r in &ranges {
        assert!(r.start_lsn < r.end_lsn, "empty or inverted range {r:?}");
    }
    for w in ranges.windows(2) {
        if w[0].timeline == w[1].timeline {
            assert!(w[0].end_lsn < w[1].start_lsn, "ranges touch: {w:?}");
        } else {
            assert!(w[0].timeline < w[1].timeline);
        }
    }
    for (tli, objs) in &inv.objects {
        for o in objs {
            let inside = ranges.iter().any(|r| {
                r.timeline == tli.0
                    && r.start_lsn <= o.start_lsn(seg)
                    && o.end_lsn(seg) <= r.end_lsn
            });
            assert!(inside, "{o:?} is in no range");
        }
    }
    if let Some((tli, end)) = inv.resume_point(seg) {
        assert!(ranges
            .iter()
            .any(|r| r.timeline == tli.0 && r.end_lsn == end));
    }
    let names: std::collections::BTreeSet<SegmentName> = inv
        .objects
        .values()
        .flat_map(|v| v.iter().map(|o| o.name))
        .collect();
    for name in names {
        let objs = inv.segment_objects(name);
        assert!(!objs.is_empty());
        let (chosen, end) = assemble_plan(&objs);
        let mut at = 0;
        for p in &chosen {
            assert!(p.start <= at && p.end > at, "parts do not chain");
            at = p.end;
        }
        assert_eq!(at, end);
        assert!(end <= seg.bytes());
    }
}

/// WAL quantities and names (`core::wal`): LSNs, timelines, segment and history file names,
/// `SHOW wal_segment_size`, timeline history files. The text forms round-trip.
pub fn wal_names(data: &[u8]) {
    if data.len() >= 9 {
        // Numbers print and parse back, and segment arithmetic agrees with the names.
        let v = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
        let lsn = Lsn(v);
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        let seg = seg_size(data[0]);
        let segno = lsn.segno(seg);
        let tli = TimelineId(u32::from(data[0]).max(1));
        let name = SegmentName::new(tli, segno, seg);
        let parsed: SegmentName = name.to_string().parse().expect("a made name parses");
        assert_eq!(parsed, name);
        assert_eq!(parsed.segno(seg), Some(segno));
        assert!(segno.start_lsn(seg) <= lsn);
        assert_eq!(lsn.segment_start(seg), segno.start_lsn(seg));
        assert!(lsn.segment_offset(seg) < seg.bytes());
        let _ = SegNo(segno.0).start_lsn(seg);
    }
    let text = String::from_utf8_lossy(data);
    for line in text.lines().chain(std::iter::once(text.as_ref())) {
        if let Ok(l) = line.parse::<Lsn>() {
            assert_eq!(l.to_string().parse::<Lsn>(), Ok(l));
        }
        if let Ok(t) = line.parse::<TimelineId>() {
            assert!(t.0 > 0);
            assert_eq!(t.to_string().parse::<TimelineId>(), Ok(t));
        }
        if let Ok(n) = line.parse::<SegmentName>() {
            assert_eq!(n.to_string(), line.to_ascii_uppercase());
        }
        match line.parse::<WalFileName>() {
            Ok(WalFileName::Segment(n)) => assert_eq!(n.to_string(), line.to_ascii_uppercase()),
            Ok(f @ WalFileName::History(_)) => {
                let hex = line.strip_suffix(".history").expect("a history name");
                assert_eq!(f.to_string(), hex.to_ascii_uppercase() + ".history");
            }
            Err(_) => {}
        }
        if let Ok(s) = WalSegSize::from_show(line) {
            assert!(s.bytes().is_power_of_two());
        }
    }
    if let Ok(h) = TimelineHistory::parse(&text) {
        for w in h.entries.windows(2) {
            assert!(w[0].tli < w[1].tli && w[0].switch_lsn <= w[1].switch_lsn);
        }
        let own = TimelineId(h.parent().map_or(1, |p| p.tli.0.saturating_add(1)));
        for e in &h.entries {
            let _ = h.timeline_at(own, e.switch_lsn);
        }
        let _ = h.timeline_at(own, Lsn(u64::MAX));
    }
}

/// libpq connection strings and URIs (`pg::conninfo`), with an empty environment. The
/// redacted display form parses back to the same parameters, and no error and no display
/// form ever shows the password.
pub fn conninfo(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| None;
    if let Ok(p) = ConnParams::parse(s, &env) {
        let shown = p.redacted();
        let back = ConnParams::parse(&shown, &env)
            .unwrap_or_else(|e| panic!("redacted form {shown:?} does not parse: {e}"));
        let mut want = p.clone();
        want.password = None;
        // The display form leaves out what it does not show.
        let mut got = back;
        got.channel_binding = want.channel_binding;
        got.keepalives = want.keepalives;
        got.keepalives_idle = want.keepalives_idle;
        got.keepalives_interval = want.keepalives_interval;
        got.keepalives_count = want.keepalives_count;
        assert_eq!(got, want, "{s:?} -> {shown:?}");
    }
    // A password in the string never shows up in an error or in the display form.
    const SECRET: &str = "Zq7SecretPw9";
    if s.contains(SECRET) || s.contains("Zq7") {
        return;
    }
    for with_secret in [
        format!("password={SECRET} {s}"),
        format!("postgresql://u:{SECRET}@{s}"),
    ] {
        match ConnParams::parse(&with_secret, &env) {
            Ok(p) => assert!(!p.redacted().contains(SECRET), "{with_secret:?}"),
            Err(e) => assert!(
                !e.to_string().contains(SECRET),
                "{with_secret:?} -> error {e}"
            ),
        }
    }
}

/// The TOML configuration (`Config::parse`) and the size and duration syntaxes in it.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.toml") {
        Ok(c) => {
            let _ = c.max_delay();
            let _ = c.spool_max_size();
            let n = c.backup_part_size();
            assert!((1 << 20..=1 << 30).contains(&n), "part size {n}");
            let _ = c.status_interval();
            let _ = c.require_for_writing("fuzz.toml");
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml: "), "{e}"),
    }
    for line in text.lines().take(16) {
        let _ = parse_size(line);
        if let Ok(d) = parse_duration(line) {
            assert!(!d.is_zero());
        }
    }
}
