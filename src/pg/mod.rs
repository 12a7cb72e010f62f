//! The native PostgreSQL client: connection, TLS, authentication and the replication
//! commands. It knows nothing about storage.

pub mod basebackup;
pub mod conn;
pub mod conninfo;
pub mod protocol;
pub mod replication;
pub mod sqlstate;
pub mod tls;
pub mod tools;

pub use conn::{Connection, QueryResult};

use std::io;
use std::time::Duration;

use thiserror::Error;

use crate::core::wal::WalError;
use crate::pg::conninfo::{ConnInfoError, SslMode};
use crate::pg::protocol::{ErrorFields, ProtocolError};
use crate::pg::sqlstate::SqlState;
use crate::pg::tls::TlsConfigError;

/// Errors from talking to PostgreSQL. Messages name the server and, where the cause is
/// usually a setting, carry a hint.
///
/// An underlying error (I/O, TLS, connection string, framing) is kept, not flattened into a
/// string: it is the `#[source]` and the message does not repeat it, so `{:#}` (anyhow)
/// prints each link once, outermost first; or, where the variant *is* that error, the variant
/// is `transparent`. A hint always ends the text, so when a hint must follow the underlying
/// error, the last link carries it (see [`ConnectError`]).
#[derive(Debug, Error)]
pub enum PgError {
    /// No target accepted the connection (the last target's failure).
    #[error("could not connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: ConnectError,
    },
    /// The TLS client configuration could not be built (certificate files, sslmode).
    #[error(transparent)]
    TlsConfig(TlsConfigError),
    /// The TLS handshake failed (certificate verification, protocol).
    #[error("TLS handshake with {target} failed")]
    TlsHandshake {
        target: String,
        #[source]
        source: io::Error,
    },
    /// The server answered `N` to SSLRequest, and sslmode requires TLS.
    #[error("server {target} does not support TLS, but sslmode={sslmode} requires it\nhint: enable ssl on the server, or lower sslmode")]
    TlsRefused { target: String, sslmode: SslMode },
    #[error("authentication as \"{user}\" failed: {reason}\nhint: {hint}")]
    Auth {
        user: String,
        reason: String,
        hint: &'static str,
    },
    /// The SCRAM exchange failed on our side (a malformed server message).
    #[error("SCRAM")]
    Scram(#[source] io::Error),
    /// The server's SCRAM signature is wrong. `cause` sits inside the message, so it is a
    /// field, not a source.
    #[error(
        "SCRAM server signature did not verify ({cause}): the server may not know the password"
    )]
    ScramSignature { cause: io::Error },
    /// An ErrorResponse.
    #[error("server error: {}{}", .fields, hint_for(.fields).map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Server { fields: ErrorFields },
    /// The replication slot to stream from does not exist (READ_REPLICATION_SLOT reports no
    /// restart position), and lifeboat is not to create it.
    #[error("server error: replication slot \"{slot}\" does not exist\nhint: create it, or set postgres.create_slot = true")]
    SlotMissing { slot: String },
    /// The server broke the protocol, or answered in a way lifeboat cannot use.
    #[error("{0}")]
    Protocol(String),
    /// The bytes from the server do not frame into messages.
    #[error(transparent)]
    Framing(#[from] ProtocolError),
    /// The server reported a setting lifeboat cannot use (`wal_segment_size`).
    #[error(transparent)]
    Setting(WalError),
    /// A frontend message could not be encoded (postgres-protocol refuses an embedded NUL
    /// or an oversized message).
    #[error(transparent)]
    Encode(io::Error),
    #[error("reading from {target}")]
    Read {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("writing to {target}")]
    Write {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("server {0} closed the connection")]
    Closed(String),
    /// The connection parameters, or the password lookup, are wrong.
    #[error(transparent)]
    ConnInfo(ConnInfoError),
}

/// Why one connection attempt failed. It is the last link of [`PgError::Connect`]'s chain,
/// so it carries the hint, which must come after the cause.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Connecting, or the first exchange (SSLRequest, startup), failed. The I/O error sits
    /// before the hint, so it is printed here and is not a further link.
    #[error("{0}\nhint: {CONNECT_HINT}")]
    Io(io::Error),
    #[error("timed out after {0:?}\nhint: {CONNECT_HINT}")]
    TimedOut(Duration),
    #[error("no host to connect to\nhint: {CONNECT_HINT}")]
    NoHost,
}

const CONNECT_HINT: &str =
    "is PostgreSQL running there and accepting TCP/IP connections? check postgres.conninfo";

