//! A replication slot that stops keeping WAL: invalidated by the server
//! (`max_slot_wal_keep_size`) or dropped while the streamer is down. lifeboat stops with
//! the slot and the lost range named, `status` fails, and only `lifeboat accept-gap`
//! records the gap and lets archiving resume; `list`, `verify` and the restore planner
//! show it. Real servers on PostgreSQL 15 and the newest major.

use std::time::Duration;

use crate::failover::rows_by_source;
use crate::restore::{restore, restore_and_start, stream_and_backup};
use crate::support::*;

/// A server that removes WAL eagerly: small WAL, nothing kept beyond what slots need, and
/// slots given up past 32 MB.
fn eager_server(major: u32) -> PgCluster {
    PgCluster::start(
        major,
        ClusterOpts::default()
            .conf("max_wal_size = 64MB")
            .conf("min_wal_size = 32MB")
            .conf("wal_keep_size = 0")
            .conf("max_slot_wal_keep_size = 32MB"),
    )
}

/// ~100 MB of WAL and two checkpoints: what the slot does not hold is removed.
fn churn(pg: &PgCluster, from: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT g, 'churn' FROM generate_series({from}, {}) g",
        from + 1_200_000
    ));
    pg.switch_wal();
    pg.psql("CHECKPOINT");
    pg.switch_wal();
    pg.psql("CHECKPOINT");
}

fn invalidated_slot(major: u32) {
    let pg = eager_server(major);
    pg.psql("CREATE TABLE t (id int, src text)");
    pg.psql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g");
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = stream_and_backup(&pg, &lb);
    stop_streamer(streamer);
    let end = lb.archived_end(1);

    // The streamer is down; the server gives up on the slot and removes the WAL.
    churn(&pg, 1001);
    pg.wait_for(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lifeboat'",
        "lost",
        Duration::from_secs(60),
    );

    let out = lb.run(&["stream"], Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = first_error_line(&out);
    let prefix = format!(
        "error: WAL was lost before it was archived: replication slot \"lifeboat\" on 127.0.0.1:{} did not keep it, and the server removed WAL {}–",
        pg.port,
        fmt_lsn(end)
    );
    assert!(err.starts_with(&prefix), "{err}\nwanted: {prefix}");
    assert!(
        err.contains(" on timeline 1 (from the archive's end to the oldest WAL it still has): point-in-time recovery across ")
            && err.contains(&format!("backups taken before it cannot restore past {}", fmt_lsn(end))),
        "{err}"
    );
    assert!(
        err.contains("\nhint: run `lifeboat accept-gap` to record the gap in the archive and resume archiving at "),
        "{err}"
    );
    // status fails and says why.
    let st = lb.run(&["status"], Duration::from_secs(60));
    assert_eq!(st.status.code(), Some(2), "{}", stdout_of(&st));
    assert!(
        stdout_of(&st).contains("WAL was lost before it was archived"),
        "{}",
        stdout_of(&st)
    );

    // The operator accepts the gap: recorded, shown, and archiving resumes after it.
    let acc = lb.run_ok(&["accept-gap"], Duration::from_secs(120));
    assert!(
        acc.contains("replication slot \"lifeboat\" created again"),
        "{acc}"
    );
    let recorded = format!("recorded the WAL gap {}–", fmt_lsn(end));
    assert!(acc.contains(&recorded), "{acc}");
    let list = lb.list_json();
    let gaps = list["gaps"].as_array().expect("gaps in list --json");
    assert_eq!(gaps.len(), 1, "{list}");
    assert_eq!(gaps[0]["from"], fmt_lsn(end));
    let to = parse_lsn(gaps[0]["to"].as_str().unwrap());
    assert!(to > end, "{list}");
    assert!(lb
        .run_ok(&["list"], Duration::from_secs(60))
        .contains(&format!(
            "LOST   timeline 1: {} – {}",
            fmt_lsn(end),
            fmt_lsn(to)
        )));

    pg.psql("INSERT INTO t SELECT g, 'after' FROM generate_series(2000001, 2000100) g");
    let now = pg.switch_wal();
    let out = lb.run(&["stream", "--endpos", &now], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream after accept-gap");
    assert!(lb.archived_end(1) >= parse_lsn(&now));
    let ranges = lb.wal_ranges();
    assert!(
        ranges.iter().any(|r| r.1 == to),
        "archiving resumed at the gap's end: {ranges:?}"
    );
    // verify knows the gap: not a problem, but said.
    let v = lb.run(&["verify"], Duration::from_secs(120));
    let vout = expect_success(&v, "lifeboat verify");
    assert!(
        vout.contains(&format!(
            "accepted gap: WAL {}–{} on timeline 1 is lost",
            fmt_lsn(end),
            fmt_lsn(to)
        )),
        "{vout}"
    );

    // The old backup cannot restore past the gap, and the planner says why.
    let work = tempfile::tempdir().unwrap();
    let (dry, _) = restore(&lb, major, work.path(), &["--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", stderr_of(&dry));
    let e = first_error_line(&dry);
    assert!(
        e.starts_with(&format!(
            "error: WAL gap {}–{} on timeline 1: ",
            fmt_lsn(end),
            fmt_lsn(to)
        )) && e.contains("was lost: the server removed this WAL before it was archived"),
        "{e}"
    );
    // A new backup after the gap restores to the latest point.
    let streamer = lb.spawn_stream();
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup after the gap",
    );
    pg.psql("INSERT INTO t SELECT g, 'latest' FROM generate_series(3000001, 3000010) g");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let restored = restore_and_start(&lb, major, work.path(), &[]);
    assert_eq!(
        rows_by_source(&restored),
        "after|100\nbefore|1000\nchurn|1200001\nlatest|10"
    );
}

#[test]
fn an_invalidated_slot_stops_with_the_lost_range_until_the_gap_is_accepted() {
    for major in fifteen_and_newest_majors() {
        invalidated_slot(major);
    }
}

fn dropped_slot(major: u32) {
    let pg = eager_server(major);
    pg.psql("CREATE TABLE t (id int, src text)");
    let lb = Lb::for_cluster(&pg, "");
    let streamer = lb.start_streamer(&pg);
    stop_streamer(streamer);

    // Dropped while the server still has the WAL: created again, loudly, and no gap.
    pg.psql("SELECT pg_drop_replication_slot('lifeboat')");
    pg.psql("INSERT INTO t SELECT g, 'kept' FROM generate_series(1, 1000) g");
    let now = pg.switch_wal();
    let out = lb.run(&["stream", "--endpos", &now], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream with the slot dropped");
    assert!(
        stderr_of(&out)
            .contains("the replication slot did not exist on the server and was created again"),
        "{}",
        stderr_of(&out)
    );
    let end = lb.archived_end(1);
    assert!(end >= parse_lsn(&now));

    // Dropped, and the WAL removed since: the streamer stops and names the range.
    pg.psql("SELECT pg_drop_replication_slot('lifeboat')");
    churn(&pg, 1001);
    let out = lb.run(&["stream"], Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = first_error_line(&out);
    assert!(
        err.starts_with(&format!(
            "error: WAL was lost before it was archived: replication slot \"lifeboat\" on 127.0.0.1:{} did not keep it, and the server removed WAL {}–",
            pg.port,
            fmt_lsn(end)
        )),
        "{err}"
    );
    assert!(
        stderr_of(&out)
            .contains("the replication slot did not exist on the server and was created again"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_dropped_slot_is_recreated_loudly_and_lost_wal_stops_the_streamer() {
    for major in fifteen_and_newest_majors() {
        dropped_slot(major);
    }
}
