//! lifeboat-specific test helpers: a workspace with an age key pair, a config file, a
//! `file://` archive and a spool, and ways to run the real `lifeboat` binary against it and
//! read what it printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::pg::{PgCluster, REPL_PASSWORD, REPL_USER};
use super::process::{run_ok, run_timeout, sigterm, wait_child, KillOnDrop};
use super::wal::{fmt_lsn, parse_lsn};

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

pub struct Lb {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub identity: PathBuf,
    pub archive: PathBuf,
    pub spool: PathBuf,
}

/// Make an age key pair with the real `age-keygen`; returns (identity file, recipient).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = dir.join(name);
    run_ok(
        Command::new("age-keygen").arg("-o").arg(&id),
        Duration::from_secs(10),
    );
    let r = run_ok(
        Command::new("age-keygen").arg("-y").arg(&id),
        Duration::from_secs(10),
    );
    (id, r.trim().to_string())
}

impl Lb {
    /// A workspace whose config streams from `conninfo`.
    pub fn new(conninfo: &str) -> Lb {
        Self::with(conninfo, "", "")
    }

    /// A workspace that streams from `pg` as the replication role over TCP (SCRAM), with
    /// `extra` TOML after the `[[storage]]` table (e.g. `SMALL_PARTS`, another provider).
    pub fn for_cluster(pg: &PgCluster, extra: &str) -> Lb {
        Self::with(&pg.conninfo(REPL_USER, Some(REPL_PASSWORD)), "", extra)
    }

