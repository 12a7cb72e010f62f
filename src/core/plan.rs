//! Restore planning: pure functions of an archive inventory (backups, WAL ranges, timeline
//! histories) and a recovery target. No I/O, no clock.
//!
//! PostgreSQL reads segment `s` of a recovery from the newest timeline on the target
//! timeline's ancestry whose first segment is at or before `s` (`XLogFileReadAnyTLI`): a
//! timeline's archive must hold its WAL from the segment holding its switch point up to the
//! segment holding its child's switch point. The planner checks exactly that coverage, from
//! the first segment of the chosen backup to the target.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::catalog::{AcceptedGap, BackupMeta, HistoryObject, WalRange};
use crate::core::wal::{Lsn, TimelineId, WalSegSize};

/// Microseconds since the Unix epoch, UTC. Prints the way PostgreSQL prints a
/// `timestamptz` in UTC (`2026-11-24 14:30:41+00`); JSON records (`backup.json`) hold it as
/// RFC 3339 (`2026-11-24T14:30:41Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

/// A time as typed: either with a zone (resolved) or without one (the caller decides which
/// local zone it means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedTime {
    Zoned(Timestamp),
    /// Wall-clock fields, encoded as if they were UTC.
    Naive(Timestamp),
}

pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse RFC 3339 (`2026-11-24T14:30:41Z`, `...+01:00`) and PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]` (`+01`, `+0100`, `+01:00`, `Z`, `UTC`).
pub fn parse_time(s: &str) -> Result<ParsedTime, String> {
    let bad = || {
        format!("\"{s}\" is not a time (expected YYYY-MM-DD HH:MM:SS[.ffffff][+TZ] or RFC 3339, e.g. 2026-11-24 14:30:41+00)")
    };
    let t = s.trim();
    let b = t.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let p = &t[r];
        if p.bytes().all(|c| c.is_ascii_digit()) {
            p.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mdays = [
        31,
        if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || se > 60
    {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        let digits = &frac[..n];
        let mut v = 0i64;
        for (i, c) in digits.bytes().take(6).enumerate() {
            v += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
        micros = v;
        rest = &frac[n..];
    }
    let local =
        (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se.min(59)) * 1_000_000 + micros;
    let zone = rest.trim();
    if zone.is_empty() {
        return Ok(ParsedTime::Naive(Timestamp(local)));
    }
    if zone.eq_ignore_ascii_case("z")
        || zone.eq_ignore_ascii_case("utc")
        || zone.eq_ignore_ascii_case("gmt")
    {
        return Ok(ParsedTime::Zoned(Timestamp(local)));
    }
    let (sign, off) = match zone.as_bytes()[0] {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return Err(bad()),
    };
    let digits: String = off.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|c| c.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return Err(bad());
    }
    let oh: i64 = digits[..2].parse().map_err(|_| bad())?;
    let om: i64 = if digits.len() == 4 {
        digits[2..].parse().map_err(|_| bad())?
    } else {
        0
    };
    if oh > 15 || om > 59 {
        return Err(bad());
    }
    Ok(ParsedTime::Zoned(Timestamp(
        local - sign * (oh * 3600 + om * 60) * 1_000_000,
    )))
}

impl Timestamp {
    /// The naive fields of a `ParsedTime::Naive` taken as UTC (what backup.json times are).
    pub fn parse_utc(s: &str) -> Result<Timestamp, String> {
        match parse_time(s)? {
            ParsedTime::Zoned(t) | ParsedTime::Naive(t) => Ok(t),
        }
    }

    pub fn from_unix_secs(secs: i64) -> Timestamp {
        Timestamp(secs * 1_000_000)
    }

    /// A wall-clock time the caller read (core reads no clock); before 1970 counts as 1970.
    pub fn from_system_time(t: std::time::SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        )
    }

    /// The wall-clock time (before 1970 counts as 1970), for a provider's dates.
    pub fn to_system_time(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(self.0.max(0) as u64)
    }

    /// RFC 3339 in UTC, as JSON records hold it: `2026-11-24T14:30:41Z`
    /// (`...41.123456Z` when there are microseconds).
    pub fn rfc3339(self) -> String {
        self.write(' ', "Z").replace(' ', "T")
    }

    /// `YYYY-MM-DD<sep>HH:MM:SS[.ffffff]<zone>`.
    fn write(self, sep: char, zone: &str) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86400));
        let s = secs.rem_euclid(86400);
        let mut out = format!(
            "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
        if micros != 0 {
            out.push_str(&format!(".{micros:06}"));
        }
        out.push_str(zone);
        out
    }
}

impl fmt::Display for Timestamp {
    /// PostgreSQL's form, always in UTC: `2026-11-24 14:30:41.123456+00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.write(' ', "+00"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_utc(&s).map_err(serde::de::Error::custom)
    }
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Replay all archived WAL (PostgreSQL's default).
    Latest,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(Timestamp),
    Lsn(Lsn),
    /// A transaction id, as PostgreSQL accepts it (decimal).
    Xid(u64),
    /// A restore point made with `pg_create_restore_point()`.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("the end of the archived WAL"),
            Target::Immediate => f.write_str("the end of the backup (immediate)"),
            Target::Time(t) => write!(f, "time {t}"),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Xid(x) => write!(f, "transaction {x}"),
            Target::Name(n) => write!(f, "restore point \"{n}\""),
        }
    }
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline in the archive (PostgreSQL's default, `latest`).
    Latest,
    /// The timeline the backup was taken on (`current`).
    Current,
    Id(u32),
}

