//! Key custody in the archive: the canaries (`keys/canary-<DIGEST>.json`, see
//! `core::custody`), written by the writers at start for the configured recipients, and
//! opened by the restore host (`keys check --identity`, every drill) to prove it holds an
//! identity that decrypts what is written now.
//!
//! A canary counts when any provider holds it; a writer copies it to the providers that
//! lack it. A provider that cannot be reached is skipped (archiving must start during an
//! outage); the start rule is applied to what the others hold.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::RngCore;

use super::Archive;
use crate::core::custody::{self, CanaryRecord, KeyCheck, OtherCanary, StartDecision};
use crate::pipeline::{Opener, Sealer};

/// One canary found in the archive.
pub struct Found {
    pub record: CanaryRecord,
    pub bytes: Bytes,
    /// The providers holding it.
    pub holders: Vec<String>,
}

/// The canaries of every provider that answered.
pub struct Canaries {
    /// By digest.
    pub found: BTreeMap<String, Found>,
    /// The providers that answered.
    pub answered: Vec<String>,
    /// The providers that could not be listed or read, with the error.
    pub unreachable: Vec<(String, String)>,
}

impl Canaries {
    pub fn records(&self) -> Vec<CanaryRecord> {
        self.found.values().map(|f| f.record.clone()).collect()
    }
}

/// The recipient set was replaced by one nobody is known to hold an identity for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipientsRefused(pub String);

/// What a writer's start did about the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Every answering provider holds the canary of the configured set.
    Present { key: String },
    /// Written (or copied) to these providers.
    Written {
        key: String,
        decision: StartDecision,
        providers: Vec<String>,
    },
    /// No provider answered: checked at the next start.
    Unchecked { reason: String },
}

impl Archive {
    /// Every canary the providers hold. A record that does not parse, or whose digest is
    /// not its recipients', is logged and skipped (it proves nothing).
    pub async fn canaries(&self) -> Canaries {
        let mut out = Canaries {
            found: BTreeMap::new(),
            answered: Vec::new(),
            unreachable: Vec::new(),
        };
        'providers: for p in &self.mirror.providers {
            let listed = match p.list(custody::KEYS_PREFIX).await {
                Ok(l) => l,
                Err(e) => {
                    out.unreachable.push((p.name().to_string(), e.to_string()));
                    continue;
                }
            };
            let mut here = Vec::new();
            for o in listed {
                let Some(digest) = custody::parse_canary_key(&o.key) else {
                    continue;
                };
                let bytes = match p.get(&o.key).await {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => {
                        out.unreachable.push((p.name().to_string(), e.to_string()));
                        continue 'providers;
                    }
                };
                match serde_json::from_slice::<CanaryRecord>(&bytes) {
                    Ok(r) if r.consistent(digest) => here.push((r, bytes)),
                    Ok(_) => {
                        tracing::warn!(
                            provider = p.name(),
                            key = o.key,
                            "a key canary whose digest is not its recipients' is ignored"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(provider = p.name(), key = o.key, error = %e, "unreadable key canary ignored")
                    }
                }
            }
            out.answered.push(p.name().to_string());
            for (r, bytes) in here {
                out.found
                    .entry(r.digest.clone())
                    .or_insert_with(|| Found {
                        record: r,
                        bytes,
                        holders: Vec::new(),
                    })
                    .holders
                    .push(p.name().to_string());
            }
        }
        out
    }
}

/// At a writer's start (stream, backup, init): make sure the archive holds the canary of
/// `recipients` on every provider that answers, under the start rule of
/// `core::custody::decide`: a set that shares no recipient with any set the archive holds
/// a canary for is refused ([`RecipientsRefused`]) unless `accept_new`.
pub async fn ensure_canary(
    archive: &Archive,
    recipients: &[String],
    accept_new: bool,
) -> Result<Ensured> {
    let c = archive.canaries().await;
    if c.answered.is_empty() {
        let reason = c
            .unreachable
            .first()
            .map(|(p, e)| format!("storage \"{p}\": {e}"))
            .unwrap_or_else(|| "no provider".into());
        tracing::warn!(%reason, "cannot read the key canaries: checked at the next start");
        return Ok(Ensured::Unchecked { reason });
    }
    let digest = custody::recipients_digest(recipients);
    let key = custody::canary_key(&digest);
    let decision = custody::decide(recipients, &c.records());
    if let StartDecision::Refuse { held } = &decision {
        if !accept_new {
            return Err(RecipientsRefused(format!(
                "encryption.recipients ({}) shares no recipient with the sets this archive was written for ({}): no identity is known to decrypt what would be written now\nhint: keep an old recipient beside the new one until the restore host has proven the new identity (lifeboat keys check --identity NEW_IDENTITY), or, once the new identity is safely on the restore host, start once with --accept-new-recipients",
                custody::normalized(recipients).join(", "),
                custody::sets_text(held)
            ))
            .into());
        }
        tracing::warn!(
            recipients = custody::normalized(recipients).join(", "),
            "a recipient set that shares no recipient with the archive's is accepted (--accept-new-recipients)"
        );
    }
    let bytes = match c.found.get(&digest) {
        Some(f) => f.bytes.clone(),
        None => Bytes::from(new_canary(recipients)?),
    };
    let holders: Vec<String> = c
        .found
        .get(&digest)
        .map(|f| f.holders.clone())
        .unwrap_or_default();
    let mut written = Vec::new();
    for p in &archive.mirror.providers {
        let name = p.name().to_string();
        if holders.contains(&name) || !c.answered.contains(&name) {
            continue;
        }
        match crate::storage::put_or_identical(p.as_ref(), &key, bytes.clone()).await {
            Ok(()) => written.push(name),
            Err(e) => {
                tracing::warn!(provider = p.name(), key, error = %e, "cannot write the key canary: written at the next start")
            }
        }
    }
    if written.is_empty() {
        return Ok(Ensured::Present { key });
    }
    if matches!(
        decision,
        StartDecision::Keeps { .. } | StartDecision::Refuse { .. }
    ) {
        tracing::info!(
            key,
            providers = written.join(", "),
            "encryption.recipients changed: key canary written for the new set"
        );
    } else {
        tracing::debug!(key, providers = written.join(", "), "key canary written");
    }
    Ok(Ensured::Written {
        key,
        decision,
        providers: written,
    })
}

