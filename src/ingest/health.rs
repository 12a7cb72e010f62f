//! Is this host's archiving healthy? The checks behind `lifeboat status`: the streamer's
//! status file (is it alive, connected, acknowledging; are the providers up; how full is
//! the spool) and the archive (the newest backup, the last drill).
//! Exit 0 healthy, 1 degraded (archiving goes on but something needs attention), 2 failing
//! (WAL is not being archived, or not acknowledged).

use std::path::Path;

use serde::Serialize;

use crate::archive::Archive;
use crate::core::fmt;
use crate::ingest::gap::LOST_WAL;
use crate::ingest::status::{self, now, SqliteRunStatus, StreamStatus};

/// How stale `status.json` may be before the streamer counts as gone.
const STALE_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Degraded,
    Failing,
}

impl Level {
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Failing => 2,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Degraded => "DEGRADED",
            Level::Failing => "FAILING",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Level,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// healthy, degraded or failing.
    pub status: &'static str,
    pub checks: Vec<Check>,
    pub stream: Option<StreamStatus>,
    /// What `lifeboat sqlite run` last reported (a host with [[sqlite]] databases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteRunStatus>,
}

impl Report {
    /// Add a check made elsewhere (key custody), the status following it.
    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
        self.status = status_word(self.level());
    }

    pub fn level(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Level::Ok)
    }
}

