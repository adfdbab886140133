//! Multi-record transactions against a real PocketBase: what the server makes of
//! a transaction's changes, as `sync_traits::Transact` documents it.
//!
//! - A transaction whose changes all apply is one push call, one `/api/batch`
//!   request, one database transaction: its writes get consecutive seqs even with
//!   another device writing at the same moment (no other write lands between
//!   them), and that device's pulls meanwhile see all of them or none.
//! - A change of the transaction that conflicts does not stop the others: each
//!   change gets its own outcome (the batch is refused, and sent again without it).

use sync_traits::SyncStore;
mod common;

use std::sync::{Arc, Mutex};

use common::song;
use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    async_trait, new_id, LocalStore, Page, PullMode, PushChange, PushOutcome, Record, RecordId,
    RemoteError, RemoteState, RemoteStore, ServerWins, SyncEngine, Transact, Version, Watermark,
};

/// Forwards to PocketBase, keeping the record ids of every push call.
#[derive(Clone)]
struct Recording {
    inner: Arc<PocketBaseRemote>,
    pushes: Arc<Mutex<Vec<Vec<RecordId>>>>,
}

impl Recording {
    fn new(inner: PocketBaseRemote) -> Self {
        Self {
            inner: Arc::new(inner),
            pushes: Arc::default(),
        }
    }
}

#[async_trait]
impl RemoteStore for Recording {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        self.inner.pull(since, limit, mode).await
    }
    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        self.pushes
            .lock()
            .unwrap()
            .push(changes.iter().map(|c| c.id.clone()).collect());
        self.inner.push(changes).await
    }
    async fn fetch(&self, c: &str, id: &RecordId) -> Result<Option<RemoteState>, RemoteError> {
        self.inner.fetch(c, id).await
    }
    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        self.inner.horizon().await
    }
    async fn collections(&self) -> Result<Option<std::collections::BTreeSet<String>>, RemoteError> {
        self.inner.collections().await
    }
    fn max_push_batch(&self) -> usize {
        self.inner.max_push_batch()
    }
}

async fn version_of(r: &PocketBaseRemote, id: &RecordId) -> Version {
    r.fetch("songs", id)
        .await
        .unwrap()
        .expect("the record is on the server")
        .version
}

#[tokio::test]
async fn a_transaction_commits_on_pocketbase_as_one_batch_with_consecutive_seqs() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let remote = Recording::new(srv.user("a@t.io").await);
    let d1 = SyncEngine::new(MemoryStore::new(), remote.clone()).with_policy(ServerWins);
    // Another device writing one record at a time, all through d1's push.
    let d2 = Arc::new(
        SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await).with_policy(ServerWins),
    );
    // As large as one push batch allows (the server's batch limit), up to 150.
    let n = remote.max_push_batch().min(150);
    let ids: Vec<RecordId> = (0..n).map(|_| new_id()).collect();
    let mut tx = d1.local().transaction();
    for (i, id) in ids.iter().enumerate() {
        tx = tx.put(Record::new(
            "songs",
            id.clone(),
            song(&format!("t{i}"), i as i64, &a),
        ));
    }
    tx.commit().await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (d2, stop, a, ids) = (d2.clone(), stop.clone(), a.clone(), ids.clone());
        tokio::spawn(async move {
            let mut n = 0;
            // How many of the transaction's records each of its syncs pulled.
            let mut seen = Vec::new();
            // Bounded: it stops when d1's push is done, or after 200 writes.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                let id = new_id();
                d2.local()
                    .put(Record::new("songs", id, song("other", n, &a)))
                    .await
                    .unwrap();
                d2.sync().await.unwrap();
                let mut held = 0;
                for id in &ids {
                    held += usize::from(d2.local().get("songs", id).await.unwrap().is_some());
                }
                seen.push(held);
                n += 1;
            }
            (n, seen)
        })
    };
    // d1 pushes once the other device is writing.
    while d2.local().pending_count().await.unwrap() == 0
        && d2.local().list("songs").await.unwrap().is_empty()
    {
        tokio::task::yield_now().await;
    }
    let report = d1.sync().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let others = other.await.unwrap();
    assert_eq!(report.pushed, n);
    let pushes = remote.pushes.lock().unwrap().clone();
    assert!(
        pushes.len() == 1 && pushes[0] == ids,
        "the transaction went in one push call, not {} of {:?} changes",
        pushes.len(),
        pushes.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut versions = Vec::new();
    for id in &ids {
        versions.push(version_of(&remote.inner, id).await.0);
    }
    let first = versions[0];
    assert_eq!(
        versions,
        (first..first + n as u64).collect::<Vec<_>>(),
        "the transaction's writes have consecutive seqs, in order: one server \
         transaction, no other write between them ({} writes of another device ran meanwhile)",
        others.0
    );
    let seen = others.1;
    assert!(
        seen.iter().all(|&k| k == 0 || k == n),
        "a pull saw part of the transaction: {seen:?}"
    );
    eprintln!(
        "another device wrote {} records meanwhile; its pulls saw {:?} of the transaction's {n}",
        others.0, seen
    );
}

#[tokio::test]
async fn a_conflicting_change_does_not_stop_the_rest_of_its_transaction() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let remote = Recording::new(srv.user("a@t.io").await);
    let d1 = SyncEngine::new(MemoryStore::new(), remote.clone()).with_policy(ServerWins);
    let d2 = SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await).with_policy(ServerWins);
    let x = new_id();
    d1.local()
        .put(Record::new("songs", x.clone(), song("x", 1, &a)))
        .await
        .unwrap();
    d1.sync().await.unwrap();
    d2.sync().await.unwrap();
    // d2 changes x on the server; d1, not knowing, changes it in a transaction.
    d2.local()
        .put(Record::new("songs", x.clone(), song("x by d2", 2, &a)))
        .await
        .unwrap();
    d2.sync().await.unwrap();
    let (y, z) = (new_id(), new_id());
    remote.pushes.lock().unwrap().clear();
    d1.local()
        .transaction()
        .put(Record::new("songs", y.clone(), song("y", 3, &a)))
        .put(Record::new("songs", x.clone(), song("x by d1", 4, &a)))
        .put(Record::new("songs", z.clone(), song("z", 5, &a)))
        .commit()
        .await
        .unwrap();
    let report = d1.sync().await.unwrap();
    assert_eq!(
        (report.pushed, report.conflicts),
        (2, 1),
        "y and z applied, x met d2's write: {report:?}"
    );
    assert_eq!(
        remote.pushes.lock().unwrap().len(),
        1,
        "the transaction went in one push call"
    );
    let x_now = remote.inner.fetch("songs", &x).await.unwrap().unwrap();
    assert_eq!(x_now.fields.unwrap()["title"], "x by d2", "server wins");
    let (vy, vz) = (
        version_of(&remote.inner, &y).await,
        version_of(&remote.inner, &z).await,
    );
    assert_eq!(
        vz.0,
        vy.0 + 1,
        "the rest of the transaction, sent again without x, is one batch"
    );
    assert_eq!(d1.local().pending_count().await.unwrap(), 0);
    d2.sync().await.unwrap();
    assert!(d2.local().get("songs", &y).await.unwrap().is_some());
    assert!(d2.local().get("songs", &z).await.unwrap().is_some());
}
