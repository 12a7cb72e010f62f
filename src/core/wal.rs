//! Pure PostgreSQL WAL quantities: [`Lsn`], [`TimelineId`], [`WalSegSize`], [`SegNo`], WAL
//! segment and history file names, and timeline history parsing.
//!
//! Nothing here does I/O. Every quantity prints the way PostgreSQL prints it (`16/B374D848`,
//! `00000001000000010000002A`), and the only way to get one from a string is `FromStr`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors from parsing WAL quantities.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WalError {
    #[error("invalid LSN \"{0}\"\nhint: write it as PostgreSQL prints it, e.g. 16/B374D848")]
    BadLsn(String),
    #[error("invalid timeline \"{0}\"\nhint: a timeline is a positive integer")]
    BadTimeline(String),
    #[error(
        "invalid WAL segment size {0} bytes\nhint: a power of two from 1 MiB to 1 GiB, as set by initdb --wal-segsize"
    )]
    BadSegSize(u64),
    #[error("invalid WAL file name \"{0}\"\nhint: expected 24 hex digits like 00000001000000000000002A, or 00000002.history")]
    BadFileName(String),
    #[error("invalid timeline history line {line}: \"{text}\" ({why})")]
    BadHistory {
        line: usize,
        text: String,
        why: &'static str,
    },
}

/// A WAL position (log sequence number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// Distance in bytes from `earlier` to `self` (0 when `earlier` is ahead).
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn segno(self, seg: WalSegSize) -> SegNo {
        SegNo(self.0 / seg.bytes())
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, seg: WalSegSize) -> u64 {
        self.0 % seg.bytes()
    }

    /// Rounded down to the start of its segment.
    pub fn segment_start(self, seg: WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalError::BadLsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// A timeline id (1 for a fresh cluster, incremented at each promotion). In JSON records it
/// is a plain number, and 0 is refused on reading.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TimelineId(pub u32);

impl TryFrom<u32> for TimelineId {
    type Error = WalError;

    fn try_from(n: u32) -> Result<Self, Self::Error> {
        if n == 0 {
            return Err(WalError::BadTimeline(n.to_string()));
        }
        Ok(TimelineId(n))
    }
}

impl From<TimelineId> for u32 {
    fn from(t: TimelineId) -> u32 {
        t.0
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(TimelineId(n)),
            _ => Err(WalError::BadTimeline(s.to_string())),
        }
    }
}

/// The WAL segment size of a cluster: a power of two from 1 MiB to 1 GiB. In JSON records
/// it is a number of bytes, checked on reading.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegSize(u64);

impl TryFrom<u64> for WalSegSize {
    type Error = WalError;

    fn try_from(bytes: u64) -> Result<Self, Self::Error> {
        WalSegSize::new(bytes)
    }
}

impl From<WalSegSize> for u64 {
    fn from(s: WalSegSize) -> u64 {
        s.0
    }
}

impl fmt::Display for WalSegSize {
    /// As `SHOW wal_segment_size` prints it: `16MB`, `1GB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % (1 << 30) == 0 {
            write!(f, "{}GB", self.0 >> 30)
        } else {
            write!(f, "{}MB", self.0 >> 20)
        }
    }
}

impl WalSegSize {
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);

    pub fn new(bytes: u64) -> Result<Self, WalError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(WalError::BadSegSize(bytes))
        }
    }

    /// Parse `SHOW wal_segment_size` output (`16MB`, `1GB`, or plain bytes).
    pub fn from_show(s: &str) -> Result<Self, WalError> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix("GB") {
            (n, 1u64 << 30)
        } else if let Some(n) = s.strip_suffix("MB") {
            (n, 1 << 20)
        } else if let Some(n) = s.strip_suffix("kB") {
            (n, 1 << 10)
        } else {
            (s, 1)
        };
        let n: u64 = num.trim().parse().map_err(|_| WalError::BadSegSize(0))?;
        Self::new(n.checked_mul(mult).ok_or(WalError::BadSegSize(u64::MAX))?)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "log id".
    pub fn segments_per_id(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

/// A segment number (`lsn / segment size`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    pub fn start_lsn(self, seg: WalSegSize) -> Lsn {
        Lsn(self.0 * seg.bytes())
    }

    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// The name of a WAL segment file: timeline plus segment number (`00000001000000010000002A`).
/// Only meaningful together with the segment size it was parsed or made with.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentName {
    pub tli: TimelineId,
    /// The "log id" half (high 32 bits of the LSN).
    pub log: u32,
    /// The segment within the log id.
    pub seg: u32,
}

