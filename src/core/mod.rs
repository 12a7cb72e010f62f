//! Pure types and planners: PostgreSQL quantities (`wal`), the repository layout and its
//! records (`catalog`), and the restore planner (`plan`). Nothing here does I/O, reads the
//! clock or the environment, or draws random numbers: those are parameters.

pub mod catalog;
pub mod fmt;
pub mod ledger;
pub mod plan;
pub mod retention;
pub mod wal;
