//! `lifeboat restore`: plan (see `plan`), preflight, then fetch the backup's parts in
//! parallel, verify, decrypt, decompress and extract them, check every file against the
//! backup manifest, fsync, and write the recovery configuration so that `pg_ctl start`
//! finishes the job.
//!
//! Nothing is written before the plan and the preflight pass. When extraction fails, what
//! was written is removed again, leaving the directories as empty as they were.

mod combine;
pub mod drill;
pub mod dump;
pub mod get;
pub mod recover_table;
pub mod sink;
pub mod walfetch;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::Digest;

use crate::archive::Archive;
use crate::core::catalog::{ArchiveMeta, BackupMeta, BackupPart, WalInventory};
use crate::core::fmt;
use crate::core::plan::{self, Inventory, ParsedTime, Plan, Target, TimelineChoice, Timestamp};
use crate::pipeline::{self, BufPool, Opener};

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

pub struct RestoreOptions {
    pub pgdata: PathBuf,
    pub target: Target,
    pub timeline: TimelineChoice,
    pub action: TargetAction,
    pub backup: Option<String>,
    pub force: bool,
    /// `--tablespace OID=DIR`.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Where the PostgreSQL binaries are (`--pg-bin`); otherwise they are looked for.
    pub pg_bin: Option<PathBuf>,
    /// The shell command PostgreSQL runs to fetch WAL (`%f %p` included).
    pub restore_command: String,
    /// Parts fetched and decrypted at once.
    pub jobs: usize,
    /// How the restored files are made durable (`--sync-method`).
    pub sync_method: sink::SyncMethod,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub plan: Plan,
    pub pgdata: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// Seconds from the start of the transfer until the last part had arrived.
    pub fetch_seconds: f64,
    /// Seconds from the start of the transfer until every file was written, verified and
    /// synced (fetching and extracting overlap).
    pub extract_seconds: f64,
    pub total_seconds: f64,
    pub pg_bin: PathBuf,
    pub restore_command: String,
}

/// Parse `--target-time` the way the restore host's operator means it: a time without a
/// zone is local time on this host (as PostgreSQL reads it with `timezone = localtime`).
pub fn resolve_time(s: &str) -> Result<Timestamp, String> {
    match plan::parse_time(s)? {
        ParsedTime::Zoned(t) => Ok(t),
        ParsedTime::Naive(t) => local_to_utc(t).ok_or_else(|| format!("\"{s}\" does not exist in this host's time zone (a daylight-saving gap); add a zone, e.g. {s}+00")),
    }
}

fn local_to_utc(naive: Timestamp) -> Option<Timestamp> {
    let secs = naive.0.div_euclid(1_000_000);
    let micros = naive.0.rem_euclid(1_000_000);
    // Naive fields as UTC -> broken-down time -> mktime (local).
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: gmtime_r and mktime only read and write the structs passed.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::gmtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm.tm_isdst = -1;
        let local = libc::mktime(&mut tm);
        if local == -1 {
            return None;
        }
        Some(Timestamp(local as i64 * 1_000_000 + micros))
    }
}

/// The archive's inventory as the planner sees it: the union of what every reachable
/// provider holds (a restore reads each object from whichever provider has a good copy).
pub async fn inventory(archive: &Archive) -> Result<(Inventory, ArchiveMeta)> {
    let meta = archive
        .meta()
        .await?
        .ok_or_else(|| anyhow!("the archive is empty (no archive.json on any provider)\nhint: check the [[storage]] url in the configuration"))?;
    let seg = meta.wal_segment_size;
    let mut keys = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    let mut answered = 0;
    for p in &archive.mirror.providers {
        let mut got = Vec::new();
        let mut ok = true;
        for prefix in ["wal/", "history/"] {
            match p.list(prefix).await {
                Ok(v) => got.extend(v.into_iter().map(|m| m.key)),
                Err(e) => {
                    errors.push(e.to_string());
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            answered += 1;
            keys.extend(got);
        }
    }
    if answered == 0 {
        bail!("no provider could be listed: {}", errors.join("; "));
    }
    for e in &errors {
        tracing::warn!(error = %e, "a provider is unavailable; planning from the others");
    }
    let wal = WalInventory::from_keys(keys.iter().map(String::as_str), seg);
    let backups = archive.backups().await?;
    Ok((
        Inventory {
            seg,
            backups,
            wal: wal.ranges(seg),
            histories: wal.histories,
            gaps: archive.gaps().await?,
        },
        meta,
    ))
}

/// Read one sealed object through the archive's copy picker ([`Archive::read`]): the
/// first provider whose copy has the recorded CRC and length, decrypts and authenticates.
pub async fn fetch_open(
    archive: &Archive,
    opener: &Arc<Opener>,
    part: &BackupPart,
) -> Result<Vec<u8>> {
    fetch_open_in(archive, opener, part, None).await
}

/// Reused buffers of a restore's fetchers: `plain` for opened parts (given back by whoever
/// consumes them, e.g. a [`PartReader`] made with it), `scratch` for their compressed
/// bytes between decryption and decompression (given back at once).
#[derive(Clone)]
pub struct PartBuffers {
    pub plain: BufPool,
    pub scratch: BufPool,
}

impl PartBuffers {
    /// Pools that keep `n` buffers of each kind.
    pub fn new(n: usize) -> PartBuffers {
        PartBuffers {
            plain: BufPool::new(n),
            scratch: BufPool::new(n),
        }
    }
}

/// [`fetch_open`] into buffers from `pool`.
pub async fn fetch_open_in(
    archive: &Archive,
    opener: &Arc<Opener>,
    part: &BackupPart,
    pool: Option<&PartBuffers>,
) -> Result<Vec<u8>> {
    let accept = |stored: bytes::Bytes| {
        let op = opener.clone();
        let want = part.clone();
        let pool = pool.cloned();
        async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                let c = pipeline::check(&stored).map_err(|e| e.to_string())?;
                if c.crc32 != want.crc32 || stored.len() as u64 != want.stored_len {
                    return Err(format!(
                        "does not match backup.json (CRC32 {:08x}, {} bytes; expected {:08x}, {} bytes): the object was replaced",
                        c.crc32,
                        stored.len(),
                        want.crc32,
                        want.stored_len
                    ));
                }
                let take = |p: Option<&BufPool>, n: u64| {
                    p.map(|p| p.take(n.min(1 << 30) as usize))
                        .unwrap_or_default()
                };
                let mut scratch = take(pool.as_ref().map(|p| &p.scratch), stored.len() as u64);
                let buf = take(pool.as_ref().map(|p| &p.plain), want.plain_len);
                let plain = op
                    .open_in(&stored, buf, &mut scratch)
                    .map_err(|e| e.to_string());
                if let Some(p) = &pool {
                    p.scratch.give(scratch);
                }
                let plain = plain?;
                if plain.len() as u64 != want.plain_len {
                    return Err(format!("decrypts to {} bytes, backup.json says {}", plain.len(), want.plain_len));
                }
                Ok(plain)
            })
            .await
            .map_err(|e| format!("decrypt task failed: {e}"))?
        }
    };
    Ok(archive.read(&part.key, accept).await?)
}

