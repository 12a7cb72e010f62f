//! `lifeboat dump`: logical copies. `pg_dump -Fc` of each database (and `pg_dumpall
//! --globals-only` once per run), streamed from the program's stdout through the same
//! part writer as a base backup: cut into parts, sealed in parallel (zstd, age, CRC32),
//! stored on every provider. No full copy is ever written locally.
//!
//! Invariants:
//! - `dumps/<ID>/dump.json` is written last, after every part of every database is on
//!   every provider: a dump without it does not exist. A failing `pg_dump` (or a failing
//!   write) removes what was written (best effort) and writes no `dump.json`.
//! - The `pg_dump` and `pg_dumpall` run are those of the server's major version; a
//!   password reaches them through their environment, never their command line
//!   (`pg::tools::ChildConn`).
//! - What a failing program printed on stderr is in the error, with its exit status.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::archive::Archive;
use crate::config::Config;
use crate::core::catalog::{self, BackupPart, DumpMeta, DumpedStream};
use crate::core::plan::Timestamp;
use crate::ingest::parts::PartWriter;
use crate::pg::conninfo::ConnParams;
use crate::pg::tools::{self, ChildConn, Tool};
use crate::pg::Connection;
use crate::pipeline::Sealer;
use crate::storage::Mirror;

pub struct DumpOptions {
    /// The databases to dump; empty: every database that accepts connections, except
    /// templates.
    pub databases: Vec<String>,
    /// Where `pg_dump` and `pg_dumpall` are (default: found for the server's major).
    pub pg_bin: Option<PathBuf>,
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// The most of a program's stderr kept for an error message.
const STDERR_MAX: usize = 64 << 10;

async fn read_capped(mut r: impl AsyncRead + Unpin) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.len() < STDERR_MAX {
                    let take = n.min(STDERR_MAX - out.len());
                    out.extend_from_slice(&buf[..take]);
                }
            }
        }
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Bytes read from a program: a spinner on a terminal, else a log line every 10 s (pg_dump
/// announces no total).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    bytes: std::cell::Cell<u64>,
    last_log: std::cell::Cell<std::time::Instant>,
}

impl Progress {
    fn new(what: &str) -> Progress {
        let bar = crate::archive::progress::bars().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {msg}: {bytes} {bytes_per_sec}",
                )
                .expect("a valid template"),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            bar,
            what: what.to_string(),
            bytes: std::cell::Cell::new(0),
            last_log: std::cell::Cell::new(std::time::Instant::now()),
        }
    }

    fn add(&self, n: u64) {
        self.bytes.set(self.bytes.get() + n);
        if let Some(b) = &self.bar {
            b.set_position(self.bytes.get());
        } else if self.last_log.get().elapsed() >= std::time::Duration::from_secs(10) {
            self.last_log.set(std::time::Instant::now());
            tracing::info!(what = self.what, bytes = self.bytes.get(), "dump progress");
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Run `cmd`, streaming its stdout into `writer` as stream `stream`. `what` names it in
/// errors (`pg_dump of database "app"`).
async fn pump(
    mut cmd: tokio::process::Command,
    writer: &mut PartWriter,
    stream: &str,
    what: &str,
) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start the program"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = tokio::spawn(read_capped(stderr));
    writer.begin_tar(stream.to_string()).await?;
    let mut buf = vec![0u8; 256 << 10];
    let progress = Progress::new(what);
    let copied: Result<()> = async {
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .with_context(|| format!("{what}: reading its output"))?;
            if n == 0 {
                return Ok(());
            }
            progress.add(n as u64);
            writer.push(&buf[..n]).await?;
        }
    }
    .await;
    progress.finish();
    if let Err(e) = copied {
        let _ = child.kill().await;
        return Err(e);
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("{what}: waiting for it"))?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        let how = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{status}"),
        };
        if stderr.is_empty() {
            bail!("{what} failed ({how}) and printed nothing");
        }
        bail!("{what} failed ({how}):\n{stderr}");
    }
    if !stderr.is_empty() {
        tracing::warn!(what, stderr, "the program printed warnings");
    }
    writer.end_tar().await
}
/// Best effort: remove the objects of a failed dump (invisible anyway without dump.json).
async fn cleanup(mirror: &Mirror, id: &str) {
    for p in &mirror.providers {
        if !p.features().delete {
            continue;
        }
        if let Ok(objs) = p.list(&catalog::dump_prefix(id)).await {
            for o in objs {
                let _ = p.delete(&o.key).await;
            }
        }
    }
}

