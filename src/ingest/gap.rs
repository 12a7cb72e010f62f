//! WAL the server removed before lifeboat archived it: recognising it, measuring it, and
//! the operator's way out.
//!
//! A replication slot keeps WAL until lifeboat acknowledges it, unless the server gives up
//! on the slot (`max_slot_wal_keep_size` invalidates it) or someone drops it. Then the WAL
//! between the archive's end and the oldest segment the server still has is gone: no
//! restore can cross it. lifeboat never papers over that: the streamer stops with a
//! message naming the slot and the lost range, `status` fails, and only `lifeboat
//! accept-gap` (an operator's decision) records the gap in the archive, makes the slot
//! usable again and lets archiving resume after the gap. `list`, `verify` and the restore
//! planner show recorded gaps.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::archive::Archive;
use crate::config::Config;
use crate::core::catalog::AcceptedGap;
use crate::core::plan::Timestamp;
use crate::core::wal::{Lsn, TimelineId, WalSegSize};
use crate::pg::conninfo::ConnParams;
use crate::pg::replication::StartOutcome;
use crate::pg::sqlstate::SqlState;
use crate::pg::{Connection, PgError};

/// How the message of a run that ends on lost WAL begins (`status` recognises it).
pub const LOST_WAL: &str = "WAL was lost before it was archived";

/// The server's words when the WAL lifeboat asked for is gone: a removed segment (58P01),
/// or (PostgreSQL 18) a slot it invalidated (55000, "can no longer access replication
/// slot"). `None` for any other error.
pub fn server_lost_wal(e: &anyhow::Error) -> Option<String> {
    let pg = e.chain().find_map(|c| c.downcast_ref::<PgError>())?;
    let PgError::Server { fields } = pg else {
        return None;
    };
    let m = &fields.message;
    match fields.code? {
        SqlState::UNDEFINED_FILE if m.contains("has already been removed") => Some(m.clone()),
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
            if m.contains("can no longer access replication slot")
                || m.contains("has been invalidated") =>
        {
            Some(fields.to_string())
        }
        _ => None,
    }
}

/// Whether the server can still send WAL from `at` on timeline `tli`, through `slot` or
/// without one, on a connection of its own.
pub async fn server_has(
    params: &ConnParams,
    slot: Option<&str>,
    tli: TimelineId,
    at: Lsn,
) -> Result<bool> {
    let mut conn = Connection::connect(params, true).await?;
    let started = conn.start_replication(slot, at, tli).await;
    let answer = match started {
        Ok(StartOutcome::TimelineEnded { .. }) => Ok(true),
        Ok(StartOutcome::Streaming) => {
            // WAL in the past comes at once; the removed segment's error too. Silence means
            // `at` is the server's end, which it has.
            match tokio::time::timeout(Duration::from_secs(5), conn.next_event()).await {
                Err(_) => Ok(true),
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) => {
                    let e = anyhow::Error::new(e);
                    if server_lost_wal(&e).is_some() {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                }
            }
        }
        // A slot that does not exist serves nothing.
        Err(e) if slot.is_some() && e.code() == Some(SqlState::UNDEFINED_OBJECT) => Ok(false),
        Err(e) => {
            let e = anyhow::Error::new(e);
            if server_lost_wal(&e).is_some() {
                Ok(false)
            } else {
                Err(e)
            }
        }
    };
    conn.close().await;
    answer
}

/// The start of the oldest segment the server still has between `from` (exclusive: known
/// removed) and `to` (its current position, which it has): segments are removed oldest
/// first, so a binary search over the segments finds it.
pub async fn oldest_kept(
    params: &ConnParams,
    tli: TimelineId,
    seg: WalSegSize,
    from: Lsn,
    to: Lsn,
) -> Result<Lsn> {
    let (mut lo, mut hi) = (from.segno(seg).0, to.segno(seg).0);
    // Invariant: segment lo is gone, segment hi is there.
    while hi > lo + 1 {
        let mid = lo + (hi - lo) / 2;
        if server_has(params, None, tli, Lsn(mid * seg.bytes())).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Lsn(hi * seg.bytes()))
}

/// What was lost: the archive's end to the oldest WAL the server still has.
#[derive(Debug, Clone)]
pub struct Lost {
    pub timeline: TimelineId,
    pub from: Lsn,
    /// `None`: nothing is lost (the server still has the WAL; only the slot is unusable).
    pub to: Option<Lsn>,
    pub server: String,
}

/// Measure the loss after the server refused the archive's end (`from` on `tli`); `pos` is
/// the server's current position.
pub async fn measure(
    params: &ConnParams,
    server: &str,
    tli: TimelineId,
    seg: WalSegSize,
    from: Lsn,
    pos: Lsn,
) -> Result<Lost> {
    let to = if server_has(params, None, tli, from.segment_start(seg)).await? {
        None
    } else {
        Some(oldest_kept(params, tli, seg, from, pos.max(from)).await?)
    };
    Ok(Lost {
        timeline: tli,
        from,
        to,
        server: server.to_string(),
    })
}

