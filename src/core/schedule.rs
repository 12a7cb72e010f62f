//! The schedule, decided: when each scheduled job (base backup, drill, verify, dump, prune,
//! an export) is next due, from what was last done and `now`. No I/O and no clock: the
//! daemon (`ingest::schedule`) asks, runs what is due, and records the run.
//!
//! Rules (docs/DESIGN.md, "The schedule"):
//! - a job that never succeeded is due at once (a first start, or a missed run);
//! - an interval job is due `every` after its last success; with `at`, at the first slot
//!   (`at` past midnight UTC, then every `every`) after its last success, so a slot missed
//!   while the host was down is run at the next start;
//! - a windowed job (drills) runs once per window of length `every` (windows counted from
//!   the Unix epoch), at a time inside the window chosen from `seed` and the window's
//!   number: the same time on every restart, a different one each window; a window that
//!   passed without a run makes it due at once;
//! - after a failure the job is retried `retry_after(every)` after the failed attempt,
//!   not in a loop.

use std::time::Duration;

use crate::core::plan::Timestamp;

const MICROS: i64 = 1_000_000;

/// How a job's due times are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// `every` after the last success.
    Interval,
    /// At `at` (seconds past midnight UTC) and every `every` from there.
    Slots { at: u32 },
    /// Once per window of `every`, at a pseudo-random time inside it.
    Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// `backup`, `drill`, `verify`, `dump`, `prune` or `export:NAME`.
    pub name: String,
    pub every: Duration,
    pub cadence: Cadence,
}

/// What is known of a job's past runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// When its last successful run started (from the archive or the local record).
    pub last_success: Option<Timestamp>,
    /// When its last failed run started, if that is newer than the last success.
    pub last_failure: Option<Timestamp>,
}

/// How long to wait after a failed run before trying again: a quarter of the interval,
/// between one minute (never a tight loop) and one hour, never more than the interval.
pub fn retry_after(every: Duration) -> Duration {
    (every / 4)
        .clamp(Duration::from_secs(60), Duration::from_secs(3600))
        .min(every)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1)
}

