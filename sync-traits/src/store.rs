//! The local side of the seam: [`SyncStore`], what the engine drives, and
//! [`LocalStore`], what an application uses (every `LocalStore` is a `SyncStore`).

use async_trait::async_trait;

use std::collections::BTreeSet;

use crate::error::StoreError;
use crate::feed::{ChangeHub, ChangeWatcher};
use crate::id::{ChangeId, RecordId};
use crate::record::{
    Ack, ApplyReport, LoggedConflict, Page, PendingChange, Quarantined, Record, SyncState,
};

/// How many records [`SyncStore::count`]'s and [`LocalStore::list`]'s defaults
/// read per [`SyncStore::list_page`] call.
pub const COUNT_PAGE: usize = 1000;

/// The part of a local store the sync engine drives: the watermark, the outbox,
/// applying pulled pages, acks, resyncs, the quarantine and the conflict log, and
/// two bounded reads (a page of a collection, a count). [`crate::SyncEngine`]
/// needs only this trait. What an application calls is [`LocalStore`], which
/// extends it (`LocalStore: SyncStore`), so a store can offer the application a
/// richer API than the engine needs without the engine's trait pinning it.
///
/// Implementations must make each method atomic: a call that returns an error has
/// changed nothing, and a crash at any point leaves either the whole call's effect or
/// none of it. Run [`crate::testkit::conformance`] (feature `testkit`) from your tests
/// to check an implementation against this contract.
///
/// The trait is object-safe: `Box<dyn SyncStore>` and `Arc<dyn SyncStore>` work.
/// Calling its methods on a concrete store needs the trait in scope
/// (`use sync_traits::SyncStore;`).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait SyncStore: Send + Sync {
    // ---- bounded reads ----

    /// Up to `limit` records of a collection whose id is greater than `after`
    /// (every record when `after` is `None`), in ascending id order: one page of
    /// the collection, for walking it without loading it.
    ///
    /// Paging by the last id returned is stable: a record that exists from the
    /// first page to the last is returned exactly once, whatever is inserted or
    /// deleted between pages (the pages split the id space into disjoint ranges,
    /// and each page is read consistently). A cursor whose record has since been
    /// deleted still works. `limit == 0` returns no record.
    ///
    /// Required: a store answers with a range read of `limit` records. The engine
    /// walks a collection only this way (to reconcile a filtered collection), and
    /// [`LocalStore::list`]'s default is built on it.
    async fn list_page(
        &self,
        collection: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// How many records a collection holds locally. The default walks
    /// [`list_page`](SyncStore::list_page) in pages of [`COUNT_PAGE`] records;
    /// stores should answer without loading the records.
    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut after: Option<RecordId> = None;
        loop {
            let page = self
                .list_page(collection, after.clone(), COUNT_PAGE)
                .await?;
            n += page.len();
            match page.last() {
                Some(last) if page.len() == COUNT_PAGE => after = Some(advance(&after, last)?),
                _ => return Ok(n),
            }
        }
    }

    // ---- the outbox, the watermark and what the engine settles ----

    /// The writer id this store stamps on the change ids it makes now
    /// ([`ChangeId::client`]); stable for the life of this open store.
    ///
    /// A store that outlives a process must not trust its change counter across
    /// opens: a file restored from a backup rolls it back, and a copied file makes
    /// two writers of one counter. So persistent stores take a fresh writer id (an
    /// incarnation) at every open, with the counter going on, and remember the
    /// writer ids they had (see [`made_here`](SyncStore::made_here)): a change id
    /// is then never reused for different content, whatever happens to the file.
    /// (Two stores open on one file at once share its counter; each change id names
    /// the writer whose counter range holds it, so ids stay unique.)
    async fn client_id(&self) -> Result<RecordId, StoreError>;

    /// Whether this store's own history made `change`: a writer id it had, with a
    /// counter it issued under that writer id. A store restored from a backup or
    /// copied from another device answers `false` for changes made after the copy
    /// point, so the engine treats them as foreign writes (a conflict the policy
    /// decides) rather than as its own unacknowledged ones.
    ///
    /// The default answers for the current writer id only, which is right for a
    /// store that never outlives its process.
    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        Ok(change.client == self.client_id().await?)
    }

    /// The current watermark and whether a resync is in progress.
    async fn sync_state(&self) -> Result<SyncState, StoreError>;

    /// Applies a page of remote changes and sets the watermark to `page.watermark`
    /// (never lowering it), in one transaction. A change to a record that has an
    /// outbox entry is not applied (the push will meet it as a conflict); a change
    /// whose version is older than the record's known version is skipped (stale).
    /// A change *at* the known version is applied: it is the server's own copy of
    /// the write the store last acknowledged or took, which may differ from the
    /// local copy where the server normalised a value or kept a field the write left
    /// out, so after a quiet sync every device holds exactly what the server holds.
    /// During a resync every record named in the page is marked as seen.
    ///
    /// A page is never refused for what one record holds:
    /// - a change to a collection the store does not hold is skipped and counted in
    ///   [`ApplyReport::skipped`]; a store that can later declare the collection keeps
    ///   it and applies it then (its watermark has moved past it). Changes to a
    ///   collection declared local-only are skipped and never touch local data;
    /// - a value of another type than the store declares for its field is kept as it
    ///   came and listed in [`ApplyReport::mistyped`].
    ///
    /// An error (the store failed) changes nothing.
    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError>;

    /// Up to `limit` outbox entries with `seq > after`, in ascending `seq` order.
    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError>;

    /// Number of outbox entries.
    async fn pending_count(&self) -> Result<usize, StoreError>;

    /// Settles pushed outbox entries, all in one transaction (see [`Ack`]).
    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError>;

    /// Starts a full resync: resets the watermark to zero and remembers that every
    /// current record is unconfirmed. The outbox is untouched. Persisted, so a crash
    /// mid-resync resumes it.
    async fn begin_resync(&self) -> Result<(), StoreError>;

    /// Ends a resync: removes every record not seen since `begin_resync` that has no
    /// outbox entry, in the collections of `synced` (`None`: every collection the
    /// store syncs). Records of collections outside it (a collection the remote does
    /// not sync) and of local-only collections are never removed. Returns how many
    /// were removed.
    async fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError>;

    /// Changes the remote refused for good, with their data, oldest first.
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;

    /// Writes a quarantined change again as a new local write (a put of its data,
    /// or a delete), with a new change id on the record's current known version, and
    /// removes it from the quarantine, in one transaction. Returns whether `id` was
    /// in the quarantine. A value of another type than the store declares for its
    /// field (a pulled value the app's write kept) is written as the change holds it:
    /// not coerced, not refused (the rule for mistyped values); a server that refuses
    /// it again sends the change back to the quarantine, reported as a rejection. An
    /// error (the collection is no longer held, storage) changes nothing: the change
    /// stays quarantined.
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError>;

    /// Removes a quarantined change for good. Returns whether it was there.
    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError>;

    /// Every conflict the engine met and the store logged ([`Ack::Conflict`]),
    /// oldest first, until cleared.
    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError>;

    /// Removes the logged conflicts with these ids; returns how many were removed.
    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError>;

    // ---- the engine's own notes ----

    /// Whether this store keeps [`set_sync_meta`](SyncStore::set_sync_meta)'s
    /// values across opens (default `false`: the engine then assumes nothing about
    /// what an earlier open did; see [`crate::SyncScope`]).
    fn keeps_sync_meta(&self) -> bool {
        false
    }

    /// A small value the engine keeps in the store under `key` (the scope each
    /// collection was last synced with), `None` if never set. Default: `None`.
    async fn sync_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Sets (or, with `None`, removes) the value under `key`, in one transaction,
    /// durable like any other write of the store. Never touches records, the
    /// outbox or the watermark. Default: does nothing (and
    /// [`keeps_sync_meta`](SyncStore::keeps_sync_meta) answers `false`).
    async fn set_sync_meta(&self, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let _ = (key, value);
        Ok(())
    }
}

