//! `lifeboat check`: the figures a monitoring system alerts on, judged against thresholds,
//! as one Nagios-style line (`LIFEBOAT WARNING - … | perfdata`) and an exit code (0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN). Pure: the figures and `now` are given.
//!
//! The figures come from the streamer's status file on the database host (is it alive,
//! connected, acknowledging; each provider up) and, anywhere with read credentials, from
//! the archive alone (the newest WAL object's age on each provider, the newest restorable
//! backup, the last drill).

use serde::Serialize;

/// Nagios states, in order of severity (UNKNOWN: the check could not run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    pub fn code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// Seconds a figure may reach before it warns and before it is critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub warn: u64,
    pub crit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// The newest WAL object on a provider (archiving stalled).
    pub wal_age: Limits,
    /// The newest restorable backup's end.
    pub backup_age: Limits,
    /// The last restore drill.
    pub drill_age: Limits,
}

impl Default for Thresholds {
    /// docs/ALERTS.md's: archiving stalled 5 min (15 critical), no backup in 26 h (50
    /// critical), no drill in 100 days.
    fn default() -> Self {
        Thresholds {
            wal_age: Limits {
                warn: 300,
                crit: Some(900),
            },
            backup_age: Limits {
                warn: 26 * 3600,
                crit: Some(50 * 3600),
            },
            drill_age: Limits {
                warn: 100 * 86_400,
                crit: None,
            },
        }
    }
}

/// One provider as the archive shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderFigures {
    pub name: String,
    /// Why it could not be listed.
    pub error: Option<String>,
    /// Seconds since its newest WAL object was written (`None`: no WAL there).
    pub wal_age: Option<u64>,
}

/// The streamer, from its status file (database host only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamFigures {
    pub alive: bool,
    pub connected: bool,
    pub acknowledging: bool,
    /// Bytes received but not yet acknowledged.
    pub lag_bytes: u64,
    pub spool_bytes: u64,
    pub spool_limit: u64,
    /// Providers the streamer reports down.
    pub down: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub providers: Vec<ProviderFigures>,
    /// The newest restorable backup and seconds since it ended.
    pub backup: Option<(String, u64)>,
    /// The last drill, seconds since it ran, and whether it passed.
    pub drill: Option<(String, u64, bool)>,
    pub stream: Option<StreamFigures>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub state: State,
    /// What made the state, most severe first; "archiving healthy" when nothing did.
    pub problems: Vec<String>,
    /// `label=value[unit];warn;crit;min;max`, as Nagios plugins print them.
    pub perfdata: Vec<String>,
}

