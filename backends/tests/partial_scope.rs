#![cfg(any(feature = "sqlite", feature = "sled"))]
//! Partial sync over the persistent stores: the scope a store was synced with
//! survives a close and reopen (so a new engine with the same filter resyncs
//! nothing, and one with another filter resyncs that collection alone).

use std::sync::Arc;

use serde_json::json;
use sync_traits::testkit::FakeRemote;
use sync_traits::{new_id, Fields, Filter, LocalStore, SyncEngine, SyncScope};

fn song(artist: &str) -> Fields {
    json!({"title": "t", "artist": artist, "order": 1})
        .as_object()
        .cloned()
        .unwrap()
}

fn scope(artist: &str) -> SyncScope {
    SyncScope::all().filter(
        "songs",
        Filter::new(format!("artist = '{artist}'")).unwrap(),
    )
}

async fn check<S: LocalStore + 'static>(open: impl Fn() -> S) {
    let server = FakeRemote::new();
    server.set_synced(Some(["songs", "friends"]));
    for i in 0..12 {
        let artist = if i % 3 == 0 { "ann" } else { "bob" };
        server.server_write("songs", &new_id(), Some(song(artist)));
    }
    server.server_write(
        "friends",
        &new_id(),
        Some(json!({"name": "f"}).as_object().cloned().unwrap()),
    );
    {
        let store = Arc::new(open());
        assert!(store.keeps_sync_meta());
        let r = SyncEngine::new(store.clone(), server.clone())
            .with_scope(scope("ann"))
            .sync()
            .await
            .unwrap();
        assert_eq!(r.pulled, 4 + 1);
        assert_eq!(store.count("songs").await.unwrap(), 4);
    }
    {
        let store = Arc::new(open());
        let r = SyncEngine::new(store.clone(), server.clone())
            .with_scope(scope("ann"))
            .sync()
            .await
            .unwrap();
        assert_eq!(
            (r.pulled, r.resynced),
            (0, false),
            "the scope was kept: {r:?}"
        );
        assert!(r.resynced_collections.is_empty());
    }
    let store = Arc::new(open());
    let r = SyncEngine::new(store.clone(), server.clone())
        .with_scope(scope("bob"))
        .sync()
        .await
        .unwrap();
    assert_eq!(
        r.resynced_collections,
        ["songs".to_string()].into(),
        "{r:?}"
    );
    assert_eq!(
        r.pulled, 8,
        "bob's songs only; the friend is not pulled again"
    );
    assert_eq!(store.count("songs").await.unwrap(), 8);
    assert_eq!(store.count("friends").await.unwrap(), 1);
    for r in store.list("songs").await.unwrap() {
        assert_eq!(r.fields["artist"], json!("bob"));
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_keeps_the_scope_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    check(|| {
        tidemark_backends::SqliteStore::open(&path, tidemark_backends::Schema::conformance())
            .unwrap()
    })
    .await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_keeps_the_scope_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sled");
    check(|| {
        tidemark_backends::SledStore::open(&path, tidemark_backends::Schema::conformance()).unwrap()
    })
    .await;
}
