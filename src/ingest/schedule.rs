//! The schedule, run: the daemon's jobs (base backup, drill, verify, dump, prune, exports)
//! started when `core::schedule` says they are due, one at a time, each as a child
//! `lifeboat` process with the same configuration, so a job that fails, hangs or runs out
//! of memory never touches the WAL stream. Every run is recorded in
//! `<spool>/schedule.json` (what `status` and `lifeboat schedule` read).
//!
//! What was last done comes from the archive (a backup or drill taken by hand, or a drill
//! run on the restore host, counts) and from that record (verify, failures). Jobs never
//! overlap here, and `lifeboat backup` holds `<spool>/backup.lock`, so a backup started by
//! hand while a scheduled one runs is refused (and the other way round).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::archive::Archive;
use crate::config::Config;
use crate::core::plan::Timestamp;
use crate::core::rto;
use crate::core::schedule::{self, Cadence, JobSpec, Seen};

const FILE: &str = "schedule.json";
const KEPT_RUNS: usize = 200;
/// How long a job may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// One recorded run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub job: String,
    pub started: String,
    pub ended: String,
    pub ok: bool,
    /// The job's `error:` and `hint:` lines (or how it ended) when it failed.
    pub error: Option<String>,
}

/// `<spool>/schedule.json`: the newest runs, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub runs: Vec<Run>,
}

