//! The `[[storage]]` entries of the configuration: one provider each, `file://` or `s3://`.

use serde::Deserialize;

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
    /// A named profile of the AWS shared config/credentials files, instead of the two
    /// environment variables.
    pub profile: Option<String>,
    /// Write every object with an Object Lock retention date; the bucket must have Object
    /// Lock enabled (checked at start).
    pub object_lock: Option<ObjectLockConfig>,
    /// When the SDK computes request checksums: "when_required" (the default for a custom
    /// `endpoint`: S3-compatible servers break on the SDK's trailing checksums) or
    /// "when_supported" (the default for AWS itself). Every put carries an explicit CRC32
    /// header either way.
    pub request_checksum_calculation: Option<ChecksumWhen>,
    /// When the SDK validates response checksums; same values and defaults.
    pub response_checksum_validation: Option<ChecksumWhen>,
    /// The storage class `prune` moves old backups' parts to (e.g. "DEEP_ARCHIVE",
    /// "GLACIER_IR"); none: everything stays in the standard class.
    pub cold_storage_class: Option<String>,
    /// From which tier on a backup goes cold: "monthly" (the default: backups only the
    /// monthly tier keeps) or "weekly" (also those only the weekly tier keeps).
    pub cold_after: Option<ColdAfter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdAfter {
    Weekly,
    Monthly,
}

/// The S3 storage classes a backup part may be moved to, with the minimum storage duration
/// (days) each bills for (AWS's figures; an object deleted sooner is billed the rest).
pub const COLD_CLASSES: &[(&str, u32)] = &[
    ("STANDARD_IA", 30),
    ("ONEZONE_IA", 30),
    ("INTELLIGENT_TIERING", 0),
    ("GLACIER_IR", 90),
    ("GLACIER", 90),
    ("DEEP_ARCHIVE", 180),
];

/// The minimum storage duration of a known cold class.
pub fn cold_min_days(class: &str) -> Option<u32> {
    COLD_CLASSES
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, d)| *d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumWhen {
    WhenSupported,
    WhenRequired,
}

/// `object_lock = { mode = "governance"|"compliance", days = N }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: ObjectLockMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectLockMode {
    Governance,
    Compliance,
}
