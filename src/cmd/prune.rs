//! `lifeboat prune`: apply the `[retention]` policy. Prints the plan per provider (kept
//! recovery points with their tier and keep-until date, what goes, bytes freed) and acts on
//! it unless `--dry-run`.

use super::{print_json, Ctx, Failure};
use crate::archive::prune::{self, PruneReport};
use crate::archive::Archive;
use crate::core::fmt;
use crate::core::plan::{self, ParsedTime, Timestamp};
use crate::core::retention::{tiers_text, Why};

#[derive(clap::Args)]
pub struct Args {
    /// Print the plan; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Say why one backup is kept or deleted, on each provider.
    #[arg(long, value_name = "BACKUP_ID")]
    explain: Option<String>,
    /// Plan as if it were TIME (a preview of a later run, or a test's clock); with a zone.
    #[arg(long, value_name = "TIME", hide = true)]
    now: Option<String>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let now = match &a.now {
        None => Timestamp::from_system_time(std::time::SystemTime::now()),
        Some(s) => match plan::parse_time(s) {
            Ok(ParsedTime::Zoned(t)) => t,
            Ok(ParsedTime::Naive(_)) => {
                return Err(super::usage(format!(
                "--now {s}: give the time with its zone\nhint: e.g. --now '2026-12-24 00:00:00+00'"
            )))
            }
            Err(e) => return Err(super::usage(format!("--now: {e}"))),
        },
    };
    let r = &ctx.cfg.retention;
    if r.pitr_days == 0
        && r.daily_days == 0
        && r.weekly_weeks == 0
        && r.monthly_months == 0
        && r.min_backups == 0
    {
        return Err(super::usage(format!(
            "{}: [retention] keeps no recovery point: pitr_days, daily_days, weekly_weeks, monthly_months and min_backups are all 0\nhint: keep at least min_backups = 1 (the default policy: pitr_days = 7, daily_days = 30, weekly_weeks = 52, monthly_months = 84, min_backups = 2)",
            ctx.cfg_path.display()
        )));
    }
    let archive = Archive::open(&ctx.cfg)?;
    let policy = prune::policy(&ctx.cfg.retention);
    let cold = prune::cold_policies(&ctx.cfg.storage);
    let mut report = prune::plan(&archive, &policy, &cold, now).await?;
    if !a.dry_run && a.explain.is_none() {
        prune::apply(&archive, &mut report).await?;
    }
    if ctx.json() {
        print_json(&report)?;
    } else if let Some(id) = &a.explain {
        print!("{}", explain(&report, id));
    } else {
        print!("{}", render(&report));
    }
    if let Some(p) = report.providers.iter().find(|p| p.denied.is_some()) {
        return Err(super::failed(format!(
            "storage \"{}\": these credentials may not delete ({}), so prune did nothing there\nhint: prune runs on a vault or restore host whose [[storage]] credentials may delete objects and their versions and extend retention (docs/IAM.md); the database host keeps write-only credentials",
            p.provider,
            p.denied.as_deref().unwrap_or_default()
        )));
    }
    let refused: usize = report.providers.iter().map(|p| p.refused.len()).sum();
    let down = report
        .providers
        .iter()
        .filter(|p| p.error.is_some())
        .count();
    if refused > 0 || down > 0 {
        return Err(super::failed(format!(
            "prune: {refused} deletions refused, {down} providers not planned\nhint: a refused deletion is an object lock or credentials without delete rights (prune runs with a vault host's config); an unplanned provider could not be listed"
        )));
    }
    Ok(())
}

fn until(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| t.rfc3339()[..10].to_string())
}

