//! `lifeboat verify`: the archive's integrity (CRC of every object, WAL continuity,
//! timeline history, backups), or with `--providers` whether every provider holds every
//! object.

use super::{failed, print_json, Ctx, Failure};
use crate::archive::{verify, Archive};

#[derive(clap::Args)]
pub struct Args {
    /// Also decrypt every object (needs the identity).
    #[arg(long)]
    full: bool,
    /// Compare the providers' inventories instead.
    #[arg(long)]
    providers: bool,
    /// With --providers: copy what a provider lacks from another (no key needed).
    #[arg(long, requires = "providers")]
    repair: bool,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let archive = Archive::open(&ctx.cfg)?;
    if a.providers {
        return providers(ctx, &archive, a.repair).await;
    }
    let op = if a.full { Some(ctx.opener()?) } else { None };
    let report = verify::run(&archive, op.as_ref()).await?;
    if ctx.json() {
        print_json(&report)?;
    } else {
        for p in &report.providers {
            println!(
                "storage \"{}\": {} objects, {} bytes, {} backup{}, {}",
                p.provider,
                p.objects,
                p.bytes,
                p.backups,
                if p.backups == 1 { "" } else { "s" },
                if p.problems.is_empty() {
                    "ok"
                } else {
                    "PROBLEMS"
                }
            );
            for r in &p.wal {
                println!(
                    "  timeline {}: WAL {} – {}",
                    r.timeline, r.start_lsn, r.end_lsn
                );
            }
            if p.dumps + p.exports > 0 {
                println!(
                    "  {} dump{} and {} export{} checked",
                    p.dumps,
                    if p.dumps == 1 { "" } else { "s" },
                    p.exports,
                    if p.exports == 1 { "" } else { "s" }
                );
            }
            if p.sqlite_snapshots > 0 {
                println!(
                    "  {} sqlite snapshot{} checked",
                    p.sqlite_snapshots,
                    if p.sqlite_snapshots == 1 { "" } else { "s" }
                );
            }
            let (in_backups, logical): (Vec<&String>, Vec<&String>) = p
                .unreferenced
                .iter()
                .partition(|k| k.starts_with(crate::core::catalog::BACKUPS_PREFIX));
            if !in_backups.is_empty() {
                println!(
                    "  {} objects under backups/ belong to no backup.json (left by an interrupted backup; they are never read)",
                    in_backups.len()
                );
            }
            if !logical.is_empty() {
                println!(
                    "  {} objects under dumps/, exports/ or sqlite/ belong to no dump.json, export.json or snapshot.json (left by an interrupted dump, put or snapshot; they are never read)",
                    logical.len()
                );
            }
            if p.cold > 0 {
                println!(
                    "  {} backup parts are in an archive storage class: present, not read (restore thaws them first)",
                    p.cold
                );
            }
            for pr in &p.problems {
                println!("  problem: {}", pr.replace('\n', "\n           "));
            }
        }
        for g in &report.gaps {
            println!(
                "accepted gap: WAL {}–{} on timeline {} is lost ({}, accepted {}); no restore crosses it",
                g.from, g.to, g.timeline, g.reason, g.accepted_at
            );
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(failed("verification found problems".into()))
    }
}

async fn providers(ctx: &Ctx<'_>, archive: &Archive, repair: bool) -> Result<(), Failure> {
    let rep = verify::providers(archive, repair).await?;
    if ctx.json() {
        print_json(&rep)?;
    } else {
        println!(
            "{} providers ({}), {} objects",
            rep.providers.len(),
            rep.providers.join(", "),
            rep.objects
        );
        for (k, who) in &rep.missing {
            println!("  missing: {k} on {}", who.join(", "));
        }
        for (k, sizes) in &rep.differing {
            println!("  differs: {k} ({})", sizes.join(", "));
        }
        for (k, how) in &rep.repaired {
            println!("  repaired: {k} ({how})");
        }
        for p in &rep.problems {
            println!("  problem: {}", p.replace('\n', "\n           "));
        }
        if rep.ok() {
            println!("  ok: every provider holds every object");
        }
    }
    if rep.ok() {
        Ok(())
    } else {
        Err(failed("the providers differ\nhint: lifeboat verify --providers --repair copies what is missing".into()))
    }
}