impl PgError {
    pub fn from_server(fields: ErrorFields) -> PgError {
        PgError::Server { fields }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<SqlState> {
        match self {
            PgError::Server { fields } => fields.code,
            _ => None,
        }
    }

    /// Configuration problems that retrying will not fix.
    pub fn is_permanent(&self) -> bool {
        match self {
            PgError::Auth { .. }
            | PgError::TlsConfig(_)
            | PgError::TlsHandshake { .. }
            | PgError::TlsRefused { .. }
            | PgError::ConnInfo(_)
            | PgError::SlotMissing { .. } => true,
            PgError::Server { fields } => matches!(
                fields.code,
                Some(
                    SqlState::INVALID_PASSWORD
                        | SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                        | SqlState::INSUFFICIENT_PRIVILEGE
                        | SqlState::UNDEFINED_OBJECT
                        | SqlState::INVALID_CATALOG_NAME
                )
            ),
            _ => false,
        }
    }
}

/// Hints for the server errors an operator meets when setting up a streamer.
fn hint_for(f: &ErrorFields) -> Option<String> {
    if let Some(h) = &f.hint {
        return Some(h.clone());
    }
    let m = f.message.as_str();
    Some(match f.code? {
        SqlState::INVALID_PASSWORD => "check the password in postgres.conninfo, PGPASSWORD or ~/.pgpass".into(),
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION if m.contains("pg_hba.conf") => {
            "add a line like \"host replication lifeboat 10.0.0.0/8 scram-sha-256\" to pg_hba.conf (the database column must be the keyword replication) and reload".into()
        }
        SqlState::INSUFFICIENT_PRIVILEGE
            if m.contains("replication")
                || m.contains("REPLICATION")
                || m.contains("WAL sender") =>
        {
            "grant it with ALTER ROLE ... WITH REPLICATION".into()
        }
        SqlState::TOO_MANY_CONNECTIONS => "raise max_wal_senders (or max_connections) on the server, or stop another replication client".into(),
        SqlState::UNDEFINED_OBJECT if m.contains("replication slot") => {
            "create it with lifeboat (set postgres.create_slot = true) or with SELECT pg_create_physical_replication_slot(...)".into()
        }
        SqlState::UNDEFINED_FILE => "the server already recycled that WAL: use a replication slot so it keeps WAL until lifeboat has archived it, then take a new base backup".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// What the binary prints: the chain, outermost first.
    fn printed(e: PgError) -> String {
        format!("{:#}", anyhow::Error::new(e))
    }

    #[test]
    fn underlying_errors_are_sources_printed_once() {
        let e = PgError::Read {
            target: "db:5432".into(),
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(printed(e), "reading from db:5432: connection reset");

        let e = PgError::TlsConfig(TlsConfigError::Read {
            what: "root certificate",
            path: PathBuf::from("/etc/root.crt"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert_eq!(
            printed(e),
            "could not read root certificate file \"/etc/root.crt\": permission denied"
        );

        let e = PgError::Scram(io::Error::new(io::ErrorKind::InvalidInput, "invalid nonce"));
        assert_eq!(printed(e), "SCRAM: invalid nonce");
    }

    #[test]
    fn underlying_errors_can_be_downcast() {
        let e = anyhow::Error::new(PgError::Write {
            target: "db:5432".into(),
            source: io::Error::from(io::ErrorKind::BrokenPipe),
        });
        let io = e.chain().find_map(|c| c.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::BrokenPipe));

        let e = anyhow::Error::new(PgError::Connect {
            target: "db:5432".into(),
            source: ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
        });
        assert!(matches!(
            e.chain().find_map(|c| c.downcast_ref::<ConnectError>()),
            Some(ConnectError::Io(io)) if io.kind() == io::ErrorKind::ConnectionRefused
        ));
    }

    #[test]
    fn a_connect_hint_follows_its_cause() {
        let e = PgError::Connect {
            target: "db:5432".into(),
            source: ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            printed(e),
            "could not connect to db:5432: connection refused\nhint: is PostgreSQL running there and accepting TCP/IP connections? check postgres.conninfo"
        );
        let e = PgError::Connect {
            target: "db:5432".into(),
            source: ConnectError::TimedOut(Duration::from_secs(10)),
        };
        assert_eq!(
            printed(e),
            "could not connect to db:5432: timed out after 10s\nhint: is PostgreSQL running there and accepting TCP/IP connections? check postgres.conninfo"
        );
    }

    #[test]
    fn a_missing_slot_is_its_own_kind_and_permanent() {
        let e = PgError::SlotMissing {
            slot: "lifeboat".into(),
        };
        assert!(e.is_permanent());
        assert_eq!(e.code(), None);
        assert_eq!(
            e.to_string(),
            "server error: replication slot \"lifeboat\" does not exist\nhint: create it, or set postgres.create_slot = true"
        );
    }
}
