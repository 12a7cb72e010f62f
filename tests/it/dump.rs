//! `lifeboat dump`, `dump-restore` and `recover-table` against real PostgreSQL servers.
//! The oracles are PostgreSQL's own programs: `pg_dump` (plain SQL) of the source and the
//! restored database must be identical, and plain `pg_restore` must read what
//! `dump-restore --output` wrote.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(300);

/// Two schemas, tables, a view, a sequence, an index and data in database `app`; the
/// replication role may read it all (the role `lifeboat dump` connects as).
fn populate(pg: &PgCluster) {
    pg.psql("CREATE DATABASE app");
    pg.try_psql_db(
        "app",
        "CREATE TABLE orders (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now());
         INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 40000) g;
         CREATE INDEX orders_note ON orders (note);
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, md5(g::text) FROM generate_series(1, 300) g;
         CREATE SCHEMA sales;
         CREATE TABLE sales.invoices (id int PRIMARY KEY, amount numeric);
         INSERT INTO sales.invoices SELECT g, g * 1.5 FROM generate_series(1, 700) g;
         CREATE VIEW sales.big AS SELECT * FROM sales.invoices WHERE amount > 100;",
    )
    .unwrap();
    pg.psql("GRANT pg_read_all_data TO lifeboat");
}

/// `pg_dump` of `db` as plain SQL, comparable across databases and servers.
fn plain_dump(pg: &PgCluster, db: &str) -> String {
    plain_dump_with(pg, pg, db)
}

