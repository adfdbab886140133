//! Multi-record transactions against a real PostgreSQL: a transaction that fits in
//! one push batch is one `tidemark.push` call, one server transaction, so its
//! writes get consecutive seqs even with another client writing meanwhile; a change
//! of it the server refuses (a CHECK constraint) is rejected alone and the rest
//! commits.

use sync_traits::SyncStore;
mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    new_id, LocalStore, Record, RecordId, RemoteStore, ServerWins, SyncEngine, Transact,
};

#[tokio::test]
async fn a_transaction_commits_as_one_server_transaction() {
    let (_s, r) = server().await;
    let d1 = SyncEngine::new(MemoryStore::new(), r.clone()).with_policy(ServerWins);
    let d2 = Arc::new(SyncEngine::new(MemoryStore::new(), r.clone()).with_policy(ServerWins));
    let n = r.max_push_batch().min(200);
    let ids: Vec<RecordId> = (0..n).map(|_| new_id()).collect();
    let mut tx = d1.local().transaction();
    for (i, id) in ids.iter().enumerate() {
        tx = tx.put(Record::new(
            "notes",
            id.clone(),
            f(json!({"body": format!("t{i}")})),
        ));
    }
    tx.commit().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (d2, stop) = (d2.clone(), stop.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 200 {
                d2.local()
                    .put(Record::new("notes", new_id(), f(json!({"body": "other"}))))
                    .await
                    .unwrap();
                d2.sync().await.unwrap();
                k += 1;
            }
            k
        })
    };
    while d2.local().list("notes").await.unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let report = d1.sync().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let others = other.await.unwrap();
    assert_eq!(report.pushed, n);
    let mut versions = Vec::new();
    for id in &ids {
        versions.push(r.fetch("notes", id).await.unwrap().unwrap().version.0);
    }
    let first = versions[0];
    assert_eq!(
        versions,
        (first..first + n as u64).collect::<Vec<_>>(),
        "consecutive seqs: one server transaction ({others} writes of another client meanwhile)"
    );
}

#[tokio::test]
async fn a_refused_change_of_a_transaction_is_rejected_alone() {
    let (_s, r) = server().await;
    let d1 = SyncEngine::new(MemoryStore::new(), r.clone()).with_policy(ServerWins);
    let (a, bad, c) = (new_id(), new_id(), new_id());
    d1.local()
        .transaction()
        .put(Record::new(
            "songs",
            a.clone(),
            f(json!({"title": "a", "n": 1})),
        ))
        .put(Record::new(
            "songs",
            bad.clone(),
            f(json!({"title": "bad", "n": -1})),
        ))
        .put(Record::new(
            "songs",
            c.clone(),
            f(json!({"title": "c", "n": 3})),
        ))
        .commit()
        .await
        .unwrap();
    let report = d1.sync().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (2, 1), "{report:?}");
    assert!(r.fetch("songs", &a).await.unwrap().is_some());
    assert!(r.fetch("songs", &c).await.unwrap().is_some());
    assert!(r.fetch("songs", &bad).await.unwrap().is_none());
    let q = d1.local().quarantined().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].change.id, bad);
}
