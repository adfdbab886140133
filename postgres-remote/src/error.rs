//! The crate's errors and their mapping onto [`RemoteError`].

use sync_traits::RemoteError;
use thiserror::Error;
use tokio_postgres::error::SqlState;

/// Errors of [`crate::PostgresRemote`]'s own API (connect, install, enable_sync,
/// compact). At the [`sync_traits::RemoteStore`] boundary they become
/// [`RemoteError`]s: network failures and timeouts are
/// [`RemoteError::Transient`], refused credentials [`RemoteError::Auth`], answers
/// that break the protocol [`RemoteError::Malformed`], the rest
/// [`RemoteError::Permanent`].
#[derive(Debug, Error)]
pub enum PgError {
    /// The connection string could not be parsed.
    #[error("invalid connection string: {0}")]
    Config(String),
    /// The server refused the credentials (or the role may not log in).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Connecting, or a call, took longer than its limit.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A network or server-side failure worth retrying (connection lost,
    /// serialisation failure, deadlock, statement or lock timeout, shutdown,
    /// too many connections).
    #[error("transient database error: {0}")]
    Transient(String),
    /// The server's TLS certificate was refused (untrusted, expired, wrong name):
    /// retrying will not help until the configuration changes.
    #[error("TLS: {0}")]
    Tls(String),
    /// The tidemark schema is missing, or its version is not the one this client
    /// speaks.
    #[error("tidemark schema: {0}")]
    Schema(String),
    /// The server answered something that does not follow the protocol.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// An argument this crate refuses (an unknown table, an id column of the wrong
    /// type, a name that is not an identifier).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Any other database error (permission, constraint, syntax).
    #[error("database error: {0}")]
    Db(String),
}

impl PgError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PgError::Timeout(_) | PgError::Transient(_))
    }
}

impl From<PgError> for RemoteError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Auth(m) => RemoteError::Auth(m),
            PgError::Timeout(_) | PgError::Transient(_) => {
                RemoteError::Transient(e.to_string().into())
            }
            PgError::Malformed(m) => RemoteError::Malformed(m),
            other => RemoteError::Permanent(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        classify(&e)
    }
}

/// The text of a database error, with its SQLSTATE when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The driver's text alone ("error performing TLS handshake") hides the
            // cause; append the source chain.
            let mut text = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                text.push_str(": ");
                text.push_str(&s.to_string());
                src = s.source();
            }
            text
        }
    }
}

/// Sorts a driver error: no code (I/O, closed connection, protocol) is transient,
/// except a refused server certificate;
/// SQLSTATE classes 08 (connection), 40 (serialisation, deadlock), 53
/// (resources), 57 (cancel, shutdown: includes statement timeouts), 58 (system)
/// and lock timeouts are transient; 28 is auth; the rest is permanent.
pub(crate) fn classify(e: &tokio_postgres::Error) -> PgError {
    let text = describe(e);
    let Some(code) = e.code() else {
        if text.contains("invalid peer certificate") {
            return PgError::Tls(text);
        }
        return PgError::Transient(text);
    };
    let c = code.code();
    if c.starts_with("28") {
        PgError::Auth(text)
    } else if *code == SqlState::LOCK_NOT_AVAILABLE
        || ["08", "40", "53", "57", "58"]
            .iter()
            .any(|p| c.starts_with(p))
    {
        PgError::Transient(text)
    } else if c == "TM001" {
        PgError::Schema(text)
    } else {
        PgError::Db(text)
    }
}
