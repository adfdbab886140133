//! Readable end-to-end scenarios of the engine over MemoryStore and FakeRemote.
//! The property test covers interleavings; these pin down named behaviours.

use std::sync::Arc;

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{
    new_id, ClientWins, FieldMerge, Fields, LocalStore, Record, ServerWins, SyncEngine, SyncEvent,
};

fn f(v: serde_json::Value) -> Fields {
    v.as_object().cloned().unwrap()
}

type Engine = SyncEngine<Arc<MemoryStore>, FakeRemote>;

fn client(remote: &FakeRemote) -> (Arc<MemoryStore>, Engine) {
    let store = Arc::new(MemoryStore::new());
    (store.clone(), SyncEngine::new(store, remote.clone()))
}

#[tokio::test]
async fn offline_edits_on_two_clients_converge() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let (b, eb) = client(&server);
    let x = new_id();
    let y = new_id();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "from a"})),
    ))
    .await
    .unwrap();
    b.put(Record::new(
        "songs",
        y.clone(),
        f(json!({"title": "from b"})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    ea.sync().await.unwrap();
    assert_eq!(a.all_records(), b.all_records());
    assert_eq!(a.all_records(), server.snapshot());
    assert_eq!(server.snapshot().len(), 2);
    // Delete propagates.
    b.delete("songs", &x).await.unwrap();
    eb.sync().await.unwrap();
    ea.sync().await.unwrap();
    assert!(a.get("songs", &x).await.unwrap().is_none());
}

#[tokio::test]
async fn field_merge_keeps_edits_to_different_fields() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let (b, eb) = client(&server);
    let eb = eb.with_policy(FieldMerge);
    let x = new_id();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "t", "order": 1})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "T", "order": 1})),
    ))
    .await
    .unwrap();
    b.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "t", "order": 2})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    let mut events = eb.subscribe();
    let r = eb.sync().await.unwrap();
    assert_eq!(r.conflicts, 1);
    assert!(matches!(
        events.try_recv().unwrap(),
        SyncEvent::Conflict { .. }
    ));
    ea.sync().await.unwrap();
    let want = f(json!({"title": "T", "order": 2}));
    assert_eq!(a.get("songs", &x).await.unwrap().unwrap().fields, want);
    assert_eq!(b.get("songs", &x).await.unwrap().unwrap().fields, want);
}

#[tokio::test]
async fn delete_versus_edit_is_decided_by_policy_and_reported() {
    for (server_wins, expect_alive) in [(true, true), (false, false)] {
        let server = FakeRemote::new();
        let (a, ea) = client(&server);
        let (b, eb) = client(&server);
        let eb = if server_wins {
            eb.with_policy(ServerWins)
        } else {
            eb.with_policy(ClientWins)
        };
        let x = new_id();
        a.put(Record::new("songs", x.clone(), f(json!({"title": "t"}))))
            .await
            .unwrap();
        ea.sync().await.unwrap();
        eb.sync().await.unwrap();
        a.put(Record::new(
            "songs",
            x.clone(),
            f(json!({"title": "edited"})),
        ))
        .await
        .unwrap();
        b.delete("songs", &x).await.unwrap();
        ea.sync().await.unwrap();
        let r = eb.sync().await.unwrap();
        assert_eq!(r.conflicts, 1, "delete-vs-edit is surfaced");
        ea.sync().await.unwrap();
        assert_eq!(a.get("songs", &x).await.unwrap().is_some(), expect_alive);
        assert_eq!(b.get("songs", &x).await.unwrap().is_some(), expect_alive);
    }
}

#[tokio::test]
async fn create_then_edit_offline_both_land() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let x = new_id();
    a.put(Record::new("songs", x.clone(), f(json!({"title": "v1"}))))
        .await
        .unwrap();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "v2", "order": 3})),
    ))
    .await
    .unwrap();
    let r = ea.sync().await.unwrap();
    assert_eq!(r.pushed, 1, "coalesced into one push");
    assert_eq!(
        server.snapshot()[0].fields,
        f(json!({"title": "v2", "order": 3}))
    );
}

