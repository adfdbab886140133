//! The change feed: which records a store changed, reported so that an app cannot
//! miss one.
//!
//! Every store write passes through the store, so the store reports it: each
//! [`LocalStore`](crate::LocalStore) that supports the feed owns a [`ChangeHub`]
//! and, in every mutating call, records in a [`ChangeBatch`] exactly the records
//! it wrote or removed, then publishes the batch once its transaction has
//! committed. An app asks for a [`ChangeWatcher`] of one collection
//! ([`LocalStore::changes`](crate::LocalStore::changes)) or of all
//! ([`LocalStore::all_changes`](crate::LocalStore::all_changes)) and calls
//! [`ChangeWatcher::changed`] in a loop to refresh exactly the records named.
//! Unlike [`SyncEvent`](crate::SyncEvent)s (a broadcast that drops what a slow
//! receiver has not taken), nothing here is ever lost, and it covers every
//! writer of the store, the app's own writes included.
//!
//! ```
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use sync_traits::testkit::MemoryStore;
//! use sync_traits::{new_id, LocalStore, Record};
//!
//! let store = MemoryStore::new();
//! // First the watcher, then the initial read: nothing falls between them.
//! let mut songs = store.changes("songs")?;
//! let mut view: BTreeMap<_, _> =
//!     store.list("songs").await?.into_iter().map(|r| (r.id, r.fields)).collect();
//!
//! let id = new_id();
//! let fields = serde_json::json!({"title": "a"}).as_object().cloned().unwrap();
//! store.put(Record::new("songs", id.clone(), fields)).await?; // or a sync, a resync...
//! store.put(Record::new("friends", new_id(), Default::default())).await?; // not ours
//!
//! // In a UI task: `while let Some(changes) = songs.changed().await { ... }`
//! for c in songs.changed().await.unwrap_or_default() {
//!     match store.get("songs", &c.id).await? {
//!         Some(r) => view.insert(c.id, r.fields),
//!         None => view.remove(&c.id),
//!     };
//! }
//! assert_eq!(view.len(), 1);
//! assert!(songs.try_changed().is_empty());
//! # Ok(()) }
//! # #[cfg(not(feature = "testkit"))] fn main() {}
//! ```
//!
//! # What is reported
//!
//! One [`Change`] (collection, id, [`ChangeKind`], [`ChangeCause`]) for every
//! record whose local data a call wrote or removed:
//! - a pulled change `apply_remote` applied ([`ChangeCause::Pull`]); changes it
//!   skipped (stale, deferred behind an outbox entry, of a collection it does not
//!   hold) are not reported, nor a pulled deletion of a record the store did not
//!   hold (nothing changed);
//! - a record `finish_resync` removed ([`ChangeCause::Resync`]);
//! - a record an `ack` rewrote: a conflict resolution (the server's state taken,
//!   or a merge written), a rejected change's record reset to the server's state
//!   ([`ChangeCause::Settlement`]); an ack that only settles the outbox changes no
//!   record and reports nothing;
//! - an app's `put` and `delete`, and a retried quarantined change
//!   ([`ChangeCause::Local`]); a `delete` of a record that is not there reports
//!   nothing;
//! - parked records applied when a collection is declared on an open store
//!   ([`ChangeCause::Declared`]; SQLite and sled apply them while opening, before
//!   any watcher can exist, so their effect is simply part of the state `open`
//!   returns).
//!
//! A record is reported when the store wrote it, even if the values it wrote
//! equal the ones it had (a pull applying the server's copy of the app's own
//! acknowledged write, a put of the same values). Writes that bypass the store
//! (plain SQL on a SQLite file from another connection) are not reported.
//!
//! # When, and in what order
//!
//! A call's changes are published after its transaction commits and before the
//! call returns: a watcher never hears of a change a read cannot see yet, and once
//! a write call has returned, its changes are waiting in every watcher that
//! existed when it began. A watcher sees every change committed by a call that
//! began after the watcher was created; creating a watcher waits for the store
//! calls that are recording changes at that moment to publish them (at most the
//! length of one store transaction), so "create the watcher, then read the
//! initial state" misses nothing: a change committed before the read is in the
//! read, one committed after it is reported. (Do not create one while holding a
//! store's own lock, such as inside `SqliteStore::with_connection`.)
//!
//! Stores publish a call's changes before they let the next call commit, so a
//! watcher receives calls' changes in commit order, and a record's latest kind
//! matches what the store holds once the calls that changed it have returned.
//!
//! # Coalescing and memory
//!
//! A watcher reports, per record, the latest change since its last read: kind
//! and cause of the newest write win, and the record keeps the position of its
//! first change since the last read. [`ChangeWatcher::changed`] returns them all
//! and starts afresh. Nothing is ever dropped for lag. A publish appends a call's
//! list to each watcher it concerns whole; the reader coalesces what it takes, on
//! its own task. A watcher that does not read has its queue folded (coalesced) by
//! the publish that makes it outgrow twice its distinct records plus 262 144
//! changes, so its memory stays bounded by the distinct records changed since its
//! last read (at most twice that, plus 262 144 entries).
//!
//! # Cost
//!
//! Writers never wait for a reader: a publish holds a watcher's mailbox lock
//! only to append (or, for a reader far behind, to fold). A collection nobody
//! watches costs a store a map lookup per call (per collection of a page) and
//! records nothing, and a watcher of one collection adds nothing to the applies
//! of another. A watched change costs its record id and collection name copied
//! once per watcher. Measured side by side (BENCHMARKS.md, "Change feed"): with
//! a watcher, applying a 10 000-record page into SQLite takes 1.043x the
//! instructions and a first sync of 100 000 records 1.025x; wall-time medians on
//! the shared test machine range 1.0–1.16x (apply) and 1.05x (first sync).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};

