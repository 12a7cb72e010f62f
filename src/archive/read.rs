//! Reading objects across providers: the one place that picks a copy.
//!
//! [`Archive::read`] is the copy picker every reader uses (restore's backup parts, WAL
//! segments and history files, the prefetch worker): it asks the providers in turn and
//! returns the first copy the caller's check accepts, so a copy that is missing, corrupt
//! (CRC32), undecryptable or of the wrong length on one provider is read from the next.
//!
//! [`Archive::read_segment`] decides what a WAL segment is, across every provider:
//! - a `.seg` on any provider wins (it is the whole segment; objects are immutable, so
//!   every copy holds the same bytes);
//! - otherwise the segment is rebuilt from the `.part` objects of all providers together,
//!   which must cover it from offset 0 without a hole;
//! - a prefix shorter than the segment is served (zero-filled by the caller, which
//!   PostgreSQL reads as the end of WAL) only when it is the newest WAL of its timeline:
//!   every provider answered and none holds any WAL of that timeline past the prefix's end
//!   (positions compare as (timeline, LSN): WAL of another timeline never counts).
//!   Otherwise the segment is [`WalError::Unusable`]: recovery must stop, not end early.
//!
//! "Not there" is an answer only when every provider answered: a provider that cannot be
//! listed might hold the object, so its absence elsewhere is [`WalError::Unusable`] too.
//! Complete objects (`.seg`, history files) are served from any provider that has a good
//! copy, whoever else is down.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;

use crate::archive::Archive;
use crate::core::catalog::{self, WalObject};
use crate::core::wal::{Lsn, SegmentName, TimelineId, WalSegSize};
use crate::pipeline::Opener;

/// What became of one provider's copy of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The provider answered: it does not hold the object.
    Missing,
    /// The provider could not be asked (its error).
    Unreachable(String),
    /// The copy was read and refused by the caller's check (why).
    Rejected(String),
}

/// No provider gave a usable copy of an object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no provider holds a usable copy of {key}: {}", self.problems())]
pub struct NoCopy {
    pub key: String,
    /// Each provider asked, in order, and what its copy was.
    pub tried: Vec<(String, Attempt)>,
}

impl NoCopy {
    /// Every provider answered, and none holds the object.
    pub fn is_absent(&self) -> bool {
        self.tried.iter().all(|(_, a)| *a == Attempt::Missing)
    }

    /// What happened on each provider, `; `-separated.
    pub fn problems(&self) -> String {
        self.tried
            .iter()
            .map(|t| self.describe(t))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The copies that exist but could not be used and the providers that could not be
    /// asked, or the whole story when every provider lacks the object (it was listed,
    /// then vanished).
    fn problems_or_missing(&self) -> Vec<String> {
        let p: Vec<String> = self
            .tried
            .iter()
            .filter(|(_, a)| *a != Attempt::Missing)
            .map(|t| self.describe(t))
            .collect();
        if p.is_empty() {
            vec![self.problems()]
        } else {
            p
        }
    }

    fn describe(&self, (p, a): &(String, Attempt)) -> String {
        match a {
            Attempt::Missing => format!("storage \"{p}\": {} is missing", self.key),
            Attempt::Unreachable(e) => e.clone(),
            Attempt::Rejected(why) => format!("storage \"{p}\": {}: {why}", self.key),
        }
    }
}

/// Why a WAL file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Every provider answered and none holds it: PostgreSQL's normal "no more WAL".
    #[error("{0} is not in the archive")]
    NotFound(String),
    /// The archive holds it (or may: a provider could not be asked) but it cannot be
    /// served as it is: recovery must stop rather than end here.
    #[error("{0}")]
    Unusable(String),
}

/// A WAL segment as the archive can serve it: bytes `[0, end)`, as chunks at their
/// offsets. When `end` is short of the segment size the segment is the newest partial
/// WAL of its timeline, and the rest is to be served as zeros.
#[derive(Debug)]
pub struct Segment {
    pub chunks: Vec<(u64, Vec<u8>)>,
    pub end: u64,
}

