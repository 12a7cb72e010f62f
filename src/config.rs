//! The TOML configuration (CLI.md): unknown keys are errors, and every error names the file,
//! the key and a hint.
//!
//! Durations and sizes are parsed once, as the file is read, into [`Duration`] and
//! [`ByteSize`]: a bad value is a load error, and nothing later parses them again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::storage::StorageConfig;

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
    pub spool: SpoolConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// `[[export]]`: other services' data, stored by `lifeboat put NAME`.
    #[serde(default)]
    pub export: Vec<ExportConfig>,
    /// `[schedule]`: jobs the daemon runs (its presence turns the schedule on).
    pub schedule: Option<ScheduleConfig>,
    /// `[metrics]`: the Prometheus endpoint of the daemon (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[sqlite]]`: SQLite databases snapshotted by `lifeboat sqlite snapshot`.
    #[serde(default)]
    pub sqlite: Vec<SqliteConfig>,
    /// Whether the file has a `[postgres]` section (a host of SQLite databases only has
    /// none, and commands that need PostgreSQL then say so).
    #[serde(skip)]
    pub has_postgres: bool,
}

/// `[metrics]`: where `stream` (and `schedule --run`) serve Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. "127.0.0.1:9187" (unset: no endpoint).
    #[serde(default, deserialize_with = "metrics_listen")]
    pub listen: Option<std::net::SocketAddr>,
}

fn metrics_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    typed(d, "metrics.listen", |s| {
        s.trim().parse().map(Some).map_err(|_| {
            (
                format!("\"{s}\" is not an address and port"),
                "write it like \"127.0.0.1:9187\" (keep it on loopback or a private network)",
            )
        })
    })
}

/// `[schedule]`: what `lifeboat stream` (or `lifeboat schedule --run` on a host without a
/// streamer) runs by itself, so that no cron job is needed. Each interval is a duration or
/// "off". Defaults: a base backup daily (the retention tiers are daily), a restore drill
/// once a quarter at a random time within it, `verify` weekly; dumps and prune off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(deserialize_with = "schedule_backup")]
    pub backup: Option<Duration>,
    /// Time of day (UTC, "HH:MM") for base backups; unset: `backup` after the last one.
    #[serde(deserialize_with = "schedule_backup_at")]
    pub backup_at: Option<u32>,
    /// Drills need the identity: they run here only when one is configured
    /// (encryption.identity_file or LIFEBOAT_IDENTITY_FILE); the interval also tells
    /// `status` how old the last drill may be (drills run from the restore host).
    #[serde(deserialize_with = "schedule_drill")]
    pub drill: Option<Duration>,
    /// More arguments of the scheduled `lifeboat drill`, e.g. ["--check-sql",
    /// "/etc/lifeboat/check.sql", "--scratch-dir", "/srv/scratch"].
    pub drill_args: Vec<String>,
    #[serde(deserialize_with = "schedule_verify")]
    pub verify: Option<Duration>,
    #[serde(deserialize_with = "schedule_dump")]
    pub dump: Option<Duration>,
    /// Needs delete rights (the vault role): usually on the restore host.
    #[serde(deserialize_with = "schedule_prune")]
    pub prune: Option<Duration>,
    /// `lifeboat sqlite snapshot` of every `[[sqlite]]` database (deltas make a short
    /// interval cheap); off by default.
    #[serde(deserialize_with = "schedule_sqlite")]
    pub sqlite: Option<Duration>,
    /// Scheduled base backups are incremental (PostgreSQL 17+) on the newest backup
    /// (`latest`) or the newest full one (`full`); `off` (the default): full backups.
    /// Where the server cannot take one, the backup is full and says why.
    #[serde(deserialize_with = "schedule_backup_incremental")]
    pub backup_incremental: Option<String>,
    /// The recovery time objective: when the estimated time to restore the newest point
    /// (`lifeboat status`) passes it, the schedule takes a base backup (incremental where
    /// the server can). Off by default.
    #[serde(deserialize_with = "schedule_rto_target")]
    pub rto_target: Option<Duration>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            backup: Some(Duration::from_secs(86_400)),
            backup_at: None,
            drill: Some(Duration::from_secs(90 * 86_400)),
            drill_args: Vec::new(),
            verify: Some(Duration::from_secs(7 * 86_400)),
            dump: None,
            prune: None,
            sqlite: None,
            backup_incremental: None,
            rto_target: None,
        }
    }
}

