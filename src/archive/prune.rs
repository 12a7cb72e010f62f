//! `prune`: the retention planner's plan for each provider, planned from that provider's
//! own listing, and carrying it out in its crash-safe order.
//!
//! A deletion a provider refuses (an Object Lock, a policy that denies deletes to these
//! credentials) is reported and skipped, never fatal; a backup whose `backup.json` could not
//! be deleted keeps all its parts (it still exists, so it must stay whole). Every run that
//! deletes writes a report, `prune/<TIME>.json`, to every provider.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use serde::Serialize;

use crate::archive::Archive;
use crate::config::RetentionConfig;
use crate::core::catalog;
use crate::core::plan::Timestamp;
use crate::core::retention::{self, ColdMove, ColdPolicy, Listed, Policy, ProviderPlan, Why};
use crate::storage::{Cold, Extended};

/// A key that never exists, deleted to learn whether the credentials may delete.
const PROBE_KEY: &str = "prune/.delete-probe";

/// One day, in microseconds: how long objects no `backup.json` explains are left alone.
const GRACE: i64 = 86_400 * 1_000_000;

/// Each provider's cold class from its `[[storage]]` entry (in the archive's order).
pub fn cold_policies(storage: &[crate::storage::StorageConfig]) -> Vec<Option<ColdPolicy>> {
    storage
        .iter()
        .map(|s| {
            let class = s.cold_storage_class.clone()?;
            Some(ColdPolicy {
                min_days: crate::storage::config::cold_min_days(&class).unwrap_or(180),
                class,
                from: match s.cold_after {
                    Some(crate::storage::config::ColdAfter::Weekly) => retention::Tier::Weekly,
                    _ => retention::Tier::Monthly,
                },
            })
        })
        .collect()
}

/// The planner's policy from the `[retention]` section.
pub fn policy(r: &RetentionConfig) -> Policy {
    Policy {
        pitr_days: r.pitr_days,
        daily_days: r.daily_days,
        weekly_weeks: r.weekly_weeks,
        monthly_months: r.monthly_months,
        min_backups: r.min_backups,
        grace: GRACE,
    }
}

/// A lock group's date and the digest of its objects when every one reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LockedGroup {
    pub until: Timestamp,
    pub digest: String,
}

/// The lock groups the newest prune record on this provider says were reached there.
///
/// Only records dated at or before `now` count: a record from the future (a clock error,
/// or one written by credentials that should not write there) would make every later run
/// skip its locks.
async fn recorded_locks(
    p: &dyn crate::storage::ObjectStore,
    now: Timestamp,
) -> std::collections::BTreeMap<String, LockedGroup> {
    #[derive(serde::Deserialize)]
    struct Rec {
        providers: Vec<Prov>,
    }
    #[derive(serde::Deserialize)]
    struct Prov {
        provider: String,
        #[serde(default)]
        locked: std::collections::BTreeMap<String, LockedGroup>,
    }
    let Ok(listed) = p.list(catalog::PRUNE_PREFIX).await else {
        return Default::default();
    };
    let latest = format!("{}{}.json", catalog::PRUNE_PREFIX, report_id(now));
    let Some(newest) = listed
        .iter()
        .map(|o| &o.key)
        .filter(|k| k.ends_with(".json") && **k <= latest)
        .max()
    else {
        return Default::default();
    };
    let Ok(Some(body)) = p.get(newest).await else {
        return Default::default();
    };
    serde_json::from_slice::<Rec>(&body)
        .ok()
        .and_then(|r| r.providers.into_iter().find(|x| x.provider == p.name()))
        .map(|x| x.locked)
        .unwrap_or_default()
}

/// A deletion the provider refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub key: String,
    pub error: String,
}

