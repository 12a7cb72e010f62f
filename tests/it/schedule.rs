//! The schedule inside the daemon, against a real cluster: `lifeboat stream` with a
//! `[schedule]` takes the base backup and runs the drill that are due at start, one after
//! the other; a backup started by hand meanwhile is refused; a run missed while the service
//! was down runs at the next start; `lifeboat schedule --now` answers for another moment.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

fn spawn_scheduled_stream(lb: &Lb) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lb.dir.path().join("stream.log"))
        .expect("log");
    // The workspace copy of the binary: the drill's server runs its restore_command as the
    // PostgreSQL user. The identity is on this host (LIFEBOAT_IDENTITY_FILE), so drills run.
    let mut c = std::process::Command::new(lb.restore_bin());
    c.arg("--config")
        .arg(&lb.config)
        .arg("stream")
        .env("LIFEBOAT_IDENTITY_FILE", &lb.identity)
        .env("HOME", lb.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    KillOnDrop(c.spawn().expect("spawn lifeboat stream"))
}

/// `lifeboat --json schedule ARGS` as the service sees it (the identity on this host).
fn schedule_json(lb: &Lb, args: &[&str]) -> serde_json::Value {
    let mut c = lb.cmd();
    c.env("LIFEBOAT_IDENTITY_FILE", &lb.identity)
        .args(["--json", "schedule"])
        .args(args);
    json_of(&run_timeout(&mut c, Duration::from_secs(60), None).unwrap())
}

/// The runs `<spool>/schedule.json` records, oldest first.
pub(crate) fn runs(lb: &Lb) -> Vec<serde_json::Value> {
    std::fs::read(lb.spool.join("schedule.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["runs"].as_array().cloned())
        .unwrap_or_default()
}

fn wait_runs(lb: &Lb, pred: impl Fn(&[serde_json::Value]) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = runs(lb);
        if pred(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: schedule.json {r:?}\n{}",
            lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn secs(t: &serde_json::Value) -> i64 {
    let s = t.as_str().expect("a time");
    let out = std::process::Command::new("date")
        .args(["-u", "-d", s, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("seconds")
}

fn set_backup_interval(lb: &Lb, every: &str) {
    let text = std::fs::read_to_string(&lb.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("backup = ") {
                format!("backup = \"{every}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&lb.config, text.join("\n") + "\n").unwrap();
}

#[test]
fn schedule_runs_what_is_due_one_at_a_time_and_catches_up_at_start() {
    let major = 15;
    let pg = PgCluster::start(major, ClusterOpts::default());
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let bin = pg_bin_dir(major);
    let mut drill_args = vec![
        "--pg-bin".to_string(),
        bin.display().to_string(),
        "--timeout".into(),
        "5m".into(),
    ];
    if is_root() {
        drill_args.extend(["--run-as".into(), TEST_OS_USER.into()]);
    }
    // A slow base backup (2 MB/s), so that it is still running when one is started by hand.
    let extra = format!(
        "[backup]\npart_size = \"1MiB\"\nmax_rate = 2048\n\n\
         [schedule]\nbackup = \"1h\"\ndrill = \"1h\"\nverify = \"off\"\ndrill_args = {:?}\n",
        drill_args
    );
    let lb = Lb::for_cluster(&pg, &extra);
    let scratch = lb.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // (drill's --scratch-dir defaults to /var/tmp; keep it in the workspace.)
    let text = std::fs::read_to_string(&lb.config).unwrap().replace(
        "drill_args = [",
        &format!(
            "drill_args = [\"--scratch-dir\", \"{}\", ",
            scratch.display()
        ),
    );
    std::fs::write(&lb.config, text).unwrap();

    // Nothing was ever done: at start the backup is due, and then the drill.
    let streamer = spawn_scheduled_stream(&lb);
    let lock = lb.spool.join("backup.lock");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with("pid ")) {
        assert!(
            Instant::now() < deadline,
            "no scheduled backup started:\n{}",
            lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A backup by hand while the scheduled one runs: refused, nothing started.
    let out = lb.run(&["backup"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("error: a base backup is already running on this host (pid "),
        "{err}"
    );
    assert!(
        err.contains("hint: wait for it to end (`lifeboat status`); the schedule and `lifeboat backup` never run two at once"),
        "{err}"
    );
    wait_runs(
        &lb,
        |r| r.iter().any(|x| x["job"] == "drill"),
        "the scheduled drill",
    );
    let r = runs(&lb);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0]["job"], "backup");
    assert_eq!(r[0]["ok"], true, "{r:?}\n{}", lb.stream_log());
    assert_eq!(r[1]["job"], "drill");
    assert_eq!(r[1]["ok"], true, "{r:?}\n{}", lb.stream_log());
    // One after the other.
    assert!(secs(&r[1]["started"]) >= secs(&r[0]["ended"]), "{r:?}");
    let list = lb.list_json();
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{list}");
    assert_eq!(list["last_drill"]["ok"], true, "{list}");
    // Nothing more is due for an hour.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&lb).len(), 2);
    let sched = schedule_json(&lb, &[]);
    let job = |name: &str| {
        sched["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {sched}"))
    };
    assert_eq!(job("backup")["due"], false, "{sched}");
    assert_eq!(job("backup")["every"], "1h", "{sched}");
    assert_eq!(
        secs(&job("backup")["last_success"]),
        secs(&backups[0]["start_time"]),
        "{sched}"
    );
    assert_eq!(job("drill")["due"], false, "{sched}");
    // The clock parameter: two hours on, the backup is due; a drill was done in this
    // hour's window, so at most the next one is.
    let later = secs(&backups[0]["start_time"]) + 7200;
    let later = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{later}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let sched = json_of(&lb.run(
        &["--json", "schedule", "--now", &later],
        Duration::from_secs(60),
    ));
    assert_eq!(sched["jobs"][0]["job"], "backup", "{sched}");
    assert_eq!(sched["jobs"][0]["due"], true, "{sched}");
    let status = lb.run(&["status"], Duration::from_secs(60));
    assert!(
        stdout_of(&status).contains("schedule  last runs passed: backup "),
        "{}",
        stdout_of(&status)
    );

    // The service down for longer than the interval: the missed backup runs at start, not
    // an interval after it.
    stop_streamer(streamer);
    set_backup_interval(&lb, "20s");
    let last = secs(&backups[0]["start_time"]);
    while (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64)
        < last + 25
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let streamer = spawn_scheduled_stream(&lb);
    wait_runs(
        &lb,
        |r| r.iter().filter(|x| x["job"] == "backup").count() == 2,
        "the missed backup",
    );
    let r = runs(&lb);
    let second = r.iter().filter(|x| x["job"] == "backup").nth(1).unwrap();
    assert_eq!(second["ok"], true, "{r:?}");
    assert!(
        secs(&second["started"]) < restarted + 20,
        "the missed run waited for an interval: {r:?}"
    );
    stop_streamer(streamer);
    let done = runs(&lb)
        .iter()
        .filter(|x| x["job"] == "backup" && x["ok"] == true)
        .count();
    assert_eq!(lb.list_json()["backups"].as_array().unwrap().len(), done);
}
