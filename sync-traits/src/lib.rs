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
#![warn(missing_docs)]

mod conflict;
mod engine;
mod error;
mod id;
mod record;
mod remote;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use conflict::{ClientWins, ConflictPolicy, FieldMerge, Resolution, ServerWins};
pub use engine::{RetryPolicy, SyncConfig, SyncEngine, SyncEvent, SyncReport};
pub use error::{FieldsError, InvalidId, RemoteError, StoreError, SyncError};
pub use id::{new_id, ChangeId, RecordId, ID_LEN};
pub use record::{
    Ack, ApplyReport, Fields, Op, Page, PendingChange, PushChange, PushOutcome, Quarantined,
    Record, Rejection, RemoteChange, RemoteState, SyncState, Version, Watermark,
};
pub use remote::{PullMode, RemoteStore};
pub use store::LocalStore;

/// Re-exported for implementors of the traits.
pub use async_trait::async_trait;
