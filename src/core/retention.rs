//! The retention planner: which recovery points a policy keeps, and exactly which objects a
//! provider may delete, planned from that provider's own listing. Pure: the policy, the
//! backup catalog, the listing and `now` are parameters.
//!
//! The rules, each a property test below:
//! - every instant in the PITR window `(now − pitr_days, now]` that is recoverable before
//!   pruning stays recoverable: the newest backup that ended at or before the window's
//!   start (the anchor) is kept, with all WAL from its start onward, on every timeline;
//! - every kept backup keeps its parts, its manifest, and the WAL from its start to its end
//!   (on both timelines when it spans a switch); history files are never deleted;
//! - a tier keeps the **first** restorable backup (by end time) of each UTC day, ISO week
//!   and month of its horizon: a choice later backups never change;
//! - the newest `min_backups` restorable backups are kept, whatever their age;
//! - a backup counts only if it is complete and its WAL is archived *on this provider*;
//! - objects no `backup.json` explains (an interrupted backup, a `.tmp.` leftover) are
//!   deleted only once older than the grace period (a backup in progress on another host);
//! - a backup is deleted `backup.json` first (it stops existing), then its parts;
//! - planning again after the deletions deletes nothing (idempotent).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::core::catalog::{self, BackupMeta, WalInventory, WalRange};
use crate::core::plan::{civil_from_days, days_from_civil, Timestamp};
use crate::core::wal::{Lsn, SegNo, SegmentName, TimelineId, WalSegSize};

const DAY: i64 = 86_400 * 1_000_000;

/// The `[retention]` policy, as the planner takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub pitr_days: u32,
    pub daily_days: u32,
    pub weekly_weeks: u32,
    pub monthly_months: u32,
    pub min_backups: u32,
    /// How long objects no `backup.json` explains are left alone (microseconds).
    pub grace: i64,
}

impl Policy {
    /// The strategy's policy: PITR 7 days, dailies 30 days, weeklies 12 months, monthlies
    /// 7 years, 2 backups at least, 1 day of grace.
    pub fn strategy() -> Policy {
        Policy {
            pitr_days: 7,
            daily_days: 30,
            weekly_weeks: 52,
            monthly_months: 84,
            min_backups: 2,
            grace: DAY,
        }
    }
}

/// One listed object of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When the provider last wrote it, where the listing says.
    pub modified: Option<Timestamp>,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The PITR window's anchor, or a backup inside the window.
    Pitr,
    /// Among the newest `min_backups`.
    Newest,
    Daily,
    Weekly,
    Monthly,
}

impl Tier {
    /// The name `list`, `prune` and the JSON records use.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Pitr => "pitr",
            Tier::Newest => "newest",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
        }
    }
}

/// Tiers as `list` and `prune` print them: `pitr,newest,daily`.
pub fn tiers_text(tiers: &[Tier]) -> String {
    tiers.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

/// A kept recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub backup: String,
    pub end_time: Timestamp,
    pub tiers: Vec<Tier>,
    /// Until when the calendar tiers keep it; `None` while only the window or the newest
    /// count keep it (re-decided every run).
    pub keep_until: Option<Timestamp>,
}

/// Why an object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The commit marker of a backup no rule keeps: deleted first.
    ExpiredBackup,
    /// A part or manifest of a backup no rule keeps, after its marker.
    ExpiredPart,
    /// Left by a backup that never committed, older than the grace period.
    Interrupted,
    /// WAL no kept recovery point needs.
    Wal,
    /// A `.part` whose segment's `.seg` this provider holds, before the PITR anchor.
    Superseded,
    /// A `.tmp.` leftover of an interrupted write, older than the grace period.
    Temporary,
    /// The commit marker of a dump or an export no rule keeps: deleted first.
    ExpiredCopy,
    /// A part of a dump or an export no rule keeps, after its marker.
    ExpiredCopyPart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deletion {
    pub key: String,
    pub size: u64,
    pub why: Why,
}

/// The plan for one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderPlan {
    /// The start of the PITR window.
    pub window_start: Timestamp,
    /// The backup every instant of the window is recovered from (`None`: no restorable
    /// backup here, so nothing is deleted but leftovers).
    pub anchor: Option<String>,
    /// Whether the whole window is covered (a backup ended at or before its start).
    pub window_covered: bool,
    pub kept: Vec<Kept>,
    /// Backups with a `backup.json` here that cannot be restored from this provider
    /// (a part or their WAL missing): never counted, kept while inside the window.
    pub unrestorable: Vec<String>,
    /// What to delete, in the order to delete it.
    pub delete: Vec<Deletion>,
    pub freed: u64,
    /// Each object a calendar tier keeps, with the latest keep-until date of the points
    /// that need it, sorted by key: the retain-until date an Object Lock must reach.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retain: Vec<Retain>,
    /// The groups of `retain`, each with its date and a digest of its objects (keys, sizes,
    /// write times): a group recorded as reached with the same digest needs no request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retain_groups: Vec<RetainGroup>,
    /// The dumps and exports kept (their deletions are in `delete`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<KeptCopy>,
}

/// A kept logical copy: a dump (`set` = "dumps") or an export (`set` = "exports/NAME").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptCopy {
    pub set: String,
    pub id: String,
    pub tiers: Vec<Tier>,
    pub keep_until: Option<Timestamp>,
}

/// The calendar tiers over points in time order: the first point of each day, ISO week
/// and month, with the date its tier keeps it until, for tiers that still last at `now`.
fn calendar_tiers<T: Copy>(
    policy: &Policy,
    now: Timestamp,
    points: impl IntoIterator<Item = (T, Timestamp)>,
) -> Vec<(T, Tier, Timestamp)> {
    let mut first_of: BTreeMap<(u8, i64), T> = BTreeMap::new();
    for (p, t) in points {
        let d = day_of(t);
        for bucket in [(0u8, d), (1, week_of(d)), (2, month_of(d))] {
            first_of.entry(bucket).or_insert(p);
        }
    }
    first_of
        .into_iter()
        .filter_map(|((tier, start), p)| {
            let (tier, until) = match tier {
                0 => (Tier::Daily, at_day(start + i64::from(policy.daily_days))),
                1 => (
                    Tier::Weekly,
                    at_day(start + 7 * i64::from(policy.weekly_weeks)),
                ),
                _ => (
                    Tier::Monthly,
                    at_day(add_months(start, policy.monthly_months)),
                ),
            };
            (until > now).then_some((p, tier, until))
        })
        .collect()
}

/// Add `tier` (and its keep-until date) to what keeps a point.
fn add_tier(
    tiers: &mut Vec<Tier>,
    keep_until: &mut Option<Timestamp>,
    tier: Tier,
    until: Option<Timestamp>,
) {
    if !tiers.contains(&tier) {
        tiers.push(tier);
        tiers.sort();
    }
    if let Some(u) = until {
        *keep_until = Some(keep_until.map_or(u, |x| x.max(u)));
    }
}

/// A copy's marker key (when listed) and its objects.
type CopyObjects<'a> = (Option<String>, Vec<&'a Listed>);

/// The logical copies (dumps, and each export name's puts) by the same tiers as backups:
/// every copy inside the PITR window, the newest `min_backups`, the first of each day, week
/// and month while its tier lasts. `listing` is this provider's `dumps/` and `exports/`
/// objects, sorted by key; `committed` the marker keys any provider holds (a copy whose
/// marker is elsewhere is not a leftover here). Returns what is kept and what to delete:
/// each expired copy's marker first, then its parts; parts of a copy that never committed,
/// once older than the grace period.
pub fn plan_copies(
    policy: &Policy,
    now: Timestamp,
    listing: &[Listed],
    committed: &BTreeSet<String>,
) -> (Vec<KeptCopy>, Vec<Deletion>) {
    // (set, id) -> (marker key, objects)
    let mut groups: BTreeMap<(String, String), CopyObjects> = BTreeMap::new();
    // (`.tmp.` leftovers are the `Temporary` sweep's, after the grace period.)
    for l in listing.iter().filter(|l| !l.key.contains(".tmp.")) {
        let (set, id, meta) = if let Some(rest) = l.key.strip_prefix(catalog::DUMPS_PREFIX) {
            let Some((id, _)) = rest.split_once('/') else {
                continue;
            };
            ("dumps".to_string(), id, catalog::dump_meta_key(id))
        } else if let Some(rest) = l.key.strip_prefix(catalog::EXPORTS_PREFIX) {
            let mut it = rest.splitn(3, '/');
            let (Some(name), Some(id), Some(_)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            (
                format!("exports/{name}"),
                id,
                catalog::export_meta_key(name, id),
            )
        } else {
            continue;
        };
        let g = groups.entry((set, id.to_string())).or_default();
        if l.key == meta {
            g.0 = Some(meta);
        }
        g.1.push(l);
    }
    let window_start = Timestamp(now.0 - i64::from(policy.pitr_days) * DAY);
    let grace_start = Timestamp(now.0.saturating_sub(policy.grace));
    let mut kept: BTreeMap<(String, String), KeptCopy> = BTreeMap::new();
    // Each set on its own: its committed copies, oldest first.
    let mut sets: BTreeMap<&str, Vec<(&str, Timestamp)>> = BTreeMap::new();
    for ((set, id), (meta, _)) in &groups {
        if let (Some(_), Some(t)) = (meta, backup_id_time(id)) {
            sets.entry(set).or_default().push((id, t));
        }
    }
    for (set, mut copies) in sets {
        copies.sort_by_key(|c| (c.1, c.0));
        let mut keep = |id: &str, tier: Tier, until: Option<Timestamp>| {
            let k = kept
                .entry((set.to_string(), id.to_string()))
                .or_insert_with(|| KeptCopy {
                    set: set.to_string(),
                    id: id.to_string(),
                    tiers: Vec::new(),
                    keep_until: None,
                });
            add_tier(&mut k.tiers, &mut k.keep_until, tier, until);
        };
        for (id, t) in &copies {
            if *t >= window_start {
                keep(id, Tier::Pitr, None);
            }
        }
        for (id, _) in copies.iter().rev().take(policy.min_backups as usize) {
            keep(id, Tier::Newest, None);
        }
        for (id, tier, until) in calendar_tiers(policy, now, copies.iter().copied()) {
            keep(id, tier, Some(until));
        }
    }
    let mut delete = Vec::new();
    for ((set, id), (meta, objects)) in &groups {
        if kept.contains_key(&(set.clone(), id.clone())) {
            continue;
        }
        match meta {
            Some(meta) => delete_set(
                &mut delete,
                objects.iter().copied(),
                meta,
                Why::ExpiredCopy,
                Why::ExpiredCopyPart,
            ),
            None => {
                // Never committed here: a leftover once nothing of it is recent, unless a
                // marker exists on another provider (then it is a copy to repair, not junk).
                let marker = if set == "dumps" {
                    catalog::dump_meta_key(id)
                } else {
                    catalog::export_meta_key(set.trim_start_matches("exports/"), id)
                };
                let newest = objects.iter().filter_map(|l| l.modified).max();
                if !committed.contains(&marker) && interrupted(id, newest, grace_start) {
                    delete.extend(objects.iter().map(|l| deletion(l, Why::Interrupted)));
                }
            }
        }
    }
    (kept.into_values().collect(), delete)
}

/// Whether a snapshot's marker is listed, and its objects.
type SnapshotObjects<'a> = (bool, Vec<&'a Listed>);