#[tokio::test]
async fn users_see_only_their_records_and_lose_records_given_away() {
    let server = FakeRemote::new();
    let alice_remote = server.as_user("alice");
    let bob_remote = server.as_user("bob");
    let (alice, ea) = client(&alice_remote);
    let (bob, eb) = client(&bob_remote);
    let x = new_id();
    alice
        .put(Record::new(
            "songs",
            x.clone(),
            f(json!({"title": "secret", "owner": "alice"})),
        ))
        .await
        .unwrap();
    bob.put(Record::new(
        "songs",
        new_id(),
        f(json!({"title": "bob's", "owner": "bob"})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    ea.sync().await.unwrap();
    assert_eq!(alice.all_records().len(), 1, "alice sees only hers");
    assert_eq!(bob.all_records().len(), 1, "bob sees only his");
    assert!(bob.get("songs", &x).await.unwrap().is_none());
    // Alice gives the record to bob: it leaves her store and reaches his.
    alice
        .put(Record::new(
            "songs",
            x.clone(),
            f(json!({"title": "secret", "owner": "bob"})),
        ))
        .await
        .unwrap();
    let r = ea.sync().await.unwrap();
    assert_eq!(
        r.rejected, 1,
        "a user may not give a record away in the fake's rules"
    );
    // An admin reassigns it instead.
    server.server_write(
        "songs",
        &x,
        Some(f(json!({"title": "secret", "owner": "bob"}))),
    );
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    assert!(
        alice.get("songs", &x).await.unwrap().is_none(),
        "owner change removes it from the old owner"
    );
    assert!(bob.get("songs", &x).await.unwrap().is_some());
}

#[tokio::test]
async fn client_past_the_horizon_resyncs_and_keeps_its_outbox() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let (b, eb) = client(&server);
    let gone = new_id();
    a.put(Record::new(
        "songs",
        gone.clone(),
        f(json!({"title": "doomed"})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    // b goes offline and writes; meanwhile a deletes, and the server compacts.
    let mine = new_id();
    b.put(Record::new(
        "songs",
        mine.clone(),
        f(json!({"title": "offline write"})),
    ))
    .await
    .unwrap();
    a.delete("songs", &gone).await.unwrap();
    ea.sync().await.unwrap();
    server.compact();
    let mut events = eb.subscribe();
    let r = eb.sync().await.unwrap();
    assert!(r.resynced);
    let evs: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        evs.contains(&SyncEvent::ResyncFinished { removed: 1 }),
        "{evs:?}"
    );
    assert!(
        b.get("songs", &gone).await.unwrap().is_none(),
        "the compacted delete still reached b"
    );
    assert!(
        server.snapshot().iter().any(|r| r.id == mine),
        "the outbox landed"
    );
    ea.sync().await.unwrap();
    assert_eq!(a.all_records(), b.all_records());
}

#[tokio::test]
async fn a_sync_with_nothing_to_do_is_one_round_trip() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    a.put(Record::new("songs", new_id(), f(json!({"title": "x"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    let before = server.round_trips();
    let r = ea.sync().await.unwrap();
    let after = server.round_trips();
    assert_eq!(
        (after.0 - before.0) + (after.1 - before.1),
        1,
        "one pull, no push"
    );
    assert_eq!((r.pushed, r.pulled), (0, 0));
}

#[tokio::test]
async fn ten_thousand_records_page_correctly() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    for i in 0..10_000 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    let r = ea.sync().await.unwrap();
    assert_eq!(r.pushed, 10_000);
    let (b, eb) = client(&server);
    let mut events = eb.subscribe();
    let r = eb.sync().await.unwrap();
    assert_eq!(r.pulled, 10_000);
    assert_eq!(b.all_records(), server.snapshot());
    let pages = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, SyncEvent::PullProgress { .. }))
        .count();
    assert_eq!(pages, 10, "page size 1000");
}

/// A remote that deletes and compacts on the server right after the first pull
/// returns, i.e. while the client is in the middle of its (re)sync.
struct CompactsMidSync {
    inner: FakeRemote,
    armed: std::sync::atomic::AtomicBool,
}

#[sync_traits::async_trait]
impl sync_traits::RemoteStore for CompactsMidSync {
    async fn pull(
        &self,
        since: sync_traits::Watermark,
        limit: usize,
        mode: sync_traits::PullMode,
    ) -> Result<sync_traits::Page, sync_traits::RemoteError> {
        let page = self.inner.pull(since, limit, mode).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let first = &page.changes[0];
            self.inner.server_write(&first.collection, &first.id, None);
            self.inner.compact();
        }
        Ok(page)
    }
    async fn push(
        &self,
        c: Vec<sync_traits::PushChange>,
    ) -> Result<Vec<sync_traits::PushOutcome>, sync_traits::RemoteError> {
        self.inner.push(c).await
    }
    async fn fetch(
        &self,
        c: &str,
        id: &sync_traits::RecordId,
    ) -> Result<Option<sync_traits::RemoteState>, sync_traits::RemoteError> {
        self.inner.fetch(c, id).await
    }
    async fn horizon(&self) -> Result<sync_traits::Watermark, sync_traits::RemoteError> {
        self.inner.horizon().await
    }
}

#[tokio::test]
async fn a_resync_restarts_when_the_server_compacts_while_it_runs() {
    let server = FakeRemote::new();
    for i in 0..5 {
        server.server_write("songs", &new_id(), Some(f(json!({"order": i}))));
    }
    let store = Arc::new(MemoryStore::new());
    let remote = CompactsMidSync {
        inner: server.clone(),
        armed: true.into(),
    };
    let engine = SyncEngine::new(store.clone(), remote).with_config(sync_traits::SyncConfig {
        page_size: 2,
        ..Default::default()
    });
    engine.sync().await.unwrap();
    assert_eq!(server.snapshot().len(), 4);
    assert_eq!(
        store.all_records(),
        server.snapshot(),
        "the record deleted (and its tombstone compacted) mid-resync must not survive"
    );
}

/// Hints as a stream, from a channel.
struct HintStream(tokio::sync::mpsc::Receiver<()>);

impl futures_core::Stream for HintStream {
    type Item = ();
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn run_live_syncs_on_hints_without_a_manual_sync() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let (b, eb) = client(&server);
    let (hint_tx, hint_rx) = tokio::sync::mpsc::channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let x = new_id();
    let live = eb.run_live(
        HintStream(hint_rx),
        std::time::Duration::from_secs(3600),
        async {
            let _ = stop_rx.await;
        },
    );
    let writer = async {
        a.put(Record::new("songs", x.clone(), f(json!({"title": "live"}))))
            .await
            .unwrap();
        ea.sync().await.unwrap();
        hint_tx.send(()).await.unwrap();
        let mut arrived = false;
        for _ in 0..200 {
            if b.get("songs", &x).await.unwrap().is_some() {
                arrived = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop_tx.send(()).unwrap();
        arrived
    };
    let (res, arrived) = tokio::join!(live, writer);
    res.unwrap();
    assert!(
        arrived,
        "the hint made the live client pull, long before its period"
    );
}

#[tokio::test]
async fn reconcile_removes_records_that_vanished_without_a_tombstone() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let ids: Vec<_> = (0..4).map(|_| new_id()).collect();
    for id in &ids {
        server.server_write("songs", id, Some(f(json!({"title": "x"}))));
    }
    server.server_write("friends", &new_id(), Some(f(json!({"name": "y"}))));
    ea.sync().await.unwrap();
    assert_eq!(a.all_records().len(), 5);
    // Two songs vanish behind sync's back (a rule change, a raw SQL delete).
    server.raw_delete("songs", &ids[0]);
    server.raw_delete("songs", &ids[1]);
    let r = ea.sync().await.unwrap();
    assert!(!r.resynced);
    assert_eq!(a.all_records().len(), 5, "a plain sync cannot see it");
    let before = server.round_trips();
    let r = ea.reconcile().await.unwrap();
    assert!(r.resynced, "counts differ, so reconcile resyncs");
    assert_eq!(a.all_records(), server.snapshot());
    assert_eq!(a.all_records().len(), 3);
    // Nothing stale now: reconcile costs one pull plus the counts.
    let r = ea.reconcile().await.unwrap();
    assert!(!r.resynced);
    assert!(server.round_trips().0 > before.0);
}

#[tokio::test]
async fn reconcile_after_a_rejection_finds_nothing_stale() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let x = new_id();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "refused", "invalid": true})),
    ))
    .await
    .unwrap();
    a.put(Record::new("songs", new_id(), f(json!({"title": "ok"}))))
        .await
        .unwrap();
    let r = ea.reconcile().await.unwrap();
    assert_eq!((r.rejected, r.remaining), (1, 0));
    assert!(!r.resynced, "the counts agree once the outbox has landed");
    assert_eq!(a.all_records(), server.snapshot());
}