/// A local store that always works, offline included: what an application
/// reads and writes. Every `LocalStore` is a [`SyncStore`], the part the engine
/// drives.
///
/// The atomicity contract of [`SyncStore`] holds for every method here too. Run
/// [`crate::testkit::conformance`] (feature `testkit`) from your tests to check an
/// implementation.
///
/// The trait is object-safe: `Box<dyn LocalStore>` and `Arc<dyn LocalStore>` work
/// (and are [`SyncStore`]s too).
#[async_trait]
pub trait LocalStore: SyncStore {
    /// The record, if present locally.
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError>;

    /// Every record of a collection, ordered by id. The default walks
    /// [`list_page`](SyncStore::list_page) in pages of [`COUNT_PAGE`] records, so
    /// a store need not implement it; an app showing part of a large collection
    /// uses `list_page` (or the typed handle's page) instead.
    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let mut all: Vec<Record> = Vec::new();
        let mut after: Option<RecordId> = None;
        loop {
            let page = self
                .list_page(collection, after.clone(), COUNT_PAGE)
                .await?;
            let full = page.len() == COUNT_PAGE;
            all.extend(page);
            match all.last() {
                Some(last) if full => after = Some(advance(&after, last)?),
                _ => return Ok(all),
            }
        }
    }

    /// Creates or replaces a record and records the write in the outbox, in one
    /// transaction. Writes to a record that already has an outbox entry are coalesced
    /// into it (new change id, union of changed fields, same outbox position).
    async fn put(&self, record: Record) -> Result<(), StoreError>;

    /// Deletes a record and records the delete in the outbox, in one transaction.
    /// Returns whether the record existed locally.
    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError>;

    /// Applies several puts and deletes, with their outbox entries, in one
    /// transaction: all of them or, on any error, none (a crash included). Each
    /// write is checked and applied as [`put`](LocalStore::put) or
    /// [`delete`](LocalStore::delete) would apply it, in order, seeing the ones
    /// before it; writes to one record coalesce into one outbox entry as sequential
    /// puts would, and writes to local-only collections make no entry. A write the
    /// store refuses fails the whole call with the error `put` or `delete` would
    /// have returned for it, and nothing changes. Every outbox entry the
    /// transaction wrote gets its [`TxMark`](crate::TxMark), so the engine pushes
    /// them in one batch when they fit in one ([`crate::Transact`] has the
    /// builder, and says what is atomic on the server).
    ///
    /// There is no default: a store must implement it natively (one storage
    /// transaction), since a default made of single puts and deletes would not be
    /// atomic. A wrapper store forwards it. Run
    /// [`crate::testkit::conformance`] to check an implementation.
    async fn transact(
        &self,
        writes: Vec<crate::transaction::Write>,
    ) -> Result<crate::transaction::TxReport, StoreError>;

    // ---- the change feed (see [`crate::feed`]) ----

    /// The hub through which this store reports every record it changes, or
    /// `None` (the default) if it reports none.
    ///
    /// A store that returns one promises the contract of [`crate::feed`]: every
    /// mutating method records in a [`ChangeHub::batch`] taken before its
    /// transaction exactly the records it wrote or removed (applied pulled
    /// changes, resync removals, records an ack rewrote, local writes), and
    /// publishes it after its transaction commits, before returning; a failed
    /// call publishes nothing. `crate::testkit::conformance` checks it.
    fn change_hub(&self) -> Option<ChangeHub> {
        None
    }

    /// A watcher of the changes of `collection` from now on (see
    /// [`crate::feed`]): create it, then read the initial state, then refresh
    /// the records each [`ChangeWatcher::changed`] names. Waits for the store
    /// calls recording changes at this moment to publish them (at most one
    /// transaction).
    ///
    /// Errors: [`StoreError::Backend`] if the store reports no changes
    /// ([`change_hub`](LocalStore::change_hub) is `None`).
    fn changes(&self, collection: &str) -> Result<ChangeWatcher, StoreError> {
        match self.change_hub() {
            Some(h) => Ok(h.watch(collection)),
            None => Err(no_feed()),
        }
    }

    /// A watcher of every collection's changes; as [`changes`](LocalStore::changes).
    fn all_changes(&self) -> Result<ChangeWatcher, StoreError> {
        match self.change_hub() {
            Some(h) => Ok(h.watch_all()),
            None => Err(no_feed()),
        }
    }
}

