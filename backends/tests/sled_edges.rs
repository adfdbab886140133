//! The sled store at the edges of the contract: a copied or restored database, a
//! database of the previous format, collections the schema does not declare (yet),
//! pulled values of the wrong type, local-only collections, and the conflict log
//! and quarantine across reopens.
#![cfg(feature = "sled")]

use std::collections::BTreeSet;
use std::path::Path;
use sync_traits::SyncStore;

use serde_json::{json, Value};
use sync_traits::{
    new_id, Ack, ChangeId, Conflict, Fields, LocalStore, Op, Page, Record, RecordId, Rejection,
    RemoteChange, RemoteState, Resolution, StoreError, Version, Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SledStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn change(collection: &str, id: &RecordId, version: u64, fields: Option<Value>) -> RemoteChange {
    RemoteChange {
        collection: collection.into(),
        id: id.clone(),
        state: RemoteState {
            version: Version(version),
            fields: fields.map(f),
            change_id: None,
        },
    }
}

fn page(changes: Vec<RemoteChange>, watermark: u64) -> Page {
    Page {
        changes,
        watermark: Watermark(watermark),
        more: false,
    }
}

fn songs() -> CollectionSchema {
    CollectionSchema::new("songs").text("title").number("order")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

async fn put(s: &SledStore, coll: &str, id: &RecordId, v: Value) -> ChangeId {
    s.put(Record::new(coll, id.clone(), f(v))).await.unwrap();
    s.pending(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|p| &p.id == id)
        .unwrap()
        .change_id
}

/// A copy of the database made while it was closed (a backup restored, a device
/// cloned) takes a new writer id at open: it never stamps a change id the
/// original stamped after the copy, and it does not claim those changes as its
/// own, while the changes made before the copy stay its own.
#[tokio::test]
async fn a_restored_copy_takes_a_new_writer_and_disowns_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, copy) = (dir.path().join("orig"), dir.path().join("copy"));
    let schema = || Schema::new().collection(songs());
    let (a, b) = (new_id(), new_id());
    let (w1, before) = {
        let s = SledStore::open(&orig, schema()).unwrap();
        let c1 = put(&s, "songs", &a, json!({"title": "one"})).await;
        let c2 = put(&s, "songs", &b, json!({"title": "two"})).await;
        (s.client_id().await.unwrap(), vec![c1, c2])
    };
    copy_dir(&orig, &copy);
    let (w2, after) = {
        let s = SledStore::open(&orig, schema()).unwrap();
        assert_ne!(
            s.client_id().await.unwrap(),
            w1,
            "a new writer at every open"
        );
        let c3 = put(&s, "songs", &new_id(), json!({"title": "three"})).await;
        let c4 = put(&s, "songs", &a, json!({"title": "one, edited"})).await;
        assert_eq!(c3.n, before[1].n + 1, "the counter goes on across opens");
        for c in before.iter().chain([&c3, &c4]) {
            assert!(s.made_here(c).await.unwrap(), "{c} is the original's own");
        }
        (s.client_id().await.unwrap(), vec![c3, c4])
    };
    let s = SledStore::open(&copy, schema()).unwrap();
    let w3 = s.client_id().await.unwrap();
    assert!(w3 != w1 && w3 != w2, "the copy has a writer id of its own");
    for c in &before {
        assert!(
            s.made_here(c).await.unwrap(),
            "{c}, made before the copy, is the copy's own"
        );
    }
    for c in &after {
        assert!(
            !s.made_here(c).await.unwrap(),
            "{c}, made by the original after the copy, is not the copy's"
        );
    }
    let c = put(&s, "songs", &new_id(), json!({"title": "copy's"})).await;
    assert_eq!(c.n, after[0].n, "the copy's counter was rolled back ...");
    assert_ne!(
        c, after[0],
        "... but its change ids never repeat the original's"
    );
    assert!(s.made_here(&c).await.unwrap());
    let unissued = ChangeId {
        client: w3,
        n: c.n + 1,
    };
    assert!(!s.made_here(&unissued).await.unwrap());
    // The entry the copy still holds for `a` keeps the change id it was made with.
    let pa = s.pending(0, 10).await.unwrap();
    assert_eq!(
        pa.iter().find(|p| p.id == a).unwrap().change_id,
        before[0],
        "an entry made under an earlier writer keeps its change id"
    );
}

