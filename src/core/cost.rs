//! The cost plan (`lifeboat plan`): what the retention policy stores, per tier and
//! provider, and what that costs a month in storage and in requests. Pure: the sizes, the
//! policy, the schedule and the prices are parameters.
//!
//! The model, in steady state (the archive is older than the longest tier):
//! - base backups are taken every `backup_every`, each of `backup_bytes` stored bytes;
//! - which backups are kept is decided by the same rules as `prune` (`core::retention`):
//!   the PITR anchor and every backup after it, the newest `min_backups`, and the first
//!   backup of each UTC day, ISO week and month inside those tiers' horizons. The counts
//!   are averaged over 360 instants spread over a year (weekdays, month lengths and the
//!   phase of the schedule all vary), which is what a GB-month bill averages too;
//! - a backup kept by several tiers is stored once and counted in the first of
//!   pitr (with newest), daily, weekly, monthly that keeps it; the backups only the monthly
//!   tier keeps are in the cold storage class, all else in the standard class;
//! - WAL is kept from the PITR anchor's start on: `pitr_days` plus on average half a
//!   backup interval. While a segment takes longer than `max_delay` to fill, its bytes
//!   also leave the host as `.part` objects first, which prune removes only before the
//!   anchor: inside the window those bytes are stored twice;
//! - requests are PUTs: at most one WAL part per `max_delay` (a busy cluster has new WAL
//!   at every tick), one per complete segment, and per backup one per part plus its
//!   manifest and `backup.json`. A month is 30 days. GET, LIST and lifecycle transition
//!   requests, minimum storage durations and per-object overheads of cold classes are not
//!   counted.
//!
//! Sizes are bytes; a GB of a price is 2^30 bytes, as PostgreSQL counts (`parse_size`).

use std::time::Duration;

use serde::Serialize;

use crate::core::plan::days_from_civil;
use crate::core::retention::{add_months, month_of, week_of, Listed, Policy, Tier};

const DAY_SECS: i64 = 86_400;
const GIB: f64 = (1u64 << 30) as f64;
/// Days in a month, for request costs.
pub const MONTH_DAYS: f64 = 30.0;
/// The `max_delay` values the trade-off table shows besides the configured one.
pub const TRADEOFF_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// Prices in USD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// Per GB-month in the standard class (AWS S3 Standard: 0.023).
    pub standard: f64,
    /// Per GB-month in the cold class (AWS S3 Glacier Deep Archive: 0.00099).
    pub cold: f64,
    /// Per 1,000 PUT requests (AWS S3 Standard: 0.005).
    pub put_per_1000: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            standard: 0.023,
            cold: 0.00099,
            put_per_1000: 0.005,
        }
    }
}

/// What the plan is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    pub policy: Policy,
    /// Stored bytes of one base backup.
    pub backup_bytes: u64,
    /// Stored bytes of WAL a day (complete segments).
    pub wal_per_day: u64,
    /// How often a base backup is taken (at least an hour).
    pub backup_every: Duration,
    /// `wal.max_delay`.
    pub max_delay: Duration,
    /// Each provider stores a full copy.
    pub providers: u32,
    pub segment_size: u64,
    /// `backup.part_size`.
    pub part_size: u64,
    pub prices: Prices,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Standard,
    Cold,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Standard => "standard",
            Class::Cold => "cold",
        }
    }
}

/// One tier's share of a provider's archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierCost {
    pub tier: Tier,
    /// Backups this tier keeps that no earlier tier keeps (an average: may be fractional).
    pub backups: f64,
    pub backup_bytes: u64,
    /// WAL segments kept (the PITR tier only).
    pub wal_bytes: u64,
    /// WAL parts not yet superseded (the PITR tier only).
    pub wal_part_bytes: u64,
    pub class: Class,
    pub bytes: u64,
    /// Storage cost a month, USD.
    pub monthly_cost: f64,
}

/// One more backup interval of PITR: a backup and that interval's WAL (what the backup
/// strategy prices as "a week of base backup and WAL").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub days: f64,
    pub backup_bytes: u64,
    pub wal_bytes: u64,
    pub bytes: u64,
    /// Its storage cost a month in the standard class, USD.
    pub monthly_cost: f64,
}