/// A committed SQLite snapshot (its `snapshot.json` is on some provider), as the planner
/// sees it: a delta names the snapshot it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlitePoint {
    pub name: String,
    pub id: String,
    /// The point in time it holds.
    pub time: Timestamp,
    /// A delta's base (`None`: a full snapshot).
    pub base: Option<String>,
}

/// SQLite snapshots by the same tiers as backups, each database on its own: every snapshot
/// inside the PITR window and the newest one before it (every instant of the window
/// restores to the snapshot at or before it), the newest `min_backups`, the first of each
/// day, ISO week and month while its tier lasts. A kept delta keeps its whole chain: its
/// base, that one's base, down to the full snapshot, with the same tiers and date (a chain
/// is only as lasting as its newest kept point). `listing` is this provider's `sqlite/`
/// objects, sorted by key; `points` every committed snapshot. Returns the kept snapshots
/// (set `sqlite/NAME`) and the deletions: expired snapshots newest first (a delta before
/// its base), each marker before its parts; parts no snapshot committed, once older than
/// the grace period. Drill records are never touched.
pub fn plan_sqlite(
    policy: &Policy,
    now: Timestamp,
    listing: &[Listed],
    points: &[SqlitePoint],
) -> (Vec<KeptCopy>, Vec<Deletion>) {
    use crate::core::sqlite::{parse_snapshot_meta_key, SQLITE_PREFIX};
    // (name, id) -> (marker listed here, objects)
    let mut groups: BTreeMap<(&str, &str), SnapshotObjects> = BTreeMap::new();
    for l in listing.iter().filter(|l| !l.key.contains(".tmp.")) {
        let Some(rest) = l.key.strip_prefix(SQLITE_PREFIX) else {
            continue;
        };
        let mut it = rest.splitn(3, '/');
        let (Some(name), Some(id), Some(_)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !catalog::is_backup_id(id) {
            continue; // `drills/`
        }
        let g = groups.entry((name, id)).or_default();
        g.0 |= parse_snapshot_meta_key(&l.key).is_some();
        g.1.push(l);
    }
    let window_start = Timestamp(now.0 - i64::from(policy.pitr_days) * DAY);
    let grace_start = Timestamp(now.0.saturating_sub(policy.grace));
    let by_id: BTreeMap<(&str, &str), &SqlitePoint> = points
        .iter()
        .map(|p| ((p.name.as_str(), p.id.as_str()), p))
        .collect();
    let mut kept: BTreeMap<(String, String), KeptCopy> = BTreeMap::new();
    let mut dbs: BTreeMap<&str, Vec<&SqlitePoint>> = BTreeMap::new();
    for p in points {
        if groups
            .get(&(p.name.as_str(), p.id.as_str()))
            .is_some_and(|g| g.0)
        {
            dbs.entry(&p.name).or_default().push(p);
        }
    }
    for (name, mut snaps) in dbs {
        snaps.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        let mut keep = |id: &str, tier: Tier, until: Option<Timestamp>| {
            let k = kept
                .entry((name.to_string(), id.to_string()))
                .or_insert_with(|| KeptCopy {
                    set: format!("sqlite/{name}"),
                    id: id.to_string(),
                    tiers: Vec::new(),
                    keep_until: None,
                });
            add_tier(&mut k.tiers, &mut k.keep_until, tier, until);
        };
        let anchor = snaps.iter().rev().find(|s| s.time < window_start);
        for s in snaps
            .iter()
            .filter(|s| s.time >= window_start)
            .chain(anchor)
        {
            keep(&s.id, Tier::Pitr, None);
        }
        for s in snaps.iter().rev().take(policy.min_backups as usize) {
            keep(&s.id, Tier::Newest, None);
        }
        for (id, tier, until) in
            calendar_tiers(policy, now, snaps.iter().map(|s| (s.id.as_str(), s.time)))
        {
            keep(id, tier, Some(until));
        }
    }
    // Whole chains: each kept point's bases, with its tiers and date.
    let heads: Vec<KeptCopy> = kept.values().cloned().collect();
    for k in heads {
        let name = k.set.trim_start_matches("sqlite/").to_string();
        let mut cur = by_id.get(&(name.as_str(), k.id.as_str())).copied();
        let mut guard = 0;
        while let Some(base) = cur.and_then(|p| p.base.as_deref()) {
            guard += 1;
            if guard > points.len() {
                break; // a cycle (a damaged record): keep what was reached
            }
            let e = kept
                .entry((name.clone(), base.to_string()))
                .or_insert_with(|| KeptCopy {
                    set: k.set.clone(),
                    id: base.to_string(),
                    tiers: Vec::new(),
                    keep_until: None,
                });
            for t in &k.tiers {
                add_tier(&mut e.tiers, &mut e.keep_until, *t, k.keep_until);
            }
            cur = by_id.get(&(name.as_str(), base)).copied();
        }
    }
    // Expired: newest first, so a delta goes before the snapshot it applies to.
    let mut expired: Vec<(&(&str, &str), &SnapshotObjects)> = groups
        .iter()
        .filter(|((n, id), (marker, _))| {
            *marker && !kept.contains_key(&(n.to_string(), id.to_string()))
        })
        .collect();
    expired.sort_by_key(|((n, id), _)| {
        std::cmp::Reverse((by_id.get(&(*n, *id)).map(|p| p.time), *id))
    });
    let mut delete = Vec::new();
    for ((name, id), (_, objects)) in expired {
        let marker = crate::core::sqlite::snapshot_meta_key(name, id);
        delete_set(
            &mut delete,
            objects.iter().copied(),
            &marker,
            Why::ExpiredCopy,
            Why::ExpiredCopyPart,
        );
    }
    // Never committed here, nor anywhere: a leftover once nothing of it is recent.
    for ((name, id), (marker, objects)) in &groups {
        if *marker || by_id.contains_key(&(*name, *id)) {
            continue;
        }
        let newest = objects.iter().filter_map(|l| l.modified).max();
        if interrupted(id, newest, grace_start) {
            delete.extend(objects.iter().map(|l| deletion(l, Why::Interrupted)));
        }
    }
    (kept.into_values().collect(), delete)
}

/// A lock group: a backup's objects (or the history files), its date and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainGroup {
    pub group: String,
    pub until: Timestamp,
    pub digest: String,
}

/// An object a kept recovery point needs until `until` (its lock's target date).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retain {
    pub key: String,
    pub until: Timestamp,
    /// The backup whose keep-until date this is (`history/` for the history files): prune
    /// records per group which dates it reached, and skips a group already there.
    pub group: String,
}

/// The group name of the history files' lock targets.
pub const HISTORY_GROUP: &str = "history/";

/// The day index (days since 1970-01-01, UTC) of a time.
fn day_of(t: Timestamp) -> i64 {
    t.0.div_euclid(DAY)
}

fn at_day(d: i64) -> Timestamp {
    Timestamp(d * DAY)
}

/// Monday of the ISO week holding day `d` (1970-01-01 was a Thursday).
pub(crate) fn week_of(d: i64) -> i64 {
    d - (d + 3).rem_euclid(7)
}

/// First day of the month holding day `d`.
pub(crate) fn month_of(d: i64) -> i64 {
    let (y, m, _) = civil_from_days(d);
    days_from_civil(y, m, 1)
}

/// The first day of the month `months` after the month that begins on day `first`.
pub(crate) fn add_months(first: i64, months: u32) -> i64 {
    let (y, m, _) = civil_from_days(first);
    let total = y * 12 + (m - 1) + i64::from(months);
    days_from_civil(total.div_euclid(12), total.rem_euclid(12) + 1, 1)
}

/// `l` deleted for `why`.
fn deletion(l: &Listed, why: Why) -> Deletion {
    Deletion {
        key: l.key.clone(),
        size: l.size,
        why,
    }
}

/// Delete a committed set's objects: its marker `marker` first (for `first`; a crash after
/// it leaves parts that read as a leftover), then the others (for `rest`), in order.
fn delete_set<'a>(
    delete: &mut Vec<Deletion>,
    objects: impl Iterator<Item = &'a Listed> + Clone,
    marker: &str,
    first: Why,
    rest: Why,
) {
    delete.extend(
        objects
            .clone()
            .filter(|l| l.key == marker)
            .map(|l| deletion(l, first)),
    );
    delete.extend(
        objects
            .filter(|l| l.key != marker)
            .map(|l| deletion(l, rest)),
    );
}