fn interval_or_off(s: &str) -> Result<Option<Duration>, (String, &'static str)> {
    let word = match s.trim().to_ascii_lowercase().as_str() {
        "off" => return Ok(None),
        "hourly" => Some(3600),
        "daily" => Some(86_400),
        "weekly" => Some(7 * 86_400),
        "quarterly" => Some(90 * 86_400),
        _ => None,
    };
    if let Some(secs) = word {
        return Ok(Some(Duration::from_secs(secs)));
    }
    let d = parse_duration(s)
        .map_err(|m| (m, "write a duration like \"1d\" or \"12h\", a word (hourly, daily, weekly, quarterly), or \"off\""))?;
    if d < Duration::from_secs(10) {
        return Err((
            format!("\"{s}\" is shorter than 10 seconds"),
            "write a duration like \"1d\" or \"12h\", a word (hourly, daily, weekly, quarterly), or \"off\"",
        ));
    }
    Ok(Some(d))
}

macro_rules! schedule_interval {
    ($f:ident, $key:literal) => {
        fn $f<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            typed(d, $key, interval_or_off)
        }
    };
}
schedule_interval!(schedule_backup, "schedule.backup");
schedule_interval!(schedule_drill, "schedule.drill");
schedule_interval!(schedule_verify, "schedule.verify");
schedule_interval!(schedule_dump, "schedule.dump");
schedule_interval!(schedule_prune, "schedule.prune");
schedule_interval!(schedule_sqlite, "schedule.sqlite");
schedule_interval!(schedule_rto_target, "schedule.rto_target");

fn schedule_backup_incremental<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    typed(d, "schedule.backup_incremental", |s| {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(None),
            w @ ("latest" | "full") => Ok(Some(w.to_string())),
            _ => Err((
                format!("\"{s}\" is not a parent choice"),
                "write \"latest\" (on the newest backup), \"full\" (on the newest full backup) or \"off\"",
            )),
        }
    })
}

fn schedule_backup_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    typed(d, "schedule.backup_at", |s| {
        let bad = || {
            (
                format!("\"{s}\" is not a time of day"),
                "write it as HH:MM in UTC, like \"02:30\"",
            )
        };
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(Some(h * 3600 + m * 60))
    })
}

/// `[[sqlite]]`: one SQLite database in WAL mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Its name in the archive (`sqlite/<NAME>/`).
    pub name: String,
    pub path: PathBuf,
    /// SQL run by `lifeboat sqlite drill` on the restored copy: every statement must
    /// return one row whose first column is true (1).
    pub check_sql: Option<String>,
    /// A full snapshot after this many deltas (default 24).
    #[serde(default = "default_full_every")]
    pub full_every: u32,
    /// A full snapshot once the deltas since the last full one hold more than this
    /// fraction of the database's pages (default 0.5).
    #[serde(default = "default_max_delta_fraction")]
    pub max_delta_fraction: f64,
    /// A snapshot is abandoned when the database's WAL grows by more than this while the
    /// snapshot's read transaction pins it (default 1GiB).
    #[serde(default = "default_wal_budget", deserialize_with = "sqlite_wal_budget")]
    pub wal_budget: ByteSize,
    /// How often `lifeboat sqlite run` snapshots it (unset: `schedule.sqlite`, else hourly).
    #[serde(default, deserialize_with = "sqlite_every")]
    pub every: Option<Duration>,
    /// A delta snapshot runs `PRAGMA quick_check` in its read transaction when the newest
    /// snapshot of its chain that passed one was taken longer ago than this (default 1h;
    /// zero, written "always": every snapshot). A full snapshot always runs it.
    #[serde(
        default = "default_quick_check_every",
        deserialize_with = "sqlite_quick_check_every"
    )]
    pub quick_check_every: Duration,
}

