//! `lifeboat dump-restore`: a database of a dump, decrypted in part order and streamed into
//! `pg_restore` (its stdin), or written out as the plain custom-format file.
//!
//! Invariants:
//! - Parts are fetched ahead (bounded) but handed over strictly in `seq` order, each
//!   checked against `dump.json` (CRC32, lengths) and authenticated by decryption.
//! - `--output FILE` appears complete or not at all: a temporary file in FILE's directory,
//!   fsync'd, renamed, the directory fsync'd.
//! - `pg_restore --jobs N` needs a seekable file: with N > 1 the dump goes to a temporary
//!   file first (removed afterwards, whatever happens).
//! - A password of the target connection reaches pg_restore through its environment only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::archive::Archive;
use crate::core::catalog::{BackupPart, DumpMeta, DumpedStream};
use crate::pg::conninfo::ConnParams;
use crate::pg::tools::{self, ChildConn, Tool};
use crate::pg::Connection;
use crate::pipeline::Opener;
use crate::restore::fetch_open;

/// Parts fetched and decrypted ahead of the one being written.
const PREFETCH: usize = 4;

pub struct DumpRestoreOptions {
    pub id: String,
    /// Which database of the dump (needed when it holds more than one).
    pub db: Option<String>,
    /// Where to restore: a connection string or URI.
    pub dbname: Option<String>,
    pub tables: Vec<String>,
    pub schemas: Vec<String>,
    pub jobs: usize,
    /// Print pg_restore's table of contents instead of restoring.
    pub list: bool,
    /// Write the custom-format file here instead of restoring.
    pub output: Option<PathBuf>,
    pub pg_bin: Option<PathBuf>,
    /// Where the temporary file for `--jobs` goes.
    pub temp_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct DumpRestoreReport {
    pub id: String,
    pub database: String,
    /// `restore`, `list` or `output`.
    pub action: &'static str,
    /// The target connection without its password, or the output file.
    pub target: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub pg_restore: Option<String>,
}

/// The stream of the database asked for.
pub fn choose<'a>(meta: &'a DumpMeta, db: Option<&str>) -> Result<&'a DumpedStream> {
    let names = || {
        meta.databases
            .iter()
            .filter_map(|d| d.database.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match db {
        Some(name) => meta.database(name).ok_or_else(|| {
            anyhow!(
                "dump {} holds no database \"{name}\"\nhint: it holds {}",
                meta.id,
                names()
            )
        }),
        None if meta.databases.len() == 1 => Ok(&meta.databases[0]),
        None => bail!(
            "dump {} holds {} databases: name one with --db\nhint: it holds {}",
            meta.id,
            meta.databases.len(),
            names()
        ),
    }
}

/// Fetch and open `parts` in order, `PREFETCH` ahead; each plain part is handed to `sink`
/// in order. Returns the bytes handed over. `sink` returning `Ok(false)` stops early.
pub async fn stream_parts<F, Fut>(
    archive: &Archive,
    opener: &Arc<Opener>,
    parts: &[BackupPart],
    mut sink: F,
) -> Result<u64>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let mut seqs: Vec<u32> = parts.iter().map(|p| p.seq).collect();
    seqs.sort();
    if seqs.iter().enumerate().any(|(i, s)| *s as usize != i) {
        bail!("the dump's metadata lists its parts with a hole");
    }
    let mut parts = parts.to_vec();
    parts.sort_by_key(|p| p.seq);
    let mut pending = std::collections::VecDeque::new();
    let mut next = parts.into_iter();
    let mut total = 0u64;
    loop {
        while pending.len() < PREFETCH {
            let Some(p) = next.next() else { break };
            let mirror = archive.mirror.clone();
            let opener = opener.clone();
            pending.push_back(tokio::spawn(async move {
                let a = Archive { mirror };
                fetch_open(&a, &opener, &p)
                    .await
                    .with_context(|| format!("reading {}", p.key))
            }));
        }
        let Some(h) = pending.pop_front() else {
            return Ok(total);
        };
        let plain = h.await.map_err(|e| anyhow!("fetch task failed: {e}"))??;
        total += plain.len() as u64;
        if !sink(plain).await? {
            for h in pending {
                h.abort();
            }
            return Ok(total);
        }
    }
}

/// Write the stream to `path` atomically.
pub async fn write_file(
    archive: &Archive,
    opener: &Arc<Opener>,
    parts: &[BackupPart],
    path: &Path,
) -> Result<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if path.is_dir() {
        bail!("--output {}: that is a directory", path.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix(".lifeboat-dump-")
        .tempfile_in(&dir)
        .with_context(|| {
            format!(
                "--output {}: cannot create a file in {}",
                path.display(),
                dir.display()
            )
        })?;
    let file = std::sync::Mutex::new(tmp);
    let bytes = stream_parts(archive, opener, parts, |plain| {
        let r = file
            .lock()
            .expect("not poisoned")
            .write_all(&plain)
            .with_context(|| format!("writing {}", path.display()));
        async move { r.map(|_| true) }
    })
    .await?;
    let tmp = file.into_inner().expect("not poisoned");
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("--output {}: {}", path.display(), e.error))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(bytes)
}

