//! The rules at the edges, end to end over the reference store and the fake server:
//! restored and cloned stores, local-only and unsynced collections, collections and
//! values the store does not expect, a record the server refuses as a whole request,
//! and conflicts that must never vanish. Each test names the rule it pins down.

use std::sync::Arc;
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{
    new_id, ClientWins, Fields, LocalStore, Op, Record, Resolution, ServerWins, SyncEngine,
    SyncError, SyncEvent,
};

fn f(v: serde_json::Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn song(title: &str) -> Fields {
    f(json!({ "title": title }))
}

type Engine = SyncEngine<Arc<MemoryStore>, FakeRemote>;

fn engine(store: &Arc<MemoryStore>, remote: &FakeRemote) -> Engine {
    SyncEngine::new(store.clone(), remote.clone())
}

fn title(server: &FakeRemote, id: &sync_traits::RecordId) -> Option<serde_json::Value> {
    server
        .snapshot()
        .into_iter()
        .find(|r| &r.id == id)
        .map(|r| r.fields["title"].clone())
}

/// A store restored from a backup (its change counter rolled back) makes a new
/// edit: the server must not answer it "already applied". The edit either lands
/// or is reported as a conflict; it is never acked while the server keeps the old
/// value.
#[tokio::test]
async fn a_restored_store_never_has_a_new_write_acked_unapplied() {
    for policy in ["server", "client"] {
        let server = FakeRemote::new();
        let phone = Arc::new(MemoryStore::new());
        let e = engine(&phone, &server);
        let x = new_id();
        phone
            .put(Record::new("songs", x.clone(), song("v1")))
            .await
            .unwrap();
        e.sync().await.unwrap();
        let backup = phone.reopen_copy(); // the backup, taken now
        for t in ["v2", "v3"] {
            phone
                .put(Record::new("songs", x.clone(), song(t)))
                .await
                .unwrap();
            e.sync().await.unwrap();
        }
        assert_eq!(title(&server, &x), Some(json!("v3")));

        // The phone is lost; its backup is restored and edited.
        let restored = Arc::new(backup);
        let er = engine(&restored, &server);
        let er = if policy == "server" {
            er.with_policy(ServerWins)
        } else {
            er.with_policy(ClientWins)
        };
        restored
            .put(Record::new("songs", x.clone(), song("after restore")))
            .await
            .unwrap();
        let report = er.sync().await.unwrap();
        let local = restored.get("songs", &x).await.unwrap().unwrap().fields["title"].clone();
        assert_eq!(
            Some(local.clone()),
            title(&server, &x),
            "{policy}: after a quiet sync the restored store holds what the server holds"
        );
        if local != json!("after restore") {
            assert_eq!(report.conflicts, 1, "{policy}: the lost edit was reported");
            let log = restored.conflicts().await.unwrap();
            assert_eq!(log.len(), 1, "{policy}: and persisted");
            assert_eq!(
                log[0].conflict.local.op,
                Op::Upsert(song("after restore")),
                "{policy}: with its data"
            );
        }
        if policy == "client" {
            assert_eq!(local, json!("after restore"), "client wins: the edit lands");
        }
        let applied = server.applied_change_ids();
        assert!(
            applied.values().all(|n| *n == 1),
            "{policy}: no change id applied twice: {applied:?}"
        );
    }
}

/// A store file copied to a second device: both write, no write is lost, none is
/// acked without being applied, and both converge on the server's state.
#[tokio::test]
async fn a_cloned_store_loses_no_write() {
    let server = FakeRemote::new();
    let one = Arc::new(MemoryStore::new());
    let e1 = engine(&one, &server).with_policy(ServerWins);
    let ids: Vec<_> = (0..3).map(|_| new_id()).collect();
    for id in &ids {
        one.put(Record::new("songs", id.clone(), song("start")))
            .await
            .unwrap();
    }
    e1.sync().await.unwrap();
    let two = Arc::new(one.reopen_copy());
    let e2 = engine(&two, &server).with_policy(ServerWins);
    assert_ne!(
        one.client_id().await.unwrap(),
        two.client_id().await.unwrap(),
        "a copy writes under a writer id of its own"
    );
    let mut lost_or_reported = 0;
    for round in 0..3 {
        for (i, id) in ids.iter().enumerate() {
            let (store, e) = if (i + round) % 2 == 0 {
                (&one, &e1)
            } else {
                (&two, &e2)
            };
            store
                .put(Record::new(
                    "songs",
                    id.clone(),
                    song(&format!("r{round} {i}")),
                ))
                .await
                .unwrap();
            let r = e.sync().await.unwrap();
            lost_or_reported += r.conflicts;
            assert_eq!(
                title(&server, id),
                Some(json!(format!("r{round} {i}"))),
                "round {round}: the write of a synced-up device lands"
            );
        }
    }
    e1.sync().await.unwrap();
    e2.sync().await.unwrap();
    assert_eq!(one.all_records(), server.snapshot());
    assert_eq!(two.all_records(), server.snapshot());
    assert_eq!(
        lost_or_reported, 0,
        "each write was made on the newest state"
    );
}

/// A collection the remote does not sync: its records are never pushed, never
/// quarantined and never deleted locally, and its outbox entries wait untouched.
#[tokio::test]
async fn a_collection_the_remote_does_not_sync_is_never_touched() {
    let server = FakeRemote::new();
    server.set_synced(Some(["songs"]));
    let store = Arc::new(MemoryStore::new());
    let e = engine(&store, &server);
    let (s, d) = (new_id(), new_id());
    store
        .put(Record::new("songs", s.clone(), song("synced")))
        .await
        .unwrap();
    store
        .put(Record::new("drafts", d.clone(), song("mine only")))
        .await
        .unwrap();
    let report = e.sync().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (1, 0));
    assert_eq!(report.unsynced, 1, "the draft waits");
    assert!(store.quarantined().await.unwrap().is_empty());
    assert!(store.get("drafts", &d).await.unwrap().is_some());
    // A full resync (the first sync was one) and a reconcile keep it too.
    e.reconcile().await.unwrap();
    assert!(
        store.get("drafts", &d).await.unwrap().is_some(),
        "never deleted because the remote does not sync drafts"
    );
    assert_eq!(store.pending_count().await.unwrap(), 1);
    // Once the server syncs drafts, the waiting write goes out.
    server.set_synced(Some(["songs", "drafts"]));
    let report = e.sync().await.unwrap();
    assert_eq!((report.pushed, report.unsynced), (1, 0));
    assert_eq!(title(&server, &d), Some(json!("mine only")));
}

