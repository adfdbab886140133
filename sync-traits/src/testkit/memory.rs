//! [`MemoryStore`]: a complete in-memory [`LocalStore`], the reference
//! implementation of the contract.

use crate::SyncStore;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::feed::{ChangeCause, ChangeHub, ChangeKind};
use crate::id::{new_id, ChangeId, RecordId};
use crate::record::{
    changed_fields, Ack, ApplyReport, Fields, LoggedConflict, Op, Page, PendingChange, Quarantined,
    Record, RemoteState, SyncState, Version, Watermark,
};
use crate::store::LocalStore;
use crate::transaction::{TxMark, TxReport, Write};

type Key = (String, RecordId);

#[derive(Clone, Debug, Default)]
struct Inner {
    /// The writer ids this store had, oldest first, each with the first change
    /// counter it issued; the last one is the current writer.
    writers: Vec<(RecordId, u64)>,
    counter: u64,
    /// `None`: every (valid) collection is held. `Some`: only these.
    declared: Option<BTreeSet<String>>,
    /// Held, written locally, never synced.
    local_only: BTreeSet<String>,
    /// Newest pulled state of records of undeclared collections.
    parked: BTreeMap<Key, RemoteState>,
    quarantine_seq: u64,
    conflicts: Vec<LoggedConflict>,
    conflict_seq: u64,
    outbox_seq: u64,
    records: BTreeMap<Key, Fields>,
    versions: HashMap<Key, Version>,
    outbox: BTreeMap<u64, PendingChange>,
    outbox_index: HashMap<Key, u64>,
    watermark: Watermark,
    resyncing: bool,
    seen: HashSet<Key>,
    quarantine: Vec<Quarantined>,
    /// The engine's notes ([`SyncStore::set_sync_meta`]), kept by `reopen_copy`.
    meta: BTreeMap<String, String>,
}

/// An in-memory [`LocalStore`]. Every method takes one lock, so each is atomic;
/// "crashing" is modelled by dropping the engine and keeping the store, and a
/// restored or copied store file by [`MemoryStore::reopen_copy`].
///
/// By default it holds every collection; [`MemoryStore::with_collections`] makes
/// it hold only some (like a store with a schema), [`MemoryStore::declare`] adds
/// one later, and [`MemoryStore::with_local_only`] declares collections that are
/// never synced.
///
/// It reports every change through its change feed ([`LocalStore::changes`],
/// see [`crate::feed`]), published under its lock, in commit order; parked
/// records applied by [`declare`](Self::declare) are reported with
/// [`ChangeCause::Declared`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Reports every change (see [`crate::feed`]); a batch is taken before the
    /// lock, always in that order.
    hub: ChangeHub,
}

/// The keys of `collection`'s records after `after` (all of them for `None`)
/// and of the collections sorting after it: callers stop at the first other
/// collection.
fn collection_range(
    collection: &str,
    after: Option<RecordId>,
) -> (std::ops::Bound<Key>, std::ops::Bound<Key>) {
    use std::ops::Bound;
    let start = match after {
        Some(a) => Bound::Excluded((collection.to_owned(), a)),
        None => Bound::Included((collection.to_owned(), RecordId::smallest())),
    };
    (start, Bound::Unbounded)
}

