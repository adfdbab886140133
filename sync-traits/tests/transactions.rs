//! Multi-record transactions through the engine: a transaction's outbox entries go
//! in one push call when they fit in one, even where coalescing left them apart in
//! the outbox; one that cannot fit is pushed in order, whole batches first.

use std::sync::{Arc, Mutex};

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{
    async_trait, new_id, Fields, LocalStore, Page, PullMode, PushChange, PushOutcome, Record,
    RecordId, RemoteError, RemoteState, RemoteStore, ServerWins, SyncConfig, SyncEngine, Transact,
    Watermark,
};

/// Forwards to a `FakeRemote`, keeping the record ids of every push call.
#[derive(Clone)]
struct Recording {
    inner: FakeRemote,
    pushes: Arc<Mutex<Vec<Vec<RecordId>>>>,
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
}

fn song(title: &str) -> Fields {
    json!({"title": title}).as_object().cloned().unwrap()
}

fn engine(batch: usize) -> (SyncEngine<MemoryStore, Recording>, Recording) {
    let remote = Recording {
        inner: FakeRemote::new(),
        pushes: Arc::default(),
    };
    let config = SyncConfig {
        push_batch: batch,
        ..SyncConfig::default()
    };
    let e = SyncEngine::new(MemoryStore::new(), remote.clone())
        .with_policy(ServerWins)
        .with_config(config);
    (e, remote)
}

async fn put(s: &MemoryStore, id: &RecordId, title: &str) {
    s.put(Record::new("songs", id.clone(), song(title)))
        .await
        .unwrap();
}

/// Outbox A, B, C (plain), then a transaction {B, D, E}: B keeps its position 2,
/// D and E come at 4 and 5; then F, G. In batches of 4 the engine pushes [A], then
/// [B, C, D, E] (the whole transaction), then [F, G], where plain seq order would
/// have split the transaction over [A, B, C, D] and [E, F, G, ...].
#[tokio::test]
async fn a_transactions_entries_go_in_one_push_call() {
    let (e, remote) = engine(4);
    let ids: Vec<RecordId> = (0..7).map(|_| new_id()).collect();
    let [a, b, c, d, ee, f, g] = <[RecordId; 7]>::try_from(ids).unwrap();
    for (id, t) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        put(e.local(), id, t).await;
    }
    let report = e
        .local()
        .transaction()
        .put(Record::new("songs", b.clone(), song("b2")))
        .put(Record::new("songs", d.clone(), song("d")))
        .put(Record::new("songs", ee.clone(), song("e")))
        .commit()
        .await
        .unwrap();
    assert_eq!(report.mark.map(|m| m.last), Some(5));
    for (id, t) in [(&f, "f"), (&g, "g")] {
        put(e.local(), id, t).await;
    }
    let done = e.sync().await.unwrap();
    assert_eq!((done.pushed, done.remaining), (7, 0));
    let pushes = remote.pushes.lock().unwrap().clone();
    assert_eq!(
        pushes,
        vec![vec![a], vec![b, c, d, ee], vec![f, g]],
        "the transaction's entries went in one push call"
    );
    let on_server: Vec<_> = remote
        .inner
        .snapshot()
        .into_iter()
        .map(|r| r.fields)
        .collect();
    assert!(
        on_server.contains(&song("b2")),
        "the transaction's write landed"
    );
}

/// Two transactions interleaved in the outbox (X plain, then T1 = {A, C} and
/// T2 = {B, D}, A and B written before them): no cut inside [A, B, C, D] keeps both
/// whole, so the first call carries X alone and the next all four.
#[tokio::test]
async fn interleaved_transactions_share_one_push_call_when_they_fit() {
    let (e, remote) = engine(4);
    let ids: Vec<RecordId> = (0..5).map(|_| new_id()).collect();
    let [a, b, c, d, x] = <[RecordId; 5]>::try_from(ids).unwrap();
    put(e.local(), &x, "x").await;
    put(e.local(), &a, "a").await;
    put(e.local(), &b, "b").await;
    let t1 = e
        .local()
        .transaction()
        .put(Record::new("songs", a.clone(), song("a2")))
        .put(Record::new("songs", c.clone(), song("c")))
        .commit()
        .await
        .unwrap();
    let t2 = e
        .local()
        .transaction()
        .put(Record::new("songs", b.clone(), song("b2")))
        .put(Record::new("songs", d.clone(), song("d")))
        .commit()
        .await
        .unwrap();
    assert_ne!(t1.mark, t2.mark);
    e.sync().await.unwrap();
    let pushes = remote.pushes.lock().unwrap().clone();
    assert_eq!(
        pushes,
        vec![vec![x], vec![a, b, c, d]],
        "both transactions went in one call, after the plain entry before them"
    );
}

/// A transaction larger than a push batch cannot go in one: it is pushed in seq
/// order in full batches, and every change lands.
#[tokio::test]
async fn a_transaction_larger_than_a_batch_is_pushed_in_full_batches() {
    let (e, remote) = engine(2);
    let ids: Vec<RecordId> = (0..5).map(|_| new_id()).collect();
    let mut tx = e.local().transaction();
    for (i, id) in ids.iter().enumerate() {
        tx = tx.put(Record::new("songs", id.clone(), song(&format!("s{i}"))));
    }
    tx.commit().await.unwrap();
    let done = e.sync().await.unwrap();
    assert_eq!(done.pushed, 5);
    let pushes = remote.pushes.lock().unwrap().clone();
    assert_eq!(
        pushes,
        vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..].to_vec()]
    );
    assert_eq!(remote.inner.snapshot().len(), 5);
}