/// Whether the streamer that wrote `st` is running: its pid exists and its report is
/// fresh (written within the last 30 s).
pub fn streamer_alive(st: &StreamStatus, now: u64) -> bool {
    alive(st.pid) && now.saturating_sub(st.updated) <= STALE_SECS
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The streamer's checks, from its status file (pure: `now` and `alive` are given).
pub fn stream_checks(
    spool_dir: &Path,
    st: Option<&StreamStatus>,
    now: u64,
    alive: impl Fn(u32) -> bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(st) = st else {
        out.push(Check {
            check: "streamer",
            status: Level::Failing,
            message: format!(
                "no {} : lifeboat stream has never run with this spool_dir\nhint: start the streamer, e.g. systemctl start lifeboat",
                status::path(spool_dir).display()
            ),
        });
        return out;
    };
    let age = now.saturating_sub(st.updated);
    if !alive(st.pid) || age > STALE_SECS {
        // A streamer that ended on an error it cannot get past (WAL lost before it was
        // archived) said why: that, not the generic advice, is what the operator needs.
        if let Some(e) = st.error.as_deref().filter(|e| e.starts_with(LOST_WAL)) {
            out.push(Check {
                check: "streamer",
                status: Level::Failing,
                message: format!(
                    "not running: pid {} stopped {} on: {e}",
                    st.pid,
                    fmt::ago(age)
                ),
            });
            return out;
        }
        out.push(Check {
            check: "streamer",
            status: Level::Failing,
            message: format!(
                "not running: pid {} last reported {} (acknowledged up to {}); WAL is not being archived and the slot is retaining it on the server\nhint: start the streamer and read its log",
                st.pid,
                fmt::ago(age),
                st.acknowledged
            ),
        });
        return out;
    }
    if !st.connected {
        out.push(Check {
            check: "streamer",
            status: Level::Failing,
            message: format!(
                "running (pid {}) but not streaming: {}",
                st.pid,
                st.error.as_deref().unwrap_or("not connected")
            ),
        });
    } else {
        out.push(Check {
            check: "streamer",
            status: Level::Ok,
            message: format!(
                "streaming (pid {}), timeline {}, received {}, acknowledged {}",
                st.pid,
                st.timeline
                    .map_or_else(|| "unknown".to_string(), |t| t.to_string()),
                st.received,
                st.acknowledged
            ),
        });
    }
    let d = &st.delivery;
    for p in &d.providers {
        if p.up {
            out.push(Check {
                check: "provider",
                status: Level::Ok,
                message: format!("\"{}\": up", p.name),
            });
        } else {
            out.push(Check {
                check: "provider",
                status: Level::Degraded,
                message: format!(
                    "\"{}\": down since {}: {}; its WAL is held in the spool ({} of {})",
                    p.name,
                    fmt::ago(now.saturating_sub(p.down_since.unwrap_or(now))),
                    p.error.as_deref().unwrap_or("write failed"),
                    fmt::size(d.spool_held),
                    fmt::size(d.spool_limit)
                ),
            });
        }
    }
    if !d.acknowledging {
        out.push(Check {
            check: "spool",
            status: Level::Failing,
            message: format!(
                "full ({} of {}) while a provider is down: WAL is no longer acknowledged, the replication slot holds it on the server\nhint: bring the provider back, or raise spool.max_size",
                fmt::size(d.spool_held),
                fmt::size(d.spool_limit)
            ),
        });
    }
    out
}

/// The prune check: the newest prune report against the interval prune should run at
/// (`retention.prune_interval`, plus an hour of slack for a run in progress).
///
/// Never run: fine while the oldest backup is younger than the interval (a new archive),
/// degraded after (the default locks run out and nothing extends them).
fn prune_check(
    newest: Option<&str>,
    oldest_backup: Option<u64>,
    now: u64,
    interval: std::time::Duration,
) -> Check {
    let every = humantime::format_duration(interval);
    let Some(id) = newest else {
        let young =
            oldest_backup.map_or(true, |t| now.saturating_sub(t) <= interval.as_secs() + 3600);
        return Check {
            check: "prune",
            status: if young { Level::Ok } else { Level::Degraded },
            message: format!("never run: the archive keeps everything and no lock is extended to its tier's date\nhint: run `lifeboat prune` from the vault host every {every} (retention.prune_interval)"),
        };
    };
    let at = crate::core::retention::backup_id_time(id)
        .map_or(0, |t| t.0.div_euclid(1_000_000).max(0) as u64);
    let age = now.saturating_sub(at);
    if age > interval.as_secs() + 3600 {
        Check {
            check: "prune",
            status: Level::Degraded,
            message: format!(
                "the newest prune report {id} is from {}, longer ago than retention.prune_interval ({every}): the archive grows and kept points' locks are not extended\nhint: check the prune schedule on the vault host (lifeboat prune)",
                fmt::ago(age)
            ),
        }
    } else {
        Check {
            check: "prune",
            status: Level::Ok,
            message: format!("last prune {id} ({})", fmt::ago(age)),
        }
    }
}

/// A passed drill, and whether it is older than the drill interval (`schedule.drill`,
/// quarterly by default): drills usually run from the restore host, and this is where the
/// database host notices they stopped.
fn drill_age_check(
    d: &crate::archive::summary::DrillSummary,
    now: u64,
    every: Option<std::time::Duration>,
) -> Check {
    let at = crate::core::retention::backup_id_time(&d.id)
        .map(|t| t.0.div_euclid(1_000_000).max(0) as u64);
    let age = at.map(|t| now.saturating_sub(t));
    match (age, every) {
        // A day of slack: a drill at a random time of its window may start a little late.
        (Some(age), Some(every)) if age > every.as_secs() + 86_400 => Check {
            check: "drill",
            status: Level::Degraded,
            message: format!(
                "the last drill {} passed, but is {} old, longer than the drill interval ({})\nhint: run lifeboat drill on the restore host, or `lifeboat schedule --run` there (schedule.drill)",
                d.id,
                fmt::ago(age).trim_end_matches(" ago"),
                crate::core::fmt::interval(every)
            ),
        },
        _ => Check {
            check: "drill",
            status: Level::Ok,
            message: format!("last drill {} passed, RTO {:.1} s", d.id, d.total_seconds),
        },
    }
}

/// The schedule's newest run of each job (`<spool>/schedule.json`): a failed one degrades.
pub fn schedule_checks(rec: &crate::ingest::schedule::Record) -> Vec<Check> {
    let runs = crate::ingest::schedule::last_runs(rec);
    if runs.is_empty() {
        return Vec::new();
    }
    let failed: Vec<_> = runs.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        let done: Vec<String> = runs
            .iter()
            .map(|r| format!("{} {}", r.job, r.started))
            .collect();
        return vec![Check {
            check: "schedule",
            status: Level::Ok,
            message: format!("last runs passed: {}", done.join(", ")),
        }];
    }
    failed
        .into_iter()
        .map(|r| Check {
            check: "schedule",
            status: Level::Degraded,
            message: format!(
                "the scheduled {} of {} failed: {}",
                r.job,
                r.started,
                r.error
                    .as_deref()
                    .unwrap_or("no reason recorded")
                    .trim_start_matches("error: ")
            ),
        })
        .collect()
}

