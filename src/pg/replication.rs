//! Replication commands on a walsender connection (`replication=true`): IDENTIFY_SYSTEM,
//! SHOW, TIMELINE_HISTORY, slot management, and the START_REPLICATION CopyBoth stream with
//! its four endings (end of timeline, client stop, server shutdown, error).

use bytes::Bytes;

use super::{Connection, PgError};
use crate::core::wal::{Lsn, TimelineId, WalSegSize};
use crate::pg::protocol::{self, quote_ident, Backend, ReplicationMessage};
use crate::pg::sqlstate::SqlState;

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: u64,
    pub timeline: TimelineId,
    /// Flush position (replay position on a standby).
    pub xlogpos: Lsn,
}

/// A physical slot as READ_REPLICATION_SLOT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// What START_REPLICATION gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// CopyBoth is open: read [`StreamEvent`]s.
    Streaming,
    /// We asked to start exactly at the end of a historic timeline: no COPY, just where the
    /// next timeline starts.
    TimelineEnded {
        next_tli: TimelineId,
        next_start: Lsn,
    },
}

/// One event of an open replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Wal {
        start: Lsn,
        data: Bytes,
        /// The server's end of WAL as it sent this message.
        server_end: Lsn,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
    /// The timeline we stream ended (it is historic now); the server is back at
    /// ReadyForQuery. `next` is `None` when the stream ended because we asked it to.
    Ended {
        next: Option<(TimelineId, Lsn)>,
    },
    /// The server shut down (`COPY 0` without CopyDone); the connection is closing.
    ServerShutdown,
}

fn parse_num<T: std::str::FromStr>(v: Option<&str>, what: &str) -> Result<T, PgError> {
    v.and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| PgError::Protocol(format!("server sent an unreadable {what}: {v:?}")))
}

impl Connection {
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, PgError> {
        let r = self.query_one_set("IDENTIFY_SYSTEM").await?;
        Ok(SystemIdentity {
            system_id: parse_num(r.get(0, "systemid"), "system identifier")?,
            timeline: parse_num(r.get(0, "timeline"), "timeline")?,
            xlogpos: parse_num(r.get(0, "xlogpos"), "WAL position")?,
        })
    }

    pub async fn show(&mut self, setting: &str) -> Result<String, PgError> {
        let r = self.query_one_set(&format!("SHOW {setting}")).await?;
        r.rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .ok_or_else(|| PgError::Protocol(format!("SHOW {setting} returned no value")))
    }

    pub async fn wal_segment_size(&mut self) -> Result<WalSegSize, PgError> {
        let v = self.show("wal_segment_size").await?;
        WalSegSize::from_show(&v).map_err(PgError::Setting)
    }

    /// The raw content of timeline `tli`'s history file.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<Bytes, PgError> {
        let r = self
            .query_one_set(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        r.get(0, "content")
            .map(|s| Bytes::from(s.to_string()))
            .ok_or_else(|| PgError::Protocol(format!("TIMELINE_HISTORY {tli} returned no content")))
    }

