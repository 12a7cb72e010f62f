//! Key custody against a real cluster and the real binary: an identity readable on the
//! database host is a WARNING (`keys check`, `status`); the streamer writes the key canary
//! at start; the restore host proves its identity against it (the right one passes, a
//! wrong one is named with the recipients it cannot match); a drill proves it too and
//! records it; a recipient set replaced outright is refused at start, and once accepted, a
//! drill with the old identity fails on the key check.

use std::time::Duration;

use crate::restore::drill;
use crate::support::s3::cred_env;
use crate::support::*;

const T: Duration = Duration::from_secs(120);

/// `lifeboat --identity ID keys check` with the workspace's config.
fn prove(lb: &Lb, identity: &std::path::Path) -> std::process::Output {
    let mut c = lb.cmd();
    c.arg("--identity").arg(identity).args(["keys", "check"]);
    run_timeout(&mut c, T, None).unwrap()
}

fn canary_of(lb: &Lb) -> Vec<String> {
    lb.archive_files("keys/")
}

#[test]
fn custody_canary_drill_and_recipient_change() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let mut lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 500) AS id");
    let recipient = String::from_utf8(
        std::process::Command::new("age-keygen")
            .arg("-y")
            .arg(&lb.identity)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    // The identity sits beside the configuration (the test workspace is both hosts):
    // on the database host that is a WARNING, exit 1, naming the file and its recipient.
    let out = lb.run(&["keys", "check"], T);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!(
            "WARNING: {} (the configuration's directory) holds the identity of recipient {recipient}, which decrypts this archive: the database host must not hold it\n\
             hint: keep it on the restore host (and an offline copy) and remove it here; this host needs only encryption.recipients\n\
             canary: keys/canary-{}.json is not in the archive yet (lifeboat stream, backup and init write it)\n\
             keys: WARNING\n",
            lb.identity.display(),
            digest(&recipient)
        )
    );
    // status says it too (degraded), under the other checks.
    let out = lb.run(&["status"], T);
    let text = stdout_of(&out);
    assert!(
        text.contains(&format!(
            "DEGRADED  keys      {} (the configuration's directory) holds the identity of recipient {recipient}, which decrypts this archive: the database host must not hold it\n                    hint: keep it on the restore host (and an offline copy) and remove it here; this host needs only encryption.recipients\n",
            lb.identity.display()
        )),
        "{text}"
    );

    // The identity moves to the "restore host" (a directory no search covers).
    let vault = lb.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let moved = vault.join("identity.txt");
    std::fs::rename(&lb.identity, &moved).unwrap();
    lb.identity = moved.clone();

    // The streamer writes the canary of the configured recipients at start.
    let streamer = lb.start_streamer(&pg);
    let canary = canary_of(&lb);
    assert_eq!(canary.len(), 1, "{canary:?}");
    let key = canary[0].clone();
    assert_eq!(key, format!("keys/canary-{}.json", digest(&recipient)));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lb.archive.join(&key)).unwrap()).unwrap();
    assert_eq!(record["recipients"], serde_json::json!([recipient]));
    assert!(
        !String::from_utf8_lossy(&std::fs::read(lb.archive.join(&key)).unwrap())
            .contains("AGE-SECRET-KEY"),
        "the canary holds no identity"
    );

    // Nothing readable here now: OK, and the canary is there.
    let out = lb.run(&["keys", "check"], T);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!(
            "ok: no identity that decrypts the archive is readable on this host\n\
             canary: {key} on 1 of 1 providers; prove the restore host's identity with lifeboat keys check --identity FILE there\n\
             keys: OK\n"
        )
    );

    // The restore host: the right identity opens the canary...
    let out = prove(&lb, &moved);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!(
            "ok: identity {} ({recipient}) opens {key} (recipients: {recipient})\n",
            moved.display()
        )
    );
    // ...a wrong one is named, with the recipients it cannot match.
    let (wrong, wrong_recipient) = keygen(&vault, "wrong.txt");
    let out = prove(&lb, &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        format!(
            "error: identity {} (public key {wrong_recipient}) is not one of the recipients of {key}: {recipient}; it cannot decrypt this archive\n\
             hint: use the identity whose public key is in encryption.recipients (age-keygen -y FILE prints a file's public key)\n",
            wrong.display()
        )
    );

    // A drill proves the key and records it; status reports it.
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup",
    );
    wait_caught_up(&pg, T, &lb);
    let (code, rep, err) = drill(&lb, major, &["--backup", "latest", "--target", "latest"]);
    assert_eq!(code, Some(0), "{rep:#}\n{err}");
    assert_eq!(rep["key_check"]["ok"], true, "{rep:#}");
    assert_eq!(rep["key_check"]["canary"], key.as_str(), "{rep:#}");
    assert_eq!(
        rep["key_check"]["identity_recipients"],
        serde_json::json!([recipient])
    );
    let id = rep["id"].as_str().unwrap().to_string();
    let recorded: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lb.archive.join(format!("drills/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(recorded["key_check"]["ok"], true, "{recorded:#}");
    let out = lb.run(&["status"], T);
    let text = stdout_of(&out);
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "ok        keys      no identity that decrypts the archive is readable here; drill {id} proved the restore host's identity "
        )) && l.ends_with(" ago")),
        "{text}"
    );

    // The recipients replaced outright (a new key nobody has proven): refused at start.
    stop_streamer(streamer);
    let (new_id, new_recipient) = keygen(&vault, "new.txt");
    let cfg = std::fs::read_to_string(&lb.config).unwrap();
    std::fs::write(
        &lb.config,
        cfg.replace(
            &format!("[\"{recipient}\"]"),
            &format!("[\"{new_recipient}\"]"),
        ),
    )
    .unwrap();
    let end = pg.switch_wal();
    let out = lb.run(&["stream", "--endpos", &end], Duration::from_secs(300));
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        format!(
            "error: encryption.recipients ({new_recipient}) shares no recipient with the sets this archive was written for ({recipient}): no identity is known to decrypt what would be written now\n\
             hint: keep an old recipient beside the new one until the restore host has proven the new identity (lifeboat keys check --identity NEW_IDENTITY), or, once the new identity is safely on the restore host, start once with --accept-new-recipients\n"
        )
    );
    assert_eq!(canary_of(&lb), vec![key.clone()], "nothing written");
    // Accepted: the streamer starts, and the archive holds the new set's canary.
    let out = lb.run(
        &["stream", "--endpos", &end, "--accept-new-recipients"],
        Duration::from_secs(300),
    );
    expect_success(&out, "stream --accept-new-recipients");
    let now = canary_of(&lb);
    assert_eq!(now.len(), 2, "{now:?}");
    let new_key = now.iter().find(|k| **k != key).unwrap().clone();
    // The old identity no longer opens what is written now: a drill fails on the key
    // check, with the message; the new identity passes.
    let (code, rep, err) = drill(&lb, major, &["--backup", "latest", "--target", "latest"]);
    assert_eq!(code, Some(1), "{rep:#}\n{err}");
    assert_eq!(rep["key_check"]["ok"], false, "{rep:#}");
    assert_eq!(
        rep["error"].as_str().unwrap(),
        format!(
            "identity {} (public key {recipient}) is not one of the recipients of {new_key}: {new_recipient}; it cannot decrypt this archive\n\
             hint: use the identity whose public key is in encryption.recipients (age-keygen -y FILE prints a file's public key)",
            moved.display()
        )
    );
    assert_eq!(
        rep["key_check"]["other_canaries"],
        serde_json::json!([{"canary": key, "recipients": [recipient], "created_at": record["created_at"], "opens": true}]),
        "{rep:#}"
    );
    // The new identity opens what is written now, and says what it cannot open: the WAL
    // and backups written for the old set.
    let out = prove(&lb, &new_id);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!(
            "ok: identity {} ({new_recipient}) opens {new_key} (recipients: {new_recipient})\n\
             note: {key} (recipients: {recipient}, from {}) does not open with this identity: what was written for that set needs its identity\n",
            new_id.display(),
            record["created_at"].as_str().unwrap()
        )
    );
    // A set that keeps a recipient of the archive's (adding one) starts without a flag.
    let (_, third) = keygen(&vault, "third.txt");
    let cfg = std::fs::read_to_string(&lb.config).unwrap();
    std::fs::write(
        &lb.config,
        cfg.replace(
            &format!("[\"{new_recipient}\"]"),
            &format!("[\"{new_recipient}\", \"{third}\"]"),
        ),
    )
    .unwrap();
    let end = pg.switch_wal();
    expect_success(
        &lb.run(&["stream", "--endpos", &end], Duration::from_secs(300)),
        "stream with a recipient added",
    );
    assert_eq!(canary_of(&lb).len(), 3);
}

