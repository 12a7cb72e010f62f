//! Key custody on the database host: is an age identity that decrypts the archive readable
//! here? The archive is encrypted to public keys so that this host cannot read its own
//! backups; an identity left beside it undoes that (and is lost with the host).
//!
//! The places searched (docs/DESIGN.md, "Key custody"): `encryption.identity_file`; the
//! files named by `LIFEBOAT_IDENTITY_FILE` and `SOPS_AGE_KEY_FILE`, and the identity held in
//! `SOPS_AGE_KEY`; every regular file (up to 64 KiB) directly in age's and sops's key
//! directories (`$XDG_CONFIG_HOME/age`, `~/.config/age`, `~/.age`,
//! `$XDG_CONFIG_HOME/sops/age`, `~/.config/sops/age`), `/etc/lifeboat`, `/etc/age`, the
//! configuration file's directory and the spool directory. An identity "decrypts the
//! archive" when its public key is one of `encryption.recipients`. What this process cannot
//! read is not reported: run the check as the streamer's user to see what it can read, or
//! as root to see everything. The identities are never printed, only their public keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::core::custody::{self, KeyCheck};
use crate::core::fmt;
use crate::ingest::health::{Check, Level};
use crate::pipeline::identity_recipients_in;

/// Files larger than this are not read (an identity file is a few hundred bytes).
const MAX_FILE: u64 = 64 * 1024;

/// An identity found on this host.
#[derive(Debug, Clone, Serialize)]
pub struct FoundIdentity {
    /// The file (or `$VARIABLE`) holding it.
    pub path: String,
    /// Why it was looked at: `encryption.identity_file`, `LIFEBOAT_IDENTITY_FILE`, ...
    pub source: String,
    /// Its public key.
    pub recipient: String,
    /// Whether the public key is one of the configured recipients.
    pub decrypts: bool,
}

/// What the search looked at and found.
#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    pub searched: Vec<String>,
    pub found: Vec<FoundIdentity>,
}

impl Scan {
    /// The identities that decrypt the archive.
    pub fn decrypting(&self) -> impl Iterator<Item = &FoundIdentity> {
        self.found.iter().filter(|f| f.decrypts)
    }
}

enum Place {
    File(PathBuf, String),
    Dir(PathBuf, String),
    Value(String, String),
}

