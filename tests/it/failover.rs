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

/// 3000 rows of `lost` in three segments: WAL a standby that stopped does not have.
fn write_lost(primary: &PgCluster) {
    for i in 0..3 {
        primary.psql(&format!(
            "INSERT INTO t SELECT g, 'lost' FROM generate_series({}, {}) g",
            1001 + i * 1000,
            2000 + i * 1000
        ));
        primary.switch_wal();
    }
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
    write_lost(&primary);
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

/// A PostgreSQL 15 primary with table `t` (1000 rows of `src`), archived to two `file://`
/// providers; the second fails or stalls as its fault flag says (`LIFEBOAT_FAULT_INJECT`,
/// the last element, for the streamer's environment).
fn two_providers(src: &str) -> (PgCluster, Lb, tempfile::TempDir, std::path::PathBuf, String) {
    let primary = PgCluster::start(15, ClusterOpts::default());
    primary.psql("CREATE TABLE t (id int, src text)");
    primary.psql(&format!(
        "INSERT INTO t SELECT g, '{src}' FROM generate_series(1, 1000) g"
    ));
    let second = tempfile::tempdir().unwrap();
    let lb = Lb::for_cluster(
        &primary,
        &format!(
            "{SMALL_PARTS}\n[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n",
            second.path().display()
        ),
    );
    let flag = lb.dir.path().join("second-fault");
    let fault = format!("second={}", flag.display());
    (primary, lb, second, flag, fault)
}

/// Wait (60 s at most) until the first provider holds timeline `tli`'s WAL up to `lsn`.
fn wait_first_provider(lb: &Lb, tli: u64, lsn: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lb.archived_end(tli) < lsn {
        assert!(
            std::time::Instant::now() < deadline,
            "the first provider never reached {} on timeline {tli}: {:?}\n{}",
            fmt_lsn(lsn),
            lb.wal_ranges(),
            lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A provider that was slow when the primary failed: lifeboat had stored the old primary's
/// WAL past the fork on the other provider only, and was killed before the slow one caught
/// up. No server streams that WAL again (the promoted standby's history left timeline 1
/// before it), so the next run copies it from the provider that holds it, and both keep
/// the abandoned branch. (The chaos campaign's seed 1269 found this.)
#[test]
fn wal_past_the_fork_reaches_the_provider_that_was_slow_at_the_failover() {
    let (primary, lb, second, flag, fault) = two_providers("shared");
    let mut streamer = lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)]);
    let standby = primary.create_standby();
    standby.wait_for("SELECT count(*) FROM t", "1000", Duration::from_secs(60));
    wait_caught_up(&primary, Duration::from_secs(120), &lb);
    standby.stop();
    // From here on every write of timeline 1's WAL to "second" hangs (a slow provider).
    std::fs::write(&flag, "stall wal/00000001/").unwrap();
    write_lost(&primary);
    wait_first_provider(&lb, 1, parse_lsn(&primary.current_lsn()));
    kill9(&mut streamer.0);
    drop(primary);
    std::fs::remove_file(&flag).unwrap();
    let segments = |root: &std::path::Path| -> Vec<String> {
        files(root)
            .into_iter()
            .filter(|f| f.starts_with("wal/00000001/") && f.ends_with(".seg"))
            .collect()
    };
    let lacking: Vec<String> = segments(&lb.archive)
        .into_iter()
        .filter(|f| !segments(second.path()).contains(f))
        .collect();
    assert!(
        !lacking.is_empty(),
        "the test needs WAL on the first provider only: {:?}",
        files(second.path())
    );

    standby.start_again();
    standby.promote();
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(5001, 5100) g");
    let end = standby.current_lsn();
    lb.retarget(&standby);
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream --endpos on the promoted standby");
    let log = stderr_of(&out);
    for f in &lacking {
        assert!(
            files(second.path()).contains(f),
            "{f} of the abandoned timeline is still missing on the second provider\n{log}"
        );
    }
    assert!(log.contains("copied to the others"), "{log}");
    lb.run_ok(&["verify", "--providers"], Duration::from_secs(60));
    let (ok, report) = lb.verify(false);
    assert!(ok, "{report}");
    assert!(
        lb.archived_end(2) >= parse_lsn(&end),
        "timeline 2 archived to {end}: {:?}",
        lb.wal_ranges()
    );
}

/// The new timeline's history reached one provider only: the other held every write of it
/// (a slow provider) when lifeboat was killed. The next run sends it again, so the second
/// provider is not left with timeline 2's WAL and no history file (which no restore could
/// follow). (The chaos campaign's seed 1269 found this too.)
#[test]
fn a_history_one_provider_missed_at_a_kill_is_sent_again() {
    let (primary, lb, second, flag, fault) = two_providers("old");
    let streamer = lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)]);
    let standby = primary.create_standby();
    wait_caught_up(&primary, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    primary.stop();
    standby.promote();
    lb.retarget(&standby);

    // Every write of a history file to "second" hangs; the rest goes on.
    std::fs::write(&flag, "stall history/").unwrap();
    let mut streamer = lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)]);
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1001, 2000) g");
    wait_first_provider(&lb, 2, parse_lsn(&standby.switch_wal()));
    kill9(&mut streamer.0);
    std::fs::remove_file(&flag).unwrap();
    let history = |root: &std::path::Path| -> Vec<String> {
        files(root)
            .into_iter()
            .filter(|f| f.starts_with("history/00000002.history."))
            .collect()
    };
    assert_eq!(history(&lb.archive).len(), 1, "{:?}", files(&lb.archive));
    assert!(
        history(second.path()).is_empty(),
        "the test needs the history on the first provider only"
    );

    let end = standby.switch_wal();
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(120));
    expect_success(&out, "lifeboat stream --endpos after the kill");
    assert_eq!(
        history(second.path()),
        history(&lb.archive),
        "{}",
        stderr_of(&out)
    );
    lb.run_ok(&["verify", "--providers"], Duration::from_secs(60));
    let (ok, report) = lb.verify(false);
    assert!(ok, "{report}");
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
