//! The repository layout in the object store (format 1, see docs/FORMAT.md) and the WAL
//! inventory derived from a listing. Pure: names in, structure out.
//!
//! ```text
//! archive.json                                            identity of the archive (plain JSON)
//! wal/<TLI>/<SEGMENT>.seg                                 one complete segment
//! wal/<TLI>/<SEGMENT>.<START>-<END>.part                  bytes [START, END) of a segment not yet complete
//! history/<TLI>.history.<PARENT>-<SWITCHLSN>              a timeline history file
//! ```
//! `<TLI>` and offsets are 8 upper-case hex digits, `<SWITCHLSN>` 16. Objects are immutable:
//! the state of the archive is derived from listings only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::plan::Timestamp;
use crate::core::wal::{Lsn, SegNo, SegmentName, TimelineId, WalSegSize};

pub const ARCHIVE_META: &str = "archive.json";
pub const FORMAT_VERSION: u32 = 1;

/// The archive's identity, written once when an archive is first used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveMeta {
    pub format: u32,
    /// PostgreSQL's system identifier, as a decimal string (it does not fit a JSON double).
    pub system_identifier: String,
    pub wal_segment_size: WalSegSize,
    pub created_by: String,
}

pub fn segment_key(name: SegmentName) -> String {
    format!("wal/{:08X}/{name}.seg", name.tli.0)
}

pub fn part_key(name: SegmentName, start: u64, end: u64) -> String {
    format!("wal/{:08X}/{name}.{start:08X}-{end:08X}.part", name.tli.0)
}

/// The key of the complete segment that supersedes a `.part` key: once a provider holds
/// `<SEGMENT>.seg`, the parts of that segment add nothing to it (the segment holds every
/// byte they hold), so two providers that differ only in such parts are equivalent. `None`
/// for any key that is not a part.
pub fn superseding_segment_key(key: &str) -> Option<String> {
    match wal_key_span(key)? {
        (prefix, Some(_)) => Some(format!("{prefix}seg")),
        (_, None) => None,
    }
}

/// A WAL key's segment prefix (`wal/<TLI>/<SEGMENT>.`) and its byte range in the segment
/// (`None` for a complete `.seg`); `None` for any other key.
fn wal_key_span(key: &str) -> Option<(&str, Option<(u64, u64)>)> {
    let rest = key.strip_prefix("wal/")?;
    let (tli_dir, file) = rest.split_once('/')?;
    let seg_name = file.get(..24)?;
    if seg_name.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let name: SegmentName = seg_name.parse().ok()?;
    if hex32(tli_dir)? != name.tli.0 {
        return None;
    }
    let prefix = &key[..4 + 9 + 25];
    let tail = &file[24..];
    if tail == ".seg" {
        return Some((prefix, None));
    }
    let (a, b) = tail
        .strip_prefix('.')?
        .strip_suffix(".part")?
        .split_once('-')?;
    let (start, end) = (u64::from(hex32(a)?), u64::from(hex32(b)?));
    (start < end).then_some((prefix, Some((start, end))))
}

/// Whether the objects `held` (one provider's keys) hold every byte of the part `key`: its
/// segment's `.seg`, or other parts of its segment that cover its range. A part in flight
/// at a crash is re-cut differently after the restart, and the segment of a timeline's
/// switch never completes: its last part, streamed again, holds the bytes of the earlier
/// cuts. Two providers that differ only in such parts hold the same WAL. `false` for a
/// key that is not a part.
pub fn part_covered(key: &str, held: &[&str]) -> bool {
    let Some((prefix, Some((start, end)))) = wal_key_span(key) else {
        return false;
    };
    let mut ranges = Vec::new();
    for h in held {
        match wal_key_span(h) {
            Some((p, None)) if p == prefix => return true,
            Some((p, Some(r))) if p == prefix && *h != key => ranges.push(r),
            _ => {}
        }
    }
    ranges.sort_unstable();
    let mut at = start;
    for (a, b) in ranges {
        if a > at {
            break;
        }
        at = at.max(b);
        if at >= end {
            return true;
        }
    }
    false
}

/// Prefix under which every object of one segment lives.
pub fn segment_prefix(name: SegmentName) -> String {
    format!("wal/{:08X}/{name}.", name.tli.0)
}

pub fn history_key(tli: TimelineId, parent: TimelineId, switch: Lsn) -> String {
    format!(
        "history/{:08X}.history.{:08X}-{:016X}",
        tli.0, parent.0, switch.0
    )
}

pub fn history_prefix(tli: TimelineId) -> String {
    format!("history/{:08X}.history.", tli.0)
}

/// One WAL object, parsed from its key (which it re-renders exactly: [`WalObject::key`];
/// not holding it keeps a listing of a million objects small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    pub name: SegmentName,
    pub segno: SegNo,
    /// Byte range inside the segment.
    pub start: u64,
    pub end: u64,
    pub complete: bool,
}

