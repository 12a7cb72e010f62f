//! `lifeboat list`: the backups of the archive and the WAL coverage per timeline.

use super::{print_json, Ctx, Failure};
use crate::archive::summary::{self, ListReport};
use crate::archive::Archive;
use crate::core::fmt;

pub async fn run(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let archive = Archive::open(&ctx.cfg)?;
    let report = summary::run(&archive, Some(&ctx.cfg.retention)).await?;
    if ctx.json() {
        return print_json(&report);
    }
    print!("{}", render(&report));
    Ok(())
}

/// The human table.
pub fn render(r: &ListReport) -> String {
    let mut s = String::new();
    if r.backups.is_empty() {
        s.push_str("no backups\n");
    } else {
        s.push_str(&format!(
            "{:<20} {:>3} {:<12} {:<12} {:<20} {:>10} {:>10} {:<10} {:<32} {:<10} LABEL\n",
            "BACKUP",
            "TLI",
            "START LSN",
            "END LSN",
            "STARTED",
            "SIZE",
            "STORED",
            "RESTORABLE",
            "KEPT BY",
            "UNTIL"
        ));
        for b in &r.backups {
            let kept = crate::core::retention::tiers_text(&b.kept_by);
            s.push_str(&format!(
                "{:<20} {:>3} {:<12} {:<12} {:<20} {:>10} {:>10} {:<10} {:<32} {:<10} {}\n",
                b.id,
                b.timeline,
                b.start_lsn.to_string(),
                b.end_lsn.to_string(),
                b.start_time,
                fmt::size(b.plain_size),
                fmt::size(b.stored_size),
                match (b.restorable, &b.missing_parent) {
                    (true, _) => "yes",
                    (false, Some(_)) => "no (chain)",
                    (false, None) => "no (WAL)",
                },
                if kept.is_empty() && b.restorable {
                    "- (next prune)".to_string()
                } else if kept.is_empty() {
                    "-".to_string()
                } else {
                    kept
                },
                b.keep_until
                    .map_or_else(|| "-".to_string(), |t| t.rfc3339()[..10].to_string()),
                match &b.parent {
                    Some(p) => format!(
                        "{} (incremental on {p}, chain {})",
                        b.label,
                        b.chain_length.unwrap_or(0)
                    ),
                    None => b.label.clone(),
                }
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
    for g in &r.gaps {
        s.push_str(&format!(
            "  LOST   timeline {}: {} – {} (accepted {}: {})\n",
            g.timeline, g.from, g.to, g.accepted_at, g.reason
        ));
    }
    if !r.dumps.is_empty() {
        s.push_str(&format!(
            "{:<20} {:<20} {:>10} {:>10} {:<8} DATABASES\n",
            "DUMP", "STARTED", "SIZE", "STORED", "PG"
        ));
        for d in &r.dumps {
            s.push_str(&format!(
                "{:<20} {:<20} {:>10} {:>10} {:<8} {}{}\n",
                d.id,
                d.start_time
                    .get(..19)
                    .map_or(d.start_time.clone(), |t| format!("{t}Z")),
                fmt::size(d.plain_size),
                fmt::size(d.stored_size),
                d.pg_dump_version,
                d.databases.join(","),
                if d.globals { " +globals" } else { "" }
            ));
        }
    }
    if !r.exports.is_empty() {
        s.push_str(&format!(
            "{:<20} {:<20} {:<20} {:>10} {:>10} KIND\n",
            "EXPORT", "ID", "PUT", "SIZE", "STORED"
        ));
        for e in &r.exports {
            s.push_str(&format!(
                "{:<20} {:<20} {:<20} {:>10} {:>10} {}\n",
                e.name,
                e.id,
                e.start_time
                    .get(..19)
                    .map_or(e.start_time.clone(), |t| format!("{t}Z")),
                fmt::size(e.plain_size),
                fmt::size(e.stored_size),
                e.kind
            ));
        }
    }
    if !r.sqlite.is_empty() {
        // One line a database (`lifeboat sqlite list` shows every snapshot).
        s.push_str(&format!(
            "{:<20} {:>9} {:<20} {:<20} {:>10} {:>10}\n",
            "SQLITE", "SNAPSHOTS", "NEWEST", "AS OF", "SIZE", "STORED"
        ));
        let mut names: Vec<&str> = r.sqlite.iter().map(|x| x.name.as_str()).collect();
        names.dedup();
        for n in names {
            let of: Vec<_> = r.sqlite.iter().filter(|x| x.name == n).collect();
            let newest = of.last().expect("at least one");
            s.push_str(&format!(
                "{:<20} {:>9} {:<20} {:<20} {:>10} {:>10}\n",
                n,
                of.len(),
                newest.id,
                newest
                    .time
                    .get(..19)
                    .map_or(newest.time.clone(), |t| format!("{t}Z")),
                fmt::size(newest.page_count * u64::from(newest.page_size)),
                fmt::size(of.iter().map(|x| x.stored_size).sum()),
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
    if let Some(e) = &r.rto {
        s.push_str(&format!("restore now: {}\n", e.describe()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::summary::{BackupSummary, DrillSummary};
    use crate::core::catalog::WalRange;
    use crate::core::wal::Lsn;

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
                kept_by: vec![
                    crate::core::retention::Tier::Daily,
                    crate::core::retention::Tier::Monthly,
                ],
                keep_until: Some(crate::core::plan::Timestamp(1_790_812_800_000_000)),
                parent: None,
                chain_length: None,
                missing_parent: None,
            }],
            wal: vec![WalRange {
                timeline: 1,
                start_lsn: Lsn(0x100_0000),
                end_lsn: Lsn(0x600_0000),
            }],
            gaps: vec![crate::core::catalog::AcceptedGap {
                format: 1,
                timeline: crate::core::wal::TimelineId(1),
                from: Lsn(0x600_0000),
                to: Lsn(0x900_0000),
                accepted_at: crate::core::plan::Timestamp(1_764_000_000_000_000),
                slot: Some("lifeboat".into()),
                reason: "the server removed this WAL before it was archived".into(),
            }],
            last_drill: Some(DrillSummary {
                id: "20261124T093000Z".into(),
                ok: true,
                backup: Some("20261124T083012Z".into()),
                target: None,
                total_seconds: 12.34,
            }),
            dumps: vec![],
            exports: vec![],
            rates: crate::core::rto::rates(&[]),
            rto: None,
            sqlite: vec![],
        };
        let mut r = r;
        r.rto = r.rto_at(None);
        assert_eq!(
            render(&r),
            "BACKUP               TLI START LSN    END LSN      STARTED                    SIZE     STORED RESTORABLE KEPT BY                          UNTIL      LABEL\n\
             20261124T083012Z       1 0/5000028    0/5000138    2026-11-24T08:30:12Z   24.0 MiB    3.0 MiB yes        daily,monthly                    2026-10-01 nightly\n\
             WAL:\n  timeline 1: 0/1000000 – 0/6000000\n\
             \x20 LOST   timeline 1: 0/6000000 – 0/9000000 (accepted 2025-11-24 16:00:00+00: the server removed this WAL before it was archived)\n\
             last drill: 20261124T093000Z passed (backup 20261124T083012Z, 12.3 s)\n\
             restore now: about 11 s: restore 24.0 MiB (20261124T083012Z) at 50 MiB/s (default) + replay 16.0 MiB of WAL at 16 MiB/s (default) + 10s to start\n"
        );
        let empty = ListReport {
            backups: vec![],
            wal: vec![],
            gaps: vec![],
            last_drill: None,
            dumps: vec![],
            exports: vec![],
            rates: crate::core::rto::rates(&[]),
            rto: None,
            sqlite: vec![],
        };
        assert_eq!(
            render(&empty),
            "no backups\nno WAL archived\nno restore drill recorded\n"
        );
    }

    #[test]
    fn dumps_and_exports() {
        use crate::archive::summary::{DumpSummary, ExportSummary};
        let r = ListReport {
            backups: vec![],
            wal: vec![],
            gaps: vec![],
            last_drill: None,
            dumps: vec![DumpSummary {
                id: "20261124T020000Z".into(),
                start_time: "2026-11-24T02:00:00.412345Z".into(),
                end_time: "2026-11-24T02:03:10Z".into(),
                pg_version: 170002,
                pg_dump_version: "17.2".into(),
                databases: vec!["app".into(), "postgres".into()],
                globals: true,
                plain_size: 1 << 30,
                stored_size: 150 << 20,
            }],
            exports: vec![ExportSummary {
                name: "ghost".into(),
                id: "20261124T030000Z".into(),
                kind: "tar".into(),
                start_time: "2026-11-24T03:00:00Z".into(),
                plain_size: 2 << 20,
                stored_size: 1 << 20,
            }],
            rates: crate::core::rto::rates(&[]),
            rto: None,
            sqlite: vec![],
        };
        assert_eq!(
            render(&r),
            "no backups\nno WAL archived\n\
             DUMP                 STARTED                    SIZE     STORED PG       DATABASES\n\
             20261124T020000Z     2026-11-24T02:00:00Z    1.0 GiB  150.0 MiB 17.2     app,postgres +globals\n\
             EXPORT               ID                   PUT                        SIZE     STORED KIND\n\
             ghost                20261124T030000Z     2026-11-24T03:00:00Z    2.0 MiB    1.0 MiB tar\n\
             no restore drill recorded\n"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(fmt::size(10), "10 B");
        assert_eq!(fmt::size(3 << 20), "3.0 MiB");
    }
}
