//! The `s3://bucket/prefix` backend, on `aws-sdk-s3`, for AWS and S3-compatible providers.
//!
//! Owns: one provider's client (endpoint, region, addressing, credentials, checksum modes,
//! timeouts, retries), the translation of S3 errors into `StorageError`s that say whether to
//! retry and what to check, multipart uploads, and the Object Lock retention of every object.
//!
//! Invariants:
//! - Credentials come from the environment variables *named* in the config, or from a named
//!   profile; never from the config file. Nothing here prints them: `S3Store` has no `Debug`,
//!   and the SDK's `Credentials` redacts its secret.
//! - Every PutObject / UploadPart carries an explicit `x-amz-checksum-crc32` of its body, so
//!   the provider rejects a body damaged on the way. The SDK's own (trailing, aws-chunked)
//!   checksums are off by default for custom endpoints: many S3-compatible servers reject them.
//! - With `object_lock` configured, every object is written with that mode and a retain-until
//!   date `days` from now, and the first call refuses a bucket without Object Lock.
//! - The first call on a store (`check`) reaches the bucket; only after it succeeds does any
//!   other call go out. A failed check is retried on the next call (a provider may be down).
//! - `list` returns keys relative to the url's prefix, sorted, over every page.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{
    error::CredentialsError, future::ProvideCredentials as CredsFuture, ProvideCredentials,
    SharedCredentialsProvider,
};
use aws_sdk_s3::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
    RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled,
    ObjectLockMode as SdkLockMode,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::sync::Mutex;

use crate::storage::config::{ChecksumWhen, ObjectLockConfig, ObjectLockMode, StorageConfig};
use crate::storage::{BoxFut, Cold, Features, ObjectMeta, ObjectStore, StorageError, COLD_TAG};

/// What a CopyObject source's key escapes: all but unreserved characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Objects at least this large go up in parts.
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;
/// Part size of a multipart upload (S3's minimum is 5 MiB, except for the last part).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts in flight at once for one object.
const PART_CONCURRENCY: usize = 4;
/// Attempts per request, counting the first (the SDK's standard retry strategy:
/// exponential backoff with jitter, only for transient errors).
const MAX_ATTEMPTS: u32 = 4;

/// A parsed `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// No leading or trailing slash; empty for the bucket's root.
    pub prefix: String,
}

impl std::str::FromStr for S3Url {
    type Err = String;
    fn from_str(url: &str) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("url \"{url}\" does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(format!(
                "url \"{url}\": \"{bucket}\" is not a valid bucket name\nhint: 3 to 63 lower-case letters, digits, dots and hyphens: s3://bucket/prefix"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..")
            || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
        {
            return Err(format!(
                "url \"{url}\": the prefix \"{prefix}\" has an empty, . or .. component"
            ));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// Where the credentials come from; names only, never values.
#[derive(Clone)]
enum CredentialSource {
    Env {
        key_id_var: String,
        secret_var: String,
    },
    Profile(String),
}

/// Check an `s3://` entry without the network (see `storage::validate`).
pub fn validate(cfg: &StorageConfig) -> Result<(), (&'static str, String)> {
    let name = &cfg.name;
    cfg.url
        .parse::<S3Url>()
        .map_err(|m| ("url", format!("storage \"{name}\": {m}")))?;
    if let Some(e) = &cfg.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err((
                "endpoint",
                format!("storage \"{name}\": endpoint \"{e}\" is not an http:// or https:// URL"),
            ));
        }
    } else if cfg.region.is_none() {
        return Err((
            "region",
            format!("storage \"{name}\": region is required for AWS S3 (no endpoint is set)"),
        ));
    }
    credential_source(cfg).map(|_| ())?;
    if let Some(c) = &cfg.cold_storage_class {
        if crate::storage::config::cold_min_days(c).is_none() {
            let known: Vec<&str> = crate::storage::config::COLD_CLASSES
                .iter()
                .map(|(c, _)| *c)
                .collect();
            return Err((
                "cold_storage_class",
                format!(
                    "storage \"{name}\": cold_storage_class \"{c}\" is not a storage class lifeboat knows\nhint: one of {} (as the provider names them; GLACIER_IR is read at once, GLACIER and DEEP_ARCHIVE need a thaw of hours before a restore)",
                    known.join(", ")
                ),
            ));
        }
    } else if cfg.cold_after.is_some() {
        return Err((
            "cold_after",
            format!("storage \"{name}\": cold_after is set but cold_storage_class is not\nhint: add cold_storage_class = \"DEEP_ARCHIVE\" (or another class), or remove cold_after"),
        ));
    }
    if let Some(l) = &cfg.object_lock {
        if !(1..=36500).contains(&l.days) {
            return Err((
                "object_lock",
                format!(
                    "storage \"{name}\": object_lock.days = {} is out of range (1 to 36500)",
                    l.days
                ),
            ));
        }
    }
    Ok(())
}

fn credential_source(cfg: &StorageConfig) -> Result<CredentialSource, (&'static str, String)> {
    let name = &cfg.name;
    let var_ok = |v: &str| {
        !v.is_empty()
            && !v.starts_with(|c: char| c.is_ascii_digit())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match (
        &cfg.access_key_id_env,
        &cfg.secret_access_key_env,
        &cfg.profile,
    ) {
        (Some(k), Some(s), None) => {
            for (key, v) in [("access_key_id_env", k), ("secret_access_key_env", s)] {
                if !var_ok(v) {
                    return Err((
                        key,
                        format!("storage \"{name}\": {key} = \"{v}\" is not an environment variable name\nhint: it names the variable holding the credential, e.g. OFFSITE_KEY_ID; the credential itself never goes in this file"),
                    ));
                }
            }
            Ok(CredentialSource::Env {
                key_id_var: k.clone(),
                secret_var: s.clone(),
            })
        }
        (None, None, Some(p)) if !p.is_empty() => Ok(CredentialSource::Profile(p.clone())),
        (None, None, None) => Err((
            "access_key_id_env",
            format!("storage \"{name}\": no credentials configured\nhint: set access_key_id_env and secret_access_key_env to the names of two environment variables, or profile to a profile of ~/.aws/credentials"),
        )),
        (Some(_), Some(_), Some(_)) => Err((
            "profile",
            format!("storage \"{name}\": set either profile or access_key_id_env/secret_access_key_env, not both"),
        )),
        (None, None, Some(_)) => Err((
            "profile",
            format!("storage \"{name}\": profile is empty"),
        )),
        (Some(_), None, _) => Err((
            "secret_access_key_env",
            format!("storage \"{name}\": access_key_id_env is set but secret_access_key_env is not"),
        )),
        (None, Some(_), _) => Err((
            "access_key_id_env",
            format!("storage \"{name}\": secret_access_key_env is set but access_key_id_env is not"),
        )),
    }
}

/// Credentials read from two environment variables at each resolution (so a restarted
/// service picks up rotated keys), with an error that names the variable.
struct EnvCredentials {
    key_id_var: String,
    secret_var: String,
}

impl std::fmt::Debug for EnvCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvCredentials")
            .field("key_id_var", &self.key_id_var)
            .field("secret_var", &self.secret_var)
            .finish()
    }
}

