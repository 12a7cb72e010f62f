//! The archive across failovers: a promoted standby that lagged behind the archive, one
//! that was up to date, and a cluster restored to a point in time streamed back into the
//! archive it came from. Real servers on PostgreSQL 15 and the newest major; the oracle
//! is PostgreSQL replaying the archive to the new timeline's rows.

use std::time::Duration;

use crate::restore::{restore_and_start, stream_and_backup};
use crate::support::*;

/// Rows of the tests' table `t` counted by their `src` column.
pub(crate) fn rows_by_source(pg: &PgCluster) -> String {
    pg.psql("SELECT src, count(*) FROM t GROUP BY src ORDER BY src")
}

fn failover_to_a_lagging_standby(major: u32) {
    let primary = PgCluster::start(major, ClusterOpts::default());
    primary.psql("CREATE TABLE t (id int, src text)");
    primary.psql("INSERT INTO t SELECT g, 'shared' FROM generate_series(1, 1000) g");
    let lb = Lb::for_cluster(&primary, SMALL_PARTS);
    let streamer = stream_and_backup(&primary, &lb);
    let standby = primary.create_standby();
    standby.wait_for("SELECT count(*) FROM t", "1000", Duration::from_secs(60));
    // The standby stops receiving: from here on it lags behind the archive.
    standby.stop();
    for i in 0..3 {
        primary.psql(&format!(
            "INSERT INTO t SELECT g, 'lost' FROM generate_series({}, {}) g",
            1001 + i * 1000,
            2000 + i * 1000
        ));
        primary.switch_wal();
    }
    wait_caught_up(&primary, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let old_end = lb.archived_end(1);
    drop(primary);

    // The standby is promoted (its primary is gone) and takes writes.
    standby.start_again();
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(5001, 5100) g");
    let end = standby.current_lsn();
    assert!(
        parse_lsn(&end) < old_end,
        "the test needs the new primary's position ({end}) before the archive's end ({})",
        fmt_lsn(old_end)
    );

    lb.retarget(&standby);
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream --endpos on the promoted standby");
    let log = stderr_of(&out);
    assert!(
        log.contains("the server's history left timeline 1 at ")
            && log.contains("archiving goes on on timeline 2 from"),
        "{log}"
    );
    assert!(
        !lb.archive_files("history/00000002.history.00000001-")
            .is_empty(),
        "history file archived: {:?}",
        lb.archive_files("history/")
    );
    assert!(
        lb.archived_end(2) >= parse_lsn(&end),
        "timeline 2 archived to {end}: {:?}",
        lb.wal_ranges()
    );
    // The slot on the new primary holds what is not archived, never more than archived.
    let slot = slot_restart_lsn(&standby, "lifeboat").expect("slot on the new primary");
    assert!(slot <= lb.archived_end(2), "slot at {}", fmt_lsn(slot));
    let (ok, report) = lb.verify(false);
    assert!(ok, "{report}");

    // The latest point follows the new timeline; timeline 1 still reaches its own end.
    let work = tempfile::tempdir().unwrap();
    let latest = restore_and_start(&lb, major, work.path(), &[]);
    assert_eq!(rows_by_source(&latest), "new|100\nshared|1000");
    drop(latest);
    let tl1 = restore_and_start(&lb, major, work.path(), &["--target-timeline", "1"]);
    assert_eq!(rows_by_source(&tl1), "lost|3000\nshared|1000");
}

#[test]
fn failover_to_a_lagging_standby_continues_from_the_fork() {
    for major in fifteen_and_newest_majors() {
        failover_to_a_lagging_standby(major);
    }
}

fn failover_to_an_up_to_date_standby(major: u32) {
    let primary = PgCluster::start(major, ClusterOpts::default());
    primary.psql("CREATE TABLE t (id int, src text)");
    primary.psql("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 1000) g");
    let lb = Lb::for_cluster(&primary, SMALL_PARTS);
    let streamer = stream_and_backup(&primary, &lb);
    let standby = primary.create_standby();
    primary.psql("INSERT INTO t SELECT g, 'old' FROM generate_series(1001, 2000) g");
    wait_caught_up(&primary, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    // A clean switchover: the primary stops, the standby has everything, then is promoted.
    primary.stop();
    standby.promote();
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(2001, 2100) g");
    let end = standby.switch_wal();

    lb.retarget(&standby);
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream --endpos on the promoted standby");
    assert!(
        !stderr_of(&out).contains("the server's history left timeline"),
        "{}",
        stderr_of(&out)
    );
    assert!(!lb
        .archive_files("history/00000002.history.00000001-")
        .is_empty());
    let (ok, report) = lb.verify(false);
    assert!(ok, "{report}");
    let work = tempfile::tempdir().unwrap();
    let latest = restore_and_start(&lb, major, work.path(), &[]);
    assert_eq!(rows_by_source(&latest), "new|100\nold|2000");
}

#[test]
fn failover_to_an_up_to_date_standby_follows_the_switch() {
    for major in fifteen_and_newest_majors() {
        failover_to_an_up_to_date_standby(major);
    }
}

/// The seed's disaster handled the other way: the cluster is restored to before the
/// mistake, promoted (timeline 2), takes writes, and is streamed into the same archive;
/// a restore to a time after the promotion returns the new timeline's rows, not the
/// mistaken ones of timeline 1.
fn point_in_time_restore_streamed_back(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    pg.psql("CREATE TABLE t (id int, src text)");
    pg.psql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g");
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = stream_and_backup(&pg, &lb);
    std::thread::sleep(Duration::from_millis(1500));
    let t = pg.psql("SELECT now()");
    std::thread::sleep(Duration::from_millis(1500));
    pg.psql("INSERT INTO t SELECT g, 'mistake' FROM generate_series(1001, 3000) g");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT g, 'mistake' FROM generate_series(3001, 4000) g");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    drop(pg);

    let work = tempfile::tempdir().unwrap();
    let back = restore_and_start(&lb, major, work.path(), &["--target-time", &t]);
    assert_eq!(rows_by_source(&back), "before|1000");
    let tli = back.timeline();
    assert_eq!(tli, 2);
    back.psql("INSERT INTO t SELECT g, 'after' FROM generate_series(1001, 1100) g");
    std::thread::sleep(Duration::from_millis(1500));
    let t2 = back.psql("SELECT now()");
    std::thread::sleep(Duration::from_millis(1500));
    back.psql("INSERT INTO t SELECT g, 'later' FROM generate_series(1101, 1200) g");
    let end = back.switch_wal();

    lb.retarget(&back);
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream --endpos on the restored cluster");
    assert!(
        lb.archived_end(2) >= parse_lsn(&end),
        "{:?}\n{}",
        lb.wal_ranges(),
        stderr_of(&out)
    );
    drop(back);
    let again = restore_and_start(&lb, major, work.path(), &["--target-time", &t2]);
    assert_eq!(rows_by_source(&again), "after|100\nbefore|1000");
}

#[test]
fn a_point_in_time_restore_streamed_back_into_its_archive() {
    for major in fifteen_and_newest_majors() {
        point_in_time_restore_streamed_back(major);
    }
}

/// A first run against a server already on timeline 2 (a promoted standby, a restored
/// cluster): the history file is archived first, and the run does not wait for an
/// acknowledgement of WAL before its start (it used to hang there, the slot holding WAL).
#[test]
fn a_fresh_archive_of_a_server_on_timeline_2() {
    let primary = PgCluster::start(15, ClusterOpts::default());
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let standby = primary.create_standby();
    standby.wait_for("SELECT count(*) FROM t", "1000", Duration::from_secs(60));
    primary.stop();
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    standby.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let end = standby.switch_wal();
    let lb = Lb::for_cluster(&standby, "");
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(60));
    expect_success(
        &out,
        "lifeboat stream --endpos on a fresh archive at timeline 2",
    );
    assert!(!lb
        .archive_files("history/00000002.history.00000001-")
        .is_empty());
    assert!(
        lb.archived_end(2) >= parse_lsn(&end),
        "{:?}",
        lb.wal_ranges()
    );
}
