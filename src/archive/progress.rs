//! Progress of the long operations on the archive (restore and drill fetch and extract,
//! verify, prune): a bar on standard error when it is a terminal, a log line every 10 s
//! otherwise (at info level, so `--quiet` silences it), and nothing at all with `--quiet`.
//! Progress never goes to standard output, where `--json` documents go.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no bars (set once, before any command runs).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether bars are drawn: standard error is a terminal and `--quiet` was not given.
pub fn bars() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    /// A known number of bytes.
    Bytes,
    /// A known number of items.
    Items,
    /// Objects and bytes, the total unknown.
    Open,
}

struct Inner {
    what: String,
    unit: Unit,
    bar: Option<ProgressBar>,
    total: u64,
    items: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
}

/// One operation's progress; clones share it (fetch tasks on several threads).
#[derive(Clone)]
pub struct Progress(Arc<Inner>);

impl Progress {
    /// `total` bytes to go through (e.g. a backup's parts).
    pub fn bytes(what: impl Into<String>, total: u64) -> Progress {
        Self::new(
            what.into(),
            Unit::Bytes,
            total,
            "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
    }

    /// `total` items to go through (e.g. objects to delete).
    pub fn items(what: impl Into<String>, total: u64) -> Progress {
        Self::new(
            what.into(),
            Unit::Items,
            total,
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta}",
        )
    }

    /// Objects and bytes whose total is not known in advance (e.g. a provider verified
    /// as it is listed).
    pub fn open(what: impl Into<String>) -> Progress {
        Self::new(
            what.into(),
            Unit::Open,
            0,
            "{spinner} {msg} [{elapsed_precise}]",
        )
    }

    fn new(what: String, unit: Unit, total: u64, template: &str) -> Progress {
        let bar = bars().then(|| {
            let b = if unit == Unit::Open {
                ProgressBar::new_spinner()
            } else {
                ProgressBar::new(total.max(1))
            };
            b.set_style(ProgressStyle::with_template(template).expect("a valid template"));
            b.set_message(what.clone());
            if unit == Unit::Open {
                b.enable_steady_tick(Duration::from_millis(200));
            }
            b
        });
        Progress(Arc::new(Inner {
            what,
            unit,
            bar,
            total,
            items: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }))
    }

    /// `items` more items done, `bytes` more bytes.
    pub fn add(&self, items: u64, bytes: u64) {
        let p = &self.0;
        let n = p.items.fetch_add(items, Ordering::Relaxed) + items;
        let b = p.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &p.bar {
            match p.unit {
                Unit::Bytes => bar.set_position(b),
                Unit::Items => bar.set_position(n),
                Unit::Open => {
                    bar.set_message(format!("{}: {n} objects, {}", p.what, HumanBytes(b)))
                }
            }
            return;
        }
        let mut last = p.last_log.lock().expect("not poisoned");
        if last.elapsed() < Duration::from_secs(10) {
            return;
        }
        *last = Instant::now();
        let secs = p.started.elapsed().as_secs_f64().max(0.001);
        match p.unit {
            Unit::Bytes => tracing::info!(
                bytes = b,
                total = p.total,
                rate_bytes_per_sec = (b as f64 / secs) as u64,
                "{} progress",
                p.what
            ),
            Unit::Items => tracing::info!(done = n, total = p.total, "{} progress", p.what),
            Unit::Open => tracing::info!(objects = n, bytes = b, "{} progress", p.what),
        }
    }

    /// Done (or given up): the bar is cleared.
    pub fn finish(&self) {
        if let Some(b) = &self.0.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off a terminal (as under `cargo test`) there is no bar, and counting still works
    /// across clones.
    #[test]
    fn progress_counts_without_a_terminal() {
        set_quiet(true);
        assert!(!bars());
        let p = Progress::bytes("restore", 100);
        let q = p.clone();
        p.add(1, 40);
        q.add(1, 60);
        assert!(p.0.bar.is_none());
        assert_eq!(p.0.items.load(Ordering::Relaxed), 2);
        assert_eq!(p.0.bytes.load(Ordering::Relaxed), 100);
        p.finish();
    }
}
