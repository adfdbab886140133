//! # sync-traits — tidemark's core
//!
//! The types that cross the seam between an application's local store and a remote
//! server, the two traits [`LocalStore`] and [`RemoteStore`], and [`SyncEngine`],
//! the sync algorithm written once over them.
//!
//! With the `testkit` feature: [`testkit::MemoryStore`] (a complete in-memory
//! `LocalStore`), [`testkit::FakeRemote`] (an in-memory PocketBase-like server),
//! [`testkit::Faulty`] (fault injection over any remote) and
//! [`testkit::conformance`] (the contract every `LocalStore` must pass).
//!
//! ```
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sync_traits::testkit::{FakeRemote, MemoryStore};
//! use sync_traits::{new_id, LocalStore, Record, ServerWins, SyncEngine, SyncEvent};
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
#![warn(missing_docs)]
// The docs link to the testkit (MemoryStore, FakeRemote, ...), which only exists
// with the `testkit` feature; docs.rs builds with it (see Cargo.toml).
#![cfg_attr(not(feature = "testkit"), allow(rustdoc::broken_intra_doc_links))]

mod conflict;
mod engine;
mod error;
pub mod feed;
mod hints;
mod id;
mod record;
mod remote;
mod schema;
mod status;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use conflict::{ClientWins, ConflictPolicy, FieldMerge, Resolution, ServerWins};
pub use engine::{RetryPolicy, SyncConfig, SyncEngine, SyncEvent, SyncReport};
pub use error::{FieldsError, InvalidId, RemoteError, StoreError, SyncError};
pub use feed::{Change, ChangeBatch, ChangeCause, ChangeHub, ChangeKind, ChangeWatcher};
pub use hints::Hints;
pub use id::{new_id, ChangeId, RecordId, ID_LEN};
pub use record::{
    changed_fields, Ack, ApplyReport, Conflict, Fields, LoggedConflict, Mistyped, Op, Page,
    PendingChange, PushChange, PushOutcome, Quarantined, Record, Rejection, RemoteChange,
    RemoteState, SyncState, Version, Watermark,
};
pub use remote::{PullMode, RemoteStore};
pub use schema::{RemoteCollection, RemoteField, RemoteFieldKind, RemoteSchema};
pub use status::{SyncPhase, SyncStatus};
pub use store::LocalStore;

/// Re-exported for implementors of the traits.
pub use async_trait::async_trait;
