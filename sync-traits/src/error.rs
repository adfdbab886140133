//! Errors at each boundary: local store, remote, engine.

use thiserror::Error;

use crate::record::Watermark;

/// What went wrong beneath an error: a message and, when there is one, the error
/// that caused it (the database's, the HTTP client's), kept as its
/// [`source`](std::error::Error::source) so an application can walk the chain
/// (and downcast, e.g. to `rusqlite::Error` or `reqwest::Error`). Displays as the
/// message.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause with a message and the error beneath it.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A cause that is the error `e` itself: its message, and `e` as the source.
    pub fn of<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Self {
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A message with no error beneath it.
impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

/// A message with no error beneath it.
impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// A string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid id {value:?}: {reason}")]
pub struct InvalidId {
    /// The offending value (truncated to 64 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Converting between a record's JSON fields and a typed struct failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FieldsError {
    /// serde could not (de)serialise.
    #[error("record fields do not match the type: {0}")]
    Serde(#[source] serde_json::Error),
    /// The value did not serialise to a JSON object.
    #[error("a record must serialise to a JSON object, not a {0}")]
    NotAnObject(&'static str),
}

/// Errors from a [`crate::LocalStore`]. A failed call changes nothing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An id is not in PocketBase's format.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The collection is not known to this store.
    #[error("unknown collection {0:?}")]
    UnknownCollection(String),
    /// The record's fields do not fit the collection's schema.
    #[error("record {collection}/{id} does not fit the schema: {message}")]
    Schema {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// What does not fit.
        message: String,
    },
    /// The database file is not a tidemark store, or is damaged.
    #[error("store is corrupt or not a tidemark store: {0}")]
    Corrupt(String),
    /// The store is busy or locked; retrying later may succeed. The database's
    /// error, when there is one, is the source.
    #[error("store busy: {0}")]
    Busy(#[source] Cause),
    /// Any other backend failure. The backend's error (rusqlite's, sled's, an I/O
    /// error), when there is one, is the source.
    #[error("store backend error: {0}")]
    Backend(#[source] Cause),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }
}

/// Errors from a [`crate::RemoteStore`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The caller's watermark is older than the server's retention horizon; the
    /// client must resync fully.
    #[error("watermark {since:?} is older than the server's horizon {horizon:?}; a full resync is needed")]
    WatermarkExpired {
        /// What the client asked from.
        since: Watermark,
        /// The oldest watermark the server can still serve.
        horizon: Watermark,
    },
    /// Credentials missing, wrong or expired (including a token the server silently
    /// treated as a guest). Re-authenticate; nothing was changed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Network failure, timeout, connection reset, 5xx, rate limit: retry later.
    /// The transport's error (reqwest's, tokio-postgres'), when there is one, is
    /// the source.
    #[error("transient remote error: {0}")]
    Transient(#[source] Cause),
    /// The server answered something that does not follow the protocol.
    #[error("malformed response from remote: {0}")]
    Malformed(String),
    /// A request or response exceeded a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Any other permanent failure.
    #[error("remote error: {0}")]
    Permanent(String),
    /// The remote cannot do what was asked (a filter, for a remote that cannot
    /// filter: [`crate::RemoteStore::pull_scoped`]); asking again will not help.
    #[error("not supported by this remote: {0}")]
    Unsupported(String),
}

impl RemoteError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Transient(_))
    }
}

/// Errors from [`crate::SyncEngine::sync`]. Local data is never discarded on error:
/// whatever was not acknowledged stays in the outbox for the next sync.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// The remote failed (after retries, for transient errors).
    #[error("remote: {0}")]
    Remote(#[from] RemoteError),
    /// The remote broke the protocol in a way the engine detected.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The sync was cancelled ([`crate::SyncEngine::sync_until`]) before it
    /// finished. What it settled stays settled; the rest goes out on the next sync
    /// (a push whose answer was not read is answered "already applied" then).
    #[error("sync cancelled")]
    Cancelled,
    /// A sync failed after doing part of its work: `done` says what it did (pushed,
    /// pulled, conflicts, rejections) before `error` stopped it. Everything in
    /// `done` is settled in the store.
    #[error("{error} (after {} pushed, {} pulled, {} conflicts, {} rejected)", done.pushed, done.pulled, done.conflicts, done.rejected)]
    Incomplete {
        /// What the sync did before it failed.
        done: Box<crate::engine::SyncReport>,
        /// Why it stopped.
        #[source]
        error: Box<SyncError>,
    },
}

impl SyncError {
    /// Whether calling `sync()` again later may succeed without intervention.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Store(e) => e.is_transient(),
            SyncError::Remote(e) => e.is_transient(),
            SyncError::Protocol(_) => false,
            SyncError::Cancelled => false,
            SyncError::Incomplete { error, .. } => error.is_transient(),
        }
    }

    /// The error that stopped the sync, without the [`SyncError::Incomplete`]
    /// wrapper.
    pub fn cause(&self) -> &SyncError {
        match self {
            SyncError::Incomplete { error, .. } => error.cause(),
            e => e,
        }
    }

    /// What a failed sync did before it stopped, if it did anything.
    pub fn done(&self) -> Option<&crate::engine::SyncReport> {
        match self {
            SyncError::Incomplete { done, .. } => Some(done),
            _ => None,
        }
    }

    /// Whether the remote refused the credentials (sign in again).
    pub fn is_auth(&self) -> bool {
        matches!(self.cause(), SyncError::Remote(RemoteError::Auth(_)))
    }

    /// `error`, wrapped with `done` if the sync did anything before it.
    pub(crate) fn after(done: crate::engine::SyncReport, error: SyncError) -> SyncError {
        let did_something = done.pushed > 0
            || done.pulled > 0
            || done.conflicts > 0
            || done.rejected > 0
            || done.resynced;
        if did_something && !matches!(error, SyncError::Incomplete { .. }) {
            SyncError::Incomplete {
                done: Box::new(done),
                error: Box::new(error),
            }
        } else {
            error
        }
    }
}
