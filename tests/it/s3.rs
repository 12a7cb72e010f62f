//! The `s3://` backend against two real S3-compatible servers on loopback (moto and s3s-fs,
//! from scripts/install-s3.sh): one conformance suite for every backend (the file store too),
//! `lifeboat stream` end to end with the archive on S3, Object Lock (against moto, which
//! enforces it), and the exact messages for bad credentials, a missing bucket, an
//! unreachable endpoint and a lock request on a bucket without Object Lock.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lifeboat::storage::s3::S3Store;
use lifeboat::storage::StorageConfig;
use lifeboat::storage::{FileStore, ObjectStore};

use crate::support::s3::*;
use crate::support::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn storage_config(toml_text: &str) -> StorageConfig {
    #[derive(serde::Deserialize)]
    struct Wrap {
        storage: Vec<StorageConfig>,
    }
    let w: Wrap = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    w.storage.into_iter().next().unwrap()
}

/// An S3Store on `srv`, with multipart from 5 MiB on so the suite exercises it.
fn s3_store(srv: &S3Server, bucket: &str, prefix: &str, extra: &str) -> S3Store {
    set_credentials_env();
    let cfg = storage_config(&srv.storage_toml(srv.kind.name(), bucket, prefix, extra));
    let mut s = S3Store::new(&cfg).unwrap();
    s.set_multipart(5 * 1024 * 1024, 5 * 1024 * 1024);
    s
}

fn keys(v: Vec<lifeboat::storage::ObjectMeta>) -> Vec<String> {
    v.into_iter().map(|m| m.key).collect()
}

fn pseudo_random(len: usize, seed: u32) -> Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