// ------------------------------------------------------------------------------------
// Preflight

/// A PostgreSQL installation on this host.
#[derive(Debug, Clone)]
pub struct PgInstall {
    pub bin: PathBuf,
    pub version: String,
    pub major: u32,
}

fn pg_version_of(postgres: &Path) -> Option<(String, u32)> {
    let out = std::process::Command::new(postgres)
        .arg("--version")
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 17.2 (Debian 17.2-1)"
    let v = s.split(')').nth(1)?.split_whitespace().next()?.to_string();
    let major = v
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((v, major))
}

/// Find the PostgreSQL binaries for `major`: `--pg-bin`, else the Debian layout, else PATH.
pub fn find_pg(pg_bin: Option<&Path>, major: u32) -> Result<PgInstall, String> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = pg_bin {
        candidates.push(d.to_path_buf());
    } else {
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
    }
    let mut wrong = None;
    for d in candidates {
        let exe = d.join("postgres");
        if !exe.is_file() {
            continue;
        }
        match pg_version_of(&exe) {
            Some((v, m)) if m == major => {
                return Ok(PgInstall {
                    bin: d,
                    version: v,
                    major: m,
                })
            }
            Some((v, _)) => {
                wrong.get_or_insert((exe.clone(), v));
            }
            None => tried.push(exe.display().to_string()),
        }
    }
    Err(match (wrong, pg_bin) {
        (Some((exe, v)), _) => format!(
            "the backup needs PostgreSQL {major}, but {} is PostgreSQL {v}\nhint: install the PostgreSQL {major} server (e.g. apt install postgresql-{major}) or pass --pg-bin with its bin directory",
            exe.display()
        ),
        (None, Some(d)) => format!(
            "no postgres binary in --pg-bin {}\nhint: pass the bin directory of a PostgreSQL {major} installation",
            d.display()
        ),
        (None, None) => format!(
            "PostgreSQL {major} is not installed on this host (no postgres binary in /usr/lib/postgresql/{major}/bin or PATH)\nhint: install the PostgreSQL {major} server (e.g. apt install postgresql-{major}) or pass --pg-bin DIR"
        ),
    })
}

fn pg_config(bin: &Path, what: &str) -> Option<PathBuf> {
    let out = std::process::Command::new(bin.join("pg_config"))
        .arg(what)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn share_dirs(pg: &PgInstall) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = pg_config(&pg.bin, "--sharedir").into_iter().collect();
    v.push(pg.bin.join("../share/postgresql"));
    v.push(pg.bin.join("../share"));
    v.push(PathBuf::from(format!("/usr/share/postgresql/{}", pg.major)));
    v
}

fn lib_dirs(pg: &PgInstall) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = pg_config(&pg.bin, "--pkglibdir").into_iter().collect();
    v.push(pg.bin.join("../lib/postgresql"));
    v.push(pg.bin.join("../lib"));
    v.push(PathBuf::from(format!(
        "/usr/lib/postgresql/{}/lib",
        pg.major
    )));
    v
}