use tokio::sync::Notify;

use crate::id::RecordId;

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The record was written (created or replaced): read it again.
    Upserted,
    /// The record was removed: it is no longer in the store.
    Removed,
}

/// Which kind of store call changed a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeCause {
    /// A pulled change `apply_remote` applied.
    Pull,
    /// A record a full resync removed because the server no longer has it.
    Resync,
    /// A record an `ack` rewrote: a conflict resolution (the server's state taken,
    /// or a merge), or a rejected change's record reset to the server's state.
    Settlement,
    /// The app's own write: `put`, `delete`, or a retried quarantined change.
    Local,
    /// A parked record applied when its collection was declared.
    Declared,
}

/// One changed record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    /// The record's collection.
    /// (Shared: every change of one call's collection holds the same name.)
    pub collection: Arc<str>,
    /// The record's id.
    pub id: RecordId,
    /// What happened to it (the latest change since the watcher's last read).
    pub kind: ChangeKind,
    /// Which call changed it (the latest since the watcher's last read).
    pub cause: ChangeCause,
}

/// Unread changes past which a publish folds a watcher's queue (see [`Unread`]).
const FOLD_SLACK: usize = 262_144;

/// What one watcher has not read yet: the batches as published (appended whole,
/// so a publish costs the writer no per-change work), and what was folded of them
/// (coalesced per record). The reader folds on its own task when it reads; a
/// publish folds only when the queue outgrows twice the folded records plus
/// [`FOLD_SLACK`] (a reader that is not reading), which bounds the memory by the
/// distinct records changed since the last read.
#[derive(Default)]
struct Unread {
    batches: Vec<Vec<Change>>,
    queued: usize,
    folded: Folded,
    closed: bool,
}

/// Changes coalesced per record, in the order of each record's first change.
#[derive(Default)]
struct Folded {
    changes: Vec<Change>,
    /// Per collection, the position in `changes` of each record's entry.
    index: HashMap<String, HashMap<RecordId, usize>>,
}

impl Folded {
    fn fold(&mut self, batches: Vec<Vec<Change>>) {
        let total: usize = batches.iter().map(Vec::len).sum();
        self.changes.reserve(total);
        for b in batches {
            let mut it = b.into_iter().peekable();
            while let Some(first) = it.next() {
                // A run of one collection: its map looked up once.
                let coll = first.collection.clone();
                let per = match self.index.get_mut(&*coll) {
                    Some(per) => per,
                    None => self.index.entry(coll.to_string()).or_default(),
                };
                per.reserve(total.min(1 << 20));
                let mut next = Some(first);
                while let Some(c) = next {
                    match per.get(&c.id) {
                        Some(&i) => {
                            if let Some(e) = self.changes.get_mut(i) {
                                e.kind = c.kind;
                                e.cause = c.cause;
                            }
                        }
                        None => {
                            per.insert(c.id.clone(), self.changes.len());
                            self.changes.push(c);
                        }
                    }
                    next = it.next_if(|n| n.collection == coll);
                }
            }
        }
    }
}

impl Unread {
    fn fold(&mut self) {
        let batches = std::mem::take(&mut self.batches);
        self.queued = 0;
        self.folded.fold(batches);
    }

    fn is_empty(&self) -> bool {
        self.queued == 0 && self.folded.changes.is_empty()
    }
}