fn places(cfg: &Config, cfg_path: &Path) -> Vec<Place> {
    let mut out = Vec::new();
    if let Some(p) = &cfg.encryption.identity_file {
        out.push(Place::File(p.clone(), "encryption.identity_file".into()));
    }
    for var in ["LIFEBOAT_IDENTITY_FILE", "SOPS_AGE_KEY_FILE"] {
        if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push(Place::File(PathBuf::from(p), var.into()));
        }
    }
    if let Ok(v) = std::env::var("SOPS_AGE_KEY") {
        out.push(Place::Value(v, "SOPS_AGE_KEY".into()));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let key_dir = "age's key directory";
    if let Some(x) = &xdg {
        out.push(Place::Dir(x.join("age"), key_dir.into()));
        out.push(Place::Dir(
            x.join("sops/age"),
            "sops's key directory".into(),
        ));
    }
    if let Some(h) = &home {
        out.push(Place::Dir(h.join(".config/age"), key_dir.into()));
        out.push(Place::Dir(h.join(".age"), key_dir.into()));
        out.push(Place::Dir(
            h.join(".config/sops/age"),
            "sops's key directory".into(),
        ));
    }
    out.push(Place::Dir("/etc/lifeboat".into(), "/etc/lifeboat".into()));
    out.push(Place::Dir("/etc/age".into(), "/etc/age".into()));
    let cfg_dir = std::path::absolute(cfg_path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(d) = cfg_dir {
        out.push(Place::Dir(d, "the configuration's directory".into()));
    }
    out.push(Place::Dir(
        cfg.wal.spool_dir.clone(),
        "the spool directory".into(),
    ));
    out
}

/// Search this host (as this process can read it) for age identities.
pub fn scan(cfg: &Config, cfg_path: &Path) -> Scan {
    let recipients = custody::normalized(&cfg.encryption.recipients);
    let mut scan = Scan {
        searched: Vec::new(),
        found: Vec::new(),
    };
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let take = |scan: &mut Scan, path: String, source: &str, bytes: &[u8]| {
        for r in identity_recipients_in(bytes) {
            scan.found.push(FoundIdentity {
                path: path.clone(),
                source: source.to_string(),
                decrypts: recipients.contains(&r),
                recipient: r,
            });
        }
    };
    let mut file = |scan: &mut Scan, p: &Path, source: &str| {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if !seen.insert(key) {
            return;
        }
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if !meta.is_file() || meta.len() > MAX_FILE {
            return;
        }
        if let Ok(bytes) = std::fs::read(p) {
            take(scan, p.display().to_string(), source, &bytes);
        }
    };
    for place in places(cfg, cfg_path) {
        match place {
            Place::File(p, source) => {
                scan.searched.push(p.display().to_string());
                file(&mut scan, &p, &source);
            }
            Place::Value(v, source) => {
                scan.searched.push(format!("${source}"));
                let path = format!("${source}");
                for r in identity_recipients_in(v.as_bytes()) {
                    scan.found.push(FoundIdentity {
                        path: path.clone(),
                        source: format!("the {source} environment variable"),
                        decrypts: recipients.contains(&r),
                        recipient: r,
                    });
                }
            }
            Place::Dir(d, source) => {
                scan.searched.push(format!("{}/", d.display()));
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for p in paths {
                    file(&mut scan, &p, &source);
                }
            }
        }
    }
    scan
}

/// The warning for an identity that decrypts the archive, with its hint.
pub fn warning(f: &FoundIdentity) -> String {
    format!(
        "{} ({}) holds the identity of recipient {}, which decrypts this archive: the database host must not hold it\nhint: keep it on the restore host (and an offline copy) and remove it here; this host needs only encryption.recipients",
        f.path, f.source, f.recipient
    )
}

/// The checks `status` shows for key custody: one DEGRADED line per identity on this host
/// that decrypts the archive, else one ok line with the last key check a drill recorded
/// (`last`: the drill's id, its key check, and seconds since it).
pub fn status_checks(scan: &Scan, last: Option<(&str, &KeyCheck, u64)>) -> Vec<Check> {
    let mut out: Vec<Check> = scan
        .decrypting()
        .map(|f| Check {
            check: "keys",
            status: Level::Degraded,
            message: warning(f),
        })
        .collect();
    if out.is_empty() {
        let failed = last.is_some_and(|(_, k, _)| !k.ok);
        let proven = match last {
            Some((id, k, age)) if k.ok => format!(
                "; drill {id} proved the restore host's identity {}",
                fmt::ago(age)
            ),
            Some((id, _, _)) => format!("; the last key check (drill {id}) FAILED"),
            None => "; no drill has proven the restore host's identity yet".into(),
        };
        out.push(Check {
            check: "keys",
            status: if failed { Level::Degraded } else { Level::Ok },
            message: format!("no identity that decrypts the archive is readable here{proven}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(ok: bool) -> KeyCheck {
        KeyCheck {
            ok,
            checked_at: "2026-12-01T00:00:00Z".into(),
            canary: Some("keys/canary-0123456789abcdef.json".into()),
            recipients: vec!["age1a".into()],
            identity_recipients: vec!["age1a".into()],
            error: (!ok).then(|| "no".into()),
            other_canaries: vec![],
        }
    }

    fn found(decrypts: bool) -> FoundIdentity {
        FoundIdentity {
            path: "/etc/lifeboat/identity.txt".into(),
            source: "/etc/lifeboat".into(),
            recipient: "age1a".into(),
            decrypts,
        }
    }

    #[test]
    fn status_lines() {
        let clean = Scan {
            searched: vec![],
            found: vec![found(false)],
        };
        let c = status_checks(&clean, Some(("20261201T000000Z", &kc(true), 3 * 86_400)));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Level::Ok);
        assert_eq!(c[0].message, "no identity that decrypts the archive is readable here; drill 20261201T000000Z proved the restore host's identity 3 days ago");
        let c = status_checks(&clean, Some(("20261201T000000Z", &kc(false), 10)));
        assert_eq!(c[0].status, Level::Degraded);
        assert!(c[0]
            .message
            .ends_with("the last key check (drill 20261201T000000Z) FAILED"));
        let c = status_checks(&clean, None);
        assert_eq!(c[0].status, Level::Ok);
        let dirty = Scan {
            searched: vec![],
            found: vec![found(true), found(false)],
        };
        let c = status_checks(&dirty, Some(("x", &kc(true), 1)));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Level::Degraded);
        assert!(c[0].message.starts_with("/etc/lifeboat/identity.txt (/etc/lifeboat) holds the identity of recipient age1a, which decrypts this archive"));
    }
}
