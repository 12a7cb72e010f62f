//! Incremental base backups (PostgreSQL 17+) against real servers: `backup --incremental`
//! over UPLOAD_MANIFEST + BASE_BACKUP ( INCREMENTAL ), its tar index, and every fallback to
//! a full backup with its reason. The oracle is PostgreSQL's own `pg_combinebackup` run on
//! the chain rebuilt from the archive (decrypted, decompressed, extracted, with the
//! archived manifests), then `pg_verifybackup` on what it made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat::core::incremental::{plan_combine, BlockSource, Combine, TarMember};
use lifeboat::pipeline::Opener;

use crate::support::*;

/// `lifeboat --json backup ARGS`, which must succeed; its report.
fn backup_ok(lb: &Lb, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--fast"];
    a.extend_from_slice(args);
    crate::backup::backup_ok(lb, &a)
}

/// Backup `id` of the archive as a plain directory (base tar only), with its manifest.
fn materialise(lb: &Lb, id: &str, dest: &Path) -> (PathBuf, serde_json::Value) {
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
    let mut bytes = Vec::new();
    for p in meta["parts"].as_array().unwrap() {
        if p["tar"] == "base.tar" {
            bytes.extend_from_slice(&open(p["key"].as_str().unwrap()));
        }
    }
    std::fs::create_dir_all(dest).unwrap();
    tar::Archive::new(&bytes[..]).unpack(dest).unwrap();
    // Every indexed member is where the index says, with the recorded size.
    for m in meta["members"].as_array().unwrap() {
        let off = m["offset"].as_u64().unwrap() as usize;
        let size = m["size"].as_u64().unwrap() as usize;
        let path = m["path"].as_str().unwrap();
        let on_disk = std::fs::read(dest.join(path)).unwrap();
        assert_eq!(&bytes[off..off + size], &on_disk[..], "{id}: {path}");
        if let Some(h) = m.get("incremental") {
            let n = h["blocks"].as_array().unwrap().len() as u32;
            assert_eq!(&on_disk[..4], &0xd3ae1f0du32.to_le_bytes(), "{path}");
            assert_eq!(on_disk[4..8], n.to_le_bytes(), "{path}");
            assert_eq!(
                on_disk[8..12],
                (h["truncation_block_length"].as_u64().unwrap() as u32).to_le_bytes(),
                "{path}"
            );
        }
    }
    std::fs::write(
        dest.join("backup_manifest"),
        open(meta["manifest"]["key"].as_str().unwrap()),
    )
    .unwrap();
    (dest.to_path_buf(), meta)
}

