//! lifeboat: keeps PostgreSQL recoverable after a real disaster. WAL is streamed over the
//! replication protocol, sealed (zstd, age, CRC32) and mirrored to every configured provider;
//! the flush position reported to PostgreSQL never passes WAL that is not durably stored.
//!
//! # Layers
//!
//! Lowest first. **A layer imports only from layers below it; a command never imports
//! another command.** `scripts/check-layers.sh` fails CI on a `use` that breaks this;
//! docs/ARCHITECTURE.md has the map.
//!
//! | layer | owns |
//! |---|---|
//! | [`core`] | PostgreSQL quantities, the repository layout and its records, the planners; pure |
//! | [`pg`], [`storage`], [`pipeline`] | the wire protocol; object stores; seal/open (each imports only `core`) |
//! | [`config`] | the TOML configuration (imports `storage` for its `[[storage]]` entries) |
//! | [`archive`] | the one reader of the repository across providers |
//! | [`ingest`], [`restore`] | the WAL engine (stream, backup); the restore engine (restore, wal-fetch, drill) |
//! | [`sqlite`] | the SQLite sibling mode: page-image snapshots, deltas, restore, drills |
//! | [`cmd`] | one file per command: arguments, the call, text and JSON output |

pub mod core;

pub mod pg;
pub mod pipeline;
pub mod storage;

pub mod config;

pub mod archive;

pub mod ingest;
pub mod restore;

pub mod sqlite;

pub mod cmd;
