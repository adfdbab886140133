//! End to end: two devices (in-memory local stores) of one user converge through
//! `SyncEngine` and a real PocketBase.

use sync_traits::SyncStore;
mod common;

use common::song;
use pocketbase_remote::harness::TestServer;
use sync_traits::testkit::MemoryStore;
use sync_traits::{new_id, LocalStore, PullMode, Record, RemoteStore, SyncEngine, Watermark};

async fn local_snapshot(s: &MemoryStore) -> Vec<Record> {
    let mut out = Vec::new();
    for c in ["songs", "friends"] {
        out.extend(s.list(c).await.unwrap());
    }
    out.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
    out
}

#[tokio::test]
async fn two_devices_converge_through_pocketbase() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let d1 = SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await);
    let d2 = SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await);

    let (s1, s2) = (new_id(), new_id());
    d1.local()
        .put(Record::new("songs", s1.clone(), song("one", 1, &a)))
        .await
        .unwrap();
    d1.local()
        .put(Record::new("songs", s2.clone(), song("two", 2, &a)))
        .await
        .unwrap();
    let r = d1.sync().await.unwrap();
    assert_eq!(r.pushed, 2);
    d2.sync().await.unwrap();
    assert_eq!(local_snapshot(d2.local()).await.len(), 2);

    // Offline edits on both devices: non-overlapping fields of s1, a delete, a create.
    let mut f = d1.local().get("songs", &s1).await.unwrap().unwrap().fields;
    f.insert("title".into(), "one (d1)".into());
    d1.local()
        .put(Record::new("songs", s1.clone(), f))
        .await
        .unwrap();
    let s3 = new_id();
    d1.local()
        .put(Record::new("songs", s3.clone(), song("three", 3, &a)))
        .await
        .unwrap();

    let mut f = d2.local().get("songs", &s1).await.unwrap().unwrap().fields;
    f.insert("order".into(), 10.into());
    d2.local()
        .put(Record::new("songs", s1.clone(), f))
        .await
        .unwrap();
    d2.local().delete("songs", &s2).await.unwrap();

    d1.sync().await.unwrap();
    let r2 = d2.sync().await.unwrap();
    assert_eq!(r2.conflicts, 1, "{r2:?}");
    d1.sync().await.unwrap();
    let r = d2.sync().await.unwrap();
    assert_eq!(r.remaining, 0);

    let (l1, l2) = (
        local_snapshot(d1.local()).await,
        local_snapshot(d2.local()).await,
    );
    assert_eq!(l1, l2);
    assert_eq!(l1.len(), 2);
    let one = l1.iter().find(|r| r.id == s1).unwrap();
    assert_eq!(one.fields["title"], "one (d1)");
    assert_eq!(one.fields["order"], 10);

    // And both equal the server as the user sees it.
    let p = d1
        .remote()
        .pull(Watermark(0), 1000, PullMode::Resync)
        .await
        .unwrap();
    let mut server: Vec<Record> = p
        .changes
        .into_iter()
        .filter_map(|c| c.state.fields.map(|f| Record::new(c.collection, c.id, f)))
        .collect();
    server.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
    assert_eq!(server, l1);
    assert_eq!(d1.local().pending_count().await.unwrap(), 0);
    assert_eq!(d2.local().pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn lost_duplicated_and_crashed_pushes_converge_without_duplicates() {
    use sync_traits::testkit::{Fault, Faulty};
    use sync_traits::{RetryPolicy, SyncConfig};

    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let config = SyncConfig {
        retry: RetryPolicy::immediate(3),
        push_batch: 7,
        ..SyncConfig::default()
    };
    let remote = Faulty::new(srv.user("a@t.io").await);
    let d1 = SyncEngine::new(MemoryStore::new(), remote.clone()).with_config(config.clone());
    let d2 = SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await).with_config(config);

    let ids: Vec<_> = (0..20).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        d1.local()
            .put(Record::new(
                "songs",
                id.clone(),
                song(&format!("s{i}"), i as i64, &a),
            ))
            .await
            .unwrap();
    }
    remote.on_push(Fault::LoseResponse);
    remote.on_push(Fault::Duplicate);
    remote.on_push(Fault::CrashAfter);
    // The crash (a permanent error after the server applied the chunk) may end this
    // sync, or the engine re-sends the chunk in smaller pieces (it bisects a refused
    // push) and the server answers them as already applied; either way the
    // "restarted" client syncs again and nothing is duplicated.
    let _ = d1.sync().await;
    d1.sync().await.unwrap();
    assert_eq!(d1.local().pending_count().await.unwrap(), 0);

    // Edits and deletes through the same faults.
    for id in &ids[..5] {
        d1.local().delete("songs", id).await.unwrap();
    }
    remote.on_push(Fault::LoseResponse);
    remote.on_push(Fault::Duplicate);
    d1.sync().await.unwrap();
    d2.sync().await.unwrap();

    let head = d1.remote().inner().head().await.unwrap().head;
    assert_eq!(
        head,
        Watermark(25),
        "20 creates + 5 deletes, each applied once"
    );
    assert_eq!(
        local_snapshot(d1.local()).await,
        local_snapshot(d2.local()).await
    );
    assert_eq!(local_snapshot(d2.local()).await.len(), 15);
}
