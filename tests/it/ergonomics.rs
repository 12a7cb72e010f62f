//! Operator ergonomics: the completion scripts and manual pages generated from the clap
//! definitions, judged against `lifeboat --help` (clap's own renderer) and by the real
//! bash and groff.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn lifeboat(args: &[&str]) -> String {
    let out = run_timeout(
        Command::new(BIN).args(args).env_remove("LIFEBOAT_CONFIG"),
        Duration::from_secs(30),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    expect_success(&out, &format!("lifeboat {args:?}"))
}

/// The commands `lifeboat --help` lists (without `help`).
fn commands() -> Vec<String> {
    let help = lifeboat(&["--help"]);
    let cmds: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(cmds.len() >= 20, "{help}");
    cmds
}

/// What bash's completion of `words` (the last one being completed) offers.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let prog = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _lifeboat lifeboat {} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1,
        format_args!("'{}'", words[words.len() - 1]),
        format_args!("'{}'", words[words.len() - 2]),
    );
    let out = run_timeout(
        Command::new("bash").arg("-c").arg(prog),
        Duration::from_secs(30),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    expect_success(&out, "bash completion")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_bash_completion_knows_every_command_and_option() {
    let script = lifeboat(&["completions", "bash"]);
    for c in commands() {
        assert!(
            script.contains(&format!(
                "lifeboat__subcmd__{}",
                c.replace('-', "__subcmd__")
            )),
            "{c}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lifeboat.bash");
    std::fs::write(&path, &script).expect("write");
    // The real bash, completing as a user types.
    assert_eq!(
        bash_complete(&path, &["lifeboat", "st"]),
        ["stream", "status"]
    );
    assert_eq!(
        bash_complete(&path, &["lifeboat", "restore", "--target-ti"]),
        ["--target-time", "--target-timeline"]
    );
    assert_eq!(
        bash_complete(&path, &["lifeboat", "completions", "z"]),
        ["zsh"]
    );
    let all = bash_complete(&path, &["lifeboat", ""]);
    for c in commands() {
        assert!(all.contains(&c), "{c} not offered: {all:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    let zsh = lifeboat(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef lifeboat"), "{zsh:.200}");
    let fish = lifeboat(&["completions", "fish"]);
    for c in commands() {
        assert!(zsh.contains(&format!("'{c}:")), "zsh lacks {c}");
        assert!(fish.contains(&format!("-a \"{c}\"")), "fish lacks {c}");
    }
}

#[test]
fn the_man_page_has_every_command_and_groff_reads_it_cleanly() {
    let page = lifeboat(&["man"]);
    assert!(page.contains(".TH lifeboat 1"), "{page:.300}");
    for c in commands() {
        assert!(
            page.contains(&format!("lifeboat\\-{}(1)", c.replace('-', "\\-"))),
            "the man page lacks {c}"
        );
    }
    for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
        assert!(page.contains(section), "{section}");
    }
    // One page per command with --dir, each with the command's options.
    let dir = tempfile::tempdir().expect("tempdir");
    lifeboat(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    for c in commands() {
        let p = dir.path().join(format!("lifeboat-{c}.1"));
        assert!(p.exists(), "{p:?}");
    }
    let restore =
        std::fs::read_to_string(dir.path().join("lifeboat-restore.1")).expect("restore page");
    assert!(restore.contains("\\-\\-target\\-time"), "{restore}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lifeboat.1")).expect("main page"),
        page
    );
    // groff: no warnings for the page as generated.
    if Command::new("groff").arg("--version").output().is_err() {
        eprintln!("SKIPPED groff check: groff is not installed");
        return;
    }
    let out = run_timeout(
        Command::new("groff").args(["-man", "-ww", "-z"]),
        Duration::from_secs(30),
        Some(page.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    assert_eq!(stderr_of(&out).trim(), "", "groff warned");
}

/// `lifeboat ARGS` on a terminal (a pty made by `script`): everything it wrote there.
fn on_a_terminal(lb: &Lb, args: &[&str]) -> (bool, String) {
    let mut line = vec![
        shell_quote(&lb.restore_bin().to_string_lossy()),
        "--config".into(),
        shell_quote(&lb.config.to_string_lossy()),
        "--identity".into(),
        shell_quote(&lb.identity.to_string_lossy()),
    ];
    line.extend(args.iter().map(|a| shell_quote(a)));
    let out = run_timeout(
        Command::new("script")
            .args(["-qefc", &line.join(" "), "/dev/null"])
            .env("TERM", "xterm")
            .env("HOME", lb.dir.path()),
        Duration::from_secs(600),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (out.status.success(), stdout_of(&out))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Progress bars on the long operations (verify --full, restore): drawn on a terminal,
/// never with --quiet, never when standard error is not a terminal.
#[test]
fn long_operations_show_progress_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: script (util-linux) is not installed");
        return;
    }
    let pg = PgCluster::start(15, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, SMALL_PARTS);
    pg.psql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g",
    );
    let streamer = lb.start_streamer(&pg);
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup",
    );
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    stop_streamer(streamer);

    let (ok, tty) = on_a_terminal(&lb, &["verify", "--full"]);
    assert!(ok, "{tty}");
    assert!(tty.contains("verify local: "), "{tty}");
    assert!(tty.contains(" objects, "), "{tty}");
    let (ok, quiet) = on_a_terminal(&lb, &["--quiet", "verify", "--full"]);
    assert!(ok, "{quiet}");
    assert!(!quiet.contains("verify local"), "{quiet}");
    let piped = lb.run_restore_bin(&["verify", "--full"], Duration::from_secs(600));
    expect_success(&piped, "verify --full");
    assert!(
        !stderr_of(&piped).contains("verify local"),
        "{}",
        stderr_of(&piped)
    );

    let id = lb.list_json()["backups"][0]["id"]
        .as_str()
        .expect("a backup")
        .to_string();
    let work = pg_tempdir("lbprogress-");
    let bin = pg_bin_dir(15);
    let restore = |dir: &str, quiet: bool| {
        let data = work.path().join(dir);
        let mut a = vec!["restore", "--pgdata", data.to_str().expect("utf-8")];
        a.extend(["--pg-bin", bin.to_str().expect("utf-8")]);
        if quiet {
            a.insert(0, "-q");
        }
        on_a_terminal(&lb, &a)
    };
    let (ok, tty) = restore("a", false);
    assert!(ok, "{tty}");
    assert!(tty.contains(&format!("restore {id} [")), "{tty}");
    assert!(tty.contains("ETA"), "{tty}");
    let (ok, quiet) = restore("b", true);
    assert!(ok, "{quiet}");
    assert!(!quiet.contains("ETA"), "{quiet}");
}

