//! The client: configuration, authentication, HTTP plumbing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sync_traits::{
    async_trait, Page, PullMode, PushChange, PushOutcome, RecordId, RemoteError, RemoteState,
    RemoteStore, Watermark,
};
use tokio::sync::Mutex;

use crate::auth::{now_secs, Credentials, Token};
use crate::error::{transport, ApiError, ProtocolError};

/// The protocol version of the server extension this client speaks (the head
/// route's `protocol`). Version 1 was the extension before the handshake, whose head
/// route sent no version. [`Builder::connect`] (and every later head read) refuses a
/// server with another version, or none, with a [`RemoteError::Permanent`] whose
/// message starts with [`PROTOCOL_MISMATCH`].
pub const PROTOCOL_VERSION: u64 = 2;

/// The start of the message of the [`RemoteError::Permanent`] that reports a server
/// extension speaking another protocol version; see [`is_protocol_mismatch`].
pub const PROTOCOL_MISMATCH: &str = "tidemark protocol mismatch: ";

/// Whether `e` is the refusal of a server whose tidemark extension speaks another
/// protocol version than this client (the message says which side to upgrade).
pub fn is_protocol_mismatch(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Permanent(m) if m.starts_with(PROTOCOL_MISMATCH))
}

/// The refusal for a server that reports protocol `server` (`None`: no version).
fn protocol_mismatch(server: Option<u64>, pocketbase: &str) -> RemoteError {
    let msg = match server {
        None => format!(
            "the server's tidemark extension is older than protocol 2 (its head route sends no \
             protocol version; this client speaks {PROTOCOL_VERSION}): upgrade the server \
             (pb_hooks and pb_migrations of pocketbase-remote)"
        ),
        Some(v) if v < PROTOCOL_VERSION => format!(
            "the server's tidemark extension speaks protocol {v}, this client \
             {PROTOCOL_VERSION}: upgrade the server (pb_hooks and pb_migrations of \
             pocketbase-remote) on PocketBase {pocketbase}"
        ),
        Some(v) => format!(
            "the server's tidemark extension speaks protocol {v}, this client \
             {PROTOCOL_VERSION}: upgrade the client (the pocketbase-remote crate)"
        ),
    };
    RemoteError::Permanent(format!("{PROTOCOL_MISMATCH}{msg}"))
}

/// The default time limit of one HTTP request ([`Builder::timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time limit of opening a connection ([`Builder::connect_timeout`]).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`PocketBaseRemote::enable_sync`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnabledCollection {
    /// The collection's name.
    pub collection: String,
    /// Its PocketBase id.
    pub id: String,
    /// The owner field it is synced with (`""`: none).
    pub owner: String,
    /// Records given a seq (0 when it was synced already).
    pub backfilled: u64,
    /// The server's head after the enable.
    pub head: Watermark,
}

/// Builds a [`PocketBaseRemote`].
#[derive(Debug)]
pub struct Builder {
    url: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    connect_timeout: Duration,
    max_response_bytes: usize,
    collections: Option<Vec<String>>,
}