/// The archive's checks: the newest backup, the last drill and the last prune.
async fn archive_checks(
    archive: &Archive,
    now: u64,
    prune_interval: std::time::Duration,
    drill_every: Option<std::time::Duration>,
    rto_target: Option<std::time::Duration>,
    wal_end: Option<crate::core::wal::Lsn>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let mut oldest_backup: Option<u64> = None;
    match crate::archive::summary::run(archive, None).await {
        Err(e) => out.push(Check {
            check: "archive",
            status: Level::Degraded,
            message: format!("cannot be listed: {e:#}"),
        }),
        Ok(r) => {
            oldest_backup = r
                .backups
                .iter()
                .filter_map(|b| crate::core::plan::Timestamp::parse_utc(&b.end_time).ok())
                .map(|t| t.0.div_euclid(1_000_000).max(0) as u64)
                .min();
            match r
                .backups
                .iter()
                .filter(|b| b.restorable)
                .max_by(|a, b| a.end_lsn.cmp(&b.end_lsn))
            {
                None => out.push(Check {
                    check: "backup",
                    status: Level::Degraded,
                    message: "no restorable base backup in the archive\nhint: lifeboat backup"
                        .into(),
                }),
                Some(b) => {
                    let when = crate::core::plan::Timestamp::parse_utc(&b.end_time)
                        .ok()
                        .map(|t| {
                            fmt::ago(now.saturating_sub(t.0.div_euclid(1_000_000).max(0) as u64))
                        });
                    out.push(Check {
                        check: "backup",
                        status: Level::Ok,
                        message: format!(
                            "newest restorable {} ended {} ({})",
                            b.id,
                            b.end_time,
                            when.unwrap_or_default()
                        ),
                    });
                }
            }
            match &r.last_drill {
                None => out.push(Check {
                    check: "drill",
                    status: Level::Degraded,
                    message: "no restore drill recorded: the backups are untested\nhint: lifeboat drill".into(),
                }),
                Some(d) if !d.ok => out.push(Check {
                    check: "drill",
                    status: Level::Degraded,
                    message: format!(
                        "the last drill {} FAILED\nhint: lifeboat list; run lifeboat drill again and read its report",
                        d.id
                    ),
                }),
                Some(d) => out.push(drill_age_check(d, now, drill_every)),
            }
            if let Some(est) = r.rto_at(wal_end) {
                out.push(rto_check(&est, rto_target));
            }
            // Logical dumps are optional: shown when there are any, never a degradation.
            if let Some(d) = r.dumps.last() {
                let when = crate::core::plan::Timestamp::parse_utc(&d.start_time)
                    .ok()
                    .map(|t| fmt::ago(now.saturating_sub(t.0.div_euclid(1_000_000).max(0) as u64)));
                out.push(Check {
                    check: "dump",
                    status: Level::Ok,
                    message: format!(
                        "newest dump {} of {} started {} ({})",
                        d.id,
                        d.databases.join(", "),
                        d.start_time,
                        when.unwrap_or_default()
                    ),
                });
            }
        }
    }
    if let Ok(newest) = archive.newest_prune().await {
        out.push(prune_check(
            newest.as_deref(),
            oldest_backup,
            now,
            prune_interval,
        ));
    }
    out
}

/// The RTO budget: how long a restore would take now; degraded past `schedule.rto_target`.
pub fn rto_check(est: &crate::core::rto::Estimate, target: Option<std::time::Duration>) -> Check {
    use crate::core::rto::{decide, Decision};
    let Some(target) = target else {
        return Check {
            check: "rto",
            status: Level::Ok,
            message: format!("a restore now takes {}", est.describe()),
        };
    };
    let t = fmt::interval(target);
    match decide(est, target, None) {
        Decision::Within => Check {
            check: "rto",
            status: Level::Ok,
            message: format!("a restore now takes {}, within rto_target {t}", est.describe()),
        },
        Decision::Unreachable => Check {
            check: "rto",
            status: Level::Degraded,
            message: format!(
                "a restore now takes {}, longer than rto_target {t}, and restoring the base backup alone takes {}\nhint: base backups cannot meet this target: restore to faster storage (a drill measures the rates) or raise schedule.rto_target",
                est.describe(),
                crate::core::rto::seconds(est.after_backup())
            ),
        },
        Decision::Backup | Decision::Wait => Check {
            check: "rto",
            status: Level::Degraded,
            message: format!(
                "a restore now takes {}, longer than rto_target {t}\nhint: take a base backup (`lifeboat backup --incremental`); a running schedule takes one by itself",
                est.describe()
            ),
        },
    }
}

