//! A provider goes down while lifeboat streams under load: archiving goes on through the
//! fsync'd spool, the slot never passes what is stored or spooled, and the spool backfills
//! the provider when it returns. The outage is a real storage backend wrapped by lifeboat's
//! fault injector (`LIFEBOAT_FAULT_INJECT`), the server is real PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::*;

struct Setup {
    pg: PgCluster,
    lb: Lb,
    second: tempfile::TempDir,
    flag: std::path::PathBuf,
}

fn setup(extra: &str) -> Setup {
    let pg = PgCluster::start(15, ClusterOpts::default().conf("synchronous_commit = off"));
    let second = tempfile::tempdir().unwrap();
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n\n{extra}",
            second.path().display()
        ),
    );
    let flag = lb.dir.path().join("second-is-down");
    pg.psql("CREATE TABLE filler(id int, t text)");
    Setup {
        pg,
        lb,
        second,
        flag,
    }
}

/// `lifeboat stream` in the background, provider "second" down while the flag file exists.
fn spawn(s: &Setup) -> KillOnDrop {
    let fault = format!("second={}", s.flag.display());
    s.lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)])
}

/// Both providers hold the same objects, and each has one WAL range reaching `end`.
/// (A write cut off by kill -9 leaves a `.tmp.` file, which is no object: never listed,
/// never read.)
/// Parts of a segment whose `.seg` the provider holds are superseded (a part in flight at a
/// kill -9 is re-cut differently after the restart), so they are left out of the
/// comparison, as `verify --providers` leaves them out.
fn assert_mirrored_without_gap(s: &Setup, end: u64) {
    let objects = |root: &std::path::Path| -> Vec<String> {
        let all: Vec<String> = files(root)
            .into_iter()
            .filter(|f| !f.rsplit('/').next().unwrap_or("").starts_with(".tmp."))
            .collect();
        let superseded = |f: &String| {
            f.ends_with(".part")
                && f.get(..f.len().min(37))
                    .is_some_and(|seg| all.contains(&format!("{seg}.seg")))
        };
        all.iter().filter(|f| !superseded(f)).cloned().collect()
    };
    assert_eq!(objects(&s.lb.archive), objects(s.second.path()));
    s.lb.run_ok(&["verify", "--providers"], Duration::from_secs(60));
    let (ok, report) = s.lb.verify(false);
    assert!(ok, "{report}");
    for p in report["providers"].as_array().unwrap() {
        assert_eq!(p["wal"].as_array().unwrap().len(), 1, "{report}");
        assert!(parse_lsn(p["wal"][0]["end_lsn"].as_str().unwrap()) >= end);
    }
}

/// `lifeboat status`: exit code and stdout.
fn status(lb: &Lb) -> (i32, String) {
    let out = lb.run(&["status"], Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Wait until the spool's outbox is empty (everything backfilled), then stop the streamer
/// with SIGTERM; it must exit cleanly. Returns its log.
fn drain_and_stop(s: &Setup, mut stream: KillOnDrop) -> String {
    let outbox = s.lb.spool.join("outbox");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !files(&outbox).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the spool did not drain: {:?}",
            files(&outbox)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&mut stream);
    let st = wait_child(&mut stream, Duration::from_secs(30), "stream");
    assert!(st.success(), "{}", s.lb.stream_log());
    s.lb.stream_log()
}

fn write_wal(pg: &PgCluster, mib: u64) -> u64 {
    let target = parse_lsn(&pg.current_lsn()) + mib * 1024 * 1024;
    while parse_lsn(&pg.current_lsn()) < target {
        pg.psql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    }
    parse_lsn(&pg.current_lsn())
}

#[test]
fn provider_outage_under_load_spools_then_backfills() {
    let s = setup("");
    let stream = spawn(&s);
    let mut bench = s.pg.pgbench(600, 2);
    let before = write_wal(&s.pg, 4);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    // Provider "second" goes down; archiving goes on and is acknowledged from the spool.
    std::fs::write(&s.flag, b"down").unwrap();
    let during = write_wal(&s.pg, 40);
    wait_archived(&s.pg, during, Duration::from_secs(90), &s.lb);
    let outbox = s.lb.spool.join("outbox");
    let held = files(&outbox);
    assert!(
        !held.is_empty(),
        "the spool holds what the down provider lacks\n{}",
        s.lb.stream_log()
    );
    let second_during = files(s.second.path());
    assert!(
        files(&s.lb.archive).len() > second_during.len(),
        "the healthy provider went on while the other was down"
    );

    // It comes back: the spool drains into it, in order, and archiving continues.
    std::fs::remove_file(&s.flag).unwrap();
    let after = write_wal(&s.pg, 8);
    let _ = bench.kill();
    let _ = bench.wait();
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end.max(after), Duration::from_secs(90), &s.lb);
    let log = drain_and_stop(&s, stream);
    assert!(
        log.contains("provider is down: WAL is held in the fsync'd spool"),
        "{log}"
    );
    assert!(
        log.contains("provider is back: backfilling from the spool"),
        "{log}"
    );

    // Both providers complete, identical, without a gap.
    assert_mirrored_without_gap(&s, end);
}

