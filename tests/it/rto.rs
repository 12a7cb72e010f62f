//! The RTO budget (issue 17 item 4) against a real PostgreSQL 17: `status`, `list` and the
//! metrics estimate how long a restore would take now; past `schedule.rto_target` the
//! status is degraded, and the schedule takes a base backup by itself (incremental, where
//! the server can), which brings the estimate back under; a drill records what it restored
//! and replayed, and the estimate then uses the rates it measured.

use std::time::{Duration, Instant};

use crate::metrics::scrape;
use crate::schedule::runs;
use crate::support::*;

const MIB: u64 = 1 << 20;

fn status_json(lb: &Lb) -> serde_json::Value {
    // Exit 1 (degraded) is expected here: no drill has run.
    let out = lb.run(&["--json", "status"], Duration::from_secs(60));
    json_of(&out)
}

fn rto_check(lb: &Lb) -> (String, String) {
    let st = status_json(lb);
    let c = st["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "rto")
        .unwrap_or_else(|| panic!("no rto check in {st:#}"))
        .clone();
    (
        c["status"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn rto_budget_is_shown_and_kept_by_a_scheduled_backup() {
    let major = 17;
    let pg = PgCluster::start(
        major,
        ClusterOpts::default()
            .conf("summarize_wal = on")
            .conf("wal_log_hints = on"),
    );
    pg.psql("CREATE TABLE filler(id int, t text)");
    pg.pgbench_init(2);
    let port = free_port();
    // Base backups not scheduled yet: the budget is only shown.
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [schedule]\nbackup = \"off\"\ndrill = \"off\"\nverify = \"off\"\nrto_target = \"20s\"\n"
        ),
    );
    let streamer = lb.start_streamer(&pg);
    let full = json_of(&lb.run(&["--json", "backup", "--fast"], Duration::from_secs(600)));
    let full_id = full["id"].as_str().expect("backup id").to_string();

    // Right after a backup: the restore of a small cluster, little WAL, within 20 s.
    let (level, msg) = rto_check(&lb);
    assert_eq!(level, "ok", "{msg}");
    assert!(msg.contains("within rto_target 20s"), "{msg}");
    assert!(msg.contains(&format!("({full_id})")), "{msg}");
    assert!(msg.contains("at 16 MiB/s (default)"), "{msg}");

    // 15 segments of WAL: 240 MiB at the default 16 MiB/s is 15 s of replay, plus 10 s to
    // start: past the target. A backup would bring it back under.
    for _ in 0..15 {
        pg.psql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
        pg.switch_wal();
    }
    let end = parse_lsn(&pg.current_lsn());
    wait_archived(&pg, end, Duration::from_secs(300), &lb);
    let (level, msg) = rto_check(&lb);
    assert_eq!(level, "degraded", "{msg}");
    assert!(msg.contains("longer than rto_target 20s"), "{msg}");
    assert!(
        msg.contains("hint: take a base backup (`lifeboat backup --incremental`)"),
        "{msg}"
    );
    let list = lb.list_json();
    let rto = &list["rto"];
    assert_eq!(rto["base"], full_id.as_str(), "{rto:#}");
    assert!(
        rto["wal_bytes"].as_u64().unwrap() >= 14 * 16 * MIB,
        "{rto:#}"
    );
    assert!(rto["seconds"].as_f64().unwrap() > 20.0, "{rto:#}");
    assert!(rto["rates"]["replay"]["drill"].is_null(), "{rto:#}");
    // The metrics say the same (they read the archive at most once a minute, and this is
    // the first scrape).
    let m = scrape(port);
    assert_eq!(m.get("lifeboat_rto_target_seconds"), Some(&20.0), "{m:#?}");
    let est = *m.get("lifeboat_rto_estimate_seconds").expect("estimate");
    assert!(est > 20.0, "{est}");
    // `lifeboat schedule` says what the budget asks for.
    let sched = json_of(&lb.run(&["--json", "schedule"], Duration::from_secs(60)));
    let decision = sched["rto"]["decision"].as_str().unwrap_or_default();
    assert!(decision == "backup" || decision == "wait", "{sched:#}");
    assert_eq!(sched["rto"]["target"], "20s", "{sched:#}");
    drop(streamer);

    // With base backups scheduled (daily: none is due yet), the schedule takes one for the
    // budget: incremental on the full one, labelled `rto`.
    let text = std::fs::read_to_string(&lb.config)
        .unwrap()
        .replace("backup = \"off\"", "backup = \"1d\"");
    std::fs::write(&lb.config, text).unwrap();
    let streamer = lb.spawn_stream();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !runs(&lb).iter().any(|r| r["job"] == "backup") {
        assert!(
            Instant::now() < deadline,
            "no backup for the RTO budget:\n{}",
            lb.stream_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = runs(&lb);
    assert_eq!(r[0]["ok"], true, "{r:?}\n{}", lb.stream_log());
    assert!(
        lb.stream_log().contains(
            "the estimated restore time passed schedule.rto_target: taking a base backup"
        ),
        "{}",
        lb.stream_log()
    );
    let list = lb.list_json();
    let newest = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == "rto")
        .unwrap_or_else(|| panic!("no rto backup: {list:#}"))
        .clone();
    assert_eq!(newest["parent"], full_id.as_str(), "{newest:#}");
    assert_eq!(newest["restorable"], true, "{newest:#}");
    let (level, msg) = rto_check(&lb);
    assert_eq!(level, "ok", "{msg}");
    assert!(msg.contains("within rto_target 20s"), "{msg}");
    // Only one backup was needed.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(runs(&lb).len(), 1, "{:?}", runs(&lb));
    drop(streamer);

    // A drill of the full backup to the end replays those 240 MiB: the rates it measured
    // replace the defaults.
    let (code, report, err) =
        crate::restore::drill(&lb, major, &["--backup", &full_id, "--target", "latest"]);
    assert_eq!(code, Some(0), "{report:#}\n{err}");
    assert!(
        report["restored_bytes"].as_u64().unwrap() > 10 * MIB,
        "{report:#}"
    );
    let replayed = report["replayed_wal_bytes"].as_u64().unwrap();
    assert!(replayed >= 14 * 16 * MIB, "{report:#}");
    let list = lb.list_json();
    let rates = &list["rates"];
    assert_eq!(rates["replay"]["drill"], report["id"], "{rates:#}");
    // A small cluster restores in less than the 64 MiB a rate needs: still the default.
    let restored = report["restored_bytes"].as_u64().unwrap();
    if restored >= 64 * MIB {
        assert_eq!(rates["restore"]["drill"], report["id"], "{rates:#}");
    } else {
        assert!(rates["restore"]["drill"].is_null(), "{rates:#}");
        assert_eq!(rates["restore"]["bytes_per_second"], 50.0 * MIB as f64);
    }
    let measured = replayed as f64 / report["phases"]["replay"].as_f64().unwrap();
    let got = rates["replay"]["bytes_per_second"].as_f64().unwrap();
    assert!((got - measured).abs() < 1.0, "{got} vs {measured}");
}