/// The extensions and preloaded libraries the backup recorded that this installation lacks.
pub fn missing_extensions(meta: &BackupMeta, pg: &PgInstall) -> Vec<String> {
    let mut out = Vec::new();
    let shares = share_dirs(pg);
    for e in meta.extensions.iter().flatten() {
        let found = shares.iter().any(|d| {
            d.join("extension")
                .join(format!("{}.control", e.name))
                .is_file()
        });
        if !found {
            out.push(format!(
                "extension \"{}\" {} is installed in the backed-up database but not available to PostgreSQL {} here (no {}.control in {})\nhint: install the extension's package for PostgreSQL {} on this host",
                e.name,
                e.version,
                pg.major,
                e.name,
                shares[0].join("extension").display(),
                pg.major
            ));
        }
    }
    let libs = lib_dirs(pg);
    for lib in meta
        .shared_preload_libraries
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim_matches('\''))
        .filter(|s| !s.is_empty())
    {
        let base = lib.trim_start_matches("$libdir/");
        let found = if base.contains('/') {
            Path::new(base).exists() || Path::new(&format!("{base}.so")).exists()
        } else {
            libs.iter()
                .any(|d| d.join(format!("{base}.so")).is_file() || d.join(base).is_file())
        };
        if !found {
            out.push(format!(
                "shared_preload_libraries includes \"{lib}\", which PostgreSQL {} here cannot load (no {base}.so in {})\nhint: install the package that provides it, or PostgreSQL will refuse to start",
                pg.major,
                libs[0].display()
            ));
        }
    }
    out
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        d = d.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn postmaster_running(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid as u32)
}

/// Where each tar of the backup goes.
fn destinations(
    meta: &BackupMeta,
    opts: &RestoreOptions,
) -> Result<Vec<(String, Option<u32>, PathBuf)>, String> {
    let mut out = Vec::new();
    for ts in &meta.tablespaces {
        match ts.oid {
            None => out.push((ts.tar.clone(), None, opts.pgdata.clone())),
            Some(oid) => {
                let dir = match opts.tablespaces.iter().find(|(o, _)| *o == oid) {
                    Some((_, d)) => d.clone(),
                    None => PathBuf::from(ts.location.clone().ok_or_else(|| format!("tablespace {oid} has no recorded location\nhint: pass --tablespace {oid}=DIR"))?),
                };
                out.push((ts.tar.clone(), Some(oid), dir));
            }
        }
    }
    for (oid, _) in &opts.tablespaces {
        if !meta.tablespaces.iter().any(|t| t.oid == Some(*oid)) {
            let have: Vec<String> = meta
                .tablespaces
                .iter()
                .filter_map(|t| t.oid)
                .map(|o| o.to_string())
                .collect();
            return Err(format!(
                "--tablespace {oid}=...: backup {} has no tablespace {oid} (it has: {})",
                meta.id,
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ));
        }
    }
    Ok(out)
}

/// Everything checked before anything is written. Each problem is one message.
pub async fn preflight(
    archive: &Archive,
    opener: &Arc<Opener>,
    meta: &BackupMeta,
    opts: &RestoreOptions,
) -> (Vec<String>, Option<PgInstall>, Option<Vec<u8>>) {
    let mut problems = Vec::new();
    // Target directories.
    let dests = match destinations(meta, opts) {
        Ok(d) => d,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    for (_, oid, dir) in &dests {
        let what = match oid {
            None => "--pgdata".to_string(),
            Some(o) => format!("tablespace {o}"),
        };
        if let Some(pid) = postmaster_running(dir) {
            problems.push(format!("{what} {} belongs to a running PostgreSQL (postmaster.pid names process {pid})\nhint: stop that server first; a restore never writes under a running one", dir.display()));
            continue;
        }
        let entries = dir_entries(dir);
        if oid.is_none() && entries.iter().any(|e| e == sink::INCOMPLETE_MARKER) && !opts.force {
            problems.push(format!(
                "--pgdata {} holds an interrupted restore ({} is there; global/pg_control, which a restore writes last, {}): its files cannot be trusted\nhint: pass --force to delete it and restore again",
                dir.display(),
                sink::INCOMPLETE_MARKER,
                if dir.join("global/pg_control").exists() { "is there too" } else { "is not" }
            ));
            continue;
        }
        if !entries.is_empty() && !opts.force {
            let mut shown: Vec<&str> = entries.iter().map(String::as_str).collect();
            shown.sort();
            let holds = if shown.len() <= 3 {
                shown.join(", ")
            } else {
                format!("{} entries, e.g. {}", shown.len(), shown[..3].join(", "))
            };
            problems.push(format!(
                "{what} {} is not empty (it holds {holds})\nhint: restore into an empty directory, or pass --force to delete what is there",
                dir.display()
            ));
        }
        if dir.exists() && !dir.is_dir() {
            problems.push(format!(
                "{what} {} exists and is not a directory",
                dir.display()
            ));
        }
    }
    // Disk space per file system.
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for (tar, _, dir) in &dests {
        let n: u64 = meta
            .parts
            .iter()
            .filter(|p| &p.tar == tar)
            .map(|p| p.plain_len)
            .sum();
        *need.entry(dir.clone()).or_default() += n;
    }
    for (dir, n) in need {
        if let Some(free) = free_bytes(&dir) {
            // Recovery also restores WAL into pg_wal, and the prefetch queue lives there.
            let want = n + n / 20 + (256 << 20);
            if free < want {
                problems.push(format!(
                    "not enough disk space for {}: the backup needs {} there, {} is free\nhint: free space or restore elsewhere (--pgdata, --tablespace OID=DIR)",
                    dir.display(),
                    fmt::size(want),
                    fmt::size(free)
                ));
            }
        }
    }
    // PostgreSQL binaries and what the database uses.
    let major = meta.pg_version / 10000;
    let pg = match find_pg(opts.pg_bin.as_deref(), major) {
        Ok(pg) => {
            problems.extend(missing_extensions(meta, &pg));
            Some(pg)
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };
    // The identity decrypts the archive: open the (small) manifest.
    let manifest = match fetch_open(archive, opener, &meta.manifest).await {
        Ok(m) => Some(m),
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.contains("no identity matches") {
                problems.push(format!(
                    "the identity cannot decrypt backup {}: none of its keys is a recipient of the archive\nhint: use the age identity file whose public key (age-keygen -y) is in encryption.recipients of the streaming host",
                    meta.id
                ));
            } else {
                problems.push(format!(
                    "cannot read the manifest of backup {}: {msg}",
                    meta.id
                ));
            }
            None
        }
    };
    (problems, pg, manifest)
}

// ------------------------------------------------------------------------------------
// Manifest

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

struct ManifestFile {
    size: u64,
    algo: Algo,
    checksum: String,
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (s.len() % 2 == 0)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

fn parse_manifest(bytes: &[u8]) -> Result<HashMap<String, ManifestFile>> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("the backup manifest is not JSON")?;
    let files = v["Files"]
        .as_array()
        .ok_or_else(|| anyhow!("the backup manifest has no Files"))?;
    let mut out = HashMap::new();
    for f in files {
        let path = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
            (Some(p), _) => p.to_string(),
            (None, Some(e)) => String::from_utf8_lossy(
                &hex_decode(e).ok_or_else(|| anyhow!("bad Encoded-Path {e}"))?,
            )
            .into_owned(),
            _ => bail!("a manifest entry has no path"),
        };
        let algo = match f["Checksum-Algorithm"].as_str().unwrap_or("NONE") {
            "NONE" => Algo::None,
            "CRC32C" => Algo::Crc32c,
            "SHA224" => Algo::Sha224,
            "SHA256" => Algo::Sha256,
            "SHA384" => Algo::Sha384,
            "SHA512" => Algo::Sha512,
            other => bail!("the backup manifest uses an unknown checksum algorithm {other}"),
        };
        out.insert(
            path,
            ManifestFile {
                size: f["Size"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("a manifest entry has no Size"))?,
                algo,
                checksum: f["Checksum"].as_str().unwrap_or("").to_ascii_lowercase(),
            },
        );
    }
    Ok(out)
}

