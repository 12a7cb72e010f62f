//! The archive as commands see it: the mirror of providers plus the catalog's layout.
//! Glue only; layout rules live in `catalog`.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::catalog::{self, ArchiveMeta, WalInventory};
use crate::config::Config;
use crate::storage::{self, Mirror, ObjectStore};
use crate::wal::{Lsn, TimelineId, WalSegSize};

pub struct Archive {
    pub mirror: Mirror,
}

impl Archive {
    pub fn open(cfg: &Config) -> Result<Archive> {
        if cfg.storage.is_empty() {
            bail!("no [[storage]] provider configured\nhint: add [[storage]] with name and url = \"file:///path/to/archive\"");
        }
        let providers = cfg
            .storage
            .iter()
            .map(|s| storage::open(s).map_err(|e| anyhow!(e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Archive {
            mirror: Mirror::new(providers),
        })
    }

    /// Read `archive.json` from every provider: they must agree.
    /// A provider that cannot be reached does not stop a reader when another provider
    /// answers (its error is logged); with no answer at all, the first error is returned.
    pub async fn meta(&self) -> Result<Option<ArchiveMeta>> {
        let mut found: Option<ArchiveMeta> = None;
        let mut errors = Vec::new();
        for p in &self.mirror.providers {
            let m = match read_meta(p.as_ref()).await {
                Ok(m) => m,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(m) = m {
                if let Some(f) = &found {
                    if f.system_identifier != m.system_identifier {
                        bail!(
                            "providers disagree: storage \"{}\" holds system identifier {}, another holds {}\nhint: each PostgreSQL cluster needs its own archive location on every provider",
                            p.name(), m.system_identifier, f.system_identifier
                        );
                    }
                }
                found = Some(m);
            }
        }
        if found.is_none() && !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        for e in errors {
            tracing::warn!(error = %format!("{e:#}"), "a provider is unavailable; reading from the others");
        }
        Ok(found)
    }

    /// Make sure every provider's archive belongs to this cluster, writing `archive.json`
    /// where it is missing. Refuses to mix two clusters in one archive.
    pub async fn ensure_meta(&self, system_id: u64, seg: WalSegSize) -> Result<ArchiveMeta> {
        let want = ArchiveMeta {
            format: catalog::FORMAT_VERSION,
            system_identifier: system_id.to_string(),
            wal_segment_size: seg.bytes(),
            created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        };
        for p in &self.mirror.providers {
            match read_meta(p.as_ref()).await? {
                Some(m) => {
                    if m.system_identifier != want.system_identifier {
                        bail!(
                            "storage \"{}\" holds the archive of database system {}, but the server is system {}\nhint: never mix two clusters in one archive: point [[storage]] url at a new, empty location for this cluster",
                            p.name(),
                            m.system_identifier,
                            want.system_identifier
                        );
                    }
                    if m.wal_segment_size != want.wal_segment_size {
                        bail!(
                            "storage \"{}\" holds WAL segments of {} bytes, but the server uses {} bytes",
                            p.name(),
                            m.wal_segment_size,
                            want.wal_segment_size
                        );
                    }
                    if m.format > catalog::FORMAT_VERSION {
                        bail!("storage \"{}\" uses archive format {}, newer than this lifeboat understands ({})\nhint: upgrade lifeboat", p.name(), m.format, catalog::FORMAT_VERSION);
                    }
                }
                None => {
                    let body = serde_json::to_vec_pretty(&want)?;
                    p.put(catalog::ARCHIVE_META, Bytes::from(body)).await?;
                }
            }
        }
        Ok(want)
    }

    /// The WAL inventory of one provider.
    pub async fn inventory(&self, p: &dyn ObjectStore, seg: WalSegSize) -> Result<WalInventory> {
        let mut keys = p.list("wal/").await?;
        keys.extend(p.list("history/").await?);
        Ok(WalInventory::from_keys(
            keys.iter().map(|m| m.key.as_str()),
            seg,
        ))
    }

    /// Where streaming resumes: the lowest of the providers' resume points, so that no
    /// provider is left with a hole. `None` when no provider holds WAL.
    /// `pending` are keys of objects waiting in the local outbox, which will reach every
    /// provider before anything newer.
    pub async fn resume_point(
        &self,
        seg: WalSegSize,
        pending: &[String],
    ) -> Result<Option<(TimelineId, Lsn)>> {
        let mut min: Option<(TimelineId, Lsn)> = None;
        for p in &self.mirror.providers {
            let mut keys: Vec<String> = p.list("wal/").await?.into_iter().map(|m| m.key).collect();
            keys.extend(pending.iter().cloned());
            let inv = WalInventory::from_keys(keys.iter().map(String::as_str), seg);
            if let Some(r) = inv.resume_point(seg) {
                min = Some(match min {
                    Some(m) if m <= r => m,
                    _ => r,
                });
            }
        }
        Ok(min)
    }
}

async fn read_meta(p: &dyn ObjectStore) -> Result<Option<ArchiveMeta>> {
    match p.get(catalog::ARCHIVE_META).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
            format!(
                "storage \"{}\": {} is not valid",
                p.name(),
                catalog::ARCHIVE_META
            )
        }),
    }
}
