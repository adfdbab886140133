//! A write on one device reaches another, subscribed device without a manual sync:
//! `SyncEngine::run_live` driven by realtime hints from a real PocketBase, with
//! SQLite and sled stores on the two devices.

use std::time::{Duration, Instant};

use pocketbase_remote::harness::TestServer;
use serde_json::json;
use sync_traits::{new_id, Fields, LocalStore, Record, RecordId, SyncEngine};
use tidemark_backends::{Schema, SledStore, SqliteStore};

fn song(title: &str, order: i64, owner: &RecordId) -> Fields {
    json!({"title": title, "artist": "x", "order": order, "owner": owner.as_str()})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_a_subscribed_device_without_a_manual_sync() {
    let srv = TestServer::start();
    let user = srv.create_user("live@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let laptop = SyncEngine::new(
        SqliteStore::open(dir.path().join("laptop.sqlite"), Schema::sample()).unwrap(),
        srv.user("live@t.io").await,
    );
    let phone_remote = srv.user("live@t.io").await;
    let hints = phone_remote.subscribe();
    let phone = SyncEngine::new(
        SledStore::open(dir.path().join("phone.sled"), Schema::sample()).unwrap(),
        phone_remote,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // A period far longer than the test: only a hint can make the phone pull in time.
    let live = phone.run_live(hints, Duration::from_secs(3600), async {
        let _ = stop_rx.await;
    });
    let writer = async {
        // Let the phone's first sync and the subscription settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut latencies = Vec::new();
        for i in 0..5 {
            let id = new_id();
            laptop
                .local()
                .put(Record::new("songs", id.clone(), song("live", i, &user)))
                .await
                .unwrap();
            let t = Instant::now();
            laptop.sync().await.unwrap();
            let deadline = t + Duration::from_secs(10);
            while phone.local().get("songs", &id).await.unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "write {i} did not reach the phone within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies.push(t.elapsed());
        }
        stop_tx.send(()).unwrap();
        latencies
    };
    let (res, latencies) = tokio::join!(live, writer);
    res.unwrap();
    eprintln!("write-to-other-device latency (push + hint + pull): {latencies:?}");
    assert_eq!(phone.local().list("songs").await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_records_a_rule_change_hid() {
    let srv = TestServer::start();
    let user = srv.create_user("rules@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let device = SyncEngine::new(
        SqliteStore::open(dir.path().join("device.sqlite"), Schema::sample()).unwrap(),
        srv.user("rules@t.io").await,
    );
    for i in 0..8 {
        device
            .local()
            .put(Record::new("songs", new_id(), song("s", i, &user)))
            .await
            .unwrap();
    }
    device.sync().await.unwrap();
    assert_eq!(device.local().list("songs").await.unwrap().len(), 8);

    // An admin narrows the list rule: songs with order >= 5 leave the user's view
    // without any write to them, so no tombstone exists.
    let token = srv.superuser().await.token().await.unwrap();
    let r = reqwest::Client::new()
        .patch(format!("{}/api/collections/songs", srv.url()))
        .header("Authorization", token)
        .json(
            &json!({"listRule": "@request.auth.id != '' && owner = @request.auth.id && order < 5"}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "rule change: {}", r.status());

    let report = device.sync().await.unwrap();
    assert!(!report.resynced);
    assert_eq!(
        device.local().list("songs").await.unwrap().len(),
        8,
        "a plain sync has nothing to pull"
    );
    let report = device.reconcile().await.unwrap();
    assert!(report.resynced, "the counts (8 local, 5 visible) differ");
    let left: Vec<i64> = device
        .local()
        .list("songs")
        .await
        .unwrap()
        .iter()
        .map(|r| r.fields["order"].as_i64().unwrap())
        .collect();
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(left.iter().all(|o| *o < 5), "{left:?}");
    assert!(
        !device.reconcile().await.unwrap().resynced,
        "nothing stale any more"
    );
}