impl WalObject {
    /// Its key: `wal/<TLI>/<SEGMENT>.seg` or `….<START>-<END>.part`.
    pub fn key(&self) -> String {
        if self.complete {
            segment_key(self.name)
        } else {
            part_key(self.name, self.start, self.end)
        }
    }
    pub fn start_lsn(&self, seg: WalSegSize) -> Lsn {
        Lsn(self.segno.start_lsn(seg).0 + self.start)
    }
    pub fn end_lsn(&self, seg: WalSegSize) -> Lsn {
        Lsn(self.segno.start_lsn(seg).0 + self.end)
    }
}

/// A history object, parsed from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryObject {
    pub key: String,
    pub tli: TimelineId,
    pub parent: TimelineId,
    pub switch: Lsn,
}

/// Eight upper-case hex digits, as lifeboat writes them (keys re-render exactly).
fn hex32(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

/// Parse a WAL key; `None` for anything else (foreign files are ignored, not fatal).
pub fn parse_wal_key(key: &str, seg: WalSegSize) -> Option<WalObject> {
    let rest = key.strip_prefix("wal/")?;
    let (tli_dir, file) = rest.split_once('/')?;
    let tli = hex32(tli_dir)?;
    let name: SegmentName = file.get(..24)?.parse().ok()?;
    if name.tli.0 != tli {
        return None;
    }
    let segno = name.segno(seg)?;
    let tail = file.get(24..)?;
    if tail == ".seg" {
        // The segment's end must be an LSN: the last segment of the LSN space ends at 2^64.
        segno.0.checked_add(1)?.checked_mul(seg.bytes())?;
        return Some(WalObject {
            name,
            segno,
            start: 0,
            end: seg.bytes(),
            complete: true,
        });
    }
    let range = tail.strip_prefix('.')?.strip_suffix(".part")?;
    let (a, b) = range.split_once('-')?;
    let (start, end) = (u64::from(hex32(a)?), u64::from(hex32(b)?));
    segno.0.checked_mul(seg.bytes())?.checked_add(end)?;
    (start < end && end <= seg.bytes()).then_some(WalObject {
        name,
        segno,
        start,
        end,
        complete: false,
    })
}

pub fn parse_history_key(key: &str) -> Option<HistoryObject> {
    let rest = key.strip_prefix("history/")?;
    let (tli, rest) = rest.split_once(".history.")?;
    let (parent, switch) = rest.split_once('-')?;
    let switch = (switch.len() == 16 && switch.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(switch, 16).ok())
        .flatten()?;
    Some(HistoryObject {
        key: key.into(),
        tli: TimelineId(hex32(tli)?),
        parent: TimelineId(hex32(parent)?),
        switch: Lsn(switch),
    })
}

/// A contiguous range of archived WAL on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Everything WAL-related an archive listing says.
#[derive(Debug, Default, Clone)]
pub struct WalInventory {
    /// Objects per timeline, sorted by (segno, start).
    pub objects: BTreeMap<TimelineId, Vec<WalObject>>,
    pub histories: BTreeMap<TimelineId, HistoryObject>,
}

impl WalInventory {
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>, seg: WalSegSize) -> WalInventory {
        let mut inv = WalInventory::default();
        for k in keys {
            if let Some(o) = parse_wal_key(k, seg) {
                inv.objects.entry(o.name.tli).or_default().push(o);
            } else if let Some(h) = parse_history_key(k) {
                inv.histories.insert(h.tli, h);
            }
        }
        for v in inv.objects.values_mut() {
            v.sort_by_key(|o| (o.segno, o.start, std::cmp::Reverse(o.end)));
        }
        inv
    }

    /// Contiguous ranges per timeline, in LSN order.
    pub fn ranges(&self, seg: WalSegSize) -> Vec<WalRange> {
        let mut out = Vec::new();
        for (tli, objs) in &self.objects {
            let mut cur: Option<(Lsn, Lsn)> = None;
            for o in objs {
                let (s, e) = (o.start_lsn(seg), o.end_lsn(seg));
                cur = match cur {
                    Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                    Some((cs, ce)) => {
                        out.push(WalRange {
                            timeline: tli.0,
                            start_lsn: cs,
                            end_lsn: ce,
                        });
                        Some((s, e))
                    }
                    None => Some((s, e)),
                };
            }
            if let Some((cs, ce)) = cur {
                out.push(WalRange {
                    timeline: tli.0,
                    start_lsn: cs,
                    end_lsn: ce,
                });
            }
        }
        out
    }

    /// Where a streamer resumes: the newest timeline holding WAL and the end of its last
    /// contiguous range.
    pub fn resume_point(&self, seg: WalSegSize) -> Option<(TimelineId, Lsn)> {
        self.ranges(seg)
            .into_iter()
            .max_by_key(|r| (r.timeline, r.end_lsn))
            .map(|r| (TimelineId(r.timeline), r.end_lsn))
    }

    /// Objects that make up one segment, best first: the complete object if there is one,
    /// else the parts.
    pub fn segment_objects(&self, name: SegmentName) -> Vec<&WalObject> {
        let Some(objs) = self.objects.get(&name.tli) else {
            return Vec::new();
        };
        let mine: Vec<&WalObject> = objs.iter().filter(|o| o.name == name).collect();
        match mine.iter().find(|o| o.complete) {
            Some(c) => vec![*c],
            None => mine,
        }
    }
}