/// PUT requests a day on one provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requests {
    pub max_delay_secs: f64,
    /// Whether this is `wal.max_delay` as configured.
    pub configured: bool,
    pub wal_part_puts_per_day: f64,
    pub wal_segment_puts_per_day: f64,
    pub backup_puts_per_day: f64,
    pub puts_per_day: f64,
    /// The WAL parts' PUTs a month, USD.
    pub wal_part_monthly_cost: f64,
    /// All PUTs a month, USD.
    pub monthly_cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub backups: f64,
    pub bytes: u64,
    pub standard_bytes: u64,
    pub cold_bytes: u64,
    pub storage_cost: f64,
    pub request_cost: f64,
    pub total_cost: f64,
}

/// The cost plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostPlan {
    pub backup_bytes: u64,
    pub wal_per_day: u64,
    pub backup_every_days: f64,
    pub providers: u32,
    pub prices: Prices,
    /// Per tier, on one provider.
    pub tiers: Vec<TierCost>,
    pub interval: Interval,
    /// With the configured `wal.max_delay`, on one provider.
    pub requests: Requests,
    /// The same for other values of `max_delay` (and the configured one), ascending.
    pub tradeoff: Vec<Requests>,
    pub per_provider: Totals,
    pub all_providers: Totals,
}

