//! Multi-record local transactions: several puts and deletes applied atomically
//! with their outbox entries ([`LocalStore::transact`]), and the mark that keeps a
//! transaction's outbox entries in one push batch.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::id::RecordId;
use crate::record::{PendingChange, Record};
use crate::store::LocalStore;

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Write {
    /// Create or replace the record, as [`LocalStore::put`] does.
    Put(Record),
    /// Delete the record, as [`LocalStore::delete`] does (a record that is not
    /// there is no error and writes nothing).
    Delete {
        /// Collection name.
        collection: String,
        /// Record id.
        id: RecordId,
    },
}

impl Write {
    /// The record this write is about.
    pub fn key(&self) -> (&str, &RecordId) {
        match self {
            Write::Put(r) => (&r.collection, &r.id),
            Write::Delete { collection, id } => (collection, id),
        }
    }
}

/// What a committed transaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxReport {
    /// For each write, in order: whether its record existed locally just before it
    /// (for a delete, whether it removed a record, as [`LocalStore::delete`]
    /// answers; a record written earlier in the same transaction counts).
    pub existed: Vec<bool>,
    /// The mark the transaction left on its outbox entries ([`TxMark`]); `None` if
    /// it made none (only local-only collections, only deletes of missing records,
    /// or no writes).
    pub mark: Option<TxMark>,
}

/// The mark a transaction leaves on each outbox entry it wrote
/// ([`PendingChange::tx`]), so that the engine pushes them in one batch.
///
/// A transaction's entries need not be contiguous in the outbox: a record that
/// already had an entry keeps its position when written again. `last` is the
/// highest outbox position among the entries the transaction wrote, so that from
/// any of them the engine knows how far the transaction reaches. The mark is a
/// batching hint only: it never changes what is pushed or how it is settled. An
/// entry keeps the mark of the last transaction that wrote it (a later plain put
/// folded into it leaves the mark), and a mark whose `last` entry has left the
/// outbox meanwhile only makes a batch end earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxMark {
    /// The transaction: the change counter of its newest write, unique within one
    /// store's history ([`crate::ChangeId::n`]).
    pub id: u64,
    /// The highest outbox `seq` of the transaction's entries when it committed.
    pub last: u64,
}

/// A transaction being built: writes collected, then applied by
/// [`TxBuilder::commit`] in one [`LocalStore::transact`] call.
///
/// ```
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sync_traits::testkit::MemoryStore;
/// use sync_traits::{new_id, LocalStore, Record, SyncStore, Transact};
///
/// let store = MemoryStore::new();
/// let (a, b) = (new_id(), new_id());
/// let f = serde_json::json!({"title": "x"}).as_object().cloned().unwrap();
/// store.put(Record::new("songs", b.clone(), f.clone())).await?;
/// let report = store
///     .transaction()
///     .put(Record::new("songs", a.clone(), f))
///     .delete("songs", &b)
///     .commit()
///     .await?;
/// assert_eq!(report.existed, vec![false, true]);
/// assert_eq!(store.pending_count().await?, 2);
/// # Ok(()) }
/// # #[cfg(not(feature = "testkit"))] fn main() {}
/// ```
#[must_use = "a transaction does nothing until it is committed"]
pub struct TxBuilder<'a, S: LocalStore + ?Sized> {
    store: &'a S,
    writes: Vec<Write>,
}

impl<'a, S: LocalStore + ?Sized> TxBuilder<'a, S> {
    /// Adds a put of `record`.
    pub fn put(mut self, record: Record) -> Self {
        self.writes.push(Write::Put(record));
        self
    }

    /// Adds a delete of record `id` of `collection`.
    pub fn delete(mut self, collection: impl Into<String>, id: &RecordId) -> Self {
        self.writes.push(Write::Delete {
            collection: collection.into(),
            id: id.clone(),
        });
        self
    }

    /// Adds any write.
    pub fn write(mut self, write: Write) -> Self {
        self.writes.push(write);
        self
    }

    /// The writes collected so far, in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Applies every write atomically ([`LocalStore::transact`]).
    pub async fn commit(self) -> Result<TxReport, StoreError> {
        self.store.transact(self.writes).await
    }
}