fn incremental_members(meta: &serde_json::Value) -> usize {
    meta["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("incremental").is_some())
        .count()
}

fn chain(major: u32) {
    let mut opts = ClusterOpts::default().conf("summarize_wal = on");
    if major == 17 {
        // 17's initdb leaves data checksums off
        opts = opts.conf("wal_log_hints = on");
    }
    let pg = PgCluster::start(major, opts);
    pg.pgbench_init(2);
    let lb = Lb::for_cluster(&pg, &format!("{SMALL_PARTS}max_chain = 2\n"));
    let streamer = lb.start_streamer(&pg);

    // No parent yet: a full backup, saying why.
    let full = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        full["full_reason"],
        "the archive holds no earlier backup of this cluster to be incremental to"
    );
    assert!(full.get("incremental").is_none());
    assert_eq!(incremental_members(&full), 0);
    let full_id = full["id"].as_str().unwrap().to_string();

    // Growth, TRUNCATE, VACUUM FULL, a created and a dropped database.
    pg.psql("CREATE DATABASE gone");
    pg.psql("CREATE TABLE grow AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g");
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
    let inc1 = backup_ok(&lb, &["--incremental"]);
    assert!(inc1.get("full_reason").is_none(), "{inc1}");
    assert_eq!(inc1["incremental"]["parent"], full_id.as_str());
    assert_eq!(inc1["incremental"]["chain_length"], 1);
    assert_eq!(inc1["incremental"]["from_lsn"], full["start_lsn"]);
    assert!(incremental_members(&inc1) > 10, "{}", inc1["members"]);
    let inc1_id = inc1["id"].as_str().unwrap().to_string();

    pg.psql("TRUNCATE pgbench_history");
    pg.psql("VACUUM FULL pgbench_accounts");
    pg.psql("DROP DATABASE gone");
    pg.psql("CREATE DATABASE born");
    pg.psql("INSERT INTO grow SELECT g, 'y' FROM generate_series(20001, 30000) g");
    // Shrink: the table's tail deleted and cut off by VACUUM (TRUNCATE).
    pg.psql("DELETE FROM grow WHERE id > 15000");
    pg.psql("VACUUM (TRUNCATE true) grow");
    pg.psql("CREATE DATABASE copied STRATEGY FILE_COPY");
    let inc2 = backup_ok(&lb, &["--incremental=latest"]);
    assert_eq!(inc2["incremental"]["parent"], inc1_id.as_str());
    assert_eq!(inc2["incremental"]["chain_length"], 2);
    let inc2_id = inc2["id"].as_str().unwrap().to_string();

    // The chain is at max_chain = 2: full again, saying why; `full` picks the full backup.
    let capped = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        capped["full_reason"],
        format!(
            "the chain ending at backup {inc2_id} already has 2 incremental backups, [backup] max_chain = 2"
        )
    );
    let on_full = backup_ok(&lb, &["--incremental=full"]);
    assert_eq!(on_full["incremental"]["parent"], capped["id"]);
    assert_eq!(on_full["incremental"]["chain_length"], 1);
    stop_streamer(streamer);

    // `list` shows the chains.
    let list = lb.list_json();
    let parents: Vec<(String, Option<String>)> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["parent"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        parents,
        vec![
            (full_id.clone(), None),
            (inc1_id.clone(), Some(full_id.clone())),
            (inc2_id.clone(), Some(inc1_id.clone())),
            (capped["id"].as_str().unwrap().to_string(), None),
            (
                on_full["id"].as_str().unwrap().to_string(),
                Some(capped["id"].as_str().unwrap().to_string())
            ),
        ]
    );
    let text = lb.run_ok(&["list"], Duration::from_secs(60));
    assert!(
        text.contains(&format!("(incremental on {inc1_id}, chain 2)")),
        "{text}"
    );

    // The parent's manifest is neither on this host nor readable without the identity:
    // full, saying why; with encryption.identity_file the archived copy is used.
    let streamer = lb.start_streamer(&pg);
    let on_full_id = on_full["id"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(lb.spool.join("manifests")).unwrap();
    let no_manifest = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        no_manifest["full_reason"],
        format!(
            "the manifest of the parent backup {on_full_id} is not kept on this host ({}) and encryption.identity_file is not set to read the archived copy",
            lb.spool.join("manifests").join(format!("{on_full_id}.backup_manifest")).display()
        )
    );
    std::fs::remove_dir_all(lb.spool.join("manifests")).unwrap();
    let text = std::fs::read_to_string(&lb.config).unwrap().replace(
        "[encryption]\n",
        &format!(
            "[encryption]\nidentity_file = \"{}\"\n",
            lb.identity.display()
        ),
    );
    std::fs::write(&lb.config, text).unwrap();
    let from_archive = backup_ok(&lb, &["--incremental"]);
    assert_eq!(from_archive["incremental"]["parent"], no_manifest["id"]);

    // A parent from another cluster (its manifest's System-Identifier changed, same
    // length): the server refuses it; full, with the server's message and SQLSTATE.
    let cached = lb.spool.join("manifests").join(format!(
        "{}.backup_manifest",
        from_archive["id"].as_str().unwrap()
    ));
    let text = std::fs::read_to_string(&cached).unwrap();
    let sys = pg.system_identifier().to_string();
    let last = sys.chars().last().unwrap();
    let other = format!(
        "{}{}",
        &sys[..sys.len() - 1],
        if last == '1' { '2' } else { '1' }
    );
    let forged = text.replacen(&sys, &other, 1);
    assert_ne!(forged, text);
    std::fs::write(&cached, forged).unwrap();
    let refused = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        refused["full_reason"],
        format!("the server refused the incremental backup: system identifier in backup manifest is {other}, but database system identifier is {sys} (SQLSTATE XX000)")
    );
    assert!(refused.get("incremental").is_none());
    stop_streamer(streamer);

    // `restore --dry-run` shows the chain it will combine.
    let target = pg_tempdir("lbincr-");
    let (out, _) = crate::restore::restore(
        &lb,
        major,
        target.path(),
        &["--backup", &inc2_id, "--dry-run"],
    );
    let text = expect_success(&out, "restore --dry-run of an incremental backup");
    assert!(
        text.contains(&format!(
            "\nchain     {full_id} → {inc1_id} → {inc2_id} (full {full_id} + 2 incremental; restore combines them)\n"
        )),
        "{text}"
    );
    // A corrupt INCREMENTAL header in the index (backup.json is plain JSON; here its
    // truncation length for one file is changed): the streamed header disagrees, and the
    // restore refuses it by name.
    let meta_path = lb.archive.join(format!("backups/{inc2_id}/backup.json"));
    let good = std::fs::read(&meta_path).unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let m = meta["members"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| {
            m["incremental"]["blocks"]
                .as_array()
                .is_some_and(|b| !b.is_empty())
        })
        .expect("an INCREMENTAL file with blocks");
    let bad_path = m["path"].as_str().unwrap().to_string();
    let t = m["incremental"]["truncation_block_length"]
        .as_u64()
        .unwrap();
    m["incremental"]["truncation_block_length"] = (t + 1).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let bad_target = pg_tempdir("lbincr-");
    let (out, _) = crate::restore::restore(
        &lb,
        major,
        bad_target.path(),
        &["--backup", &inc2_id, "--target-immediate"],
    );
    assert!(!out.status.success(), "{}", stderr_of(&out));
    let e = first_error_line(&out);
    assert!(
        e.contains(&format!("{bad_path}: its INCREMENTAL header differs from the one backup.json indexed\nhint: backup.json was changed or damaged after the backup")),
        "{e}"
    );
    std::fs::write(&meta_path, &good).unwrap();
    drop(bad_target);

    // lifeboat restores the chain (at its length cap) itself.
    let (out, restored) = crate::restore::restore(
        &lb,
        major,
        target.path(),
        &["--backup", &inc2_id, "--target-immediate"],
    );
    let text = expect_success(&out, "restore of an incremental backup");
    assert!(text.starts_with(&format!("backup    {inc2_id} ")), "{text}");

    // The oracle: PostgreSQL's pg_combinebackup takes the chain as archived.
    let work = pg_tempdir("lbinc-");
    let dirs: Vec<PathBuf> = [&full_id, &inc1_id, &inc2_id]
        .iter()
        .enumerate()
        .map(|(i, id)| materialise(&lb, id, &work.path().join(format!("b{i}"))).0)
        .collect();
    let out_dir = work.path().join("combined");
    let mut c = clean_command(pg.bin("pg_combinebackup"));
    c.args(&dirs).arg("-o").arg(&out_dir);
    let out = run_timeout(&mut c, Duration::from_secs(300), None).unwrap();
    assert!(
        out.status.success(),
        "PostgreSQL {major}: pg_combinebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verifybackup(&pg, &out_dir);
    // The newest backup's file list decides what exists.
    assert!(!files(&out_dir).iter().any(|f| f.contains("INCREMENTAL.")));

    // lifeboat's combine plan (from backup.json's index alone), carried out on the same
    // materialised chain, gives every file pg_combinebackup wrote, byte for byte.
    let metas: Vec<Vec<TarMember>> = [&full_id, &inc1_id, &inc2_id]
        .iter()
        .map(|id| {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(lb.archive.join(format!("backups/{id}/backup.json"))).unwrap(),
            )
            .unwrap();
            serde_json::from_value(m["members"].clone()).unwrap()
        })
        .collect();
    let chain: Vec<&[TarMember]> = metas.iter().map(|m| &m[..]).collect();
    let plan = plan_combine(&chain).unwrap();
    let mut reconstructed = 0;
    let mut ours: Vec<String> = Vec::new();
    for f in plan.iter().filter(|f| f.tar == "base.tar") {
        // pg_combinebackup rewrites backup_label without its INCREMENTAL lines.
        if f.path == "backup_label" {
            continue;
        }
        ours.push(f.path.clone());
        let bytes = match &f.how {
            Combine::Copy { member } => {
                std::fs::read(dirs[2].join(&chain[2][*member].path)).unwrap()
            }
            Combine::Reconstruct { blocks } => {
                reconstructed += 1;
                let mut v = Vec::with_capacity(blocks.len() * 8192);
                for b in blocks {
                    match b {
                        BlockSource::Zero => v.extend_from_slice(&[0u8; 8192]),
                        BlockSource::From {
                            backup,
                            member,
                            offset,
                        } => {
                            let src =
                                std::fs::read(dirs[*backup].join(&chain[*backup][*member].path))
                                    .unwrap();
                            v.extend_from_slice(&src[*offset as usize..*offset as usize + 8192]);
                        }
                    }
                }
                v
            }
        };
        let theirs = std::fs::read(out_dir.join(&f.path))
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {}: {e}", f.path));
        assert!(
            bytes == theirs,
            "PostgreSQL {major}: {} differs from pg_combinebackup's ({} bytes, theirs {})",
            f.path,
            bytes.len(),
            theirs.len()
        );
    }
    assert!(reconstructed > 10, "{reconstructed} files reconstructed");
    ours.sort();
    let theirs: Vec<String> = files(&out_dir)
        .into_iter()
        .filter(|f| f != "backup_label" && f != "backup_manifest")
        .collect();
    assert_eq!(ours, theirs, "PostgreSQL {major}: the combined file list");

    // lifeboat's restore of the chain: every file pg_combinebackup wrote, byte for byte
    // (postgresql.auto.conf gains the recovery settings at its end, recovery.signal is
    // new), nothing else; its manifest lists the same paths, sizes and checksums, and
    // pg_verifybackup accepts it.
    let mut restored_files: Vec<String> = files(&restored)
        .into_iter()
        .filter(|f| f != "recovery.signal")
        .collect();
    restored_files.sort();
    assert_eq!(
        restored_files,
        files(&out_dir),
        "PostgreSQL {major}: the restored file list"
    );
    for f in files(&out_dir) {
        let theirs = std::fs::read(out_dir.join(&f)).unwrap();
        let mine = std::fs::read(restored.join(&f)).unwrap();
        match f.as_str() {
            "backup_manifest" => {}
            "postgresql.auto.conf" => assert!(
                mine.starts_with(&theirs) && mine.len() > theirs.len(),
                "PostgreSQL {major}: postgresql.auto.conf"
            ),
            _ => assert!(
                mine == theirs,
                "PostgreSQL {major}: {f} differs from pg_combinebackup's ({} bytes, theirs {})",
                mine.len(),
                theirs.len()
            ),
        }
    }
    let entries = |dir: &Path| -> Vec<(String, u64, String, String)> {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("backup_manifest")).unwrap()).unwrap();
        let mut v: Vec<_> = m["Files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["Path"].as_str().unwrap().to_string(),
                    e["Size"].as_u64().unwrap(),
                    e["Checksum-Algorithm"].as_str().unwrap_or("").to_string(),
                    e["Checksum"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (mine, theirs) = (entries(&restored), entries(&out_dir));
    assert!(theirs.len() > 900, "{} manifest entries", theirs.len());
    assert_eq!(
        mine.len(),
        theirs.len(),
        "PostgreSQL {major}: manifest entries"
    );
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!(m, t, "PostgreSQL {major}: manifest entry");
    }
    verifybackup(&pg, &restored);
    // And it starts: the state at the end of the incremental backup.
    let started = start_restored(major, &restored);
    assert_eq!(started.psql("SELECT count(*) FROM grow"), "15000");
    assert_eq!(
        started.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname IN ('gone', 'born', 'copied')"),
        "born,copied"
    );
}