/// A database of format 1 (one client id, outbox entries without a writer) opens:
/// its client id becomes the first writer, from counter 1, its outbox entries keep
/// their change ids, and its quarantine gets ids.
#[tokio::test]
async fn a_format_1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    let (old_client, a, b) = (new_id(), new_id(), new_id());
    {
        // The layout format 1 wrote.
        let db = sled::open(&path).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("client", old_client.as_str()).unwrap();
        for (k, v) in [
            ("counter", 2u64),
            ("outbox_seq", 2),
            ("q_seq", 1),
            ("watermark", 5),
            ("resyncing", 0),
        ] {
            meta.insert(k, &v.to_be_bytes()).unwrap();
        }
        meta.insert(
            "coll/songs",
            serde_json::to_vec(&json!({"name": "songs", "fields": [
                {"name": "title", "kind": "text"}, {"name": "order", "kind": "number"}
            ]}))
            .unwrap(),
        )
        .unwrap();
        meta.insert("format", "tidemark-sled/1").unwrap();
        for t in ["versions", "outbox_idx", "seen"] {
            db.open_tree(t).unwrap();
        }
        let rows = db.open_tree("c/songs").unwrap();
        rows.insert(
            a.as_str(),
            serde_json::to_vec(&json!({"title": "a"})).unwrap(),
        )
        .unwrap();
        let outbox = db.open_tree("outbox").unwrap();
        outbox
            .insert(
                2u64.to_be_bytes(),
                serde_json::to_vec(&json!({
                    "collection": "songs", "id": a.as_str(), "n": 2, "base": null,
                    "changed": ["title"]
                }))
                .unwrap(),
            )
            .unwrap();
        let mut k = b"songs\0".to_vec();
        k.extend_from_slice(a.as_str().as_bytes());
        db.open_tree("outbox_idx")
            .unwrap()
            .insert(k, &2u64.to_be_bytes())
            .unwrap();
        let q = json!({
            "change": {"seq": 1, "change_id": format!("{old_client}.1"), "collection": "songs",
                       "id": b.as_str(), "base": null, "op": {"Upsert": {"title": "b"}},
                       "changed": ["title"]},
            "rejection": {"message": "no", "fields": {}}
        });
        db.open_tree("quarantine")
            .unwrap()
            .insert(1u64.to_be_bytes(), serde_json::to_vec(&q).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(&path, Schema::new().collection(songs())).unwrap();
    assert_ne!(s.client_id().await.unwrap(), old_client, "a new writer");
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    let old_change = ChangeId {
        client: old_client.clone(),
        n: 2,
    };
    assert_eq!(p[0].change_id, old_change, "the entry keeps its change id");
    assert_eq!(p[0].op, Op::Upsert(f(json!({"title": "a"}))));
    for n in [1, 2] {
        let c = ChangeId {
            client: old_client.clone(),
            n,
        };
        assert!(s.made_here(&c).await.unwrap(), "{c} was the old client's");
    }
    let c3 = ChangeId {
        client: old_client.clone(),
        n: 3,
    };
    assert!(
        !s.made_here(&c3).await.unwrap(),
        "the old client never issued 3"
    );
    let q = s.quarantined().await.unwrap();
    assert_eq!(
        (q.len(), q[0].id, q[0].change.id.clone()),
        (1, 1, b.clone())
    );
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(5));
    let c = put(&s, "songs", &new_id(), json!({"title": "new"})).await;
    assert_eq!(c.n, 3, "the counter goes on");
    s.ack(vec![Ack::Applied {
        collection: "songs".into(),
        id: a.clone(),
        change_id: old_change,
        version: Version(6),
    }])
    .await
    .unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 1, "the old entry settles");
    drop(s);
    // And it opens again in the new format.
    let s = SledStore::open(&path, Schema::new().collection(songs())).unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 1);
    assert!(s.made_here(&c).await.unwrap());
}

