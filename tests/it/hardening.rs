//! Faults that used to hang the streamer or fail it for good: a seal that fails (a spool
//! file removed under it), a stop while a provider stalls, a provider that refuses to
//! overwrite an object it already holds, a server shutdown while acknowledgements lag.
//! Each runs the real binary against a real PostgreSQL, with a real fault: files removed,
//! or lifeboat's fault injector (`LIFEBOAT_FAULT_INJECT`) around a real `file://` store.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::support::*;

/// A streamer's workspace with a second `file://` provider whose faults the flag file sets.
struct Setup {
    pg: PgCluster,
    lb: Lb,
    /// The second provider's directory (removed on drop).
    second: tempfile::TempDir,
    flag: std::path::PathBuf,
}

fn setup() -> Setup {
    let pg = PgCluster::start(15, ClusterOpts::default().conf("synchronous_commit = off"));
    let second = tempfile::tempdir().unwrap();
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n",
            second.path().display()
        ),
    );
    let flag = lb.dir.path().join("second-fault");
    pg.psql("CREATE TABLE filler(id int, t text)");
    Setup {
        pg,
        lb,
        second,
        flag,
    }
}

fn spawn(s: &Setup) -> KillOnDrop {
    let fault = format!("second={}", s.flag.display());
    s.lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)])
}

fn write_wal(pg: &PgCluster, kib: u64) -> u64 {
    let target = parse_lsn(&pg.current_lsn()) + kib * 1024;
    while parse_lsn(&pg.current_lsn()) < target {
        pg.psql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    }
    parse_lsn(&pg.current_lsn())
}

/// Wait up to `timeout` for the child to exit on its own.
fn exits_within(child: &mut KillOnDrop, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The `error:` line of a log and the `hint:` line after it.
fn error_and_hint(log: &str) -> Option<(String, String)> {
    let mut lines = log.lines().skip_while(|l| !l.starts_with("error: "));
    let error = lines.next()?.to_string();
    let hint = lines
        .next()
        .filter(|l| l.starts_with("hint: "))?
        .to_string();
    Some((error, hint))
}

fn status_code(lb: &Lb) -> (i32, String) {
    let out = lb.run(&["status"], Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Both providers hold one WAL range reaching `end`, the same `.seg` objects, and verify
/// accepts the archive.
fn assert_no_gap(s: &Setup, end: u64) {
    let segs = |root: &Path| -> Vec<String> {
        files(root)
            .into_iter()
            .filter(|f| f.ends_with(".seg"))
            .collect()
    };
    assert_eq!(segs(&s.lb.archive), segs(s.second.path()));
    let (ok, report) = s.lb.verify(false);
    assert!(ok, "{report}");
    for p in report["providers"].as_array().unwrap() {
        assert_eq!(p["wal"].as_array().unwrap().len(), 1, "{report}");
        assert!(
            parse_lsn(p["wal"][0]["end_lsn"].as_str().unwrap()) >= end,
            "{report}"
        );
    }
}

/// The end of the WAL every provider holds without a gap from the start.
fn stored_everywhere(s: &Setup) -> u64 {
    let (_, report) = s.lb.verify(false);
    report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["wal"][0]["end_lsn"].as_str().map_or(0, parse_lsn))
        .min()
        .unwrap_or(0)
}

/// `lifeboat stream --endpos END` (no faults) archives everything up to `end`.
fn catch_up(s: &Setup, end: u64) {
    let out = s.lb.run(
        &["stream", "--endpos", &fmt_lsn(end)],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
}

fn partials(spool: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(spool)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "partial"))
                .collect()
        })
        .unwrap_or_default()
}