/// What the server is and which databases to dump.
async fn survey(params: &ConnParams, want: &[String]) -> Result<(u32, String, Vec<String>)> {
    let mut p = params.clone();
    if p.dbname.is_none() {
        p.dbname = Some("postgres".into());
    }
    let mut c = Connection::connect(&p, false).await?;
    let r = c
        .query_one_set(
            "SELECT current_setting('server_version_num'), current_setting('server_version')",
        )
        .await?;
    let num: u32 = r
        .rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("the server sent an unreadable server_version_num"))?;
    let version = r
        .rows
        .first()
        .and_then(|row| row.get(1).cloned().flatten())
        .unwrap_or_default();
    let dbs = if want.is_empty() {
        let r = c
            .query_one_set("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")
            .await?;
        r.rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect()
    } else {
        want.to_vec()
    };
    c.close().await;
    Ok((num, version, dbs))
}

/// The archive belongs to one cluster (`archive.json`): as `backup` does, identify the
/// system over a replication connection and refuse an archive of another cluster. A role
/// without REPLICATION can still dump: then the check is skipped, with a warning.
async fn bind_archive(archive: &Archive, params: &ConnParams) -> Result<()> {
    let ident = async {
        let mut c = Connection::connect(params, true).await?;
        let ident = c.identify_system().await?;
        let seg = c.wal_segment_size().await?;
        c.close().await;
        Ok::<_, crate::pg::PgError>((ident.system_id, seg))
    }
    .await;
    match ident {
        Ok((system_id, seg)) => {
            archive.ensure_meta(system_id, seg).await?;
        }
        Err(e) => tracing::warn!(
            error = %format!("{:#}", anyhow::Error::new(e)),
            "cannot identify the cluster over a replication connection; the dump is stored without checking archive.json"
        ),
    }
    Ok(())
}

