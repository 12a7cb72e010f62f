//! libpq-compatible connection parameters.
//!
//! This module owns the translation of a user-supplied PostgreSQL connection string into a
//! fully resolved [`ConnParams`]: parsing libpq keyword/value strings and `postgresql://`
//! URIs, validating keywords and values the way libpq does, filling unset values from the
//! `PG*` environment variables and libpq's built-in defaults, resolving passwords from the
//! password file (`.pgpass`), and producing a password-free display form for logs.
//!
//! It does no network I/O. Secrets are kept in [`Password`], whose `Debug` output is
//! redacted, and no error message produced here ever contains a password value: connection
//! strings quoted in errors have their password values masked.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The port libpq uses when none is given.
pub const DEFAULT_PORT: u16 = 5432;

const SYNTAX_HINT: &str = "use key=value pairs, or a postgresql:// URI";
const URI_HINT: &str =
    "the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters";
const SSLMODE_HINT: &str = "use one of disable, allow, prefer, require, verify-ca, verify-full";
const KEYWORD_DOCS_HINT: &str =
    "see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS";

/// How TLS is negotiated and verified, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Plaintext first, TLS if the server insists (lifeboat treats it like `Prefer`).
    Allow,
    /// Try TLS, fall back to plaintext when the server refuses it (libpq's default).
    #[default]
    Prefer,
    /// Require TLS; verify the chain only if a root certificate file exists.
    Require,
    /// Require TLS and verify the certificate chain, but not the host name.
    VerifyCa,
    /// Require TLS and verify both the certificate chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection must fail rather than fall back to plaintext.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_sslmode(s, Origin::Unspecified)
    }
}

fn parse_sslmode(s: &str, origin: Origin) -> Result<SslMode, ConnInfoError> {
    Ok(match s {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => {
            return Err(ConnInfoError::InvalidValue {
                keyword: "sslmode",
                value: s.to_string(),
                origin,
                hint: SSLMODE_HINT,
            })
        }
    })
}

/// libpq's `channel_binding` setting (SCRAM-SHA-256-PLUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use channel binding when TLS is in use and the server offers it (libpq's default).
    #[default]
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

/// Where a server is reached: a TCP host name or address, or a unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address (IPv6 without brackets).
    Tcp(String),
    /// The directory holding the server's socket, `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl Host {
    /// Interpret one libpq host entry: an absolute path is a socket directory.
    pub fn parse(s: &str) -> Host {
        if s.starts_with('/') {
            Host::Unix(PathBuf::from(s))
        } else {
            Host::Tcp(s.to_string())
        }
    }

    /// The socket file for a unix-socket host, `None` for TCP hosts.
    pub fn unix_socket_path(&self, port: u16) -> Option<PathBuf> {
        match self {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{port}"))),
            Host::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A password. Its `Debug` output is `<redacted>` and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wrap a secret.
    pub fn new(secret: impl Into<String>) -> Password {
        Password(secret.into())
    }

    /// The secret itself, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a rejected value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The connection string or URI.
    ConnString,
    /// The named environment variable.
    Env(&'static str),
    /// Not known (e.g. `SslMode::from_str`).
    Unspecified,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::ConnString => f.write_str(" in connection string"),
            Origin::Env(var) => write!(f, " from environment variable {var}"),
            Origin::Unspecified => Ok(()),
        }
    }
}

/// Errors from parsing connection strings and resolving passwords.
///
/// No variant ever carries a password value.
#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    /// A keyword/value string is malformed. `input` has its password values masked.
    #[error("invalid connection string \"{input}\": {reason}\nhint: {hint}")]
    Syntax {
        input: String,
        reason: String,
        hint: &'static str,
    },
    /// A `postgresql://` URI is malformed. `input` has its password masked.
    #[error("invalid connection URI \"{input}\": {reason}\nhint: {hint}")]
    Uri {
        input: String,
        reason: String,
        hint: &'static str,
    },
    /// A keyword libpq does not know.
    #[error("invalid connection option \"{keyword}\"\nhint: {hint}")]
    UnknownOption { keyword: String, hint: String },
    /// A real libpq option (or option value) that lifeboat cannot honour.
    #[error("connection option \"{keyword}\"{origin} is not supported by lifeboat\nhint: {hint}")]
    Unsupported {
        keyword: &'static str,
        origin: Origin,
        hint: &'static str,
    },
    /// A value that does not parse for its option. Never used for passwords.
    #[error("invalid value \"{value}\" for connection option \"{keyword}\"{origin}\nhint: {hint}")]
    InvalidValue {
        keyword: &'static str,
        value: String,
        origin: Origin,
        hint: &'static str,
    },
    /// The port list does not line up with the host list.
    #[error("could not match {ports} port numbers to {hosts} hosts\nhint: give one port for all hosts, or one port per host")]
    PortCount { hosts: usize, ports: usize },
    /// The hostaddr list does not line up with the host list.
    #[error("could not match {hostaddrs} hostaddr values to {hosts} host names\nhint: give one hostaddr per host, or leave hostaddr out")]
    HostaddrCount { hosts: usize, hostaddrs: usize },
    /// `sslrootcert=system` with a mode that would not check the host name.
    #[error("weak sslmode \"{sslmode}\" may not be used with sslrootcert=system\nhint: use sslmode=verify-full, or name a root certificate file")]
    WeakSslModeWithSystemRoots { sslmode: SslMode },
    /// The password file exists but could not be read. `cause` comes before the hint, so it
    /// is a field printed in the message, not a source.
    #[error("could not read password file \"{}\": {cause}\nhint: check its ownership and permissions, or set passfile/PGPASSFILE", .path.display())]
    Passfile { path: PathBuf, cause: io::Error },
}

/// Fully resolved connection parameters: the connection string merged with the environment
/// and libpq's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Servers to try in order, as libpq's multi-host lists.
    pub targets: Vec<(Host, u16)>,
    /// Same length as `targets`: the numeric address to connect to instead of resolving the
    /// host (libpq's `hostaddr`), when both `host` and `hostaddr` were given. The host name is
    /// still used for TLS verification and password-file lookup.
    pub hostaddrs: Vec<Option<IpAddr>>,
    pub user: String,
    /// `None` lets the server default it to the user name.
    pub dbname: Option<String>,
    pub password: Option<Password>,
    pub application_name: Option<String>,
    pub sslmode: SslMode,
    /// A file path, or the literal `system` for the bundled trusted roots.
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// `None` means wait indefinitely (libpq: 0 or unset); libpq's 2 s minimum is applied.
    pub connect_timeout: Option<Duration>,
    pub passfile: Option<PathBuf>,
    /// Server command-line options sent in the startup packet.
    pub options: Option<String>,
    pub channel_binding: ChannelBinding,
    /// TCP keepalives on (libpq default) or off.
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
}

/// The outcome of [`ConnParams::password_for`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PasswordLookup {
    pub password: Option<Password>,
    /// Set when the password file was skipped for a reason the user should hear about
    /// (e.g. group/world access). Never contains a password.
    pub warning: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Interpreted by lifeboat.
    Used,
    /// A real libpq option lifeboat accepts and ignores.
    Ignored,
    /// A real libpq option lifeboat rejects when set to a non-empty value.
    Unsupported(&'static str),
}

struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
    kind: Kind,
}

const fn kw(name: &'static str, env: Option<&'static str>, kind: Kind) -> Keyword {
    Keyword { name, env, kind }
}