/// A remote that deletes one record on the server just before its next pull.
struct DeleteBeforePull {
    inner: sync_traits::testkit::Faulty<FakeRemote>,
    server: FakeRemote,
    victim: std::sync::Mutex<Option<sync_traits::RecordId>>,
    /// `fetch` answers `None` for a deleted record (as a remote that shows no
    /// tombstone there does), not its tombstone.
    hide_tombstones: bool,
}

#[sync_traits::async_trait]
impl sync_traits::RemoteStore for DeleteBeforePull {
    async fn pull(
        &self,
        since: sync_traits::Watermark,
        limit: usize,
        mode: sync_traits::PullMode,
    ) -> Result<sync_traits::Page, sync_traits::RemoteError> {
        let victim = self.victim.lock().unwrap().take();
        if let Some(id) = victim {
            self.server.server_write("songs", &id, None);
        }
        self.inner.pull(since, limit, mode).await
    }
    async fn push(
        &self,
        changes: Vec<sync_traits::PushChange>,
    ) -> Result<Vec<sync_traits::PushOutcome>, sync_traits::RemoteError> {
        self.inner.push(changes).await
    }
    async fn fetch(
        &self,
        c: &str,
        id: &sync_traits::RecordId,
    ) -> Result<Option<sync_traits::RemoteState>, sync_traits::RemoteError> {
        let st = self.inner.fetch(c, id).await?;
        Ok(st.filter(|s| !self.hide_tombstones || s.fields.is_some()))
    }
    async fn horizon(&self) -> Result<sync_traits::Watermark, sync_traits::RemoteError> {
        self.inner.horizon().await
    }
}

