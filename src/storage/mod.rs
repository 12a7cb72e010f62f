//! A small object-store trait, the `file://` backend (the `s3://` one is in [`s3`]), the
//! fault-injecting wrapper for tests ([`fault`]) and the mirror that writes every object to
//! all configured providers. Crash-safe local files are written through [`durable`].
//!
//! Invariants:
//! - `put` returns only once the object is durable (file store: temp file, fsync, rename,
//!   fsync directory) and is atomic: a reader sees the whole object or none.
//! - `Mirror::put` returns only once every provider has the object.
//! - `list` returns keys sorted, so a prefix listing yields WAL in LSN order.
//! - A put the provider refuses for good (not retryable: e.g. an object lock or retention
//!   policy forbidding an overwrite, a failed precondition) counts as stored when the key
//!   holds exactly the bytes we meant to store ([`put_or_identical`]): a re-send after a
//!   lost response.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

pub mod config;
pub mod durable;
pub mod fault;
pub mod s3;

pub use config::StorageConfig;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Error)]
#[error("storage \"{provider}\": {op} {key}: {message}{}", .hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
pub struct StorageError {
    pub provider: String,
    pub op: &'static str,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
    pub retryable: bool,
}

impl StorageError {
    /// Whether trying again may succeed (network blips, full disks being cleaned up) as
    /// opposed to a configuration problem.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// What a backend can do; asked, not assumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub object_lock: bool,
    pub delete: bool,
    /// The bucket keeps versions (always so with Object Lock): a delete removes every
    /// version of the key, by its id, so nothing is left behind a delete marker.
    pub versioned: bool,
}

/// Whether an object can be read now ([`ObjectStore::thaw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thaw {
    /// In a class read at once.
    Warm,
    /// Not on this provider.
    Missing,
    /// In an archive class (Glacier Flexible Retrieval, Deep Archive), with a restored
    /// copy readable now.
    Thawed,
    /// In an archive class: a restore is under way (or was just requested), or, when only
    /// looking, none was requested yet.
    Cold,
}

/// How [`ObjectStore::make_cold`] moved an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cold {
    /// Tagged for the bucket's lifecycle rule, which transitions it (keeping the version
    /// and its lock).
    Tagged,
    /// Copied onto itself in the class (a provider without lifecycle rules, unversioned).
    Copied,
    /// This provider cannot store classes.
    Unsupported,
}

/// The tag `prune` puts on an object for the lifecycle rule that moves it: its value is
/// the target class.
pub const COLD_TAG: &str = "lifeboat-cold";

/// What [`ObjectStore::extend_retention`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extended {
    /// The retain-until date was raised to the target.
    Raised,
    /// It already reached the target (a lock is never shortened).
    Held,
    /// The provider has no Object Lock here (nothing to do).
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When the provider last wrote it, where the listing says (prune's grace period).
    pub modified: Option<std::time::SystemTime>,
}