/// A configured SQLite database, as `status` checks it.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    pub name: String,
    /// Its snapshot interval (`[[sqlite]] every`, `schedule.sqlite`, or hourly).
    pub every: std::time::Duration,
}

/// What `status` reads about the host.
pub struct Scope<'a> {
    /// The host streams PostgreSQL (a `[postgres]` section): the streamer and base backup
    /// checks apply; a host of SQLite databases only has none of them.
    pub postgres: bool,
    pub sqlite: &'a [SqliteDb],
}

pub async fn run(
    spool_dir: &Path,
    archive: &Archive,
    prune_interval: std::time::Duration,
    drill_every: Option<std::time::Duration>,
    rto_target: Option<std::time::Duration>,
    scope: &Scope<'_>,
) -> Report {
    let st = status::read(spool_dir);
    let now = now();
    let mut checks = Vec::new();
    if scope.postgres {
        checks.extend(stream_checks(spool_dir, st.as_ref(), now, alive));
        let acked = st.as_ref().map(|s| s.acknowledged);
        checks.extend(
            archive_checks(archive, now, prune_interval, drill_every, rto_target, acked).await,
        );
    } else if let Ok(newest) = archive.newest_prune().await {
        checks.push(prune_check(newest.as_deref(), None, now, prune_interval));
    }
    if !scope.sqlite.is_empty() {
        let newest = match archive.sqlite_snapshots(None).await {
            Ok(snaps) => Some(
                snaps
                    .into_iter()
                    .map(|s| (s.name, s.id, s.time.0.div_euclid(1_000_000).max(0) as u64))
                    .collect::<Vec<_>>(),
            ),
            Err(e) => {
                checks.push(Check {
                    check: "archive",
                    status: Level::Degraded,
                    message: format!("its SQLite snapshots cannot be listed: {e:#}"),
                });
                None
            }
        };
        let sq = status::read_sqlite(spool_dir);
        checks.extend(sqlite_checks(
            scope.sqlite,
            sq.as_ref(),
            newest.as_deref().unwrap_or_default(),
            now,
            alive,
        ));
    }
    checks.extend(schedule_checks(&crate::ingest::schedule::read_record(
        spool_dir,
    )));
    let mut r = Report {
        status: "healthy",
        checks,
        stream: st,
        sqlite: None,
    };
    r.sqlite = status::read_sqlite(spool_dir).filter(|_| !scope.sqlite.is_empty());
    r.status = status_word(r.level());
    r
}