/// Which parts to concatenate to rebuild the prefix of a segment that starts at offset 0:
/// returns the chosen parts in order and the end offset reached. Overlapping parts (from a
/// restart) are allowed: later bytes come from the part that extends furthest.
pub fn assemble_plan<'a>(parts: &[&'a WalObject]) -> (Vec<&'a WalObject>, u64) {
    let mut chosen = Vec::new();
    let mut end = 0u64;
    loop {
        let next = parts
            .iter()
            .filter(|p| p.start <= end && p.end > end)
            .max_by_key(|p| p.end);
        match next {
            Some(p) => {
                chosen.push(*p);
                end = p.end;
            }
            None => return (chosen, end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_covered_by_its_segment_or_by_parts_that_span_it() {
        let k = |r: &str| format!("wal/00000001/00000001000000000000000F.{r}.part");
        let part = k("00288000-00588000");
        let seg = "wal/00000001/00000001000000000000000F.seg";
        assert!(part_covered(&part, &[seg]));
        // The switch segment's last part, streamed again, spans the earlier cuts.
        assert!(part_covered(&part, &[&k("00000000-00EF7170")]));
        assert!(part_covered(
            &part,
            &[&k("00000000-00300000"), &k("00300000-00588000")]
        ));
        // A hole, a range that stops short, another segment or timeline: not covered.
        assert!(!part_covered(
            &part,
            &[&k("00000000-00300000"), &k("00300001-00600000")]
        ));
        assert!(!part_covered(&part, &[&k("00290000-00600000")]));
        assert!(!part_covered(
            &part,
            &[&k("00000000-00588000").replace("0F.", "10.")]
        ));
        assert!(!part_covered(
            &part,
            &["wal/00000002/00000002000000000000000F.seg"]
        ));
        // Not itself, and never a key that is not a part.
        assert!(!part_covered(&part, &[&part]));
        assert!(!part_covered(seg, &[seg]));
        assert!(!part_covered("backups/x/base.tar.000000", &[seg]));
    }

    #[test]
    fn a_part_is_superseded_by_its_segment() {
        assert_eq!(
            superseding_segment_key("wal/00000001/000000010000000000000001.00800000-00C00000.part")
                .as_deref(),
            Some("wal/00000001/000000010000000000000001.seg")
        );
        assert_eq!(
            superseding_segment_key("wal/00000001/000000010000000000000001.seg"),
            None
        );
        assert_eq!(superseding_segment_key("backups/x/base.tar.000000"), None);
        // a part filed under another timeline's directory is no part of this archive
        assert_eq!(
            superseding_segment_key("wal/00000002/000000010000000000000001.00000000-00100000.part"),
            None
        );
    }

    const SEG: WalSegSize = WalSegSize::DEFAULT;

    fn name(tli: u32, segno: u64) -> SegmentName {
        SegmentName::new(TimelineId(tli), SegNo(segno), SEG)
    }

    #[test]
    fn keys_round_trip() {
        let n = name(1, 0x12A);
        let k = segment_key(n);
        assert_eq!(k, "wal/00000001/00000001000000010000002A.seg");
        let o = parse_wal_key(&k, SEG).unwrap();
        assert!(o.complete);
        assert_eq!(o.start_lsn(SEG), "1/2A000000".parse().unwrap());
        let p = part_key(n, 0x100, 0x2000);
        assert_eq!(
            p,
            "wal/00000001/00000001000000010000002A.00000100-00002000.part"
        );
        let o = parse_wal_key(&p, SEG).unwrap();
        assert_eq!((o.start, o.end, o.complete), (0x100, 0x2000, false));
        let h = history_key(TimelineId(2), TimelineId(1), "0/5000060".parse().unwrap());
        assert_eq!(h, "history/00000002.history.00000001-0000000005000060");
        let ho = parse_history_key(&h).unwrap();
        assert_eq!(
            (ho.tli, ho.parent, ho.switch.0),
            (TimelineId(2), TimelineId(1), 0x5000060)
        );
        for bad in [
            "wal/00000001/00000002000000010000002A.seg",
            "wal/00000001/00000001000000010000002A.segx",
            "wal/00000001/00000001000000010000002A.00002000-00000100.part",
            "wal/00000001/00000001000000010000002A.00000000-02000000.part",
            "wal/00000001/000000010000000100000100.seg",
            "other/file",
        ] {
            assert_eq!(parse_wal_key(bad, SEG), None, "{bad}");
        }
    }

    #[test]
    fn a_history_key_with_a_signed_switch_point_is_foreign() {
        // Found by fuzzing (fuzz/regressions/wal_inventory/): from_str_radix takes a sign,
        // so this foreign key parsed as the history of timeline 3.
        assert_eq!(
            parse_history_key("history/00000003.history.00000002-+000000103000000"),
            None
        );
    }

    /// Found by reading for fuzzing: the complete last segment of the LSN space ends at
    /// 2^64, which no LSN holds (a panic in debug builds, 0/0 in release). Seen failing
    /// before the fix (the key parsed).
    #[test]
    fn objects_ending_past_the_lsn_space_are_foreign() {
        let last = "wal/FFFFFFFF/FFFFFFFFFFFFFFFF000000FF";
        assert_eq!(parse_wal_key(&format!("{last}.seg"), SEG), None);
        assert_eq!(
            parse_wal_key(&format!("{last}.00000000-01000000.part"), SEG),
            None
        );
        let o = parse_wal_key(&format!("{last}.00000000-00FFFFFF.part"), SEG).unwrap();
        assert_eq!(o.end_lsn(SEG), Lsn(u64::MAX));
    }

    #[test]
    fn ranges_merge_parts_and_segments_and_show_gaps() {
        let keys = [
            segment_key(name(1, 1)),
            segment_key(name(1, 2)),
            part_key(name(1, 3), 0, 0x1000),
            part_key(name(1, 3), 0x1000, 0x3000),
            segment_key(name(1, 5)),
            part_key(name(2, 5), 0, 0x10),
        ];
        let inv = WalInventory::from_keys(keys.iter().map(String::as_str), SEG);
        let r = inv.ranges(SEG);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].start_lsn, r[0].end_lsn),
            (Lsn(0x100_0000), Lsn(0x300_3000))
        );
        assert_eq!(
            (r[1].start_lsn, r[1].end_lsn),
            (Lsn(0x500_0000), Lsn(0x600_0000))
        );
        assert_eq!(
            inv.resume_point(SEG),
            Some((TimelineId(2), Lsn(0x500_0010)))
        );
    }

    #[test]
    fn assemble_overlapping_parts() {
        let keys = [
            part_key(name(1, 3), 0, 0x1000),
            part_key(name(1, 3), 0x800, 0x1800),
            part_key(name(1, 3), 0x1000, 0x2000),
            part_key(name(1, 3), 0x3000, 0x4000),
        ];
        let inv = WalInventory::from_keys(keys.iter().map(String::as_str), SEG);
        let objs = inv.segment_objects(name(1, 3));
        assert_eq!(objs.len(), 4);
        let (chosen, end) = assemble_plan(&objs);
        assert_eq!(end, 0x2000);
        assert_eq!(chosen.len(), 2);
        let keys = [part_key(name(1, 3), 0, 0x1000), segment_key(name(1, 3))];
        let inv = WalInventory::from_keys(keys.iter().map(String::as_str), SEG);
        let objs = inv.segment_objects(name(1, 3));
        assert_eq!(objs.len(), 1);
        assert!(objs[0].complete);
    }
}