pub trait ObjectStore: Send + Sync {
    fn name(&self) -> &str;
    fn features(&self) -> Features;
    /// Store `data` under `key`, durably and atomically.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, Result<(), StorageError>>;
    /// The object, or `None` when it does not exist.
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StorageError>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>>;
    /// Whether these credentials may delete (and, in a versioned bucket, delete versions):
    /// deletes `key`, which must not exist, leaving nothing behind. `Err` when refused.
    fn probe_delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        let _ = key;
        Box::pin(async { Ok(()) })
    }
    /// [`ObjectStore::list`] plus the leftovers of writes that never finished (`.tmp.`
    /// files of the `file://` store, which `list` hides), in one walk, for `prune` to sweep
    /// once older than its grace period.
    fn list_with_leftovers<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        self.list(prefix)
    }
    /// The objects under `prefix` stored in a class other than the standard one, with
    /// their class, sorted by key (a listing of its own, so the big listings stay small).
    fn list_classes<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<(String, String)>, StorageError>> {
        let _ = prefix;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Move the object to storage class `class` (see [`Cold`]).
    fn make_cold<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFut<'a, Result<Cold, StorageError>> {
        let _ = (key, class);
        Box::pin(async { Ok(Cold::Unsupported) })
    }
    /// Whether the object is in an archive storage class and must be thawed before a read;
    /// with `request = Some(days)`, ask the provider to restore a readable copy for that
    /// many days (once: a restore already under way is left alone).
    fn thaw<'a>(
        &'a self,
        key: &'a str,
        request: Option<u32>,
    ) -> BoxFut<'a, Result<Thaw, StorageError>> {
        let _ = (key, request);
        Box::pin(async { Ok(Thaw::Warm) })
    }
    /// Raise the object's Object Lock retain-until date to `until` where it is earlier;
    /// never lower it.
    fn extend_retention<'a>(
        &'a self,
        key: &'a str,
        until: std::time::SystemTime,
    ) -> BoxFut<'a, Result<Extended, StorageError>> {
        let _ = (key, until);
        Box::pin(async { Ok(Extended::Unsupported) })
    }
    /// Reach the provider and check that it can serve this configuration (bucket exists,
    /// credentials work, Object Lock is there when asked for). Every other call does this
    /// first, once; commands call it to fail early with a clear message.
    fn check(&self) -> BoxFut<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Store `data` under `key`. When the provider refuses the put for good (not retryable:
/// the way an object lock or a retention policy refuses to overwrite an existing object,
/// R2 and GCS with HTTP 403, a precondition with 412 or 409), read the key: if it holds
/// exactly `data` (an earlier put of these bytes was stored and its response lost), the
/// object is stored; otherwise the put's error stands.
pub async fn put_or_identical(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<(), StorageError> {
    let err = match store.put(key, data.clone()).await {
        Ok(()) => return Ok(()),
        Err(e) if !e.is_retryable() => e,
        Err(e) => return Err(e),
    };
    match store.get(key).await {
        Ok(Some(held)) if held == data => {
            tracing::info!(
                provider = store.name(),
                key,
                refused = %err.message,
                "the provider refused to overwrite an object that already holds exactly these bytes: stored"
            );
            Ok(())
        }
        Ok(_) => Err(err),
        Err(e) => {
            tracing::debug!(provider = store.name(), key, error = %e, "cannot read back an object whose overwrite was refused");
            Err(err)
        }
    }
}

/// Check a provider's configuration without touching the network: `Err((key, message))`
/// names the offending key of the `[[storage]]` entry.
pub fn validate(cfg: &StorageConfig) -> Result<(), (&'static str, String)> {
    let name = &cfg.name;
    let url = &cfg.url;
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err((
                "url",
                format!(
                    "storage \"{name}\": url \"{url}\" must be an absolute path\nhint: file:///var/lib/lifeboat/archive"
                ),
            ));
        }
        let s3_only = [
            ("endpoint", cfg.endpoint.is_some()),
            ("region", cfg.region.is_some()),
            ("force_path_style", cfg.force_path_style.is_some()),
            ("access_key_id_env", cfg.access_key_id_env.is_some()),
            ("secret_access_key_env", cfg.secret_access_key_env.is_some()),
            ("profile", cfg.profile.is_some()),
            ("object_lock", cfg.object_lock.is_some()),
            (
                "request_checksum_calculation",
                cfg.request_checksum_calculation.is_some(),
            ),
            (
                "response_checksum_validation",
                cfg.response_checksum_validation.is_some(),
            ),
            ("cold_storage_class", cfg.cold_storage_class.is_some()),
            ("cold_after", cfg.cold_after.is_some()),
        ];
        if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err((
                key,
                format!(
                    "storage \"{name}\": {key} applies to s3:// providers only, and url is file://"
                ),
            ));
        }
        return Ok(());
    }
    if url.starts_with("s3://") {
        return crate::storage::s3::validate(cfg);
    }
    Err((
        "url",
        format!("storage \"{name}\": unsupported url \"{url}\"\nhint: use file:///absolute/path or s3://bucket/prefix"),
    ))
}

