//! The TOML configuration (CLI.md): unknown keys are errors, and every error names the file,
//! the key and a hint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
    #[serde(default)]
    pub retention: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default)]
    pub conninfo: String,
    #[serde(default = "default_slot")]
    pub slot: Option<String>,
    #[serde(default = "yes")]
    pub create_slot: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            conninfo: String::new(),
            slot: default_slot(),
            create_slot: true,
        }
    }
}

fn default_slot() -> Option<String> {
    Some("lifeboat".into())
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    #[serde(default)]
    pub recipients: Vec<String>,
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    #[serde(default = "default_max_delay")]
    pub max_delay: String,
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    /// zstd level for WAL objects.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// fsync the spool before each object leaves the host.
    #[serde(default = "yes")]
    pub spool_fsync: bool,
    /// How often a status update is sent even when nothing changed.
    #[serde(default = "default_status_interval")]
    pub status_interval: String,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            max_delay: default_max_delay(),
            spool_dir: default_spool(),
            compression_level: default_level(),
            spool_fsync: true,
            status_interval: default_status_interval(),
        }
    }
}

fn default_max_delay() -> String {
    "1s".into()
}
fn default_status_interval() -> String {
    "10s".into()
}
fn default_spool() -> PathBuf {
    PathBuf::from("/var/lib/lifeboat/spool")
}
/// WAL compresses almost as well at level 1 as at 3 (pgbench WAL: 198 vs 205 MiB stored
/// for 635 MiB) at about 1.6x the speed; see docs/BENCHMARKS.md.
fn default_level() -> i32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub name: String,
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub object_lock: Option<toml::Value>,
}

/// A configuration error: what, where, and a hint.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}{}", .hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read configuration: {e}"),
            hint: Some("pass --config FILE or set LIFEBOAT_CONFIG".into()),
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            let msg = e.message().to_string();
            let hint = if msg.contains("unknown field") {
                Some("check the spelling against the keys listed in the README's configuration section".to_string())
            } else {
                None
            };
            ConfigError {
                file: file.to_string(),
                message: format!("line {line}, column {col}: {msg}"),
                hint,
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String, hint: &str| ConfigError {
            file: file.to_string(),
            message: format!("{key}: {message}"),
            hint: Some(hint.to_string()),
        };
        parse_duration(&self.wal.max_delay).map_err(|m| {
            err(
                "wal.max_delay",
                m,
                "write a duration like \"1s\" or \"500ms\"",
            )
        })?;
        parse_duration(&self.wal.status_interval)
            .map_err(|m| err("wal.status_interval", m, "write a duration like \"10s\""))?;
        if !(1..=22).contains(&self.wal.compression_level) {
            return Err(err(
                "wal.compression_level",
                format!("{} is out of range", self.wal.compression_level),
                "zstd levels run from 1 to 22; 1 is the default",
            ));
        }
        for (i, r) in self.encryption.recipients.iter().enumerate() {
            if r.trim().parse::<age::x25519::Recipient>().is_err() {
                return Err(err(
                    &format!("encryption.recipients[{i}]"),
                    format!("\"{r}\" is not an age public key"),
                    "recipients are public keys starting with age1, as printed by age-keygen -y",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.storage.iter().enumerate() {
            if !names.insert(s.name.as_str()) {
                return Err(err(
                    &format!("storage[{i}].name"),
                    format!("\"{}\" is used twice", s.name),
                    "give every provider its own name",
                ));
            }
            if let Err(m) = crate::storage::open(&s.name, &s.url) {
                return Err(err(
                    &format!("storage[{i}].url"),
                    m,
                    "see the README's storage section",
                ));
            }
        }
        if let Some(slot) = &self.postgres.slot {
            if slot.is_empty()
                || slot.len() > 63
                || !slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(err(
                    "postgres.slot",
                    format!("\"{slot}\" is not a valid replication slot name"),
                    "slot names use lower-case letters, digits and underscores, at most 63 characters",
                ));
            }
        }
        Ok(())
    }

    /// Settings every command that writes the archive needs.
    pub fn require_for_writing(&self, file: &str) -> Result<(), ConfigError> {
        if self.storage.is_empty() {
            return Err(ConfigError {
                file: file.into(),
                message: "no [[storage]] provider configured".into(),
                hint: Some(
                    "add [[storage]] name = \"local\" url = \"file:///var/lib/lifeboat/archive\""
                        .into(),
                ),
            });
        }
        if self.encryption.recipients.is_empty() {
            return Err(ConfigError {
                file: file.into(),
                message: "encryption.recipients is empty".into(),
                hint: Some("generate a key pair with age-keygen on a machine that is not the database host, and put its public key (age1...) here".into()),
            });
        }
        Ok(())
    }

    pub fn max_delay(&self) -> Duration {
        parse_duration(&self.wal.max_delay).unwrap_or(Duration::from_secs(1))
    }

    pub fn status_interval(&self) -> Duration {
        parse_duration(&self.wal.status_interval).unwrap_or(Duration::from_secs(10))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("\"{s}\" is not a duration ({e})"))?;
    if d.is_zero() {
        return Err(format!("\"{s}\" must be greater than zero"));
    }
    Ok(d)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::parse(
            "[postgres]\nconninfo = \"x\"\nslott = \"a\"\n",
            "/etc/lb.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/lb.toml: line 3, column 1: unknown field `slott`, expected one of `conninfo`, `slot`, `create_slot`\nhint: check the spelling against the keys listed in the README's configuration section"
        );
    }

    #[test]
    fn bad_recipient_names_index() {
        let e =
            Config::parse("[encryption]\nrecipients = [\"age1bogus\"]\n", "c.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: encryption.recipients[0]: \"age1bogus\" is not an age public key\nhint: recipients are public keys starting with age1, as printed by age-keygen -y"
        );
    }

    #[test]
    fn durations_and_defaults() {
        let c = Config::parse("[wal]\nmax_delay = \"250ms\"\n", "c").unwrap();
        assert_eq!(c.max_delay(), Duration::from_millis(250));
        assert_eq!(c.postgres.slot.as_deref(), Some("lifeboat"));
        assert!(c.postgres.create_slot);
        let e = Config::parse("[wal]\nmax_delay = \"soon\"\n", "c").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c: wal.max_delay: \"soon\" is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn storage_url_checked() {
        let e = Config::parse(
            "[[storage]]\nname = \"a\"\nurl = \"file://relative\"\n",
            "c",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "c: storage[0].url: storage \"a\": url \"file://relative\" must be an absolute path (hint: file:///var/lib/lifeboat/archive)\nhint: see the README's storage section");
    }
}