/// A watcher's mailbox, shared between it and the hub.
#[derive(Default)]
struct Slot {
    unread: Mutex<Unread>,
    notify: Notify,
    /// Set when the watcher is dropped: publishing skips it.
    gone: AtomicBool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Unread> {
        // Only ever left half-updated by a panic in an allocation: go on with it.
        self.unread.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> bool {
        !self.gone.load(Ordering::Acquire)
    }

    /// Everything unread, coalesced; the folding runs outside the lock.
    fn take(&self) -> Vec<Change> {
        let (batches, mut folded) = {
            let mut u = self.lock();
            u.queued = 0;
            (
                std::mem::take(&mut u.batches),
                std::mem::take(&mut u.folded),
            )
        };
        if folded.changes.is_empty() && batches.len() == 1 {
            // One batch: coalesce only if it names a record twice.
            let mut seen: HashMap<(&str, &RecordId), ()> = HashMap::new();
            let b = &batches[0];
            if b.iter()
                .all(|c| seen.insert((&*c.collection, &c.id), ()).is_none())
            {
                return batches.into_iter().next().unwrap_or_default();
            }
        }
        folded.fold(batches);
        folded.changes
    }
}

/// The watchers of one store.
#[derive(Default)]
struct Registry {
    by_collection: HashMap<String, Vec<Arc<Slot>>>,
    all: Vec<Arc<Slot>>,
}

impl Registry {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_collection.is_empty()
    }

    fn watched(&self, collection: &str) -> bool {
        self.all.iter().any(|s| s.live())
            || self
                .by_collection
                .get(collection)
                .is_some_and(|v| v.iter().any(|s| s.live()))
    }

    fn prune(&mut self) {
        self.all.retain(|s| s.live());
        self.by_collection.retain(|_, v| {
            v.retain(|s| s.live());
            !v.is_empty()
        });
    }
}

impl Drop for Registry {
    /// The store is gone: every watcher returns what it holds, then `None`.
    fn drop(&mut self) {
        let slots = self.all.iter().chain(self.by_collection.values().flatten());
        for s in slots {
            s.lock().closed = true;
            s.notify.notify_one();
        }
    }
}

/// The hub through which a store reports its changes to its watchers.
///
/// A store implementation owns one (for its whole open life; clones share it),
/// returns it from [`LocalStore::change_hub`](crate::LocalStore::change_hub), and
/// in every mutating call: takes a [`ChangeBatch`] ([`ChangeHub::batch`])
/// *before* it starts its transaction, records in it every record it writes or
/// removes, and calls [`ChangeBatch::publish`] after the transaction has
/// committed (dropping the batch instead, when the call fails, reports nothing).
/// A call must not take a second batch of the same hub while it holds one.
#[derive(Clone, Default)]
pub struct ChangeHub {
    reg: Arc<RwLock<Registry>>,
}

impl fmt::Debug for ChangeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.read();
        f.debug_struct("ChangeHub")
            .field("watched_collections", &r.by_collection.len())
            .field("all_watchers", &r.all.len())
            .finish()
    }
}

impl ChangeHub {
    /// A hub with no watchers.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        // The registry is only a list of mailboxes: usable after a panic.
        self.reg.read().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, collection: Option<&str>) -> ChangeWatcher {
        let slot = Arc::new(Slot::default());
        // The write lock waits for every batch in flight to publish: the watcher
        // sees exactly the calls that begin after this.
        let mut r = self.reg.write().unwrap_or_else(|e| e.into_inner());
        r.prune();
        match collection {
            Some(c) => r
                .by_collection
                .entry(c.to_owned())
                .or_default()
                .push(slot.clone()),
            None => r.all.push(slot.clone()),
        }
        ChangeWatcher {
            slot,
            reg: Arc::downgrade(&self.reg),
        }
    }

    /// A watcher of `collection`'s changes, from the next store call on (see the
    /// [module docs](self)). Waits for the store calls publishing at this moment.
    pub fn watch(&self, collection: &str) -> ChangeWatcher {
        self.subscribe(Some(collection))
    }

    /// A watcher of every collection's changes.
    pub fn watch_all(&self) -> ChangeWatcher {
        self.subscribe(None)
    }

    /// Starts recording one store call's changes. Hold it from before the call's
    /// transaction begins until [`ChangeBatch::publish`] after it commits.
    pub fn batch(&self) -> ChangeBatch<'_> {
        let reg = self.read();
        let idle = reg.is_empty();
        ChangeBatch {
            reg,
            idle,
            out: Vec::new(),
            last: None,
            len: 0,
        }
    }
}

