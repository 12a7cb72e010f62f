//! `lifeboat dump`, `dump-restore` and `recover-table` against real PostgreSQL servers.
//! The oracles are PostgreSQL's own programs: `pg_dump` (plain SQL) of the source and the
//! restored database must be identical, and plain `pg_restore` must read what
//! `dump-restore --output` wrote.

use std::path::Path;
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
    let text = lb.run_ok(&["list"], T);
    assert!(text.contains(&format!("{id} ")), "{text}");

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
}
