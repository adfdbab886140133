//! The typed collection handle on MemoryStore (and through Box<dyn LocalStore>
//! and an outside store that keeps the trait's default `list_page` and `count`).

use std::sync::Arc;

use sync_traits::testkit::{conformance, typed, MemoryStore};
use sync_traits::{
    async_trait, Ack, ApplyReport, ChangeId, CollectionError, LocalStore, LocalStoreExt,
    LoggedConflict, Page, PendingChange, Quarantined, Record, RecordId, StoreError, SyncState,
    SyncStore, TxReport, Write,
};

#[tokio::test]
async fn memory_store_passes_the_typed_cases() {
    typed::run_all(|| async { MemoryStore::new() }, 3000).await;
}

#[tokio::test]
async fn arc_and_boxed_dyn_stores_pass_the_typed_cases() {
    typed::run_all(|| async { Arc::new(MemoryStore::new()) }, 300).await;
    typed::run_all(
        || async { Box::new(MemoryStore::new()) as Box<dyn LocalStore> },
        300,
    )
    .await;
}

/// A store from outside the crate that implements only the required methods, so
/// `count` and `list` are the traits' defaults (walking `list_page`).
/// With `true`, its `list_page` ignores the cursor (a broken store).
struct Outside(MemoryStore, bool);

#[async_trait]
impl SyncStore for Outside {
    async fn list_page(
        &self,
        c: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let after = if self.1 { None } else { after };
        self.0.list_page(c, after, limit).await
    }
    async fn client_id(&self) -> Result<RecordId, StoreError> {
        self.0.client_id().await
    }
    async fn made_here(&self, c: &ChangeId) -> Result<bool, StoreError> {
        self.0.made_here(c).await
    }
    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.0.sync_state().await
    }
    async fn apply_remote(&self, p: &Page) -> Result<ApplyReport, StoreError> {
        self.0.apply_remote(p).await
    }
    async fn pending(&self, a: u64, l: usize) -> Result<Vec<PendingChange>, StoreError> {
        self.0.pending(a, l).await
    }
    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.0.pending_count().await
    }
    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.0.ack(acks).await
    }
    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.0.begin_resync().await
    }
    async fn finish_resync(
        &self,
        s: Option<std::collections::BTreeSet<String>>,
    ) -> Result<usize, StoreError> {
        self.0.finish_resync(s).await
    }
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.0.quarantined().await
    }
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.0.retry_quarantined(id).await
    }
    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.0.discard_quarantined(id).await
    }
    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        self.0.conflicts().await
    }
    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.0.clear_conflicts(ids).await
    }
}

#[async_trait]
impl LocalStore for Outside {
    async fn get(&self, c: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.0.get(c, id).await
    }
    async fn put(&self, r: Record) -> Result<(), StoreError> {
        self.0.put(r).await
    }
    async fn delete(&self, c: &str, id: &RecordId) -> Result<bool, StoreError> {
        self.0.delete(c, id).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<TxReport, StoreError> {
        self.0.transact(writes).await
    }
    fn change_hub(&self) -> Option<sync_traits::ChangeHub> {
        self.0.change_hub()
    }
}

#[tokio::test]
async fn the_default_list_and_count_pass_conformance_and_the_typed_cases() {
    conformance::run_all(|| async { Outside(MemoryStore::new(), false) }).await;
    typed::run_all(|| async { Outside(MemoryStore::new(), false) }, 500).await;
}

#[tokio::test]
async fn local_only_and_undeclared_collections_through_the_handle() {
    let store = MemoryStore::with_collections(["songs"]).with_local_only(["drafts"]);
    let drafts = store.collection::<typed::Song>("drafts");
    for n in 0..5 {
        drafts
            .insert(&typed::Song {
                title: format!("draft {n}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.pending_count().await.unwrap(),
        0,
        "local-only: no outbox"
    );
    let page = drafts.page(None, 3).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let rest = drafts.page(page.next.as_ref(), 3).await.unwrap();
    assert_eq!((rest.items.len(), rest.next), (2, None));
    assert_eq!(drafts.count().await.unwrap(), 5);

    let nowhere = store.collection::<typed::Song>("nowhere");
    for err in [
        nowhere.page(None, 3).await.unwrap_err(),
        nowhere.count().await.map(|_| ()).unwrap_err(),
        nowhere
            .insert(&typed::Song::default())
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        match &err {
            CollectionError::Store {
                collection,
                source: StoreError::UnknownCollection(_),
            } => assert_eq!(collection, "nowhere"),
            other => panic!("expected the store's UnknownCollection, got {other}"),
        }
        assert!(
            std::error::Error::source(&err).is_some(),
            "the store error is the source"
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn the_default_walks_stop_with_an_error_on_pages_that_do_not_advance() {
    let store = Outside(MemoryStore::new(), true);
    let songs = store.collection::<typed::Song>("songs");
    for n in 0..sync_traits::COUNT_PAGE + 1 {
        songs
            .insert(&typed::Song {
                title: format!("song {n}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for err in [
        store.count("songs").await.unwrap_err(),
        store.list("songs").await.map(|_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::Backend(_))
                && err.to_string().contains("not past the cursor"),
            "{err}"
        );
    }
}