#[test]
fn incremental_chain_is_what_pg_combinebackup_takes_on_17_and_18() {
    let majors: Vec<u32> = require_majors().into_iter().filter(|m| *m >= 17).collect();
    assert!(!majors.is_empty(), "PostgreSQL 17 or 18 is needed");
    for major in majors {
        chain(major);
    }
}

#[test]
fn incremental_falls_back_to_full_with_the_reason() {
    let majors = require_majors();
    // Older than 17: no incremental backups.
    let old = *majors
        .iter()
        .find(|m| **m < 17)
        .expect("a PostgreSQL older than 17");
    let pg = PgCluster::start(old, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = lb.start_streamer(&pg);
    backup_ok(&lb, &[]);
    let r = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        r["full_reason"],
        format!("PostgreSQL {old} cannot take incremental backups (they need 17 or later)")
    );
    assert!(r.get("incremental").is_none());
    stop_streamer(streamer);
    drop(pg);

    // 17 with summarize_wal off, then on but without checksums or wal_log_hints.
    if !majors.contains(&17) {
        return;
    }
    let pg = PgCluster::start(17, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = lb.start_streamer(&pg);
    backup_ok(&lb, &[]);
    let r = backup_ok(&lb, &["--incremental"]);
    assert_eq!(
        r["full_reason"],
        "summarize_wal is off on the server (incremental backups need WAL summaries)"
    );
    pg.psql("ALTER SYSTEM SET summarize_wal = on");
    pg.psql("SELECT pg_reload_conf()");
    pg.wait_for("SHOW summarize_wal", "on", Duration::from_secs(30));
    let out = lb.run(
        &["backup", "--fast", "--incremental"],
        Duration::from_secs(600),
    );
    let text = expect_success(&out, "backup");
    assert!(
        text.starts_with("full backup instead of an incremental one: neither data checksums nor wal_log_hints are on: PostgreSQL's incremental backups can then carry stale visibility-map bits (an open upstream issue), so lifeboat takes them only with one of the two\n"),
        "{text}"
    );
    assert!(stderr_of(&out).contains("taking a full backup instead of an incremental one"));
    stop_streamer(streamer);
}

/// `pg_dumpall` of a restored cluster (server-specific banner lines left out).
fn dumpall(pg: &PgCluster) -> String {
    let mut c = pg.command("pg_dumpall");
    c.args(["--no-role-passwords"]);
    let text = run_ok(&mut c, Duration::from_secs(300));
    text.lines()
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Point in time through a chain and through a full backup to the same LSN: the same
/// cluster, by `pg_dumpall`. The chain holds a tablespace created after its full backup,
/// growth, shrink, TRUNCATE, a FILE_COPY database and a dropped one; the planner picks the
/// newest incremental before a target; a missing parent is refused with the chain named.
fn pitr(major: u32) {
    let mut opts = ClusterOpts::default().conf("summarize_wal = on");
    if major == 17 {
        opts = opts.conf("wal_log_hints = on");
    }
    let pg = PgCluster::start(major, opts);
    pg.pgbench_init(1);
    pg.psql("CREATE DATABASE gone");
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let streamer = lb.start_streamer(&pg);
    let full = backup_ok(&lb, &[]);
    let full_id = full["id"].as_str().unwrap().to_string();

    let ts = pg_tempdir("lbts-");
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.path().display()
    ));
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    pg.psql("CREATE TABLE far TABLESPACE extra AS SELECT g AS id, repeat('f', 100) AS pad FROM generate_series(1, 20000) g");
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 10 = 0");
    let inc1 = backup_ok(&lb, &["--incremental"]);
    let inc1_id = inc1["id"].as_str().unwrap().to_string();
    assert_eq!(inc1["incremental"]["parent"], full_id.as_str());

    pg.psql("DELETE FROM far WHERE id > 10000");
    pg.psql("VACUUM (TRUNCATE true) far");
    pg.psql("TRUNCATE pgbench_history");
    pg.psql("DROP DATABASE gone");
    pg.psql("CREATE DATABASE fc STRATEGY FILE_COPY");
    pg.try_psql_db(
        "fc",
        "CREATE TABLE fct AS SELECT g FROM generate_series(1, 1000) g",
    )
    .unwrap();
    let inc2 = backup_ok(&lb, &["--incremental"]);
    let inc2_id = inc2["id"].as_str().unwrap().to_string();
    assert_eq!(inc2["incremental"]["parent"], inc1_id.as_str());

    pg.psql("INSERT INTO far SELECT g, 'between' FROM generate_series(1, 300) g");
    let between = pg.current_lsn();
    pg.psql("SELECT pg_switch_wal()");
    // A full backup after the chain: the other way to the same point.
    let full2 = backup_ok(&lb, &[]);
    let full2_id = full2["id"].as_str().unwrap().to_string();
    pg.psql("INSERT INTO far SELECT g, 'after' FROM generate_series(1, 500) g");
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid % 3 = 0");
    let target = pg.current_lsn();
    pg.psql("DROP TABLE far");
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    let work = pg_tempdir("lbpitr-");
    // The newest backup before a target between the chain and the second full backup is
    // the chain's incremental one.
    let dry_ts = format!("{oid}={}", work.path().join("tsdry").display());
    let (out, _) = crate::restore::restore(
        &lb,
        major,
        work.path(),
        &[
            "--target-lsn",
            &between,
            "--tablespace",
            &dry_ts,
            "--dry-run",
        ],
    );
    let text = expect_success(&out, "restore --dry-run --target-lsn");
    assert!(
        text.starts_with(&format!("backup    {inc2_id} ")),
        "PostgreSQL {major}: {text}"
    );
    assert!(
        text.contains(&format!("chain     {full_id} → {inc1_id} → {inc2_id} ")),
        "{text}"
    );

    let restore_dump = |backup: &str, n: u32| {
        let tsdir = work.path().join(format!("ts{n}"));
        let spec = format!("{oid}={}", tsdir.display());
        let (out, dir) = crate::restore::restore(
            &lb,
            major,
            work.path(),
            &[
                "--backup",
                backup,
                "--target-lsn",
                &target,
                "--tablespace",
                &spec,
            ],
        );
        let text = expect_success(&out, &format!("restore of {backup}"));
        assert!(text.starts_with(&format!("backup    {backup} ")), "{text}");
        chown_tree_to_pg_user(&tsdir);
        let restored = start_restored(major, &dir);
        assert_eq!(
            restored.psql("SELECT count(*) FROM far"),
            "10800",
            "PostgreSQL {major} via {backup}"
        );
        assert_eq!(
            restored.psql(
                "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"
            ),
            tsdir.display().to_string()
        );
        // The tablespace's new location is the one difference allowed.
        let d = dumpall(&restored).replace(&tsdir.display().to_string(), "TSDIR");
        restored.stop();
        d
    };
    let via_chain = restore_dump(&inc2_id, 1);
    let via_full = restore_dump(&full2_id, 2);
    assert!(via_chain.contains("CREATE DATABASE fc"), "{via_chain}");
    assert!(!via_chain.contains("CREATE DATABASE gone"));
    if via_chain != via_full {
        let (a, b): (Vec<&str>, Vec<&str>) =
            (via_chain.lines().collect(), via_full.lines().collect());
        let i = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "PostgreSQL {major}: pg_dumpall through the chain and through {full2_id} differ at line {i}:\n  chain: {:?}\n  full:  {:?}",
            a.get(i),
            b.get(i)
        );
    }

    // A missing parent: the chain is broken, restore refuses it naming the link, list
    // says why it is not restorable, and the planner passes it over.
    std::fs::rename(
        lb.archive.join(format!("backups/{inc1_id}/backup.json")),
        work.path().join("inc1.json"),
    )
    .unwrap();
    let (out, _) = crate::restore::restore(
        &lb,
        major,
        work.path(),
        &["--backup", &inc2_id, "--tablespace", &dry_ts, "--dry-run"],
    );
    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        format!("error: backup {inc2_id} is incremental and its chain is broken: {inc1_id}, the parent of {inc2_id}, is not in the archive\nhint: restore a backup whose chain is whole (omit --backup to let lifeboat choose); `lifeboat list` shows each backup's parent")
    );
    let list = lb.list_json();
    let b = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == inc2_id.as_str())
        .unwrap();
    assert_eq!(b["restorable"], false);
    assert_eq!(b["missing_parent"], inc1_id.as_str());
    // (the full backup predates the tablespace)
    let (out, _) = crate::restore::restore(
        &lb,
        major,
        work.path(),
        &["--target-lsn", &between, "--dry-run"],
    );
    let text = expect_success(&out, "restore --dry-run with a broken chain");
    assert!(
        text.starts_with(&format!("backup    {full_id} ")),
        "PostgreSQL {major}: {text}"
    );
}