/// Whether a set that never committed is the leftover of an interrupted run: started (by
/// its id) and last written (`newest`, unknown counts as old) before the grace period.
fn interrupted(id: &str, newest: Option<Timestamp>, grace_start: Timestamp) -> bool {
    backup_id_time(id).is_some_and(|t| t <= grace_start)
        && newest.map_or(true, |w| w <= grace_start)
}

/// The UTC start time encoded in a backup id (`YYYYMMDDTHHMMSSZ[-N]`).
pub fn backup_id_time(id: &str) -> Option<Timestamp> {
    if !catalog::is_backup_id(id) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| id.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(4..6)?, n(6..8)?);
    let secs = days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?;
    Some(Timestamp::from_unix_secs(secs))
}

/// The segments a backup's own replay reads, per timeline: from its start to its end.
fn backup_wal(b: &BackupMeta, seg: WalSegSize) -> Vec<(TimelineId, u64, u64)> {
    let (s, e) = (b.start_lsn.segno(seg).0, b.end_lsn.segno(seg).0);
    if b.timeline == b.end_timeline {
        vec![(b.timeline, s, e)]
    } else {
        vec![(b.timeline, s, e), (b.end_timeline, s, e)]
    }
}

/// Plan one provider: `catalog` is every backup whose `backup.json` any provider holds
/// (parsed), `listing` this provider's objects, sorted by key (as providers list them).
pub fn plan_provider<'a>(
    policy: &Policy,
    now: Timestamp,
    seg: WalSegSize,
    catalog: &'a [BackupMeta],
    listing: &[Listed],
) -> ProviderPlan {
    // The listing is sorted by key: lookups are binary searches (no second index of a
    // million keys).
    let find = |key: &str| {
        listing
            .binary_search_by(|l| l.key.as_str().cmp(key))
            .ok()
            .map(|i| &listing[i])
    };
    let has = |key: &str| find(key).is_some();
    // The WAL ranges (the inventory of a million objects is dropped at once).
    let ranges: Vec<WalRange> = WalInventory::from_keys(
        listing
            .iter()
            .filter(|l| l.key.starts_with("wal/"))
            .map(|l| l.key.as_str()),
        seg,
    )
    .ranges(seg);
    let window_start = Timestamp(now.0 - i64::from(policy.pitr_days) * DAY);

    // The backups this provider can restore, oldest first.
    let here: Vec<&BackupMeta> = catalog
        .iter()
        .filter(|b| has(&catalog::backup_meta_key(&b.id)))
        .collect();
    // An incremental backup restores with its chain: every link's backup.json and parts
    // here, and the WAL of the newest.
    let restorable_on = |b: &BackupMeta| {
        crate::core::plan::chain_of(catalog, b).is_ok_and(|chain| {
            chain.iter().all(|l| {
                has(&catalog::backup_meta_key(&l.id))
                    && l.parts
                        .iter()
                        .map(|p| p.key.as_str())
                        .chain([l.manifest.key.as_str()])
                        .all(has)
            })
        }) && catalog::wal_covers(&ranges, b.timeline, b.start_lsn, b.end_timeline, b.end_lsn)
    };
    let mut restorable: Vec<&BackupMeta> =
        here.iter().copied().filter(|b| restorable_on(b)).collect();
    restorable.sort_by(|a, b| (a.end_time, &a.id).cmp(&(b.end_time, &b.id)));
    let unrestorable: Vec<String> = here
        .iter()
        .filter(|b| !restorable_on(b))
        .map(|b| b.id.clone())
        .collect();

    let mut kept: BTreeMap<&str, Kept> = BTreeMap::new();
    let mut keep = |b: &'a BackupMeta, tier: Tier, until: Option<Timestamp>| {
        let k = kept.entry(b.id.as_str()).or_insert_with(|| Kept {
            backup: b.id.clone(),
            end_time: b.end_time,
            tiers: Vec::new(),
            keep_until: None,
        });
        add_tier(&mut k.tiers, &mut k.keep_until, tier, until);
    };

    // The newest timeline's history: the PITR anchor must lie on it. A backup of a branch
    // the cluster left (timeline 1 past the point a lagging standby forked from it) cannot
    // recover any instant of the current timeline, and WAL kept from its start would miss
    // the current timeline's WAL before it.
    let mut histories: BTreeMap<TimelineId, (TimelineId, Lsn)> = BTreeMap::new();
    let from = listing.partition_point(|l| l.key.as_str() < "history/");
    for l in listing[from..]
        .iter()
        .take_while(|l| l.key.starts_with("history/"))
    {
        if let Some(h) = catalog::parse_history_key(&l.key) {
            histories.insert(h.tli, (h.parent, h.switch));
        }
    }
    let newest = ranges
        .iter()
        .map(|r| TimelineId(r.timeline))
        .chain(histories.keys().copied())
        .max()
        .unwrap_or(TimelineId(1));
    // (timeline, where it begins) from the newest back to its root.
    let mut path = vec![(newest, Lsn(0))];
    while let Some((parent, switch)) = histories.get(&path.last().expect("not empty").0) {
        path.last_mut().expect("not empty").1 = *switch;
        if *parent >= path.last().expect("not empty").0 || path.len() > 10_000 {
            break;
        }
        path.push((*parent, Lsn(0)));
    }
    let tli_at = |lsn: Lsn| {
        path.iter()
            .find(|(_, begin)| *begin <= lsn)
            .map(|(t, _)| *t)
    };
    let on_path = |b: &BackupMeta| {
        tli_at(b.start_lsn) == Some(b.timeline) && tli_at(b.end_lsn) == Some(b.end_timeline)
    };

    // The PITR window: its anchor and everything inside it.
    let anchor = restorable
        .iter()
        .rev()
        .find(|b| b.end_time <= window_start && on_path(b))
        .or_else(|| restorable.iter().find(|b| on_path(b)))
        .or(restorable.first())
        .copied();
    let window_covered = anchor.is_some_and(|a| a.end_time <= window_start);
    if let Some(a) = anchor {
        for b in restorable.iter().filter(|b| b.end_time >= a.end_time) {
            keep(b, Tier::Pitr, None);
        }
    }
    // The newest few.
    for b in restorable.iter().rev().take(policy.min_backups as usize) {
        keep(b, Tier::Newest, None);
    }
    // Calendar tiers: the first restorable backup of each day, week and month.
    for (b, tier, until) in calendar_tiers(policy, now, restorable.iter().map(|b| (*b, b.end_time)))
    {
        keep(b, tier, Some(until));
    }

    // Chains stay whole: a kept incremental backup keeps every ancestor, by the same tiers
    // and as long; so does one spared below (not restorable here, inside the window).
    let spared: Vec<&BackupMeta> = here
        .iter()
        .copied()
        .filter(|b| {
            b.incremental.is_some()
                && !kept.contains_key(b.id.as_str())
                && !restorable_on(b)
                && b.end_time >= window_start
        })
        .collect();
    let mut links: Vec<(&BackupMeta, Vec<Tier>, Option<Timestamp>)> = Vec::new();
    for b in here.iter().copied() {
        if b.incremental.is_none() {
            continue;
        }
        let (tiers, until) = match kept.get(b.id.as_str()) {
            Some(k) => (k.tiers.clone(), k.keep_until),
            None if spared.iter().any(|s| s.id == b.id) => (vec![Tier::Pitr], None),
            None => continue,
        };
        let mut at = b;
        // A chain has fewer links than there are backups; more means a cycle. (A cap on
        // all the walks together cut the long chains of many kept incrementals short.)
        let mut steps = 0;
        while let Some(inc) = &at.incremental {
            let Some(p) = here.iter().copied().find(|p| p.id == inc.parent) else {
                break;
            };
            steps += 1;
            if steps > here.len() {
                break;
            }
            links.push((p, tiers.clone(), until));
            at = p;
        }
    }
    for (p, tiers, until) in links {
        let k = kept.entry(p.id.as_str()).or_insert_with(|| Kept {
            backup: p.id.clone(),
            end_time: p.end_time,
            tiers: Vec::new(),
            keep_until: None,
        });
        for t in tiers {
            add_tier(&mut k.tiers, &mut k.keep_until, t, until);
        }
    }

    // The WAL the kept points need: each kept backup's own span, and everything from the
    // anchor's start on (any timeline: a branch may be a target).
    let by_id: BTreeMap<&str, &BackupMeta> = here.iter().map(|b| (b.id.as_str(), *b)).collect();
    let mut spans: Vec<(TimelineId, u64, u64)> = Vec::new();
    for id in kept.keys() {
        spans.extend(backup_wal(by_id[id], seg));
    }
    // Merged per timeline, for a binary search per WAL object.
    spans.sort();
    let mut merged: BTreeMap<(TimelineId, u64), u64> = BTreeMap::new();
    let mut last: Option<(TimelineId, u64, u64)> = None;
    for (t, s, e) in spans {
        match &mut last {
            Some((lt, _, le)) if *lt == t && s <= *le + 1 => *le = (*le).max(e),
            _ => {
                if let Some((lt, ls, le)) = last.take() {
                    merged.insert((lt, ls), le);
                }
                last = Some((t, s, e));
            }
        }
    }
    if let Some((lt, ls, le)) = last {
        merged.insert((lt, ls), le);
    }
    let floor = anchor.map(|a| a.start_lsn.segment_start(seg));
    let needed = |tli: TimelineId, segno: u64| {
        floor.map_or(true, |f| segno >= f.segno(seg).0)
            || merged
                .range(..=(tli, segno))
                .next_back()
                .is_some_and(|((t, _), e)| *t == tli && segno <= *e)
    };

    let old = |l: &Listed| {
        l.modified
            .is_some_and(|m| m.0 <= now.0.saturating_sub(policy.grace))
    };
    let mut delete = Vec::new();
    // Backups no rule keeps: only with an anchor (else nothing is known to be safe), and
    // never one that is not restorable here while it is inside the window.
    if anchor.is_some() {
        let mut gone: Vec<&BackupMeta> = here
            .iter()
            .copied()
            .filter(|b| !kept.contains_key(b.id.as_str()))
            .filter(|b| restorable_on(b) || b.end_time < window_start)
            .collect();
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        for b in gone {
            let prefix = catalog::backup_prefix(&b.id);
            let meta = catalog::backup_meta_key(&b.id);
            // The listing is sorted by key: the backup's objects are one run of it.
            let from = listing.partition_point(|l| l.key.as_str() < prefix.as_str());
            let objects = listing[from..]
                .iter()
                .take_while(|l| l.key.starts_with(&prefix));
            delete_set(
                &mut delete,
                objects,
                &meta,
                Why::ExpiredBackup,
                Why::ExpiredPart,
            );
        }
    }
    // Leftovers of backups that never committed (no backup.json on any provider). A backup
    // still writing (a throttled one may run longer than the grace period) has a recent
    // object: its id's newest write decides, not each object's.
    let committed: BTreeSet<&str> = catalog.iter().map(|b| b.id.as_str()).collect();
    let grace_start = Timestamp(now.0.saturating_sub(policy.grace));
    let mut newest_write: BTreeMap<&str, Option<Timestamp>> = BTreeMap::new();
    for l in listing {
        if let Some((id, _)) = l
            .key
            .strip_prefix(catalog::BACKUPS_PREFIX)
            .and_then(|r| r.split_once('/'))
        {
            let e = newest_write.entry(id).or_insert(l.modified);
            *e = match (*e, l.modified) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    for l in listing {
        let Some(rest) = l.key.strip_prefix(catalog::BACKUPS_PREFIX) else {
            continue;
        };
        let Some((id, _)) = rest.split_once('/') else {
            continue;
        };
        if committed.contains(id) || has(&catalog::backup_meta_key(id)) {
            continue;
        }
        let written = newest_write.get(id).copied().flatten();
        if interrupted(id, written, grace_start) {
            delete.push(deletion(l, Why::Interrupted));
        }
    }
    // WAL: what nothing kept needs (only with an anchor), and superseded parts before it;
    // oldest first (the listing's order is timeline, then LSN).
    if let Some(f) = floor {
        let from = listing.partition_point(|l| l.key.as_str() < "wal/");
        for l in listing[from..]
            .iter()
            .take_while(|l| l.key.starts_with("wal/"))
        {
            let Some(o) = catalog::parse_wal_key(&l.key, seg) else {
                continue;
            };
            let why = if !needed(o.name.tli, o.segno.0) {
                Why::Wal
            } else if !o.complete
                && o.segno.0 < f.segno(seg).0
                && has(&catalog::segment_key(o.name))
            {
                Why::Superseded
            } else {
                continue;
            };
            delete.push(Deletion {
                key: l.key.clone(),
                size: l.size,
                why,
            });
        }
    }
    // (Not those already queued with their backup.)
    let queued: BTreeSet<String> = delete
        .iter()
        .filter(|d| matches!(d.why, Why::ExpiredPart | Why::Interrupted))
        .map(|d| d.key.clone())
        .collect();
    for l in listing
        .iter()
        .filter(|l| l.key.contains(".tmp.") && old(l) && !queued.contains(&l.key))
    {
        delete.push(Deletion {
            key: l.key.clone(),
            size: l.size,
            why: Why::Temporary,
        });
    }
    let freed = delete.iter().map(|d| d.size).sum();
    let (retain, retain_groups) = retain_dates(seg, listing, &kept, &by_id);
    ProviderPlan {
        window_start,
        anchor: anchor.map(|a| a.id.clone()),
        window_covered,
        kept: kept.into_values().collect(),
        unrestorable,
        delete,
        freed,
        retain,
        retain_groups,
        copies: Vec::new(),
    }
}

/// A provider's cold storage class, as the planner takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdPolicy {
    pub class: String,
    /// The class's minimum storage duration (days): an object deleted sooner is billed the
    /// rest, so only objects with a longer planned life left are moved.
    pub min_days: u32,
    /// The first tier whose backups go cold: `Monthly` (backups only the monthly tier
    /// keeps) or `Weekly` (also those only the weekly and monthly tiers keep).
    pub from: Tier,
}

