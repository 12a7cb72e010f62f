//! The systemd service: `lifeboat stream` against a real cluster with `NOTIFY_SOCKET`
//! pointing at a datagram socket this test binds (as systemd's is), and the shipped units
//! (`contrib/lifeboat.service`, `contrib/lifeboat@.service`) through `systemd-analyze
//! verify`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The notify messages received within `d` (each datagram's lines), or until `until`
/// says a message is the one awaited.
fn receive(sock: &UnixDatagram, d: Duration, until: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + d;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = text.lines().any(&until);
                got.extend(text.lines().map(str::to_string));
                if done {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receiving on the notify socket: {e}"),
        }
    }
    got
}

fn count(msgs: &[String], m: &str) -> usize {
    msgs.iter().filter(|l| *l == m).count()
}

#[test]
fn the_streamer_tells_systemd_ready_watchdog_status_and_stopping() {
    let pg = PgCluster::start(15, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, "");
    // The server is down when the service starts: no READY=1 until WAL streams.
    pg.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut child = lb.spawn_stream_with(&[
        ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
        ("WATCHDOG_USEC", "1000000"),
    ]);

    let before = receive(&sock, Duration::from_secs(5), |_| false);
    assert_eq!(count(&before, "READY=1"), 0, "{before:?}");
    // The loop that retries the connection feeds the watchdog (every 0.25 to 0.5 s).
    assert!(
        count(&before, "WATCHDOG=1") >= 4,
        "{before:?}\n{}",
        lb.stream_log()
    );
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("STATUS=not streaming: cannot connect: ")),
        "{before:?}"
    );

    // The server is back: READY=1 comes once the slot is streaming.
    pg.start_again();
    let to_ready = receive(&sock, Duration::from_secs(60), |l| l == "READY=1");
    assert_eq!(
        to_ready.last().map(String::as_str),
        Some("READY=1"),
        "{to_ready:?}\n{}",
        lb.stream_log()
    );
    assert_eq!(
        pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'lifeboat'")
            .trim(),
        "t",
        "READY=1 came before the slot was streaming"
    );

    // Streaming: the watchdog keeps being fed, and STATUS= follows the acknowledged
    // position.
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS id");
    let lsn = pg.switch_wal();
    wait_archived(&pg, parse_lsn(&lsn), Duration::from_secs(60), &lb);
    let streaming = receive(&sock, Duration::from_secs(4), |_| false);
    assert!(count(&streaming, "WATCHDOG=1") >= 5, "{streaming:?}");
    assert_eq!(
        count(&streaming, "READY=1"),
        0,
        "READY=1 twice: {streaming:?}"
    );
    let acked = streaming
        .iter()
        .chain(&to_ready)
        .filter_map(|l| l.strip_prefix("STATUS=streaming timeline 1: received "))
        .filter_map(|l| l.split(", acknowledged ").nth(1))
        .map(parse_lsn)
        .max();
    assert!(
        acked.is_some_and(|a| a >= parse_lsn(&lsn)),
        "no STATUS= with the archived position {lsn}: {streaming:?}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    sigterm(&mut child.0);
    let stopping = receive(&sock, Duration::from_secs(30), |l| l == "STOPPING=1");
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let st = wait_child(&mut child.0, Duration::from_secs(60), "lifeboat stream");
    assert!(st.success(), "{st:?}\n{}", lb.stream_log());
}

/// Messages with the time each arrived.
fn receive_timed(sock: &UnixDatagram, d: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + d;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let at = Instant::now();
            for l in String::from_utf8_lossy(&buf[..n]).lines() {
                got.push((at, l.to_string()));
            }
        }
    }
    got
}