enum Hasher {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(a: Algo) -> Hasher {
        match a {
            Algo::None => Hasher::None,
            Algo::Crc32c => Hasher::Crc32c(0),
            Algo::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, b),
            Hasher::Sha224(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::None => return String::new(),
            // PostgreSQL writes the CRC's bytes in memory (little-endian) order.
            Hasher::Crc32c(c) => c.to_le_bytes().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

// ------------------------------------------------------------------------------------
// Extraction

/// Reads the plain bytes of one tar from the in-order channel of parts (on a blocking
/// thread). The channel closing is the end of the stream.
pub struct PartReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// Where a part's buffer goes once read (for the fetchers to fill again).
    pool: Option<BufPool>,
}

impl PartReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> PartReader {
        PartReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            pool: None,
        }
    }

    /// A reader that gives each part's buffer back to `pool` when it is done with it.
    pub fn pooled(rx: tokio::sync::mpsc::Receiver<Vec<u8>>, pool: BufPool) -> PartReader {
        PartReader {
            pool: Some(pool),
            ..PartReader::new(rx)
        }
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(v) => {
                    let done = std::mem::replace(&mut self.cur, v);
                    if let Some(p) = &self.pool {
                        p.give(done);
                    }
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What extraction saw of one file.
struct Extracted {
    size: u64,
    checksum: String,
}

fn safe_relative(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            _ => bail!("the backup holds an unsafe path {}", p.display()),
        }
    }
    Ok(out)
}

/// Writeback is started every this many bytes of a file, so that the final fsync finds
/// little left to write and disk writes overlap decryption and decompression.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Ask the kernel to start writing a range of `f` back now, without waiting for it.
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: sync_file_range only takes a valid descriptor and a range.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(f),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// fsyncs finished files on a few threads while extraction goes on. Only the restored
/// files are synced: a file-system-wide sync would also wait for every unrelated dirty page
/// on the host.
#[derive(Clone)]
struct Syncer {
    tx: std::sync::mpsc::SyncSender<(std::fs::File, PathBuf)>,
}

struct SyncerHandle {
    syncer: Syncer,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Syncer {
    fn start(threads: usize) -> SyncerHandle {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(std::fs::File, PathBuf)>(256);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || -> Result<()> {
                    let mut first: Result<()> = Ok(());
                    loop {
                        let next = rx.lock().expect("not poisoned").recv();
                        let Ok((f, path)) = next else {
                            return first;
                        };
                        if let Err(e) = f.sync_all() {
                            if first.is_ok() {
                                first = Err(anyhow!("fsync {}: {e}", path.display()));
                            }
                        }
                    }
                })
            })
            .collect();
        SyncerHandle {
            syncer: Syncer { tx },
            threads,
        }
    }

    fn sync(&self, f: std::fs::File, path: PathBuf) {
        // The threads receive until every sender is gone, so this cannot fail.
        let _ = self.tx.send((f, path));
    }
}

impl SyncerHandle {
    /// Wait for every fsync; the first failure, if any.
    fn finish(self) -> Result<()> {
        drop(self.syncer);
        let mut res = Ok(());
        for t in self.threads {
            let r = t.join().map_err(|_| anyhow!("an fsync thread panicked"))?;
            if res.is_ok() {
                res = r;
            }
        }
        res
    }
}

