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
    self, BackupExtension, BackupMeta, BackupPart, BackupTablespace, WalRange,
};
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
    let req = BackupRequest {
        label: label.clone(),
        fast: opts.fast,
        max_rate: cfg.backup.max_rate,
    };
    tracing::info!(
        id,
        label,
        fast = opts.fast,
        server = conn.target,
        "starting base backup"
    );

    let result = stream_backup(&mut conn, &req, &archive, &sealer, &id, cfg).await;
    let (start, parts, manifest, tablespaces, end_lsn, end_tli) = match result {
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
    tracing::info!(
        id,
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
    let mut bb = BaseBackup::begin(conn, req).await?;
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
                writer.begin_tar(name).await?;
            }
            Event::Data(d) => match manifest.as_mut() {
                Some(m) => m.extend_from_slice(&d),
                None => {
                    progress.add(d.len() as u64);
                    writer.push(&d).await?;
                }
            },
            Event::Progress(_) => {}
            Event::ManifestStart => {
                writer.end_tar().await?;
                manifest = Some(Vec::new());
            }
            Event::End { end_lsn, timeline } => end = Some((end_lsn, timeline)),
        }
    }
    progress.finish();
    let (end_lsn, end_tli) =
        end.ok_or_else(|| anyhow!("the backup ended without an end position"))?;
    let parts = writer.finish(&tars).await?;
    let manifest = manifest.ok_or_else(|| anyhow!("the server sent no backup manifest"))?;
    let key = catalog::backup_manifest_key(id);
    let sealer = sealer.clone();
    let plain_len = manifest.len() as u64;
    let sealed = tokio::task::spawn_blocking(move || sealer.seal(&manifest))
        .await
        .map_err(|e| anyhow!("sealing task failed: {e}"))??;
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
    Ok((start, parts, manifest_part, tablespaces, end_lsn, end_tli))
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
