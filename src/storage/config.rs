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