/// libpq's keywords (PostgreSQL 9.6 to 18, including removed ones still seen in the wild).
const KEYWORDS: &[Keyword] = &[
    kw("host", Some("PGHOST"), Kind::Used),
    kw("hostaddr", Some("PGHOSTADDR"), Kind::Used),
    kw("port", Some("PGPORT"), Kind::Used),
    kw("user", Some("PGUSER"), Kind::Used),
    kw("password", Some("PGPASSWORD"), Kind::Used),
    kw("passfile", Some("PGPASSFILE"), Kind::Used),
    kw("dbname", Some("PGDATABASE"), Kind::Used),
    kw("application_name", Some("PGAPPNAME"), Kind::Used),
    kw("fallback_application_name", None, Kind::Used),
    kw("options", Some("PGOPTIONS"), Kind::Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Kind::Used),
    kw("sslmode", Some("PGSSLMODE"), Kind::Used),
    kw("requiressl", Some("PGREQUIRESSL"), Kind::Used),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Kind::Used),
    kw("sslcert", Some("PGSSLCERT"), Kind::Used),
    kw("sslkey", Some("PGSSLKEY"), Kind::Used),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Kind::Used),
    kw("channel_binding", Some("PGCHANNELBINDING"), Kind::Used),
    kw("gssencmode", Some("PGGSSENCMODE"), Kind::Used),
    kw("keepalives", None, Kind::Used),
    kw("keepalives_idle", None, Kind::Used),
    kw("keepalives_interval", None, Kind::Used),
    kw("keepalives_count", None, Kind::Used),
    kw(
        "service",
        Some("PGSERVICE"),
        Kind::Unsupported(
            "lifeboat does not read pg_service.conf; put host, port, user and dbname in the connection string",
        ),
    ),
    kw(
        "sslcrl",
        Some("PGSSLCRL"),
        Kind::Unsupported("certificate revocation lists are not checked; remove sslcrl"),
    ),
    kw(
        "sslcrldir",
        Some("PGSSLCRLDIR"),
        Kind::Unsupported("certificate revocation lists are not checked; remove sslcrldir"),
    ),
    kw(
        "requirepeer",
        Some("PGREQUIREPEER"),
        Kind::Unsupported("peer credential checks are not implemented; remove requirepeer"),
    ),
    kw(
        "require_auth",
        Some("PGREQUIREAUTH"),
        Kind::Unsupported("restrict authentication methods in pg_hba.conf instead"),
    ),
    kw("sslpassword", None, Kind::Ignored),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Kind::Ignored),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Kind::Ignored),
    kw("sslsni", Some("PGSSLSNI"), Kind::Ignored),
    kw("sslkeylogfile", None, Kind::Ignored),
    kw("ssl_min_protocol_version", None, Kind::Ignored),
    kw("ssl_max_protocol_version", None, Kind::Ignored),
    kw("min_protocol_version", None, Kind::Ignored),
    kw("max_protocol_version", None, Kind::Ignored),
    kw("client_encoding", None, Kind::Ignored),
    kw("target_session_attrs", None, Kind::Ignored),
    kw("load_balance_hosts", None, Kind::Ignored),
    kw("tcp_user_timeout", None, Kind::Ignored),
    kw("krbsrvname", None, Kind::Ignored),
    kw("gsslib", None, Kind::Ignored),
    kw("gssdelegation", None, Kind::Ignored),
    kw("replication", None, Kind::Ignored),
    kw("servicefile", None, Kind::Ignored),
    kw("oauth_issuer", None, Kind::Ignored),
    kw("oauth_client_id", None, Kind::Ignored),
    kw("oauth_client_secret", None, Kind::Ignored),
    kw("oauth_scope", None, Kind::Ignored),
    kw("scram_client_key", None, Kind::Ignored),
    kw("scram_server_key", None, Kind::Ignored),
    kw("authtype", None, Kind::Ignored),
    kw("tty", None, Kind::Ignored),
];

fn lookup_keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

fn unknown_option(name: &str) -> ConnInfoError {
    let best = KEYWORDS
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .min_by_key(|(d, _)| *d);
    let hint = match best {
        Some((d, suggestion)) if d <= 2 && d < name.len() => {
            format!("did you mean \"{suggestion}\"? {KEYWORD_DOCS_HINT}")
        }
        _ => format!("{KEYWORD_DOCS_HINT} for valid keywords"),
    };
    ConnInfoError::UnknownOption {
        keyword: name.to_string(),
        hint,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Raw values by keyword, with where each came from.
type Raw = HashMap<&'static str, (String, Origin)>;

impl ConnParams {
    /// Parse a libpq keyword/value string (`host=db1 port=5432 user=x password='a b\'c'`) or a
    /// `postgresql://` / `postgres://` URI, then fill what it did not set from the environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ... looked up through `env`)
    /// and from libpq's defaults: port 5432, user `$USER`/`$LOGNAME` (else `postgres`), host the
    /// unix socket directory `/var/run/postgresql` if it exists, else `/tmp`.
    ///
    /// As in libpq, a value given in the string (even an empty one) stops the environment from
    /// supplying it, and an empty value means "use the default".
    pub fn parse(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnParams, ConnInfoError> {
        let pairs = if uri_prefix_len(s).is_some() {
            parse_uri(s)?
        } else {
            parse_keyword_value(s)?
        };
        let mut raw: Raw = HashMap::new();
        for (keyword, value) in pairs {
            raw.insert(keyword, (value, Origin::ConnString));
        }
        for k in KEYWORDS {
            if k.kind == Kind::Ignored || raw.contains_key(k.name) {
                continue;
            }
            if let Some(var) = k.env {
                if let Some(value) = env(var) {
                    raw.insert(k.name, (value, Origin::Env(var)));
                }
            }
        }
        for k in KEYWORDS {
            if let (Kind::Unsupported(hint), Some((value, origin))) = (k.kind, raw.get(k.name)) {
                if !value.is_empty() {
                    return Err(ConnInfoError::Unsupported {
                        keyword: k.name,
                        origin: *origin,
                        hint,
                    });
                }
            }
        }
        resolve(&raw, env)
    }

    /// [`ConnParams::parse`] with the process environment.
    pub fn parse_with_process_env(s: &str) -> Result<ConnParams, ConnInfoError> {
        ConnParams::parse(s, &|name| std::env::var(name).ok())
    }

    /// Resolve the password for one target as libpq does: the explicit password (from the
    /// string or `PGPASSWORD`), else the password file (`passfile` / `PGPASSFILE`, else
    /// `<home>/.pgpass`).
    ///
    /// Password file lines are `host:port:database:user:password`; `*` matches anything,
    /// `\` escapes `:` and `\`, and lines starting with `#` are comments. A unix-socket target
    /// matches the host field `localhost` or its socket directory. With `replication` (a
    /// physical replication connection) the database field must match `replication`.
    /// A file with group or world access is skipped with a warning, like libpq; a missing
    /// file is not an error.
    pub fn password_for(
        &self,
        target: &(Host, u16),
        replication: bool,
        home: Option<&Path>,
    ) -> Result<PasswordLookup, ConnInfoError> {
        if let Some(p) = &self.password {
            return Ok(PasswordLookup {
                password: Some(p.clone()),
                warning: None,
            });
        }
        let path = match (&self.passfile, home) {
            (Some(p), _) => p.clone(),
            (None, Some(home)) => home.join(".pgpass"),
            (None, None) => return Ok(PasswordLookup::default()),
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PasswordLookup::default()),
            Err(cause) => return Err(ConnInfoError::Passfile { path, cause }),
        };
        if !meta.is_file() {
            return Ok(PasswordLookup::default());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Ok(PasswordLookup {
                    password: None,
                    warning: Some(format!(
                        "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less; ignoring it\nhint: chmod 0600 \"{}\"",
                        path.display(),
                        path.display()
                    )),
                });
            }
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(cause) => return Err(ConnInfoError::Passfile { path, cause }),
        };
        let contents = String::from_utf8_lossy(&bytes);

        let port = target.1.to_string();
        let dbname = if replication {
            "replication"
        } else {
            self.dbname.as_deref().unwrap_or(&self.user)
        };
        let host_candidates: Vec<String> = match &target.0 {
            Host::Tcp(h) => vec![h.clone()],
            Host::Unix(dir) => vec!["localhost".to_string(), dir.display().to_string()],
        };
        for line in contents.lines() {
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(rest) = host_candidates
                .iter()
                .find_map(|h| pgpass_field_matches(line, h))
            else {
                continue;
            };
            let Some(rest) = pgpass_field_matches(rest, &port) else {
                continue;
            };
            let Some(rest) = pgpass_field_matches(rest, dbname) else {
                continue;
            };
            let Some(rest) = pgpass_field_matches(rest, &self.user) else {
                continue;
            };
            return Ok(PasswordLookup {
                password: Some(Password(pgpass_unescape(rest))),
                warning: None,
            });
        }
        Ok(PasswordLookup::default())
    }

    /// A display form without the password, for logs, e.g.
    /// `host=127.0.0.1 port=5432 user=lifeboat sslmode=prefer`. It parses back to the same
    /// parameters (less the password).
    pub fn redacted(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut push = |k: &str, v: &str| parts.push(format!("{k}={}", quote_value(v)));
        let hosts: Vec<String> = self.targets.iter().map(|(h, _)| h.to_string()).collect();
        push("host", &hosts.join(","));
        if self.hostaddrs.iter().any(Option::is_some) {
            let addrs: Vec<String> = self
                .hostaddrs
                .iter()
                .map(|a| a.map(|a| a.to_string()).unwrap_or_default())
                .collect();
            push("hostaddr", &addrs.join(","));
        }
        let ports: Vec<String> = self.targets.iter().map(|(_, p)| p.to_string()).collect();
        let same_port = ports.windows(2).all(|w| w[0] == w[1]);
        match ports.first() {
            Some(first) if same_port => push("port", first),
            _ => push("port", &ports.join(",")),
        }
        push("user", &self.user);
        if let Some(db) = &self.dbname {
            push("dbname", db);
        }
        if let Some(app) = &self.application_name {
            push("application_name", app);
        }
        if let Some(o) = &self.options {
            push("options", o);
        }
        push("sslmode", self.sslmode.as_str());
        for (k, v) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
            ("passfile", &self.passfile),
        ] {
            if let Some(p) = v {
                push(k, &p.display().to_string());
            }
        }
        if let Some(t) = self.connect_timeout {
            push("connect_timeout", &t.as_secs().to_string());
        }
        parts.join(" ")
    }
}