/// The time inside window `k` at which a windowed job runs: stable for a given seed and
/// window, spread over the whole window.
pub fn window_time(every: Duration, seed: u64, k: i64) -> Timestamp {
    let len = micros(every);
    // splitmix64 of (seed, k): cheap, well mixed, and the same on every host and restart.
    let mut z = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Leave the last tenth of the window free, so a run delayed a little (a backup before
    // it, a restart) still lands in its own window.
    let span = (len - len / 10).max(1) as u64;
    Timestamp(k.saturating_mul(len) + (z % span) as i64)
}

/// When the job is next due (at or before `now`: due now).
pub fn next_due(spec: &JobSpec, seen: &Seen, seed: u64) -> Timestamp {
    let len = micros(spec.every);
    let Some(last) = seen.last_success else {
        return seen
            .last_failure
            .map(|f| Timestamp(f.0 + micros(retry_after(spec.every))))
            .unwrap_or(Timestamp(i64::MIN));
    };
    let due = match spec.cadence {
        Cadence::Interval => Timestamp(last.0.saturating_add(len)),
        Cadence::Slots { at } => {
            let at = i64::from(at) * MICROS;
            // The first slot strictly after the last success.
            let k = (last.0 - at).div_euclid(len) + 1;
            Timestamp(at + k * len)
        }
        Cadence::Window => {
            // Ran in window k: window k+1's time (due at once if that passed unrun).
            window_time(spec.every, seed, last.0.div_euclid(len) + 1)
        }
    };
    match seen.last_failure {
        Some(f) if f > last => Timestamp(due.0.max(f.0 + micros(retry_after(spec.every)))),
        _ => due,
    }
}

/// The jobs due at `now`, in the order given (the caller lists the base backup first, so a
/// drill after a first backup has something to restore).
pub fn due(jobs: &[(JobSpec, Seen)], now: Timestamp, seed: u64) -> Vec<&JobSpec> {
    jobs.iter()
        .filter(|(spec, seen)| next_due(spec, seen, seed) <= now)
        .map(|(spec, _)| spec)
        .collect()
}

/// The earliest time any job is due (None: no jobs).
pub fn next_wake(jobs: &[(JobSpec, Seen)], seed: u64) -> Option<Timestamp> {
    jobs.iter()
        .map(|(spec, seen)| next_due(spec, seen, seed))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3600 * MICROS;
    const DAY: i64 = 24 * H;

    fn t(us: i64) -> Timestamp {
        Timestamp(us)
    }

    fn spec(name: &str, every_s: u64, cadence: Cadence) -> JobSpec {
        JobSpec {
            name: name.into(),
            every: Duration::from_secs(every_s),
            cadence,
        }
    }

    fn ok(at: i64) -> Seen {
        Seen {
            last_success: Some(t(at)),
            last_failure: None,
        }
    }

    #[test]
    fn never_run_is_due_at_once() {
        for c in [
            Cadence::Interval,
            Cadence::Slots { at: 7200 },
            Cadence::Window,
        ] {
            let j = spec("backup", 86_400, c);
            assert_eq!(due(&[(j, Seen::default())], t(1000 * DAY), 7).len(), 1);
        }
    }

    #[test]
    fn interval_is_due_every_after_the_last_success() {
        let j = spec("backup", 86_400, Cadence::Interval);
        let s = ok(100 * DAY + 5 * H);
        assert_eq!(next_due(&j, &s, 0), t(101 * DAY + 5 * H));
        let jobs = [(j, s)];
        assert!(due(&jobs, t(101 * DAY + 5 * H - 1), 0).is_empty());
        assert_eq!(due(&jobs, t(101 * DAY + 5 * H), 0).len(), 1);
    }

    #[test]
    fn daily_slot_missed_while_down_runs_at_start() {
        // Daily at 02:00; the last backup ran at 02:00 on day 100; the host was down from
        // day 100 12:00 to day 103 09:00: at start, a backup is due.
        let j = spec("backup", 86_400, Cadence::Slots { at: 2 * 3600 });
        let s = ok(100 * DAY + 2 * H + 30 * MICROS);
        assert_eq!(next_due(&j, &s, 0), t(101 * DAY + 2 * H));
        assert_eq!(due(&[(j.clone(), s)], t(103 * DAY + 9 * H), 0).len(), 1);
        // Run at 09:00 on day 103: the next is day 104 02:00, not 09:00.
        let s = ok(103 * DAY + 9 * H);
        assert_eq!(next_due(&j, &s, 0), t(104 * DAY + 2 * H));
    }

    #[test]
    fn a_manual_backup_moves_the_slot() {
        // A backup taken by hand at 01:59 counts for the 02:00 slot of that day? No: the
        // slot after it is 02:00 the same day. A backup at 02:01 covers it until tomorrow.
        let j = spec("backup", 86_400, Cadence::Slots { at: 2 * 3600 });
        assert_eq!(next_due(&j, &ok(50 * DAY + H), 0), t(50 * DAY + 2 * H));
        assert_eq!(next_due(&j, &ok(50 * DAY + 3 * H), 0), t(51 * DAY + 2 * H));
    }

    #[test]
    fn failure_is_retried_later_not_in_a_loop() {
        let j = spec("backup", 86_400, Cadence::Interval);
        let s = Seen {
            last_success: Some(t(10 * DAY)),
            last_failure: Some(t(11 * DAY)),
        };
        assert_eq!(next_due(&j, &s, 0), t(11 * DAY + H));
        // A failure with no success ever.
        let s = Seen {
            last_success: None,
            last_failure: Some(t(11 * DAY)),
        };
        assert_eq!(next_due(&j, &s, 0), t(11 * DAY + H));
        // A short interval retries after a minute at least.
        assert_eq!(
            retry_after(Duration::from_secs(20)),
            Duration::from_secs(20)
        );
        assert_eq!(
            retry_after(Duration::from_secs(600)),
            Duration::from_secs(150)
        );
    }

    #[test]
    fn drill_once_per_window_at_a_stable_random_time() {
        let q = 90 * 86_400;
        let j = spec("drill", q, Cadence::Window);
        let len = q as i64 * MICROS;
        // Drilled in window 200: the next is window 201's time, the same on every call.
        let s = ok(200 * len + 5 * DAY);
        let n = next_due(&j, &s, 42);
        assert_eq!(n, next_due(&j, &s, 42));
        assert!(n.0 >= 201 * len && n.0 < 202 * len, "{n:?}");
        // A drill done by hand late in window 200 does not make window 200 due again.
        let s2 = ok(200 * len + 80 * DAY);
        assert_eq!(next_due(&j, &s2, 42), n);
        // Different windows, different times of the window.
        let offsets: std::collections::HashSet<i64> = (0..20)
            .map(|k| window_time(j.every, 42, k).0 - k * len)
            .collect();
        assert!(offsets.len() > 15);
        // Two whole windows missed: due at once.
        assert_eq!(due(&[(j, s)], t(203 * len), 42).len(), 1);
    }

    #[test]
    fn next_wake_is_the_earliest() {
        let a = (spec("backup", 86_400, Cadence::Interval), ok(10 * DAY));
        let b = (spec("verify", 3600, Cadence::Interval), ok(10 * DAY + H));
        assert_eq!(next_wake(&[a, b], 0), Some(t(10 * DAY + 2 * H)));
        assert_eq!(next_wake(&[], 0), None);
    }

    proptest! {
        /// Every due time lies after the last success, and an interval never waits longer
        /// than its length (plus the retry delay after a failure).
        #[test]
        fn due_times_are_sane(
            every in 60u64..400 * 86_400,
            last in 0i64..1_000_000 * MICROS * 1000,
            at in 0u32..86_400,
            seed in any::<u64>(),
            kind in 0u8..3,
        ) {
            let cadence = match kind { 0 => Cadence::Interval, 1 => Cadence::Slots { at }, _ => Cadence::Window };
            let j = spec("x", every, cadence);
            let n = next_due(&j, &ok(last), seed);
            let len = every as i64 * MICROS;
            prop_assert!(n.0 > last);
            // A window job may wait until the end of the next window; the others one interval.
            let bound = if kind == 2 { 2 * len } else { len };
            prop_assert!(n.0 - last <= bound, "{} > {}", n.0 - last, bound);
        }
    }
}
