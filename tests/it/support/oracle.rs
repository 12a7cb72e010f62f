//! PostgreSQL's own tools as judges of what lifeboat wrote: `pg_receivewal` consumes the
//! same server into its own directory, `pg_verifybackup` checks a rebuilt data directory
//! against its manifest.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pg::{PgCluster, REPL_PASSWORD};
use super::process::{clean_command, run_ok, run_timeout};
use super::wal::fmt_lsn;

/// Start `pg_receivewal` (the oracle) into `dir` with its own slot, until `endpos`.
pub fn spawn_pg_receivewal(pg: &PgCluster, dir: &Path, slot: &str, endpos: Option<u64>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let port = pg.port.to_string();
    let receivewal = || {
        let mut c = Command::new(pg.bin("pg_receivewal"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "lifeboat",
            "--slot",
            slot,
        ])
        .env("PGPASSWORD", REPL_PASSWORD)
        .env_remove("PGHOST");
        c
    };
    let mut create = receivewal();
    create.args(["--create-slot", "--if-not-exists"]);
    run_ok(&mut create, Duration::from_secs(30));
    let mut c = receivewal();
    c.arg("-D")
        .arg(dir)
        .args(["-n", "--synchronous"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(e) = endpos {
        c.arg("--endpos").arg(fmt_lsn(e));
    }
    c.spawn().expect("spawn pg_receivewal")
}

/// `pg_verifybackup -n DATADIR` with `pg`'s binaries, which must pass.
pub fn verifybackup(pg: &PgCluster, datadir: &Path) {
    let mut c = clean_command(pg.bin("pg_verifybackup"));
    c.arg("-n").arg(datadir);
    let out = run_timeout(&mut c, Duration::from_secs(300), None).unwrap();
    assert!(
        out.status.success(),
        "PostgreSQL {}: pg_verifybackup failed ({}):\n{}{}",
        pg.major,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
