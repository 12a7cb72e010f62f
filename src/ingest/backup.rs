//! `lifeboat backup`: a base backup over BASE_BACKUP, streamed into the archive.
//!
//! One task owns the replication connection and reads the backup's events. Each tar stream
//! is cut into parts of `backup.part_size`; a full part is sealed (zstd, age, CRC32) on a
//! blocking thread and then written to every provider, while the connection keeps reading.
//!
//! Invariants:
//! - At most `cores` parts are being sealed (or wait, sealed, for a store slot) and at most
//!   `cores + 2` sealed parts are being stored, plus the one being filled and one waiting.
//!   Memory is bounded whatever the size of the database: `cores + 2` plain part buffers,
//!   one zstd output buffer per sealing thread and at most `2 × cores + 2` sealed buffers,
//!   so about `(cores + 2) × part_size` plus the compressed copies, and at worst (data that
//!   does not compress) about `(4 × cores + 4) × part_size`. When all slots are taken,
//!   reading stops and the server waits (TCP backpressure). A part gives up its sealing
//!   slot as soon as it is sealed, so a slow provider write (an fsync, an upload) never
//!   leaves a core idle.
//! - `backups/<ID>/backup.json` is written last, after every part and the manifest are on
//!   every provider: a backup without it does not exist (`list` ignores it). An interrupted
//!   backup leaves only unreferenced parts.
//! - The database is read once, however many providers there are.
//! - Before BASE_BACKUP a second walsender connection holds a TEMPORARY slot reserving WAL
//!   from before the backup's checkpoint; if no streamer has archived start..end shortly
//!   after the backup, `backup` streams that WAL itself over that connection through the
//!   streamer's pipeline (`stream::archive_range`), as `pg_basebackup -X stream` does.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;

use crate::archive::Archive;
use crate::config::Config;
use crate::core::catalog::{
    self, BackupExtension, BackupMeta, BackupPart, BackupTablespace, IncrementalOf, WalRange,
};
use crate::core::incremental::{TarIndexer, TarMember};
use crate::core::plan::Timestamp;
use crate::core::wal::{Lsn, TimelineId, WalSegSize};
use crate::ingest::parts::PartWriter;
use crate::pg::basebackup::{BackupRequest, BaseBackup, Event};
use crate::pg::conninfo::ConnParams;
use crate::pg::{Connection, PgError};
use crate::pipeline::Sealer;
use crate::storage::Mirror;

pub struct BackupOptions {
    pub label: Option<String>,
    pub fast: bool,
    /// How long to wait for the streamer to archive the backup's WAL.
    pub wal_timeout: Duration,
    /// Take an incremental backup (PostgreSQL 17+) relative to this parent, where possible.
    pub incremental: Option<ParentChoice>,
}

/// Which backup an incremental one is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ParentChoice {
    /// The newest backup, full or incremental.
    Latest,
    /// The newest full backup.
    Full,
}

/// The parent of the incremental backup about to be taken.
struct Parent {
    meta: BackupMeta,
    manifest: Vec<u8>,
}

/// The parent among `backups`, or why there is none. Pure.
pub fn choose_parent(
    backups: &[BackupMeta],
    system_id: u64,
    choice: ParentChoice,
    max_chain: u32,
) -> Result<&BackupMeta, String> {
    let sys = system_id.to_string();
    let parent = backups
        .iter()
        .filter(|b| b.system_identifier == sys)
        .filter(|b| choice == ParentChoice::Latest || b.incremental.is_none())
        .max_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)))
        .ok_or_else(|| match choice {
            ParentChoice::Latest => {
                "the archive holds no earlier backup of this cluster to be incremental to"
                    .to_string()
            }
            ParentChoice::Full => {
                "the archive holds no earlier full backup of this cluster to be incremental to"
                    .to_string()
            }
        })?;
    let length = parent.incremental.as_ref().map_or(0, |i| i.chain_length);
    if length >= max_chain {
        return Err(format!(
            "the chain ending at backup {} already has {length} incremental backups, [backup] max_chain = {max_chain}",
            parent.id
        ));
    }
    if parent.pg_version / 10000 < 17 {
        return Err(format!(
            "the parent backup {} was taken from PostgreSQL {}, which has no incremental backups",
            parent.id,
            parent.pg_version / 10000
        ));
    }
    Ok(parent)
}

