//! Pure types and planners: PostgreSQL quantities (`wal`), the repository layout and its
//! records (`catalog`), the restore planner (`plan`), the retention planner (`retention`),
//! the cost plan (`cost`), incremental backups' tar index (`incremental`) and key custody's canary and start rule (`custody`). Nothing here
//! does I/O, reads the clock or the environment, or draws random numbers: those are
//! parameters.

pub mod catalog;
pub mod check;
pub mod cost;
pub mod custody;
pub mod fmt;
pub mod incremental;
pub mod ledger;
pub mod plan;
pub mod retention;
pub mod rto;
pub mod schedule;
pub mod sqlite;
pub mod wal;
