//! [`Inspection`]: what a store holds, read without changing it (for status tools).
//!
//! `SqliteStore::inspect` and `SledStore::inspect` fill it in. Neither creates a
//! table, takes a writer id, migrates a schema or writes a byte to the store.

use sync_traits::{LoggedConflict, Quarantined, RecordId, SyncState};

/// One collection of an inspected store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionInfo {
    /// The collection's name.
    pub name: String,
    /// Whether it is declared local-only (never synced).
    pub local_only: bool,
    /// Records it holds locally.
    pub records: usize,
}

/// A store's contents and sync position as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// Every collection the store knows, by name.
    pub collections: Vec<CollectionInfo>,
    /// Watermark and whether a resync is under way.
    pub state: SyncState,
    /// The writer id the store's most recent open took (`None`: it never took one).
    pub writer: Option<RecordId>,
    /// Outbox entries not yet pushed.
    pub outbox: usize,
    /// Changes the server refused, oldest first.
    pub quarantined: Vec<Quarantined>,
    /// The conflict log, oldest first.
    pub conflicts: Vec<LoggedConflict>,
}
