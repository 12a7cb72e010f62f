//! PostgreSQL's own client programs (`pg_dump`, `pg_dumpall`, `pg_restore`) of the right
//! major version, and how lifeboat hands them a connection.
//!
//! Invariants: a password never goes on a command line (other users of the host can read
//! command lines in `/proc`): the program gets the connection string without it and the
//! password in its environment (`PGPASSWORD`); a password file is left for libpq to read.
//! Nothing here logs a connection string that could hold a secret.

use std::path::{Path, PathBuf};

use crate::pg::conninfo::ConnParams;

/// One PostgreSQL program on this host.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    /// e.g. `17.2`.
    pub version: String,
    pub major: u32,
}

/// The version a PostgreSQL program prints: `pg_dump (PostgreSQL) 17.2 (Debian 17.2-1)`.
pub fn parse_version(text: &str) -> Option<(String, u32)> {
    let v = text
        .split(')')
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    let major = v
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((v, major))
}

fn version_of(exe: &Path) -> Option<(String, u32)> {
    let out = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The program `name` of PostgreSQL `major`: in `pg_bin` when given, else the Debian and
/// RPM layouts, else PATH. `why` says what needs that major (e.g. "the server is
/// PostgreSQL 17"), for the error.
pub fn find_tool(pg_bin: Option<&Path>, name: &str, major: u32, why: &str) -> Result<Tool, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = pg_bin {
        candidates.push(d.to_path_buf());
    } else {
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
    }
    let mut wrong = None;
    for d in candidates {
        let exe = d.join(name);
        if !exe.is_file() {
            continue;
        }
        match version_of(&exe) {
            Some((v, m)) if m == major => {
                return Ok(Tool {
                    path: exe,
                    version: v,
                    major: m,
                })
            }
            Some((v, _)) => {
                wrong.get_or_insert((exe.clone(), v));
            }
            None => {}
        }
    }
    Err(match (wrong, pg_bin) {
        (Some((exe, v)), _) => format!(
            "{why}, so this needs {name} {major}, but {} is {name} {v}\nhint: install the PostgreSQL {major} client programs (e.g. apt install postgresql-client-{major}) or pass --pg-bin with their bin directory",
            exe.display()
        ),
        (None, Some(d)) => format!(
            "{why}, so this needs {name} {major}, and there is no {name} in --pg-bin {}\nhint: pass the bin directory of a PostgreSQL {major} installation",
            d.display()
        ),
        (None, None) => format!(
            "{why}, so this needs {name} {major}, which is not installed on this host (no {name} in /usr/lib/postgresql/{major}/bin or PATH)\nhint: install the PostgreSQL {major} client programs (e.g. apt install postgresql-client-{major}) or pass --pg-bin DIR"
        ),
    })
}

/// A value for a keyword/value connection string, quoted when it needs it.
pub fn conninfo_value(v: &str) -> String {
    crate::pg::conninfo::quote_value(v)
}

/// A connection for a child program: the connection string (no password in it) for its
/// `--dbname`, and the environment that completes it.
#[derive(Debug, Clone)]
pub struct ChildConn {
    pub conninfo: String,
    /// `(name, Some(value))` to set, `(name, None)` to remove.
    pub env: Vec<(&'static str, Option<String>)>,
}

impl ChildConn {
    /// `params` with the database replaced by `dbname`.
    pub fn new(params: &ConnParams, dbname: &str) -> ChildConn {
        let mut p = params.clone();
        p.dbname = Some(dbname.to_string());
        let password = p.password.take();
        let mut env: Vec<(&'static str, Option<String>)> = vec![
            // The connection string says everything else; a service file must not
            // override it.
            ("PGSERVICE", None),
        ];
        env.push(("PGPASSWORD", password.map(|pw| pw.expose().to_string())));
        ChildConn {
            conninfo: p.redacted(),
            env,
        }
    }

    /// Apply to a command.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)\n"),
            Some(("17.2".into(), 17))
        );
        assert_eq!(
            parse_version("pg_restore (PostgreSQL) 15.10\n"),
            Some(("15.10".into(), 15))
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn the_password_stays_off_the_command_line() {
        let p = ConnParams::parse(
            "host=127.0.0.1 port=5433 user=u password='s3cret pw' dbname=app",
            &|_| None,
        )
        .unwrap();
        let c = ChildConn::new(&p, "other db");
        assert!(!c.conninfo.contains("s3cret"), "{}", c.conninfo);
        assert!(c.conninfo.contains("dbname='other db'"), "{}", c.conninfo);
        assert!(c.conninfo.contains("port=5433"), "{}", c.conninfo);
        assert!(c
            .env
            .contains(&("PGPASSWORD", Some("s3cret pw".to_string()))));
    }
}
