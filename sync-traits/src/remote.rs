//! The remote side of the seam.

use async_trait::async_trait;

use crate::error::RemoteError;
use crate::id::RecordId;
use crate::partial::{Filter, PullScope};
use crate::record::{Page, PushChange, PushOutcome, RemoteState, Version, Watermark};

/// Whether a pull is part of a full resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PullMode {
    /// Catching up from a watermark: the remote must refuse a watermark below its
    /// retention horizon with [`RemoteError::WatermarkExpired`].
    Incremental,
    /// Part of a full resync (or the first sync): the store will remove every
    /// record the resync did not deliver, so missing tombstones do not matter and
    /// the horizon is not checked.
    Resync,
}

/// A server that holds the shared copy of the data.
///
/// Contract (checked by the engine's property tests against
/// [`crate::testkit::FakeRemote`]):
/// - every write gets a `seq` in commit order; deletes leave tombstones;
/// - [`pull`](RemoteStore::pull) from a watermark returns every change after it that
///   the caller may see, including a tombstone when a record leaves the caller's
///   view. In [`PullMode::Incremental`] a watermark that is not zero and is below the
///   retention horizon fails with [`RemoteError::WatermarkExpired`] (tombstones the
///   caller needed are gone). In [`PullMode::Resync`] the horizon is not checked:
///   the caller is re-reading everything and removes what it did not see;
/// - [`push`](RemoteStore::push) applies each change only if its base version is
///   current, and answers one outcome per change, in order. An upsert may replace
///   the record whole or merge into it (a PATCH: fields the change leaves out keep
///   their values; PocketBase does, `FakeRemote` with `WriteRules::patch`), and the
///   remote may store values normalised: the engine does not rely on either, the
///   server's copy comes back to the writer with the next pull;
/// - idempotent delivery: a change id already applied answers `Applied` again with
///   **the version that change produced** (not the record's current version, which
///   may be a later foreign write the caller must still pull), even if other writes
///   came after it. A remote keeps, per record, the change ids it applied, per
///   writer ([`ChangeId::client`](crate::ChangeId)), with the versions they
///   produced, and answers `Applied` **only for a change id it names exactly**: a
///   change with another counter of the same writer was not applied, whatever its
///   counter, and goes through the base-version check like any other write.
///   Answering `Applied` for a change the remote did not apply loses that write
///   silently. A remote must remember at least each writer's newest change per
///   record while the record or its tombstone exists; remembering more lets a
///   store restored from a backup re-deliver an older outbox entry and be answered
///   `Applied` instead of having it written a second time. What the two remotes
///   here keep: `FakeRemote` every change id, also after compaction; PocketBase
///   each writer's newest change per record, for the 64 writers that wrote it last
///   (an older writer's entry is dropped), in the record and then its tombstone,
///   until compaction removes the tombstone, and then, per writer, the highest
///   counter whose memory compaction dropped; PostgreSQL every writer's newest
///   change per record, also after compaction. A change whose memory is gone is
///   not answered `Applied`: it meets the base check like a new write (a retried
///   upsert of a compacted record is a conflict with its deletion; a backup older
///   than the retention re-delivers its outbox as new writes);
/// - **a change id is applied at most once**, also after compaction: a remote that
///   cannot tell whether it applied a change before must not apply it as a new
///   write. PocketBase answers a create (base `None`) of a writer at or below the
///   counter compaction forgot for it, whose record has no row and no tombstone,
///   with a conflict with a tombstone at the horizon: it may be a retry of a create
///   applied before and deleted since (applying it would bring the deleted record
///   back). The engine gives every change it re-bases after a conflict a new
///   change id ([`Ack::Rebase`](crate::Ack::Rebase)), so a resolution that writes
///   over the deletion is a new change;
/// - the memory is scoped per user as well as per writer: a writer id belongs to
///   the user who first pushed with it, and a remote answers `Applied` from it only
///   to that user, so one user's changes are never taken for another's (PocketBase
///   binds a writer id to its first user and refuses it to any other; `FakeRemote`,
///   whose callers never share a writer id, does not model the binding);
/// - a `Conflict` carries the current state *as the caller can see it*, with the
///   change id that produced it (so the engine can recognise its own earlier
///   write): for a record deleted, or gone from the caller's view, a tombstone at
///   the version of that deletion; for one deleted and compacted away (no record,
///   no tombstone left), a tombstone at the retention horizon, and a change
///   re-based on that version is applied as a create.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait RemoteStore: Send + Sync {
    /// Changes after `since`, at most `limit` of them.
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError>;

    /// Pushes changes; one outcome per change, in the same order. An `Err` means the
    /// outcome of the whole call is unknown (some may have been applied): the engine
    /// retries, relying on idempotency.
    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError>;

    /// The server's current state of one record as the caller sees it: the live
    /// record, or for a deleted one (or one that left the caller's view) its
    /// tombstone (`fields: None`, at the deletion's version), as PocketBase and
    /// `FakeRemote` answer until compaction; `None` when the remote shows no trace
    /// (never existed, never visible, compacted; the PostgreSQL remote answers
    /// `None` for every deleted record). The engine treats both as "absent": a
    /// tombstone's version is applied, and a record read back after a late ack that
    /// answers `None` is removed locally at the acked version.
    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError>;

    /// The retention horizon now: the oldest watermark an incremental pull may start
    /// from. The engine reads it before and after a full resync; if it moved, the
    /// resync restarts (a tombstone it needed may have been compacted meanwhile).
    async fn horizon(&self) -> Result<Watermark, RemoteError>;

    /// How many live records of each synced collection the caller may see now (every
    /// synced collection, zeros included), for [`crate::SyncEngine::reconcile`]. `None` (the default) means the remote cannot
    /// count, and reconciling falls back to nothing.
    async fn counts(&self) -> Result<Option<std::collections::BTreeMap<String, u64>>, RemoteError> {
        Ok(None)
    }

    /// The collections this remote syncs for the caller, if it knows them. The
    /// engine pushes only changes to these collections (the others wait in the
    /// outbox, untouched) and a full resync removes local records only in these.
    /// `None` (the default): the remote syncs whatever the store holds.
    async fn collections(&self) -> Result<Option<std::collections::BTreeSet<String>>, RemoteError> {
        Ok(None)
    }

    /// The schema of the collections this remote syncs for the caller (only what the
    /// caller may see; never password fields nor the remote's own sync fields), if
    /// the remote can describe it. `None` (the default): it cannot.
    async fn schema(&self) -> Result<Option<crate::schema::RemoteSchema>, RemoteError> {
        Ok(None)
    }

    /// [`pull`](RemoteStore::pull) narrowed by `scope` (partial sync): only the
    /// changes `scope` asks for ([`PullScope`]'s rules: its collections, above each
    /// collection's floor, through each collection's filter). A filter is evaluated
    /// by the server for the caller under the same rules as every other read (never
    /// with more rights than the caller has); a record changed in the range that
    /// does not match its collection's filter is sent as a removal, a tombstone at
    /// the record's version, unless [`PullScope::resyncs`] that collection. The
    /// page's watermark and `more` mean what they mean for `pull`.
    ///
    /// The default answers a scope with filters with [`RemoteError::Unsupported`]
    /// (a remote that cannot filter says so rather than sending too much) and
    /// serves the rest through `pull`, dropping the changes the scope does not ask
    /// for (correct, though it downloads them).
    async fn pull_scoped(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: &PullScope,
    ) -> Result<Page, RemoteError> {
        if let Some((collection, _)) = scope.filters.iter().next() {
            return Err(RemoteError::Unsupported(format!(
                "this remote cannot filter what it syncs (a filter on {collection})"
            )));
        }
        let mut page = self.pull(since, limit, mode).await?;
        page.changes
            .retain(|c| scope.wants(&c.collection, c.state.version.0));
        Ok(page)
    }

    /// The ids, each with its current version, of every record of `collection`
    /// the caller may see now and that matches `filter`, evaluated by the server as
    /// [`pull_scoped`](RemoteStore::pull_scoped) does (ids and versions only, paged
    /// by the remote). The engine's filter reconcile
    /// ([`crate::SyncEngine::reconcile_filters`]) compares it with the store to find
    /// records that stopped or started matching without a write. The default:
    /// [`RemoteError::Unsupported`].
    async fn matching(
        &self,
        collection: &str,
        filter: &Filter,
    ) -> Result<std::collections::BTreeMap<RecordId, Version>, RemoteError> {
        let _ = filter;
        Err(RemoteError::Unsupported(format!(
            "this remote cannot filter what it syncs (a filter on {collection})"
        )))
    }

    /// Largest batch [`push`](RemoteStore::push) accepts.
    fn max_push_batch(&self) -> usize {
        500
    }
}