/// A local-only collection: no outbox entry, and neither a pull of a server
/// collection of the same name nor a resync touches it.
#[tokio::test]
async fn a_local_only_collection_stays_on_the_device() {
    let server = FakeRemote::new();
    let other = Arc::new(MemoryStore::new());
    let d_server = new_id();
    other
        .put(Record::new(
            "drafts",
            d_server.clone(),
            song("server draft"),
        ))
        .await
        .unwrap();
    engine(&other, &server).sync().await.unwrap();

    let store = Arc::new(MemoryStore::new().with_local_only(["drafts"]));
    let e = engine(&store, &server);
    let d = new_id();
    store
        .put(Record::new("drafts", d.clone(), song("local")))
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 0, "no outbox entry");
    let report = e.sync().await.unwrap();
    assert!(report.resynced || report.skipped > 0 || report.pulled > 0);
    assert_eq!(report.skipped, 1, "the server's drafts are skipped");
    assert!(store.get("drafts", &d).await.unwrap().is_some());
    assert!(store.get("drafts", &d_server).await.unwrap().is_none());
    e.reconcile().await.unwrap();
    assert!(store.get("drafts", &d).await.unwrap().is_some());
}

/// The server syncs a collection the app does not declare: it does not stop the
/// sync, and its records arrive once the app declares it (not lost behind the
/// watermark).
#[tokio::test]
async fn an_unknown_collection_is_skipped_then_arrives_when_declared() {
    let server = FakeRemote::new();
    let writer = Arc::new(MemoryStore::new());
    let (s, fr) = (new_id(), new_id());
    writer
        .put(Record::new("songs", s.clone(), song("a song")))
        .await
        .unwrap();
    writer
        .put(Record::new("friends", fr.clone(), f(json!({"name": "bo"}))))
        .await
        .unwrap();
    engine(&writer, &server).sync().await.unwrap();

    let app = Arc::new(MemoryStore::with_collections(["songs"]));
    let e = engine(&app, &server);
    let report = e
        .sync()
        .await
        .expect("an unknown collection never stops a sync");
    assert_eq!(report.skipped, 1);
    assert!(
        app.get("songs", &s).await.unwrap().is_some(),
        "the songs arrive"
    );
    assert_eq!(app.sync_state().await.unwrap().watermark, server.head());
    assert_eq!(app.declare("friends"), 1);
    assert_eq!(
        app.get("friends", &fr).await.unwrap().unwrap().fields["name"],
        json!("bo")
    );
    e.sync().await.unwrap();
    assert_eq!(app.all_records(), server.snapshot());
}

