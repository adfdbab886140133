//! A `LocalStore` wrapper that logs the change id of every local write.
//!
//! The engine syncs concurrently with the application's writes (`run_live`), so a
//! write's outbox entry could be pushed and acknowledged before the test reads its
//! change id. The wrapper closes that window: `put`/`delete` and the read of the new
//! outbox entry hold a gate that `ack` (the only call that removes an entry) also
//! takes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use async_trait::async_trait;
use sync_traits::SyncStore;
use sync_traits::{
    Ack, ApplyReport, ChangeId, LocalStore, LoggedConflict, Page, PendingChange, Quarantined,
    Record, RecordId, StoreError, SyncState, TxReport, Write as TxWrite,
};

/// One local write as the application made it.
#[derive(Clone, Debug)]
pub struct Write {
    /// Its collection.
    pub collection: String,
    /// Its record.
    pub id: RecordId,
    /// The change id the store gave it.
    pub change: ChangeId,
    /// A delete (else a put).
    pub delete: bool,
}

/// Forwards every call to `inner`, logging each write's change id.
pub struct Logged {
    inner: Box<dyn LocalStore>,
    gate: tokio::sync::Mutex<()>,
    log: Mutex<Vec<Write>>,
}

impl Logged {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn LocalStore>) -> Self {
        Self {
            inner,
            gate: tokio::sync::Mutex::new(()),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Every write so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn note(&self, collection: &str, id: &RecordId, delete: bool) -> Result<(), StoreError> {
        let entries = self.inner.pending(0, usize::MAX).await?;
        let e = entries
            .iter()
            .find(|e| e.collection == collection && &e.id == id)
            .unwrap_or_else(|| panic!("a local write to {collection}/{id} left no outbox entry"));
        if let Ok(mut l) = self.log.lock() {
            l.push(Write {
                collection: collection.to_owned(),
                id: id.clone(),
                change: e.change_id.clone(),
                delete,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SyncStore for Logged {
    async fn list_page(
        &self,
        c: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.list_page(c, after, limit).await
    }
    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        self.inner.count(collection).await
    }
    async fn client_id(&self) -> Result<RecordId, StoreError> {
        self.inner.client_id().await
    }
    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        self.inner.made_here(change).await
    }
    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.inner.sync_state().await
    }
    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        self.inner.apply_remote(page).await
    }
    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        self.inner.pending(after, limit).await
    }
    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.inner.pending_count().await
    }
    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        let _g = self.gate.lock().await;
        self.inner.ack(acks).await
    }
    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.inner.begin_resync().await
    }
    async fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        self.inner.finish_resync(synced).await
    }
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.inner.quarantined().await
    }
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.inner.retry_quarantined(id).await
    }
    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.inner.discard_quarantined(id).await
    }
    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        self.inner.conflicts().await
    }
    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.inner.clear_conflicts(ids).await
    }
}

#[async_trait]
impl LocalStore for Logged {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.inner.get(collection, id).await
    }
    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.list(collection).await
    }
    async fn put(&self, record: Record) -> Result<(), StoreError> {
        let _g = self.gate.lock().await;
        let (c, id) = (record.collection.clone(), record.id.clone());
        self.inner.put(record).await?;
        self.note(&c, &id, false).await
    }
    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let _g = self.gate.lock().await;
        let done = self.inner.delete(collection, id).await?;
        if done {
            self.note(collection, id, true).await?;
        }
        Ok(done)
    }
    /// Logs each record the transaction wrote once, with the change id of its
    /// newest write (what its outbox entry carries).
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<TxReport, StoreError> {
        let _g = self.gate.lock().await;
        let keys: Vec<(String, RecordId, bool)> = writes
            .iter()
            .map(|w| {
                let (c, id) = w.key();
                (c.to_owned(), id.clone(), matches!(w, TxWrite::Put(_)))
            })
            .collect();
        let report = self.inner.transact(writes).await?;
        let mut noted = BTreeSet::new();
        for (i, (c, id, put)) in keys.iter().enumerate().rev() {
            let wrote = *put || report.existed.get(i).copied().unwrap_or(false);
            if wrote && noted.insert((c.clone(), id.clone())) {
                let gone = self.inner.get(c, id).await?.is_none();
                self.note(c, id, gone).await?;
            }
        }
        Ok(report)
    }
}
