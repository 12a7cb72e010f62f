//! `lifeboat get`: an export fetched back (the newest, or as of --at).

use std::path::PathBuf;
use std::sync::Arc;

use super::{absolute, print_json, usage, Ctx, Failure};
use crate::archive::Archive;
use crate::core::catalog;
use crate::core::fmt;
use crate::restore::{self, get};

#[derive(clap::Args)]
pub struct Args {
    /// The export's name.
    name: String,
    /// The newest copy put at or before this time (default: the newest).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Where: a new or empty directory for files, a file (or - for stdout) for a stream.
    dest: PathBuf,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    if !catalog::is_export_name(&a.name) {
        return Err(usage(format!(
            "get: \"{}\" is not an export name\nhint: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot",
            a.name
        )));
    }
    let at =
        a.at.as_deref()
            .map(|t| restore::resolve_time(t).map_err(|e| usage(format!("--at: {e}"))))
            .transpose()?;
    let opener = Arc::new(ctx.opener()?);
    let archive = Archive::open(&ctx.cfg)?;
    let dest = if a.dest.as_os_str() == "-" {
        a.dest.clone()
    } else {
        absolute(&a.dest)
    };
    let rep = get::run(
        &archive,
        opener,
        &get::GetOptions {
            name: a.name.clone(),
            at,
            dest,
        },
    )
    .await?;
    if ctx.json() {
        return print_json(&rep);
    }
    if rep.dest != "-" {
        println!(
            "export {} {} (put {}): {} written to {}",
            rep.name,
            rep.id,
            rep.start_time,
            fmt::size(rep.bytes),
            rep.dest
        );
    }
    Ok(())
}