/// One provider's share of a prune run.
#[derive(Debug, Serialize)]
pub struct ProviderPrune {
    pub provider: String,
    /// Objects listed (the requests a listing costs follow from it: 1,000 keys a page on S3).
    pub listed: usize,
    /// Why the provider could not be planned (it was left alone).
    pub error: Option<String>,
    pub plan: Option<ProviderPlan>,
    pub deleted: usize,
    pub freed: u64,
    pub refused: Vec<Refused>,
    /// Objects whose Object Lock date was raised to their kept point's keep-until date,
    /// and those already locked that long.
    pub locks_raised: usize,
    pub locks_held: usize,
    /// Why nothing was done here: these credentials may not delete.
    pub denied: Option<String>,
    /// Lock groups (a backup, or the history files) whose every object reached the date:
    /// recorded, so the next run skips them instead of asking for each object again.
    pub locked: std::collections::BTreeMap<String, LockedGroup>,
    /// Objects not asked because the previous run's record says their group is locked.
    pub locks_recorded: usize,
    /// The provider's cold class, the parts to move there, and how many were.
    pub cold_class: Option<String>,
    pub cold: Vec<ColdMove>,
    pub moved_cold: usize,
}

/// What `prune` planned and did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub format: u32,
    /// The report's id and time: `prune/<ID>.json`.
    pub id: String,
    pub now: Timestamp,
    pub dry_run: bool,
    pub policy: PolicyView,
    pub providers: Vec<ProviderPrune>,
}

#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub pitr_days: u32,
    pub daily_days: u32,
    pub weekly_weeks: u32,
    pub monthly_months: u32,
    pub min_backups: u32,
    pub grace_hours: i64,
}