/// The same behaviour from every backend.
async fn conformance(s: Arc<dyn ObjectStore>, what: &str) {
    assert_eq!(s.get("wal/a").await.unwrap(), None, "{what}: missing key");
    s.delete("wal/never-there").await.unwrap();
    s.put("wal/00000001/b", Bytes::from_static(b"2"))
        .await
        .unwrap();
    s.put("wal/00000001/a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    s.put("wal/00000002/a", Bytes::from_static(b"3"))
        .await
        .unwrap();
    s.put("history/x", Bytes::from_static(b"h")).await.unwrap();
    s.put("wal/00000001/a", Bytes::from_static(b"11"))
        .await
        .unwrap();
    assert_eq!(
        s.get("wal/00000001/a").await.unwrap().unwrap(),
        Bytes::from_static(b"11"),
        "{what}: overwrite"
    );
    let l = s.list("wal/").await.unwrap();
    assert_eq!(
        keys(l.clone()),
        vec!["wal/00000001/a", "wal/00000001/b", "wal/00000002/a"],
        "{what}: list"
    );
    assert_eq!(l[0].size, 2, "{what}: size");
    assert_eq!(
        keys(s.list("wal/00000001/").await.unwrap()),
        vec!["wal/00000001/a", "wal/00000001/b"],
        "{what}"
    );
    assert_eq!(
        keys(s.list("wal/00000001/a").await.unwrap()),
        vec!["wal/00000001/a"],
        "{what}"
    );
    assert_eq!(s.list("").await.unwrap().len(), 4, "{what}: list all");
    assert!(s.list("nothing/").await.unwrap().is_empty(), "{what}");
    s.delete("wal/00000001/a").await.unwrap();
    assert_eq!(
        s.get("wal/00000001/a").await.unwrap(),
        None,
        "{what}: delete"
    );
    assert_eq!(
        keys(s.list("wal/00000001/").await.unwrap()),
        vec!["wal/00000001/b"],
        "{what}"
    );
    // Empty objects and a large one (multipart on S3: three parts of at most 5 MiB).
    s.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(s.get("empty").await.unwrap().unwrap().len(), 0, "{what}");
    let big = pseudo_random(12 * 1024 * 1024 + 12345, 7);
    s.put("base/big", big.clone()).await.unwrap();
    let got = s.get("base/big").await.unwrap().unwrap();
    assert!(got == big, "{what}: large object differs");
    assert_eq!(
        s.list("base/").await.unwrap()[0].size,
        big.len() as u64,
        "{what}"
    );
    // More keys than one listing page (1000), in order.
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..1010u32 {
        let s = s.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            s.put(&format!("many/{i:05}"), Bytes::from(i.to_string()))
                .await
                .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let many = keys(s.list("many/").await.unwrap());
    let want: Vec<String> = (0..1010).map(|i| format!("many/{i:05}")).collect();
    assert_eq!(many, want, "{what}: paginated listing");
}

#[test]
fn conformance_file_moto_s3s_fs() {
    let rt = rt();
    let d = tempfile::tempdir().unwrap();
    rt.block_on(conformance(
        Arc::new(FileStore::new("file", d.path().join("archive"))),
        "file",
    ));
    for kind in Kind::all() {
        let srv = S3Server::start(kind);
        srv.create_bucket("conf", false);
        // Two stores under different prefixes of one bucket do not see each other.
        let a: Arc<dyn ObjectStore> = Arc::new(s3_store(&srv, "conf", "cluster-a/x", ""));
        let b: Arc<dyn ObjectStore> = Arc::new(s3_store(&srv, "conf", "cluster-b", ""));
        rt.block_on(async {
            b.put("wal/00000001/z", Bytes::from_static(b"other"))
                .await
                .unwrap();
            conformance(a.clone(), kind.name()).await;
            assert_eq!(keys(b.list("").await.unwrap()), vec!["wal/00000001/z"]);
            assert!(!a.features().object_lock, "{}", kind.name());
        });
        let all = srv.keys("conf");
        assert!(
            all.contains(&"cluster-a/x/wal/00000001/b".to_string()),
            "{all:?}"
        );
        assert!(all.iter().all(|k| k.starts_with("cluster-")), "{all:?}");
    }
}

/// Every object lifeboat writes carries its CRC32: the servers store the value lifeboat
/// sent, and a server that verifies it (s3s-fs, like AWS; moto only stores it) refuses a body
/// that does not match.
#[test]
fn puts_carry_a_crc32_the_provider_checks() {
    let rt = rt();
    for kind in Kind::all() {
        let srv = S3Server::start(kind);
        srv.create_bucket("crc", false);
        let store = s3_store(&srv, "crc", "p", "");
        let body = pseudo_random(100_000, 11);
        rt.block_on(store.put("k", body.clone())).unwrap();
        // GetObject with checksum mode on: the SDK also validates the body against it.
        let got = srv
            .block_on(
                srv.client()
                    .get_object()
                    .bucket("crc")
                    .key("p/k")
                    .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        assert_eq!(
            got.checksum_crc32(),
            Some(lifeboat::storage::s3::crc32_base64(&body).as_str()),
            "{}",
            kind.name()
        );
        if kind == Kind::S3sFs {
            let r = srv.block_on(
                srv.client()
                    .put_object()
                    .bucket("crc")
                    .key("k")
                    .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                    .checksum_crc32(lifeboat::storage::s3::crc32_base64(b"not the body"))
                    .body(Bytes::from_static(b"the body").into())
                    .send(),
            );
            assert!(r.is_err(), "{}: a wrong CRC32 was accepted", kind.name());
        }
    }
}

#[test]
fn object_lock_protects_every_object_until_its_date() {
    let srv = S3Server::start(Kind::Moto);
    srv.create_bucket("locked", true);
    let rt = rt();
    for (mode, days) in [("governance", 2u64), ("compliance", 1)] {
        let prefix = format!("lock-{mode}");
        let store = s3_store(
            &srv,
            "locked",
            &prefix,
            &format!("object_lock = {{ mode = \"{mode}\", days = {days} }}"),
        );
        let big = pseudo_random(11 * 1024 * 1024, 3);
        rt.block_on(async {
            store.check().await.unwrap();
            assert!(store.features().object_lock);
            store.put("wal/k", Bytes::from_static(b"v1")).await.unwrap();
            store.put("base/big", big.clone()).await.unwrap();
        });
        let c = store.client().clone();
        for key in ["wal/k", "base/big"] {
            let full = format!("{prefix}/{key}");
            let head = rt
                .block_on(c.head_object().bucket("locked").key(&full).send())
                .unwrap();
            assert_eq!(
                head.object_lock_mode().map(|m| m.as_str().to_lowercase()),
                Some(mode.to_string()),
                "{full}"
            );
            let until = head
                .object_lock_retain_until_date()
                .expect("retain-until date");
            let want = SystemTime::now() + Duration::from_secs(days * 86_400);
            let want = aws_sdk_s3::primitives::DateTime::from(want).secs();
            assert!(
                (until.secs() - want).abs() < 300,
                "{full}: retain until {until} not ~{days} days from now"
            );
        }
        // Overwrite: a new version; the locked one stays, readable by its version id.
        let v1 = rt
            .block_on(
                c.head_object()
                    .bucket("locked")
                    .key(format!("{prefix}/wal/k"))
                    .send(),
            )
            .unwrap()
            .version_id()
            .unwrap()
            .to_string();
        rt.block_on(store.put("wal/k", Bytes::from_static(b"v2")))
            .unwrap();
        // lifeboat deletes by version id, so a locked object is refused, not hidden behind
        // a delete marker: it reads as before...
        let err = rt
            .block_on(store.delete("wal/k"))
            .expect_err("a locked object was deleted");
        assert!(!err.is_retryable(), "{mode}: {err}");
        assert_eq!(
            rt.block_on(store.get("wal/k")).unwrap().as_deref(),
            Some(&b"v2"[..]),
            "{mode}"
        );
        let old = rt
            .block_on(
                c.get_object()
                    .bucket("locked")
                    .key(format!("{prefix}/wal/k"))
                    .version_id(&v1)
                    .send(),
            )
            .unwrap();
        let body = rt.block_on(old.body.collect()).unwrap().into_bytes();
        assert_eq!(&body[..], b"v1", "{mode}: the locked version changed");
        // ...and deleting the locked version itself is refused.
        let del = rt.block_on(
            c.delete_object()
                .bucket("locked")
                .key(format!("{prefix}/wal/k"))
                .version_id(&v1)
                .send(),
        );
        let err = del.expect_err("a locked version was deleted");
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&err).map(str::to_string);
        assert_eq!(code.as_deref(), Some("AccessDenied"), "{mode}: {err:?}");
    }
}

/// `prune`'s lock extension: a retain-until date is raised to a kept point's date, never
/// lowered, and the mode stays; in a versioned bucket a delete of an unlocked object leaves
/// no version and no delete marker behind.
#[test]
fn retention_is_only_ever_extended_and_deletes_leave_no_versions() {
    use lifeboat::storage::Extended;
    let srv = S3Server::start(Kind::Moto);
    srv.create_bucket("vault", true);
    let rt = rt();
    let store = s3_store(
        &srv,
        "vault",
        "x",
        "object_lock = { mode = \"governance\", days = 1 }",
    );
    let c = store.client().clone();
    let retention = |key: &str| {
        let h = rt
            .block_on(
                c.head_object()
                    .bucket("vault")
                    .key(format!("x/{key}"))
                    .send(),
            )
            .unwrap();
        (
            h.object_lock_mode().unwrap().as_str().to_string(),
            h.object_lock_retain_until_date().unwrap().secs(),
        )
    };
    rt.block_on(store.put("backups/b/base.tar", Bytes::from_static(b"data")))
        .unwrap();
    let day = |n: u64| SystemTime::now() + Duration::from_secs(n * 86_400);
    let secs = |t: SystemTime| aws_sdk_s3::primitives::DateTime::from(t).secs();
    let (_, first) = retention("backups/b/base.tar");
    assert!((first - secs(day(1))).abs() < 300);
    let target = day(30);
    assert_eq!(
        rt.block_on(store.extend_retention("backups/b/base.tar", target))
            .unwrap(),
        Extended::Raised
    );
    assert_eq!(
        retention("backups/b/base.tar"),
        ("GOVERNANCE".to_string(), secs(target))
    );
    // An earlier date (a later run whose tiers keep it less long) changes nothing.
    assert_eq!(
        rt.block_on(store.extend_retention("backups/b/base.tar", day(10)))
            .unwrap(),
        Extended::Held
    );
    assert_eq!(retention("backups/b/base.tar").1, secs(target));
    // Still locked: lifeboat's delete is refused and the object stays.
    assert!(rt.block_on(store.delete("backups/b/base.tar")).is_err());
    assert!(rt
        .block_on(store.get("backups/b/base.tar"))
        .unwrap()
        .is_some());

    // An old locked version under a newer unlocked one: the delete starts with the oldest,
    // is refused there, and leaves the key reading as it did (newest first would have
    // deleted the new version and brought the old content back).
    rt.block_on(store.put("wal/k", Bytes::from_static(b"old")))
        .unwrap();
    let unlocked = s3_store(&srv, "vault", "x", "");
    rt.block_on(unlocked.put("wal/k", Bytes::from_static(b"new")))
        .unwrap();
    assert!(rt.block_on(unlocked.delete("wal/k")).is_err());
    assert_eq!(
        rt.block_on(unlocked.get("wal/k")).unwrap().as_deref(),
        Some(&b"new"[..])
    );
    let open = s3_store(&srv, "vault", "y", "");
    rt.block_on(async {
        open.put("wal/k", Bytes::from_static(b"v1")).await.unwrap();
        open.put("wal/k", Bytes::from_static(b"v2")).await.unwrap();
        open.delete("wal/k").await.unwrap();
    });
    let versions = rt
        .block_on(c.list_object_versions().bucket("vault").prefix("y/").send())
        .unwrap();
    assert!(
        versions.versions().is_empty() && versions.delete_markers().is_empty(),
        "{versions:?}"
    );
    assert_eq!(rt.block_on(open.get("wal/k")).unwrap(), None);
}

#[test]
fn object_lock_on_a_bucket_without_it_is_refused() {
    let srv = S3Server::start(Kind::Moto);
    srv.create_bucket("plain", false);
    let store = s3_store(
        &srv,
        "plain",
        "p",
        "object_lock = { mode = \"compliance\", days = 7 }",
    );
    let e = rt()
        .block_on(store.put("k", Bytes::from_static(b"x")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "storage \"moto\": check s3://plain/p: object_lock is configured, but bucket \"plain\" does not have Object Lock enabled\nhint: create a bucket with Object Lock enabled (most providers cannot turn it on later) and point url at it, or remove object_lock from this [[storage]] entry"
    );
    assert!(!e.is_retryable());
    assert!(srv.keys("plain").is_empty(), "nothing was written");
}

/// Run `lifeboat verify` (no PostgreSQL needed) with `storage` as an extra provider, and
/// return its `error:` line.
fn verify_error(storage: &str, env: &[(&str, &str)]) -> String {
    let lb = Lb::with("host=127.0.0.1", "", storage);
    let mut c = lb.cmd();
    c.args(["verify"]).envs(env.iter().copied());
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr_of(&out));
    first_error_line(&out)
}

#[test]
fn bad_input_s3_errors_are_exact() {
    let moto = S3Server::start(Kind::Moto);
    let fs = S3Server::start(Kind::S3sFs);
    moto.create_bucket("plain", false);
    fs.create_bucket("plain", false);
    let good = cred_env();

    // A wrong secret: the signature does not match.
    let e = verify_error(
        &fs.storage_toml("offsite", "plain", "a", ""),
        &[(KEY_VAR, ACCESS_KEY), (SECRET_VAR, "wrong-secret")],
    );
    assert_eq!(e, "error: storage \"offsite\": check s3://plain/a: the secret access key does not match the access key id (SignatureDoesNotMatch)\nhint: check the variables named by access_key_id_env/secret_access_key_env (LIFEBOAT_TEST_S3_KEY_ID, LIFEBOAT_TEST_S3_SECRET)");

    // An access key the provider does not know.
    let e = verify_error(
        &fs.storage_toml("offsite", "plain", "a", ""),
        &[(KEY_VAR, "nosuchkey"), (SECRET_VAR, SECRET_KEY)],
    );
    assert_eq!(e, "error: storage \"offsite\": check s3://plain/a: the provider does not know this access key id (NotSignedUp)\nhint: check the variables named by access_key_id_env/secret_access_key_env (LIFEBOAT_TEST_S3_KEY_ID, LIFEBOAT_TEST_S3_SECRET)");

    // The variable the config names is not set: tests/cmd/verify.toml
    // (s3-credential-variable-not-set).

    // A bucket that does not exist, on both servers.
    for srv in [&moto, &fs] {
        let e = verify_error(&srv.storage_toml("offsite", "nosuch", "a", ""), &good);
        assert_eq!(e, "error: storage \"offsite\": check s3://nosuch/a: bucket \"nosuch\" does not exist\nhint: create the bucket (with Object Lock, where the provider has it), or fix the bucket in url", "{}", srv.kind.name());
    }

    // Nothing listens on the endpoint.
    let port = free_port();
    let storage = format!(
        "[[storage]]\nname = \"offsite\"\nurl = \"s3://plain/a\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         region = \"us-east-1\"\naccess_key_id_env = \"{KEY_VAR}\"\nsecret_access_key_env = \"{SECRET_VAR}\"\n"
    );
    let e = verify_error(&storage, &good);
    assert!(
        e.starts_with(&format!("error: storage \"offsite\": check s3://plain/a: cannot reach http://127.0.0.1:{port}: ")) &&
        e.ends_with("\nhint: check endpoint, and that the provider is up and reachable from this host"),
        "{e}"
    );
    assert!(e.contains("onnection refused"), "{e}");

    // The wrong region: moto accepts the signature but knows where the bucket is. On a
    // custom endpoint that is a warning (on AWS, with no endpoint, it is refused).
    moto.block_on(
        moto.client()
            .create_bucket()
            .bucket("europe")
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let lb = Lb::with(
        "host=127.0.0.1",
        "",
        &moto.storage_toml("offsite", "europe", "a", ""),
    );
    let mut c = lb.cmd();
    c.arg("verify").envs(good.iter().copied());
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("WARN lifeboat::storage::s3: bucket \"europe\" reports location \"eu-west-1\", but region = \"{REGION}\" (hint: set region = \"eu-west-1\" in this [[storage]] entry if the provider expects it) provider=offsite")),
        "{stderr}"
    );

    // This host's clock two hours behind (libfaketime around the real binary). s3s-fs
    // refuses such a signature (RequestTimeTooSkewed); the SDK retries with the provider's
    // time, so lifeboat goes on, and says loudly that the clock is off and by how much.
    let lb = Lb::with(
        "host=127.0.0.1",
        "",
        &fs.storage_toml("offsite", "plain", "skewed", ""),
    );
    let base = lb.cmd();
    let mut c = clean_command("faketime");
    c.args(["-f", "-2h"])
        .arg(base.get_program())
        .args(base.get_args())
        .arg("verify")
        .env("HOME", lb.dir.path())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .envs(good.iter().copied());
    let out = run_timeout(&mut c, Duration::from_secs(120), None).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("WARN lifeboat::storage::s3: this host's clock is 120 minutes behind the provider's: requests are corrected for it, but synchronise the clock (NTP: systemd-timesyncd, chrony) provider=offsite"),
        "{stderr}"
    );
    // The provider answered despite the skew: the (empty) prefix was listed.
    assert!(
        stdout.contains("problem: archive.json is missing: the archive was never written"),
        "{stdout}\n{stderr}"
    );

    // A lock request against a bucket without Object Lock.
    let e = verify_error(
        &moto.storage_toml(
            "offsite",
            "plain",
            "a",
            "object_lock = { mode = \"governance\", days = 7 }",
        ),
        &good,
    );
    assert_eq!(e, "error: storage \"offsite\": check s3://plain/a: object_lock is configured, but bucket \"plain\" does not have Object Lock enabled\nhint: create a bucket with Object Lock enabled (most providers cannot turn it on later) and point url at it, or remove object_lock from this [[storage]] entry");
}

