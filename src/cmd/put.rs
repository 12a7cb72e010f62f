//! `lifeboat put`: files, a directory tree or stdin through the pipeline into the archive.

use std::path::PathBuf;

use super::{print_json, usage, Ctx, Failure};
use crate::core::catalog;
use crate::core::fmt;
use crate::ingest::put::{self, Source};

#[derive(clap::Args)]
pub struct Args {
    /// The export's name (A-Z a-z 0-9 . _ -), e.g. the service's.
    name: String,
    /// Files and directories to store (as one tar), or `-` for stdin (stored as it comes);
    /// none: the [[export]] entry of this name in the configuration.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    if !catalog::is_export_name(&a.name) {
        return Err(usage(format!(
            "put: \"{}\" is not an export name\nhint: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot",
            a.name
        )));
    }
    let stdin = a.paths.iter().any(|p| p.as_os_str() == "-");
    if stdin && a.paths.len() > 1 {
        return Err(usage(
            "put: - (stdin) cannot be combined with paths\nhint: put stdin and files as two exports".into(),
        ));
    }
    ctx.require_for_writing()?;
    let source = if stdin {
        Source::Stdin
    } else if !a.paths.is_empty() {
        Source::Paths(a.paths.clone())
    } else {
        match ctx.cfg.export.iter().find(|x| x.name == a.name) {
            Some(x) => match &x.command {
                Some(c) => Source::Command(c.clone()),
                None => Source::Paths(x.paths.clone()),
            },
            None => {
                return Err(usage(format!(
                    "put: no PATH given, and {} has no [[export]] named \"{}\"\nhint: give the files, directories or - (stdin) to store, or add [[export]] name = \"{}\" with a command or paths",
                    ctx.cfg_name(),
                    a.name,
                    a.name
                )))
            }
        }
    };
    let meta = put::run(&ctx.cfg, &a.name, source).await?;
    if ctx.json() {
        return print_json(&meta);
    }
    println!(
        "export {} {}: {} ({}), {} stored in {} parts",
        meta.name,
        meta.id,
        fmt::size(meta.plain_size),
        meta.kind,
        fmt::size(meta.stored_size),
        meta.parts.len()
    );
    Ok(())
}
