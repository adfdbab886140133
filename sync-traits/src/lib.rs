//! # sync-traits — tidemark's core
//!
//! The types that cross the seam between an application's local store and a remote
//! server, the two traits [`LocalStore`] and [`RemoteStore`], and [`SyncEngine`],
//! the sync algorithm written once over them. The engine drives a local store
//! through [`SyncStore`], the engine-facing part `LocalStore` extends; an app reads
//! and writes through `LocalStore` (and its typed handle). [`prelude`] imports the
//! traits whose methods a store's users call.
//!
//! With the `testkit` feature: [`testkit::MemoryStore`] (a complete in-memory
//! `LocalStore`), [`testkit::FakeRemote`] (an in-memory PocketBase-like server),
//! [`testkit::Faulty`] (fault injection over any remote),
//! [`testkit::conformance`] (the contract every `LocalStore` must pass) and
//! [`testkit::typed`] (the typed handle's cases, run on every store).
//!
//! ```
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sync_traits::testkit::{FakeRemote, MemoryStore};
//! use sync_traits::prelude::*;
//! use sync_traits::{new_id, Record, ServerWins, SyncEngine, SyncEvent};
//!
//! let server = FakeRemote::new();
//! let engine = SyncEngine::new(MemoryStore::new(), server.clone()).with_policy(ServerWins);
//! let mut events = engine.subscribe();
//! let id = new_id();
//! let fields = serde_json::json!({"title": "offline write"}).as_object().cloned().unwrap();
//! engine.local().put(Record::new("songs", id.clone(), fields)).await?; // no network needed
//! assert_eq!(engine.local().pending_count().await?, 1);
//!
//! let report = engine.sync().await?;
//! assert_eq!((report.pushed, report.remaining), (1, 0));
//! assert_eq!(server.snapshot()[0].id, id);
//! assert!(matches!(events.try_recv()?, SyncEvent::PushProgress { pushed: 1, total: 1 }));
//! # Ok(()) }
//! # #[cfg(not(feature = "testkit"))] fn main() {}
//! ```
//!
//! Apps usually read and write through a typed handle instead of raw
//! [`Record`]s: [`LocalStoreExt::collection`] (on every `LocalStore`) gives a
//! [`Collection`] of a serde type, with paged listing so a screen loads one page,
//! not the collection ([`SyncStore::list_page`] underneath):
//!
//! ```
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use serde::{Deserialize, Serialize};
//! use sync_traits::testkit::MemoryStore;
//! use sync_traits::LocalStoreExt;
//!
//! // Shaped like the structs `tidemark generate` writes.
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! struct Song {
//!     #[serde(default)]
//!     id: String,
//!     title: String,
//! }
//!
//! let store = MemoryStore::new();
//! let songs = store.collection::<Song>("songs");
//! let id = songs.insert(&Song { title: "So What".into(), ..Song::default() }).await?;
//! let mut song = songs.get(&id).await?.expect("just written");
//! assert_eq!(song.id, id.as_str());
//! song.title = "Blue in Green".into();
//! songs.put(&song).await?; // under song.id
//!
//! let first = songs.page(None, 20).await?; // up to 20, in id order
//! assert_eq!((first.items.len(), first.next), (1, None)); // no next page
//! assert_eq!(songs.count().await?, 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "testkit"))] fn main() {}
//! ```
#![warn(missing_docs)]
// The docs link to the testkit (MemoryStore, FakeRemote, ...), which only exists
// with the `testkit` feature; docs.rs builds with it (see Cargo.toml).
#![cfg_attr(not(feature = "testkit"), allow(rustdoc::broken_intra_doc_links))]

mod collection;
mod conflict;
mod engine;
mod error;
pub mod feed;
mod hints;
mod id;
mod partial;
mod record;
mod remote;
mod schema;
mod status;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transaction;

pub use collection::{Collection, CollectionError, CollectionPage, LocalStoreExt};
pub use conflict::{ClientWins, ConflictPolicy, FieldMerge, Resolution, ServerWins};
pub use engine::{RetryPolicy, SyncConfig, SyncEngine, SyncEvent, SyncReport};
pub use error::{Cause, FieldsError, InvalidId, RemoteError, StoreError, SyncError};
pub use feed::{Change, ChangeBatch, ChangeCause, ChangeHub, ChangeKind, ChangeWatcher};
pub use hints::Hints;
pub use id::{new_id, ChangeId, RecordId, ID_LEN};
pub use partial::{Filter, FilterError, PullScope, SyncScope, MAX_FILTER_LEN};
pub use record::{
    changed_fields, Ack, ApplyReport, Conflict, Fields, LoggedConflict, Mistyped, Op, Page,
    PendingChange, PushChange, PushOutcome, Quarantined, Record, Rejection, RemoteChange,
    RemoteState, SyncState, Version, Watermark,
};
pub use remote::{PullMode, RemoteStore};
pub use schema::{RemoteCollection, RemoteField, RemoteFieldKind, RemoteSchema};
pub use status::{SyncPhase, SyncStatus};
pub use store::{LocalStore, SyncStore, COUNT_PAGE};

/// The traits whose methods the users of a store or a remote call:
/// `use sync_traits::prelude::*;` brings [`LocalStore`], [`SyncStore`] (the
/// engine-facing part: `pending_count`, `sync_state`, `conflicts`, ...),
/// [`LocalStoreExt`] (typed collections, transactions) and [`RemoteStore`] into scope.
pub mod prelude {
    pub use crate::{LocalStore, LocalStoreExt, RemoteStore, SyncStore};
}
pub use transaction::{Transact, TxBuilder, TxMark, TxReport, Write};

/// Re-exported for implementors of the traits.
pub use async_trait::async_trait;