/// Changes to a collection the schema does not declare are skipped, counted and
/// parked (the newest state per record); the page still applies and the
/// watermark moves past them; a later open whose schema declares the collection
/// applies them. Impossible collection names are skipped and kept nowhere.
#[tokio::test]
async fn a_parked_collection_arrives_when_a_later_schema_declares_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (song, x, y, z) = (new_id(), new_id(), new_id(), new_id());
    {
        let s = SledStore::open(&path, Schema::new().collection(songs())).unwrap();
        let r = s
            .apply_remote(&page(
                vec![
                    change("songs", &song, 1, Some(json!({"title": "s"}))),
                    change("albums", &x, 2, Some(json!({"name": "old x"}))),
                    change("albums", &y, 3, Some(json!({"name": "y"}))),
                    change("no such collection!", &new_id(), 4, Some(json!({}))),
                ],
                4,
            ))
            .await
            .expect("a page is never refused for a collection");
        assert_eq!((r.applied, r.skipped), (1, 3));
        let r = s
            .apply_remote(&page(
                vec![
                    change("albums", &x, 6, Some(json!({"name": "new x"}))),
                    change("albums", &y, 7, None),
                    change("albums", &z, 8, Some(json!({"name": "z", "year": 1999}))),
                ],
                8,
            ))
            .await
            .unwrap();
        assert_eq!(r.skipped, 3);
        // An older state of a parked record does not replace the newer one.
        s.apply_remote(&page(
            vec![change("albums", &x, 5, Some(json!({"name": "stale x"})))],
            8,
        ))
        .await
        .unwrap();
        assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(8));
        assert!(matches!(
            s.list("albums").await,
            Err(StoreError::UnknownCollection(_))
        ));
    }
    // Opened again without the collection: still parked.
    drop(SledStore::open(&path, Schema::new().collection(songs())).unwrap());
    let schema = Schema::new()
        .collection(songs())
        .collection(CollectionSchema::new("albums").text("name"));
    let s = SledStore::open(&path, schema.clone()).unwrap();
    let albums = s.list("albums").await.unwrap();
    let mut want = vec![
        Record::new("albums", x.clone(), f(json!({"name": "new x"}))),
        Record::new("albums", z.clone(), f(json!({"name": "z", "year": 1999}))),
    ];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(albums, want, "the newest parked states, tombstones applied");
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "they are not local writes"
    );
    let r = s
        .apply_remote(&page(
            vec![change("albums", &x, 5, Some(json!({"name": "older"})))],
            9,
        ))
        .await
        .unwrap();
    assert_eq!(
        r.stale, 1,
        "their versions are known: an older one is stale"
    );
    drop(s);
    let s = SledStore::open(&path, schema).unwrap();
    assert_eq!(s.count("albums").await.unwrap(), 2, "applied once, kept");
}

/// A resync forgets what was parked (it delivers everything again); what a resync
/// itself parks counts as seen by it once its collection is declared.
#[tokio::test]
async fn a_resync_forgets_parked_records_and_keeps_the_ones_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (x, y) = (new_id(), new_id());
    let only_songs = || Schema::new().collection(songs());
    let with_albums = || {
        Schema::new()
            .collection(songs())
            .collection(CollectionSchema::new("albums").text("name"))
    };
    {
        let s = SledStore::open(&path, only_songs()).unwrap();
        s.apply_remote(&page(
            vec![change("albums", &x, 1, Some(json!({"name": "x"})))],
            1,
        ))
        .await
        .unwrap();
        s.begin_resync().await.unwrap();
        s.apply_remote(&page(
            vec![change("albums", &y, 2, Some(json!({"name": "y"})))],
            2,
        ))
        .await
        .unwrap();
    }
    let s = SledStore::open(&path, with_albums()).unwrap();
    let ids: Vec<_> = s
        .list("albums")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids,
        vec![y.clone()],
        "begin_resync cleared what was parked before"
    );
    assert!(s.sync_state().await.unwrap().resyncing);
    assert_eq!(s.finish_resync(None).await.unwrap(), 0);
    assert!(
        s.get("albums", &y).await.unwrap().is_some(),
        "delivered by this resync, so not removed by it"
    );
}

