//! The SQLite sibling mode's pure parts: the repository layout of snapshots, their record
//! (`snapshot.json`), the full-or-delta decision, the page runs a delta stores, and the
//! choice of a snapshot and its delta chain for a restore target.
//!
//! Layout (docs/FORMAT.md):
//!
//! ```text
//! sqlite/<NAME>/<ID>/pages.<SEQ>       the page images of the snapshot's runs, in page order, sealed
//! sqlite/<NAME>/<ID>/snapshot.json     the record (plain JSON), written last: the commit marker
//! ```
//!
//! Invariants: a delta names its `base` (the snapshot it applies on) and its `full` (the
//! chain's full snapshot); applying the full and each delta in order, then cutting the file
//! to `page_count` pages, gives the database image of the newest one, whose `group_hashes`
//! say so.

use serde::{Deserialize, Serialize};

use super::catalog::{is_backup_id, is_export_name, BackupPart};
use super::plan::Timestamp;

pub const SQLITE_PREFIX: &str = "sqlite/";
pub const SNAPSHOT_META_FILE: &str = "snapshot.json";
/// The stream name of a snapshot's page images.
pub const PAGES_STREAM: &str = "pages";
/// Pages per hash group in `group_hashes`.
pub const GROUP_PAGES: u64 = 256;

/// Bytes a probe hash covers: BLAKE3 hashes 16 KiB at full SIMD width (5 GB/s on this
/// project's 2-core machine, against 2.3 GB/s for a 4 KiB page and 1.4 GB/s for SHA-256).
const PROBE_BYTES: u32 = 16 << 10;

/// Pages a probe covers: the local page state keeps one BLAKE3 hash per this many pages
/// beside every page's SHA-256, so a delta hashes a block with SHA-256 only when its probe
/// changed.
pub fn probe_pages(page_size: u32) -> u32 {
    (PROBE_BYTES / page_size.max(1)).max(1)
}

/// Database names follow export names: 1 to 64 of `A-Z a-z 0-9 . _ -`, no leading dot.
pub fn is_db_name(name: &str) -> bool {
    is_export_name(name)
}

/// `sqlite/<NAME>/`.
pub fn db_prefix(name: &str) -> String {
    format!("{SQLITE_PREFIX}{name}/")
}

/// `sqlite/<NAME>/drills/`.
pub fn drill_prefix(name: &str) -> String {
    format!("{SQLITE_PREFIX}{name}/drills/")
}

/// `sqlite/<NAME>/drills/<ID>.json`.
pub fn drill_key(name: &str, id: &str) -> String {
    format!("{}{id}.json", drill_prefix(name))
}

/// `sqlite/<NAME>/drills/<ID>.json`: one SQLite restore drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SqliteDrillReport {
    pub format: u32,
    pub name: String,
    /// The drill's own id (its start, `YYYYMMDDTHHMMSSZ`).
    pub id: String,
    pub snapshot: String,
    pub snapshot_time: Timestamp,
    pub start_time: Timestamp,
    /// Seconds: fetching and applying the chain, checking it.
    pub restore_secs: f64,
    pub checks_secs: f64,
    pub total_secs: f64,
    pub integrity_check: String,
    /// Each check statement and its outcome (`true`, or what went wrong).
    pub checks: Vec<(String, String)>,
    pub ok: bool,
    pub error: Option<String>,
}

/// `sqlite/<NAME>/<ID>/`.
pub fn snapshot_prefix(name: &str, id: &str) -> String {
    format!("{SQLITE_PREFIX}{name}/{id}/")
}

pub fn snapshot_meta_key(name: &str, id: &str) -> String {
    format!("{}{SNAPSHOT_META_FILE}", snapshot_prefix(name, id))
}

/// (name, id) of a `sqlite/<NAME>/<ID>/snapshot.json` key.
pub fn parse_snapshot_meta_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(SQLITE_PREFIX)?;
    let mut it = rest.split('/');
    let (name, id, file) = (it.next()?, it.next()?, it.next()?);
    (it.next().is_none() && file == SNAPSHOT_META_FILE && is_db_name(name) && is_backup_id(id))
        .then_some((name, id))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Full,
    Delta,
}

