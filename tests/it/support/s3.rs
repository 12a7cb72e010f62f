//! S3-compatible test servers: real implementations, started on 127.0.0.1 on a free port
//! with their data in a temp dir, stopped (killed) on drop.
//!
//! Binaries come from `scripts/install-s3.sh`: `<cache>/s3/moto/bin/moto_server` and
//! `<cache>/s3/s3s-fs/bin/s3s-fs` (cache rule as in `support::host`). `LIFEBOAT_MOTO_SERVER`
//! and `LIFEBOAT_S3S_FS` override the paths.
//!
//! - moto: in-memory, any credentials accepted, enforces Object Lock (bucket creation with
//!   Object Lock, retention on versions).
//! - s3s-fs: files under the temp dir, checks SigV4 signatures against one key pair
//!   (`ACCESS_KEY`/`SECRET_KEY`), no Object Lock.
//!
//! Credentials reach lifeboat through environment variables whose *names* are in the
//! config: `KEY_VAR`/`SECRET_VAR` hold the good pair (`set_credentials_env` puts them in
//! this process's environment, once; `cred_env` gives them for a child's `Command`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use super::host::cache_dir;
use super::ports::free_port;

pub const ACCESS_KEY: &str = "lifeboattestkey";
pub const SECRET_KEY: &str = "lifeboat-test-secret-0123456789";
pub const KEY_VAR: &str = "LIFEBOAT_TEST_S3_KEY_ID";
pub const SECRET_VAR: &str = "LIFEBOAT_TEST_S3_SECRET";
pub const REGION: &str = "us-east-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    S3sFs,
}

impl Kind {
    pub fn all() -> [Kind; 2] {
        [Kind::Moto, Kind::S3sFs]
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Moto => "moto",
            Kind::S3sFs => "s3s-fs",
        }
    }

    fn binary(self) -> PathBuf {
        let (var, rel) = match self {
            Kind::Moto => ("LIFEBOAT_MOTO_SERVER", "s3/moto/bin/moto_server"),
            Kind::S3sFs => ("LIFEBOAT_S3S_FS", "s3/s3s-fs/bin/s3s-fs"),
        };
        let p = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join(rel));
        assert!(
            p.exists(),
            "{} is not installed at {} (run scripts/install-s3.sh)",
            self.name(),
            p.display()
        );
        p
    }
}

/// The good credentials in this process's environment (the in-process S3Store reads them).
pub fn set_credentials_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(KEY_VAR, ACCESS_KEY);
        std::env::set_var(SECRET_VAR, SECRET_KEY);
    });
}

/// The good credentials, for a child process's `Command::envs`.
pub fn cred_env() -> [(&'static str, &'static str); 2] {
    [(KEY_VAR, ACCESS_KEY), (SECRET_VAR, SECRET_KEY)]
}

