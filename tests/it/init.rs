//! `lifeboat init` against a real cluster: the key pair (the real `age-keygen -y` agrees on
//! the recipient), the configuration (accepted by the other commands, never overwritten),
//! and the server checks with their hints; `--apply` fixes what the role may.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn init(args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.args(args);
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr_of(&out),
    )
}

#[test]
fn init_writes_keys_and_config_and_checks_the_server() {
    for major in fifteen_and_newest_majors() {
        init_on(major);
    }
}

fn init_on(major: u32) {
    let pg = PgCluster::start(
        major,
        ClusterOpts::default().conf("max_slot_wal_keep_size = '1GB'"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lifeboat.toml");
    let id = dir.path().join("identity.txt");
    let archive = format!("file://{}", dir.path().join("archive").display());
    let conninfo = pg.conninfo(REPL_USER, Some(REPL_PASSWORD));
    let (code, out, err) = init(&[
        "--config",
        cfg.to_str().unwrap(),
        "init",
        "--identity-out",
        id.to_str().unwrap(),
        "--archive",
        &archive,
        "--conninfo",
        &conninfo,
        "--spool-dir",
        dir.path().join("spool").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The recipient printed is the identity's, by age's own tool; the secret is not printed.
    let keygen = Command::new("age-keygen")
        .arg("-y")
        .arg(&id)
        .output()
        .unwrap();
    let recipient = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    assert!(out.contains(&format!("recipient: {recipient}\n")), "{out}");
    assert!(!out.contains("AGE-SECRET-KEY"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for line in [
        &format!("ok    PostgreSQL {major} (lifeboat supports 14 to 18)\n"),
        "ok    wal_level = replica\n",
        "ok    role lifeboat may replicate\n",
        "ok    a replication connection is accepted (pg_hba.conf)\n",
        "warn  max_slot_wal_keep_size = 1GB: past it the server invalidates lifeboat's slot",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // The configuration is one the other commands take, with the recipient in it.
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains(&format!("recipients = [\"{recipient}\"]")),
        "{text}"
    );
    // ...and `stream` runs with it unchanged: the WAL up to now reaches the archive.
    let end = pg.switch_wal();
    let mut stream = Command::new(BIN);
    stream.args([
        "--config",
        cfg.to_str().unwrap(),
        "stream",
        "--endpos",
        &end,
    ]);
    let streamed = run_timeout(&mut stream, Duration::from_secs(300), None).unwrap();
    assert!(streamed.status.success(), "{}", stderr_of(&streamed));
    assert!(dir.path().join("archive/archive.json").exists());
    // Never over an existing file.
    let (code, _, err) = init(&[
        "--config",
        cfg.to_str().unwrap(),
        "init",
        "--recipient",
        &recipient,
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        format!(
            "error: {} already exists: init does not overwrite it\nhint: pass --force to replace it, or give another path\n",
            cfg.display()
        )
    );

    // A role without REPLICATION: the failing line, its SQL, exit 1.
    let (code, out, err) = init(&[
        "init",
        "--check",
        "--conninfo",
        &pg.conninfo(NOREPL_USER, Some(NOREPL_PASSWORD)),
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAIL  role norepl lacks the REPLICATION attribute\n      hint: as a superuser: ALTER ROLE \"norepl\" REPLICATION;\n"),
        "{out}"
    );
    assert!(
        err.starts_with("error: the server is not ready for lifeboat\n"),
        "{err}"
    );

    // --apply as the superuser fixes the slot limit; the next check is clean.
    let su = format!(
        "host={} port={} user={SUPERUSER}",
        pg.socket_dir.display(),
        pg.port
    );
    let (code, out, err) = init(&["init", "--check", "--apply", "--conninfo", &su]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("applied: ALTER SYSTEM SET max_slot_wal_keep_size = -1\n"),
        "{out}"
    );
    let (code, out, _) = init(&["init", "--check", "--conninfo", &su]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok    max_slot_wal_keep_size = -1: the server never drops WAL lifeboat has not archived\n"),
        "{out}"
    );
}

/// A server that cannot stream at all (`wal_level = minimal`, no WAL senders) and one whose
/// senders are taken: each failing line with its exact hint; `--apply` as the superuser
/// writes the settings, and after the restart they are ok.
#[test]
fn init_names_what_the_server_lacks_and_apply_fixes_it() {
    for major in fifteen_and_newest_majors() {
        let pg = PgCluster::start(
            major,
            ClusterOpts::default()
                .conf("wal_level = minimal")
                .conf("max_wal_senders = 0"),
        );
        let su = format!(
            "host={} port={} user={SUPERUSER}",
            pg.socket_dir.display(),
            pg.port
        );
        let (code, out, err) = init(&["init", "--check", "--conninfo", &su]);
        assert_eq!(code, Some(1), "{out}{err}");
        for line in [
            "FAIL  wal_level = minimal: physical replication needs replica\n      hint: ALTER SYSTEM SET wal_level = 'replica'; then restart the server\n",
            "FAIL  max_wal_senders = 0, 0 in use by others: lifeboat needs 2 (the streamer and a backup)\n      hint: ALTER SYSTEM SET max_wal_senders = 2; then restart the server\n",
        ] {
            assert!(out.contains(line), "{line}: {out}");
        }
        assert!(
            err.starts_with("error: the server is not ready for lifeboat\n"),
            "{err}"
        );
        let (_, out, err) = init(&["init", "--check", "--apply", "--conninfo", &su]);
        for line in [
            "applied: ALTER SYSTEM SET wal_level = 'replica'\n",
            "applied: ALTER SYSTEM SET max_wal_senders = 2\n",
        ] {
            assert!(out.contains(line), "{line}: {out}{err}");
        }
        pg.restart();
        let (code, out, err) = init(&["init", "--check", "--conninfo", &su]);
        assert!(out.contains("ok    wal_level = replica\n"), "{out}{err}");
        assert!(
            out.contains(
                "ok    max_wal_senders = 2, 0 in use by others: room for the streamer and a backup\n"
            ),
            "{out}{err}"
        );
        assert_eq!(code, Some(0), "{out}{err}");

        // lifeboat's own streamer running: its sender is one of the two, still ok.
        let lb = Lb::for_cluster(&pg, "");
        let streamer = lb.start_streamer(&pg);
        let (code, out, _) = init(&["init", "--check", "--conninfo", &su]);
        assert_eq!(code, Some(0), "{out}");
        stop_streamer(streamer);
        // Another tool holds a sender (pg_receivewal): one left, not enough.
        let wal = tempfile::tempdir().unwrap();
        let mut other = spawn_pg_receivewal(&pg, wal.path(), "other", None);
        pg.wait_for(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
            "1",
            Duration::from_secs(60),
        );
        let (code, out, _) = init(&["init", "--check", "--conninfo", &su]);
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("FAIL  max_wal_senders = 2, 1 in use by others: lifeboat needs 2 (the streamer and a backup)\n      hint: ALTER SYSTEM SET max_wal_senders = 3; then restart the server\n"),
            "{out}"
        );
    }
}