/// Everything the planner knows about an archive.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub seg: WalSegSize,
    /// Committed backups (any order).
    pub backups: Vec<BackupMeta>,
    /// Contiguous archived WAL per timeline.
    pub wal: Vec<WalRange>,
    pub histories: BTreeMap<TimelineId, HistoryObject>,
    /// WAL recorded as lost (`lifeboat accept-gap`): a hole the planner meets there is
    /// explained as what it is.
    pub gaps: Vec<AcceptedGap>,
}

/// One timeline's share of the WAL a restore replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalStep {
    pub timeline: u32,
    pub start_lsn: Lsn,
    /// `None`: as far as the archive goes (the end is found during replay).
    pub end_lsn: Option<Lsn>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup: String,
    /// For an incremental backup: its chain, the full backup first, `backup` last (restore
    /// combines them); empty for a full backup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    pub backup_timeline: u32,
    pub backup_start_lsn: Lsn,
    pub backup_end_lsn: Lsn,
    pub backup_end_time: Timestamp,
    pub pg_version: u32,
    /// The value for `recovery_target_timeline`.
    pub target_timeline: u32,
    /// Timelines from the backup's to the target's.
    pub timelines: Vec<u32>,
    pub wal: Vec<WalStep>,
    /// Where the archived WAL along the path ends (what `latest` reaches).
    pub wal_end_lsn: Lsn,
    #[serde(skip)]
    pub target: Target,
    pub target_text: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the archive holds no backup\nhint: take one with `lifeboat backup`")]
    NoBackups,
    #[error("backup {0} is not in the archive\nhint: `lifeboat list` shows the backups")]
    UnknownBackup(String),
    #[error("backup {id} is incremental and its chain is broken: {missing}, the parent of {child}, is not in the archive\nhint: restore a backup whose chain is whole (omit --backup to let lifeboat choose); `lifeboat list` shows each backup's parent")]
    BrokenChain {
        id: String,
        child: String,
        missing: String,
    },
    #[error(
        "timeline {0} is not in the archive\nhint: `lifeboat list` shows the archived timelines"
    )]
    UnknownTimeline(u32),
    #[error("the history file of timeline {0} is missing from the archive, so its ancestry is unknown\nhint: `lifeboat verify` checks the timeline chain")]
    MissingHistory(u32),
    #[error("{0}")]
    Unreachable(String),
    #[error("WAL gap {from}–{to} on timeline {timeline}: {why}\nhint: {hint}")]
    Gap {
        timeline: u32,
        from: Lsn,
        to: String,
        why: String,
        hint: String,
    },
}

/// The ancestry of a timeline: `(tli, begin)` from the oldest to `tli` itself.
fn ancestry(
    histories: &BTreeMap<TimelineId, HistoryObject>,
    tli: u32,
) -> Result<Vec<(u32, Lsn)>, PlanError> {
    let mut out = Vec::new();
    let mut cur = tli;
    loop {
        if cur == 1 {
            out.push((1, Lsn(0)));
            break;
        }
        let h = histories
            .get(&TimelineId(cur))
            .ok_or(PlanError::MissingHistory(cur))?;
        out.push((cur, h.switch));
        if h.parent.0 >= cur || out.len() > 10_000 {
            return Err(PlanError::MissingHistory(cur));
        }
        cur = h.parent.0;
    }
    out.reverse();
    Ok(out)
}

/// The timeline a path is on at `lsn` (by LSN, not by segment).
fn tli_at(path: &[(u32, Lsn)], lsn: Lsn) -> u32 {
    path.iter()
        .rev()
        .find(|(_, b)| *b <= lsn)
        .map_or(path[0].0, |(t, _)| *t)
}

fn backup_time(b: &BackupMeta) -> Timestamp {
    b.end_time
}

/// Whether `b` lies on `path`: its start and end are on the timelines it recorded.
fn on_path(path: &[(u32, Lsn)], b: &BackupMeta) -> bool {
    tli_at(path, b.start_lsn) == b.timeline.0 && tli_at(path, b.end_lsn) == b.end_timeline.0
}