pub struct S3Server {
    pub kind: Kind,
    /// Environment for the server process (moto's IAM enforcement).
    env: Vec<(String, String)>,
    pub port: u16,
    pub endpoint: String,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3Server {
    pub fn start(kind: Kind) -> S3Server {
        S3Server::start_env(kind, Vec::new())
    }

    fn start_env(kind: Kind, env: Vec<(String, String)>) -> S3Server {
        let bin = kind.binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = test_client("http://127.0.0.1:1");
        let mut s = S3Server {
            kind,
            env,
            port: 0,
            endpoint: String::new(),
            child: None,
            dir,
            rt,
            client,
        };
        s.launch(&bin);
        s
    }

    fn launch(&mut self, bin: &PathBuf) {
        for attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
            let mut c = Command::new(bin);
            match self.kind {
                Kind::Moto => {
                    c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                }
                Kind::S3sFs => {
                    let data = self.dir.path().join("data");
                    std::fs::create_dir_all(&data).unwrap();
                    c.args([
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                        "--access-key",
                        ACCESS_KEY,
                        "--secret-key",
                        SECRET_KEY,
                    ])
                    .arg(&data);
                }
            }
            c.envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let mut child = c.spawn().unwrap_or_else(|e| panic!("spawn {bin:?}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if up {
                self.port = port;
                self.endpoint = format!("http://127.0.0.1:{port}");
                self.client = test_client(&self.endpoint);
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "{} did not start on port {port} (attempt {attempt}): {}",
                self.kind.name(),
                self.log()
            );
        }
        panic!("{} did not start", self.kind.name());
    }

    /// moto enforcing IAM policies (its `INITIAL_NO_AUTH_ACTION_COUNT`): `bucket` is
    /// created with Object Lock, and two users with access keys: `db`, the database host's
    /// write-only role (no delete), and `vault`, allowed everything on the bucket. The
    /// server's own client then acts as `vault`.
    pub fn start_moto_with_iam(bucket: &str) -> (S3Server, IamKeys) {
        // The seven setup calls below are the only unauthenticated ones.
        let mut s = S3Server::start_env(
            Kind::Moto,
            vec![("INITIAL_NO_AUTH_ACTION_COUNT".into(), "7".into())],
        );
        let python = Kind::Moto.binary().with_file_name("python");
        let script = format!(
            r#"
import boto3, json
c = dict(endpoint_url="{endpoint}", region_name="{REGION}", aws_access_key_id="setup", aws_secret_access_key="setup")
s3, iam = boto3.client("s3", **c), boto3.client("iam", **c)
s3.create_bucket(Bucket="{bucket}", ObjectLockEnabledForBucket=True)
res = ["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]
db = ["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation",
      "s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning", "s3:PutObjectRetention",
      "s3:AbortMultipartUpload"]
keys = []
for user, actions in (("db", db), ("vault", ["s3:*"])):
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(
        {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": actions, "Resource": res}}]}}))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys += [k["AccessKeyId"], k["SecretAccessKey"]]
print(" ".join(keys))
"#,
            endpoint = s.endpoint
        );
        let out = Command::new(&python)
            .arg("-c")
            .arg(script)
            .output()
            .expect("moto's python");
        assert!(
            out.status.success(),
            "IAM setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let k: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(k.len(), 4, "{k:?}");
        let keys = IamKeys {
            db: (k[0].clone(), k[1].clone()),
            vault: (k[2].clone(), k[3].clone()),
        };
        s.client = client_with(&s.endpoint, &keys.vault.0, &keys.vault.1);
        (s, keys)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// An SDK client with the good credentials (for setup and inspection). Drive it with
    /// `block_on`: its pooled connections live on this server's runtime.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let mut req = self.client.create_bucket().bucket(bucket);
        if object_lock {
            assert_eq!(
                self.kind,
                Kind::Moto,
                "only moto has Object Lock among the test servers"
            );
            req = req.object_lock_enabled_for_bucket(true);
        }
        self.rt
            .block_on(req.send())
            .unwrap_or_else(|e| panic!("create bucket {bucket} on {}: {e:?}", self.kind.name()));
    }

    /// A `[[storage]]` table for this server, credentials from `KEY_VAR`/`SECRET_VAR`, plus
    /// `extra` lines.
    pub fn storage_toml(&self, name: &str, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[[storage]]\nname = \"{name}\"\nurl = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\n\
             region = \"{REGION}\"\naccess_key_id_env = \"{KEY_VAR}\"\n\
             secret_access_key_env = \"{SECRET_VAR}\"\n{extra}\n",
            self.endpoint
        )
    }

    /// Keys (full, with prefix) in a bucket, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .rt
                .block_on(
                    self.client
                        .list_objects_v2()
                        .bucket(bucket)
                        .set_continuation_token(token.take())
                        .send(),
                )
                .expect("list");
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// Kill the server (its data is lost for moto, kept on disk for s3s-fs).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Access keys of the two IAM users of [`S3Server::start_moto_with_iam`].
pub struct IamKeys {
    pub db: (String, String),
    pub vault: (String, String),
}

/// A plain SDK client for the test servers: path-style, the good credentials, and checksums
/// only when required (what lifeboat does for custom endpoints).
pub fn test_client(endpoint: &str) -> aws_sdk_s3::Client {
    client_with(endpoint, ACCESS_KEY, SECRET_KEY)
}

/// The same with other credentials.
pub fn client_with(endpoint: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            key.to_string(),
            secret.to_string(),
            None,
            None,
            "test",
        ))
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