impl SegmentName {
    pub fn new(tli: TimelineId, segno: SegNo, size: WalSegSize) -> SegmentName {
        let per = size.segments_per_id();
        SegmentName {
            tli,
            log: (segno.0 / per) as u32,
            seg: (segno.0 % per) as u32,
        }
    }

    /// The segment number under `size`, or `None` when the name is impossible for that size
    /// (e.g. segment part 0x100 with 16 MiB segments).
    pub fn segno(self, size: WalSegSize) -> Option<SegNo> {
        let per = size.segments_per_id();
        (u64::from(self.seg) < per).then(|| SegNo(u64::from(self.log) * per + u64::from(self.seg)))
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli.0, self.log, self.seg)
    }
}

impl FromStr for SegmentName {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalError::BadFileName(s.to_string());
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let part = |r: std::ops::Range<usize>| u32::from_str_radix(&s[r], 16).map_err(|_| bad());
        let tli = part(0..8)?;
        if tli == 0 {
            return Err(bad());
        }
        Ok(SegmentName {
            tli: TimelineId(tli),
            log: part(8..16)?,
            seg: part(16..24)?,
        })
    }
}

/// A WAL file PostgreSQL may ask a restore_command for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalFileName {
    Segment(SegmentName),
    /// `00000002.history`
    History(TimelineId),
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => s.fmt(f),
            WalFileName::History(t) => write!(f, "{:08X}.history", t.0),
        }
    }
}

impl FromStr for WalFileName {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hex) = s.strip_suffix(".history") {
            if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let t =
                    u32::from_str_radix(hex, 16).map_err(|_| WalError::BadFileName(s.into()))?;
                if t > 0 {
                    return Ok(WalFileName::History(TimelineId(t)));
                }
            }
            return Err(WalError::BadFileName(s.into()));
        }
        s.parse().map(WalFileName::Segment)
    }
}

/// One line of a timeline history file: timeline `tli` ended at `switch_lsn`, where its
/// child began.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HistoryEntry {
    pub tli: TimelineId,
    pub switch_lsn: Lsn,
    pub reason: String,
}