impl EnvCredentials {
    fn load(&self) -> Result<Credentials, String> {
        let get = |var: &str, key: &str| match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            Ok(_) => Err(format!(
                "environment variable {var} (named by {key}) is empty"
            )),
            Err(_) => Err(format!(
                "environment variable {var} (named by {key}) is not set"
            )),
        };
        let id = get(&self.key_id_var, "access_key_id_env")?;
        let secret = get(&self.secret_var, "secret_access_key_env")?;
        Ok(Credentials::new(id, secret, None, None, "lifeboat-env"))
    }
}

impl ProvideCredentials for EnvCredentials {
    fn provide_credentials<'a>(&'a self) -> CredsFuture<'a>
    where
        Self: 'a,
    {
        CredsFuture::ready(self.load().map_err(CredentialsError::not_loaded))
    }
}

/// One S3 provider.
pub struct S3Store {
    name: String,
    url: S3Url,
    display_url: String,
    endpoint: Option<String>,
    region: String,
    creds: CredentialSource,
    lock: Option<ObjectLockConfig>,
    client: Client,
    /// `Some` once `check` succeeded: what the bucket can do.
    checked: Mutex<Option<Features>>,
    /// Last known features, for the synchronous `features()`.
    features: std::sync::Mutex<Features>,
    multipart_threshold: usize,
    part_size: usize,
    /// The provider's clock minus ours (seconds), from the last response's `Date` header.
    clock_offset: Arc<std::sync::Mutex<Option<i64>>>,
    /// What the bucket's lifecycle rules do for `make_cold`, once asked (per class).
    lifecycle: Mutex<Option<Lifecycle>>,
}

/// The bucket's lifecycle rules, as `make_cold` needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lifecycle {
    /// The provider has no lifecycle rules at all.
    Unsupported,
    /// The classes an enabled rule moves objects tagged `lifeboat-cold=<CLASS>` to at once.
    Rules(Vec<String>),
}

/// Reads the `Date` header of every response. The SDK already corrects its signatures for
/// a skewed host clock (it retries a `RequestTimeTooSkewed` with the provider's time), which
/// would otherwise hide the skew; lifeboat reports it and dates Object Lock retention by
/// the provider's clock.
#[derive(Debug)]
struct ClockWatch(Arc<std::sync::Mutex<Option<i64>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for ClockWatch {
    fn name(&self) -> &'static str {
        "lifeboat::ClockWatch"
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let offset = clock_offset(ctx.response().headers().get("date"));
        if offset.is_some() {
            *self.0.lock().expect("clock lock") = offset;
        }
        Ok(())
    }
}

/// The provider's clock minus ours, in seconds, from a response's `Date` header.
fn clock_offset(date: Option<&str>) -> Option<i64> {
    let server = DateTime::from_str(date?, aws_smithy_types::date_time::Format::HttpDate).ok()?;
    Some(server.secs() - DateTime::from(SystemTime::now()).secs())
}

/// "120 minutes behind" / "5 minutes ahead of", for a provider-minus-host offset.
fn describe_offset(o: i64) -> String {
    format!(
        "{} minutes {} the provider's",
        (o.abs() + 30) / 60,
        if o > 0 { "behind" } else { "ahead of" }
    )
}

