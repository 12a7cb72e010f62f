//! A fault-injecting storage wrapper, for outage tests against real backends.
//!
//! `LIFEBOAT_FAULT_INJECT="NAME=/path/flag[,NAME2=/other]"` wraps provider NAME so that every
//! operation fails with a retryable error while the file `/path/flag` exists. Tests create
//! and remove the flag to take a provider down and bring it back; nothing else is faked.
//! A flag whose content is `stall TEXT` instead holds every write of a key containing TEXT
//! until the flag goes (other writes go on): a slow request, to leave a hole behind later
//! objects. A flag whose content is `fail TEXT` fails every write of a key containing TEXT
//! (other operations go on): one object a provider keeps refusing. A flag whose content is
//! `exists TEXT` makes keys containing TEXT behave as under an object lock whose first
//! response is lost: the first put of such a key is stored and answered with a retryable
//! error, and every later put of a key that exists is refused as an overwrite.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{BoxFut, Extended, Features, ObjectMeta, ObjectStore, StorageError};

pub const ENV: &str = "LIFEBOAT_FAULT_INJECT";

struct Faulty {
    inner: Arc<dyn ObjectStore>,
    flag: PathBuf,
}

impl Faulty {
    /// Fail while the flag exists, unless it names a mode that holds only some writes
    /// (`stall`, `fail`, `exists`: other operations go on).
    fn check(&self, op: &'static str, key: &str) -> Result<(), StorageError> {
        let Ok(content) = std::fs::read_to_string(&self.flag) else {
            return Ok(());
        };
        let content = content.trim_start();
        let partial = ["stall ", "fail ", "exists "]
            .iter()
            .any(|m| content.starts_with(m));
        if !partial {
            return Err(self.injected(op, key));
        }
        Ok(())
    }

    fn injected(&self, op: &'static str, key: &str) -> StorageError {
        StorageError {
            provider: self.inner.name().to_string(),
            op,
            key: key.to_string(),
            message: format!("injected fault ({} exists)", self.flag.display()),
            hint: None,
            retryable: true,
        }
    }
}

impl Faulty {
    /// `exists` mode: store once and lose the response; refuse to overwrite.
    async fn put_locked(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let err = |message: &str, retryable| StorageError {
            provider: self.inner.name().to_string(),
            op: "put",
            key: key.to_string(),
            message: format!("{message} (injected by {})", self.flag.display()),
            hint: None,
            retryable,
        };
        if self.inner.get(key).await?.is_some() {
            return Err(err("the object exists and may not be overwritten", false));
        }
        self.inner.put(key, data).await?;
        Err(err("the response was lost", true))
    }
}

impl ObjectStore for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let stalls = |flag: &PathBuf| {
                std::fs::read_to_string(flag).is_ok_and(|c| {
                    c.trim()
                        .strip_prefix("stall ")
                        .is_some_and(|t| key.contains(t.trim()))
                })
            };
            let content = std::fs::read_to_string(&self.flag).unwrap_or_default();
            if let Some(t) = content.trim().strip_prefix("exists ") {
                if key.contains(t.trim()) {
                    return self.put_locked(key, data).await;
                }
                return self.inner.put(key, data).await;
            }
            if content.starts_with("stall ") {
                while stalls(&self.flag) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                return self.inner.put(key, data).await;
            }
            if let Some(t) = content.trim().strip_prefix("fail ") {
                if key.contains(t.trim()) {
                    return Err(self.injected("put", key));
                }
                return self.inner.put(key, data).await;
            }
            self.check("put", key)?;
            self.inner.put(key, data).await
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            self.check("get", key)?;
            self.inner.get(key).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            self.check("list", prefix)?;
            self.inner.list(prefix).await
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.check("delete", key)?;
            self.inner.delete(key).await
        })
    }
    fn thaw<'a>(
        &'a self,
        key: &'a str,
        request: Option<u32>,
    ) -> BoxFut<'a, Result<crate::storage::Thaw, StorageError>> {
        Box::pin(async move {
            self.check("get", key)?;
            self.inner.thaw(key, request).await
        })
    }
    fn list_with_leftovers<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            self.check("list", prefix)?;
            self.inner.list_with_leftovers(prefix).await
        })
    }
    fn list_classes<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFut<'a, Result<Vec<(String, String)>, StorageError>> {
        Box::pin(async move {
            self.check("list", prefix)?;
            self.inner.list_classes(prefix).await
        })
    }
    fn make_cold<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFut<'a, Result<crate::storage::Cold, StorageError>> {
        Box::pin(async move {
            self.check("cold", key)?;
            self.inner.make_cold(key, class).await
        })
    }
    fn probe_delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.check("delete", key)?;
            self.inner.probe_delete(key).await
        })
    }
    fn extend_retention<'a>(
        &'a self,
        key: &'a str,
        until: std::time::SystemTime,
    ) -> BoxFut<'a, Result<Extended, StorageError>> {
        Box::pin(async move {
            self.check("retain", key)?;
            self.inner.extend_retention(key, until).await
        })
    }
}

/// Wrap `store` when the environment asks for faults on it.
pub fn maybe_wrap(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let Ok(spec) = std::env::var(ENV) else {
        return store;
    };
    for item in spec.split(',') {
        if let Some((name, flag)) = item.split_once('=') {
            if name.trim() == store.name() {
                tracing::warn!(provider = store.name(), flag, "fault injection enabled");
                return Arc::new(Faulty {
                    inner: store,
                    flag: PathBuf::from(flag.trim()),
                });
            }
        }
    }
    store
}
