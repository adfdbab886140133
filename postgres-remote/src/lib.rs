//! # postgres-remote — tidemark's [`RemoteStore`](sync_traits::RemoteStore) over PostgreSQL
//!
//! [`PostgresRemote`] talks to a PostgreSQL (15+) database in which the crate
//! installed its schema ([`PostgresRemote::install`], versioned and idempotent) and
//! an operator registered the synced tables ([`PostgresRemote::enable_sync`]).
//! The design is in the crate README; in short:
//!
//! - **seq**: a trigger on every synced table takes the next seq from the one row
//!   of `tidemark.head` (`UPDATE ... SET seq = seq + 1`) inside the write's
//!   transaction. The row lock serialises writers until they commit, so seq order
//!   is commit order and a poller reading "everything up to head" never skips a
//!   row. Plain SQL writes by other services get seqs the same way.
//! - **pull**: one statement (`tidemark.pull`) under the caller's role, so row level
//!   security decides what it returns; tombstones come from `tidemark.tombstones`.
//! - **push**: one statement (`tidemark.push`) per batch, one transaction, one
//!   subtransaction per change: conditional on the base version, idempotent per
//!   exact change id, a refused change answered as rejected.
//! - **hints**: [`PostgresRemote::subscribe`] turns LISTEN/NOTIFY into "changes
//!   available"; correctness never depends on it.
//! - **partial sync**: a subset of the collections works (the trait's default
//!   `pull_scoped`); filters are refused with `RemoteError::Unsupported` (README,
//!   "Missing / known limitations").
//!
//! ```no_run
//! # async fn demo() -> Result<(), postgres_remote::PgError> {
//! use postgres_remote::PostgresRemote;
//! // Operator, once (and after upgrading the crate):
//! let admin = PostgresRemote::builder("host=127.0.0.1 user=app_owner dbname=app")?
//!     .install()
//!     .await?;
//! admin.enable_sync("songs", Some("owner")).await?;
//! // A user (a role granted tidemark_sync):
//! let remote = PostgresRemote::connect("host=127.0.0.1 user=alice password=... dbname=app").await?;
//! # let _ = remote; Ok(()) }
//! ```
#![warn(missing_docs)]

mod client;
mod error;
#[cfg(feature = "test-harness")]
pub mod harness;
mod notify;
mod remote;
pub mod schema;

pub use client::{Builder, PostgresRemote, Tls};
pub use error::PgError;
pub use notify::{Hints, CHANNEL};
