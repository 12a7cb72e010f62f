//! Cold objects: a backup's parts that a provider's lifecycle rule (or `prune`) moved to an
//! archive storage class (Glacier Flexible Retrieval, Deep Archive) cannot be read until the
//! provider restores a copy, which takes minutes to hours. `restore` surveys the objects it
//! will read, asks for the restores it needs, and waits with progress before fetching.
//!
//! An object counts as readable when any provider has it warm or thawed: the reader takes
//! the first good copy, so a cold copy on the first provider and a warm one on the second
//! needs no thaw at all.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::archive::Archive;
use crate::storage::Thaw;

/// How long a thawed copy stays readable: long enough for a restore and its retries.
pub const THAW_DAYS: u32 = 3;

/// What a survey found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ColdSurvey {
    /// Objects readable now somewhere.
    pub ready: usize,
    /// Objects cold on every provider that has them, with the provider that was asked.
    pub cold: Vec<(String, String)>,
}

/// Look at `keys` on each provider in order, stopping at the first that can serve each;
/// with `request`, ask that provider for a restore of each cold one.
pub async fn survey(archive: &Archive, keys: &[String], request: bool) -> Result<ColdSurvey> {
    let mut out = ColdSurvey::default();
    for key in keys {
        let mut first_cold: Option<usize> = None;
        let mut ready = false;
        let mut errors = Vec::new();
        for (i, p) in archive.mirror.providers.iter().enumerate() {
            match p.thaw(key, None).await {
                Ok(Thaw::Warm | Thaw::Thawed) => {
                    ready = true;
                    break;
                }
                Ok(Thaw::Cold) => {
                    first_cold.get_or_insert(i);
                }
                Ok(Thaw::Missing) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if ready {
            out.ready += 1;
            continue;
        }
        let Some(i) = first_cold else {
            // Unreadable everywhere: the reader reports it with its reasons.
            tracing::debug!(key, errors = ?errors, "no provider could say whether it is cold");
            out.ready += 1;
            continue;
        };
        let p = &archive.mirror.providers[i];
        if request {
            if let Thaw::Warm | Thaw::Thawed | Thaw::Missing = p.thaw(key, Some(THAW_DAYS)).await? {
                out.ready += 1;
                continue;
            }
        }
        out.cold.push((key.clone(), p.name().to_string()));
    }
    Ok(out)
}

/// Thaw every cold object among `keys` and wait until all are readable, checking every
/// `poll`, giving up after `limit`.
pub async fn thaw_all(
    archive: &Archive,
    keys: &[String],
    poll: Duration,
    limit: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut s = survey(archive, keys, true).await?;
    let total = s.cold.len();
    if total == 0 {
        return Ok(());
    }
    tracing::warn!(
        cold = total,
        of = keys.len(),
        "objects of this backup are in an archive storage class: restores requested ({THAW_DAYS} days), waiting for them (hours for Deep Archive)"
    );
    loop {
        if s.cold.is_empty() {
            tracing::info!(
                objects = total,
                seconds = started.elapsed().as_secs(),
                "cold objects thawed"
            );
            return Ok(());
        }
        if started.elapsed() >= limit {
            bail!(
                "{} of {total} cold objects are not thawed after {} (first: {} on \"{}\")\nhint: the restores stay requested; run the restore again later, it goes on from there",
                s.cold.len(),
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                s.cold[0].0,
                s.cold[0].1
            );
        }
        tracing::info!(
            thawed = total - s.cold.len(),
            of = total,
            "waiting for cold objects to thaw; next check in {}",
            humantime::format_duration(poll)
        );
        tokio::time::sleep(poll).await;
        let still: Vec<String> = s.cold.iter().map(|(k, _)| k.clone()).collect();
        s = survey(archive, &still, true).await?;
    }
}