/// A parsed timeline history file (the ancestry of one timeline, oldest first).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TimelineHistory {
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parse a history file the way PostgreSQL's `readTimeLineHistory` does: blank lines and
    /// `#` comments are skipped; timelines must increase and so must switch points.
    pub fn parse(text: &str) -> Result<TimelineHistory, WalError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| WalError::BadHistory {
                line: i + 1,
                text: raw.to_string(),
                why,
            };
            let mut fields = line.splitn(3, ['\t', ' ']);
            let tli: TimelineId = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad("expected a timeline id"))?;
            let lsn: Lsn = fields
                .next()
                .map(str::trim)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad("expected a switch point LSN"))?;
            let reason = fields.next().unwrap_or("").trim().to_string();
            if let Some(prev) = entries.last() {
                if tli <= prev.tli {
                    return Err(bad("timeline ids must increase"));
                }
                if lsn < prev.switch_lsn {
                    return Err(bad("switch points must not go backwards"));
                }
            }
            entries.push(HistoryEntry {
                tli,
                switch_lsn: lsn,
                reason,
            });
        }
        Ok(TimelineHistory { entries })
    }

    /// The timeline that was current at `lsn`, for a history describing timeline `own`.
    pub fn timeline_at(&self, own: TimelineId, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switch_lsn)
            .map(|e| e.tli)
            .unwrap_or(own)
    }

    /// The direct parent of the timeline this history describes, and where it branched off.
    pub fn parent(&self) -> Option<&HistoryEntry> {
        self.entries.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("1/2A000028".parse::<Lsn>().unwrap(), Lsn(0x1_2A00_0028));
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "1", "1/", "/1", "g/1", "1/123456789", "1/2/3", " / "] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_name_from_protocol_md_example() {
        let seg = WalSegSize::DEFAULT;
        let lsn: Lsn = "1/2A000028".parse().unwrap();
        let name = SegmentName::new(TimelineId(1), lsn.segno(seg), seg);
        assert_eq!(name.to_string(), "00000001000000010000002A");
        assert_eq!(name.segno(seg), Some(lsn.segno(seg)));
        assert_eq!(
            "00000001000000010000002A".parse::<SegmentName>().unwrap(),
            name
        );
    }

    #[test]
    fn bad_file_names_are_refused() {
        for bad in [
            "",
            "00000001000000010000002",
            "00000001000000010000002G",
            "000000000000000100000002",
            "0000001.history",
            "00000000.history",
            "0000000G.history",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad}");
        }
        assert_eq!(
            "0000000A.history".parse::<WalFileName>().unwrap(),
            WalFileName::History(TimelineId(10))
        );
        // A name impossible for the size: 16 MiB segments have 256 per log id.
        let n: SegmentName = "000000010000000100000100".parse().unwrap();
        assert_eq!(n.segno(WalSegSize::DEFAULT), None);
        assert!(n.segno(WalSegSize::new(1 << 20).unwrap()).is_some());
    }

    #[test]
    fn seg_sizes() {
        assert_eq!(WalSegSize::from_show("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(WalSegSize::from_show("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(WalSegSize::from_show("1MB").unwrap().bytes(), 1 << 20);
        assert!(WalSegSize::from_show("2GB").is_err());
        assert!(WalSegSize::from_show("512kB").is_err());
        assert!(WalSegSize::from_show("24MB").is_err());
        assert!(WalSegSize::new(0).is_err());
        for s in ["1MB", "16MB", "64MB", "1GB"] {
            assert_eq!(WalSegSize::from_show(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            serde_json::to_string(&WalSegSize::DEFAULT).unwrap(),
            "16777216"
        );
        assert_eq!(
            serde_json::from_str::<WalSegSize>("16777216").unwrap(),
            WalSegSize::DEFAULT
        );
        assert!(serde_json::from_str::<WalSegSize>("1000").is_err());
        assert_eq!(serde_json::to_string(&TimelineId(3)).unwrap(), "3");
        assert_eq!(
            serde_json::from_str::<TimelineId>("3").unwrap(),
            TimelineId(3)
        );
        assert_eq!(
            serde_json::from_str::<TimelineId>("0")
                .unwrap_err()
                .to_string(),
            "invalid timeline \"0\"\nhint: a timeline is a positive integer"
        );
    }

    #[test]
    fn history_parse() {
        let text = "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000060\tbefore 2026-11-24\n";
        let h = TimelineHistory::parse(text).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.parent().unwrap().tli, TimelineId(2));
        assert_eq!(h.timeline_at(TimelineId(3), Lsn(0x100)), TimelineId(1));
        assert_eq!(h.timeline_at(TimelineId(3), Lsn(0x300_0000)), TimelineId(2));
        assert_eq!(h.timeline_at(TimelineId(3), Lsn(0x500_0060)), TimelineId(3));
        let err = TimelineHistory::parse("2\t0/1\n1\t0/2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid timeline history line 2: \"1\t0/2\" (timeline ids must increase)"
        );
        assert!(TimelineHistory::parse("x\t0/1\n").is_err());
        assert!(TimelineHistory::parse("1\tzz\n").is_err());
    }

    fn seg_size() -> impl Strategy<Value = WalSegSize> {
        (20u32..=30).prop_map(|p| WalSegSize::new(1u64 << p).unwrap())
    }

    proptest! {
        #[test]
        fn lsn_round_trip(v in any::<u64>()) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }

        #[test]
        fn segment_name_round_trip(tli in 1u32.., lsn in any::<u64>(), size in seg_size()) {
            let segno = Lsn(lsn).segno(size);
            let name = SegmentName::new(TimelineId(tli), segno, size);
            let parsed: SegmentName = name.to_string().parse().unwrap();
            prop_assert_eq!(parsed, name);
            prop_assert_eq!(parsed.segno(size), Some(segno));
            prop_assert!(segno.start_lsn(size) <= Lsn(lsn));
            prop_assert_eq!(Lsn(lsn).segment_start(size), segno.start_lsn(size));
            prop_assert!(Lsn(lsn).segment_offset(size) < size.bytes());
        }

        #[test]
        fn segment_boundaries(lsn in any::<u64>(), size in seg_size()) {
            let seg = Lsn(lsn).segno(size).0;
            let start = SegNo(seg).start_lsn(size);
            prop_assume!(start.0 >= 1);
            prop_assert_eq!(start.segno(size), SegNo(seg));
            prop_assert_eq!(Lsn(start.0 - 1).segno(size).0 + 1, seg);
            prop_assert_eq!(Lsn(start.0 + size.bytes() - 1).segno(size), SegNo(seg));
        }

        #[test]
        fn names_sort_in_lsn_order(la in any::<u64>(), lb in any::<u64>(), size in seg_size()) {
            let (a, b) = (Lsn(la).segno(size).0, Lsn(lb).segno(size).0);
            let na = SegmentName::new(TimelineId(1), SegNo(a), size).to_string();
            let nb = SegmentName::new(TimelineId(1), SegNo(b), size).to_string();
            prop_assert_eq!(a.cmp(&b), na.cmp(&nb));
        }
    }
}