/// Open a provider from its configuration. Nothing is sent over the network yet: an S3
/// provider checks its bucket (and Object Lock) on first use.
pub fn open(cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>, String> {
    validate(cfg).map_err(|(_, m)| m)?;
    let store: Arc<dyn ObjectStore> = match cfg.url.strip_prefix("file://") {
        Some(path) => Arc::new(FileStore::new(&cfg.name, PathBuf::from(path))),
        None => Arc::new(crate::storage::s3::S3Store::new(cfg)?),
    };
    Ok(crate::storage::fault::maybe_wrap(store))
}

/// The `file://` backend: one file per object under a root directory.
///
/// Objects of [`DIRECT_MIN`] bytes or more are written with `O_DIRECT` on Linux: straight
/// from memory to the device, without a copy into the page cache. On this project's
/// benchmark machine a buffered write plus fsync of 512 MiB cost 1.24 CPU-seconds and a
/// direct one 0.12, and archive data is never read back soon, so caching it only evicts the
/// database's own pages. A file system that refuses `O_DIRECT` (EINVAL) gets buffered
/// writes from then on.
#[derive(Clone)]
pub struct FileStore {
    name: String,
    root: PathBuf,
    direct: Arc<AtomicBool>,
}

/// Objects this large are written with `O_DIRECT`.
pub const DIRECT_MIN: usize = 256 * 1024;
/// `O_DIRECT` alignment of memory, file offsets and lengths: 4 KiB suits 512-byte and
/// 4 KiB logical blocks alike.
#[cfg(target_os = "linux")]
const DIRECT_ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer and written per call.
#[cfg(target_os = "linux")]
const DIRECT_CHUNK: usize = 1 << 20;

#[cfg(target_os = "linux")]
thread_local! {
    /// The aligned staging buffer of [`write_direct`], one per writing thread.
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether [`write_direct`] writes through to the device a [`GENTLE_CHUNK`] at a time.
static FLUSH_AS_WRITTEN: AtomicBool = AtomicBool::new(false);
/// Bytes per write (each one `O_DSYNC`) while [`FLUSH_AS_WRITTEN`].
#[cfg(target_os = "linux")]
const GENTLE_CHUNK: usize = 256 << 10;

/// From now on, write large objects of the `file://` provider through to the device
/// (`O_DSYNC`) 256 KiB at a time, for the sake of an application on the same disk: every
/// fsync it makes flushes the device's cache, with whatever lifeboat wrote since its own
/// last flush. Paced like a SQLite snapshot (2 MiB every 31 ms), writes of 1 MiB flushed per
/// 2 MiB object raised a 200 commits/s writer's p99 by 19-20%, of 256 KiB each flushed by
/// 3% and -8% (6 and 4 rounds, pooled). Set by SQLite snapshots unless
/// `LIFEBOAT_SQLITE_PRIORITY=all`.
pub fn flush_as_written() {
    FLUSH_AS_WRITTEN.store(true, Ordering::Relaxed);
}

/// Create `tmp` and write `data` to it with `O_DIRECT`: whole 4 KiB blocks through an
/// aligned buffer, then the unaligned tail with `O_DIRECT` cleared. The caller fsyncs.
#[cfg(target_os = "linux")]
fn write_direct(tmp: &Path, data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let gentle = FLUSH_AS_WRITTEN.load(Ordering::Relaxed);
    let (sync, chunk_len) = if gentle {
        (libc::O_DSYNC, GENTLE_CHUNK)
    } else {
        (0, DIRECT_CHUNK)
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT | sync)
        .open(tmp)?;
    let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    DIRECT_BUF.with_borrow_mut(|buf| -> std::io::Result<()> {
        buf.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
        let off = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let stage = &mut buf[off..off + DIRECT_CHUNK];
        for chunk in data[..whole].chunks(chunk_len) {
            stage[..chunk.len()].copy_from_slice(chunk);
            f.write_all(&stage[..chunk.len()])?;
        }
        Ok(())
    })?;
    if whole < data.len() {
        let fd = f.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        f.write_all(&data[whole..])?;
    }
    Ok(f)
}

const TMP_PREFIX: &str = ".tmp.";

impl FileStore {
    pub fn new(name: &str, root: PathBuf) -> FileStore {
        FileStore {
            name: name.to_string(),
            root,
            direct: Arc::new(AtomicBool::new(cfg!(target_os = "linux"))),
        }
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> StorageError {
        let (hint, retryable) = match e.kind() {
            std::io::ErrorKind::PermissionDenied => (
                Some(format!(
                    "make {} writable by the user lifeboat runs as",
                    self.root.display()
                )),
                false,
            ),
            std::io::ErrorKind::StorageFull => (
                Some("free space on the archive's file system".to_string()),
                true,
            ),
            _ => (None, true),
        };
        StorageError {
            provider: self.name.clone(),
            op,
            key: key.to_string(),
            message: format!("{e} (in {})", self.root.display()),
            hint,
            retryable,
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StorageError {
                provider: self.name.clone(),
                op: "resolve",
                key: key.into(),
                message: "invalid object key".into(),
                hint: None,
                retryable: false,
            });
        }
        Ok(self.root.join(key))
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent: the root");
        create_dirs_durably(&self.root, dir).map_err(|e| self.err("put", key, e))?;
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("keys are UTF-8 and non-empty");
        let tmp = dir.join(format!("{TMP_PREFIX}{file_name}.{}", rand::random::<u32>()));
        durable::replace_with(&path, &tmp, |t| self.create_with(t, data))
            .map_err(|e| self.err("put", key, e))
    }

    /// Create `tmp` holding `data`, directly when it is large enough (see [`FileStore`]).
    fn create_with(&self, tmp: &Path, data: &[u8]) -> std::io::Result<std::fs::File> {
        #[cfg(target_os = "linux")]
        if data.len() >= DIRECT_MIN && self.direct.load(Ordering::Relaxed) {
            match write_direct(tmp, data) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let _ = std::fs::remove_file(tmp);
                    self.direct.store(false, Ordering::Relaxed);
                    tracing::info!(provider = self.name, error = %e, "the file system refuses O_DIRECT: buffered writes from now on");
                }
                r => return r,
            }
        }
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(data)?;
        Ok(f)
    }

    /// Objects under `prefix`; with `leftovers`, also the `.tmp.` files of writes that
    /// never finished (hidden from every reader).
    fn list_sync(&self, prefix: &str, leftovers: bool) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk from the deepest directory named by the prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err("list", prefix, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| self.err("list", prefix, e))?;
                let ft = ent.file_type().map_err(|e| self.err("list", prefix, e))?;
                let p = ent.path();
                if ft.is_dir() {
                    stack.push(p);
                    continue;
                }
                let name = ent.file_name();
                if !leftovers && name.to_string_lossy().starts_with(TMP_PREFIX) {
                    continue;
                }
                let Ok(rel) = p.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if key.starts_with(prefix) {
                    let md = ent.metadata().ok();
                    out.push(ObjectMeta {
                        key,
                        size: md.as_ref().map_or(0, |m| m.len()),
                        modified: md.and_then(|m| m.modified().ok()),
                    });
                }
            }
        }
        // Keys are unique: an unstable sort needs no buffer of its own.
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Create `dir` (under `root`) and fsync each parent whose entry we added.
fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.is_dir() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) if d != root => d = p,
            _ => break,
        }
    }
    for m in missing.iter().rev() {
        match std::fs::create_dir(m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if let Some(p) = m.parent() {
            std::fs::File::open(p)?.sync_all()?;
        }
    }
    Ok(())
}

