//! The SQLite sibling mode against real SQLite files and the real binary: consistency under
//! a concurrent writer, delta chains restored at every point and compared byte for byte
//! with copies the test took itself, bad input with exact messages, kill -9 in the middle
//! of a snapshot, and both S3 test servers.
//!
//! The oracle for "the database at that moment" is independent of lifeboat: with no write
//! in flight, the test copies the database file and its -wal, opens the copy with SQLite,
//! checkpoints it (TRUNCATE) and reads the resulting file; SQLite itself thereby writes the
//! image the restored file must equal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rusqlite::Connection;

use crate::support::*;

const T: Duration = Duration::from_secs(180);

/// A workspace for a host of SQLite databases only: no [postgres] section.
struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
    identity: PathBuf,
    archive: PathBuf,
}

impl Host {
    /// `dbs`: (name, extra TOML lines of the entry); `storage`: [[storage]] tables
    /// (default: one file:// archive).
    fn new(dbs: &[(&str, &str)], storage: Option<&str>) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, recipient) = keygen(dir.path(), "identity.txt");
        let archive = dir.path().join("archive");
        let config = dir.path().join("lifeboat.toml");
        let storage = storage.map(str::to_string).unwrap_or_else(|| {
            format!(
                "[[storage]]\nname = \"local\"\nurl = \"file://{}\"\n",
                archive.display()
            )
        });
        let mut text = format!(
            "[encryption]\nrecipients = [\"{recipient}\"]\n\n[wal]\nspool_dir = \"{}\"\n\n[backup]\npart_size = \"1MiB\"\n\n{storage}\n",
            dir.path().join("spool").display()
        );
        for (name, extra) in dbs {
            text.push_str(&format!(
                "[[sqlite]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n\n",
                dir.path().join(format!("{name}.db")).display()
            ));
        }
        std::fs::write(&config, text).expect("write config");
        Host {
            dir,
            config,
            identity,
            archive,
        }
    }

    fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_as(&self.identity, args)
    }

    fn cmd_as(&self, identity: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .arg("--identity")
            .arg(identity)
            .env_remove("LIFEBOAT_IDENTITY_FILE")
            .env("HOME", self.dir.path())
            .envs(crate::support::s3::cred_env())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_timeout(&mut self.cmd(args), T, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        expect_success(&self.run(args), &format!("lifeboat {args:?}"))
    }

    /// `sqlite snapshot NAME --json`: the snapshot's record.
    fn snapshot(&self, name: &str) -> serde_json::Value {
        let out = self.run(&["--json", "sqlite", "snapshot", name]);
        expect_success(&out, "sqlite snapshot");
        let v = json_of(&out);
        assert_eq!(v[0]["ok"], true, "{v}");
        v[0]["snapshot"].clone()
    }

    fn list(&self, name: &str) -> Vec<serde_json::Value> {
        let out = self.run(&["--json", "sqlite", "list", name]);
        json_of(&out)["snapshots"].as_array().unwrap().clone()
    }

    /// Restore snapshot `id` of `name` to a new file; its path.
    fn restore(&self, name: &str, id: &str) -> PathBuf {
        let to = self.dir.path().join(format!("restored-{name}-{id}.db"));
        let out = self.run(&[
            "--json",
            "sqlite",
            "restore",
            name,
            "--snapshot",
            id,
            "--to",
            to.to_str().unwrap(),
        ]);
        expect_success(&out, "sqlite restore");
        let rep = json_of(&out);
        assert_eq!(rep["integrity_check"], "ok", "{rep}");
        assert_eq!(rep["snapshot"], id, "{rep}");
        to
    }
}

fn open_wal(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c
}

/// The test's own copy of the database as of now (no write may be in flight): the file
/// A table `accounts` of `n` accounts holding 1000 each, with `pad` random bytes a row.
fn fill_bank(c: &Connection, n: i64, pad: i64) {
    c.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB)",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO accounts VALUES (?1, 1000, randomblob(?2))",
            [i, pad],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A table `t(v BLOB)` of `rows` rows of 100 kB, in one transaction; the connection.
fn blob_table(db: &Path, rows: usize) -> Connection {
    let c = open_wal(db);
    c.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO t VALUES (randomblob(100000))", [])
            .unwrap();
    }
    tx.commit().unwrap();
    c
}

/// and its -wal copied, the copy checkpointed by SQLite, its bytes.
fn oracle_image(path: &Path, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let copy = scratch.join("copy.db");
    std::fs::copy(path, &copy).unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        std::fs::copy(&wal, scratch.join("copy.db-wal")).unwrap();
    }
    {
        let c = Connection::open(&copy).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
    }
    std::fs::read(&copy).unwrap()
}