#[test]
fn full_spool_stops_acknowledging_until_the_provider_returns() {
    let s = setup("[spool]\nmax_size = \"2MiB\"\n");
    let mut stream = spawn(&s);
    let before = write_wal(&s.pg, 2);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    std::fs::write(&s.flag, b"down").unwrap();
    let written = write_wal(&s.pg, 48);
    std::thread::sleep(Duration::from_secs(4));
    let slot = slot_restart_lsn(&s.pg, "lifeboat").unwrap();
    assert!(
        slot + 16 * 1024 * 1024 < written,
        "with the spool full the slot must stop short of the server: slot {} server {}",
        fmt_lsn(slot),
        fmt_lsn(written)
    );
    // The slot holds the WAL on the server: nothing unarchived was released.
    let ranges = s.lb.wal_ranges();
    assert!(slot <= ranges.last().unwrap().2);
    assert!(
        s.lb.stream_log()
            .contains("the spool is full while a provider is down"),
        "{}",
        s.lb.stream_log()
    );
    // `status` says so: failing (2), the spool full, the provider down.
    let (code, out) = status(&s.lb);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("FAILING   spool     full (") && l.ends_with("while a provider is down: WAL is no longer acknowledged, the replication slot holds it on the server"))
            && out.contains("slot holds it on the server\n                    hint: bring the provider back, or raise spool.max_size\n"),
        "{out}"
    );
    assert!(
        out.lines().any(
            |l| l.starts_with("DEGRADED  provider  \"second\": down since ")
                && l.contains("injected fault")
        ),
        "{out}"
    );
    assert!(out.ends_with("\nfailing\n"), "{out}");

    std::fs::remove_file(&s.flag).unwrap();
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end.max(written), Duration::from_secs(120), &s.lb);
    // Recovered: streaming, both providers up (no backup or drill yet: degraded, 1).
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out) = status(&s.lb);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("\nok        provider  \"second\": up\n"),
        "{out}"
    );
    assert!(
        out.starts_with("ok        streamer  streaming (pid "),
        "{out}"
    );
    assert!(!out.contains("FAILING"), "{out}");
    assert!(
        out.contains(
            "DEGRADED  backup    no restorable base backup in the archive\n                    hint: lifeboat backup\n"
        ),
        "{out}"
    );
    sigterm(&mut stream);
    wait_child(&mut stream, Duration::from_secs(30), "stream");
    let (code, out) = status(&s.lb);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("FAILING   streamer  not running: pid "),
        "{out}"
    );
    assert_eq!(files(&s.lb.archive), files(s.second.path()));
    let (ok, report) = s.lb.verify(false);
    assert!(ok, "{report}");
}