/// Where this host keeps the manifests of its own recent backups: the parent's manifest
/// is needed in plain text, and the archived copy is encrypted for the restore host.
fn manifest_cache(cfg: &Config) -> std::path::PathBuf {
    cfg.wal.spool_dir.join("manifests")
}

/// Keep `manifest` (byte-exact) for later incremental backups; the newest `max_chain + 2`
/// are kept. Best effort: without it the next incremental needs the identity file.
fn cache_manifest(cfg: &Config, id: &str, manifest: &[u8]) {
    let dir = manifest_cache(cfg);
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{id}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(manifest)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(format!("{id}.backup_manifest")))?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".backup_manifest"))
            .collect();
        names.sort();
        let keep = cfg.backup.max_chain as usize + 2;
        if names.len() > keep {
            for n in &names[..names.len() - keep] {
                let _ = std::fs::remove_file(dir.join(n));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the backup manifest on this host; the next incremental backup will need encryption.identity_file to read it from the archive");
    }
}

/// The parent's manifest, byte-exact: this host's copy, else the archived one decrypted
/// with `encryption.identity_file`.
async fn parent_manifest(
    cfg: &Config,
    archive: &Archive,
    parent: &BackupMeta,
) -> Result<Vec<u8>, String> {
    let local = manifest_cache(cfg).join(format!("{}.backup_manifest", parent.id));
    if let Ok(b) = std::fs::read(&local) {
        if b.len() as u64 == parent.manifest.plain_len {
            return Ok(b);
        }
        tracing::warn!(path = %local.display(), "this host's copy of the parent's manifest has the wrong length; reading the archived one");
    }
    let Some(idf) = cfg.encryption.identity_file.clone() else {
        return Err(format!(
            "the manifest of the parent backup {} is not kept on this host ({}) and encryption.identity_file is not set to read the archived copy",
            parent.id,
            local.display()
        ));
    };
    let opener = std::sync::Arc::new(
        crate::pipeline::Opener::from_file(&idf)
            .map_err(|e| format!("cannot read the parent's manifest: {e}"))?,
    );
    let want = parent.manifest.clone();
    archive
        .read(&want.key, |stored: Bytes| {
            let op = opener.clone();
            let want = want.clone();
            async move {
                tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                    let c = crate::pipeline::check(&stored).map_err(|e| e.to_string())?;
                    if c.crc32 != want.crc32 || stored.len() as u64 != want.stored_len {
                        return Err("does not match backup.json".into());
                    }
                    let plain = op.open(&stored).map_err(|e| e.to_string())?;
                    if plain.len() as u64 != want.plain_len {
                        return Err(format!(
                            "decrypts to {} bytes, backup.json says {}",
                            plain.len(),
                            want.plain_len
                        ));
                    }
                    Ok(plain)
                })
                .await
                .map_err(|e| e.to_string())?
            }
        })
        .await
        .map_err(|e| {
            format!(
                "cannot read the manifest of the parent backup {}: {}",
                parent.id,
                e.problems()
            )
        })
}

