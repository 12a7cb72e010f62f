//! The native PostgreSQL client: connection, TLS, authentication and the replication
//! commands. It knows nothing about storage.

pub mod basebackup;
pub mod conn;
pub mod conninfo;
pub mod protocol;
pub mod replication;
pub mod sqlstate;
pub mod tls;

pub use conn::{Connection, QueryResult};

use crate::pg::protocol::{ErrorFields, ProtocolError};
use crate::pg::sqlstate::SqlState;
use thiserror::Error;

/// Errors from talking to PostgreSQL. Messages name the server and, where the cause is
/// usually a setting, carry a hint.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("could not connect to {target}: {reason} (hint: is PostgreSQL running there and accepting TCP/IP connections? check postgres.conninfo)")]
    Connect { target: String, reason: String },
    #[error("{0}")]
    Tls(String),
    #[error("authentication as \"{user}\" failed: {reason} (hint: {hint})")]
    Auth {
        user: String,
        reason: String,
        hint: String,
    },
    #[error("server error: {}{}", .fields, hint_for(.fields).map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Server { fields: ErrorFields },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(String),
    #[error("server {0} closed the connection")]
    Closed(String),
    #[error("{0}")]
    ConnInfo(String),
}

impl From<ProtocolError> for PgError {
    fn from(e: ProtocolError) -> Self {
        PgError::Protocol(e.to_string())
    }
}

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
            PgError::Auth { .. } | PgError::Tls(_) | PgError::ConnInfo(_) => true,
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
