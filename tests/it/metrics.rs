//! The Prometheus endpoint of `lifeboat stream`, scraped over HTTP during a real stream and
//! during a provider outage that fills the spool (a real `file://` store wrapped by the
//! fault injector): the lag grows, the provider shows down, the spool fills; then
//! everything recovers. The same numbers an alert rule in docs/ALERTS.md reads.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::*;

/// `GET /metrics` on `port`: every sample by its name and labels.
pub(crate) fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse::<f64>().unwrap_or(f64::NAN))
        })
        .collect()
}

fn m(map: &BTreeMap<String, f64>, key: &str) -> f64 {
    *map.get(key)
        .unwrap_or_else(|| panic!("no {key} in {map:#?}"))
}

fn write_wal(pg: &PgCluster, mib: u64) -> u64 {
    let target = parse_lsn(&pg.current_lsn()) + mib * 1024 * 1024;
    while parse_lsn(&pg.current_lsn()) < target {
        pg.psql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    }
    parse_lsn(&pg.current_lsn())
}

fn wait_for(
    port: u16,
    what: &str,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = scrape(port);
        if pred(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn metrics_move_with_a_provider_outage_and_recover() {
    let pg = PgCluster::start(15, ClusterOpts::default().conf("synchronous_commit = off"));
    let second = tempfile::tempdir().unwrap();
    let port = free_port();
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n\n\
             [spool]\nmax_size = \"2MiB\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{SMALL_PARTS}",
            second.path().display()
        ),
    );
    pg.psql("CREATE TABLE filler(id int, t text)");
    let flag = lb.dir.path().join("second-is-down");
    let fault = format!("second={}", flag.display());
    let mut stream = lb.spawn_stream_with(&[("LIFEBOAT_FAULT_INJECT", &fault)]);
    wait_caught_up(&pg, Duration::from_secs(120), &lb);
    expect_success(
        &lb.run(&["backup", "--fast"], Duration::from_secs(600)),
        "backup",
    );
    let before = write_wal(&pg, 2);
    wait_archived(&pg, before, Duration::from_secs(60), &lb);

    // Healthy: streaming, both providers up and storing, nothing spooled, the newest
    // backup's end known.
    let ok = wait_for(port, "healthy", |x| {
        x.get("lifeboat_wal_acknowledged_lsn")
            .copied()
            .unwrap_or(0.0)
            >= before as f64
    });
    assert_eq!(m(&ok, "lifeboat_streaming"), 1.0);
    assert_eq!(m(&ok, "lifeboat_provider_up{provider=\"local\"}"), 1.0);
    assert_eq!(m(&ok, "lifeboat_provider_up{provider=\"second\"}"), 1.0);
    assert!(m(&ok, "lifeboat_uploaded_objects_total{provider=\"second\"}") >= 1.0);
    assert!(m(&ok, "lifeboat_uploaded_bytes_total{provider=\"local\"}") > 0.0);
    assert!(
        m(
            &ok,
            "lifeboat_upload_duration_seconds_count{provider=\"local\"}"
        ) >= 1.0
    );
    assert_eq!(m(&ok, "lifeboat_spool_bytes"), 0.0);
    assert_eq!(m(&ok, "lifeboat_spool_limit_bytes"), 2.0 * 1024.0 * 1024.0);
    assert!(m(&ok, "lifeboat_server_wal_lsn") >= before as f64);
    let list = lb.list_json();
    let backup_end = list["backups"][0]["end_time"].as_str().unwrap().to_string();
    let secs = |t: &str| -> f64 {
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "-d", t, "+%s.%N"])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .parse()
        .unwrap()
    };
    let end_secs = secs(&backup_end);
    let start_secs = secs(list["backups"][0]["start_time"].as_str().unwrap());
    let seen_end = m(&ok, "lifeboat_last_backup_end_timestamp_seconds");
    assert!(
        (seen_end - end_secs).abs() < 0.01,
        "{seen_end} vs {end_secs}"
    );
    // The backup's own figures (its times have whole seconds: a quick one may take 0 s).
    let took = m(&ok, "lifeboat_last_backup_duration_seconds");
    assert!((took - (end_secs - start_secs)).abs() < 0.01, "{took}");
    assert_eq!(m(&ok, "lifeboat_archive_read_ok"), 1.0);

    // Provider "second" down, more WAL than the spool holds: it shows down, the spool
    // fills, nothing new is acknowledged, and the lag grows in bytes and seconds.
    std::fs::write(&flag, b"down").unwrap();
    let written = write_wal(&pg, 24);
    let down = wait_for(port, "the outage", |x| {
        x.get("lifeboat_provider_up{provider=\"second\"}") == Some(&0.0)
            && x.get("lifeboat_archive_lag_seconds")
                .copied()
                .unwrap_or(0.0)
                >= 2.0
    });
    assert_eq!(m(&down, "lifeboat_provider_up{provider=\"local\"}"), 1.0);
    assert!(
        m(&down, "lifeboat_spool_bytes") >= 1024.0 * 1024.0,
        "{down:#?}"
    );
    let lag = m(&down, "lifeboat_archive_lag_bytes");
    assert_eq!(
        lag,
        m(&down, "lifeboat_server_wal_lsn") - m(&down, "lifeboat_wal_acknowledged_lsn"),
        "{down:#?}"
    );
    assert!(lag >= 4.0 * 1024.0 * 1024.0, "{down:#?}");
    assert!(m(&down, "lifeboat_slot_retained_bytes") >= lag, "{down:#?}");
    // No drill and no prune in the archive yet: absent, not 0 ("failed").
    assert!(
        !down.contains_key("lifeboat_last_drill_success"),
        "{down:#?}"
    );
    assert!(
        !down.contains_key("lifeboat_last_prune_timestamp_seconds"),
        "{down:#?}"
    );
    assert!(m(&down, "lifeboat_upload_failures_total{provider=\"second\"}") >= 1.0);
    assert!(
        m(
            &down,
            "lifeboat_provider_last_upload_timestamp_seconds{provider=\"second\"}"
        ) < m(
            &down,
            "lifeboat_provider_last_upload_timestamp_seconds{provider=\"local\"}"
        ),
        "{down:#?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let later = scrape(port);
    assert!(
        m(&later, "lifeboat_archive_lag_seconds") > m(&down, "lifeboat_archive_lag_seconds"),
        "the lag keeps growing while nothing is acknowledged"
    );

    // Back: the spool drains, the lag goes back to nothing.
    std::fs::remove_file(&flag).unwrap();
    let end = parse_lsn(&pg.switch_wal());
    wait_archived(&pg, end.max(written), Duration::from_secs(120), &lb);
    let back = wait_for(port, "the recovery", |x| {
        x.get("lifeboat_provider_up{provider=\"second\"}") == Some(&1.0)
            && x.get("lifeboat_spool_bytes") == Some(&0.0)
            && x.get("lifeboat_archive_lag_bytes") == Some(&0.0)
    });
    assert_eq!(m(&back, "lifeboat_archive_lag_seconds"), 0.0);
    assert!(
        m(&back, "lifeboat_wal_acknowledged_lsn") >= written as f64,
        "{back:#?}"
    );
    assert!(
        m(
            &back,
            "lifeboat_uploaded_objects_total{provider=\"second\"}"
        ) > m(&ok, "lifeboat_uploaded_objects_total{provider=\"second\"}")
    );
    sigterm(&mut stream);
    wait_child(&mut stream, Duration::from_secs(30), "stream");
}