/// A spool file removed under the streamer makes its seal fail. The streamer used to wait
/// forever for an acknowledgement that could not come, ignore SIGTERM, and go on reporting
/// "streaming" to `status`. It must exit non-zero at once with an `error:` and a `hint:`
/// line, having acknowledged nothing past what is stored; a restart archives the rest.
#[test]
fn a_failed_seal_ends_the_streamer_instead_of_hanging() {
    let s = setup();
    let mut stream = spawn(&s);
    let before = write_wal(&s.pg, 512);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    let removed = partials(&s.lb.spool);
    assert!(!removed.is_empty(), "no spool file to remove");
    for p in &removed {
        std::fs::remove_file(p).unwrap();
    }
    let written = write_wal(&s.pg, 256);
    let st = exits_within(&mut stream, Duration::from_secs(20));
    if st.is_none() {
        // The old behaviour: still running. SIGTERM must end it too.
        sigterm(&mut stream);
        let ended = exits_within(&mut stream, Duration::from_secs(10));
        panic!(
            "the streamer did not exit within 20 s of a failed seal (after SIGTERM: {ended:?}); status said:\n{}\nlog:\n{}",
            status_code(&s.lb).1,
            s.lb.stream_log()
        );
    }
    let st = st.unwrap();
    let log = s.lb.stream_log();
    assert!(!st.success(), "{log}");
    let (error, hint) = error_and_hint(&log).unwrap_or_else(|| panic!("{log}"));
    assert!(
        error.starts_with(&format!("error: cannot seal {}/", s.lb.spool.display()))
            && error.contains("No such file or directory"),
        "{error}"
    );
    assert_eq!(
        hint,
        "hint: the spool file changed under lifeboat: make sure nothing else writes, truncates or deletes files in wal.spool_dir; this WAL was not acknowledged, so the replication slot keeps it and the next start streams it again"
    );
    // Nothing past the stored WAL was acknowledged.
    let slot = slot_restart_lsn(&s.pg, "lifeboat").unwrap();
    assert!(slot <= stored_everywhere(&s), "slot {}", fmt_lsn(slot));
    // `status` says the streamer is gone.
    let (code, out) = status_code(&s.lb);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("FAILING   streamer  not running: pid "),
        "{out}"
    );

    // The next start streams it again, without a gap.
    let end = parse_lsn(&s.pg.switch_wal()).max(written);
    catch_up(&s, end);
    assert_no_gap(&s, end);
}

/// SIGTERM while a provider holds every write (a stalled request that never returns): the
/// streamer used to wait forever for the acknowledgement. It must exit within seconds,
/// acknowledging nothing it has not stored; the next run archives the rest.
#[test]
fn sigterm_ends_the_streamer_while_a_provider_stalls() {
    let s = setup();
    let mut stream = spawn(&s);
    let before = write_wal(&s.pg, 256);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    std::fs::write(&s.flag, "stall wal/").unwrap();
    let written = write_wal(&s.pg, 1024);
    // Let the stream reach the stalled provider.
    std::thread::sleep(Duration::from_secs(2));
    let slot = slot_restart_lsn(&s.pg, "lifeboat").unwrap();
    assert!(
        slot < written,
        "nothing written during the stall was stored on both"
    );
    sigterm(&mut stream);
    let t = Instant::now();
    let Some(st) = exits_within(&mut stream, Duration::from_secs(30)) else {
        panic!(
            "SIGTERM did not end the streamer within 30 s\n{}",
            s.lb.stream_log()
        );
    };
    let log = s.lb.stream_log();
    assert!(st.success(), "{st}\n{log}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(
        log.contains("stopping with WAL not yet stored on every provider"),
        "{log}"
    );
    // The slot never passed what both providers hold.
    let slot = slot_restart_lsn(&s.pg, "lifeboat").unwrap();
    assert!(slot <= stored_everywhere(&s), "slot {}", fmt_lsn(slot));

    std::fs::remove_file(&s.flag).unwrap();
    let end = parse_lsn(&s.pg.switch_wal()).max(written);
    catch_up(&s, end);
    assert_no_gap(&s, end);
}

/// A provider that refuses overwrites (an object lock, a retention policy) and loses the
/// response of a put it stored: the re-send of the same bytes is refused. That used to be a
/// permanent failure (the provider down for good, its WAL piling up in the spool); a key
/// that already holds exactly the bytes being sent is stored.
#[test]
fn a_refused_overwrite_of_an_identical_copy_counts_as_stored() {
    let s = setup();
    let stream = spawn(&s);
    let before = write_wal(&s.pg, 256);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    // Every WAL object's first put to "second" is stored and its response lost.
    std::fs::write(&s.flag, "exists wal/").unwrap();
    write_wal(&s.pg, 2048);
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end, Duration::from_secs(60), &s.lb);
    // The spool drains: "second" took every object.
    let outbox = s.lb.spool.join("outbox");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files(&outbox).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the spool did not drain: {:?}\nstatus:\n{}\nlog:\n{}",
            files(&outbox),
            status_code(&s.lb).1,
            s.lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // (While the fault lasts, each new object's lost response marks "second" down for a
    // moment; once it ends, "second" is up.)
    std::fs::remove_file(&s.flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = status_code(&s.lb);
        if out.contains("\"second\": up") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = parse_lsn(&s.pg.switch_wal());
    wait_archived(&s.pg, end, Duration::from_secs(60), &s.lb);
    stop_streamer(stream);
    let log = s.lb.stream_log();
    assert!(
        log.contains("the provider refused to overwrite an object that already holds exactly these bytes: stored"),
        "{log}"
    );
    assert_no_gap(&s, end);
}