#[test]
fn point_in_time_through_a_chain_equals_through_a_full_backup() {
    let majors: Vec<u32> = require_majors().into_iter().filter(|m| *m >= 17).collect();
    assert!(!majors.is_empty(), "PostgreSQL 17 or 18 is needed");
    for major in majors {
        pitr(major);
    }
}

/// A promotion between backups: the full backup is the old primary's (timeline 1), the
/// incremental one the promoted standby's (timeline 2), on top of it; the standby
/// summarised the WAL it replayed. A restore through that chain to the end has every row
/// of both timelines, and PostgreSQL replays it across the switch.
#[test]
fn incremental_across_a_promotion() {
    let major = 17;
    let opts = ClusterOpts::default()
        .conf("summarize_wal = on")
        .conf("wal_log_hints = on");
    let primary = PgCluster::start(major, opts);
    primary.psql("CREATE TABLE t (id int, src text)");
    primary.psql("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 1000) g");
    // The standby first, so its summaries cover everything after the full backup.
    let standby = primary.create_standby();
    standby.wait_for("SHOW summarize_wal", "on", Duration::from_secs(30));
    let lb = Lb::for_cluster(&primary, SMALL_PARTS);
    let streamer = lb.start_streamer(&primary);
    let full = backup_ok(&lb, &[]);
    let full_id = full["id"].as_str().unwrap().to_string();
    primary.psql("INSERT INTO t SELECT g, 'old' FROM generate_series(1001, 2000) g");
    primary.psql("UPDATE t SET src = 'old' WHERE id <= 100");
    wait_caught_up(&primary, Duration::from_secs(120), &lb);
    standby.wait_for("SELECT count(*) FROM t", "2000", Duration::from_secs(60));
    stop_streamer(streamer);
    // A clean switchover: the primary stops, the standby has everything and is promoted.
    primary.stop();
    standby.promote();
    assert_eq!(standby.timeline(), 2);
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(2001, 2100) g");

    lb.retarget(&standby);
    let streamer = lb.start_streamer(&standby);
    let inc = backup_ok(&lb, &["--incremental"]);
    assert_eq!(inc["incremental"]["parent"], full_id.as_str(), "{inc:#}");
    assert_eq!(inc["timeline"], 2, "{inc:#}");
    standby.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(2101, 2200) g");
    let end = parse_lsn(&standby.switch_wal());
    wait_archived(&standby, end, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    // The restore picks the chain (the newest backup) and says so.
    let inc_id = inc["id"].as_str().unwrap().to_string();
    let target = pg_tempdir("lbincr-");
    let (out, _) = crate::restore::restore(&lb, major, target.path(), &["--dry-run"]);
    let text = expect_success(&out, "restore --dry-run across the promotion");
    assert!(
        text.contains(&format!(
            "\nchain     {full_id} → {inc_id} (full {full_id} + 1 incremental; restore combines them)\n"
        )),
        "{text}"
    );
    let work = tempfile::tempdir().unwrap();
    let latest = crate::restore::restore_and_start(&lb, major, work.path(), &[]);
    assert_eq!(
        crate::failover::rows_by_source(&latest),
        "new|200\nold|2000"
    );
}