/// Checks a collection name: 1–64 characters of `[A-Za-z0-9_]`.
pub(crate) fn check_collection(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::UnknownCollection(name.to_owned()));
    }
    Ok(())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }

    /// A store that holds only `collections` (plus any local-only ones). Changes
    /// pulled for others are skipped and kept until [`declare`](Self::declare).
    pub fn with_collections<I, S>(collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let s = Self::new();
        s.inner_mut().declared = Some(collections.into_iter().map(Into::into).collect());
        s
    }

    /// Declares `collections` local-only: held and written like any other, never
    /// in the outbox, never touched by a pull or a resync.
    pub fn with_local_only<I, S>(self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inner_mut()
            .local_only
            .extend(collections.into_iter().map(Into::into));
        self
    }

    /// Starts holding `collection` (as an app does when it ships a schema that
    /// declares it): what earlier pulls skipped of it is applied now, by the rule
    /// of a pulled page (a record with an outbox entry is left alone, an older
    /// version than the known one is stale). Returns how many live records were
    /// parked for it.
    pub fn declare(&self, collection: &str) -> usize {
        let mut feed = self.hub.batch();
        let mut g = self.inner_mut();
        let Some(declared) = g.declared.as_mut() else {
            return 0;
        };
        if !declared.insert(collection.to_owned()) {
            return 0;
        }
        let keys: Vec<Key> = g
            .parked
            .keys()
            .filter(|(c, _)| c == collection)
            .cloned()
            .collect();
        let mut n = 0;
        for key in keys {
            if let Some(state) = g.parked.remove(&key) {
                n += usize::from(state.fields.is_some());
                if g.resyncing {
                    // Delivered by this resync: seen.
                    g.seen.insert(key.clone());
                }
                // As a pulled page applies: a pending local change is not
                // overwritten, an older version is stale, the known one applies.
                if g.outbox_index.contains_key(&key)
                    || g.versions.get(&key).is_some_and(|v| *v > state.version)
                {
                    continue;
                }
                if let Some(kind) = g.set_server_state(key.clone(), &state) {
                    feed.record(&key.0, &key.1, kind, ChangeCause::Declared);
                }
            }
        }
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        n
    }

    /// Whether the store holds `collection` now (declared, or local-only).
    pub fn holds(&self, collection: &str) -> bool {
        self.inner_mut().holds(collection)
    }

    /// A copy of this store as if its file had been copied (or backed up) now and
    /// opened later, elsewhere: the same data, outbox, watermark and history, and
    /// a new writer id, as every persistent store takes at open. Writes to either
    /// copy afterwards never share a change id.
    pub fn reopen_copy(&self) -> MemoryStore {
        let mut inner = self.inner_mut().clone();
        inner.new_writer();
        MemoryStore {
            inner: Mutex::new(inner),
            hub: ChangeHub::new(),
        }
    }

    fn inner_mut(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every record of every collection, ordered by (collection, id).
    pub fn all_records(&self) -> Vec<Record> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.records
            .iter()
            .map(|((c, id), f)| Record::new(c.clone(), id.clone(), f.clone()))
            .collect()
    }
}

impl Inner {
    fn client(&mut self) -> RecordId {
        if self.writers.is_empty() {
            self.new_writer();
        }
        self.writers[self.writers.len() - 1].0.clone()
    }

    fn new_writer(&mut self) {
        self.writers.push((new_id(), self.counter + 1));
    }

    /// Whether this store's history issued `change`.
    fn made_here(&self, change: &ChangeId) -> bool {
        let Some(i) = self.writers.iter().position(|(w, _)| *w == change.client) else {
            return false;
        };
        let first = self.writers[i].1;
        let end = self
            .writers
            .get(i + 1)
            .map_or(self.counter, |(_, next)| next - 1);
        (first..=end).contains(&change.n)
    }

    fn holds(&self, collection: &str) -> bool {
        self.local_only.contains(collection)
            || self
                .declared
                .as_ref()
                .is_none_or(|d| d.contains(collection))
    }

    fn check_held(&self, collection: &str) -> Result<(), StoreError> {
        check_collection(collection)?;
        if self.holds(collection) {
            Ok(())
        } else {
            Err(StoreError::UnknownCollection(collection.to_owned()))
        }
    }

    /// An app's put of a held collection's record, with its outbox entry.
    fn put(&mut self, record: Record) {
        let key = (record.collection, record.id);
        let changed = changed_fields(self.records.get(&key), Some(&record.fields));
        self.records.insert(key.clone(), record.fields.clone());
        self.record_write(key, Op::Upsert(record.fields), changed);
    }

    /// An app's delete of a held collection's record, with its outbox entry;
    /// whether the record was there.
    fn delete(&mut self, key: Key) -> bool {
        let Some(old) = self.records.remove(&key) else {
            return false;
        };
        let changed = changed_fields(Some(&old), None);
        self.record_write(key, Op::Delete, changed);
        true
    }