impl S3Store {
    /// Build the client; sends nothing (see `check`).
    pub fn new(cfg: &StorageConfig) -> Result<S3Store, String> {
        validate(cfg).map_err(|(_, m)| m)?;
        let url: S3Url = cfg
            .url
            .parse()
            .map_err(|m| format!("storage \"{}\": {m}", cfg.name))?;
        let creds = credential_source(cfg).map_err(|(_, m)| m)?;
        let custom = cfg.endpoint.is_some();
        let region = cfg
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        let when = |w: Option<ChecksumWhen>| {
            w.unwrap_or(if custom {
                ChecksumWhen::WhenRequired
            } else {
                ChecksumWhen::WhenSupported
            })
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let provider = match &creds {
            CredentialSource::Env {
                key_id_var,
                secret_var,
            } => SharedCredentialsProvider::new(EnvCredentials {
                key_id_var: key_id_var.clone(),
                secret_var: secret_var.clone(),
            }),
            CredentialSource::Profile(p) => SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(p)
                    .configure(
                        &aws_config::provider_config::ProviderConfig::empty()
                            .with_http_client(http.clone())
                            .with_region(Some(Region::new(region.clone()))),
                    )
                    .build(),
            ),
        };
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .credentials_provider(provider)
            .region(Region::new(region.clone()))
            .force_path_style(cfg.force_path_style.unwrap_or(custom))
            .request_checksum_calculation(match when(cfg.request_checksum_calculation) {
                ChecksumWhen::WhenRequired => RequestChecksumCalculation::WhenRequired,
                ChecksumWhen::WhenSupported => RequestChecksumCalculation::WhenSupported,
            })
            .response_checksum_validation(match when(cfg.response_checksum_validation) {
                ChecksumWhen::WhenRequired => ResponseChecksumValidation::WhenRequired,
                ChecksumWhen::WhenSupported => ResponseChecksumValidation::WhenSupported,
            })
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            );
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e.trim_end_matches('/'));
        }
        let clock_offset = Arc::new(std::sync::Mutex::new(None));
        b = b.interceptor(ClockWatch(clock_offset.clone()));
        let lock_features = Features {
            object_lock: cfg.object_lock.is_some(),
            delete: true,
            versioned: cfg.object_lock.is_some(),
        };
        Ok(S3Store {
            name: cfg.name.clone(),
            display_url: cfg.url.clone(),
            url,
            endpoint: cfg.endpoint.clone(),
            region,
            creds,
            lock: cfg.object_lock,
            client: Client::from_conf(b.build()),
            checked: Mutex::new(None),
            features: std::sync::Mutex::new(lock_features),
            multipart_threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
            clock_offset,
            lifecycle: Mutex::new(None),
        })
    }

    /// Change when objects go up in parts and the part size (tests use small ones).
    pub fn set_multipart(&mut self, threshold: usize, part_size: usize) {
        self.multipart_threshold = threshold.max(1);
        self.part_size = part_size.max(5 * 1024 * 1024);
    }

    pub fn bucket(&self) -> &str {
        &self.url.bucket
    }

    fn full_key(&self, key: &str) -> String {
        if self.url.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.url.prefix)
        }
    }

    fn error(&self, op: &'static str, key: &str, p: Problem) -> StorageError {
        let ctx = ErrorContext {
            bucket: &self.url.bucket,
            region: &self.region,
            endpoint: self.endpoint.as_deref(),
            creds_hint: match &self.creds {
                CredentialSource::Env {
                    key_id_var,
                    secret_var,
                } => format!("check the variables named by access_key_id_env/secret_access_key_env ({key_id_var}, {secret_var})"),
                CredentialSource::Profile(p) => format!("check the credentials of profile \"{p}\""),
            },
        };
        let c = classify(&p, &ctx);
        StorageError {
            provider: self.name.clone(),
            op,
            key: key.to_string(),
            message: c.message,
            hint: c.hint,
            retryable: c.retryable,
        }
    }

    fn sdk_error<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.error(op, key, Problem::from_sdk(e))
    }

    /// Reach the bucket once; see the module invariants.
    async fn ensure(&self) -> Result<Features, StorageError> {
        let mut checked = self.checked.lock().await;
        if let Some(f) = *checked {
            return Ok(f);
        }
        let f = self.probe().await?;
        *checked = Some(f);
        *self.features.lock().expect("features lock") = f;
        Ok(f)
    }

    /// Some providers accept requests signed for any region but know where the bucket is.
    /// On AWS (no endpoint) a region that is not the bucket's is refused, with the right
    /// one in the hint; on a custom endpoint it is a warning, since some S3-compatible
    /// servers report a zone group name there. Providers that do not say (or deny the
    /// call) are taken at their word.
    async fn check_region(&self, key: &str) -> Result<(), StorageError> {
        if self.region == "auto" {
            return Ok(());
        }
        let Ok(loc) = self
            .client
            .get_bucket_location()
            .bucket(&self.url.bucket)
            .send()
            .await
        else {
            return Ok(());
        };
        let actual = match loc.location_constraint().map(|c| c.as_str()) {
            None | Some("") => return Ok(()),
            Some("EU") => "eu-west-1",
            Some(r) => r,
        };
        if actual == self.region {
            return Ok(());
        }
        if self.endpoint.is_some() {
            // Some S3-compatible servers report a zone group name as the location while
            // accepting any signing region: say it, but do not refuse a working setup.
            tracing::warn!(
                provider = %self.name,
                "bucket \"{}\" reports location \"{actual}\", but region = \"{}\" (hint: set region = \"{actual}\" in this [[storage]] entry if the provider expects it)",
                self.url.bucket,
                self.region
            );
            return Ok(());
        }
        Err(StorageError {
            provider: self.name.clone(),
            op: "check",
            key: key.to_string(),
            message: format!(
                "bucket \"{}\" is in region \"{actual}\", not \"{}\"",
                self.url.bucket, self.region
            ),
            hint: Some(format!(
                "set region = \"{actual}\" in this [[storage]] entry"
            )),
            retryable: false,
        })
    }

    async fn probe(&self) -> Result<Features, StorageError> {
        let key = self.display_url.as_str();
        if let CredentialSource::Env {
            key_id_var,
            secret_var,
        } = &self.creds
        {
            let env = EnvCredentials {
                key_id_var: key_id_var.clone(),
                secret_var: secret_var.clone(),
            };
            if let Err(m) = env.load() {
                return Err(StorageError {
                    provider: self.name.clone(),
                    op: "check",
                    key: key.to_string(),
                    message: m,
                    hint: Some("export it in lifeboat's environment (e.g. EnvironmentFile= in the systemd unit); the config names the variable, never the credential".into()),
                    retryable: false,
                });
            }
        }
        // Bucket, credentials, region and clock in one cheap call.
        self.client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.sdk_error("check", key, e))?;
        self.check_region(key).await?;
        let offset = *self.clock_offset.lock().expect("clock lock");
        if let Some(o) = offset.filter(|o| o.abs() >= 60) {
            tracing::warn!(
                provider = %self.name,
                "this host's clock is {}: requests are corrected for it, but synchronise the clock (NTP: systemd-timesyncd, chrony)",
                describe_offset(o)
            );
        }
        let object_lock = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.url.bucket)
            .send()
            .await
        {
            Ok(o) => o
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == ObjectLockEnabled::Enabled),
            Err(e) => {
                let p = Problem::from_sdk(e);
                match (p.code.as_deref(), p.status) {
                    (Some("ObjectLockConfigurationNotFoundError"), _)
                    | (Some("NotImplemented"), _)
                    | (_, Some(404 | 501)) => false,
                    _ => return Err(self.error("check", key, p)),
                }
            }
        };
        if self.lock.is_some() && !object_lock {
            return Err(StorageError {
                provider: self.name.clone(),
                op: "check",
                key: key.to_string(),
                message: format!(
                    "object_lock is configured, but bucket \"{}\" does not have Object Lock enabled",
                    self.url.bucket
                ),
                hint: Some("create a bucket with Object Lock enabled (most providers cannot turn it on later) and point url at it, or remove object_lock from this [[storage]] entry".into()),
                retryable: false,
            });
        }
        // Object Lock implies versioning; otherwise ask (a provider without the call, or
        // credentials without the permission, count as unversioned: a delete then leaves
        // at most a delete marker, as before).
        let versioned = object_lock
            || self
                .client
                .get_bucket_versioning()
                .bucket(&self.url.bucket)
                .send()
                .await
                .is_ok_and(|v| v.status().is_some());
        Ok(Features {
            object_lock,
            delete: true,
            versioned,
        })
    }

    /// Every version and delete marker of exactly `key` (full key), oldest data version
    /// first, delete markers last.
    async fn versions_of(&self, key: &str, full: &str) -> Result<Vec<String>, StorageError> {
        // The listing gives each key's versions newest first; the current one goes last.
        let mut data: Vec<(bool, String)> = Vec::new();
        let mut markers = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.url.bucket)
                .prefix(full)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.sdk_error("delete", key, e))?;
            for v in page.versions() {
                if v.key() == Some(full) {
                    if let Some(id) = v.version_id() {
                        data.push((v.is_latest() == Some(true), id.to_string()));
                    }
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(full) {
                    if let Some(id) = m.version_id() {
                        markers.push(id.to_string());
                    }
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        data.reverse();
        // Stable: the oldest first, the current version last whatever the order was.
        data.sort_by_key(|(latest, _)| *latest);
        Ok(data.into_iter().map(|(_, id)| id).chain(markers).collect())
    }

    async fn delete_version(
        &self,
        key: &str,
        full: &str,
        version: Option<String>,
    ) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(&self.url.bucket)
            .key(full)
            .set_version_id(version)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let p = Problem::from_sdk(e);
                if matches!(p.code.as_deref(), Some("NoSuchKey" | "NoSuchVersion")) {
                    return Ok(());
                }
                Err(self.error("delete", key, p))
            }
        }
    }

    /// See [`ObjectStore::thaw`]: HeadObject says the class and any restore's state
    /// (`x-amz-restore: ongoing-request="false"` once a copy is readable).
    async fn thaw_object(
        &self,
        key: &str,
        request: Option<u32>,
    ) -> Result<crate::storage::Thaw, StorageError> {
        use crate::storage::Thaw;
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, StorageClass, Tier};
        self.ensure().await?;
        let full = self.full_key(key);
        let head = match self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) => {
                let p = Problem::from_sdk(e);
                if p.status == Some(404) {
                    return Ok(Thaw::Missing);
                }
                return Err(self.error("thaw", key, p));
            }
        };
        let cold = matches!(
            head.storage_class(),
            Some(StorageClass::Glacier | StorageClass::DeepArchive)
        ) || head.archive_status().is_some();
        if !cold {
            return Ok(Thaw::Warm);
        }
        match head.restore() {
            Some(r) if r.contains("ongoing-request=\"false\"") => return Ok(Thaw::Thawed),
            Some(_) => return Ok(Thaw::Cold),
            None => {}
        }
        let Some(days) = request else {
            return Ok(Thaw::Cold);
        };
        // Intelligent-Tiering's archive tiers take no Days (the object returns to its
        // frequent-access tier) nor a retrieval tier of Glacier's kind.
        let mut req = RestoreRequest::builder();
        if head.archive_status().is_none() {
            req = req.days(days as i32);
            // Standard retrieval: hours for Deep Archive, minutes to hours for Glacier.
            req = req.glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::Standard)
                    .build()
                    .map_err(|e| self.error("thaw", key, Problem::other(&e.to_string())))?,
            );
        }
        match self
            .client
            .restore_object()
            .bucket(&self.url.bucket)
            .key(&full)
            .restore_request(req.build())
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let p = Problem::from_sdk(e);
                if p.code.as_deref() != Some("RestoreAlreadyInProgress") {
                    return Err(self.error("thaw", key, p));
                }
            }
        }
        tracing::info!(provider = %self.name, key, days, "requested a restore of a cold object");
        // Some providers have the copy at once.
        Box::pin(self.thaw_object(key, None)).await
    }

    /// The bucket's lifecycle rules for cold tags, read once.
    async fn lifecycle(&self, key: &str) -> Result<Lifecycle, StorageError> {
        use aws_sdk_s3::types::ExpirationStatus;
        let mut cached = self.lifecycle.lock().await;
        if let Some(l) = &*cached {
            return Ok(l.clone());
        }
        let l = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.url.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let mut classes = Vec::new();
                for r in out.rules() {
                    if r.status() != &ExpirationStatus::Enabled {
                        continue;
                    }
                    let Some(f) = r.filter() else { continue };
                    let tags: Vec<&aws_sdk_s3::types::Tag> = f
                        .tag()
                        .into_iter()
                        .chain(f.and().map_or(&[][..], |a| a.tags()))
                        .collect();
                    let prefix = f.prefix().or_else(|| f.and().and_then(|a| a.prefix()));
                    // The rule must reach every backup part: its prefix a prefix of this
                    // store's backups/, no tag but the cold one, no size bound a part can
                    // fall outside of.
                    let backups = self.full_key("backups/");
                    if prefix.is_some_and(|p| !backups.starts_with(p)) || tags.len() != 1 {
                        continue;
                    }
                    let above = f
                        .object_size_greater_than()
                        .or_else(|| f.and().and_then(|a| a.object_size_greater_than()));
                    let below = f
                        .object_size_less_than()
                        .or_else(|| f.and().and_then(|a| a.object_size_less_than()));
                    if above.is_some_and(|a| a >= crate::core::retention::COLD_MIN_SIZE as i64)
                        || below.is_some()
                    {
                        continue;
                    }
                    for t in r.transitions() {
                        let Some(c) = t.storage_class().map(|c| c.as_str().to_string()) else {
                            continue;
                        };
                        let at_once = t.days().unwrap_or(0) <= 1 && t.date().is_none();
                        if at_once
                            && tags
                                .iter()
                                .any(|tag| tag.key() == COLD_TAG && tag.value() == c)
                        {
                            classes.push(c);
                        }
                    }
                }
                Lifecycle::Rules(classes)
            }
            Err(e) => {
                let p = Problem::from_sdk(e);
                match (p.code.as_deref(), p.status) {
                    (Some("NoSuchLifecycleConfiguration"), _) => Lifecycle::Rules(Vec::new()),
                    (Some("NotImplemented"), _) | (_, Some(501)) => Lifecycle::Unsupported,
                    _ => return Err(self.error("cold", key, p)),
                }
            }
        };
        *cached = Some(l.clone());
        Ok(l)
    }

    /// See [`ObjectStore::make_cold`].
    async fn move_cold(&self, key: &str, class: &str) -> Result<Cold, StorageError> {
        use aws_sdk_s3::types::{MetadataDirective, StorageClass, Tag, Tagging};
        let features = self.ensure().await?;
        let full = self.full_key(key);
        let refuse = |message: String, hint: String| StorageError {
            provider: self.name.clone(),
            op: "cold",
            key: key.to_string(),
            message,
            hint: Some(hint),
            retryable: false,
        };
        match self.lifecycle(key).await? {
            Lifecycle::Rules(classes) if classes.iter().any(|c| c == class) => {
                let tagging = Tagging::builder()
                    .tag_set(
                        Tag::builder()
                            .key(COLD_TAG)
                            .value(class)
                            .build()
                            .map_err(|e| self.error("cold", key, Problem::other(&e.to_string())))?,
                    )
                    .build()
                    .map_err(|e| self.error("cold", key, Problem::other(&e.to_string())))?;
                self.client
                    .put_object_tagging()
                    .bucket(&self.url.bucket)
                    .key(&full)
                    .tagging(tagging)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("cold", key, e))?;
                Ok(Cold::Tagged)
            }
            Lifecycle::Rules(_) => Err(refuse(
                format!(
                    "bucket \"{}\" has no enabled lifecycle rule moving objects tagged {COLD_TAG}={class} to {class}",
                    self.url.bucket
                ),
                format!(
                    "add this rule to the bucket's lifecycle configuration (prune tags, the provider moves, keeping each version and its lock): {{\"ID\": \"lifeboat-cold\", \"Status\": \"Enabled\", \"Filter\": {{\"Tag\": {{\"Key\": \"{COLD_TAG}\", \"Value\": \"{class}\"}}}}, \"Transitions\": [{{\"Days\": 0, \"StorageClass\": \"{class}\"}}]}}"
                ),
            )),
            Lifecycle::Unsupported if features.versioned => Err(refuse(
                format!(
                    "the provider has no lifecycle rules, and bucket \"{}\" keeps versions: a copy into {class} would leave the standard version (and its lock) billed beside it",
                    self.url.bucket
                ),
                "remove cold_storage_class from this [[storage]] entry, or use a provider with lifecycle rules".into(),
            )),
            Lifecycle::Unsupported => {
                let source = format!(
                    "{}/{}",
                    self.url.bucket,
                    percent_encoding::utf8_percent_encode(&full, COPY_SOURCE)
                );
                self.client
                    .copy_object()
                    .bucket(&self.url.bucket)
                    .key(&full)
                    .copy_source(source)
                    .storage_class(StorageClass::from(class))
                    .metadata_directive(MetadataDirective::Copy)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("cold", key, e))?;
                // A provider that ignores classes would be copied to again on every run.
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.url.bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("cold", key, e))?;
                if head.storage_class().map(|c| c.as_str()) == Some(class) {
                    Ok(Cold::Copied)
                } else {
                    Ok(Cold::Unsupported)
                }
            }
        }
    }

    /// Raise the current version's retain-until date (see the trait).
    async fn raise_retention(
        &self,
        key: &str,
        until: SystemTime,
    ) -> Result<crate::storage::Extended, StorageError> {
        use crate::storage::Extended;
        use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
        let features = self.ensure().await?;
        if !features.object_lock {
            return Ok(Extended::Unsupported);
        }
        let full = self.full_key(key);
        // HeadObject carries the retention (GetObjectRetention is missing from some
        // S3-compatible servers, moto among them).
        let head = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.sdk_error("retain", key, e))?;
        let target = DateTime::from(until);
        if head
            .object_lock_retain_until_date()
            .is_some_and(|h| h.secs() >= target.secs())
        {
            return Ok(Extended::Held);
        }
        // Compliance stays compliance (it cannot be lowered to governance); otherwise the
        // configured mode, governance by default.
        let mode = match (head.object_lock_mode(), self.lock) {
            (Some(SdkLockMode::Compliance), _) => ObjectLockRetentionMode::Compliance,
            (_, Some(l)) if l.mode == ObjectLockMode::Compliance => {
                ObjectLockRetentionMode::Compliance
            }
            _ => ObjectLockRetentionMode::Governance,
        };
        self.client
            .put_object_retention()
            .bucket(&self.url.bucket)
            .key(&full)
            .set_version_id(head.version_id().map(str::to_string))
            .retention(
                ObjectLockRetention::builder()
                    .mode(mode)
                    .retain_until_date(target)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_error("retain", key, e))?;
        Ok(Extended::Raised)
    }

    fn retain_until(&self) -> Option<(SdkLockMode, DateTime)> {
        self.lock.map(|l| {
            let mode = match l.mode {
                ObjectLockMode::Governance => SdkLockMode::Governance,
                ObjectLockMode::Compliance => SdkLockMode::Compliance,
            };
            // By the provider's clock, which judges the date.
            let offset = self.clock_offset.lock().expect("clock lock").unwrap_or(0);
            let now = SystemTime::now();
            let now = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            let until = now + Duration::from_secs(u64::from(l.days) * 86_400);
            (mode, DateTime::from(until))
        })
    }

    async fn put_single(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.url.bucket)
            .key(self.full_key(key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .checksum_crc32(crc32_base64(&data))
            .content_length(data.len() as i64)
            .body(ByteStream::from(data));
        if let Some((mode, until)) = self.retain_until() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        // The body is covered by the CRC32 the provider verifies and, end to end, by age's
        // authenticated encryption; SigV4's payload hash would be one more SHA-256 pass over
        // every byte for every provider.
        req.customize()
            .disable_payload_signing()
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.sdk_error("put", key, e))
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let full = self.full_key(key);
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(&full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32);
        if let Some((mode, until)) = self.retain_until() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        let created = req
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(self.error(
                "put",
                key,
                Problem::other("CreateMultipartUpload returned no upload id"),
            ));
        };
        let res = self.upload_parts(key, &full, &upload_id, data).await;
        if res.is_err() {
            // Best effort: an abandoned upload only costs storage until the bucket's
            // lifecycle rule (if any) removes it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.url.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        res
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let n = data.len().div_ceil(self.part_size);
        let mut parts: Vec<Option<CompletedPart>> = vec![None; n];
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0usize;
        let mut first_err = None;
        while next < n || !set.is_empty() {
            while first_err.is_none() && next < n && set.len() < PART_CONCURRENCY {
                let i = next;
                next += 1;
                let start = i * self.part_size;
                let body = data.slice(start..(start + self.part_size).min(data.len()));
                let crc = crc32_base64(&body);
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.url.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(i as i32 + 1)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .checksum_crc32(crc.clone())
                    .content_length(body.len() as i64)
                    .body(ByteStream::from(body))
                    .customize()
                    .disable_payload_signing();
                set.spawn(async move { (i, crc, req.send().await) });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (i, crc, r) = joined.expect("upload task panicked");
            match r {
                Ok(out) => {
                    parts[i] = Some(
                        CompletedPart::builder()
                            .part_number(i as i32 + 1)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .checksum_crc32(crc)
                            .build(),
                    );
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(self.sdk_error("put", key, e));
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let parts: Vec<CompletedPart> = parts.into_iter().flatten().collect();
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.url.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, e))?;
        let version = completed.version_id().map(str::to_string);
        self.ensure_retention(key, full, version).await
    }

    /// Some S3-compatible servers (moto among them) ignore the Object Lock headers of
    /// CreateMultipartUpload: check the completed object and set its retention if missing.
    async fn ensure_retention(
        &self,
        key: &str,
        full: &str,
        version: Option<String>,
    ) -> Result<(), StorageError> {
        let Some((mode, until)) = self.retain_until() else {
            return Ok(());
        };
        let head = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(full)
            .set_version_id(version.clone())
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, e))?;
        if head.object_lock_mode().is_some() && head.object_lock_retain_until_date().is_some() {
            return Ok(());
        }
        tracing::debug!(provider = %self.name, key, "setting retention after multipart upload");
        self.client
            .put_object_retention()
            .bucket(&self.url.bucket)
            .key(full)
            .set_version_id(version.or_else(|| head.version_id().map(str::to_string)))
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(aws_sdk_s3::types::ObjectLockRetentionMode::from(
                        mode.as_str(),
                    ))
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.sdk_error("put", key, e))
    }
}