// ------------------------------------------------------------------------------------
// Base backups
//
// ```text
// backups/<ID>/<TAR>.<SEQ>        part SEQ (6 decimal digits, from 000000) of tar TAR (sealed)
// backups/<ID>/backup_manifest    PostgreSQL's backup manifest (sealed)
// backups/<ID>/backup.json        the metadata (plain JSON), written last: the commit marker
// ```
// A backup exists only once its `backup.json` exists.

pub const BACKUPS_PREFIX: &str = "backups/";
pub const BACKUP_META_FILE: &str = "backup.json";

pub fn backup_prefix(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/")
}

pub fn backup_part_key(id: &str, tar: &str, seq: u32) -> String {
    stream_part_key(&backup_prefix(id), tar, seq)
}

pub fn backup_manifest_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/backup_manifest")
}

pub fn backup_meta_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/{BACKUP_META_FILE}")
}

/// The backup id of a `backups/<ID>/backup.json` key.
pub fn parse_backup_meta_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let (id, file) = rest.split_once('/')?;
    (file == BACKUP_META_FILE && is_backup_id(id)).then_some(id)
}

/// Backup ids are the UTC start time, `YYYYMMDDTHHMMSSZ`, optionally followed by `-N` when
/// two backups start in the same second: they sort by time.
pub fn is_backup_id(id: &str) -> bool {
    let (base, suffix) = match id.split_once('-') {
        Some((b, s)) => (b, Some(s)),
        None => (id, None),
    };
    let b = base.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && suffix.map_or(true, |s| {
            !s.is_empty() && s.len() <= 4 && s.bytes().all(|c| c.is_ascii_digit())
        })
}