/// A record the server refuses as a whole request (413) is a rejection of that
/// record alone: the other changes are pushed, the pull runs, and the record is
/// quarantined with its data and reported.
#[tokio::test]
async fn an_oversize_record_is_rejected_alone_and_sync_goes_on() {
    let server = FakeRemote::new();
    let other = Arc::new(MemoryStore::new());
    let incoming = new_id();
    other
        .put(Record::new(
            "songs",
            incoming.clone(),
            song("from elsewhere"),
        ))
        .await
        .unwrap();
    engine(&other, &server).sync().await.unwrap();

    let store = Arc::new(MemoryStore::new());
    let e = SyncEngine::new(store.clone(), server.clone().with_max_body(10_000));
    let big = new_id();
    let small: Vec<_> = (0..5).map(|_| new_id()).collect();
    for (i, id) in small.iter().enumerate() {
        store
            .put(Record::new(
                "songs",
                id.clone(),
                song(&format!("small {i}")),
            ))
            .await
            .unwrap();
        if i == 2 {
            store
                .put(Record::new("songs", big.clone(), song(&"x".repeat(50_000))))
                .await
                .unwrap();
        }
    }
    let mut events = e.subscribe();
    let report = e.sync().await.expect("one bad record never fails the sync");
    assert_eq!((report.pushed, report.rejected), (5, 1));
    assert!(
        store.get("songs", &incoming).await.unwrap().is_some(),
        "the pull ran"
    );
    let q = store.quarantined().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].change.id, big);
    assert!(
        matches!(&q[0].change.op, Op::Upsert(f) if f["title"].as_str().unwrap().len() == 50_000)
    );
    assert!(
        q[0].rejection.message.contains("413"),
        "{:?}",
        q[0].rejection
    );
    let rejected = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|ev| matches!(ev, SyncEvent::Rejected { change, .. } if change.id == big))
        .count();
    assert_eq!(rejected, 1);
    // Discarding it keeps sync quiet; nothing else is pending.
    assert!(store.discard_quarantined(q[0].id).await.unwrap());
    assert_eq!(e.sync().await.unwrap().pushed, 0);
}

