//! Self-test of the PostgreSQL test harness (`support::pg`): every installed major starts,
//! answers a query, and the pg_hba / role matrix behaves as documented.
use crate::support::*;

#[test]
fn every_available_major_starts_and_answers() {
    for major in require_majors() {
        let pg = PgCluster::start(major, ClusterOpts::default());
        let v = pg.psql("SELECT current_setting('server_version_num')");
        assert!(
            v.starts_with(&major.to_string()),
            "PostgreSQL {major}: server_version_num = {v}"
        );
        assert_eq!(pg.psql("SHOW wal_level"), "replica");
        // the replication role can log in over TCP with SCRAM
        let who = pg
            .psql_conninfo(
                &pg.conninfo(REPL_USER, Some(REPL_PASSWORD)),
                "SELECT current_user",
            )
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        assert_eq!(who, REPL_USER);
    }
}

#[test]
fn auth_matrix() {
    let major = newest_major().expect("no PostgreSQL installed (run scripts/install-pg.sh)");
    let pg = PgCluster::start(major, ClusterOpts::default());
    let repl = |user: &str, pw: &str| {
        pg.psql_conninfo(
            &format!("{} replication=true", pg.conninfo(user, Some(pw))),
            "IDENTIFY_SYSTEM",
        )
    };
    for (u, p) in [
        (REPL_USER, REPL_PASSWORD),
        (MD5_USER, MD5_PASSWORD),
        (PLAIN_USER, PLAIN_PASSWORD),
    ] {
        let r = repl(u, p).unwrap_or_else(|e| panic!("{u}: {e}"));
        assert!(
            r.starts_with(&pg.system_identifier().to_string()),
            "{u}: {r}"
        );
    }
    assert!(repl(REPL_USER, "wrong")
        .unwrap_err()
        .contains("password authentication failed"));
    assert!(
        repl(NOREPL_USER, NOREPL_PASSWORD).is_err(),
        "norepl must not get a replication connection"
    );
    assert!(repl(REJECTED_USER, REJECTED_PASSWORD)
        .unwrap_err()
        .contains("pg_hba.conf rejects"));
    // TLS-only role against a non-TLS server: rejected
    assert!(repl(TLS_USER, TLS_PASSWORD)
        .unwrap_err()
        .contains("pg_hba.conf rejects"));
}