/// A provider down and the spool full: the streamer waits on the pipeline, which is no
/// hang, so the watchdog keeps being fed (systemd would restart a service that missed it),
/// and STATUS= says what is wrong.
#[test]
fn waiting_on_a_full_spool_still_feeds_the_watchdog() {
    let pg = PgCluster::start(15, ClusterOpts::default().conf("synchronous_commit = off"));
    let second = tempfile::tempdir().expect("tempdir");
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "[[storage]]\nname = \"second\"\nurl = \"file://{}\"\n\n[spool]\nmax_size = \"2MiB\"\n",
            second.path().display()
        ),
    );
    let flag = lb.dir.path().join("second-is-down");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let fault = format!("second={}", flag.display());
    let mut child = lb.spawn_stream_with(&[
        ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
        ("WATCHDOG_USEC", "2000000"),
        ("LIFEBOAT_FAULT_INJECT", &fault),
    ]);
    let ready = receive(&sock, Duration::from_secs(60), |l| l == "READY=1");
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");

    std::fs::write(&flag, b"down").expect("flag");
    pg.psql("CREATE TABLE filler(id int, t text)");
    let target = parse_lsn(&pg.current_lsn()) + 48 * 1024 * 1024;
    while parse_lsn(&pg.current_lsn()) < target {
        pg.psql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lb
        .stream_log()
        .contains("the spool is full while a provider is down")
    {
        assert!(Instant::now() < deadline, "{}", lb.stream_log());
        let _ = sock.recv(&mut [0u8; 4096]);
    }
    let msgs = receive_timed(&sock, Duration::from_secs(8));
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 4, "{msgs:?}");
    let gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("two pings");
    assert!(
        gap < Duration::from_secs(2),
        "the watchdog went {gap:?} without a ping (WatchdogSec 2 s)"
    );
    let statuses: Vec<&String> = msgs
        .iter()
        .map(|(_, l)| l)
        .chain(&ready)
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|l| l.contains("; down: second; spool ")),
        "{statuses:?}"
    );
    // The provider back; from here on nobody reads the notify socket, whose queue fills
    // within seconds: archiving must not wait on it.
    std::fs::remove_file(&flag).expect("provider back");
    let end = parse_lsn(&pg.switch_wal());
    wait_archived(&pg, end, Duration::from_secs(120), &lb);
    sigterm(&mut child.0);
    let st = wait_child(&mut child.0, Duration::from_secs(60), "lifeboat stream");
    assert!(st.success(), "{st:?}");
}

/// `lifeboat stream` without `NOTIFY_SOCKET` (not under systemd) is unchanged: it streams,
/// and the notify code sends nothing anywhere (the socket it would have used stays empty).
#[test]
fn without_notify_socket_nothing_is_sent() {
    let pg = PgCluster::start(15, ClusterOpts::default());
    let lb = Lb::for_cluster(&pg, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = UnixDatagram::bind(dir.path().join("notify")).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let streamer = lb.spawn_stream_with(&[("WATCHDOG_USEC", "1000000")]);
    wait_caught_up(&pg, Duration::from_secs(60), &lb);
    let got = receive(&sock, Duration::from_secs(2), |_| false);
    assert!(got.is_empty(), "{got:?}");
    stop_streamer(streamer);
}

/// Copy a unit into `dir` with its ExecStart pointing at the built binary (verify checks
/// that the program exists); the rest is verified as shipped.
fn stage_unit(name: &str, dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
    assert!(text.contains("/usr/local/bin/lifeboat --config"), "{name}");
    std::fs::write(dir.join(name), text.replace("/usr/local/bin/lifeboat", BIN))
        .expect("write unit");
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    for (name, config, rw) in [
        (
            "lifeboat.service",
            "--config /etc/lifeboat/lifeboat.toml stream",
            "ReadWritePaths=/var/lib/lifeboat\n",
        ),
        (
            "lifeboat@.service",
            "--config /etc/lifeboat/%i.toml stream",
            "ReadWritePaths=/var/lib/lifeboat/%i\n",
        ),
    ] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("contrib")
                .join(name),
        )
        .expect("unit");
        for line in [
            "Type=notify\n",
            "WatchdogSec=60\n",
            "Restart=always\n",
            "User=lifeboat\n",
            "ProtectSystem=strict\n",
            "NoNewPrivileges=true\n",
            "PrivateTmp=true\n",
            rw,
            config,
        ] {
            assert!(text.contains(line), "{name} lacks {line:?}");
        }
    }
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    stage_unit("lifeboat.service", dir.path());
    stage_unit("lifeboat@.service", dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("lifeboat.service"))
        // A template is verified through an instance.
        .arg(dir.path().join("lifeboat@main.service"))
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and other mistakes are warnings with exit 0: there must be none.
    assert_eq!(stderr.trim(), "", "systemd-analyze verify complained");
}
