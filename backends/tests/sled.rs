//! sled-specific behaviour: persistence across reopen, schema checks, typed errors.
#![cfg(feature = "sled")]

use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, LocalStore, Page, Record, RemoteChange, RemoteState, StoreError, Version,
    Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SledStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn schema() -> Schema {
    Schema::new().collection(
        CollectionSchema::new("songs")
            .text("title")
            .number("order")
            .relation("album"),
    )
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let id = new_id();
    let (client, p) = {
        let s = SledStore::open(&path, schema()).unwrap();
        s.put(Record::new(
            "songs",
            id.clone(),
            f(json!({"title": "a", "x": [1]})),
        ))
        .await
        .unwrap();
        s.apply_remote(&Page {
            changes: vec![RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version(4),
                    fields: Some(f(json!({"order": 2.0}))),
                    change_id: None,
                },
            }],
            watermark: Watermark(4),
            more: false,
        })
        .await
        .unwrap();
        (
            s.client_id().await.unwrap(),
            s.pending(0, 10).await.unwrap(),
        )
    };
    let s = SledStore::open(&path, schema()).unwrap();
    assert_ne!(
        s.client_id().await.unwrap(),
        client,
        "every open takes a new writer id"
    );
    for e in &p {
        assert!(
            s.made_here(&e.change_id).await.unwrap(),
            "the earlier writer's changes are still this store's own"
        );
    }
    assert_eq!(s.pending(0, 10).await.unwrap(), p, "outbox persists");
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(4));
    let all = s.list("songs").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().any(|r| r.fields == f(json!({"order": 2}))),
        "integral floats in number fields are stored as integers, like the SQLite store"
    );
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_changes_nothing() {
    let s = SledStore::open_temporary(schema()).unwrap();
    let id = new_id();
    assert!(matches!(
        s.put(Record::new("songs", id.clone(), f(json!({"order": "x"}))))
            .await,
        Err(StoreError::Schema { .. })
    ));
    assert!(matches!(
        s.put(Record::new(
            "songs",
            id.clone(),
            f(json!({"album": "NOPE"}))
        ))
        .await,
        Err(StoreError::InvalidId(_))
    ));
    assert!(matches!(
        s.get("nope", &id).await,
        Err(StoreError::UnknownCollection(_))
    ));
    assert_eq!(s.pending_count().await.unwrap(), 0);
    assert!(s.list("songs").await.unwrap().is_empty());
}

#[tokio::test]
async fn foreign_and_unreadable_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A plain file where the database directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();
    assert!(matches!(
        SledStore::open(&file, schema()),
        Err(StoreError::Corrupt(_))
    ));
    // A sled database written by something else.
    let foreign = dir.path().join("foreign");
    {
        let db = sled::open(&foreign).unwrap();
        db.insert("k", "v").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        SledStore::open(&foreign, schema()),
        Err(StoreError::Corrupt(_))
    ));
    // Another kind for a stored field opens; the field keeps its stored kind (a
    // bool is still refused where a string is stored).
    let p = dir.path().join("ok");
    drop(SledStore::open(&p, schema()).unwrap());
    let other = Schema::new().collection(CollectionSchema::new("songs").bool("title"));
    let store = SledStore::open(&p, other).unwrap();
    let f = json!({"title": true}).as_object().cloned().unwrap();
    let put = store.put(Record::new("songs", new_id(), f)).await;
    assert!(matches!(put, Err(StoreError::Schema { .. })), "{put:?}");
}

/// A database another live store holds is `Busy` (transient: retry later), after a
/// bounded wait — not `Corrupt`; and it opens as soon as the holder is gone.
#[tokio::test]
async fn a_database_held_by_another_store_is_busy_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let holder = SledStore::open(&path, schema()).unwrap();
    // The open waits a bounded while for the lock, then answers Busy (it returning
    // at all is the bound).
    match SledStore::open(&path, schema()) {
        Err(StoreError::Busy(msg)) => assert!(msg.message().contains("locked"), "{msg}"),
        Err(e) => panic!("expected Busy, got {e:?}"),
        Ok(_) => panic!("two stores opened the same sled database"),
    }
    assert!(StoreError::Busy("".into()).is_transient());
    drop(holder);
    // The previous holder's flusher may keep the lock a moment; open waits for it.
    SledStore::open(&path, schema()).unwrap();
}