    /// `UPLOAD_MANIFEST` (17+): send a previous backup's `backup_manifest`, byte for byte,
    /// through CopyIn; a following `BASE_BACKUP ( …, INCREMENTAL )` on this connection is
    /// relative to it. A server error (e.g. a manifest of another system) is returned after
    /// the connection is back at ReadyForQuery.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), PgError> {
        self.send_query("UPLOAD_MANIFEST").await?;
        let mut err = None;
        loop {
            match self.recv().await? {
                Backend::CopyInResponse => {
                    for m in crate::pg::protocol::copy_data(manifest, 64 * 1024) {
                        self.send(&m).await?;
                    }
                    self.send(&crate::pg::protocol::copy_done()).await?;
                }
                Backend::Error(f) => err = Some(PgError::from_server(f)),
                Backend::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Create a physical slot that reserves WAL at once (from the last checkpoint's redo
    /// position). A `temporary` slot lives only as long as this connection, like the one
    /// `pg_basebackup -X stream` uses. `Ok(false)` when it already exists.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<bool, PgError> {
        match self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {}{} PHYSICAL RESERVE_WAL",
                quote_ident(name),
                if temporary { " TEMPORARY" } else { "" }
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(SqlState::DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `DROP_REPLICATION_SLOT`; a slot that does not exist is not an error.
    pub async fn drop_slot_if_exists(&mut self, name: &str) -> Result<(), PgError> {
        match self
            .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(SqlState::UNDEFINED_OBJECT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+). `Ok(None)` on 14, where it does not exist;
    /// `Ok(Some(info))` with no restart_lsn when the slot is missing.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, PgError> {
        if self.server_major() < 15 {
            return Ok(None);
        }
        let r = self
            .query_one_set(&format!("READ_REPLICATION_SLOT {}", quote_ident(name)))
            .await?;
        Ok(Some(SlotInfo {
            restart_lsn: r.get(0, "restart_lsn").and_then(|s| s.parse().ok()),
            restart_tli: r.get(0, "restart_tli").and_then(|s| s.parse().ok()),
        }))
    }

    /// Send START_REPLICATION and wait for CopyBoth (or the historic-timeline answer).
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<StartOutcome, PgError> {
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        self.send_query(&format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {}",
            tli.0
        ))
        .await?;
        let mut err = None;
        let mut next = None;
        loop {
            match self.recv().await? {
                Backend::CopyBothResponse => return Ok(StartOutcome::Streaming),
                Backend::DataRow(v) => next = Some(next_timeline_row(&v)?),
                Backend::Error(f) => err = Some(PgError::from_server(f)),
                Backend::ReadyForQuery(_) => {
                    if let Some(e) = err {
                        return Err(e);
                    }
                    let (next_tli, next_start) = next.ok_or_else(|| {
                        PgError::Protocol("START_REPLICATION ended without streaming".into())
                    })?;
                    return Ok(StartOutcome::TimelineEnded {
                        next_tli,
                        next_start,
                    });
                }
                _ => {}
            }
        }
    }

    /// Read the next event of an open CopyBoth stream.
    pub async fn next_event(&mut self) -> Result<StreamEvent, PgError> {
        loop {
            match self.recv().await? {
                Backend::CopyData(payload) => {
                    return Ok(match ReplicationMessage::parse(payload)? {
                        ReplicationMessage::XLogData {
                            start,
                            data,
                            wal_end,
                            ..
                        } => StreamEvent::Wal {
                            start,
                            data,
                            server_end: wal_end,
                        },
                        ReplicationMessage::Keepalive {
                            wal_end,
                            reply_requested,
                            ..
                        } => StreamEvent::Keepalive {
                            wal_end,
                            reply_requested,
                        },
                    })
                }
                Backend::CopyDone => {
                    // End of timeline (or the answer to our own CopyDone): answer it, then
                    // read the result set with the next timeline.
                    self.send(&protocol::copy_done()).await?;
                    let next = self.finish_stream().await?;
                    return Ok(StreamEvent::Ended { next });
                }
                Backend::CommandComplete(tag) if tag.starts_with("COPY") => {
                    return Ok(StreamEvent::ServerShutdown)
                }
                Backend::Error(f) => return Err(PgError::from_server(f)),
                Backend::Notice(_) | Backend::ParameterStatus { .. } => {}
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message in the replication stream: {other:?}"
                    )))
                }
            }
        }
    }

    /// Stop streaming from our side: CopyDone, then skip WAL until the server's CopyDone.
    pub async fn stop_streaming(&mut self) -> Result<(), PgError> {
        self.send(&protocol::copy_done()).await?;
        loop {
            match self.recv().await? {
                Backend::CopyData(_) => {}
                Backend::CopyDone => {
                    self.finish_stream().await?;
                    return Ok(());
                }
                Backend::CommandComplete(tag) if tag.starts_with("COPY") => return Ok(()),
                Backend::Error(f) => return Err(PgError::from_server(f)),
                _ => {}
            }
        }
    }

    /// After CopyDone both ways: an optional (next_tli, next_tli_startpos) row, command
    /// completions, ReadyForQuery.
    async fn finish_stream(&mut self) -> Result<Option<(TimelineId, Lsn)>, PgError> {
        let mut next = None;
        let mut err = None;
        loop {
            match self.recv().await? {
                Backend::DataRow(v) => next = Some(next_timeline_row(&v)?),
                Backend::Error(f) => err = Some(PgError::from_server(f)),
                Backend::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(next),
        }
    }

    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let msg = protocol::standby_status_update(
            write,
            flush,
            Lsn::INVALID,
            protocol::pg_now(),
            reply_requested,
        );
        self.send(&msg).await
    }
}

fn next_timeline_row(v: &[Option<Bytes>]) -> Result<(TimelineId, Lsn), PgError> {
    let text = |i: usize| {
        v.get(i)
            .and_then(|b| b.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    Ok((
        parse_num(text(0).as_deref(), "next timeline")?,
        parse_num(text(1).as_deref(), "next timeline start")?,
    ))
}
