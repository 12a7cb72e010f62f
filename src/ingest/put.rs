//! `lifeboat put`: any other service's data through the same pipeline. Files and
//! directory trees become one tar stream (built on a blocking thread, as it is read);
//! stdin is stored as it comes. Either is cut into parts, sealed in parallel and stored on
//! every provider by the part writer `backup` and `dump` use; `export.json` is written
//! last.
//!
//! Invariants: nothing is buffered whole; an export without `export.json` does not exist
//! (a failure removes what was written, best effort).

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::archive::Archive;
use crate::config::Config;
use crate::core::catalog::{self, ExportMeta};
use crate::core::plan::Timestamp;
use crate::ingest::parts::PartWriter;
use crate::pipeline::Sealer;
use crate::storage::Mirror;

/// What to put.
pub enum Source {
    /// Files and directories, archived as a tar (each under its base name).
    Paths(Vec<PathBuf>),
    /// Standard input, as it comes.
    Stdin,
    /// The stdout of a shell command (`[[export]] command`), as it comes.
    Command(String),
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A `Write` that hands its bytes to an async consumer in chunks.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the archive writer stopped")
            })?;
        }
        Ok(())
    }
}

async fn cleanup(mirror: &Mirror, name: &str, id: &str) {
    for p in &mirror.providers {
        if !p.features().delete {
            continue;
        }
        if let Ok(objs) = p.list(&catalog::export_prefix(name, id)).await {
            for o in objs {
                let _ = p.delete(&o.key).await;
            }
        }
    }
}

/// Put `source` into the archive as export `name`.
pub async fn run(cfg: &Config, name: &str, source: Source) -> Result<ExportMeta> {
    if !catalog::is_export_name(name) {
        bail!("\"{name}\" is not an export name\nhint: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot");
    }
    let (kind, sources) = match &source {
        Source::Paths(p) => {
            for path in p {
                std::fs::symlink_metadata(path).map_err(|e| {
                    anyhow!(
                        "put: cannot read {}: {e}\nhint: check the path (files and directories are stored as they are when put reads them)",
                        path.display()
                    )
                })?;
            }
            ("tar", p.iter().map(|p| p.display().to_string()).collect())
        }
        Source::Stdin => ("stream", vec!["-".to_string()]),
        // The command may hold secrets: export.json is plain JSON, so it is not recorded.
        Source::Command(_) => ("stream", vec!["[[export]] command".to_string()]),
    };
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.backup.compression_level)?;
    let archive = Archive::open(cfg)?;
    let start_time = now();
    let secs = Timestamp::from_unix_secs(start_time.0.div_euclid(1_000_000));
    let id = crate::ingest::parts::fresh_id(
        &archive.mirror,
        &catalog::backup_id_from_rfc3339(&secs.rfc3339()),
        |id| catalog::export_prefix(name, id),
        "export",
    )
    .await?;
    let mut writer = PartWriter::new(
        archive.mirror.clone(),
        sealer,
        catalog::export_prefix(name, &id),
        cfg.backup_part_size(),
    );
    let streamed = stream(&mut writer, source).await;
    let parts = match streamed {
        Ok(()) => writer.finish(&[catalog::EXPORT_STREAM.to_string()]).await,
        Err(e) => {
            writer.settle().await;
            Err(e)
        }
    };
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            cleanup(&archive.mirror, name, &id).await;
            return Err(e);
        }
    };
    let meta = ExportMeta {
        format: catalog::FORMAT_VERSION,
        name: name.to_string(),
        id: id.clone(),
        kind: kind.into(),
        sources,
        start_time,
        end_time: now(),
        plain_size: parts.iter().map(|p| p.plain_len).sum(),
        stored_size: parts.iter().map(|p| p.stored_len).sum(),
        parts,
        created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
    };
    let body = serde_json::to_vec_pretty(&meta).context("encoding export.json")?;
    if let Err(e) = archive
        .mirror
        .put(&catalog::export_meta_key(name, &id), Bytes::from(body))
        .await
    {
        cleanup(&archive.mirror, name, &id).await;
        return Err(e.into());
    }
    tracing::info!(
        name,
        id,
        plain = meta.plain_size,
        stored = meta.stored_size,
        "export stored"
    );
    Ok(meta)
}

async fn stream(writer: &mut PartWriter, source: Source) -> Result<()> {
    writer.begin_tar(catalog::EXPORT_STREAM.to_string()).await?;
    // The bytes come from a blocking thread (a tar built as it is read, or stdin) in
    // chunks; this task stores them.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut out = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        match source {
            Source::Stdin => {
                std::io::copy(&mut std::io::stdin().lock(), &mut out).context("reading stdin")?;
            }
            Source::Command(cmd) => {
                let mut child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting the [[export]] command with sh -c")?;
                let mut stderr = child.stderr.take().expect("stderr is piped");
                let errors = std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
                    s
                });
                let mut stdout = child.stdout.take().expect("stdout is piped");
                let copied = std::io::copy(&mut stdout, &mut out);
                if copied.is_err() {
                    let _ = child.kill();
                }
                let status = child.wait().context("waiting for the [[export]] command")?;
                let stderr = errors.join().unwrap_or_default();
                copied.context("reading the [[export]] command's output")?;
                if !status.success() {
                    let how = status
                        .code()
                        .map_or_else(|| status.to_string(), |c| format!("exit status {c}"));
                    bail!("the [[export]] command failed ({how}):\n{}", stderr.trim());
                }
                if !stderr.trim().is_empty() {
                    tracing::warn!(
                        stderr = stderr.trim(),
                        "the [[export]] command printed warnings"
                    );
                }
            }
            Source::Paths(paths) => {
                let mut b = tar::Builder::new(&mut out);
                b.follow_symlinks(false);
                for p in &paths {
                    let base = p
                        .file_name()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."));
                    if p.is_dir() && !p.is_symlink() {
                        b.append_dir_all(&base, p)
                            .with_context(|| format!("archiving {}", p.display()))?;
                    } else {
                        b.append_path_with_name(p, &base)
                            .with_context(|| format!("archiving {}", p.display()))?;
                    }
                }
                b.finish().context("finishing the tar")?;
            }
        }
        out.flush().context("handing over the last bytes")?;
        Ok(())
    });
    let pushed = writer.push_all(&mut rx).await;
    drop(rx);
    let produced = producer
        .await
        .map_err(|e| anyhow!("the reading task failed: {e}"))?;
    pushed?;
    produced?;
    writer.end_tar().await
}