impl SqliteConfig {
    /// The interval `lifeboat sqlite run` snapshots this database at: its own `every`,
    /// else `[schedule] sqlite`, else hourly (the strategy's cadence).
    pub fn interval(&self, schedule: Option<&ScheduleConfig>) -> Duration {
        self.every
            .or_else(|| schedule.and_then(|s| s.sqlite))
            .unwrap_or(Duration::from_secs(3600))
    }
}

fn sqlite_every<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    typed(d, "sqlite.every", |s| {
        match interval_or_off(s)? {
        Some(d) => Ok(Some(d)),
        None => Err((
            "\"off\" is not an interval here".into(),
            "write a duration like \"15m\" or \"1h\"; leave `every` out for schedule.sqlite or hourly",
        )),
    }
    })
}

fn default_full_every() -> u32 {
    24
}
fn default_max_delta_fraction() -> f64 {
    0.5
}
fn default_wal_budget() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_quick_check_every() -> Duration {
    Duration::from_secs(3600)
}

fn sqlite_quick_check_every<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    typed(d, "sqlite.quick_check_every", |s| {
        if s.trim().eq_ignore_ascii_case("always") {
            return Ok(Duration::ZERO);
        }
        parse_duration(s).map_err(|m| {
            (
                m,
                "write a duration like \"1h\" or \"30m\", or \"always\" for a quick_check in every snapshot",
            )
        })
    })
}

fn sqlite_wal_budget<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    typed(d, "sqlite.wal_budget", |s| {
        s.parse()
            .map_err(|m| (m, "write a size like \"1GiB\" or \"256MB\""))
    })
}

/// `[[export]]`: what `lifeboat put NAME` stores when no PATH is given: a command's stdout,
/// or files and directory trees.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    pub name: String,
    /// Run with `sh -c`; its stdout is stored as it comes.
    pub command: Option<String>,
    /// Files and directories, stored as one tar.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// How often the schedule stores it (unset: only by hand).
    #[serde(default, deserialize_with = "export_every")]
    pub every: Option<Duration>,
}

schedule_interval!(export_every, "export.every");

/// `[retention]` (CLI.md): how long backups and WAL are kept. The default is the policy of
/// the backup strategy: every point in time for 7 days, a daily backup for 30 days, a weekly
/// one for 52 weeks, a monthly one for 84 months, and never fewer than 2 backups. Nothing
/// acts on it yet (`prune` will); it is read now so that a misspelled key is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days during which any point in time can be restored (all WAL and backups kept).
    pub pitr_days: u32,
    /// Days during which one backup per day is kept.
    pub daily_days: u32,
    /// Weeks during which one backup per week is kept.
    pub weekly_weeks: u32,
    /// Months during which one backup per month is kept.
    pub monthly_months: u32,
    /// Backups kept whatever their age.
    pub min_backups: u32,
    /// How often `prune` is expected to run (from the vault host): `status` warns when the
    /// newest prune report in the archive is older (default 1 day).
    #[serde(deserialize_with = "prune_interval")]
    pub prune_interval: Duration,
}

fn prune_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    typed(d, "retention.prune_interval", |s| {
        parse_duration(s).map_err(|m| (m, "write a duration like \"1d\" or \"12h\""))
    })
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            pitr_days: 7,
            daily_days: 30,
            weekly_weeks: 52,
            monthly_months: 84,
            min_backups: 2,
            prune_interval: Duration::from_secs(86_400),
        }
    }
}

