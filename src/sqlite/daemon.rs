//! `lifeboat sqlite run`: the daemon of a host of SQLite services. Each `[[sqlite]]`
//! database is a job of the schedule engine (`core::schedule`, an interval job named after
//! the database, `[[sqlite]] every`, else `[schedule] sqlite`, else hourly); due snapshots
//! are taken one at a time, in this process. A database that is locked, missing or
//! replaced fails its own run (logged, reported, retried after `retry_after(every)`) and
//! the others go on. `<spool>/sqlite-status.json` says what each database last did and how
//! each provider fared; `lifeboat status` reads it.
//!
//! Stop (SIGTERM, SIGINT, or `stop`): a snapshot in progress is abandoned and its parts
//! removed; without `snapshot.json` it was never visible.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::archive::Archive;
use crate::config::Config;
use crate::core::fmt;
use crate::core::plan::Timestamp;
use crate::core::schedule::{self, Cadence, JobSpec, Seen};
use crate::core::sqlite::SnapshotKind;
use crate::ingest::outbox::ProviderHealth;
use crate::ingest::status::{self, SqliteDbStatus, SqliteRunStatus, SQLITE_BEAT_SECS};
use crate::storage::StorageError;

fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

fn unix(t: Timestamp) -> u64 {
    t.0.div_euclid(1_000_000).max(0) as u64
}

/// The daemon's view of the host: one job per database, and what it reports.
struct State {
    jobs: Vec<(JobSpec, Seen)>,
    report: SqliteRunStatus,
}

impl State {
    fn db(&mut self, name: &str) -> &mut SqliteDbStatus {
        self.report
            .databases
            .iter_mut()
            .find(|d| d.name == name)
            .expect("every job has a status")
    }

    fn write(&mut self, spool: &std::path::Path) {
        self.report.updated = status::now();
        for (spec, seen) in &self.jobs {
            let due = schedule::next_due(spec, seen, 0);
            let d = self
                .report
                .databases
                .iter_mut()
                .find(|d| d.name == spec.name)
                .expect("every job has a status");
            d.next_due = Some(if due.0 == i64::MIN { 0 } else { unix(due) });
        }
        if let Err(e) = status::write_sqlite(spool, &self.report) {
            tracing::warn!(error = %e, "cannot write {}", status::sqlite_path(spool).display());
        }
    }

    /// What the archive holds: a snapshot taken by hand (or by another host's schedule)
    /// counts as this database's last success.
    async fn adopt_archive(&mut self, archive: &Archive) {
        let snaps = match archive.sqlite_snapshots(None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list the archive's SQLite snapshots; the schedule goes by this process's own runs");
                return;
            }
        };
        let mut newest: HashMap<&str, (&str, Timestamp, Timestamp)> = HashMap::new();
        for s in &snaps {
            let e = newest
                .entry(&s.name)
                .or_insert((&s.id, s.start_time, s.time));
            if s.start_time > e.1 {
                *e = (&s.id, s.start_time, s.time);
            }
        }
        for i in 0..self.jobs.len() {
            let name = self.jobs[i].0.name.clone();
            if let Some((id, start, time)) = newest.get(name.as_str()).copied() {
                let seen = &mut self.jobs[i].1;
                if seen.last_success.map_or(true, |t| start > t) {
                    seen.last_success = Some(start);
                    if seen.last_failure.is_some_and(|f| f <= start) {
                        seen.last_failure = None;
                    }
                }
                let d = self.db(&name);
                if d.last_snapshot_time.map_or(true, |t| unix(time) > t) {
                    d.last_snapshot = Some(id.to_string());
                    d.last_snapshot_time = Some(unix(time));
                }
            }
        }
    }

    /// The providers after a run: all up when it stored a snapshot; the one named by a
    /// storage error down when it failed there.
    fn providers_after(&mut self, r: &Result<()>, at: u64) {
        match r {
            Ok(()) => {
                for p in &mut self.report.providers {
                    *p = ProviderHealth {
                        name: p.name.clone(),
                        up: true,
                        ..Default::default()
                    };
                }
            }
            Err(e) => {
                let Some(se) = e.chain().find_map(|c| c.downcast_ref::<StorageError>()) else {
                    return;
                };
                if let Some(p) = self
                    .report
                    .providers
                    .iter_mut()
                    .find(|p| p.name == se.provider)
                {
                    p.up = false;
                    p.error = Some(se.to_string());
                    p.down_since.get_or_insert(at);
                }
            }
        }
    }
}