/// Money as the plan reports it: rounded to 1/10,000 USD (no float noise in JSON).
fn usd(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn storage_cost(bytes: f64, price: f64) -> f64 {
    bytes / GIB * price
}

/// Seconds a segment takes to fill at `wal_per_day`.
fn fill_secs(i: &Inputs) -> f64 {
    if i.wal_per_day == 0 {
        f64::INFINITY
    } else {
        i.segment_size as f64 / i.wal_per_day as f64 * DAY_SECS as f64
    }
}

/// The share of WAL bytes that also leave the host as parts: none when a segment fills
/// before `max_delay` passes, else all but the last tick's.
fn part_share(i: &Inputs, max_delay: Duration) -> f64 {
    let d = max_delay.as_secs_f64();
    let f = fill_secs(i);
    if d >= f {
        0.0
    } else {
        1.0 - d / f
    }
}

/// PUTs a day on one provider with this `max_delay`.
pub fn requests(i: &Inputs, max_delay: Duration) -> Requests {
    let d = max_delay.as_secs_f64().max(1e-3);
    // At most one part per tick, on a busy cluster; none when segments fill faster.
    let wal_part = if d < fill_secs(i) {
        DAY_SECS as f64 / d
    } else {
        0.0
    };
    let segments = i.wal_per_day as f64 / i.segment_size.max(1) as f64;
    let per_backup = (i.backup_bytes as f64 / i.part_size.max(1) as f64).ceil() + 2.0;
    let backups_a_day = DAY_SECS as f64 / i.backup_every.as_secs_f64().max(1.0);
    let backup = per_backup * backups_a_day;
    let puts = wal_part + segments + backup;
    let cost = |n: f64| usd(n * MONTH_DAYS / 1000.0 * i.prices.put_per_1000);
    Requests {
        max_delay_secs: max_delay.as_secs_f64(),
        configured: max_delay == i.max_delay,
        wal_part_puts_per_day: wal_part,
        wal_segment_puts_per_day: segments,
        backup_puts_per_day: backup,
        puts_per_day: puts,
        wal_part_monthly_cost: cost(wal_part),
        monthly_cost: cost(puts),
    }
}

/// Average distinct backups kept, per tier in the order pitr (with newest), daily,
/// weekly, monthly, and the average days of WAL kept (from the PITR anchor's start), for
/// a backup every `every` seconds. The rules are `core::retention`'s.
pub fn kept_backups(policy: &Policy, every: i64) -> ([f64; 4], f64) {
    const SAMPLES: i64 = 360;
    // A little over a day: the samples fall on every weekday, every day of the month and
    // every phase of a daily or weekly schedule.
    const STEP: i64 = DAY_SECS + 3 * 3600 + 7 * 60 + 13;
    let every = every.max(3600);
    let base = days_from_civil(2026, 1, 1) * DAY_SECS;
    let horizon_days = [
        i64::from(policy.pitr_days) + every / DAY_SECS + 2,
        i64::from(policy.daily_days),
        7 * i64::from(policy.weekly_weeks),
        31 * i64::from(policy.monthly_months),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
        + 62;
    let mut counts = [0u64; 4];
    let mut wal_secs = 0i64;
    for s in 0..SAMPLES {
        let now = base + s * STEP;
        let first = (now - horizon_days * DAY_SECS).div_euclid(every) + 1;
        let last = now.div_euclid(every);
        let n = (last - first + 1).max(0) as usize;
        let window_start = now - i64::from(policy.pitr_days) * DAY_SECS;
        // The anchor: the newest backup that ended at or before the window's start.
        let anchor_j = window_start.div_euclid(every).max(first);
        wal_secs += now - anchor_j * every;
        let anchor = (anchor_j - first) as usize;
        let mut prev: Option<(i64, i64, i64)> = None;
        for (k, j) in (first..=last).enumerate() {
            let t = j * every;
            let d = t.div_euclid(DAY_SECS);
            let (first_day, first_week, first_month) = match prev {
                Some((pd, pw, pm)) if pd == d => {
                    prev = Some((pd, pw, pm));
                    (false, false, false)
                }
                _ => {
                    let (w, m) = (week_of(d), month_of(d));
                    let r = match prev {
                        Some((_, pw, pm)) => (true, pw != w, pm != m),
                        None => (true, true, true),
                    };
                    prev = Some((d, w, m));
                    r
                }
            };
            let (_, w, m) = prev.expect("set above");
            let alive = |until_day: i64| until_day * DAY_SECS > now;
            let tier = if k >= anchor || k + policy.min_backups as usize >= n {
                0
            } else if first_day && alive(d + i64::from(policy.daily_days)) {
                1
            } else if first_week && alive(w + 7 * i64::from(policy.weekly_weeks)) {
                2
            } else if first_month && alive(add_months(m, policy.monthly_months)) {
                3
            } else {
                continue;
            };
            counts[tier] += 1;
        }
    }
    let avg = counts.map(|c| c as f64 / SAMPLES as f64);
    (avg, wal_secs as f64 / SAMPLES as f64 / DAY_SECS as f64)
}

/// The WAL rate measured from a provider's `wal/` listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalRate {
    /// Stored bytes of the objects counted.
    pub bytes: u64,
    pub objects: usize,
    /// The span of their modified times, at least a day.
    pub days: f64,
    pub per_day: u64,
}

/// Stored WAL a day: the complete segments (`.seg`) of the listing over the span of their
/// modified times (at least one day); only when there is none yet, the parts. Only the
/// newest `window_days` count: after a prune the listing also holds the WAL of backups kept
/// for years, scattered over them, which would spread a week's WAL over years. `None` for
/// a listing without WAL.
pub fn wal_rate(listing: &[Listed], window_days: u32) -> Option<WalRate> {
    let newest = listing.iter().filter_map(|l| l.modified).max();
    let from = newest.map_or(i64::MIN, |n| {
        n.0 - i64::from(window_days.max(1)) * DAY_SECS * 1_000_000
    });
    let listing: Vec<&Listed> = listing
        .iter()
        .filter(|l| l.modified.map_or(true, |m| m.0 >= from))
        .collect();
    let listing = &listing[..];
    let segs: Vec<&Listed> = listing
        .iter()
        .copied()
        .filter(|l| l.key.ends_with(".seg"))
        .collect();
    let counted: Vec<&Listed> = if segs.is_empty() {
        listing
            .iter()
            .copied()
            .filter(|l| l.key.ends_with(".part"))
            .collect()
    } else {
        segs
    };
    if counted.is_empty() {
        return None;
    }
    let bytes: u64 = counted.iter().map(|l| l.size).sum();
    let times = counted.iter().filter_map(|l| l.modified.map(|t| t.0));
    let span = match (times.clone().min(), times.max()) {
        (Some(a), Some(b)) => (b - a) as f64 / (DAY_SECS as f64 * 1e6),
        _ => 0.0,
    };
    let days = span.max(1.0);
    Some(WalRate {
        bytes,
        objects: counted.len(),
        days,
        per_day: (bytes as f64 / days).round() as u64,
    })
}

/// The plan.
pub fn plan(i: &Inputs) -> CostPlan {
    let every = i.backup_every.as_secs() as i64;
    let (kept, wal_days) = kept_backups(&i.policy, every);
    let p = &i.prices;
    let wal_bytes = wal_days * i.wal_per_day as f64;
    let part_bytes = wal_bytes * part_share(i, i.max_delay);
    let tiers: Vec<TierCost> = [Tier::Pitr, Tier::Daily, Tier::Weekly, Tier::Monthly]
        .into_iter()
        .zip(kept)
        .map(|(tier, backups)| {
            let backup_bytes = backups * i.backup_bytes as f64;
            let (wal, part) = if tier == Tier::Pitr {
                (wal_bytes, part_bytes)
            } else {
                (0.0, 0.0)
            };
            let class = if tier == Tier::Monthly {
                Class::Cold
            } else {
                Class::Standard
            };
            let price = match class {
                Class::Standard => p.standard,
                Class::Cold => p.cold,
            };
            let bytes = backup_bytes + wal + part;
            TierCost {
                tier,
                backups: (backups * 10.0).round() / 10.0,
                backup_bytes: backup_bytes.round() as u64,
                wal_bytes: wal.round() as u64,
                wal_part_bytes: part.round() as u64,
                class,
                bytes: bytes.round() as u64,
                monthly_cost: usd(storage_cost(bytes, price)),
            }
        })
        .collect();

    let every_days = i.backup_every.as_secs_f64() / DAY_SECS as f64;
    let interval_wal = every_days * i.wal_per_day as f64;
    let interval_bytes = i.backup_bytes as f64 + interval_wal;
    let interval = Interval {
        days: every_days,
        backup_bytes: i.backup_bytes,
        wal_bytes: interval_wal.round() as u64,
        bytes: interval_bytes.round() as u64,
        monthly_cost: usd(storage_cost(interval_bytes, p.standard)),
    };

    let requests_now = requests(i, i.max_delay);
    let mut delays: Vec<Duration> = TRADEOFF_DELAYS.to_vec();
    if !delays.contains(&i.max_delay) {
        delays.push(i.max_delay);
        delays.sort();
    }
    let tradeoff = delays.into_iter().map(|d| requests(i, d)).collect();

    let sum = |class: Option<Class>| -> u64 {
        tiers
            .iter()
            .filter(|t| class.map_or(true, |c| t.class == c))
            .map(|t| t.bytes)
            .sum()
    };
    let storage: f64 = tiers.iter().map(|t| t.monthly_cost).sum();
    let per_provider = Totals {
        backups: (tiers.iter().map(|t| t.backups).sum::<f64>() * 10.0).round() / 10.0,
        bytes: sum(None),
        standard_bytes: sum(Some(Class::Standard)),
        cold_bytes: sum(Some(Class::Cold)),
        storage_cost: usd(storage),
        request_cost: requests_now.monthly_cost,
        total_cost: usd(storage + requests_now.monthly_cost),
    };
    let n = i.providers.max(1);
    let all_providers = Totals {
        backups: per_provider.backups * f64::from(n),
        bytes: per_provider.bytes * u64::from(n),
        standard_bytes: per_provider.standard_bytes * u64::from(n),
        cold_bytes: per_provider.cold_bytes * u64::from(n),
        storage_cost: usd(per_provider.storage_cost * f64::from(n)),
        request_cost: usd(per_provider.request_cost * f64::from(n)),
        total_cost: usd(per_provider.total_cost * f64::from(n)),
    };
    CostPlan {
        backup_bytes: i.backup_bytes,
        wal_per_day: i.wal_per_day,
        backup_every_days: every_days,
        providers: n,
        prices: i.prices,
        tiers,
        interval,
        requests: requests_now,
        tradeoff,
        per_provider,
        all_providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn inputs(every_days: u64) -> Inputs {
        Inputs {
            policy: Policy::strategy(),
            // 100 GB database, zstd halves it.
            backup_bytes: 50 * GB,
            wal_per_day: 5 * GB,
            backup_every: Duration::from_secs(every_days * 86_400),
            max_delay: Duration::from_secs(1),
            providers: 1,
            segment_size: 16 * MIB,
            part_size: 8 * MIB,
            prices: Prices::default(),
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// The backup strategy's example: a 100 GB database with 5 GB of WAL a day, weekly
    /// base backups: about 50 GB of base backup and 35 GB of WAL a week, roughly $2 a
    /// month in standard storage (85 GB × 0.023 = 1.955).
    #[test]
    fn the_strategys_weekly_example() {
        let p = plan(&inputs(7));
        assert_eq!(p.interval.days, 7.0);
        assert_eq!(p.interval.backup_bytes, 50 * GB);
        assert_eq!(p.interval.wal_bytes, 35 * GB);
        assert_eq!(p.interval.bytes, 85 * GB);
        assert_eq!(p.interval.monthly_cost, 1.955);
    }

    /// Daily backups under the strategy's 7-year policy: 8 in the PITR window (7 days and
    /// the anchor), the other dailies of 30 days, the weeklies older than that (52 − ~4.3),
    /// and the monthlies (84 − ~12 older than the weekly tier, plus the first backups of
    /// months inside it that are not the first of their week: the 1st is a Monday one
    /// month in seven).
    #[test]
    fn seven_year_policy_counts_daily() {
        let (kept, wal_days) = kept_backups(&Policy::strategy(), 86_400);
        assert_eq!(kept[0], 8.0, "{kept:?}");
        assert!(close(kept[1], 22.0, 0.1), "{kept:?}");
        assert!(close(kept[2], 52.0 - 30.0 / 7.0, 0.6), "{kept:?}");
        let older = 84.0 - 364.0 / 30.44;
        let inside = 6.0 / 7.0 * (364.0 - 30.0) / 30.44;
        assert!(close(kept[3], older + inside, 1.5), "{kept:?}");
        let total: f64 = kept.iter().sum();
        assert!(close(total, 159.0, 2.0), "{total}");
        // WAL from the anchor's start: 7 days and half a day on average.
        assert!(close(wal_days, 7.5, 0.05), "{wal_days}");
    }

    /// Weekly backups: every backup is the first of its week, so the weekly tier holds one
    /// for each of 52 weeks (the window's 2 among them; the current week has had its backup
    /// half the time) and only the monthlies older than 52 weeks add to it.
    #[test]
    fn seven_year_policy_counts_weekly() {
        let (kept, wal_days) = kept_backups(&Policy::strategy(), 7 * 86_400);
        assert_eq!(kept[0], 2.0, "{kept:?}");
        let weekly = kept[0] + kept[1] + kept[2];
        assert!(close(weekly, 51.5, 0.2), "{kept:?}");
        assert!(close(kept[3], 84.0 - 364.0 / 30.44, 1.0), "{kept:?}");
        assert!(close(wal_days, 10.5, 0.2), "{wal_days}");
    }

    #[test]
    fn tiers_do_not_double_count_and_monthlies_go_cold() {
        let p = plan(&inputs(1));
        let total: u64 = p.tiers.iter().map(|t| t.bytes).sum();
        assert_eq!(p.per_provider.bytes, total);
        let monthly = &p.tiers[3];
        assert_eq!((monthly.tier, monthly.class), (Tier::Monthly, Class::Cold));
        assert!(p.tiers[..3].iter().all(|t| t.class == Class::Standard));
        assert_eq!(p.per_provider.cold_bytes, monthly.bytes);
        // Only the PITR tier holds WAL: 7.5 days of segments, and as many bytes again of
        // parts (segments take 270 s to fill, far longer than max_delay).
        assert!(p.tiers[1..].iter().all(|t| t.wal_bytes == 0));
        assert!(close(p.tiers[0].wal_bytes as f64 / GB as f64, 37.5, 0.3));
        assert!(close(
            p.tiers[0].wal_part_bytes as f64 / GB as f64,
            37.5 * (1.0 - 1.0 / 270.0),
            0.3
        ));
    }

    /// max_delay = 1s on a busy cluster: 86,400 parts a day per provider, $12.96 a month at
    /// $0.005 per 1,000, more than the example's storage ($1.96 for a week's backup and
    /// WAL).
    #[test]
    fn max_delay_tradeoff() {
        let i = inputs(7);
        let p = plan(&i);
        let one = &p.tradeoff[0];
        assert_eq!(one.max_delay_secs, 1.0);
        assert!(one.configured);
        assert_eq!(one.wal_part_puts_per_day, 86_400.0);
        assert_eq!(one.wal_part_monthly_cost, 12.96);
        assert!(one.wal_part_monthly_cost > p.interval.monthly_cost);
        assert_eq!(one.wal_segment_puts_per_day, 320.0);
        // 6,400 parts of 8 MiB + manifest + backup.json, once a week.
        assert!(close(one.backup_puts_per_day, 6402.0 / 7.0, 1e-9));
        let delays: Vec<f64> = p.tradeoff.iter().map(|r| r.max_delay_secs).collect();
        assert_eq!(delays, [1.0, 10.0, 60.0, 300.0]);
        assert_eq!(p.tradeoff[1].wal_part_puts_per_day, 8_640.0);
        assert_eq!(p.tradeoff[1].wal_part_monthly_cost, 1.296);
        assert_eq!(p.tradeoff[2].wal_part_puts_per_day, 1_440.0);
        // Segments fill in 270 s: at 300 s no part is ever written.
        assert_eq!(p.tradeoff[3].wal_part_puts_per_day, 0.0);
        // A configured value outside the table is added to it, in order.
        let p = plan(&Inputs {
            max_delay: Duration::from_millis(300),
            ..i
        });
        assert_eq!(p.tradeoff.len(), 5);
        assert!(p.tradeoff[0].configured && p.tradeoff[0].max_delay_secs == 0.3);
        assert_eq!(p.requests.wal_part_puts_per_day, 288_000.0);
    }

    #[test]
    fn wal_rate_counts_segments_over_their_span() {
        let at = |day: i64| Some(crate::core::plan::Timestamp(day * 86_400 * 1_000_000));
        let l = |key: &str, size: u64, day: i64| Listed {
            key: key.into(),
            size,
            modified: at(day),
        };
        let listing = vec![
            l("wal/00000001/000000010000000000000001.seg", 4 * MIB, 100),
            l(
                "wal/00000001/000000010000000000000002.00000000-00100000.part",
                MIB,
                101,
            ),
            l("wal/00000001/000000010000000000000002.seg", 4 * MIB, 102),
            l("wal/00000001/000000010000000000000003.seg", 4 * MIB, 104),
        ];
        let r = wal_rate(&listing, 7).unwrap();
        assert_eq!((r.bytes, r.objects, r.days), (12 * MIB, 3, 4.0));
        assert_eq!(r.per_day, 3 * MIB);
        // A young archive: parts only, within a day.
        let r = wal_rate(&listing[1..2], 7).unwrap();
        assert_eq!((r.bytes, r.days, r.per_day), (MIB, 1.0, MIB));
        assert_eq!(wal_rate(&[], 7), None);
        // A pruned archive: a kept monthly's WAL from a year before does not count.
        let mut pruned = listing.clone();
        pruned.insert(
            0,
            l("wal/00000001/000000010000000000000000.seg", 4 * MIB, -265),
        );
        assert_eq!(wal_rate(&pruned, 7), wal_rate(&listing, 7));
    }

    #[test]
    fn providers_multiply() {
        let p = plan(&Inputs {
            providers: 2,
            ..inputs(1)
        });
        assert_eq!(p.all_providers.bytes, 2 * p.per_provider.bytes);
        assert!(close(
            p.all_providers.total_cost,
            2.0 * p.per_provider.total_cost,
            1e-3
        ));
    }
}