macro_rules! forward_remote_store {
    ($($ptr:ident)::+) => {
        #[async_trait]
        impl<T: RemoteStore + ?Sized> RemoteStore for $($ptr)::+<T> {
            async fn pull(&self, since: Watermark, limit: usize, mode: PullMode) -> Result<Page, RemoteError> {
                (**self).pull(since, limit, mode).await
            }
            async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
                (**self).push(changes).await
            }
            async fn fetch(&self, c: &str, id: &RecordId) -> Result<Option<RemoteState>, RemoteError> {
                (**self).fetch(c, id).await
            }
            async fn horizon(&self) -> Result<Watermark, RemoteError> {
                (**self).horizon().await
            }
            async fn counts(&self) -> Result<Option<std::collections::BTreeMap<String, u64>>, RemoteError> {
                (**self).counts().await
            }
            async fn collections(&self) -> Result<Option<std::collections::BTreeSet<String>>, RemoteError> {
                (**self).collections().await
            }
            async fn schema(&self) -> Result<Option<crate::schema::RemoteSchema>, RemoteError> {
                (**self).schema().await
            }
            async fn pull_scoped(&self, since: Watermark, limit: usize, mode: PullMode, scope: &PullScope) -> Result<Page, RemoteError> {
                (**self).pull_scoped(since, limit, mode, scope).await
            }
            async fn matching(&self, c: &str, f: &Filter) -> Result<std::collections::BTreeMap<RecordId, Version>, RemoteError> {
                (**self).matching(c, f).await
            }
            fn max_push_batch(&self) -> usize {
                (**self).max_push_batch()
            }
        }
    };
}
forward_remote_store!(std::sync::Arc);
forward_remote_store!(Box);
