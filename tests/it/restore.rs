//! `lifeboat restore` against real PostgreSQL servers. The oracle is PostgreSQL itself:
//! it replays the archived WAL through `lifeboat wal-fetch` to the target, promotes, and
//! answers queries; `pg_verifybackup` checks the restored files against the manifest.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::*;

/// Streamer running and caught up; a fast backup taken; returns the streamer.
pub(crate) fn stream_and_backup(pg: &PgCluster, lb: &Lb) -> KillOnDrop {
    let child = lb.start_streamer(pg);
    let out = lb.run(&["backup", "--fast"], Duration::from_secs(600));
    expect_success(&out, "lifeboat backup");
    child
}

/// `lifeboat restore --pgdata <new dir> --pg-bin <major's bin> ARGS`: the output and the
/// directory (inside a temp dir kept alive by the caller).
pub(crate) fn restore(
    lb: &Lb,
    major: u32,
    work: &Path,
    args: &[&str],
) -> (Output, std::path::PathBuf) {
    let dir = work.join(format!("data{}", rand_suffix()));
    let bin = pg_bin_dir(major);
    let mut a = vec![
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
        "--pg-bin",
        bin.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    (lb.run_restore_bin(&a, Duration::from_secs(600)), dir)
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Restore with ARGS, start PostgreSQL on it, wait for promotion.
pub(crate) fn restore_and_start(lb: &Lb, major: u32, work: &Path, args: &[&str]) -> PgCluster {
    let (out, dir) = restore(lb, major, work, args);
    expect_success(&out, &format!("lifeboat restore {args:?}"));
    assert!(dir.join("recovery.signal").exists());
    assert!(dir.join("backup_manifest").exists());
    start_restored(major, &dir)
}

/// The seed's disaster: rows committed, time T noted, `DROP TABLE` a second later.
/// `restore --target-time T` and `pg_ctl start` bring back every row committed before T
/// and nothing after it.
fn seed_disaster(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)");
    pg.psql("INSERT INTO orders SELECT g, 'before backup' FROM generate_series(1, 1000) g");
    let streamer = stream_and_backup(&pg, &lb);
    // The planner wants the target at least a second after the backup ended.
    std::thread::sleep(Duration::from_millis(1500));
    for batch in 0..5 {
        pg.psql(&format!(
            "INSERT INTO orders SELECT g, 'batch {batch}' FROM generate_series({}, {}) g",
            1001 + batch * 100,
            1000 + (batch + 1) * 100
        ));
    }
    let t = pg.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_secs(1));
    pg.psql("INSERT INTO orders VALUES (99999, 'after T')");
    pg.psql("DROP TABLE orders");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    let work = tempfile::tempdir().unwrap();
    let restored = restore_and_start(&lb, major, work.path(), &["--target-time", &t]);
    assert_eq!(
        restored.psql("SELECT count(*), max(id) FROM orders"),
        "1500|1500",
        "PostgreSQL {major}: every row committed before {t}, nothing after"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM orders WHERE note = 'after T'"),
        "0"
    );
    assert!(
        restored.log().contains("recovery stopping before commit"),
        "PostgreSQL {major}: {}",
        restored.log()
    );
}

#[test]
fn seed_disaster_restore_to_time_every_major() {
    for major in require_majors() {
        seed_disaster(major);
    }
}

/// Targets by LSN, xid, restore point name, immediate and latest, on one archive; then
/// pg_verifybackup on a restored directory.
#[test]
fn targets_by_lsn_xid_name_immediate_and_latest() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE t (id int)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 100)");
    let streamer = stream_and_backup(&pg, &lb);
    let xid = pg.psql(
        "BEGIN; INSERT INTO t SELECT generate_series(101, 200); SELECT pg_current_xact_id(); COMMIT;",
    );
    let xid = xid
        .lines()
        .find(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .unwrap()
        .to_string();
    pg.psql("INSERT INTO t SELECT generate_series(201, 300)");
    pg.psql("SELECT pg_create_restore_point('before_400')");
    pg.psql("INSERT INTO t SELECT generate_series(301, 400)");
    let lsn = pg.current_lsn();
    pg.psql("INSERT INTO t SELECT generate_series(401, 500)");
    // A second backup: every target above precedes it, so the planner must pick the
    // first one (by LSN, and for the xid by the second backup's snapshot); a restore
    // point's position is unknown before replay, so that one names the backup.
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "second backup",
    );
    pg.psql("INSERT INTO t SELECT generate_series(501, 600)");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let list = lb.list_json();
    let first = list["backups"][0]["id"].as_str().unwrap().to_string();
    let second = list["backups"][1]["id"].as_str().unwrap().to_string();

    let work = tempfile::tempdir().unwrap();
    for (args, want, backup) in [
        (vec!["--target-xid", xid.as_str()], "200", &first),
        (
            vec!["--target-name", "before_400", "--backup", &first],
            "300",
            &first,
        ),
        (vec!["--target-lsn", lsn.as_str()], "400", &first),
        (
            vec!["--target-immediate", "--backup", &first],
            "100",
            &first,
        ),
        (vec!["--target-immediate"], "500", &second),
        (vec![], "600", &second),
    ] {
        let (out, dir) = restore(&lb, major, work.path(), &args);
        let text = expect_success(&out, &format!("lifeboat restore {args:?}"));
        assert!(
            text.starts_with(&format!("backup    {backup} ")),
            "{args:?} restores {backup}:\n{text}"
        );
        let restored = start_restored(major, &dir);
        assert_eq!(
            restored.psql("SELECT max(id) FROM t"),
            want,
            "target {args:?}:\n{}",
            restored.log()
        );
        if args.is_empty() {
            // The restored files pass PostgreSQL's own verifier (before the server
            // changed them, checked on a fresh restore).
            let (out, dir) = restore(&lb, major, work.path(), &[]);
            expect_success(&out, "restore for pg_verifybackup");
            verifybackup(&pg, &dir);
        }
    }
}