/// The backup id for a start time given as RFC 3339 seconds (`2026-11-24T08:30:12Z`).
pub fn backup_id_from_rfc3339(t: &str) -> String {
    t.chars().filter(|c| *c != '-' && *c != ':').collect()
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One sealed part of a backup tar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupPart {
    pub key: String,
    /// The tar this part belongs to (`base.tar`, `<oid>.tar`).
    pub tar: String,
    pub seq: u32,
    pub plain_len: u64,
    pub stored_len: u64,
    /// CRC32 of the stored object, as in its trailer.
    pub crc32: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupTablespace {
    /// `None` for the base directory.
    pub oid: Option<u32>,
    pub location: Option<String>,
    pub tar: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupExtension {
    pub name: String,
    pub version: String,
}

/// `backups/<ID>/backup.json`. Its JSON is format 1 (docs/FORMAT.md) byte for byte: the
/// typed fields serialize as the strings and numbers it always held (`Lsn` as `0/2000028`,
/// `TimelineId` and `WalSegSize` as numbers, `Timestamp` as RFC 3339 seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupMeta {
    pub format: u32,
    pub id: String,
    pub label: String,
    pub system_identifier: String,
    /// `server_version_num`, e.g. 170002.
    pub pg_version: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub end_timeline: TimelineId,
    pub end_lsn: Lsn,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub plain_size: u64,
    pub stored_size: u64,
    pub tablespaces: Vec<BackupTablespace>,
    pub parts: Vec<BackupPart>,
    pub manifest: BackupPart,
    /// `None` when they could not be read (the role may not be allowed to connect to a
    /// database).
    pub extensions: Option<Vec<BackupExtension>>,
    pub shared_preload_libraries: Option<String>,
    pub data_checksums: bool,
    pub wal_segment_size: WalSegSize,
    pub from_standby: bool,
    /// The role with OID 10 (what a restore drill connects as); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_superuser: Option<String>,
    /// `pg_current_snapshot()` just after the backup ended (`xmin:xmax:xip,...`): which
    /// transactions had finished by then. `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at_end: Option<String>,
    pub created_by: String,
    /// Set on an incremental backup (PostgreSQL 17+): what it is relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalOf>,
    /// Why a backup asked to be incremental was taken full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// Every regular file of the tars, as it streamed by (empty for backups of older
    /// lifeboat versions); `INCREMENTAL.*` files carry their header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::core::incremental::TarMember>,
}

/// The parent of an incremental backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalOf {
    /// The backup whose manifest was uploaded.
    pub parent: String,
    /// Incremental backups from the full one to this one, this one included (1: the parent
    /// is a full backup).
    pub chain_length: u32,
    /// `INCREMENTAL FROM LSN` / `TLI` of this backup's label: the parent's start.
    pub from_lsn: Lsn,
    pub from_timeline: TimelineId,
}

impl BackupMeta {
    /// Whether transaction `xid` (as `recovery_target_xid` takes it: 64-bit, or 32-bit
    /// within the current epoch) can still commit after this backup ended. `None` when the
    /// backup has no snapshot.
    pub fn xid_after_end(&self, xid: u64) -> Option<bool> {
        let s = self.snapshot_at_end.as_deref()?;
        let mut it = s.splitn(3, ':');
        let xmin: u64 = it.next()?.parse().ok()?;
        let xmax: u64 = it.next()?.parse().ok()?;
        let xip: Vec<u64> = it
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .filter_map(|x| x.parse().ok())
            .collect();
        // A 32-bit xid is taken in the epoch of the snapshot.
        let full = if xid >> 32 == 0 {
            (xmax & !0xffff_ffff) | xid
        } else {
            xid
        };
        Some(full >= xmax || (full >= xmin && xip.contains(&full)))
    }
}

/// Whether the archived WAL `ranges` hold everything a backup needs: from its start on its
/// start timeline to its end on its end timeline.
pub fn wal_covers(
    ranges: &[WalRange],
    start_tli: TimelineId,
    start: Lsn,
    end_tli: TimelineId,
    end: Lsn,
) -> bool {
    let has = |tli: TimelineId, from: Lsn, to: Lsn| {
        ranges
            .iter()
            .any(|r| r.timeline == tli.0 && r.start_lsn <= from && r.end_lsn >= to)
    };
    if start_tli == end_tli {
        has(start_tli, start, end)
    } else {
        // A timeline switch during the backup (backup from a standby that was promoted):
        // the start and the end must each be covered on their own timeline.
        has(start_tli, start, start) && has(end_tli, end, end)
    }
}

/// WAL the server removed before lifeboat archived it, recorded by `lifeboat accept-gap`
/// under `gaps/<TLI>-<FROM>-<TO>.json` (plain JSON, written once): the archive's WAL of
/// that timeline is missing from `from` to `to` for good.
pub const GAPS_PREFIX: &str = "gaps/";

/// One accepted gap, as recorded and as `list`, `verify` and the planner show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptedGap {
    pub format: u32,
    pub timeline: TimelineId,
    /// The archive's end when the WAL was found lost.
    pub from: Lsn,
    /// The start of the oldest WAL the server still had: archiving resumed here.
    pub to: Lsn,
    pub accepted_at: Timestamp,
    /// The replication slot that did not keep the WAL.
    pub slot: Option<String>,
    /// Why, as lifeboat found it (the server's error).
    pub reason: String,
}

