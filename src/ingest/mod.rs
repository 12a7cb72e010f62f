//! The WAL engine shared by `stream` and `backup`: the replication loop, the spool and
//! outbox, acknowledgement, and the status file the streamer keeps fresh.

pub mod backup;
pub mod gap;
pub mod health;
pub mod outbox;
pub mod status;
pub mod stream;
