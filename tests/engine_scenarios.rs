//! Readable end-to-end scenarios of the engine over MemoryStore and FakeRemote.
//! The property test covers interleavings; these pin down named behaviours.

use std::sync::Arc;
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{
    new_id, ClientWins, FieldMerge, Fields, LocalStore, Record, ServerWins, SyncConfig, SyncEngine,
    SyncError, SyncEvent,
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
    let (pulls_before, _) = server.round_trips();
    let r = eb.sync().await.unwrap();
    assert_eq!(r.pulled, 10_000);
    assert_eq!(b.all_records(), server.snapshot());
    let (pulls_after, _) = server.round_trips();
    // A first sync: ten pages of 1000, applied as one resync batch (up to
    // `SyncConfig::resync_batch`, 25,000, changes).
    assert_eq!(pulls_after - pulls_before, 10, "page size 1000");
    let progress: Vec<usize> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e {
            SyncEvent::PullProgress { pulled, .. } => Some(pulled),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![10_000], "one resync batch");
}

/// A resync joins pages into batches of `resync_batch` changes (the last one
/// shorter); an incremental pull applies page by page.
#[tokio::test]
async fn a_resync_applies_pages_in_batches_and_an_incremental_pull_page_by_page() {
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    for i in 0..2_500 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    ea.sync().await.unwrap();
    let b = Arc::new(MemoryStore::new());
    let eb = SyncEngine::new(b.clone(), server.clone()).with_config(SyncConfig {
        page_size: 100,
        resync_batch: 1_000,
        ..Default::default()
    });
    let progress = |events: &mut tokio::sync::broadcast::Receiver<SyncEvent>| {
        std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e {
                SyncEvent::PullProgress { pulled, .. } => Some(pulled),
                _ => None,
            })
            .collect::<Vec<usize>>()
    };
    let mut events = eb.subscribe();
    let r = eb.sync().await.unwrap();
    assert_eq!(r.pulled, 2_500);
    assert_eq!(progress(&mut events), vec![1_000, 2_000, 2_500]);
    assert_eq!(b.all_records(), server.snapshot());
    for i in 0..250 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    ea.sync().await.unwrap();
    let r = eb.sync().await.unwrap();
    assert_eq!(r.pulled, 250);
    assert_eq!(progress(&mut events), vec![100, 200, 250], "page by page");
    assert_eq!(b.all_records(), server.snapshot());
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

/// A sync that keeps making progress is not stopped by the stall limit, however
/// long it runs: twelve pulls, each answered after a third of the limit (four
/// times the limit in all).
#[tokio::test]
async fn a_sync_making_progress_outlasts_its_stall_limit() {
    use std::time::Duration;
    use sync_traits::testkit::{Fault, Faulty};
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    for i in 0..1_200 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    ea.sync().await.unwrap();
    let limit = Duration::from_millis(300);
    let slow = Faulty::new(server.clone());
    for _ in 0..12 {
        slow.on_pull(Fault::Delay(limit / 3));
    }
    let b = Arc::new(MemoryStore::new());
    let eb = SyncEngine::new(b.clone(), slow.clone()).with_config(SyncConfig {
        page_size: 100,
        stall_limit: Some(limit),
        ..Default::default()
    });
    let r = eb.sync().await.expect("progress every third of the limit");
    assert_eq!(r.pulled, 1_200);
    assert_eq!(slow.queued().0, 0, "every delayed pull was made");
    assert_eq!(b.all_records(), server.snapshot());
}

/// Hints for `run_live` from a channel the test sends on.
struct HintRx(tokio::sync::mpsc::UnboundedReceiver<()>);

impl futures_core::Stream for HintRx {
    type Item = ();
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.0.poll_recv(cx)
    }
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

