#![cfg(any(feature = "sqlite", feature = "sled"))]
//! The `sync_traits` conformance suite against every backend.

use sync_traits::testkit::conformance;
use tidemark_backends::{CollectionSchema, Schema};

/// The conformance schema with `drafts` local-only, for `run_local_only`.
fn with_drafts() -> Schema {
    Schema::conformance().collection(
        CollectionSchema::new(conformance::DRAFTS)
            .text("title")
            .local_only(),
    )
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_passes_the_local_only_cases() {
    conformance::run_local_only(|| async {
        tidemark_backends::SqliteStore::open_in_memory(with_drafts()).unwrap()
    })
    .await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_passes_the_local_only_cases() {
    conformance::run_local_only(|| async {
        tidemark_backends::SledStore::open_temporary(with_drafts()).unwrap()
    })
    .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let path = dir.path().join(format!("store{n}.db"));
        async move { tidemark_backends::SqliteStore::open(path, Schema::conformance()).unwrap() }
    })
    .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_in_memory_passes_conformance() {
    conformance::run_all(|| async {
        tidemark_backends::SqliteStore::open_in_memory(Schema::conformance()).unwrap()
    })
    .await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let path = dir.path().join(format!("store{n}"));
        async move { tidemark_backends::SledStore::open(path, Schema::conformance()).unwrap() }
    })
    .await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_temporary_passes_conformance() {
    conformance::run_all(|| async {
        tidemark_backends::SledStore::open_temporary(Schema::conformance()).unwrap()
    })
    .await;
}
