//! Credentials and token lifetime.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// How a [`crate::PocketBaseRemote`] authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// A superuser (`_superusers` collection) with password.
    Superuser {
        /// Email.
        email: String,
        /// Password.
        password: String,
    },
    /// A record of an auth collection (e.g. `users`) with password.
    User {
        /// Auth collection name.
        collection: String,
        /// Email or other identity field.
        identity: String,
        /// Password.
        password: String,
    },
    /// A token obtained elsewhere. It is refreshed before it expires; once it is
    /// invalid, calls fail with `RemoteError::Auth`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Superuser { email, .. } => write!(f, "Superuser({email})"),
            Credentials::User {
                collection,
                identity,
                ..
            } => write!(f, "User({collection}/{identity})"),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
}

impl Credentials {
    /// The auth collection to log in to, if the credentials have a password.
    pub(crate) fn password_login(&self) -> Option<(&str, &str, &str)> {
        match self {
            Credentials::Superuser { email, password } => Some(("_superusers", email, password)),
            Credentials::User {
                collection,
                identity,
                password,
            } => Some((collection, identity, password)),
            Credentials::Token(_) => None,
        }
    }
}

/// A bearer token and what its (unverified) JWT payload says.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub value: String,
    /// Expiry, unix seconds.
    pub exp: Option<u64>,
    /// Auth collection id, used for auth-refresh.
    pub collection_id: Option<String>,
    /// The authenticated record's id (the payload's `id`).
    pub record_id: Option<String>,
    /// When we got it, unix seconds.
    pub obtained: u64,
}

/// Refresh this long before expiry at most (and at a quarter of the lifetime left
/// for short-lived tokens).
const REFRESH_MARGIN_SECS: u64 = 300;

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Token {
    /// Reads `exp` and `collectionId` from the JWT payload without verifying it (the
    /// server does that); a token that is not a JWT simply has no known expiry.
    pub(crate) fn new(value: String) -> Self {
        let payload = value
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let exp = payload
            .as_ref()
            .and_then(|p| p.get("exp"))
            .and_then(|v| v.as_u64());
        let collection_id = payload
            .as_ref()
            .and_then(|p| p.get("collectionId"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let record_id = payload
            .as_ref()
            .and_then(|p| p.get("id"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Self {
            value,
            exp,
            collection_id,
            record_id,
            obtained: now_secs(),
        }
    }

    /// Whether the token should be refreshed now.
    pub(crate) fn needs_refresh(&self, now: u64) -> bool {
        let Some(exp) = self.exp else { return false };
        let margin = REFRESH_MARGIN_SECS.min(exp.saturating_sub(self.obtained) / 4);
        exp <= now.saturating_add(margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode("{\"alg\":\"HS256\"}"),
            e.encode(payload)
        )
    }

    #[test]
    fn reads_exp_and_collection() {
        let mut t = Token::new(jwt(r#"{"exp":10000,"collectionId":"pbc_1","id":"x"}"#));
        assert_eq!(t.exp, Some(10000));
        assert_eq!(t.collection_id.as_deref(), Some("pbc_1"));
        assert_eq!(t.record_id.as_deref(), Some("x"));
        t.obtained = 0;
        assert!(t.needs_refresh(9800));
        assert!(!t.needs_refresh(9600));
        // A 20 s token refreshes with 5 s left.
        t.obtained = 9980;
        assert!(!t.needs_refresh(9994));
        assert!(t.needs_refresh(9995));
        assert!(t.needs_refresh(20000));
    }

    #[test]
    fn garbage_token_has_no_expiry() {
        for v in ["", "abc", "a.b.c", "a.!!!.c"] {
            let t = Token::new(v.into());
            assert_eq!(t.exp, None);
            assert!(!t.needs_refresh(u64::MAX / 2));
        }
    }
}
