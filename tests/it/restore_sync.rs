//! `restore` at the disk's limit: `--sync-method fsync|syncfs`, `global/pg_control` written
//! last, a `kill -9` in the middle of a restore, and the `O_DIRECT` fallback. The oracles
//! are PostgreSQL itself (it starts and has the rows, or refuses to start),
//! `pg_verifybackup` (every restored byte against the backup manifest), and lifeboat's own
//! refusal to reuse a half-written directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::restore::{restore, stream_and_backup};
use crate::support::*;

/// A cluster with `mb` MiB in table `big` (files of many 1 MiB chunks, for the direct
/// path) and a few small tables; backed up, its WAL archived.
fn backed_up(mb: u32) -> (PgCluster, Lb, u32) {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, "[backup]\npart_size = \"4MiB\"\n");
    // ~150 bytes a row on disk.
    let rows = mb as u64 * 1024 * 1024 / 150;
    pg.psql(&format!(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS t FROM generate_series(1, {rows}) g"
    ));
    pg.psql("CREATE TABLE small AS SELECT generate_series(1, 1234) AS id");
    let streamer = stream_and_backup(&pg, &lb);
    pg.psql("INSERT INTO small SELECT generate_series(1235, 2000)");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    (pg, lb, major)
}

/// `pg_verifybackup -n` on a restored directory: every file's size and checksum against
/// the backup manifest, read from disk (WAL is replayed later, not checked here).
fn verify_restored(major: u32, dir: &Path) {
    let mut c = clean_command(pg_bin_dir(major).join("pg_verifybackup"));
    c.arg("-n").arg(dir);
    let out = run_timeout(&mut c, Duration::from_secs(300), None).unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup {}: {}{}",
        dir.display(),
        stdout_of(&out),
        stderr_of(&out)
    );
}

fn expect_rows(restored: &PgCluster, rows: &str) {
    assert_eq!(
        restored.psql("SELECT count(*), sum(id) FROM small"),
        "2000|2001000"
    );
    assert_eq!(restored.psql("SELECT count(*) FROM big"), rows);
}

