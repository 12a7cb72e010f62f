//! The RTO budget: how long a restore would take now, from what it has to do (restore the
//! newest restorable base backup, then replay the WAL archived since it started) and the
//! rates the last drills measured doing exactly that (or conservative defaults before
//! any drill measured them). Pure: the figures are parameters.
//!
//! The model (docs/DESIGN.md, "The RTO budget"):
//! - restore: the bytes of the base backup (a chain: every backup in it, since each is
//!   read) at the restore rate of the newest drill that restored at least
//!   [`MIN_MEASURED`] bytes (its bytes over its fetch-and-write phase);
//! - replay: the WAL from the base backup's start (its checkpoint's redo) to the archive's
//!   end, at the replay rate of the newest drill that replayed at least [`MIN_MEASURED`]
//!   bytes (its bytes over the time from starting the server to its promotion, so the
//!   rate already pays for the server's start);
//! - plus [`START_SECONDS`] for starting and promoting the server.
//!
//! A drill that moved less than [`MIN_MEASURED`] measured mostly the server's start, not a
//! rate, so it is not used. With `rto_target`, a base backup is due when the estimate
//! passes the target and a new backup would bring it back under (see [`decide`]).

use std::time::Duration;

use serde::Serialize;

use crate::core::wal::Lsn;

const MIB: f64 = (1u64 << 20) as f64;
/// The restore rate assumed before a drill measured one: what a modest cloud disk and
/// object store give (this machine's measured restores run at about 650 MiB/s).
pub const DEFAULT_RESTORE_RATE: f64 = 50.0 * MIB;
/// The replay rate assumed before a drill measured one: single-threaded replay of a
/// write-heavy workload on cold storage; PostgreSQL usually does better.
pub const DEFAULT_REPLAY_RATE: f64 = 16.0 * MIB;
/// Starting, recovering to consistency and promoting the server, on top of the rates.
pub const START_SECONDS: f64 = 10.0;
/// A drill must move at least this much for its rate to count.
pub const MIN_MEASURED: u64 = 64 << 20;
/// A backup the RTO budget asks for waits at least this long after the last one (or the
/// target, if shorter), so WAL that grows faster than backups finish cannot chain them.
pub const MIN_BACKUP_GAP: Duration = Duration::from_secs(30 * 60);

/// What one drill measured (only successful drills are passed in).
#[derive(Debug, Clone, PartialEq)]
pub struct DrillFigures {
    pub id: String,
    pub restored_bytes: Option<u64>,
    pub restore_seconds: f64,
    pub replayed_bytes: Option<u64>,
    pub replay_seconds: f64,
}

/// A rate and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// Bytes a second.
    pub bytes_per_second: f64,
    /// The drill that measured it; `None`: the conservative default.
    pub drill: Option<String>,
}