/// `sqlite/<NAME>/<ID>/snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub format: u32,
    pub name: String,
    pub id: String,
    pub kind: SnapshotKind,
    /// The snapshot a delta applies on (`None` for a full one).
    pub base: Option<String>,
    /// The chain's full snapshot (its own id for a full one).
    pub full: String,
    /// Deltas since the full snapshot, this one included (0 for a full one).
    pub chain_len: u32,
    /// Pages stored by the chain since the full snapshot, this one included (the full
    /// snapshot's pages not counted).
    pub chain_pages: u64,
    /// The database's path on the host it was taken on.
    pub path: String,
    /// The point in time of the image: just after its read transaction began. Every
    /// commit before it is in the image, none after it.
    pub time: Timestamp,
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub page_size: u32,
    pub page_count: u64,
    /// The header's file change counter (offset 24).
    pub change_counter: u32,
    /// `PRAGMA quick_check` in the same read transaction: `ok`; for a delta whose chain
    /// passed one recently (`quick_check_every`), why it was not run.
    pub quick_check: String,
    /// (first page, count) of the pages stored, ascending and disjoint (pages number from 1).
    pub runs: Vec<(u64, u64)>,
    /// SHA-256 over the page hashes (each SHA-256 of one page) of every group of
    /// [`GROUP_PAGES`] pages of the whole image, hex: a restore checks every page.
    pub group_hashes: Vec<String>,
    pub plain_size: u64,
    pub stored_size: u64,
    pub parts: Vec<BackupPart>,
    pub created_by: String,
}

impl SnapshotMeta {
    pub fn pages_stored(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

/// The delta settings of one database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaPolicy {
    /// A full snapshot after this many deltas.
    pub full_every: u32,
    /// A full snapshot once the chain's deltas hold more than this fraction of the database.
    pub max_chain_fraction: f64,
}

/// What the previous snapshot left on this host: which snapshot the local page hashes
/// describe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    pub id: String,
    pub page_size: u32,
    pub page_count: u64,
    /// Pages per probe hash ([`probe_pages`]); 0 in a state file of an older lifeboat
    /// (page hashes only), which no delta uses.
    #[serde(default)]
    pub probe_pages: u32,
}

/// Full or delta, and why: a delta only on top of the archive's newest snapshot of the
/// database, when the local page hashes describe exactly that snapshot and the chain is
/// still short and small.
pub fn decide(
    newest: Option<&SnapshotMeta>,
    local: Option<&LocalState>,
    page_size: u32,
    policy: &DeltaPolicy,
    force_full: bool,
) -> (SnapshotKind, &'static str) {
    let Some(n) = newest else {
        return (SnapshotKind::Full, "the first snapshot");
    };
    if force_full {
        return (SnapshotKind::Full, "--full");
    }
    let Some(l) = local else {
        return (SnapshotKind::Full, "no page hashes on this host");
    };
    if l.id != n.id || l.page_count != n.page_count || l.page_size != n.page_size {
        return (
            SnapshotKind::Full,
            "the page hashes on this host are not of the newest snapshot",
        );
    }
    if n.page_size != page_size {
        return (SnapshotKind::Full, "the page size changed");
    }
    if l.probe_pages != probe_pages(page_size) {
        return (
            SnapshotKind::Full,
            "the page hashes on this host are of an older lifeboat",
        );
    }
    if n.chain_len + 1 > policy.full_every {
        return (SnapshotKind::Full, "full_every deltas reached");
    }
    if n.chain_pages as f64 > policy.max_chain_fraction * n.page_count.max(1) as f64 {
        return (
            SnapshotKind::Full,
            "the chain's deltas passed max_delta_fraction of the database",
        );
    }
    (
        SnapshotKind::Delta,
        "pages changed since the newest snapshot",
    )
}

/// For a delta on top of `newest`: the newest snapshot of its chain that passed
/// `quick_check`, when it was taken less than `every` before `now` (then the delta need not
/// run it again). `None`: the delta runs it (`every` zero always does).
pub fn recent_check<'a>(
    all: &'a [SnapshotMeta],
    newest: &'a SnapshotMeta,
    now: Timestamp,
    every: std::time::Duration,
) -> Option<&'a SnapshotMeta> {
    let mut cur = newest;
    loop {
        if cur.quick_check == "ok" {
            let age = now.0.saturating_sub(cur.time.0);
            return (age >= 0 && (age as u128) < every.as_micros()).then_some(cur);
        }
        let base = cur.base.as_deref()?;
        cur = all.iter().find(|s| s.id == base)?;
    }
}