impl Builder {
    /// Authenticates as a superuser.
    pub fn superuser(mut self, email: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Superuser {
            email: email.into(),
            password: password.into(),
        });
        self
    }

    /// Authenticates as a record of the auth collection `collection` (e.g. `users`).
    pub fn user(
        mut self,
        collection: impl Into<String>,
        identity: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials::User {
            collection: collection.into(),
            identity: identity.into(),
            password: password.into(),
        });
        self
    }

    /// Uses a token obtained elsewhere (refreshed before expiry; no re-login).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Token(token.into()));
        self
    }

    /// Uses these credentials.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// Time limit of each HTTP request, from sending it to the end of its response
    /// body (default [`DEFAULT_REQUEST_TIMEOUT`], 30 s). A request over it fails with
    /// `RemoteError::Transient`. Not applied to the realtime stream.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Time limit of opening a connection (default [`DEFAULT_CONNECT_TIMEOUT`], 5 s),
    /// the realtime stream's included. A connection not made in time fails with
    /// `RemoteError::Transient`.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Largest response body accepted (default 64 MiB); bigger ones fail with
    /// `RemoteError::TooLarge`.
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.max_response_bytes = n;
        self
    }

    /// Synced collections to pull. Default: the list the server reports in its head
    /// route (its `TIDEMARK_COLLECTIONS`).
    pub fn collections<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.collections = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Authenticates and reads the server's head (protocol version, batch limit,
    /// collections).
    ///
    /// Fails with `RemoteError::Auth` for wrong credentials or an invalid token,
    /// `RemoteError::Permanent` when the server lacks the tidemark extension, speaks
    /// another protocol version ([`is_protocol_mismatch`]; the message says which side
    /// to upgrade) or has the batch API disabled, `RemoteError::Transient` when it
    /// cannot be reached.
    pub async fn connect(self) -> Result<PocketBaseRemote, RemoteError> {
        let credentials = self
            .credentials
            .ok_or_else(|| RemoteError::Auth("no credentials given".into()))?;
        for name in self.collections.iter().flatten() {
            check_collection_name(name)?;
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| RemoteError::Permanent(format!("http client: {e}")))?;
        let sse = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(Duration::from_secs(6 * 60))
            .build()
            .map_err(|e| RemoteError::Permanent(format!("http client: {e}")))?;
        let token = match &credentials {
            Credentials::Token(t) => Some(Token::new(t.clone())),
            _ => None,
        };
        let remote = PocketBaseRemote {
            inner: Arc::new(Inner {
                base: self.url.trim_end_matches('/').to_owned(),
                http,
                sse,
                credentials,
                user_id: std::sync::RwLock::new(token.as_ref().and_then(|t| t.record_id.clone())),
                token: Mutex::new(token),
                max_response_bytes: self.max_response_bytes,
                batch_max: AtomicUsize::new(1),
                collections: std::sync::RwLock::new(Vec::new()),
                fixed_collections: self.collections.is_some(),
                requests: AtomicU64::new(0),
            }),
        };
        if let Some(c) = self.collections {
            *remote
                .inner
                .collections
                .write()
                .unwrap_or_else(|p| p.into_inner()) = c;
        }
        let head = remote.head().await?;
        if head.batch_max == 0 {
            return Err(RemoteError::Permanent(
                "the server's batch API is disabled; apply the tidemark migrations".into(),
            ));
        }
        Ok(remote)
    }
}

pub(crate) fn check_collection_name(name: &str) -> Result<(), RemoteError> {
    if !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(RemoteError::Permanent(format!(
            "invalid collection name {name:?}"
        )))
    }
}

/// The server's sync position as reported by `GET /api/tidemark/head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The extension's protocol version (always [`PROTOCOL_VERSION`]: any other is
    /// refused).
    pub protocol: u64,
    /// The server's PocketBase version, e.g. `0.40.6`.
    pub pocketbase: String,
    /// Highest seq committed.
    pub head: Watermark,
    /// Retention horizon: pulls from `0 < since < horizon` are refused as expired.
    pub horizon: Watermark,
    /// Synced collections the server knows.
    pub collections: Vec<String>,
    /// The batch API's `maxRequests` (0 when disabled).
    pub batch_max: usize,
    /// Whether the caller is a superuser.
    pub superuser: bool,
}

/// tidemark's remote over a PocketBase server running the tidemark extension.
///
/// Cheap to clone (shared connection pool and token). See the crate docs for the
/// protocol.
#[derive(Clone)]
pub struct PocketBaseRemote {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PocketBaseRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PocketBaseRemote")
            .field("url", &self.inner.base)
            .field("credentials", &self.inner.credentials)
            .finish()
    }
}

