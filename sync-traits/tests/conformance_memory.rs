//! MemoryStore passes the conformance suite it defines.

use sync_traits::testkit::{conformance, MemoryStore};

#[tokio::test]
async fn memory_store_passes_conformance() {
    conformance::run_all(|| async { MemoryStore::new() }).await;
}

#[tokio::test]
async fn boxed_dyn_store_passes_conformance() {
    conformance::run_all(|| async {
        Box::new(MemoryStore::new()) as Box<dyn sync_traits::LocalStore>
    })
    .await;
}

#[tokio::test]
async fn memory_store_passes_the_local_only_cases() {
    conformance::run_local_only(|| async {
        MemoryStore::new().with_local_only([conformance::DRAFTS])
    })
    .await;
}