fn integrity(path: &Path) -> String {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn parse_time(s: &str) -> i64 {
    // RFC 3339 in UTC as the records hold it: 2026-12-01T23:08:28.488143Z
    let out = Command::new("date")
        .args(["-u", "-d", s, "+%s%6N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A writer moving money between accounts at full speed (busy_timeout 0: any lock it
/// meets is an error) while snapshots run: every snapshot restores with the invariant
/// total and a clean integrity_check, holds no transfer committed after its time, and the
/// writer never met SQLITE_BUSY.
#[test]
fn snapshots_under_a_concurrent_writer_are_consistent() {
    let h = Host::new(&[("bank", "full_every = 2")], None);
    let db = h.db("bank");
    const ACCOUNTS: i64 = 2000;
    const TOTAL: i64 = ACCOUNTS * 1000;
    {
        let c = open_wal(&db);
        fill_bank(&c, ACCOUNTS, 400);
        c.execute_batch(
            "CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INT, dst INT, amount INT, ts INT)",
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let mut c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::ZERO).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                let amount = rng.gen_range(1..100);
                let r = (|| -> rusqlite::Result<()> {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance - ?2 WHERE id = ?1",
                        [a, amount],
                    )?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance + ?2 WHERE id = ?1",
                        [b, amount],
                    )?;
                    tx.execute(
                        "INSERT INTO transfers(src, dst, amount, ts) VALUES (?1, ?2, ?3, ?4)",
                        [a, b, amount, micros_now()],
                    )?;
                    tx.commit()
                })();
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let s = h.snapshot("bank");
        ids.push((
            s["id"].as_str().unwrap().to_string(),
            s["kind"].as_str().unwrap().to_string(),
            s["time"].as_str().unwrap().to_string(),
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let (committed, errors) = writer.join().unwrap();
    assert!(errors.is_empty(), "the writer met errors: {errors:?}");
    assert!(committed > 100, "only {committed} transfers committed");
    // full_every = 2, and a delta is followed by a full one once the chain holds half
    // the pages (which this writer's random transfers reach quickly).
    let kinds: Vec<&str> = ids.iter().map(|i| i.1.as_str()).collect();
    assert_eq!(kinds[0], "full", "{ids:?}");
    assert!(kinds.contains(&"delta"), "{ids:?}");
    assert!(!kinds.windows(3).any(|w| w == ["delta"; 3]), "{ids:?}");
    let mut seen = Vec::new();
    for (id, _, time) in &ids {
        let restored = h.restore("bank", id);
        assert_eq!(integrity(&restored), "ok");
        let c = Connection::open(&restored).unwrap();
        let total: i64 = c
            .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, TOTAL, "snapshot {id}: the money does not add up");
        let (n, newest): (i64, Option<i64>) = c
            .query_row("SELECT count(*), max(ts) FROM transfers", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let t = parse_time(time);
        assert!(
            newest.unwrap_or(0) <= t,
            "snapshot {id} (as of {time}) holds a transfer from after it ({newest:?})"
        );
        seen.push(n);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "later snapshots hold more transfers: {seen:?}"
    );
}

/// Many snapshots with random updates, deletes, inserts (growth), VACUUM (shrink) and an
/// application checkpoint (TRUNCATE) in between: each restored file equals, byte for
/// byte, the copy the test took at that moment; deltas store only a part of the pages.
#[test]
fn delta_chains_restore_every_point_byte_for_byte() {
    let h = Host::new(&[("app", "full_every = 4\nmax_delta_fraction = 0.9")], None);
    let db = h.db("app");
    let c = open_wal(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t(v);")
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut points: Vec<(String, String, Vec<u8>)> = Vec::new();
    let scratch = h.dir.path().join("oracle");
    for step in 0..12 {
        let mut updates = 0u64;
        let tx = c.unchecked_transaction().unwrap();
        match step {
            0 => {
                for _ in 0..8000 {
                    tx.execute("INSERT INTO t(v) VALUES (randomblob(200))", [])
                        .unwrap();
                }
            }
            5 => {
                tx.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
            }
            7 => {
                for _ in 0..2000 {
                    tx.execute("INSERT INTO t(v) VALUES (randomblob(300))", [])
                        .unwrap();
                }
            }
            _ => {
                updates = rng.gen_range(1..30);
                for _ in 0..updates {
                    let id: i64 = rng.gen_range(1..8000);
                    tx.execute("UPDATE t SET v = randomblob(200) WHERE id = ?1", [id])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        if step == 6 {
            c.execute_batch("VACUUM").unwrap();
        }
        if step == 3 || step == 9 {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        }
        let image = oracle_image(&db, &scratch);
        let s = h.snapshot("app");
        points.push((
            s["id"].as_str().unwrap().to_string(),
            s["kind"].as_str().unwrap().to_string(),
            image,
        ));
        let stored: u64 = s["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[1].as_u64().unwrap())
            .sum();
        let count = s["page_count"].as_u64().unwrap();
        if s["kind"] == "delta" && updates > 0 && step != 6 {
            // Each update rewrites a table leaf, index leaves and, at a split, their
            // parents and a new page.
            assert!(
                stored <= 6 * updates + 4 && stored * 4 < count,
                "step {step}: a delta of {updates} updates stored {stored} of {count} pages"
            );
        }
    }
    let kinds: Vec<&str> = points.iter().map(|p| p.1.as_str()).collect();
    assert!(
        kinds.iter().filter(|k| **k == "delta").count() >= 6,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "full").count() >= 2,
        "{kinds:?}"
    );
    assert_eq!(h.list("app").len(), points.len());
    for (id, kind, image) in &points {
        let restored = h.restore("app", id);
        let got = std::fs::read(&restored).unwrap();
        assert_eq!(got.len(), image.len(), "{kind} snapshot {id}: size");
        assert!(
            got == *image,
            "{kind} snapshot {id}: the restored bytes differ from the copy taken then"
        );
    }
    // --target-time picks the newest snapshot at or before it; the chain is applied.
    let list = h.list("app");
    let third = &list[2];
    let to = h.dir.path().join("by-time.db");
    let out = h.run(&[
        "--json",
        "sqlite",
        "restore",
        "app",
        "--target-time",
        third["time"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    expect_success(&out, "restore --target-time");
    assert_eq!(json_of(&out)["snapshot"], third["id"]);
    assert!(std::fs::read(&to).unwrap() == points[2].2);
    // Never over an existing file without --force; with it, stale -wal/-shm go too.
    let out = h.run(&["sqlite", "restore", "app", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_error_line(&out),
        format!("error: --to {}: the file exists\nhint: name a new file, or pass --force to replace it (stop its application first)", to.display())
    );
    std::fs::write(format!("{}-wal", to.display()), b"stale").unwrap();
    h.ok(&[
        "sqlite",
        "restore",
        "app",
        "--latest",
        "--force",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&to).unwrap() == points.last().unwrap().2);
    assert!(!PathBuf::from(format!("{}-wal", to.display())).exists());
    // The application's database was never written by lifeboat: it still opens, and its
    // journal mode is WAL.
    drop(c);
    assert_eq!(integrity(&db), "ok");
}

/// Bad input, with the exact messages; one failing database does not stop the others.
#[test]
fn bad_input_has_exact_messages() {
    let h = Host::new(
        &[("good", ""), ("missing", ""), ("text", ""), ("journal", "")],
        None,
    );
    open_wal(&h.db("good"))
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    std::fs::write(h.db("text"), "this is not a database\n".repeat(10)).unwrap();
    Connection::open(h.db("journal"))
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let out = h.run(&["sqlite", "snapshot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("error: ") || l.starts_with("hint: "))
        .collect();
    let p = |n: &str| h.db(n).display().to_string();
    assert_eq!(
        errors,
        [
            format!("error: sqlite \"missing\": {} does not exist", p("missing")).as_str(),
            "hint: check the path of [[sqlite]] \"missing\" in the configuration; lifeboat never creates a database",
            format!("error: sqlite \"text\": {} is not an SQLite database (its header is not \"SQLite format 3\")", p("text")).as_str(),
            "hint: check the path of [[sqlite]] \"text\"; an encrypted database (SQLCipher, SEE) cannot be snapshotted page by page",
            format!("error: sqlite \"journal\": {} is in rollback-journal mode; lifeboat snapshots only WAL-mode databases (a read there blocks every writer)", p("journal")).as_str(),
            format!("hint: switch it to WAL once, while its application is stopped: sqlite3 {} 'PRAGMA journal_mode=WAL;' (the setting is kept in the file)", p("journal")).as_str(),
        ]
    );
    // The good one was snapshotted all the same; the journal-mode database was not changed.
    assert_eq!(h.list("good").len(), 1);
    assert!(h.list("journal").is_empty());
    let mode: String = Connection::open(h.db("journal"))
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    // Target before the first snapshot.
    let to = h.dir.path().join("out.db");
    let out = h.run(&[
        "sqlite",
        "restore",
        "good",
        "--target-time",
        "2001-01-01 00:00:00+00",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let first = h.list("good")[0]["time"].as_str().unwrap().to_string();
    let first_pg = Command::new("date")
        .args(["-u", "-d", &first, "+%Y-%m-%d %H:%M:%S.%6N+00"])
        .output()
        .unwrap();
    assert_eq!(
        first_error_line(&out),
        format!("error: sqlite database \"good\" has no snapshot from 2001-01-01 00:00:00+00 or before (the oldest is from {})\nhint: `lifeboat sqlite list` shows the snapshots", String::from_utf8_lossy(&first_pg.stdout).trim())
    );
    assert!(!to.exists());
    // A database with no snapshot at all.
    let out = h.run(&["sqlite", "restore", "missing", "--to", to.to_str().unwrap()]);
    assert_eq!(
        first_error_line(&out),
        "error: the archive holds no snapshot of sqlite database \"missing\"\nhint: `lifeboat sqlite list` shows the snapshots; `lifeboat sqlite snapshot missing` takes one"
    );
    // The wrong identity: nothing is written.
    let (other, _) = keygen(h.dir.path(), "other.txt");
    let mut c = h.cmd_as(&other, &[]);
    c.args(["sqlite", "restore", "good", "--to", to.to_str().unwrap()]);
    let out = run_timeout(&mut c, T, None).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let e = first_error_line(&out);
    assert!(
        e.starts_with("error: applying snapshot ") && e.contains("cannot decrypt"),
        "{e}"
    );
    assert!(!to.exists());
    let leftovers: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".lifeboat-sqlite-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A PostgreSQL command on a host without [postgres].
    let out = h.run(&["backup"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        first_error_line(&out),
        format!("error: {}: `backup` needs PostgreSQL, and this configuration has no [postgres] section (it lists only [[sqlite]] databases)\nhint: on a host of SQLite databases use `lifeboat sqlite run|snapshot|restore|list|drill`; for PostgreSQL add [postgres] conninfo = \"...\"", h.config.display())
    );
}

/// A WAL-mode database at `db`: table `t` of 2000 rows with an index, checkpointed.
fn indexed_table(db: &Path) {
    let c = open_wal(db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v);")
        .unwrap();
    for i in 0..2000 {
        c.execute("INSERT INTO t VALUES (?1, hex(randomblob(20)))", [i])
            .unwrap();
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap();
}

/// Damage `db`: scribble over the middle of a b-tree page (not the header).
fn scribble(db: &Path) {
    let mut b = std::fs::read(db).unwrap();
    let page = 4096 * 5;
    for x in &mut b[page + 8..page + 64] {
        *x = 0xff;
    }
    std::fs::write(db, b).unwrap();
}

/// A damaged database: quick_check in the snapshot's transaction fails it, nothing is
/// stored.
#[test]
fn a_corrupt_database_is_not_snapshotted() {
    let h = Host::new(&[("bad", "")], None);
    let db = h.db("bad");
    indexed_table(&db);
    scribble(&db);
    let out = h.run(&["sqlite", "snapshot", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let e = first_error_line(&out);
    assert!(
        e.starts_with(&format!("error: sqlite \"bad\": quick_check of {} failed: ", db.display()))
            && e.ends_with("hint: the database is damaged; no snapshot was stored (the earlier ones remain: `lifeboat sqlite list`)"),
        "{e}"
    );
    assert!(h.list("bad").is_empty());
}

/// A delta runs quick_check when its chain's last check is older than `quick_check_every`
/// (default 1h; "always": every snapshot). A page damaged between snapshots: the delta
/// that always checks refuses it; the one that relies on its chain's recent check stores
/// it, says so in snapshot.json, and the restore's integrity_check refuses the result with
/// a hint that says the snapshot ran no check of its own.
#[test]
fn a_delta_runs_quick_check_as_quick_check_every_says() {
    let h = Host::new(
        &[("always", "quick_check_every = \"always\""), ("hourly", "")],
        None,
    );
    for name in ["always", "hourly"] {
        let db = h.db(name);
        indexed_table(&db);
        let full = h.snapshot(name);
        assert_eq!(full["kind"], "full");
        assert_eq!(full["quick_check"], "ok");
        scribble(&db);
    }
    let out = h.run(&["sqlite", "snapshot", "always"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let e = first_error_line(&out);
    assert!(
        e.starts_with("error: sqlite \"always\": quick_check of "),
        "{e}"
    );
    assert_eq!(h.list("always").len(), 1);

    let delta = h.snapshot("hourly");
    assert_eq!(delta["kind"], "delta");
    let full_id = h.list("hourly")[0]["id"].as_str().unwrap().to_string();
    let said = delta["quick_check"].as_str().unwrap();
    assert!(
        said.starts_with(&format!(
            "not run: snapshot {full_id} of this chain passed it "
        )) && said.ends_with(" before (quick_check_every 1h)"),
        "{said}"
    );
    let to = h.dir.path().join("restored-hourly.db");
    let out = h.run(&["sqlite", "restore", "hourly", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("integrity_check of the restored snapshot ")
            && err.contains("hint: the snapshot ran no quick_check of its own (its chain's last check passed); try an older snapshot"),
        "{err}"
    );
    assert!(!to.exists(), "a refused restore leaves no file");
}

/// kill -9 in the middle of a snapshot: no snapshot is visible, and the next one works
/// (a full one: the interrupted one never became a base).
#[test]
fn kill9_mid_snapshot_leaves_no_snapshot() {
    let h = Host::new(&[("big", "")], None);
    let db = h.db("big");
    blob_table(&db, 1200);
    h.snapshot("big");
    let mut child = h
        .cmd(&["sqlite", "snapshot", "big", "--full"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let parts_of_second = || {
        files(&h.archive)
            .into_iter()
            .filter(|f| f.starts_with("sqlite/big/") && f.contains("/pages."))
            .map(|f| f.split('/').nth(2).unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    while parts_of_second().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no part of the second snapshot appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the snapshot finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut child);
    assert_eq!(h.list("big").len(), 1, "the killed snapshot is visible");
    // verify: the committed snapshot checks out; the killed one's parts are listed as
    // unreferenced, not failed.
    let out = h.run(&["--json", "verify", "--full"]);
    let rep = json_of(&out);
    assert!(out.status.success(), "{rep}");
    assert_eq!(rep["providers"][0]["sqlite_snapshots"], 1, "{rep}");
    assert!(
        !rep["providers"][0]["unreferenced"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{rep}"
    );
    // The interrupted snapshot never became a base: the next is a delta on the first.
    let s = h.snapshot("big");
    assert_eq!(s["kind"], "delta");
    assert_eq!(s["base"], h.list("big")[0]["id"]);
    assert_eq!(
        s["runs"].as_array().unwrap().len(),
        0,
        "nothing changed: {s}"
    );
    let list = h.list("big");
    assert_eq!(list.len(), 2);
    let restored = h.restore("big", s["id"].as_str().unwrap());
    assert!(std::fs::read(&restored).unwrap() == oracle_image(&db, &h.dir.path().join("o")));
    // And a delta on top of it works.
    open_wal(&db)
        .execute_batch("UPDATE t SET v = randomblob(100000) WHERE rowid = 7")
        .unwrap();
    let d = h.snapshot("big");
    assert_eq!(d["kind"], "delta");
    let restored = h.restore("big", d["id"].as_str().unwrap());
    assert!(std::fs::read(&restored).unwrap() == oracle_image(&db, &h.dir.path().join("o")));
}

/// Both S3 test servers (moto with Object Lock, s3s-fs) as the only providers: a full and
/// a delta snapshot, restored byte for byte; a drill runs the check SQL and is recorded.
#[test]
fn snapshots_on_both_s3_servers_restore_and_drill() {
    let (_moto, _fs, storage) = crate::s3::two_s3_providers();
    let h = Host::new(
        &[(
            "app",
            "check_sql = \"SELECT count(*) = 500 FROM t; SELECT sum(x) > 0 FROM t\"",
        )],
        Some(&storage),
    );
    let db = h.db("app");
    let c = open_wal(&db);
    c.execute_batch("CREATE TABLE t(x INTEGER, v BLOB)")
        .unwrap();
    for i in 0..500 {
        c.execute("INSERT INTO t VALUES (?1, randomblob(1000))", [i])
            .unwrap();
    }
    let full = h.snapshot("app");
    let image_full = oracle_image(&db, &h.dir.path().join("o"));
    c.execute_batch("UPDATE t SET v = randomblob(1000) WHERE x < 5")
        .unwrap();
    let delta = h.snapshot("app");
    let image_delta = oracle_image(&db, &h.dir.path().join("o"));
    assert_eq!(full["kind"], "full");
    assert_eq!(delta["kind"], "delta");
    let r = h.restore("app", full["id"].as_str().unwrap());
    assert!(std::fs::read(r).unwrap() == image_full);
    let r = h.restore("app", delta["id"].as_str().unwrap());
    assert!(std::fs::read(r).unwrap() == image_delta);
    let out = h.run(&["--json", "sqlite", "drill", "app"]);
    expect_success(&out, "sqlite drill");
    let rep = json_of(&out);
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["snapshot"], delta["id"]);
    assert_eq!(rep["checks"].as_array().unwrap().len(), 2, "{rep}");
    // A check that fails makes the drill fail (exit 1), recorded all the same.
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("count(*) = 500", "count(*) = 501");
    std::fs::write(&h.config, text).unwrap();
    let out = h.run(&["--json", "sqlite", "drill", "app", "--snapshot", "random"]);
    assert_eq!(out.status.code(), Some(1));
    let rep = json_of(&out);
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["checks"][0][1], "false (0)", "{rep}");
}

/// A database locked by its application (locking_mode=EXCLUSIVE) fails with its message
/// after the busy timeout while the others are snapshotted; a database file replaced by
/// another between snapshots is snapshotted and restored as the new file.
#[test]
fn a_locked_database_fails_alone_and_a_replaced_one_restores() {
    let h = Host::new(&[("locked", ""), ("swap", "")], None);
    let swap = h.db("swap");
    {
        let c = open_wal(&swap);
        c.execute_batch("CREATE TABLE old(v BLOB)").unwrap();
        for _ in 0..300 {
            c.execute("INSERT INTO old VALUES (randomblob(500))", [])
                .unwrap();
        }
    }
    let first = h.snapshot("swap");
    // Another database takes its place (as a deploy that ships a new file would do).
    let other = h.dir.path().join("other.db");
    {
        let c = open_wal(&other);
        c.execute_batch("CREATE TABLE new(id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        for i in 0..3000 {
            c.execute("INSERT INTO new VALUES (?1, hex(randomblob(50)))", [i])
                .unwrap();
        }
    }
    std::fs::rename(&other, &swap).unwrap();
    let locked = h.db("locked");
    let app = open_wal(&locked);
    app.execute_batch(
        "CREATE TABLE t(x); PRAGMA locking_mode=EXCLUSIVE; BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT;",
    )
    .unwrap();
    let started = Instant::now();
    let out = h.run(&["sqlite", "snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(
        first_error_line(&out),
        format!("error: sqlite \"locked\": {} is locked (waited 10s for a read transaction): database is locked\nhint: an application holding an exclusive lock (locking_mode=EXCLUSIVE) blocks readers; the next snapshot tries again", locked.display())
    );
    drop(app);
    let list = h.list("swap");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], first["id"]);
    let id = list[1]["id"].as_str().unwrap();
    let restored = h.restore("swap", id);
    assert!(std::fs::read(&restored).unwrap() == oracle_image(&swap, &h.dir.path().join("o")));
    let c = Connection::open(&restored).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM new", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3000);
}

/// A provider down during a snapshot (the fault wrapper fails its every operation): the
/// snapshot fails and leaves none, on either provider; once it is back, the next one is a
/// delta on the last stored snapshot and restores byte for byte.
#[test]
fn a_provider_outage_fails_the_snapshot_and_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let storage = format!(
        "[[storage]]\nname = \"a\"\nurl = \"file://{}\"\n\n[[storage]]\nname = \"b\"\nurl = \"file://{}\"\n",
        a.display(),
        b.display()
    );
    let h = Host::new(&[("app", "")], Some(&storage));
    let db = h.db("app");
    let c = open_wal(&db);
    c.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
    for _ in 0..400 {
        c.execute("INSERT INTO t VALUES (randomblob(3000))", [])
            .unwrap();
    }
    let first = h.snapshot("app");
    c.execute_batch("UPDATE t SET v = randomblob(3000) WHERE rowid < 10")
        .unwrap();
    let flag = dir.path().join("down");
    std::fs::write(&flag, "").unwrap();
    let mut cmd = h.cmd(&["sqlite", "snapshot", "app"]);
    cmd.env("LIFEBOAT_FAULT_INJECT", format!("b={}", flag.display()));
    let out = run_timeout(&mut cmd, T, None).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        first_error_line(&out).starts_with("error: "),
        "{}",
        stderr_of(&out)
    );
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(h.list("app").len(), 1, "a failed snapshot is visible");
    for root in [&a, &b] {
        let metas: Vec<String> = files(root)
            .into_iter()
            .filter(|f| f.ends_with("snapshot.json"))
            .collect();
        assert_eq!(metas.len(), 1, "{}: {metas:?}", root.display());
    }
    let next = h.snapshot("app");
    assert_eq!(next["kind"], "delta");
    assert_eq!(next["base"], first["id"]);
    let restored = h.restore("app", next["id"].as_str().unwrap());
    assert!(std::fs::read(restored).unwrap() == oracle_image(&db, &h.dir.path().join("o")));
}

/// `sqlite snapshot NAME` while a writer runs `sql` in a loop (busy_timeout 0,
/// synchronous OFF, `pause` between commits), started 200 ms before it and stopped after:
/// the snapshot's output, the writer's errors and its commit count.
fn snapshot_beside_a_writer(
    h: &Host,
    name: &str,
    sql: &'static str,
    pause: Duration,
) -> (Output, Vec<String>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), h.db(name));
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::ZERO).unwrap();
            c.execute_batch("PRAGMA synchronous = OFF").unwrap();
            let (mut errors, mut commits) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                match c.execute(sql, []) {
                    Ok(_) => commits += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                std::thread::sleep(pause);
            }
            (errors, commits)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = h.run(&["sqlite", "snapshot", name]);
    stop.store(true, Ordering::Relaxed);
    let (errors, commits) = writer.join().unwrap();
    (out, errors, commits)
}

/// A snapshot whose read transaction lets the WAL grow past `wal_budget` is abandoned
/// with its message, and leaves no snapshot; the writer is never blocked.
#[test]
fn a_snapshot_past_its_wal_budget_is_abandoned() {
    let h = Host::new(&[("busy", "wal_budget = \"2MiB\"")], None);
    let db = h.db("busy");
    {
        let c = blob_table(&db, 600);
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
    }
    // Fast commits: the WAL must outgrow the budget within the snapshot.
    let (out, errors, _) = snapshot_beside_a_writer(
        &h,
        "busy",
        "INSERT INTO t VALUES (randomblob(50000))",
        Duration::ZERO,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let e = first_error_line(&out);
    let want = format!(
        "error: sqlite \"busy\": snapshot abandoned: the WAL of {} grew by ",
        db.display()
    );
    assert!(
        e.starts_with(&want)
            && e.ends_with("while the snapshot held its read transaction (wal_budget 2MB)\nhint: raise sqlite.wal_budget, or snapshot when the database is less busy"),
        "{e}"
    );
    assert!(h.list("busy").is_empty());
}

/// Wait (up to `limit`) until `f` holds, polling; panics with `what` otherwise.
/// A large database (27,000 pages of 512 bytes: six WAL-budget checks mid-snapshot) under a
/// writer that checkpoints after every commit: each full snapshot restores to a consistent
/// bank. A snapshot that opened and closed its own descriptor of `-shm` mid-read (to read
/// the wal-index) dropped SQLite's POSIX locks with it, its read mark included; the
/// writer's checkpoints then copied newer pages into the file under the read transaction
/// (quick_check failed, or the money did not add up).
#[test]
fn snapshots_keep_their_read_mark_under_a_checkpointing_writer() {
    let h = Host::new(&[("bank", "")], None);
    let db = h.db("bank");
    const ACCOUNTS: i64 = 80_000;
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA page_size = 512; PRAGMA journal_mode = WAL;")
            .unwrap();
        fill_bank(&c, ACCOUNTS, 150);
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert!(pages > 3 * 4096, "{pages} pages");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let mut c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::ZERO).unwrap();
            c.execute_batch("PRAGMA wal_autocheckpoint = 1").unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                let r = (|| -> rusqlite::Result<()> {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance - 7 WHERE id = ?1",
                        [a],
                    )?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance + 7 WHERE id = ?1",
                        [b],
                    )?;
                    tx.commit()
                })();
                if let Err(e) = r {
                    errors.push(e.to_string());
                }
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = h.run(&["--json", "sqlite", "snapshot", "bank", "--full"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v[0]["snapshot"]["id"].as_str().unwrap().to_string());
    }
    stop.store(true, Ordering::Relaxed);
    let errors = writer.join().unwrap();
    assert!(errors.is_empty(), "the writer met errors: {errors:?}");
    for id in &ids {
        let restored = h.restore("bank", id);
        assert_eq!(integrity(&restored), "ok", "snapshot {id}");
        let c = Connection::open(&restored).unwrap();
        let total: i64 = c
            .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            total,
            ACCOUNTS * 1000,
            "snapshot {id}: the money does not add up"
        );
    }
}

/// The WAL budget counts frames, not the WAL file's length: a WAL file left large by an
/// earlier long read is reused from its start, so it does not grow while a snapshot pins
/// frames below its old size (the old code, which compared lengths, stored this snapshot).
#[test]
fn the_wal_budget_sees_growth_inside_a_wal_file_left_large() {
    let h = Host::new(&[("busy", "wal_budget = \"2MiB\"")], None);
    let db = h.db("busy");
    let c = blob_table(&db, 300);
    // A long reader lets four rewrites of every row pile up in the WAL (about 120 MB);
    // then a checkpoint that leaves the file at that size for the next writer to reuse.
    let reader = open_wal(&db);
    reader.execute_batch("BEGIN").unwrap();
    reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();
    for _ in 0..4 {
        c.execute("UPDATE t SET v = randomblob(100000)", [])
            .unwrap();
    }
    reader.execute_batch("COMMIT").unwrap();
    c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let left = std::fs::metadata(format!("{}-wal", db.display()))
        .unwrap()
        .len();
    assert!(left > 100_000_000, "the WAL file is {left} bytes");
    // About 25 MB/s: past the budget within the snapshot, far from the WAL file's old
    // size within the test.
    let (out, errors, commits) = snapshot_beside_a_writer(
        &h,
        "busy",
        "UPDATE t SET v = randomblob(50000) WHERE rowid = abs(random()) % 300 + 1",
        Duration::from_millis(2),
    );
    assert!(errors.is_empty(), "{errors:?}");
    let written = commits * 50_000;
    assert!(written < left, "the writer wrote {written} bytes");
    assert_eq!(
        std::fs::metadata(format!("{}-wal", db.display()))
            .unwrap()
            .len(),
        left,
        "the WAL file grew: this test no longer tests what it says"
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let e = first_error_line(&out);
    assert!(
        e.contains("snapshot abandoned: the WAL of") && e.contains("(wal_budget 2MB)"),
        "{e}"
    );
    assert!(h.list("busy").is_empty());
}

/// The CPUs `/proc/<of>` may run on (its `Cpus_allowed_list`, e.g. "0-3,6").
fn allowed_cpus(of: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{of}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for range in list.split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    cpus
}

/// `/proc/interrupts`' numbered lines: counts by CPU.
fn interrupt_counts() -> BTreeMap<String, BTreeMap<usize, u64>> {
    let table = std::fs::read_to_string("/proc/interrupts").unwrap();
    let mut rows = table.lines();
    let cpus: Vec<usize> = rows
        .next()
        .unwrap()
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU").unwrap().parse().unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for row in rows {
        let mut f = row.split_whitespace();
        let irq = f.next().unwrap();
        if irq.trim_end_matches(':').parse::<u32>().is_err() {
            continue;
        }
        let counts = cpus
            .iter()
            .zip(f)
            .map_while(|(&c, n)| Some((c, n.parse().ok()?)))
            .collect();
        out.insert(irq.to_string(), counts);
    }
    out
}

/// The CPU serving the interrupts of the disk under `dir`, as seen from outside: 300
/// synchronous writes there, and the interrupt line that rose the most (by at least 100)
/// with nine tenths of its rise on one CPU. None when nothing so clear is seen (a memory
/// file system, a disk with a queue per CPU).
fn disk_cpu(dir: &Path) -> Option<usize> {
    use std::io::Write;
    let before = interrupt_counts();
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..300 {
        f.write_all(&[7u8; 4096]).unwrap();
        f.sync_data().unwrap();
    }
    drop(f);
    std::fs::remove_file(&path).unwrap();
    let after = interrupt_counts();
    let rise = |irq: &String| -> BTreeMap<usize, u64> {
        after[irq]
            .iter()
            .map(|(c, n)| (*c, n - before.get(irq).and_then(|b| b.get(c)).unwrap_or(&0)))
            .collect()
    };
    let (irq, total) = after
        .keys()
        .map(|irq| (irq, rise(irq).values().sum::<u64>()))
        .max_by_key(|(_, t)| *t)?;
    let (cpu, most) = rise(irq).into_iter().max_by_key(|(_, n)| *n)?;
    (total >= 100 && most * 10 >= total * 9).then_some(cpu)
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `<spool>/sqlite-status.json`, if `sqlite run` wrote it.
fn run_status(h: &Host) -> Option<serde_json::Value> {
    std::fs::read(h.dir.path().join("spool/sqlite-status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn db_status(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// `sqlite run` with two databases on a 10 s interval: both are snapshotted; one is
/// deleted mid-run and fails with its message on every try while the other keeps being
/// snapshotted (deltas that restore byte for byte); `status` shows both, degraded; SIGTERM
/// stops the daemon with exit 0.
#[test]
fn sqlite_run_keeps_going_when_one_database_disappears() {
    let h = Host::new(
        &[("keep", "every = \"10s\""), ("gone", "every = \"10s\"")],
        None,
    );
    for name in ["keep", "gone"] {
        let c = open_wal(&h.db(name));
        c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        for i in 0..200 {
            c.execute("INSERT INTO t VALUES (?1, randomblob(2000))", [i])
                .unwrap();
        }
    }
    let log = std::fs::File::create(h.dir.path().join("run.log")).unwrap();
    let mut child = KillOnDrop(
        h.cmd(&["sqlite", "run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(h.dir.path().join("run.log")).unwrap_or_default();
    wait_until(Duration::from_secs(60), "both first snapshots", || {
        h.list("keep").len() == 1 && h.list("gone").len() == 1
    });
    let st = run_status(&h).expect("sqlite-status.json");
    assert_eq!(st["pid"], child.id(), "{st}");
    assert_eq!(db_status(&st, "keep")["every"], 10);
    // By default every thread of the daemon leaves one CPU this process may use to the
    // application (LIFEBOAT_SQLITE_PRIORITY=spare): the one serving the interrupts of the
    // databases' disk, here the CPU whose counts rose while this test fsynced beside them,
    // or the lowest when that tells nothing.
    let mine = allowed_cpus("self");
    if mine.len() >= 2 {
        let spared = disk_cpu(h.dir.path())
            .filter(|c| mine.contains(c))
            .unwrap_or(mine[0]);
        let others: Vec<usize> = mine.iter().copied().filter(|&c| c != spared).collect();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
        let mut threads = 0;
        for t in tasks {
            let tid = t.unwrap().file_name().into_string().unwrap();
            assert_eq!(
                allowed_cpus(&format!("{}/task/{tid}", child.id())),
                others,
                "thread {tid} of sqlite run"
            );
            threads += 1;
        }
        assert!(threads > 2, "{threads} threads");
    }
    // The database disappears (a service removed, a volume not mounted).
    for suffix in ["", "-wal", "-shm"] {
        let mut p = h.db("gone").into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let keep = h.db("keep");
    let c = open_wal(&keep);
    c.execute_batch("UPDATE t SET v = randomblob(2000) WHERE x < 10")
        .unwrap();
    let image = oracle_image(&keep, &h.dir.path().join("o"));
    wait_until(Duration::from_secs(60), "a failed run of \"gone\"", || {
        run_status(&h).is_some_and(|s| db_status(&s, "gone")["last_run_ok"] == false)
    });
    wait_until(Duration::from_secs(60), "a delta of \"keep\"", || {
        h.list("keep").len() >= 2
    });
    let st = run_status(&h).unwrap();
    let gone = db_status(&st, "gone");
    assert_eq!(
        gone["last_error"].as_str().unwrap(),
        format!(
            "sqlite \"gone\": {} does not exist\nhint: check the path of [[sqlite]] \"gone\" in the configuration; lifeboat never creates a database",
            h.db("gone").display()
        )
    );
    let list = h.list("keep");
    assert_eq!(list[1]["kind"], "delta", "{list:?}");
    let r = h.restore("keep", list[1]["id"].as_str().unwrap());
    assert!(
        std::fs::read(r).unwrap() == image,
        "the delta restores the database as it was"
    );
    // status: both databases, the failing one degraded with its reason, exit 1.
    let out = h.run(&["--json", "status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rep = json_of(&out);
    let checks = rep["checks"].as_array().unwrap();
    let msg = |prefix: &str| {
        checks
            .iter()
            .find(|c| c["check"] == "sqlite" && c["message"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no check {prefix} in {rep}"))
            .clone()
    };
    assert_eq!(msg("\"keep\"")["status"], "ok", "{rep}");
    assert_eq!(msg("\"gone\"")["status"], "degraded", "{rep}");
    assert!(
        msg("\"gone\"")["message"]
            .as_str()
            .unwrap()
            .contains("the last snapshot run failed: sqlite \"gone\": "),
        "{rep}"
    );
    assert_eq!(msg("sqlite run")["status"], "ok", "{rep}");
    // No streamer check on a host without PostgreSQL.
    assert!(!checks.iter().any(|c| c["check"] == "streamer"), "{rep}");
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "provider" && c["message"] == "\"local\": up"),
        "{rep}"
    );
    sigterm(&mut child.0);
    let code = wait_child(&mut child.0, Duration::from_secs(30), "sqlite run").code();
    assert_eq!(code, Some(0), "{}", log_text());
    assert!(log_text().contains("sqlite snapshot failed; the other databases go on"));
    // Stopped: status says the daemon is not running.
    let out = h.run(&["--json", "status"]);
    let rep = json_of(&out);
    assert!(
        rep["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "sqlite"
                && c["status"] == "degraded"
                && c["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("sqlite run is not running")),
        "{rep}"
    );
}

/// SIGTERM while `sqlite run` is in the middle of a snapshot: the daemon exits 0, the
/// snapshot is not listed and its parts are gone from the archive; the next snapshot is
/// complete and restores byte for byte.
#[test]
fn sqlite_run_sigterm_mid_snapshot_leaves_no_half_snapshot() {
    let h = Host::new(&[("big", "")], None);
    let db = h.db("big");
    blob_table(&db, 1200);
    let mut child = KillOnDrop(
        h.cmd(&["sqlite", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let parts = || {
        files(&h.archive)
            .into_iter()
            .filter(|f| f.starts_with("sqlite/big/"))
            .count()
    };
    let start = Instant::now();
    while parts() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no part appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "sqlite run ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&mut child.0);
    let code = wait_child(&mut child.0, Duration::from_secs(30), "sqlite run").code();
    assert_eq!(code, Some(0));
    assert!(h.list("big").is_empty(), "the stopped snapshot is visible");
    assert_eq!(parts(), 0, "parts left: {:?}", files(&h.archive));
    let st = run_status(&h).unwrap();
    assert_eq!(db_status(&st, "big")["running"], false, "{st}");
    let s = h.snapshot("big");
    assert_eq!(s["kind"], "full");
    let r = h.restore("big", s["id"].as_str().unwrap());
    assert!(std::fs::read(r).unwrap() == oracle_image(&db, &h.dir.path().join("o")));
}

/// `prune` on an archive of SQLite snapshots only (no PostgreSQL): a day later, with a
/// one-day window, dailies for three days and the newest one kept, it keeps the first
/// snapshot of the day and the newest one's whole delta chain, deletes the rest (markers
/// first), and every kept point restores byte for byte; a second prune deletes nothing.
#[test]
fn prune_keeps_whole_sqlite_chains_and_every_kept_point_restores() {
    let h = Host::new(&[("app", "full_every = 3")], None);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("[retention]\npitr_days = 1\ndaily_days = 3\nweekly_weeks = 0\nmonthly_months = 0\nmin_backups = 1\n");
    std::fs::write(&h.config, text).unwrap();
    let db = h.db("app");
    let c = open_wal(&db);
    c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..300 {
        c.execute("INSERT INTO t VALUES (?1, randomblob(1500))", [i])
            .unwrap();
    }
    let mut taken = Vec::new();
    for round in 0..6 {
        c.execute(
            "UPDATE t SET v = randomblob(1500) WHERE x % 7 = ?1",
            [round],
        )
        .unwrap();
        let s = h.snapshot("app");
        let image = oracle_image(&db, &h.dir.path().join("o"));
        taken.push((
            s["id"].as_str().unwrap().to_string(),
            s["kind"].as_str().unwrap().to_string(),
            image,
        ));
        // Ids are the start second: one snapshot a second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let kinds: Vec<&str> = taken.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(kinds, ["full", "delta", "delta", "full", "delta", "delta"]);
    // A drill record, which prune leaves alone.
    expect_success(&h.run(&["sqlite", "drill", "app"]), "sqlite drill");
    let later = h.run(&["prune", "--now", &format!("{}+00", chrono_in_days(2))]);
    let out = expect_success(&later, "prune");
    assert!(
        out.contains("delete 2 dumps, exports and SQLite snapshots (4 objects)"),
        "{out}"
    );
    let kept: Vec<String> = h
        .list("app")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = [0, 3, 4, 5].iter().map(|i| taken[*i].0.clone()).collect();
    assert_eq!(kept, want);
    // Nothing of the deleted ones is left; the drill record is.
    let left = files(&h.archive);
    for (id, _, _) in &taken[1..3] {
        assert!(
            !left.iter().any(|f| f.contains(id.as_str())),
            "{id}: {left:?}"
        );
    }
    assert!(left.iter().any(|f| f.starts_with("sqlite/app/drills/")));
    for i in [0, 3, 4, 5] {
        let r = h.restore("app", &taken[i].0);
        assert!(
            std::fs::read(r).unwrap() == taken[i].2,
            "snapshot {i} restores as taken"
        );
    }
    // The general list: the snapshots in JSON (all in today's window), one line a
    // database in the table.
    let v = json_of(&h.run(&["--json", "list"]));
    let rows = v["sqlite"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "{v}"
    );
    assert!(
        rows.iter()
            .all(|r| r["name"] == "app" && r["kept_by"][0] == "pitr"),
        "{v}"
    );
    assert_eq!(rows[1]["kind"], "full");
    assert_eq!(rows[2]["base"], taken[3].0.as_str());
    let table = h.ok(&["list"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.split_whitespace().nth(1) == Some("4") && line.contains(&taken[5].0),
        "{table}"
    );
    let again = expect_success(
        &h.run(&["prune", "--now", &format!("{}+00", chrono_in_days(2))]),
        "prune",
    );
    assert!(
        again.contains("delete 0 dumps, exports and SQLite snapshots (0 objects)"),
        "{again}"
    );
}

/// Object Lock on moto (governance, 1 day by default): prune raises the lock of every
/// object of the SQLite snapshots a calendar tier keeps to their keep-until date, as it
/// does for base backups (regression: snapshots kept by the daily tier stayed locked for
/// the bucket's default day only); a second prune finds them recorded and asks nothing.
#[test]
fn prune_raises_the_object_lock_of_kept_sqlite_snapshots() {
    use crate::support::s3::{Kind, S3Server};
    let moto = S3Server::start(Kind::Moto);
    moto.create_bucket("archive", true);
    let storage = moto.storage_toml(
        "moto",
        "archive",
        "lb",
        "object_lock = { mode = \"governance\", days = 1 }",
    );
    let h = Host::new(&[("app", "")], Some(&storage));
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("[retention]\npitr_days = 1\ndaily_days = 5\nweekly_weeks = 0\nmonthly_months = 0\nmin_backups = 1\n");
    std::fs::write(&h.config, text).unwrap();
    let c = open_wal(&h.db("app"));
    c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..300 {
        c.execute("INSERT INTO t VALUES (?1, randomblob(1500))", [i])
            .unwrap();
    }
    for round in 0..3 {
        c.execute(
            "UPDATE t SET v = randomblob(1500) WHERE x % 5 = ?1",
            [round],
        )
        .unwrap();
        h.snapshot("app");
        std::thread::sleep(Duration::from_millis(1100));
    }
    let prune = || {
        let out = h.run(&["--json", "prune"]);
        expect_success(&out, "prune");
        json_of(&out)["providers"][0].clone()
    };
    let p = prune();
    let plan = &p["plan"];
    let dated: Vec<(String, String)> = plan["copies"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"))
        .iter()
        .filter(|k| k["set"] == "sqlite/app" && k["keep_until"].is_string())
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                k["keep_until"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        !dated.is_empty(),
        "the day's first snapshot is a daily: {plan}"
    );
    let retain = plan["retain"]
        .as_array()
        .unwrap_or_else(|| panic!("no lock targets: {plan}"))
        .clone();
    assert_eq!(p["locks_raised"].as_u64(), Some(retain.len() as u64), "{p}");
    let keys = moto.keys("archive");
    for (id, until) in &dated {
        let want = aws_sdk_s3::primitives::DateTime::from_str(
            until,
            aws_sdk_s3::primitives::DateTimeFormat::DateTime,
        )
        .unwrap()
        .secs();
        let objects: Vec<&String> = keys
            .iter()
            .filter(|k| k.starts_with(&format!("lb/sqlite/app/{id}/")))
            .collect();
        assert!(objects.len() >= 2, "parts and snapshot.json: {objects:?}");
        for key in objects {
            assert!(
                retain
                    .iter()
                    .any(|r| format!("lb/{}", r["key"].as_str().unwrap()) == *key
                        && r["until"] == until.as_str()),
                "{key} not in {retain:?}"
            );
            let got = moto
                .block_on(
                    moto.client()
                        .head_object()
                        .bucket("archive")
                        .key(key)
                        .send(),
                )
                .unwrap();
            assert_eq!(
                got.object_lock_retain_until_date().unwrap().secs(),
                want,
                "{key}"
            );
        }
    }
    // Only the dated snapshots' objects.
    assert!(retain.iter().all(|r| dated.iter().any(|(id, _)| r["key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("sqlite/app/{id}/")))));
    let again = prune();
    assert_eq!(again["locks_raised"].as_u64(), Some(0), "{again}");
    assert_eq!(
        again["locks_recorded"].as_u64(),
        Some(retain.len() as u64),
        "{again}"
    );
}

/// The restore checks every page against its snapshot's group hashes (taken as the pages
/// are written): a record that does not match the image (snapshot.json edited here, as a
/// damaged or forged record would be) refuses the restore, naming the pages, and leaves
/// nothing at `--to` or beside it. For a full snapshot, and for a delta whose groups mix
/// pages of the full one and of the delta.
#[test]
fn a_restore_whose_pages_differ_from_their_record_is_refused() {
    let h = Host::new(&[("app", "")], None);
    let c = open_wal(&h.db("app"));
    c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..1000 {
        c.execute("INSERT INTO t VALUES (?1, randomblob(1500))", [i])
            .unwrap();
    }
    let full = h.snapshot("app");
    c.execute_batch("UPDATE t SET v = randomblob(1500) WHERE x % 50 = 0")
        .unwrap();
    let delta = h.snapshot("app");
    assert_eq!(delta["kind"], "delta");
    for (snap, group) in [(&full, 1u64), (&delta, 0)] {
        let id = snap["id"].as_str().unwrap();
        let pages = snap["page_count"].as_u64().unwrap();
        assert!(pages > 256, "{pages}");
        let meta = h.archive.join(format!("sqlite/app/{id}/snapshot.json"));
        let good = std::fs::read(&meta).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        let hash = v["group_hashes"][group as usize]
            .as_str()
            .unwrap()
            .to_string();
        let flipped = if hash.starts_with('0') { "1" } else { "0" };
        v["group_hashes"][group as usize] = format!("{flipped}{}", &hash[1..]).into();
        std::fs::write(&meta, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let to = h.dir.path().join(format!("r-{id}.db"));
        let out = h.run(&[
            "sqlite",
            "restore",
            "app",
            "--snapshot",
            id,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        let (first, last) = (group * 256 + 1, ((group + 1) * 256).min(pages));
        assert!(
            err.contains(&format!("the restored image of snapshot {id} differs from its record in pages {first} to {last}\nhint: the archive may be damaged: `lifeboat verify --full`; try an older snapshot (`lifeboat sqlite list`)\n")),
            "{err}"
        );
        assert!(!to.exists());
        let left: Vec<String> = std::fs::read_dir(h.dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".lifeboat-sqlite-") || n.starts_with("r-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::write(&meta, good).unwrap();
        h.restore("app", id);
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) `days` from now.
fn chrono_in_days(days: i64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(days as u64 * 86_400);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .trim_end_matches('Z')
        .replace('T', " ")
}

/// `sqlite run` with both S3 test servers as its providers (moto with Object Lock, s3s-fs):
/// a full snapshot and a delta, the delta restored byte for byte from S3; status shows
/// both providers up. Then s3s-fs goes down: the next run fails naming it, and status
/// shows that provider down and the database degraded, while the daemon keeps running.
#[test]
fn sqlite_run_on_both_s3_servers_reports_a_provider_outage() {
    let (_moto, mut fs, storage) = crate::s3::two_s3_providers();
    let h = Host::new(&[("app", "every = \"10s\"")], Some(&storage));
    let db = h.db("app");
    let c = open_wal(&db);
    c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for i in 0..300 {
        c.execute("INSERT INTO t VALUES (?1, randomblob(1000))", [i])
            .unwrap();
    }
    let mut child = KillOnDrop(
        h.cmd(&["sqlite", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(60), "a first snapshot", || {
        h.list("app").len() == 1
    });
    c.execute_batch("UPDATE t SET v = randomblob(1000) WHERE x < 3")
        .unwrap();
    let image = oracle_image(&db, &h.dir.path().join("o"));
    wait_until(Duration::from_secs(60), "a delta", || {
        h.list("app").len() == 2
    });
    let list = h.list("app");
    assert_eq!(list[1]["kind"], "delta");
    let r = h.restore("app", list[1]["id"].as_str().unwrap());
    assert!(std::fs::read(r).unwrap() == image);
    let rep = json_of(&h.run(&["--json", "status"]));
    let providers: Vec<&serde_json::Value> = rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "provider")
        .collect();
    assert_eq!(providers.len(), 2, "{rep}");
    assert!(providers.iter().all(|p| p["status"] == "ok"), "{rep}");
    // s3s-fs goes away; a change makes the next snapshot store something.
    fs.stop();
    c.execute_batch("UPDATE t SET v = randomblob(1000) WHERE x = 100")
        .unwrap();
    wait_until(Duration::from_secs(120), "a failed run", || {
        run_status(&h).is_some_and(|s| db_status(&s, "app")["last_run_ok"] == false)
    });
    let out = h.run(&["--json", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let rep = json_of(&out);
    let checks = rep["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["check"] == "provider"
            && c["status"] == "degraded"
            && c["message"]
                .as_str()
                .unwrap()
                .starts_with("\"s3s-fs\": down since")),
        "{rep}"
    );
    assert!(
        checks.iter().any(|c| c["check"] == "provider"
            && c["status"] == "ok"
            && c["message"] == "\"moto\": up"),
        "{rep}"
    );
    assert!(child.try_wait().unwrap().is_none(), "sqlite run ended");
    assert_eq!(h.list("app").len(), 2, "no third snapshot is visible");
    sigterm(&mut child.0);
    assert_eq!(
        wait_child(&mut child.0, Duration::from_secs(60), "sqlite run").code(),
        Some(0)
    );
}
