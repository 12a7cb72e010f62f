//! The status file: the streamer writes `<spool>/status.json` about once a second
//! (positions, connection, each provider's health, how full the spool is); `status` reads
//! it (see `ingest::health`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::wal::{Lsn, TimelineId};
use crate::ingest::outbox::Health;

pub const FILE: &str = "status.json";

/// What a running streamer reports. The JSON is unchanged from when these fields were
/// strings and numbers: LSNs as PostgreSQL prints them, the timeline as a number (0 before
/// the first connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamStatus {
    pub pid: u32,
    /// Unix seconds.
    pub updated: u64,
    /// `None` until the server has been identified.
    #[serde(with = "timeline_or_zero")]
    pub timeline: Option<TimelineId>,
    /// WAL received into the spool.
    pub received: Lsn,
    /// WAL acknowledged to PostgreSQL as flushed (durable on every provider, or held in the
    /// spool for one that is down).
    pub acknowledged: Lsn,
    pub connected: bool,
    /// Why it is not connected.
    pub error: Option<String>,
    pub delivery: Health,
}

/// A timeline that may be unknown yet, written as 0 then.
mod timeline_or_zero {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::core::wal::TimelineId;

    pub fn serialize<S: Serializer>(t: &Option<TimelineId>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(t.map_or(0, |t| t.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TimelineId>, D::Error> {
        let n = u32::deserialize(d)?;
        Ok((n != 0).then_some(TimelineId(n)))
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// Replace the report at `p` (atomically; not fsync'd: it is a report, not state).
fn write_report<T: Serialize>(p: PathBuf, s: &T) -> std::io::Result<()> {
    let tmp = p.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, p)
}

/// The report at `p`, if it exists and parses.
fn read_report<T: serde::de::DeserializeOwned>(p: PathBuf) -> Option<T> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Replace `<spool>/status.json`.
pub fn write(spool_dir: &Path, s: &StreamStatus) -> std::io::Result<()> {
    write_report(path(spool_dir), s)
}

/// What the streamer last reported, if `status.json` exists and parses.
pub fn read(spool_dir: &Path) -> Option<StreamStatus> {
    read_report(path(spool_dir))
}

/// `lifeboat sqlite run`'s report: `<spool>/sqlite-status.json`, replaced after every
/// snapshot and at least every [`SQLITE_BEAT_SECS`].
pub const SQLITE_FILE: &str = "sqlite-status.json";
/// How often the SQLite daemon rewrites its status file while idle.
pub const SQLITE_BEAT_SECS: u64 = 30;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SqliteRunStatus {
    pub pid: u32,
    /// Unix seconds.
    pub updated: u64,
    pub databases: Vec<SqliteDbStatus>,
    /// Each provider's health as the last snapshots found it.
    pub providers: Vec<crate::ingest::outbox::ProviderHealth>,
}

/// One database, as `sqlite run` last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SqliteDbStatus {
    pub name: String,
    pub path: String,
    /// Its snapshot interval, seconds.
    pub every: u64,
    /// The newest snapshot in the archive (taken by the daemon or by hand).
    pub last_snapshot: Option<String>,
    /// The point in time it holds, Unix seconds.
    pub last_snapshot_time: Option<u64>,
    /// When the last run started, Unix seconds, and whether it stored a snapshot.
    pub last_run: Option<u64>,
    pub last_run_ok: Option<bool>,
    /// The last run's error, while it is the newest run.
    pub last_error: Option<String>,
    /// A snapshot is being taken now.
    pub running: bool,
    /// Unix seconds when the next snapshot is due.
    pub next_due: Option<u64>,
}

pub fn sqlite_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SQLITE_FILE)
}

/// Replace `<spool>/sqlite-status.json`.
pub fn write_sqlite(spool_dir: &Path, s: &SqliteRunStatus) -> std::io::Result<()> {
    write_report(sqlite_path(spool_dir), s)
}

pub fn read_sqlite(spool_dir: &Path) -> Option<SqliteRunStatus> {
    read_report(sqlite_path(spool_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `testdata/status.json` was written by `status::write` before the positions were
    /// typed: reading it and writing it again gives the very same bytes.
    #[test]
    fn status_json_round_trips_byte_for_byte() {
        const WRITTEN: &str = include_str!("testdata/status.json");
        let s: StreamStatus = serde_json::from_str(WRITTEN).unwrap();
        assert_eq!(s.timeline, Some(TimelineId(1)));
        assert_eq!(
            (s.received, s.acknowledged),
            (Lsn(0x300_0000), Lsn(0x200_0000))
        );
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&s).unwrap()).unwrap(),
            WRITTEN
        );
        // Before the first connection: timeline 0 and LSN 0/0, as always.
        let starting = StreamStatus {
            timeline: None,
            received: Lsn::INVALID,
            acknowledged: Lsn::INVALID,
            ..s
        };
        let text = serde_json::to_string(&starting).unwrap();
        assert!(
            text.contains(r#""timeline":0,"received":"0/0","acknowledged":"0/0""#),
            "{text}"
        );
        let back: StreamStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back.timeline, None);
    }
}
