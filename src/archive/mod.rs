//! The one reader of the repository: the mirror of providers plus the catalog's layout.
//! Commands read backups, drills, inventories and objects through [`Archive`]; none of them
//! reaches into a provider itself. Layout rules live in `core::catalog`; what to do with
//! what is read (policy) lives in the planners of `core`.
//!
//! Reading across providers: a record (a backup, a drill) counts when any provider holds
//! it, so a lost or unreachable provider hides nothing the others hold. Objects are read
//! through [`Archive::read`] (the best readable copy) and WAL through
//! [`Archive::read_segment`] (see `read`).

pub mod keys;
pub mod progress;
pub mod prune;
pub mod read;
pub mod summary;
pub mod thaw;
pub mod verify;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::config::Config;
use crate::core::catalog::{
    self, AcceptedGap, ArchiveMeta, BackupMeta, DrillReport, DumpMeta, ExportMeta, WalInventory,
};
use crate::core::plan::Timestamp;
use crate::core::retention::Listed;
use crate::core::sqlite::{self, SnapshotMeta, SqliteDrillReport};
use crate::core::wal::{Lsn, TimelineId, WalSegSize};
use crate::storage::{self, Mirror, ObjectStore};

pub struct Archive {
    pub mirror: Mirror,
}

impl Archive {
    pub fn open(cfg: &Config) -> Result<Archive> {
        if cfg.storage.is_empty() {
            bail!("no [[storage]] provider configured\nhint: add [[storage]] with name and url = \"file:///path/to/archive\"");
        }
        let providers = cfg
            .storage
            .iter()
            .map(|s| storage::open(s).map_err(|e| anyhow!(e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Archive {
            mirror: Mirror::new(providers),
        })
    }

    /// Read `archive.json` from every provider: they must agree.
    /// A provider that cannot be reached does not stop a reader when another provider
    /// answers (its error is logged); with no answer at all, the first error is returned.
    pub async fn meta(&self) -> Result<Option<ArchiveMeta>> {
        let mut found: Option<ArchiveMeta> = None;
        let mut errors = Vec::new();
        for p in &self.mirror.providers {
            let m = match read_meta(p.as_ref()).await {
                Ok(m) => m,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(m) = m {
                if let Some(f) = &found {
                    if f.system_identifier != m.system_identifier {
                        bail!(
                            "providers disagree: storage \"{}\" holds system identifier {}, another holds {}\nhint: each PostgreSQL cluster needs its own archive location on every provider",
                            p.name(), m.system_identifier, f.system_identifier
                        );
                    }
                }
                found = Some(m);
            }
        }
        if found.is_none() && !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        for e in errors {
            tracing::warn!(error = %format!("{e:#}"), "a provider is unavailable; reading from the others");
        }
        Ok(found)
    }

    /// Make sure every provider's archive belongs to this cluster, writing `archive.json`
    /// where it is missing. Refuses to mix two clusters in one archive.
    pub async fn ensure_meta(&self, system_id: u64, seg: WalSegSize) -> Result<ArchiveMeta> {
        let want = ArchiveMeta {
            format: catalog::FORMAT_VERSION,
            system_identifier: system_id.to_string(),
            wal_segment_size: seg,
            created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        };
        let mut answered = 0;
        let mut first_error = None;
        for p in &self.mirror.providers {
            // A provider that cannot be reached is checked the next time lifeboat starts;
            // the others go on (a restart during an outage must not stop archiving).
            let found = match read_meta(p.as_ref()).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(provider = p.name(), error = %format!("{e:#}"), "provider unavailable at start: its WAL is held in the spool until it is back");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            answered += 1;
            match found {
                Some(m) => {
                    if m.system_identifier != want.system_identifier {
                        bail!(
                            "storage \"{}\" holds the archive of database system {}, but the server is system {}\nhint: never mix two clusters in one archive: point [[storage]] url at a new, empty location for this cluster",
                            p.name(),
                            m.system_identifier,
                            want.system_identifier
                        );
                    }
                    if m.wal_segment_size != want.wal_segment_size {
                        bail!(
                            "storage \"{}\" holds WAL segments of {} bytes, but the server uses {} bytes",
                            p.name(),
                            m.wal_segment_size.bytes(),
                            want.wal_segment_size.bytes()
                        );
                    }
                    if m.format > catalog::FORMAT_VERSION {
                        bail!("storage \"{}\" uses archive format {}, newer than this lifeboat understands ({})\nhint: upgrade lifeboat", p.name(), m.format, catalog::FORMAT_VERSION);
                    }
                }
                None => {
                    let body = serde_json::to_vec_pretty(&want)?;
                    p.put(catalog::ARCHIVE_META, Bytes::from(body)).await?;
                }
            }
        }
        match first_error {
            Some(e) if answered == 0 => Err(e),
            _ => Ok(want),
        }
    }

    /// The WAL inventory of one provider.
    pub async fn inventory(&self, p: &dyn ObjectStore, seg: WalSegSize) -> Result<WalInventory> {
        let mut keys = p.list("wal/").await?;
        keys.extend(p.list("history/").await?);
        Ok(WalInventory::from_keys(
            keys.iter().map(|m| m.key.as_str()),
            seg,
        ))
    }

    /// Where streaming resumes: the lowest of the providers' resume points, so that no
    /// provider is left with a hole. `None` when no provider holds WAL.
    /// `pending` are keys of objects waiting in the local outbox, which will reach every
    /// provider before anything newer.
    ///
    /// With `floor` (the position acknowledged durably before: every provider holds the
    /// WAL up to it, or the outbox does), a provider that cannot be reached is skipped:
    /// resuming at or below the floor leaves it no hole. Without one, every provider must
    /// answer.
    pub async fn resume_point(
        &self,
        seg: WalSegSize,
        pending: &[String],
        floor: Option<(TimelineId, Lsn)>,
    ) -> Result<Option<(TimelineId, Lsn)>> {
        let mut min: Option<(TimelineId, Lsn)> = None;
        for p in &self.mirror.providers {
            let listed = match p.list("wal/").await {
                Ok(l) => l,
                Err(e) if floor.is_some() => {
                    tracing::warn!(provider = p.name(), error = %e, "provider unavailable at start: resuming from the acknowledged position");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut keys: Vec<String> = listed.into_iter().map(|m| m.key).collect();
            keys.extend(pending.iter().cloned());
            let inv = WalInventory::from_keys(keys.iter().map(String::as_str), seg);
            if let Some(r) = inv.resume_point(seg) {
                min = Some(match min {
                    Some(m) if m <= r => m,
                    _ => r,
                });
            }
        }
        Ok(match (min, floor) {
            (Some(m), Some(f)) => Some(m.min(f)),
            (m, f) => m.or(f),
        })
    }
    /// The `wal/` objects (sizes and modified times) of the first provider that lists
    /// them, with its name: what `plan` measures the WAL rate from.
    pub async fn wal_listing(&self) -> Result<(String, Vec<Listed>)> {
        let mut first_error = None;
        for p in &self.mirror.providers {
            match p.list("wal/").await {
                Ok(objs) => {
                    let listed = objs
                        .into_iter()
                        .map(|o| Listed {
                            key: o.key,
                            size: o.size,
                            modified: o.modified.map(Timestamp::from_system_time),
                        })
                        .collect();
                    return Ok((p.name().to_string(), listed));
                }
                Err(e) => {
                    tracing::warn!(provider = p.name(), error = %e, "a provider is unavailable; listing WAL from the others");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => bail!("no [[storage]] provider configured"),
        }
    }

    /// Every committed backup's metadata, oldest first: the union over the providers (a
    /// backup counts when any provider holds its backup.json).
    pub async fn backups(&self) -> Result<Vec<BackupMeta>> {
        let mut found: std::collections::BTreeMap<String, BackupMeta> = Default::default();
        let mut errors = Vec::new();
        let mut answered = 0;
        for p in &self.mirror.providers {
            let listed = match p.list(catalog::BACKUPS_PREFIX).await {
                Ok(l) => l,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            answered += 1;
            for o in listed {
                let Some(id) = catalog::parse_backup_meta_key(&o.key) else {
                    continue;
                };
                if found.contains_key(id) {
                    continue;
                }
                let Some(body) = p.get(&o.key).await? else {
                    continue;
                };
                let m: BackupMeta = serde_json::from_slice(&body)
                    .with_context(|| format!("storage \"{}\": {} is not valid", p.name(), o.key))?;
                found.insert(id.to_string(), m);
            }
        }
        if answered == 0 {
            if let Some(e) = errors.into_iter().next() {
                return Err(e.into());
            }
        } else {
            for e in errors {
                tracing::warn!(error = %e, "a provider is unavailable; listing backups from the others");
            }
        }
        Ok(found.into_values().collect())
    }

    /// Every committed dump's metadata, oldest first: the union over the providers that
    /// answer (a dump counts when any provider holds its `dump.json`).
    pub async fn dumps(&self) -> Result<Vec<DumpMeta>> {
        let mut out: Vec<DumpMeta> = self.records(catalog::DUMPS_PREFIX, "dump").await?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Every committed export (`lifeboat put`), by name then id (oldest first).
    pub async fn exports(&self) -> Result<Vec<ExportMeta>> {
        let mut out: Vec<ExportMeta> = self.records(catalog::EXPORTS_PREFIX, "export").await?;
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        out.dedup_by(|a, b| a.name == b.name && a.id == b.id);
        Ok(out)
    }

    /// The SQLite snapshots of database `name` (every database's when `None`), oldest
    /// first: the union over the providers (a snapshot exists once any holds its
    /// `snapshot.json`).
    pub async fn sqlite_snapshots(&self, name: Option<&str>) -> Result<Vec<SnapshotMeta>> {
        let prefix = name.map_or_else(|| sqlite::SQLITE_PREFIX.to_string(), sqlite::db_prefix);
        let mut out: Vec<SnapshotMeta> = self
            .records_where(&prefix, "sqlite snapshot", |k| {
                sqlite::parse_snapshot_meta_key(k).is_some()
            })
            .await?;
        out.sort_by(|a, b| (&a.name, a.time, &a.id).cmp(&(&b.name, b.time, &b.id)));
        out.dedup_by(|a, b| a.name == b.name && a.id == b.id);
        Ok(out)
    }

    /// The SQLite drills of database `name`, oldest first.
    pub async fn sqlite_drills(&self, name: &str) -> Result<Vec<SqliteDrillReport>> {
        let mut out: Vec<SqliteDrillReport> = self
            .records(&sqlite::drill_prefix(name), "sqlite drill")
            .await?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Record a SQLite drill under `sqlite/<NAME>/drills/<ID>.json` on every provider; a
    /// failed write is logged, as for the PostgreSQL drills.
    pub async fn record_sqlite_drill(&self, report: &SqliteDrillReport) {
        let body = match serde_json::to_vec_pretty(report) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the drill report");
                return;
            }
        };
        let key = sqlite::drill_key(&report.name, &report.id);
        if let Err(e) = self.mirror.put(&key, Bytes::from(body)).await {
            tracing::warn!(error = %e, key, "cannot record the drill in the archive");
        }
    }

    /// One dump's metadata, from any provider.
    pub async fn dump(&self, id: &str) -> Result<Option<DumpMeta>> {
        Ok(self.dumps().await?.into_iter().find(|d| d.id == id))
    }

    /// Every recorded drill, oldest first: the union over the providers that answer. An
    /// unreadable record is logged and skipped (`verify` reports it).
    pub async fn drills(&self) -> Result<Vec<DrillReport>> {
        let mut out: Vec<DrillReport> = self.records(catalog::DRILLS_PREFIX, "drill").await?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The id of the newest prune report (`prune/<ID>.json`) any provider holds; `Err`
    /// only when no provider could be listed.
    pub async fn newest_prune(&self) -> Result<Option<String>> {
        let mut newest: Option<String> = None;
        let mut errors = Vec::new();
        for p in &self.mirror.providers {
            match p.list(catalog::PRUNE_PREFIX).await {
                Ok(l) => {
                    for o in l {
                        let id = o
                            .key
                            .strip_prefix(catalog::PRUNE_PREFIX)
                            .and_then(|r| r.strip_suffix(".json"))
                            .filter(|id| catalog::is_backup_id(id));
                        if let Some(id) = id {
                            if newest.as_deref().map_or(true, |n| id > n) {
                                newest = Some(id.to_string());
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.len() == self.mirror.providers.len() {
            if let Some(e) = errors.into_iter().next() {
                return Err(e.into());
            }
        }
        Ok(newest)
    }

    /// The accepted WAL gaps (`gaps/*.json`), by timeline and position: the union over the
    /// providers.
    pub async fn gaps(&self) -> Result<Vec<AcceptedGap>> {
        let mut out: Vec<AcceptedGap> = self.records(catalog::GAPS_PREFIX, "gap").await?;
        out.sort_by_key(|g| (g.timeline, g.from));
        Ok(out)
    }

    /// Record an accepted gap on every provider; fails unless every provider stores it (a
    /// gap the planner does not know of would read as an unexplained hole).
    pub async fn record_gap(&self, gap: &AcceptedGap) -> Result<()> {
        let body = serde_json::to_vec_pretty(gap).context("encoding the gap record")?;
        self.mirror
            .put(&gap.key(), Bytes::from(body))
            .await
            .with_context(|| format!("recording {} in the archive", gap.key()))?;
        Ok(())
    }

    /// Every plain JSON record under `prefix` (`drills/`, `gaps/`), the union over the
    /// providers (a record counts when any provider holds it); one no provider could list
    /// is an error only when no provider answered.
    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<T>> {
        self.records_where(prefix, what, |_| true).await
    }

    /// [`Archive::records`] of the keys `keep` accepts.
    async fn records_where<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<T>> {
        let mut found: std::collections::BTreeMap<String, T> = Default::default();
        let mut errors = Vec::new();
        let mut answered = 0;
        for p in &self.mirror.providers {
            let listed = match p.list(prefix).await {
                Ok(l) => l,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            answered += 1;
            for o in listed {
                if !o.key.ends_with(".json") || found.contains_key(&o.key) || !keep(&o.key) {
                    continue;
                }
                if let Some(b) = p.get(&o.key).await? {
                    match serde_json::from_slice::<T>(&b) {
                        Ok(r) => {
                            found.insert(o.key, r);
                        }
                        Err(e) => {
                            tracing::warn!(key = o.key, error = %e, "unreadable {what} record")
                        }
                    }
                }
            }
        }
        if answered == 0 {
            if let Some(e) = errors.into_iter().next() {
                return Err(e.into());
            }
        }
        Ok(found.into_values().collect())
    }

    /// Record a drill under `drills/<ID>.json` on every provider (plain JSON, written once).
    /// A drill's result is worth keeping but not worth failing the drill for: a failed
    /// write is logged.
    pub async fn record_drill(&self, report: &DrillReport) {
        let body = match serde_json::to_vec_pretty(report) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the drill report");
                return;
            }
        };
        let key = format!("{}{}.json", catalog::DRILLS_PREFIX, report.id);
        if let Err(e) = self.mirror.put(&key, Bytes::from(body)).await {
            tracing::warn!(error = %e, key, "cannot record the drill in the archive");
        }
    }
}

async fn read_meta(p: &dyn ObjectStore) -> Result<Option<ArchiveMeta>> {
    match p.get(catalog::ARCHIVE_META).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
            format!(
                "storage \"{}\": {} is not valid",
                p.name(),
                catalog::ARCHIVE_META
            )
        }),
    }
}
