//! What every area of the integration tests shares: real PostgreSQL clusters in temporary
//! directories, the real `lifeboat` binary in a workspace of its own, PostgreSQL's tools as
//! oracles, and S3-compatible servers.
//!
//! ```ignore
//! use crate::support::*;
//!
//! #[test]
//! fn streams() {
//!     for major in require_majors() {
//!         let pg = PgCluster::start(major, ClusterOpts::default());
//!         let lb = Lb::for_cluster(&pg, "");
//!         pg.psql("CREATE TABLE t(x int)");
//!         let end = pg.switch_wal();
//!         lb.run_ok(&["stream", "--endpos", &end], Duration::from_secs(60));
//!     }
//! }
//! ```
//!
//! - `host`: the binary cache, the installed majors, the OS user the servers run as;
//! - `ports`: free TCP ports;
//! - `process`: commands with timeouts, signals, children killed on drop;
//! - `tls`: a throwaway CA and server certificate;
//! - `pg`: `PgCluster`, its settings, roles and pg_hba.conf;
//! - `wal`: LSNs and segment names;
//! - `lb`: the lifeboat workspace (`Lb`) and reading what the binary printed;
//! - `oracle`: pg_receivewal and pg_verifybackup;
//! - `s3`: moto and s3s-fs servers (not in the prelude: only the s3 area uses them).

mod host;
mod lb;
mod oracle;
mod pg;
mod ports;
mod process;
pub mod s3;
mod tls;
mod wal;

pub use host::*;
pub use lb::*;
pub use oracle::*;
pub use pg::*;
pub use ports::*;
pub use process::*;
pub use wal::*;