type HttpResponse = aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// The base64 CRC32 (IEEE) that `x-amz-checksum-crc32` carries.
pub fn crc32_base64(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32fast::hash(data).to_be_bytes())
}

impl ObjectStore for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> Features {
        *self.features.lock().expect("features lock")
    }

    fn check(&self) -> BoxFut<'_, Result<(), StorageError>> {
        Box::pin(async move { self.ensure().await.map(|_| ()) })
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.ensure().await?;
            if data.len() >= self.multipart_threshold && data.len() > self.part_size {
                self.put_multipart(key, data).await
            } else {
                self.put_single(key, data).await
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            self.ensure().await?;
            let out = match self
                .client
                .get_object()
                .bucket(&self.url.bucket)
                .key(self.full_key(key))
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        return Ok(None);
                    }
                    let p = Problem::from_sdk(e);
                    if p.status == Some(404) && p.code.as_deref() != Some("NoSuchBucket") {
                        return Ok(None);
                    }
                    return Err(self.error("get", key, p));
                }
            };
            let body = out.body.collect().await.map_err(|e| {
                self.error(
                    "get",
                    key,
                    Problem::other(&format!("reading the body failed: {e}")).retryable(),
                )
            })?;
            Ok(Some(body.into_bytes()))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            self.ensure().await?;
            let base = self.full_key("");
            let full_prefix = format!("{base}{prefix}");
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            let mut requests = 0u64;
            loop {
                requests += 1;
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.url.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("list", prefix, e))?;
                for o in page.contents() {
                    let Some(k) = o.key() else { continue };
                    let Some(rel) = k.strip_prefix(base.as_str()) else {
                        continue;
                    };
                    out.push(ObjectMeta {
                        key: rel.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: o
                            .last_modified()
                            .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                    });
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out.dedup_by(|a, b| a.key == b.key);
            tracing::debug!(provider = %self.name, prefix, objects = out.len(), requests, "listed");
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let features = self.ensure().await?;
            let full = self.full_key(key);
            if !features.versioned {
                return self.delete_version(key, &full, None).await;
            }
            // Versioned: a plain delete would only hide the object behind a delete marker
            // (and succeed on a locked one). Delete each version by id, oldest first, so a
            // refusal (a lock) leaves the newest in place: the object stays as it was.
            for v in self.versions_of(key, &full).await? {
                self.delete_version(key, &full, Some(v)).await?;
            }
            Ok(())
        })
    }

    fn thaw<'a>(
        &'a self,
        key: &'a str,
        request: Option<u32>,
    ) -> BoxFut<'a, Result<crate::storage::Thaw, StorageError>> {
        Box::pin(self.thaw_object(key, request))
    }

    fn list_classes<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<(String, String)>, StorageError>> {
        Box::pin(async move {
            self.ensure().await?;
            let base = self.full_key("");
            let full_prefix = format!("{base}{prefix}");
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.url.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("list", prefix, e))?;
                for o in page.contents() {
                    let (Some(k), Some(c)) = (o.key(), o.storage_class()) else {
                        continue;
                    };
                    if c.as_str() == "STANDARD" {
                        continue;
                    }
                    if let Some(rel) = k.strip_prefix(base.as_str()) {
                        out.push((rel.to_string(), c.as_str().to_string()));
                    }
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn make_cold<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFut<'a, Result<Cold, StorageError>> {
        Box::pin(self.move_cold(key, class))
    }

    fn probe_delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let features = self.ensure().await?;
            let full = self.full_key(key);
            // A plain delete of a missing key: refused without s3:DeleteObject. In a
            // versioned bucket it leaves a delete marker, removed by its version id:
            // refused without s3:DeleteObjectVersion, which prune needs as well.
            self.delete_version(key, &full, None).await?;
            if features.versioned {
                self.delete(key).await?;
            }
            Ok(())
        })
    }

    fn extend_retention<'a>(
        &'a self,
        key: &'a str,
        until: SystemTime,
    ) -> BoxFut<'a, Result<crate::storage::Extended, StorageError>> {
        Box::pin(self.raise_retention(key, until))
    }
}

