//! The engine end to end: MemoryStore clients syncing through SyncEngine over a
//! real PostgreSQL.

use sync_traits::SyncStore;
mod common;

use std::sync::Arc;

use common::*;
use postgres_remote::PostgresRemote;
use serde_json::json;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    new_id, ClientWins, FieldMerge, LocalStore, PullMode, Record, RemoteStore, ServerWins,
    SyncEngine, Watermark,
};

type Engine = SyncEngine<Arc<MemoryStore>, PostgresRemote>;

fn engine(store: &Arc<MemoryStore>, remote: &PostgresRemote) -> Engine {
    SyncEngine::new(store.clone(), remote.clone())
}

/// What the server holds for this remote's caller, as records.
async fn server_records(r: &PostgresRemote) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for p in pull_all(r, 0, 1000).await {
        for c in p.changes {
            out.retain(|x| !(x.collection == c.collection && x.id == c.id));
            if let Some(f) = c.state.fields {
                out.push(Record::new(c.collection, c.id, f));
            }
        }
    }
    out.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
    out
}

#[tokio::test]
async fn two_clients_converge_with_offline_edits_conflicts_and_deletes() {
    let (_s, r) = server().await;
    let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (ea, eb) = (engine(&a, &r), engine(&b, &r).with_policy(FieldMerge));
    let (x, y, z) = (new_id(), new_id(), new_id());
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "x1", "n": 1})),
    ))
    .await
    .unwrap();
    a.put(Record::new("notes", y.clone(), f(json!({"body": "y1"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    assert_eq!(a.all_records(), b.all_records());
    // Offline on both: non-overlapping field edits of x, b deletes y, a creates z.
    a.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "x by a", "n": 1, "owner": null})),
    ))
    .await
    .unwrap();
    b.put(Record::new(
        "songs",
        x.clone(),
        f(json!({"title": "x1", "n": 2, "owner": null})),
    ))
    .await
    .unwrap();
    b.delete("notes", &y).await.unwrap();
    a.put(Record::new("notes", z.clone(), f(json!({"body": "z"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    let rb = eb.sync().await.unwrap();
    assert_eq!(rb.conflicts, 1, "b's edit met a's");
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    let server = server_records(&r).await;
    assert_eq!(a.all_records(), server);
    assert_eq!(b.all_records(), server);
    let xs = server.iter().find(|r| r.id == x).unwrap();
    assert_eq!(
        (xs.fields["title"].clone(), xs.fields["n"].clone()),
        (json!("x by a"), json!(2)),
        "field merge kept both edits"
    );
    assert!(server.iter().all(|r| r.id != y), "the delete went through");
    assert!(a.get("notes", &y).await.unwrap().is_none());
}

#[tokio::test]
async fn server_wins_and_client_wins() {
    let (_s, r) = server().await;
    for policy in ["server", "client"] {
        let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        let ea = engine(&a, &r);
        let eb = if policy == "server" {
            engine(&b, &r).with_policy(ServerWins)
        } else {
            engine(&b, &r).with_policy(ClientWins)
        };
        let x = new_id();
        a.put(Record::new("notes", x.clone(), f(json!({"body": "v1"}))))
            .await
            .unwrap();
        ea.sync().await.unwrap();
        eb.sync().await.unwrap();
        a.put(Record::new("notes", x.clone(), f(json!({"body": "a"}))))
            .await
            .unwrap();
        b.put(Record::new("notes", x.clone(), f(json!({"body": "b"}))))
            .await
            .unwrap();
        ea.sync().await.unwrap();
        let rep = eb.sync().await.unwrap();
        assert_eq!(rep.conflicts, 1, "{policy}");
        ea.sync().await.unwrap();
        eb.sync().await.unwrap();
        let want = if policy == "server" { "a" } else { "b" };
        let st = r.fetch("notes", &x).await.unwrap().unwrap();
        assert_eq!(st.fields.unwrap()["body"], json!(want), "{policy}");
        assert_eq!(
            a.get("notes", &x).await.unwrap().unwrap().fields["body"],
            json!(want)
        );
        assert_eq!(
            b.get("notes", &x).await.unwrap().unwrap().fields["body"],
            json!(want)
        );
        assert_eq!(b.conflicts().await.unwrap().len(), 1, "{policy}: persisted");
    }
    // Delete against edit, server wins: the delete is reported, not resurrected.
    let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (ea, eb) = (engine(&a, &r), engine(&b, &r).with_policy(ServerWins));
    let x = new_id();
    a.put(Record::new("notes", x.clone(), f(json!({"body": "v1"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    a.delete("notes", &x).await.unwrap();
    b.put(Record::new("notes", x.clone(), f(json!({"body": "edit"}))))
        .await
        .unwrap();
    ea.sync().await.unwrap();
    assert_eq!(eb.sync().await.unwrap().conflicts, 1);
    assert!(b.get("notes", &x).await.unwrap().is_none());
    assert!(r.fetch("notes", &x).await.unwrap().is_none());
}

#[tokio::test]
async fn a_client_past_the_horizon_resyncs_and_keeps_its_outbox() {
    let (_s, r) = server().await;
    let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (ea, eb) = (engine(&a, &r), engine(&b, &r));
    let ids: Vec<_> = (0..5).map(|_| new_id()).collect();
    for id in &ids {
        a.put(Record::new(
            "notes",
            id.clone(),
            f(json!({"body": "start"})),
        ))
        .await
        .unwrap();
    }
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    // b goes offline and edits; a deletes two records, then the server compacts.
    let mine = new_id();
    b.put(Record::new(
        "notes",
        mine.clone(),
        f(json!({"body": "offline"})),
    ))
    .await
    .unwrap();
    a.delete("notes", &ids[0]).await.unwrap();
    a.delete("notes", &ids[1]).await.unwrap();
    ea.sync().await.unwrap();
    let h = r.compact(std::time::Duration::ZERO).await.unwrap();
    let wm = b.sync_state().await.unwrap().watermark;
    assert!(wm < h, "b is behind the horizon");
    assert!(matches!(
        r.pull(wm, 10, PullMode::Incremental).await,
        Err(sync_traits::RemoteError::WatermarkExpired { .. })
    ));
    let rep = eb.sync().await.unwrap();
    assert!(rep.resynced, "{rep:?}");
    assert_eq!(rep.pushed, 1, "the outbox was kept and pushed");
    ea.sync().await.unwrap();
    let server = server_records(&r).await;
    assert_eq!(b.all_records(), server);
    assert_eq!(a.all_records(), server);
    assert!(
        b.get("notes", &ids[0]).await.unwrap().is_none(),
        "deleted without a tombstone: removed by the resync"
    );
    assert!(b.get("notes", &mine).await.unwrap().is_some());
    assert!(b.sync_state().await.unwrap().watermark >= Watermark(h.0));
}

#[tokio::test]
async fn users_sync_their_own_rows_only() {
    let (s, _admin) = server().await;
    s.create_user("alice").await;
    s.create_user("bob").await;
    let (ra, rb) = (s.user("alice").await, s.user("bob").await);
    let (a, b) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (ea, eb) = (engine(&a, &ra), engine(&b, &rb));
    let (xa, xb) = (new_id(), new_id());
    a.put(Record::new(
        "songs",
        xa.clone(),
        f(json!({"title": "a", "owner": "alice"})),
    ))
    .await
    .unwrap();
    b.put(Record::new(
        "songs",
        xb.clone(),
        f(json!({"title": "b", "owner": "bob"})),
    ))
    .await
    .unwrap();
    // A write bob may not make: quarantined with its data, not lost, not applied.
    let forged = new_id();
    b.put(Record::new(
        "songs",
        forged.clone(),
        f(json!({"title": "for alice", "owner": "alice"})),
    ))
    .await
    .unwrap();
    ea.sync().await.unwrap();
    let rep = eb.sync().await.unwrap();
    assert_eq!(rep.rejected, 1);
    assert_eq!(b.quarantined().await.unwrap().len(), 1);
    ea.sync().await.unwrap();
    eb.sync().await.unwrap();
    assert_eq!(
        a.all_records()
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![xa.clone()]
    );
    assert_eq!(
        b.all_records()
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![xb.clone()]
    );
    assert!(ra.fetch("songs", &forged).await.unwrap().is_none());
    // reconcile agrees with the counts the server gives each user.
    assert!(!eb.reconcile().await.unwrap().resynced);
}

/// Partial sync: a subset works through the default `pull_scoped` (the other
/// collections' changes are dropped from the plain pull); a filter is refused with
/// `RemoteError::Unsupported` before anything is applied.
#[tokio::test]
async fn a_subset_syncs_and_a_filter_is_refused_as_unsupported() {
    let (_s, r) = server().await;
    let writer = Arc::new(MemoryStore::new());
    writer
        .put(Record::new(
            "songs",
            new_id(),
            f(json!({"title": "s", "n": 1})),
        ))
        .await
        .unwrap();
    writer
        .put(Record::new("notes", new_id(), f(json!({"body": "b"}))))
        .await
        .unwrap();
    engine(&writer, &r).sync().await.unwrap();
    let reader = Arc::new(MemoryStore::new());
    let err = engine(&reader, &r)
        .with_scope(
            sync_traits::SyncScope::all()
                .filter("songs", sync_traits::Filter::new("n = 1").unwrap()),
        )
        .sync()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.cause(),
            sync_traits::SyncError::Remote(sync_traits::RemoteError::Unsupported(_))
        ),
        "{err}"
    );
    assert!(reader.all_records().is_empty(), "nothing applied");
    let report = engine(&reader, &r)
        .with_scope(sync_traits::SyncScope::only(["notes"]))
        .sync()
        .await
        .unwrap();
    assert_eq!(report.pulled, 1, "{report:?}");
    let got = reader.all_records();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].collection, "notes");
}