/// Plan every provider (nothing is deleted).
pub async fn plan(
    archive: &Archive,
    policy: &Policy,
    cold: &[Option<ColdPolicy>],
    now: Timestamp,
) -> Result<PruneReport> {
    // SQLite snapshots (a host of SQLite databases has no PostgreSQL archive at all).
    let sqlite_points: Vec<retention::SqlitePoint> = archive
        .sqlite_snapshots(None)
        .await?
        .into_iter()
        .map(|s| retention::SqlitePoint {
            name: s.name,
            id: s.id,
            time: s.time,
            base: s.base,
        })
        .collect();
    let meta = archive.meta().await?;
    if meta.is_none() && sqlite_points.is_empty() {
        return Err(anyhow!("the archive is empty: there is nothing to prune\nhint: check the [[storage]] entries, or start `lifeboat stream` and take a backup"));
    }
    let seg = meta
        .as_ref()
        .map_or(crate::core::wal::WalSegSize::DEFAULT, |m| {
            m.wal_segment_size
        });
    let backups = if meta.is_some() {
        archive.backups().await?
    } else {
        Vec::new()
    };
    if meta.is_some() && backups.is_empty() && sqlite_points.is_empty() {
        return Err(anyhow!("the archive holds no backup, so no recovery point can be kept and nothing can be pruned safely\nhint: take one with `lifeboat backup`; prune keeps the newest backups and the WAL they need"));
    }
    // The markers of every dump and export any provider holds.
    let committed: std::collections::BTreeSet<String> = archive
        .dumps()
        .await?
        .iter()
        .map(|d| catalog::dump_meta_key(&d.id))
        .chain(
            archive
                .exports()
                .await?
                .iter()
                .map(|e| catalog::export_meta_key(&e.name, &e.id)),
        )
        .collect();
    let mut providers = Vec::new();
    for (i, p) in archive.mirror.providers.iter().enumerate() {
        let started = std::time::Instant::now();
        let mut listing = Vec::new();
        let mut error = None;
        // The big listing (WAL) first, so it is never copied into a growing buffer. With
        // the `.tmp.` leftovers of interrupted writes (file:// hides them from `list`).
        for prefix in [
            "wal/", "backups/", "history/", "dumps/", "exports/", "sqlite/",
        ] {
            match p.list_with_leftovers(prefix).await {
                Ok(objs) => {
                    // Same layout: collected in place, no second buffer of a million.
                    let mut part: Vec<Listed> = objs
                        .into_iter()
                        .map(|o| Listed {
                            key: o.key,
                            size: o.size,
                            modified: o.modified.map(Timestamp::from_system_time),
                        })
                        .collect();
                    if listing.is_empty() {
                        listing = part;
                    } else {
                        listing.append(&mut part);
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        // Keys are unique: an unstable sort needs no buffer of its own.
        listing.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let listed = started.elapsed();
        let plan = error.is_none().then(|| {
            let mut pl = retention::plan_provider(policy, now, seg, &backups, &listing);
            // Dumps and exports: the same tiers, each set on its own.
            let from = listing.partition_point(|l| l.key.as_str() < catalog::DUMPS_PREFIX);
            let to = listing.partition_point(|l| l.key.as_str() < "exports0");
            let (copies, delete) =
                retention::plan_copies(policy, now, &listing[from..to], &committed);
            pl.freed += delete.iter().map(|d| d.size).sum::<u64>();
            pl.delete.extend(delete);
            pl.copies = copies;
            // SQLite snapshots: the same tiers, each database on its own, chains whole.
            let from = listing.partition_point(|l| l.key.as_str() < "sqlite/");
            let to = listing.partition_point(|l| l.key.as_str() < "sqlite0");
            let (kept, delete) =
                retention::plan_sqlite(policy, now, &listing[from..to], &sqlite_points);
            pl.freed += delete.iter().map(|d| d.size).sum::<u64>();
            pl.delete.extend(delete);
            // Their Object Lock dates, raised with the backups' (one group a snapshot).
            let (retain, groups) = retention::sqlite_retain(&listing[from..to], &kept);
            if !retain.is_empty() {
                pl.retain.extend(retain);
                pl.retain.sort_by(|a, b| a.key.cmp(&b.key));
                pl.retain_groups.extend(groups);
                pl.retain_groups.sort_by(|a, b| a.group.cmp(&b.group));
            }
            pl.copies.extend(kept);
            pl
        });
        let mut moves = Vec::new();
        if let (Some(pl), Some(Some(c))) = (&plan, cold.get(i)) {
            match p.list_classes(catalog::BACKUPS_PREFIX).await {
                Ok(classes) => moves = retention::cold_moves(pl, &listing, &classes, c, now),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let plan = if error.is_some() { None } else { plan };
        tracing::info!(
            provider = p.name(),
            objects = listing.len(),
            listed_s = listed.as_secs_f64(),
            planned_s = (started.elapsed() - listed).as_secs_f64(),
            "planned"
        );
        providers.push(ProviderPrune {
            provider: p.name().to_string(),
            listed: listing.len(),
            error,
            plan,
            deleted: 0,
            freed: 0,
            refused: Vec::new(),
            locks_raised: 0,
            locks_held: 0,
            denied: None,
            locked: Default::default(),
            locks_recorded: 0,
            cold_class: cold.get(i).cloned().flatten().map(|c| c.class),
            cold: moves,
            moved_cold: 0,
        });
    }
    Ok(PruneReport {
        format: 1,
        id: report_id(now),
        now,
        dry_run: true,
        policy: PolicyView {
            pitr_days: policy.pitr_days,
            daily_days: policy.daily_days,
            weekly_weeks: policy.weekly_weeks,
            monthly_months: policy.monthly_months,
            min_backups: policy.min_backups,
            grace_hours: policy.grace / 3_600_000_000,
        },
        providers,
    })
}

/// `YYYYMMDDTHHMMSSZ` of a time, as backup ids are made.
fn report_id(now: Timestamp) -> String {
    let secs = Timestamp::from_unix_secs(now.0.div_euclid(1_000_000));
    catalog::backup_id_from_rfc3339(&secs.rfc3339())
}

/// Carry out the plan on every provider, in its order, then record the report.
pub async fn apply(archive: &Archive, report: &mut PruneReport) -> Result<()> {
    report.dry_run = false;
    for (p, pp) in archive
        .mirror
        .providers
        .iter()
        .zip(report.providers.iter_mut())
    {
        let Some(plan) = &pp.plan else {
            continue;
        };
        // Credentials without delete rights (the database host's) are found before
        // anything is done, not by a million refusals.
        if let Err(e) = p.probe_delete(PROBE_KEY).await {
            tracing::warn!(provider = p.name(), error = %e, "these credentials may not delete: nothing is done on this provider");
            pp.denied = Some(format!("{} {}: {}", e.op, e.key, e.message));
            continue;
        }
        // Locks first: a run stopped after them has only kept things longer. A group the
        // previous run recorded as reached (same date or later, same objects) is skipped.
        let groups: std::collections::BTreeMap<&str, LockedGroup> = plan
            .retain_groups
            .iter()
            .map(|g| {
                (
                    g.group.as_str(),
                    LockedGroup {
                        until: g.until,
                        digest: g.digest.clone(),
                    },
                )
            })
            .collect();
        let before = if plan.retain.is_empty() || !p.features().object_lock {
            Default::default()
        } else {
            recorded_locks(p.as_ref(), report.now).await
        };
        let done = |g: &str| {
            before
                .get(g)
                .zip(groups.get(g))
                .is_some_and(|(b, now)| b.until >= now.until && b.digest == now.digest)
        };
        let mut failed: std::collections::BTreeSet<&str> = Default::default();
        let mut supported = true;
        for r in &plan.retain {
            if done(&r.group) {
                pp.locks_recorded += 1;
                continue;
            }
            match p.extend_retention(&r.key, r.until.to_system_time()).await {
                Ok(Extended::Raised) => pp.locks_raised += 1,
                Ok(Extended::Held) => pp.locks_held += 1,
                Ok(Extended::Unsupported) => {
                    supported = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(provider = p.name(), key = r.key, error = %e, "cannot extend the object's lock; skipped");
                    failed.insert(r.group.as_str());
                    pp.refused.push(Refused {
                        key: r.key.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        if supported {
            pp.locked = groups
                .into_iter()
                .filter(|(g, _)| !failed.contains(g))
                .map(|(g, l)| (g.to_string(), l))
                .collect();
        }
        // Cold moves (a tag for the bucket's lifecycle rule, or a copy into the class): the
        // first refusal (no rule, a class the provider does not know) stops them here.
        for m in &pp.cold {
            let Some(class) = &pp.cold_class else { break };
            match p.make_cold(&m.key, class).await {
                Ok(Cold::Tagged | Cold::Copied) => pp.moved_cold += 1,
                Ok(Cold::Unsupported) => {
                    tracing::warn!(
                        provider = p.name(),
                        "the provider does not keep storage classes: nothing moved"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(provider = p.name(), key = m.key, error = %e, "cannot move to the cold class; the rest stays");
                    pp.refused.push(Refused {
                        key: m.key.clone(),
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
        // A backup whose marker stays keeps its parts: it still exists.
        let mut kept_markers: Vec<String> = Vec::new();
        let progress = crate::archive::progress::Progress::items(
            format!("prune {}", p.name()),
            plan.delete.len() as u64,
        );
        for d in &plan.delete {
            progress.add(1, d.size);
            if d.why == Why::ExpiredPart
                && kept_markers.iter().any(|prefix| d.key.starts_with(prefix))
            {
                continue;
            }
            // Nor its WAL: the plan counted on the backup being gone.
            if matches!(d.why, Why::Wal | Why::Superseded) && !kept_markers.is_empty() {
                continue;
            }
            match p.delete(&d.key).await {
                Ok(()) => {
                    pp.deleted += 1;
                    pp.freed += d.size;
                }
                Err(e) => {
                    tracing::warn!(provider = p.name(), key = d.key, error = %e, "deletion refused; skipped");
                    if d.why == Why::ExpiredBackup {
                        if let Some(id) = catalog::parse_backup_meta_key(&d.key) {
                            kept_markers.push(catalog::backup_prefix(id));
                        }
                    }
                    pp.refused.push(Refused {
                        key: d.key.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
    let key = format!("{}{}.json", catalog::PRUNE_PREFIX, report.id);
    let body = serde_json::to_vec_pretty(&record(report))?;
    if let Err(e) = archive.mirror.put(&key, Bytes::from(body)).await {
        tracing::warn!(key, error = %e, "cannot record the prune report in the archive");
    }
    Ok(())
}

/// The record a run leaves in the archive: the plan's decisions and what became of them,
/// without the list of every WAL object deleted (a million keys would make a 100 MB report).
#[derive(Debug, Serialize)]
struct Record<'a> {
    format: u32,
    id: &'a str,
    now: Timestamp,
    policy: &'a PolicyView,
    providers: Vec<ProviderRecord<'a>>,
}

#[derive(Debug, Serialize)]
struct ProviderRecord<'a> {
    provider: &'a str,
    listed: usize,
    error: Option<&'a str>,
    window_start: Option<Timestamp>,
    anchor: Option<&'a str>,
    kept: Option<&'a [retention::Kept]>,
    unrestorable: Option<&'a [String]>,
    /// The backups whose `backup.json` was deleted.
    backups_deleted: Vec<&'a str>,
    /// Planned deletions by reason.
    planned: std::collections::BTreeMap<String, usize>,
    deleted: usize,
    freed: u64,
    refused: &'a [Refused],
    locks_raised: usize,
    locks_held: usize,
    locks_recorded: usize,
    /// The lock groups reached (the next run skips them).
    locked: &'a std::collections::BTreeMap<String, LockedGroup>,
    denied: Option<&'a str>,
    cold_class: Option<&'a str>,
    cold_planned: usize,
    moved_cold: usize,
}

fn record(r: &PruneReport) -> Record<'_> {
    Record {
        format: 1,
        id: &r.id,
        now: r.now,
        policy: &r.policy,
        providers: r
            .providers
            .iter()
            .map(|p| {
                let plan = p.plan.as_ref();
                let mut planned = std::collections::BTreeMap::new();
                for d in plan.map_or(&[][..], |pl| &pl.delete) {
                    let why = serde_json::to_value(d.why)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    *planned.entry(why).or_insert(0) += 1;
                }
                let refused_keys: Vec<&str> = p.refused.iter().map(|f| f.key.as_str()).collect();
                ProviderRecord {
                    provider: &p.provider,
                    listed: p.listed,
                    error: p.error.as_deref(),
                    window_start: plan.map(|pl| pl.window_start),
                    anchor: plan.and_then(|pl| pl.anchor.as_deref()),
                    kept: plan.map(|pl| &pl.kept[..]),
                    unrestorable: plan.map(|pl| &pl.unrestorable[..]),
                    backups_deleted: plan
                        .map_or(&[][..], |pl| &pl.delete)
                        .iter()
                        .filter(|d| {
                            d.why == Why::ExpiredBackup && !refused_keys.contains(&d.key.as_str())
                        })
                        .filter_map(|d| catalog::parse_backup_meta_key(&d.key))
                        .collect(),
                    planned,
                    deleted: p.deleted,
                    freed: p.freed,
                    refused: &p.refused,
                    locks_raised: p.locks_raised,
                    locks_held: p.locks_held,
                    locks_recorded: p.locks_recorded,
                    locked: &p.locked,
                    denied: p.denied.as_deref(),
                    cold_class: p.cold_class.as_deref(),
                    cold_planned: p.cold.len(),
                    moved_cold: p.moved_cold,
                }
            })
            .collect(),
    }
}
