//! # tidemark
//!
//! Offline-first sync for Rust applications. The application writes to a local store
//! ([`backends::SqliteStore`] or [`backends::SledStore`]) that always works, offline
//! included; [`SyncEngine`] moves changes both ways with a remote —
//! [`pocketbase::PocketBaseRemote`] first — using one watermark algorithm written
//! once over two traits, [`LocalStore`] and [`RemoteStore`].
//!
//! What it guarantees (each proven by tests, see ARCHITECTURE.md): after a quiet
//! sync round every client equals the server; no local write is lost silently (it
//! lands, or the app is told of a conflict or rejection with the data kept); pulling
//! never skips a change; a crash at any await point resumes without duplicates; a
//! client offline past the server's retention horizon resyncs and keeps its outbox.
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use sync_traits::testkit::{FakeRemote, MemoryStore};
//! use tidemark::{FieldMerge, LocalStoreExt, SyncEngine};
//!
//! // Shaped like the structs `tidemark generate` writes from the server's schema.
//! #[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
//! struct Song { #[serde(default)] id: String, title: String, order: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = FakeRemote::new(); // stands in for PocketBase here
//! let laptop = Arc::new(MemoryStore::new());
//! let phone = Arc::new(MemoryStore::new());
//!
//! // Works offline: the write and its outbox entry are one transaction.
//! let song = Song { title: "So What".into(), order: 1, ..Song::default() };
//! let id = laptop.collection::<Song>("songs").insert(&song).await?;
//!
//! let report = SyncEngine::new(laptop.clone(), server.clone()).with_policy(FieldMerge).sync().await?;
//! assert_eq!(report.pushed, 1);
//! SyncEngine::new(phone.clone(), server.clone()).sync().await?;
//! let songs = phone.collection::<Song>("songs");
//! assert_eq!(songs.get(&id).await?, Some(Song { id: id.to_string(), ..song }));
//! // A screen reads a page at a time (id order), never the whole collection:
//! let page = songs.page(None, 50).await?;
//! assert_eq!((page.items.len(), page.next), (1, None));
//! # Ok(()) }
//! ```
//!
//! With the real parts (an SQLite file and a PocketBase server):
//!
//! ```no_run
//! use tidemark::backends::{CollectionSchema, Schema, SqliteStore};
//! use tidemark::pocketbase::PocketBaseRemote;
//! use tidemark::{ServerWins, SyncEngine};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::new().collection(CollectionSchema::new("songs").text("title").number("order"));
//! let store = SqliteStore::open("app.sqlite", schema)?; // a real table `songs` you can query
//! let remote = PocketBaseRemote::builder("http://127.0.0.1:8090")
//!     .user("users", "me@example.com", "my-password") // PocketBase: 8 characters or more
//!     .connect()
//!     .await?;
//! let engine = SyncEngine::new(store, remote).with_policy(ServerWins);
//! println!("{:?}", engine.sync().await?);
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! - `sqlite`, `sled` (default): the local stores, in [`backends`];
//! - `pocketbase` (default): the PocketBase remote, [`pocketbase`];
//! - `postgres`: the PostgreSQL remote, `tidemark::postgres`;
//! - `testkit`: `tidemark::testkit` — `MemoryStore`, `FakeRemote`, `Faulty` and the
//!   store conformance suite (`testkit::conformance::run_all`), so the author of an
//!   outside store needs only `tidemark = { default-features = false, features =
//!   ["testkit"] }` to prove it.
#![warn(missing_docs)]

pub use sync_traits::*;

/// Local stores: SQLite and sled (features `sqlite`, `sled`).
#[cfg(any(feature = "sqlite", feature = "sled"))]
pub use tidemark_backends as backends;

/// The PocketBase remote (feature `pocketbase`).
#[cfg(feature = "pocketbase")]
pub use pocketbase_remote as pocketbase;

/// The PostgreSQL remote (feature `postgres`).
#[cfg(feature = "postgres")]
pub use postgres_remote as postgres;