/// A standby streams into the archive and is backed up, then promoted: restoring to the
/// latest point follows timeline 1 into timeline 2; `--target-timeline 1` stays on 1; a
/// target LSN after the promotion is reached on timeline 2.
#[test]
fn recovery_across_a_timeline_switch() {
    let major = newest_major().expect("a PostgreSQL major");
    let primary = PgCluster::start(major, ClusterOpts::default());
    primary.psql("CREATE TABLE t (id int, tl int)");
    primary.psql("INSERT INTO t SELECT g, 1 FROM generate_series(1, 100) g");
    let standby = primary.create_standby();
    let lb = Lb::for_cluster(&standby, SMALL_PARTS);
    let streamer = stream_and_backup(&standby, &lb);
    primary.psql("INSERT INTO t SELECT g, 1 FROM generate_series(101, 200) g");
    let on_primary = primary.current_lsn();
    standby.wait_for(
        &format!("SELECT pg_last_wal_replay_lsn() >= '{on_primary}'"),
        "t",
        Duration::from_secs(60),
    );
    standby.promote();
    standby.psql("INSERT INTO t SELECT g, 2 FROM generate_series(201, 300) g");
    let after = standby.current_lsn();
    standby.psql("INSERT INTO t SELECT g, 2 FROM generate_series(301, 400) g");
    standby.psql("SELECT pg_switch_wal()");
    wait_caught_up(&standby, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    drop(primary);

    let work = tempfile::tempdir().unwrap();
    let (dry, _) = restore(&lb, major, work.path(), &["--dry-run"]);
    let plan = expect_success(&dry, "restore --dry-run");
    assert!(plan.contains("timelines 1 → 2"), "{plan}");

    let latest = restore_and_start(&lb, major, work.path(), &[]);
    assert_eq!(latest.psql("SELECT count(*), max(id) FROM t"), "400|400");
    drop(latest);
    let tl1 = restore_and_start(&lb, major, work.path(), &["--target-timeline", "1"]);
    assert_eq!(tl1.psql("SELECT max(id), max(tl) FROM t"), "200|1");
    drop(tl1);
    let mid = restore_and_start(&lb, major, work.path(), &["--target-lsn", &after]);
    assert_eq!(mid.psql("SELECT max(id), max(tl) FROM t"), "300|2");
}

/// Each bad input gets an exact message and writes nothing.
#[test]
fn bad_input_restore_errors_are_exact() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let streamer = stream_and_backup(&pg, &lb);
    pg.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("INSERT INTO t SELECT generate_series(2001, 3000)");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("INSERT INTO t SELECT generate_series(3001, 4000)");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let work = tempfile::tempdir().unwrap();

    // Unreachable target: before the oldest backup.
    let (out, dir) = restore(
        &lb,
        major,
        work.path(),
        &["--target-time", "2001-01-01 00:00:00+00"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        first_error_line(&out)
            .starts_with("error: target time 2001-01-01 00:00:00+00 is before the oldest backup ("),
        "{}",
        stderr_of(&out)
    );
    assert!(!dir.exists(), "nothing written");

    // Not a time at all: tests/cmd/restore.toml (target-time-not-a-time).

    // A non-empty data directory.
    let busy = work.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("PG_VERSION"), "17\n").unwrap();
    let bin = pg_bin_dir(major);
    let out = lb.run_restore_bin(
        &[
            "restore",
            "--pgdata",
            busy.to_str().unwrap(),
            "--pg-bin",
            bin.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "--pgdata {} is not empty (it holds PG_VERSION)",
            busy.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: restore into an empty directory, or pass --force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("PG_VERSION")).unwrap(),
        "17\n",
        "left alone"
    );

    // The wrong PostgreSQL major version.
    if let Some(other) = available_majors().into_iter().find(|m| *m != major) {
        let (out, dir) = restore(&lb, other, work.path(), &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(
            err.contains(&format!(
                "the backup needs PostgreSQL {major}, but {}/postgres is PostgreSQL {other}.",
                pg_bin_dir(other).display()
            )),
            "{err}"
        );
        assert!(!dir.exists());
    }

    // The wrong identity.
    let (wrong_id, _) = keygen(lb.dir.path(), "other-identity.txt");
    let dir = work.path().join("wrong-id");
    let mut c = std::process::Command::new(lb.restore_bin());
    c.arg("--config")
        .arg(&lb.config)
        .arg("--identity")
        .arg(&wrong_id);
    c.args([
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
        "--pg-bin",
        bin.to_str().unwrap(),
    ]);
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("the identity cannot decrypt backup "), "{err}");
    assert!(
        err.contains("none of its keys is a recipient of the archive"),
        "{err}"
    );
    assert!(!dir.exists());

    // A tampered part: the restore names it and removes what it wrote.
    let backup_json = lb
        .archive_files("backups/")
        .into_iter()
        .find(|k| k.ends_with("backup.json"))
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lb.archive.join(&backup_json)).unwrap()).unwrap();
    let part = meta["parts"].as_array().unwrap().last().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let path = lb.archive.join(&part);
    let original = std::fs::read(&path).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let (out, dir) = restore(&lb, major, work.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("no provider holds a usable copy of {part}")),
        "{err}"
    );
    assert!(err.contains("object checksum mismatch"), "{err}");
    assert!(err.contains("what it had written was removed"), "{err}");
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
    std::fs::write(&path, &original).unwrap();

    // An extension and a preloaded library this host's PostgreSQL lacks (recorded in
    // backup.json as a server using them would have them): preflight names both and writes
    // nothing; with them gone again, the same restore passes preflight.
    let meta_path = lb.archive.join(&backup_json);
    let original_meta = std::fs::read(&meta_path).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original_meta).unwrap();
    m["extensions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "lifeboat_no_such_ext", "version": "9.9"}));
    m["shared_preload_libraries"] = serde_json::json!("pg_stat_statements, lifeboat_no_such_lib");
    std::fs::write(&meta_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let (out, dir) = restore(&lb, major, work.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("preflight failed, nothing was written:"),
        "{err}"
    );
    assert!(
        err.contains(&format!("extension \"lifeboat_no_such_ext\" 9.9 is installed in the backed-up database but not available to PostgreSQL {major} here")),
        "{err}"
    );
    assert!(
        err.contains(&format!("shared_preload_libraries includes \"lifeboat_no_such_lib\", which PostgreSQL {major} here cannot load")),
        "{err}"
    );
    assert!(
        !err.contains("\"pg_stat_statements\""),
        "an installed library passes: {err}"
    );
    assert!(!dir.exists());
    std::fs::write(&meta_path, &original_meta).unwrap();

    // A missing WAL segment: the gap is named.
    let segs: Vec<String> = lb
        .archive_files("wal/")
        .into_iter()
        .filter(|k| k.ends_with(".seg"))
        .collect();
    let victim = &segs[segs.len() - 2];
    let name = Path::new(victim).file_name().unwrap().to_str().unwrap()[..24].to_string();
    for k in lb.archive_files("wal/") {
        if k.contains(&name) {
            std::fs::remove_file(lb.archive.join(k)).unwrap();
        }
    }
    let (out, dir) = restore(&lb, major, work.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let seg_no = u64::from_str_radix(&name[8..16], 16).unwrap() * 0x100
        + u64::from_str_radix(&name[16..24], 16).unwrap();
    let from = fmt_lsn(seg_no * 16 * 1024 * 1024);
    let to = fmt_lsn((seg_no + 1) * 16 * 1024 * 1024);
    assert!(
        first_error_line(&out).starts_with(&format!("error: WAL gap {from}–{to} on timeline 1: ")),
        "{}",
        stderr_of(&out)
    );
    assert!(!dir.exists());
}

/// `lifeboat drill ARGS --json` with the workspace binary; (exit code, report).
pub(crate) fn drill(
    lb: &Lb,
    major: u32,
    args: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let scratch = lb.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let bin = pg_bin_dir(major);
    let mut a = vec![
        "--json",
        "drill",
        "--pg-bin",
        bin.to_str().unwrap(),
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--timeout",
        "5m",
    ];
    if is_root() {
        a.extend(["--run-as", TEST_OS_USER]);
    }
    a.extend_from_slice(args);
    let out = lb.run_restore_bin(&a, Duration::from_secs(900));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        )
    });
    (out.status.code(), v, stderr_of(&out))
}

