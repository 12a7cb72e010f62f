//! Prometheus metrics of the daemon (`[metrics] listen`; docs/ALERTS.md lists each one and
//! the alert rules that use them).
//!
//! One registry per process ([`get`]). The data path only bumps atomics: each provider's
//! write records its bytes and latency, the streaming loop records the server's position
//! and what was acknowledged and reported. Everything else (provider up, spool, the
//! archive's newest backup, drill and prune) is read when Prometheus scrapes: the streamer's
//! status snapshot at once, the archive at most once a minute (a scrape never waits on a
//! provider for long, and never lists an S3 bucket every 15 s).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::archive::Archive;
use crate::core::wal::Lsn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// No labels: the `last_*` metrics are families so that they are absent (not 0) until the
/// archive has such a record: an alert on "no drill" must not read 0 as "failed".
type NoLabels = Vec<(String, String)>;
const NONE: &NoLabels = &Vec::new();

/// Every metric lifeboat exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    // Bumped on the data path.
    uploaded_objects: Family<ProviderLabel, Counter>,
    uploaded_bytes: Family<ProviderLabel, Counter>,
    upload_failures: Family<ProviderLabel, Counter>,
    upload_seconds: Family<ProviderLabel, Histogram>,
    last_upload: Family<ProviderLabel, FGauge>,
    // Set at scrape time.
    streaming: Gauge,
    received_lsn: Gauge,
    acknowledged_lsn: Gauge,
    server_lsn: Gauge,
    lag_bytes: Gauge,
    lag_seconds: FGauge,
    slot_retained_bytes: Gauge,
    provider_up: Family<ProviderLabel, Gauge>,
    spool_bytes: Gauge,
    spool_limit_bytes: Gauge,
    last_backup_end: Family<NoLabels, FGauge>,
    last_backup_duration: Family<NoLabels, FGauge>,
    last_drill: Family<NoLabels, FGauge>,
    last_drill_success: Family<NoLabels, Gauge>,
    last_prune: Family<NoLabels, FGauge>,
    rto_estimate: Family<NoLabels, FGauge>,
    rto_target: Family<NoLabels, FGauge>,
    archive_read_ok: Gauge,
    // What the streaming loop tells.
    positions: Mutex<Positions>,
    archive_cache: Mutex<Option<(Instant, ArchiveFigures)>>,
}

/// The streaming loop's positions, and when the server first showed each stretch of WAL
/// (for the lag in seconds: how long ago the server had the oldest WAL not yet stored).
#[derive(Default)]
struct Positions {
    server: Lsn,
    reported: Lsn,
    /// (end, first seen), increasing; at most one sample per 100 ms.
    seen: VecDeque<(Lsn, Instant)>,
}