/// `plain_dump` with the pg_dump of `tools` (so that dumps of two majors compare).
fn plain_dump_with(tools: &PgCluster, pg: &PgCluster, db: &str) -> String {
    let mut c = tools.command("pg_dump");
    c.env("PGHOST", &pg.socket_dir)
        .env("PGPORT", pg.port.to_string());
    c.args(["--no-owner", "--no-privileges", "--no-comments", "-d", db]);
    let text = run_ok(&mut c, T);
    // Version banners and \restrict keys differ between servers and runs.
    text.lines()
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two dumps are equal; on a difference, the first differing line (not megabytes of COPY).
fn assert_same(a: &str, b: &str, what: &str) {
    if a == b {
        return;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    panic!(
        "{what}: the dumps differ at line {i}: {:?} vs {:?} ({} vs {} lines)",
        la.get(i),
        lb.get(i),
        la.len(),
        lb.len()
    );
}

fn dump(lb: &Lb, major: u32, args: &[&str]) -> std::process::Output {
    let bin = pg_bin_dir(major);
    let mut a = vec!["dump", "--pg-bin", bin.to_str().unwrap()];
    a.extend_from_slice(args);
    lb.run(&a, T)
}

/// `lifeboat dump-restore ID ARGS` with the identity and the given major's programs.
fn dump_restore(lb: &Lb, major: u32, id: &str, args: &[&str]) -> std::process::Output {
    let bin = pg_bin_dir(major);
    let mut a = vec!["dump-restore", id, "--pg-bin", bin.to_str().unwrap()];
    a.extend_from_slice(args);
    lb.run_restore_bin(&a, T)
}

fn conninfo_db(pg: &PgCluster, db: &str) -> String {
    format!(
        "host={} port={} user=postgres dbname={db}",
        pg.socket_dir.display(),
        pg.port
    )
}

fn tables(pg: &PgCluster, db: &str) -> String {
    pg.try_psql_db(
        db,
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .unwrap()
}

fn dump_round_trip(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    populate(&pg);
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    let out = dump(&lb, major, &["--json"]);
    expect_success(&out, "lifeboat dump");
    let meta = json_of(&out);
    // The text form: one line for the dump, one per database with its snapshot time.
    let text = expect_success(
        &dump(&lb, major, &["--db", "app"]),
        "lifeboat dump --db app",
    );
    assert!(
        text.starts_with("dump ") && text.contains(": 1 database and the globals, "),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .trim_start()
            .starts_with("app "),
        "{text}"
    );
    let id = meta["id"].as_str().unwrap().to_string();
    let dbs: Vec<&str> = meta["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["database"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["app", "postgres"], "{meta}");
    assert_eq!(meta["globals"]["stream"], "globals.sql");
    let app = &meta["databases"][0];
    assert!(
        app["parts"].as_array().unwrap().len() > 1,
        "small parts: {app}"
    );
    assert!(
        meta["pg_dump_version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{major}.")),
        "{meta}"
    );
    // Committed: dump.json is there, and list shows the dump.
    assert!(lb
        .archive_files("dumps/")
        .contains(&format!("dumps/{id}/dump.json")));
    let list = lb.list_json();
    assert_eq!(list["dumps"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["dumps"][0]["databases"][0], "app");
    assert_eq!(list["dumps"].as_array().unwrap().len(), 2, "{list}");
    let text = lb.run_ok(&["list"], T);
    assert!(text.contains(&format!("{id} ")), "{text}");
    // status shows the newest dump (information, not a health condition).
    let out = lb.run(&["--json", "status"], T);
    let st = json_of(&out);
    let check = st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "dump")
        .cloned()
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(check["status"], "ok", "{st}");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .starts_with("newest dump "),
        "{st}"
    );
    // verify checks the dump's parts (CRC without the key, decryption with --full).
    let (ok, rep) = lb.verify(true);
    assert!(ok, "{rep}");
    assert_eq!(rep["providers"][0]["dumps"], 2, "{rep}");

    // The whole database, into a new one: pg_dump of both is the same.
    pg.psql("CREATE DATABASE copy");
    let out = dump_restore(
        &lb,
        major,
        &id,
        &["--db", "app", "--dbname", &conninfo_db(&pg, "copy")],
    );
    expect_success(&out, "dump-restore --db app");
    assert_same(&plain_dump(&pg, "app"), &plain_dump(&pg, "copy"), "copy");

    // One table; one schema.
    pg.psql("CREATE DATABASE one_table");
    let out = dump_restore(
        &lb,
        major,
        &id,
        &[
            "--db",
            "app",
            "--dbname",
            &conninfo_db(&pg, "one_table"),
            "--table",
            "customers",
        ],
    );
    expect_success(&out, "dump-restore --table customers");
    assert_eq!(tables(&pg, "one_table"), "public.customers");
    assert_eq!(
        pg.try_psql_db("one_table", "SELECT count(*) FROM customers")
            .unwrap(),
        "300"
    );
    // pg_restore --schema restores the objects in the schema, not the schema itself.
    pg.psql("CREATE DATABASE one_schema");
    pg.try_psql_db("one_schema", "CREATE SCHEMA sales").unwrap();
    let out = dump_restore(
        &lb,
        major,
        &id,
        &[
            "--db",
            "app",
            "--dbname",
            &conninfo_db(&pg, "one_schema"),
            "--schema",
            "sales",
        ],
    );
    expect_success(&out, "dump-restore --schema sales");
    assert_eq!(tables(&pg, "one_schema"), "sales.invoices");
    assert_eq!(
        pg.try_psql_db("one_schema", "SELECT count(*) FROM sales.big")
            .unwrap(),
        "634"
    );

    // Which database, when the dump holds several; an id that is not there.
    let out = dump_restore(&lb, major, &id, &["--list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: dump {id} holds 2 databases: name one with --db\nhint: it holds app, postgres"
        )
    );
    let out = dump_restore(&lb, major, &id, &["--db", "nosuch", "--list"]);
    assert_eq!(
        first_error_line(&out),
        format!("error: dump {id} holds no database \"nosuch\"\nhint: it holds app, postgres")
    );
    let out = dump_restore(&lb, major, "20000101T000000Z", &["--list"]);
    assert_eq!(
        first_error_line(&out),
        "error: dump 20000101T000000Z is not in the archive\nhint: `lifeboat list` shows the dumps"
    );

    // A qualified table: pg_restore's --schema and --table.
    pg.psql("CREATE DATABASE qualified");
    pg.try_psql_db("qualified", "CREATE SCHEMA sales").unwrap();
    let out = dump_restore(
        &lb,
        major,
        &id,
        &[
            "--db",
            "app",
            "--dbname",
            &conninfo_db(&pg, "qualified"),
            "--table",
            "sales.invoices",
        ],
    );
    expect_success(&out, "dump-restore --table sales.invoices");
    assert_eq!(tables(&pg, "qualified"), "sales.invoices");

    // --list: pg_restore's table of contents.
    let out = dump_restore(&lb, major, &id, &["--db", "app", "--list"]);
    let toc = expect_success(&out, "dump-restore --list");
    assert!(toc.contains("TABLE DATA public orders"), "{toc}");
    assert!(toc.contains("TABLE sales invoices"), "{toc}");

    // --output: a plain custom-format file that PostgreSQL's pg_restore reads.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("app.dump");
    let out = dump_restore(
        &lb,
        major,
        &id,
        &["--db", "app", "--output", file.to_str().unwrap()],
    );
    expect_success(&out, "dump-restore --output");
    pg.psql("CREATE DATABASE from_file");
    let mut c = pg.command("pg_restore");
    c.args(["-d", "from_file", "--exit-on-error"]).arg(&file);
    run_ok(&mut c, T);
    assert_same(
        &plain_dump(&pg, "app"),
        &plain_dump(&pg, "from_file"),
        "from_file",
    );
    // --jobs: through a temporary file.
    pg.psql("CREATE DATABASE parallel");
    let out = dump_restore(
        &lb,
        major,
        &id,
        &[
            "--db",
            "app",
            "--dbname",
            &conninfo_db(&pg, "parallel"),
            "--jobs",
            "2",
        ],
    );
    expect_success(&out, "dump-restore --jobs 2");
    assert_same(
        &plain_dump(&pg, "app"),
        &plain_dump(&pg, "parallel"),
        "parallel",
    );
    let _ = Path::new("");
}

#[test]
fn dump_and_dump_restore_round_trip() {
    for major in fifteen_and_newest_majors() {
        dump_round_trip(major);
    }
}

/// A dump taken from PostgreSQL 15 restores into the newest major.
#[test]
fn dump_from_15_restores_into_the_newest_major() {
    let newest = newest_major().expect("a PostgreSQL major");
    let old = PgCluster::start(15, ClusterOpts::default());
    populate(&old);
    let lb = Lb::for_cluster(&old, "");
    let out = dump(&lb, 15, &["--db", "app", "--json"]);
    expect_success(&out, "lifeboat dump (15)");
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let new = PgCluster::start(newest, ClusterOpts::default());
    new.psql("CREATE DATABASE app");
    let out = dump_restore(&lb, newest, &id, &["--dbname", &conninfo_db(&new, "app")]);
    expect_success(&out, "dump-restore into the newest major");
    assert_eq!(
        new.try_psql_db("app", "SELECT count(*), max(id) FROM orders")
            .unwrap(),
        "40000|40000"
    );
    // Servers of 16 and later print view columns unqualified.
    assert_same(
        &plain_dump_with(&new, &old, "app")
            .replace("invoices.id", "id")
            .replace("invoices.amount", "amount"),
        &plain_dump_with(&new, &new, "app"),
        "15 -> newest",
    );
}

/// A pg_dump that fails leaves no dump behind, and its stderr and exit status are in the
/// error.
#[test]
fn a_failing_pg_dump_leaves_no_dump() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    populate(&pg);
    let lb = Lb::for_cluster(&pg, "");
    let out = dump(&lb, major, &["--db", "app", "--db", "nosuchdb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("error: pg_dump of database \"nosuchdb\" failed (exit status 1):\npg_dump: error: connection to server"),
        "{err}"
    );
    assert!(
        err.contains("FATAL:  database \"nosuchdb\" does not exist"),
        "{err}"
    );
    assert!(!err.contains("lifeboat-secret"), "{err}");
    assert!(
        lb.archive_files("dumps/").is_empty(),
        "{:?}",
        lb.archive_files("dumps/")
    );
    assert_eq!(lb.list_json()["dumps"], serde_json::json!([]));

    // No pg_dump of the server's major: the error names the version it needs.
    let version = pg.psql("SHOW server_version");
    let empty = tempfile::tempdir().unwrap();
    let out = lb.run(&["dump", "--pg-bin", empty.path().to_str().unwrap()], T);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: the server is PostgreSQL {version}, so this needs pg_dump {major}, and there is no pg_dump in --pg-bin {}\nhint: pass the bin directory of a PostgreSQL {major} installation",
            empty.path().display()
        )
    );
    if major != 15 {
        let old = pg_bin_dir(15);
        let out = lb.run(&["dump", "--pg-bin", old.to_str().unwrap()], T);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let err = first_error_line(&out);
        assert!(
            err.starts_with(&format!(
                "error: the server is PostgreSQL {version}, so this needs pg_dump {major}, but {}/pg_dump is pg_dump 15.",
                old.display()
            )),
            "{err}"
        );
    }
    assert!(lb.archive_files("dumps/").is_empty());

    // A database name with a space, quotes and a backslash reaches pg_dump intact.
    let odd = "odd 'name' \\ \"x\"";
    pg.psql(&format!("CREATE DATABASE \"{}\"", odd.replace('"', "\"\"")));
    pg.try_psql_db(odd, "CREATE TABLE t AS SELECT 1 AS one")
        .unwrap();
    let out = dump(&lb, major, &["--db", odd, "--json"]);
    expect_success(&out, "dump of an odd name");
    let meta = json_of(&out);
    assert_eq!(meta["databases"][0]["database"], odd);
    let id = meta["id"].as_str().unwrap().to_string();
    let out = dump_restore(&lb, major, &id, &["--db", odd, "--list"]);
    let toc = expect_success(&out, "dump-restore --list of an odd name");
    assert!(toc.contains("TABLE DATA public t"), "{toc}");
}