/// A fast shutdown of the server while a provider stalls: the walsender waits until its
/// client has flushed everything it sent, and lifeboat (answering every keepalive with a
/// flush position it cannot advance) used to hold the server's shutdown forever. It must
/// disconnect within seconds (the slot keeps the WAL), and once the provider returns the
/// archive has no gap.
#[test]
fn a_fast_shutdown_is_not_held_while_a_provider_stalls() {
    let s = setup();
    let stream = spawn(&s);
    let before = write_wal(&s.pg, 256);
    wait_archived(&s.pg, before, Duration::from_secs(60), &s.lb);

    std::fs::write(&s.flag, "stall wal/").unwrap();
    let written = write_wal(&s.pg, 512);
    std::thread::sleep(Duration::from_secs(1));
    let (out, took) = s.pg.try_stop_fast(40);
    assert!(
        out.status.success() && took < Duration::from_secs(20),
        "pg_ctl stop -m fast took {took:?} ({}): {}\n{}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.lb.stream_log()
    );
    assert!(
        s.lb.stream_log()
            .contains("the server waits for an acknowledgement lifeboat cannot give yet"),
        "{}",
        s.lb.stream_log()
    );

    // The provider returns, the server starts again: the streamer catches up, no gap.
    std::fs::remove_file(&s.flag).unwrap();
    s.pg.start_again();
    let end = parse_lsn(&s.pg.switch_wal()).max(written);
    wait_archived(&s.pg, end, Duration::from_secs(90), &s.lb);
    stop_streamer(stream);
    assert_no_gap(&s, end);
}

/// Item 1 end to end: the first provider holds only the first part of a segment and
/// nothing after it; the second holds everything. Restored to the latest point, with the
/// plain `wal-fetch` restore_command of the README (`--wal-prefetch 0`) and with the
/// prefetching one, PostgreSQL replays every committed row: the one reader merges the
/// providers instead of zero-filling the first provider's prefix. (Before the reader, the
/// plain form replayed 18,000 of 36,000 rows and promoted.)
#[test]
fn a_one_sided_partial_never_ends_a_restore_early() {
    let s = setup();
    s.pg.psql("CREATE TABLE t (id int, batch int)");
    let stream = s.lb.start_streamer(&s.pg);
    expect_success(
        &s.lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup",
    );
    // Small commits with pauses longer than max_delay: the segment gets parts.
    let seg_bytes = s.pg.wal_segment_size();
    let n = parse_lsn(&s.pg.current_lsn()) / seg_bytes;
    for b in 0..3 {
        s.pg.psql(&format!(
            "INSERT INTO t SELECT g, {b} FROM generate_series({}, {}) g",
            b * 1000 + 1,
            b * 1000 + 1000
        ));
        std::thread::sleep(Duration::from_millis(800));
    }
    // Then enough WAL for later segments.
    for b in 3..6 {
        s.pg.psql(&format!(
            "INSERT INTO t SELECT g, {b} FROM generate_series({}, {}) g",
            b * 100_000 + 1,
            b * 100_000 + 100_000
        ));
        s.pg.switch_wal();
    }
    let total = s.pg.psql("SELECT count(*) FROM t");
    wait_caught_up(&s.pg, Duration::from_secs(120), &s.lb);
    stop_streamer(stream);

    // The first provider keeps only segment N's first part, and nothing after N.
    let name = format!(
        "{:08X}{:08X}{:08X}",
        1,
        n / (0x1_0000_0000 / seg_bytes),
        n % (0x1_0000_0000 / seg_bytes)
    );
    let dir = s.lb.archive.join("wal/00000001");
    let mut parts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&name) && f.ends_with(".part"))
        .collect();
    parts.sort();
    let first = parts
        .iter()
        .find(|p| p.contains(".00000000-"))
        .unwrap_or_else(|| panic!("segment {name} has no part from offset 0: {parts:?}"))
        .clone();
    let mut removed = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        if f.len() >= 24 && (f[..24] > *name.as_str() || (f.starts_with(&name) && f != first)) {
            std::fs::remove_file(dir.join(&f)).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 2, "{removed}");

    let work = tempfile::tempdir().unwrap();
    for prefetch in ["0", "8"] {
        let restored = crate::restore::restore_and_start(
            &s.lb,
            15,
            work.path(),
            &["--wal-prefetch", prefetch],
        );
        assert_eq!(
            restored.psql("SELECT count(*) FROM t"),
            total,
            "prefetch {prefetch}"
        );
    }
}
