//! [`MemoryStore`]: a complete in-memory [`LocalStore`], the reference
//! implementation of the contract.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::{new_id, ChangeId, RecordId};
use crate::record::{
    changed_fields, Ack, ApplyReport, Fields, Op, Page, PendingChange, Quarantined, Record,
    RemoteState, SyncState, Version, Watermark,
};
use crate::store::LocalStore;

type Key = (String, RecordId);

#[derive(Debug, Default)]
struct Inner {
    client: Option<RecordId>,
    counter: u64,
    outbox_seq: u64,
    records: BTreeMap<Key, Fields>,
    versions: HashMap<Key, Version>,
    outbox: BTreeMap<u64, PendingChange>,
    outbox_index: HashMap<Key, u64>,
    watermark: Watermark,
    resyncing: bool,
    seen: HashSet<Key>,
    quarantine: Vec<Quarantined>,
}

/// An in-memory [`LocalStore`]. Every method takes one lock, so each is atomic;
/// "crashing" is modelled by dropping the engine and keeping the store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
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
        self.client.get_or_insert_with(new_id).clone()
    }

    fn record_write(&mut self, key: Key, op: Op, changed: BTreeSet<String>) {
        self.counter += 1;
        let change_id = ChangeId {
            client: self.client(),
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

    fn set_server_state(&mut self, key: Key, state: &RemoteState) {
        match &state.fields {
            Some(f) => {
                self.records.insert(key.clone(), f.clone());
            }
            None => {
                self.records.remove(&key);
            }
        }
        let v = self.versions.entry(key).or_default();
        *v = (*v).max(state.version);
    }
}

#[async_trait]
impl LocalStore for MemoryStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        check_collection(collection)?;
        let g = self.lock()?;
        Ok(g.records
            .get(&(collection.to_owned(), id.clone()))
            .map(|f| Record::new(collection, id.clone(), f.clone())))
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        check_collection(collection)?;
        let g = self.lock()?;
        Ok(g.records
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((c, id), f)| Record::new(c.clone(), id.clone(), f.clone()))
            .collect())
    }

    async fn put(&self, record: Record) -> Result<(), StoreError> {
        check_collection(&record.collection)?;
        let mut g = self.lock()?;
        let key = (record.collection, record.id);
        let changed = changed_fields(g.records.get(&key), Some(&record.fields));
        g.records.insert(key.clone(), record.fields.clone());
        g.record_write(key, Op::Upsert(record.fields), changed);
        Ok(())
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        check_collection(collection)?;
        let mut g = self.lock()?;
        let key = (collection.to_owned(), id.clone());
        let Some(old) = g.records.remove(&key) else {
            return Ok(false);
        };
        let changed = changed_fields(Some(&old), None);
        g.record_write(key, Op::Delete, changed);
        Ok(true)
    }

    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.lock()?.client())
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        let g = self.lock()?;
        Ok(SyncState {
            watermark: g.watermark,
            resyncing: g.resyncing,
        })
    }

    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        for c in &page.changes {
            check_collection(&c.collection)?;
        }
        let mut g = self.lock()?;
        let mut report = ApplyReport::default();
        for c in &page.changes {
            let key = (c.collection.clone(), c.id.clone());
            if g.resyncing {
                g.seen.insert(key.clone());
            }
            if g.outbox_index.contains_key(&key) {
                report.deferred += 1;
                continue;
            }
            if g.versions.get(&key).is_some_and(|v| *v >= c.state.version) {
                report.stale += 1;
                continue;
            }
            g.set_server_state(key, &c.state);
            report.applied += 1;
        }
        g.watermark = g.watermark.max(page.watermark);
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
                        match op {
                            Op::Upsert(f) => {
                                g.records.insert(key.clone(), f.clone());
                            }
                            Op::Delete => {
                                g.records.remove(&key);
                            }
                        }
                    }
                    if let Some(e) = g.outbox.get_mut(&seq) {
                        e.base = Some(base);
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
                    g.set_server_state(key, &state);
                }
                Ack::Quarantine {
                    change,
                    rejection,
                    server,
                } => {
                    let key = (change.collection.clone(), change.id.clone());
                    if let Some(seq) = g.matching(&key, &change.change_id) {
                        g.remove_entry(&key, seq);
                        match &server {
                            Some(s) => g.set_server_state(key, s),
                            None => {
                                g.records.remove(&key);
                            }
                        }
                    }
                    g.quarantine.push(Quarantined { change, rejection });
                }
            }
        }
        Ok(())
    }

    async fn begin_resync(&self) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        g.watermark = Watermark(0);
        g.resyncing = true;
        g.seen.clear();
        Ok(())
    }

    async fn finish_resync(&self) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        if !g.resyncing {
            return Ok(0);
        }
        let gone: Vec<Key> = g
            .records
            .keys()
            .filter(|k| !g.seen.contains(*k) && !g.outbox_index.contains_key(*k))
            .cloned()
            .collect();
        for k in &gone {
            g.records.remove(k);
            g.versions.remove(k);
        }
        g.resyncing = false;
        g.seen.clear();
        Ok(gone.len())
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        Ok(self.lock()?.quarantine.clone())
    }
}