/// A pulled value that does not fit its declared kind is kept as the server sent
/// it and reported; the rest of the record and of the page applies; an app put
/// that leaves the value unchanged is accepted, one that changes it to a wrong
/// type is refused.
#[tokio::test]
async fn a_mistyped_value_is_kept_reported_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let schema = || {
        Schema::new().collection(
            CollectionSchema::new("songs")
                .text("title")
                .text("order")
                .number("plays"),
        )
    };
    let (a, b) = (new_id(), new_id());
    {
        let s = SledStore::open(&path, schema()).unwrap();
        let r = s
            .apply_remote(&page(
                vec![
                    change(
                        "songs",
                        &a,
                        1,
                        Some(json!({"title": "a", "order": 5, "plays": 3.0})),
                    ),
                    change("songs", &b, 2, Some(json!({"title": "b", "order": "2"}))),
                ],
                2,
            ))
            .await
            .expect("a mistyped value does not refuse the page");
        assert_eq!(r.applied, 2);
        assert_eq!(r.mistyped.len(), 1, "{:?}", r.mistyped);
        let m = &r.mistyped[0];
        assert_eq!(
            (m.collection.as_str(), &m.id, m.field.as_str(), &m.value),
            ("songs", &a, "order", &json!(5))
        );
        assert_eq!(m.expected, "a string");
    }
    let s = SledStore::open(&path, schema()).unwrap();
    let got = s.get("songs", &a).await.unwrap().unwrap();
    assert_eq!(
        got.fields,
        f(json!({"title": "a", "order": 5, "plays": 3})),
        "kept as sent (and the rest made canonical), across a reopen"
    );
    // The app edits another field and puts the record back as it read it.
    let mut edited = got.fields.clone();
    edited.insert("title".into(), json!("A"));
    s.put(Record::new("songs", a.clone(), edited.clone()))
        .await
        .expect("an unchanged mistyped value is accepted");
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p[0].op, Op::Upsert(edited.clone()));
    assert_eq!(p[0].changed, BTreeSet::from(["title".to_string()]));
    // Changing it to another wrong value is the app's own mistake.
    let mut wrong = edited.clone();
    wrong.insert("order".into(), json!(6));
    assert!(matches!(
        s.put(Record::new("songs", a.clone(), wrong)).await,
        Err(StoreError::Schema { .. })
    ));
    assert!(matches!(
        s.put(Record::new("songs", b.clone(), f(json!({"order": 2}))))
            .await,
        Err(StoreError::Schema { .. })
    ));
    assert_eq!(
        s.pending(0, 10).await.unwrap(),
        p,
        "a refused put changes nothing"
    );
    let mut fixed = edited.clone();
    fixed.insert("order".into(), json!("6"));
    s.put(Record::new("songs", a.clone(), fixed.clone()))
        .await
        .unwrap();
    assert_eq!(s.get("songs", &a).await.unwrap().unwrap().fields, fixed);
    // A server state taken in an ack may hold a mistyped value too.
    let e = s.pending(0, 10).await.unwrap().remove(0);
    s.ack(vec![Ack::TakeServer {
        collection: "songs".into(),
        id: a.clone(),
        change_id: e.change_id,
        state: RemoteState {
            version: Version(3),
            fields: Some(f(json!({"title": "srv", "order": [1]}))),
            change_id: None,
        },
    }])
    .await
    .expect("an ack is not refused for the server's value");
    assert_eq!(
        s.get("songs", &a).await.unwrap().unwrap().fields["order"],
        json!([1])
    );
}

