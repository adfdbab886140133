#![cfg(all(feature = "sqlite", feature = "sled"))]
//! Transactions on the stores with a schema: a write whose value does not fit its
//! declared kind fails the whole transaction with the error `put` gives it, and
//! nothing changes; a mistyped value a pull kept, left as it is, does not.

use serde_json::{json, Value};
use sync_traits::{
    new_id, Fields, LocalStore, Page, Record, RemoteChange, RemoteState, StoreError, Transact,
    Version, Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn stores() -> Vec<(&'static str, Box<dyn LocalStore>)> {
    vec![
        (
            "sqlite",
            Box::new(SqliteStore::open_in_memory(Schema::conformance()).unwrap()),
        ),
        (
            "sled",
            Box::new(SledStore::open_temporary(Schema::conformance()).unwrap()),
        ),
    ]
}

#[tokio::test]
async fn a_mistyped_write_fails_the_whole_transaction() {
    for (kind, s) in stores() {
        let (a, b, c) = (new_id(), new_id(), new_id());
        s.put(Record::new(
            "songs",
            b.clone(),
            f(json!({"title": "b", "order": 1})),
        ))
        .await
        .unwrap();
        let before = s.pending(0, 10).await.unwrap();
        let bad = Record::new(
            "songs",
            c.clone(),
            f(json!({"title": "c", "order": "not a number"})),
        );
        let put_err = s.put(bad.clone()).await.unwrap_err().to_string();
        let err = s
            .transaction()
            .put(Record::new(
                "songs",
                a.clone(),
                f(json!({"title": "a", "order": 2})),
            ))
            .delete("songs", &b)
            .put(bad)
            .commit()
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Schema { .. }), "{kind}: {err:?}");
        assert_eq!(
            err.to_string(),
            put_err,
            "{kind}: the error put gives the write"
        );
        assert!(
            s.get("songs", &a).await.unwrap().is_none(),
            "{kind}: a written"
        );
        assert!(
            s.get("songs", &b).await.unwrap().is_some(),
            "{kind}: b deleted"
        );
        assert_eq!(
            s.pending(0, 10).await.unwrap(),
            before,
            "{kind}: outbox changed"
        );
    }
}

#[tokio::test]
async fn a_pulled_mistyped_value_left_as_it_is_goes_through() {
    for (kind, s) in stores() {
        let (a, b) = (new_id(), new_id());
        let odd = f(json!({"title": 7, "order": 1}));
        s.apply_remote(&Page {
            changes: vec![RemoteChange {
                collection: "songs".into(),
                id: a.clone(),
                state: RemoteState {
                    version: Version(1),
                    fields: Some(odd.clone()),
                    change_id: None,
                },
            }],
            watermark: Watermark(1),
            more: false,
        })
        .await
        .unwrap();
        let mut kept = odd.clone();
        kept.insert("order".into(), json!(2));
        let r = s
            .transaction()
            .put(Record::new("songs", a.clone(), kept.clone()))
            .put(Record::new("songs", b.clone(), f(json!({"title": "b"}))))
            .commit()
            .await
            .unwrap();
        assert_eq!(r.existed, vec![true, false], "{kind}");
        assert_eq!(
            s.get("songs", &a).await.unwrap().map(|r| r.fields),
            Some(kept),
            "{kind}: the kept value stays as the server sent it"
        );
        assert_eq!(s.pending_count().await.unwrap(), 2, "{kind}");
    }
}