/// What went wrong with one request, reduced to what classification needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problem {
    /// The S3 error code (`NoSuchBucket`, `SignatureDoesNotMatch`, ...), when the provider
    /// sent one.
    pub code: Option<String>,
    pub message: Option<String>,
    pub status: Option<u16>,
    pub kind: ProblemKind,
    /// The provider's clock minus ours, in seconds, from the response's `Date` header.
    pub clock_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProblemKind {
    /// The provider answered.
    #[default]
    Response,
    /// No connection (refused, DNS, TLS handshake).
    Connect,
    Timeout,
    /// The request could not be built or the response not be read.
    Other,
    /// Like `Other`, but worth retrying.
    OtherRetryable,
}

impl Problem {
    fn other(m: &str) -> Problem {
        Problem {
            message: Some(m.to_string()),
            kind: ProblemKind::Other,
            ..Default::default()
        }
    }

    fn retryable(mut self) -> Problem {
        self.kind = ProblemKind::OtherRetryable;
        self
    }

    fn from_sdk<E>(e: SdkError<E, HttpResponse>) -> Problem
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        match &e {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => Problem {
                code: e.code().map(str::to_string),
                message: e.message().map(str::to_string),
                status,
                kind: ProblemKind::Response,
                clock_offset: e
                    .raw_response()
                    .and_then(|r| clock_offset(r.headers().get("date"))),
            },
            SdkError::TimeoutError(_) => Problem {
                kind: ProblemKind::Timeout,
                ..Default::default()
            },
            SdkError::DispatchFailure(d) => {
                let chain = error_chain(&e);
                Problem {
                    message: Some(chain),
                    kind: if d.is_timeout() {
                        ProblemKind::Timeout
                    } else if d.is_io() || d.is_other() {
                        ProblemKind::Connect
                    } else {
                        ProblemKind::OtherRetryable
                    },
                    ..Default::default()
                }
            }
            _ => Problem {
                message: Some(error_chain(&e)),
                kind: ProblemKind::Other,
                ..Default::default()
            },
        }
    }
}