/// `run_live` keeps going through transient and protocol errors (with a
/// backoff), brings the data once the remote answers again, and ends only on an
/// authentication failure or when told to stop.
#[tokio::test]
async fn run_live_goes_on_after_errors_and_stops_on_auth_or_cancel() {
    use std::time::Duration;
    use sync_traits::testkit::{Fault, Faulty};
    use sync_traits::RetryPolicy;
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    let id = new_id();
    a.put(Record::new("songs", id.clone(), f(json!({"title": "x"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    let faulty = Faulty::new(server.clone());
    for fault in [
        Fault::MalformedBefore,
        Fault::TransientBefore,
        Fault::MalformedBefore,
    ] {
        faulty.on_pull(fault);
    }
    let b = Arc::new(MemoryStore::new());
    let eb = SyncEngine::new(b.clone(), faulty.clone()).with_config(SyncConfig {
        retry: RetryPolicy::immediate(0),
        ..Default::default()
    });
    let token = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let live = {
        let token = token.clone();
        async move {
            eb.run_live(HintRx(rx), Duration::from_secs(3600), token.cancelled())
                .await
        }
    };
    let live = tokio::spawn(live);
    eventually("b pulled the song after three failed syncs", || {
        b.all_records().iter().any(|r| r.id == id)
    })
    .await;
    assert_eq!(faulty.queued().0, 0, "every failure was met");
    token.cancel();
    live.await
        .unwrap()
        .expect("stopped by the token, not by an error");

    // An authentication failure ends the loop with the error.
    faulty.on_pull(Fault::AuthBefore);
    let eb = SyncEngine::new(b.clone(), faulty.clone());
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let e = eb
        .run_live(
            HintRx(rx),
            Duration::from_secs(3600),
            std::future::pending(),
        )
        .await
        .expect_err("auth ends the loop");
    assert!(e.is_auth(), "{e}");
}

/// A burst of hints makes one sync, not one per hint.
#[tokio::test]
async fn a_burst_of_hints_makes_one_sync() {
    use std::time::Duration;
    let server = FakeRemote::new();
    let b = Arc::new(MemoryStore::new());
    let eb = Arc::new(
        SyncEngine::new(b.clone(), server.clone()).with_config(SyncConfig {
            hint_debounce: Duration::from_millis(200),
            ..Default::default()
        }),
    );
    let token = tokio_util::sync::CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let live = tokio::spawn({
        let (eb, token) = (eb.clone(), token.clone());
        async move {
            eb.run_live(HintRx(rx), Duration::from_secs(3600), token.cancelled())
                .await
        }
    });
    // The first sync, at once.
    eventually("the first sync", || server.round_trips().0 >= 1).await;
    let (before, _) = server.round_trips();
    for _ in 0..20 {
        tx.send(()).unwrap();
    }
    eventually("a sync after the burst", || server.round_trips().0 > before).await;
    // Long after the debounce: no sync per further hint of the burst.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (after, _) = server.round_trips();
    token.cancel();
    live.await.unwrap().unwrap();
    assert_eq!(after - before, 1, "twenty hints, one sync (one pull)");
}

/// `sync_until` stops a long resync when cancelled, and the next sync starts it
/// again and converges.
#[tokio::test]
async fn a_cancelled_resync_stops_midway_and_the_next_sync_finishes_it() {
    use std::time::Duration;
    use sync_traits::testkit::{Fault, Faulty};
    let server = FakeRemote::new();
    let (a, ea) = client(&server);
    for i in 0..5_000 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    ea.sync().await.unwrap();
    let slow = Faulty::new(server.clone());
    for _ in 0..50 {
        slow.on_pull(Fault::Delay(Duration::from_millis(20)));
    }
    let b = Arc::new(MemoryStore::new());
    let eb = SyncEngine::new(b.clone(), slow.clone()).with_config(SyncConfig {
        page_size: 100,
        resync_batch: 100,
        ..Default::default()
    });
    let mut events = eb.subscribe();
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = {
        let token = token.clone();
        async move {
            // Cancel once the resync has applied a few pages.
            loop {
                match events.recv().await {
                    Ok(SyncEvent::PullProgress { pulled, .. }) if pulled >= 300 => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            token.cancel();
        }
    };
    let (r, ()) = tokio::join!(eb.sync_until(token.cancelled()), cancel);
    assert!(matches!(r, Err(SyncError::Cancelled)), "{r:?}");
    let st = b.sync_state().await.unwrap();
    assert!(st.resyncing, "stopped inside the resync");
    assert!(b.all_records().len() < 5_000, "stopped before the end");
    let r = eb.sync().await.expect("the next sync");
    assert!(r.resynced);
    assert_eq!(b.all_records(), server.snapshot());
    assert!(!b.sync_state().await.unwrap().resyncing);
}

/// The status watch: syncing with progress while a sync runs, idle with the last
/// success, watermark and outbox after it; offline since the first of a run of
/// transient failures, failing for one that needs attention, idle again after a
/// success.
#[tokio::test]
async fn the_status_shows_syncing_offline_failing_and_idle() {
    use sync_traits::testkit::{Fault, Faulty};
    use sync_traits::{RetryPolicy, SyncPhase};
    let server = FakeRemote::new();
    let faulty = Faulty::new(server.clone());
    let a = Arc::new(MemoryStore::new());
    let ea = SyncEngine::new(a.clone(), faulty.clone()).with_config(SyncConfig {
        retry: RetryPolicy::immediate(0),
        page_size: 100,
        resync_batch: 100,
        ..Default::default()
    });
    let mut status = ea.status();
    assert_eq!(status.borrow().phase, SyncPhase::Idle);
    assert_eq!(status.borrow().last_success, None);
    for i in 0..250 {
        a.put(Record::new("songs", new_id(), f(json!({"order": i}))))
            .await
            .unwrap();
    }
    // Watch every state the sync passes through.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = tokio::spawn({
        let (mut status, seen) = (status.clone(), seen.clone());
        async move {
            while status.changed().await.is_ok() {
                let phase = status.borrow_and_update().phase.clone();
                let idle = phase == SyncPhase::Idle;
                seen.lock().unwrap().push(phase);
                if idle {
                    return;
                }
            }
        }
    });
    ea.sync().await.unwrap();
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|p| matches!(p, SyncPhase::Syncing { pushed, .. } if *pushed == 250)),
        "push progress shown: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&SyncPhase::Idle));
    let st = status.borrow_and_update().clone();
    assert!(st.last_success.is_some());
    assert_eq!(st.outbox, 0);
    assert_eq!(st.watermark, server.head());
    assert_eq!(st.lag, Some(0));

    // Two transient failures in a row: offline since the first.
    a.put(Record::new("songs", new_id(), f(json!({"order": 1}))))
        .await
        .unwrap();
    faulty.on_pull(Fault::TransientBefore);
    let _ = ea.sync().await.expect_err("transient");
    let first = match status.borrow_and_update().phase.clone() {
        SyncPhase::Offline { since, .. } => since,
        other => panic!("expected offline, got {other:?}"),
    };
    faulty.on_pull(Fault::TransientBefore);
    let _ = ea.sync().await.expect_err("transient");
    let st = status.borrow_and_update().clone();
    assert_eq!(
        st.phase,
        match &st.phase {
            SyncPhase::Offline { error, .. } => SyncPhase::Offline {
                since: first,
                error: error.clone(),
            },
            other => panic!("expected offline, got {other:?}"),
        },
        "offline since the first failure"
    );
    assert_eq!(st.lag, None);
    // An answer outside the protocol needs attention.
    faulty.on_pull(Fault::MalformedBefore);
    let _ = ea.sync().await.expect_err("malformed");
    assert!(matches!(
        status.borrow_and_update().phase,
        SyncPhase::Failing { .. }
    ));
    ea.sync().await.unwrap();
    let st = status.borrow_and_update().clone();
    assert_eq!(st.phase, SyncPhase::Idle);
    assert_eq!(st.outbox, 0);
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
