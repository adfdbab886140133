//! Connections, the builder, and the operator's API (install, enable_sync, compact).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tracing::debug;

use crate::error::PgError;
use crate::schema;

/// Messages a connection produces besides query results (notifications, notices).
pub(crate) type Messages =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

/// How to secure the connection.
#[derive(Clone)]
pub enum Tls {
    /// Plain TCP (for 127.0.0.1 and private networks).
    Disable,
    /// TLS with rustls, verified by this client configuration.
    Rustls(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::Disable => f.write_str("Tls::Disable"),
            Tls::Rustls(_) => f.write_str("Tls::Rustls(..)"),
        }
    }
}

/// Settings for [`PostgresRemote`]; made by [`PostgresRemote::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
    tls: Tls,
    connect_timeout: Duration,
    statement_timeout: Duration,
    max_connections: usize,
    max_batch: usize,
}

impl Builder {
    /// Limit for establishing a connection (TCP, TLS, authentication). Default 10 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Server-side `statement_timeout` of every connection, and (plus 5 s) the
    /// client-side limit of every call. Default 30 s.
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    /// Connections kept open for concurrent calls (at least 1). Default 4.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Largest push batch (one transaction each). Default 1000.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Secures connections with TLS (rustls).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Connects and checks that the server's tidemark schema has the version this
    /// client speaks ([`schema::VERSION`]); fails with [`PgError::Schema`] if it is
    /// missing or different (run [`Builder::install`] as an operator).
    pub async fn connect(self) -> Result<PostgresRemote, PgError> {
        let remote = self.build();
        let v = remote.schema_version().await?;
        match v {
            Some(v) if v == schema::VERSION => Ok(remote),
            Some(v) => Err(PgError::Schema(format!(
                "server schema version {v}, this client speaks {}; run install() with the matching client",
                schema::VERSION
            ))),
            None => Err(PgError::Schema(
                "tidemark is not installed in this database; run install() as its owner".into(),
            )),
        }
    }

    /// Connects, installs or upgrades the tidemark schema (see
    /// [`PostgresRemote::install`]) and returns the remote. Needs a role that may
    /// create schemas and roles (the database owner, or a superuser).
    pub async fn install(self) -> Result<PostgresRemote, PgError> {
        let remote = self.build();
        remote.install().await?;
        Ok(remote)
    }

    fn build(self) -> PostgresRemote {
        PostgresRemote {
            inner: Arc::new(Inner {
                pool_limit: Arc::new(Semaphore::new(self.max_connections)),
                idle: Mutex::new(Vec::new()),
                b: self,
            }),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) b: Builder,
    pool_limit: Arc<Semaphore>,
    idle: Mutex<Vec<Client>>,
}

/// tidemark's [`sync_traits::RemoteStore`] over PostgreSQL.
///
/// Cheap to clone (clones share one small connection pool). Every call has a
/// time limit (statement timeout + 5 s); a connection whose call failed or timed
/// out is closed, never reused. The connecting role is the user: row level
/// security on the synced tables decides what it sees and may write.
#[derive(Clone)]
pub struct PostgresRemote {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRemote")
            .field("user", &self.inner.b.config.get_user())
            .field("hosts", &self.inner.b.config.get_hosts())
            .finish()
    }
}

/// A pooled connection; goes back to the pool when dropped unless marked broken.
pub(crate) struct Conn {
    client: Option<Client>,
    inner: Arc<Inner>,
    broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub(crate) fn client(&mut self) -> &mut Client {
        match self.client.as_mut() {
            Some(c) => c,
            // `client` is only taken in Drop.
            None => unreachable!("connection used after drop"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !self.broken && !c.is_closed() {
                if let Ok(mut idle) = self.inner.idle.lock() {
                    idle.push(c);
                }
            }
        }
    }
}

impl PostgresRemote {
    /// A builder for `connection` (a libpq-style string, `host=127.0.0.1 port=5432
    /// user=alice password=... dbname=app`, or a `postgresql://` URL).
    pub fn builder(connection: &str) -> Result<Builder, PgError> {
        let config: Config = connection
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
        Ok(Builder {
            config,
            tls: Tls::Disable,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            max_connections: 4,
            max_batch: 1000,
        })
    }

    /// `builder(connection)?.connect()`.
    pub async fn connect(connection: &str) -> Result<Self, PgError> {
        Self::builder(connection)?.connect().await
    }

    /// The limit of one call on the client side.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.inner.b.statement_timeout + Duration::from_secs(5)
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.inner.b.max_batch
    }