/// Take a dump of the configured server and store it.
pub async fn run(cfg: &Config, opts: &DumpOptions) -> Result<DumpMeta> {
    let params = ConnParams::parse_with_process_env(&cfg.postgres.conninfo)
        .map_err(|e| anyhow!("postgres.conninfo: {e}"))?;
    let (pg_version, server_version, databases) = survey(&params, &opts.databases).await?;
    let major = pg_version / 10000;
    let why = format!("the server is PostgreSQL {server_version}");
    let pg_dump =
        tools::find_tool(opts.pg_bin.as_deref(), "pg_dump", major, &why).map_err(|e| anyhow!(e))?;
    let pg_dumpall = tools::find_tool(opts.pg_bin.as_deref(), "pg_dumpall", major, &why)
        .map_err(|e| anyhow!(e))?;
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.backup.compression_level)?;
    let archive = Archive::open(cfg)?;
    bind_archive(&archive, &params).await?;
    let start_time = now();
    let secs = Timestamp::from_unix_secs(start_time.0.div_euclid(1_000_000));
    let id = crate::ingest::parts::fresh_id(
        &archive.mirror,
        &catalog::backup_id_from_rfc3339(&secs.rfc3339()),
        catalog::dump_prefix,
        "dump",
    )
    .await?;
    tracing::info!(id, databases = ?databases, pg_dump = %pg_dump.path.display(), "starting dump");
    let mut writer = PartWriter::new(
        archive.mirror.clone(),
        sealer,
        catalog::dump_prefix(&id),
        cfg.backup_part_size(),
    );
    let result = dump_all(&params, &pg_dump, &pg_dumpall, &databases, &mut writer).await;
    let (streams, globals) = match result {
        Ok(r) => r,
        Err(e) => {
            writer.settle().await;
            cleanup(&archive.mirror, &id).await;
            return Err(e);
        }
    };
    let names: Vec<String> = streams
        .iter()
        .chain(std::iter::once(&globals))
        .map(|s| s.stream.clone())
        .collect();
    let parts = match writer.finish(&names).await {
        Ok(p) => p,
        Err(e) => {
            cleanup(&archive.mirror, &id).await;
            return Err(e);
        }
    };
    let fill = |mut s: DumpedStream| {
        s.parts = parts
            .iter()
            .filter(|p| p.tar == s.stream)
            .cloned()
            .collect::<Vec<BackupPart>>();
        s.plain_size = s.parts.iter().map(|p| p.plain_len).sum();
        s.stored_size = s.parts.iter().map(|p| p.stored_len).sum();
        s
    };
    let databases: Vec<DumpedStream> = streams.into_iter().map(fill).collect();
    let globals = fill(globals);
    let meta = DumpMeta {
        format: catalog::FORMAT_VERSION,
        id: id.clone(),
        pg_version,
        server_version,
        pg_dump_version: pg_dump.version.clone(),
        start_time,
        end_time: now(),
        plain_size: parts.iter().map(|p| p.plain_len).sum(),
        stored_size: parts.iter().map(|p| p.stored_len).sum(),
        databases,
        globals: Some(globals),
        created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
    };
    let body = serde_json::to_vec_pretty(&meta).context("encoding dump.json")?;
    if let Err(e) = archive
        .mirror
        .put(&catalog::dump_meta_key(&id), Bytes::from(body))
        .await
    {
        cleanup(&archive.mirror, &id).await;
        return Err(e.into());
    }
    tracing::info!(
        id,
        plain = meta.plain_size,
        stored = meta.stored_size,
        "dump stored"
    );
    Ok(meta)
}

fn stream(database: Option<String>, stream: String, format: &str) -> DumpedStream {
    DumpedStream {
        database,
        stream,
        format: format.into(),
        started_at: now(),
        finished_at: now(),
        plain_size: 0,
        stored_size: 0,
        parts: Vec::new(),
    }
}

async fn dump_all(
    params: &ConnParams,
    pg_dump: &Tool,
    pg_dumpall: &Tool,
    databases: &[String],
    writer: &mut PartWriter,
) -> Result<(Vec<DumpedStream>, DumpedStream)> {
    let mut out = Vec::new();
    for (n, db) in databases.iter().enumerate() {
        let mut s = stream(Some(db.clone()), catalog::dump_db_stream(n), "custom");
        let conn = ChildConn::new(params, db);
        let mut cmd = tokio::process::Command::new(&pg_dump.path);
        cmd.arg("--format=custom")
            .arg("--compress=0")
            .arg("--no-password")
            .arg(format!("--dbname={}", conn.conninfo));
        conn.apply(&mut cmd);
        tracing::info!(database = db, "pg_dump");
        s.started_at = now();
        pump(
            cmd,
            writer,
            &s.stream,
            &format!("pg_dump of database \"{db}\""),
        )
        .await?;
        s.finished_at = now();
        out.push(s);
    }
    let mut g = stream(None, catalog::DUMP_GLOBALS_STREAM.into(), "sql");
    let db = params.dbname.clone().unwrap_or_else(|| "postgres".into());
    let conn = ChildConn::new(params, &db);
    let mut cmd = tokio::process::Command::new(&pg_dumpall.path);
    cmd.arg("--globals-only")
        .arg("--no-role-passwords")
        .arg("--no-password")
        .arg(format!("--dbname={}", conn.conninfo));
    conn.apply(&mut cmd);
    g.started_at = now();
    pump(cmd, writer, &g.stream, "pg_dumpall --globals-only").await?;
    g.finished_at = now();
    Ok((out, g))
}