/// A push that fails for good (not auth) still lets the pull run, and the error
/// says what the sync did before it failed.
#[tokio::test]
async fn a_failed_push_does_not_stop_the_pull() {
    let server = FakeRemote::new();
    let other = Arc::new(MemoryStore::new());
    let incoming = new_id();
    other
        .put(Record::new(
            "songs",
            incoming.clone(),
            song("from elsewhere"),
        ))
        .await
        .unwrap();
    engine(&other, &server).sync().await.unwrap();

    let store = Arc::new(MemoryStore::new());
    // Every push refused as a whole: each change alone too, so nothing is
    // quarantined (the requests are refused, not a record).
    let e = SyncEngine::new(store.clone(), server.clone().with_max_body(1));
    for _ in 0..3 {
        store
            .put(Record::new("songs", new_id(), song("stuck")))
            .await
            .unwrap();
    }
    let err = e.sync().await.unwrap_err();
    assert!(
        matches!(err.cause(), SyncError::Remote(_)),
        "the push's error is returned: {err}"
    );
    assert_eq!(
        err.done().map(|d| d.pulled),
        Some(1),
        "after the pull: {err}"
    );
    assert!(store.get("songs", &incoming).await.unwrap().is_some());
    assert_eq!(store.pending_count().await.unwrap(), 3, "nothing lost");
    assert!(store.quarantined().await.unwrap().is_empty());
}

/// Under ServerWins with nobody listening to events, the losing local edit is
/// still kept: in the store's conflict log, with the server state and the
/// resolution, until cleared.
#[tokio::test]
async fn a_conflict_is_persisted_without_any_listener() {
    let server = FakeRemote::new();
    let a = Arc::new(MemoryStore::new());
    let b = Arc::new(MemoryStore::new());
    let ea = engine(&a, &server);
    let eb = engine(&b, &server).with_policy(ServerWins);
    let x = new_id();
    a.put(Record::new("songs", x.clone(), song("v1")))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    a.put(Record::new("songs", x.clone(), song("a wins the race")))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    b.put(Record::new("songs", x.clone(), song("b's edit")))
        .await
        .unwrap();
    let report = eb.sync().await.unwrap();
    assert_eq!(report.conflicts, 1);
    let log = b.conflicts().await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].conflict.local.op, Op::Upsert(song("b's edit")));
    assert_eq!(log[0].conflict.resolution, Resolution::TakeServer);
    assert_eq!(
        log[0].conflict.server.fields.as_ref().unwrap()["title"],
        json!("a wins the race")
    );
    assert_eq!(b.clear_conflicts(vec![log[0].id]).await.unwrap(), 1);
    assert!(b.conflicts().await.unwrap().is_empty());
}

/// A quarantined change can be fixed and retried: it goes out as a new write.
#[tokio::test]
async fn a_quarantined_change_can_be_retried() {
    let server = FakeRemote::new();
    let store = Arc::new(MemoryStore::new());
    let e = engine(&store, &server);
    let x = new_id();
    store
        .put(Record::new(
            "songs",
            x.clone(),
            f(json!({"title": "t", "invalid": true})),
        ))
        .await
        .unwrap();
    assert_eq!(e.sync().await.unwrap().rejected, 1);
    let q = store.quarantined().await.unwrap();
    assert!(store.retry_quarantined(q[0].id).await.unwrap());
    // The app fixes the data, then syncs.
    store
        .put(Record::new(
            "songs",
            x.clone(),
            f(json!({"title": "t", "invalid": false})),
        ))
        .await
        .unwrap();
    let report = e.sync().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (1, 0));
    assert_eq!(title(&server, &x), Some(json!("t")));
    assert!(store.quarantined().await.unwrap().is_empty());
}

