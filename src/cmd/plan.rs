//! `lifeboat plan`: the cost plan of the `[retention]` policy (`core::cost`), per tier and
//! provider, storage and requests, with the `wal.max_delay` trade-off. The sizes come from
//! the archive (the newest backup's stored size, the WAL stored a day on the first provider
//! that lists it) or from `--db-size` and `--wal-per-day`; the output says which.

use std::time::Duration;

use serde::Serialize;

use super::{parse_duration_arg, print_json, usage, Ctx, Failure};
use crate::archive::prune;
use crate::archive::Archive;
use crate::config::parse_size;
use crate::core::cost::{self, CostPlan, Inputs, Prices, Requests};
use crate::core::fmt;

/// The segment size assumed for given figures (PostgreSQL's default).
const DEFAULT_SEGMENT: u64 = 16 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Size of the database (with --wal-per-day: plan from these figures, not the archive).
    #[arg(long, value_name = "SIZE")]
    db_size: Option<String>,
    /// WAL written a day (with --db-size).
    #[arg(long, value_name = "SIZE")]
    wal_per_day: Option<String>,
    /// How often a base backup is taken.
    #[arg(long, value_name = "DURATION", default_value = "1d")]
    backup_every: String,
    /// A backup's stored size over the database's size (with --db-size).
    #[arg(long, value_name = "RATIO", default_value_t = 0.5)]
    compression_ratio: f64,
    /// USD per GB-month in the standard storage class.
    #[arg(long, value_name = "USD", default_value_t = Prices::default().standard)]
    price_standard: f64,
    /// USD per GB-month in the cold storage class (monthly backups).
    #[arg(long, value_name = "USD", default_value_t = Prices::default().cold)]
    price_cold: f64,
    /// USD per 1,000 PUT requests.
    #[arg(long, value_name = "USD", default_value_t = Prices::default().put_per_1000)]
    price_put: f64,
}

/// Where the sizes come from.
#[derive(Serialize)]
struct Figures {
    /// `given` or `measured`.
    source: &'static str,
    backup_bytes: u64,
    /// How the backup size was found.
    backup_from: String,
    wal_per_day: u64,
    wal_from: String,
}

#[derive(Serialize)]
struct PolicyView {
    pitr_days: u32,
    daily_days: u32,
    weekly_weeks: u32,
    monthly_months: u32,
    min_backups: u32,
    max_delay_secs: f64,
}

#[derive(Serialize)]
struct PlanReport {
    figures: Figures,
    policy: PolicyView,
    #[serde(flatten)]
    plan: CostPlan,
}

const SIZE_HINT: &str = "hint: write a size like \"100GB\", \"5GiB\" or \"512MB\" (kB, MB and GB count in 1024s, as PostgreSQL's settings do)";

fn size_arg(flag: &str, s: &str) -> Result<u64, Failure> {
    match parse_size(s) {
        Ok(0) => Err(usage(format!(
            "{flag}: \"{s}\" is zero\nhint: give the size the plan is for, e.g. {flag} 100GB"
        ))),
        Ok(n) => Ok(n),
        Err(e) => Err(usage(format!("{flag}: {e}\n{SIZE_HINT}"))),
    }
}

