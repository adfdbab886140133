//! # pocketbase-remote — tidemark's [`RemoteStore`](sync_traits::RemoteStore) over PocketBase
//!
//! [`PocketBaseRemote`] talks to a stock PocketBase (0.40.x) that runs the JS
//! extension shipped in this crate's `server/` folder (`pb_hooks`, `pb_migrations`).
//! The protocol is described in the crate's README; in short:
//!
//! - **handshake**: the head route reports the extension's protocol version;
//!   [`Builder::connect`] refuses any other than [`PROTOCOL_VERSION`] (see
//!   [`is_protocol_mismatch`]);
//! - **pull**: `GET /api/tidemark/head` (one round trip when nothing changed), then
//!   PocketBase's own list API per synced collection and for `tm_tombstones`, filtered
//!   by `tm_seq` and sorted by it, so each collection's own list rule decides what the
//!   caller sees;
//! - **push**: `/api/batch` in chunks of the server's `maxRequests`; each upsert carries
//!   `tm_push = "<base>:<change id>"`, each delete `?tm=<base>:<change id>`; the
//!   server (SQLite triggers for the common writes, the hooks for the rest) assigns
//!   the seq inside the write's transaction, refuses stale bases (conflict) and
//!   recognises retried deliveries of exactly the change it remembers (idempotency);
//!   the seqs of trigger-written upserts, of deletes and of retries come back in one
//!   receipt per batch (`POST /api/tidemark/receipt`). A client id belongs to the
//!   first user who pushes with it; an upsert that writes nothing is a failed
//!   sub-request (no realtime event fires for it), settled by the client;
//! - **realtime**: [`PocketBaseRemote::subscribe`] turns PocketBase's SSE events into
//!   "changes available" hints; correctness never depends on them.
//!
//! [`PocketBaseRemote::user_id`] is the signed-in user's id (for owner fields);
//! [`PocketBaseRemote::import_collections`] imports collections in PocketBase's export
//! format; the [`server`] module runs the stock PocketBase binary with this extension
//! (embedded in the crate), as `tidemark dev` does. Each request has a time limit
//! ([`DEFAULT_REQUEST_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`]; see [`Builder::timeout`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sync_traits::RemoteError> {
//! use pocketbase_remote::PocketBaseRemote;
//! let remote = PocketBaseRemote::builder("http://127.0.0.1:8090")
//!     .user("users", "alice@example.com", "secret-password")
//!     .connect()
//!     .await?;
//! # let _ = remote; Ok(()) }
//! ```
#![warn(missing_docs)]

mod auth;
mod client;
mod error;
#[cfg(feature = "test-harness")]
pub mod harness;
mod import;
mod pull;
mod push;
mod realtime;
pub mod schema;
pub mod server;

pub use auth::Credentials;
pub use client::{
    is_protocol_mismatch, Builder, EnabledCollection, Head, PocketBaseRemote,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, PROTOCOL_MISMATCH, PROTOCOL_VERSION,
};
pub use error::ProtocolError;
pub use realtime::Hints;

/// Name of the tombstones collection created by the server migration.
pub const TOMBSTONES: &str = "tm_tombstones";