    /// A workspace whose config streams from `conninfo`, with `postgres_extra` lines in
    /// the `[postgres]` table and `extra` TOML appended after the `[[storage]]` table
    /// (e.g. "[backup]\nmax_rate = 4096").
    pub fn with(conninfo: &str, postgres_extra: &str, extra: &str) -> Lb {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, recipient) = keygen(dir.path(), "identity.txt");
        let archive = dir.path().join("archive");
        let spool = dir.path().join("spool");
        let config = dir.path().join("lifeboat.toml");
        let text = format!(
            "[postgres]\nconninfo = \"{conninfo}\"\nslot = \"lifeboat\"\n{postgres_extra}\n\n\
             [encryption]\nrecipients = [\"{recipient}\"]\n\n\
             [wal]\nspool_dir = \"{}\"\nmax_delay = \"300ms\"\n\n\
             [[storage]]\nname = \"local\"\nurl = \"file://{}\"\n\n{extra}\n",
            spool.display(),
            archive.display()
        );
        std::fs::write(&config, text).expect("write config");
        Lb {
            dir,
            config,
            identity,
            archive,
            spool,
        }
    }

    /// The newest archived end on timeline `tli` (0 when it has none).
    pub fn archived_end(&self, tli: u64) -> u64 {
        self.wal_ranges()
            .iter()
            .filter(|r| r.0 == tli)
            .map(|r| r.2)
            .max()
            .unwrap_or(0)
    }

    /// Point the workspace's config at another server (as `for_cluster` does): the same
    /// archive and spool, as an operator does after a failover.
    pub fn retarget(&self, pg: &PgCluster) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let conninfo = pg.conninfo(REPL_USER, Some(REPL_PASSWORD));
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("conninfo = ") {
                    format!("conninfo = \"{conninfo}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.config, text.join("\n") + "\n").expect("write config");
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config);
        c.env_remove("LIFEBOAT_IDENTITY_FILE");
        c.env("HOME", self.dir.path());
        c
    }

    /// Run `lifeboat <args>` to completion.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_timeout(&mut c, timeout, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `lifeboat <args>`, which must succeed; its stdout.
    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> String {
        expect_success(&self.run(args, timeout), &format!("lifeboat {args:?}"))
    }

    /// `lifeboat list --json`, which must succeed.
    pub fn list_json(&self) -> serde_json::Value {
        let out = self.run(&["list", "--json"], Duration::from_secs(60));
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)
    }

    /// Start `lifeboat stream` in the background (stderr to a log file in the workspace).
    pub fn spawn_stream(&self) -> KillOnDrop {
        self.spawn_stream_with(&[])
    }

    /// `spawn_stream` with extra environment variables (e.g. `LIFEBOAT_FAULT_INJECT`).
    pub fn spawn_stream_with(&self, env: &[(&str, &str)]) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stream.log"))
            .expect("log");
        let mut c = self.cmd();
        c.envs(env.iter().copied())
            .arg("stream")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        KillOnDrop(c.spawn().expect("spawn lifeboat stream"))
    }

    /// Start a streamer and wait until it archives the server's current position, so that
    /// any backup taken afterwards has its WAL archived.
    pub fn start_streamer(&self, pg: &PgCluster) -> KillOnDrop {
        let child = self.spawn_stream();
        wait_caught_up(pg, Duration::from_secs(120), self);
        child
    }

    pub fn stream_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stream.log")).unwrap_or_default()
    }

    /// `lifeboat wal-fetch NAME DEST` with the identity.
    pub fn wal_fetch(&self, name: &str, dest: &Path) -> Output {
        let mut c = self.cmd();
        c.arg("--identity")
            .arg(&self.identity)
            .arg("wal-fetch")
            .arg(name)
            .arg(dest);
        run_timeout(&mut c, Duration::from_secs(60), None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `verify --json` (optionally `--full`): (exit success, report).
    pub fn verify(&self, full: bool) -> (bool, serde_json::Value) {
        let mut args = vec!["--json", "--identity"];
        let id = self.identity.to_string_lossy().into_owned();
        args.push(&id);
        args.push("verify");
        if full {
            args.push("--full");
        }
        let out = self.run(&args, Duration::from_secs(300));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verify printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// The archive's contiguous WAL ranges on the first provider: (timeline, start, end).
    pub fn wal_ranges(&self) -> Vec<(u64, u64, u64)> {
        let (_, v) = self.verify(false);
        v["providers"][0]["wal"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["timeline"].as_u64().unwrap(),
                            parse_lsn(r["start_lsn"].as_str().unwrap()),
                            parse_lsn(r["end_lsn"].as_str().unwrap()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys of every object under `prefix` in the file archive.
    pub fn archive_files(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.archive.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let k = p
                        .strip_prefix(&self.archive)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    if k.starts_with(prefix) {
                        out.push(k);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// `[backup]` with 1 MiB parts, so that even a small cluster's backup has several.
pub const SMALL_PARTS: &str = "[backup]\npart_size = \"1MiB\"\n";

/// Stop a background `lifeboat stream` with SIGTERM and wait (up to 60 s) until it exits.
pub fn stop_streamer(mut child: KillOnDrop) {
    sigterm(&mut child);
    wait_child(&mut child, Duration::from_secs(60), "lifeboat stream");
}

/// Assert that a command succeeded (else panic with both streams); its stdout.
pub fn expect_success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first line of stderr that starts with `error: ` (log lines come before it) and the
/// `hint: ` line after it, if any; panics, showing stderr, when there is no error line.
pub fn first_error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let mut lines = err.lines().skip_while(|l| !l.starts_with("error: "));
    let mut text = lines
        .next()
        .unwrap_or_else(|| panic!("no error line in: {err}"))
        .to_string();
    // The hint that goes with it, on its own line.
    for hint in lines.take_while(|l| l.starts_with("hint: ")) {
        text.push('\n');
        text.push_str(hint);
    }
    text
}

/// stdout as text.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON document a `--json` command printed on stdout.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every file under `root`, as sorted paths relative to it.
pub fn files(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                v.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    v.sort();
    v
}

/// The slot's restart_lsn on `pg` (None when the slot is missing or has none).
pub fn slot_restart_lsn(pg: &PgCluster, slot: &str) -> Option<u64> {
    let v = pg.psql(&format!(
        "SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    (!v.is_empty()).then(|| parse_lsn(&v))
}

/// Wait until the lifeboat slot on `pg` has advanced to at least `lsn` (the streamer has
/// archived everything before it).
pub fn wait_archived(pg: &PgCluster, lsn: u64, timeout: Duration, lb: &Lb) {
    let deadline = Instant::now() + timeout;
    loop {
        if slot_restart_lsn(pg, "lifeboat").is_some_and(|r| r >= lsn) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "lifeboat did not archive up to {} within {timeout:?}; slot at {:?}\nstream log:\n{}",
                fmt_lsn(lsn),
                slot_restart_lsn(pg, "lifeboat").map(fmt_lsn),
                lb.stream_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until everything the server has written so far is archived.
pub fn wait_caught_up(pg: &PgCluster, timeout: Duration, lb: &Lb) {
    wait_archived(pg, parse_lsn(&pg.current_lsn()), timeout, lb);
}

impl Lb {
    /// A copy of the binary inside the workspace (which the PostgreSQL user may read), so
    /// that the restore_command a restore writes survives concurrent rebuilds, and the
    /// workspace opened to that user (the server runs `wal-fetch` as itself).
    pub fn restore_bin(&self) -> PathBuf {
        let bin = self.dir.path().join("lifeboat");
        if !bin.exists() {
            std::fs::copy(BIN, &bin).expect("copy the lifeboat binary");
        }
        let mut c = Command::new("chmod");
        c.arg("-R").arg("a+rX").arg(self.dir.path());
        run_ok(&mut c, Duration::from_secs(30));
        bin
    }

    /// `lifeboat --identity ID <args>` run from the workspace copy of the binary.
    pub fn run_restore_bin(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = Command::new(self.restore_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--identity")
            .arg(&self.identity)
            .env_remove("LIFEBOAT_IDENTITY_FILE")
            .env("HOME", self.dir.path())
            .args(args);
        run_timeout(&mut c, timeout, None).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Start PostgreSQL `major` on a directory `lifeboat restore` wrote and wait until recovery
/// has finished and the server was promoted.
pub fn start_restored(major: u32, datadir: &Path) -> PgCluster {
    let pg = PgCluster::start_from_datadir(major, datadir, Duration::from_secs(300));
    pg.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(300));
    pg
}