/// The SQLite checks (pure): `sqlite run` alive, each database's newest snapshot against
/// twice its interval and its last run, each provider as the daemon last found it.
/// `archive` lists the snapshots in the archive as (database, id, Unix seconds of the
/// point in time they hold), any order.
pub fn sqlite_checks(
    dbs: &[SqliteDb],
    st: Option<&SqliteRunStatus>,
    archive: &[(String, String, u64)],
    now: u64,
    alive: impl Fn(u32) -> bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    let running = st
        .filter(|s| alive(s.pid) && now.saturating_sub(s.updated) <= 3 * status::SQLITE_BEAT_SECS);
    if let Some(s) = st {
        if running.is_some() {
            out.push(Check {
                check: "sqlite",
                status: Level::Ok,
                message: format!(
                    "sqlite run (pid {}) is snapshotting {} database{}",
                    s.pid,
                    s.databases.len(),
                    if s.databases.len() == 1 { "" } else { "s" }
                ),
            });
        } else {
            out.push(Check {
                check: "sqlite",
                status: Level::Degraded,
                message: format!(
                    "sqlite run is not running: pid {} last reported {}; no snapshot is being taken\nhint: start it (systemctl start lifeboat-sqlite, or `lifeboat sqlite run`) and read its log",
                    s.pid,
                    fmt::ago(now.saturating_sub(s.updated))
                ),
            });
        }
    }
    for db in dbs {
        let from_daemon = st.and_then(|s| s.databases.iter().find(|d| d.name == db.name));
        let newest = archive
            .iter()
            .filter(|(n, _, _)| *n == db.name)
            .max_by_key(|(_, _, t)| *t)
            .map(|(_, id, t)| (id.clone(), *t));
        let newest = match (
            newest,
            from_daemon.and_then(|d| Some((d.last_snapshot.clone()?, d.last_snapshot_time?))),
        ) {
            (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
        let every = db.every.as_secs().max(1);
        let failed = from_daemon
            .filter(|d| d.last_run_ok == Some(false))
            .map(|d| {
                d.last_error
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into())
            });
        let (level, message) = match (&newest, failed) {
            (None, failed) => (
                Level::Degraded,
                format!(
                    "\"{}\": no snapshot in the archive{}\nhint: `lifeboat sqlite run` snapshots it every {} (or `lifeboat sqlite snapshot {}` now)",
                    db.name,
                    failed.map(|e| format!("; the last run failed: {e}")).unwrap_or_default(),
                    fmt::interval(db.every),
                    db.name
                ),
            ),
            (Some((id, t)), Some(e)) => (
                Level::Degraded,
                format!(
                    "\"{}\": the last snapshot run failed: {}; the newest snapshot {id} is from {}",
                    db.name,
                    e.trim_start_matches("error: "),
                    fmt::ago(now.saturating_sub(*t))
                ),
            ),
            (Some((id, t)), None) if now.saturating_sub(*t) > 2 * every => (
                Level::Degraded,
                format!(
                    "\"{}\": the newest snapshot {id} is from {}, more than twice its interval ({})\nhint: is `lifeboat sqlite run` running? `lifeboat sqlite snapshot {}` takes one now",
                    db.name,
                    fmt::ago(now.saturating_sub(*t)),
                    fmt::interval(db.every),
                    db.name
                ),
            ),
            (Some((id, t)), None) => (
                Level::Ok,
                format!(
                    "\"{}\": newest snapshot {id} ({}), every {}",
                    db.name,
                    fmt::ago(now.saturating_sub(*t)),
                    fmt::interval(db.every)
                ),
            ),
        };
        out.push(Check {
            check: "sqlite",
            status: level,
            message,
        });
    }
    if let Some(s) = running {
        for p in &s.providers {
            out.push(if p.up {
                Check {
                    check: "provider",
                    status: Level::Ok,
                    message: format!("\"{}\": up", p.name),
                }
            } else {
                Check {
                    check: "provider",
                    status: Level::Degraded,
                    message: format!(
                        "\"{}\": down since {}: {}; snapshots fail until it is back",
                        p.name,
                        fmt::ago(now.saturating_sub(p.down_since.unwrap_or(now))),
                        p.error.as_deref().unwrap_or("write failed")
                    ),
                }
            });
        }
    }
    out
}

fn status_word(l: Level) -> &'static str {
    match l {
        Level::Ok => "healthy",
        Level::Degraded => "degraded",
        Level::Failing => "failing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wal::{Lsn, TimelineId};
    use crate::ingest::outbox::{Health, ProviderHealth};

    fn st(acknowledging: bool, second_up: bool) -> StreamStatus {
        StreamStatus {
            pid: 42,
            updated: 1000,
            timeline: Some(TimelineId(1)),
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
                        name: "second".into(),
                        up: second_up,
                        error: (!second_up).then(|| "connection refused".into()),
                        down_since: (!second_up).then_some(900),
                    },
                ],
                spool_held: 3 << 20,
                spool_limit: 4 << 20,
                acknowledging,
            },
        }
    }

    fn level(c: &[Check]) -> Level {
        c.iter().map(|c| c.status).max().unwrap()
    }

    #[test]
    fn prune_overdue() {
        let day = std::time::Duration::from_secs(86_400);
        // 2026-12-01T00:00:00Z.
        let now = 1_796_083_200;
        let never = prune_check(None, Some(now - 3600), now, day);
        assert_eq!(never.status, Level::Ok);
        assert!(never.message.starts_with("never run"), "{}", never.message);
        // Never run, with backups older than the interval: the locks run out unextended.
        let never = prune_check(None, Some(now - 3 * 86_400), now, day);
        assert_eq!(never.status, Level::Degraded);
        let recent = prune_check(Some("20261130T230000Z"), None, now, day);
        assert_eq!(recent.status, Level::Ok);
        assert_eq!(recent.message, "last prune 20261130T230000Z (60 min ago)");
        let late = prune_check(Some("20261129T220000Z"), None, now, day);
        assert_eq!(late.status, Level::Degraded);
        assert!(
            late.message.starts_with("the newest prune report 20261129T220000Z is from 26 h ago, longer ago than retention.prune_interval (1day)"),
            "{}",
            late.message
        );
    }

    #[test]
    fn levels() {
        let dir = Path::new("/spool");
        assert_eq!(
            level(&stream_checks(dir, Some(&st(true, true)), 1005, |_| true)),
            Level::Ok
        );
        let down = stream_checks(dir, Some(&st(true, false)), 1005, |_| true);
        assert_eq!(level(&down), Level::Degraded);
        assert_eq!(
            down[2].message,
            "\"second\": down since 105 s ago: connection refused; its WAL is held in the spool (3.0 MiB of 4.0 MiB)"
        );
        assert_eq!(
            level(&stream_checks(dir, Some(&st(false, false)), 1005, |_| true)),
            Level::Failing
        );
        // A dead pid, or a report older than 30 s.
        assert_eq!(
            level(&stream_checks(dir, Some(&st(true, true)), 1005, |_| false)),
            Level::Failing
        );
        assert_eq!(
            level(&stream_checks(dir, Some(&st(true, true)), 1031, |_| true)),
            Level::Failing
        );
        assert_eq!(
            level(&stream_checks(dir, None, 1005, |_| true)),
            Level::Failing
        );
    }

    #[test]
    fn sqlite_databases_degrade_past_twice_their_interval_or_after_a_failed_run() {
        use crate::ingest::status::SqliteDbStatus;
        let h = std::time::Duration::from_secs(3600);
        let dbs = [
            SqliteDb {
                name: "a".into(),
                every: h,
            },
            SqliteDb {
                name: "b".into(),
                every: h,
            },
            SqliteDb {
                name: "c".into(),
                every: h,
            },
        ];
        let now = 100_000;
        let archive = vec![
            ("a".to_string(), "A1".to_string(), now - 7000),
            ("a".to_string(), "A2".to_string(), now - 3000),
            ("b".to_string(), "B1".to_string(), now - 7300),
        ];
        let st = SqliteRunStatus {
            pid: 7,
            updated: now - 5,
            databases: vec![SqliteDbStatus {
                name: "c".into(),
                last_run_ok: Some(false),
                last_error: Some("sqlite \"c\": /x.db does not exist".into()),
                ..Default::default()
            }],
            providers: vec![ProviderHealth {
                name: "s3".into(),
                up: false,
                error: Some("timed out".into()),
                down_since: Some(now - 60),
            }],
        };
        let c = sqlite_checks(&dbs, Some(&st), &archive, now, |_| true);
        let got: Vec<(Level, &str)> = c.iter().map(|c| (c.status, c.message.as_str())).collect();
        assert_eq!(
            got[0],
            (Level::Ok, "sqlite run (pid 7) is snapshotting 1 database")
        );
        // The newest of a's snapshots, 50 min old: fine.
        assert_eq!(
            got[1],
            (
                Level::Ok,
                "\"a\": newest snapshot A2 (50 min ago), every 1h"
            )
        );
        // b's is 2 h 1 min old: more than twice the hour.
        assert_eq!(got[2].0, Level::Degraded);
        assert!(
            got[2].1.starts_with(
                "\"b\": the newest snapshot B1 is from 2 h ago, more than twice its interval (1h)"
            ),
            "{}",
            got[2].1
        );
        // c never got one, and its last run failed.
        assert_eq!(got[3].0, Level::Degraded);
        assert!(got[3].1.starts_with("\"c\": no snapshot in the archive; the last run failed: sqlite \"c\": /x.db does not exist"), "{}", got[3].1);
        assert_eq!(
            got[4],
            (
                Level::Degraded,
                "\"s3\": down since 60 s ago: timed out; snapshots fail until it is back"
            )
        );
        // A dead daemon: degraded, and its provider view is not trusted.
        let c = sqlite_checks(&dbs[..1], Some(&st), &archive, now, |_| false);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].status, Level::Degraded);
        assert!(c[0].message.starts_with("sqlite run is not running: pid 7"));
        // No daemon at all (snapshots from the schedule): the archive alone decides.
        let c = sqlite_checks(&dbs[..1], None, &archive, now, |_| true);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Level::Ok);
    }
}