/// Whether the server can take an incremental backup, and relative to which parent.
async fn prepare_incremental(
    cfg: &Config,
    archive: &Archive,
    conn: &mut Connection,
    system_id: u64,
    pg_version: u32,
    data_checksums: bool,
    choice: ParentChoice,
) -> Result<Result<Parent, String>> {
    if pg_version < 170000 {
        return Ok(Err(format!(
            "PostgreSQL {} cannot take incremental backups (they need 17 or later)",
            pg_version / 10000
        )));
    }
    if conn.show("summarize_wal").await? != "on" {
        return Ok(Err(
            "summarize_wal is off on the server (incremental backups need WAL summaries)".into(),
        ));
    }
    if !data_checksums && conn.show("wal_log_hints").await? != "on" {
        return Ok(Err("neither data checksums nor wal_log_hints are on: PostgreSQL's incremental backups can then carry stale visibility-map bits (an open upstream issue), so lifeboat takes them only with one of the two".into()));
    }
    let backups = archive.backups().await?;
    let parent = match choose_parent(&backups, system_id, choice, cfg.backup.max_chain) {
        Ok(p) => p.clone(),
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(parent_manifest(cfg, archive, &parent)
        .await
        .map(|manifest| Parent {
            meta: parent,
            manifest,
        }))
}

/// A server error before the first archive of an incremental BASE_BACKUP (or from
/// UPLOAD_MANIFEST): the server cannot take it, a full backup is taken instead.
#[derive(Debug, thiserror::Error)]
#[error("the server refused the incremental backup: {0}")]
struct Refused(String);

fn refused(e: &PgError) -> Refused {
    let msg = match e {
        PgError::Server { fields } => fields.message.clone(),
        other => other.to_string(),
    };
    Refused(match e.code() {
        Some(c) => format!("{msg} (SQLSTATE {})", c.code()),
        None => msg,
    })
}

/// What `backup` did.
#[derive(Debug, Serialize)]
pub struct BackupOutcome {
    #[serde(flatten)]
    pub meta: BackupMeta,
    /// The WAL from start to end is archived on every provider.
    pub restorable: bool,
}

/// Progress on a terminal (indicatif) or in the logs.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    bytes: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = crate::archive::progress::bars().then(|| {
            let b = indicatif::ProgressBar::new(total.max(1));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template"),
            );
            b
        });
        Progress {
            bar,
            total,
            bytes: 0,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.bytes += n;
        if let Some(b) = &self.bar {
            if self.bytes > self.total {
                self.total = self.bytes;
                b.set_length(self.total);
            }
            b.set_position(self.bytes);
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = self.bytes as f64 / secs;
            let eta = (self.total.saturating_sub(self.bytes) as f64 / rate.max(1.0)) as u64;
            tracing::info!(
                bytes = self.bytes,
                total_estimate = self.total,
                rate_bytes_per_sec = rate as u64,
                eta_secs = eta,
                "backup progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Now, to the second (backup ids and `backup.json` times are in seconds).
fn now_seconds() -> Timestamp {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Timestamp::from_unix_secs(secs as i64)
}

/// Extensions through an ordinary connection to the conninfo's database (default
/// `postgres`).
async fn read_extensions(
    params: &ConnParams,
) -> Result<(Vec<BackupExtension>, Option<String>), PgError> {
    let mut p = params.clone();
    if p.dbname.is_none() {
        p.dbname = Some("postgres".into());
    }
    let mut c = Connection::connect(&p, false).await?;
    let r = c
        .query_one_set("SELECT extname, extversion FROM pg_catalog.pg_extension ORDER BY extname")
        .await?;
    // The bootstrap superuser (OID 10): the role a restore drill connects as.
    let su = c
        .query_one_set("SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 10")
        .await?;
    c.close().await;
    let superuser = su.rows.first().and_then(|r| r.first().cloned().flatten());
    Ok((
        r.rows
            .into_iter()
            .map(|row| BackupExtension {
                name: row.first().cloned().flatten().unwrap_or_default(),
                version: row.get(1).cloned().flatten().unwrap_or_default(),
            })
            .collect(),
        superuser,
    ))
}

/// `pg_current_snapshot()` (`xmin:xmax:xip,...`) through an ordinary connection.
async fn read_snapshot(params: &ConnParams) -> Result<Option<String>, PgError> {
    let mut p = params.clone();
    if p.dbname.is_none() {
        p.dbname = Some("postgres".into());
    }
    let mut c = Connection::connect(&p, false).await?;
    let r = c
        .query_one_set("SELECT pg_catalog.pg_current_snapshot()::text")
        .await?;
    c.close().await;
    Ok(r.rows.first().and_then(|r| r.first().cloned().flatten()))
}
/// Whether every provider holds the WAL the backup needs.
async fn wal_archived(
    archive: &Archive,
    seg: WalSegSize,
    m: &BackupMeta,
) -> Result<(bool, Vec<WalRange>)> {
    let mut all = true;
    let mut first_ranges = Vec::new();
    for (i, p) in archive.mirror.providers.iter().enumerate() {
        let ranges = archive.inventory(p.as_ref(), seg).await?.ranges(seg);
        if !catalog::wal_covers(&ranges, m.timeline, m.start_lsn, m.end_timeline, m.end_lsn) {
            all = false;
        }
        if i == 0 {
            first_ranges = ranges;
        }
    }
    Ok((all, first_ranges))
}

/// A second walsender connection with a TEMPORARY physical slot that reserves WAL from the
/// last checkpoint's redo position, i.e. from before the backup's own checkpoint. The slot
/// lives exactly as long as the connection.
async fn hold_wal(params: &ConnParams, system_id: u64) -> Result<(Connection, String)> {
    let mut c = Connection::connect(params, true).await?;
    let ident = c.identify_system().await?;
    if ident.system_id != system_id {
        bail!(
            "the second connection reached database system {}, not {system_id}",
            ident.system_id
        );
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let slot = format!("lifeboat_backup_{}_{nanos}", std::process::id());
    if !c.create_physical_slot(&slot, true).await? {
        bail!("replication slot \"{slot}\" already exists");
    }
    tracing::debug!(slot, "temporary slot holds the backup's WAL");
    Ok((c, slot))
}

/// Take a base backup and archive it.
pub async fn run(cfg: &Config, opts: BackupOptions) -> Result<BackupOutcome> {
    let params = ConnParams::parse_with_process_env(&cfg.postgres.conninfo)
        .map_err(|e| anyhow!("postgres.conninfo: {e}"))?;
    let sealer = Sealer::new(&cfg.encryption.recipients, cfg.backup.compression_level)?;
    let archive = Archive::open(cfg)?;
    // Never two base backups at once on this host (the schedule and `lifeboat backup`).
    let _lock = crate::ingest::schedule::BackupLock::take(&cfg.wal.spool_dir)?;

    let mut conn = Connection::connect(&params, true).await?;
    let ident = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    archive.ensure_meta(ident.system_id, seg).await?;
    let pg_version: u32 = conn
        .show("server_version_num")
        .await?
        .trim()
        .parse()
        .map_err(|_| anyhow!("the server sent an unreadable server_version_num"))?;
    let data_checksums = conn.show("data_checksums").await? == "on";
    let shared_preload_libraries = conn.show("shared_preload_libraries").await.ok();
    let from_standby = conn
        .show("in_hot_standby")
        .await
        .map(|v| v == "on")
        .unwrap_or(false);
    let (extensions, bootstrap_superuser) = match read_extensions(&params).await {
        Ok((e, su)) => (Some(e), su),
        Err(e) => {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "cannot read the installed extensions through an ordinary connection; recording them as unknown");
            (None, None)
        }
    };

    // Before the checkpoint: a second connection whose temporary slot holds the backup's
    // WAL, so the backup can archive it itself when no streamer does.
    let wal_conn = match hold_wal(&params, ident.system_id).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "cannot hold the backup's WAL with a temporary slot on a second replication connection: relying on a running lifeboat stream to archive it\nhint: allow one more walsender in max_wal_senders and one more slot in max_replication_slots"
            );
            None
        }
    };

    let start_time = now_seconds();
    let id = crate::ingest::parts::fresh_id(
        &archive.mirror,
        &catalog::backup_id_from_rfc3339(&start_time.rfc3339()),
        catalog::backup_prefix,
        "backup",
    )
    .await?;
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("lifeboat {id}"));
    // Incremental where the server and the archive allow; otherwise full, saying why.
    let mut full_reason = None;
    let mut parent = None;
    if let Some(choice) = opts.incremental {
        match prepare_incremental(
            cfg,
            &archive,
            &mut conn,
            ident.system_id,
            pg_version,
            data_checksums,
            choice,
        )
        .await?
        {
            Ok(p) => match conn.upload_manifest(&p.manifest).await {
                Ok(()) => parent = Some(p),
                Err(e @ PgError::Server { .. }) => full_reason = Some(refused(&e).to_string()),
                Err(e) => return Err(e.into()),
            },
            Err(reason) => full_reason = Some(reason),
        }
    }
    if let Some(r) = &full_reason {
        tracing::warn!(reason = %r, "taking a full backup instead of an incremental one");
    }
    let mut req = BackupRequest {
        label: label.clone(),
        fast: opts.fast,
        max_rate: cfg.backup.max_rate,
        incremental: parent.is_some(),
    };
    tracing::info!(
        id,
        label,
        fast = opts.fast,
        server = conn.target,
        parent = parent.as_ref().map(|p| p.meta.id.as_str()),
        "starting base backup"
    );

    let mut result = stream_backup(&mut conn, &req, &archive, &sealer, &id, cfg).await;
    if let Err(e) = &result {
        if let Some(r) = e.downcast_ref::<Refused>() {
            // Nothing was written; a fresh connection takes the full backup.
            let reason = r.to_string();
            tracing::warn!(reason = %reason, "taking a full backup instead of an incremental one");
            full_reason = Some(reason);
            parent = None;
            req.incremental = false;
            conn = Connection::connect(&params, true).await?;
            result = stream_backup(&mut conn, &req, &archive, &sealer, &id, cfg).await;
        }
    }
    let (start, parts, manifest, plain_manifest, members, tablespaces, end_lsn, end_tli) =
        match result {
            Ok(r) => r,
            Err(e) => {
                cleanup(&archive.mirror, &id).await;
                return Err(e);
            }
        };
    conn.close().await;

    let end_time = now_seconds();
    // Which transactions had finished by the end of the backup (a snapshot taken just
    // after it): a restore to a transaction id picks a backup this one precedes.
    let snapshot_at_end = match read_snapshot(&params).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "cannot read a snapshot through an ordinary connection; xid targets will not narrow the backup choice");
            None
        }
    };
    let plain_size: u64 = parts.iter().map(|p| p.plain_len).sum();
    let stored_size: u64 = parts.iter().map(|p| p.stored_len).sum::<u64>() + manifest.stored_len;
    let meta = BackupMeta {
        format: catalog::FORMAT_VERSION,
        id: id.clone(),
        label,
        system_identifier: ident.system_id.to_string(),
        pg_version,
        timeline: start.1,
        start_lsn: start.0,
        end_timeline: end_tli,
        end_lsn,
        start_time,
        end_time,
        plain_size,
        stored_size,
        tablespaces,
        parts,
        manifest,
        extensions,
        shared_preload_libraries,
        data_checksums,
        wal_segment_size: seg,
        from_standby,
        bootstrap_superuser,
        snapshot_at_end,
        created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        incremental: parent.as_ref().map(|p| IncrementalOf {
            parent: p.meta.id.clone(),
            chain_length: p.meta.incremental.as_ref().map_or(0, |i| i.chain_length) + 1,
            from_lsn: p.meta.start_lsn,
            from_timeline: p.meta.timeline,
        }),
        full_reason,
        members,
    };
    let body = serde_json::to_vec_pretty(&meta).context("encoding backup.json")?;
    if let Err(e) = archive
        .mirror
        .put(&catalog::backup_meta_key(&id), Bytes::from(body))
        .await
    {
        cleanup(&archive.mirror, &id).await;
        return Err(e.into());
    }
    cache_manifest(cfg, &id, &plain_manifest);
    tracing::info!(
        id,
        parent = meta.incremental.as_ref().map(|i| i.parent.as_str()),
        start = %meta.start_lsn,
        end = %meta.end_lsn,
        plain = meta.plain_size,
        stored = meta.stored_size,
        parts = meta.parts.len(),
        "base backup stored"
    );

    // The backup is written; it is restorable once its WAL is archived. A running streamer
    // gets a short grace period; then the backup archives the WAL itself from its slot.
    let wait = match &wal_conn {
        Some(_) => (cfg.max_delay() * 2)
            .max(Duration::from_secs(1))
            .min(opts.wal_timeout),
        None => opts.wal_timeout,
    };
    let deadline = Instant::now() + wait;
    let mut restorable = loop {
        let (ok, _) = wal_archived(&archive, seg, &meta).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if ok || left.is_zero() {
            break ok;
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    };
    if let Some((mut wc, slot)) = wal_conn {
        if !restorable {
            let spool_dir = cfg.wal.spool_dir.join(format!("backup-{id}"));
            tracing::info!(id, slot, start = %meta.start_lsn, end = %meta.end_lsn, "archiving the backup's WAL from its temporary slot");
            let result = crate::ingest::stream::archive_range(
                cfg,
                &archive,
                &mut wc,
                crate::ingest::stream::Session {
                    slot: &slot,
                    system_id: ident.system_id,
                    seg,
                    timeline: start.1,
                    start: meta.start_lsn,
                    end_timeline: meta.end_timeline,
                    endpos: meta.end_lsn,
                    spool_dir: spool_dir.clone(),
                },
            )
            .await;
            // The slot goes with the connection: nothing in this spool can be resumed.
            let _ = std::fs::remove_dir_all(&spool_dir);
            wc.close().await;
            if let Err(e) = result {
                bail!(
                    "backup {id} is stored but not restorable: archiving its WAL {} – {} on timeline {} failed: {e:#}\nhint: fix that and take a new backup, or keep a lifeboat stream running for this cluster",
                    meta.start_lsn,
                    meta.end_lsn,
                    meta.end_timeline
                );
            }
            restorable = wal_archived(&archive, seg, &meta).await?.0;
        } else {
            wc.close().await;
        }
    }
    if restorable {
        tracing::info!(id, "the backup's WAL is archived: the backup is restorable");
    } else {
        tracing::warn!(
            "backup {id} is not restorable yet: WAL {} – {} on timeline {} is not archived\nhint: a lifeboat stream must be running for this cluster; the backup becomes restorable as soon as it has archived that WAL",
            meta.start_lsn,
            meta.end_lsn,
            meta.end_timeline
        );
    }
    Ok(BackupOutcome { meta, restorable })
}