/// The local spool: sealed objects wait there (fsync'd) until every provider has them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Most bytes held for providers that are down; past it lifeboat stops acknowledging.
    #[serde(default = "default_spool_max", deserialize_with = "spool_max_size")]
    pub max_size: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_size: default_spool_max(),
        }
    }
}

fn default_spool_max() -> ByteSize {
    ByteSize(4 << 30)
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
    /// WAL leaves the host at least this often (bounds the RPO).
    #[serde(default = "default_max_delay", deserialize_with = "wal_max_delay")]
    pub max_delay: Duration,
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    /// zstd level for WAL objects.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// How often a status update is sent even when nothing changed.
    #[serde(
        default = "default_status_interval",
        deserialize_with = "wal_status_interval"
    )]
    pub status_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            max_delay: default_max_delay(),
            spool_dir: default_spool(),
            compression_level: default_level(),
            status_interval: default_status_interval(),
        }
    }
}

fn default_max_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_spool() -> PathBuf {
    PathBuf::from("/var/lib/lifeboat/spool")
}
/// WAL compresses almost as well at level 1 as at 3 (pgbench WAL: 198 vs 205 MiB stored
/// for 635 MiB) at about 1.6x the speed; see docs/BENCHMARKS.md.
fn default_level() -> i32 {
    1
}

/// `[backup]`: base backups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Size of the parts a tar stream is cut into, e.g. "8MiB". Memory use of a backup is
    /// about (cores + 2) parts.
    #[serde(default = "default_part_size", deserialize_with = "backup_part_size")]
    pub part_size: ByteSize,
    /// Server-side rate limit in kB/s (BASE_BACKUP MAX_RATE, 32..=1048576).
    pub max_rate: Option<u32>,
    /// zstd level for backup parts.
    #[serde(default = "default_backup_level")]
    pub compression_level: i32,
    /// Longest chain of incremental backups on top of a full one: `backup --incremental`
    /// takes a full backup instead once the chosen parent's chain has this many.
    #[serde(default = "default_max_chain")]
    pub max_chain: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            part_size: default_part_size(),
            max_rate: None,
            compression_level: default_backup_level(),
            max_chain: default_max_chain(),
        }
    }
}

fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_max_chain() -> u32 {
    6
}
fn default_backup_level() -> i32 {
    3
}

/// Parse a byte size: a number with an optional unit (B, kB/KiB, MB/MiB, GB/GiB; the
/// decimal spellings mean powers of 1024, as PostgreSQL's own settings do).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("\"{s}\" has an unknown unit")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

/// A number of bytes from the configuration (`"4GiB"`, `"512MB"`, `"100"`; see
/// [`parse_size`]). Prints in PostgreSQL's units, the largest that divides it exactly:
/// `4GB`, `512MB`, `8kB`, `100B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TB"), (30, "GB"), (20, "MB"), (10, "kB")] {
            if n != 0 && n % (1 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

/// serde passes only a message from a value's parser to [`Config::parse`]; a typed value
/// that fails sends its key and hint along, separated by this character, so that its error
/// reads `{file}: {key}: {message}` / `hint: {hint}` like every other check.
const VALUE_ERROR: char = '\u{1f}';

/// Read a string and parse it as the value of `key`; a failure carries `(message, hint)`.
fn typed<'de, D, T>(
    d: D,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, (String, &'static str)>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    parse(&s).map_err(|(message, hint)| {
        serde::de::Error::custom(format!(
            "{VALUE_ERROR}{key}{VALUE_ERROR}{hint}{VALUE_ERROR}{message}"
        ))
    })
}

/// The `ConfigError` of a value that failed in [`typed`], if `message` is one.
fn value_error(file: &str, message: &str) -> Option<ConfigError> {
    let rest = message.strip_prefix(VALUE_ERROR)?;
    let (key, rest) = rest.split_once(VALUE_ERROR)?;
    let (hint, message) = rest.split_once(VALUE_ERROR)?;
    Some(ConfigError {
        file: file.to_string(),
        message: format!("{key}: {message}"),
        hint: Some(hint.to_string()),
    })
}