fn price_arg(flag: &str, v: f64) -> Result<f64, Failure> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(usage(format!(
            "{flag}: {v} is not a price\nhint: give USD as a number, e.g. {flag} 0.023"
        )))
    }
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    let backup_every = parse_duration_arg("--backup-every", &a.backup_every)?;
    if backup_every < Duration::from_secs(3600) {
        return Err(usage(format!(
            "--backup-every {}: plans take at most one base backup an hour\nhint: e.g. --backup-every 1d (the default) or 7d",
            a.backup_every
        )));
    }
    let ratio = a.compression_ratio;
    if !(ratio.is_finite() && ratio > 0.0 && ratio <= 2.0) {
        return Err(usage(format!(
            "--compression-ratio {ratio}: not a ratio of stored to database size\nhint: give a number above 0 and at most 2; zstd typically halves a database (0.5, the default)"
        )));
    }
    let prices = Prices {
        standard: price_arg("--price-standard", a.price_standard)?,
        cold: price_arg("--price-cold", a.price_cold)?,
        put_per_1000: price_arg("--price-put", a.price_put)?,
    };
    let (figures, segment_size) = match (&a.db_size, &a.wal_per_day) {
        (Some(db), Some(wal)) => {
            let db_bytes = size_arg("--db-size", db)?;
            let wal_bytes = size_arg("--wal-per-day", wal)?;
            let figures = Figures {
                source: "given",
                backup_bytes: (db_bytes as f64 * ratio).round() as u64,
                backup_from: format!("--db-size {db} × --compression-ratio {ratio}"),
                wal_per_day: wal_bytes,
                wal_from: format!("--wal-per-day {wal}"),
            };
            (figures, DEFAULT_SEGMENT)
        }
        (None, None) => measure(ctx).await?,
        (Some(_), None) | (None, Some(_)) => {
            let (given, missing) = if a.db_size.is_some() {
                ("--db-size", "--wal-per-day")
            } else {
                ("--wal-per-day", "--db-size")
            };
            return Err(usage(format!(
                "{given} given without {missing}\nhint: give both figures to plan from them, or neither to measure the archive"
            )));
        }
    };
    let policy = prune::policy(&ctx.cfg.retention);
    let inputs = Inputs {
        policy,
        backup_bytes: figures.backup_bytes,
        wal_per_day: figures.wal_per_day,
        backup_every,
        max_delay: ctx.cfg.max_delay(),
        providers: ctx.cfg.storage.len().max(1) as u32,
        segment_size,
        part_size: ctx.cfg.backup_part_size() as u64,
        prices,
    };
    let report = PlanReport {
        figures,
        policy: PolicyView {
            pitr_days: policy.pitr_days,
            daily_days: policy.daily_days,
            weekly_weeks: policy.weekly_weeks,
            monthly_months: policy.monthly_months,
            min_backups: policy.min_backups,
            max_delay_secs: inputs.max_delay.as_secs_f64(),
        },
        plan: cost::plan(&inputs),
    };
    if ctx.json() {
        print_json(&report)
    } else {
        print!("{}", render(&report, &inputs));
        Ok(())
    }
}

/// The sizes as the archive holds them: the newest backup's stored size, the WAL stored a
/// day on the first provider that lists it.
async fn measure(ctx: &Ctx<'_>) -> Result<(Figures, u64), Failure> {
    let archive = Archive::open(&ctx.cfg)?;
    let hint = "hint: give the figures instead: --db-size SIZE --wal-per-day SIZE";
    let Some(meta) = archive.meta().await? else {
        return Err(super::failed(format!(
            "the archive is empty: there are no sizes to measure\n{hint}"
        )));
    };
    let backups = archive.backups().await?;
    let Some(newest) = backups.iter().max_by_key(|b| (b.end_time, &b.id)) else {
        return Err(super::failed(format!(
            "the archive holds no backup to measure\n{hint}, or take one with `lifeboat backup`"
        )));
    };
    let (provider, listing) = archive.wal_listing().await?;
    let Some(rate) = cost::wal_rate(&listing, ctx.cfg.retention.pitr_days) else {
        return Err(super::failed(format!(
            "storage \"{provider}\" holds no WAL to measure\n{hint}, or start `lifeboat stream`"
        )));
    };
    let figures = Figures {
        source: "measured",
        backup_bytes: newest.stored_size,
        backup_from: format!("the newest backup, {}", newest.id),
        wal_per_day: rate.per_day,
        wal_from: format!(
            "{} in {} WAL objects over {:.1} days on storage \"{provider}\"",
            fmt::size(rate.bytes),
            rate.objects,
            rate.days
        ),
    };
    Ok((figures, meta.wal_segment_size.bytes()))
}

/// A duration as the trade-off table prints it: `300ms`, `1s`, `5m`.
fn delay(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs_f64(secs)).to_string()
}

/// A schedule: `1 day`, `7 days`, else as humantime prints it (`12h`).
fn every(d: Duration) -> String {
    let secs = d.as_secs();
    match secs / 86_400 {
        1 if secs % 86_400 == 0 => "1 day".into(),
        n if n > 1 && secs % 86_400 == 0 => format!("{n} days"),
        _ => humantime::format_duration(d).to_string(),
    }
}

fn usd(x: f64) -> String {
    if x != 0.0 && x < 0.01 {
        format!("{x:.4}")
    } else {
        format!("{x:.2}")
    }
}

