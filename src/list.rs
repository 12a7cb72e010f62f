//! `lifeboat list`: the backups of the archive (those whose `backup.json` exists) and the
//! WAL coverage per timeline, from the first provider's listing.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::archive::Archive;
use crate::catalog::{self, BackupMeta, WalRange};
use crate::wal::{Lsn, WalSegSize};

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
}

#[derive(Debug, Serialize)]
pub struct ListReport {
    pub backups: Vec<BackupSummary>,
    pub wal: Vec<WalRange>,
    /// The most recent restore drill recorded in the archive.
    pub last_drill: Option<DrillSummary>,
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
    pub fn new(m: &BackupMeta, wal: &[WalRange]) -> BackupSummary {
        BackupSummary {
            id: m.id.clone(),
            label: m.label.clone(),
            timeline: m.timeline,
            start_lsn: m.start_lsn,
            end_lsn: m.end_lsn,
            start_time: m.start_time.clone(),
            end_time: m.end_time.clone(),
            restorable: catalog::wal_covers(
                wal,
                m.timeline,
                m.start_lsn,
                m.end_timeline,
                m.end_lsn,
            ),
            plain_size: m.plain_size,
            stored_size: m.stored_size,
            pg_version: m.pg_version,
        }
    }
}

/// Every committed backup's metadata, oldest first: the union over the providers (a
/// backup counts when any provider holds its backup.json), so a lost or unreachable
/// provider does not hide backups the others hold.
pub async fn backups(archive: &Archive) -> Result<Vec<BackupMeta>> {
    let mut found: std::collections::BTreeMap<String, BackupMeta> = Default::default();
    let mut errors = Vec::new();
    let mut answered = 0;
    for p in &archive.mirror.providers {
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

pub async fn run(archive: &Archive) -> Result<ListReport> {
    let Some(meta) = archive.meta().await? else {
        return Ok(ListReport {
            backups: Vec::new(),
            wal: Vec::new(),
            last_drill: None,
        });
    };
    let seg =
        WalSegSize::new(meta.wal_segment_size).map_err(|e| anyhow::anyhow!("archive.json: {e}"))?;
    let first = archive
        .mirror
        .providers
        .first()
        .expect("an archive has at least one provider");
    let wal = archive.inventory(first.as_ref(), seg).await?.ranges(seg);
    let backups = backups(archive)
        .await?
        .iter()
        .map(|m| BackupSummary::new(m, &wal))
        .collect();
    let last_drill = crate::drill::drills(archive)
        .await?
        .pop()
        .map(|d| DrillSummary {
            id: d.id,
            ok: d.ok,
            backup: d.backup,
            target: d.recovery_target,
            total_seconds: d.phases.total,
        });
    Ok(ListReport {
        backups,
        wal,
        last_drill,
    })
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human table.
pub fn render(r: &ListReport) -> String {
    let mut s = String::new();
    if r.backups.is_empty() {
        s.push_str("no backups\n");
    } else {
        s.push_str(&format!(
            "{:<20} {:>3} {:<12} {:<12} {:<20} {:>10} {:>10} {:<10} LABEL\n",
            "BACKUP", "TLI", "START LSN", "END LSN", "STARTED", "SIZE", "STORED", "RESTORABLE"
        ));
        for b in &r.backups {
            s.push_str(&format!(
                "{:<20} {:>3} {:<12} {:<12} {:<20} {:>10} {:>10} {:<10} {}\n",
                b.id,
                b.timeline,
                b.start_lsn.to_string(),
                b.end_lsn.to_string(),
                b.start_time,
                human_size(b.plain_size),
                human_size(b.stored_size),
                if b.restorable { "yes" } else { "no (WAL)" },
                b.label
            ));
        }
    }
    if r.wal.is_empty() {
        s.push_str("no WAL archived\n");
    } else {
        s.push_str("WAL:\n");
        for w in &r.wal {
            s.push_str(&format!(
                "  timeline {}: {} – {}\n",
                w.timeline, w.start_lsn, w.end_lsn
            ));
        }
    }
    match &r.last_drill {
        None => s.push_str("no restore drill recorded\n"),
        Some(d) => s.push_str(&format!(
            "last drill: {} {} (backup {}, {:.1} s)\n",
            d.id,
            if d.ok { "passed" } else { "FAILED" },
            d.backup.as_deref().unwrap_or("-"),
            d.total_seconds
        )),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let r = ListReport {
            backups: vec![BackupSummary {
                id: "20261124T083012Z".into(),
                label: "nightly".into(),
                timeline: 1,
                start_lsn: Lsn(0x500_0028),
                end_lsn: Lsn(0x500_0138),
                start_time: "2026-11-24T08:30:12Z".into(),
                end_time: "2026-11-24T08:31:40Z".into(),
                restorable: true,
                plain_size: 24 << 20,
                stored_size: 3 << 20,
                pg_version: 170002,
            }],
            wal: vec![WalRange {
                timeline: 1,
                start_lsn: Lsn(0x100_0000),
                end_lsn: Lsn(0x600_0000),
            }],
            last_drill: Some(DrillSummary {
                id: "20261124T093000Z".into(),
                ok: true,
                backup: Some("20261124T083012Z".into()),
                target: None,
                total_seconds: 12.34,
            }),
        };
        assert_eq!(
            render(&r),
            "BACKUP               TLI START LSN    END LSN      STARTED                    SIZE     STORED RESTORABLE LABEL\n\
             20261124T083012Z       1 0/5000028    0/5000138    2026-11-24T08:30:12Z   24.0 MiB    3.0 MiB yes        nightly\n\
             WAL:\n  timeline 1: 0/1000000 – 0/6000000\n\
             last drill: 20261124T093000Z passed (backup 20261124T083012Z, 12.3 s)\n"
        );
        let empty = ListReport {
            backups: vec![],
            wal: vec![],
            last_drill: None,
        };
        assert_eq!(
            render(&empty),
            "no backups\nno WAL archived\nno restore drill recorded\n"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