    fn record_write(&mut self, key: Key, op: Op, changed: BTreeSet<String>) {
        if self.local_only.contains(&key.0) {
            return;
        }
        let client = self.client();
        self.counter += 1;
        let change_id = ChangeId {
            client,
            n: self.counter,
        };
        if let Some(seq) = self.outbox_index.get(&key) {
            if let Some(e) = self.outbox.get_mut(seq) {
                e.change_id = change_id;
                e.op = op;
                e.changed.extend(changed);
                return;
            }
        }
        self.outbox_seq += 1;
        let seq = self.outbox_seq;
        let entry = PendingChange {
            seq,
            change_id,
            collection: key.0.clone(),
            id: key.1.clone(),
            base: self.versions.get(&key).copied(),
            op,
            changed,
            tx: None,
        };
        self.outbox.insert(seq, entry);
        self.outbox_index.insert(key, seq);
    }

    /// The outbox entry for `key` if its change id is `change_id`.
    fn matching(&self, key: &Key, change_id: &ChangeId) -> Option<u64> {
        let seq = *self.outbox_index.get(key)?;
        (self.outbox.get(&seq)?.change_id == *change_id).then_some(seq)
    }

    fn remove_entry(&mut self, key: &Key, seq: u64) {
        self.outbox.remove(&seq);
        self.outbox_index.remove(key);
    }

    /// Writes a server state; returns what happened to the record's data
    /// (`None`: a deletion of a record it did not hold, nothing changed).
    fn set_server_state(&mut self, key: Key, state: &RemoteState) -> Option<ChangeKind> {
        let kind = match &state.fields {
            Some(f) => {
                self.records.insert(key.clone(), f.clone());
                Some(ChangeKind::Upserted)
            }
            None => self.records.remove(&key).map(|_| ChangeKind::Removed),
        };
        let v = self.versions.entry(key).or_default();
        *v = (*v).max(state.version);
        kind
    }
}

#[async_trait]
impl SyncStore for MemoryStore {
    /// A range read of the record map from just after `after`: reads `limit`
    /// records, not the collection.
    async fn list_page(
        &self,
        collection: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let g = self.lock()?;
        g.check_held(collection)?;
        Ok(g.records
            .range(collection_range(collection, after))
            .take_while(|((c, _), _)| c == collection)
            .take(limit)
            .map(|((c, id), f)| Record::new(c.clone(), id.clone(), f.clone()))
            .collect())
    }