pub fn record_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// The record, if there is one (a damaged file reads as empty: it is a log, not state).
pub fn read_record(spool_dir: &Path) -> Record {
    std::fs::read(record_path(spool_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn append_run(spool_dir: &Path, run: Run) -> Result<()> {
    let mut rec = read_record(spool_dir);
    rec.runs.push(run);
    let drop = rec.runs.len().saturating_sub(KEPT_RUNS);
    rec.runs.drain(..drop);
    let path = record_path(spool_dir);
    let bytes = serde_json::to_vec_pretty(&rec)?;
    crate::storage::durable::replace(&path, &path.with_extension("json.tmp"), &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The newest run of each job, as `status` shows them.
pub fn last_runs(rec: &Record) -> Vec<&Run> {
    let mut out: Vec<&Run> = Vec::new();
    for r in rec.runs.iter().rev() {
        if !out.iter().any(|o| o.job == r.job) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.job.cmp(&b.job));
    out
}

/// Whether this host can decrypt (drills need the identity; the database host should not).
pub fn identity_here(cfg: &Config) -> bool {
    cfg.encryption.identity_file.is_some() || std::env::var_os("LIFEBOAT_IDENTITY_FILE").is_some()
}

/// A job and the command line (after `lifeboat --config FILE`) that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub spec: JobSpec,
    pub args: Vec<String>,
}

/// The jobs `cfg` schedules on this host, base backup first (the SQLite snapshots' last
/// runs come from the local record only); and what is left out, said
/// once at start.
pub fn jobs(cfg: &Config, identity_here: bool) -> (Vec<Job>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let Some(s) = &cfg.schedule else {
        return (out, notes);
    };
    let interval = |name: &str, every: Duration, args: &[&str]| Job {
        spec: JobSpec {
            name: name.into(),
            every,
            cadence: Cadence::Interval,
        },
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    let streams_here = !cfg.postgres.conninfo.is_empty();
    if let Some(every) = s.backup {
        if streams_here {
            let mut j = interval("backup", every, &["backup"]);
            if let Some(parent) = &s.backup_incremental {
                j.args.push(format!("--incremental={parent}"));
            }
            if let Some(at) = s.backup_at {
                j.spec.cadence = Cadence::Slots { at };
            }
            out.push(j);
        } else {
            notes.push("base backups are not scheduled here: no postgres.conninfo".into());
        }
    }
    if let Some(every) = s.drill {
        if identity_here {
            let mut j = interval("drill", every, &["drill"]);
            j.spec.cadence = Cadence::Window;
            j.args.extend(s.drill_args.iter().cloned());
            out.push(j);
        } else {
            notes.push(format!(
                "restore drills are not run on this host (it holds no identity, as it should): run `lifeboat schedule --run` (or `lifeboat drill`) on the restore host; `status` warns once the last drill is older than {}",
                crate::core::fmt::interval(every)
            ));
        }
    }
    if let Some(every) = s.verify {
        out.push(interval("verify", every, &["verify"]));
    }
    if let Some(every) = s.dump {
        if streams_here {
            out.push(interval("dump", every, &["dump"]));
        } else {
            notes.push("dumps are not scheduled here: no postgres.conninfo".into());
        }
    }
    if let Some(every) = s.prune {
        out.push(interval("prune", every, &["prune"]));
    }
    if let Some(every) = s.sqlite {
        if cfg.sqlite.is_empty() {
            notes.push("schedule.sqlite is set but no [[sqlite]] database is configured".into());
        } else {
            out.push(interval("sqlite", every, &["sqlite", "snapshot"]));
        }
    }
    for e in &cfg.export {
        if let Some(every) = e.every {
            out.push(interval(
                &format!("export:{}", e.name),
                every,
                &["put", &e.name],
            ));
        }
    }
    (out, notes)
}

fn parse_time(s: &str) -> Option<Timestamp> {
    Timestamp::parse_utc(s)
        .ok()
        .or_else(|| crate::core::retention::backup_id_time(s))
}

/// What is known of each job: the archive's records (where it answers) and the local one.
pub async fn seen(archive: &Archive, rec: &Record, jobs: &[Job]) -> Vec<(JobSpec, Seen)> {
    let newest = |t: &mut Option<Timestamp>, n: Option<Timestamp>| {
        if n > *t {
            *t = n;
        }
    };
    let mut out = Vec::new();
    for job in jobs {
        let name = job.spec.name.as_str();
        let mut seen = Seen::default();
        for r in rec.runs.iter().filter(|r| r.job == name) {
            let t = parse_time(&r.started);
            if r.ok {
                newest(&mut seen.last_success, t);
            } else {
                newest(&mut seen.last_failure, t);
            }
        }
        // The archive knows of runs made by hand or on another host.
        let from_archive: Result<Option<Timestamp>> = match name {
            "backup" => archive
                .backups()
                .await
                .map(|b| b.iter().map(|m| m.start_time).max()),
            "drill" => archive.drills().await.map(|d| {
                d.iter()
                    .filter(|d| d.ok)
                    .filter_map(|d| parse_time(&d.started_at))
                    .max()
            }),
            "dump" => archive
                .dumps()
                .await
                .map(|d| d.iter().map(|m| m.start_time).max()),
            "prune" => archive
                .newest_prune()
                .await
                .map(|p| p.and_then(|id| crate::core::retention::backup_id_time(&id))),
            n if n.starts_with("export:") => archive.exports().await.map(|e| {
                e.iter()
                    .filter(|m| Some(m.name.as_str()) == n.strip_prefix("export:"))
                    .map(|m| m.start_time)
                    .max()
            }),
            _ => Ok(None),
        };
        match from_archive {
            Ok(t) => newest(&mut seen.last_success, t),
            Err(e) => {
                tracing::debug!(job = name, error = %format!("{e:#}"), "archive not readable for the schedule")
            }
        }
        if seen.last_failure <= seen.last_success {
            seen.last_failure = None;
        }
        out.push((job.spec.clone(), seen));
    }
    out
}

/// The seed of drill times: the archive's system identifier, so every host of one archive
/// agrees, and a restart does not move the time.
pub async fn seed(archive: &Archive) -> u64 {
    archive
        .meta()
        .await
        .ok()
        .flatten()
        .and_then(|m| m.system_identifier.parse().ok())
        .unwrap_or(0)
}

/// Run the schedule until `stop` turns true (or the process gets SIGTERM/SIGINT).
pub async fn run(cfg: Config, config_path: PathBuf, mut stop: watch::Receiver<bool>) -> Result<()> {
    let (jobs, notes) = jobs(&cfg, identity_here(&cfg));
    for n in notes {
        tracing::info!("{n}");
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let spool = cfg.wal.spool_dir.clone();
    std::fs::create_dir_all(&spool)
        .with_context(|| format!("cannot create spool directory {}", spool.display()))?;
    let archive = Archive::open(&cfg)?;
    let exe = std::env::current_exe().context("cannot find the lifeboat executable")?;
    let names: Vec<&str> = jobs.iter().map(|j| j.spec.name.as_str()).collect();
    tracing::info!(jobs = %names.join(", "), "schedule started");
    let mut signals = Signals::new();
    let mut seed_v = seed(&archive).await;
    // With schedule.rto_target, the backup the RTO budget asks for: the scheduled backup's
    // own job (so it counts as one), incremental where the server can take one.
    let rto_target = cfg.schedule.as_ref().and_then(|s| s.rto_target);
    let rto_backup = jobs.iter().find(|j| j.spec.name == "backup").map(|j| {
        let mut j = j.clone();
        if !j.args.iter().any(|a| a.starts_with("--incremental")) {
            j.args.push("--incremental=latest".into());
        }
        j.args.extend(["--label".to_string(), "rto".to_string()]);
        j
    });
    if rto_target.is_some() && rto_backup.is_none() {
        tracing::info!("schedule.rto_target is set but base backups are not scheduled here: the RTO budget is only shown");
    }
    let mut unreachable_said = false;
    loop {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let rec = read_record(&spool);
        let known = seen(&archive, &rec, &jobs).await;
        if seed_v == 0 {
            seed_v = seed(&archive).await;
        }
        let due: Vec<String> = schedule::due(&known, now, seed_v)
            .into_iter()
            .map(|s| s.name.clone())
            .collect();
        if let Some(name) = due.first() {
            let job = jobs
                .iter()
                .find(|j| &j.spec.name == name)
                .expect("due jobs are scheduled jobs");
            let run = run_job(&exe, &config_path, job, &mut stop, &mut signals).await;
            let Some(run) = run else {
                return Ok(()); // stopped
            };
            if run.ok {
                tracing::info!(job = %run.job, "scheduled run done");
            } else {
                tracing::error!(job = %run.job, error = %run.error.as_deref().unwrap_or(""), "scheduled run failed; it is tried again later");
            }
            if let Err(e) = append_run(&spool, run) {
                tracing::error!(error = %format!("{e:#}"), "cannot record the scheduled run");
            }
            continue;
        }
        // The RTO budget: a base backup when a restore would now take longer than the target.
        if let (Some(target), Some(backup)) = (rto_target, &rto_backup) {
            match rto_decision(&archive, &spool, target).await {
                Ok((rto::Decision::Backup, est)) => {
                    tracing::warn!(estimate = %est.describe(), target = %crate::core::fmt::interval(target), "the estimated restore time passed schedule.rto_target: taking a base backup");
                    let Some(run) =
                        run_job(&exe, &config_path, backup, &mut stop, &mut signals).await
                    else {
                        return Ok(());
                    };
                    if run.ok {
                        tracing::info!("the base backup for the RTO budget is done");
                    } else {
                        tracing::error!(error = %run.error.as_deref().unwrap_or(""), "the base backup for the RTO budget failed; it is tried again later");
                    }
                    if let Err(e) = append_run(&spool, run) {
                        tracing::error!(error = %format!("{e:#}"), "cannot record the scheduled run");
                    }
                    unreachable_said = false;
                    continue;
                }
                Ok((rto::Decision::Unreachable, est)) if !unreachable_said => {
                    unreachable_said = true;
                    tracing::warn!(estimate = %est.describe(), target = %crate::core::fmt::interval(target), "schedule.rto_target cannot be met by base backups: restoring the base backup alone takes longer");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "cannot estimate the restore time")
                }
            }
        }
        // Sleep until the next job is due; look again at least hourly (a run by hand or on
        // another host may have moved it, and clocks get set), every few minutes with an
        // RTO target (WAL grows all the time).
        let next = schedule::next_wake(&known, seed_v).unwrap_or(Timestamp(i64::MAX));
        let most = match rto_target {
            // A quarter of the target, between 5 s and 5 min.
            Some(t) => (t.as_micros() as i64 / 4).clamp(5_000_000, RTO_LOOK_US),
            None => 3_600_000_000,
        };
        let wait_us = next.0.saturating_sub(now.0).clamp(1_000_000, most);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_micros(wait_us as u64)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = signals.recv() => return Ok(()),
        }
    }
}

/// How often the RTO budget is looked at at most, in microseconds.
const RTO_LOOK_US: i64 = 300_000_000;

/// The RTO estimate now (the archive's listing, and this host's streamer's acknowledged
/// position when it is newer) and what the budget asks for.
pub async fn rto_decision(
    archive: &Archive,
    spool: &Path,
    target: Duration,
) -> Result<(rto::Decision, rto::Estimate)> {
    let report = crate::archive::summary::run(archive, None).await?;
    let acked = crate::ingest::status::read(spool).map(|s| s.acknowledged);
    let est = report
        .rto_at(acked)
        .context("no restorable base backup to estimate from")?;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let since = report
        .backups
        .iter()
        .filter_map(|b| Timestamp::parse_utc(&b.start_time).ok())
        .max()
        .map(|t| Duration::from_micros(now.0.saturating_sub(t.0).max(0) as u64));
    Ok((rto::decide(&est, target, since), est))
}

/// SIGTERM and SIGINT, listened to by the schedule itself (the streamer has its own).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        match &mut self.term {
            Some(t) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Run one job to its end; None when a stop came first (the job is asked to stop with
/// SIGTERM, and killed after [`STOP_GRACE`]).
async fn run_job(
    exe: &Path,
    config_path: &Path,
    job: &Job,
    stop: &mut watch::Receiver<bool>,
    signals: &mut Signals,
) -> Option<Run> {
    let started = Timestamp::from_system_time(std::time::SystemTime::now());
    tracing::info!(job = %job.spec.name, "scheduled run starting");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config")
        .arg(config_path)
        .args(&job.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Some(Run {
                job: job.spec.name.clone(),
                started: started.rfc3339(),
                ended: started.rfc3339(),
                ok: false,
                error: Some(format!("cannot start {}: {e}", exe.display())),
            })
        }
    };
    // The job's log goes on to ours (one journal); its error and hint lines are kept.
    let stderr = child.stderr.take().expect("piped");
    let name = job.spec.name.clone();
    let tail = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut said: Vec<String> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{name}] {line}");
            if line.starts_with("error:") || line.starts_with("hint:") {
                said.push(line);
            }
        }
        said
    });
    let status = tokio::select! {
        s = child.wait() => s,
        _ = async {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = signals.recv() => {}
            }
        } => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            tracing::warn!(job = %job.spec.name, "scheduled run stopped with the service");
            return None;
        }
    };
    let said = tail.await.unwrap_or_default();
    let ended = Timestamp::from_system_time(std::time::SystemTime::now());
    let (ok, error) = match status {
        Ok(s) if s.success() => (true, None),
        Ok(s) => (
            false,
            Some(if said.is_empty() {
                format!("lifeboat {} exited with {s}", job.args.join(" "))
            } else {
                said.join("\n")
            }),
        ),
        Err(e) => (false, Some(format!("cannot wait for the job: {e}"))),
    };
    Some(Run {
        job: job.spec.name.clone(),
        started: started.rfc3339(),
        ended: ended.rfc3339(),
        ok,
        error,
    })
}

