//! `lifeboat backup` and `lifeboat list` against real PostgreSQL servers. The oracle is
//! PostgreSQL's own `pg_verifybackup`, run on a data directory rebuilt from the archive
//! (decrypted, decompressed, extracted) with the archived manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat::pipeline::Opener;

use crate::support::*;

/// `lifeboat --json backup ARGS`, which must succeed; its report.
pub(crate) fn backup_ok(lb: &Lb, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json", "backup"];
    a.extend_from_slice(args);
    let out = lb.run(&a, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "lifeboat backup failed ({}): {}\nstream log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        lb.stream_log()
    );
    json_of(&out)
}

/// Rebuild a data directory from backup `id` of the archive, the way a restore would:
/// every part decrypted and decompressed, concatenated per tar, extracted; tablespace tars
/// into their own directories linked from pg_tblspc; the manifest as backup_manifest.
fn rebuild(lb: &Lb, id: &str, dest: &Path) -> PathBuf {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lb.archive.join(format!("backups/{id}/backup.json"))).unwrap(),
    )
    .unwrap();
    let opener = Opener::from_file(&lb.identity).unwrap();
    let open = |key: &str| {
        let stored = std::fs::read(lb.archive.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        opener
            .open(&stored)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let datadir = dest.join("data");
    std::fs::create_dir_all(&datadir).unwrap();
    for ts in meta["tablespaces"].as_array().unwrap() {
        let tar = ts["tar"].as_str().unwrap();
        let mut bytes = Vec::new();
        let mut seq = 0;
        for p in meta["parts"].as_array().unwrap() {
            if p["tar"] == tar {
                assert_eq!(p["seq"].as_u64().unwrap(), seq, "parts in order");
                seq += 1;
                let plain = open(p["key"].as_str().unwrap());
                assert_eq!(plain.len() as u64, p["plain_len"].as_u64().unwrap());
                bytes.extend_from_slice(&plain);
            }
        }
        assert!(seq > 0, "tar {tar} has no parts");
        let target = match ts["oid"].as_u64() {
            None => datadir.clone(),
            Some(oid) => {
                let d = dest.join(format!("ts_{oid}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::create_dir_all(datadir.join("pg_tblspc")).unwrap();
                std::os::unix::fs::symlink(&d, datadir.join("pg_tblspc").join(oid.to_string()))
                    .unwrap();
                d
            }
        };
        tar::Archive::new(&bytes[..])
            .unpack(&target)
            .unwrap_or_else(|e| panic!("extracting {tar}: {e}"));
    }
    let manifest = open(meta["manifest"]["key"].as_str().unwrap());
    std::fs::write(datadir.join("backup_manifest"), manifest).unwrap();
    datadir
}

fn with_tablespace(pg: &PgCluster) -> tempfile::TempDir {
    let ts = pg_tempdir("lbts-");
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.path().display()
    ));
    pg.psql("CREATE TABLE in_extra TABLESPACE extra AS SELECT g, md5(g::text) AS t FROM generate_series(1, 50000) g");
    ts
}

fn backup_every_major(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    let ts = with_tablespace(&pg);
    pg.pgbench_init(1);
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = lb.start_streamer(&pg);
    let report = backup_ok(&lb, &["--fast", "--label", "every major"]);
    assert_eq!(report["restorable"], true, "{report}");
    assert_eq!(report["label"], "every major");
    assert_eq!(
        report["system_identifier"],
        pg.system_identifier().to_string()
    );
    assert_eq!(report["pg_version"].as_u64().unwrap() / 10000, major as u64);
    assert_eq!(report["from_standby"], false);
    let oid: u64 = pg
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")
        .parse()
        .unwrap();
    let tars: Vec<&str> = report["tablespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tar"].as_str().unwrap())
        .collect();
    let ts_tar = format!("{oid}.tar");
    assert!(
        tars.contains(&"base.tar") && tars.contains(&ts_tar.as_str()),
        "{tars:?}"
    );
    assert!(
        report["parts"].as_array().unwrap().len() > 3,
        "1 MiB parts: {report}"
    );
    assert!(report["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "plpgsql"));
    let id = report["id"].as_str().unwrap().to_string();

    let list = lb.list_json();
    let b = &list["backups"][0];
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["restorable"], true);
    assert_eq!(b["timeline"], 1);
    let (start, end) = (
        parse_lsn(b["start_lsn"].as_str().unwrap()),
        parse_lsn(b["end_lsn"].as_str().unwrap()),
    );
    assert!(start < end);
    let wal = list["wal"].as_array().unwrap();
    assert!(wal.iter().any(|r| r["timeline"] == 1
        && parse_lsn(r["start_lsn"].as_str().unwrap()) <= start
        && parse_lsn(r["end_lsn"].as_str().unwrap()) >= end));
    stop_streamer(streamer);

    let work = tempfile::tempdir().unwrap();
    let datadir = rebuild(&lb, &id, work.path());
    assert!(datadir.join("tablespace_map").exists());
    verifybackup(&pg, &datadir);
    drop(ts);
}

#[test]
fn backup_with_tablespace_passes_pg_verifybackup_every_major() {
    for major in require_majors() {
        backup_every_major(major);
    }
}

#[test]
fn backup_from_a_standby_passes_pg_verifybackup() {
    for major in oldest_and_newest_majors() {
        let pg = PgCluster::start(major, ClusterOpts::default());
        pg.pgbench_init(1);
        let sb = pg.create_standby();
        // The streamer archives the primary; the backup reads the standby; one archive.
        let lb = Lb::for_cluster(&sb, SMALL_PARTS);
        let primary_cfg = lb.dir.path().join("primary.toml");
        std::fs::write(
            &primary_cfg,
            std::fs::read_to_string(&lb.config)
                .unwrap()
                .replace(&format!("port={}", sb.port), &format!("port={}", pg.port)),
        )
        .unwrap();
        let log = std::fs::File::create(lb.dir.path().join("stream.log")).unwrap();
        let streamer = KillOnDrop(
            Command::new(BIN)
                .arg("--config")
                .arg(&primary_cfg)
                .arg("stream")
                .env("HOME", lb.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_caught_up(&pg, Duration::from_secs(120), &lb);
        pg.psql("CHECKPOINT");
        let report = backup_ok(&lb, &["--fast"]);
        assert_eq!(report["from_standby"], true, "{report}");
        assert_eq!(report["restorable"], true, "{report}");
        stop_streamer(streamer);
        let work = tempfile::tempdir().unwrap();
        let datadir = rebuild(&lb, report["id"].as_str().unwrap(), work.path());
        verifybackup(&sb, &datadir);
    }
}

#[test]
fn kill_9_during_a_backup_leaves_no_backup_and_the_next_one_works() {
    let major = newest_major().expect("a PostgreSQL installation");
    let pg = PgCluster::start(major, ClusterOpts::default());
    pg.pgbench_init(8);
    let lb = Lb::for_cluster(&pg, &format!("{SMALL_PARTS}max_rate = 4096\n"));
    let mut child = lb
        .cmd()
        .arg("backup")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lb.archive_files("backups/").len() < 3 {
        assert!(Instant::now() < deadline, "no parts appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended too soon"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(&mut child);
    assert!(!lb.archive_files("backups/").is_empty());
    let list = lb.list_json();
    assert_eq!(list["backups"].as_array().unwrap().len(), 0, "{list}");
    // verify names the killed backup's parts as unreferenced, and does not fail on them.
    let (ok, report) = lb.verify(false);
    assert!(ok, "{report}");
    let p0 = &report["providers"][0];
    assert_eq!(p0["backups"], 0, "{report}");
    let leftovers: Vec<String> = p0["unreferenced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(!leftovers.is_empty(), "{report}");
    assert!(
        leftovers
            .iter()
            .all(|k| k.starts_with("backups/") && !k.ends_with("backup.json")),
        "{leftovers:?}"
    );

    // The killed backup's temporary slot went with its connection.
    wait_no_backup_slots(&pg);

    // The next backup works; with no streamer it archives its own WAL and is restorable.
    let text = std::fs::read_to_string(&lb.config)
        .unwrap()
        .replace("max_rate = 4096\n", "");
    std::fs::write(&lb.config, text).unwrap();
    let out = lb.run(&["backup"], Duration::from_secs(600));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("not restorable"), "{stderr}");
    let list = lb.list_json();
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{list}");
    assert_eq!(backups[0]["restorable"], true, "{list}");
    let id = backups[0]["id"].as_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let datadir = rebuild(&lb, id, work.path());
    verifybackup(&pg, &datadir);
    let restored = restore_to_consistency(&lb, id, major);
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "800000"
    );
    wait_no_backup_slots(&pg);

    // verify --full decrypts every part of the new backup; the leftovers stay listed.
    let (ok, report) = lb.verify(true);
    assert!(ok, "{report}");
    assert_eq!(report["providers"][0]["backups"], 1, "{report}");
    assert_eq!(
        report["providers"][0]["unreferenced"]
            .as_array()
            .unwrap()
            .len(),
        leftovers.len(),
        "{report}"
    );
    // A damaged part and a missing one are named.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lb.archive.join(format!("backups/{id}/backup.json"))).unwrap(),
    )
    .unwrap();
    let parts = meta["parts"].as_array().unwrap();
    let (damaged, lost) = (
        parts[0]["key"].as_str().unwrap(),
        parts[1]["key"].as_str().unwrap(),
    );
    let path = lb.archive.join(damaged);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(lb.archive.join(lost)).unwrap();
    let (ok, report) = lb.verify(false);
    assert!(!ok, "{report}");
    let problems: Vec<&str> = report["providers"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!(
            "{damaged}: object checksum mismatch: stored CRC32 "
        )),
        "{problems:?}"
    );
    assert_eq!(
        problems[1],
        format!("{lost}: listed in backups/{id}/backup.json but missing")
    );
}

#[test]
fn bad_input_backup_errors_are_exact() {
    let a = PgCluster::start(15, ClusterOpts::default());
    // A role without REPLICATION.
    let lb = Lb::with(&a.conninfo(NOREPL_USER, Some(NOREPL_PASSWORD)), "", "");
    let out = lb.run(&["backup"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_error_line(&out),
        "error: server error: must be superuser or replication role to start walsender\nhint: grant it with ALTER ROLE ... WITH REPLICATION"
    );
    assert!(lb.archive_files("backups/").is_empty());

    // Another cluster's archive.
    let b = PgCluster::start(15, ClusterOpts::default());
    let lb = Lb::for_cluster(&a, "");
    let out = lb.run(
        &["backup", "--fast", "--wal-timeout", "1s"],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&lb.config)
        .unwrap()
        .replace(&format!("port={}", a.port), &format!("port={}", b.port));
    std::fs::write(&lb.config, text).unwrap();
    let out = lb.run(&["backup", "--fast"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: storage \"local\" holds the archive of database system {}, but the server is system {}\nhint: never mix two clusters in one archive: point [[storage]] url at a new, empty location for this cluster",
            a.system_identifier(),
            b.system_identifier()
        )
    );
    assert_eq!(lb.list_json()["backups"].as_array().unwrap().len(), 1);

    // max_wal_senders exhausted by a streamer.
    let c = PgCluster::start(15, ClusterOpts::default().conf("max_wal_senders = 1"));
    let lb = Lb::for_cluster(&c, "");
    let streamer = lb.start_streamer(&c);
    let out = lb.run(&["backup"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_error_line(&out),
        "error: server error: number of requested standby connections exceeds max_wal_senders (currently 1)\nhint: raise max_wal_senders (or max_connections) on the server, or stop another replication client"
    );
    stop_streamer(streamer);

    // Bad settings.
    let lb = Lb::for_cluster(&c, "[backup]\nmax_rate = 5\n");
    let out = lb.run(&["backup"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: {}: backup.max_rate: 5 is out of range\nhint: the rate is in kB/s, from 32 to 1048576, as PostgreSQL's MAX_RATE",
            lb.config.display()
        )
    );
}

/// A backup taken while pgbench writes; the cluster started from it, with WAL served by
/// `lifeboat wal-fetch` from the archive, reaches consistency and opens.
#[test]
fn backup_under_pgbench_restores_to_consistency_with_archived_wal() {
    for major in oldest_and_newest_majors() {
        let pg = PgCluster::start(major, ClusterOpts::default());
        pg.pgbench_init(2);
        let lb = Lb::for_cluster(&pg, SMALL_PARTS);
        let streamer = lb.start_streamer(&pg);
        let mut bench = pg.pgbench(600, 2);
        std::thread::sleep(Duration::from_secs(2));
        let report = backup_ok(&lb, &["--fast"]);
        assert_eq!(report["restorable"], true, "{report}");
        let _ = bench.kill();
        let _ = bench.wait();
        stop_streamer(streamer);

        let restored = restore_to_consistency(&lb, report["id"].as_str().unwrap(), major);
        assert_eq!(
            restored.psql("SELECT count(*) FROM pgbench_accounts"),
            "200000",
            "PostgreSQL {major}"
        );
    }
}

/// Rebuild backup `id` and start PostgreSQL `major` on it with `lifeboat wal-fetch` as the
/// restore_command and `recovery_target = 'immediate'`; returns the cluster once it has
/// reached consistency and been promoted.
fn restore_to_consistency(lb: &Lb, id: &str, major: u32) -> PgCluster {
    let work = tempfile::tempdir().unwrap();
    let datadir = rebuild(lb, id, work.path());
    // The server user runs the restore_command: let it read the workspace, and give it a
    // copy of the binary that a concurrent build cannot replace.
    let bin = lb.restore_bin();
    let restore = format!(
        "{} --config {} --identity {} wal-fetch %f %p",
        bin.display(),
        lb.config.display(),
        lb.identity.display()
    );
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(datadir.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut auto,
        format!(
            "\nrestore_command = '{restore}'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n"
        )
        .as_bytes(),
    )
    .unwrap();
    std::fs::write(datadir.join("recovery.signal"), "").unwrap();
    let restored = PgCluster::start_from_datadir(major, &datadir, Duration::from_secs(180));
    restored.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(120));
    assert!(
        restored.log().contains("consistent recovery state reached"),
        "PostgreSQL {major}: {}",
        restored.log()
    );
    restored
}

/// Temporary slots of `lifeboat backup` still on the server (they must go with its
/// connection).
fn backup_slots(pg: &PgCluster) -> String {
    pg.psql("SELECT coalesce(string_agg(slot_name, ','), '') FROM pg_replication_slots WHERE slot_name LIKE 'lifeboat_backup_%'")
}

fn wait_no_backup_slots(pg: &PgCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !backup_slots(pg).is_empty() {
        assert!(
            Instant::now() < deadline,
            "temporary slots left: {}",
            backup_slots(pg)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With no streamer at all, `backup` archives its own WAL from a temporary slot (as
/// `pg_basebackup -X stream` does): the backup is restorable at once and a cluster started
/// from it reaches consistency.
#[test]
fn backup_without_a_streamer_archives_its_own_wal_and_restores() {
    for major in oldest_and_newest_majors() {
        let pg = PgCluster::start(major, ClusterOpts::default());
        pg.pgbench_init(2);
        let lb = Lb::for_cluster(&pg, SMALL_PARTS);
        let mut bench = pg.pgbench(600, 2);
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let out = lb.run(&["--json", "backup", "--fast"], Duration::from_secs(600));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "PostgreSQL {major}: {stderr}");
        let report = json_of(&out);
        let _ = bench.kill();
        let _ = bench.wait();
        assert_eq!(
            report["restorable"], true,
            "PostgreSQL {major}: {report}\n{stderr}"
        );
        assert!(
            stderr.contains("archiving the backup's WAL from its temporary slot"),
            "{stderr}"
        );
        assert!(!stderr.contains("not restorable"), "{stderr}");
        // It did not sit out the 60 s --wal-timeout waiting for a streamer.
        assert!(started.elapsed() < Duration::from_secs(50), "{stderr}");
        wait_no_backup_slots(&pg);
        // Its own spool directory is gone; the streamer's spool was never touched. (The
        // host's copies of its backups' manifests, `manifests/`, are kept on purpose: the
        // next incremental backup uploads its parent's.)
        let leftovers: Vec<_> = std::fs::read_dir(&lb.spool)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.ends_with("manifests"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let id = report["id"].as_str().unwrap();
        let list = lb.list_json();
        assert_eq!(list["backups"][0]["id"], id);
        assert_eq!(list["backups"][0]["restorable"], true, "{list}");
        let restored = restore_to_consistency(&lb, id, major);
        assert_eq!(
            restored.psql("SELECT count(*) FROM pgbench_accounts"),
            "200000",
            "PostgreSQL {major}"
        );
    }
}

/// Unmounts a test filesystem however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The backup's own WAL streaming runs out of space on the spool: the error names the file
/// and the cause, the backup is listed as stored but not restorable, no slot is left.
#[test]
fn bad_input_disk_full_on_the_spool() {
    if !is_root() {
        eprintln!("SKIPPED bad_input_disk_full_on_the_spool: mounting a 1 MiB tmpfs as wal.spool_dir needs root");
        return;
    }
    let major = newest_major().expect("a PostgreSQL installation");
    let pg = PgCluster::start(major, ClusterOpts::default());
    pg.pgbench_init(2);
    // Slow enough that pgbench writes well over 1 MiB of WAL during the backup.
    let lb = Lb::for_cluster(&pg, &format!("{SMALL_PARTS}max_rate = 4096\n"));
    std::fs::create_dir_all(&lb.spool).unwrap();
    let mut mount = Command::new("mount");
    mount
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&lb.spool);
    run_ok(&mut mount, Duration::from_secs(30));
    let _mounted = Mount(lb.spool.clone());
    let mut bench = pg.pgbench(600, 2);
    let out = lb.run(&["backup", "--fast"], Duration::from_secs(600));
    let _ = bench.kill();
    let _ = bench.wait();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = lb.list_json();
    let b = &list["backups"][0];
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(b["restorable"], false, "{list}");
    let (id, start, end) = (
        b["id"].as_str().unwrap(),
        b["start_lsn"].as_str().unwrap(),
        b["end_lsn"].as_str().unwrap(),
    );
    let seg = seg_name(1, parse_lsn(start), pg.wal_segment_size());
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: backup {id} is stored but not restorable: archiving its WAL {start} – {end} on timeline 1 failed: writing spool file {}/backup-{id}/{seg}.partial: No space left on device (os error 28)\nhint: fix that and take a new backup, or keep a lifeboat stream running for this cluster",
            lb.spool.display()
        )
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\nhint: fix that and take a new backup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_no_backup_slots(&pg);
    // The failed session's spool is cleaned up (the manifests kept for incremental
    // backups, `manifests/`, are host state, not the session's).
    let left: Vec<_> = std::fs::read_dir(&lb.spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.ends_with("manifests"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
