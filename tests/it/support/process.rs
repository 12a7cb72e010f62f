//! Running programs from the tests: commands with timeouts and captured output, commands
//! run as the server OS user, and the processes they leave (waiting for, signalling and
//! killing them).

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::host::{pg_os_ids, TEST_OS_USER};

// ------------------------------------------------------------------------------------
// Running commands with timeouts

/// A Command with PG* env vars removed (so CI settings like PGHOST can't leak in),
/// LC_ALL=C (English messages, no locale surprises) and a libpq connect timeout.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            c.env_remove(&k);
        }
    }
    c.env("LC_ALL", "C");
    c.env("PGCONNECT_TIMEOUT", "10");
    c
}

/// Rebuild `cmd` so that it runs as the server OS user (`runuser -u lifeboat-test --`)
/// when we are root; otherwise an identical copy. Program, args, env changes and current
/// dir are carried over (env_clear() is not visible through Command's getters).
pub fn as_pg_user(cmd: &Command) -> Command {
    let mut c = if pg_os_ids().is_some() {
        let mut c = Command::new("runuser");
        c.arg("-u")
            .arg(TEST_OS_USER)
            .arg("--")
            .arg(cmd.get_program());
        c
    } else {
        Command::new(cmd.get_program())
    };
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion with a timeout, capturing stdout/stderr. `stdin` is fed
/// (then closed) if given, else stdin is /dev/null. On timeout the child is killed and an
/// Err is returned. A non-zero exit is NOT an error here (check `status`).
pub fn run_timeout(
    cmd: &mut Command,
    timeout: Duration,
    stdin: Option<&[u8]>,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn `{}`: {e}", describe(cmd)))?;
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        let _ = tx.send((0, b));
    });
    thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        let _ = tx2.send((1, b));
    });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut parts = [Vec::new(), Vec::new()];
                    while let Ok((i, b)) = rx.recv_timeout(Duration::from_millis(500)) {
                        parts[i] = b;
                    }
                    return Err(format!(
                        "`{}` timed out after {:?}\nstdout: {}\nstderr: {}",
                        describe(cmd),
                        timeout,
                        String::from_utf8_lossy(&parts[0]),
                        String::from_utf8_lossy(&parts[1])
                    ));
                }
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("wait `{}`: {e}", describe(cmd))),
        }
    };
    // A grandchild could keep a pipe open; don't wait for it forever.
    let mut parts = [Vec::new(), Vec::new()];
    let grace = Instant::now() + Duration::from_secs(10);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, b)) => parts[i] = b,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = parts;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run, panic on timeout or non-zero exit (message includes both streams); returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run_timeout(cmd, timeout, None).unwrap_or_else(|e| panic!("{e}"));
    if !out.status.success() {
        panic!(
            "`{}` failed ({})\nstdout: {}\nstderr: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------------------------
// Processes

/// (state, ppid) of a process from /proc/<pid>/stat; None if it does not exist.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive = exists and is not a zombie (PID 1 in containers does not always reap).
pub(super) fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

pub(super) fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((_, pp)) = proc_stat(p) {
                    if pp == pid {
                        v.push(p);
                    }
                }
            }
        }
    }
    v
}

pub(super) fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

pub(super) fn wait_dead(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !pid_alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

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

/// Wait for a child with a timeout; panic (after killing it) on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
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
        thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL a child (a crash) and reap it.
pub fn kill9(child: &mut Child) {
    send_signal(child.id(), "KILL");
    let _ = child.wait();
}

/// SIGTERM a child (an orderly stop); the caller waits for it.
pub fn sigterm(child: &mut Child) {
    send_signal(child.id(), "TERM");
}