    /// Counts the collection's range of the record map, cloning nothing.
    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let g = self.lock()?;
        g.check_held(collection)?;
        Ok(g.records
            .range(collection_range(collection, None))
            .take_while(|((c, _), _)| c == collection)
            .count())
    }

    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.lock()?.client())
    }

    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        Ok(self.lock()?.made_here(change))
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        let g = self.lock()?;
        Ok(SyncState {
            watermark: g.watermark,
            resyncing: g.resyncing,
        })
    }

    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        let mut report = ApplyReport::default();
        for c in &page.changes {
            let key = (c.collection.clone(), c.id.clone());
            if g.local_only.contains(&c.collection) || check_collection(&c.collection).is_err() {
                report.skipped += 1;
                continue;
            }
            if !g.holds(&c.collection) {
                report.skipped += 1;
                let newer = g
                    .parked
                    .get(&key)
                    .is_none_or(|p| p.version < c.state.version);
                if newer {
                    g.parked.insert(key, c.state.clone());
                }
                continue;
            }
            if g.resyncing {
                g.seen.insert(key.clone());
            }
            if g.outbox_index.contains_key(&key) {
                report.deferred += 1;
                continue;
            }
            if g.versions.get(&key).is_some_and(|v| *v > c.state.version) {
                report.stale += 1;
                continue;
            }
            if let Some(kind) = g.set_server_state(key, &c.state) {
                feed.record(&c.collection, &c.id, kind, ChangeCause::Pull);
            }
            report.applied += 1;
        }
        g.watermark = g.watermark.max(page.watermark);
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(report)
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        let g = self.lock()?;
        Ok(g.outbox
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        Ok(self.lock()?.outbox.len())
    }

    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        for ack in acks {
            match ack {
                Ack::Applied {
                    collection,
                    id,
                    change_id,
                    version,
                } => {
                    let key = (collection, id);
                    match g.matching(&key, &change_id) {
                        Some(seq) => g.remove_entry(&key, seq),
                        None => {
                            if let Some(seq) = g.outbox_index.get(&key).copied() {
                                if let Some(e) = g.outbox.get_mut(&seq) {
                                    e.base = Some(version);
                                }
                            }
                        }
                    }
                    let v = g.versions.entry(key).or_default();
                    *v = (*v).max(version);
                }
                Ack::Rebase {
                    collection,
                    id,
                    change_id,
                    base,
                    op,
                } => {
                    let key = (collection, id);
                    let Some(seq) = g.matching(&key, &change_id) else {
                        continue;
                    };
                    if let Some(op) = &op {
                        let kind = match op {
                            Op::Upsert(f) => {
                                g.records.insert(key.clone(), f.clone());
                                Some(ChangeKind::Upserted)
                            }
                            Op::Delete => g.records.remove(&key).map(|_| ChangeKind::Removed),
                        };
                        if let Some(kind) = kind {
                            feed.record(&key.0, &key.1, kind, ChangeCause::Settlement);
                        }
                    }
                    // A re-based change is a new write: a new change id.
                    let client = g.client();
                    g.counter += 1;
                    let n = g.counter;
                    if let Some(e) = g.outbox.get_mut(&seq) {
                        e.base = Some(base);
                        e.change_id = ChangeId { client, n };
                        if let Some(op) = op {
                            e.op = op;
                        }
                    }
                }
                Ack::TakeServer {
                    collection,
                    id,
                    change_id,
                    state,
                } => {
                    let key = (collection, id);
                    let Some(seq) = g.matching(&key, &change_id) else {
                        continue;
                    };
                    g.remove_entry(&key, seq);
                    if let Some(kind) = g.set_server_state(key.clone(), &state) {
                        feed.record(&key.0, &key.1, kind, ChangeCause::Settlement);
                    }
                }
                Ack::Quarantine {
                    change,
                    rejection,
                    server,
                } => {
                    let key = (change.collection.clone(), change.id.clone());
                    if let Some(seq) = g.matching(&key, &change.change_id) {
                        g.remove_entry(&key, seq);
                        let kind = match &server {
                            Some(s) => g.set_server_state(key.clone(), s),
                            None => g.records.remove(&key).map(|_| ChangeKind::Removed),
                        };
                        if let Some(kind) = kind {
                            feed.record(&key.0, &key.1, kind, ChangeCause::Settlement);
                        }
                    }
                    g.quarantine_seq += 1;
                    let id = g.quarantine_seq;
                    g.quarantine.push(Quarantined {
                        id,
                        change,
                        rejection,
                    });
                }
                Ack::Conflict(conflict) => {
                    g.conflict_seq += 1;
                    let id = g.conflict_seq;
                    g.conflicts.push(LoggedConflict { id, conflict });
                }
            }
        }
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(())
    }

    async fn begin_resync(&self) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        g.watermark = Watermark(0);
        g.resyncing = true;
        g.seen.clear();
        // The resync delivers everything again, parked records included.
        g.parked.clear();
        Ok(())
    }

    async fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        if !g.resyncing {
            return Ok(0);
        }
        let in_scope =
            |c: &String| !g.local_only.contains(c) && synced.as_ref().is_none_or(|s| s.contains(c));
        let gone: Vec<Key> = g
            .records
            .keys()
            .filter(|k| in_scope(&k.0) && !g.seen.contains(*k) && !g.outbox_index.contains_key(*k))
            .cloned()
            .collect();
        for k in &gone {
            g.records.remove(k);
            g.versions.remove(k);
            feed.record(&k.0, &k.1, ChangeKind::Removed, ChangeCause::Resync);
        }
        g.resyncing = false;
        g.seen.clear();
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(gone.len())
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        Ok(self.lock()?.quarantine.clone())
    }

    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        let Some(i) = g.quarantine.iter().position(|q| q.id == id) else {
            return Ok(false);
        };
        let q = g.quarantine.remove(i);
        let key = (q.change.collection, q.change.id);
        let new = match &q.change.op {
            Op::Upsert(f) => Some(f.clone()),
            Op::Delete => None,
        };
        let changed = changed_fields(g.records.get(&key), new.as_ref());
        let kind = match &new {
            Some(f) => {
                g.records.insert(key.clone(), f.clone());
                Some(ChangeKind::Upserted)
            }
            None => g.records.remove(&key).map(|_| ChangeKind::Removed),
        };
        if let Some(kind) = kind {
            feed.record(&key.0, &key.1, kind, ChangeCause::Local);
        }
        g.record_write(key, q.change.op, changed);
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(true)
    }

    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let before = g.quarantine.len();
        g.quarantine.retain(|q| q.id != id);
        Ok(g.quarantine.len() < before)
    }

    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        Ok(self.lock()?.conflicts.clone())
    }

    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let before = g.conflicts.len();
        g.conflicts.retain(|c| !ids.contains(&c.id));
        Ok(before - g.conflicts.len())
    }

    /// Its "file" is its memory: what it keeps, [`MemoryStore::reopen_copy`] keeps.
    fn keeps_sync_meta(&self) -> bool {
        true
    }

    async fn sync_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    async fn set_sync_meta(&self, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        match value {
            Some(v) => g.meta.insert(key.to_owned(), v),
            None => g.meta.remove(key),
        };
        Ok(())
    }
}