/// Adds page `pgno` to ascending runs.
pub fn push_run(runs: &mut Vec<(u64, u64)>, pgno: u64) {
    if let Some(last) = runs.last_mut() {
        if last.0 + last.1 == pgno {
            last.1 += 1;
            return;
        }
    }
    runs.push((pgno, 1));
}

/// The snapshot to restore: the newest of `name` at or before `at` (the newest without),
/// or the one with `id`; and its chain, full snapshot first.
pub fn choose_chain<'a>(
    all: &'a [SnapshotMeta],
    name: &str,
    at: Option<Timestamp>,
    id: Option<&str>,
) -> Result<Vec<&'a SnapshotMeta>, String> {
    let mine: Vec<&SnapshotMeta> = all.iter().filter(|s| s.name == name).collect();
    let Some(oldest) = mine.iter().min_by_key(|s| (s.time, &s.id)) else {
        return Err(format!("the archive holds no snapshot of sqlite database \"{name}\"\nhint: `lifeboat sqlite list` shows the snapshots; `lifeboat sqlite snapshot {name}` takes one"));
    };
    let chosen = match (id, at) {
        (Some(id), _) => mine.iter().find(|s| s.id == id).copied().ok_or_else(|| {
            format!("sqlite database \"{name}\" has no snapshot {id}\nhint: `lifeboat sqlite list` shows the snapshots")
        })?,
        (None, at) => mine
            .iter()
            .filter(|s| at.map_or(true, |t| s.time <= t))
            .max_by_key(|s| (s.time, &s.id))
            .copied()
            .ok_or_else(|| {
                format!(
                    "sqlite database \"{name}\" has no snapshot from {} or before (the oldest is from {})\nhint: `lifeboat sqlite list` shows the snapshots",
                    at.expect("no target means the newest, which exists"),
                    oldest.time
                )
            })?,
    };
    let mut chain = vec![chosen];
    let mut cur = chosen;
    while let Some(base) = &cur.base {
        let b = mine.iter().find(|s| &s.id == base).copied().ok_or_else(|| {
            format!(
                "snapshot {} of \"{name}\" is a delta on {base}, which no provider holds\nhint: restore an older snapshot (`lifeboat sqlite list`), or `lifeboat verify`",
                cur.id
            )
        })?;
        if chain.len() > 100_000 || b.time > cur.time {
            return Err(format!(
                "the delta chain of snapshot {} of \"{name}\" is malformed",
                chosen.id
            ));
        }
        chain.push(b);
        cur = b;
    }
    if cur.kind != SnapshotKind::Full {
        return Err(format!(
            "snapshot {} of \"{name}\" has no full snapshot at the start of its chain",
            chosen.id
        ));
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(
        id: &str,
        t: i64,
        base: Option<&str>,
        chain_len: u32,
        chain_pages: u64,
    ) -> SnapshotMeta {
        SnapshotMeta {
            format: 1,
            name: "app".into(),
            id: id.into(),
            kind: if base.is_some() {
                SnapshotKind::Delta
            } else {
                SnapshotKind::Full
            },
            base: base.map(Into::into),
            full: "F".into(),
            chain_len,
            chain_pages,
            path: "/x".into(),
            time: Timestamp::from_unix_secs(t),
            start_time: Timestamp::from_unix_secs(t),
            end_time: Timestamp::from_unix_secs(t),
            page_size: 4096,
            page_count: 100,
            change_counter: 1,
            quick_check: "ok".into(),
            runs: vec![],
            group_hashes: vec![],
            plain_size: 0,
            stored_size: 0,
            parts: vec![],
            created_by: String::new(),
        }
    }

    #[test]
    fn keys() {
        let k = snapshot_meta_key("app", "20261124T083012Z");
        assert_eq!(k, "sqlite/app/20261124T083012Z/snapshot.json");
        assert_eq!(
            parse_snapshot_meta_key(&k),
            Some(("app", "20261124T083012Z"))
        );
        assert_eq!(
            parse_snapshot_meta_key("sqlite/app/20261124T083012Z/pages.000000"),
            None
        );
    }

    #[test]
    fn runs_merge_adjacent_pages() {
        let mut r = vec![];
        for p in [1, 2, 3, 7, 9, 10] {
            push_run(&mut r, p);
        }
        assert_eq!(r, vec![(1, 3), (7, 1), (9, 2)]);
    }

    #[test]
    fn decide_full_or_delta() {
        let p = DeltaPolicy {
            full_every: 2,
            max_chain_fraction: 0.5,
        };
        let l = LocalState {
            id: "B".into(),
            page_size: 4096,
            page_count: 100,
            probe_pages: 4,
        };
        assert_eq!(
            decide(None, Some(&l), 4096, &p, false).0,
            SnapshotKind::Full
        );
        let n = snap("B", 1, None, 0, 0);
        assert_eq!(
            decide(Some(&n), Some(&l), 4096, &p, false).0,
            SnapshotKind::Delta
        );
        assert_eq!(
            decide(Some(&n), Some(&l), 4096, &p, true).0,
            SnapshotKind::Full
        );
        assert_eq!(
            decide(Some(&n), None, 4096, &p, false).0,
            SnapshotKind::Full
        );
        assert_eq!(
            decide(Some(&n), Some(&l), 8192, &p, false).0,
            SnapshotKind::Full
        );
        let other = LocalState {
            id: "A".into(),
            ..l.clone()
        };
        assert_eq!(
            decide(Some(&n), Some(&other), 4096, &p, false).0,
            SnapshotKind::Full
        );
        let older = LocalState {
            probe_pages: 0,
            ..l.clone()
        };
        assert_eq!(
            decide(Some(&n), Some(&older), 4096, &p, false),
            (
                SnapshotKind::Full,
                "the page hashes on this host are of an older lifeboat"
            )
        );
        let n2 = snap("B", 1, Some("A"), 2, 10);
        assert_eq!(
            decide(Some(&n2), Some(&l), 4096, &p, false).0,
            SnapshotKind::Full
        );
        let n3 = snap("B", 1, Some("A"), 1, 51);
        assert_eq!(
            decide(Some(&n3), Some(&l), 4096, &p, false).0,
            SnapshotKind::Full
        );
        let n4 = snap("B", 1, Some("A"), 1, 50);
        assert_eq!(
            decide(Some(&n4), Some(&l), 4096, &p, false).0,
            SnapshotKind::Delta
        );
    }

    #[test]
    fn a_delta_checks_again_once_its_chains_last_check_is_old() {
        let hour = std::time::Duration::from_secs(3600);
        let mut a = snap("A", 10, None, 0, 0);
        let mut b = snap("B", 20, Some("A"), 1, 1);
        b.quick_check = "not run".into();
        let all = vec![a.clone(), b.clone()];
        let at = |secs: i64| Timestamp(secs * 1_000_000);
        // B skipped its check; A (the full) passed one 10 s before B.
        assert_eq!(
            recent_check(&all, &b, at(30), hour).map(|s| &s.id[..]),
            Some("A")
        );
        assert_eq!(recent_check(&all, &b, at(10 + 3600), hour), None);
        assert_eq!(
            recent_check(&all, &b, at(30), std::time::Duration::ZERO),
            None
        );
        // A clock that went backwards checks again; so does a chain with no check at all.
        assert_eq!(recent_check(&all, &b, at(5), hour), None);
        a.quick_check = "not run".into();
        assert_eq!(recent_check(&[a, b.clone()], &b, at(30), hour), None);
    }

    #[test]
    fn chains_and_targets() {
        let all = vec![
            snap("A", 10, None, 0, 0),
            snap("B", 20, Some("A"), 1, 1),
            snap("C", 30, Some("B"), 2, 2),
            snap("D", 40, None, 0, 0),
        ];
        let ids = |c: Vec<&SnapshotMeta>| c.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(choose_chain(&all, "app", None, None).unwrap()), ["D"]);
        let at = Some(Timestamp::from_unix_secs(35));
        assert_eq!(
            ids(choose_chain(&all, "app", at, None).unwrap()),
            ["A", "B", "C"]
        );
        assert_eq!(
            ids(choose_chain(&all, "app", None, Some("B")).unwrap()),
            ["A", "B"]
        );
        let e = choose_chain(&all, "app", Some(Timestamp::from_unix_secs(5)), None).unwrap_err();
        assert!(
            e.starts_with("sqlite database \"app\" has no snapshot from 1970-01-01 00:00:05"),
            "{e}"
        );
        assert!(choose_chain(&all, "other", None, None).is_err());
        let broken = vec![snap("B", 20, Some("A"), 1, 1)];
        assert!(choose_chain(&broken, "app", None, None)
            .unwrap_err()
            .contains("which no provider holds"));
    }
}
