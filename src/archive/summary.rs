//! The archive at a glance, as `list` and `status` show it: the backups (those whose
//! `backup.json` exists on any provider), the WAL coverage per timeline from the first
//! provider's listing, and the last recorded drill.

use anyhow::Result;
use serde::Serialize;

use crate::archive::Archive;
use crate::config::RetentionConfig;
use crate::core::catalog::{self, AcceptedGap, BackupMeta, DumpMeta, ExportMeta, WalRange};
use crate::core::plan::Timestamp;
use crate::core::retention::{self, Listed, Tier};
use crate::core::rto;
use crate::core::sqlite::SnapshotKind;
use crate::core::wal::Lsn;

#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub label: String,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub start_time: String,
    pub end_time: String,
    /// The WAL from start to end is archived (on the first provider).
    pub restorable: bool,
    pub plain_size: u64,
    pub stored_size: u64,
    pub pg_version: u32,
    /// The retention tiers that keep it now (on the first provider); empty: the next
    /// `prune` deletes it.
    pub kept_by: Vec<Tier>,
    /// Until when the calendar tiers keep it.
    pub keep_until: Option<Timestamp>,
    /// An incremental backup's parent, and its place in the chain (1: on a full backup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_length: Option<u32>,
    /// An incremental backup whose chain is broken: the missing ancestor (then it is not
    /// restorable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_parent: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ListReport {
    pub backups: Vec<BackupSummary>,
    pub wal: Vec<WalRange>,
    /// WAL recorded as lost (`lifeboat accept-gap`): no restore crosses these.
    pub gaps: Vec<AcceptedGap>,
    /// The most recent restore drill recorded in the archive.
    pub last_drill: Option<DrillSummary>,
    /// Logical dumps (`lifeboat dump`), oldest first.
    pub dumps: Vec<DumpSummary>,
    /// Exports (`lifeboat put`), by name, oldest first.
    pub exports: Vec<ExportSummary>,
    /// SQLite snapshots (`lifeboat sqlite snapshot|run`), by database, oldest first.
    pub sqlite: Vec<SqliteSummary>,
    /// The restore and replay rates the RTO estimate uses (from the drills, or defaults).
    pub rates: rto::Rates,
    /// How long a restore to the archive's newest point would take now (None: no
    /// restorable backup).
    pub rto: Option<rto::Estimate>,
}

impl ListReport {
    /// The RTO estimate with the WAL ending at `wal_end` when that is past the archive's
    /// listing (a streamer's acknowledged position is newer than a listing).
    pub fn rto_at(&self, wal_end: Option<Lsn>) -> Option<rto::Estimate> {
        rto_estimate(&self.backups, &self.wal, &self.rates, wal_end)
    }
}

/// The estimate for the newest restorable backup (its chain's bytes: every backup in it
/// is read) and the WAL after it.
fn rto_estimate(
    backups: &[BackupSummary],
    wal: &[WalRange],
    rates: &rto::Rates,
    wal_end: Option<Lsn>,
) -> Option<rto::Estimate> {
    // Positions compare as (timeline, LSN).
    let base = backups
        .iter()
        .filter(|b| b.restorable)
        .max_by_key(|b| (b.timeline, b.end_lsn))?;
    let mut bytes = base.plain_size;
    let mut parent = base.parent.as_deref();
    let mut hops = 0;
    while let Some(p) = parent.and_then(|p| backups.iter().find(|b| b.id == p)) {
        bytes += p.plain_size;
        parent = p.parent.as_deref();
        hops += 1;
        if hops > 1000 {
            break;
        }
    }
    // The archive's end: the newest timeline's (a newer timeline starts where its parent
    // forked, so its end is past the base's on the path replay takes).
    let listed = wal
        .iter()
        .filter(|r| r.timeline >= base.timeline)
        .max_by_key(|r| (r.timeline, r.end_lsn))
        .map_or(base.end_lsn, |r| r.end_lsn);
    let end = listed.max(wal_end.unwrap_or(Lsn(0))).max(base.end_lsn);
    Some(rto::estimate(&base.id, bytes, base.start_lsn, end, rates))
}