/// [`LocalStore::transact`] through a builder: `store.transaction().put(r)
/// .delete(c, &id).commit().await`. Implemented for every [`LocalStore`].
///
/// # What is atomic where
///
/// - **Locally**: every write of a transaction and its outbox entry commit
///   together or not at all, across a crash too (one SQLite transaction, one sled
///   transaction over all trees, one lock of `MemoryStore`). A write the store
///   would refuse on its own (an unknown collection, a value that does not fit the
///   schema, a bad id) fails the whole transaction with that write's
///   [`StoreError`], and nothing changes.
/// - **Pushing**: the engine keeps a transaction's entries in one push batch when
///   they fit in one (see [`TxMark`]), so a remote that applies a batch in one
///   server transaction commits them together.
/// - **On the server** tidemark's protocol gives every change its own outcome: a
///   change of the transaction that meets a newer server version (a conflict, left
///   to the [`crate::ConflictPolicy`]) or that the server refuses (quarantined)
///   does not stop the others from being applied. So a transaction is all-or-nothing
///   on the device, and on the server when every change of it applies; it is not a
///   server-side transaction that rolls back as a whole. (PocketBase: the changes
///   of one batch that all apply are one `/api/batch` request, one database
///   transaction with consecutive seqs; a change that fails there rolls the request
///   back and the client sends the rest again without it. PostgreSQL: one
///   transaction per batch, a subtransaction per change.)
pub trait Transact: LocalStore {
    /// Starts a transaction on this store; nothing happens until
    /// [`TxBuilder::commit`].
    fn transaction(&self) -> TxBuilder<'_, Self> {
        TxBuilder {
            store: self,
            writes: Vec::new(),
        }
    }
}

impl<S: LocalStore + ?Sized> Transact for S {}

/// Where the engine ends a push batch read from the outbox (`entries`, in `seq`
/// order, `full` when the read was capped at the batch size so more entries may
/// follow): the largest prefix that splits no transaction, that is, after which no
/// entry of the prefix has a transaction reaching further ([`TxMark::last`]).
///
/// Guarantees: the answer is in `1..=entries.len()` for a non-empty batch (0 for
/// an empty one); `entries.len()` when the read was not full (nothing follows), or
/// when no prefix is clean (a transaction that reaches further than one batch
/// cannot be kept in one, and the batch goes out whole).
pub(crate) fn batch_end(entries: &[PendingChange], full: bool) -> usize {
    if !full || entries.is_empty() {
        return entries.len();
    }
    let mut reach = 0;
    let mut best = None;
    for (i, e) in entries.iter().enumerate() {
        reach = reach.max(e.tx.map_or(e.seq, |m| m.last.max(e.seq)));
        if reach <= e.seq {
            best = Some(i + 1);
        }
    }
    best.unwrap_or(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{new_id, ChangeId};
    use crate::record::Op;

    fn entry(seq: u64, tx: Option<(u64, u64)>) -> PendingChange {
        PendingChange {
            seq,
            change_id: ChangeId {
                client: new_id(),
                n: seq,
            },
            collection: "songs".into(),
            id: new_id(),
            base: None,
            op: Op::Delete,
            changed: Default::default(),
            tx: tx.map(|(id, last)| TxMark { id, last }),
        }
    }

    #[test]
    fn a_batch_ends_before_a_transaction_that_reaches_past_it() {
        // Plain entries 1, 2; transaction 9 at 3 and 7 (beyond the read).
        let b = [entry(1, None), entry(2, None), entry(3, Some((9, 7)))];
        assert_eq!(batch_end(&b, true), 2);
        // Not a full read: nothing follows, nothing to keep apart.
        assert_eq!(batch_end(&b, false), 3);
    }

    #[test]
    fn interleaved_transactions_are_kept_whole_together() {
        // T1 = {1, 3}, T2 = {2, 8}: a cut after 3 splits T2, one after 1 or 2
        // splits T1, so the batch ends after the plain entry 0.
        let b = [
            entry(0, None),
            entry(1, Some((1, 3))),
            entry(2, Some((2, 8))),
            entry(3, Some((1, 3))),
        ];
        assert_eq!(batch_end(&b, true), 1);
        // T2 within the read: all of it goes.
        let b = [
            entry(1, Some((1, 3))),
            entry(2, Some((2, 4))),
            entry(3, Some((1, 3))),
            entry(4, Some((2, 4))),
        ];
        assert_eq!(batch_end(&b, true), 4);
    }

    #[test]
    fn a_transaction_larger_than_a_batch_goes_out_in_full_batches() {
        let b = [entry(1, Some((5, 9))), entry(2, Some((5, 9)))];
        assert_eq!(batch_end(&b, true), 2);
        assert_eq!(batch_end(&[], true), 0);
    }
}
