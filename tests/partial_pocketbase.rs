//! Partial sync against a real PocketBase: filters sent through its list API for
//! the caller (so the collection's rules still apply and one user's filter never
//! shows another user's records), a written record leaving the filter by a
//! removal in the pull, a filter change resyncing one collection with its outbox
//! kept, and a record leaving a relation-based filter without any write to it,
//! removed by the filter reconcile.

use pocketbase_remote::harness::TestServer;
use serde_json::json;
use sync_traits::testkit::{Fault, Faulty};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, Filter, LocalStore, Record, RecordId, RemoteStore, RetryPolicy, SyncConfig,
    SyncEngine, SyncScope,
};
use tidemark_backends::{Schema, SqliteStore};

fn song(artist: &str, order: i64, owner: &RecordId) -> Fields {
    json!({"title": "s", "artist": artist, "order": order, "owner": owner.as_str()})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn songs_filter(expr: &str) -> SyncScope {
    SyncScope::all().filter("songs", Filter::new(expr).unwrap())
}

async fn artists<L: LocalStore>(s: &L) -> Vec<(String, String)> {
    let mut v: Vec<_> = s
        .list("songs")
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.fields["artist"].as_str().unwrap_or("").to_owned(),
                r.fields["owner"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_go_through_the_rules_and_records_leave_by_removal_resync_and_reconcile() {
    let srv = TestServer::start();
    let ann = srv.create_user("ann@t.io").await;
    let bob = srv.create_user("bob@t.io").await;
    let dir = tempfile::tempdir().unwrap();

    // Ann's first device writes 10 songs (3 jazz) and 2 friends; Bob 5 jazz songs.
    let ann1 = SyncEngine::new(
        SqliteStore::open(dir.path().join("ann1.sqlite"), Schema::sample()).unwrap(),
        srv.user("ann@t.io").await,
    );
    let mut ann_songs = Vec::new();
    for i in 0..10 {
        let id = new_id();
        let artist = if i < 3 { "jazz" } else { "rock" };
        ann1.local()
            .put(Record::new("songs", id.clone(), song(artist, i, &ann)))
            .await
            .unwrap();
        ann_songs.push(id);
    }
    for name in ["f1", "f2"] {
        let f = json!({"name": name, "owner": ann.as_str()});
        ann1.local()
            .put(Record::new(
                "friends",
                new_id(),
                f.as_object().cloned().unwrap(),
            ))
            .await
            .unwrap();
    }
    ann1.sync().await.unwrap();
    let bob1 = SyncEngine::new(
        SqliteStore::open(dir.path().join("bob1.sqlite"), Schema::sample()).unwrap(),
        srv.user("bob@t.io").await,
    );
    for i in 0..5 {
        bob1.local()
            .put(Record::new("songs", new_id(), song("jazz", i, &bob)))
            .await
            .unwrap();
    }
    bob1.sync().await.unwrap();

    // Ann's second device syncs jazz songs, or Bob's: the rules keep Bob's out.
    let path2 = dir.path().join("ann2.sqlite");
    let f1 = format!("artist = 'jazz' || owner = '{bob}'");
    let ann2 = SyncEngine::new(
        SqliteStore::open(&path2, Schema::sample()).unwrap(),
        srv.user("ann@t.io").await,
    )
    .with_scope(songs_filter(&f1));
    let r = ann2.sync().await.unwrap();
    assert_eq!(
        r.pulled,
        3 + 2,
        "Ann's 3 jazz songs and her 2 friends: {r:?}"
    );
    let owner = ann.as_str().to_owned();
    assert_eq!(
        artists(ann2.local()).await,
        vec![("jazz".into(), owner.clone()); 3]
    );
    assert_eq!(ann2.local().count("friends").await.unwrap(), 2);
    // The ids the reconcile lists are under the rules too.
    let as_ann = srv.user("ann@t.io").await;
    let bobs = Filter::new(format!("owner = '{bob}'")).unwrap();
    assert!(as_ann.matching("songs", &bobs).await.unwrap().is_empty());
    let as_bob = srv.user("bob@t.io").await;
    assert_eq!(as_bob.matching("songs", &bobs).await.unwrap().len(), 5);
    let jazz = Filter::new("artist = 'jazz'").unwrap();
    assert_eq!(as_ann.matching("songs", &jazz).await.unwrap().len(), 3);

    // A written record that stops matching leaves by a removal in the pull.
    let mut f = ann1
        .local()
        .get("songs", &ann_songs[0])
        .await
        .unwrap()
        .unwrap()
        .fields;
    f.insert("artist".into(), json!("rock"));
    ann1.local()
        .put(Record::new("songs", ann_songs[0].clone(), f))
        .await
        .unwrap();
    ann1.sync().await.unwrap();
    let r = ann2.sync().await.unwrap();
    assert_eq!((r.pulled, r.resynced), (1, false), "{r:?}");
    assert!(ann2
        .local()
        .get("songs", &ann_songs[0])
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ann2.local().pending_count().await.unwrap(),
        0,
        "not a delete"
    );
    assert_eq!(ann2.local().count("songs").await.unwrap(), 2);
    drop(ann2);

    // The filter changes to rock while a local write waits in the outbox (the
    // push fails this time): songs resync alone, the friends are not pulled again.
    let store2 = std::sync::Arc::new(SqliteStore::open(&path2, Schema::sample()).unwrap());
    let pop = new_id();
    store2
        .put(Record::new("songs", pop.clone(), song("pop", 99, &ann)))
        .await
        .unwrap();
    let faulty = Faulty::new(srv.user("ann@t.io").await);
    let rock = "artist = 'rock'";
    let ann2 = SyncEngine::new(store2.clone(), faulty.clone())
        .with_scope(songs_filter(rock))
        .with_config(SyncConfig {
            retry: RetryPolicy::immediate(0),
            ..SyncConfig::default()
        });
    faulty.on_push(Fault::MalformedBefore);
    let err = ann2.sync().await.unwrap_err();
    let done = err.done().expect("what the sync did");
    assert_eq!(done.resynced_collections, ["songs".to_string()].into());
    assert!(!done.resynced);
    assert_eq!(done.pulled, 8, "Ann's 8 rock songs, nothing else: {done:?}");
    assert_eq!(
        ann2.local().pending_count().await.unwrap(),
        1,
        "the outbox is kept"
    );
    assert!(ann2.local().get("songs", &pop).await.unwrap().is_some());
    assert_eq!(ann2.local().count("friends").await.unwrap(), 2);
    let r = ann2.sync().await.unwrap();
    assert_eq!((r.pushed, r.remaining), (1, 0), "{r:?}");
    assert!(
        ann2.local().get("songs", &pop).await.unwrap().is_none(),
        "pop is not rock"
    );
    assert_eq!(
        artists(ann2.local()).await,
        vec![("rock".into(), owner.clone()); 8]
    );

    // A filter through a relation: Ann's songs whose owner is named Ann. Her name
    // changes and no song is written: the pull sees nothing, the reconcile does.
    let token = as_ann.token().await.unwrap();
    let rename = |name: &'static str| {
        let (url, token, ann) = (srv.url().to_owned(), token.clone(), ann.clone());
        async move {
            let r = reqwest::Client::new()
                .patch(format!("{url}/api/collections/users/records/{ann}"))
                .header("Authorization", token)
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "rename: {}", r.status());
        }
    };
    rename("Ann").await;
    let by_name = "artist = 'rock' && owner.name = 'Ann'";
    drop(ann2);
    let ann2 =
        SyncEngine::new(store2, srv.user("ann@t.io").await).with_scope(songs_filter(by_name));
    let r = ann2.sync().await.unwrap();
    assert_eq!(r.resynced_collections, ["songs".to_string()].into());
    assert_eq!(ann2.local().count("songs").await.unwrap(), 8);
    rename("Annie").await;
    let r = ann2.sync().await.unwrap();
    assert_eq!(r.pulled, 0, "no song was written");
    assert_eq!(ann2.local().count("songs").await.unwrap(), 8);
    let r = ann2.reconcile_filters().await.unwrap();
    assert_eq!(
        r.resynced_collections,
        ["songs".to_string()].into(),
        "{r:?}"
    );
    assert_eq!(
        ann2.local().count("songs").await.unwrap(),
        0,
        "none matches now"
    );
    assert_eq!(
        ann2.local().count("friends").await.unwrap(),
        2,
        "friends untouched"
    );
    rename("Ann").await;
    let r = ann2.reconcile_filters().await.unwrap();
    assert_eq!(r.resynced_collections, ["songs".to_string()].into());
    assert_eq!(
        ann2.local().count("songs").await.unwrap(),
        8,
        "back, at the same versions"
    );
    let r = ann2.reconcile_filters().await.unwrap();
    assert!(r.resynced_collections.is_empty(), "nothing drifted");
}