/// Decrypt a copy (CRC32, authentication) and require `want` plain bytes.
pub fn open_exact(opener: &Opener, stored: &[u8], want: u64) -> Result<Vec<u8>, String> {
    let plain = opener.open(stored).map_err(|e| e.to_string())?;
    if plain.len() as u64 != want {
        return Err(format!("holds {} bytes, its name says {want}", plain.len()));
    }
    Ok(plain)
}

impl Archive {
    /// The first copy of `key` that `accept` takes, asking every provider in
    /// configuration order. `accept` gets the stored bytes and checks them as the caller
    /// needs (CRC32, decryption, length, a recorded checksum), returning what it made of
    /// them or why the copy is refused.
    pub async fn read<T, F, Fut>(&self, key: &str, accept: F) -> Result<T, NoCopy>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let order: Vec<usize> = (0..self.mirror.providers.len()).collect();
        self.read_among(key, &order, accept).await.map(|(t, _)| t)
    }

    /// [`Archive::read`] over the providers at `order` (indexes into the mirror's
    /// providers), in that order; also says which provider's copy was taken.
    pub async fn read_among<T, F, Fut>(
        &self,
        key: &str,
        order: &[usize],
        mut accept: F,
    ) -> Result<(T, usize), NoCopy>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let mut tried = Vec::new();
        for &i in order {
            let p = &self.mirror.providers[i];
            let attempt = match p.get(key).await {
                Ok(Some(b)) => match accept(b).await {
                    Ok(t) => {
                        // A copy missing on an earlier provider is worth a warning too:
                        // every provider should hold every object.
                        if !tried.is_empty() {
                            tracing::warn!(
                                provider = p.name(),
                                key,
                                "read from the fallback provider"
                            );
                        }
                        return Ok((t, i));
                    }
                    Err(why) => {
                        tracing::warn!(provider = p.name(), key, error = %why, "unusable copy");
                        Attempt::Rejected(why)
                    }
                },
                Ok(None) => Attempt::Missing,
                Err(e) => Attempt::Unreachable(e.to_string()),
            };
            tried.push((p.name().to_string(), attempt));
        }
        Err(NoCopy {
            key: key.to_string(),
            tried,
        })
    }

    /// A timeline's history file, decrypted, from any provider with a good copy.
    pub async fn read_history(
        &self,
        opener: &Opener,
        tli: TimelineId,
    ) -> Result<Vec<u8>, WalError> {
        let file = format!("{:08X}.history", tli.0);
        let prefix = catalog::history_prefix(tli);
        let mut problems = Vec::new();
        let mut unlisted = Vec::new();
        for (i, p) in self.mirror.providers.iter().enumerate() {
            let listed = match p.list(&prefix).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "a provider is unavailable; reading from the others");
                    unlisted.push(e.to_string());
                    continue;
                }
            };
            let Some(o) = listed.first() else { continue };
            match self
                .read_among(&o.key, &[i], |b| async move {
                    opener.open(&b).map_err(|e| e.to_string())
                })
                .await
            {
                Ok((plain, _)) => {
                    if i > 0 {
                        tracing::warn!(
                            file,
                            provider = p.name(),
                            "served from the fallback provider"
                        );
                    }
                    return Ok(plain);
                }
                Err(nc) => problems.extend(nc.problems_or_missing()),
            }
        }
        if problems.is_empty() && unlisted.is_empty() {
            return Err(WalError::NotFound(file));
        }
        problems.extend(unlisted);
        Err(WalError::Unusable(format!(
            "{file} is in the archive but no copy could be used: {}",
            problems.join("; ")
        )))
    }

    /// Segment `name` across every provider, by the rules in the module docs. Every
    /// object it returns bytes of was verified (CRC32, decryption, length).
    pub async fn read_segment(
        &self,
        opener: &Opener,
        name: SegmentName,
        seg: WalSegSize,
    ) -> Result<Segment, WalError> {
        let seg_key = catalog::segment_key(name);
        let providers = &self.mirror.providers;
        // Unusable `.seg` copies and providers that could not be listed.
        let mut problems: Vec<String> = Vec::new();
        let mut unlisted: Vec<String> = Vec::new();
        let mut seg_listed = false;
        // Every part of the segment, with the providers that hold it.
        let mut parts: BTreeMap<String, (WalObject, Vec<usize>)> = BTreeMap::new();
        for (i, p) in providers.iter().enumerate() {
            let listed = match p.list(&catalog::segment_prefix(name)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(segment = %name, error = %e, "a provider is unavailable; reading from the others");
                    unlisted.push(e.to_string());
                    continue;
                }
            };
            let mut has_seg = false;
            for o in listed {
                let Some(w) = catalog::parse_wal_key(&o.key, seg) else {
                    continue;
                };
                if w.name != name {
                    continue;
                }
                if w.complete {
                    has_seg = true;
                } else {
                    parts.entry(w.key()).or_insert((w, Vec::new())).1.push(i);
                }
            }
            if !has_seg {
                continue;
            }
            seg_listed = true;
            let want = seg.bytes();
            match self
                .read_among(
                    &seg_key,
                    &[i],
                    |b| async move { open_exact(opener, &b, want) },
                )
                .await
            {
                Ok((plain, _)) => {
                    if i > 0 {
                        // Every provider before it lacks a usable copy, or is down.
                        tracing::warn!(segment = %name, provider = p.name(), "served from the fallback provider");
                    }
                    return Ok(Segment {
                        chunks: vec![(0, plain)],
                        end: want,
                    });
                }
                Err(nc) => problems.extend(nc.problems_or_missing()),
            }
        }
        if unlisted.len() == providers.len() {
            return Err(WalError::Unusable(format!(
                "{name} cannot be looked for: no provider could be listed: {}",
                unlisted.join("; ")
            )));
        }
        let objs: Vec<&WalObject> = parts.values().map(|(w, _)| w).collect();
        let (chosen, end) = catalog::assemble_plan(&objs);
        if !seg_listed && parts.is_empty() {
            if unlisted.is_empty() {
                return Err(WalError::NotFound(name.to_string()));
            }
            return Err(WalError::Unusable(format!(
                "{name} is on no provider that answered, and {}\nhint: a provider that cannot be reached may hold it: bring it back, or remove it from [[storage]] if it is lost",
                could_not_list(&unlisted)
            )));
        }
        if end < seg.bytes() {
            let start_lsn = name.segno(seg).map(|s| s.start_lsn(seg)).unwrap_or(Lsn(0));
            let reached = Lsn(start_lsn.0 + end);
            let why = if seg_listed {
                // The `.seg` itself is the later object.
                problems.extend(unlisted.iter().cloned());
                Some(format!(
                    "{name} is in the archive but no copy could be used: {}",
                    problems.join("; ")
                ))
            } else if chosen.is_empty() {
                Some(format!(
                    "the parts of {name} do not start at the segment's first byte (the archive has a hole)"
                ))
            } else if let Some(after) = objs.iter().find(|o| o.end > end) {
                Some(format!(
                    "the parts of {name} cover its bytes [0, {end:#X}) and then resume at {:#X} (the archive has a hole at {reached} on timeline {})",
                    after.start, name.tli
                ))
            } else if !unlisted.is_empty() {
                Some(format!(
                    "{name} is partial ({end:#X} of {:#X} bytes, up to {reached}) on the providers that answered, and {}: it may hold the rest\nhint: bring the provider back, or remove it from [[storage]] if it is lost",
                    seg.bytes(),
                    could_not_list(&unlisted)
                ))
            } else {
                match self.later_wal(name.tli, reached, seg).await {
                    Later::Nothing => None,
                    Later::Found(later) => Some(format!(
                        "{name} is archived only up to {reached} (its first {end:#X} bytes), but later WAL of timeline {} exists ({later}): serving the rest as zeros would end recovery at {reached} and lose what follows\nhint: the rest of this segment is on no provider; run lifeboat verify to see what each provider lacks",
                        name.tli
                    )),
                    Later::Unknown(e) => Some(format!(
                        "{name} is archived only up to {reached} (its first {end:#X} bytes), and whether later WAL of timeline {} exists is unknown: {e}",
                        name.tli
                    )),
                }
            };
            if let Some(why) = why {
                return Err(WalError::Unusable(why));
            }
        } else if seg_listed {
            tracing::warn!(segment = %name, problems = %problems.join("; "), "no usable .seg copy; served from parts that cover the segment");
        }
        let mut chunks = Vec::with_capacity(chosen.len());
        for o in &chosen {
            let holders = &parts[&o.key()].1;
            let want = o.end - o.start;
            let (plain, _) = self
                .read_among(&o.key(), holders, |b| async move {
                    open_exact(opener, &b, want)
                })
                .await
                .map_err(|nc| {
                    WalError::Unusable(format!(
                        "{name} is in the archive but no copy could be used: {}",
                        nc.problems()
                    ))
                })?;
            chunks.push((o.start, plain));
        }
        Ok(Segment { chunks, end })
    }

    /// Whether any provider holds WAL of timeline `tli` reaching past `lsn`.
    async fn later_wal(&self, tli: TimelineId, lsn: Lsn, seg: WalSegSize) -> Later {
        let prefix = format!("wal/{:08X}/", tli.0);
        for p in &self.mirror.providers {
            match p.list(&prefix).await {
                Ok(listed) => {
                    let later = listed
                        .iter()
                        .filter_map(|o| catalog::parse_wal_key(&o.key, seg))
                        .find(|w| w.name.tli == tli && w.end_lsn(seg) > lsn);
                    if let Some(w) = later {
                        return Later::Found(format!("{} on storage \"{}\"", w.key(), p.name()));
                    }
                }
                Err(e) => return Later::Unknown(e.to_string()),
            }
        }
        Later::Nothing
    }
}