#[derive(Clone, Copy, Default)]
struct ArchiveFigures {
    ok: bool,
    backup_end: Option<f64>,
    backup_duration: Option<f64>,
    drill: Option<(f64, bool)>,
    prune: Option<f64>,
    /// The RTO estimate at the listing's WAL end, that end, and the replay rate (a newer
    /// acknowledged position adds its WAL at that rate).
    rto: Option<(f64, Lsn, f64)>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("lifeboat")),
            uploaded_objects: Family::default(),
            uploaded_bytes: Family::default(),
            upload_failures: Family::default(),
            upload_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            last_upload: Family::default(),
            streaming: Gauge::default(),
            received_lsn: Gauge::default(),
            acknowledged_lsn: Gauge::default(),
            server_lsn: Gauge::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: FGauge::default(),
            slot_retained_bytes: Gauge::default(),
            provider_up: Family::default(),
            spool_bytes: Gauge::default(),
            spool_limit_bytes: Gauge::default(),
            last_backup_end: Family::default(),
            last_backup_duration: Family::default(),
            last_drill: Family::default(),
            last_drill_success: Family::default(),
            last_prune: Family::default(),
            rto_estimate: Family::default(),
            rto_target: Family::default(),
            archive_read_ok: Gauge::default(),
            positions: Mutex::new(Positions::default()),
            archive_cache: Mutex::new(None),
        };
        {
            let mut r = m.registry.lock().expect("not poisoned");
            r.register(
                "uploaded_objects",
                "Objects stored, per provider",
                m.uploaded_objects.clone(),
            );
            r.register(
                "uploaded_bytes",
                "Bytes stored (sealed: compressed and encrypted), per provider",
                m.uploaded_bytes.clone(),
            );
            r.register(
                "upload_failures",
                "Failed object writes (each is retried), per provider",
                m.upload_failures.clone(),
            );
            r.register(
                "upload_duration_seconds",
                "Time to store one WAL object on a provider",
                m.upload_seconds.clone(),
            );
            r.register(
                "provider_last_upload_timestamp_seconds",
                "When a provider last stored an object (Unix time)",
                m.last_upload.clone(),
            );
            r.register(
                "streaming",
                "1 while connected to PostgreSQL and streaming WAL",
                m.streaming.clone(),
            );
            r.register(
                "wal_received_lsn",
                "Newest WAL position received from the server, as a byte position",
                m.received_lsn.clone(),
            );
            r.register(
                "wal_acknowledged_lsn",
                "Newest WAL position stored on every provider (or the fsync'd spool), as a byte position",
                m.acknowledged_lsn.clone(),
            );
            r.register(
                "server_wal_lsn",
                "The server's newest WAL position as it last said, as a byte position",
                m.server_lsn.clone(),
            );
            r.register(
                "archive_lag_bytes",
                "WAL the server has that is not yet stored (server position minus acknowledged)",
                m.lag_bytes.clone(),
            );
            r.register(
                "archive_lag_seconds",
                "How long ago the server had the oldest WAL not yet stored (0: caught up)",
                m.lag_seconds.clone(),
            );
            r.register(
                "slot_retained_bytes",
                "WAL the replication slot holds on the server (server position minus the flush position last reported)",
                m.slot_retained_bytes.clone(),
            );
            r.register(
                "provider_up",
                "1 while the provider accepts writes, 0 while it is down",
                m.provider_up.clone(),
            );
            r.register(
                "spool_bytes",
                "Bytes held in the local spool for providers that are down",
                m.spool_bytes.clone(),
            );
            r.register(
                "spool_limit_bytes",
                "spool.max_size: past it nothing new is acknowledged",
                m.spool_limit_bytes.clone(),
            );
            r.register(
                "last_backup_end_timestamp_seconds",
                "End of the newest base backup in the archive (Unix time)",
                m.last_backup_end.clone(),
            );
            r.register(
                "last_backup_duration_seconds",
                "How long the newest base backup took",
                m.last_backup_duration.clone(),
            );
            r.register(
                "last_drill_timestamp_seconds",
                "Start of the newest restore drill recorded in the archive (Unix time)",
                m.last_drill.clone(),
            );
            r.register(
                "last_drill_success",
                "1 if the newest restore drill passed, 0 if it failed",
                m.last_drill_success.clone(),
            );
            r.register(
                "last_prune_timestamp_seconds",
                "When the newest prune report was written (Unix time)",
                m.last_prune.clone(),
            );
            r.register(
                "rto_estimate_seconds",
                "How long a restore to the newest point would take now (the RTO budget: the newest restorable backup, the WAL since, the rates the last drills measured)",
                m.rto_estimate.clone(),
            );
            r.register(
                "rto_target_seconds",
                "schedule.rto_target (absent when unset)",
                m.rto_target.clone(),
            );
            r.register(
                "archive_read_ok",
                "1 if the last read of the archive's records (for the last_* metrics) worked",
                m.archive_read_ok.clone(),
            );
        }
        m
    }

    /// `schedule.rto_target`, exported beside the estimate.
    pub fn set_rto_target(&self, target: Duration) {
        self.rto_target
            .get_or_create(NONE)
            .set(target.as_secs_f64());
    }

    /// One object stored on `provider`.
    pub fn stored(&self, provider: &str, bytes: u64, took: Duration) {
        let l = ProviderLabel {
            provider: provider.to_string(),
        };
        self.uploaded_objects.get_or_create(&l).inc();
        self.uploaded_bytes.get_or_create(&l).inc_by(bytes);
        self.upload_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        self.last_upload.get_or_create(&l).set(unix_now());
    }

    /// One write to `provider` failed (it is retried).
    pub fn store_failed(&self, provider: &str) {
        self.upload_failures
            .get_or_create(&ProviderLabel {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// The server said its WAL ends at `end` (XLogData or keepalive).
    pub fn server_at(&self, end: Lsn) {
        let mut p = self.positions.lock().expect("not poisoned");
        if end <= p.server {
            return;
        }
        p.server = end;
        let now = Instant::now();
        match p.seen.back_mut() {
            // Within 100 ms of the last sample: extend it (its time stays the first seen).
            Some(last) if now.duration_since(last.1) < Duration::from_millis(100) => last.0 = end,
            _ => {
                p.seen.push_back((end, now));
                if p.seen.len() > 100_000 {
                    p.seen.pop_front();
                }
            }
        }
    }

    /// The flush position just sent to the server (what the slot's restart_lsn follows).
    pub fn reported(&self, flush: Lsn) {
        self.positions.lock().expect("not poisoned").reported = flush;
    }

    /// Set the gauges from the streamer's snapshot and the archive, and encode.
    pub async fn render(
        &self,
        status: Option<&crate::ingest::status::StreamStatus>,
        archive: Option<&Archive>,
    ) -> String {
        if let Some(st) = status {
            self.streaming.set(i64::from(st.connected));
            self.received_lsn.set(st.received.0 as i64);
            let (server, reported, acked, lag_s) = {
                let mut p = self.positions.lock().expect("not poisoned");
                // The status snapshot is up to a second old; what was last reported to the
                // server is live and never ahead of what is acknowledged.
                let acked = st.acknowledged.max(p.reported);
                while p.seen.front().is_some_and(|s| s.0 <= acked) {
                    p.seen.pop_front();
                }
                let lag = p.seen.front().map_or(0.0, |s| s.1.elapsed().as_secs_f64());
                (p.server.max(st.received), p.reported, acked, lag)
            };
            self.acknowledged_lsn.set(acked.0 as i64);
            self.server_lsn.set(server.0 as i64);
            self.lag_bytes.set(server.0.saturating_sub(acked.0) as i64);
            self.lag_seconds.set(lag_s);
            if reported != Lsn::INVALID {
                self.slot_retained_bytes
                    .set(server.0.saturating_sub(reported.0) as i64);
            }
            for p in &st.delivery.providers {
                self.provider_up
                    .get_or_create(&ProviderLabel {
                        provider: p.name.clone(),
                    })
                    .set(i64::from(p.up));
            }
            self.spool_bytes.set(st.delivery.spool_held as i64);
            self.spool_limit_bytes.set(st.delivery.spool_limit as i64);
        }
        if let Some(a) = archive {
            let f = self.archive_figures(a).await;
            self.archive_read_ok.set(i64::from(f.ok));
            if let Some(t) = f.backup_end {
                self.last_backup_end.get_or_create(NONE).set(t);
            }
            if let Some(d) = f.backup_duration {
                self.last_backup_duration.get_or_create(NONE).set(d);
            }
            if let Some((t, ok)) = f.drill {
                self.last_drill.get_or_create(NONE).set(t);
                self.last_drill_success
                    .get_or_create(NONE)
                    .set(i64::from(ok));
            }
            if let Some(t) = f.prune {
                self.last_prune.get_or_create(NONE).set(t);
            }
            if let Some((secs, end, rate)) = f.rto {
                let acked = status.map_or(end, |s| s.acknowledged.max(end));
                let more = acked.0.saturating_sub(end.0) as f64 / rate;
                self.rto_estimate.get_or_create(NONE).set(secs + more);
            }
        }
        let mut out = String::new();
        let r = self.registry.lock().expect("not poisoned");
        if let Err(e) = encode(&mut out, &r) {
            tracing::debug!(error = %e, "cannot encode the metrics");
        }
        out
    }

    async fn archive_figures(&self, archive: &Archive) -> ArchiveFigures {
        if let Some((at, f)) = *self.archive_cache.lock().expect("not poisoned") {
            if at.elapsed() < Duration::from_secs(60) {
                return f;
            }
        }
        let read = async {
            let secs = |t: crate::core::plan::Timestamp| t.0 as f64 / 1e6;
            let mut f = ArchiveFigures {
                ok: true,
                ..Default::default()
            };
            if let Some(b) = archive.backups().await?.iter().max_by_key(|b| b.end_time) {
                f.backup_end = Some(secs(b.end_time));
                f.backup_duration = Some((b.end_time.0 - b.start_time.0) as f64 / 1e6);
            }
            if let Some(d) = archive.drills().await?.last() {
                let t = crate::core::plan::Timestamp::parse_utc(&d.started_at)
                    .map(secs)
                    .unwrap_or(0.0);
                f.drill = Some((t, d.ok));
            }
            let list = crate::archive::summary::run(archive, None).await?;
            f.rto = list
                .rto
                .map(|e| (e.seconds, e.wal_end, e.rates.replay.bytes_per_second));
            f.prune = archive
                .newest_prune()
                .await?
                .and_then(|id| crate::core::retention::backup_id_time(&id))
                .map(secs);
            anyhow::Ok(f)
        };
        let f = match tokio::time::timeout(Duration::from_secs(20), read).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "metrics: cannot read the archive");
                ArchiveFigures::default()
            }
            Err(_) => ArchiveFigures::default(),
        };
        *self.archive_cache.lock().expect("not poisoned") = Some((Instant::now(), f));
        f
    }
}

