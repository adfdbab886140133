//! # tidemark-backends
//!
//! [`LocalStore`](sync_traits::LocalStore) implementations for tidemark:
//!
//! - [`sqlite::SqliteStore`] (feature `sqlite`): one SQLite file, a real typed
//!   table per collection, plain-SQL writes captured by triggers.
//! - [`sled::SledStore`] (feature `sled`): one sled database, a tree per collection.
//!
//! Both take a [`Schema`] that names the synced collections and their typed fields,
//! and both behave exactly like the reference `MemoryStore` of `sync_traits`'s
//! testkit (they pass its conformance suite and a differential property test
//! against it).
//!
//! ```no_run
//! use tidemark_backends::{CollectionSchema, Schema};
//! # #[cfg(feature = "sqlite")]
//! # fn demo() -> Result<(), sync_traits::StoreError> {
//! let schema = Schema::new().collection(
//!     CollectionSchema::new("songs").text("title").number("order").bool("liked"),
//! );
//! let store = tidemark_backends::sqlite::SqliteStore::open("app.db", schema)?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! ## Writing your own `LocalStore`
//!
//! Implement the trait (every method one atomic transaction, see its docs), then
//! run the conformance suite from your tests. It needs `sync-traits` with the
//! `testkit` feature as a dev-dependency; each case gets a fresh, empty store
//! holding the collections `songs(title, artist: text, order: number)` and
//! `friends(name: text)`:
//!
//! ```text
//! // tests/conformance.rs of your crate
//! use sync_traits::testkit::conformance;
//! use my_store::MyStore;
//!
//! #[tokio::test]
//! async fn my_store_passes_the_conformance_suite() {
//!     // Each case gets a fresh store from the factory.
//!     conformance::run_all(|| async {
//!         let dir = tempfile::tempdir().unwrap();
//!         let store = MyStore::open(dir.path().join("db")).unwrap();
//!         std::mem::forget(dir); // keep the directory for the store's lifetime
//!         store
//!     })
//!     .await;
//! }
//! ```
//!
//! This crate's own stores run it the same way (this example runs as a doctest):
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use sync_traits::testkit::conformance;
//! use tidemark_backends::{Schema, SqliteStore};
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! rt.block_on(conformance::run_all(|| async {
//!     SqliteStore::open_in_memory(Schema::conformance()).unwrap()
//! }));
//! # }
//! ```
//!
//! The cases are also public one by one (`conformance::writes_coalesce(&store)`),
//! so a failing rule can be run alone. Beyond the suite, the strongest check is a
//! differential property test: run the same random operations against your store
//! and `sync_traits::testkit::MemoryStore` and compare every result — see
//! `backends/tests/differential.rs` in this repository.
#![warn(missing_docs)]
#![cfg_attr(not(any(feature = "sqlite", feature = "sled")), allow(dead_code))]

mod blocking;
pub mod codegen;
pub mod inspect;
pub mod remote_schema;
#[cfg(any(feature = "sqlite", feature = "sled"))]
mod rules;
pub mod schema;
#[cfg(feature = "sled")]
pub mod sled;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "sled")]
pub use crate::sled::SledStore;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqliteStore;
pub use inspect::{CollectionInfo, Inspection};
pub use schema::{CollectionSchema, Field, FieldKind, Schema};