#[test]
fn verify_providers_finds_and_repairs_what_one_lacks() {
    let s = setup("");
    s.lb.run_ok(
        &["stream", "--endpos", &s.pg.current_lsn()],
        Duration::from_secs(60),
    );
    let end = write_wal(&s.pg, 40);
    s.lb.run_ok(
        &["stream", "--endpos", &fmt_lsn(end)],
        Duration::from_secs(120),
    );
    assert_eq!(files(&s.lb.archive), files(s.second.path()));
    let segs: Vec<String> = files(s.second.path())
        .into_iter()
        .filter(|k| k.ends_with(".seg"))
        .collect();
    assert!(segs.len() >= 2, "{segs:?}");
    // Each provider loses a different segment.
    std::fs::remove_file(s.second.path().join(&segs[0])).unwrap();
    std::fs::remove_file(s.lb.archive.join(&segs[1])).unwrap();

    let out = s.lb.run(
        &["--json", "verify", "--providers"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rep["missing"],
        serde_json::json!([[segs[0], ["second"]], [segs[1], ["local"]]])
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "error: the providers differ\nhint: lifeboat verify --providers --repair copies what is missing"
    ));

    let out = s.lb.run(
        &["--json", "verify", "--providers", "--repair"],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["repaired"].as_array().unwrap().len(), 2, "{rep}");
    assert_eq!(files(&s.lb.archive), files(s.second.path()));
    for k in &segs[..2] {
        assert!(
            std::fs::read(s.lb.archive.join(k)).unwrap()
                == std::fs::read(s.second.path().join(k)).unwrap()
        );
    }
    s.lb.run_ok(&["verify", "--providers"], Duration::from_secs(60));
    let (ok, report) = s.lb.verify(true);
    assert!(ok, "{report}");
}

/// Several writes are in flight per provider, so a crash can leave a provider with later
/// objects and without an earlier one. One write is held (a slow request) while later ones
/// land; the slot must stay behind the hole, and after kill -9 the next run resumes from
/// the acknowledged position and fills it.
#[test]
fn a_hole_left_by_a_crash_is_filled_on_restart() {
    hole_left_by_a_crash(false);
}

/// The spool (with `<spool>/acknowledged`) is lost between the kill -9 and the restart: the
/// newest object on the providers lies beyond the hole, so only the slot's own restart_lsn
/// says where the durable WAL ends. The slot must never pass the hole, and the next run
/// fills it.
#[test]
fn a_lost_spool_never_lets_the_slot_pass_a_hole() {
    hole_left_by_a_crash(true);
}

