//! `lifeboat prune` on real PostgreSQL and two real providers: the plan (`--dry-run`,
//! `--explain`) matches what is done, the kept point restores, `verify` is clean, a second
//! run deletes nothing, and a provider that lacks part of a backup keeps its older anchor on
//! that provider only.

use std::time::Duration;

use crate::restore::restore_and_start;
use crate::support::*;

/// A policy whose window is one day and whose calendar tiers are off: two days on, only
/// the newest backup and the WAL from its start are needed.
const POLICY: &str = "[retention]\npitr_days = 1\ndaily_days = 0\nweekly_weeks = 0\nmonthly_months = 0\nmin_backups = 1\n";

fn in_days(pg: &PgCluster, days: u32) -> String {
    pg.psql(&format!(
        "SELECT to_char((now() + interval '{days} days') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'"
    ))
}

/// The cluster's workspace with a second `file://` provider and the test policy.
fn with_second_provider(pg: &PgCluster) -> (Lb, tempfile::TempDir) {
    let second = tempfile::tempdir().unwrap();
    let lb = Lb::for_cluster(
        pg,
        &format!(
            "{SMALL_PARTS}[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n\n{POLICY}",
            second.path().display()
        ),
    );
    (lb, second)
}

fn backup_ids(lb: &Lb) -> Vec<String> {
    lb.list_json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_keeps_the_window_and_deletes_the_rest_in_order() {
    let pg = PgCluster::start(15, ClusterOpts::default());
    let (lb, second) = with_second_provider(&pg);
    pg.psql("CREATE TABLE t (id int, src text)");
    pg.psql("INSERT INTO t SELECT g, 'first' FROM generate_series(1, 1000) g");
    let streamer = lb.start_streamer(&pg);
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup 1",
    );
    pg.psql("INSERT INTO t SELECT g, 'between' FROM generate_series(1001, 2000) g");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT g, 'between' FROM generate_series(2001, 3000) g");
    pg.switch_wal();
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup 2",
    );
    pg.psql("INSERT INTO t SELECT g, 'last' FROM generate_series(3001, 3100) g");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let ids = backup_ids(&lb);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (old, new) = (ids[0].clone(), ids[1].clone());
    // Logical copies by the same policy: a dump, and an export put twice (each set keeps
    // its newest; the older put goes, marker first).
    pg.psql("GRANT pg_read_all_data TO lifeboat");
    expect_success(&lb.run(&["dump"], Duration::from_secs(600)), "dump");
    let export = lb.dir.path().join("ghost.json");
    std::fs::write(&export, b"{\"posts\": []}").unwrap();
    for _ in 0..2 {
        expect_success(
            &lb.run(
                &["put", "ghost", export.to_str().unwrap()],
                Duration::from_secs(60),
            ),
            "put",
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    let puts: Vec<String> = lb.list_json()["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    // Leftovers of writes a crash interrupted (hidden from every reader), one inside the
    // backup that stays: swept once older than the grace period (the plan's now is 3 days on).
    let leftovers = [
        "wal/00000001/.tmp.000000010000000000000009.seg.77".to_string(),
        format!("backups/{new}/.tmp.base.tar.000099.5"),
    ];
    for l in &leftovers {
        std::fs::write(lb.archive.join(l), b"half").unwrap();
    }
    let wal_before = lb.archive_files("wal/");
    let later = in_days(&pg, 3);

    // The plan, without acting on it.
    let dry = lb.run_ok(
        &["prune", "--dry-run", "--now", &later],
        Duration::from_secs(120),
    );
    assert!(dry.contains(&format!("anchor {new}")), "{dry}");
    assert!(
        dry.contains(&format!("keep   {new:<20} pitr,newest")),
        "{dry}"
    );
    assert!(dry.contains("delete 1 backups ("), "{dry}");
    assert!(
        dry.contains(&format!("keep   exports/ghost/{} newest", puts[1])),
        "{dry}"
    );
    assert!(
        dry.contains("delete 1 dumps, exports and SQLite snapshots (2 objects)"),
        "{dry}"
    );
    assert!(dry.contains("dry run: nothing was deleted"), "{dry}");
    assert_eq!(backup_ids(&lb), ids);
    assert_eq!(lb.archive_files("wal/"), wal_before);
    let why = lb.run_ok(
        &["prune", "--explain", &old, "--now", &later],
        Duration::from_secs(120),
    );
    assert!(
        why.contains(&format!(
            "storage \"local\": {old} deleted: older than the PITR window's anchor {new}"
        )),
        "{why}"
    );
    let why = lb.run_ok(
        &["prune", "--explain", &new, "--now", &later],
        Duration::from_secs(120),
    );
    assert!(
        why.contains(&format!("storage \"second\": {new} kept by pitr, newest")),
        "{why}"
    );
    let planned = json_of(&lb.run(
        &["--json", "prune", "--dry-run", "--now", &later],
        Duration::from_secs(120),
    ));

    // Done as planned, on both providers.
    let done = lb.run(
        &["--json", "prune", "--now", &later],
        Duration::from_secs(120),
    );
    let done = json_of(&done);
    for (i, p) in done["providers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            p["plan"]["delete"],
            planned["providers"][i]["plan"]["delete"]
        );
        assert_eq!(
            p["deleted"].as_u64().unwrap() as usize,
            p["plan"]["delete"].as_array().unwrap().len()
        );
        assert!(p["refused"].as_array().unwrap().is_empty(), "{p}");
        // The marker went first.
        assert_eq!(
            p["plan"]["delete"][0]["key"],
            format!("backups/{old}/backup.json"),
            "{p}"
        );
    }
    assert_eq!(backup_ids(&lb), vec![new.clone()]);
    let after = lb.list_json();
    assert_eq!(after["dumps"].as_array().unwrap().len(), 1, "{after}");
    let left: Vec<&str> = after["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec![puts[1].as_str()]);
    let gone = done["providers"][0]["plan"]["delete"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["key"].as_str().unwrap().starts_with("exports/"))
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["why"].as_str().unwrap().to_string(),
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(
        gone[0],
        (
            format!("exports/ghost/{}/export.json", puts[0]),
            "expired_copy".to_string()
        ),
        "{gone:?}"
    );
    assert!(
        gone[1..].iter().all(|g| g.1 == "expired_copy_part"
            && g.0.starts_with(&format!("exports/ghost/{}/", puts[0]))),
        "{gone:?}"
    );
    let mut swept: Vec<&str> = done["providers"][0]["plan"]["delete"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["why"] == "temporary")
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    swept.sort();
    let mut want: Vec<&str> = leftovers.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(swept, want);
    for l in &leftovers {
        assert!(!lb.archive.join(l).exists(), "{l}");
    }
    for dir in [lb.archive.clone(), second.path().to_path_buf()] {
        assert!(
            !files(&dir)
                .iter()
                .any(|f| f.starts_with(&format!("backups/{old}/"))),
            "{}",
            dir.display()
        );
        assert!(
            files(&dir)
                .iter()
                .any(|f| f.starts_with("prune/") && f.ends_with(".json")),
            "report on {}",
            dir.display()
        );
    }
    let wal_after = lb.archive_files("wal/");
    assert!(wal_after.len() < wal_before.len(), "{wal_after:?}");
    let (ok, report) = lb.verify(true);
    assert!(ok, "{report}");
    assert!(lb
        .run(&["verify", "--providers"], Duration::from_secs(120))
        .status
        .success());
    // Idempotent.
    let again = json_of(&lb.run(
        &["--json", "prune", "--now", &later],
        Duration::from_secs(120),
    ));
    for p in again["providers"].as_array().unwrap() {
        assert_eq!(p["plan"]["delete"].as_array().unwrap().len(), 0, "{p}");
    }
    // The kept point restores, to the end.
    let work = tempfile::tempdir().unwrap();
    let restored = restore_and_start(&lb, 15, work.path(), &[]);
    assert_eq!(
        restored.psql("SELECT src, count(*) FROM t GROUP BY src ORDER BY src"),
        "between|2000\nfirst|1000\nlast|100"
    );
}

/// Each provider is planned from its own listing: one that lacks a part of the newest
/// backup keeps the older backup as its anchor; the other prunes it.
#[test]
fn a_provider_missing_part_of_a_backup_keeps_the_older_anchor() {
    let pg = PgCluster::start(15, ClusterOpts::default());
    let (lb, second) = with_second_provider(&pg);
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let streamer = lb.start_streamer(&pg);
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup 1",
    );
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup 2",
    );
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    let ids = backup_ids(&lb);
    let (old, new) = (ids[0].clone(), ids[1].clone());
    std::fs::remove_file(second.path().join(format!("backups/{new}/base.tar.000000"))).unwrap();
    let later = in_days(&pg, 3);
    let out = json_of(&lb.run(
        &["--json", "prune", "--now", &later],
        Duration::from_secs(120),
    ));
    let p = out["providers"].as_array().unwrap();
    assert_eq!(p[0]["plan"]["anchor"], new.as_str());
    assert_eq!(p[1]["plan"]["anchor"], old.as_str());
    assert_eq!(p[1]["plan"]["unrestorable"][0], new.as_str());
    assert!(files(&lb.archive)
        .iter()
        .all(|f| !f.starts_with(&format!("backups/{old}/"))));
    assert!(files(second.path()).contains(&format!("backups/{old}/backup.json")));
}

