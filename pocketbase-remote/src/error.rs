//! Typed errors for what the server sends, and their mapping onto [`RemoteError`].

use sync_traits::{Cause, RemoteError};
use thiserror::Error;

/// Something the server sent that does not follow the tidemark protocol. Converted
/// into [`RemoteError::Malformed`] or [`RemoteError::TooLarge`] at the trait boundary;
/// never a panic.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The body is not the JSON shape expected.
    #[error("{context}: invalid JSON: {source}")]
    Json {
        /// Which response.
        context: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A required member is missing or has the wrong type.
    #[error("{context}: missing or invalid `{field}`")]
    Field {
        /// Which response.
        context: String,
        /// The member.
        field: String,
    },
    /// A value is out of the range the protocol allows (e.g. a seq outside the
    /// requested window).
    #[error("{context}: {message}")]
    Invalid {
        /// Which response.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// The response body exceeded the configured limit.
    #[error("{context}: response larger than {limit} bytes")]
    TooLarge {
        /// Which response.
        context: String,
        /// The limit.
        limit: usize,
    },
}

impl From<ProtocolError> for RemoteError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::TooLarge { .. } => RemoteError::TooLarge(e.to_string()),
            other => RemoteError::Malformed(other.to_string()),
        }
    }
}

/// Maps a transport error from reqwest: everything on the wire is worth a retry
/// except a request we could not even build.
pub(crate) fn transport(e: reqwest::Error) -> RemoteError {
    if e.is_builder() {
        RemoteError::Permanent(format!("invalid request: {e}"))
    } else {
        RemoteError::Transient(Cause::of(e))
    }
}

/// A PocketBase error body `{"data":{...},"message":"...","status":N}`; all members
/// optional because we only use it for messages.
#[derive(Debug, Default, Clone)]
pub(crate) struct ApiError {
    pub message: String,
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub(crate) fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => Self::from_map(&m),
            _ => Self {
                message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
                data: Default::default(),
            },
        }
    }

    pub(crate) fn from_value(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Object(m) => Self::from_map(m),
            _ => Self::default(),
        }
    }

    fn from_map(m: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            message: m
                .get("message")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .chars()
                .take(1000)
                .collect(),
            data: m
                .get("data")
                .and_then(|v| v.as_object())
                .cloned()
                .unwrap_or_default(),
        }
    }
}