impl ObjectStore for FileStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> Features {
        Features {
            object_lock: false,
            delete: true,
            versioned: false,
        }
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let me = self.clone();
            let key2 = key.to_string();
            tokio::task::spawn_blocking(move || me.put_sync(&key2, &data))
                .await
                .expect("file put task panicked")
        })
    }

    fn thaw<'a>(
        &'a self,
        key: &'a str,
        _request: Option<u32>,
    ) -> BoxFut<'a, Result<Thaw, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            Ok(match tokio::fs::try_exists(&path).await {
                Ok(true) => Thaw::Warm,
                _ => Thaw::Missing,
            })
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::read(&path).await {
                Ok(v) => Ok(Some(Bytes::from(v))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.err("get", key, e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            let me = FileStore::new(&self.name, self.root.clone());
            let p = prefix.to_string();
            tokio::task::spawn_blocking(move || me.list_sync(&p, false))
                .await
                .expect("file list task panicked")
        })
    }

    fn list_with_leftovers<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            let me = FileStore::new(&self.name, self.root.clone());
            let p = prefix.to_string();
            tokio::task::spawn_blocking(move || me.list_sync(&p, true))
                .await
                .expect("file list task panicked")
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.err("delete", key, e)),
            }
        })
    }
}

/// Every configured provider; writes go to all. Reads pick a copy in `archive::read`.
#[derive(Clone)]
pub struct Mirror {
    pub providers: Vec<Arc<dyn ObjectStore>>,
}

impl Mirror {
    pub fn new(providers: Vec<Arc<dyn ObjectStore>>) -> Mirror {
        Mirror { providers }
    }

