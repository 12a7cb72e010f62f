//! lifeboat: keeps PostgreSQL recoverable after a real disaster. WAL is streamed over the
//! replication protocol, sealed (zstd, age, CRC32) and mirrored to every configured provider;
//! the flush position reported to PostgreSQL never passes WAL that is not durably stored.

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod config;
pub mod drill;
pub mod fault;
pub mod ledger;
pub mod list;
pub mod outbox;
pub mod pg;
pub mod pipeline;
pub mod plan;
pub mod protocol;
pub mod restore;
pub mod s3;
pub mod status;
pub mod storage;
pub mod stream;
pub mod verify;
pub mod wal;
pub mod walfetch;