fn wal_max_delay<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    typed(d, "wal.max_delay", |s| {
        parse_duration(s).map_err(|m| (m, "write a duration like \"1s\" or \"500ms\""))
    })
}

fn wal_status_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    typed(d, "wal.status_interval", |s| {
        parse_duration(s).map_err(|m| (m, "write a duration like \"10s\""))
    })
}

fn spool_max_size<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    typed(d, "spool.max_size", |s| {
        s.parse()
            .map_err(|m| (m, "write a size like \"4GiB\" or \"512MB\""))
    })
}

fn backup_part_size<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    typed(d, "backup.part_size", |s| match s.parse::<ByteSize>() {
        Ok(n) if (1 << 20..=1 << 30).contains(&n.bytes()) => Ok(n),
        Ok(_) => Err((
            format!("\"{s}\" is out of range"),
            "parts are from 1MiB to 1GiB; 8MiB is the default",
        )),
        Err(m) => Err((m, "write a size like \"64MiB\"")),
    })
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
            if let Some(v) = value_error(file, e.message()) {
                return v;
            }
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
        let mut cfg = cfg;
        cfg.has_postgres = toml::from_str::<toml::Table>(text)
            .map(|t| t.contains_key("postgres"))
            .unwrap_or(true);
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String, hint: &str| ConfigError {
            file: file.to_string(),
            message: format!("{key}: {message}"),
            hint: Some(hint.to_string()),
        };
        if !(1..=22).contains(&self.wal.compression_level) {
            return Err(err(
                "wal.compression_level",
                format!("{} is out of range", self.wal.compression_level),
                "zstd levels run from 1 to 22; 1 is the default",
            ));
        }
        if let Some(r) = self.backup.max_rate {
            if !(32..=1_048_576).contains(&r) {
                return Err(err(
                    "backup.max_rate",
                    format!("{r} is out of range"),
                    "the rate is in kB/s, from 32 to 1048576, as PostgreSQL's MAX_RATE",
                ));
            }
        }
        if !(1..=22).contains(&self.backup.compression_level) {
            return Err(err(
                "backup.compression_level",
                format!("{} is out of range", self.backup.compression_level),
                "zstd levels run from 1 to 22; 3 is the default",
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
            if let Err((key, m)) = crate::storage::validate(s) {
                // The provider's own hint, when it has one, is more precise than ours.
                let (m, hint) = match m.split_once("\nhint: ") {
                    Some((m, h)) => (m.to_string(), h.to_string()),
                    None => (m, "see the README's storage section".to_string()),
                };
                return Err(err(&format!("storage[{i}].{key}"), m, &hint));
            }
        }
        let mut exports = std::collections::HashSet::new();
        for (i, x) in self.export.iter().enumerate() {
            if !crate::core::catalog::is_export_name(&x.name) {
                return Err(err(
                    &format!("export[{i}].name"),
                    format!("\"{}\" is not an export name", x.name),
                    "1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot",
                ));
            }
            if !exports.insert(x.name.as_str()) {
                return Err(err(
                    &format!("export[{i}].name"),
                    format!("\"{}\" is used twice", x.name),
                    "give every export its own name",
                ));
            }
            match (&x.command, x.paths.is_empty()) {
                (Some(_), false) => {
                    return Err(err(
                        &format!("export[{i}]"),
                        "has both command and paths".into(),
                        "one export stores one of them: make two [[export]] entries",
                    ))
                }
                (None, true) => {
                    return Err(err(
                        &format!("export[{i}]"),
                        "has neither command nor paths".into(),
                        "command = \"ghost-export --stdout\" stores its output; paths = [\"/var/lib/ghost/content\"] stores files",
                    ))
                }
                (Some(c), true) if c.trim().is_empty() => {
                    return Err(err(
                        &format!("export[{i}].command"),
                        "is empty".into(),
                        "a shell command whose stdout is the export",
                    ))
                }
                _ => {}
            }
        }
        let mut dbs = std::collections::HashSet::new();
        for (i, x) in self.sqlite.iter().enumerate() {
            if !crate::core::sqlite::is_db_name(&x.name) {
                return Err(err(
                    &format!("sqlite[{i}].name"),
                    format!("\"{}\" is not a database name", x.name),
                    "1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot",
                ));
            }
            if !dbs.insert(x.name.as_str()) {
                return Err(err(
                    &format!("sqlite[{i}].name"),
                    format!("\"{}\" is used twice", x.name),
                    "give every database its own name",
                ));
            }
            if x.path.as_os_str().is_empty() || !x.path.is_absolute() {
                return Err(err(
                    &format!("sqlite[{i}].path"),
                    format!("\"{}\" is not an absolute path", x.path.display()),
                    "name the database file, e.g. path = \"/srv/app/app.db\"",
                ));
            }
            if x.full_every == 0 {
                return Err(err(
                    &format!("sqlite[{i}].full_every"),
                    "must be at least 1".into(),
                    "deltas between full snapshots; 24 is the default",
                ));
            }
            if !(x.max_delta_fraction > 0.0 && x.max_delta_fraction <= 1.0) {
                return Err(err(
                    &format!("sqlite[{i}].max_delta_fraction"),
                    format!("{} is out of range", x.max_delta_fraction),
                    "a fraction above 0 and at most 1; 0.5 is the default",
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

    /// Commands that talk to PostgreSQL: a host whose file lists SQLite databases and
    /// has no `[postgres]` section is a SQLite host, and says so instead of trying the
    /// default connection.
    pub fn require_postgres(&self, file: &str, command: &str) -> Result<(), ConfigError> {
        if !self.has_postgres && !self.sqlite.is_empty() {
            return Err(ConfigError {
                file: file.into(),
                message: format!("`{command}` needs PostgreSQL, and this configuration has no [postgres] section (it lists only [[sqlite]] databases)"),
                hint: Some("on a host of SQLite databases use `lifeboat sqlite run|snapshot|restore|list|drill`; for PostgreSQL add [postgres] conninfo = \"...\"".into()),
            });
        }
        Ok(())
    }

    pub fn max_delay(&self) -> Duration {
        self.wal.max_delay
    }

    pub fn spool_max_size(&self) -> u64 {
        self.spool.max_size.bytes()
    }

    /// `backup.part_size` in bytes (from 1 MiB to 1 GiB, checked at load).
    pub fn backup_part_size(&self) -> usize {
        self.backup.part_size.bytes() as usize
    }

    pub fn status_interval(&self) -> Duration {
        self.wal.status_interval
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
    fn sizes() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1 kB"), Ok(1024));
        assert_eq!(parse_size("lots"), Err("\"lots\" is not a size".into()));
        assert_eq!(parse_size("5XB"), Err("\"5XB\" has an unknown unit".into()));
        let e = Config::parse("[spool]\nmax_size = \"big\"\n", "c").unwrap_err();
        assert_eq!(e.to_string(), "c: spool.max_size: \"big\" is not a size\nhint: write a size like \"4GiB\" or \"512MB\"");
    }

    #[test]
    fn backup_table() {
        let c = Config::parse("", "c").unwrap();
        assert_eq!(c.backup_part_size(), 8 << 20);
        assert_eq!(c.backup.compression_level, 3);
        let c = Config::parse("[backup]\npart_size = \"2MiB\"\nmax_rate = 64\n", "c").unwrap();
        assert_eq!(c.backup_part_size(), 2 << 20);
        assert_eq!(c.backup.max_rate, Some(64));
        let e = Config::parse("[backup]\nmax_rate = 1\n", "c").unwrap_err();
        assert_eq!(e.to_string(), "c: backup.max_rate: 1 is out of range\nhint: the rate is in kB/s, from 32 to 1048576, as PostgreSQL's MAX_RATE");
        let e = Config::parse("[backup]\npart_size = \"lots\"\n", "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c: backup.part_size: \"lots\" is not a size\nhint: write a size like \"64MiB\""
        );
        assert!(Config::parse("[backup]\nparts = 1\n", "c").is_err());
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 kB"), Ok(512 << 10));
    }

    #[test]
    fn durations_and_sizes_are_typed_at_load() {
        let c = Config::parse(
            "[wal]\nstatus_interval = \"2s\"\n[spool]\nmax_size = \"512MB\"\n",
            "c",
        )
        .unwrap();
        assert_eq!(c.wal.status_interval, Duration::from_secs(2));
        assert_eq!(c.spool.max_size, ByteSize(512 << 20));
        let c = Config::parse("", "c").unwrap();
        assert_eq!(c.wal.max_delay, Duration::from_secs(1));
        assert_eq!(c.wal.status_interval, Duration::from_secs(10));
        assert_eq!(c.spool.max_size, ByteSize(4 << 30));
        assert_eq!(c.backup.part_size, ByteSize(8 << 20));
        let e = Config::parse("[wal]\nstatus_interval = \"0s\"\n", "/etc/lb.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/lb.toml: wal.status_interval: \"0s\" must be greater than zero\nhint: write a duration like \"10s\""
        );
        let e = Config::parse("[backup]\npart_size = \"2GiB\"\n", "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c: backup.part_size: \"2GiB\" is out of range\nhint: parts are from 1MiB to 1GiB; 8MiB is the default"
        );
        // Not a string at all: serde's own message, with the line.
        let e = Config::parse("[wal]\nmax_delay = 5\n", "c").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c: line 2, column 13: invalid type: integer `5`"),
            "{e}"
        );
    }

    #[test]
    fn byte_sizes_print_in_postgres_units() {
        assert_eq!(ByteSize(4 << 30).to_string(), "4GB");
        assert_eq!(ByteSize(512 << 20).to_string(), "512MB");
        assert_eq!(ByteSize(8 << 10).to_string(), "8kB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        assert_eq!("8MiB".parse::<ByteSize>(), Ok(ByteSize(8 << 20)));
    }

    #[test]
    fn retention_is_typed_and_checked() {
        let c = Config::parse("", "c").unwrap();
        assert_eq!(c.retention, RetentionConfig::default());
        assert_eq!(
            (
                c.retention.pitr_days,
                c.retention.daily_days,
                c.retention.weekly_weeks
            ),
            (7, 30, 52)
        );
        assert_eq!(
            (c.retention.monthly_months, c.retention.min_backups),
            (84, 2)
        );
        let c = Config::parse("[retention]\npitr_days = 14\nmin_backups = 3\n", "c").unwrap();
        assert_eq!((c.retention.pitr_days, c.retention.min_backups), (14, 3));
        assert_eq!(c.retention.daily_days, 30);
        let e = Config::parse("[retention]\npitr_day = 14\n", "/etc/lb.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/lb.toml: line 2, column 1: unknown field `pitr_day`, expected one of `pitr_days`, `daily_days`, `weekly_weeks`, `monthly_months`, `min_backups`, `prune_interval`\nhint: check the spelling against the keys listed in the README's configuration section"
        );
        assert_eq!(c.retention.prune_interval, Duration::from_secs(86_400));
        let c = Config::parse("[retention]\nprune_interval = \"12h\"\n", "c").unwrap();
        assert_eq!(c.retention.prune_interval, Duration::from_secs(12 * 3600));
        let e = Config::parse("[retention]\nprune_interval = \"daily\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("retention.prune_interval"), "{e}");
        let e = Config::parse("[retention]\ndaily_days = \"30d\"\n", "c").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c: line 2, column 14: invalid type: string"),
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
        assert_eq!(e.to_string(), "c: storage[0].url: storage \"a\": url \"file://relative\" must be an absolute path\nhint: file:///var/lib/lifeboat/archive");
    }
}