/// A local-only collection is written like any other but never enters the outbox,
/// is never touched by a pull (a server collection of the same name is skipped)
/// and is never emptied by a resync.
#[tokio::test]
async fn a_local_only_collection_is_untouched_by_pulls_and_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let schema = || {
        Schema::new()
            .collection(songs())
            .collection(CollectionSchema::new("drafts").text("body").local_only())
    };
    let (d, other, song) = (new_id(), new_id(), new_id());
    let s = SledStore::open(&path, schema()).unwrap();
    s.put(Record::new("drafts", d.clone(), f(json!({"body": "mine"}))))
        .await
        .unwrap();
    s.put(Record::new(
        "drafts",
        other.clone(),
        f(json!({"body": "x"})),
    ))
    .await
    .unwrap();
    assert!(s.delete("drafts", &other).await.unwrap());
    assert_eq!(s.pending_count().await.unwrap(), 0, "no outbox entries");
    let r = s
        .apply_remote(&page(
            vec![
                change("drafts", &d, 5, Some(json!({"body": "server's"}))),
                change("drafts", &new_id(), 6, Some(json!({"body": "new"}))),
                change("drafts", &other, 7, Some(json!({"body": "back"}))),
                change("songs", &song, 8, Some(json!({"title": "s"}))),
            ],
            8,
        ))
        .await
        .unwrap();
    assert_eq!((r.applied, r.skipped), (1, 3));
    let drafts = s.list("drafts").await.unwrap();
    assert_eq!(
        drafts,
        vec![Record::new("drafts", d.clone(), f(json!({"body": "mine"})))],
        "pulls never touch a local-only collection"
    );
    s.begin_resync().await.unwrap();
    assert_eq!(
        s.finish_resync(None).await.unwrap(),
        1,
        "the unseen song only"
    );
    s.begin_resync().await.unwrap();
    let scoped = BTreeSet::from(["drafts".to_string()]);
    assert_eq!(s.finish_resync(Some(scoped)).await.unwrap(), 0);
    assert_eq!(s.list("drafts").await.unwrap(), drafts, "resyncs keep it");
    drop(s);
    let s = SledStore::open(&path, schema()).unwrap();
    assert_eq!(s.list("drafts").await.unwrap(), drafts);
    assert_eq!(s.pending_count().await.unwrap(), 0);
}

/// The conflict log and the quarantine survive reopens, their ids keep growing,
/// and a retried change coalesces with the record's outbox entry like a put.
#[tokio::test]
async fn conflicts_and_quarantine_persist_and_retry_coalesces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let schema = || Schema::new().collection(songs());
    let a = new_id();
    let rejection = Rejection {
        message: "no".into(),
        fields: Default::default(),
    };
    let first_ids = {
        let s = SledStore::open(&path, schema()).unwrap();
        put(&s, "songs", &a, json!({"title": "refused"})).await;
        let p = s.pending(0, 10).await.unwrap().remove(0);
        s.ack(vec![
            Ack::Quarantine {
                change: p.clone(),
                rejection: rejection.clone(),
                server: Some(RemoteState {
                    version: Version(4),
                    fields: Some(f(json!({"title": "server"}))),
                    change_id: None,
                }),
            },
            Ack::Conflict(Conflict {
                local: p.clone(),
                server: RemoteState {
                    version: Version(4),
                    fields: None,
                    change_id: None,
                },
                resolution: Resolution::TakeServer,
            }),
        ])
        .await
        .unwrap();
        (
            s.quarantined().await.unwrap()[0].id,
            s.conflicts().await.unwrap()[0].id,
        )
    };
    let s = SledStore::open(&path, schema()).unwrap();
    let q = s.quarantined().await.unwrap();
    let log = s.conflicts().await.unwrap();
    assert_eq!((q.len(), log.len()), (1, 1), "both survive a reopen");
    assert_eq!((q[0].id, log[0].id), first_ids);
    // A newer local write, then the retry: one entry, the retried data, a new id.
    let c_put = put(&s, "songs", &a, json!({"title": "edited"})).await;
    let before = s.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(before.base, Some(Version(4)));
    assert!(s.retry_quarantined(q[0].id).await.unwrap());
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "the retry coalesces into the record's entry");
    assert_eq!(p[0].seq, before.seq);
    assert!(p[0].change_id.n > c_put.n, "a new change id");
    assert_eq!(p[0].base, Some(Version(4)));
    assert_eq!(p[0].op, Op::Upsert(f(json!({"title": "refused"}))));
    assert!(s.quarantined().await.unwrap().is_empty());
    // New ids go on from the old ones.
    s.ack(vec![
        Ack::Quarantine {
            change: p[0].clone(),
            rejection,
            server: None,
        },
        Ack::Conflict(log[0].conflict.clone()),
    ])
    .await
    .unwrap();
    assert!(s.quarantined().await.unwrap()[0].id > first_ids.0);
    let log2 = s.conflicts().await.unwrap();
    assert_eq!(log2.len(), 2);
    assert!(log2[1].id > first_ids.1);
    assert_eq!(
        s.clear_conflicts(vec![log2[0].id, log2[0].id])
            .await
            .unwrap(),
        1
    );
    drop(s);
    let s = SledStore::open(&path, schema()).unwrap();
    assert_eq!(s.conflicts().await.unwrap(), log2[1..].to_vec());
}