/// A drill on a real archive passes, counts every table, times its phases, records itself
/// (list shows it) and cleans up; a drill whose check SQL fails exits non-zero and names
/// the failing query.
#[test]
fn drill_passes_and_a_failing_check_fails_it() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int)");
    pg.psql("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5000) g");
    pg.psql("CREATE SCHEMA audit");
    pg.psql("CREATE TABLE audit.log AS SELECT g AS id FROM generate_series(1, 77) g");
    let streamer = stream_and_backup(&pg, &lb);
    pg.psql("INSERT INTO accounts SELECT g, 5 FROM generate_series(5001, 6000) g");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    let (code, rep, err) = drill(&lb, major, &["--backup", "latest", "--target", "latest"]);
    assert_eq!(code, Some(0), "{rep:#}\n{err}");
    assert_eq!(rep["ok"], true);
    let tables = rep["tables"].as_array().unwrap();
    let rows = |t: &str| {
        tables
            .iter()
            .find(|x| x["database"] == "postgres" && x["table"] == t)
            .unwrap_or_else(|| panic!("{t} not counted: {rep:#}"))["rows"]
            .as_i64()
    };
    assert_eq!(rows("public.accounts"), Some(6000));
    assert_eq!(rows("audit.log"), Some(77));
    for phase in ["fetch", "extract", "replay", "total"] {
        assert!(
            rep["phases"][phase].as_f64().unwrap() > 0.0,
            "{phase}: {rep:#}"
        );
    }
    assert!(rep["phases"]["total"].as_f64().unwrap() >= rep["phases"]["replay"].as_f64().unwrap());
    let scratch = lb.dir.path().join("scratch");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch directory removed"
    );
    let list = lb.list_json();
    assert_eq!(list["last_drill"]["id"], rep["id"]);
    assert_eq!(list["last_drill"]["ok"], true);

    // A random target inside the window, and a check that fails.
    let checks = lb.dir.path().join("checks.sql");
    std::fs::write(
        &checks,
        "-- the accounts survived\nSELECT count(*) >= 5000 FROM accounts;\nSELECT sum(balance) = 1 FROM accounts;\n",
    )
    .unwrap();
    let (code, rep, err) = drill(
        &lb,
        major,
        &["--check-sql", checks.to_str().unwrap(), "--keep"],
    );
    assert_eq!(code, Some(1), "{rep:#}\n{err}");
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["checks"][0]["ok"], true, "{rep:#}");
    assert_eq!(rep["checks"][1]["ok"], false);
    assert_eq!(
        rep["checks"][1]["query"],
        "SELECT sum(balance) = 1 FROM accounts"
    );
    assert!(rep["checks"][1]["result"]
        .as_str()
        .unwrap()
        .starts_with("returned f"));
    assert!(
        err.contains("check SELECT sum(balance) = 1 FROM accounts returned f"),
        "{err}"
    );
    let kept = rep["scratch_dir"].as_str().unwrap();
    assert!(Path::new(kept).join("data/PG_VERSION").exists(), "--keep");
    assert!(
        !Path::new(kept).join("identity").exists(),
        "the identity copy is gone"
    );
}