/// A change acked only after the pull passed it (its push was applied but the answer
/// lost, and the pull ran) is read back from the server: when another client
/// deleted the record meanwhile, it is deleted locally too, though the pull left it
/// alone while the change was pending — whether `fetch` answers the tombstone (as
/// PocketBase and `FakeRemote` do) or nothing (as a remote that keeps no visible
/// tombstone may).
#[tokio::test]
async fn a_late_ack_reads_back_a_deletion_the_pull_passed() {
    for hide_tombstones in [false, true] {
        late_ack_reads_back_a_deletion(hide_tombstones).await;
    }
}

async fn late_ack_reads_back_a_deletion(hide_tombstones: bool) {
    use sync_traits::testkit::{Fault, Faulty};
    let server = FakeRemote::new();
    let store = Arc::new(MemoryStore::new());
    let remote = DeleteBeforePull {
        inner: Faulty::new(server.clone()),
        server: server.clone(),
        victim: std::sync::Mutex::default(),
        hide_tombstones,
    };
    let x = new_id();
    store
        .put(Record::new("songs", x.clone(), f(json!({"title": "v1"}))))
        .await
        .unwrap();
    let engine = SyncEngine::new(store.clone(), remote);
    engine.sync().await.unwrap();
    store
        .put(Record::new("songs", x.clone(), f(json!({"title": "v2"}))))
        .await
        .unwrap();
    // The update is applied, its answer lost for good; before the pull that follows,
    // someone deletes the record on the server.
    engine.remote().inner.on_push(Fault::CrashAfter);
    *engine.remote().victim.lock().unwrap() = Some(x.clone());
    assert!(engine.sync().await.is_err(), "the push failed");
    engine.sync().await.unwrap();
    assert!(server.snapshot().is_empty(), "deleted on the server");
    assert!(
        store.get("songs", &x).await.unwrap().is_none(),
        "and so locally (tombstones hidden: {hide_tombstones}): {:?}",
        store.get("songs", &x).await.unwrap()
    );
}