type Streamed = (
    (Lsn, TimelineId),
    Vec<BackupPart>,
    BackupPart,
    Vec<u8>,
    Vec<TarMember>,
    Vec<BackupTablespace>,
    Lsn,
    TimelineId,
);

async fn stream_backup(
    conn: &mut Connection,
    req: &BackupRequest,
    archive: &Archive,
    sealer: &Sealer,
    id: &str,
    cfg: &Config,
) -> Result<Streamed> {
    let mut bb = match BaseBackup::begin(conn, req).await {
        Ok(b) => b,
        Err(e @ PgError::Server { .. }) if req.incremental => return Err(refused(&e).into()),
        Err(e) => return Err(e.into()),
    };
    let start = (bb.start.start_lsn, bb.start.timeline);
    tracing::info!(start = %start.0, timeline = %start.1, tablespaces = bb.start.tablespaces.len(), "backup started");
    let mut tablespaces: Vec<BackupTablespace> = bb
        .start
        .tablespaces
        .iter()
        .map(|t| BackupTablespace {
            oid: t.oid,
            location: t.location.clone(),
            tar: t.archive_name(),
        })
        .collect();
    let mut progress = Progress::new(bb.start.estimated_size());
    let mut writer = PartWriter::new(
        archive.mirror.clone(),
        sealer.clone(),
        catalog::backup_prefix(id),
        cfg.backup_part_size(),
    );
    let mut tars: Vec<String> = Vec::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut end = None;
    let mut index: Option<TarIndexer> = None;
    let mut members: Vec<TarMember> = Vec::new();
    let received: Result<()> = async {
        while let Some(ev) = bb.next().await? {
            match ev {
                Event::Archive {
                    name,
                    tablespace_oid,
                    location,
                } => {
                    if !tablespaces.iter().any(|t| t.tar == name) {
                        tablespaces.push(BackupTablespace {
                            oid: tablespace_oid,
                            location,
                            tar: name.clone(),
                        });
                    }
                    tars.push(name.clone());
                    if let Some(ix) = index.replace(TarIndexer::new(name.clone())) {
                        members.extend(ix.finish());
                    }
                    writer.begin_tar(name).await?;
                }
                Event::Data(d) => match manifest.as_mut() {
                    Some(m) => m.extend_from_slice(&d),
                    None => {
                        progress.add(d.len() as u64);
                        if let Some(ix) = index.as_mut() {
                            ix.push(&d)?;
                        }
                        writer.push(&d).await?;
                    }
                },
                Event::Progress(_) => {}
                Event::ManifestStart => {
                    if let Some(ix) = index.take() {
                        members.extend(ix.finish());
                    }
                    writer.end_tar().await?;
                    manifest = Some(Vec::new());
                }
                Event::End { end_lsn, timeline } => end = Some((end_lsn, timeline)),
            }
        }
        Ok(())
    }
    .await;
    progress.finish();
    let received = received
        .and_then(|()| end.ok_or_else(|| anyhow!("the backup ended without an end position")));
    let (end_lsn, end_tli) = match received {
        Ok(e) => e,
        Err(e) => {
            // The parts on their way land before the caller's cleanup removes them.
            writer.settle().await;
            return Err(e);
        }
    };
    let parts = writer.finish(&tars).await?;
    let manifest = manifest.ok_or_else(|| anyhow!("the server sent no backup manifest"))?;
    let key = catalog::backup_manifest_key(id);
    let sealer = sealer.clone();
    let plain_len = manifest.len() as u64;
    let (sealed, manifest) = tokio::task::spawn_blocking(move || {
        let s = sealer.seal(&manifest);
        (s, manifest)
    })
    .await
    .map_err(|e| anyhow!("sealing task failed: {e}"))?;
    let sealed = sealed?;
    let manifest_part = BackupPart {
        key: key.clone(),
        tar: "backup_manifest".into(),
        seq: 0,
        plain_len,
        stored_len: sealed.stored_len(),
        crc32: sealed.crc32,
    };
    archive.mirror.put(&key, Bytes::from(sealed.bytes)).await?;
    tablespaces.retain(|t| tars.contains(&t.tar));
    Ok((
        start,
        parts,
        manifest_part,
        manifest,
        members,
        tablespaces,
        end_lsn,
        end_tli,
    ))
}

/// Best effort: remove the objects of a failed backup (they are invisible anyway, having no
/// backup.json; a provider that cannot delete keeps them until `prune`).
async fn cleanup(mirror: &Mirror, id: &str) {
    for p in &mirror.providers {
        if !p.features().delete {
            continue;
        }
        if let Ok(objs) = p.list(&catalog::backup_prefix(id)).await {
            for o in objs {
                let _ = p.delete(&o.key).await;
            }
        }
    }
}