impl AcceptedGap {
    pub fn key(&self) -> String {
        format!(
            "{GAPS_PREFIX}{:08X}-{:016X}-{:016X}.json",
            self.timeline.0, self.from.0, self.to.0
        )
    }

    /// Whether `lsn` on timeline `tli` falls inside the gap.
    pub fn contains(&self, tli: TimelineId, lsn: Lsn) -> bool {
        tli == self.timeline && self.from <= lsn && lsn < self.to
    }
}

/// Each `prune` run that deletes records `prune/<TIME>.json` (plain JSON, written once).
pub const PRUNE_PREFIX: &str = "prune/";

/// Restore drills are recorded under `drills/<ID>.json` (plain JSON, written once).
pub const DRILLS_PREFIX: &str = "drills/";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    pub fetch: f64,
    pub extract: f64,
    pub replay: f64,
    pub checks: f64,
    /// The measured recovery time objective: from the start to a checked, promoted server.
    pub total: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableCount {
    pub database: String,
    pub table: String,
    pub rows: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub query: String,
    pub ok: bool,
    /// The first value returned, or the error.
    pub result: String,
}

/// One drill, as printed and as recorded under `drills/<ID>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub format: u32,
    pub id: String,
    pub ok: bool,
    pub started_at: String,
    pub backup: Option<String>,
    pub target: String,
    pub recovery_target: Option<String>,
    pub pg_version: Option<String>,
    pub phases: Phases,
    pub tables: Vec<TableCount>,
    pub checks: Vec<CheckResult>,
    pub error: Option<String>,
    pub scratch_dir: Option<String>,
    pub kept: bool,
    pub created_by: String,
    /// The identity opened the archive's key canary (absent in records written before
    /// canaries existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<crate::core::custody::KeyCheck>,
    /// Bytes the restore wrote (the RTO budget's restore rate: these over `phases.extract`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_bytes: Option<u64>,
    /// WAL replayed, from the backup's start to the last record replayed (the RTO budget's
    /// replay rate: these over `phases.replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_wal_bytes: Option<u64>,
}

impl DrillReport {
    pub fn tables_rows(&self) -> i64 {
        self.tables.iter().filter_map(|t| t.rows).sum()
    }
}

// ------------------------------------------------------------------------------------
// Logical dumps
//
// ```text
// dumps/<ID>/db-<N>.dump.<SEQ>    part SEQ of the pg_dump -Fc output of database N (sealed)
// dumps/<ID>/globals.sql.<SEQ>    part SEQ of pg_dumpall --globals-only (sealed)
// dumps/<ID>/dump.json            the metadata (plain JSON), written last: the commit marker
// ```
// A dump exists only once its `dump.json` exists. Database names can hold any character,
// so streams are numbered and `dump.json` maps them to names.

pub const DUMPS_PREFIX: &str = "dumps/";
pub const DUMP_META_FILE: &str = "dump.json";
/// The stream name of the globals (roles, tablespaces) in a dump.
pub const DUMP_GLOBALS_STREAM: &str = "globals.sql";

pub fn dump_prefix(id: &str) -> String {
    format!("{DUMPS_PREFIX}{id}/")
}

pub fn dump_meta_key(id: &str) -> String {
    format!("{DUMPS_PREFIX}{id}/{DUMP_META_FILE}")
}

/// The stream name of the `n`th database of a dump.
pub fn dump_db_stream(n: usize) -> String {
    format!("db-{n}.dump")
}

/// The key of part `seq` of a stream under `prefix` (`backups/<ID>/` or `dumps/<ID>/`).
pub fn stream_part_key(prefix: &str, stream: &str, seq: u32) -> String {
    format!("{prefix}{stream}.{seq:06}")
}