/// Quote a value for a keyword/value string when it needs it.
pub fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.bytes().any(|b| is_space(b) || b == b'\'' || b == b'\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// libpq's `pwdfMatchesString`: if the first field of `line` matches `token`, the rest of the
/// line after its ':' separator.
fn pgpass_field_matches<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut tok = token.chars();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, next)) => (next, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            return if tok.next().is_none() {
                Some(&line[i + 1..])
            } else {
                None
            };
        }
        if tok.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The password field: up to the first unescaped ':', with '\' escapes removed.
fn pgpass_unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

/// A non-empty value and its origin; empty values mean "default" in libpq.
fn get<'a>(raw: &'a Raw, keyword: &str) -> Option<(&'a str, Origin)> {
    raw.get(keyword)
        .filter(|(v, _)| !v.is_empty())
        .map(|(v, o)| (v.as_str(), *o))
}

/// libpq's `parse_int_param`: an integer, surrounding whitespace allowed.
fn parse_int(
    keyword: &'static str,
    value: &str,
    origin: Origin,
    hint: &'static str,
) -> Result<i64, ConnInfoError> {
    value
        .trim_matches(|c: char| c.is_ascii() && is_space(c as u8))
        .parse::<i64>()
        .map_err(|_| ConnInfoError::InvalidValue {
            keyword,
            value: value.to_string(),
            origin,
            hint,
        })
}

fn seconds(keyword: &'static str, raw: &Raw) -> Result<Option<Duration>, ConnInfoError> {
    match get(raw, keyword) {
        None => Ok(None),
        Some((v, origin)) => {
            let n = parse_int(keyword, v, origin, "give a whole number of seconds")?;
            Ok((n > 0).then(|| Duration::from_secs(n.unsigned_abs())))
        }
    }
}

fn resolve(raw: &Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams, ConnInfoError> {
    let hosts: Vec<&str> = get(raw, "host")
        .map(|(v, _)| v.split(',').collect())
        .unwrap_or_default();
    let hostaddr_strs: Vec<&str> = get(raw, "hostaddr")
        .map(|(v, _)| v.split(',').collect())
        .unwrap_or_default();
    let hostaddr_origin = get(raw, "hostaddr").map_or(Origin::ConnString, |(_, o)| o);
    let mut hostaddrs_parsed: Vec<Option<IpAddr>> = Vec::with_capacity(hostaddr_strs.len());
    for a in &hostaddr_strs {
        let a = a.trim();
        if a.is_empty() {
            hostaddrs_parsed.push(None);
            continue;
        }
        let ip = a
            .parse::<IpAddr>()
            .map_err(|_| ConnInfoError::InvalidValue {
                keyword: "hostaddr",
                value: a.to_string(),
                origin: hostaddr_origin,
                hint: "hostaddr takes numeric IP addresses; put host names in host",
            })?;
        hostaddrs_parsed.push(Some(ip));
    }
    if !hosts.is_empty() && !hostaddr_strs.is_empty() && hosts.len() != hostaddr_strs.len() {
        return Err(ConnInfoError::HostaddrCount {
            hosts: hosts.len(),
            hostaddrs: hostaddr_strs.len(),
        });
    }
    let n = hosts.len().max(hostaddr_strs.len()).max(1);

    let ports: Vec<u16> = match get(raw, "port") {
        None => vec![DEFAULT_PORT],
        Some((v, origin)) => v
            .split(',')
            .map(|p| {
                if p.trim().is_empty() {
                    return Ok(DEFAULT_PORT);
                }
                parse_int("port", p, origin, "a port is a number from 1 to 65535")
                    .ok()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0)
                    .ok_or_else(|| ConnInfoError::InvalidValue {
                        keyword: "port",
                        value: p.to_string(),
                        origin,
                        hint: "a port is a number from 1 to 65535",
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != n {
        return Err(ConnInfoError::PortCount {
            hosts: n,
            ports: ports.len(),
        });
    }

    let mut targets = Vec::with_capacity(n);
    let mut hostaddrs = Vec::with_capacity(n);
    for i in 0..n {
        let host = hosts.get(i).copied().unwrap_or("");
        let addr = hostaddrs_parsed.get(i).copied().flatten();
        let port = if ports.len() == 1 { ports[0] } else { ports[i] };
        let (target_host, connect_addr) = match (host.is_empty(), addr) {
            (false, addr) => (Host::parse(host), addr),
            (true, Some(ip)) => (Host::Tcp(ip.to_string()), None),
            (true, None) => (Host::Unix(default_socket_dir()), None),
        };
        targets.push((target_host, port));
        hostaddrs.push(connect_addr);
    }

    let user = get(raw, "user")
        .map(|(v, _)| v.to_string())
        .or_else(|| env("USER").filter(|u| !u.is_empty()))
        .or_else(|| env("LOGNAME").filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "postgres".to_string());

    let sslrootcert = get(raw, "sslrootcert").map(|(v, _)| PathBuf::from(v));
    let system_roots = sslrootcert.as_deref() == Some(Path::new("system"));
    let sslmode = match get(raw, "sslmode") {
        Some((v, origin)) => parse_sslmode(v, origin)?,
        None if get(raw, "requiressl").is_some_and(|(v, _)| v.starts_with('1')) => SslMode::Require,
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::default(),
    };
    if system_roots && sslmode != SslMode::VerifyFull {
        return Err(ConnInfoError::WeakSslModeWithSystemRoots { sslmode });
    }

    let connect_timeout = seconds("connect_timeout", raw)?.map(|d| d.max(Duration::from_secs(2)));

    let channel_binding = match get(raw, "channel_binding") {
        None => ChannelBinding::default(),
        Some(("disable", _)) => ChannelBinding::Disable,
        Some(("prefer", _)) => ChannelBinding::Prefer,
        Some(("require", _)) => ChannelBinding::Require,
        Some((v, origin)) => {
            return Err(ConnInfoError::InvalidValue {
                keyword: "channel_binding",
                value: v.to_string(),
                origin,
                hint: "use one of disable, prefer, require",
            })
        }
    };
    match get(raw, "gssencmode") {
        None | Some(("disable" | "prefer", _)) => {}
        Some(("require", origin)) => {
            return Err(ConnInfoError::Unsupported {
                keyword: "gssencmode",
                origin,
                hint: "GSSAPI encryption is not implemented; use sslmode for encryption",
            })
        }
        Some((v, origin)) => {
            return Err(ConnInfoError::InvalidValue {
                keyword: "gssencmode",
                value: v.to_string(),
                origin,
                hint: "use one of disable, prefer, require",
            })
        }
    }
    match get(raw, "sslnegotiation") {
        None | Some(("postgres", _)) => {}
        Some(("direct", origin)) => {
            return Err(ConnInfoError::Unsupported {
                keyword: "sslnegotiation",
                origin,
                hint: "direct TLS negotiation is not implemented; use sslnegotiation=postgres",
            })
        }
        Some((v, origin)) => {
            return Err(ConnInfoError::InvalidValue {
                keyword: "sslnegotiation",
                value: v.to_string(),
                origin,
                hint: "use postgres",
            })
        }
    }

    let keepalives = match get(raw, "keepalives") {
        None => true,
        Some((v, origin)) => {
            parse_int("keepalives", v, origin, "use 1 to enable or 0 to disable")? != 0
        }
    };
    let keepalives_count = match get(raw, "keepalives_count") {
        None => None,
        Some((v, origin)) => {
            let n = parse_int(
                "keepalives_count",
                v,
                origin,
                "give a whole number of probes",
            )?;
            u32::try_from(n).ok().filter(|n| *n > 0)
        }
    };

    let string = |k: &str| get(raw, k).map(|(v, _)| v.to_string());
    let path = |k: &str| get(raw, k).map(|(v, _)| PathBuf::from(v));
    Ok(ConnParams {
        targets,
        hostaddrs,
        user,
        dbname: string("dbname"),
        password: string("password").map(Password),
        application_name: string("application_name")
            .or_else(|| string("fallback_application_name")),
        sslmode,
        sslrootcert,
        sslcert: path("sslcert"),
        sslkey: path("sslkey"),
        connect_timeout,
        passfile: path("passfile"),
        options: string("options"),
        channel_binding,
        keepalives,
        keepalives_idle: seconds("keepalives_idle", raw)?,
        keepalives_interval: seconds("keepalives_interval", raw)?,
        keepalives_count,
    })
}

/// libpq's `isspace` set.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|p| s.starts_with(*p))
        .map(|p| p.len())
}

fn is_password_keyword(k: &str) -> bool {
    k.to_ascii_lowercase().contains("password") || k.contains("secret") || k.starts_with("scram_")
}

fn syntax_error(input: &str, reason: String, offset: usize) -> ConnInfoError {
    let (input, offset) = redact_input(input, offset);
    ConnInfoError::Syntax {
        input,
        reason: format!("{reason} at offset {offset}"),
        hint: SYNTAX_HINT,
    }
}

fn uri_error(input: &str, reason: &str, offset: Option<usize>) -> ConnInfoError {
    let (input, offset) = redact_input(input, offset.unwrap_or(0));
    let reason = if reason.contains("{offset}") {
        reason.replace("{offset}", &offset.to_string())
    } else {
        reason.to_string()
    };
    ConnInfoError::Uri {
        input,
        reason,
        hint: URI_HINT,
    }
}

fn store(keyword: &str) -> Result<&'static str, ConnInfoError> {
    lookup_keyword(keyword)
        .map(|k| k.name)
        .ok_or_else(|| unknown_option(keyword))
}

/// libpq's `conninfo_parse`.
fn parse_keyword_value(s: &str) -> Result<Vec<(&'static str, String)>, ConnInfoError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out: Vec<(&'static str, String)> = Vec::new();
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && b[i] != b'=' && !is_space(b[i]) {
            i += 1;
        }
        let name = &s[name_start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            let after_secret = out.last().is_some_and(|(k, _)| is_password_keyword(k));
            let reason = if after_secret {
                "missing \"=\" after the value of a password option (quote values containing spaces)"
                    .to_string()
            } else {
                format!("missing \"=\" after \"{name}\"")
            };
            return Err(syntax_error(s, reason, name_start));
        }
        i += 1;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let mut value: Vec<u8> = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            let quote_at = i;
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(syntax_error(
                        s,
                        "unterminated quoted string".to_string(),
                        quote_at,
                    ));
                }
                match b[i] {
                    b'\\' => {
                        i += 1;
                        if i < b.len() {
                            value.push(b[i]);
                            i += 1;
                        }
                    }
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !is_space(b[i]) {
                if b[i] == b'\\' {
                    i += 1;
                    if i >= b.len() {
                        break;
                    }
                }
                value.push(b[i]);
                i += 1;
            }
        }
        let keyword = store(name)?;
        out.push((keyword, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(out)
}

/// Percent-decode one URI component; `what` names it for errors (never the value).
fn uri_decode(
    input: &str,
    component: &str,
    what: &str,
    at: usize,
) -> Result<String, ConnInfoError> {
    let b = component.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3);
            match hex {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    if *h == b'0' && *l == b'0' {
                        return Err(uri_error(
                            input,
                            &format!("forbidden value %00 in the {what} at offset {{offset}}"),
                            Some(at + i),
                        ));
                    }
                }
                _ => {
                    return Err(uri_error(
                        input,
                        &format!(
                            "invalid percent-encoded token in the {what} at offset {{offset}}"
                        ),
                        Some(at + i),
                    ))
                }
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(component)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            uri_error(
                input,
                &format!("the {what} is not valid UTF-8 after percent-decoding"),
                None,
            )
        })
}

