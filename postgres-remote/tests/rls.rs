//! Per-user visibility enforced by PostgreSQL (row level security), through every
//! route: pull, push, fetch, counts, collections, the idempotency memory, plain
//! SQL, and NOTIFY.

mod common;

use common::*;
use serde_json::json;
use sync_traits::{new_id, PullMode, PushOutcome, RemoteStore, Watermark};

fn applied(o: &PushOutcome) -> u64 {
    match o {
        PushOutcome::Applied { version } => version.0,
        other => panic!("expected Applied, got {other:?}"),
    }
}

#[tokio::test]
async fn two_users_never_see_or_write_each_others_rows() {
    let (s, admin) = server().await;
    s.create_user("alice").await;
    s.create_user("bob").await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let (ca, cb) = (new_id(), new_id());
    let (xa, xb, shared) = (new_id(), new_id(), new_id());
    let va = applied(
        &alice
            .push(vec![upsert(
                cid(&ca, 1),
                "songs",
                &xa,
                None,
                json!({"title": "alice's", "owner": "alice"}),
            )])
            .await
            .unwrap()[0],
    );
    applied(
        &bob.push(vec![upsert(
            cid(&cb, 1),
            "songs",
            &xb,
            None,
            json!({"title": "bob's", "owner": "bob"}),
        )])
        .await
        .unwrap()[0],
    );
    applied(
        &alice
            .push(vec![upsert(
                cid(&ca, 2),
                "songs",
                &shared,
                None,
                json!({"title": "everyone's"}),
            )])
            .await
            .unwrap()[0],
    );

    // pull
    let ids = |p: &sync_traits::Page| p.changes.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let pb = bob.pull(Watermark(0), 100, PullMode::Resync).await.unwrap();
    assert_eq!(ids(&pb), vec![xb.clone(), shared.clone()]);
    let pa = alice
        .pull(Watermark(0), 100, PullMode::Resync)
        .await
        .unwrap();
    assert_eq!(ids(&pa), vec![xa.clone(), shared.clone()]);
    let all = admin
        .pull(Watermark(0), 100, PullMode::Resync)
        .await
        .unwrap();
    assert_eq!(all.changes.len(), 3, "the superuser sees everything");
    // fetch
    assert!(bob.fetch("songs", &xa).await.unwrap().is_none());
    assert!(alice.fetch("songs", &xa).await.unwrap().is_some());
    // counts
    let cnt = bob.counts().await.unwrap().unwrap();
    assert_eq!(cnt.get("songs"), Some(&2));
    // push: bob cannot update, delete, take over or overwrite alice's row
    let out = bob
        .push(vec![
            upsert(
                cid(&cb, 2),
                "songs",
                &xa,
                Some(va),
                json!({"title": "mine now", "owner": "bob"}),
            ),
            upsert(
                cid(&cb, 3),
                "songs",
                &xa,
                None,
                json!({"title": "planted", "owner": "bob"}),
            ),
            upsert(
                cid(&cb, 4),
                "songs",
                &new_id(),
                None,
                json!({"title": "gift", "owner": "alice"}),
            ),
            upsert(
                cid(&cb, 5),
                "songs",
                &xb,
                Some(va + 1),
                json!({"title": "moved", "owner": "alice"}),
            ),
        ])
        .await
        .unwrap();
    for (i, o) in out.iter().enumerate() {
        assert!(
            !matches!(o, PushOutcome::Applied { .. }),
            "{i}: bob wrote: {o:?}"
        );
    }
    // bob's delete of alice's row changes nothing on the server
    bob.push(vec![delete(cid(&cb, 6), "songs", &xa, Some(va))])
        .await
        .unwrap();
    let st = alice
        .fetch("songs", &xa)
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(
        (st.version.0, st.fields.unwrap()["title"].clone()),
        (va, json!("alice's"))
    );
    // The idempotency memory answers only its own role: bob replaying alice's
    // change id for her record is not told it was applied.
    let o = &bob
        .push(vec![upsert(
            cid(&ca, 1),
            "songs",
            &xa,
            None,
            json!({"title": "x", "owner": "bob"}),
        )])
        .await
        .unwrap()[0];
    assert!(!matches!(o, PushOutcome::Applied { .. }), "{o:?}");
    // tombstones: alice deletes hers; bob never receives the tombstone.
    let wm_b = bob
        .pull(Watermark(0), 100, PullMode::Resync)
        .await
        .unwrap()
        .watermark;
    let d = applied(
        &alice
            .push(vec![delete(cid(&ca, 3), "songs", &xa, Some(va))])
            .await
            .unwrap()[0],
    );
    let pb = bob.pull(wm_b, 100, PullMode::Incremental).await.unwrap();
    assert!(pb.changes.is_empty(), "bob got {:?}", pb.changes);
    let pa = alice
        .pull(Watermark(va), 100, PullMode::Incremental)
        .await
        .unwrap();
    assert!(pa
        .changes
        .iter()
        .any(|c| c.id == xa && c.state.fields.is_none() && c.state.version.0 == d));
    // A record leaving a user's view reaches them as a tombstone: the shared one
    // taken by alice (allowed: it had no owner) leaves bob's view.
    let vs = all
        .changes
        .iter()
        .find(|c| c.id == shared)
        .unwrap()
        .state
        .version
        .0;
    applied(
        &alice
            .push(vec![upsert(
                cid(&ca, 4),
                "songs",
                &shared,
                Some(vs),
                json!({"title": "mine", "owner": "alice"}),
            )])
            .await
            .unwrap()[0],
    );
    let pb = bob.pull(wm_b, 100, PullMode::Incremental).await.unwrap();
    assert_eq!(pb.changes.len(), 1);
    assert_eq!(
        (pb.changes[0].id.clone(), pb.changes[0].state.fields.clone()),
        (shared.clone(), None)
    );
    let pa = alice
        .pull(Watermark(d), 100, PullMode::Incremental)
        .await
        .unwrap();
    assert!(
        pa.changes.iter().all(|c| c.state.fields.is_some()),
        "alice sees the live row, not the tombstone"
    );
    // Plain SQL as bob: RLS hides alice's rows and tombstones, and the memory.
    let sql_b = s
        .sql_as("bob", postgres_remote::harness::USER_PASSWORD)
        .await;
    let n: i64 = sql_b
        .query_one("SELECT count(*) FROM songs WHERE owner = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = sql_b
        .query_one(
            "SELECT count(*) FROM tidemark.tombstones WHERE owner = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = sql_b
        .query_one(
            "SELECT count(*) FROM tidemark.applied WHERE writer <> 'bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert!(
        sql_b
            .execute("UPDATE tidemark.head SET seq = 0", &[])
            .await
            .is_err(),
        "no user moves the head"
    );
    assert!(sql_b.execute("INSERT INTO tidemark.tombstones (collection, id, owner, seq) VALUES ('songs', 'x', 'alice', 1)", &[]).await.is_err(), "no user plants tombstones");
    assert!(
        sql_b
            .query("SELECT tidemark.compact('0 s')", &[])
            .await
            .is_err(),
        "no user compacts"
    );
    let n = sql_b
        .execute("UPDATE songs SET title = 'sql' WHERE owner = 'alice'", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    // collections: a table bob may not read is not listed, nor pulled.
    s.sql()
        .await
        .batch_execute("CREATE TABLE secrets (id text PRIMARY KEY, v text)")
        .await
        .unwrap();
    admin.enable_sync("secrets", None).await.unwrap();
    s.sql().await.batch_execute("REVOKE ALL ON secrets FROM tidemark_sync; INSERT INTO secrets VALUES ('aaaaaaaaaaaaaaa', 'x')").await.unwrap();
    let cols = bob.collections().await.unwrap().unwrap();
    assert!(
        cols.contains("songs") && !cols.contains("secrets"),
        "{cols:?}"
    );
    assert!(!bob.counts().await.unwrap().unwrap().contains_key("secrets"));
    let p = bob.pull(Watermark(0), 100, PullMode::Resync).await.unwrap();
    assert!(p.changes.iter().all(|c| c.collection != "secrets"));
    assert!(admin
        .collections()
        .await
        .unwrap()
        .unwrap()
        .contains("secrets"));
    // NOTIFY: bob's listener is woken by alice's commit but learns nothing else;
    // the payload is empty.
    let mut hints = bob.subscribe();
    tokio::time::timeout(std::time::Duration::from_secs(20), hints.next())
        .await
        .expect("connect hint");
    alice
        .push(vec![upsert(
            cid(&ca, 5),
            "songs",
            &new_id(),
            None,
            json!({"title": "secret", "owner": "alice"}),
        )])
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), hints.next())
        .await
        .expect("hint");
}
