//! Local-only collections of the SQLite store: written like any other, never in
//! the outbox (API or plain-SQL writes), never touched by pulls or resyncs.
#![cfg(feature = "sqlite")]

use rusqlite::Connection;
use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, LocalStore, Page, Record, RecordId, RemoteChange, RemoteState, StoreError,
    Version, Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SqliteStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn schema() -> Schema {
    Schema::new()
        .collection(CollectionSchema::new("songs").text("title"))
        .collection(CollectionSchema::new("drafts").text("title").local_only())
}

fn change(c: &str, id: &RecordId, v: u64, fields: Option<Value>) -> RemoteChange {
    RemoteChange {
        collection: c.into(),
        id: id.clone(),
        state: RemoteState {
            version: Version(v),
            fields: fields.map(f),
            change_id: None,
        },
    }
}

fn page(changes: Vec<RemoteChange>, w: u64) -> Page {
    Page {
        changes,
        watermark: Watermark(w),
        more: false,
    }
}

#[tokio::test]
async fn a_local_only_collection_is_never_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, schema()).unwrap();
    let (d1, d2, d3, song) = (new_id(), new_id(), new_id(), new_id());
    for d in [&d1, &d2] {
        store
            .put(Record::new(
                "drafts",
                d.clone(),
                f(json!({"title": "mine"})),
            ))
            .await
            .unwrap();
    }
    assert!(store.delete("drafts", &d2).await.unwrap());
    assert_eq!(store.pending_count().await.unwrap(), 0, "API writes");
    // Plain SQL from another connection and from the store's own.
    let app = Connection::open(&path).unwrap();
    app.execute(
        r#"INSERT INTO "drafts" ("id", "title") VALUES (?1, 'sql')"#,
        [d3.as_str()],
    )
    .unwrap();
    app.execute(r#"UPDATE "drafts" SET "title" = 'sql edit'"#, [])
        .unwrap();
    store
        .with_connection(|c| c.execute(r#"DELETE FROM "drafts" WHERE "id" = ?1"#, [d3.as_str()]))
        .unwrap()
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0, "plain-SQL writes");
    // The ids are still guarded.
    assert!(app
        .execute(r#"INSERT INTO "drafts" ("id") VALUES ('BAD')"#, [])
        .is_err());
    // A synced collection still is.
    store
        .put(Record::new("songs", song.clone(), f(json!({"title": "s"}))))
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 1);

    // Pulls skip the server's collection of the same name.
    let r = store
        .apply_remote(&page(
            vec![
                change("drafts", &d1, 5, Some(json!({"title": "server's"}))),
                change("drafts", &new_id(), 6, Some(json!({"title": "server's"}))),
                change("drafts", &d2, 7, None),
            ],
            7,
        ))
        .await
        .unwrap();
    assert_eq!((r.applied, r.skipped), (0, 3), "{r:?}");
    assert_eq!(store.sync_state().await.unwrap().watermark, Watermark(7));
    let drafts = store.list("drafts").await.unwrap();
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].fields, f(json!({"title": "sql edit"})));

    // Resyncs never remove its records, scoped or not.
    store.begin_resync().await.unwrap();
    assert_eq!(store.finish_resync(None).await.unwrap(), 0);
    store.begin_resync().await.unwrap();
    let only = ["drafts".to_string()].into_iter().collect();
    assert_eq!(store.finish_resync(Some(only)).await.unwrap(), 0);
    assert_eq!(store.list("drafts").await.unwrap().len(), 1);
    assert_eq!(store.pending_count().await.unwrap(), 1);
    assert!(store
        .pending(0, 10)
        .await
        .unwrap()
        .iter()
        .all(|p| p.collection == "songs"));
}

/// Whether a stored collection is local-only cannot change at a later open.
#[tokio::test]
async fn local_only_cannot_be_switched_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    drop(SqliteStore::open(&path, schema()).unwrap());
    let synced = Schema::new().collection(CollectionSchema::new("drafts").text("title"));
    assert!(matches!(
        SqliteStore::open(&path, synced),
        Err(StoreError::Schema { .. })
    ));
    let local = Schema::new().collection(CollectionSchema::new("songs").text("title").local_only());
    assert!(matches!(
        SqliteStore::open(&path, local),
        Err(StoreError::Schema { .. })
    ));
    // Declaring new fields keeps it local-only (the regenerated triggers too).
    let more = Schema::new().collection(
        CollectionSchema::new("drafts")
            .text("title")
            .number("n")
            .local_only(),
    );
    let s = SqliteStore::open(&path, more).unwrap();
    s.with_connection(|c| c.execute(r#"INSERT INTO "drafts" ("n") VALUES (1)"#, []))
        .unwrap()
        .unwrap();
    assert_eq!(s.count("drafts").await.unwrap(), 1);
    assert_eq!(s.pending_count().await.unwrap(), 0);
}