/// Whether a stored collection is local-only cannot change at a later open (the
/// rule SQLite follows too): a typed schema error that says what to do, and the
/// store's data untouched.
#[tokio::test]
async fn local_only_cannot_be_switched_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let schema = || {
        Schema::new()
            .collection(CollectionSchema::new("songs").text("title"))
            .collection(CollectionSchema::new("drafts").text("title").local_only())
    };
    let id = new_id();
    {
        let s = SledStore::open(&path, schema()).unwrap();
        s.put(Record::new(
            "songs",
            id.clone(),
            f(json!({"title": "pending"})),
        ))
        .await
        .unwrap();
    }
    let synced = Schema::new().collection(CollectionSchema::new("drafts").text("title"));
    let Err(err) = SledStore::open(&path, synced) else {
        panic!("a synced collection declared local-only was accepted");
    };
    assert!(
        matches!(&err, StoreError::Schema { .. }) && err.to_string().contains("as before"),
        "{err}"
    );
    let local = Schema::new().collection(CollectionSchema::new("songs").text("title").local_only());
    assert!(matches!(
        SledStore::open(&path, local),
        Err(StoreError::Schema { .. })
    ));
    let s = SledStore::open(&path, schema()).unwrap();
    assert_eq!(
        s.pending_count().await.unwrap(),
        1,
        "the outbox entry is kept"
    );
}

/// Parked changes applied at open follow the rule of a pulled page
/// (`rules::decide`): one at the record's known version applies again, and a
/// record with an outbox entry keeps its local change. The known version and the
/// outbox entry are written into the sled trees directly: the API cannot write to
/// a collection the store does not declare.
#[tokio::test]
async fn parked_changes_follow_the_apply_rule_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let v1 = || Schema::new().collection(songs());
    let v2 = || v1().collection(CollectionSchema::new("albums").text("name"));
    let (at_known, newer) = (new_id(), new_id());
    {
        let s = SledStore::open(&path, v1()).unwrap();
        s.apply_remote(&page(
            vec![
                change("albums", &at_known, 3, Some(json!({"name": "again"}))),
                change("albums", &newer, 4, Some(json!({"name": "old"}))),
            ],
            4,
        ))
        .await
        .unwrap();
    }
    {
        let db = sled::open(&path).unwrap();
        let versions = db.open_tree("versions").unwrap();
        let k = |id: &RecordId| [b"albums\0".as_slice(), id.as_str().as_bytes()].concat();
        versions.insert(k(&at_known), &3u64.to_be_bytes()).unwrap();
        versions.insert(k(&newer), &5u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(&path, v2()).unwrap();
    assert_eq!(
        s.get("albums", &at_known).await.unwrap().map(|r| r.fields),
        Some(f(json!({"name": "again"}))),
        "a change at the known version applies again"
    );
    assert!(
        s.get("albums", &newer).await.unwrap().is_none(),
        "one older than the known version is stale"
    );
}