/// The dump id of a `dumps/<ID>/dump.json` key.
pub fn parse_dump_meta_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(DUMPS_PREFIX)?;
    let (id, file) = rest.split_once('/')?;
    (file == DUMP_META_FILE && is_backup_id(id)).then_some(id)
}

/// One database (or the globals) in a dump: a stream of sealed parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpedStream {
    /// The database name; `None` for the globals.
    pub database: Option<String>,
    /// The stream's file name in the dump (`db-0.dump`, `globals.sql`).
    pub stream: String,
    /// `custom` (pg_dump -Fc) or `sql` (pg_dumpall --globals-only).
    pub format: String,
    /// When its pg_dump started: its snapshot is from this moment (to the microsecond).
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub plain_size: u64,
    pub stored_size: u64,
    /// In `seq` order; `tar` is the stream name.
    pub parts: Vec<BackupPart>,
}

/// `dumps/<ID>/dump.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpMeta {
    pub format: u32,
    pub id: String,
    /// `server_version_num`, e.g. 170002.
    pub pg_version: u32,
    /// The server's `server_version`, e.g. `17.2 (Debian 17.2-1)`.
    pub server_version: String,
    /// `pg_dump --version`'s version, e.g. `17.2`.
    pub pg_dump_version: String,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub plain_size: u64,
    pub stored_size: u64,
    pub databases: Vec<DumpedStream>,
    /// `None` when the globals were not dumped.
    pub globals: Option<DumpedStream>,
    pub created_by: String,
}

impl DumpMeta {
    /// The stream of database `name`.
    pub fn database(&self, name: &str) -> Option<&DumpedStream> {
        self.databases
            .iter()
            .find(|d| d.database.as_deref() == Some(name))
    }
}

// ------------------------------------------------------------------------------------
// Exports: any other service's data (`lifeboat put`)
//
// ```text
// exports/<NAME>/<ID>/data.<SEQ>      part SEQ of the export's bytes (a tar, or stdin as is), sealed
// exports/<NAME>/<ID>/export.json     the metadata (plain JSON), written last: the commit marker
// ```

pub const EXPORTS_PREFIX: &str = "exports/";
pub const EXPORT_META_FILE: &str = "export.json";
/// The stream name of an export's bytes.
pub const EXPORT_STREAM: &str = "data";

/// Export names: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn is_export_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn export_prefix(name: &str, id: &str) -> String {
    format!("{EXPORTS_PREFIX}{name}/{id}/")
}

pub fn export_meta_key(name: &str, id: &str) -> String {
    format!("{}{EXPORT_META_FILE}", export_prefix(name, id))
}

/// (name, id) of an `exports/<NAME>/<ID>/export.json` key.
pub fn parse_export_meta_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(EXPORTS_PREFIX)?;
    let mut it = rest.split('/');
    let (name, id, file) = (it.next()?, it.next()?, it.next()?);
    (it.next().is_none() && file == EXPORT_META_FILE && is_export_name(name) && is_backup_id(id))
        .then_some((name, id))
}

