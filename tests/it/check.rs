//! `lifeboat check` on the database host against a real cluster: the streamer's status
//! file and the archive, judged in one Nagios line; a stopped streamer is CRITICAL.

use std::time::Duration;

use crate::support::*;

#[test]
fn check_judges_the_streamer_and_the_archive() {
    let pg = PgCluster::start(15, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let streamer = lb.start_streamer(&pg);
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup",
    );
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    // Archiving and a fresh backup, but no drill yet: WARNING (exit 1), once the streamer's
    // status file says it is streaming (it is rewritten every few seconds; right after the
    // start it says "starting", which is CRITICAL).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (out, line) = loop {
        let out = lb.run(&["check", "--nagios"], Duration::from_secs(60));
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.code() == Some(1) || std::time::Instant::now() > deadline {
            break (out, line);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(out.status.code(), Some(1), "{line}{}", stderr_of(&out));
    assert!(
        line.starts_with("LIFEBOAT WARNING - no restore drill recorded: the backups are untested | lag=0B;;;0 spool=0B;"),
        "{line}"
    );
    for perf in ["wal_age=", "providers_up=1;;;0;1", "backup_age="] {
        assert!(line.contains(perf), "{perf}: {line}");
    }
    let json = json_of(&lb.run(&["--json", "check"], Duration::from_secs(60)));
    assert_eq!(json["state"], "WARNING", "{json}");
    assert_eq!(json["code"], 1, "{json}");
    // A drill whose check fails: CRITICAL (exit 2), named.
    let bad = lb.dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT count(*) = 0 FROM t").unwrap();
    let (code, rep, _) = crate::restore::drill(
        &lb,
        15,
        &[
            "--backup",
            "latest",
            "--target",
            "latest",
            "--check-sql",
            bad.to_str().unwrap(),
        ],
    );
    assert_ne!(code, Some(0));
    let failed_id = rep["id"].as_str().unwrap().to_string();
    let out = lb.run(&["check", "--nagios"], Duration::from_secs(60));
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(
        line.starts_with(&format!(
            "LIFEBOAT CRITICAL - the last drill {failed_id} FAILED"
        )),
        "{line}"
    );
    // A drill that passes: everything healthy, OK (exit 0).
    let (code, _, err) =
        crate::restore::drill(&lb, 15, &["--backup", "latest", "--target", "latest"]);
    assert_eq!(code, Some(0), "{err}");
    let out = lb.run(&["check", "--nagios"], Duration::from_secs(60));
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert!(
        line.starts_with("LIFEBOAT OK - archiving healthy | lag="),
        "{line}"
    );
    // The streamer gone: CRITICAL (exit 2), said first.
    stop_streamer(streamer);
    let out = lb.run(&["check"], Duration::from_secs(60));
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(
        line.starts_with("LIFEBOAT CRITICAL - the streamer is not running"),
        "{line}"
    );
}