pub fn render(r: &PruneReport) -> String {
    let mut s = String::new();
    for p in &r.providers {
        s.push_str(&format!(
            "storage \"{}\": {} objects listed\n",
            p.provider, p.listed
        ));
        if let Some(e) = &p.error {
            s.push_str(&format!("  not planned: {e}\n"));
            continue;
        }
        let Some(plan) = &p.plan else { continue };
        match &plan.anchor {
            Some(a) => s.push_str(&format!(
                "  PITR window from {}: anchor {a}{}\n",
                plan.window_start,
                if plan.window_covered {
                    ""
                } else {
                    " (the oldest backup: the window is not covered yet)"
                }
            )),
            None => {
                s.push_str("  no restorable backup on this provider: only leftovers are pruned\n")
            }
        }
        for k in &plan.kept {
            s.push_str(&format!(
                "  keep   {:<20} {:<28} until {}\n",
                k.backup,
                tiers_text(&k.tiers),
                until(k.keep_until)
            ));
        }
        for u in &plan.unrestorable {
            s.push_str(&format!(
                "  note   {u} is not restorable from this provider (a part or its WAL is missing)\n"
            ));
        }
        let count = |w: Why| plan.delete.iter().filter(|d| d.why == w).count();
        s.push_str(&format!(
            "  delete {} backups ({} objects), {} WAL objects, {} superseded parts, {} leftovers: {}\n",
            count(Why::ExpiredBackup),
            count(Why::ExpiredBackup) + count(Why::ExpiredPart),
            count(Why::Wal),
            count(Why::Superseded),
            count(Why::Interrupted) + count(Why::Temporary),
            fmt::size(plan.freed)
        ));
        if !plan.copies.is_empty() || count(Why::ExpiredCopy) > 0 {
            for k in &plan.copies {
                s.push_str(&format!(
                    "  keep   {:<20} {:<28} until {}\n",
                    format!("{}/{}", k.set, k.id),
                    tiers_text(&k.tiers),
                    until(k.keep_until)
                ));
            }
            s.push_str(&format!(
                "  delete {} dumps, exports and SQLite snapshots ({} objects)\n",
                count(Why::ExpiredCopy),
                count(Why::ExpiredCopy) + count(Why::ExpiredCopyPart)
            ));
        }
        if !plan.retain.is_empty() {
            s.push_str(&format!(
                "  lock   {} objects of the backups and SQLite snapshots the calendar tiers keep, until their keep-until dates (where the provider has Object Lock)\n",
                plan.retain.len()
            ));
        }
        if !p.cold.is_empty() {
            s.push_str(&format!(
                "  cold   {} parts of {} backups to {} ({})\n",
                p.cold.len(),
                p.cold
                    .iter()
                    .map(|m| m.backup.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                p.cold_class.as_deref().unwrap_or("-"),
                fmt::size(p.cold.iter().map(|m| m.size).sum())
            ));
        }
        if let Some(d) = &p.denied {
            s.push_str(&format!(
                "  nothing done: these credentials may not delete: {d}\n"
            ));
            continue;
        }
        if !r.dry_run {
            if !p.cold.is_empty() {
                s.push_str(&format!(
                    "  moved  {} parts to {}\n",
                    p.moved_cold,
                    p.cold_class.as_deref().unwrap_or("-")
                ));
            }
            if p.locks_raised + p.locks_held > 0 {
                s.push_str(&format!(
                    "  locks raised on {} objects, {} already locked long enough\n",
                    p.locks_raised, p.locks_held
                ));
            }
            s.push_str(&format!(
                "  deleted {} objects ({}), {} refused\n",
                p.deleted,
                fmt::size(p.freed),
                p.refused.len()
            ));
            for f in &p.refused {
                s.push_str(&format!("  refused {}: {}\n", f.key, f.error));
            }
        }
    }
    if r.dry_run {
        s.push_str("dry run: nothing was deleted\n");
    } else {
        s.push_str(&format!("report: prune/{}.json\n", r.id));
    }
    s
}

/// Why one backup is kept or goes, per provider.
pub fn explain(r: &PruneReport, id: &str) -> String {
    let mut s = String::new();
    for p in &r.providers {
        let Some(plan) = &p.plan else {
            s.push_str(&format!("storage \"{}\": not planned\n", p.provider));
            continue;
        };
        let line = if let Some(k) = plan.kept.iter().find(|k| k.backup == id) {
            format!(
                "kept by {} (until {}){}",
                tiers_text(&k.tiers).replace(',', ", "),
                until(k.keep_until),
                if plan.anchor.as_deref() == Some(id) {
                    "; it is the PITR window's anchor: all WAL from its start on is kept"
                } else {
                    ""
                }
            )
        } else if plan.unrestorable.iter().any(|u| u == id) {
            "not restorable from this provider (a part or its WAL is missing): never counted; deleted once older than the PITR window".into()
        } else if plan
            .delete
            .iter()
            .any(|d| d.why == Why::ExpiredBackup && d.key.contains(&format!("/{id}/")))
        {
            format!(
                "deleted: older than the PITR window's anchor {}, not among the newest {}, and not the first backup of a day, week or month inside those tiers' horizons",
                plan.anchor.as_deref().unwrap_or("-"),
                r.policy.min_backups
            )
        } else {
            "not on this provider".into()
        };
        s.push_str(&format!("storage \"{}\": {id} {line}\n", p.provider));
    }
    s
}