#[derive(Debug, Serialize)]
pub struct SqliteSummary {
    pub name: String,
    pub id: String,
    pub kind: SnapshotKind,
    /// A delta's base snapshot.
    pub base: Option<String>,
    /// The point in time it restores.
    pub time: String,
    pub page_size: u32,
    pub page_count: u64,
    pub pages_stored: u64,
    pub plain_size: u64,
    pub stored_size: u64,
    /// The retention tiers that keep it now (on the first provider; a base kept for a
    /// kept delta carries that delta's tiers); empty: the next `prune` deletes it.
    pub kept_by: Vec<Tier>,
    pub keep_until: Option<Timestamp>,
}

/// The SQLite snapshots, with what retention keeps as `prune` would plan the first
/// provider now.
async fn sqlite_summaries(
    archive: &Archive,
    retention: Option<&RetentionConfig>,
) -> Result<Vec<SqliteSummary>> {
    let snaps = archive.sqlite_snapshots(None).await?;
    let mut out: Vec<SqliteSummary> = snaps
        .iter()
        .map(|m| SqliteSummary {
            name: m.name.clone(),
            id: m.id.clone(),
            kind: m.kind,
            base: m.base.clone(),
            time: m.time.rfc3339(),
            page_size: m.page_size,
            page_count: m.page_count,
            pages_stored: m.pages_stored(),
            plain_size: m.plain_size,
            stored_size: m.stored_size,
            kept_by: Vec::new(),
            keep_until: None,
        })
        .collect();
    if let (Some(retention), false) = (retention, snaps.is_empty()) {
        let first = archive
            .mirror
            .providers
            .first()
            .expect("an archive has at least one provider");
        let mut listing: Vec<Listed> = first
            .list(crate::core::sqlite::SQLITE_PREFIX)
            .await?
            .into_iter()
            .map(|o| Listed {
                key: o.key,
                size: o.size,
                modified: None,
            })
            .collect();
        listing.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let points: Vec<retention::SqlitePoint> = snaps
            .iter()
            .map(|m| retention::SqlitePoint {
                name: m.name.clone(),
                id: m.id.clone(),
                time: m.time,
                base: m.base.clone(),
            })
            .collect();
        let (kept, _) = retention::plan_sqlite(
            &crate::archive::prune::policy(retention),
            Timestamp::from_system_time(std::time::SystemTime::now()),
            &listing,
            &points,
        );
        for s in &mut out {
            let set = format!("sqlite/{}", s.name);
            if let Some(k) = kept.iter().find(|k| k.set == set && k.id == s.id) {
                s.kept_by = k.tiers.clone();
                s.keep_until = k.keep_until;
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct ExportSummary {
    pub name: String,
    pub id: String,
    pub kind: String,
    pub start_time: String,
    pub plain_size: u64,
    pub stored_size: u64,
}

impl ExportSummary {
    pub fn new(m: &ExportMeta) -> ExportSummary {
        ExportSummary {
            name: m.name.clone(),
            id: m.id.clone(),
            kind: m.kind.clone(),
            start_time: m.start_time.rfc3339(),
            plain_size: m.plain_size,
            stored_size: m.stored_size,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DumpSummary {
    pub id: String,
    pub start_time: String,
    pub end_time: String,
    pub pg_version: u32,
    pub pg_dump_version: String,
    pub databases: Vec<String>,
    pub globals: bool,
    pub plain_size: u64,
    pub stored_size: u64,
}

impl DumpSummary {
    pub fn new(m: &DumpMeta) -> DumpSummary {
        DumpSummary {
            id: m.id.clone(),
            start_time: m.start_time.rfc3339(),
            end_time: m.end_time.rfc3339(),
            pg_version: m.pg_version,
            pg_dump_version: m.pg_dump_version.clone(),
            databases: m
                .databases
                .iter()
                .filter_map(|d| d.database.clone())
                .collect(),
            globals: m.globals.is_some(),
            plain_size: m.plain_size,
            stored_size: m.stored_size,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DrillSummary {
    pub id: String,
    pub ok: bool,
    pub backup: Option<String>,
    pub target: Option<String>,
    /// The measured RTO, in seconds.
    pub total_seconds: f64,
}

impl BackupSummary {
    /// `all`: every backup of the archive (an incremental backup restores with its chain).
    pub fn new(m: &BackupMeta, wal: &[WalRange], all: &[BackupMeta]) -> BackupSummary {
        let missing_parent = crate::core::plan::chain_of(all, m).err().map(|b| b.missing);
        BackupSummary {
            id: m.id.clone(),
            label: m.label.clone(),
            timeline: m.timeline.0,
            start_lsn: m.start_lsn,
            end_lsn: m.end_lsn,
            start_time: m.start_time.rfc3339(),
            end_time: m.end_time.rfc3339(),
            restorable: missing_parent.is_none()
                && catalog::wal_covers(wal, m.timeline, m.start_lsn, m.end_timeline, m.end_lsn),
            plain_size: m.plain_size,
            stored_size: m.stored_size,
            pg_version: m.pg_version,
            kept_by: Vec::new(),
            keep_until: None,
            parent: m.incremental.as_ref().map(|i| i.parent.clone()),
            chain_length: m.incremental.as_ref().map(|i| i.chain_length),
            missing_parent,
        }
    }
}

/// The summary; with `retention`, also what the policy keeps (a listing and a plan of the
/// first provider: `list` shows it, `status`, which monitoring runs often, does not).
pub async fn run(archive: &Archive, retention: Option<&RetentionConfig>) -> Result<ListReport> {
    let dumps: Vec<DumpSummary> = archive
        .dumps()
        .await?
        .iter()
        .map(DumpSummary::new)
        .collect();
    let exports: Vec<ExportSummary> = archive
        .exports()
        .await?
        .iter()
        .map(ExportSummary::new)
        .collect();
    let sqlite = sqlite_summaries(archive, retention).await?;
    let Some(meta) = archive.meta().await? else {
        return Ok(ListReport {
            backups: Vec::new(),
            wal: Vec::new(),
            gaps: Vec::new(),
            last_drill: None,
            dumps,
            exports,
            rates: rto::rates(&[]),
            rto: None,
            sqlite,
        });
    };
    let seg = meta.wal_segment_size;
    let first = archive
        .mirror
        .providers
        .first()
        .expect("an archive has at least one provider");
    let wal = archive.inventory(first.as_ref(), seg).await?.ranges(seg);
    let metas = archive.backups().await?;
    let mut backups: Vec<BackupSummary> = metas
        .iter()
        .map(|m| BackupSummary::new(m, &wal, &metas))
        .collect();
    // What the retention policy keeps, as `prune` would plan the first provider now.
    if let Some(retention) = retention {
        let mut listing = Vec::new();
        for prefix in ["backups/", "history/", "wal/"] {
            listing.extend(first.list(prefix).await?.into_iter().map(|o| Listed {
                key: o.key,
                size: o.size,
                modified: None,
            }));
        }
        listing.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let plan = retention::plan_provider(
            &crate::archive::prune::policy(retention),
            Timestamp::from_system_time(std::time::SystemTime::now()),
            seg,
            &metas,
            &listing,
        );
        for b in &mut backups {
            if let Some(k) = plan.kept.iter().find(|k| k.backup == b.id) {
                b.kept_by = k.tiers.clone();
                b.keep_until = k.keep_until;
            }
        }
    }
    let drills = archive.drills().await?;
    let rates = rto::rates(&drill_figures(&drills));
    let last_drill = drills.last().cloned().map(|d| DrillSummary {
        id: d.id,
        ok: d.ok,
        backup: d.backup,
        target: d.recovery_target,
        total_seconds: d.phases.total,
    });
    let gaps = archive.gaps().await?;
    let rto = rto_estimate(&backups, &wal, &rates, None);
    Ok(ListReport {
        backups,
        wal,
        gaps,
        last_drill,
        dumps,
        exports,
        rates,
        rto,
        sqlite,
    })
}

/// What the successful drills (oldest first) measured, for the RTO rates.
pub fn drill_figures(drills: &[catalog::DrillReport]) -> Vec<rto::DrillFigures> {
    drills
        .iter()
        .filter(|d| d.ok)
        .map(|d| rto::DrillFigures {
            id: d.id.clone(),
            restored_bytes: d.restored_bytes,
            restore_seconds: d.phases.extract,
            replayed_bytes: d.replayed_wal_bytes,
            replay_seconds: d.phases.replay,
        })
        .collect()
}
