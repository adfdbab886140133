//! The sled store under the sync engine, against the in-memory server: a backup
//! restored after the original went on syncing, a collection the app declares
//! after the server had it, and a local-only collection.
#![cfg(feature = "sled")]

use std::path::Path;
use sync_traits::SyncStore;

use serde_json::{json, Value};
use sync_traits::testkit::FakeRemote;
use sync_traits::{new_id, Fields, LocalStore, Record, ServerWins, SyncEngine};
use tidemark_backends::{CollectionSchema, Schema, SledStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
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

fn engine(path: &Path, schema: Schema, server: &FakeRemote) -> SyncEngine<SledStore, FakeRemote> {
    SyncEngine::new(SledStore::open(path, schema).unwrap(), server.clone()).with_policy(ServerWins)
}

/// A backup restored after the original pushed more writes: the restored store's
/// next write gets the same counter as the original's, but never the same change
/// id, so the server does not take it for the original's (already applied) push;
/// the engine meets the original's write as a foreign conflict, decides it by the
/// policy and logs it.
#[tokio::test]
async fn a_restored_backup_meets_the_originals_later_writes_as_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (device, backup) = (dir.path().join("device"), dir.path().join("backup"));
    let server = FakeRemote::new();
    let r = new_id();
    {
        let e = engine(&device, Schema::conformance(), &server);
        e.local()
            .put(Record::new("songs", r.clone(), f(json!({"title": "v1"}))))
            .await
            .unwrap();
        assert_eq!(e.sync().await.unwrap().pushed, 1);
    }
    copy_dir(&device, &backup);
    let original = {
        let e = engine(&device, Schema::conformance(), &server);
        e.local()
            .put(Record::new(
                "songs",
                r.clone(),
                f(json!({"title": "original"})),
            ))
            .await
            .unwrap();
        let change = e.local().pending(0, 10).await.unwrap()[0].change_id.clone();
        assert_eq!(e.sync().await.unwrap().pushed, 1);
        change
    };
    let e = engine(&backup, Schema::conformance(), &server);
    e.local()
        .put(Record::new(
            "songs",
            r.clone(),
            f(json!({"title": "restored"})),
        ))
        .await
        .unwrap();
    let mine = e.local().pending(0, 10).await.unwrap()[0].change_id.clone();
    assert_eq!(mine.n, original.n, "the backup's counter went back ...");
    assert_ne!(mine, original, "... but its change id is its own");
    assert!(!e.local().made_here(&original).await.unwrap());
    let report = e.sync().await.unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    let log = e.local().conflicts().await.unwrap();
    assert_eq!(log.len(), 1, "the conflict is logged in the store");
    assert_eq!(log[0].conflict.local.change_id, mine);
    assert_eq!(log[0].conflict.server.change_id.as_ref(), Some(&original));
    let local = e.local().get("songs", &r).await.unwrap().unwrap();
    assert_eq!(local.fields["title"], json!("original"), "server wins");
    assert_eq!(
        server.snapshot(),
        vec![local],
        "the device and the server agree"
    );
}

/// Records of a collection the app's schema did not declare yet are skipped by
/// the sync (the watermark moves past them) and arrive, without a resync, when
/// the app opens the store with a schema that declares the collection.
#[tokio::test]
async fn a_collection_declared_later_arrives_without_a_resync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let server = FakeRemote::new();
    let album = new_id();
    server.server_write("albums", &album, Some(f(json!({"name": "first"}))));
    server.server_write("songs", &new_id(), Some(f(json!({"title": "s"}))));
    {
        let e = engine(&path, Schema::conformance(), &server);
        let report = e.sync().await.unwrap();
        assert_eq!((report.pulled, report.skipped), (2, 1), "{report:?}");
    }
    let with_albums =
        Schema::conformance().collection(CollectionSchema::new("albums").text("name"));
    let e = engine(&path, with_albums, &server);
    assert_eq!(
        e.local().list("albums").await.unwrap(),
        vec![Record::new(
            "albums",
            album.clone(),
            f(json!({"name": "first"}))
        )]
    );
    let report = e.sync().await.unwrap();
    assert!(!report.resynced);
    assert_eq!(
        report.pulled, 0,
        "nothing was behind the watermark: {report:?}"
    );
}

/// A local-only collection is never pushed, and the server's collection of the
/// same name never reaches it.
#[tokio::test]
async fn a_local_only_collection_never_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeRemote::new();
    let schema =
        Schema::conformance().collection(CollectionSchema::new("notes").text("body").local_only());
    let e = engine(&dir.path().join("db"), schema, &server);
    let note = new_id();
    e.local()
        .put(Record::new(
            "notes",
            note.clone(),
            f(json!({"body": "mine"})),
        ))
        .await
        .unwrap();
    server.server_write("notes", &note, Some(f(json!({"body": "server's"}))));
    server.server_write("notes", &new_id(), Some(f(json!({"body": "other"}))));
    let report = e.sync().await.unwrap();
    assert_eq!((report.pushed, report.skipped), (0, 2), "{report:?}");
    assert_eq!(
        e.local().list("notes").await.unwrap(),
        vec![Record::new("notes", note, f(json!({"body": "mine"})))]
    );
    assert!(server
        .snapshot()
        .iter()
        .all(|r| r.fields["body"] != json!("mine")));
}