/// The message the streamer ends with (and `status` shows).
pub fn lost_message(lost: &Lost, slot: Option<&str>, server_said: &str) -> String {
    let slot_words = match slot {
        Some(s) => format!("replication slot \"{s}\" on {}", lost.server),
        None => format!(
            "the server {} (no replication slot is configured)",
            lost.server
        ),
    };
    match lost.to {
        Some(to) => format!(
            "{LOST_WAL}: {slot_words} did not keep it, and the server removed WAL {from}–{to} on timeline {tli} (from the archive's end to the oldest WAL it still has): point-in-time recovery across {from}–{to} is impossible, and backups taken before it cannot restore past {from} (the server said: {server_said})\n\
             hint: run `lifeboat accept-gap` to record the gap in the archive and resume archiving at {to}, then take a new base backup at once (`lifeboat backup`); to keep this from happening again, raise max_slot_wal_keep_size on the server or keep the streamer running",
            from = lost.from,
            tli = lost.timeline,
        ),
        None => format!(
            "{LOST_WAL}: not yet, but {slot_words} is no longer usable (the server said: {server_said}); the server still has the WAL from the archive's end {} on timeline {}, and may remove it at any checkpoint\n\
             hint: run `lifeboat accept-gap` now: it makes the slot usable again (nothing is lost, so no gap is recorded)",
            lost.from, lost.timeline
        ),
    }
}

/// `lifeboat accept-gap`: what it found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accepted {
    /// The gap recorded, if WAL was lost.
    pub gap: Option<AcceptedGap>,
    /// Whether the slot was dropped and created again.
    pub slot_recreated: bool,
    pub slot: Option<String>,
}

/// Record the WAL the server lost as a gap in the archive and make the slot usable again,
/// so that the streamer resumes after the gap. Refuses when the archive is empty or the
/// server is not the archived cluster.
pub async fn accept(cfg: &Config) -> Result<Accepted> {
    let params = ConnParams::parse_with_process_env(&cfg.postgres.conninfo)
        .map_err(|e| anyhow!("postgres.conninfo: {e}"))?;
    let archive = Archive::open(cfg)?;
    let mut conn = Connection::connect(&params, true).await?;
    let ident = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    let target = conn.target.clone();
    let meta = archive.meta().await?.ok_or_else(|| {
        anyhow!("the archive is empty: there is no end to measure a gap from\nhint: start `lifeboat stream`; accept-gap is for an archive whose WAL the server removed")
    })?;
    if meta.system_identifier != ident.system_id.to_string() {
        return Err(anyhow!("the server at {target} is database system {}, but the archive holds system {}\nhint: point postgres.conninfo at the archived cluster", ident.system_id, meta.system_identifier));
    }
    let outbox = cfg.wal.spool_dir.join("outbox");
    let acknowledged = crate::ingest::outbox::acknowledged(&outbox);
    let gaps = archive.gaps().await?;
    // WAL still in the outbox (a provider was down) is archived as far as the end goes.
    let pending: Vec<String> = crate::ingest::outbox::leftovers(&outbox)?
        .into_iter()
        .map(|(_, key, _, _)| key)
        .collect();
    let end = archive
        .resume_point(seg, &pending, acknowledged)
        .await?
        .map(|(tli, lsn)| after_gaps(&gaps, tli, lsn))
        .ok_or_else(|| anyhow!("the archive holds no WAL yet: there is no end to measure a gap from\nhint: start `lifeboat stream`"))?;
    let (tli, from) = end;
    if tli != ident.timeline {
        return Err(anyhow!("the archive ends on timeline {tli} and the server is on timeline {}: accept-gap measures a gap on one timeline\nhint: start `lifeboat stream`, which follows the server's timeline history, and run accept-gap if it stops on lost WAL", ident.timeline));
    }
    conn.close().await;
    let slot = cfg.postgres.slot.clone();
    let start = from.segment_start(seg);
    // A slot that still serves the archive's end is left alone: nothing is lost.
    if let Some(s) = &slot {
        if server_has(&params, Some(s), tli, start).await? {
            return Ok(Accepted {
                gap: None,
                slot_recreated: false,
                slot,
            });
        }
    }
    // The slot first, reserving WAL from now on, so nothing after the gap goes too.
    let mut slot_recreated = false;
    if let Some(s) = &slot {
        let mut conn = Connection::connect(&params, true).await?;
        conn.drop_slot_if_exists(s).await?;
        conn.create_physical_slot(s, false).await?;
        conn.close().await;
        slot_recreated = true;
        tracing::warn!(slot = s, "replication slot created again");
    }
    let lost = measure(&params, &target, tli, seg, from, ident.xlogpos).await?;
    let gap = match lost.to {
        None => None,
        Some(to) => {
            let gap = AcceptedGap {
                format: 1,
                timeline: tli,
                from,
                to,
                accepted_at: Timestamp::from_system_time(std::time::SystemTime::now()),
                slot: slot.clone(),
                reason: format!(
                    "the server removed this WAL before it was archived ({})",
                    slot.as_deref()
                        .map(|s| format!("replication slot \"{s}\" did not keep it"))
                        .unwrap_or_else(|| "no replication slot is configured".into())
                ),
            };
            archive.record_gap(&gap).await?;
            // The spool's acknowledged position lies before the gap: move it past, so a
            // restart resumes after the gap (the archive's end before it stays as it is).
            crate::ingest::outbox::set_acknowledged(&outbox, tli, to).map_err(|e| {
                anyhow!(
                    "the gap {from}–{to} is recorded in the archive, but the acknowledged position in {} cannot be moved past it: {e}\nhint: the streamer resumes after the recorded gap anyway; fix the spool directory's permissions or free space",
                    outbox.display()
                )
            })?;
            Some(gap)
        }
    };
    Ok(Accepted {
        gap,
        slot_recreated,
        slot,
    })
}

/// Where archiving resumes given the accepted gaps: a position inside a gap moves to its
/// end.
pub fn after_gaps(gaps: &[AcceptedGap], tli: TimelineId, lsn: Lsn) -> (TimelineId, Lsn) {
    let mut at = lsn;
    // Gaps are sorted and may follow one another.
    for g in gaps {
        if g.timeline == tli && g.from <= at && at < g.to {
            at = g.to;
        }
    }
    (tli, at)
}