/// Check that the archive covers the WAL a restore of `b` along `path` reads, up to `to`
/// (`None`: the end of the archive). Returns the steps and where the WAL ends.
fn coverage(
    inv: &Inventory,
    path: &[(u32, Lsn)],
    b: &BackupMeta,
    to: Option<Lsn>,
    target: &Target,
) -> Result<(Vec<WalStep>, Lsn), PlanError> {
    let seg = inv.seg;
    let from = b.start_lsn.segment_start(seg);
    let mut steps = Vec::new();
    let mut reached = from;
    for (i, (tli, begin)) in path.iter().enumerate() {
        let lo = if i == 0 {
            Lsn(0)
        } else {
            begin.segment_start(seg)
        };
        let hi = path.get(i + 1).map(|(_, nb)| nb.segment_start(seg));
        let lo = lo.max(from);
        let hi = match (hi, to) {
            (Some(h), Some(t)) => Some(h.min(t)),
            (Some(h), None) => Some(h),
            (None, t) => t,
        };
        if let Some(h) = hi {
            if h <= lo {
                continue;
            }
        }
        if let Some(t) = to {
            if lo >= t && !steps.is_empty() {
                break;
            }
        }
        let ranges: Vec<&WalRange> = inv.wal.iter().filter(|r| r.timeline == *tli).collect();
        let covering = ranges.iter().find(|r| r.start_lsn <= lo && r.end_lsn > lo);
        let last = path.len() == i + 1;
        let hint_stop = |at: Lsn| {
            format!("recovery can only reach {at}: pass --target-lsn {at} (or an earlier target) to restore up to there, or --backup a newer backup that starts after the gap")
        };
        match covering {
            None => {
                let next = ranges
                    .iter()
                    .filter(|r| r.start_lsn > lo)
                    .map(|r| r.start_lsn)
                    .min();
                if last && hi.is_none() && next.is_none() && i > 0 {
                    // Nothing archived on the newest timeline yet: replay ends at the switch.
                    reached = lo;
                    steps.push(WalStep {
                        timeline: *tli,
                        start_lsn: lo,
                        end_lsn: Some(lo),
                    });
                    break;
                }
                let to_txt = match next {
                    Some(n) => n.to_string(),
                    None => "(nothing archived after it)".to_string(),
                };
                return Err(PlanError::Gap {
                    timeline: *tli,
                    from: lo,
                    to: to_txt,
                    why: format!("restoring backup {} to {target} needs this WAL and the archive does not hold it", b.id),
                    hint: if reached > from { hint_stop(reached) } else { "the backup's own WAL is missing: choose another backup with --backup, and check `lifeboat verify`".into() },
                });
            }
            Some(r) => {
                let end = r.end_lsn;
                match hi {
                    Some(h) if end < h => {
                        let next = ranges
                            .iter()
                            .filter(|x| x.start_lsn > end)
                            .map(|x| x.start_lsn)
                            .min();
                        if next.is_none() && last {
                            return Err(PlanError::Unreachable(match target {
                                Target::Lsn(l) => format!(
                                    "target LSN {l} is after the end of the archived WAL ({end} on timeline {tli})\nhint: `lifeboat list` shows the WAL coverage; targets before {end} are reachable"
                                ),
                                _ => format!(
                                    "backup {} is not restorable yet: its WAL is archived up to {end} on timeline {tli}, and it needs WAL up to {h}\nhint: is `lifeboat stream` running? `lifeboat list` shows the coverage",
                                    b.id
                                ),
                            }));
                        }
                        return Err(PlanError::Gap {
                            timeline: *tli,
                            from: end,
                            to: next.map_or_else(|| format!("{h} (where the archive should continue)"), |n| n.to_string()),
                            why: format!("restoring backup {} to {target} needs this WAL and the archive does not hold it", b.id),
                            hint: hint_stop(end.max(b.end_lsn)),
                        });
                    }
                    Some(h) => {
                        steps.push(WalStep {
                            timeline: *tli,
                            start_lsn: lo,
                            end_lsn: Some(h),
                        });
                        reached = h;
                    }
                    None => {
                        // The last timeline, replayed to its end: later WAL after a gap on
                        // the same timeline would be silently lost.
                        if let Some(n) = ranges
                            .iter()
                            .filter(|x| x.start_lsn > end)
                            .map(|x| x.start_lsn)
                            .min()
                        {
                            return Err(PlanError::Gap {
                                timeline: *tli,
                                from: end,
                                to: n.to_string(),
                                why: format!("WAL after the gap is archived, but replay from backup {} would stop at the gap and lose it", b.id),
                                hint: hint_stop(end.max(b.end_lsn)),
                            });
                        }
                        steps.push(WalStep {
                            timeline: *tli,
                            start_lsn: lo,
                            end_lsn: None,
                        });
                        reached = end;
                    }
                }
            }
        }
    }
    Ok((steps, reached))
}

/// Pick the backup and check the WAL for restoring to `target` along `timeline`. A WAL gap
/// that an operator accepted as lost says so.
pub fn plan(
    inv: &Inventory,
    target: &Target,
    timeline: TimelineChoice,
    backup: Option<&str>,
) -> Result<Plan, PlanError> {
    plan_inner(inv, target, timeline, backup).map_err(|e| match e {
        PlanError::Gap {
            timeline,
            from,
            to,
            why,
            hint,
        } => match inv
            .gaps
            .iter()
            .find(|g| g.contains(TimelineId(timeline), from))
        {
            Some(g) => PlanError::Gap {
                timeline,
                from,
                to,
                why: format!(
                    "{why}; WAL {}–{} was lost: {} (accepted {})",
                    g.from, g.to, g.reason, g.accepted_at
                ),
                hint: format!("no restore crosses a lost gap: restore to a target before {}, or from a backup taken after {}", g.from, g.to),
            },
            None => PlanError::Gap {
                timeline,
                from,
                to,
                why,
                hint,
            },
        },
        other => other,
    })
}

/// A chain link missing from the archive: `missing`, the parent of `child`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub child: String,
    pub missing: String,
}

/// The chain of backup `b` among `backups`: the full backup first, `b` last (just `b` for
/// a full backup); or the first parent that is missing (or a loop, reported the same way).
pub fn chain_of<'a>(
    backups: &'a [BackupMeta],
    b: &'a BackupMeta,
) -> Result<Vec<&'a BackupMeta>, ChainBreak> {
    let mut chain = vec![b];
    while let Some(inc) = &chain.last().expect("not empty").incremental {
        let child = &chain.last().expect("not empty").id;
        match backups.iter().find(|p| p.id == inc.parent) {
            Some(p) if chain.len() <= backups.len() && !chain.iter().any(|c| c.id == p.id) => {
                chain.push(p)
            }
            _ => {
                return Err(ChainBreak {
                    child: child.clone(),
                    missing: inc.parent.clone(),
                })
            }
        }
    }
    chain.reverse();
    Ok(chain)
}