/// libpq's `conninfo_uri_parse_options`.
fn parse_uri(s: &str) -> Result<Vec<(&'static str, String)>, ConnInfoError> {
    let start = uri_prefix_len(s).unwrap_or(0);
    let rest = &s[start..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some((start + q + 1, &rest[q + 1..]))),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(p) => (
            &before_query[..p],
            Some((start + p + 1, &before_query[p + 1..])),
        ),
        None => (before_query, None),
    };
    let mut out: Vec<(&'static str, String)> = Vec::new();

    let (hostlist, hostlist_at) = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.find(':') {
                Some(c) => (&userinfo[..c], Some((start + c + 1, &userinfo[c + 1..]))),
                None => (userinfo, None),
            };
            let user = uri_decode(s, user, "user name", start)?;
            if !user.is_empty() {
                out.push(("user", user));
            }
            if let Some((p_at, p)) = password {
                let password = uri_decode(s, p, "password", p_at)?;
                if !password.is_empty() {
                    out.push(("password", password));
                }
            }
            (&authority[at + 1..], start + at + 1)
        }
        None => (authority, start),
    };

    let hb = hostlist.as_bytes();
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    let mut i = 0;
    if !hostlist.is_empty() {
        loop {
            let host;
            if hb.get(i) == Some(&b'[') {
                let open = i;
                let Some(close) = hostlist[i..].find(']').map(|c| i + c) else {
                    return Err(uri_error(
                        s,
                        "missing \"]\" in IPv6 host address at offset {offset}",
                        Some(hostlist_at + open),
                    ));
                };
                if close == open + 1 {
                    return Err(uri_error(
                        s,
                        "IPv6 host address may not be empty at offset {offset}",
                        Some(hostlist_at + open),
                    ));
                }
                host = uri_decode(
                    s,
                    &hostlist[open + 1..close],
                    "host",
                    hostlist_at + open + 1,
                )?;
                i = close + 1;
                if let Some(&c) = hb.get(i) {
                    if c != b':' && c != b',' {
                        return Err(uri_error(
                            s,
                            &format!(
                                "unexpected character \"{}\" at offset {{offset}} (expected \":\", \",\" or \"/\" after an IPv6 address)",
                                char::from(c)
                            ),
                            Some(hostlist_at + i),
                        ));
                    }
                }
            } else {
                let h_start = i;
                while i < hb.len() && hb[i] != b':' && hb[i] != b',' {
                    i += 1;
                }
                host = uri_decode(s, &hostlist[h_start..i], "host", hostlist_at + h_start)?;
            }
            let mut port = String::new();
            if hb.get(i) == Some(&b':') {
                i += 1;
                let p_start = i;
                while i < hb.len() && hb[i] != b',' {
                    i += 1;
                }
                port = uri_decode(s, &hostlist[p_start..i], "port", hostlist_at + p_start)?;
            }
            hosts.push(host);
            ports.push(port);
            if hb.get(i) == Some(&b',') {
                i += 1;
                continue;
            }
            break;
        }
    }
    let host_joined = hosts.join(",");
    if !host_joined.is_empty() {
        out.push(("host", host_joined));
    }
    let port_joined = ports.join(",");
    if !port_joined.is_empty() {
        out.push(("port", port_joined));
    }

    if let Some((p_at, p)) = path {
        let dbname = uri_decode(s, p, "database name", p_at)?;
        if !dbname.is_empty() {
            out.push(("dbname", dbname));
        }
    }

    if let Some((q_at, q)) = query {
        let mut seg_at = q_at;
        for seg in q.split('&') {
            let this_at = seg_at;
            seg_at += seg.len() + 1;
            if seg.is_empty() {
                continue;
            }
            let Some((k, v)) = seg.split_once('=') else {
                return Err(uri_error(
                    s,
                    "missing key/value separator \"=\" in query parameter at offset {offset}",
                    Some(this_at),
                ));
            };
            if v.contains('=') {
                return Err(uri_error(
                    s,
                    "extra key/value separator \"=\" in query parameter at offset {offset}",
                    Some(this_at),
                ));
            }
            let key = uri_decode(s, k, "query parameter name", this_at)?;
            let value = uri_decode(s, v, "query parameter value", this_at + k.len() + 1)?;
            if key == "ssl" && value == "true" {
                out.push(("sslmode", "require".to_string()));
                continue;
            }
            out.push((store(&key)?, value));
        }
    }
    Ok(out)
}