/// The same on both S3 test servers (moto and s3s-fs, beside the local store): the old
/// backup's objects and the WAL before the kept backup leave every provider, the kept point
/// restores, and each provider holds the run's record.
#[test]
fn prune_on_both_s3_servers() {
    use crate::support::s3::{cred_env, Kind, S3Server};
    let pg = PgCluster::start(15, ClusterOpts::default());
    let moto = S3Server::start(Kind::Moto);
    let fs = S3Server::start(Kind::S3sFs);
    moto.create_bucket("archive", false);
    fs.create_bucket("archive", false);
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "{SMALL_PARTS}{}\n{}\n{POLICY}",
            moto.storage_toml("moto", "archive", "pg", ""),
            fs.storage_toml("s3s-fs", "archive", "pg", "")
        ),
    );
    let run = |args: &[&str]| {
        let mut c = lb.cmd();
        c.args(args).envs(cred_env());
        run_timeout(&mut c, Duration::from_secs(600), None).unwrap()
    };
    pg.psql("CREATE TABLE t (id int, src text)");
    pg.psql("INSERT INTO t SELECT g, 'first' FROM generate_series(1, 1000) g");
    let end = pg.current_lsn();
    expect_success(&run(&["stream", "--endpos", &end]), "stream");
    expect_success(&run(&["backup", "--fast"]), "backup 1");
    pg.psql("INSERT INTO t SELECT g, 'between' FROM generate_series(1001, 2000) g");
    pg.switch_wal();
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(&run(&["backup", "--fast"]), "backup 2");
    pg.psql("INSERT INTO t SELECT g, 'last' FROM generate_series(2001, 2100) g");
    let end = pg.switch_wal();
    expect_success(&run(&["stream", "--endpos", &end]), "stream to the end");
    let list = json_of(&run(&["--json", "list"]));
    let ids: Vec<String> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    let old = &ids[0];
    let first_wal = moto
        .keys("archive")
        .into_iter()
        .find(|k| k.starts_with("pg/wal/"))
        .unwrap();

    let later = in_days(&pg, 3);
    let out = run(&["--json", "prune", "--now", &later]);
    let done = json_of(&out);
    for p in done["providers"].as_array().unwrap() {
        assert!(
            p["error"].is_null() && p["refused"].as_array().unwrap().is_empty(),
            "{p}"
        );
        assert!(p["deleted"].as_u64().unwrap() > 0, "{p}");
    }
    for srv in [&moto, &fs] {
        let keys = srv.keys("archive");
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with(&format!("pg/backups/{old}/"))),
            "{}: {keys:?}",
            srv.kind.name()
        );
        assert!(
            !keys.contains(&first_wal),
            "{}: {first_wal}",
            srv.kind.name()
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("pg/prune/") && k.ends_with(".json")),
            "{}: {keys:?}",
            srv.kind.name()
        );
    }
    let again = json_of(&run(&["--json", "prune", "--now", &later]));
    for p in again["providers"].as_array().unwrap() {
        assert_eq!(p["plan"]["delete"].as_array().unwrap().len(), 0, "{p}");
    }
    // The kept point restores from S3 alone (the local store emptied first).
    std::fs::remove_dir_all(&lb.archive).unwrap();
    std::fs::create_dir_all(&lb.archive).unwrap();
    for (k, v) in cred_env() {
        std::env::set_var(k, v);
    }
    let work = tempfile::tempdir().unwrap();
    let restored = restore_and_start(&lb, 15, work.path(), &[]);
    assert_eq!(
        restored.psql("SELECT src, count(*) FROM t GROUP BY src ORDER BY src"),
        "between|1000\nfirst|1000\nlast|100"
    );
}

