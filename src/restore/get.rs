//! `lifeboat get`: an export (`lifeboat put`) fetched back: the newest, or the newest
//! put at or before `--at`. A tar export is extracted into DEST (which must be empty or
//! new; paths leaving it are refused by the tar reader); a stream is written to the file
//! DEST atomically, or to stdout with `-`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::archive::Archive;
use crate::core::catalog::ExportMeta;
use crate::core::plan::Timestamp;
use crate::pipeline::Opener;
use crate::restore::dump::{stream_parts, write_file};
use crate::restore::PartReader;

pub struct GetOptions {
    pub name: String,
    pub at: Option<Timestamp>,
    /// A directory (tar exports), a file, or `-` for stdout (stream exports).
    pub dest: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct GetReport {
    pub name: String,
    pub id: String,
    pub kind: String,
    pub start_time: Timestamp,
    pub bytes: u64,
    pub dest: String,
}

/// The export to fetch: the newest of `name` put at or before `at`.
pub fn choose<'a>(
    all: &'a [ExportMeta],
    name: &str,
    at: Option<Timestamp>,
) -> Result<&'a ExportMeta> {
    let mine: Vec<&ExportMeta> = all.iter().filter(|e| e.name == name).collect();
    let Some(oldest) = mine.first() else {
        bail!("the archive holds no export named \"{name}\"\nhint: `lifeboat list` shows the exports; `lifeboat put {name} PATH` makes one");
    };
    let chosen = mine
        .iter()
        .filter(|e| at.map_or(true, |t| e.start_time <= t))
        .max_by(|a, b| (a.start_time, &a.id).cmp(&(b.start_time, &b.id)));
    match (chosen, at) {
        (Some(e), _) => Ok(e),
        (None, Some(t)) => bail!(
            "export \"{name}\" has no copy from {t} or before (the oldest is from {})\nhint: `lifeboat list` shows the exports",
            oldest.start_time
        ),
        (None, None) => unreachable!("mine is not empty"),
    }
}

fn empty_or_new(dir: &std::path::Path) -> Result<bool> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{} is a file, and the export is a tar of files\nhint: name a new directory",
            dir.display()
        );
    }
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                bail!(
                    "{} is not empty: get extracts only into an empty or new directory\nhint: name a new directory",
                    dir.display()
                );
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow!("{}: {e}", dir.display())),
    }
}

pub async fn run(archive: &Archive, opener: Arc<Opener>, opts: &GetOptions) -> Result<GetReport> {
    let all = archive.exports().await?;
    let e = choose(&all, &opts.name, opts.at)?.clone();
    let mut report = GetReport {
        name: e.name.clone(),
        id: e.id.clone(),
        kind: e.kind.clone(),
        start_time: e.start_time,
        bytes: 0,
        dest: opts.dest.display().to_string(),
    };
    match e.kind.as_str() {
        "stream" if opts.dest.as_os_str() == "-" => {
            report.bytes = stream_parts(archive, &opener, &e.parts, |plain| {
                let r = std::io::stdout()
                    .lock()
                    .write_all(&plain)
                    .context("writing to stdout");
                async move { r.map(|_| true) }
            })
            .await?;
            std::io::stdout().flush().context("writing to stdout")?;
        }
        "stream" => {
            report.bytes = write_file(archive, &opener, &e.parts, &opts.dest).await?;
        }
        "tar" => {
            let dest = &opts.dest;
            let created = empty_or_new(dest)?;
            std::fs::create_dir_all(dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let d = dest.clone();
            let unpack = tokio::task::spawn_blocking(move || -> Result<()> {
                let mut a = tar::Archive::new(PartReader::new(rx));
                a.set_preserve_permissions(true);
                a.set_overwrite(false);
                a.unpack(&d)
                    .with_context(|| format!("extracting into {}", d.display()))
            });
            let fed = stream_parts(archive, &opener, &e.parts, |plain| {
                let tx = tx.clone();
                async move { Ok(tx.send(plain).await.is_ok()) }
            })
            .await;
            drop(tx);
            let unpacked = unpack
                .await
                .map_err(|e| anyhow!("the extraction task failed: {e}"))?;
            if let Err(err) = fed.and_then(|n| unpacked.map(|_| n)) {
                // Leave the destination as it was: new and gone, or empty.
                if created {
                    let _ = std::fs::remove_dir_all(dest);
                } else if let Ok(rd) = std::fs::read_dir(dest) {
                    for x in rd.flatten() {
                        let p = x.path();
                        let _ = if p.is_dir() && !p.is_symlink() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
                return Err(err);
            }
            report.bytes = e.plain_size;
        }
        k => bail!(
            "export {} {} is of kind \"{k}\", which this lifeboat does not know",
            e.name,
            e.id
        ),
    }
    Ok(report)
}
