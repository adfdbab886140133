//! SQLite-specific behaviour: typed tables, plain-SQL capture by triggers, no echo
//! of remote applies, schema evolution, reserved words, typed errors.
#![cfg(feature = "sqlite")]

use rusqlite::Connection;
use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Ack, Fields, LocalStore, Op, Page, Record, RecordId, RemoteChange, RemoteState,
    StoreError, Version, Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SqliteStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn schema() -> Schema {
    Schema::new().collection(
        CollectionSchema::new("songs")
            .text("title")
            .number("order")
            .bool("liked")
            .date("released")
            .json("meta")
            .relation("album")
            .relations("tags"),
    )
}

fn change(c: &str, id: &RecordId, v: u64, fields: Option<Fields>) -> RemoteChange {
    RemoteChange {
        collection: c.into(),
        id: id.clone(),
        state: RemoteState {
            version: Version(v),
            fields,
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
async fn records_are_typed_columns_queryable_with_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, schema()).unwrap();
    let id = new_id();
    let album = new_id();
    let fields = f(json!({
        "title": "So What", "order": 2, "liked": true, "released": "1959-08-17 00:00:00.000Z",
        "meta": {"bpm": 136}, "album": album.as_str(), "tags": [album.as_str()], "rating": 4.5
    }));
    store
        .put(Record::new("songs", id.clone(), fields.clone()))
        .await
        .unwrap();
    assert_eq!(
        store.get("songs", &id).await.unwrap().unwrap().fields,
        fields
    );
    let app = Connection::open(&path).unwrap();
    let row: (String, i64, i64, String, String, String, String, String) = app
        .query_row(
            r#"SELECT "title", "order", "liked", "released", json_extract("meta", '$.bpm'), "album",
                      typeof("order") || '/' || typeof("liked"), "_extra" FROM "songs" WHERE "order" > 1"#,
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, i64>(4)?.to_string(),
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(row.0, "So What");
    assert_eq!((row.1, row.2), (2, 1));
    assert_eq!(row.3, "1959-08-17 00:00:00.000Z");
    assert_eq!(row.4, "136");
    assert_eq!(row.5, album.as_str());
    assert_eq!(row.6, "integer/integer");
    assert_eq!(row.7, r#"{"rating":4.5}"#, "undeclared fields go to _extra");
}

#[tokio::test]
async fn plain_sql_writes_are_captured_and_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, schema()).unwrap();
    let app = Connection::open(&path).unwrap();
    let id = new_id();
    app.execute(
        r#"INSERT INTO "songs" ("id", "title", "order", "liked") VALUES (?1, 'a', 1, TRUE)"#,
        [id.as_str()],
    )
    .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    let e = &p[0];
    assert_eq!((e.collection.as_str(), &e.id, e.base), ("songs", &id, None));
    assert_eq!(e.change_id.client, store.client_id().await.unwrap());
    assert_eq!(
        e.op,
        Op::Upsert(f(json!({"title": "a", "order": 1, "liked": true})))
    );
    assert_eq!(
        e.changed.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["liked", "order", "title"]
    );

    // Acknowledge it, then edit with SQL: the new entry is based on the version.
    store
        .ack(vec![Ack::Applied {
            collection: "songs".into(),
            id: id.clone(),
            change_id: e.change_id.clone(),
            version: Version(5),
        }])
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
    app.execute(
        r#"UPDATE "songs" SET "order" = 2 WHERE "id" = ?1"#,
        [id.as_str()],
    )
    .unwrap();
    let e1 = store.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(e1.base, Some(Version(5)));
    assert_eq!(e1.changed.iter().collect::<Vec<_>>(), vec!["order"]);
    assert!(e1.change_id.n > e.change_id.n);

    // An API write and another SQL write coalesce into the same entry.
    let mut fields = f(json!({"title": "b", "order": 2, "liked": true}));
    store
        .put(Record::new("songs", id.clone(), fields.clone()))
        .await
        .unwrap();
    app.execute(
        r#"UPDATE "songs" SET "_extra" = '{"x": [1]}' WHERE "id" = ?1"#,
        [id.as_str()],
    )
    .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "coalesced");
    assert_eq!(p[0].seq, e1.seq, "same outbox position");
    assert!(p[0].change_id.n > e1.change_id.n + 1);
    fields.insert("x".into(), json!([1]));
    assert_eq!(p[0].op, Op::Upsert(fields));
    assert_eq!(
        p[0].changed.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["order", "title", "x"]
    );

    // A SQL delete becomes a delete op.
    app.execute(r#"DELETE FROM "songs" WHERE "id" = ?1"#, [id.as_str()])
        .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(
        (p.len(), &p[0].op, p[0].base),
        (1, &Op::Delete, Some(Version(5)))
    );

    // An insert without an id gets a valid random id.
    app.execute(r#"INSERT INTO "songs" ("title") VALUES ('no id')"#, [])
        .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 2);
    assert!(RecordId::parse(p[1].id.as_str()).is_ok());
    assert_eq!(p[1].op, Op::Upsert(f(json!({"title": "no id"}))));

    // Bad ids and id changes are refused by the table itself.
    assert!(app
        .execute(r#"INSERT INTO "songs" ("id") VALUES ('NOT-AN-ID')"#, [])
        .is_err());
    assert!(app
        .execute(
            r#"UPDATE "songs" SET "id" = ?1 WHERE "id" = ?2"#,
            [new_id().as_str(), p[1].id.as_str()]
        )
        .is_err());
    assert_eq!(store.pending_count().await.unwrap(), 2);
}

#[tokio::test]
async fn remote_applies_and_acks_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, schema()).unwrap();
    let (a, b) = (new_id(), new_id());
    store
        .apply_remote(&page(
            vec![
                change("songs", &a, 1, Some(f(json!({"title": "a"})))),
                change("songs", &b, 2, Some(f(json!({"title": "b"})))),
            ],
            2,
        ))
        .await
        .unwrap();
    store
        .apply_remote(&page(vec![change("songs", &b, 3, None)], 3))
        .await
        .unwrap();
    assert_eq!(
        store.pending_count().await.unwrap(),
        0,
        "apply must not echo"
    );
    store.begin_resync().await.unwrap();
    // The resync delivers `a` again as it is (the echo of a known version applies
    // again, and must not be captured as a local write either).
    store
        .apply_remote(&page(
            vec![change("songs", &a, 1, Some(f(json!({"title": "a"}))))],
            3,
        ))
        .await
        .unwrap();
    store.finish_resync(None).await.unwrap();
    assert_eq!(
        store.pending_count().await.unwrap(),
        0,
        "resync must not echo"
    );
    // Capture is back on for other connections after the store's transactions.
    let app = Connection::open(&path).unwrap();
    app.execute(
        r#"UPDATE "songs" SET "title" = 'x' WHERE "id" = ?1"#,
        [a.as_str()],
    )
    .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].base,
        Some(Version(1)),
        "SQL edit is based on the remote version"
    );
    // TakeServer of the SQL write does not echo either.
    store
        .ack(vec![Ack::TakeServer {
            collection: "songs".into(),
            id: a.clone(),
            change_id: p[0].change_id.clone(),
            state: RemoteState {
                version: Version(9),
                fields: Some(f(json!({"title": "server"}))),
                change_id: None,
            },
        }])
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn schema_evolution_adds_columns_and_keeps_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let v1 = Schema::new().collection(CollectionSchema::new("songs").text("title"));
    let id = new_id();
    let fields = f(json!({"title": "t", "year": 1999, "mood": {"a": [1, null]}, "gone": null}));
    {
        let store = SqliteStore::open(&path, v1.clone()).unwrap();
        store
            .apply_remote(&page(
                vec![change("songs", &id, 1, Some(fields.clone()))],
                1,
            ))
            .await
            .unwrap();
        assert_eq!(
            store.get("songs", &id).await.unwrap().unwrap().fields,
            fields
        );
    }
    let v2 = Schema::new()
        .collection(
            CollectionSchema::new("songs")
                .text("title")
                .number("year")
                .text("gone"),
        )
        .collection(CollectionSchema::new("albums").text("name"));
    let store = SqliteStore::open(&path, v2).unwrap();
    assert_eq!(
        store.get("songs", &id).await.unwrap().unwrap().fields,
        fields,
        "rows and unknown fields survive a schema change"
    );
    let (year, extra): (i64, String) = store
        .with_connection(|c| {
            c.query_row(r#"SELECT "year", "_extra" FROM "songs""#, [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        })
        .unwrap();
    assert_eq!(
        year, 1999,
        "a value kept in _extra moves into its new column"
    );
    assert_eq!(extra, r#"{"gone":null,"mood":{"a":[1,null]}}"#);
    assert!(store.list("albums").await.unwrap().is_empty());
    // The new column is captured by the regenerated triggers.
    store
        .with_connection(|c| {
            c.execute(r#"UPDATE "songs" SET "year" = 2000"#, [])
                .unwrap()
        })
        .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p[0].changed.iter().collect::<Vec<_>>(), vec!["year"]);
    drop(store);
    // Reopening with the old schema keeps what the store knows.
    let store = SqliteStore::open(&path, v1).unwrap();
    assert_eq!(store.schema().get("songs").unwrap().fields.len(), 3);
    drop(store);
    // Another kind for a stored field opens; the field keeps its stored kind, so a
    // value of the new kind is the app's mistake (refused) and a pulled one is kept.
    let other = Schema::new().collection(CollectionSchema::new("songs").number("title"));
    let store = SqliteStore::open(&path, other).unwrap();
    assert_eq!(
        store.schema().get("songs").unwrap().kind_of("title"),
        Some(tidemark_backends::FieldKind::Text)
    );
    let mut f = fields.clone();
    f.insert("title".into(), json!(7));
    assert!(matches!(
        store.put(Record::new("songs", id.clone(), f)).await,
        Err(StoreError::Schema { .. })
    ));
}

#[tokio::test]
async fn reserved_words_work_as_collection_and_field_names() {
    let s = Schema::new().collection(
        CollectionSchema::new("order")
            .text("from")
            .number("group")
            .bool("select")
            .text("where"),
    );
    let store = SqliteStore::open_in_memory(s).unwrap();
    let id = new_id();
    let fields = f(json!({"from": "x", "group": 3, "select": false, "where": "y", "table": 1}));
    store
        .put(Record::new("order", id.clone(), fields.clone()))
        .await
        .unwrap();
    store
        .apply_remote(&page(
            vec![change("order", &new_id(), 1, Some(fields.clone()))],
            1,
        ))
        .await
        .unwrap();
    assert_eq!(
        store.get("order", &id).await.unwrap().unwrap().fields,
        fields
    );
    let n: i64 = store
        .with_connection(|c| {
            c.query_row(
                r#"SELECT count(*) FROM "order" WHERE "group" = 3 AND "from" = 'x'"#,
                [],
                |r| r.get(0),
            )
            .unwrap()
        })
        .unwrap();
    assert_eq!(n, 2);
    store
        .with_connection(|c| {
            c.execute(
                r#"UPDATE "order" SET "select" = TRUE WHERE "id" = ?1"#,
                [id.as_str()],
            )
            .unwrap()
        })
        .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(
        p[0].changed.iter().collect::<Vec<_>>(),
        vec!["from", "group", "select", "table", "where"]
    );
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_changes_nothing() {
    let store = SqliteStore::open_in_memory(schema()).unwrap();
    let id = new_id();
    let bad = [
        json!({"order": "three"}),
        json!({"liked": 1}),
        json!({"title": 5}),
        json!({"released": "yesterday"}),
        json!({"tags": "x"}),
        json!({"order": 18446744073709551615u64}),
    ];
    for b in bad {
        let r = store
            .put(Record::new("songs", id.clone(), f(b.clone())))
            .await;
        assert!(
            matches!(r, Err(StoreError::Schema { .. })),
            "{b} gave {r:?}"
        );
    }
    let r = store
        .put(Record::new(
            "songs",
            id.clone(),
            f(json!({"album": "NOPE"})),
        ))
        .await;
    assert!(matches!(r, Err(StoreError::InvalidId(_))), "{r:?}");
    let r = store
        .put(Record::new(
            "songs",
            id.clone(),
            f(json!({"tags": ["ok", 1]})),
        ))
        .await;
    assert!(r.is_err());
    assert!(matches!(
        store
            .put(Record::new("nope", id.clone(), Fields::new()))
            .await,
        Err(StoreError::UnknownCollection(_))
    ));
    assert!(matches!(
        store.list("bad name!").await,
        Err(StoreError::UnknownCollection(_))
    ));
    // A page is never refused for one record: a mistyped value is kept and
    // reported, a change to an undeclared collection skipped.
    let good = change("songs", &new_id(), 1, Some(f(json!({"title": "ok"}))));
    let badc = change("songs", &new_id(), 2, Some(f(json!({"order": "x"}))));
    let r = store
        .apply_remote(&page(vec![good, badc], 2))
        .await
        .unwrap();
    assert_eq!((r.applied, r.mistyped.len()), (2, 1), "{r:?}");
    let unknown = change("nope", &new_id(), 3, Some(Fields::new()));
    let r = store.apply_remote(&page(vec![unknown], 3)).await.unwrap();
    assert_eq!((r.applied, r.skipped), (0, 1), "{r:?}");
    assert_eq!(store.sync_state().await.unwrap().watermark, Watermark(3));
    assert_eq!(store.list("songs").await.unwrap().len(), 2);
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn corrupt_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    assert!(matches!(
        SqliteStore::open(&garbage, schema()),
        Err(StoreError::Corrupt(_))
    ));
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&foreign, schema()),
        Err(StoreError::Corrupt(_))
    ));
    // A tidemark store whose file was truncated mid-page.
    let good = dir.path().join("good.db");
    {
        let s = SqliteStore::open(&good, schema()).unwrap();
        for _ in 0..200 {
            s.put(Record::new(
                "songs",
                new_id(),
                f(json!({"title": "x".repeat(500)})),
            ))
            .await
            .unwrap();
        }
    }
    let mut bytes = std::fs::read(&good).unwrap();
    for b in bytes.iter_mut().skip(100).take(4000) {
        *b = 0xff;
    }
    std::fs::write(&good, bytes).unwrap();
    let r = SqliteStore::open(&good, schema());
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
}

/// A store written before the resync epoch existed (no `_tidemark_versions.seen`
/// column, no `epoch` metadata), left in the middle of a resync, still opens, and
/// the resync finishes exactly as it would have: records seen by the old marks are
/// kept, unseen ones removed.
#[tokio::test]
async fn a_store_from_before_the_resync_epoch_is_upgraded_mid_resync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let (kept, dropped, later) = (new_id(), new_id(), new_id());
    {
        let store = SqliteStore::open(&path, schema()).unwrap();
        store
            .apply_remote(&page(
                vec![
                    change("songs", &dropped, 1, Some(f(json!({"title": "gone"})))),
                    change("songs", &kept, 2, Some(f(json!({"title": "kept"})))),
                ],
                2,
            ))
            .await
            .unwrap();
        store.begin_resync().await.unwrap();
        // Seen by the old layout's mark only (a stale re-delivery).
        store
            .apply_remote(&page(
                vec![change("songs", &kept, 1, Some(f(json!({"title": "kept"}))))],
                1,
            ))
            .await
            .unwrap();
    }
    // Turn it into the old layout.
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        r#"ALTER TABLE "_tidemark_versions" DROP COLUMN "seen";
           DELETE FROM "_tidemark_meta" WHERE "key" = 'epoch';"#,
    )
    .unwrap();
    drop(c);

    let store = SqliteStore::open(&path, schema()).unwrap();
    store
        .apply_remote(&page(
            vec![change("songs", &later, 3, Some(f(json!({"title": "new"}))))],
            3,
        ))
        .await
        .unwrap();
    assert_eq!(store.finish_resync(None).await.unwrap(), 1);
    assert!(store.get("songs", &kept).await.unwrap().is_some());
    assert!(store.get("songs", &later).await.unwrap().is_some());
    assert!(store.get("songs", &dropped).await.unwrap().is_none());
    // And the next resync uses the epoch: only what it applies survives.
    store.begin_resync().await.unwrap();
    store
        .apply_remote(&page(
            vec![change(
                "songs",
                &later,
                4,
                Some(f(json!({"title": "newer"}))),
            )],
            4,
        ))
        .await
        .unwrap();
    assert_eq!(store.finish_resync(None).await.unwrap(), 1);
    assert!(store.get("songs", &kept).await.unwrap().is_none());
    assert_eq!(store.count("songs").await.unwrap(), 1);
}