fn count(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn requests_line(r: &Requests) -> String {
    format!(
        "  {:<10} {:>12} {:>12} {:>12} {:>12} {:>10}{}\n",
        delay(r.max_delay_secs),
        count(r.wal_part_puts_per_day),
        count(r.wal_segment_puts_per_day),
        count(r.backup_puts_per_day),
        count(r.puts_per_day),
        usd(r.monthly_cost),
        if r.configured { "  (configured)" } else { "" }
    )
}

fn render(r: &PlanReport, i: &Inputs) -> String {
    let p = &r.plan;
    let f = &r.figures;
    let mut s = String::new();
    s.push_str(&format!(
        "backup: {} stored, {} ({})\n",
        fmt::size(f.backup_bytes),
        f.source,
        f.backup_from
    ));
    s.push_str(&format!(
        "WAL:    {} stored a day, {} ({})\n",
        fmt::size(f.wal_per_day),
        f.source,
        f.wal_from
    ));
    s.push_str(&format!(
        "policy: PITR {} days, daily {} days, weekly {} weeks, monthly {} months; a backup every {}; wal.max_delay {}; {} provider{}\n",
        r.policy.pitr_days,
        r.policy.daily_days,
        r.policy.weekly_weeks,
        r.policy.monthly_months,
        every(i.backup_every),
        delay(r.policy.max_delay_secs),
        p.providers,
        if p.providers == 1 { "" } else { "s" }
    ));
    s.push_str(&format!(
        "prices: USD {} (standard) and {} (cold) per GB-month, {} per 1,000 PUTs (GB = 2^30 bytes)\n\n",
        p.prices.standard, p.prices.cold, p.prices.put_per_1000
    ));
    s.push_str("storage per provider (steady state, monthly average):\n");
    s.push_str(&format!(
        "  {:<8} {:>8} {:>12} {:>12} {:>12} {:>12} {:<9} {:>10}\n",
        "TIER", "BACKUPS", "BACKUP SIZE", "WAL", "WAL PARTS", "STORED", "CLASS", "USD/MONTH"
    ));
    let dash = |n: u64| {
        if n == 0 {
            "-".to_string()
        } else {
            fmt::size(n)
        }
    };
    for t in &p.tiers {
        s.push_str(&format!(
            "  {:<8} {:>8.1} {:>12} {:>12} {:>12} {:>12} {:<9} {:>10}\n",
            t.tier.name(),
            t.backups,
            fmt::size(t.backup_bytes),
            dash(t.wal_bytes),
            dash(t.wal_part_bytes),
            fmt::size(t.bytes),
            t.class.name(),
            usd(t.monthly_cost)
        ));
    }
    let pp = &p.per_provider;
    s.push_str(&format!(
        "  {:<8} {:>8.1} {:>51} {:<9} {:>10}\n",
        "total",
        pp.backups,
        fmt::size(pp.bytes),
        "",
        usd(pp.storage_cost)
    ));
    s.push_str(&format!(
        "\none more backup interval of PITR ({}): a backup of {} and {} of WAL, {}, USD {}/month in standard storage\n\n",
        every(i.backup_every),
        fmt::size(p.interval.backup_bytes),
        fmt::size(p.interval.wal_bytes),
        fmt::size(p.interval.bytes),
        usd(p.interval.monthly_cost)
    ));
    s.push_str("PUT requests a day per provider, by wal.max_delay (a WAL part every max_delay at most, on a busy cluster):\n");
    s.push_str(&format!(
        "  {:<10} {:>12} {:>12} {:>12} {:>12} {:>10}\n",
        "MAX_DELAY", "WAL PARTS", "SEGMENTS", "BACKUP", "ALL", "USD/MONTH"
    ));
    for row in &p.tradeoff {
        s.push_str(&requests_line(row));
    }
    s.push('\n');
    s.push_str(&format!(
        "per provider: USD {}/month ({} storage + {} requests), {} stored\n",
        usd(pp.total_cost),
        usd(pp.storage_cost),
        usd(pp.request_cost),
        fmt::size(pp.bytes)
    ));
    let all = &p.all_providers;
    s.push_str(&format!(
        "all {} provider{}: USD {}/month ({} storage + {} requests), {} stored ({} standard, {} cold)\n",
        p.providers,
        if p.providers == 1 { "" } else { "s" },
        usd(all.total_cost),
        usd(all.storage_cost),
        usd(all.request_cost),
        fmt::size(all.bytes),
        fmt::size(all.standard_bytes),
        fmt::size(all.cold_bytes)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(86_400.0), "86,400");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }

    #[test]
    fn schedules_print_in_days() {
        assert_eq!(every(Duration::from_secs(86_400)), "1 day");
        assert_eq!(every(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(every(Duration::from_secs(12 * 3600)), "12h");
    }

    #[test]
    fn delays_print_short() {
        assert_eq!(delay(0.3), "300ms");
        assert_eq!(delay(1.0), "1s");
        assert_eq!(delay(300.0), "5m");
    }
}