/// A tablespace restored to a new place with `--tablespace OID=DIR`: the link and
/// tablespace_map point there, and PostgreSQL reads the table in it after recovery.
#[test]
fn tablespace_remapped_with_tablespace_option() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let ts = pg_tempdir("lbts-");
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.path().display()
    ));
    pg.psql("CREATE TABLE in_extra TABLESPACE extra AS SELECT g FROM generate_series(1, 30000) g");
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = stream_and_backup(&pg, &lb);
    pg.psql("INSERT INTO in_extra SELECT generate_series(30001, 31000)");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    let work = tempfile::tempdir().unwrap();
    let moved = pg_tempdir("lbts-moved-");
    let spec = format!("{oid}={}", moved.path().join("ts").display());
    let (out, dir) = restore(&lb, major, work.path(), &["--tablespace", &spec]);
    expect_success(&out, "restore --tablespace");
    let link = std::fs::read_link(dir.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, moved.path().join("ts"));
    let map = std::fs::read_to_string(dir.join("tablespace_map")).unwrap();
    assert_eq!(
        map,
        format!("{oid} {}\n", moved.path().join("ts").display())
    );
    chown_tree_to_pg_user(&moved.path().join("ts"));
    let restored = start_restored(major, &dir);
    assert_eq!(restored.psql("SELECT count(*) FROM in_extra"), "31000");
    assert_eq!(
        restored
            .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"),
        moved.path().join("ts").display().to_string()
    );
    // A tablespace the backup does not have.
    let (out, _) = restore(&lb, major, work.path(), &["--tablespace", "4242=/tmp/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("--tablespace 4242=...: backup ")
            && stderr_of(&out).contains("has no tablespace 4242 (it has: "),
        "{}",
        stderr_of(&out)
    );
}