// ------------------------------------------------------------------------------------
// recover-table

/// Processes whose command line mentions `dir` (a scratch server left behind).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(cmd);
        }
    }
    found
}

/// The scratch parent holds nothing and no process runs from it.
fn assert_no_scratch_left(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let procs = processes_under(scratch);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

/// The seed's disaster in database `app`: rows committed, T noted, more rows, the table
/// dropped, then more work on another table. Returns (T, the workspace, the streamer
/// stopped).
fn disaster(pg: &PgCluster) -> (String, Lb) {
    pg.psql("CREATE DATABASE app");
    pg.try_psql_db(
        "app",
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         CREATE INDEX orders_note ON orders (note);
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO orders (note) SELECT 'before backup' FROM generate_series(1, 1000);
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 10) g;",
    )
    .unwrap();
    let lb = Lb::for_cluster(pg, SMALL_PARTS);
    let streamer = crate::restore::stream_and_backup(pg, &lb);
    // The planner wants the target at least a second after the backup ended.
    std::thread::sleep(Duration::from_millis(1500));
    pg.try_psql_db(
        "app",
        "INSERT INTO orders (note) SELECT 'after backup' FROM generate_series(1, 500)",
    )
    .unwrap();
    let t = pg.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_secs(1));
    pg.try_psql_db(
        "app",
        "INSERT INTO orders (note) VALUES ('after T');
         DROP TABLE orders;
         INSERT INTO customers SELECT g, 'later ' || g FROM generate_series(11, 25) g;",
    )
    .unwrap();
    pg.psql("SELECT pg_switch_wal()");
    wait_caught_up(pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);
    (t, lb)
}