/// Listen on `addr` (an error if it cannot) and serve `GET /metrics` there from a task.
/// The status snapshot is the streamer's `<spool>/status.json` (the file `status` reads,
/// rewritten every second); the archive is `cfg`'s.
pub async fn start(
    addr: SocketAddr,
    cfg: &crate::config::Config,
) -> Result<tokio::task::JoinHandle<()>> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("metrics.listen: cannot listen on {addr}\nhint: is another process using the port? pick another one in [metrics] listen")
    })?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    let archive = Arc::new(Archive::open(cfg)?);
    let spool = Arc::new(cfg.wal.spool_dir.clone());
    let metrics = get();
    if let Some(t) = cfg.schedule.as_ref().and_then(|s| s.rto_target) {
        metrics.set_rto_target(t);
    }
    Ok(tokio::spawn(async move {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (archive, spool) = (archive.clone(), spool.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (archive, spool) = (archive.clone(), spool.clone());
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let st = crate::ingest::status::read(&spool);
                            let body = metrics.render(st.as_ref(), Some(&archive)).await;
                            Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(
                                    b"lifeboat: metrics are at /metrics\n",
                                )))
                        };
                        resp
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics: connection ended");
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lag_follows_what_the_server_has_and_what_is_stored() {
        let m = Metrics::new();
        m.server_at(Lsn(1000));
        m.reported(Lsn(400));
        let mut st = crate::ingest::status::StreamStatus {
            pid: 1,
            updated: 0,
            timeline: None,
            received: Lsn(900),
            acknowledged: Lsn(500),
            connected: true,
            error: None,
            delivery: Default::default(),
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let text = m.render(Some(&st), None).await;
        assert!(text.contains("lifeboat_archive_lag_bytes 500\n"), "{text}");
        assert!(
            text.contains("lifeboat_slot_retained_bytes 600\n"),
            "{text}"
        );
        assert!(text.contains("lifeboat_server_wal_lsn 1000\n"), "{text}");
        let lag: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lifeboat_archive_lag_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(lag >= 0.03, "{lag}");
        // Caught up: no lag.
        st.acknowledged = Lsn(1000);
        let text = m.render(Some(&st), None).await;
        assert!(
            text.contains("lifeboat_archive_lag_seconds 0.0\n"),
            "{text}"
        );
        assert!(text.contains("lifeboat_archive_lag_bytes 0\n"), "{text}");
        // No archive read: the last_* metrics are absent, not 0.
        assert!(!text.contains("lifeboat_last_drill_success"), "{text}");
        m.last_drill_success.get_or_create(NONE).set(1);
        let text = m.render(None, None).await;
        assert!(text.contains("\nlifeboat_last_drill_success 1\n"), "{text}");
        // Uploads per provider.
        m.stored("s3", 4096, Duration::from_millis(20));
        m.store_failed("s3");
        let text = m.render(None, None).await;
        assert!(
            text.contains("lifeboat_uploaded_bytes_total{provider=\"s3\"} 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_upload_failures_total{provider=\"s3\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lifeboat_upload_duration_seconds_bucket{le=\"0.025\",provider=\"s3\"} 1\n"
            ) || text.contains(
                "lifeboat_upload_duration_seconds_bucket{provider=\"s3\",le=\"0.025\"} 1\n"
            ),
            "{text}"
        );
    }
}