/// The changes of one store call, published to the watchers when it commits.
///
/// While a batch exists, no watcher is added to its hub (see
/// [`ChangeHub::batch`]), so [`ChangeBatch::watched`] stays true or false for the
/// whole call. Each change goes straight to the list of every watcher it concerns,
/// so publishing hands each watcher its list whole.
pub struct ChangeBatch<'a> {
    reg: RwLockReadGuard<'a, Registry>,
    /// No watcher at all: every check answers at once.
    idle: bool,
    /// Per watcher concerned, its changes.
    out: Vec<(Arc<Slot>, Vec<Change>)>,
    /// The collection last pushed, and the positions in `out` of its watchers.
    last: Option<(Arc<str>, Vec<usize>)>,
    len: usize,
}

impl fmt::Debug for ChangeBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeBatch")
            .field("changes", &self.len)
            .finish()
    }
}

impl ChangeBatch<'_> {
    /// Whether anyone watches `collection`: a store may skip recording the
    /// changes of a collection nobody watches (they would be dropped anyway).
    /// A map lookup; nothing when the hub has no watcher.
    pub fn watched(&self, collection: &str) -> bool {
        !self.idle && self.reg.watched(collection)
    }

    /// Records a change of a record of `collection` if anyone watches it.
    pub fn record(
        &mut self,
        collection: &str,
        id: &RecordId,
        kind: ChangeKind,
        cause: ChangeCause,
    ) {
        if self.watched(collection) {
            self.push(collection, id, kind, cause);
        }
    }

    /// The positions in `out` of `collection`'s watchers (added if new).
    fn targets(&mut self, collection: &str) -> Vec<usize> {
        let reg = &self.reg;
        let slots = reg
            .by_collection
            .get(collection)
            .into_iter()
            .flatten()
            .chain(reg.all.iter())
            .filter(|s| s.live());
        let mut at = Vec::new();
        for slot in slots {
            let i = match self.out.iter().position(|(s, _)| Arc::ptr_eq(s, slot)) {
                Some(i) => i,
                None => {
                    self.out.push((slot.clone(), Vec::new()));
                    self.out.len() - 1
                }
            };
            at.push(i);
        }
        at
    }

    /// Records a change for the watchers of `collection` (none: nothing), for a
    /// caller that checked [`watched`](Self::watched) once for many records.
    pub fn push(&mut self, collection: &str, id: &RecordId, kind: ChangeKind, cause: ChangeCause) {
        if !matches!(&self.last, Some((c, _)) if **c == *collection) {
            let at = self.targets(collection);
            self.last = Some((Arc::from(collection), at));
        }
        let Some((name, at)) = &self.last else {
            return;
        };
        let Some((&final_at, rest)) = at.split_last() else {
            return;
        };
        let change = Change {
            collection: name.clone(),
            id: id.clone(),
            kind,
            cause,
        };
        for &i in rest {
            self.out[i].1.push(change.clone());
        }
        self.out[final_at].1.push(change);
        self.len += 1;
    }

    /// Makes room for `n` more changes of `collection` (a hint for a store about
    /// to push a page's worth; nothing if nobody watches it).
    pub fn reserve(&mut self, collection: &str, n: usize) {
        if !self.watched(collection) {
            return;
        }
        for i in self.targets(collection) {
            self.out[i].1.reserve(n);
        }
    }

    /// How many changes are recorded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands each watcher its changes and wakes it. Call it after the call's
    /// transaction has committed, before the store lets another call commit (so
    /// watchers get calls' changes in commit order). Never waits for a reader: a
    /// watcher's mailbox lock is held only to append (or, for a watcher far
    /// behind, to fold its queue).
    pub fn publish(mut self) {
        for (slot, changes) in std::mem::take(&mut self.out) {
            if changes.is_empty() {
                continue;
            }
            let mut u = slot.lock();
            u.queued += changes.len();
            u.batches.push(changes);
            if u.queued > 2 * u.folded.changes.len() + FOLD_SLACK {
                u.fold();
            }
            drop(u);
            slot.notify.notify_one();
        }
    }
}

/// A subscription to a store's changes (one collection, or all): see the
/// [module docs](self) for what it reports and when.
///
/// Created by [`LocalStore::changes`](crate::LocalStore::changes) or
/// [`LocalStore::all_changes`](crate::LocalStore::all_changes). Dropping it
/// ends the subscription.
pub struct ChangeWatcher {
    slot: Arc<Slot>,
    reg: Weak<RwLock<Registry>>,
}