    /// Write to all providers concurrently; succeed only when all have it. The first error
    /// is returned (the others are logged).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let mut set = tokio::task::JoinSet::new();
        for p in &self.providers {
            let p = p.clone();
            let k = key.to_string();
            let d = data.clone();
            set.spawn(async move { put_or_identical(p.as_ref(), &k, d).await });
        }
        let mut first = None;
        while let Some(r) = set.join_next().await {
            match r.expect("put task panicked") {
                Ok(()) => {}
                Err(e) if first.is_none() => first = Some(e),
                Err(e) => tracing::warn!(error = %e, "write failed"),
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file store that refuses to replace an object, as an object lock does.
    struct Locked(FileStore);

    impl ObjectStore for Locked {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn features(&self) -> Features {
            self.0.features()
        }
        fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, Result<(), StorageError>> {
            Box::pin(async move {
                if self.0.get(key).await?.is_some() {
                    return Err(StorageError {
                        provider: "locked".into(),
                        op: "put",
                        key: key.into(),
                        message: "AccessDenied".into(),
                        hint: None,
                        retryable: false,
                    });
                }
                self.0.put(key, data).await
            })
        }
        fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StorageError>> {
            self.0.get(key)
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
        ) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
            self.0.list(prefix)
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
            self.0.delete(key)
        }
    }

    #[tokio::test]
    async fn a_refused_overwrite_counts_as_stored_only_for_identical_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = Locked(FileStore::new("locked", d.path().to_path_buf()));
        let a = Bytes::from_static(b"sealed object A");
        put_or_identical(&s, "wal/k", a.clone()).await.unwrap();
        // The same bytes again (a re-send after a lost response): stored.
        put_or_identical(&s, "wal/k", a.clone()).await.unwrap();
        // Other bytes under that key: the refusal stands.
        let e = put_or_identical(&s, "wal/k", Bytes::from_static(b"sealed object B"))
            .await
            .unwrap_err();
        assert!(!e.retryable && e.message == "AccessDenied", "{e}");
        assert_eq!(s.get("wal/k").await.unwrap().unwrap(), a);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn large_objects_round_trip_through_direct_writes() {
        // Sizes around the O_DIRECT threshold, the 4 KiB blocks and the 1 MiB chunks, with
        // and without an unaligned tail; the temp dir is on the test's real file system.
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new("t", d.path().join("archive"));
        for (i, len) in [
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            DIRECT_CHUNK,
            3 * DIRECT_CHUNK + 4095,
            2 * DIRECT_CHUNK + DIRECT_ALIGN,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let key = format!("backups/x/part-{i}");
            s.put(&key, Bytes::from(data.clone())).await.unwrap();
            let got = s.get(&key).await.unwrap().unwrap();
            assert_eq!(got.len(), len, "length of a {len}-byte object");
            assert!(got == data, "content of a {len}-byte object");
        }
        let left: Vec<_> = std::fs::read_dir(d.path().join("archive/backups/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        assert!(
            s.direct.load(Ordering::Relaxed),
            "the test's file system refused O_DIRECT, so the direct path went untested"
        );
    }

    #[tokio::test]
    async fn file_store_conformance() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new("t", d.path().join("archive"));
        assert_eq!(s.get("wal/a").await.unwrap(), None);
        s.put("wal/00000001/b", Bytes::from_static(b"2"))
            .await
            .unwrap();
        s.put("wal/00000001/a", Bytes::from_static(b"1"))
            .await
            .unwrap();
        s.put("history/x", Bytes::from_static(b"h")).await.unwrap();
        s.put("wal/00000001/a", Bytes::from_static(b"11"))
            .await
            .unwrap();
        assert_eq!(
            s.get("wal/00000001/a").await.unwrap().unwrap(),
            Bytes::from_static(b"11")
        );
        let keys: Vec<_> = s
            .list("wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["wal/00000001/a", "wal/00000001/b"]);
        let keys: Vec<_> = s
            .list("wal/00000001/a")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["wal/00000001/a"]);
        assert_eq!(s.list("").await.unwrap().len(), 3);
        assert!(s.list("nothing/").await.unwrap().is_empty());
        s.delete("wal/00000001/a").await.unwrap();
        assert_eq!(s.get("wal/00000001/a").await.unwrap(), None);
        assert!(s.put("../escape", Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn mirror_writes_everywhere() {
        let d = tempfile::tempdir().unwrap();
        let a: Arc<dyn ObjectStore> = Arc::new(FileStore::new("a", d.path().join("a")));
        let b: Arc<dyn ObjectStore> = Arc::new(FileStore::new("b", d.path().join("b")));
        let m = Mirror::new(vec![a.clone(), b.clone()]);
        m.put("k", Bytes::from_static(b"good")).await.unwrap();
        for p in [&a, &b] {
            assert_eq!(
                p.get("k").await.unwrap().unwrap(),
                Bytes::from_static(b"good")
            );
        }
    }
}