/// Run until `stop` turns true or the process gets SIGTERM/SIGINT.
pub async fn run(cfg: Config, mut stop: watch::Receiver<bool>) -> Result<()> {
    let spool = cfg.wal.spool_dir.clone();
    std::fs::create_dir_all(&spool)
        .with_context(|| format!("cannot create spool directory {}", spool.display()))?;
    let archive = Archive::open(&cfg)?;
    let mut st = State {
        jobs: Vec::new(),
        report: SqliteRunStatus {
            pid: std::process::id(),
            updated: 0,
            databases: Vec::new(),
            providers: archive
                .mirror
                .providers
                .iter()
                .map(|p| ProviderHealth {
                    name: p.name().to_string(),
                    up: true,
                    ..Default::default()
                })
                .collect(),
        },
    };
    for db in &cfg.sqlite {
        let every = db.interval(cfg.schedule.as_ref());
        st.jobs.push((
            JobSpec {
                name: db.name.clone(),
                every,
                cadence: Cadence::Interval,
            },
            Seen::default(),
        ));
        st.report.databases.push(SqliteDbStatus {
            name: db.name.clone(),
            path: db.path.display().to_string(),
            every: every.as_secs(),
            ..Default::default()
        });
        tracing::info!(name = %db.name, path = %db.path.display(), every = %fmt::interval(every), "sqlite database scheduled");
    }
    st.adopt_archive(&archive).await;
    st.write(&spool);
    tracing::info!(databases = cfg.sqlite.len(), "sqlite run started");
    loop {
        if *stop.borrow() {
            break;
        }
        let due: Vec<String> = schedule::due(&st.jobs, now(), 0)
            .into_iter()
            .map(|s| s.name.clone())
            .collect();
        if !due.is_empty() {
            // A snapshot taken meanwhile by hand moves a database's turn.
            st.adopt_archive(&archive).await;
        }
        let mut ran = false;
        for name in due {
            let i = st
                .jobs
                .iter()
                .position(|(s, _)| s.name == name)
                .expect("a due job is a job");
            if schedule::next_due(&st.jobs[i].0, &st.jobs[i].1, 0) > now() {
                continue;
            }
            ran = true;
            let db = cfg
                .sqlite
                .iter()
                .find(|d| d.name == name)
                .expect("every job is a database");
            let started = now();
            st.db(&name).running = true;
            st.write(&spool);
            let t0 = std::time::Instant::now();
            // The status file stays fresh during a long snapshot (status reads a silent
            // daemon as stopped).
            let snap = crate::sqlite::snapshot::run_until(&cfg, db, false, Some(stop.clone()));
            tokio::pin!(snap);
            let mut beat = tokio::time::interval(Duration::from_secs(SQLITE_BEAT_SECS));
            beat.tick().await;
            let r = loop {
                tokio::select! {
                    r = &mut snap => break r,
                    _ = beat.tick() => st.write(&spool),
                }
            };
            let secs = t0.elapsed().as_secs_f64();
            if *stop.borrow() && r.is_err() {
                tracing::warn!(
                    name,
                    "snapshot abandoned: sqlite run is stopping (nothing of it is visible)"
                );
                st.db(&name).running = false;
                break;
            }
            let every = st.jobs[i].0.every;
            let d = st.db(&name);
            d.running = false;
            d.last_run = Some(unix(started));
            let r = match r {
                Ok((m, why)) => {
                    tracing::info!(
                        name,
                        id = %m.id,
                        kind = match m.kind { SnapshotKind::Full => "full", SnapshotKind::Delta => "delta" },
                        why,
                        pages = m.pages_stored(),
                        of = m.page_count,
                        stored = %fmt::size(m.stored_size),
                        secs = format!("{secs:.2}"),
                        "sqlite snapshot done"
                    );
                    d.last_run_ok = Some(true);
                    d.last_error = None;
                    d.last_snapshot = Some(m.id.clone());
                    d.last_snapshot_time = Some(unix(m.time));
                    st.jobs[i].1 = Seen {
                        last_success: Some(started),
                        last_failure: None,
                    };
                    Ok(())
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let retry = schedule::retry_after(every);
                    tracing::error!(name, error = %msg, retry_in = %fmt::interval(retry), "sqlite snapshot failed; the other databases go on");
                    d.last_run_ok = Some(false);
                    d.last_error = Some(msg);
                    st.jobs[i].1.last_failure = Some(started);
                    Err(e)
                }
            };
            st.providers_after(&r, unix(started));
            st.write(&spool);
            if *stop.borrow() {
                break;
            }
        }
        if ran {
            continue;
        }
        let next = schedule::next_wake(&st.jobs, 0).unwrap_or(Timestamp(i64::MAX));
        let wait_us = next
            .0
            .saturating_sub(now().0)
            .clamp(100_000, SQLITE_BEAT_SECS as i64 * 1_000_000);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_micros(wait_us as u64)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        st.write(&spool);
    }
    st.write(&spool);
    tracing::info!("sqlite run stopped");
    Ok(())
}

/// A stop channel that turns true on SIGTERM or SIGINT.
pub fn stop_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut t) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stopping: a snapshot in progress is abandoned");
        let _ = tx.send(true);
    });
    rx
}