impl fmt::Debug for ChangeWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeWatcher")
            .field("queued", &self.slot.lock().queued)
            .finish()
    }
}

impl ChangeWatcher {
    /// Waits until at least one change is unread, then returns every change since
    /// the last read, one per record (its latest kind and cause), in the order of
    /// each record's first change since then. `None` once the store is gone and
    /// every change has been read.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn changed(&mut self) -> Option<Vec<Change>> {
        loop {
            {
                let u = self.slot.lock();
                let (empty, closed) = (u.is_empty(), u.closed);
                drop(u);
                if !empty {
                    return Some(self.slot.take());
                }
                if closed {
                    return None;
                }
            }
            // A permit stored by a publish between the check and here wakes this
            // at once: no wake-up is lost.
            self.slot.notify.notified().await;
        }
    }

    /// Every change since the last read, without waiting (empty if none).
    pub fn try_changed(&mut self) -> Vec<Change> {
        self.slot.take()
    }

    /// How many records have unread changes.
    pub fn unread(&self) -> usize {
        let mut u = self.slot.lock();
        u.fold();
        u.folded.changes.len()
    }
}

impl Drop for ChangeWatcher {
    fn drop(&mut self) {
        self.slot.gone.store(true, Ordering::Release);
        // Unregister now if no store call holds the registry; else the next
        // subscription prunes it (publishing already skips it).
        if let Some(reg) = self.reg.upgrade() {
            if let Ok(mut r) = reg.try_write() {
                r.prune();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::new_id;

    #[tokio::test]
    async fn coalesces_per_record_latest_kind_wins_and_keeps_first_position() {
        let hub = ChangeHub::new();
        let mut w = hub.watch("songs");
        let (a, b) = (new_id(), new_id());
        let mut batch = hub.batch();
        batch.record("songs", &a, ChangeKind::Upserted, ChangeCause::Pull);
        batch.record("songs", &b, ChangeKind::Upserted, ChangeCause::Pull);
        batch.record("other", &b, ChangeKind::Upserted, ChangeCause::Pull);
        batch.publish();
        let mut batch = hub.batch();
        batch.record("songs", &a, ChangeKind::Removed, ChangeCause::Local);
        batch.publish();
        let got = w.changed().await.expect("open");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].id.clone(), got[0].kind, got[0].cause),
            (a, ChangeKind::Removed, ChangeCause::Local)
        );
        assert_eq!((got[1].id.clone(), got[1].kind), (b, ChangeKind::Upserted));
        assert!(w.try_changed().is_empty());
    }

    #[tokio::test]
    async fn unwatched_collections_record_nothing_and_a_dropped_hub_closes() {
        let hub = ChangeHub::new();
        let mut batch = hub.batch();
        assert!(!batch.watched("songs"));
        batch.record("songs", &new_id(), ChangeKind::Upserted, ChangeCause::Pull);
        assert!(batch.is_empty());
        drop(batch);
        let mut all = hub.watch_all();
        let w = hub.watch("songs");
        drop(w);
        let mut batch = hub.batch();
        assert!(
            batch.watched("friends"),
            "an all-collections watcher watches every one"
        );
        batch.record(
            "friends",
            &new_id(),
            ChangeKind::Upserted,
            ChangeCause::Pull,
        );
        batch.publish();
        drop(hub);
        assert_eq!(all.changed().await.map(|v| v.len()), Some(1));
        assert_eq!(all.changed().await, None);
    }

    #[tokio::test]
    async fn a_reader_far_behind_stays_bounded_by_its_distinct_records() {
        let hub = ChangeHub::new();
        let mut w = hub.watch("songs");
        let ids: Vec<RecordId> = (0..1000).map(|_| new_id()).collect();
        let mut most = 0;
        for round in 0..400 {
            let mut batch = hub.batch();
            for id in &ids {
                let kind = if round % 2 == 0 {
                    ChangeKind::Upserted
                } else {
                    ChangeKind::Removed
                };
                batch.record("songs", id, kind, ChangeCause::Pull);
            }
            batch.publish();
            let u = w.slot.lock();
            most = most.max(u.queued + u.folded.changes.len());
        }
        assert!(
            most <= 2 * ids.len() + FOLD_SLACK + ids.len(),
            "400k changes of 1000 records held at most {most} entries"
        );
        let got = w.changed().await.expect("open");
        assert_eq!(got.len(), ids.len(), "one change per record");
        assert!(
            got.iter().all(|c| c.kind == ChangeKind::Removed),
            "the latest kind wins"
        );
        assert_eq!(
            got.iter().map(|c| &c.id).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
    }
}
