//! `lifeboat completions SHELL`: the shell's completion script, generated from the clap
//! definitions (every command, option and value), on stdout. Needs no configuration.
//!
//!   lifeboat completions bash > /etc/bash_completion.d/lifeboat
//!   lifeboat completions zsh  > /usr/local/share/zsh/site-functions/_lifeboat
//!   lifeboat completions fish > ~/.config/fish/completions/lifeboat.fish

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Print the script for `cli` (the whole command line, as `main` defines it).
pub fn run(a: &Args, mut cli: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cli, "lifeboat", &mut out);
    super::write_stdout(&out)
}