#[test]
fn restore_with_each_sync_method_starts_with_the_data() {
    let (pg, lb, major) = backed_up(24);
    let rows = pg.psql("SELECT count(*) FROM big");
    let work = tempfile::tempdir().unwrap();
    for method in ["fsync", "syncfs"] {
        let (out, dir) = restore(&lb, major, work.path(), &["--sync-method", method]);
        expect_success(&out, &format!("restore --sync-method {method}"));
        assert!(dir.join("global/pg_control").is_file(), "{method}");
        assert!(
            !dir.join("lifeboat.restore-incomplete").exists(),
            "{method}: the marker goes once pg_control is in place"
        );
        assert!(!dir.join("global/pg_control.lifeboat-tmp").exists());
        verify_restored(major, &dir);
        let restored = start_restored(major, &dir);
        expect_rows(&restored, &rows);
    }
    let out = lb.run_restore_bin(
        &[
            "restore",
            "--pgdata",
            "/nonexistent",
            "--sync-method",
            "fdatasync",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("invalid value 'fdatasync' for '--sync-method <METHOD>'"),
        "{}",
        stderr_of(&out)
    );
}

/// The crash test: `kill -9` of `lifeboat restore --sync-method syncfs` while it
/// writes. PostgreSQL refuses the directory (no global/pg_control), lifeboat refuses to
/// reuse it with the exact message, and `--force` then restores it whole.
#[test]
fn kill_9_mid_syncfs_restore_leaves_a_directory_nobody_starts() {
    let (pg, lb, major) = backed_up(160);
    let rows = pg.psql("SELECT count(*) FROM big");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data");
    let bin = pg_bin_dir(major);
    let mut child = KillOnDrop(
        Command::new(lb.restore_bin())
            .arg("--config")
            .arg(&lb.config)
            .arg("--identity")
            .arg(&lb.identity)
            .env_remove("LIFEBOAT_IDENTITY_FILE")
            .args(["-q", "restore", "--sync-method", "syncfs", "--pgdata"])
            .arg(&dir)
            .arg("--pg-bin")
            .arg(&bin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill once the big table's files are being written: well inside extraction.
    let big = pg.psql("SELECT pg_relation_filepath('big')");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            panic!("the restore ended ({st}) before it could be killed mid-way");
        }
        if std::fs::metadata(dir.join(&big)).is_ok_and(|m| m.len() > 0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the restore never wrote {big}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    kill9(&mut child.0);
    assert!(
        dir.join("lifeboat.restore-incomplete").is_file(),
        "the marker is there"
    );
    assert!(
        !dir.join("global/pg_control").exists(),
        "pg_control is written last: a killed restore has none"
    );

    // PostgreSQL refuses to start on it (run as the server user, on its own files).
    let conf = work.path().join("empty.conf");
    std::fs::write(&conf, "").unwrap();
    chown_tree_to_pg_user(&dir);
    chown_to_pg_user(&conf);
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut c = clean_command(bin.join("postgres"));
    c.arg("-D")
        .arg(&dir)
        .arg(format!("--config-file={}", conf.display()))
        .arg("-p")
        .arg(free_port().to_string())
        .arg("-c")
        .arg("listen_addresses=")
        .arg("-c")
        .arg(format!("unix_socket_directories={}", work.path().display()));
    let out = run_timeout(&mut as_pg_user(&c), Duration::from_secs(60), None).unwrap();
    assert!(!out.status.success(), "PostgreSQL must not start");
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "could not open file \"{}/global/pg_control\": No such file or directory",
            dir.display()
        )),
        "{err}"
    );

    // lifeboat refuses to reuse it, and says why.
    let out = lb.run_restore_bin(
        &[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--pg-bin",
            bin.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "--pgdata {} holds an interrupted restore (lifeboat.restore-incomplete is there; global/pg_control, which a restore writes last, is not): its files cannot be trusted\n    hint: pass --force to delete it and restore again",
            dir.display()
        )),
        "{err}"
    );

    // --force restores it whole.
    let out = lb.run_restore_bin(
        &[
            "restore",
            "--force",
            "--sync-method",
            "syncfs",
            "--pgdata",
            dir.to_str().unwrap(),
            "--pg-bin",
            bin.to_str().unwrap(),
        ],
        Duration::from_secs(600),
    );
    expect_success(&out, "restore --force over the interrupted restore");
    verify_restored(major, &dir);
    let restored = start_restored(major, &dir);
    expect_rows(&restored, &rows);
}

/// A file system that refuses `O_DIRECT` part-way (the fault stands in for the kernel's
/// EINVAL: tmpfs accepts direct I/O since Linux 6.6), on tmpfs: the restore goes on
/// buffered, every byte matches the manifest, PostgreSQL starts with the data.
#[test]
fn o_direct_refused_midway_on_tmpfs_falls_back_to_buffered() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let (pg, lb, major) = backed_up(24);
    let rows = pg.psql("SELECT count(*) FROM big");
    let work = tempfile::tempdir_in(shm).unwrap();
    let dir = work.path().join("data");
    let mut c = Command::new(lb.restore_bin());
    c.arg("--config")
        .arg(&lb.config)
        .arg("--identity")
        .arg(&lb.identity)
        .env_remove("LIFEBOAT_IDENTITY_FILE")
        .env("LIFEBOAT_FAULT_DIRECT_EINVAL", "3")
        .args(["restore", "--pgdata"])
        .arg(&dir)
        .arg("--pg-bin")
        .arg(pg_bin_dir(major));
    let out = run_timeout(&mut c, Duration::from_secs(600), None).unwrap();
    expect_success(&out, "restore with O_DIRECT refused after 3 writes");
    assert!(
        stderr_of(&out)
            .contains("the restore's file system refuses O_DIRECT: buffered writes from now on"),
        "{}",
        stderr_of(&out)
    );
    verify_restored(major, &dir);
    let restored = start_restored(major, &dir);
    expect_rows(&restored, &rows);
}