#[async_trait]
impl LocalStore for MemoryStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let g = self.lock()?;
        g.check_held(collection)?;
        Ok(g.records
            .get(&(collection.to_owned(), id.clone()))
            .map(|f| Record::new(collection, id.clone(), f.clone())))
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let g = self.lock()?;
        g.check_held(collection)?;
        Ok(g.records
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((c, id), f)| Record::new(c.clone(), id.clone(), f.clone()))
            .collect())
    }

    async fn put(&self, record: Record) -> Result<(), StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        g.check_held(&record.collection)?;
        feed.record(
            &record.collection,
            &record.id,
            ChangeKind::Upserted,
            ChangeCause::Local,
        );
        g.put(record);
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(())
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        g.check_held(collection)?;
        let existed = g.delete((collection.to_owned(), id.clone()));
        if existed {
            feed.record(collection, id, ChangeKind::Removed, ChangeCause::Local);
        }
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(existed)
    }

    /// Every write is checked first (a collection held: the only thing this store
    /// checks), then all are applied under the one lock.
    async fn transact(&self, writes: Vec<Write>) -> Result<TxReport, StoreError> {
        let mut feed = self.hub.batch();
        let mut g = self.lock()?;
        for w in &writes {
            g.check_held(w.key().0)?;
        }
        let mut report = TxReport::default();
        let mut wrote = Vec::new();
        for w in writes {
            let key = (w.key().0.to_owned(), w.key().1.clone());
            let existed = g.records.contains_key(&key);
            match w {
                Write::Put(record) => g.put(record),
                Write::Delete { .. } => {
                    g.delete(key.clone());
                }
            }
            // A put, or a delete that removed something, wrote the record.
            let now = g.records.contains_key(&key);
            if existed || now {
                let kind = if now {
                    ChangeKind::Upserted
                } else {
                    ChangeKind::Removed
                };
                feed.record(&key.0, &key.1, kind, ChangeCause::Local);
                wrote.push(key);
            }
            report.existed.push(existed);
        }
        let seqs: Vec<u64> = wrote
            .iter()
            .filter_map(|k| g.outbox_index.get(k).copied())
            .collect();
        if let Some(&last) = seqs.iter().max() {
            let mark = TxMark {
                id: g.counter,
                last,
            };
            for seq in seqs {
                if let Some(e) = g.outbox.get_mut(&seq) {
                    e.tx = Some(mark);
                }
            }
            report.mark = Some(mark);
        }
        // Published under the lock: watchers get calls' changes in commit order.
        feed.publish();
        drop(g);
        Ok(report)
    }

    /// Every change of this store, reported (see [`crate::feed`]).
    fn change_hub(&self) -> Option<ChangeHub> {
        Some(self.hub.clone())
    }
}