/// The digest that names a one-recipient set, computed here as docs/FORMAT.md defines it:
/// the first 8 bytes of the SHA-256 of the recipient and a newline, in hex.
fn digest(recipient: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{recipient}\n").as_bytes());
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The canary on S3 (moto with Object Lock, s3s-fs) beside a file store: written to every
/// provider at the streamer's start, proven from S3 alone when the file store lost it,
/// copied back (the same bytes) at the next start.
#[test]
fn canary_on_s3_providers() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let (moto, fs, extra) = crate::s3::two_s3_providers();
    let lb = Lb::for_cluster(&pg, &extra);
    let stream = |end: &str| {
        let mut c = lb.cmd();
        c.args(["stream", "--endpos", end]).envs(cred_env());
        let out = run_timeout(&mut c, Duration::from_secs(180), None).unwrap();
        expect_success(&out, "stream --endpos");
    };
    stream(&pg.switch_wal());
    let local = lb.archive_files("keys/");
    assert_eq!(local.len(), 1, "{local:?}");
    let key = local[0].clone();
    let bytes = std::fs::read(lb.archive.join(&key)).unwrap();
    for (name, srv) in [("moto", &moto), ("s3s-fs", &fs)] {
        assert!(
            srv.keys("archive").contains(&format!("pg/{key}")),
            "{name}: {:?}",
            srv.keys("archive")
        );
    }
    // The file store loses it: the restore host proves its identity from S3.
    std::fs::remove_file(lb.archive.join(&key)).unwrap();
    let mut c = lb.cmd();
    c.arg("--identity")
        .arg(&lb.identity)
        .args(["keys", "check"])
        .envs(cred_env());
    let out = run_timeout(&mut c, T, None).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).starts_with(&format!("ok: identity {} (", lb.identity.display()))
            && stdout_of(&out).contains(&format!(") opens {key} (recipients: ")),
        "{}",
        stdout_of(&out)
    );
    // The next start copies the same canary back.
    pg.psql("CREATE TABLE t AS SELECT 1 AS x");
    stream(&pg.switch_wal());
    assert_eq!(std::fs::read(lb.archive.join(&key)).unwrap(), bytes);
}
