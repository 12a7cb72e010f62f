//! SQLSTATE error codes by name, as tokio-postgres's `error/sqlstate.rs` has them: the
//! server's `C` field becomes a [`SqlState`] once, when an ErrorResponse is parsed, and every
//! decision compares it with a named constant (`SqlState::UNDEFINED_OBJECT`, not `"42704"`).
//!
//! Only the codes lifeboat acts on are named (PostgreSQL's `errcodes.txt` has the rest); any
//! other well-formed code is still carried, compared and printed.

use std::fmt;
use std::str::FromStr;

/// A SQLSTATE: five characters, digits and upper-case ASCII letters.
///
/// The constants are usable as patterns: `matches!(code, SqlState::INVALID_PASSWORD | ...)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `28000` invalid_authorization_specification: pg_hba.conf has no line for this
    /// connection, or rejects it.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState(*b"28000");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
    /// `3D000` invalid_catalog_name: the database does not exist.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState(*b"3D000");
    /// `42501` insufficient_privilege (e.g. a role without REPLICATION).
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    /// `42704` undefined_object (e.g. a replication slot that does not exist).
    pub const UNDEFINED_OBJECT: SqlState = SqlState(*b"42704");
    /// `42710` duplicate_object (e.g. a replication slot that already exists).
    pub const DUPLICATE_OBJECT: SqlState = SqlState(*b"42710");
    /// `53300` too_many_connections (including max_wal_senders).
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
    /// `55000` object_not_in_prerequisite_state (e.g. PostgreSQL 18's "can no longer
    /// access replication slot" for a slot the server invalidated).
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState(*b"55000");
    /// `58P01` undefined_file (e.g. the requested WAL segment has already been removed).
    pub const UNDEFINED_FILE: SqlState = SqlState(*b"58P01");

    /// The five-character code, as the server sent it.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a SqlState holds only ASCII (checked by from_str)")
    }
}

/// A `C` field that is not five digits or upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SQLSTATE {0:?}")]
pub struct InvalidSqlState(pub String);

impl FromStr for SqlState {
    type Err = InvalidSqlState;

    fn from_str(s: &str) -> Result<SqlState, InvalidSqlState> {
        let b: [u8; 5] = s
            .as_bytes()
            .try_into()
            .map_err(|_| InvalidSqlState(s.to_string()))?;
        if b.iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            Ok(SqlState(b))
        } else {
            Err(InvalidSqlState(s.to_string()))
        }
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_code() {
        let c: SqlState = "42704".parse().unwrap();
        assert_eq!(c, SqlState::UNDEFINED_OBJECT);
        assert_eq!(c.to_string(), "42704");
        assert_eq!(format!("{c:?}"), "SqlState(42704)");
        assert_eq!("58P01".parse(), Ok(SqlState::UNDEFINED_FILE));
        assert_eq!("XX000".parse::<SqlState>().unwrap().code(), "XX000");
    }

    #[test]
    fn rejects_what_is_not_a_sqlstate() {
        for bad in ["", "4270", "427041", "42p01", "42 04", "4270é"] {
            assert_eq!(
                bad.parse::<SqlState>(),
                Err(InvalidSqlState(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn constants_are_patterns() {
        let permanent = |c: SqlState| {
            matches!(
                c,
                SqlState::INVALID_PASSWORD | SqlState::INSUFFICIENT_PRIVILEGE
            )
        };
        assert!(permanent("28P01".parse().unwrap()));
        assert!(!permanent(SqlState::TOO_MANY_CONNECTIONS));
    }
}