/// fsync every directory under `root` and its parent: new entries are durable only once
/// their directory is.
fn sync_dirs(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", d.display()))?;
    }
    // Every ancestor: the restore may have created some of them (create_dir_all).
    for parent in root.ancestors().skip(1) {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", parent.display()))?;
    }
    Ok(())
}

/// Extract one tar stream into `dest`; `prefix` is how the manifest names files of this tar
/// (`""` for the base directory, `pg_tblspc/<oid>/` for a tablespace).
fn extract_tar(
    reader: PartReader,
    dest: &Path,
    prefix: &str,
    algos: &HashMap<String, Algo>,
    sink: &sink::Sink,
) -> Result<(BTreeMap<String, Extracted>, u64)> {
    let mut ar = tar::Archive::new(reader);
    let mut seen = BTreeMap::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for entry in ar.entries().context("reading the backup tar")? {
        let mut entry = entry.context("reading the backup tar")?;
        let rel = safe_relative(&entry.path().context("a tar entry path")?)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dir(&path, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let name = format!("{prefix}{}", rel.to_string_lossy());
                let mut h = Hasher::new(algos.get(&name).copied().unwrap_or(Algo::None));
                let size = entry.header().size().unwrap_or(0);
                let n = copy_to_sink(&mut entry, sink, &path, mode, size, &name, &mut h, &mut buf)?;
                bytes += n;
                seen.insert(
                    name,
                    Extracted {
                        size: n,
                        checksum: h.hex(),
                    },
                );
            }
            tar::EntryType::Symlink => make_symlink(&entry, &rel, &path)?,
            other => {
                tracing::warn!(path = %rel.display(), kind = ?other, "skipping an unexpected tar entry")
            }
        }
    }
    Ok((seen, bytes))
}

/// A directory entry of a backup tar: created, with the owner's rights and the group's
/// read and search bits kept (`initdb -g`).
fn make_dir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(0o700 | (mode & 0o050)),
    )
    .with_context(|| format!("chmod {}", path.display()))
}

/// A symlink entry of a backup tar (pg_tblspc links), replacing what is there.
fn make_symlink<R: Read>(entry: &tar::Entry<'_, R>, rel: &Path, path: &Path) -> Result<()> {
    let target = entry
        .link_name()
        .context("a symlink target")?
        .ok_or_else(|| anyhow!("symlink {} without target", rel.display()))?;
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(&target, path)
        .with_context(|| format!("creating link {}", path.display()))
}

