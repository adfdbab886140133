//! Pulled values that do not fit their declared column kind: kept exactly as the
//! server sent them (in `_extra`, NULL in the column), reported, returned by `get`,
//! and pushed back unchanged by a later put that leaves them alone; only a value
//! the app itself writes with the wrong kind is refused.
#![cfg(feature = "sqlite")]

use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, LocalStore, Mistyped, Op, Page, Record, RecordId, RemoteChange, RemoteState,
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
            .text("order")
            .bool("liked"),
    )
}

fn page(changes: Vec<(RecordId, u64, Value)>, w: u64) -> Page {
    Page {
        changes: changes
            .into_iter()
            .map(|(id, v, fields)| RemoteChange {
                collection: "songs".into(),
                id,
                state: RemoteState {
                    version: Version(v),
                    fields: Some(f(fields)),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(w),
        more: false,
    }
}

#[tokio::test]
async fn a_mistyped_value_is_kept_reported_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("app.db"), schema()).unwrap();
    let (a, b) = (new_id(), new_id());
    let r = store
        .apply_remote(&page(
            vec![
                (
                    a.clone(),
                    1,
                    json!({"title": "t", "order": 5, "liked": true}),
                ),
                (b.clone(), 2, json!({"title": "fine", "order": "2"})),
            ],
            2,
        ))
        .await
        .expect("the page applies");
    assert_eq!(r.applied, 2, "the rest of the record and the page apply");
    assert_eq!(
        r.mistyped,
        vec![Mistyped {
            collection: "songs".into(),
            id: a.clone(),
            field: "order".into(),
            expected: "a string".into(),
            value: json!(5),
        }]
    );
    let got = store.get("songs", &a).await.unwrap().unwrap();
    assert_eq!(
        got.fields,
        f(json!({"title": "t", "order": 5, "liked": true}))
    );
    // Plain SQL sees NULL in the typed column and the value in `_extra`.
    let (order, extra): (Option<String>, String) = store
        .with_connection(|c| {
            c.query_row(
                r#"SELECT "order", "_extra" FROM "songs" WHERE "id" = ?1"#,
                [a.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!((order, extra.as_str()), (None, r#"{"order":5}"#));

    // A put that changes another field and leaves the value as it is: accepted,
    // the value is kept and pushed as it is, and only the changed field counts.
    let mut fields = got.fields.clone();
    fields.insert("title".into(), json!("edited"));
    store
        .put(Record::new("songs", a.clone(), fields.clone()))
        .await
        .expect("an unchanged mistyped value is not the app's doing");
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op, Op::Upsert(fields.clone()));
    assert_eq!(p[0].changed.iter().collect::<Vec<_>>(), vec!["title"]);
    assert_eq!(p[0].base, Some(Version(1)));
    // A second put coalesces; the value still is not counted as changed.
    fields.insert("liked".into(), json!(false));
    store
        .put(Record::new("songs", a.clone(), fields.clone()))
        .await
        .unwrap();
    let p = store.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "coalesced");
    assert_eq!(
        p[0].changed.iter().collect::<Vec<_>>(),
        vec!["liked", "title"]
    );
    assert_eq!(
        store.get("songs", &a).await.unwrap().unwrap().fields,
        fields
    );

    // A wrong kind the app writes itself is refused, and changes nothing.
    for bad in [json!(6), json!(true)] {
        let mut wrong = fields.clone();
        wrong.insert("order".into(), bad.clone());
        let r = store.put(Record::new("songs", a.clone(), wrong)).await;
        assert!(matches!(r, Err(StoreError::Schema { .. })), "{bad}: {r:?}");
    }
    let mut wrong = fields.clone();
    wrong.insert("liked".into(), json!("yes"));
    assert!(matches!(
        store.put(Record::new("songs", a.clone(), wrong)).await,
        Err(StoreError::Schema { .. })
    ));
    // A new record may not start with a mistyped value either.
    assert!(matches!(
        store
            .put(Record::new("songs", new_id(), f(json!({"order": 5}))))
            .await,
        Err(StoreError::Schema { .. })
    ));
    assert_eq!(
        store.get("songs", &a).await.unwrap().unwrap().fields,
        fields
    );
    assert_eq!(store.pending_count().await.unwrap(), 1);

    // Fixing the value moves it into its column.
    let mut fixed = fields.clone();
    fixed.insert("order".into(), json!("5"));
    store
        .put(Record::new("songs", a.clone(), fixed.clone()))
        .await
        .unwrap();
    assert_eq!(store.get("songs", &a).await.unwrap().unwrap().fields, fixed);
    let (order, extra): (Option<String>, Option<String>) = store
        .with_connection(|c| {
            c.query_row(
                r#"SELECT "order", "_extra" FROM "songs" WHERE "id" = ?1"#,
                [a.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!((order.as_deref(), extra), (Some("5"), None));
    let p = store.pending(0, 10).await.unwrap();
    assert!(p[0].changed.contains("order"));
}

/// A mistyped value survives a reopen, and an unchanged put after it.
#[tokio::test]
async fn a_mistyped_value_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let a = new_id();
    {
        let s = SqliteStore::open(&path, schema()).unwrap();
        s.apply_remote(&page(vec![(a.clone(), 1, json!({"liked": [1, 2]}))], 1))
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path, schema()).unwrap();
    let got = s.get("songs", &a).await.unwrap().unwrap();
    assert_eq!(got.fields, f(json!({"liked": [1, 2]})));
    s.put(got.clone()).await.unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p[0].op, Op::Upsert(got.fields));
    assert!(p[0].changed.is_empty(), "nothing changed");
}
