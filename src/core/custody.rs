//! Key custody, the pure part: the canary's key and content, the digest that names a
//! recipient set, and the rule that decides whether a streamer may start writing for the
//! configured recipients.
//!
//! A canary (`keys/canary-<DIGEST>.json`, plain JSON) holds one sealed object (hex) whose
//! plaintext is random bytes and their SHA-256: whoever opens it and finds the hash right
//! holds an identity that decrypts everything written for that recipient set. `DIGEST` is
//! the first 16 hex digits of the SHA-256 of the set (trimmed, sorted, one per line), so
//! the same set always names the same canary and writing it again is idempotent.
//!
//! Nothing here does I/O or draws random numbers: the random bytes are a parameter.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Canaries live under `keys/`.
pub const KEYS_PREFIX: &str = "keys/";
const CANARY_PREFIX: &str = "keys/canary-";
/// The first line of a canary's plaintext.
const CANARY_MAGIC: &str = "lifeboat canary 1";

/// The recipient set as compared and hashed: trimmed, sorted, without repeats.
pub fn normalized(recipients: &[String]) -> Vec<String> {
    let mut v: Vec<String> = recipients.iter().map(|r| r.trim().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

/// The name of a recipient set: 16 hex digits of the SHA-256 of its normalized lines.
pub fn recipients_digest(recipients: &[String]) -> String {
    let mut h = Sha256::new();
    for r in normalized(recipients) {
        h.update(r.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize()[..8])
}

/// `keys/canary-<DIGEST>.json`.
pub fn canary_key(digest: &str) -> String {
    format!("{CANARY_PREFIX}{digest}.json")
}

/// The digest in a canary key, when `key` is one.
pub fn parse_canary_key(key: &str) -> Option<&str> {
    key.strip_prefix(CANARY_PREFIX)
        .and_then(|r| r.strip_suffix(".json"))
        .filter(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A canary as stored (plain JSON). The recipients are public: `keys check` names them when
/// an identity matches none of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryRecord {
    pub format: u32,
    pub digest: String,
    pub recipients: Vec<String>,
    pub created_at: String,
    pub created_by: String,
    /// The sealed object (lifeboat framing: zstd, age to `recipients`, CRC32), hex.
    pub sealed: String,
}

impl CanaryRecord {
    /// Whether the record is what its key says: its digest is its recipients' and the key's.
    pub fn consistent(&self, key_digest: &str) -> bool {
        self.digest == key_digest && recipients_digest(&self.recipients) == self.digest
    }
}

/// The canary's plaintext for these random bytes.
pub fn canary_plaintext(random: &[u8; 32]) -> Vec<u8> {
    format!(
        "{CANARY_MAGIC}\n{}\n{}\n",
        hex(random),
        hex(&Sha256::digest(random))
    )
    .into_bytes()
}

/// Check a decrypted canary: the magic line, and the hash of its random bytes.
pub fn check_canary_plaintext(plain: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(plain).map_err(|_| "the canary is not text".to_string())?;
    let mut lines = text.lines();
    if lines.next() != Some(CANARY_MAGIC) {
        return Err("the canary does not start with its magic line".into());
    }
    let random = lines
        .next()
        .and_then(unhex)
        .filter(|r| r.len() == 32)
        .ok_or("the canary's random bytes are unreadable")?;
    let hash = lines.next().ok_or("the canary has no hash")?;
    if hex(&Sha256::digest(&random)) != hash {
        return Err("the canary's hash does not match its random bytes".into());
    }
    Ok(())
}

/// What a writer (stream, backup, init) may do with the configured recipients, given the
/// canaries the archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// The archive holds the canary of this set.
    Present,
    /// No canary at all (a new archive, or one written before canaries): write it.
    FirstUse,
    /// A new set that keeps `shared` from a set the archive was written for: whoever held
    /// that identity still opens what is written now. Write the new canary.
    Keeps { shared: String },
    /// A new set that shares no recipient with any set the archive was written for: nobody
    /// is known to hold an identity for it. Refused unless accepted.
    Refuse { held: Vec<Vec<String>> },
}

/// The start rule (docs/DESIGN.md, "Key custody").
pub fn decide(current: &[String], existing: &[CanaryRecord]) -> StartDecision {
    let digest = recipients_digest(current);
    if existing.iter().any(|c| c.digest == digest) {
        return StartDecision::Present;
    }
    if existing.is_empty() {
        return StartDecision::FirstUse;
    }
    let now = normalized(current);
    for c in existing {
        let old = normalized(&c.recipients);
        if let Some(shared) = now.iter().find(|r| old.contains(r)) {
            return StartDecision::Keeps {
                shared: shared.clone(),
            };
        }
    }
    let mut held: Vec<Vec<String>> = existing.iter().map(|c| normalized(&c.recipients)).collect();
    held.sort();
    held.dedup();
    StartDecision::Refuse { held }
}

/// Recipient sets as one line of text: `age1a, age1b; age1c`.
pub fn sets_text(sets: &[Vec<String>]) -> String {
    sets.iter()
        .map(|s| s.join(", "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The record of one key check (by a drill, or `keys check --identity`): which identity
/// (its public keys only) opened which canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCheck {
    pub ok: bool,
    pub checked_at: String,
    /// The canary's key, when the archive held one to check.
    pub canary: Option<String>,
    /// The canary's recipients.
    pub recipients: Vec<String>,
    /// The public keys of the identity that was tried (never the identity itself).
    pub identity_recipients: Vec<String>,
    pub error: Option<String>,
    /// The archive's other canaries (older recipient sets) and whether the identity opens
    /// them too: what was written for a set it does not open needs that set's identity.
    #[serde(default)]
    pub other_canaries: Vec<OtherCanary>,
}

/// A canary other than the one a key check is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherCanary {
    pub canary: String,
    pub recipients: Vec<String>,
    pub created_at: String,
    pub opens: bool,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(recipients: &[&str]) -> CanaryRecord {
        let r: Vec<String> = recipients.iter().map(|s| s.to_string()).collect();
        CanaryRecord {
            format: 1,
            digest: recipients_digest(&r),
            recipients: r,
            created_at: "2026-12-01T00:00:00Z".into(),
            created_by: "test".into(),
            sealed: String::new(),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn digest_ignores_order_spaces_and_repeats() {
        let a = recipients_digest(&s(&["age1b", "age1a"]));
        assert_eq!(a, recipients_digest(&s(&[" age1a", "age1b ", "age1a"])));
        assert_ne!(a, recipients_digest(&s(&["age1a"])));
        assert_eq!(a.len(), 16);
        assert_eq!(parse_canary_key(&canary_key(&a)), Some(a.as_str()));
        assert_eq!(parse_canary_key("keys/canary-xyz.json"), None);
        assert!(rec(&["age1a"]).consistent(&recipients_digest(&s(&["age1a"]))));
        assert!(!rec(&["age1a"]).consistent(&recipients_digest(&s(&["age1b"]))));
    }

    #[test]
    fn plaintext_round_trip_and_tamper() {
        let p = canary_plaintext(&[7u8; 32]);
        assert_eq!(check_canary_plaintext(&p), Ok(()));
        let mut bad = p.clone();
        let i = CANARY_MAGIC.len() + 1;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            check_canary_plaintext(&bad),
            Err("the canary's hash does not match its random bytes".into())
        );
        assert!(check_canary_plaintext(b"hello\n").is_err());
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0g"), None);
    }

    #[test]
    fn start_rule() {
        assert_eq!(decide(&s(&["age1a"]), &[]), StartDecision::FirstUse);
        let held = [rec(&["age1a", "age1b"])];
        assert_eq!(
            decide(&s(&["age1b", "age1a"]), &held),
            StartDecision::Present
        );
        // Adding a recipient, or dropping one of two: an old identity still opens it.
        assert_eq!(
            decide(&s(&["age1a", "age1b", "age1c"]), &held),
            StartDecision::Keeps {
                shared: "age1a".into()
            }
        );
        assert_eq!(
            decide(&s(&["age1b"]), &held),
            StartDecision::Keeps {
                shared: "age1b".into()
            }
        );
        // Replaced outright: refused, naming what the archive was written for.
        let held = [rec(&["age1b", "age1a"]), rec(&["age1x"]), rec(&["age1x"])];
        assert_eq!(
            decide(&s(&["age1z"]), &held),
            StartDecision::Refuse {
                held: vec![s(&["age1a", "age1b"]), s(&["age1x"])]
            }
        );
        assert_eq!(
            sets_text(&[s(&["age1a", "age1b"]), s(&["age1x"])]),
            "age1a, age1b; age1x"
        );
    }
}
