//! systemd's notify protocol for the streamer service (`Type=notify`, see
//! `contrib/lifeboat.service`): `READY=1` once, when WAL first streams; `WATCHDOG=1` from
//! the streaming loop, every quarter to half of the interval systemd asked for in `WATCHDOG_USEC`; `STATUS=`
//! with what `lifeboat status` would say; `STOPPING=1` when a stop is asked for.
//!
//! Every call is a no-op without `NOTIFY_SOCKET` (not under systemd, or a one-shot
//! command), and never blocks the caller: the messages go through the `sd-notify` crate
//! from a thread of their own, whose blocking send waits when the service manager does not
//! read (a datagram socket's queue is short). What cannot be queued is dropped and a failed
//! send is logged at debug level: the service manager being slow or gone never stops
//! archiving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

enum Msg {
    Ready,
    Watchdog,
    Status(String),
    /// Then tell the sender it went.
    Stopping(SyncSender<()>),
}

struct Notifier {
    queue: SyncSender<Msg>,
    /// A quarter of `WATCHDOG_USEC`: pings are at least this far apart, and a wait pings
    /// this often, so that they are at most half the interval apart. `None`: no watchdog.
    ping_every: Option<Duration>,
    start: Instant,
    /// Milliseconds after `start` of the last ping, plus one (0: never).
    last_ping: AtomicU64,
    ready: AtomicBool,
    status: Mutex<String>,
}

/// The notifier of this process, or `None` when no service manager listens.
fn notifier() -> Option<&'static Notifier> {
    static N: OnceLock<Option<Notifier>> = OnceLock::new();
    N.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")?;
        let (queue, rx) = sync_channel::<Msg>(16);
        let sender = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                while let Ok(m) = rx.recv() {
                    match m {
                        Msg::Ready => send(&[NotifyState::Ready]),
                        Msg::Watchdog => send(&[NotifyState::Watchdog]),
                        Msg::Status(t) => send(&[NotifyState::Status(&t)]),
                        Msg::Stopping(done) => {
                            send(&[
                                NotifyState::Stopping,
                                NotifyState::Status("stopping: archiving what was received"),
                            ]);
                            let _ = done.try_send(());
                        }
                    }
                }
            });
        if let Err(e) = sender {
            tracing::warn!(error = %e, "cannot start the thread that notifies systemd");
            return None;
        }
        Some(Notifier {
            queue,
            ping_every: watchdog_interval(
                std::env::var("WATCHDOG_USEC").ok().as_deref(),
                std::env::var("WATCHDOG_PID").ok().as_deref(),
                std::process::id(),
            )
            .map(|d| d / 4),
            start: Instant::now(),
            last_ping: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            status: Mutex::new(String::new()),
        })
    })
    .as_ref()
}

/// The watchdog interval systemd asks for, as `sd_watchdog_enabled(3)` reads it:
/// `WATCHDOG_USEC` set and positive, and `WATCHDOG_PID`, when set, naming this process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

impl Notifier {
    /// Queue a message; dropped when the queue is full (the manager is not reading).
    fn post(&self, m: Msg) {
        if self.queue.try_send(m).is_err() {
            tracing::debug!(
                "the service manager is not reading its notify socket: a message was dropped"
            );
        }
    }
}

/// `READY=1`, the first time only: WAL is streaming.
pub fn ready() {
    if let Some(n) = notifier() {
        if !n.ready.swap(true, Ordering::SeqCst) {
            n.post(Msg::Ready);
        }
    }
}

/// `WATCHDOG=1` when a quarter of the watchdog interval has passed since the last one.
/// Cheap: call it on every turn of a loop that must keep turning (at least every quarter
/// interval).
pub fn watchdog() {
    let Some(n) = notifier() else { return };
    let Some(every) = n.ping_every else { return };
    let now = n.start.elapsed().as_millis() as u64 + 1;
    let last = n.last_ping.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < every.as_millis() as u64 {
        return;
    }
    if n.last_ping
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        n.post(Msg::Watchdog);
    }
}