fn plan_inner(
    inv: &Inventory,
    target: &Target,
    timeline: TimelineChoice,
    backup: Option<&str>,
) -> Result<Plan, PlanError> {
    if inv.backups.is_empty() {
        return Err(PlanError::NoBackups);
    }
    let mut backups: Vec<&BackupMeta> = inv.backups.iter().collect();
    backups.sort_by(|a, b| (b.end_lsn, &b.id).cmp(&(a.end_lsn, &a.id)));
    if let Some(id) = backup {
        backups.retain(|b| b.id == id);
        if backups.is_empty() {
            return Err(PlanError::UnknownBackup(id.into()));
        }
        if let Err(ChainBreak { child, missing }) = chain_of(&inv.backups, backups[0]) {
            return Err(PlanError::BrokenChain {
                id: id.into(),
                child,
                missing,
            });
        }
    } else {
        // An incremental backup is a recovery point when its whole chain is archived.
        backups.retain(|b| chain_of(&inv.backups, b).is_ok());
        if backups.is_empty() {
            return Err(PlanError::NoBackups);
        }
    }
    let newest_tli = inv
        .histories
        .keys()
        .map(|t| t.0)
        .chain(inv.wal.iter().map(|r| r.timeline))
        .chain(inv.backups.iter().map(|b| b.end_timeline.0))
        .max()
        .unwrap_or(1);
    let mut first_err: Option<PlanError> = None;
    let mut considered = 0;
    for b in &backups {
        let target_tli = match timeline {
            TimelineChoice::Latest => newest_tli,
            TimelineChoice::Current => b.timeline.0,
            TimelineChoice::Id(t) => {
                let known = t == 1
                    || inv.histories.contains_key(&TimelineId(t))
                    || inv.wal.iter().any(|r| r.timeline == t);
                if !known {
                    return Err(PlanError::UnknownTimeline(t));
                }
                t
            }
        };
        let path = ancestry(&inv.histories, target_tli)?;
        if !on_path(&path, b) {
            if backup.is_some() {
                return Err(PlanError::Unreachable(format!(
                    "backup {} (timeline {}) is not on the history of timeline {target_tli}: that timeline branched off before the backup\nhint: choose --target-timeline {} or another backup",
                    b.id, b.timeline, b.timeline
                )));
            }
            continue;
        }
        // Does the target come after this backup's consistency point?
        let (to, fits) = match target {
            Target::Latest => (None, true),
            Target::Immediate => (Some(b.end_lsn), true),
            Target::Lsn(l) => (Some(*l), *l >= b.end_lsn),
            Target::Time(t) => (None, backup_time(b).0 + 1_000_000 <= t.0),
            Target::Xid(x) => (None, b.xid_after_end(*x).unwrap_or(true)),
            Target::Name(_) => (None, true),
        };
        considered += 1;
        if !fits {
            if backup.is_some() {
                return Err(PlanError::Unreachable(match target {
                    Target::Lsn(l) => format!("target LSN {l} is before backup {} became consistent (at {})\nhint: choose an older backup with --backup, or a later target", b.id, b.end_lsn),
                    Target::Xid(x) => format!("transaction {x} had already finished when backup {} ended ({})\nhint: choose an older backup with --backup", b.id, b.end_time),
                    _ => format!("target {target} is before backup {} ended ({})\nhint: choose an older backup with --backup, or a later target", b.id, b.end_time),
                }));
            }
            continue;
        }
        match coverage(inv, &path, b, to, target) {
            Ok((steps, reached)) => {
                if let Target::Lsn(l) = target {
                    if reached < *l {
                        return Err(PlanError::Unreachable(format!("target LSN {l} is after the end of the archived WAL ({reached} on timeline {})\nhint: `lifeboat list` shows the WAL coverage; --target-lsn {reached} is the newest reachable point", path.last().map_or(1, |p| p.0))));
                    }
                }
                let mut notes = Vec::new();
                match target {
                    Target::Xid(x) if b.xid_after_end(*x).is_some() => notes.push(format!(
                        "transaction {x} was still running or not yet started when backup {} ended (its snapshot says so)",
                        b.id
                    )),
                    Target::Xid(_) | Target::Name(_) => notes.push(format!(
                        "the position of {target} is only known during replay; if it precedes backup {} PostgreSQL stops with \"recovery ended before configured recovery target was reached\": then restore an older backup with --backup",
                        b.id
                    )),
                    Target::Time(_) => notes.push(
                        "PostgreSQL stops at the first commit after the target time; if none was archived, replay ends at the end of the archived WAL".into(),
                    ),
                    _ => {}
                }
                let timelines: Vec<u32> = path
                    .iter()
                    .map(|p| p.0)
                    .filter(|t| *t >= b.timeline.0)
                    .collect();
                let chain = match &b.incremental {
                    Some(_) => chain_of(&inv.backups, b)
                        .map(|c| c.iter().map(|x| x.id.clone()).collect())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                return Ok(Plan {
                    backup: b.id.clone(),
                    chain,
                    backup_timeline: b.timeline.0,
                    backup_start_lsn: b.start_lsn,
                    backup_end_lsn: b.end_lsn,
                    backup_end_time: b.end_time,
                    pg_version: b.pg_version,
                    target_timeline: target_tli,
                    timelines,
                    wal: steps,
                    wal_end_lsn: reached,
                    target: target.clone(),
                    target_text: target.to_string(),
                    notes,
                });
            }
            Err(e) => {
                if backup.is_some() {
                    return Err(e);
                }
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let oldest = inv
        .backups
        .iter()
        .min_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)))
        .expect("not empty");
    Err(PlanError::Unreachable(if considered == 0 {
        format!("no backup lies on the history of the requested timeline\nhint: --target-timeline {} (the oldest backup's) or `lifeboat list`", oldest.timeline)
    } else {
        match target {
            Target::Time(t) => format!("target time {t} is before the oldest backup ({} ended at {})\nhint: `lifeboat list` shows the backups; the earliest reachable time is just after {}", oldest.id, oldest.end_time, oldest.end_time),
            Target::Lsn(l) => format!("target LSN {l} is before the oldest backup ({} is consistent at {})\nhint: `lifeboat list` shows the backups", oldest.id, oldest.end_lsn),
            Target::Xid(x) => format!("transaction {x} had already finished when the oldest backup ({}) ended, so no backup can stop at it\nhint: `lifeboat list` shows the backups", oldest.id),
            _ => format!("no backup can reach {target}"),
        }
    }))
}

impl Plan {
    /// The human explanation printed by `restore --dry-run`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "backup    {} (timeline {}, WAL {} – {}, consistent at {})\n",
            self.backup,
            self.backup_timeline,
            self.backup_start_lsn,
            self.backup_end_lsn,
            self.backup_end_time
        ));
        if !self.chain.is_empty() {
            s.push_str(&format!(
                "chain     {} (full {} + {} incremental; restore combines them)\n",
                self.chain.join(" → "),
                self.chain[0],
                self.chain.len() - 1
            ));
        }
        s.push_str(&format!("target    {}\n", self.target_text));
        s.push_str(&format!(
            "timelines {} (recovery_target_timeline = {})\n",
            self.timelines
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" → "),
            self.target_timeline
        ));
        for w in &self.wal {
            s.push_str(&format!(
                "WAL       timeline {}: {} – {}\n",
                w.timeline,
                w.start_lsn,
                w.end_lsn.map_or_else(
                    || format!("{} (end of archive)", self.wal_end_lsn),
                    |e| e.to_string()
                )
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("note      {n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::BackupMeta;
    use proptest::prelude::*;

    const SEG: WalSegSize = WalSegSize::DEFAULT;
    const S: u64 = 16 << 20;

    fn backup(id: &str, tli: u32, start: u64, end: u64, end_time: &str) -> BackupMeta {
        let end_time = Timestamp::parse_utc(end_time).unwrap();
        BackupMeta {
            format: 1,
            id: id.into(),
            label: id.into(),
            system_identifier: "1".into(),
            pg_version: 170000,
            timeline: TimelineId(tli),
            start_lsn: Lsn(start),
            end_timeline: TimelineId(tli),
            end_lsn: Lsn(end),
            start_time: end_time,
            end_time,
            plain_size: 0,
            stored_size: 0,
            tablespaces: vec![],
            parts: vec![],
            manifest: crate::core::catalog::BackupPart {
                key: String::new(),
                tar: String::new(),
                seq: 0,
                plain_len: 0,
                stored_len: 0,
                crc32: 0,
            },
            extensions: None,
            shared_preload_libraries: None,
            data_checksums: true,
            wal_segment_size: SEG,
            from_standby: false,
            bootstrap_superuser: None,
            snapshot_at_end: None,
            created_by: String::new(),
            incremental: None,
            full_reason: None,
            members: Vec::new(),
        }
    }

    fn r(tli: u32, s: u64, e: u64) -> WalRange {
        WalRange {
            timeline: tli,
            start_lsn: Lsn(s),
            end_lsn: Lsn(e),
        }
    }

    fn hist(tli: u32, parent: u32, switch: u64) -> (TimelineId, HistoryObject) {
        (
            TimelineId(tli),
            HistoryObject {
                key: String::new(),
                tli: TimelineId(tli),
                parent: TimelineId(parent),
                switch: Lsn(switch),
            },
        )
    }

    fn inv(
        backups: Vec<BackupMeta>,
        wal: Vec<WalRange>,
        h: Vec<(TimelineId, HistoryObject)>,
    ) -> Inventory {
        Inventory {
            seg: SEG,
            backups,
            wal,
            histories: h.into_iter().collect(),
            gaps: vec![],
        }
    }

    #[test]
    fn an_accepted_gap_is_named_as_lost() {
        let mut i = inv(
            vec![backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z")],
            vec![r(1, 2 * S, 5 * S), r(1, 6 * S, 9 * S)],
            vec![],
        );
        i.gaps.push(AcceptedGap {
            format: 1,
            timeline: TimelineId(1),
            from: Lsn(5 * S),
            to: Lsn(6 * S),
            accepted_at: Timestamp(1_764_000_000_000_000),
            slot: Some("lifeboat".into()),
            reason: "the server removed this WAL before it was archived".into(),
        });
        let e = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("WAL gap 0/5000000–0/6000000 on timeline 1: "),
            "{text}"
        );
        assert!(
            text.contains("; WAL 0/5000000–0/6000000 was lost: the server removed this WAL before it was archived (accepted 2025-11-24 16:00:00+00)\nhint: no restore crosses a lost gap: restore to a target before 0/5000000, or from a backup taken after 0/6000000"),
            "{text}"
        );
        // A gap elsewhere changes nothing.
        i.gaps[0].timeline = TimelineId(2);
        let e = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap_err();
        assert!(!e.to_string().contains("was lost"), "{e}");
    }

    #[test]
    fn times_parse_in_both_forms() {
        let z = |s| match parse_time(s).unwrap() {
            ParsedTime::Zoned(t) => t,
            ParsedTime::Naive(_) => panic!("{s} is zoned"),
        };
        let a = z("2026-11-24T14:30:41Z");
        assert_eq!(a.to_string(), "2026-11-24 14:30:41+00");
        assert_eq!(z("2026-11-24 15:30:41+01"), a);
        assert_eq!(z("2026-11-24 15:30:41+01:00"), a);
        assert_eq!(z("2026-11-24 13:00:41-0130"), a);
        assert_eq!(
            z("2026-11-24 14:30:41.5 UTC").to_string(),
            "2026-11-24 14:30:41.500000+00"
        );
        assert_eq!(
            parse_time("2026-11-24 14:30:41").unwrap(),
            ParsedTime::Naive(a)
        );
        assert_eq!(z("1970-01-01T00:00:00Z"), Timestamp(0));
        let t = Timestamp::from_unix_secs(1_764_598_801);
        assert_eq!(t.to_string(), "2025-12-01 14:20:01+00");
        assert_eq!(t.rfc3339(), "2025-12-01T14:20:01Z");
        assert_eq!(
            Timestamp(t.0 + 120).rfc3339(),
            "2025-12-01T14:20:01.000120Z"
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2025-12-01T14:20:01Z\""
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("\"2025-12-01T14:20:01Z\"").unwrap(),
            t
        );
        assert_eq!(
            z("2000-02-29 00:00:00Z").to_string(),
            "2000-02-29 00:00:00+00"
        );
        for bad in [
            "2026-13-01 00:00:00",
            "2026-02-30 00:00:00",
            "yesterday",
            "2026-11-24 14:30",
            "2026-11-24 14:30:41+1",
            "2026-11-24 14:30:41 CET",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// An incremental backup is a recovery point with its chain: picked when newest, with
    /// the chain in the plan; with a parent missing it is passed over, and refused by name.
    #[test]
    fn incremental_backups_restore_with_their_chain() {
        let mut b = backup("B", 1, 5 * S, 5 * S + 100, "2026-11-24T12:00:00Z");
        b.incremental = Some(crate::core::catalog::IncrementalOf {
            parent: "A".into(),
            chain_length: 1,
            from_lsn: Lsn(2 * S),
            from_timeline: TimelineId(1),
        });
        let mut c = backup("C", 1, 6 * S, 6 * S + 100, "2026-11-24T13:00:00Z");
        c.incremental = Some(crate::core::catalog::IncrementalOf {
            parent: "B".into(),
            chain_length: 2,
            from_lsn: Lsn(5 * S),
            from_timeline: TimelineId(1),
        });
        let a = backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z");
        let i = inv(
            vec![a.clone(), b.clone(), c.clone()],
            vec![r(1, 2 * S, 9 * S)],
            vec![],
        );
        let p = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap();
        assert_eq!(p.backup, "C");
        assert_eq!(p.chain, vec!["A", "B", "C"]);
        assert!(
            p.render()
                .contains("chain     A → B → C (full A + 2 incremental; restore combines them)\n"),
            "{}",
            p.render()
        );
        // Point in time: the newest backup before the target, incremental or not.
        let t = Target::Time(Timestamp::parse_utc("2026-11-24 12:30:00Z").unwrap());
        let p = plan(&i, &t, TimelineChoice::Latest, None).unwrap();
        assert_eq!((p.backup.as_str(), p.chain.len()), ("B", 2));
        let p = plan(&i, &Target::Latest, TimelineChoice::Latest, Some("A")).unwrap();
        assert!(p.chain.is_empty());
        // B missing: C is passed over (A is chosen) and refused by name.
        let i = inv(vec![a, c], vec![r(1, 2 * S, 9 * S)], vec![]);
        let p = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap();
        assert_eq!(p.backup, "A");
        let e = plan(&i, &Target::Latest, TimelineChoice::Latest, Some("C")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "backup C is incremental and its chain is broken: B, the parent of C, is not in the archive\nhint: restore a backup whose chain is whole (omit --backup to let lifeboat choose); `lifeboat list` shows each backup's parent"
        );
    }

    #[test]
    fn picks_the_newest_backup_before_a_time() {
        let i = inv(
            vec![
                backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z"),
                backup("B", 1, 5 * S, 5 * S + 100, "2026-11-24T12:00:00Z"),
            ],
            vec![r(1, 2 * S, 9 * S)],
            vec![],
        );
        let t = |s| Target::Time(Timestamp::parse_utc(s).unwrap());
        let p = plan(&i, &t("2026-11-24 14:30:41Z"), TimelineChoice::Latest, None).unwrap();
        assert_eq!(p.backup, "B");
        assert_eq!(
            p.wal,
            vec![WalStep {
                timeline: 1,
                start_lsn: Lsn(5 * S),
                end_lsn: None
            }]
        );
        assert_eq!(p.wal_end_lsn, Lsn(9 * S));
        assert_eq!(
            plan(&i, &t("2026-11-24 10:00:00Z"), TimelineChoice::Latest, None)
                .unwrap()
                .backup,
            "A"
        );
        let e = plan(&i, &t("2026-11-24 07:00:00Z"), TimelineChoice::Latest, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "target time 2026-11-24 07:00:00+00 is before the oldest backup (A ended at 2026-11-24 08:00:00+00)\nhint: `lifeboat list` shows the backups; the earliest reachable time is just after 2026-11-24 08:00:00+00"
        );
    }

    #[test]
    fn names_the_gap() {
        let i = inv(
            vec![backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z")],
            vec![r(1, 2 * S, 5 * S), r(1, 6 * S, 9 * S)],
            vec![],
        );
        let e = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("WAL gap 0/5000000–0/6000000 on timeline 1: "),
            "{e}"
        );
        assert!(e.to_string().contains("--target-lsn 0/5000000"), "{e}");
        // A target before the gap is fine.
        let p = plan(&i, &Target::Lsn(Lsn(4 * S)), TimelineChoice::Latest, None).unwrap();
        assert_eq!(p.wal_end_lsn, Lsn(4 * S));
        let e = plan(&i, &Target::Lsn(Lsn(7 * S)), TimelineChoice::Latest, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("WAL gap 0/5000000–0/6000000 on timeline 1"),
            "{e}"
        );
        let e = plan(&i, &Target::Lsn(Lsn(10 * S)), TimelineChoice::Latest, None).unwrap_err();
        assert!(
            e.to_string().starts_with("WAL gap 0/5000000–0/6000000"),
            "{e}"
        );
        let i = inv(
            vec![backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z")],
            vec![r(1, 2 * S, 5 * S)],
            vec![],
        );
        let e = plan(&i, &Target::Lsn(Lsn(7 * S)), TimelineChoice::Latest, None).unwrap_err();
        assert!(e.to_string().starts_with("target LSN 0/7000000 is after the end of the archived WAL (0/5000000 on timeline 1)"), "{e}");
    }

    #[test]
    fn follows_timelines() {
        // Timeline 2 branched at 0/6000100 (inside segment 6).
        let i = inv(
            vec![backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z")],
            vec![r(1, 2 * S, 7 * S), r(2, 6 * S, 9 * S)],
            vec![hist(2, 1, 6 * S + 0x100)],
        );
        let p = plan(&i, &Target::Latest, TimelineChoice::Latest, None).unwrap();
        assert_eq!(p.target_timeline, 2);
        assert_eq!(p.timelines, vec![1, 2]);
        assert_eq!(
            p.wal,
            vec![
                WalStep {
                    timeline: 1,
                    start_lsn: Lsn(2 * S),
                    end_lsn: Some(Lsn(6 * S))
                },
                WalStep {
                    timeline: 2,
                    start_lsn: Lsn(6 * S),
                    end_lsn: None
                }
            ]
        );
        let p = plan(&i, &Target::Latest, TimelineChoice::Id(1), None).unwrap();
        assert_eq!(p.target_timeline, 1);
        assert_eq!(p.wal_end_lsn, Lsn(7 * S));
        assert_eq!(
            plan(&i, &Target::Latest, TimelineChoice::Id(3), None).unwrap_err(),
            PlanError::UnknownTimeline(3)
        );
        // A backup taken on timeline 2 is not on timeline 1's history.
        let mut b2 = backup("B", 2, 8 * S, 8 * S + 10, "2026-11-24T09:00:00Z");
        b2.end_timeline = TimelineId(2);
        let i2 = inv(
            vec![i.backups[0].clone(), b2],
            i.wal.clone(),
            i.histories.clone().into_iter().collect(),
        );
        assert_eq!(
            plan(&i2, &Target::Latest, TimelineChoice::Latest, None)
                .unwrap()
                .backup,
            "B"
        );
        assert_eq!(
            plan(&i2, &Target::Latest, TimelineChoice::Id(1), None)
                .unwrap()
                .backup,
            "A"
        );
        let e = plan(&i2, &Target::Latest, TimelineChoice::Id(1), Some("B")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("backup B (timeline 2) is not on the history of timeline 1"),
            "{e}"
        );
        // A missing history file.
        let i3 = inv(
            i.backups.clone(),
            vec![r(1, 2 * S, 7 * S), r(3, 6 * S, 9 * S)],
            vec![hist(3, 2, 6 * S)],
        );
        assert_eq!(
            plan(&i3, &Target::Latest, TimelineChoice::Latest, None).unwrap_err(),
            PlanError::MissingHistory(2)
        );
    }

    #[test]
    fn lsn_and_immediate_targets() {
        let i = inv(
            vec![
                backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z"),
                backup("B", 1, 5 * S, 5 * S + 100, "2026-11-24T12:00:00Z"),
            ],
            vec![r(1, 2 * S, 9 * S)],
            vec![],
        );
        assert_eq!(
            plan(
                &i,
                &Target::Lsn(Lsn(5 * S + 50)),
                TimelineChoice::Latest,
                None
            )
            .unwrap()
            .backup,
            "A"
        );
        assert_eq!(
            plan(
                &i,
                &Target::Lsn(Lsn(5 * S + 100)),
                TimelineChoice::Latest,
                None
            )
            .unwrap()
            .backup,
            "B"
        );
        let p = plan(&i, &Target::Immediate, TimelineChoice::Latest, Some("A")).unwrap();
        assert_eq!((p.backup.as_str(), p.wal_end_lsn), ("A", Lsn(2 * S + 100)));
        let e = plan(&i, &Target::Lsn(Lsn(S)), TimelineChoice::Latest, None).unwrap_err();
        assert_eq!(e.to_string(), "target LSN 0/1000000 is before the oldest backup (A is consistent at 0/2000064)\nhint: `lifeboat list` shows the backups");
        let e = plan(
            &i,
            &Target::Lsn(Lsn(3 * S)),
            TimelineChoice::Latest,
            Some("B"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("target LSN 0/3000000 is before backup B became consistent"),
            "{e}"
        );
        assert_eq!(
            plan(&i, &Target::Latest, TimelineChoice::Latest, Some("C")).unwrap_err(),
            PlanError::UnknownBackup("C".into())
        );
        assert_eq!(
            plan(
                &inv(vec![], vec![], vec![]),
                &Target::Latest,
                TimelineChoice::Latest,
                None
            )
            .unwrap_err(),
            PlanError::NoBackups
        );
    }

    #[test]
    fn xid_targets_use_the_backups_snapshot() {
        let mut a = backup("A", 1, 2 * S, 2 * S + 100, "2026-11-24T08:00:00Z");
        a.snapshot_at_end = Some("700:705:701,703".into());
        let mut b = backup("B", 1, 5 * S, 5 * S + 100, "2026-11-24T12:00:00Z");
        b.snapshot_at_end = Some("900:900:".into());
        assert_eq!(a.xid_after_end(699), Some(false));
        assert_eq!(a.xid_after_end(701), Some(true));
        assert_eq!(a.xid_after_end(702), Some(false));
        assert_eq!(a.xid_after_end(705), Some(true));
        assert_eq!(a.xid_after_end((1 << 32) | 10), Some(true), "a later epoch");
        let i = inv(vec![a, b], vec![r(1, 2 * S, 9 * S)], vec![]);
        let pick = |x| plan(&i, &Target::Xid(x), TimelineChoice::Latest, None).map(|p| p.backup);
        assert_eq!(pick(950).unwrap(), "B");
        assert_eq!(pick(800).unwrap(), "A");
        assert_eq!(pick(703).unwrap(), "A");
        assert_eq!(
            pick(600).unwrap_err().to_string(),
            "transaction 600 had already finished when the oldest backup (A) ended, so no backup can stop at it\nhint: `lifeboat list` shows the backups"
        );
    }

    /// A segment-granular oracle: can backup `b` reach `to` (`None`: latest) along a
    /// straight timeline 1? Every segment from the backup's first to the one holding `to`
    /// must be archived, and for latest no archived segment may follow a missing one.
    fn oracle(have: &[bool], start_seg: usize, end_seg_excl: Option<usize>) -> bool {
        match end_seg_excl {
            Some(e) => (start_seg..e).all(|s| have.get(s).copied().unwrap_or(false)),
            None => {
                let first_missing = (start_seg..have.len())
                    .find(|s| !have[*s])
                    .unwrap_or(have.len());
                first_missing > start_seg && !have[first_missing..].iter().any(|h| *h)
            }
        }
    }

    proptest! {
        #[test]
        fn planner_agrees_with_a_segment_oracle(
            have in proptest::collection::vec(any::<bool>(), 1..24),
            starts in proptest::collection::vec(0usize..24, 1..4),
            target in proptest::option::of(0u64..24 * S),
        ) {
            let mut ranges = Vec::new();
            let mut s = 0;
            while s < have.len() {
                if have[s] {
                    let e = (s..have.len()).find(|x| !have[*x]).unwrap_or(have.len());
                    ranges.push(r(1, s as u64 * S, e as u64 * S));
                    s = e;
                } else {
                    s += 1;
                }
            }
            let backups: Vec<BackupMeta> = starts.iter().enumerate().map(|(i, st)| backup(&format!("B{st:02}{i}"), 1, *st as u64 * S + 40, *st as u64 * S + 4096, "2026-11-24T08:00:00Z")).collect();
            let i = inv(backups.clone(), ranges, vec![]);
            let tgt = match target { Some(t) => Target::Lsn(Lsn(t)), None => Target::Latest };
            let res = plan(&i, &tgt, TimelineChoice::Latest, None);
            // The oracle's choice: the newest backup (by end) that can reach the target.
            let mut best: Option<&BackupMeta> = None;
            for b in &backups {
                let st = (b.start_lsn.0 / S) as usize;
                let ok = match target {
                    Some(t) => t >= b.end_lsn.0 && oracle(&have, st, Some((t / S) as usize + usize::from(t % S != 0))),
                    None => oracle(&have, st, None),
                };
                if ok && best.map_or(true, |x| (b.end_lsn, &b.id) > (x.end_lsn, &x.id)) {
                    best = Some(b);
                }
            }
            match (&res, best) {
                (Ok(p), Some(b)) => {
                    prop_assert_eq!(&p.backup, &b.id);
                    // Every step the plan relies on is archived.
                    for w in &p.wal {
                        let end = w.end_lsn.unwrap_or(p.wal_end_lsn);
                        prop_assert!(i.wal.iter().any(|r| r.start_lsn <= w.start_lsn && r.end_lsn >= end));
                    }
                }
                (Err(_), None) => {}
                (Ok(p), None) => prop_assert!(false, "planned {} but the oracle finds no way", p.backup),
                (Err(e), Some(b)) => {
                    // The planner tries the newest fitting backup first and reports its
                    // gap; older backups cannot cross a gap a newer one could not, except
                    // when the gap lies before the newer one's start, which the planner
                    // then skips. So disagreement is a bug.
                    prop_assert!(false, "error {e} but backup {} works", b.id);
                }
            }
        }
    }
}
