//! Bad input that needs no server, pinned as data in the style of trycmd: each
//! `tests/cmd/*.toml` holds cases (arguments, environment, files) and what the real binary
//! must answer (exit code, stdout and stderr, exactly).
//!
//! ```toml
//! [[case]]
//! name = "endpos-not-an-lsn"          # unique within its file
//! args = ["--config", "lifeboat.toml", "stream", "--endpos", "nope"]
//! env = { LIFEBOAT_IDENTITY_FILE = "[CWD]/nowhere" }   # optional
//! files = { "extra.toml" = "..." }    # optional: added to the sandbox, or replacing a file
//! status = 2
//! stdout = ""                         # optional; empty when absent
//! stderr = '''
//! error: --endpos: ...
//! '''
//! ```
//!
//! Each case runs in a sandbox: a fresh temp dir holding a copy of `tests/cmd/sandbox/`
//! (a valid `lifeboat.toml`) and the case's files, which is the binary's working directory
//! and HOME. No `PG*`, `LIFEBOAT_*` or `AWS_*` variable reaches it from outside. `[CWD]` in
//! args, env and files stands for the sandbox's path; in stdout and stderr the sandbox's
//! path is shown as `[CWD]`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde::Deserialize;

use crate::support::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    status: i32,
    #[serde(default)]
    stdout: String,
    stderr: String,
}

fn cmd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd")
}

/// Every case file, sorted by name.
fn case_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(cmd_dir())
        .expect("tests/cmd")
        .map(|e| e.expect("tests/cmd entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

/// A fresh sandbox: `tests/cmd/sandbox/` and the case's files, `[CWD]` filled in.
fn sandbox(case: &Case) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().display().to_string();
    let mut files = BTreeMap::new();
    for e in fs::read_dir(cmd_dir().join("sandbox")).expect("tests/cmd/sandbox") {
        let p = e.expect("sandbox entry").path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, fs::read_to_string(&p).expect("sandbox file"));
    }
    files.extend(case.files.clone());
    for (name, text) in files {
        let p = dir.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text.replace("[CWD]", &cwd)).unwrap();
    }
    dir
}

fn run_case(case: &Case, dir: &Path) -> Output {
    let cwd = dir.display().to_string();
    let mut c = clean_command(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("LIFEBOAT_") || k.starts_with("AWS_"))
        {
            c.env_remove(&k);
        }
    }
    c.current_dir(dir).env("HOME", dir);
    c.args(case.args.iter().map(|a| a.replace("[CWD]", &cwd)));
    for (k, v) in &case.env {
        c.env(k, v.replace("[CWD]", &cwd));
    }
    run_timeout(&mut c, Duration::from_secs(30), None).unwrap_or_else(|e| panic!("{e}"))
}

/// What the binary printed, with the sandbox's path shown as `[CWD]`.
fn normalized(bytes: &[u8], dir: &Path) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if let Ok(real) = dir.canonicalize() {
        s = s.replace(&real.display().to_string(), "[CWD]");
    }
    s.replace(&dir.display().to_string(), "[CWD]")
}

/// A mismatch, with the actual output ready to paste into the case file.
fn describe_mismatch(
    file: &Path,
    case: &Case,
    status: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> String {
    format!(
        "{} [{}] lifeboat {}\n  expected status {}, stdout {:?}, stderr:\n{}\n  got:\nstatus = {}\nstdout = '''\n{}'''\nstderr = '''\n{}'''\n",
        file.display(),
        case.name,
        case.args.join(" "),
        case.status,
        case.stdout,
        case.stderr,
        status.map_or("none (killed by a signal)".to_string(), |s| s.to_string()),
        stdout,
        stderr
    )
}

#[test]
fn bad_input_without_a_server() {
    let mut failures = Vec::new();
    let mut count = 0;
    for file in case_files() {
        let text = fs::read_to_string(&file).unwrap();
        let cases: CaseFile =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut names = std::collections::HashSet::new();
        for case in &cases.case {
            assert!(
                names.insert(case.name.as_str()),
                "{}: two cases named {}",
                file.display(),
                case.name
            );
            let dir = sandbox(case);
            let out = run_case(case, dir.path());
            let (stdout, stderr) = (
                normalized(&out.stdout, dir.path()),
                normalized(&out.stderr, dir.path()),
            );
            if out.status.code() != Some(case.status)
                || stdout != case.stdout
                || stderr != case.stderr
            {
                failures.push(describe_mismatch(
                    &file,
                    case,
                    out.status.code(),
                    &stdout,
                    &stderr,
                ));
            }
            count += 1;
        }
    }
    assert!(count > 0, "no cases in {}", cmd_dir().display());
    assert!(
        failures.is_empty(),
        "{} of {count} cases differ:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