fn recover_table(lb: &Lb, major: u32, scratch: &Path, args: &[&str]) -> std::process::Output {
    let bin = pg_bin_dir(major);
    let mut a = vec![
        "recover-table",
        "--pg-bin",
        bin.to_str().unwrap(),
        "--scratch-dir",
        scratch.to_str().unwrap(),
    ];
    if is_root() {
        a.extend(["--run-as", TEST_OS_USER]);
    }
    a.extend_from_slice(args);
    lb.run_restore_bin(&a, T)
}

fn seed_disaster_recover_table(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    let (t, lb) = disaster(&pg);
    // The server user must reach the scratch directory.
    let scratch = pg_tempdir("lbscratch-");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("orders.dump");
    let into = conninfo_db(&pg, "app");
    let out = recover_table(
        &lb,
        major,
        scratch.path(),
        &[
            "--target-time",
            &t,
            "--table",
            "public.orders",
            "--into",
            &into,
            "--as",
            "orders_back",
            "--output",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    expect_success(&out, "recover-table");
    let rep = json_of(&out);
    assert_eq!(rep["tables"][0]["table"], "public.orders", "{rep}");
    assert_eq!(rep["tables"][0]["rows"], 1500, "{rep}");
    assert_eq!(rep["tables"][0]["loaded_as"], "public.orders_back", "{rep}");
    assert_eq!(rep["tables"][0]["loaded_rows"], 1500, "{rep}");
    assert!(rep["last_commit"].is_string(), "{rep}");
    // The rows as of T under the new name; the other table keeps the later work.
    assert_eq!(
        pg.try_psql_db(
            "app",
            "SELECT count(*), max(id), count(*) FILTER (WHERE note = 'after T') FROM orders_back"
        )
        .unwrap(),
        "1500|1500|0"
    );
    assert_eq!(
        pg.try_psql_db("app", "SELECT count(*) FROM customers")
            .unwrap(),
        "25"
    );
    assert_eq!(
        pg.try_psql_db("app", "SELECT to_regclass('orders') IS NULL")
            .unwrap(),
        "t"
    );
    // A standalone copy: its index and sequence carry the new name.
    assert_eq!(
        pg.try_psql_db(
            "app",
            "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE 'orders_back%'"
        )
        .unwrap(),
        "orders_back,orders_back_id_seq,orders_back_note,orders_back_pkey"
    );
    // The file holds the table as it was, under its own name.
    let mut c = pg.command("pg_restore");
    c.arg("--list").arg(&file);
    let toc = run_ok(&mut c, T);
    assert!(toc.contains("TABLE DATA public orders"), "{toc}");
    assert_no_scratch_left(scratch.path());

    // Exact refusals: an existing name, a time before the first backup (both before any
    // restore), a table that did not exist at T (after one).
    let out = recover_table(
        &lb,
        major,
        scratch.path(),
        &[
            "--target-time",
            &t,
            "--table",
            "public.orders",
            "--into",
            &into,
            "--as",
            "customers",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        "error: public.customers already exists in database \"app\": recover-table never loads over an existing table\nhint: choose another name with --as, or drop or rename public.customers first"
    );
    let out = recover_table(
        &lb,
        major,
        scratch.path(),
        &[
            "--target-time",
            "2000-01-01 00:00:00+00",
            "--table",
            "public.orders",
            "--into",
            &into,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let backup = lb.list_json()["backups"][0].clone();
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: target time 2000-01-01 00:00:00+00 is before the oldest backup ({} ended at {})\nhint: `lifeboat list` shows the backups; the earliest reachable time is just after {}",
            backup["id"].as_str().unwrap(),
            backup["end_time"].as_str().unwrap().replace('T', " ").replace('Z', "+00"),
            backup["end_time"].as_str().unwrap().replace('T', " ").replace('Z', "+00"),
        )
    );
    let out = recover_table(
        &lb,
        major,
        scratch.path(),
        &[
            "--target-time",
            &t,
            "--table",
            "public.nosuch",
            "--into",
            &into,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = first_error_line(&out);
    assert!(
        err.starts_with(&format!(
            "error: table public.nosuch did not exist at {} in database \"app\" (restored from backup {})",
            rep["target_time"].as_str().unwrap().replace('T', " ").replace('Z', "+00"),
            backup["id"].as_str().unwrap()
        )),
        "{err}"
    );
    assert_no_scratch_left(scratch.path());
}

#[test]
fn recover_table_brings_a_dropped_table_back_beside_todays_data() {
    for major in fifteen_and_newest_majors() {
        seed_disaster_recover_table(major);
    }
}

/// SIGINT while the scratch server replays: lifeboat stops it and removes the scratch
/// directory before it exits.
#[test]
fn recover_table_cleans_up_on_sigint() {
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let (t, lb) = disaster(&pg);
    let scratch = pg_tempdir("lbscratch-");
    let bin = pg_bin_dir(major);
    let mut c = std::process::Command::new(lb.restore_bin());
    c.arg("--config")
        .arg(&lb.config)
        .arg("--identity")
        .arg(&lb.identity)
        .env("HOME", lb.dir.path())
        .args(["recover-table", "--pg-bin"])
        .arg(&bin)
        .arg("--scratch-dir")
        .arg(scratch.path())
        .args(if is_root() {
            vec!["--run-as", TEST_OS_USER]
        } else {
            vec![]
        })
        .args(["--target-time", &t, "--table", "public.orders", "--output"])
        .arg(scratch.path().join("never.dump"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Wait for the scratch server to exist.
    let deadline = std::time::Instant::now() + T;
    loop {
        let started = std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .any(|e| e.path().join("data/postmaster.pid").exists());
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch server started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "recover-table ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(
            "error: interrupted (SIGINT): the scratch server was stopped and its directory removed"
        ),
        "{}",
        stderr_of(&out)
    );
    assert_no_scratch_left(scratch.path());
}

// ------------------------------------------------------------------------------------
// put / get

/// `put` a tree and a file (one tar), and stdin (as is); `get` them back, byte for byte,
/// the newest or as of `--at`; bad requests get exact errors.
#[test]
fn put_and_get_files_trees_and_stdin() {
    let lb = Lb::with("host=127.0.0.1 port=1 user=lifeboat", "", SMALL_PARTS);
    let src = tempfile::tempdir().unwrap();
    let content = src.path().join("content");
    std::fs::create_dir_all(content.join("sub")).unwrap();
    std::fs::write(content.join("a.txt"), "first\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(content.join("sub/b.bin"), &big).unwrap();
    std::os::unix::fs::symlink("a.txt", content.join("link")).unwrap();
    std::fs::write(src.path().join("notes.txt"), "notes\n").unwrap();
    let put = |name: &str, paths: &[&Path], stdin: Option<&[u8]>| {
        let mut c = lb.cmd();
        c.args(["put", name]).args(paths).arg("--json");
        let out = run_timeout(&mut c, T, stdin).unwrap();
        let out: Output = out;
        json_of(&out)
    };
    let first = put("ghost", &[&content, &src.path().join("notes.txt")], None);
    assert_eq!(first["kind"], "tar", "{first}");
    assert!(first["parts"].as_array().unwrap().len() > 1, "{first}");

    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("restored");
    let out = lb.run_restore_bin(&["get", "ghost", dest.to_str().unwrap()], T);
    expect_success(&out, "get ghost");
    assert_eq!(
        std::fs::read_to_string(dest.join("content/a.txt")).unwrap(),
        "first\n"
    );
    assert_eq!(std::fs::read(dest.join("content/sub/b.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(dest.join("content/link")).unwrap(),
        Path::new("a.txt")
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("notes.txt")).unwrap(),
        "notes\n"
    );
    // Not into a directory that holds something.
    let out = lb.run_restore_bin(&["get", "ghost", dest.to_str().unwrap()], T);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: {} is not empty: get extracts only into an empty or new directory\nhint: name a new directory",
            dest.display()
        )
    );

    // A second copy later; --at picks by time.
    std::thread::sleep(Duration::from_millis(1100));
    let between = lb_now();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(content.join("a.txt"), "second\n").unwrap();
    put("ghost", &[&content], None);
    let newest = work.path().join("newest");
    lb.run_restore_bin(&["get", "ghost", newest.to_str().unwrap()], T);
    assert_eq!(
        std::fs::read_to_string(newest.join("content/a.txt")).unwrap(),
        "second\n"
    );
    let older = work.path().join("older");
    let out = lb.run_restore_bin(
        &["get", "ghost", "--at", &between, older.to_str().unwrap()],
        T,
    );
    expect_success(&out, "get --at");
    assert_eq!(
        std::fs::read_to_string(older.join("content/a.txt")).unwrap(),
        "first\n"
    );
    let out = lb.run_restore_bin(
        &[
            "get",
            "ghost",
            "--at",
            "2000-01-01 00:00:00+00",
            older.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        format!(
            "error: export \"ghost\" has no copy from 2000-01-01 00:00:00+00 or before (the oldest is from {})\nhint: `lifeboat list` shows the exports",
            first["start_time"].as_str().unwrap().replace('T', " ").replace('Z', "+00")
        )
    );

    // stdin, as it came: to a file and to stdout.
    let bytes: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let s = put("dbexport", &[Path::new("-")], Some(&bytes));
    assert_eq!(s["kind"], "stream");
    let file = work.path().join("dbexport.bin");
    lb.run_restore_bin(&["get", "dbexport", file.to_str().unwrap()], T);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let out = lb.run_restore_bin(&["get", "dbexport", "-"], T);
    expect_success(&out, "get to stdout");
    assert_eq!(out.stdout, bytes);

    let out = lb.run_restore_bin(&["get", "nosuch", file.to_str().unwrap()], T);
    assert_eq!(
        first_error_line(&out),
        "error: the archive holds no export named \"nosuch\"\nhint: `lifeboat list` shows the exports; `lifeboat put nosuch PATH` makes one"
    );
    let list = lb.list_json();
    let names: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dbexport", "ghost", "ghost"], "{list}");
}

/// `put NAME` without paths stores the `[[export]]` of that name: a command's stdout (a
/// failing command stores nothing and its stderr and exit status are the error) or paths.
#[test]
fn put_runs_the_configured_exports() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file.txt"), "from paths\n").unwrap();
    let extra = format!(
        "[[export]]\nname = \"cmd\"\ncommand = \"printf 'from a command'; echo a warning >&2\"\n\n\
         [[export]]\nname = \"broken\"\ncommand = \"echo boom >&2; exit 3\"\n\n\
         [[export]]\nname = \"files\"\npaths = [\"{}\"]\n",
        src.path().join("file.txt").display()
    );
    let lb = Lb::with("host=127.0.0.1 port=1 user=lifeboat", "", &extra);
    lb.run_ok(&["put", "cmd"], T);
    let out = lb.run_restore_bin(&["get", "cmd", "-"], T);
    assert_eq!(stdout_of(&out), "from a command");
    lb.run_ok(&["put", "files"], T);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("files");
    lb.run_restore_bin(&["get", "files", dest.to_str().unwrap()], T);
    assert_eq!(
        std::fs::read_to_string(dest.join("file.txt")).unwrap(),
        "from paths\n"
    );
    let out = lb.run(&["put", "broken"], T);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        first_error_line(&out),
        "error: the [[export]] command failed (exit status 3):"
    );
    assert!(
        stderr_of(&out).contains("exit status 3):\nboom\n"),
        "{}",
        stderr_of(&out)
    );
    assert!(lb.archive_files("exports/broken/").is_empty());
    // The command is not recorded in the (plain) export.json: it may hold secrets.
    let list = lb.list_json();
    assert_eq!(list["exports"].as_array().unwrap().len(), 2, "{list}");
    let meta: Vec<String> = lb
        .archive_files("exports/cmd/")
        .into_iter()
        .filter(|k| k.ends_with("export.json"))
        .collect();
    let text = std::fs::read_to_string(lb.archive.join(&meta[0])).unwrap();
    assert!(!text.contains("printf"), "{text}");
}

/// Now, as PostgreSQL prints it in UTC.
fn lb_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S.%6N+00"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A dump goes to every provider (a file store and two S3 servers, moto with Object
/// Lock); with one part corrupt and another deleted on the first provider, dump-restore
/// reads them from the next and the restored database is the same.
#[test]
fn dump_to_three_providers_restores_past_a_bad_local_copy() {
    use crate::support::s3::cred_env;
    let major = newest_major().expect("a PostgreSQL major");
    let pg = PgCluster::start(major, ClusterOpts::default());
    populate(&pg);
    let (_moto, _fs, storage) = crate::s3::two_s3_providers();
    let lb = Lb::for_cluster(&pg, &format!("{SMALL_PARTS}\n{storage}"));
    let bin = lb.restore_bin();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(&bin);
        c.arg("--config")
            .arg(&lb.config)
            .arg("--identity")
            .arg(&lb.identity)
            .env("HOME", lb.dir.path())
            .envs(cred_env())
            .args(args);
        run_timeout(&mut c, T, None).unwrap()
    };
    let pgbin = pg_bin_dir(major);
    let out = run(&[
        "dump",
        "--db",
        "app",
        "--pg-bin",
        pgbin.to_str().unwrap(),
        "--json",
    ]);
    expect_success(&out, "dump to three providers");
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let parts: Vec<String> = lb
        .archive_files("dumps/")
        .into_iter()
        .filter(|k| k.contains("/db-0.dump."))
        .collect();
    assert!(parts.len() >= 2, "{parts:?}");
    // Every provider holds every object.
    let out = run(&["--json", "verify", "--providers"]);
    let rep = json_of(&out);
    assert!(out.status.success(), "{rep}");
    let corrupt = lb.archive.join(&parts[0]);
    let mut b = std::fs::read(&corrupt).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&corrupt, b).unwrap();
    std::fs::remove_file(lb.archive.join(&parts[1])).unwrap();
    pg.psql("CREATE DATABASE copy");
    let out = run(&[
        "dump-restore",
        &id,
        "--pg-bin",
        pgbin.to_str().unwrap(),
        "--dbname",
        &conninfo_db(&pg, "copy"),
    ]);
    expect_success(&out, "dump-restore past a bad local copy");
    assert!(
        stderr_of(&out).contains("read from the fallback provider"),
        "{}",
        stderr_of(&out)
    );
    assert_same(
        &plain_dump(&pg, "app"),
        &plain_dump(&pg, "copy"),
        "copy from S3",
    );
}