/// Copy a regular file's `size` bytes from `r` into `path` through the sink (its parent
/// made first), hashing them with `h`; the bytes copied. `name` is the manifest path.
#[allow(clippy::too_many_arguments)]
fn copy_to_sink(
    r: &mut impl Read,
    sink: &sink::Sink,
    path: &Path,
    mode: u32,
    size: u64,
    name: &str,
    h: &mut Hasher,
    buf: &mut [u8],
) -> Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = sink.create(path, size, 0o600 | (mode & 0o040))?;
    let mut n = 0u64;
    loop {
        // Straight into the sink's aligned buffer where it writes direct.
        let got = f
            .fill_from(r, buf, &mut |b| h.update(b))
            .with_context(|| format!("reading {name} from the backup"))?;
        let k = f.filled(got, buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    f.finish()?;
    Ok(n)
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Quote a word for `sh` when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The restore_command PostgreSQL runs: `wal-fetch` of this binary with this
/// configuration and identity (made absolute and shell-quoted), fetching `prefetch`
/// segments ahead. The one place this line is built.
pub fn restore_command_line(exe: &Path, config: &Path, identity: &Path, prefetch: u16) -> String {
    let q = |p: &Path| {
        shell_quote(
            &std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .to_string_lossy(),
        )
    };
    let ahead = if prefetch > 0 {
        format!(" --prefetch {prefetch}")
    } else {
        String::new()
    };
    format!(
        "{} --config {} --identity {} wal-fetch{ahead} %f %p",
        q(exe),
        q(config),
        q(identity)
    )
}

/// A value in postgresql.conf.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The recovery settings appended to postgresql.auto.conf.
pub fn recovery_settings(plan: &Plan, action: TargetAction, restore_command: &str) -> String {
    let mut s = format!(
        "\n# Added by lifeboat restore of backup {} (target: {}).\nrestore_command = {}\n",
        plan.backup,
        plan.target_text,
        conf_quote(restore_command)
    );
    let target = match &plan.target {
        Target::Latest => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(t) => Some(("recovery_target_time", t.to_string())),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    if let Some((k, v)) = target {
        s.push_str(&format!("{k} = {}\n", conf_quote(&v)));
        s.push_str(&format!(
            "recovery_target_action = {}\n",
            conf_quote(action.as_str())
        ));
    }
    s.push_str(&format!(
        "recovery_target_timeline = {}\n",
        conf_quote(&plan.target_timeline.to_string())
    ));
    s
}

/// The objects a restore of `meta` reads: its manifest and parts.
pub fn backup_keys(meta: &BackupMeta) -> Vec<String> {
    std::iter::once(meta.manifest.key.clone())
        .chain(meta.parts.iter().map(|p| p.key.clone()))
        .collect()
}

/// The objects a restore of `meta` reads, with its chain's when it is incremental.
pub fn chain_keys(meta: &BackupMeta, chain: &[BackupMeta]) -> Vec<String> {
    let mut keys = backup_keys(meta);
    for b in chain.iter().filter(|b| b.id != meta.id) {
        keys.extend(backup_keys(b));
    }
    keys
}

/// Plan only (for `--dry-run` and the drill).
pub async fn make_plan(
    archive: &Archive,
    target: &Target,
    timeline: TimelineChoice,
    backup: Option<&str>,
) -> Result<(Plan, BackupMeta, Inventory)> {
    let (inv, _meta) = inventory(archive).await?;
    let p = plan::plan(&inv, target, timeline, backup).map_err(|e| anyhow!(e))?;
    let b = inv
        .backups
        .iter()
        .find(|b| b.id == p.backup)
        .cloned()
        .expect("planned backup exists");
    Ok((p, b, inv))
}

pub async fn run(
    archive: &Archive,
    opener: Arc<Opener>,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let (plan, meta, inv) =
        make_plan(archive, &opts.target, opts.timeline, opts.backup.as_deref()).await?;
    tracing::info!(
        backup = plan.backup,
        target = plan.target_text,
        "restore planned"
    );
    // An incremental backup is restored with its chain (full backup first).
    let chain: Vec<BackupMeta> = plan
        .chain
        .iter()
        .filter_map(|id| inv.backups.iter().find(|b| &b.id == id).cloned())
        .collect();
    crate::archive::thaw::thaw_all(
        archive,
        &chain_keys(&meta, &chain),
        Duration::from_secs(60),
        Duration::from_secs(48 * 3600),
    )
    .await
    .with_context(|| format!("backup {}", meta.id))?;
    let (problems, pg, manifest) = preflight(archive, &opener, &meta, opts).await;
    if !problems.is_empty() {
        bail!(
            "preflight failed, nothing was written:\n  - {}",
            problems
                .iter()
                .map(|p| p.replace('\n', "\n    "))
                .collect::<Vec<_>>()
                .join("\n  - ")
        );
    }
    let pg = pg.expect("preflight found PostgreSQL");
    let manifest = manifest.expect("preflight read the manifest");
    let files = parse_manifest(&manifest).with_context(|| format!("backup {}", meta.id))?;
    let dests = destinations(&meta, opts).map_err(|e| anyhow!(e))?;
    let mut created = Vec::new();
    for (_, _, dir) in &dests {
        if opts.force {
            empty_dir(dir).with_context(|| format!("emptying {} (--force)", dir.display()))?;
        }
        if !dir.exists() {
            created.push(dir.clone());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    let extracted = if chain.len() > 1 {
        combine::extract_chain(archive, &opener, &chain, &dests, opts, &plan, &manifest).await
    } else {
        extract_all(archive, &opener, &meta, &dests, &files, opts, &plan).await
    };
    match extracted {
        Ok((nfiles, bytes, fetch, extract)) => Ok(RestoreReport {
            plan,
            pgdata: opts.pgdata.clone(),
            files: nfiles,
            bytes,
            stored_bytes: meta.stored_size,
            fetch_seconds: fetch.as_secs_f64(),
            extract_seconds: extract.as_secs_f64(),
            total_seconds: t0.elapsed().as_secs_f64(),
            pg_bin: pg.bin,
            restore_command: opts.restore_command.clone(),
        }),
        Err(e) => {
            for (_, _, dir) in &dests {
                let _ = empty_dir(dir);
            }
            for d in created {
                let _ = std::fs::remove_dir(d);
            }
            Err(e.context(format!(
                "restore of backup {} failed; what it had written was removed",
                meta.id
            )))
        }
    }
}

async fn extract_all(
    archive: &Archive,
    opener: &Arc<Opener>,
    meta: &BackupMeta,
    dests: &[(String, Option<u32>, PathBuf)],
    files: &HashMap<String, ManifestFile>,
    opts: &RestoreOptions,
    plan: &Plan,
) -> Result<(u64, u64, Duration, Duration)> {
    let start = Instant::now();
    let jobs = opts.jobs.max(1);
    let algos: Arc<HashMap<String, Algo>> =
        Arc::new(files.iter().map(|(k, v)| (k.clone(), v.algo)).collect());
    // One extractor thread per tar, fed in part order, writing through the sink (direct
    // writes; with fsync, finished files are fsynced on their own threads meanwhile).
    let sink = Arc::new(sink::Sink::new(opts.sync_method, &opts.pgdata, true)?);
    let mut feeds = HashMap::new();
    let mut extractors = Vec::new();
    // Part buffers, reused: as many as can be alive at once (fetched or fetching, queued
    // for an extractor, being read) are kept.
    let pool = PartBuffers::new(jobs + 2 * dests.len());
    for (tar, oid, dir) in dests {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        feeds.insert(tar.clone(), tx);
        let dir = dir.clone();
        let prefix = oid.map(|o| format!("pg_tblspc/{o}/")).unwrap_or_default();
        let algos = algos.clone();
        let tar_name = tar.clone();
        let sink = sink.clone();
        let pool = pool.clone();
        extractors.push(tokio::task::spawn_blocking(move || {
            extract_tar(
                PartReader::pooled(rx, pool.plain),
                &dir,
                &prefix,
                &algos,
                &sink,
            )
            .with_context(|| format!("extracting {tar_name}"))
        }));
    }
    let mut parts: Vec<BackupPart> = meta.parts.clone();
    // Tablespaces first, the base directory last (any order works; this one keeps the
    // small base tar's extraction off the critical path of the large ones).
    parts.sort_by_key(|p| (p.tar == "base.tar", p.tar.clone(), p.seq));
    for tar in feeds.keys() {
        let mut seqs: Vec<u32> = parts
            .iter()
            .filter(|p| &p.tar == tar)
            .map(|p| p.seq)
            .collect();
        seqs.sort();
        if seqs.is_empty() || seqs.iter().enumerate().any(|(i, s)| *s as usize != i) {
            bail!(
                "backup.json of {} lists the parts of {tar} with a hole",
                meta.id
            );
        }
    }
    // Fetch in order with at most `jobs` parts in flight or waiting; hand over in order.
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
    let (htx, mut hrx) = tokio::sync::mpsc::unbounded_channel();
    let driver = {
        let parts = parts.clone();
        let pool = pool.clone();
        let sem = sem.clone();
        let archive_mirror = archive.mirror.clone();
        let opener = opener.clone();
        tokio::spawn(async move {
            for p in parts {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                let mirror = archive_mirror.clone();
                let opener = opener.clone();
                let pool = pool.clone();
                let h = tokio::spawn(async move {
                    let a = Archive { mirror };
                    let r = fetch_open_in(&a, &opener, &p, Some(&pool)).await;
                    (p, r, permit)
                });
                if htx.send(h).is_err() {
                    break;
                }
            }
        })
    };
    let mut fetch_done = Duration::ZERO;
    let mut feed_err = None;
    let progress = crate::archive::progress::Progress::bytes(
        format!("restore {}", meta.id),
        parts.iter().map(|p| p.plain_len).sum(),
    );
    while let Some(h) = hrx.recv().await {
        let (p, r, permit) = h.await.map_err(|e| anyhow!("fetch task failed: {e}"))?;
        match r {
            Ok(plain) => {
                let tx = feeds.get(&p.tar).expect("tar has a feed");
                let n = plain.len() as u64;
                if tx.send(plain).await.is_err() {
                    // The extractor stopped: its error is reported below.
                    feed_err = Some(p.key.clone());
                    drop(permit);
                    break;
                }
                progress.add(1, n);
                drop(permit);
            }
            Err(e) => {
                driver.abort();
                feeds.clear();
                for x in extractors {
                    let _ = x.await;
                }
                return Err(e);
            }
        }
        fetch_done = start.elapsed();
    }
    progress.finish();
    driver.abort();
    feeds.clear();
    let mut seen = BTreeMap::new();
    let mut bytes = 0;
    for x in extractors {
        let (s, b) = x.await.map_err(|e| anyhow!("extract task failed: {e}"))??;
        seen.extend(s);
        bytes += b;
    }
    if let Some(k) = feed_err {
        bail!("extraction stopped before {k}");
    }
    // Every file of the manifest, with its size and checksum.
    let mut bad = Vec::new();
    for (path, f) in files {
        match seen.get(path) {
            None => bad.push(format!("{path} is in the manifest but not in the backup")),
            Some(x) if x.size != f.size => bad.push(format!(
                "{path}: {} bytes, the manifest says {}",
                x.size, f.size
            )),
            Some(x) if f.algo != Algo::None && x.checksum != f.checksum => bad.push(format!(
                "{path}: checksum {} does not match the manifest's {}",
                x.checksum, f.checksum
            )),
            _ => {}
        }
    }
    for path in seen.keys() {
        if !files.contains_key(path) {
            tracing::warn!(path, "file in the backup but not in its manifest");
        }
    }
    if !bad.is_empty() {
        bad.sort();
        let n = bad.len();
        bad.truncate(10);
        bail!(
            "{n} files do not match the backup manifest:\n  {}",
            bad.join("\n  ")
        );
    }
    let manifest = fetch_open(archive, opener, &meta.manifest).await?;
    finish_restore(meta, dests, opts, plan, manifest, sink, None).await?;
    Ok((seen.len() as u64, bytes, fetch_done, start.elapsed()))
}

/// After the files are written: tablespace links and map, the recovery configuration, the
/// backup manifest (`manifest`), and every fsync (`sync`: files written outside the sink,
/// fsynced as they were finished); `global/pg_control`, which the sink holds, comes last.
async fn finish_restore(
    meta: &BackupMeta,
    dests: &[(String, Option<u32>, PathBuf)],
    opts: &RestoreOptions,
    plan: &Plan,
    manifest: Vec<u8>,
    sink: Arc<sink::Sink>,
    sync: Option<SyncerHandle>,
) -> Result<()> {
    let pgdata = &opts.pgdata;
    // Tablespaces: links in pg_tblspc, and a tablespace_map that names where they are now.
    let mut map_lines = Vec::new();
    let mut remapped = false;
    for (_, oid, dir) in dests {
        if let Some(oid) = oid {
            let link = pgdata.join("pg_tblspc").join(oid.to_string());
            std::fs::create_dir_all(pgdata.join("pg_tblspc"))?;
            let _ = std::fs::remove_file(&link);
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            std::os::unix::fs::symlink(&abs, &link)
                .with_context(|| format!("creating link {}", link.display()))?;
            let orig = meta
                .tablespaces
                .iter()
                .find(|t| t.oid == Some(*oid))
                .and_then(|t| t.location.clone());
            if orig.as_deref() != Some(&*abs.to_string_lossy()) {
                remapped = true;
            }
            map_lines.push(format!(
                "{oid} {}\n",
                abs.to_string_lossy()
                    .replace('\\', "\\\\")
                    .replace('\n', "\\n")
            ));
        }
    }
    if remapped {
        std::fs::write(pgdata.join("tablespace_map"), map_lines.concat())
            .context("writing tablespace_map")?;
        tracing::info!("tablespace_map rewritten for the new locations (pg_verifybackup needs -i tablespace_map)");
    }
    // Recovery configuration. A backup taken from a standby carries its standby.signal:
    // a restore is an archive recovery to a target, not a new standby of a server that
    // may be gone (pg_verifybackup ignores both signal files).
    match std::fs::remove_file(pgdata.join("standby.signal")) {
        Ok(()) => {
            tracing::info!("removed the backed-up standby.signal: this is an archive recovery")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("removing standby.signal: {e}")),
    }
    std::fs::write(pgdata.join("recovery.signal"), b"").context("writing recovery.signal")?;
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(pgdata.join("postgresql.auto.conf"))
        .context("opening postgresql.auto.conf")?;
    auto.write_all(recovery_settings(plan, opts.action, &opts.restore_command).as_bytes())
        .context("writing postgresql.auto.conf")?;
    drop(auto);
    // The manifest, for pg_verifybackup.
    std::fs::write(pgdata.join("backup_manifest"), manifest).context("writing backup_manifest")?;
    for f in [
        "tablespace_map",
        "recovery.signal",
        "postgresql.auto.conf",
        "backup_manifest",
    ] {
        match std::fs::File::open(pgdata.join(f)) {
            Ok(file) => file.sync_all().with_context(|| format!("fsync {f}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {f} to fsync it")),
        }
    }
    // The combine path's own files (fsynced as they were finished).
    if let Some(sync) = sync {
        tokio::task::spawn_blocking(move || sync.finish())
            .await
            .map_err(|e| anyhow!("fsync task failed: {e}"))??;
    }
    // Every file and directory durable, then global/pg_control last.
    let sink = Arc::into_inner(sink).ok_or_else(|| anyhow!("an extractor still holds the sink"))?;
    let roots: Vec<PathBuf> = dests.iter().map(|(_, _, d)| d.clone()).collect();
    tokio::task::spawn_blocking(move || sink.finish(&roots))
        .await
        .map_err(|e| anyhow!("sync task failed: {e}"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/lifeboat"), "/usr/bin/lifeboat");
        assert_eq!(shell_quote("/srv/my dir/it's"), "'/srv/my dir/it'\\''s'");
        assert_eq!(conf_quote("a 'b' c\\d"), "'a ''b'' c\\\\d'");
    }

    #[test]
    fn crc32c_hex_is_little_endian_bytes() {
        let mut h = Hasher::new(Algo::Crc32c);
        h.update(b"123456789");
        // CRC-32C check value 0xE3069283, written as its in-memory (LE) bytes.
        assert_eq!(h.hex(), "839206e3");
    }

    /// A backup part is read from the first provider whose copy matches backup.json and
    /// decrypts: missing on one, replaced on another, good on the third.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_comes_from_the_first_provider_with_a_good_copy() {
        use age::secrecy::ExposeSecret;
        use bytes::Bytes;
        let d = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let idf = d.path().join("identity");
        std::fs::write(&idf, format!("{}\n", id.to_string().expose_secret())).unwrap();
        let opener = Arc::new(Opener::from_file(&idf).unwrap());
        let sealer = pipeline::Sealer::new(&[id.to_public().to_string()], 1).unwrap();
        let stores: Vec<Arc<dyn crate::storage::ObjectStore>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                Arc::new(crate::storage::FileStore::new(n, d.path().join(n)))
                    as Arc<dyn crate::storage::ObjectStore>
            })
            .collect();
        let archive = Archive {
            mirror: crate::storage::Mirror::new(stores.clone()),
        };
        let key = "backups/20261124T083012Z/base.tar.000000";
        let plain = b"the tar bytes".repeat(100);
        let good = sealer.seal(&plain).unwrap();
        let other = sealer.seal(b"another part").unwrap();
        // The same length, CRC-valid, but not what backup.json records.
        stores[1]
            .put(key, Bytes::from(other.bytes.clone()))
            .await
            .unwrap();
        stores[2]
            .put(key, Bytes::from(good.bytes.clone()))
            .await
            .unwrap();
        let part: BackupPart = serde_json::from_value(serde_json::json!({
            "key": key, "tar": "base.tar", "seq": 0,
            "plain_len": plain.len(), "stored_len": good.bytes.len(),
            "crc32": pipeline::check(&good.bytes).unwrap().crc32,
        }))
        .unwrap();
        assert_eq!(fetch_open(&archive, &opener, &part).await.unwrap(), plain);
        stores[2].delete(key).await.unwrap();
        let e = format!(
            "{:#}",
            fetch_open(&archive, &opener, &part).await.unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "no provider holds a usable copy of {key}: storage \"a\": {key} is missing; storage \"b\": {key}: does not match backup.json"
            )),
            "{e}"
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(safe_relative(Path::new("../etc/passwd")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            safe_relative(Path::new("./base/1/123")).unwrap(),
            PathBuf::from("base/1/123")
        );
    }
}
