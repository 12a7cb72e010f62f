//! lifeboat-specific test helpers: a workspace with an age key pair, a config file, a
//! `file://` archive and a spool, and ways to run the real `lifeboat` binary against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{run_ok, run_timeout, PgCluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test
/// leaves no streamer running behind it. Derefs to the `Child`.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Ok without a signal when the child was already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Lb {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub identity: PathBuf,
    pub recipient: String,
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
    /// A workspace whose config streams from `conninfo`, with `extra` TOML appended to the
    /// `[postgres]` table's neighbours (e.g. "[wal]\nmax_delay = \"200ms\"").
    pub fn new(conninfo: &str) -> Lb {
        Self::with(conninfo, "", "")
    }

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
            recipient,
            archive,
            spool,
        }
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

    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.run(args, timeout);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `lifeboat stream` in the background (stderr to a log file in the workspace).
    pub fn spawn_stream(&self) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stream.log"))
            .expect("log");
        let mut c = self.cmd();
        c.arg("stream")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        KillOnDrop(c.spawn().expect("spawn lifeboat stream"))
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

pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The WAL segment file name of `lsn` on `tli` (16 MiB segments unless `seg` says otherwise).
pub fn seg_name(tli: u64, lsn: u64, seg: u64) -> String {
    let segno = lsn / seg;
    let per = 0x1_0000_0000 / seg;
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
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

/// Start `pg_receivewal` (the oracle) into `dir` with its own slot, until `endpos`.
pub fn spawn_pg_receivewal(pg: &PgCluster, dir: &Path, slot: &str, endpos: Option<u64>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let port = pg.port.to_string();
    let receivewal = || {
        let mut c = Command::new(pg.bin("pg_receivewal"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "lifeboat",
            "--slot",
            slot,
        ])
        .env("PGPASSWORD", crate::common::REPL_PASSWORD)
        .env_remove("PGHOST");
        c
    };
    let mut create = receivewal();
    create.args(["--create-slot", "--if-not-exists"]);
    run_ok(&mut create, Duration::from_secs(30));
    let mut c = receivewal();
    c.arg("-D")
        .arg(dir)
        .args(["-n", "--synchronous"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(e) = endpos {
        c.arg("--endpos").arg(fmt_lsn(e));
    }
    c.spawn().expect("spawn pg_receivewal")
}

/// Wait for a child with a timeout; panic (after killing it) on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn kill9(child: &mut Child) {
    unsafe_kill(child.id() as i32, 9);
    let _ = child.wait();
}

pub fn sigterm(child: &mut Child) {
    unsafe_kill(child.id() as i32, 15);
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
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