/// Objects smaller than this stay in the standard class: archive classes bill at least
/// 128 KiB (and Glacier adds 40 KB of index) per object, and `backup.json`, manifests and
/// history files are read by every listing and plan.
pub const COLD_MIN_SIZE: u64 = 128 * 1024;

/// A backup part to move to the cold class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColdMove {
    pub key: String,
    pub size: u64,
    pub backup: String,
}

/// The parts a provider's cold class takes: those of backups that only tiers from
/// `cold.from` on keep, whose keep-until date is further than the class's minimum storage
/// duration, at least [`COLD_MIN_SIZE`], and not yet in the class (`classes`: the
/// provider's non-standard objects, sorted by key). Tiers only fall away as a backup ages,
/// so a backup that went cold never needs to come back.
pub fn cold_moves(
    plan: &ProviderPlan,
    listing: &[Listed],
    classes: &[(String, String)],
    cold: &ColdPolicy,
    now: Timestamp,
) -> Vec<ColdMove> {
    let allowed = |t: &Tier| *t >= cold.from && matches!(t, Tier::Weekly | Tier::Monthly);
    let mut out = Vec::new();
    for k in &plan.kept {
        let Some(until) = k.keep_until else { continue };
        if k.tiers.is_empty() || !k.tiers.iter().all(allowed) {
            continue;
        }
        if until.0 - now.0 <= i64::from(cold.min_days) * DAY {
            continue;
        }
        let prefix = catalog::backup_prefix(&k.backup);
        let from = listing.partition_point(|l| l.key.as_str() < prefix.as_str());
        for l in listing[from..]
            .iter()
            .take_while(|l| l.key.starts_with(&prefix))
        {
            let name = &l.key[prefix.len()..];
            if name == "backup.json"
                || name == "backup_manifest"
                || l.key.contains(".tmp.")
                || l.size < COLD_MIN_SIZE
            {
                continue;
            }
            let now_in = classes
                .binary_search_by(|(key, _)| key.as_str().cmp(&l.key))
                .ok()
                .map(|i| classes[i].1.as_str());
            if now_in == Some(cold.class.as_str()) {
                continue;
            }
            out.push(ColdMove {
                key: l.key.clone(),
                size: l.size,
                backup: k.backup.clone(),
            });
        }
    }
    out
}

/// The lock targets: every object of a backup a calendar tier keeps (its parts, manifest
/// and `backup.json`), the WAL from its start to its end, and the history files (tiny, and
/// any timeline may need them) until the latest date of all.
fn retain_dates(
    seg: WalSegSize,
    listing: &[Listed],
    kept: &BTreeMap<&str, Kept>,
    by_id: &BTreeMap<&str, &BackupMeta>,
) -> (Vec<Retain>, Vec<RetainGroup>) {
    let mut until: BTreeMap<&str, (Timestamp, &str)> = BTreeMap::new();
    let mut latest: Option<Timestamp> = None;
    for (id, k) in kept {
        let Some(u) = k.keep_until else { continue };
        latest = Some(latest.map_or(u, |l| l.max(u)));
        let id: &str = id;
        // Not `.tmp.` leftovers, nor parts a listed `.seg` supersedes (both may go).
        let mut bump = |key: &str| {
            if key.contains(".tmp.")
                || catalog::parse_wal_key(key, seg).is_some_and(|o| {
                    !o.complete
                        && listing
                            .binary_search_by(|l| l.key.as_str().cmp(&catalog::segment_key(o.name)))
                            .is_ok()
                })
            {
                return;
            }
            let at = listing
                .binary_search_by(|l| l.key.as_str().cmp(key))
                .expect("listed");
            let e = until.entry(listing[at].key.as_str()).or_insert((u, id));
            if u > e.0 {
                *e = (u, id);
            }
        };
        let prefix = catalog::backup_prefix(id);
        let from = listing.partition_point(|l| l.key.as_str() < prefix.as_str());
        for l in listing[from..]
            .iter()
            .take_while(|l| l.key.starts_with(&prefix))
        {
            bump(&l.key);
        }
        for (tli, s, e) in backup_wal(by_id[id], seg) {
            let first = format!("wal/{:08X}/{}", tli.0, SegmentName::new(tli, SegNo(s), seg));
            let from = listing.partition_point(|l| l.key.as_str() < first.as_str());
            for l in &listing[from..] {
                match catalog::parse_wal_key(&l.key, seg) {
                    Some(o) if o.name.tli == tli && o.segno.0 <= e => bump(&l.key),
                    _ => break,
                }
            }
        }
    }
    if let Some(u) = latest {
        let from = listing.partition_point(|l| l.key.as_str() < "history/");
        for l in listing[from..]
            .iter()
            .take_while(|l| l.key.starts_with("history/"))
        {
            until.insert(l.key.as_str(), (u, HISTORY_GROUP));
        }
    }
    retain_groups(listing, until)
}

/// The lock targets of SQLite snapshots: every object of a snapshot the calendar tiers keep
/// (its parts and `snapshot.json`; a delta's bases carry the dates of the points that need
/// them, as [`plan_sqlite`] gives them), one group a snapshot (`sqlite/NAME/ID`).
/// `listing` is sorted by key; `kept` is [`plan_sqlite`]'s.
pub fn sqlite_retain(listing: &[Listed], kept: &[KeptCopy]) -> (Vec<Retain>, Vec<RetainGroup>) {
    let mut until: BTreeMap<&str, (Timestamp, &str)> = BTreeMap::new();
    let groups: Vec<(String, Timestamp)> = kept
        .iter()
        .filter(|k| k.set.starts_with("sqlite/"))
        .filter_map(|k| Some((format!("{}/{}/", k.set, k.id), k.keep_until?)))
        .collect();
    for (prefix, u) in &groups {
        let from = listing.partition_point(|l| l.key.as_str() < prefix.as_str());
        for l in listing[from..]
            .iter()
            .take_while(|l| l.key.starts_with(prefix.as_str()))
            .filter(|l| !l.key.contains(".tmp."))
        {
            until.insert(l.key.as_str(), (*u, prefix.trim_end_matches('/')));
        }
    }
    retain_groups(listing, until)
}