/// The innermost cause of an error: for a refused connection, "Connection refused (os
/// error 111)" rather than the SDK's "dispatch failure".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        last = c.to_string();
        cur = c.source();
    }
    last
}

pub struct ErrorContext<'a> {
    pub bucket: &'a str,
    pub region: &'a str,
    pub endpoint: Option<&'a str>,
    pub creds_hint: String,
}

pub struct Classified {
    pub message: String,
    pub hint: Option<String>,
    pub retryable: bool,
}

/// Turn a problem into the text an operator acts on and the retry decision: configuration
/// problems (credentials, bucket, region, clock) are permanent; outages, throttling and
/// timeouts are transient.
pub fn classify(p: &Problem, ctx: &ErrorContext<'_>) -> Classified {
    let endpoint = ctx
        .endpoint
        .map(str::to_string)
        .unwrap_or_else(|| format!("AWS S3 ({})", ctx.region));
    let c = |message: String, hint: Option<String>, retryable: bool| Classified {
        message,
        hint,
        retryable,
    };
    match p.kind {
        ProblemKind::Connect => {
            return c(
                format!(
                    "cannot reach {endpoint}: {}",
                    p.message.as_deref().unwrap_or("connection failed")
                ),
                Some(
                    "check endpoint, and that the provider is up and reachable from this host"
                        .into(),
                ),
                true,
            )
        }
        ProblemKind::Timeout => {
            return c(
                format!("{endpoint} did not answer in time"),
                Some("the provider or the network is slow or down; lifeboat retries".into()),
                true,
            )
        }
        ProblemKind::Other | ProblemKind::OtherRetryable => {
            return c(
                p.message.clone().unwrap_or_else(|| "request failed".into()),
                None,
                p.kind == ProblemKind::OtherRetryable,
            )
        }
        ProblemKind::Response => {}
    }
    let code = p.code.as_deref().unwrap_or("");
    let status = p.status.unwrap_or(0);
    let detail = match (&p.code, &p.message) {
        (Some(code), Some(m)) => format!("{code}: {m}"),
        (Some(code), None) => code.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => format!("HTTP {status}"),
    };
    let bucket = ctx.bucket;
    match code {
        // s3s answers NotSignedUp for an unknown key.
        "InvalidAccessKeyId" | "NotSignedUp" => c(
            format!("the provider does not know this access key id ({code})"),
            Some(ctx.creds_hint.clone()),
            false,
        ),
        "SignatureDoesNotMatch" => c(
            "the secret access key does not match the access key id (SignatureDoesNotMatch)".into(),
            Some(ctx.creds_hint.clone()),
            false,
        ),
        "InvalidToken" | "ExpiredToken" | "TokenRefreshRequired" => c(
            format!("the credentials were refused ({code})"),
            Some(ctx.creds_hint.clone()),
            false,
        ),
        "InvalidObjectState" => c(
            format!("the object is in an archive storage class and must be restored (thawed) before it can be read ({detail})"),
            Some("lifeboat restore and drill thaw a backup's objects themselves; WAL moved to an archive class by a lifecycle rule must be thawed first (aws s3api restore-object): keep wal/ in a class read at once".into()),
            false,
        ),
        "NoSuchBucket" => c(
            format!("bucket \"{bucket}\" does not exist"),
            Some("create the bucket (with Object Lock, where the provider has it), or fix the bucket in url".into()),
            false,
        ),
        "AuthorizationHeaderMalformed"
        | "PermanentRedirect"
        | "IllegalLocationConstraintException"
        | "InvalidRegion" => c(
            format!(
                "bucket \"{bucket}\" is not in region \"{}\" ({detail})",
                ctx.region
            ),
            Some("set region to the bucket's region".into()),
            false,
        ),
        "RequestTimeTooSkewed" => c(
            format!(
                "the provider rejected the request's timestamp (RequestTimeTooSkewed): this host's clock is {}",
                match p.clock_offset {
                    Some(o) if o.abs() >= 60 => describe_offset(o),
                    _ => "off".to_string(),
                }
            ),
            Some("synchronise the clock (NTP: systemd-timesyncd, chrony); S3 allows 15 minutes of skew".into()),
            false,
        ),
        "AccessDenied" | "AllAccessDisabled" => c(
            format!("access denied ({detail})"),
            Some(format!("the credentials lack a permission on bucket \"{bucket}\": lifeboat needs s3:PutObject, s3:GetObject, s3:ListBucket and s3:GetBucketObjectLockConfiguration; {}", ctx.creds_hint)),
            false,
        ),
        "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
        | "TooManyRequests" => c(
            format!("the provider is throttling requests ({code})"),
            Some("lifeboat retries with backoff".into()),
            true,
        ),
        "BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest" => c(
            format!("the provider received a body that does not match its checksum ({detail})"),
            Some("the data was damaged on the way; lifeboat retries".into()),
            true,
        ),
        "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
            c(format!("the provider failed ({detail})"), None, true)
        }
        _ if status == 301 => c(
            format!("bucket \"{bucket}\" is not in region \"{}\" (HTTP 301)", ctx.region),
            Some("set region to the bucket's region".into()),
            false,
        ),
        _ if status == 403 => c(
            format!("access denied ({detail})"),
            Some(ctx.creds_hint.clone()),
            false,
        ),
        _ if status == 429 || status >= 500 => c(
            format!("the provider failed (HTTP {status}, {detail})"),
            None,
            true,
        ),
        _ => c(
            format!("the provider refused the request (HTTP {status}, {detail})"),
            None,
            false,
        ),
    }
}