/// Two roles against moto enforcing IAM policies and Object Lock: the database host's
/// write-only credentials archive but cannot prune (refused before anything is done, with
/// the exact message); the vault's credentials raise the lock of every object the daily
/// tier keeps to its keep-until date, and the WAL no point needs, still under its default
/// lock, is refused by the server, reported, and stays. Nothing hides behind a delete marker.
#[test]
fn prune_with_object_lock_and_two_roles() {
    use crate::support::s3::{S3Server, KEY_VAR, SECRET_VAR};
    let pg = PgCluster::start(15, ClusterOpts::default());
    let (moto, keys) = S3Server::start_moto_with_iam("vault");
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "{SMALL_PARTS}{}\n[retention]\npitr_days = 1\ndaily_days = 30\nweekly_weeks = 0\nmonthly_months = 0\nmin_backups = 1\n",
            moto.storage_toml(
                "moto",
                "vault",
                "pg",
                "object_lock = { mode = \"governance\", days = 1 }"
            )
        ),
    );
    let run_as = |who: &(String, String), args: &[&str]| {
        let mut c = lb.cmd();
        c.args(args).env(KEY_VAR, &who.0).env(SECRET_VAR, &who.1);
        run_timeout(&mut c, Duration::from_secs(600), None).unwrap()
    };
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let end = pg.current_lsn();
    expect_success(&run_as(&keys.db, &["stream", "--endpos", &end]), "stream");
    expect_success(&run_as(&keys.db, &["backup", "--fast"]), "backup 1");
    pg.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    pg.switch_wal();
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(&run_as(&keys.db, &["backup", "--fast"]), "backup 2");
    let end = pg.switch_wal();
    expect_success(
        &run_as(&keys.db, &["stream", "--endpos", &end]),
        "stream to the end",
    );
    let archived = |srv: &S3Server| -> Vec<String> {
        srv.keys("vault")
            .into_iter()
            .filter(|k| !k.starts_with("pg/prune/"))
            .collect()
    };
    let before = archived(&moto);
    let later = in_days(&pg, 3);

    // The database host's credentials: refused before anything is done.
    let out = run_as(&keys.db, &["prune", "--now", &later]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).ends_with("error: storage \"moto\": these credentials may not delete (delete prune/.delete-probe: access denied (AccessDenied: Access Denied)), so prune did nothing there\nhint: prune runs on a vault or restore host whose [[storage]] credentials may delete objects and their versions and extend retention (docs/IAM.md); the database host keeps write-only credentials\n"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(archived(&moto), before);

    // The vault's credentials.
    let out = run_as(&keys.vault, &["--json", "prune", "--now", &later]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = json_of(&out);
    let p = report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "moto")
        .unwrap()
        .clone();
    let plan = &p["plan"];
    let daily = plan["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tiers"].as_array().unwrap().contains(&"daily".into()))
        .unwrap_or_else(|| panic!("no daily point: {plan}"));
    let keep_until = daily["keep_until"].as_str().unwrap().to_string();
    let retain = plan["retain"].as_array().unwrap();
    assert!(!retain.is_empty(), "{plan}");
    assert_eq!(p["locks_raised"].as_u64(), Some(retain.len() as u64), "{p}");
    // Each retained object's lock reads the kept point's date.
    let want = aws_sdk_s3::primitives::DateTime::from_str(
        &keep_until,
        aws_sdk_s3::primitives::DateTimeFormat::DateTime,
    )
    .unwrap()
    .secs();
    for r in retain {
        let key = format!("pg/{}", r["key"].as_str().unwrap());
        let got = moto
            .block_on(moto.client().head_object().bucket("vault").key(&key).send())
            .unwrap();
        assert_eq!(
            got.object_lock_retain_until_date().unwrap().secs(),
            want,
            "{key}"
        );
        assert_eq!(
            got.object_lock_mode().unwrap().as_str(),
            "GOVERNANCE",
            "{key}"
        );
    }
    // The daily point's own objects are among them.
    let id = daily["backup"].as_str().unwrap();
    assert!(retain
        .iter()
        .any(|r| r["key"] == format!("backups/{id}/backup.json").as_str()));
    // The WAL no point needs is still locked (1 day): refused, reported, still there.
    let refused = p["refused"].as_array().unwrap();
    assert!(!refused.is_empty(), "{p}");
    for f in refused {
        assert!(f["key"].as_str().unwrap().starts_with("wal/"), "{f}");
        assert!(
            f["error"].as_str().unwrap().contains("access denied"),
            "{f}"
        );
    }
    assert_eq!(p["deleted"].as_u64(), Some(0), "{p}");
    assert_eq!(archived(&moto), before);
    let versions = moto
        .block_on(
            moto.client()
                .list_object_versions()
                .bucket("vault")
                .prefix("pg/")
                .send(),
        )
        .unwrap();
    assert!(
        versions.delete_markers().is_empty(),
        "{:?}",
        versions.delete_markers()
    );
    let again = json_of(&run_as(&keys.vault, &["--json", "prune", "--now", &later]));
    let p = again["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "moto")
        .unwrap()
        .clone();
    // Again: the first run's record says every group reached its date, so no object is
    // asked again (a run per day would otherwise HEAD every kept part).
    assert_eq!(p["locks_raised"].as_u64(), Some(0), "{p}");
    assert_eq!(p["locks_held"].as_u64(), Some(0), "{p}");
    assert_eq!(
        p["locks_recorded"].as_u64(),
        Some(retain.len() as u64),
        "{p}"
    );
}