/// A backup taken while an edit was waiting in the outbox; the original device then
/// edits the same record again and syncs (a newer change of the same writer). The
/// restored backup resends its older change: the server must not take it for
/// applied (only the exact change id it applied is), so the restored store ends
/// with what the server holds, not with its own older data at the server's version.
#[tokio::test]
async fn a_restored_outbox_entry_is_not_taken_for_the_newer_change_it_precedes() {
    let server = FakeRemote::new();
    let phone = Arc::new(MemoryStore::new());
    let e = engine(&phone, &server).with_policy(ServerWins);
    let x = new_id();
    phone
        .put(Record::new("songs", x.clone(), song("v1")))
        .await
        .unwrap();
    e.sync().await.unwrap();
    phone
        .put(Record::new("songs", x.clone(), song("pending at backup")))
        .await
        .unwrap();
    let backup = phone.reopen_copy();
    phone
        .put(Record::new("songs", x.clone(), song("newer, synced")))
        .await
        .unwrap();
    e.sync().await.unwrap();

    let restored = Arc::new(backup);
    let report = engine(&restored, &server)
        .with_policy(ServerWins)
        .sync()
        .await
        .unwrap();
    assert_eq!(
        restored.get("songs", &x).await.unwrap().unwrap().fields["title"],
        json!("newer, synced"),
        "the restored store holds what the server holds"
    );
    assert_eq!(title(&server, &x), Some(json!("newer, synced")));
    assert_eq!(report.conflicts, 1, "its older edit was reported");
    assert_eq!(
        restored.conflicts().await.unwrap().len(),
        1,
        "and persisted"
    );
    assert_eq!(report.pushed, 0, "and not counted as pushed");
}

/// A server that does not store a write exactly as sent (PocketBase: a PATCH keeps
/// the fields a write leaves out, and values are coerced to the field's type):
/// after a quiet sync every device, the writer included, holds exactly what the
/// server holds.
#[tokio::test]
async fn removed_fields_and_normalised_values_converge() {
    fn upper_title(_: &str, f: &mut Fields) {
        if let Some(serde_json::Value::String(t)) = f.get_mut("title") {
            *t = t.to_uppercase();
        }
    }
    let server = FakeRemote::new().with_write_rules(sync_traits::testkit::WriteRules {
        patch: true,
        normalise: Some(upper_title),
    });
    let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (ea, eb) = (engine(&a, &server), engine(&b, &server));
    let x = new_id();
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "so what", "artist": "miles"})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    // The writer's own copy came back normalised.
    assert_eq!(
        a.get("songs", &x).await.unwrap().unwrap().fields,
        f(json!({"title": "SO WHAT", "artist": "miles"}))
    );
    // A put without `artist`: the server keeps it, and so does every device.
    a.put(Record::new("songs", x.clone(), f(json!({"title": "blue"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    let on_server = server.snapshot();
    assert_eq!(
        on_server[0].fields,
        f(json!({"title": "BLUE", "artist": "miles"}))
    );
    assert_eq!(
        a.all_records(),
        on_server,
        "the writer holds the server's record"
    );
    assert_eq!(b.all_records(), on_server);
}

/// Reconcile is two-sided: a record that enters a user's view without any write
/// they could pull (shared to them by a rule change) arrives, as one that left
/// it is removed.
#[tokio::test]
async fn reconcile_pulls_records_that_entered_the_view_without_a_write() {
    let server = FakeRemote::new();
    let theirs = new_id();
    server.server_write(
        "songs",
        &theirs,
        Some(f(json!({"title": "hidden", "owner": "bob"}))),
    );
    let store = Arc::new(MemoryStore::new());
    let e = SyncEngine::new(store.clone(), server.as_user("ann"));
    e.sync().await.unwrap();
    assert!(
        store.get("songs", &theirs).await.unwrap().is_none(),
        "not ann's"
    );
    // The record is shared with everyone, without a write.
    assert!(server.raw_update("songs", &theirs, f(json!({"title": "shared", "owner": ""}))));
    e.sync().await.unwrap();
    assert!(
        store.get("songs", &theirs).await.unwrap().is_none(),
        "an incremental pull cannot see it"
    );
    let r = e.reconcile().await.unwrap();
    assert!(r.resynced);
    assert_eq!(
        store.get("songs", &theirs).await.unwrap().unwrap().fields["title"],
        json!("shared")
    );
    assert!(
        !e.reconcile().await.unwrap().resynced,
        "and then the counts agree"
    );
}