impl S3Store {
    /// The client, for tests that inspect versions and retention directly.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> StorageConfig {
        let text = format!("name = \"off\"\nurl = \"s3://bucket/pre/fix/\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn url_parses() {
        let u: S3Url = "s3://my-bucket/a/b/".parse().unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "a/b");
        let u: S3Url = "s3://my-bucket".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert!("s3://B/x".parse::<S3Url>().is_err());
        assert!("s3://bucket/a//b".parse::<S3Url>().is_err());
        assert!("s3://bucket/../b".parse::<S3Url>().is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let e = validate(&cfg("endpoint = \"http://x\"")).unwrap_err();
        assert_eq!(e.0, "access_key_id_env");
        let e = validate(&cfg(
            "access_key_id_env = \"A\"\nsecret_access_key_env = \"B\"",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            (
                "region",
                "storage \"off\": region is required for AWS S3 (no endpoint is set)".into()
            )
        );
        let e = validate(&cfg(
            "region = \"r\"\naccess_key_id_env = \"AKIA123\"\nsecret_access_key_env = \"abc/def+\"",
        ))
        .unwrap_err();
        assert_eq!(e.0, "secret_access_key_env");
        assert!(validate(&cfg("region = \"r\"\nprofile = \"p\"")).is_ok());
        let e = validate(&cfg(
            "region = \"r\"\nprofile = \"p\"\nobject_lock = { mode = \"compliance\", days = 0 }",
        ))
        .unwrap_err();
        assert_eq!(e.0, "object_lock");
        assert!(toml::from_str::<StorageConfig>(
            "name = \"a\"\nurl = \"s3://b\"\nobject_lock = { mode = \"strict\", days = 1 }"
        )
        .is_err());
        assert!(toml::from_str::<StorageConfig>(
            "name = \"a\"\nurl = \"s3://b\"\nobject_lock = { mode = \"governance\", days = 1, x = 1 }"
        )
        .is_err());
    }

    #[test]
    fn crc_header_value() {
        // x-amz-checksum-crc32 of "hello world" as AWS documents it.
        assert_eq!(crc32_base64(b"hello world"), "DUoRhQ==");
    }

    fn ctx() -> ErrorContext<'static> {
        ErrorContext {
            bucket: "b",
            region: "eu-west-1",
            endpoint: Some("http://127.0.0.1:9"),
            creds_hint:
                "check the variables named by access_key_id_env/secret_access_key_env (K, S)".into(),
        }
    }