pub(crate) struct Inner {
    pub base: String,
    pub http: reqwest::Client,
    pub sse: reqwest::Client,
    pub credentials: Credentials,
    pub token: Mutex<Option<Token>>,
    pub user_id: std::sync::RwLock<Option<String>>,
    pub max_response_bytes: usize,
    pub batch_max: AtomicUsize,
    pub collections: std::sync::RwLock<Vec<String>>,
    pub fixed_collections: bool,
    pub requests: AtomicU64,
}

/// A response: status and (size-capped) body.
pub(crate) struct Resp {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Resp {
    pub(crate) fn json(&self, context: &str) -> Result<Value, ProtocolError> {
        serde_json::from_slice(&self.body).map_err(|source| ProtocolError::Json {
            context: context.to_owned(),
            source,
        })
    }
}

impl PocketBaseRemote {
    /// Starts building a remote for the server at `url` (e.g. `http://127.0.0.1:8090`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            credentials: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_response_bytes: 64 << 20,
            collections: None,
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// HTTP requests sent so far by this remote (and its clones), including
    /// authentication; for tests and benchmarks.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// The id of the signed-in record — the user (for [`Builder::user`]) or the
    /// superuser — as the server's auth response names it (`record.id`); for
    /// [`Builder::token`], the `id` of the token's payload. Set by a successful
    /// [`Builder::connect`]: `None` only for a token whose payload names no id. Put it
    /// in the owner field of the records you create
    /// (`"owner": remote.user_id()`).
    pub fn user_id(&self) -> Option<String> {
        self.inner
            .user_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_user_id(&self, r: &Resp) {
        let id = r.json("auth").ok().and_then(|v| {
            v.get("record")
                .and_then(|rec| rec.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let Some(id) = id {
            *self
                .inner
                .user_id
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Some(id);
        }
    }

    /// The current auth token (authenticating first if needed).
    pub async fn token(&self) -> Result<String, RemoteError> {
        self.valid_token(false).await
    }

    /// Collections this remote pulls.
    pub fn collections(&self) -> Vec<String> {
        self.inner
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the server's head. Also verifies the token: an invalid one is answered
    /// 401 by this route (not treated as a guest) and reported as `RemoteError::Auth`.
    pub async fn head(&self) -> Result<Head, RemoteError> {
        let r = self.call(Method::GET, "/api/tidemark/head", None).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Err(RemoteError::Permanent(
                "GET /api/tidemark/head not found: the server lacks the tidemark pb_hooks".into(),
            ));
        }
        let v = expect_ok(&r, "head")?;
        let ctx = "head";
        let pocketbase = v
            .get("pocketbase")
            .and_then(Value::as_str)
            .unwrap_or("(unknown)")
            .chars()
            .take(64)
            .collect::<String>();
        let protocol = match v.get("protocol") {
            None | Some(Value::Null) => return Err(protocol_mismatch(None, &pocketbase)),
            Some(p) => p.as_u64().ok_or_else(|| ProtocolError::Field {
                context: ctx.into(),
                field: "protocol".into(),
            })?,
        };
        if protocol != PROTOCOL_VERSION {
            return Err(protocol_mismatch(Some(protocol), &pocketbase));
        }
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| ProtocolError::Field {
                    context: ctx.into(),
                    field: k.into(),
                })
        };
        let head = Head {
            protocol,
            pocketbase,
            head: Watermark(num("head")?),
            horizon: Watermark(num("horizon")?),
            batch_max: usize::try_from(num("batchMax")?).unwrap_or(usize::MAX),
            superuser: v.get("superuser").and_then(Value::as_bool).unwrap_or(false),
            collections: v
                .get("collections")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str())
                        .filter(|c| check_collection_name(c).is_ok())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        if head.batch_max > 0 {
            self.inner
                .batch_max
                .store(head.batch_max, Ordering::Relaxed);
        }
        if !self.inner.fixed_collections {
            *self
                .inner
                .collections
                .write()
                .unwrap_or_else(|p| p.into_inner()) = head.collections.clone();
        }
        Ok(head)
    }

    /// Runs tombstone compaction now (superusers only): removes tombstones older than
    /// `older_than` and returns the new horizon. The server also does this on its own
    /// schedule (`TIDEMARK_COMPACT_CRON`, `TIDEMARK_TOMBSTONE_RETENTION`).
    pub async fn compact(&self, older_than: Duration) -> Result<Watermark, RemoteError> {
        let body = serde_json::json!({ "olderThanSeconds": older_than.as_secs() });
        let r = self
            .call(Method::POST, "/api/tidemark/compact", Some(&body))
            .await?;
        let v = expect_ok(&r, "compact")?;
        let h = v
            .get("horizon")
            .and_then(Value::as_u64)
            .ok_or_else(|| ProtocolError::Field {
                context: "compact".into(),
                field: "horizon".into(),
            })?;
        Ok(Watermark(h))
    }

    /// Makes `collection` synced (superusers only): adds the fields and indexes it
    /// needs, registers it with owner field `owner_field` (`None`: records have no
    /// owner, tombstones are listed to every signed-in user), creates its triggers and
    /// gives every existing record a seq, in one transaction on the server.
    /// Idempotent; with another owner field it changes that setting (later
    /// tombstones follow it). The remote's collection list is read again after it.
    pub async fn enable_sync(
        &self,
        collection: &str,
        owner_field: Option<&str>,
    ) -> Result<EnabledCollection, RemoteError> {
        check_collection_name(collection)?;
        let body = serde_json::json!({ "owner": owner_field.unwrap_or("") });
        let r = self
            .call(
                Method::POST,
                &format!("/api/tidemark/collections/{collection}/enable"),
                Some(&body),
            )
            .await?;
        let v = expect_ok(&r, "enable")?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ProtocolError::Field {
                    context: "enable".into(),
                    field: k.into(),
                })
        };
        let n = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| ProtocolError::Field {
                    context: "enable".into(),
                    field: k.into(),
                })
        };
        let out = EnabledCollection {
            collection: s("collection")?,
            id: s("id")?,
            owner: s("owner")?,
            backfilled: n("backfilled")?,
            head: Watermark(n("head")?),
        };
        self.head().await?;
        Ok(out)
    }

    /// Stops syncing `collection` (superusers only): drops tidemark's triggers and
    /// unregisters it; its fields, their values and its tombstones stay. Returns
    /// whether it was synced. The remote's collection list is read again after it.
    pub async fn disable_sync(&self, collection: &str) -> Result<bool, RemoteError> {
        check_collection_name(collection)?;
        let r = self
            .call(
                Method::POST,
                &format!("/api/tidemark/collections/{collection}/disable"),
                Some(&serde_json::json!({})),
            )
            .await?;
        let v = expect_ok(&r, "disable")?;
        let was =
            v.get("wasSynced")
                .and_then(Value::as_bool)
                .ok_or_else(|| ProtocolError::Field {
                    context: "disable".into(),
                    field: "wasSynced".into(),
                })?;
        self.head().await?;
        Ok(was)
    }

    /// A valid token: logs in, or refreshes one close to expiry. `force` discards the
    /// current token first (after a 401).
    pub(crate) async fn valid_token(&self, force: bool) -> Result<String, RemoteError> {
        let mut guard = self.inner.token.lock().await;
        if force && self.inner.credentials.password_login().is_some() {
            *guard = None;
        }
        if let Some(t) = guard.as_ref() {
            if !t.needs_refresh(now_secs()) {
                return Ok(t.value.clone());
            }
            // Close to expiry: refresh; if that fails, log in again (if we can).
            let coll = match &self.inner.credentials {
                Credentials::Superuser { .. } => Some("_superusers".to_owned()),
                Credentials::User { collection, .. } => Some(collection.clone()),
                Credentials::Token(_) => t.collection_id.clone(),
            };
            if let Some(coll) = coll {
                let url = format!("{}/api/collections/{}/auth-refresh", self.inner.base, coll);
                let req = self.inner.http.post(url).header("Authorization", &t.value);
                match self.send(req, "auth-refresh").await {
                    Ok(r) if r.status.is_success() => {
                        let tok = token_of(&r, "auth-refresh")?;
                        self.set_user_id(&r);
                        *guard = Some(Token::new(tok.clone()));
                        return Ok(tok);
                    }
                    Ok(r) if self.inner.credentials.password_login().is_none() => {
                        return Err(RemoteError::Auth(format!(
                            "token refresh refused ({}): {}",
                            r.status,
                            ApiError::parse(&r.body).message
                        )))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let Some((coll, identity, password)) = self.inner.credentials.password_login() else {
            return guard
                .as_ref()
                .map(|t| t.value.clone())
                .ok_or_else(|| RemoteError::Auth("no token".into()));
        };
        let url = format!(
            "{}/api/collections/{}/auth-with-password",
            self.inner.base, coll
        );
        let body = serde_json::json!({ "identity": identity, "password": password });
        let r = self
            .send(self.inner.http.post(url).json(&body), "auth-with-password")
            .await?;
        if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS {
            return Err(RemoteError::Transient(
                format!("login: {}", r.status).into(),
            ));
        }
        if !r.status.is_success() {
            return Err(RemoteError::Auth(format!(
                "login to {coll} as {identity} refused ({}): {}",
                r.status,
                ApiError::parse(&r.body).message
            )));
        }
        let tok = token_of(&r, "auth-with-password")?;
        self.set_user_id(&r);
        *guard = Some(Token::new(tok.clone()));
        Ok(tok)
    }

    /// Sends a request (no auth), reading the body up to the size limit.
    pub(crate) async fn send(
        &self,
        req: RequestBuilder,
        context: &str,
    ) -> Result<Resp, RemoteError> {
        self.send_checked(req, context).await.map_err(|f| f.error)
    }

    /// [`Self::send`], telling a connection that broke under the request apart.
    async fn send_checked(&self, req: RequestBuilder, context: &str) -> Result<Resp, CallFailure> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = req.send().await.map_err(CallFailure::transport)?;
        let status = resp.status();
        let limit = self.inner.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ProtocolError::TooLarge {
                context: context.into(),
                limit,
            }
            .into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(CallFailure::transport)? {
            if body.len() + chunk.len() > limit {
                return Err(ProtocolError::TooLarge {
                    context: context.into(),
                    limit,
                }
                .into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Resp { status, body })
    }

    /// An authenticated call. 401 → one re-login (password credentials) then
    /// `RemoteError::Auth`; 5xx/408/429 → `RemoteError::Transient`. Other statuses
    /// are returned for the caller to interpret.
    pub(crate) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Resp, RemoteError> {
        self.call_query(method, path_and_query, &[], body).await
    }

    pub(crate) async fn call_query(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Resp, RemoteError> {
        self.call_checked(method, path, query, body)
            .await
            .map_err(|f| f.error)
    }

    /// [`Self::call_query`], telling a connection that broke under the request apart
    /// (e.g. a server that resets a request body over its limit).
    pub(crate) async fn call_checked(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Resp, CallFailure> {
        let mut force = false;
        for attempt in 0..2 {
            let token = self.valid_token(force).await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), format!("{}{}", self.inner.base, path))
                .header("Authorization", token);
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = self.send_checked(req, path).await?;
            if r.status == StatusCode::UNAUTHORIZED {
                if attempt == 0 && self.inner.credentials.password_login().is_some() {
                    force = true;
                    continue;
                }
                return Err(RemoteError::Auth(format!(
                    "{path}: {}",
                    ApiError::parse(&r.body).message
                ))
                .into());
            }
            if r.status.is_server_error()
                || r.status == StatusCode::TOO_MANY_REQUESTS
                || r.status == StatusCode::REQUEST_TIMEOUT
            {
                return Err(RemoteError::Transient(
                    format!("{path}: {} {}", r.status, ApiError::parse(&r.body).message).into(),
                )
                .into());
            }
            return Ok(r);
        }
        Err(RemoteError::Auth(format!("{path}: unauthorized")).into())
    }

    /// Confirms the token is still valid (the head route requires auth); an invalid
    /// one surfaces as `RemoteError::Auth`. Called before reporting "not found" or
    /// "rejected", which PocketBase also answers to a token it treated as a guest.
    pub(crate) async fn verify_auth(&self) -> Result<(), RemoteError> {
        self.head().await.map(|_| ())
    }
}

/// Why a call failed: the error it maps to, and whether the connection broke while
/// the request was under way (not a refused connection, not a timeout).
pub(crate) struct CallFailure {
    pub error: RemoteError,
    pub broken: bool,
}

impl CallFailure {
    fn transport(e: reqwest::Error) -> Self {
        Self {
            broken: !e.is_connect() && !e.is_timeout() && !e.is_builder(),
            error: transport(e),
        }
    }
}

impl From<RemoteError> for CallFailure {
    fn from(error: RemoteError) -> Self {
        Self {
            error,
            broken: false,
        }
    }
}

impl From<ProtocolError> for CallFailure {
    fn from(e: ProtocolError) -> Self {
        RemoteError::from(e).into()
    }
}

fn token_of(r: &Resp, ctx: &str) -> Result<String, RemoteError> {
    let v = r.json(ctx)?;
    v.get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ProtocolError::Field {
                context: ctx.into(),
                field: "token".into(),
            }
            .into()
        })
}

/// A 2xx JSON body, or the error the status means.
pub(crate) fn expect_ok(r: &Resp, ctx: &str) -> Result<Value, RemoteError> {
    if r.status.is_success() {
        return Ok(r.json(ctx)?);
    }
    let e = ApiError::parse(&r.body);
    Err(match r.status {
        StatusCode::FORBIDDEN => RemoteError::Permanent(format!("{ctx}: forbidden: {}", e.message)),
        s => RemoteError::Permanent(format!("{ctx}: {s}: {}", e.message)),
    })
}

#[async_trait]
impl RemoteStore for PocketBaseRemote {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        self.pull_page(since, limit, mode, None).await
    }

    /// Partial sync over the same lists: each filter is sent through PocketBase's
    /// list API (`filter=(<seq range>) && (<filter>)`), so the collection's list
    /// rule applies for the caller as for every pull; in an incremental pull a
    /// record changed in the range that does not match comes as a removal.
    async fn pull_scoped(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: &sync_traits::PullScope,
    ) -> Result<Page, RemoteError> {
        self.pull_page(since, limit, mode, Some(scope)).await
    }

    /// The matching ids through the list API (ids and seqs only, 1000 a page, by id).
    async fn matching(
        &self,
        collection: &str,
        filter: &sync_traits::Filter,
    ) -> Result<std::collections::BTreeMap<RecordId, sync_traits::Version>, RemoteError> {
        self.matching_ids(collection, filter).await
    }

    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        self.push_changes(changes).await
    }

    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        self.fetch_state(collection, id).await
    }

    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        Ok(self.head().await?.horizon)
    }

    async fn counts(&self) -> Result<Option<std::collections::BTreeMap<String, u64>>, RemoteError> {
        self.count_visible().await.map(Some)
    }

    /// The collections this remote pulls and pushes: the builder's
    /// [`collections`](Builder::collections), or else the server's synced list. The
    /// engine leaves every other collection alone (never pushed, never removed by a
    /// resync).
    async fn collections(&self) -> Result<Option<std::collections::BTreeSet<String>>, RemoteError> {
        Ok(Some(
            PocketBaseRemote::collections(self).into_iter().collect(),
        ))
    }

    /// The synced collections' schema the caller may list ([`PocketBaseRemote::schema`]).
    async fn schema(&self) -> Result<Option<sync_traits::RemoteSchema>, RemoteError> {
        PocketBaseRemote::schema(self).await.map(Some)
    }

    fn max_push_batch(&self) -> usize {
        self.inner.batch_max.load(Ordering::Relaxed).max(1)
    }
}
