//! The status file: the streamer writes `<spool>/status.json` about once a second
//! (positions, connection, each provider's health, how full the spool is); `status` reads
//! it (see `ingest::health`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ingest::outbox::Health;

pub const FILE: &str = "status.json";

/// What a running streamer reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamStatus {
    pub pid: u32,
    /// Unix seconds.
    pub updated: u64,
    pub timeline: u32,
    /// WAL received into the spool.
    pub received: String,
    /// WAL acknowledged to PostgreSQL as flushed (durable on every provider, or held in the
    /// spool for one that is down).
    pub acknowledged: String,
    pub connected: bool,
    /// Why it is not connected.
    pub error: Option<String>,
    pub delivery: Health,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// Replace `<spool>/status.json` (atomically; not fsync'd: it is a report, not state).
pub fn write(spool_dir: &Path, s: &StreamStatus) -> std::io::Result<()> {
    let p = path(spool_dir);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, p)
}

/// What the streamer last reported, if `status.json` exists and parses.
pub fn read(spool_dir: &Path) -> Option<StreamStatus> {
    std::fs::read(path(spool_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}