/// Mask password values in a connection string or URI for quoting in an error message, and
/// map `offset` (into `s`) to the same place in the masked string.
fn redact_input(s: &str, offset: usize) -> (String, usize) {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let b = s.as_bytes();
    // URIs anywhere in the string: mask the password in user:password@.
    let mut search = 0;
    while let Some(p) = s[search..].find("://") {
        let auth_start = search + p + 3;
        let auth_end = s[auth_start..]
            .find(['/', '?', ' ', '\''])
            .map_or(s.len(), |e| auth_start + e);
        if let Some(at) = s[auth_start..auth_end].rfind('@') {
            if let Some(colon) = s[auth_start..auth_start + at].find(':') {
                ranges.push((auth_start + colon + 1, auth_start + at));
            }
        }
        search = auth_end.max(auth_start);
    }
    // Keyword=value pairs (and URI query parameters) whose keyword names a secret.
    let lower = s.to_ascii_lowercase();
    for pat in ["password", "secret", "scram_"] {
        let mut search = 0;
        while let Some(p) = lower[search..].find(pat) {
            let mut i = search + p + pat.len();
            search = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] == b'=' {
                i += 1;
            }
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            let v_start = i;
            if i < b.len() && b[i] == b'\'' {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i = next_char(s, i, b[i] == b'\\');
                }
                i = (i + 1).min(b.len());
            } else {
                // Unquoted: the value, plus any following words that do not look like the
                // next keyword (an unquoted password containing spaces).
                loop {
                    while i < b.len() && !is_space(b[i]) && b[i] != b'&' {
                        i = next_char(s, i, b[i] == b'\\');
                    }
                    i = i.min(b.len());
                    let mut j = i;
                    while j < b.len() && is_space(b[j]) {
                        j += 1;
                    }
                    if j >= b.len() || j == i || looks_like_keyword(&b[j..]) {
                        break;
                    }
                    i = j;
                }
            }
            if i > v_start {
                ranges.push((v_start, i));
            }
        }
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(s.len());
    let mut new_offset = offset;
    let mut pos = 0;
    for (a, e) in ranges {
        let a = a.max(pos);
        if e <= a {
            continue;
        }
        out.push_str(&s[pos..a]);
        out.push_str("***");
        if offset >= e {
            new_offset = new_offset + 3 - (e - a);
        } else if offset >= a {
            new_offset = out.len() - 3;
        }
        pos = e;
    }
    out.push_str(&s[pos..]);
    (out, new_offset)
}

/// The index after the character at `i` (after two characters for an escape), on a char
/// boundary and at most `s.len()`.
fn next_char(s: &str, i: usize, escape: bool) -> usize {
    let mut j = i + if escape { 2 } else { 1 };
    while j < s.len() && !s.is_char_boundary(j) {
        j += 1;
    }
    j.min(s.len())
}