/// Group the lock targets (key -> date and group), each group with its latest date and a
/// digest over its objects in key order: a new object, a replaced one (a new version has a
/// new write time) or a dropped one changes it.
fn retain_groups(
    listing: &[Listed],
    until: BTreeMap<&str, (Timestamp, &str)>,
) -> (Vec<Retain>, Vec<RetainGroup>) {
    use sha2::Digest;
    let mut groups: BTreeMap<&str, (Timestamp, sha2::Sha256)> = BTreeMap::new();
    for (key, (u, group)) in &until {
        let at = listing
            .binary_search_by(|l| l.key.as_str().cmp(key))
            .expect("listed");
        let l = &listing[at];
        let g = groups.entry(group).or_insert((*u, sha2::Sha256::new()));
        g.0 = g.0.max(*u);
        g.1.update(key.as_bytes());
        g.1.update(l.size.to_le_bytes());
        g.1.update(l.modified.map_or(i64::MIN, |m| m.0).to_le_bytes());
        g.1.update([0u8]);
    }
    let groups = groups
        .into_iter()
        .map(|(group, (until, h))| RetainGroup {
            group: group.to_string(),
            until,
            digest: h
                .finalize()
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
        .collect();
    let retain = until
        .into_iter()
        .map(|(key, (until, group))| Retain {
            key: key.to_string(),
            until,
            group: group.to_string(),
        })
        .collect();
    (retain, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::BackupPart;
    use crate::core::wal::{Lsn, SegmentName};
    use proptest::prelude::*;

    const SEG: WalSegSize = WalSegSize::DEFAULT;
    /// One WAL segment is written every `UNIT` of simulated time.
    const UNIT: i64 = 6 * 3600 * 1_000_000;
    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600 * 1_000_000;

    /// A simulated history: segments written one per UNIT from unit 1, backups at some
    /// units, a timeline switch, holes, objects missing from the provider.
    #[derive(Debug, Clone)]
    struct History {
        units: u64,
        backups: Vec<u64>,
        switch: Option<u64>,
        holes: Vec<u64>,
        interrupted: Vec<u64>,
        missing: Vec<(u8, u64)>,
        temps: Vec<u64>,
        policy: Policy,
        now_extra: i64,
        /// Bit `i % 32` set: the `i`-th backup (by id, from the second on) is incremental
        /// on the one before it.
        incr_mask: u32,
    }

    fn t(unit: u64) -> Timestamp {
        Timestamp(T0 + unit as i64 * UNIT)
    }

    fn tli_at(h: &History, unit: u64) -> TimelineId {
        match h.switch {
            Some(s) if unit > s => TimelineId(2),
            _ => TimelineId(1),
        }
    }

    fn switch_lsn(s: u64) -> Lsn {
        Lsn((s + 1) * SEG.bytes() + SEG.bytes() / 2)
    }

    fn id_of(unit: u64) -> String {
        let secs = t(unit).0 / 1_000_000;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let r = secs.rem_euclid(86_400);
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            r / 3600,
            r / 60 % 60,
            r % 60
        )
    }

    fn meta(h: &History, unit: u64) -> BackupMeta {
        let id = id_of(unit);
        let tli = tli_at(h, unit);
        let part = |tar: &str, seq: u32| BackupPart {
            key: catalog::backup_part_key(&id, tar, seq),
            tar: tar.into(),
            seq,
            plain_len: 10,
            stored_len: 10,
            crc32: 0,
        };
        BackupMeta {
            format: 1,
            id: id.clone(),
            label: String::new(),
            system_identifier: "1".into(),
            pg_version: 170000,
            timeline: tli,
            start_lsn: Lsn((unit + 1) * SEG.bytes() + 0x28),
            end_timeline: tli,
            end_lsn: Lsn((unit + 2) * SEG.bytes() + 0x100),
            start_time: t(unit),
            end_time: Timestamp(t(unit).0 + 1800 * 1_000_000),
            plain_size: 0,
            stored_size: 0,
            tablespaces: vec![],
            parts: vec![part("base.tar", 0), part("base.tar", 1)],
            manifest: BackupPart {
                key: catalog::backup_manifest_key(&id),
                tar: String::new(),
                seq: 0,
                plain_len: 1,
                stored_len: 1,
                crc32: 0,
            },
            extensions: None,
            shared_preload_libraries: None,
            data_checksums: true,
            wal_segment_size: SEG,
            from_standby: false,
            bootstrap_superuser: None,
            snapshot_at_end: None,
            created_by: String::new(),
            incremental: None,
            full_reason: None,
            members: Vec::new(),
        }
    }

    /// The catalog and one provider's listing for a history.
    fn build(h: &History) -> (Vec<BackupMeta>, Vec<Listed>) {
        let mut listing = Vec::new();
        let mut add = |key: String, unit: u64| {
            listing.push(Listed {
                key,
                size: 100,
                modified: Some(t(unit)),
            })
        };
        // WAL: segment n holds unit n-1's writes; the last one is still a part.
        let last = h.units + 2;
        for n in 1..=last {
            let unit = n.saturating_sub(1);
            if h.holes.contains(&n) {
                continue;
            }
            let tli = match h.switch {
                Some(s) if n > s + 1 => TimelineId(2),
                _ => TimelineId(1),
            };
            let name = SegmentName::new(tli, crate::core::wal::SegNo(n), SEG);
            if n == last {
                add(catalog::part_key(name, 0, 0x1000), unit);
            } else {
                add(catalog::segment_key(name), unit);
                if n % 5 == 0 {
                    // A part superseded by the segment (a restart re-sent it whole).
                    add(catalog::part_key(name, 0, 0x2000), unit);
                }
            }
            if let Some(s) = h.switch {
                if n == s + 1 {
                    // The switch segment: timeline 1's half, then timeline 2's whole.
                    let n2 = SegmentName::new(TimelineId(2), crate::core::wal::SegNo(n), SEG);
                    add(catalog::segment_key(n2), unit);
                }
            }
        }
        if let Some(s) = h.switch {
            add(
                catalog::history_key(TimelineId(2), TimelineId(1), switch_lsn(s)),
                s,
            );
        }
        let mut cat = Vec::new();
        for &u in &h.backups {
            if h.switch == Some(u) {
                continue;
            }
            let m = meta(h, u);
            for p in m.parts.iter().chain([&m.manifest]) {
                add(p.key.clone(), u);
            }
            add(catalog::backup_meta_key(&m.id), u);
            cat.push(m);
        }
        for &u in &h.interrupted {
            add(
                catalog::backup_part_key(&format!("{}-9", id_of(u)), "base.tar", 0),
                u,
            );
        }
        for &u in &h.temps {
            add(format!("wal/00000001/x.tmp.{u}"), u);
        }
        cat.sort_by(|a, b| a.id.cmp(&b.id));
        cat.dedup_by(|a, b| a.id == b.id);
        for i in 1..cat.len() {
            if h.incr_mask >> (i % 32) & 1 == 1 {
                let p = &cat[i - 1];
                let inc = catalog::IncrementalOf {
                    parent: p.id.clone(),
                    chain_length: p.incremental.as_ref().map_or(0, |x| x.chain_length) + 1,
                    from_lsn: p.start_lsn,
                    from_timeline: p.timeline,
                };
                cat[i].incremental = Some(inc);
            }
        }
        // Objects this provider lacks: a backup's marker or part, or a segment.
        for (kind, i) in &h.missing {
            if cat.is_empty() {
                break;
            }
            let b = &cat[*i as usize % cat.len()];
            let key = match kind % 3 {
                0 => catalog::backup_meta_key(&b.id),
                1 => b.parts[0].key.clone(),
                _ => b.manifest.key.clone(),
            };
            listing.retain(|l| l.key != key);
        }
        listing.sort_by(|a, b| a.key.cmp(&b.key));
        listing.dedup_by(|a, b| a.key == b.key);
        (cat, listing)
    }

    fn now_of(h: &History) -> Timestamp {
        Timestamp(t(h.units).0 + h.now_extra)
    }

    fn after(listing: &[Listed], plan: &ProviderPlan) -> Vec<Listed> {
        let gone: BTreeSet<&str> = plan.delete.iter().map(|d| d.key.as_str()).collect();
        listing
            .iter()
            .filter(|l| !gone.contains(l.key.as_str()))
            .cloned()
            .collect()
    }

    fn restorable(cat: &[BackupMeta], listing: &[Listed]) -> Vec<BackupMeta> {
        let keys: BTreeSet<&str> = listing.iter().map(|l| l.key.as_str()).collect();
        let ranges = WalInventory::from_keys(keys.iter().copied(), SEG).ranges(SEG);
        let whole = |b: &BackupMeta| {
            keys.contains(catalog::backup_meta_key(&b.id).as_str())
                && b.parts
                    .iter()
                    .chain([&b.manifest])
                    .all(|p| keys.contains(p.key.as_str()))
        };
        cat.iter()
            .filter(|b| {
                // an incremental backup restores with its whole chain
                crate::core::plan::chain_of(cat, b).is_ok_and(|c| c.iter().all(|l| whole(l)))
                    && catalog::wal_covers(
                        &ranges,
                        b.timeline,
                        b.start_lsn,
                        b.end_timeline,
                        b.end_lsn,
                    )
            })
            .cloned()
            .collect()
    }

    /// What a listing can restore: its restorable backups and WAL ranges.
    struct View {
        restorable: Vec<BackupMeta>,
        ranges: Vec<WalRange>,
    }

    fn view(cat: &[BackupMeta], listing: &[Listed]) -> View {
        View {
            restorable: restorable(cat, listing),
            ranges: WalInventory::from_keys(listing.iter().map(|l| l.key.as_str()), SEG)
                .ranges(SEG),
        }
    }

    /// Whether the instant at `unit` (its segment's start) can be recovered.
    fn recoverable(h: &History, v: &View, unit: u64) -> bool {
        let ranges = &v.ranges;
        let covers = |tli: TimelineId, from: Lsn, to: Lsn| {
            ranges
                .iter()
                .any(|r| r.timeline == tli.0 && r.start_lsn <= from && r.end_lsn >= to)
        };
        let target = Lsn((unit + 1) * SEG.bytes() + 0x200);
        let at = t(unit);
        let ttli = tli_at(h, unit);
        v.restorable.iter().any(|b| {
            if b.end_time > at || b.end_lsn > target {
                return false;
            }
            if b.timeline == ttli {
                covers(ttli, b.start_lsn, target)
            } else {
                let sw = switch_lsn(h.switch.unwrap());
                covers(b.timeline, b.start_lsn, sw) && covers(ttli, sw.segment_start(SEG), target)
            }
        })
    }

    fn history() -> impl Strategy<Value = History> {
        (20u64..480).prop_flat_map(|units| {
            (
                Just(units),
                proptest::collection::vec(0..units, 0..30),
                proptest::option::of(0..units),
                proptest::collection::vec(1..units + 2, 0..4),
                proptest::collection::vec(0..units, 0..3),
                proptest::collection::vec((any::<u8>(), any::<u64>()), 0..3),
                proptest::collection::vec(0..units, 0..3),
                (1u32..12, 0u32..40, 0u32..60, 0u32..100, 0u32..4, 0i64..48),
                0i64..UNIT,
                prop_oneof![Just(0u32), any::<u32>()],
            )
                .prop_map(
                    |(
                        units,
                        backups,
                        switch,
                        holes,
                        interrupted,
                        missing,
                        temps,
                        p,
                        now_extra,
                        incr_mask,
                    )| {
                        History {
                            units,
                            backups,
                            switch,
                            holes,
                            interrupted,
                            missing,
                            temps,
                            policy: Policy {
                                pitr_days: p.0,
                                daily_days: p.1,
                                weekly_weeks: p.2,
                                monthly_months: p.3,
                                min_backups: p.4,
                                grace: p.5 * 3600 * 1_000_000,
                            },
                            now_extra,
                            incr_mask,
                        }
                    },
                )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn pruning_keeps_every_promise(h in history()) {
            let (cat, listing) = build(&h);
            let now = now_of(&h);
            let plan = plan_provider(&h.policy, now, SEG, &cat, &listing);
            let rest = after(&listing, &plan);
            let gone: BTreeSet<&str> = plan.delete.iter().map(|d| d.key.as_str()).collect();

            // Every instant of the window that was recoverable still is.
            let window = plan.window_start;
            let (v0, v1) = (view(&cat, &listing), view(&cat, &rest));
            for unit in 0..=h.units {
                if t(unit) > window && recoverable(&h, &v0, unit) {
                    prop_assert!(
                        recoverable(&h, &v1, unit),
                        "unit {unit} lost; plan {plan:?}"
                    );
                }
            }
            // Kept backups stay restorable; the newest min_backups are among them.
            let after_ok: BTreeSet<String> =
                v1.restorable.iter().map(|b| b.id.clone()).collect();
            // (An ancestor kept for its chain may have no WAL of its own: it was never a
            // recovery point, only a link.)
            let before_ok: BTreeSet<String> =
                v0.restorable.iter().map(|b| b.id.clone()).collect();
            for k in &plan.kept {
                if before_ok.contains(&k.backup) {
                    prop_assert!(after_ok.contains(&k.backup), "kept {} broken", k.backup);
                }
            }
            // Chains stay whole: a kept incremental backup's ancestors are kept, as long.
            for k in &plan.kept {
                let b = cat.iter().find(|b| b.id == k.backup).unwrap();
                if let Ok(chain) = crate::core::plan::chain_of(&cat, b) {
                    // (up to the first link this provider has no backup.json of)
                    let here = |id: &str| listing.iter().any(|l| l.key == catalog::backup_meta_key(id));
                    for a in chain[..chain.len() - 1].iter().rev().take_while(|a| here(&a.id)) {
                        let ka = plan.kept.iter().find(|x| x.backup == a.id);
                        prop_assert!(ka.is_some(), "{} kept, its ancestor {} not", b.id, a.id);
                        prop_assert!(ka.unwrap().keep_until >= k.keep_until, "{} outlives its ancestor {}", b.id, a.id);
                        prop_assert!(!gone.contains(catalog::backup_meta_key(&a.id).as_str()));
                    }
                }
            }
            let mut before = v0.restorable.clone();
            before.sort_by(|a, b| (a.end_time, &a.id).cmp(&(b.end_time, &b.id)));
            for b in before.iter().rev().take(h.policy.min_backups as usize) {
                prop_assert!(after_ok.contains(&b.id), "newest {} dropped", b.id);
            }
            // The first backup of each day in the daily horizon is kept.
            let mut seen_days = BTreeSet::new();
            for b in &before {
                let d = day_of(b.end_time);
                if seen_days.insert(d) && at_day(d + i64::from(h.policy.daily_days)) > now {
                    prop_assert!(after_ok.contains(&b.id), "first of day {} dropped", b.id);
                }
            }
            // Nothing young that no backup.json explains goes, and a marker goes first.
            for d in &plan.delete {
                let l = listing.iter().find(|l| l.key == d.key).unwrap();
                if matches!(d.why, Why::Interrupted | Why::Temporary) {
                    prop_assert!(l.modified.unwrap().0 <= now.0 - h.policy.grace, "{d:?}");
                }
                if d.why == Why::ExpiredPart {
                    let id = d.key.split('/').nth(1).unwrap();
                    let marker = catalog::backup_meta_key(id);
                    if let Some(mi) = plan.delete.iter().position(|x| x.key == marker) {
                        let pi = plan.delete.iter().position(|x| x.key == d.key).unwrap();
                        prop_assert!(mi < pi, "{marker} after {}", d.key);
                    }
                }
            }
            // History files are never deleted.
            prop_assert!(!gone.iter().any(|k| k.starts_with("history/")));
            // Idempotent.
            let again = plan_provider(&h.policy, now, SEG, &cat, &rest);
            prop_assert!(again.delete.is_empty(), "second run deletes {:?}", again.delete);
            // Lock targets: nothing deleted is locked; every object of a backup a calendar
            // tier keeps, and its own WAL, is locked at least until the tier's date.
            let targets: BTreeMap<&str, Timestamp> =
                plan.retain.iter().map(|r| (r.key.as_str(), r.until)).collect();
            prop_assert!(!plan.retain.iter().any(|r| gone.contains(r.key.as_str())));
            let listed: BTreeSet<&str> = listing.iter().map(|l| l.key.as_str()).collect();
            for k in &plan.kept {
                let Some(u) = k.keep_until else { continue };
                let b = cat.iter().find(|b| b.id == k.backup).unwrap();
                let spans = backup_wal(b, SEG);
                let prefix = catalog::backup_prefix(&b.id);
                for l in listing.iter().filter(|l| l.key.starts_with(&prefix)) {
                    prop_assert!(targets.get(l.key.as_str()).is_some_and(|t| *t >= u), "{} of {} not locked", l.key, b.id);
                }
                for l in &listing {
                    let Some(o) = catalog::parse_wal_key(&l.key, SEG) else { continue };
                    let own = spans
                        .iter()
                        .any(|(tli, s, e)| o.name.tli == *tli && (*s..=*e).contains(&o.segno.0));
                    // A part a listed `.seg` supersedes adds nothing: the `.seg` is locked.
                    let superseded = !o.complete
                        && listed.contains(catalog::segment_key(o.name).as_str());
                    if own && !superseded {
                        prop_assert!(targets.get(l.key.as_str()).is_some_and(|t| *t >= u), "WAL {} of {} not locked", l.key, b.id);
                    }
                }
            }
            let latest = plan.kept.iter().filter_map(|k| k.keep_until).max();
            prop_assert!(plan.retain.iter().all(|r| Some(r.until) <= latest));
        }
    }

    /// Cold moves: only parts of monthly-only backups with a long life left, never small
    /// objects, never twice.
    #[test]
    fn cold_moves_take_only_long_lived_monthly_parts() {
        let days = 3 * 365;
        let h = History {
            units: days * 4,
            backups: (0..days).map(|d| d * 4 + 1).collect(),
            switch: None,
            holes: vec![],
            interrupted: vec![],
            missing: vec![],
            temps: vec![],
            policy: Policy::strategy(),
            now_extra: 0,
            incr_mask: 0,
        };
        let (cat, listing) = build(&h);
        let now = now_of(&h);
        let plan = plan_provider(&h.policy, now, SEG, &cat, &listing);
        let cold = ColdPolicy {
            class: "DEEP_ARCHIVE".into(),
            min_days: 180,
            from: Tier::Monthly,
        };
        // The test's parts are small: with every part at least COLD_MIN_SIZE...
        let big: Vec<Listed> = listing
            .iter()
            .map(|l| Listed {
                size: l.size.max(COLD_MIN_SIZE),
                ..l.clone()
            })
            .collect();
        let moves = cold_moves(&plan, &big, &[], &cold, now);
        let ids: BTreeSet<&str> = moves.iter().map(|m| m.backup.as_str()).collect();
        for k in &plan.kept {
            let monthly_only = k.tiers == vec![Tier::Monthly];
            let long = k.keep_until.is_some_and(|u| u.0 - now.0 > 180 * DAY);
            assert_eq!(
                ids.contains(k.backup.as_str()),
                monthly_only && long,
                "{k:?}"
            );
        }
        assert!(ids.len() > 12, "{}", ids.len());
        assert!(moves
            .iter()
            .all(|m| !m.key.ends_with("/backup.json") && !m.key.ends_with("/backup_manifest")));
        // Already in the class: nothing to do.
        let mut classes: Vec<(String, String)> = moves
            .iter()
            .map(|m| (m.key.clone(), "DEEP_ARCHIVE".to_string()))
            .collect();
        classes.sort();
        assert!(cold_moves(&plan, &big, &classes, &cold, now).is_empty());
        // Weekly on: more backups go; small objects never.
        let weekly = ColdPolicy {
            from: Tier::Weekly,
            ..cold.clone()
        };
        assert!(cold_moves(&plan, &big, &[], &weekly, now).len() > moves.len());
        assert!(cold_moves(&plan, &listing, &[], &cold, now)
            .iter()
            .all(|m| m.size >= COLD_MIN_SIZE));
    }

    /// The strategy's policy over 7 simulated years of daily backups: what stays.
    #[test]
    fn seven_years_of_the_strategys_policy() {
        let days = 7 * 365;
        let h = History {
            units: days * 4,
            backups: (0..days).map(|d| d * 4).collect(),
            switch: None,
            holes: vec![],
            interrupted: vec![],
            missing: vec![],
            temps: vec![],
            policy: Policy::strategy(),
            now_extra: 0,
            incr_mask: 0,
        };
        let (cat, listing) = build(&h);
        let now = now_of(&h);
        let plan = plan_provider(&h.policy, now, SEG, &cat, &listing);
        assert!(plan.window_covered);
        let count = |tier: Tier| plan.kept.iter().filter(|k| k.tiers.contains(&tier)).count();
        // `now` is midnight, before the day's backup: backups end 30 minutes after
        // midnight, so the window (7 days back) holds 7 of them plus its anchor, and the
        // daily horizon (days whose start is less than 30 days back) 29 days.
        assert_eq!(count(Tier::Pitr), 8);
        assert_eq!(count(Tier::Daily), 29);
        assert_eq!(count(Tier::Weekly), 52);
        assert_eq!(count(Tier::Monthly), 84);
        assert_eq!(count(Tier::Newest), 2);
        // Kept points are the union of the tiers, far fewer than 2,555 backups.
        assert!(plan.kept.len() < 8 + 30 + 52 + 84, "{}", plan.kept.len());
        let rest = after(&listing, &plan);
        let again = plan_provider(&h.policy, now, SEG, &cat, &rest);
        assert!(again.delete.is_empty());
        // The oldest monthly is at most 84 months back, and its WAL span is kept.
        let oldest = plan.kept.iter().map(|k| k.end_time).min().unwrap();
        assert!(now.0 - oldest.0 <= 85 * 31 * DAY);
    }

    /// A standby that lagged was promoted: timeline 2 forked from timeline 1 at segment 10,
    /// and backup B was taken on timeline 1 after that point (during the lag), before the
    /// failover; C on timeline 2 after it. With the window's start between B and C, the
    /// anchor must be A (before the fork, on timeline 2's history), not B: recovering an
    /// instant of timeline 2 before C needs A, timeline 1 up to the fork and timeline 2
    /// from it.
    #[test]
    fn the_anchor_lies_on_the_current_timelines_history() {
        let h = History {
            units: 40,
            backups: vec![],
            switch: None,
            holes: vec![],
            interrupted: vec![],
            missing: vec![],
            temps: vec![],
            policy: Policy {
                pitr_days: 7,
                daily_days: 0,
                weekly_weeks: 0,
                monthly_months: 0,
                min_backups: 0,
                grace: DAY,
            },
            now_extra: 0,
            incr_mask: 0,
        };
        let day = |d: i64| Timestamp(T0 + d * DAY);
        let mk = |unit: u64, tli: u32, start_seg: u64, end_day: i64| {
            let mut m = meta(&h, unit);
            m.timeline = TimelineId(tli);
            m.end_timeline = TimelineId(tli);
            m.start_lsn = Lsn(start_seg * SEG.bytes() + 0x28);
            m.end_lsn = Lsn(start_seg * SEG.bytes() + 0x1000);
            m.end_time = day(end_day);
            m
        };
        let cat = vec![mk(1, 1, 2, 1), mk(2, 1, 15, 10), mk(3, 2, 25, 12)];
        let mut listing = Vec::new();
        let mut add = |key: String| {
            listing.push(Listed {
                key,
                size: 1,
                modified: Some(day(0)),
            })
        };
        for n in 1..=20u64 {
            add(catalog::segment_key(SegmentName::new(
                TimelineId(1),
                crate::core::wal::SegNo(n),
                SEG,
            )));
        }
        for n in 10..=30u64 {
            add(catalog::segment_key(SegmentName::new(
                TimelineId(2),
                crate::core::wal::SegNo(n),
                SEG,
            )));
        }
        add(catalog::history_key(
            TimelineId(2),
            TimelineId(1),
            Lsn(10 * SEG.bytes() + 0x100),
        ));
        for b in &cat {
            for p in b.parts.iter().chain([&b.manifest]) {
                add(p.key.clone());
            }
            add(catalog::backup_meta_key(&b.id));
        }
        listing.sort_by(|a, b| a.key.cmp(&b.key));
        let plan = plan_provider(&h.policy, day(18), SEG, &cat, &listing);
        assert_eq!(plan.anchor.as_deref(), Some(cat[0].id.as_str()), "{plan:?}");
        assert!(
            !plan
                .delete
                .iter()
                .any(|d| d.key.starts_with("wal/00000002/")),
            "{:?}",
            plan.delete
        );
        // Timeline 1 from A's start on stays too (it leads to the fork); only segment 1,
        // before A, goes.
        let wal: Vec<&str> = plan
            .delete
            .iter()
            .filter(|d| d.why == Why::Wal)
            .map(|d| d.key.as_str())
            .collect();
        assert_eq!(wal, vec!["wal/00000001/000000010000000000000001.seg"]);
    }

    #[test]
    fn backup_ids_tell_their_start() {
        assert_eq!(
            backup_id_time("20261124T083012Z").unwrap().rfc3339(),
            "2026-11-24T08:30:12Z"
        );
        assert_eq!(
            backup_id_time("20261124T083012Z-2").unwrap().rfc3339(),
            "2026-11-24T08:30:12Z"
        );
        assert_eq!(backup_id_time("x"), None);
        assert_eq!(week_of(day_of(Timestamp(T0))), day_of(Timestamp(T0)) - 3); // 2026-01-01 is a Thursday
        assert_eq!(
            at_day(add_months(day_of(Timestamp(T0)), 13)).rfc3339(),
            "2027-02-01T00:00:00Z"
        );
    }

    /// Dumps and exports by the strategy's tiers: a year of daily dumps keeps the window,
    /// the dailies, weeklies and monthlies; markers go before parts; a copy that never
    /// committed is swept after the grace period unless another provider has its marker.
    #[test]
    fn logical_copies_follow_the_tiers() {
        let policy = Policy::strategy();
        let now = Timestamp::parse_utc("2026-12-01T12:00:00Z").unwrap();
        let id = |days_ago: i64| {
            let t = Timestamp(now.0 - days_ago * DAY - 6 * 3_600_000_000);
            let secs = t.0 / 1_000_000;
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let r = secs.rem_euclid(86_400);
            format!(
                "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
                r / 3600,
                r / 60 % 60,
                r % 60
            )
        };
        let mut listing = Vec::new();
        for ago in 0..365 {
            let i = id(ago);
            listing.push(Listed {
                key: format!("dumps/{i}/db-0.dump.000000"),
                size: 100,
                modified: None,
            });
            listing.push(Listed {
                key: catalog::dump_meta_key(&i),
                size: 1,
                modified: None,
            });
        }
        // An export put twice today and once 40 days ago; a put that never committed.
        for ago in [0, 0, 40] {
            let i = if ago == 0
                && listing
                    .iter()
                    .any(|l| l.key.starts_with("exports/ghost/") && l.key.contains(&id(0)))
            {
                format!("{}-2", id(0))
            } else {
                id(ago)
            };
            listing.push(Listed {
                key: format!("exports/ghost/{i}/data.000000"),
                size: 7,
                modified: None,
            });
            listing.push(Listed {
                key: catalog::export_meta_key("ghost", &i),
                size: 1,
                modified: None,
            });
        }
        let stale = id(3);
        listing.push(Listed {
            key: format!("exports/site/{stale}/data.000000"),
            size: 5,
            modified: Some(Timestamp(now.0 - 3 * DAY)),
        });
        let elsewhere = id(4);
        listing.push(Listed {
            key: format!("exports/site/{elsewhere}/data.000000"),
            size: 5,
            modified: Some(Timestamp(now.0 - 4 * DAY)),
        });
        listing.sort_by(|a, b| a.key.cmp(&b.key));
        let committed: BTreeSet<String> = [catalog::export_meta_key("site", &elsewhere)].into();
        let (kept, delete) = plan_copies(&policy, now, &listing, &committed);
        let dumps: Vec<&KeptCopy> = kept.iter().filter(|k| k.set == "dumps").collect();
        // 7 days of window (8 calendar days touched), 30 dailies, weeklies for the year,
        // monthlies for the year: every daily of the last 30 days, then one a week.
        assert!(dumps
            .iter()
            .any(|k| k.id == id(0) && k.tiers.contains(&Tier::Pitr)));
        assert!(dumps
            .iter()
            .any(|k| k.id == id(29) && k.tiers.contains(&Tier::Daily)));
        assert!(!dumps
            .iter()
            .any(|k| k.id == id(31) && k.tiers == vec![Tier::Daily]));
        let older: Vec<&&KeptCopy> = dumps
            .iter()
            .filter(|k| backup_id_time(&k.id).unwrap().0 < now.0 - 40 * DAY)
            .collect();
        assert!(older.iter().all(|k| k
            .tiers
            .iter()
            .any(|t| matches!(t, Tier::Weekly | Tier::Monthly))));
        assert!(older.len() >= 40 && older.len() <= 60, "{}", older.len());
        // Every committed dump is either kept or deleted, marker before parts.
        for ago in 0..365 {
            let i = id(ago);
            let k = dumps.iter().any(|k| k.id == i);
            let m = delete
                .iter()
                .position(|d| d.key == catalog::dump_meta_key(&i));
            let p = delete
                .iter()
                .position(|d| d.key == format!("dumps/{i}/db-0.dump.000000"));
            assert_eq!(k, m.is_none(), "{i}");
            assert_eq!(m.is_some(), p.is_some(), "{i}");
            if let (Some(m), Some(p)) = (m, p) {
                assert!(m < p);
                assert_eq!(delete[m].why, Why::ExpiredCopy);
                assert_eq!(delete[p].why, Why::ExpiredCopyPart);
            }
        }
        // Exports: each name its own set; all three ghost puts kept (window + monthly).
        assert_eq!(kept.iter().filter(|k| k.set == "exports/ghost").count(), 3);
        // The put that never committed is swept; the one committed elsewhere is not.
        assert!(delete
            .iter()
            .any(|d| d.key == format!("exports/site/{stale}/data.000000")
                && d.why == Why::Interrupted));
        assert!(!delete.iter().any(|d| d.key.contains(&elsewhere)));
    }

    /// A SQLite history: a snapshot every `gap_h[i]` hours, a full one every `full_every`
    /// (the others deltas on the one before); its listing (marker and a part each, and one
    /// leftover of a snapshot that never committed) and points.
    fn sqlite_history(
        gaps_h: &[u32],
        full_every: usize,
        start: Timestamp,
    ) -> (Vec<SqlitePoint>, Vec<Listed>) {
        let mut points: Vec<SqlitePoint> = Vec::new();
        let mut listing = Vec::new();
        let mut t = start;
        for (i, g) in gaps_h.iter().enumerate() {
            t = Timestamp(t.0 + i64::from(*g) * 3600 * 1_000_000);
            let id = catalog::backup_id_from_rfc3339(
                &Timestamp::from_unix_secs(t.0 / 1_000_000).rfc3339(),
            );
            let base = (i % full_every != 0)
                .then(|| points.last().map(|p: &SqlitePoint| p.id.clone()))
                .flatten();
            points.push(SqlitePoint {
                name: "app".into(),
                id: id.clone(),
                time: t,
                base,
            });
            for key in [
                crate::core::sqlite::snapshot_meta_key("app", &id),
                format!("sqlite/app/{id}/pages.000000"),
            ] {
                listing.push(Listed {
                    key,
                    size: 10,
                    modified: None,
                });
            }
        }
        listing.push(Listed {
            key: "sqlite/app/drills/20200101T000000Z.json".into(),
            size: 1,
            modified: None,
        });
        listing.push(Listed {
            key: "sqlite/app/20200101T000000Z/pages.000000".into(),
            size: 3,
            modified: Some(start),
        });
        listing.sort_by(|a, b| a.key.cmp(&b.key));
        (points, listing)
    }

    /// The SQLite rules, checked on one history: whole chains, the window, the newest,
    /// deletion order, idempotence.
    fn check_sqlite_plan(
        policy: &Policy,
        now: Timestamp,
        points: &[SqlitePoint],
        listing: &[Listed],
    ) {
        let (kept, delete) = plan_sqlite(policy, now, listing, points);
        let is_kept = |id: &str| kept.iter().any(|k| k.id == id);
        // Object Lock: every object of a point with a keep-until date (a delta's bases
        // carry it), until that date; nothing of any other point; one group a snapshot.
        let (retain, groups) = sqlite_retain(listing, &kept);
        let prefix = |k: &KeptCopy| format!("{}/{}/", k.set, k.id);
        for k in &kept {
            for l in listing.iter().filter(|l| l.key.starts_with(&prefix(k))) {
                let r = retain.iter().find(|r| r.key == l.key);
                assert_eq!(r.map(|r| r.until), k.keep_until, "{}", l.key);
                if let Some(r) = r {
                    assert_eq!(format!("{}/", r.group), prefix(k));
                }
            }
        }
        assert!(retain
            .iter()
            .all(|r| kept.iter().any(|k| r.key.starts_with(&prefix(k)))));
        assert!(retain.windows(2).all(|w| w[0].key < w[1].key));
        let locked: BTreeSet<&str> = retain.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(
            groups
                .iter()
                .map(|g| g.group.as_str())
                .collect::<BTreeSet<_>>(),
            locked
        );
        let window_start = Timestamp(now.0 - i64::from(policy.pitr_days) * DAY);
        let pos = |key: &str| delete.iter().position(|d| d.key == key);
        for p in points {
            let marker = crate::core::sqlite::snapshot_meta_key("app", &p.id);
            if is_kept(&p.id) {
                // A kept point's whole chain is kept, and nothing of it is deleted.
                if let Some(b) = &p.base {
                    assert!(is_kept(b), "{} kept without its base {b}", p.id);
                }
                assert!(!delete.iter().any(|d| d.key.contains(&p.id)), "{}", p.id);
            } else {
                let (m, part) = (
                    pos(&marker).expect("marker"),
                    pos(&format!("sqlite/app/{}/pages.000000", p.id)).expect("part"),
                );
                assert!(m < part);
                // A delta goes before its base.
                if let Some(bm) = p
                    .base
                    .as_ref()
                    .and_then(|b| pos(&crate::core::sqlite::snapshot_meta_key("app", b)))
                {
                    assert!(m < bm, "{} deleted after its base", p.id);
                }
            }
            if p.time >= window_start {
                assert!(is_kept(&p.id), "{} in the window", p.id);
            }
        }
        if let Some(anchor) = points
            .iter()
            .filter(|p| p.time < window_start)
            .max_by_key(|p| p.time)
        {
            assert!(is_kept(&anchor.id), "the anchor {}", anchor.id);
        }
        for p in points.iter().rev().take(policy.min_backups as usize) {
            assert!(is_kept(&p.id));
        }
        assert!(!delete.iter().any(|d| d.key.contains("/drills/")));
        // Planning again after the deletions deletes nothing.
        let gone: BTreeSet<&str> = delete.iter().map(|d| d.key.as_str()).collect();
        let listing2: Vec<Listed> = listing
            .iter()
            .filter(|l| !gone.contains(l.key.as_str()))
            .cloned()
            .collect();
        let points2: Vec<SqlitePoint> = points.iter().filter(|p| is_kept(&p.id)).cloned().collect();
        let (kept2, delete2) = plan_sqlite(policy, now, &listing2, &points2);
        assert!(delete2.is_empty(), "{delete2:?}");
        assert_eq!(kept2.len(), kept.len());
    }

    #[test]
    fn sqlite_snapshots_keep_whole_chains_by_the_tiers() {
        // Hourly snapshots for 60 days, a full one every 24.
        let start = Timestamp(T0);
        let (points, listing) = sqlite_history(&[1; 24 * 60], 24, start);
        let now = Timestamp(points.last().unwrap().time.0 + 1);
        let policy = Policy::strategy();
        check_sqlite_plan(&policy, now, &points, &listing);
        let (kept, delete) = plan_sqlite(&policy, now, &listing, &points);
        // The window: 7 days of hourly snapshots, the anchor before it, and the chain of
        // the oldest of them back to its full snapshot (at most 23 deltas).
        let window = kept
            .iter()
            .filter(|k| k.tiers.contains(&Tier::Pitr))
            .count();
        assert!((7 * 24 + 1..=7 * 24 + 24).contains(&window), "{window}");
        // Before the window, the dailies (with their chains).
        let daily: Vec<&KeptCopy> = kept
            .iter()
            .filter(|k| k.tiers == vec![Tier::Daily])
            .collect();
        assert!(!daily.is_empty());
        assert!(kept.iter().all(|k| k.set == "sqlite/app"));
        // A daily delta's full base is locked until at least the daily's date.
        let (retain, _) = sqlite_retain(&listing, &kept);
        let d = daily[0];
        let base_full = &points
            .iter()
            .find(|p| p.id == d.id)
            .and_then(|p| {
                let mut cur = p;
                while let Some(b) = &cur.base {
                    cur = points.iter().find(|q| &q.id == b)?;
                }
                Some(cur.id.clone())
            })
            .expect("a chain ends at a full snapshot");
        let marker = crate::core::sqlite::snapshot_meta_key("app", base_full);
        let r = retain.iter().find(|r| r.key == marker).expect("locked");
        assert!(Some(r.until) >= d.keep_until, "{r:?} {d:?}");
        // The leftover of a snapshot that never committed goes; the drill stays.
        assert!(delete
            .iter()
            .any(|d| d.key == "sqlite/app/20200101T000000Z/pages.000000"
                && d.why == Why::Interrupted));
        // Days 31 to 60 keep only their weeklies and monthlies: most of their
        // snapshots go. (Each kept daily is the 00:00 delta, 23 deltas after its full:
        // its chain of 24 stays with it.)
        assert!(kept.len() < points.len(), "{}", kept.len());
        assert!(
            delete.iter().filter(|d| d.why == Why::ExpiredCopy).count() > 24 * 20,
            "{}",
            delete.len()
        );
    }

    proptest! {
        #[test]
        fn sqlite_plans_keep_the_rules(
            gaps in proptest::collection::vec(1u32..40, 1..200),
            full_every in 1usize..12,
            pitr in 0u32..10,
            daily in 0u32..20,
            weekly in 0u32..8,
            monthly in 0u32..6,
            min in 0u32..4,
            extra_h in 0i64..2000,
        ) {
            let policy = Policy { pitr_days: pitr, daily_days: daily, weekly_weeks: weekly, monthly_months: monthly, min_backups: min, grace: DAY };
            let (points, listing) = sqlite_history(&gaps, full_every, Timestamp(T0));
            let now = Timestamp(points.last().unwrap().time.0 + extra_h * 3600 * 1_000_000);
            check_sqlite_plan(&policy, now, &points, &listing);
        }
    }
}
