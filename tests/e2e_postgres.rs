//! End to end over a real PostgreSQL: `SyncEngine` with real stores (SQLite file,
//! sled) through `postgres_remote` — offline edits with deletes and a conflict, a
//! device past the retention horizon, two users isolated by row level security,
//! and the server killed with SIGKILL in the middle of a large push.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use sync_traits::SyncStore;

use postgres_remote::harness::{TestServer, USER_PASSWORD};
use postgres_remote::PostgresRemote;
use serde_json::json;
use sync_traits::{
    new_id, Fields, LocalStore, Op, PullMode, Record, RecordId, RemoteStore, Resolution,
    RetryPolicy, ServerWins, SyncConfig, SyncEngine, SyncEvent, Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

fn song(title: &str, order: i64, owner: &str) -> Fields {
    json!({"title": title, "artist": "x", "order": order, "owner": owner})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn friend(name: &str, owner: &str) -> Fields {
    json!({"name": name, "owner": owner})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn fast() -> SyncConfig {
    SyncConfig {
        retry: RetryPolicy::immediate(2),
        ..SyncConfig::default()
    }
}

/// A server with tidemark installed, the sample schema's `songs` and `friends`
/// synced with row level security on `owner`, and the login roles `users`.
async fn server(users: &[&str]) -> (TestServer, PostgresRemote) {
    let srv = TestServer::start();
    let admin = srv.admin().await;
    srv.sql()
        .await
        .batch_execute(
            "CREATE TABLE songs (id text PRIMARY KEY, title text, artist text, \"order\" bigint, owner text);
             CREATE TABLE friends (id text PRIMARY KEY, name text, owner text);",
        )
        .await
        .expect("create tables");
    for t in ["songs", "friends"] {
        admin
            .enable_sync(t, Some("owner"))
            .await
            .expect("enable_sync");
    }
    for u in users {
        srv.create_user(u).await;
    }
    (srv, admin)
}

/// One collection of a local store, sorted by id.
async fn local_list<L: LocalStore>(s: &L, collection: &str) -> Vec<Record> {
    let mut v = s.list(collection).await.unwrap();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// One collection as the remote's caller sees it on the server, sorted by id.
async fn server_list(r: &PostgresRemote, collection: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut wm = Watermark(0);
    for _ in 0..100_000 {
        let page = r.pull(wm, 1000, PullMode::Resync).await.unwrap();
        out.extend(
            page.changes
                .into_iter()
                .filter(|c| c.collection == collection)
                .filter_map(|c| c.state.fields.map(|f| Record::new(c.collection, c.id, f))),
        );
        wm = page.watermark;
        if !page.more {
            out.sort_by(|a, b| a.id.cmp(&b.id));
            return out;
        }
    }
    panic!("pull did not finish");
}

async fn edit<L: LocalStore>(
    s: &L,
    collection: &str,
    id: &RecordId,
    field: &str,
    v: serde_json::Value,
) {
    let mut f = s.get(collection, id).await.unwrap().unwrap().fields;
    f.insert(field.into(), v);
    s.put(Record::new(collection, id.clone(), f)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_on_sqlite_and_sled_converge_with_deletes_and_a_reported_conflict() {
    let t0 = Instant::now();
    let user = "e2euser00000000";
    let (srv, _admin) = server(&[user]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(fast());
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(fast())
    .with_policy(ServerWins);
    let mut b_events = b.subscribe();

    // Shared starting point: four songs and a friend, made on A, synced to both.
    let s: Vec<RecordId> = (0..4).map(|_| new_id()).collect();
    for (i, id) in s.iter().enumerate() {
        a.local()
            .put(Record::new(
                "songs",
                id.clone(),
                song(&format!("s{i}"), i as i64, user),
            ))
            .await
            .unwrap();
    }
    let f1 = new_id();
    a.local()
        .put(Record::new("friends", f1.clone(), friend("ann", user)))
        .await
        .unwrap();
    assert_eq!(a.sync().await.unwrap().pushed, 5);
    let r = b.sync().await.unwrap();
    assert_eq!(r.applied, 5, "{r:?}");
    assert_eq!(local_list(b.local(), "songs").await.len(), 4);

    // Offline on A: edit s0.title (the contested field), edit s1.order, delete s2,
    // create-then-edit a new song, create a friend.
    edit(a.local(), "songs", &s[0], "title", json!("s0 from A")).await;
    edit(a.local(), "songs", &s[1], "order", json!(11)).await;
    assert!(a.local().delete("songs", &s[2]).await.unwrap());
    let a_new = new_id();
    a.local()
        .put(Record::new(
            "songs",
            a_new.clone(),
            song("a draft", 20, user),
        ))
        .await
        .unwrap();
    edit(a.local(), "songs", &a_new, "title", json!("a final")).await;
    let a_friend = new_id();
    a.local()
        .put(Record::new(
            "friends",
            a_friend.clone(),
            friend("bob", user),
        ))
        .await
        .unwrap();

    // Offline on B: the same field of s0, delete s3, create-then-edit a new song,
    // rename the friend.
    edit(b.local(), "songs", &s[0], "title", json!("s0 from B")).await;
    assert!(b.local().delete("songs", &s[3]).await.unwrap());
    let b_new = new_id();
    b.local()
        .put(Record::new(
            "songs",
            b_new.clone(),
            song("b draft", 30, user),
        ))
        .await
        .unwrap();
    edit(b.local(), "songs", &b_new, "order", json!(31)).await;
    edit(b.local(), "friends", &f1, "name", json!("ann (B)")).await;
    assert_eq!(a.local().pending_count().await.unwrap(), 5);
    assert_eq!(b.local().pending_count().await.unwrap(), 4);

    // A reaches the server first; B meets A's title and, under ServerWins, takes it.
    let ra = a.sync().await.unwrap();
    assert_eq!((ra.pushed, ra.conflicts), (5, 0), "{ra:?}");
    let rb = b.sync().await.unwrap();
    assert_eq!(rb.conflicts, 1, "{rb:?}");
    assert_eq!(rb.pushed, 3, "{rb:?}");
    assert_eq!(rb.remaining, 0, "{rb:?}");
    let conflicts: Vec<SyncEvent> = std::iter::from_fn(|| b_events.try_recv().ok())
        .filter(|e| matches!(e, SyncEvent::Conflict { .. }))
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let SyncEvent::Conflict {
        local,
        server,
        resolution,
    } = &conflicts[0]
    else {
        unreachable!()
    };
    assert_eq!((local.collection.as_str(), &local.id), ("songs", &s[0]));
    assert_eq!(resolution, &Resolution::TakeServer);
    match &local.op {
        Op::Upsert(f) => assert_eq!(f["title"], "s0 from B", "the app gets the lost edit"),
        op => panic!("expected an upsert, got {op:?}"),
    }
    assert_eq!(server.fields.as_ref().unwrap()["title"], "s0 from A");
    assert_eq!(b.local().conflicts().await.unwrap().len(), 1, "persisted");

    let ra = a.sync().await.unwrap();
    assert_eq!((ra.conflicts, ra.remaining), (0, 0), "{ra:?}");
    let rb = b.sync().await.unwrap();
    assert_eq!((rb.conflicts, rb.remaining, rb.pushed), (0, 0, 0), "{rb:?}");

    for collection in ["songs", "friends"] {
        let la = local_list(a.local(), collection).await;
        let lb = local_list(b.local(), collection).await;
        let on_server = server_list(a.remote(), collection).await;
        assert_eq!(la, lb, "{collection}: SQLite and sled devices differ");
        assert_eq!(
            la, on_server,
            "{collection}: devices differ from the server"
        );
    }
    let songs = local_list(a.local(), "songs").await;
    let by_id = |id: &RecordId| songs.iter().find(|r| &r.id == id).map(|r| &r.fields);
    assert_eq!(songs.len(), 4, "s0, s1, and the two new songs: {songs:?}");
    assert_eq!(by_id(&s[0]).unwrap()["title"], "s0 from A", "ServerWins");
    assert_eq!(by_id(&s[1]).unwrap()["order"], 11);
    assert!(
        by_id(&s[2]).is_none() && by_id(&s[3]).is_none(),
        "both deletes reached everyone"
    );
    assert_eq!(by_id(&a_new).unwrap()["title"], "a final");
    assert_eq!(by_id(&a_new).unwrap()["order"], 20);
    assert_eq!(by_id(&b_new).unwrap()["title"], "b draft");
    assert_eq!(by_id(&b_new).unwrap()["order"], 31);
    let friends = local_list(b.local(), "friends").await;
    assert_eq!(friends.len(), 2);
    assert_eq!(
        friends.iter().find(|r| r.id == f1).unwrap().fields["name"],
        "ann (B)"
    );
    assert!(friends.iter().any(|r| r.id == a_friend));
    // The deletes are tombstones on the server, not just missing rows.
    let sql = srv.sql().await;
    let stones: i64 = sql
        .query_one(
            "SELECT count(*) FROM tidemark.tombstones WHERE collection = 'songs' AND id = ANY($1)",
            &[&vec![s[2].as_str(), s[3].as_str()]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stones, 2);
    eprintln!("offline edits scenario: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_past_the_horizon_resyncs_and_keeps_its_outbox() {
    let t0 = Instant::now();
    let user = "horizon00000000";
    let (srv, admin) = server(&[user]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(fast());
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(fast());

    let (keep, doomed) = (new_id(), new_id());
    for (id, title) in [(&keep, "keep"), (&doomed, "doomed")] {
        a.local()
            .put(Record::new("songs", id.clone(), song(title, 1, user)))
            .await
            .unwrap();
    }
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert!(b.local().get("songs", &doomed).await.unwrap().is_some());
    let b_wm = b.local().sync_state().await.unwrap().watermark;

    // B is offline and writes; A deletes a record both had; the server compacts the
    // tombstone, moving its horizon past B's watermark.
    let offline = new_id();
    b.local()
        .put(Record::new(
            "songs",
            offline.clone(),
            song("written offline", 7, user),
        ))
        .await
        .unwrap();
    assert!(a.local().delete("songs", &doomed).await.unwrap());
    a.sync().await.unwrap();
    let horizon = admin.compact(Duration::ZERO).await.unwrap();
    assert!(
        horizon > b_wm,
        "horizon {horizon:?} must pass B's watermark {b_wm:?}"
    );
    assert!(matches!(
        b.remote().pull(b_wm, 10, PullMode::Incremental).await,
        Err(sync_traits::RemoteError::WatermarkExpired { .. })
    ));

    let mut events = b.subscribe();
    let r = b.sync().await.unwrap();
    assert!(r.resynced, "{r:?}");
    assert_eq!(
        (r.pushed, r.remaining),
        (1, 0),
        "the outbox survived the resync: {r:?}"
    );
    let evs: Vec<SyncEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(evs.contains(&SyncEvent::ResyncStarted), "{evs:?}");
    assert!(
        evs.contains(&SyncEvent::ResyncFinished { removed: 1 }),
        "the deleted record is removed by the resync: {evs:?}"
    );
    assert!(b.local().get("songs", &doomed).await.unwrap().is_none());
    assert!(b.local().sync_state().await.unwrap().watermark >= horizon);

    a.sync().await.unwrap();
    let on_a = a.local().get("songs", &offline).await.unwrap();
    assert_eq!(on_a.unwrap().fields["title"], "written offline");
    for collection in ["songs", "friends"] {
        let la = local_list(a.local(), collection).await;
        assert_eq!(la, local_list(b.local(), collection).await, "{collection}");
        assert_eq!(
            la,
            server_list(a.remote(), collection).await,
            "{collection}"
        );
    }
    let ids: BTreeSet<RecordId> = local_list(b.local(), "songs")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, BTreeSet::from([keep, offline]));
    // A later sync on B is incremental again.
    assert!(!b.sync().await.unwrap().resynced);
    eprintln!("horizon scenario: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_receives_another_users_rows_or_tombstones() {
    let (alice, bob) = ("alice0000000000", "bob000000000000");
    let (srv, _admin) = server(&[alice, bob]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).unwrap(),
        srv.user(alice).await,
    )
    .with_config(fast());
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).unwrap(),
        srv.user(bob).await,
    )
    .with_config(fast());

    // Bob writes three songs and a friend, then deletes one song and edits another.
    let bs: Vec<RecordId> = (0..3).map(|_| new_id()).collect();
    for (i, id) in bs.iter().enumerate() {
        b.local()
            .put(Record::new(
                "songs",
                id.clone(),
                song(&format!("b{i}"), i as i64, bob),
            ))
            .await
            .unwrap();
    }
    let bf = new_id();
    b.local()
        .put(Record::new("friends", bf.clone(), friend("bob's", bob)))
        .await
        .unwrap();
    assert_eq!(b.sync().await.unwrap().pushed, 4);
    assert!(b.local().delete("songs", &bs[0]).await.unwrap());
    edit(b.local(), "songs", &bs[1], "title", json!("b1 edited")).await;
    assert_eq!(b.sync().await.unwrap().pushed, 2);

    // Alice's device writes her own and syncs from zero: it sees only hers.
    let (xa, fa) = (new_id(), new_id());
    a.local()
        .put(Record::new("songs", xa.clone(), song("mine", 1, alice)))
        .await
        .unwrap();
    a.local()
        .put(Record::new("friends", fa.clone(), friend("alice's", alice)))
        .await
        .unwrap();
    let mut events = a.subscribe();
    let ra = a.sync().await.unwrap();
    assert_eq!(
        (ra.pushed, ra.pulled, ra.rejected),
        (2, 2, 0),
        "only its own two: {ra:?}"
    );
    assert!(
        std::iter::from_fn(|| events.try_recv().ok()).all(|e| !matches!(
            e,
            SyncEvent::Conflict { .. } | SyncEvent::ResyncFinished { removed: 1.. }
        )),
        "nothing of bob's reached alice's engine"
    );
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    let ids = |v: Vec<Record>| v.into_iter().map(|r| r.id).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(local_list(a.local(), "songs").await),
        BTreeSet::from([xa.clone()])
    );
    assert_eq!(
        ids(local_list(a.local(), "friends").await),
        BTreeSet::from([fa.clone()])
    );
    assert_eq!(
        ids(local_list(b.local(), "songs").await),
        BTreeSet::from([bs[1].clone(), bs[2].clone()])
    );
    assert_eq!(
        ids(local_list(b.local(), "friends").await),
        BTreeSet::from([bf.clone()])
    );

    // What alice's role is served, changes and tombstones alike, from zero.
    let mut wm = Watermark(0);
    let mut served = BTreeSet::new();
    for _ in 0..1000 {
        let page = a.remote().pull(wm, 2, PullMode::Incremental).await.unwrap();
        served.extend(page.changes.into_iter().map(|c| c.id));
        wm = page.watermark;
        if !page.more {
            break;
        }
    }
    assert_eq!(served, BTreeSet::from([xa.clone(), fa.clone()]));
    // Bob's tombstone exists on the server, and alice's role cannot read it.
    let as_alice = srv.sql_as(alice, USER_PASSWORD).await;
    let seen: i64 = as_alice
        .query_one("SELECT count(*) FROM tidemark.tombstones", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    let all: i64 = srv
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM tidemark.tombstones WHERE id = $1",
            &[&bs[0].as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 1);
    assert!(a.remote().fetch("songs", &bs[1]).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_push_and_restarted_loses_nothing_and_duplicates_nothing() {
    const N: usize = 2000;
    const BATCH: usize = 100;
    const KILL_AFTER: usize = 300;
    let t0 = Instant::now();
    let user = "killuser0000000";
    let (mut srv, watcher) = server(&[user]).await;
    // Commits reach the WAL before they are acknowledged (the harness turns that
    // off for speed); a killed server then keeps every acknowledged batch.
    srv.sql()
        .await
        .batch_execute("ALTER DATABASE tidemark_test SET synchronous_commit = on")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = SyncConfig {
        push_batch: BATCH,
        retry: RetryPolicy::immediate(6),
        ..SyncConfig::default()
    };
    let d1 = SyncEngine::new(
        SqliteStore::open(dir.path().join("d1.sqlite"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(config.clone());
    let mut ids = BTreeSet::new();
    for i in 0..N {
        let id = new_id();
        d1.local()
            .put(Record::new(
                "songs",
                id.clone(),
                song(&format!("s{i}"), i as i64, user),
            ))
            .await
            .unwrap();
        ids.insert(id);
    }
    assert_eq!(d1.local().pending_count().await.unwrap(), N);

    // Kill the server once a few batches are acknowledged and the server has
    // committed the next one: most often before the device could acknowledge it, so
    // the server holds changes the device still has in its outbox.
    let mut events = d1.subscribe();
    let killer = async {
        let seen = loop {
            match events.recv().await {
                Ok(SyncEvent::PushProgress { pushed, .. }) if pushed >= KILL_AFTER => break pushed,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended before the kill: {e}"),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while (watcher.head().await.unwrap().0 as usize) <= seen {
            assert!(
                Instant::now() < deadline,
                "the next batch never reached the server"
            );
        }
        srv.kill9();
    };
    let (res, ()) = tokio::join!(d1.sync(), killer);
    let err = res.expect_err("the sync cannot finish without its server");
    assert!(
        err.is_transient(),
        "a dead server is a transient error: {err}"
    );
    let pending = d1.local().pending_count().await.unwrap();
    let acked = N - pending;
    assert!(
        (KILL_AFTER..N).contains(&acked),
        "acked {acked}, pending {pending}"
    );
    assert_eq!(local_list(d1.local(), "songs").await.len(), N);

    srv.restart();
    let sql = srv.sql().await;
    let applied: i64 = sql
        .query_one("SELECT count(*) FROM songs", &[])
        .await
        .unwrap()
        .get(0);
    let applied = applied as usize;
    assert!(
        (acked..=acked + BATCH).contains(&applied),
        "server kept {applied}, device saw {acked} acknowledged"
    );

    // The remote's pooled connections died with the server; a failed call closes
    // its connection and the engine's retry opens a new one.
    let r = d1.sync().await.unwrap();
    assert_eq!(r.remaining, 0, "{r:?}");
    assert_eq!(
        r.pushed, pending,
        "every unacknowledged create settles once: {r:?}"
    );
    assert_eq!(r.conflicts, 0, "{r:?}");
    assert_eq!(d1.local().pending_count().await.unwrap(), 0);

    // On the server, by SQL: every record once, with its values, one seq each
    // (a create applied twice would have taken a second seq), one change id each,
    // and one idempotency entry per record.
    let rows = sql
        .query(
            "SELECT id, title, \"order\", owner, tm_seq, tm_cid FROM songs ORDER BY tm_seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), N);
    let local: std::collections::BTreeMap<RecordId, Record> = local_list(d1.local(), "songs")
        .await
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut cids = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let id: String = row.get(0);
        let rec = local
            .get(&RecordId::parse(&id).expect("an id"))
            .expect("a record the device wrote");
        let title: String = row.get(1);
        let order: i64 = row.get(2);
        let owner: String = row.get(3);
        let seq: i64 = row.get(4);
        let cid: Option<String> = row.get(5);
        assert_eq!(rec.fields["title"], json!(title), "{id}");
        assert_eq!(rec.fields["order"], json!(order), "{id}");
        assert_eq!(owner, user);
        assert_eq!(seq, i as i64 + 1, "seqs 1..=N, one per record");
        assert!(
            cids.insert(cid.expect("a change id")),
            "change ids are distinct"
        );
    }
    assert_eq!(watcher.head().await.unwrap(), Watermark(N as u64));
    let memory = sql
        .query_one(
            "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE a.version = s.tm_seq)
             FROM tidemark.applied a JOIN songs s USING (id) WHERE a.collection = 'songs'",
            &[],
        )
        .await
        .unwrap();
    let (entries, distinct, matching): (i64, i64, i64) =
        (memory.get(0), memory.get(1), memory.get(2));
    assert_eq!(
        (entries, distinct, matching),
        (N as i64, N as i64, N as i64)
    );

    // A second device pulling everything sees exactly the N records, each once.
    let d2 = SyncEngine::new(
        SledStore::open(dir.path().join("d2.sled"), Schema::sample()).unwrap(),
        srv.user(user).await,
    )
    .with_config(config);
    let r2 = d2.sync().await.unwrap();
    assert_eq!(r2.applied, N, "{r2:?}");
    let l2 = local_list(d2.local(), "songs").await;
    assert_eq!(l2.len(), N);
    assert_eq!(l2, local_list(d1.local(), "songs").await);
    assert_eq!(
        l2.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>(),
        ids
    );
    eprintln!(
        "kill -9 mid-push: {acked} acked before the kill, server kept {applied}; total {:?}",
        t0.elapsed()
    );
}