/// Both S3 servers with a bucket "archive" (moto's with Object Lock, governance retention
/// on every object) and the `[[storage]]` tables for them, prefix "pg".
pub(crate) fn two_s3_providers() -> (S3Server, S3Server, String) {
    let moto = S3Server::start(Kind::Moto);
    let fs = S3Server::start(Kind::S3sFs);
    moto.create_bucket("archive", true);
    fs.create_bucket("archive", false);
    let storage = format!(
        "{}\n{}",
        moto.storage_toml(
            "moto",
            "archive",
            "pg",
            "object_lock = { mode = \"governance\", days = 1 }"
        ),
        fs.storage_toml("s3s-fs", "archive", "pg", "")
    );
    (moto, fs, storage)
}

/// `lifeboat stream` to a file store and both S3 servers (moto with Object Lock); every
/// provider gets the same objects; `wal-fetch` from S3 alone returns the server's segment
/// byte for byte, and falls back to the other S3 server when the first is down.
fn stream_to_s3(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    let (mut moto, fs, extra) = two_s3_providers();
    let lb = Lb::for_cluster(&pg, &extra);
    let stream = |endpos: u64| {
        let mut c = lb.cmd();
        c.args(["stream", "--endpos", &fmt_lsn(endpos)])
            .envs(cred_env());
        let out = run_timeout(&mut c, Duration::from_secs(180), None).unwrap();
        assert!(
            out.status.success(),
            "PG {major}: stream failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Create the slot, then write WAL and finish a segment.
    stream(parse_lsn(&pg.current_lsn()));
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g");
    let switch = parse_lsn(&pg.switch_wal());
    let name = seg_name(1, switch, SEG);
    let server_copy = std::fs::read(pg.wal_dir().join(&name)).unwrap();
    pg.psql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g");
    let end = parse_lsn(&pg.current_lsn());
    stream(end);

    // Same objects on every provider.
    let local = lb.archive_files("");
    assert!(
        local
            .iter()
            .any(|k| k == &format!("wal/00000001/{name}.seg")),
        "{local:?}"
    );
    for srv in [&moto, &fs] {
        let ks: Vec<String> = srv
            .keys("archive")
            .into_iter()
            .map(|k| k.strip_prefix("pg/").unwrap().to_string())
            .collect();
        assert_eq!(
            ks,
            local,
            "PG {major}: {} holds other objects",
            srv.kind.name()
        );
    }

    // With the local archive gone, wal-fetch reads from S3.
    std::fs::remove_dir_all(&lb.archive).unwrap();
    let fetch = |dest: &std::path::Path| {
        let mut c = lb.cmd();
        c.arg("--identity")
            .arg(&lb.identity)
            .arg("wal-fetch")
            .arg(&name)
            .arg(dest)
            .envs(cred_env());
        run_timeout(&mut c, Duration::from_secs(120), None).unwrap()
    };
    let dest = lb.dir.path().join("fetched-moto");
    let out = fetch(&dest);
    assert!(
        out.status.success(),
        "wal-fetch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&dest).unwrap() == server_copy,
        "PG {major}: {name} from moto differs from the server's pg_wal"
    );
    // moto down: the segment comes from s3s-fs.
    moto.stop();
    let dest = lb.dir.path().join("fetched-s3s-fs");
    let out = fetch(&dest);
    assert!(
        out.status.success(),
        "wal-fetch with moto down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&dest).unwrap() == server_copy,
        "PG {major}: {name} from s3s-fs differs from the server's pg_wal"
    );
}

/// 15 and the newest installed major (if that is not 15).
#[test]
fn stream_end_to_end_on_s3() {
    for major in fifteen_and_newest_majors() {
        stream_to_s3(major);
    }
}

/// Credentials from a named profile of ~/.aws/credentials (lifeboat runs with HOME set to
/// the workspace): the good pair works, a wrong secret names the profile in the hint.
#[test]
fn profile_credentials() {
    let fs = S3Server::start(Kind::S3sFs);
    fs.create_bucket("plain", false);
    let storage = format!(
        "[[storage]]\nname = \"offsite\"\nurl = \"s3://plain/a\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\nprofile = \"lbtest\"\n",
        fs.endpoint
    );
    let lb = Lb::with("host=127.0.0.1", "", &storage);
    let aws = lb.dir.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let write = |secret: &str| {
        std::fs::write(
            aws.join("credentials"),
            format!(
                "[lbtest]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"
            ),
        )
        .unwrap()
    };
    let verify = || {
        let mut c = lb.cmd();
        c.args(["--json", "verify"])
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_PROFILE");
        run_timeout(&mut c, Duration::from_secs(120), None).unwrap()
    };
    write(SECRET_KEY);
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Reached, and found the archive empty: the only error is verify's own.
    assert!(
        stderr
            .lines()
            .all(|l| !l.starts_with("error: ") || l == "error: verification found problems"),
        "{stderr}"
    );
    // The empty archive is reported, per provider: the S3 one was reached.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["providers"][1]["provider"], "offsite", "{v}");
    write("wrong-secret");
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = first_error_line(&out);
    assert_eq!(line, "error: storage \"offsite\": check s3://plain/a: the secret access key does not match the access key id (SignatureDoesNotMatch)\nhint: check the credentials of profile \"lbtest\"", "{stderr}");
}

/// Backup, restore plan and drill with the archive on the two S3 servers only (the local
/// provider's directory is gone): the drill restores from S3, PostgreSQL replays WAL that
/// `wal-fetch` reads from S3, and every table is there. Before that, with one part corrupt
/// and one deleted on the first provider, the drill reads them from the next and says so.
#[test]
fn backup_restore_and_drill_on_s3() {
    for major in fifteen_and_newest_majors() {
        restore_and_drill_on_s3(major);
    }
}

fn restore_and_drill_on_s3(major: u32) {
    let pg = PgCluster::start(major, ClusterOpts::default());
    let (moto, fs, storage) = two_s3_providers();
    let extra = format!("[backup]\npart_size = \"1MiB\"\n{storage}");
    let lb = Lb::for_cluster(&pg, &extra);
    let bin = lb.restore_bin();
    let run = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--config")
            .arg(&lb.config)
            .arg("--identity")
            .arg(&lb.identity)
            .env("HOME", lb.dir.path())
            .envs(cred_env())
            .args(args);
        run_timeout(&mut c, Duration::from_secs(600), None).unwrap()
    };
    pg.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 20000) g");
    expect_success(&run(&["stream", "--endpos", &pg.current_lsn()]), "stream");
    expect_success(&run(&["backup", "--fast"]), "backup");
    pg.psql("INSERT INTO t SELECT generate_series(20001, 25000)");
    pg.psql("SELECT pg_switch_wal()");
    expect_success(&run(&["stream", "--endpos", &pg.current_lsn()]), "stream");
    let pgbin = pg_bin_dir(major);
    let scratch = lb.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    lb.restore_bin(); // opens the new directory to the server's user
    let mut drill_args = vec![
        "--json",
        "drill",
        "--backup",
        "latest",
        "--target",
        "latest",
        "--pg-bin",
        pgbin.to_str().unwrap(),
        "--scratch-dir",
        scratch.to_str().unwrap(),
    ];
    if is_root() {
        drill_args.extend(["--run-as", TEST_OS_USER]);
    }
    let drill = |what: &str| -> (serde_json::Value, String) {
        let out = run(&drill_args);
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(rep["ok"], true, "PG {major} {what}: {rep:#}\n{err}");
        let t = rep["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == "public.t")
            .cloned()
            .unwrap();
        assert_eq!(t["rows"], 25000, "{what}");
        (rep, err)
    };

    // Fallback: one part corrupt, one missing on the first provider (the local one).
    let parts: Vec<String> = lb
        .archive_files("backups/")
        .into_iter()
        .filter(|k| k.contains("/base.tar."))
        .collect();
    assert!(parts.len() >= 2, "{parts:?}");
    let corrupt = lb.archive.join(&parts[0]);
    let mut b = std::fs::read(&corrupt).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&corrupt, b).unwrap();
    std::fs::remove_file(lb.archive.join(&parts[1])).unwrap();
    let (_, err) = drill("with a corrupt and a missing part on storage \"local\"");
    assert!(
        err.contains("read from the fallback provider")
            && err.contains(&parts[0])
            && err.contains(&parts[1]),
        "the fallback is reported: {err}"
    );
    assert!(err.contains("object checksum mismatch"), "{err}");

    // verify names the damage on "local" only; with local's backup.json lost as well, the
    // backup is still checked there through what the S3 providers hold.
    let id = parts[0].split('/').nth(1).unwrap().to_string();
    let meta_path = lb.archive.join(format!("backups/{id}/backup.json"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let objects = meta["parts"].as_array().unwrap().len() + 1;
    std::fs::remove_file(&meta_path).unwrap();
    let out = run(&["--json", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in rep["providers"].as_array().unwrap() {
        let problems: Vec<&str> = p["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        if p["provider"] == "local" {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert_eq!(
                problems[0],
                format!("backups/{id}/backup.json: missing on this provider, which also lacks 1 of the backup's {objects} objects (another provider holds backup {id}; lifeboat verify --providers --repair copies what is missing)")
            );
            assert!(
                problems[1].starts_with(&format!("{}: object checksum mismatch", parts[0])),
                "{problems:?}"
            );
            assert_eq!(p["backups"], 0);
        } else {
            assert!(problems.is_empty(), "{}: {problems:?}", p["provider"]);
            assert_eq!(p["backups"], 1);
        }
    }

    // S3 only.
    std::fs::remove_dir_all(&lb.archive).unwrap();

    let target = lb.dir.path().join("plan-only");
    let plan = expect_success(
        &run(&[
            "restore",
            "--pgdata",
            target.to_str().unwrap(),
            "--pg-bin",
            pgbin.to_str().unwrap(),
            "--dry-run",
        ]),
        "restore --dry-run",
    );
    assert!(plan.contains("preflight ok"), "{plan}");
    assert!(!target.exists(), "--dry-run writes nothing");

    drill("from S3 only");
    // The drill is recorded on both S3 providers.
    for srv in [&moto, &fs] {
        let keys = srv.keys("archive");
        assert!(
            keys.iter()
                .any(|k| k.starts_with("pg/drills/") && k.ends_with(".json")),
            "{}: {keys:?}",
            srv.kind.name()
        );
    }
}

/// A backup whose parts a lifecycle rule moved to Deep Archive (done here as the provider's
/// rule would: each part copied onto itself in the cold class) cannot be read as it is:
/// `restore --dry-run` names the cold objects, and `restore` requests their thaw, waits
/// for it, and restores (the local copy removed, so only the cold provider serves).
#[test]
fn restore_thaws_a_backup_in_deep_archive() {
    use aws_sdk_s3::types::{MetadataDirective, StorageClass};
    let pg = PgCluster::start(15, ClusterOpts::default());
    let moto = S3Server::start(Kind::Moto);
    moto.create_bucket("cold", false);
    let lb = Lb::for_cluster(
        &pg,
        &format!(
            "{SMALL_PARTS}{}",
            moto.storage_toml("moto", "cold", "pg", "")
        ),
    );
    let run = |args: &[&str]| {
        let mut c = lb.cmd();
        c.args(args).envs(cred_env());
        run_timeout(&mut c, Duration::from_secs(600), None).unwrap()
    };
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 5000) AS id");
    let end = pg.current_lsn();
    expect_success(&run(&["stream", "--endpos", &end]), "stream");
    expect_success(&run(&["backup", "--fast"]), "backup");
    let end = pg.switch_wal();
    expect_success(&run(&["stream", "--endpos", &end]), "stream to the end");
    let parts: Vec<String> = moto
        .keys("cold")
        .into_iter()
        .filter(|k| k.starts_with("pg/backups/") && k.contains("base.tar"))
        .collect();
    assert!(parts.len() > 1, "{parts:?}");
    for key in &parts {
        moto.block_on(
            moto.client()
                .copy_object()
                .bucket("cold")
                .key(key)
                .copy_source(format!("cold/{key}"))
                .storage_class(StorageClass::DeepArchive)
                .metadata_directive(MetadataDirective::Copy)
                .send(),
        )
        .unwrap();
    }
    // Cold for real: a plain read is refused by the provider.
    let err = moto
        .block_on(
            moto.client()
                .get_object()
                .bucket("cold")
                .key(&parts[0])
                .send(),
        )
        .expect_err("a Deep Archive object was read without a restore");
    assert_eq!(
        aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
        Some("InvalidObjectState")
    );
    std::fs::remove_dir_all(&lb.archive).unwrap();
    std::fs::create_dir_all(&lb.archive).unwrap();
    set_credentials_env();

    let work = tempfile::tempdir().unwrap();
    let dry = run(&[
        "--identity",
        lb.identity.to_str().unwrap(),
        "restore",
        "--dry-run",
        "--pgdata",
        work.path().join("dry").to_str().unwrap(),
        "--pg-bin",
        pg_bin_dir(15).to_str().unwrap(),
    ]);
    let text = expect_success(&dry, "restore --dry-run");
    assert!(
        text.contains(&format!(
            "cold      {} of {} objects are in an archive storage class",
            parts.len(),
            parts.len() + 1
        )),
        "{text}"
    );
    let restored = crate::restore::restore_and_start(&lb, 15, work.path(), &[]);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "5000");
    for key in &parts {
        let head = moto
            .block_on(moto.client().head_object().bucket("cold").key(key).send())
            .unwrap();
        assert!(
            head.restore()
                .is_some_and(|r| r.contains("ongoing-request=\"false\"")),
            "{key}: {:?}",
            head.restore()
        );
    }
}

/// The CopyObject fallback of cold moves, on s3s-fs (no lifecycle rules, unversioned, and
/// no storage classes): the copy onto itself leaves the bytes as they were, and since the
/// class did not take, lifeboat says the provider cannot keep classes instead of copying
/// again on every run. On moto without a rule the move is refused with the rule to add.
#[test]
fn cold_moves_without_lifecycle_rules() {
    use lifeboat::storage::Cold;
    let rt = rt();
    let fs = S3Server::start(Kind::S3sFs);
    fs.create_bucket("plain", false);
    let store = s3_store(&fs, "plain", "p", "");
    let body = pseudo_random(300 * 1024, 9);
    rt.block_on(store.put("backups/b/base.tar.000001", body.clone()))
        .unwrap();
    assert_eq!(
        rt.block_on(store.make_cold("backups/b/base.tar.000001", "DEEP_ARCHIVE"))
            .unwrap(),
        Cold::Unsupported
    );
    assert_eq!(
        rt.block_on(store.get("backups/b/base.tar.000001")).unwrap(),
        Some(body)
    );
    let moto = S3Server::start(Kind::Moto);
    moto.create_bucket("norule", false);
    let store = s3_store(&moto, "norule", "p", "");
    rt.block_on(store.put("backups/b/base.tar.000001", Bytes::from_static(b"x")))
        .unwrap();
    let err = rt
        .block_on(store.make_cold("backups/b/base.tar.000001", "DEEP_ARCHIVE"))
        .unwrap_err();
    assert!(
        err.to_string().starts_with("storage \"moto\": cold backups/b/base.tar.000001: bucket \"norule\" has no enabled lifecycle rule moving objects tagged lifeboat-cold=DEEP_ARCHIVE to DEEP_ARCHIVE\nhint: add this rule"),
        "{err}"
    );
}