fn hole_left_by_a_crash(lose_spool: bool) {
    let s = setup("");
    let mut stream = spawn(&s);
    let before = write_wal(&s.pg, 2);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    // Hold every write of the segment being filled now, on provider "second" only.
    let held =
        s.pg.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
            .trim()
            .to_string();
    let held_start = (u64::from_str_radix(&held[8..16], 16).unwrap() << 32)
        | (u64::from_str_radix(&held[16..24], 16).unwrap() * 16 * 1024 * 1024);
    std::fs::write(&s.flag, format!("stall {held}")).unwrap();
    write_wal(&s.pg, 56);
    s.pg.switch_wal();
    let later = |name: &str| {
        name.starts_with("wal/") && name.ends_with(".seg") && {
            let seg = name.rsplit('/').next().unwrap().trim_end_matches(".seg");
            seg > held.as_str()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(s.second.path()).iter().filter(|f| later(f)).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "later segments never reached the second provider\n{}",
            s.lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = files(s.second.path());
    assert!(
        !second.iter().any(|f| f.ends_with(&format!("{held}.seg"))),
        "the held segment {held} must not be on the second provider yet: {second:?}"
    );
    let restart = slot_restart_lsn(&s.pg, "lifeboat").expect("the slot exists");
    // Parts of the held segment written before the stall may be there; its end is not.
    let held_end = held_start + 16 * 1024 * 1024;
    assert!(
        restart < held_end,
        "the slot's restart_lsn {} passed the hole before {}",
        fmt_lsn(restart),
        fmt_lsn(held_end)
    );
    kill9(&mut stream);

    // The hole is there after the crash...
    let (_, report) = s.lb.verify(false);
    let second_report = report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "second")
        .unwrap()
        .clone();
    assert!(
        second_report["wal"].as_array().unwrap().len() >= 2,
        "expected a gap on the second provider: {report}"
    );

    // ...and the next run fills it.
    std::fs::remove_file(&s.flag).unwrap();
    if lose_spool {
        std::fs::remove_dir_all(&s.lb.spool).unwrap();
    }
    let end = parse_lsn(&s.pg.switch_wal());
    let mut c = s.lb.cmd();
    c.args(["stream", "--endpos", &fmt_lsn(end)]);
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_mirrored_without_gap(&s, end);
    assert!(
        stderr.contains(if lose_spool {
            "no acknowledged position in the spool: resuming from the slot's restart_lsn"
        } else {
            "resuming from the last acknowledged position"
        }),
        "{stderr}"
    );
}

#[test]
fn one_key_that_keeps_failing_keeps_the_provider_down_without_flapping() {
    let s = setup("");
    let stream = spawn(&s);
    let before = write_wal(&s.pg, 2);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    // Provider "second" refuses every object of one segment and takes every other write.
    let held =
        s.pg.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
            .trim()
            .to_string();
    std::fs::write(&s.flag, format!("fail {held}")).unwrap();
    // WAL keeps coming while that key is retried (0.5 s, 1 s, 2 s, ...), so other writes to
    // "second" succeed between the retries: the provider must stay down all along.
    let mut samples = Vec::new();
    for _ in 0..6 {
        write_wal(&s.pg, 8);
        std::thread::sleep(Duration::from_millis(700));
        samples.push(status(&s.lb));
    }
    for (code, text) in &samples[1..] {
        assert_eq!(*code, 1, "{text}");
        assert!(
            text.contains("\"second\": down since"),
            "{text}\n{}",
            s.lb.stream_log()
        );
    }
    // Acknowledged from the spool meanwhile: the slot passes the refused segment.
    let during = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, during, Duration::from_secs(90), &s.lb);
    // (Parts of it stored before the flag may be there; the complete segment is not.)
    assert!(
        !files(s.second.path())
            .iter()
            .any(|f| f.ends_with(&format!("{held}.seg"))),
        "the refused segment {held} reached the second provider"
    );

    // The key is taken again: the provider is back once, and catches up.
    std::fs::remove_file(&s.flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // (status stays degraded overall: this archive has no backup yet.)
        let (_, text) = status(&s.lb);
        if text.contains("\"second\": up") {
            break;
        }
        assert!(Instant::now() < deadline, "still down: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end, Duration::from_secs(90), &s.lb);
    let log = drain_and_stop(&s, stream);
    assert_eq!(
        log.matches("provider is down: WAL is held in the fsync'd spool")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("provider is back: backfilling from the spool")
            .count(),
        1,
        "{log}"
    );
    assert_mirrored_without_gap(&s, end);
}

/// A restart (a deploy, an OOM kill) while one provider is down must not stop archiving to
/// the healthy one: the streamer resumes from its acknowledged position, spools for the
/// down provider, and backfills it when it returns.
#[test]
fn a_restart_while_a_provider_is_down_keeps_archiving() {
    let s = setup("");
    let mut stream = spawn(&s);
    let before = write_wal(&s.pg, 2);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);
    kill9(&mut stream.0);

    std::fs::write(&s.flag, b"down").unwrap();
    let mut stream = spawn(&s);
    let during = write_wal(&s.pg, 8);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        stream.0.try_wait().unwrap().is_none(),
        "the streamer must keep running while a provider is down:\n{}",
        s.lb.stream_log()
    );
    wait_archived(&s.pg, during, Duration::from_secs(90), &s.lb);
    assert!(
        !files(&s.lb.spool.join("outbox")).is_empty(),
        "the spool holds what the down provider lacks\n{}",
        s.lb.stream_log()
    );

    std::fs::remove_file(&s.flag).unwrap();
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end, Duration::from_secs(90), &s.lb);
    drain_and_stop(&s, stream);
    assert_mirrored_without_gap(&s, end);
}
