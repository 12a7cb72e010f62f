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