impl Rate {
    pub fn describe(&self) -> String {
        let r = format!("{:.0} MiB/s", self.bytes_per_second / MIB);
        match &self.drill {
            Some(d) => format!("{r} (drill {d})"),
            None => format!("{r} (default)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    pub restore: Rate,
    pub replay: Rate,
}

/// The rates to use: from the newest drill (drills are given oldest first) that moved
/// enough bytes in each phase, else the defaults.
pub fn rates(drills: &[DrillFigures]) -> Rates {
    let pick =
        |bytes: fn(&DrillFigures) -> Option<u64>, secs: fn(&DrillFigures) -> f64, default: f64| {
            drills
                .iter()
                .rev()
                .find_map(|d| {
                    let b = bytes(d)?;
                    let s = secs(d);
                    (b >= MIN_MEASURED && s > 0.0).then(|| Rate {
                        bytes_per_second: b as f64 / s,
                        drill: Some(d.id.clone()),
                    })
                })
                .unwrap_or(Rate {
                    bytes_per_second: default,
                    drill: None,
                })
        };
    Rates {
        restore: pick(
            |d| d.restored_bytes,
            |d| d.restore_seconds,
            DEFAULT_RESTORE_RATE,
        ),
        replay: pick(
            |d| d.replayed_bytes,
            |d| d.replay_seconds,
            DEFAULT_REPLAY_RATE,
        ),
    }
}

/// How long a restore to the newest point would take now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub seconds: f64,
    pub restore_seconds: f64,
    pub replay_seconds: f64,
    /// The base backup restored (the newest restorable one).
    pub base: String,
    /// Its bytes (a chain: of every backup in it).
    pub base_bytes: u64,
    /// WAL to replay: from the base backup's start to the archive's end.
    pub wal_bytes: u64,
    /// Where that WAL ends.
    pub wal_end: Lsn,
    pub rates: Rates,
}

pub fn estimate(
    base: &str,
    base_bytes: u64,
    base_start: Lsn,
    wal_end: Lsn,
    rates: &Rates,
) -> Estimate {
    let wal_bytes = wal_end.0.saturating_sub(base_start.0);
    let restore_seconds = base_bytes as f64 / rates.restore.bytes_per_second;
    let replay_seconds = wal_bytes as f64 / rates.replay.bytes_per_second;
    Estimate {
        seconds: START_SECONDS + restore_seconds + replay_seconds,
        restore_seconds,
        replay_seconds,
        base: base.to_string(),
        base_bytes,
        wal_bytes,
        wal_end,
        rates: rates.clone(),
    }
}

impl Estimate {
    /// The estimate just after a new base backup of the same size: no WAL to replay.
    pub fn after_backup(&self) -> f64 {
        START_SECONDS + self.restore_seconds
    }

    /// `about 4 min: restore 2.3 GiB at 50 MiB/s (default) + replay 1.2 GiB of WAL at …`.
    pub fn describe(&self) -> String {
        format!(
            "about {}: restore {} ({}) at {} + replay {} of WAL at {} + {}s to start",
            seconds(self.seconds),
            crate::core::fmt::size(self.base_bytes),
            self.base,
            self.rates.restore.describe(),
            crate::core::fmt::size(self.wal_bytes),
            self.rates.replay.describe(),
            START_SECONDS as u64,
        )
    }
}

/// What the RTO budget asks of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The estimate is within the target.
    Within,
    /// Take a base backup now: the estimate passed the target, a new backup brings it back
    /// under, and the last backup started at least [`MIN_BACKUP_GAP`] (or the target) ago.
    Backup,
    /// Over the target, but a backup was started less than [`MIN_BACKUP_GAP`] (or the
    /// target) ago.
    Wait,
    /// Over the target even right after a backup (restoring the base alone takes longer):
    /// backups cannot meet it; faster restore storage or a larger target can.
    Unreachable,
}

/// `since_backup`: how long ago the newest backup (of any kind) started.
pub fn decide(est: &Estimate, target: Duration, since_backup: Option<Duration>) -> Decision {
    let t = target.as_secs_f64();
    if est.seconds <= t {
        Decision::Within
    } else if est.after_backup() > t {
        Decision::Unreachable
    } else if since_backup.is_some_and(|s| s < MIN_BACKUP_GAP.min(target)) {
        Decision::Wait
    } else {
        Decision::Backup
    }
}

/// `45 s`, `12 min`, `2.5 h`.
pub fn seconds(s: f64) -> String {
    let s = s.max(0.0);
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(id: &str, restored: u64, rs: f64, replayed: u64, ps: f64) -> DrillFigures {
        DrillFigures {
            id: id.into(),
            restored_bytes: Some(restored),
            restore_seconds: rs,
            replayed_bytes: Some(replayed),
            replay_seconds: ps,
        }
    }

    #[test]
    fn defaults_before_any_drill() {
        let r = rates(&[]);
        assert_eq!(r.restore.bytes_per_second, DEFAULT_RESTORE_RATE);
        assert_eq!(r.replay.drill, None);
        // 500 MiB at 50 MiB/s, 160 MiB at 16 MiB/s, plus the start.
        let e = estimate("B", 500 << 20, Lsn(0x1000_0000), Lsn(0x1A00_0000), &r);
        assert_eq!(e.wal_bytes, 160 << 20);
        assert!(
            (e.seconds - (10.0 + 10.0 + 10.0)).abs() < 1e-9,
            "{}",
            e.seconds
        );
        assert_eq!(
            e.describe(),
            "about 30 s: restore 500.0 MiB (B) at 50 MiB/s (default) + replay 160.0 MiB of WAL at 16 MiB/s (default) + 10s to start"
        );
    }

    #[test]
    fn newest_drill_that_moved_enough() {
        let drills = [
            drill("old", 1 << 30, 2.0, 1 << 30, 8.0),
            // Too little WAL replayed for a rate; its restore counts.
            drill("new", 512 << 20, 1.0, 1 << 20, 3.0),
        ];
        let r = rates(&drills);
        assert_eq!(r.restore.drill.as_deref(), Some("new"));
        assert_eq!(r.restore.bytes_per_second, 512.0 * MIB);
        assert_eq!(r.replay.drill.as_deref(), Some("old"));
        assert_eq!(r.replay.bytes_per_second, 128.0 * MIB);
        // Drills recorded before the figures existed give defaults.
        let r = rates(&[DrillFigures {
            id: "x".into(),
            restored_bytes: None,
            restore_seconds: 3.0,
            replayed_bytes: None,
            replay_seconds: 3.0,
        }]);
        assert_eq!(r.replay.drill, None);
        // A WAL end before the base's start (another timeline's numbering) replays nothing.
        let e = estimate("B", 0, Lsn(0x2000), Lsn(0x1000), &r);
        assert_eq!(e.wal_bytes, 0);
    }

    #[test]
    fn decisions() {
        let r = rates(&[]);
        let min = |m: u64| Duration::from_secs(m * 60);
        // 2 GiB WAL: 128 s of replay; base 500 MiB: 10 s; +10 s.
        let e = estimate("B", 500 << 20, Lsn(0), Lsn(2 << 30), &r);
        assert_eq!(decide(&e, min(5), None), Decision::Within);
        assert_eq!(decide(&e, min(1), Some(min(60))), Decision::Backup);
        assert_eq!(decide(&e, min(1), None), Decision::Backup);
        assert_eq!(decide(&e, min(1), Some(min(10))), Decision::Backup);
        assert_eq!(
            decide(&e, min(1), Some(Duration::from_secs(30))),
            Decision::Wait
        );
        assert_eq!(decide(&e, min(120), Some(min(40))), Decision::Within);
        let big = estimate("B", 500 << 20, Lsn(0), Lsn(300 << 30), &r);
        assert_eq!(decide(&big, min(120), Some(min(20))), Decision::Wait);
        assert_eq!(decide(&big, min(120), Some(min(31))), Decision::Backup);
        // Restoring the base alone takes longer than the target.
        assert_eq!(
            decide(&e, Duration::from_secs(15), Some(min(60))),
            Decision::Unreachable
        );
    }

    #[test]
    fn human_seconds() {
        assert_eq!(seconds(44.6), "45 s");
        assert_eq!(seconds(720.0), "12 min");
        assert_eq!(seconds(9000.0), "2.5 h");
    }
}