/// pg_restore's `--table` matches a table's name in any schema, and `--schema` narrows it:
/// `--table sales.invoices` becomes `--schema sales --table invoices`. Qualified tables of
/// several schemas cannot be expressed in one pg_restore run.
pub fn selection(tables: &[String], schemas: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut names = Vec::new();
    let mut qualified = std::collections::BTreeSet::new();
    for t in tables {
        if t.contains('.') {
            let tn = crate::restore::recover_table::TableName::parse(t)
                .map_err(|e| anyhow!("--table: {e}"))?;
            qualified.insert(tn.schema);
            names.push(tn.table);
        } else {
            names.push(t.clone());
        }
    }
    let mut schemas = schemas.to_vec();
    if let Some(s) = qualified.iter().next() {
        let others = !schemas.is_empty() && schemas.iter().any(|x| x != s);
        if qualified.len() > 1 || others {
            bail!(
                "--table: tables of several schemas ({}) cannot be restored in one pg_restore run, which matches table names within --schema\nhint: run dump-restore once per schema",
                qualified
                    .iter()
                    .chain(schemas.iter().filter(|x| !qualified.contains(*x)))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        schemas = vec![s.clone()];
    }
    Ok((names, schemas))
}

/// The major of a version string such as `17.2`.
fn major_of(v: &str) -> Option<u32> {
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

async fn target_major(params: &ConnParams) -> Result<u32> {
    let c = Connection::connect(params, false)
        .await
        .map_err(|e| anyhow::Error::new(e).context("connecting to --dbname"))?;
    let m = c.server_major();
    c.close().await;
    Ok(m)
}

/// The pg_restore for restoring into `params`' server what pg_dump `source_major` wrote
/// (`source` names it for the error): the target's major, or the source's when that is
/// newer (pg_restore reads archives of its own and older versions only); and the
/// connection to hand it.
pub async fn pg_restore_for(
    params: &ConnParams,
    source_major: u32,
    source: &str,
    pg_bin: Option<&Path>,
) -> Result<(Tool, ChildConn)> {
    let target = target_major(params).await?;
    let major = target.max(source_major);
    let why = if major == target {
        format!("the target server is PostgreSQL {target}")
    } else {
        format!("{source} is from PostgreSQL {source_major}")
    };
    let tool = tools::find_tool(pg_bin, "pg_restore", major, &why).map_err(|e| anyhow!(e))?;
    let db = params.dbname.clone().unwrap_or_else(|| params.user.clone());
    Ok((tool, ChildConn::new(params, &db)))
}

/// Run pg_restore with `args`, its stdin fed from the dump (or `file`), stdout inherited
/// (the table of contents of --list), stderr kept for the error.
pub async fn run_pg_restore(
    tool: &Tool,
    args: Vec<String>,
    conn: Option<&ChildConn>,
    file: Option<&Path>,
    feed: Option<(&Archive, &Arc<Opener>, &[BackupPart])>,
) -> Result<u64> {
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.args(&args);
    if let Some(c) = conn {
        c.apply(&mut cmd);
    }
    if let Some(f) = file {
        cmd.arg(f);
    }
    cmd.stdin(if feed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::inherit())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", tool.path.display()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let mut r = stderr;
        let _ = r.read_to_string(&mut s).await;
        s
    });
    let mut bytes = 0;
    if let Some((archive, opener, parts)) = feed {
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdin = tokio::sync::Mutex::new(Some(stdin));
        let fed = stream_parts(archive, opener, parts, |plain| {
            let stdin = &stdin;
            async move {
                let mut g = stdin.lock().await;
                let Some(w) = g.as_mut() else {
                    return Ok(false);
                };
                match w.write_all(&plain).await {
                    Ok(()) => Ok(true),
                    // pg_restore stopped reading (--list reads only the table of contents,
                    // or it failed): its exit status says which.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        *g = None;
                        Ok(false)
                    }
                    Err(e) => Err(anyhow!("writing to pg_restore: {e}")),
                }
            }
        })
        .await;
        // Close stdin: end of the dump.
        drop(stdin.lock().await.take());
        match fed {
            Ok(n) => bytes = n,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        }
    }
    let status = child.wait().await.context("waiting for pg_restore")?;
    let stderr = errors.await.unwrap_or_default();
    let stderr = stderr.trim();
    if !status.success() {
        let how = status
            .code()
            .map_or_else(|| status.to_string(), |c| format!("exit status {c}"));
        bail!("pg_restore failed ({how}):\n{stderr}");
    }
    if !stderr.is_empty() {
        tracing::warn!(stderr, "pg_restore printed warnings");
    }
    Ok(bytes)
}

pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreReport> {
    let t0 = Instant::now();
    let meta = archive.dump(&opts.id).await?.ok_or_else(|| {
        anyhow!(
            "dump {} is not in the archive\nhint: `lifeboat list` shows the dumps",
            opts.id
        )
    })?;
    let stream = choose(&meta, opts.db.as_deref())?;
    let database = stream.database.clone().unwrap_or_default();
    let mut report = DumpRestoreReport {
        id: meta.id.clone(),
        database: database.clone(),
        action: "restore",
        target: None,
        bytes: 0,
        seconds: 0.0,
        pg_restore: None,
    };
    if let Some(out) = &opts.output {
        report.action = "output";
        report.target = Some(out.display().to_string());
        report.bytes = write_file(archive, &opener, &stream.parts, out).await?;
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    let dump_major = major_of(&meta.pg_dump_version).unwrap_or(meta.pg_version / 10000);
    let mut args: Vec<String> = Vec::new();
    let (tool, conn) = if opts.list {
        report.action = "list";
        let why = format!("the dump was made by pg_dump {}", meta.pg_dump_version);
        let tool = tools::find_tool(opts.pg_bin.as_deref(), "pg_restore", dump_major, &why)
            .map_err(|e| anyhow!(e))?;
        args.push("--list".into());
        (tool, None)
    } else {
        let ci = opts.dbname.as_deref().ok_or_else(|| {
            anyhow!(
                "dump-restore needs --dbname CONNINFO (where to restore), --list or --output FILE"
            )
        })?;
        let params =
            ConnParams::parse_with_process_env(ci).map_err(|e| anyhow!("--dbname: {e}"))?;
        let target = target_major(&params).await?;
        // pg_restore reads archives of its own and older versions only.
        let major = target.max(dump_major);
        let why = if major == target {
            format!("the target server is PostgreSQL {target}")
        } else {
            format!("the dump was made by pg_dump {}", meta.pg_dump_version)
        };
        let tool = tools::find_tool(opts.pg_bin.as_deref(), "pg_restore", major, &why)
            .map_err(|e| anyhow!(e))?;
        let db = params.dbname.clone().unwrap_or_else(|| params.user.clone());
        let conn = ChildConn::new(&params, &db);
        report.target = Some(conn.conninfo.clone());
        args.push(format!("--dbname={}", conn.conninfo));
        args.push("--no-password".into());
        args.push("--exit-on-error".into());
        (tool, Some(conn))
    };
    let (tables, schemas) = selection(&opts.tables, &opts.schemas)?;
    for t in &tables {
        args.push(format!("--table={t}"));
    }
    for s in &schemas {
        args.push(format!("--schema={s}"));
    }
    report.pg_restore = Some(tool.version.clone());
    if opts.jobs > 1 && !opts.list {
        // pg_restore --jobs seeks in its input: a temporary file first.
        std::fs::create_dir_all(&opts.temp_dir)
            .with_context(|| format!("creating {}", opts.temp_dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix("lifeboat-dump-")
            .tempfile_in(&opts.temp_dir)
            .with_context(|| format!("making a temporary file in {}", opts.temp_dir.display()))?;
        let file = std::sync::Mutex::new(tmp.reopen()?);
        report.bytes = stream_parts(archive, &opener, &stream.parts, |plain| {
            let r = file
                .lock()
                .expect("not poisoned")
                .write_all(&plain)
                .context("writing the temporary file");
            async move { r.map(|_| true) }
        })
        .await?;
        drop(file);
        args.push(format!("--jobs={}", opts.jobs));
        run_pg_restore(&tool, args, conn.as_ref(), Some(tmp.path()), None).await?;
    } else {
        report.bytes = run_pg_restore(
            &tool,
            args,
            conn.as_ref(),
            None,
            Some((archive, &opener, &stream.parts)),
        )
        .await?;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn qualified_tables_become_a_schema_and_names() {
        assert_eq!(
            selection(&v(&["sales.invoices", "sales.big"]), &[]).unwrap(),
            (v(&["invoices", "big"]), v(&["sales"]))
        );
        assert_eq!(
            selection(&v(&["orders"]), &v(&["public"])).unwrap(),
            (v(&["orders"]), v(&["public"]))
        );
        let e = selection(&v(&["sales.invoices", "public.orders"]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--table: tables of several schemas (public, sales) cannot be restored in one pg_restore run, which matches table names within --schema\nhint: run dump-restore once per schema"
        );
    }
}