fn run_bin(args: &[&str]) -> std::process::Output {
    run_timeout(
        Command::new(BIN).args(args).env_remove("LIFEBOAT_CONFIG"),
        Duration::from_secs(120),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `init --json`: one JSON document with what was written and every check's outcome,
/// also when the server is not ready (exit 1, the error on stderr).
#[test]
fn init_prints_one_json_document() {
    let pg = PgCluster::start(
        15,
        ClusterOpts::default().conf("max_slot_wal_keep_size = '1GB'"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("lifeboat.toml");
    let id = dir.path().join("identity.txt");
    let archive = format!("file://{}", dir.path().join("archive").display());
    let spool = dir.path().join("spool");
    let out = run_bin(&[
        "--json",
        "--config",
        cfg.to_str().expect("utf-8"),
        "init",
        "--identity-out",
        id.to_str().expect("utf-8"),
        "--archive",
        &archive,
        "--conninfo",
        &pg.conninfo(REPL_USER, Some(REPL_PASSWORD)),
        "--spool-dir",
        spool.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let json = json_of(&out);
    let recipient = run_ok(
        Command::new("age-keygen").arg("-y").arg(&id),
        Duration::from_secs(10),
    );
    assert_eq!(json["recipient"], recipient.trim(), "{json}");
    assert_eq!(json["identity"], id.to_str().expect("utf-8"), "{json}");
    assert_eq!(
        json["configuration"],
        cfg.to_str().expect("utf-8"),
        "{json}"
    );
    assert_eq!(json["ready"], true, "{json}");
    let checks = json["checks"].as_array().expect("checks");
    assert!(checks.len() >= 5, "{json}");
    let slot_limit = checks
        .iter()
        .find(|c| {
            c["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("max_slot_wal_keep_size"))
        })
        .expect("the slot limit check");
    assert_eq!(slot_limit["outcome"], "warn", "{json}");
    assert_eq!(
        slot_limit["fix"], "ALTER SYSTEM SET max_slot_wal_keep_size = -1",
        "{json}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("AGE-SECRET-KEY"));

    // A role without REPLICATION: not ready, exit 1, the document still printed.
    pg.psql("CREATE ROLE plain LOGIN");
    let plain = format!(
        "host={} port={} user=plain dbname=postgres",
        pg.socket_dir.display(),
        pg.port
    );
    let out = run_bin(&["--json", "init", "--check", "--conninfo", &plain]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["ready"], false, "{json}");
    let repl = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["text"] == "role plain lacks the REPLICATION attribute")
        .unwrap_or_else(|| panic!("no REPLICATION check: {json}"));
    assert_eq!(repl["outcome"], "fail", "{json}");
    assert_eq!(repl["fix"], "ALTER ROLE \"plain\" REPLICATION", "{json}");
    assert!(
        stderr_of(&out).starts_with("error: the server is not ready for lifeboat\n"),
        "{}",
        stderr_of(&out)
    );
}