/// `<spool>/backup.lock`, held while a base backup runs on this host (the lock is released
/// by the kernel when the process ends, even by kill -9). The file is removed when the
/// backup ends, so a spool holds nothing of a finished backup: a taker checks, once it has
/// the lock, that the path still names the file it locked (else a remover got there first,
/// and it tries again).
pub struct BackupLock {
    file: std::fs::File,
    path: PathBuf,
}

impl BackupLock {
    pub fn take(spool_dir: &Path) -> Result<BackupLock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(spool_dir)
            .with_context(|| format!("cannot create spool directory {}", spool_dir.display()))?;
        let path = spool_dir.join("backup.lock");
        loop {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: flock(2) on a descriptor this function owns.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let mut held = String::new();
                let _ = f.read_to_string(&mut held);
                anyhow::bail!(
                    "a base backup is already running on this host ({})\nhint: wait for it to end (`lifeboat status`); the schedule and `lifeboat backup` never run two at once",
                    held.trim()
                );
            }
            let same = match (f.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue; // removed by the holder that just finished: take the new one
            }
            let _ = f.set_len(0);
            let _ = f.seek(std::io::SeekFrom::Start(0));
            let _ = write!(
                f,
                "pid {}, started {}",
                std::process::id(),
                Timestamp::from_system_time(std::time::SystemTime::now()).rfc3339()
            );
            return Ok(BackupLock { file: f, path });
        }
    }
}

impl Drop for BackupLock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the descriptor, after this.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}