/// `exports/<NAME>/<ID>/export.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportMeta {
    pub format: u32,
    pub name: String,
    pub id: String,
    /// `tar` (files and directories, a tar archive) or `stream` (stdin, as it came).
    pub kind: String,
    /// What was put: the paths as given, or `-`.
    pub sources: Vec<String>,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub plain_size: u64,
    pub stored_size: u64,
    pub parts: Vec<BackupPart>,
    pub created_by: String,
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    #[test]
    fn backup_keys() {
        let id = backup_id_from_rfc3339("2026-11-24T08:30:12Z");
        assert_eq!(id, "20261124T083012Z");
        assert!(is_backup_id(&id));
        assert!(is_backup_id("20261124T083012Z-2"));
        assert!(!is_backup_id("20261124T083012"));
        assert!(!is_backup_id("2026112xT083012Z"));
        assert_eq!(
            backup_part_key(&id, "base.tar", 7),
            "backups/20261124T083012Z/base.tar.000007"
        );
        assert_eq!(
            backup_manifest_key(&id),
            "backups/20261124T083012Z/backup_manifest"
        );
        let m = backup_meta_key(&id);
        assert_eq!(m, "backups/20261124T083012Z/backup.json");
        assert_eq!(parse_backup_meta_key(&m), Some(id.as_str()));
        assert_eq!(
            parse_backup_meta_key("backups/20261124T083012Z/base.tar.000000"),
            None
        );
        assert_eq!(parse_backup_meta_key("backups/junk/backup.json"), None);
    }

    /// `testdata/backup.json` was written by `lifeboat backup` (PostgreSQL 18) before its
    /// fields were typed: reading it and writing it again gives the very same bytes.
    #[test]
    fn backup_json_round_trips_byte_for_byte() {
        const WRITTEN: &str = include_str!("testdata/backup.json");
        let m: BackupMeta = serde_json::from_str(WRITTEN).unwrap();
        assert_eq!((m.timeline, m.end_timeline), (TimelineId(1), TimelineId(1)));
        assert_eq!((m.start_lsn, m.end_lsn), (Lsn(0x200_0028), Lsn(0x200_0120)));
        assert_eq!(m.start_time.to_string(), "2026-12-01 14:20:01+00");
        assert_eq!(m.end_time.rfc3339(), "2026-12-01T14:20:02Z");
        assert_eq!(m.wal_segment_size, WalSegSize::DEFAULT);
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&m).unwrap()).unwrap(),
            WRITTEN
        );
    }

    #[test]
    fn archive_json_round_trips_byte_for_byte() {
        const WRITTEN: &str = "{\n  \"format\": 1,\n  \"system_identifier\": \"7714340210454953018\",\n  \"wal_segment_size\": 16777216,\n  \"created_by\": \"lifeboat 0.1.0\"\n}";
        let m: ArchiveMeta = serde_json::from_str(WRITTEN).unwrap();
        assert_eq!(m.wal_segment_size, WalSegSize::DEFAULT);
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&m).unwrap()).unwrap(),
            WRITTEN
        );
    }

    /// What was re-checked wherever a record was used is now refused when it is read.
    #[test]
    fn bad_values_are_refused_on_reading() {
        const WRITTEN: &str = include_str!("testdata/backup.json");
        let bad = |from: &str, to: &str| {
            assert!(WRITTEN.contains(from), "{from}");
            serde_json::from_str::<BackupMeta>(&WRITTEN.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(
            "\"wal_segment_size\": 16777216",
            "\"wal_segment_size\": 12345"
        )
        .starts_with("invalid WAL segment size 12345 bytes"));
        assert!(
            bad("\"end_timeline\": 1", "\"end_timeline\": 0").starts_with("invalid timeline \"0\"")
        );
        assert!(bad("\"2026-12-01T14:20:02Z\"", "\"yesterday\"")
            .starts_with("\"yesterday\" is not a time"));
        assert!(bad("\"0/2000120\"", "\"0/XYZ\"").starts_with("invalid LSN \"0/XYZ\""));
    }

    #[test]
    fn coverage() {
        let r = |tli, s, e| WalRange {
            timeline: tli,
            start_lsn: Lsn(s),
            end_lsn: Lsn(e),
        };
        let ranges = [r(1, 0x100, 0x500), r(1, 0x700, 0x900), r(2, 0x880, 0x1000)];
        let (t1, t2) = (TimelineId(1), TimelineId(2));
        assert!(wal_covers(&ranges, t1, Lsn(0x100), t1, Lsn(0x500)));
        assert!(!wal_covers(&ranges, t1, Lsn(0x400), t1, Lsn(0x800)));
        assert!(!wal_covers(&ranges, t1, Lsn(0x0), t1, Lsn(0x200)));
        assert!(wal_covers(&ranges, t1, Lsn(0x800), t2, Lsn(0x900)));
        assert!(!wal_covers(&[], t1, Lsn(1), t1, Lsn(2)));
    }
}

#[cfg(test)]
mod dump_tests {
    use super::*;

    #[test]
    fn export_keys() {
        assert!(is_export_name("ghost-content_2.tar"));
        assert!(!is_export_name(".hidden"));
        assert!(!is_export_name("a/b"));
        assert!(!is_export_name(""));
        let k = export_meta_key("ghost", "20261124T083012Z");
        assert_eq!(k, "exports/ghost/20261124T083012Z/export.json");
        assert_eq!(
            parse_export_meta_key(&k),
            Some(("ghost", "20261124T083012Z"))
        );
        assert_eq!(
            parse_export_meta_key("exports/ghost/20261124T083012Z/data.000000"),
            None
        );
    }

    #[test]
    fn dump_keys() {
        assert_eq!(
            dump_meta_key("20261124T083012Z"),
            "dumps/20261124T083012Z/dump.json"
        );
        assert_eq!(
            parse_dump_meta_key("dumps/20261124T083012Z-1/dump.json"),
            Some("20261124T083012Z-1")
        );
        assert_eq!(
            parse_dump_meta_key("dumps/20261124T083012Z/db-0.dump.000000"),
            None
        );
        assert_eq!(
            parse_dump_meta_key("backups/20261124T083012Z/dump.json"),
            None
        );
        assert_eq!(
            stream_part_key(&dump_prefix("20261124T083012Z"), &dump_db_stream(2), 7),
            "dumps/20261124T083012Z/db-2.dump.000007"
        );
        assert_eq!(
            backup_part_key("20261124T083012Z", "base.tar", 1),
            "backups/20261124T083012Z/base.tar.000001"
        );
    }
}