/// What the providers hold after a partial segment's end, on its timeline.
enum Later {
    Nothing,
    /// `KEY on storage "NAME"`.
    Found(String),
    /// A provider could not be listed (its error): it may hold some.
    Unknown(String),
}

fn could_not_list(unlisted: &[String]) -> String {
    format!("a provider could not be listed: {}", unlisted.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FileStore, Mirror, ObjectStore};
    use std::sync::Arc;

    #[tokio::test]
    async fn read_takes_the_first_copy_the_check_accepts() {
        let d = tempfile::tempdir().unwrap();
        let stores: Vec<Arc<dyn ObjectStore>> = ["a", "b", "c"]
            .iter()
            .map(|n| Arc::new(FileStore::new(n, d.path().join(n))) as Arc<dyn ObjectStore>)
            .collect();
        let archive = Archive {
            mirror: Mirror::new(stores.clone()),
        };
        stores[0]
            .put("k", Bytes::from_static(b"bad!"))
            .await
            .unwrap();
        stores[2]
            .put("k", Bytes::from_static(b"good"))
            .await
            .unwrap();
        let check = |b: Bytes| async move {
            if b == "good" {
                Ok(b)
            } else {
                Err("corrupt".to_string())
            }
        };
        let (got, from) = archive.read_among("k", &[0, 1, 2], check).await.unwrap();
        assert_eq!((got.as_ref(), from), (&b"good"[..], 2));
        let e = archive
            .read("k", |_| async { Err::<(), _>("no".to_string()) })
            .await;
        let e = e.unwrap_err();
        assert!(!e.is_absent());
        assert_eq!(
            e.to_string(),
            "no provider holds a usable copy of k: storage \"a\": k: no; storage \"b\": k is missing; storage \"c\": k: no"
        );
        let e = archive.read("none", check).await.unwrap_err();
        assert!(e.is_absent(), "{e}");
    }
}