    /// Opens a new connection with the builder's settings; the caller drives its
    /// messages.
    pub(crate) async fn open(&self) -> Result<(Client, Messages), PgError> {
        let b = &self.inner.b;
        let mut config = b.config.clone();
        config.connect_timeout(b.connect_timeout);
        config.application_name("tidemark");
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let ms = b.statement_timeout.as_millis();
        config.options(format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
            ms * 2
        ));
        let fut = async {
            match &b.tls {
                Tls::Disable => {
                    let (client, mut conn) = config.connect(NoTls).await?;
                    let msgs: Messages = Box::pin(stream::poll_fn(move |cx| conn.poll_message(cx)));
                    Ok::<_, tokio_postgres::Error>((client, msgs))
                }
                Tls::Rustls(cfg) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**cfg).clone());
                    let (client, mut conn) = config.connect(tls).await?;
                    let msgs: Messages = Box::pin(stream::poll_fn(move |cx| conn.poll_message(cx)));
                    Ok((client, msgs))
                }
            }
        };
        match tokio::time::timeout(b.connect_timeout + Duration::from_secs(1), fut).await {
            Ok(r) => r.map_err(PgError::from),
            Err(_) => Err(PgError::Timeout(format!(
                "connecting took longer than {:?}",
                b.connect_timeout
            ))),
        }
    }

    /// A connection from the pool (or a new one), waiting at most the connect
    /// timeout for a free slot.
    pub(crate) async fn conn(&self) -> Result<Conn, PgError> {
        let permit = match tokio::time::timeout(
            self.inner.b.connect_timeout,
            self.inner.pool_limit.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(PgError::Transient("connection pool closed".into())),
            Err(_) => {
                return Err(PgError::Timeout(
                    "no free connection within the connect timeout".into(),
                ))
            }
        };
        let reused = {
            let mut idle = self
                .inner
                .idle
                .lock()
                .map_err(|_| PgError::Transient("connection pool poisoned".into()))?;
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => {
                let (client, mut msgs) = self.open().await?;
                tokio::spawn(async move {
                    while let Some(m) = msgs.next().await {
                        match m {
                            Ok(AsyncMessage::Notice(n)) => {
                                debug!(notice = %n.message(), "postgres")
                            }
                            Ok(_) => {}
                            Err(e) => {
                                debug!(%e, "connection ended");
                                break;
                            }
                        }
                    }
                });
                client
            }
        };
        Ok(Conn {
            client: Some(client),
            inner: self.inner.clone(),
            broken: false,
            _permit: permit,
        })
    }

    /// Runs `f` on a pooled connection within the call timeout. A connection
    /// whose call failed or timed out is dropped, not pooled.
    pub(crate) async fn with_conn<T, F>(&self, what: &str, f: F) -> Result<T, PgError>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> Pin<
            Box<dyn std::future::Future<Output = Result<T, PgError>> + Send + 'c>,
        >,
    {
        let mut conn = self.conn().await?;
        let limit = self.call_timeout();
        let r = tokio::time::timeout(limit, f(conn.client())).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                conn.broken = true;
                Err(e)
            }
            Err(_) => {
                conn.broken = true;
                Err(PgError::Timeout(format!(
                    "{what} took longer than {limit:?}"
                )))
            }
        }
    }

    /// The installed tidemark schema version, `None` if not installed.
    pub async fn schema_version(&self) -> Result<Option<i32>, PgError> {
        self.with_conn("schema version", |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT to_regclass('tidemark.schema_version') IS NOT NULL",
                        &[],
                    )
                    .await?;
                if !row.try_get::<_, bool>(0)? {
                    return Ok(None);
                }
                let row = c
                    .query_opt(
                        "SELECT version FROM tidemark.schema_version WHERE component = 'tidemark'",
                        &[],
                    )
                    .await?;
                Ok(match row {
                    Some(r) => Some(r.try_get::<_, i32>(0)?),
                    None => None,
                })
            })
        })
        .await
    }

    /// Installs or upgrades the tidemark schema to [`schema::VERSION`]: the
    /// `tidemark` schema, its version table, the head/horizon row, tombstones, the
    /// idempotency memory, the `tidemark_sync` role and the pull/push functions.
    /// Idempotent and safe to run concurrently (one transaction under an advisory
    /// lock; a second caller waits, then finds nothing to do). Returns the version.
    /// Refuses ([`PgError::Schema`]) a server newer than this client.
    pub async fn install(&self) -> Result<i32, PgError> {
        self.with_conn("install", |c| Box::pin(schema::install(c)))
            .await
    }

    /// Registers `table` (in `public`, or `schema.table`) as a synced collection
    /// named after the table, in one transaction: adds the `tm_seq`/`tm_cid`
    /// columns, backfills a seq for every existing row, adds the indexes, the
    /// triggers that stamp every insert/update with the next seq and turn every
    /// delete into a tombstone (plain SQL writes included), refuses TRUNCATE, and
    /// grants the table to `tidemark_sync`. With `owner_column`, turns on row level
    /// security with a policy that lets a role see and write only rows whose owner
    /// is that role's name, or that have no owner (NULL or ''). Running it again
    /// re-creates triggers and policy (and gives seqs to rows that lack one).
    ///
    /// The table needs a primary key column `id` of type `text` or `varchar`
    /// holding tidemark record ids.
    pub async fn enable_sync(
        &self,
        table: &str,
        owner_column: Option<&str>,
    ) -> Result<(), PgError> {
        let table = table.to_owned();
        let owner = owner_column.map(str::to_owned);
        self.with_conn("enable_sync", move |c| {
            Box::pin(async move { schema::enable_sync(c, &table, owner.as_deref()).await })
        })
        .await
    }

    /// Retention: drops tombstones older than `older_than` (and any with a lower
    /// seq) and raises the horizon to the highest seq dropped, in one transaction.
    /// Afterwards an incremental pull from a non-zero watermark below the horizon
    /// fails with [`sync_traits::RemoteError::WatermarkExpired`] and the client
    /// resyncs. Returns the horizon. Needs the schema owner's role.
    pub async fn compact(&self, older_than: Duration) -> Result<sync_traits::Watermark, PgError> {
        let secs = older_than.as_secs_f64();
        self.with_conn("compact", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT tidemark.compact(make_interval(secs => $1))",
                        &[&secs],
                    )
                    .await?;
                let h: i64 = row.try_get(0)?;
                Ok(sync_traits::Watermark(u64::try_from(h).unwrap_or(0)))
            })
        })
        .await
    }

    /// The last seq handed out (every change up to it is committed).
    pub async fn head(&self) -> Result<sync_traits::Watermark, PgError> {
        self.with_conn("head", |c| {
            Box::pin(async move {
                let row = c.query_one("SELECT seq FROM tidemark.head", &[]).await?;
                let h: i64 = row.try_get(0)?;
                Ok(sync_traits::Watermark(u64::try_from(h).unwrap_or(0)))
            })
        })
        .await
    }
}
