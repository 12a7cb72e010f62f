//! lifeboat's integration tests: one binary, one module per area, against real PostgreSQL
//! servers (all installed majors), real S3-compatible servers and the real `lifeboat`
//! binary. `support` holds what the areas share; `cmd` runs the bad-input cases pinned as
//! data in `tests/cmd/`, which need no server.
//!
//!   cargo test --test it                    # everything
//!   cargo test --test it stream::           # one area
//!   cargo test --test it -- --test-threads=2

mod support;

mod backup;
mod check;
mod cmd;
mod dump;
mod ergonomics;
mod failover;
mod fuzz_corpus;
mod hardening;
mod harness;
mod incremental;
mod init;
mod keys;
mod metrics;
mod outage;
mod prune;
mod restore;
mod restore_sync;
mod rto;
mod s3;
mod schedule;
mod slots;
mod sqlite;
mod stream;
mod systemd;