/// A new canary record for `recipients`, as stored.
fn new_canary(recipients: &[String]) -> Result<Vec<u8>> {
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    let sealed = Sealer::new(recipients, 3)?.seal(&custody::canary_plaintext(&random))?;
    let record = CanaryRecord {
        format: 1,
        digest: custody::recipients_digest(recipients),
        recipients: custody::normalized(recipients),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        created_by: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        sealed: custody::hex(&sealed.bytes),
    };
    serde_json::to_vec_pretty(&record).context("encoding the key canary")
}

/// Prove that `opener` (the identity at `identity`, as messages name it) decrypts the
/// archive: it must open the canary of the configured recipients, or, when the archive has
/// none for them (or none are configured here), the newest canary. Never fails: the
/// outcome, with its error, is the [`KeyCheck`].
pub async fn prove(
    archive: &Archive,
    opener: &Opener,
    identity: &str,
    configured: &[String],
) -> KeyCheck {
    let checked_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut check = KeyCheck {
        ok: false,
        checked_at,
        canary: None,
        recipients: Vec::new(),
        identity_recipients: opener.recipients().to_vec(),
        error: None,
        other_canaries: Vec::new(),
    };
    let c = archive.canaries().await;
    if c.answered.is_empty() {
        let why = c
            .unreachable
            .first()
            .map(|(p, e)| format!("storage \"{p}\": {e}"))
            .unwrap_or_default();
        check.error = Some(format!(
            "cannot read the key canaries: {why}\nhint: check the [[storage]] credentials and that the provider is up"
        ));
        return check;
    }
    let wanted = (!configured.is_empty()).then(|| custody::recipients_digest(configured));
    let chosen = wanted.as_ref().and_then(|d| c.found.get(d)).or_else(|| {
        c.found
            .values()
            .max_by(|a, b| a.record.created_at.cmp(&b.record.created_at))
    });
    let Some(found) = chosen else {
        check.error = Some(
            "the archive holds no key canary: there is nothing to prove the identity against\nhint: lifeboat stream, backup and init write keys/canary-<DIGEST>.json for the configured recipients when they start".to_string(),
        );
        return check;
    };
    let key = custody::canary_key(&found.record.digest);
    check.canary = Some(key.clone());
    check.recipients = found.record.recipients.clone();
    let opened = open_canary(opener, &found.record);
    for other in c.found.values() {
        if other.record.digest != found.record.digest {
            check.other_canaries.push(OtherCanary {
                canary: custody::canary_key(&other.record.digest),
                recipients: other.record.recipients.clone(),
                created_at: other.record.created_at.clone(),
                opens: open_canary(opener, &other.record).is_ok(),
            });
        }
    }
    match opened {
        Ok(()) => check.ok = true,
        Err(_)
            if !opener
                .recipients()
                .iter()
                .any(|r| found.record.recipients.contains(r)) =>
        {
            check.error = Some(format!(
                "identity {identity} (public key {}) is not one of the recipients of {key}: {}; it cannot decrypt this archive\nhint: use the identity whose public key is in encryption.recipients (age-keygen -y FILE prints a file's public key)",
                if opener.recipients().is_empty() {
                    "none: the file holds no identity".to_string()
                } else {
                    opener.recipients().join(", ")
                },
                found.record.recipients.join(", ")
            ));
        }
        Err(e) => {
            check.error = Some(format!(
                "{key} does not open with identity {identity}, although its public key is a recipient: {e}\nhint: the canary is damaged; lifeboat verify checks the archive, and the next stream or backup start writes a canary where one is missing"
            ));
        }
    }
    check
}

/// Open a canary and check its hash.
fn open_canary(opener: &Opener, record: &CanaryRecord) -> Result<(), String> {
    custody::unhex(&record.sealed)
        .ok_or_else(|| "its sealed object is not hex".to_string())
        .and_then(|sealed| opener.open(&sealed).map_err(|e| e.to_string()))
        .and_then(|plain| custody::check_canary_plaintext(&plain))
}