    fn resp(code: &str, status: u16) -> Problem {
        Problem {
            code: Some(code.into()),
            message: Some("m".into()),
            status: Some(status),
            kind: ProblemKind::Response,
            clock_offset: None,
        }
    }

    #[test]
    fn permanent_and_transient_errors() {
        for (code, status) in [
            ("InvalidAccessKeyId", 403),
            ("SignatureDoesNotMatch", 403),
            ("NoSuchBucket", 404),
            ("AuthorizationHeaderMalformed", 400),
            ("RequestTimeTooSkewed", 403),
            ("AccessDenied", 403),
        ] {
            assert!(!classify(&resp(code, status), &ctx()).retryable, "{code}");
        }
        for (code, status) in [
            ("SlowDown", 503),
            ("InternalError", 500),
            ("Whatever", 502),
            ("", 429),
        ] {
            assert!(classify(&resp(code, status), &ctx()).retryable, "{code}");
        }
        let t = Problem {
            kind: ProblemKind::Timeout,
            ..Default::default()
        };
        assert!(classify(&t, &ctx()).retryable);
        let skew = classify(&resp("RequestTimeTooSkewed", 403), &ctx());
        assert!(skew.message.contains("clock"), "{}", skew.message);
        let region = classify(&resp("AuthorizationHeaderMalformed", 400), &ctx());
        assert_eq!(
            region.message,
            "bucket \"b\" is not in region \"eu-west-1\" (AuthorizationHeaderMalformed: m)"
        );
        let creds = classify(&resp("InvalidAccessKeyId", 403), &ctx());
        assert!(creds.hint.unwrap().contains("access_key_id_env"));
    }
}
