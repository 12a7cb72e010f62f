//! The WAL engine shared by `stream` and `backup`: the replication loop, the spool and
//! outbox, acknowledgement, and the status file the streamer keeps fresh; and the writers
//! that put byte streams into the archive in sealed parts (`parts`), used by `backup` and
//! by `dump` (pg_dump through the same pipeline); `custody`, the search for identities
//! that must not be on the database host.

pub mod backup;
pub mod custody;
pub mod dump;
pub mod gap;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod parts;
pub mod put;
pub mod schedule;
pub mod status;
pub mod stream;