fn looks_like_keyword(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    if i == 0 {
        return false;
    }
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    b.get(i) == Some(&b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn parse(s: &str) -> ConnParams {
        ConnParams::parse(s, &env_of(&[("USER", "alice")])).expect(s)
    }

    fn parse_env(s: &str, env: &[(&str, &str)]) -> ConnParams {
        ConnParams::parse(s, &env_of(env)).expect(s)
    }

    fn err(s: &str) -> String {
        err_env(s, &[])
    }

    fn err_env(s: &str, env: &[(&str, &str)]) -> String {
        match ConnParams::parse(s, &env_of(env)) {
            Ok(p) => panic!("expected an error for {s:?}, got {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn tcp(h: &str, p: u16) -> (Host, u16) {
        (Host::Tcp(h.to_string()), p)
    }

    fn pw(p: &ConnParams) -> Option<&str> {
        p.password.as_ref().map(Password::expose)
    }

    #[test]
    fn keyword_value_basic() {
        let p = parse("host=db1 port=5433 user=x dbname=d");
        assert_eq!(p.targets, vec![tcp("db1", 5433)]);
        assert_eq!(p.hostaddrs, vec![None]);
        assert_eq!(p.user, "x");
        assert_eq!(p.dbname.as_deref(), Some("d"));
        assert_eq!(p.password, None);
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.channel_binding, ChannelBinding::Prefer);
        assert!(p.keepalives);
        assert_eq!(p.connect_timeout, None);
    }

    #[test]
    fn quoting_and_escapes() {
        let p =
            parse(r"password='a b\'c' application_name='x\\y' options=-c\ geqo=off dbname=a\'b");
        assert_eq!(pw(&p), Some("a b'c"));
        assert_eq!(p.application_name.as_deref(), Some(r"x\y"));
        assert_eq!(p.options.as_deref(), Some("-c geqo=off"));
        assert_eq!(p.dbname.as_deref(), Some("a'b"));
        let p = parse("dbname='with=equals and spaces'\tuser='Ünïcödé'\n");
        assert_eq!(p.dbname.as_deref(), Some("with=equals and spaces"));
        assert_eq!(p.user, "Ünïcödé");
    }

    #[test]
    fn whitespace_around_equals() {
        let p = parse("  host = db1   port= 5434 user =bob\t");
        assert_eq!(p.targets, vec![tcp("db1", 5434)]);
        assert_eq!(p.user, "bob");
        // As in libpq, whitespace after '=' is skipped, so the next word becomes the value.
        let p = parse("host= port=5433");
        assert_eq!(p.targets, vec![tcp("port=5433", 5432)]);
    }

    #[test]
    fn later_duplicates_win() {
        let p = parse("host=a host=b user=u user=v");
        assert_eq!(p.targets, vec![tcp("b", 5432)]);
        assert_eq!(p.user, "v");
    }

    #[test]
    fn empty_values_mean_default_and_block_env() {
        let env = [
            ("USER", "alice"),
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
        ];
        let p = parse_env("host='' port='' user='' password='' sslmode=''", &env);
        assert_eq!(p.targets, vec![(Host::Unix(default_socket_dir()), 5432)]);
        assert_eq!(p.user, "alice");
        assert_eq!(p.password, None);
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(parse("").targets, parse("   ").targets);
    }

    #[test]
    fn defaults() {
        let p = parse_env("", &[]);
        assert_eq!(
            p.targets,
            vec![(Host::Unix(default_socket_dir()), DEFAULT_PORT)]
        );
        assert_eq!(p.user, "postgres");
        assert_eq!(p.dbname, None);
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.sslrootcert, None);
        assert_eq!(p.passfile, None);
        assert_eq!(parse_env("", &[("LOGNAME", "bob")]).user, "bob");
        assert_eq!(
            parse_env("", &[("USER", "carol"), ("LOGNAME", "bob")]).user,
            "carol"
        );
        let dir = default_socket_dir();
        assert!(dir == Path::new("/tmp") || dir == Path::new("/var/run/postgresql"));
    }

    #[test]
    fn environment_fallback() {
        let env = [
            ("PGHOST", "h1,/sock"),
            ("PGHOSTADDR", "10.0.0.1,"),
            ("PGPORT", "6001,6002"),
            ("PGUSER", "u"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "d"),
            ("PGAPPNAME", "app"),
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", "/r.crt"),
            ("PGSSLCERT", "/c.crt"),
            ("PGSSLKEY", "/c.key"),
            ("PGCONNECT_TIMEOUT", "10"),
            ("PGPASSFILE", "/pgpass"),
            ("PGOPTIONS", "-c x=y"),
            ("PGCHANNELBINDING", "require"),
        ];
        let p = parse_env("", &env);
        assert_eq!(
            p.targets,
            vec![tcp("h1", 6001), (Host::Unix(PathBuf::from("/sock")), 6002)]
        );
        assert_eq!(p.hostaddrs, vec![Some(IpAddr::from([10, 0, 0, 1])), None]);
        assert_eq!(p.user, "u");
        assert_eq!(pw(&p), Some("envpw"));
        assert_eq!(p.dbname.as_deref(), Some("d"));
        assert_eq!(p.application_name.as_deref(), Some("app"));
        assert_eq!(p.sslmode, SslMode::VerifyCa);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/r.crt")));
        assert_eq!(p.sslcert, Some(PathBuf::from("/c.crt")));
        assert_eq!(p.sslkey, Some(PathBuf::from("/c.key")));
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(p.passfile, Some(PathBuf::from("/pgpass")));
        assert_eq!(p.options.as_deref(), Some("-c x=y"));
        assert_eq!(p.channel_binding, ChannelBinding::Require);
    }

    #[test]
    fn string_takes_precedence_over_env() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGAPPNAME", "envapp"),
        ];
        let p = parse_env(
            "host=s port=7 user=su password=spw sslmode=disable application_name=sapp",
            &env,
        );
        assert_eq!(p.targets, vec![tcp("s", 7)]);
        assert_eq!(p.user, "su");
        assert_eq!(pw(&p), Some("spw"));
        assert_eq!(p.sslmode, SslMode::Disable);
        assert_eq!(p.application_name.as_deref(), Some("sapp"));
        let p = parse_env("postgresql://s:7/db?sslmode=disable", &env);
        assert_eq!(p.targets, vec![tcp("s", 7)]);
        assert_eq!(p.user, "envuser");
        assert_eq!(p.sslmode, SslMode::Disable);
    }

    #[test]
    fn fallback_application_name() {
        let p = parse("fallback_application_name=fb");
        assert_eq!(p.application_name.as_deref(), Some("fb"));
        let p = parse_env("fallback_application_name=fb", &[("PGAPPNAME", "env")]);
        assert_eq!(p.application_name.as_deref(), Some("env"));
        let p = parse("fallback_application_name=fb application_name=app");
        assert_eq!(p.application_name.as_deref(), Some("app"));
    }

    #[test]
    fn multi_host_lists() {
        let p = parse("host=a,b,/sock port=1,2,3");
        assert_eq!(
            p.targets,
            vec![
                tcp("a", 1),
                tcp("b", 2),
                (Host::Unix(PathBuf::from("/sock")), 3)
            ]
        );
        let p = parse("host=a,b port=7");
        assert_eq!(p.targets, vec![tcp("a", 7), tcp("b", 7)]);
        let p = parse("host=a,,b port=1,,3");
        assert_eq!(
            p.targets,
            vec![
                tcp("a", 1),
                (Host::Unix(default_socket_dir()), 5432),
                tcp("b", 3)
            ]
        );
        assert_eq!(
            err("host=a,b port=1,2,3"),
            "could not match 3 port numbers to 2 hosts\nhint: give one port for all hosts, or one port per host"
        );
    }

    #[test]
    fn hostaddr() {
        let p = parse("host=db.example hostaddr=192.0.2.1");
        assert_eq!(p.targets, vec![tcp("db.example", 5432)]);
        assert_eq!(p.hostaddrs, vec![Some(IpAddr::from([192, 0, 2, 1]))]);
        let p = parse("hostaddr=::1,192.0.2.2 port=1,2");
        assert_eq!(p.targets, vec![tcp("::1", 1), tcp("192.0.2.2", 2)]);
        assert_eq!(p.hostaddrs, vec![None, None]);
        assert_eq!(
            err("hostaddr=db.example"),
            "invalid value \"db.example\" for connection option \"hostaddr\" in connection string\nhint: hostaddr takes numeric IP addresses; put host names in host"
        );
        assert_eq!(
            err("host=a,b hostaddr=192.0.2.1"),
            "could not match 1 hostaddr values to 2 host names\nhint: give one hostaddr per host, or leave hostaddr out"
        );
    }

    #[test]
    fn uri_full() {
        let p = parse(
            "postgresql://us%40er:p%3Ass%20w@[::1]:5433/my%20db?application_name=app&sslmode=require&connect_timeout=5",
        );
        assert_eq!(p.user, "us@er");
        assert_eq!(pw(&p), Some("p:ss w"));
        assert_eq!(p.targets, vec![tcp("::1", 5433)]);
        assert_eq!(p.dbname.as_deref(), Some("my db"));
        assert_eq!(p.application_name.as_deref(), Some("app"));
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn uri_forms() {
        let p = parse("postgres://");
        assert_eq!(p.targets, vec![(Host::Unix(default_socket_dir()), 5432)]);
        assert_eq!(p.user, "alice");
        let p = parse("postgresql://db.example");
        assert_eq!(p.targets, vec![tcp("db.example", 5432)]);
        assert_eq!(p.dbname, None);
        let p = parse("postgresql://bob@db.example/");
        assert_eq!(p.user, "bob");
        assert_eq!(p.password, None);
        assert_eq!(p.dbname, None);
        let p = parse("postgres://h1:1,h2,[::1]:3,[fe80::1%25eth0]/db");
        assert_eq!(
            p.targets,
            vec![
                tcp("h1", 1),
                tcp("h2", 5432),
                tcp("::1", 3),
                tcp("fe80::1%eth0", 5432)
            ]
        );
        assert_eq!(p.dbname.as_deref(), Some("db"));
        let p = parse("postgresql:///db?host=/var/lib/postgresql&port=5434");
        assert_eq!(
            p.targets,
            vec![(Host::Unix(PathBuf::from("/var/lib/postgresql")), 5434)]
        );
        let p = parse("postgresql://%2Ftmp%2Fpg/db");
        assert_eq!(
            p.targets,
            vec![(Host::Unix(PathBuf::from("/tmp/pg")), 5432)]
        );
        let p = parse("postgresql://h/db?ssl=true");
        assert_eq!(p.sslmode, SslMode::Require);
        let p = parse("postgresql://h?dbname=x&user=u&password=p%26q");
        assert_eq!(p.dbname.as_deref(), Some("x"));
        assert_eq!(p.user, "u");
        assert_eq!(pw(&p), Some("p&q"));
        // The query overrides the authority, as libpq.
        let p = parse("postgresql://h:1/db?host=other&port=2");
        assert_eq!(p.targets, vec![tcp("other", 2)]);
        // Several hosts without ports: the port list is set (to defaults), so PGPORT is ignored.
        let p = parse_env("postgresql://a,b/db", &[("PGPORT", "9")]);
        assert_eq!(p.targets, vec![tcp("a", 5432), tcp("b", 5432)]);
        let p = parse_env("postgresql://a/db", &[("PGPORT", "9")]);
        assert_eq!(p.targets, vec![tcp("a", 9)]);
    }

    #[test]
    fn uri_lenient_userinfo_and_query_lists() {
        // An unencoded '@' in the password: the last '@' ends the userinfo.
        let p = parse("postgresql://u:p@ss@h/db");
        assert_eq!(p.user, "u");
        assert_eq!(pw(&p), Some("p@ss"));
        assert_eq!(p.targets, vec![tcp("h", 5432)]);
        let p = parse("postgresql://:secret@h");
        assert_eq!(p.user, "alice");
        assert_eq!(pw(&p), Some("secret"));
        let p = parse("postgresql:///?host=a,b&port=1,2&&user=x");
        assert_eq!(p.targets, vec![tcp("a", 1), tcp("b", 2)]);
        assert_eq!(p.user, "x");
    }

    #[test]
    fn uri_errors() {
        assert_eq!(
            err("postgresql://[::1/db"),
            "invalid connection URI \"postgresql://[::1/db\": missing \"]\" in IPv6 host address at offset 13\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://[]:5/db"),
            "invalid connection URI \"postgresql://[]:5/db\": IPv6 host address may not be empty at offset 13\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://[::1]x/db"),
            "invalid connection URI \"postgresql://[::1]x/db\": unexpected character \"x\" at offset 18 (expected \":\", \",\" or \"/\" after an IPv6 address)\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://h/db?sslmode"),
            "invalid connection URI \"postgresql://h/db?sslmode\": missing key/value separator \"=\" in query parameter at offset 18\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://h/db?a=b=c"),
            "invalid connection URI \"postgresql://h/db?a=b=c\": extra key/value separator \"=\" in query parameter at offset 18\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://h/db%zz"),
            "invalid connection URI \"postgresql://h/db%zz\": invalid percent-encoded token in the database name at offset 17\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://h/db%00"),
            "invalid connection URI \"postgresql://h/db%00\": forbidden value %00 in the database name at offset 17\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert_eq!(
            err("postgresql://h/db?foo=1"),
            "invalid connection option \"foo\"\nhint: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS for valid keywords"
        );
        assert_eq!(
            err("postgresql://h/db?ssl=false"),
            "invalid connection option \"ssl\"\nhint: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS for valid keywords"
        );
        assert_eq!(
            err("postgresql://h:abc/db"),
            "invalid value \"abc\" for connection option \"port\" in connection string\nhint: a port is a number from 1 to 65535"
        );
    }

    #[test]
    fn uri_errors_never_show_passwords() {
        let e = err("postgresql://u:sec%zzret@h/db");
        assert_eq!(
            e,
            "invalid connection URI \"postgresql://u:***@h/db\": invalid percent-encoded token in the password at offset 15\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        let e = err("postgresql://u:hunter2@[::1/db");
        assert_eq!(
            e,
            "invalid connection URI \"postgresql://u:***@[::1/db\": missing \"]\" in IPv6 host address at offset 19\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        let e = err("postgresql://h/db?password=hunter2&sslmode");
        assert_eq!(
            e,
            "invalid connection URI \"postgresql://h/db?password=***&sslmode\": missing key/value separator \"=\" in query parameter at offset 31\nhint: the form is postgresql://user:password@host:port/dbname?key=value; percent-encode special characters"
        );
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn keyword_errors_exact() {
        assert_eq!(
            err("host=a port"),
            "invalid connection string \"host=a port\": missing \"=\" after \"port\" at offset 7\nhint: use key=value pairs, or a postgresql:// URI"
        );
        assert_eq!(
            err("host=a 'x'"),
            "invalid connection string \"host=a 'x'\": missing \"=\" after \"'x'\" at offset 7\nhint: use key=value pairs, or a postgresql:// URI"
        );
        assert_eq!(
            err("host='abc"),
            "invalid connection string \"host='abc\": unterminated quoted string at offset 5\nhint: use key=value pairs, or a postgresql:// URI"
        );
        assert_eq!(
            err("hots=a"),
            "invalid connection option \"hots\"\nhint: did you mean \"host\"? see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS"
        );
        assert_eq!(
            err("HOST=a"),
            "invalid connection option \"HOST\"\nhint: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS for valid keywords"
        );
        assert_eq!(
            err("frobnicate=1"),
            "invalid connection option \"frobnicate\"\nhint: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS for valid keywords"
        );
        assert_eq!(
            err("=x"),
            "invalid connection option \"\"\nhint: see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS for valid keywords"
        );
        assert_eq!(
            err("sslmode=verify"),
            "invalid value \"verify\" for connection option \"sslmode\" in connection string\nhint: use one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        assert_eq!(
            err_env("", &[("PGSSLMODE", "bogus")]),
            "invalid value \"bogus\" for connection option \"sslmode\" from environment variable PGSSLMODE\nhint: use one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        for bad in ["abc", "0", "70000", "-1", "54x"] {
            assert_eq!(
                err(&format!("port={bad}")),
                format!("invalid value \"{bad}\" for connection option \"port\" in connection string\nhint: a port is a number from 1 to 65535")
            );
        }
        assert_eq!(
            err_env("", &[("PGPORT", "x")]),
            "invalid value \"x\" for connection option \"port\" from environment variable PGPORT\nhint: a port is a number from 1 to 65535"
        );
        assert_eq!(
            err("connect_timeout=soon"),
            "invalid value \"soon\" for connection option \"connect_timeout\" in connection string\nhint: give a whole number of seconds"
        );
        assert_eq!(
            err("channel_binding=maybe"),
            "invalid value \"maybe\" for connection option \"channel_binding\" in connection string\nhint: use one of disable, prefer, require"
        );
        assert_eq!(
            err("keepalives=yes"),
            "invalid value \"yes\" for connection option \"keepalives\" in connection string\nhint: use 1 to enable or 0 to disable"
        );
    }

    #[test]
    fn unsupported_options() {
        assert_eq!(
            err("service=mydb"),
            "connection option \"service\" in connection string is not supported by lifeboat\nhint: lifeboat does not read pg_service.conf; put host, port, user and dbname in the connection string"
        );
        assert_eq!(
            err_env("host=a", &[("PGSERVICE", "mydb")]),
            "connection option \"service\" from environment variable PGSERVICE is not supported by lifeboat\nhint: lifeboat does not read pg_service.conf; put host, port, user and dbname in the connection string"
        );
        assert_eq!(
            err("postgresql://h/db?service=x"),
            "connection option \"service\" in connection string is not supported by lifeboat\nhint: lifeboat does not read pg_service.conf; put host, port, user and dbname in the connection string"
        );
        assert_eq!(
            err("sslcrl=/crl.pem"),
            "connection option \"sslcrl\" in connection string is not supported by lifeboat\nhint: certificate revocation lists are not checked; remove sslcrl"
        );
        assert_eq!(
            err("gssencmode=require"),
            "connection option \"gssencmode\" in connection string is not supported by lifeboat\nhint: GSSAPI encryption is not implemented; use sslmode for encryption"
        );
        assert_eq!(
            err("sslnegotiation=direct"),
            "connection option \"sslnegotiation\" in connection string is not supported by lifeboat\nhint: direct TLS negotiation is not implemented; use sslnegotiation=postgres"
        );
        // Empty values of unsupported options are harmless.
        parse("service='' sslcrl=''");
    }

    #[test]
    fn real_libpq_options_are_accepted() {
        let p = parse(
            "host=h target_session_attrs=read-write gssencmode=prefer keepalives=0 keepalives_idle=30 \
             keepalives_interval=5 keepalives_count=3 channel_binding=disable sslcompression=1 \
             krbsrvname=postgres sslnegotiation=postgres client_encoding=UTF8 sslsni=1 \
             tcp_user_timeout=100 replication=database load_balance_hosts=disable sslpassword=x \
             ssl_min_protocol_version=TLSv1.2 sslcertmode=allow gsslib=gssapi",
        );
        assert!(!p.keepalives);
        assert_eq!(p.keepalives_idle, Some(Duration::from_secs(30)));
        assert_eq!(p.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(p.keepalives_count, Some(3));
        assert_eq!(p.channel_binding, ChannelBinding::Disable);
        assert_eq!(p.sslmode, SslMode::Prefer);
        // Ignored options do not pick up their environment variables either.
        parse_env(
            "",
            &[("PGTARGETSESSIONATTRS", "bogus"), ("PGSSLCOMPRESSION", "x")],
        );
    }

    #[test]
    fn requiressl_and_system_roots() {
        assert_eq!(parse("requiressl=1").sslmode, SslMode::Require);
        assert_eq!(
            parse("requiressl=1 sslmode=verify-ca").sslmode,
            SslMode::VerifyCa
        );
        assert_eq!(
            parse_env("", &[("PGREQUIRESSL", "1")]).sslmode,
            SslMode::Require
        );
        assert_eq!(parse("requiressl=0").sslmode, SslMode::Prefer);
        let p = parse("sslrootcert=system");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("system")));
        assert_eq!(
            err("sslrootcert=system sslmode=require"),
            "weak sslmode \"require\" may not be used with sslrootcert=system\nhint: use sslmode=verify-full, or name a root certificate file"
        );
    }

    #[test]
    fn connect_timeout_rules() {
        assert_eq!(
            parse("connect_timeout=1").connect_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse("connect_timeout=' 30 '").connect_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse("connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("connect_timeout=-5").connect_timeout, None);
    }

    #[test]
    fn sslmode_from_str_and_display() {
        for m in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(m.to_string().parse::<SslMode>().ok(), Some(m));
        }
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert_eq!(
            "VERIFY-FULL".parse::<SslMode>().map_err(|e| e.to_string()),
            Err("invalid value \"VERIFY-FULL\" for connection option \"sslmode\"\nhint: use one of disable, allow, prefer, require, verify-ca, verify-full".to_string())
        );
        assert!(SslMode::Require.requires_tls());
        assert!(!SslMode::Prefer.requires_tls());
    }

    #[test]
    fn unix_socket_path() {
        let h = Host::parse("/var/run/postgresql");
        assert_eq!(
            h.unix_socket_path(5433),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(Host::parse("db").unix_socket_path(5432), None);
    }

    #[test]
    fn errors_never_show_passwords() {
        let e = err("password='abc");
        assert_eq!(
            e,
            "invalid connection string \"password=***\": unterminated quoted string at offset 9\nhint: use key=value pairs, or a postgresql:// URI"
        );
        let e = err("password=hunter 2 host=x y");
        assert_eq!(
            e,
            "invalid connection string \"password=*** host=x y\": missing \"=\" after the value of a password option (quote values containing spaces) at offset 9\nhint: use key=value pairs, or a postgresql:// URI"
        );
        let e = err("password = 'se cr\\'et' host='x");
        assert_eq!(
            e,
            "invalid connection string \"password = *** host='x\": unterminated quoted string at offset 20\nhint: use key=value pairs, or a postgresql:// URI"
        );
        let e = err("user=u password=s3cr3t port");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = err("host=a sslpassword=s3cr3t x");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = err("password=s3cr3t\u{e9}\\\u{e9} port");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn debug_is_redacted() {
        let p = parse("host=h password=hunter2");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert_eq!(format!("{:?}", Password::new("x")), "<redacted>");
        let p = parse("postgresql://u:hunter2@h/db");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!p.redacted().contains("hunter2"));
    }

    #[test]
    fn redacted_display() {
        let p = parse("host=127.0.0.1 port=5432 user=lifeboat password=secret");
        assert_eq!(
            p.redacted(),
            "host=127.0.0.1 port=5432 user=lifeboat sslmode=prefer"
        );
        let p = parse(
            "host=a,/sock port=1,2 user='my user' dbname=x application_name='it\\'s' sslmode=verify-full sslrootcert=/r.crt connect_timeout=10 password=p",
        );
        assert_eq!(
            p.redacted(),
            "host=a,/sock port=1,2 user='my user' dbname=x application_name='it\\'s' sslmode=verify-full sslrootcert=/r.crt connect_timeout=10"
        );
        let mut back = parse(&p.redacted());
        back.password = p.password.clone();
        assert_eq!(back, p);
        let p = parse("host=h hostaddr=192.0.2.1");
        assert_eq!(
            p.redacted(),
            "host=h hostaddr=192.0.2.1 port=5432 user=alice sslmode=prefer"
        );
    }

    fn write_passfile(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).expect("create passfile");
        f.write_all(contents.as_bytes()).expect("write passfile");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("chmod passfile");
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }

    const PGPASS: &str = "# comment line\n\
        db1:5432:mydb:alice:pw1\n\
        *:*:replication:alice:replpw\n\
        localhost:5432:*:alice:sockpw\n\
        /custom/sock:5433:*:alice:customsock\n\
        h\\:x:*:*:*:esc\\:aped\\\\pw:trailing\n\
        \n\
        dbhost:5432:alice:alice:dbdefault\r\n\
        *:*:*:alice:fallback\n";

    fn lookup(
        p: &ConnParams,
        target: (Host, u16),
        replication: bool,
        home: &Path,
    ) -> Option<String> {
        let r = p
            .password_for(&target, replication, Some(home))
            .expect("password_for");
        assert_eq!(r.warning, None);
        r.password.map(|p| p.expose().to_string())
    }

    #[test]
    fn pgpass_matching() {
        let home = tempfile::tempdir().expect("tempdir");
        write_passfile(home.path(), ".pgpass", PGPASS, 0o600);
        let home = home.path();
        let p = parse("user=alice dbname=mydb");
        assert_eq!(
            lookup(&p, tcp("db1", 5432), false, home).as_deref(),
            Some("pw1")
        );
        assert_eq!(
            lookup(&p, tcp("db1", 5433), false, home).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            lookup(&p, tcp("db1", 5432), true, home).as_deref(),
            Some("replpw")
        );
        let sock = Host::Unix(PathBuf::from("/var/run/postgresql"));
        assert_eq!(
            lookup(&p, (sock, 5432), false, home).as_deref(),
            Some("sockpw")
        );
        let custom = Host::Unix(PathBuf::from("/custom/sock"));
        assert_eq!(
            lookup(&p, (custom, 5433), false, home).as_deref(),
            Some("customsock")
        );
        assert_eq!(
            lookup(&p, tcp("h:x", 1), false, home).as_deref(),
            Some("esc:aped\\pw")
        );
        assert_eq!(
            lookup(&p, tcp("hx", 1), false, home).as_deref(),
            Some("fallback")
        );
        // dbname defaults to the user name; CRLF line endings are tolerated.
        let p = parse("user=alice");
        assert_eq!(
            lookup(&p, tcp("dbhost", 5432), false, home).as_deref(),
            Some("dbdefault")
        );
        let p = parse("user=bob");
        assert_eq!(lookup(&p, tcp("db1", 5432), false, home), None);
        // An explicit password wins without reading the file.
        let p = parse("user=bob password=explicit");
        assert_eq!(
            lookup(&p, tcp("db1", 5432), false, home).as_deref(),
            Some("explicit")
        );
        let p = parse_env("user=bob", &[("PGPASSWORD", "fromenv")]);
        assert_eq!(
            lookup(&p, tcp("db1", 5432), false, home).as_deref(),
            Some("fromenv")
        );
    }

    #[test]
    fn pgpass_location() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_passfile(dir.path(), "custom", "*:*:*:*:fromcustom\n", 0o600);
        let empty_home = tempfile::tempdir().expect("tempdir");
        let p = parse(&format!("user=u passfile={}", file.display()));
        assert_eq!(
            lookup(&p, tcp("h", 1), false, empty_home.path()).as_deref(),
            Some("fromcustom")
        );
        let p = parse_env("user=u", &[("PGPASSFILE", &file.display().to_string())]);
        assert_eq!(
            lookup(&p, tcp("h", 1), false, empty_home.path()).as_deref(),
            Some("fromcustom")
        );
        // Missing file: no password, no warning, no error.
        let p = parse("user=u");
        assert_eq!(lookup(&p, tcp("h", 1), false, empty_home.path()), None);
        let r = p.password_for(&tcp("h", 1), false, None).expect("no home");
        assert_eq!(r, PasswordLookup::default());
    }

    #[cfg(unix)]
    #[test]
    fn pgpass_with_group_access_is_ignored_with_warning() {
        let home = tempfile::tempdir().expect("tempdir");
        let path = write_passfile(home.path(), ".pgpass", "*:*:*:*:leaky\n", 0o640);
        let p = parse("user=u");
        let r = p
            .password_for(&tcp("h", 1), false, Some(home.path()))
            .expect("password_for");
        assert_eq!(r.password, None);
        let shown = path.display().to_string();
        assert_eq!(
            r.warning,
            Some(format!("password file \"{shown}\" has group or world access; permissions should be u=rw (0600) or less; ignoring it\nhint: chmod 0600 \"{shown}\""))
        );
        assert!(!r.warning.unwrap_or_default().contains("leaky"));
    }

    #[test]
    fn pgpass_field_rules() {
        assert_eq!(pgpass_field_matches("*:rest", "anything"), Some("rest"));
        assert_eq!(pgpass_field_matches("abc:rest", "abc"), Some("rest"));
        assert_eq!(pgpass_field_matches("abc:rest", "ab"), None);
        assert_eq!(pgpass_field_matches("ab:rest", "abc"), None);
        assert_eq!(pgpass_field_matches("a\\:b:rest", "a:b"), Some("rest"));
        assert_eq!(pgpass_field_matches("a\\\\:rest", "a\\"), Some("rest"));
        assert_eq!(pgpass_field_matches("*x:rest", "*x"), Some("rest"));
        assert_eq!(pgpass_field_matches("abc", "abc"), None);
        assert_eq!(pgpass_unescape("p\\:w\\\\d:ignored"), "p:w\\d");
        assert_eq!(pgpass_unescape("plain"), "plain");
    }
}