/// Await `fut`, feeding the watchdog meanwhile: for the streaming loop's legitimate waits
/// (the pipeline is full while a provider is down and the spool is at its limit; a
/// connection attempt, bounded by its timeout). A loop that stops turning anywhere else
/// is a hang, and systemd restarts the service.
pub async fn keep_alive<F: std::future::Future>(fut: F) -> F::Output {
    let Some(every) = notifier().and_then(|n| n.ping_every) else {
        return fut.await;
    };
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => watchdog(),
        }
    }
}

/// `STATUS=text` (`systemctl status` shows it), when it changed.
pub fn status(text: &str) {
    let Some(n) = notifier() else { return };
    let mut last = n.status.lock().expect("not poisoned");
    if *last != text {
        text.clone_into(&mut last);
        // One line: systemd shows the status as is.
        n.post(Msg::Status(text.replace('\n', " ")));
    }
}

/// `STOPPING=1`: a stop was asked for; what was received is being archived. Waits up to a
/// second for it to go (the process may end soon after).
pub fn stopping() {
    if let Some(n) = notifier() {
        let (done, went) = sync_channel(1);
        n.post(Msg::Stopping(done));
        let _ = went.recv_timeout(Duration::from_secs(1));
    }
}

/// The one-line `STATUS=` text of a streamer's status report.
pub fn status_line(st: &crate::ingest::status::StreamStatus) -> String {
    let mut s = if st.connected {
        format!(
            "streaming timeline {}: received {}, acknowledged {}",
            st.timeline.map_or(0, |t| t.0),
            st.received,
            st.acknowledged
        )
    } else {
        format!(
            "not streaming: {}",
            st.error.as_deref().unwrap_or("disconnected")
        )
    };
    let down: Vec<&str> = st
        .delivery
        .providers
        .iter()
        .filter(|p| !p.up)
        .map(|p| p.name.as_str())
        .collect();
    if !down.is_empty() {
        s.push_str(&format!(
            "; down: {}; spool {} of {} bytes",
            down.join(", "),
            st.delivery.spool_held,
            st.delivery.spool_limit
        ));
    }
    if !st.delivery.acknowledging && !st.delivery.providers.is_empty() {
        s.push_str("; spool full: not acknowledging");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wal::{Lsn, TimelineId};
    use crate::ingest::outbox::{Health, ProviderHealth};
    use crate::ingest::status::StreamStatus;

    #[test]
    fn the_watchdog_interval_is_read_as_sd_watchdog_enabled_does() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        // Meant for another process (e.g. the parent of a child that inherited it).
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn the_status_line_says_what_status_would() {
        let mut st = StreamStatus {
            pid: 1,
            updated: 0,
            timeline: Some(TimelineId(2)),
            received: Lsn(0x300_0000),
            acknowledged: Lsn(0x200_0000),
            connected: true,
            error: None,
            delivery: Health {
                providers: vec![
                    ProviderHealth {
                        name: "local".into(),
                        up: true,
                        ..Default::default()
                    },
                    ProviderHealth {
                        name: "offsite".into(),
                        up: false,
                        ..Default::default()
                    },
                ],
                spool_held: 100,
                spool_limit: 1000,
                acknowledging: true,
            },
        };
        assert_eq!(
            status_line(&st),
            "streaming timeline 2: received 0/3000000, acknowledged 0/2000000; down: offsite; spool 100 of 1000 bytes"
        );
        st.connected = false;
        st.error = Some("cannot connect: connection refused".into());
        st.delivery.providers[1].up = true;
        assert_eq!(
            status_line(&st),
            "not streaming: cannot connect: connection refused"
        );
        st.delivery.acknowledging = false;
        assert_eq!(
            status_line(&st),
            "not streaming: cannot connect: connection refused; spool full: not acknowledging"
        );
    }
}