/// Cold storage on moto: the backup only the monthly tier keeps has its large parts tagged
/// for the bucket's lifecycle rule (DEEP_ARCHIVE), its `backup.json` and manifest stay
/// standard; a bucket without the rule refuses with the rule to add; once the provider has
/// moved the parts (done here as its rule would), the next run moves nothing.
#[test]
fn prune_moves_the_monthly_tier_to_the_cold_class() {
    use crate::support::s3::{cred_env, Kind, S3Server};
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
        MetadataDirective, StorageClass, Tag, Transition, TransitionStorageClass,
    };
    let pg = PgCluster::start(15, ClusterOpts::default());
    let moto = S3Server::start(Kind::Moto);
    moto.create_bucket("ruled", false);
    moto.create_bucket("plain", false);
    let rule = LifecycleRule::builder()
        .id("lifeboat-cold")
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .tag(
                    Tag::builder()
                        .key("lifeboat-cold")
                        .value("DEEP_ARCHIVE")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .transitions(
            Transition::builder()
                .days(0)
                .storage_class(TransitionStorageClass::DeepArchive)
                .build(),
        )
        .build()
        .unwrap();
    moto.block_on(
        moto.client()
            .put_bucket_lifecycle_configuration()
            .bucket("ruled")
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .rules(rule)
                    .build()
                    .unwrap(),
            )
            .send(),
    )
    .unwrap();
    let cold = "cold_storage_class = \"DEEP_ARCHIVE\"";
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "{SMALL_PARTS}{}\n{}\n[retention]\npitr_days = 1\ndaily_days = 0\nweekly_weeks = 0\nmonthly_months = 84\nmin_backups = 1\n",
            moto.storage_toml("ruled", "ruled", "pg", cold),
            moto.storage_toml("plain", "plain", "pg", cold)
        ),
    );
    let run = |args: &[&str]| {
        let mut c = lb.cmd();
        c.args(args).envs(cred_env());
        run_timeout(&mut c, Duration::from_secs(600), None).unwrap()
    };
    // Incompressible rows, so that parts are larger than the 128 KiB cold minimum.
    pg.psql("CREATE TABLE r AS SELECT md5(random()::text) || md5(random()::text) AS v FROM generate_series(1, 100000)");
    let end = pg.current_lsn();
    expect_success(&run(&["stream", "--endpos", &end]), "stream");
    expect_success(&run(&["backup", "--fast"]), "backup 1");
    std::thread::sleep(Duration::from_millis(1100));
    expect_success(&run(&["backup", "--fast"]), "backup 2");
    let end = pg.switch_wal();
    expect_success(&run(&["stream", "--endpos", &end]), "stream to the end");
    let ids = backup_ids(&lb);
    let monthly = &ids[0];
    let later = in_days(&pg, 3);

    let out = run(&["--json", "prune", "--now", &later]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = json_of(&out);
    let provider = |name: &str| {
        report["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == name)
            .unwrap()
            .clone()
    };
    let ruled = provider("ruled");
    let planned = ruled["cold"].as_array().unwrap();
    assert!(!planned.is_empty(), "{ruled}");
    assert!(
        planned.iter().all(|m| m["backup"] == monthly.as_str()),
        "{ruled}"
    );
    assert_eq!(ruled["moved_cold"].as_u64(), Some(planned.len() as u64));
    assert!(ruled["refused"].as_array().unwrap().is_empty(), "{ruled}");
    let tags = |bucket: &str, key: &str| -> Vec<(String, String)> {
        moto.block_on(
            moto.client()
                .get_object_tagging()
                .bucket(bucket)
                .key(format!("pg/{key}"))
                .send(),
        )
        .unwrap()
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect()
    };
    for m in planned {
        assert_eq!(
            tags("ruled", m["key"].as_str().unwrap()),
            vec![("lifeboat-cold".to_string(), "DEEP_ARCHIVE".to_string())]
        );
    }
    assert!(tags("ruled", &format!("backups/{monthly}/backup.json")).is_empty());
    assert!(tags("ruled", &format!("backups/{monthly}/backup_manifest")).is_empty());
    // The bucket without the rule: refused once, with the rule to add; nothing moved.
    let plain = provider("plain");
    assert_eq!(plain["moved_cold"].as_u64(), Some(0), "{plain}");
    let refused = plain["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{plain}");
    assert!(
        refused[0]["error"].as_str().unwrap().contains("bucket \"plain\" has no enabled lifecycle rule moving objects tagged lifeboat-cold=DEEP_ARCHIVE to DEEP_ARCHIVE\nhint: add this rule to the bucket's lifecycle configuration"),
        "{plain}"
    );

    // The provider's rule runs (moto stores rules but never runs them): each tagged part
    // copied onto itself in the class. The next run plans nothing for it.
    for m in planned {
        let key = format!("pg/{}", m["key"].as_str().unwrap());
        moto.block_on(
            moto.client()
                .copy_object()
                .bucket("ruled")
                .key(&key)
                .copy_source(format!("ruled/{key}"))
                .storage_class(StorageClass::DeepArchive)
                .metadata_directive(MetadataDirective::Copy)
                .send(),
        )
        .unwrap();
    }
    let again = json_of(&run(&["--json", "prune", "--now", &later]));
    let ruled = again["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "ruled")
        .unwrap()
        .clone();
    assert!(ruled["cold"].as_array().unwrap().is_empty(), "{ruled}");

    // The monthly point restores from its cold copy, thawed on the way: the local store
    // emptied, and the plain bucket's copy of that backup removed.
    std::fs::remove_dir_all(&lb.archive).unwrap();
    std::fs::create_dir_all(&lb.archive).unwrap();
    for key in moto.keys("plain") {
        if key.starts_with(&format!("pg/backups/{monthly}/")) {
            moto.block_on(
                moto.client()
                    .delete_object()
                    .bucket("plain")
                    .key(&key)
                    .send(),
            )
            .unwrap();
        }
    }
    for (k, v) in cred_env() {
        std::env::set_var(k, v);
    }
    let work = tempfile::tempdir().unwrap();
    let restored = restore_and_start(
        &lb,
        15,
        work.path(),
        &["--backup", monthly, "--target-immediate"],
    );
    assert_eq!(restored.psql("SELECT count(*) FROM r"), "100000");
    let head = moto
        .block_on(
            moto.client()
                .head_object()
                .bucket("ruled")
                .key(format!("pg/{}", planned[0]["key"].as_str().unwrap()))
                .send(),
        )
        .unwrap();
    assert!(head.restore().is_some(), "the cold part was not thawed");

    // A random drill prefers a backup readable at once: with the monthly point cold (and
    // its thaw since expired or not, it is the only copy), the newest is drilled. Twice:
    // a random pick lands on the cold one half the time.
    moto.block_on(
        moto.client()
            .copy_object()
            .bucket("ruled")
            .key(format!("pg/{}", planned[0]["key"].as_str().unwrap()))
            .copy_source(format!("ruled/pg/{}", planned[0]["key"].as_str().unwrap()))
            .storage_class(StorageClass::DeepArchive)
            .metadata_directive(MetadataDirective::Copy)
            .send(),
    )
    .unwrap();
    for _ in 0..2 {
        let (code, rep, err) = crate::restore::drill(&lb, 15, &["--backup", "random"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(rep["backup"], ids[1].as_str(), "{rep}");
    }
}