impl Verdict {
    /// `LIFEBOAT OK - … | perfdata`.
    pub fn line(&self) -> String {
        let summary = if self.problems.is_empty() {
            "archiving healthy".to_string()
        } else {
            self.problems.join("; ")
        };
        format!(
            "LIFEBOAT {} - {summary} | {}",
            self.state.word(),
            self.perfdata.join(" ")
        )
    }
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn judge(age: u64, l: Limits) -> State {
    if l.crit.is_some_and(|c| age >= c) {
        State::Critical
    } else if age >= l.warn {
        State::Warning
    } else {
        State::Ok
    }
}

fn perf(label: &str, value: u64, unit: &str, l: Option<Limits>) -> String {
    match l {
        Some(l) => format!(
            "{label}={value}{unit};{};{};0",
            l.warn,
            l.crit.map_or(String::new(), |c| c.to_string())
        ),
        None => format!("{label}={value}{unit};;;0"),
    }
}

/// Judge the figures.
pub fn judge_figures(f: &Figures, t: &Thresholds) -> Verdict {
    let mut found: Vec<(State, String)> = Vec::new();
    let mut perfdata = Vec::new();
    if let Some(s) = &f.stream {
        if !s.alive {
            found.push((State::Critical, "the streamer is not running".into()));
        } else if !s.connected {
            found.push((
                State::Critical,
                format!(
                    "the streamer is not connected to PostgreSQL{}",
                    s.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            ));
        }
        if !s.acknowledging {
            found.push((
                State::Critical,
                "the spool is full: WAL is no longer acknowledged, the slot holds it on the server"
                    .into(),
            ));
        }
        for d in &s.down {
            found.push((State::Warning, format!("provider \"{d}\" is down")));
        }
        perfdata.push(perf("lag", s.lag_bytes, "B", None));
        perfdata.push(format!(
            "spool={}B;{};{};0;{}",
            s.spool_bytes,
            s.spool_limit / 2,
            s.spool_limit,
            s.spool_limit
        ));
    }
    let mut reachable = 0;
    let mut newest_wal: Option<u64> = None;
    for p in &f.providers {
        match (&p.error, p.wal_age) {
            (Some(e), _) => found.push((
                State::Critical,
                format!("provider \"{}\" cannot be listed: {e}", p.name),
            )),
            (None, None) => {
                reachable += 1;
                found.push((
                    State::Warning,
                    format!("provider \"{}\" holds no WAL", p.name),
                ));
            }
            (None, Some(age)) => {
                reachable += 1;
                newest_wal = Some(newest_wal.map_or(age, |n: u64| n.min(age)));
                let st = judge(age, t.wal_age);
                if st != State::Ok {
                    found.push((
                        st,
                        format!(
                            "provider \"{}\": no WAL archived for {} (archiving stalled, or the database is idle)",
                            p.name,
                            ago(age)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(age) = newest_wal {
        perfdata.push(perf("wal_age", age, "s", Some(t.wal_age)));
    }
    perfdata.push(format!(
        "providers_up={reachable};;;0;{}",
        f.providers.len()
    ));
    match &f.backup {
        None => found.push((
            State::Critical,
            "no restorable base backup in the archive".into(),
        )),
        Some((id, age)) => {
            let st = judge(*age, t.backup_age);
            if st != State::Ok {
                found.push((
                    st,
                    format!("the newest backup {id} ended {} ago", ago(*age)),
                ));
            }
            perfdata.push(perf("backup_age", *age, "s", Some(t.backup_age)));
        }
    }
    match &f.drill {
        None => found.push((
            State::Warning,
            "no restore drill recorded: the backups are untested".into(),
        )),
        Some((id, age, ok)) => {
            if !ok {
                found.push((State::Critical, format!("the last drill {id} FAILED")));
            }
            let st = judge(*age, t.drill_age);
            if st != State::Ok {
                found.push((st, format!("the last drill {id} was {} ago", ago(*age))));
            }
            perfdata.push(perf("drill_age", *age, "s", Some(t.drill_age)));
        }
    }
    // Most severe first, in the order found.
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Verdict {
        state: found.first().map_or(State::Ok, |(s, _)| *s),
        problems: found.into_iter().map(|(_, m)| m).collect(),
        perfdata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Figures {
        Figures {
            providers: vec![
                ProviderFigures {
                    name: "local".into(),
                    error: None,
                    wal_age: Some(12),
                },
                ProviderFigures {
                    name: "offsite".into(),
                    error: None,
                    wal_age: Some(14),
                },
            ],
            backup: Some(("20261201T010000Z".into(), 5 * 3600)),
            drill: Some(("20261120T030000Z".into(), 11 * 86_400, true)),
            stream: None,
        }
    }

    #[test]
    fn a_healthy_archive_is_ok_with_perfdata() {
        let v = judge_figures(&healthy(), &Thresholds::default());
        assert_eq!(v.state, State::Ok);
        assert_eq!(
            v.line(),
            "LIFEBOAT OK - archiving healthy | wal_age=12s;300;900;0 providers_up=2;;;0;2 backup_age=18000s;93600;180000;0 drill_age=950400s;8640000;;0"
        );
    }

    #[test]
    fn each_figure_raises_the_state_it_should() {
        let t = Thresholds::default();
        let mut f = healthy();
        f.providers[1].wal_age = Some(400);
        let v = judge_figures(&f, &t);
        // The other provider is fresh: the newest WAL anywhere is 12 s old, but the
        // lagging provider warns on its own.
        assert_eq!(v.state, State::Warning);
        assert_eq!(
            v.problems,
            vec!["provider \"offsite\": no WAL archived for 6 min (archiving stalled, or the database is idle)"]
        );
        f.providers[1].wal_age = Some(1000);
        assert_eq!(judge_figures(&f, &t).state, State::Critical);
        let mut f = healthy();
        f.backup = Some(("20261130T010000Z".into(), 27 * 3600));
        assert_eq!(judge_figures(&f, &t).state, State::Warning);
        f.backup = None;
        assert_eq!(judge_figures(&f, &t).state, State::Critical);
        let mut f = healthy();
        f.drill = Some(("20260801T030000Z".into(), 120 * 86_400, true));
        let v = judge_figures(&f, &t);
        assert_eq!(v.state, State::Warning);
        assert_eq!(
            v.problems,
            vec!["the last drill 20260801T030000Z was 120 days ago"]
        );
        f.drill = Some(("20261130T030000Z".into(), 86_400, false));
        assert_eq!(judge_figures(&f, &t).state, State::Critical);
        let mut f = healthy();
        f.providers[0].error = Some("connection refused".into());
        let v = judge_figures(&f, &t);
        assert_eq!(v.state, State::Critical);
        assert!(v.line().contains("providers_up=1;;;0;2"), "{}", v.line());
    }

    #[test]
    fn the_streamer_on_the_database_host() {
        let t = Thresholds::default();
        let mut f = healthy();
        f.stream = Some(StreamFigures {
            alive: true,
            connected: true,
            acknowledging: true,
            lag_bytes: 8192,
            spool_bytes: 0,
            spool_limit: 4 << 30,
            down: vec![],
            error: None,
        });
        let v = judge_figures(&f, &t);
        assert_eq!(v.state, State::Ok);
        assert!(v
            .line()
            .starts_with("LIFEBOAT OK - archiving healthy | lag=8192B;;;0 spool=0B;2147483648;4294967296;0;4294967296 wal_age=12s"));
        let s = f.stream.as_mut().unwrap();
        s.down = vec!["offsite".into()];
        assert_eq!(judge_figures(&f, &t).state, State::Warning);
        let s = f.stream.as_mut().unwrap();
        s.alive = false;
        let v = judge_figures(&f, &t);
        assert_eq!(v.state, State::Critical);
        assert_eq!(
            v.problems,
            vec![
                "the streamer is not running".to_string(),
                "provider \"offsite\" is down".to_string()
            ]
        );
    }
}