/// The next cursor of a default walk over [`SyncStore::list_page`]: the page's
/// last id, which must be past the cursor the page was asked after (a store
/// whose pages do not advance would otherwise be walked forever).
fn advance(after: &Option<RecordId>, last: &Record) -> Result<RecordId, StoreError> {
    match after {
        Some(a) if last.id <= *a => Err(StoreError::Backend(
            format!(
                "list_page after {a} returned {} (not past the cursor)",
                last.id
            )
            .into(),
        )),
        _ => Ok(last.id.clone()),
    }
}

fn no_feed() -> StoreError {
    StoreError::Backend("this store reports no changes (LocalStore::change_hub is None)".into())
}

macro_rules! forward_stores {
    ($($ptr:ident)::+) => {
        #[async_trait]
        impl<T: SyncStore + ?Sized> SyncStore for $($ptr)::+<T> {
            async fn list_page(
                &self,
                c: &str,
                after: Option<RecordId>,
                limit: usize,
            ) -> Result<Vec<Record>, StoreError> {
                (**self).list_page(c, after, limit).await
            }
            async fn count(&self, c: &str) -> Result<usize, StoreError> {
                (**self).count(c).await
            }
            async fn client_id(&self) -> Result<RecordId, StoreError> {
                (**self).client_id().await
            }
            async fn made_here(&self, c: &ChangeId) -> Result<bool, StoreError> {
                (**self).made_here(c).await
            }
            async fn sync_state(&self) -> Result<SyncState, StoreError> {
                (**self).sync_state().await
            }
            async fn apply_remote(&self, p: &Page) -> Result<ApplyReport, StoreError> {
                (**self).apply_remote(p).await
            }
            async fn pending(&self, a: u64, l: usize) -> Result<Vec<PendingChange>, StoreError> {
                (**self).pending(a, l).await
            }
            async fn pending_count(&self) -> Result<usize, StoreError> {
                (**self).pending_count().await
            }
            async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
                (**self).ack(acks).await
            }
            async fn begin_resync(&self) -> Result<(), StoreError> {
                (**self).begin_resync().await
            }
            async fn finish_resync(&self, s: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
                (**self).finish_resync(s).await
            }
            async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
                (**self).quarantined().await
            }
            async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
                (**self).retry_quarantined(id).await
            }
            async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
                (**self).discard_quarantined(id).await
            }
            async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
                (**self).conflicts().await
            }
            async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
                (**self).clear_conflicts(ids).await
            }
            fn keeps_sync_meta(&self) -> bool {
                (**self).keeps_sync_meta()
            }
            async fn sync_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
                (**self).sync_meta(key).await
            }
            async fn set_sync_meta(&self, key: &str, value: Option<String>) -> Result<(), StoreError> {
                (**self).set_sync_meta(key, value).await
            }
        }

        #[async_trait]
        impl<T: LocalStore + ?Sized> LocalStore for $($ptr)::+<T> {
            async fn get(&self, c: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
                (**self).get(c, id).await
            }
            async fn list(&self, c: &str) -> Result<Vec<Record>, StoreError> {
                (**self).list(c).await
            }
            async fn put(&self, r: Record) -> Result<(), StoreError> {
                (**self).put(r).await
            }
            async fn delete(&self, c: &str, id: &RecordId) -> Result<bool, StoreError> {
                (**self).delete(c, id).await
            }
            async fn transact(
                &self,
                w: Vec<crate::transaction::Write>,
            ) -> Result<crate::transaction::TxReport, StoreError> {
                (**self).transact(w).await
            }
            fn change_hub(&self) -> Option<ChangeHub> {
                (**self).change_hub()
            }
        }
    };
}

forward_stores!(std::sync::Arc);
forward_stores!(Box);
