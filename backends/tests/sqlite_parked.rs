//! Changes to collections the SQLite store's schema does not declare: skipped and
//! counted, never refusing the page; parked (newest state per record) and applied
//! when a later open declares the collection, though the watermark moved on.
#![cfg(feature = "sqlite")]

use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, LocalStore, Page, RecordId, RemoteChange, RemoteState, Version, Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SqliteStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
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

fn v1() -> Schema {
    Schema::new().collection(CollectionSchema::new("songs").text("title"))
}

fn v2() -> Schema {
    v1().collection(CollectionSchema::new("albums").text("name").number("year"))
}

#[tokio::test]
async fn records_of_an_undeclared_collection_arrive_when_it_is_declared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (song, a1, a2, a3) = (new_id(), new_id(), new_id(), new_id());
    {
        let s = SqliteStore::open(&path, v1()).unwrap();
        let r = s
            .apply_remote(&page(
                vec![
                    change("songs", &song, 1, Some(json!({"title": "s"}))),
                    change("albums", &a1, 2, Some(json!({"name": "first", "year": 1}))),
                    change("albums", &a2, 3, Some(json!({"name": "two"}))),
                    change("albums", &a3, 4, Some(json!({"name": "gone soon"}))),
                    change("no such collection!", &new_id(), 5, Some(json!({}))),
                ],
                5,
            ))
            .await
            .expect("a page is never refused for a collection");
        assert_eq!((r.applied, r.skipped), (1, 4), "{r:?}");
        // Later pages: a1 changes, a3 is deleted, and a late re-delivery of an
        // older a2 state must not replace the newer one.
        let r = s
            .apply_remote(&page(
                vec![
                    change("albums", &a2, 1, Some(json!({"name": "older"}))),
                    change(
                        "albums",
                        &a1,
                        6,
                        Some(json!({"name": "newest", "year": 1999})),
                    ),
                    change("albums", &a3, 7, None),
                ],
                7,
            ))
            .await
            .unwrap();
        assert_eq!(r.skipped, 3);
        assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(7));
        assert!(s.get("albums", &a1).await.is_err(), "still undeclared");
    }
    let s = SqliteStore::open(&path, v2()).unwrap();
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(7));
    let albums = s.list("albums").await.unwrap();
    let got: Vec<(RecordId, Fields)> = albums.into_iter().map(|r| (r.id, r.fields)).collect();
    let mut want = vec![
        (a1.clone(), f(json!({"name": "newest", "year": 1999}))),
        (a2.clone(), f(json!({"name": "two"}))),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got, want,
        "the newest parked state of each record, tombstones applied"
    );
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "applying parked records is no local write"
    );
    // Their versions are known: an older re-delivery is stale, a newer one applies.
    let r = s
        .apply_remote(&page(
            vec![
                change("albums", &a1, 5, Some(json!({"name": "stale"}))),
                change("albums", &a3, 6, Some(json!({"name": "stale too"}))),
                change("albums", &a2, 8, Some(json!({"name": "new"}))),
            ],
            8,
        ))
        .await
        .unwrap();
    assert_eq!((r.applied, r.stale), (1, 2), "{r:?}");
    drop(s);
    // Applied once: the parked table is empty now.
    let c = rusqlite::Connection::open(&path).unwrap();
    let parked: i64 = c
        .query_row(r#"SELECT count(*) FROM "_tidemark_parked""#, [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(parked, 0);
}

/// A value of a parked record that does not fit the kind the collection is later
/// declared with is kept as it came.
#[tokio::test]
async fn parked_values_that_do_not_fit_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let a = new_id();
    {
        let s = SqliteStore::open(&path, v1()).unwrap();
        s.apply_remote(&page(
            vec![change(
                "albums",
                &a,
                1,
                Some(json!({"name": 5, "year": "later"})),
            )],
            1,
        ))
        .await
        .unwrap();
    }
    let s = SqliteStore::open(&path, v2()).unwrap();
    assert_eq!(
        s.get("albums", &a).await.unwrap().unwrap().fields,
        f(json!({"name": 5, "year": "later"}))
    );
}

/// A resync delivers everything again: beginning one drops what is parked.
#[tokio::test]
async fn begin_resync_drops_parked_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (a, b) = (new_id(), new_id());
    {
        let s = SqliteStore::open(&path, v1()).unwrap();
        s.apply_remote(&page(
            vec![change("albums", &a, 1, Some(json!({"name": "a"})))],
            1,
        ))
        .await
        .unwrap();
        s.begin_resync().await.unwrap();
        // Parked during the resync: kept.
        s.apply_remote(&page(
            vec![change("albums", &b, 2, Some(json!({"name": "b"})))],
            2,
        ))
        .await
        .unwrap();
    }
    let s = SqliteStore::open(&path, v2()).unwrap();
    let ids: Vec<RecordId> = s
        .list("albums")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![b.clone()]);
    // What the resync delivered (parked, then applied at open) counts as seen.
    assert_eq!(s.finish_resync(None).await.unwrap(), 0);
    assert!(s.get("albums", &b).await.unwrap().is_some());
}

/// A collection declared local-only takes nothing from the server, parked or not.
#[tokio::test]
async fn parked_records_of_a_collection_declared_local_only_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let a = new_id();
    {
        let s = SqliteStore::open(&path, v1()).unwrap();
        s.apply_remote(&page(
            vec![change("albums", &a, 1, Some(json!({"name": "a"})))],
            1,
        ))
        .await
        .unwrap();
    }
    let schema = v1().collection(CollectionSchema::new("albums").text("name").local_only());
    let s = SqliteStore::open(&path, schema).unwrap();
    assert!(s.list("albums").await.unwrap().is_empty());
}

/// Parked changes applied at open follow the rule of a pulled page
/// (`rules::decide`): a record with an outbox entry is left alone (the push meets
/// the server's state; the local change is not overwritten), and a change at the
/// record's known version applies again. The outbox entry and the known version are
/// written with plain SQL: the API cannot write to a collection the store does not
/// declare.
#[tokio::test]
async fn parked_changes_follow_the_apply_rule_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (pending, at_known) = (new_id(), new_id());
    {
        let s = SqliteStore::open(&path, v1()).unwrap();
        s.apply_remote(&page(
            vec![
                change("albums", &pending, 2, Some(json!({"name": "server"}))),
                change("albums", &at_known, 3, Some(json!({"name": "again"}))),
            ],
            3,
        ))
        .await
        .unwrap();
    }
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            r#"INSERT INTO "_tidemark_outbox" ("collection", "id", "change_n", "base", "changed") VALUES ('albums', ?1, 1, 1, '[]')"#,
            [pending.as_str()],
        )
        .unwrap();
        c.execute(
            r#"INSERT INTO "_tidemark_versions" ("collection", "id", "version") VALUES ('albums', ?1, 3)"#,
            [at_known.as_str()],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, v2()).unwrap();
    assert!(
        s.get("albums", &pending).await.unwrap().is_none(),
        "the record's pending local change (a delete) is not overwritten"
    );
    assert_eq!(
        s.pending(0, 10).await.unwrap().len(),
        1,
        "and still pending"
    );
    assert_eq!(
        s.get("albums", &at_known).await.unwrap().unwrap().fields,
        f(json!({"name": "again"})),
        "a change at the known version applies again"
    );
}
