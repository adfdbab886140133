//! The RemoteStore contract against a real PostgreSQL: install, conditional
//! writes, exact idempotency, tombstones and compaction, rejections inside a
//! batch, plain SQL writes, hints.

mod common;

use common::*;
use serde_json::json;
use sync_traits::{new_id, PullMode, PushOutcome, RemoteError, RemoteStore, Version, Watermark};

fn applied(o: &PushOutcome) -> u64 {
    match o {
        PushOutcome::Applied { version } => version.0,
        other => panic!("expected Applied, got {other:?}"),
    }
}

#[tokio::test]
async fn install_is_idempotent_and_safe_concurrently() {
    let s = postgres_remote::harness::TestServer::start();
    let conn = s.admin_conn_str();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            postgres_remote::PostgresRemote::builder(&conn)
                .expect("config")
                .install()
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("concurrent install");
    }
    let admin = s.admin().await;
    assert_eq!(admin.install().await.expect("again"), 1);
    assert_eq!(admin.schema_version().await.expect("version"), Some(1));
    // Existing rows get distinct seqs when a table is registered.
    let sql = s.sql().await;
    sql.batch_execute("CREATE TABLE old (id text PRIMARY KEY, v int)")
        .await
        .expect("table");
    for i in 0..5 {
        sql.execute(
            "INSERT INTO old (id, v) VALUES ($1, $2)",
            &[&new_id().as_str(), &i],
        )
        .await
        .expect("insert");
    }
    admin.enable_sync("old", None).await.expect("enable");
    admin.enable_sync("old", None).await.expect("enable twice");
    let p = admin
        .pull(Watermark(0), 100, PullMode::Resync)
        .await
        .expect("pull");
    let seqs: Vec<u64> = p.changes.iter().map(|c| c.state.version.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "backfilled seqs, once");
    assert_eq!(admin.head().await.expect("head"), Watermark(5));
    // A client that speaks another protocol is refused by the server.
    let e = sql
        .query("SELECT * FROM tidemark.pull(2, 0, 10)", &[])
        .await
        .expect_err("protocol 2");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("protocol"), "{msg}");
    // Truncate would leave no tombstones: refused.
    assert!(sql.batch_execute("TRUNCATE old").await.is_err());
    // A registered table that was dropped does not break the others' sync.
    sql.batch_execute("DROP TABLE old").await.expect("drop");
    admin
        .pull(Watermark(0), 100, PullMode::Resync)
        .await
        .expect("pull without the dropped table");
    assert_eq!(
        admin.counts().await.expect("counts"),
        Some(Default::default())
    );
    assert!(admin
        .collections()
        .await
        .expect("collections")
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test]
async fn conditional_writes_and_conflicts() {
    let (_s, r) = server().await;
    let (a, b) = (new_id(), new_id());
    let x = new_id();
    let v1 = applied(
        &r.push(vec![upsert(
            cid(&a, 1),
            "songs",
            &x,
            None,
            json!({"title": "one"}),
        )])
        .await
        .unwrap()[0],
    );
    // A second create of the same id conflicts with the first, with its change id.
    match &r
        .push(vec![upsert(
            cid(&b, 1),
            "songs",
            &x,
            None,
            json!({"title": "other"}),
        )])
        .await
        .unwrap()[0]
    {
        PushOutcome::Conflict { current } => {
            assert_eq!(current.version, Version(v1));
            assert_eq!(current.fields.as_ref().unwrap()["title"], json!("one"));
            assert_eq!(current.change_id, Some(cid(&a, 1)));
        }
        o => panic!("{o:?}"),
    }
    let v2 = applied(
        &r.push(vec![upsert(
            cid(&a, 2),
            "songs",
            &x,
            Some(v1),
            json!({"title": "two"}),
        )])
        .await
        .unwrap()[0],
    );
    assert!(v2 > v1);
    match &r
        .push(vec![upsert(
            cid(&b, 2),
            "songs",
            &x,
            Some(v1),
            json!({"title": "stale"}),
        )])
        .await
        .unwrap()[0]
    {
        PushOutcome::Conflict { current } => {
            assert_eq!(current.version, Version(v2));
            assert_eq!(current.change_id, Some(cid(&a, 2)));
        }
        o => panic!("{o:?}"),
    }
    // A stale delete conflicts too; one on the current version applies.
    assert!(matches!(
        r.push(vec![delete(cid(&b, 3), "songs", &x, Some(v1))])
            .await
            .unwrap()[0],
        PushOutcome::Conflict { .. }
    ));
    let v3 = applied(
        &r.push(vec![delete(cid(&a, 3), "songs", &x, Some(v2))])
            .await
            .unwrap()[0],
    );
    // Against the tombstone: a write on an older base conflicts with the tombstone.
    match &r
        .push(vec![upsert(
            cid(&b, 4),
            "songs",
            &x,
            Some(v2),
            json!({"title": "edit"}),
        )])
        .await
        .unwrap()[0]
    {
        PushOutcome::Conflict { current } => {
            assert_eq!(current.version, Version(v3));
            assert_eq!(current.fields, None);
            assert_eq!(current.change_id, Some(cid(&a, 3)));
        }
        o => panic!("{o:?}"),
    }
    // On the tombstone's version it re-creates the record.
    let v4 = applied(
        &r.push(vec![upsert(
            cid(&b, 5),
            "songs",
            &x,
            Some(v3),
            json!({"title": "again"}),
        )])
        .await
        .unwrap()[0],
    );
    let st = r.fetch("songs", &x).await.unwrap().expect("live");
    assert_eq!((st.version, st.change_id), (Version(v4), Some(cid(&b, 5))));
    assert_eq!(st.fields.unwrap()["title"], json!("again"));
    // An upsert replaces the whole record: a field it leaves out goes to its default.
    let v5 = applied(
        &r.push(vec![upsert(
            cid(&b, 6),
            "songs",
            &x,
            Some(v4),
            json!({"n": 3}),
        )])
        .await
        .unwrap()[0],
    );
    let st = r.fetch("songs", &x).await.unwrap().expect("live");
    assert_eq!(st.version, Version(v5));
    assert_eq!(
        st.fields.unwrap(),
        f(json!({"title": null, "n": 3, "owner": null}))
    );
}

#[tokio::test]
async fn idempotency_answers_only_the_exact_change_id() {
    let (s, r) = server().await;
    let c = new_id();
    let x = new_id();
    let v = applied(
        &r.push(vec![upsert(
            cid(&c, 5),
            "songs",
            &x,
            None,
            json!({"title": "five"}),
        )])
        .await
        .unwrap()[0],
    );
    let head = r.head().await.unwrap();
    // Re-delivered: the same answer, nothing written.
    assert_eq!(
        applied(
            &r.push(vec![upsert(
                cid(&c, 5),
                "songs",
                &x,
                None,
                json!({"title": "five"})
            )])
            .await
            .unwrap()[0]
        ),
        v
    );
    assert_eq!(
        r.head().await.unwrap(),
        head,
        "a re-delivery writes nothing"
    );
    // A lower counter of the same writer (a restored store) is a fresh write: on a
    // stale base it conflicts, it is never answered as applied.
    match &r
        .push(vec![upsert(
            cid(&c, 3),
            "songs",
            &x,
            None,
            json!({"title": "three"}),
        )])
        .await
        .unwrap()[0]
    {
        PushOutcome::Conflict { current } => assert_eq!(current.change_id, Some(cid(&c, 5))),
        o => panic!("c.3 must not be Applied: {o:?}"),
    }
    // Other writes on top: c.5 is still recognised, with the version it produced.
    let other = new_id();
    let w = applied(
        &r.push(vec![upsert(
            cid(&other, 1),
            "songs",
            &x,
            Some(v),
            json!({"title": "foreign"}),
        )])
        .await
        .unwrap()[0],
    );
    assert_eq!(
        applied(
            &r.push(vec![upsert(
                cid(&c, 5),
                "songs",
                &x,
                None,
                json!({"title": "five"})
            )])
            .await
            .unwrap()[0]
        ),
        v
    );
    // c.3 on the current base is a new write and applies.
    let v3 = applied(
        &r.push(vec![upsert(
            cid(&c, 3),
            "songs",
            &x,
            Some(w),
            json!({"title": "three"}),
        )])
        .await
        .unwrap()[0],
    );
    assert!(v3 > w);
    // Now c.5 is no longer the writer's latest: not Applied.
    assert!(!matches!(
        r.push(vec![upsert(
            cid(&c, 5),
            "songs",
            &x,
            None,
            json!({"title": "five"})
        )])
        .await
        .unwrap()[0],
        PushOutcome::Applied { .. }
    ));
    // Survives delete and compaction.
    let d = applied(
        &r.push(vec![delete(cid(&c, 6), "songs", &x, Some(v3))])
            .await
            .unwrap()[0],
    );
    r.compact(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(
        applied(
            &r.push(vec![delete(cid(&c, 6), "songs", &x, Some(v3))])
                .await
                .unwrap()[0]
        ),
        d
    );
    // Each change id was applied once: one row per applied change in the memory.
    let n: i64 = s
        .sql()
        .await
        .query_one("SELECT count(*) FROM tidemark.applied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "memory: one row per (record, role, writer)");
}

#[tokio::test]
async fn tombstones_compaction_and_an_expired_watermark() {
    let (_s, r) = server().await;
    let c = new_id();
    let (x, y) = (new_id(), new_id());
    let vx = applied(
        &r.push(vec![upsert(
            cid(&c, 1),
            "songs",
            &x,
            None,
            json!({"title": "x"}),
        )])
        .await
        .unwrap()[0],
    );
    let _vy = applied(
        &r.push(vec![upsert(
            cid(&c, 2),
            "notes",
            &y,
            None,
            json!({"body": "y"}),
        )])
        .await
        .unwrap()[0],
    );
    let wm = r.head().await.unwrap();
    let d = applied(
        &r.push(vec![delete(cid(&c, 3), "songs", &x, Some(vx))])
            .await
            .unwrap()[0],
    );
    let p = r.pull(wm, 10, PullMode::Incremental).await.unwrap();
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].state.fields, None, "a tombstone");
    assert_eq!(p.changes[0].state.version, Version(d));
    assert_eq!(p.changes[0].state.change_id, Some(cid(&c, 3)));
    // A delete of a record already gone is applied (nothing to do).
    applied(
        &r.push(vec![delete(cid(&c, 4), "songs", &x, Some(d))])
            .await
            .unwrap()[0],
    );
    // Compaction drops the tombstone and raises the horizon past `wm`.
    let h = r.compact(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(h, Watermark(d));
    assert_eq!(r.horizon().await.unwrap(), h);
    match r.pull(wm, 10, PullMode::Incremental).await {
        Err(RemoteError::WatermarkExpired { since, horizon }) => {
            assert_eq!((since, horizon), (wm, h));
        }
        other => panic!("expected WatermarkExpired, got {other:?}"),
    }
    // From the horizon, from zero, or in a resync: served.
    r.pull(h, 10, PullMode::Incremental).await.unwrap();
    r.pull(Watermark(0), 10, PullMode::Incremental)
        .await
        .unwrap();
    let full = r.pull(wm, 10, PullMode::Resync).await.unwrap();
    assert!(full.changes.iter().all(|c| c.state.fields.is_some()));
    // A watermark above the head (the server restored from a backup) resyncs too.
    assert!(matches!(
        r.pull(Watermark(h.0 + 100), 10, PullMode::Incremental)
            .await,
        Err(RemoteError::WatermarkExpired { .. })
    ));
    // A write on a base the server forgot (compacted) conflicts at the horizon;
    // on the horizon it re-creates.
    match &r
        .push(vec![upsert(
            cid(&c, 5),
            "songs",
            &x,
            Some(vx),
            json!({"title": "back"}),
        )])
        .await
        .unwrap()[0]
    {
        PushOutcome::Conflict { current } => {
            assert_eq!(
                (current.version, current.fields.as_ref()),
                (Version(h.0), None)
            )
        }
        o => panic!("{o:?}"),
    }
    applied(
        &r.push(vec![upsert(
            cid(&c, 6),
            "songs",
            &x,
            Some(h.0),
            json!({"title": "back"}),
        )])
        .await
        .unwrap()[0],
    );
}

#[tokio::test]
async fn one_refused_change_does_not_fail_the_batch() {
    let (s, r) = server().await;
    let c = new_id();
    let ids: Vec<_> = (0..6).map(|_| new_id()).collect();
    let head = r.head().await.unwrap();
    let batch = vec![
        upsert(cid(&c, 1), "songs", &ids[0], None, json!({"title": "ok"})),
        upsert(cid(&c, 2), "songs", &ids[1], None, json!({"n": -1})), // CHECK
        upsert(cid(&c, 3), "songs", &ids[2], None, json!({"n": "many"})), // type
        upsert(cid(&c, 4), "songs", &ids[3], None, json!({"nope": 1})), // column
        upsert(cid(&c, 5), "nowhere", &ids[4], None, json!({})),      // collection
        upsert(
            cid(&c, 6),
            "songs",
            &ids[5],
            None,
            json!({"title": "ok too"}),
        ),
    ];
    let out = r.push(batch).await.unwrap();
    assert_eq!(out.len(), 6);
    let v0 = applied(&out[0]);
    let v5 = applied(&out[5]);
    for (i, o) in out.iter().enumerate().take(5).skip(1) {
        assert!(matches!(o, PushOutcome::Rejected(_)), "{i}: {o:?}");
    }
    match &out[3] {
        PushOutcome::Rejected(rj) => assert_eq!(
            rj.fields.get("nope").map(String::as_str),
            Some("no such column")
        ),
        o => panic!("{o:?}"),
    }
    // A change refused after its trigger ran (the CHECK) leaves a gap in the seqs
    // (its subtransaction took one); a gap is never a skip. The others take none.
    assert_eq!(v0, head.0 + 1);
    assert_eq!(v5, head.0 + 3, "one gap, for the CHECK violation");
    assert_eq!(r.head().await.unwrap(), Watermark(v5));
    // An application trigger's RAISE is a rejection of that change too.
    s.sql()
        .await
        .batch_execute(
            "CREATE FUNCTION no_bad() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.title = 'bad' THEN RAISE EXCEPTION 'bad title'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER a_no_bad BEFORE INSERT OR UPDATE ON songs FOR EACH ROW EXECUTE FUNCTION no_bad();",
        )
        .await
        .unwrap();
    let out = r
        .push(vec![
            upsert(
                cid(&c, 7),
                "songs",
                &new_id(),
                None,
                json!({"title": "bad"}),
            ),
            upsert(
                cid(&c, 8),
                "songs",
                &new_id(),
                None,
                json!({"title": "good"}),
            ),
        ])
        .await
        .unwrap();
    match &out[0] {
        PushOutcome::Rejected(rj) => assert!(rj.message.contains("bad title"), "{rj:?}"),
        o => panic!("{o:?}"),
    }
    applied(&out[1]);
    // A batch over the limit is refused whole, before anything is written.
    let big: Vec<_> = (0..1001)
        .map(|i| upsert(cid(&c, 100 + i), "songs", &new_id(), None, json!({})))
        .collect();
    assert!(matches!(r.push(big).await, Err(RemoteError::TooLarge(_))));
}

#[tokio::test]
async fn plain_sql_writes_get_seqs_and_tombstones() {
    let (s, r) = server().await;
    let sql = s.sql().await;
    let (x, y) = (new_id(), new_id());
    sql.execute(
        "INSERT INTO notes (id, body) VALUES ($1, 'by sql'), ($2, 'too')",
        &[&x.as_str(), &y.as_str()],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE notes SET body = 'changed', tm_seq = 999 WHERE id = $1",
        &[&x.as_str()],
    )
    .await
    .unwrap();
    sql.execute("DELETE FROM notes WHERE id = $1", &[&y.as_str()])
        .await
        .unwrap();
    let p = r.pull(Watermark(0), 100, PullMode::Resync).await.unwrap();
    let got: Vec<_> = p
        .changes
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.state.version.0,
                c.state.fields.as_ref().map(|f| f["body"].clone()),
                c.state.change_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (x.clone(), 3, Some(json!("changed")), None),
            (y.clone(), 4, None, None)
        ],
        "a plain write cannot choose its seq; a plain delete leaves a tombstone"
    );
    // Changing the id is a delete of the old id.
    let z = new_id();
    sql.execute(
        "UPDATE notes SET id = $1 WHERE id = $2",
        &[&z.as_str(), &x.as_str()],
    )
    .await
    .unwrap();
    let p = r
        .pull(Watermark(4), 100, PullMode::Incremental)
        .await
        .unwrap();
    assert_eq!(p.changes.len(), 2);
    assert!(p
        .changes
        .iter()
        .any(|c| c.id == x && c.state.fields.is_none()));
    assert!(p
        .changes
        .iter()
        .any(|c| c.id == z && c.state.fields.is_some()));
}

#[tokio::test]
async fn hints_arrive_for_commits_and_carry_nothing() {
    let (s, r) = server().await;
    let mut hints = r.subscribe();
    // One hint after connecting.
    tokio::time::timeout(std::time::Duration::from_secs(20), hints.next())
        .await
        .expect("first hint")
        .expect("open");
    let sql = s.sql().await;
    sql.execute(
        "INSERT INTO notes (id, body) VALUES ($1, 'x')",
        &[&new_id().as_str()],
    )
    .await
    .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), hints.next())
        .await
        .expect("hint after a commit")
        .expect("open");
    // The payload is empty: no row data or owner crosses this route.
    let rows = sql
        .query(
            "SELECT prosrc FROM pg_proc WHERE proname = 'write_songs'",
            &[],
        )
        .await
        .unwrap();
    let src: String = rows[0].get(0);
    assert!(src.contains("pg_notify('tidemark', '')"));
    assert!(
        !src.contains("pg_notify('tidemark', NEW") && !src.contains("pg_notify('tidemark', OLD")
    );
}

/// A batch of creates goes set-based; it answers exactly as the per-change path:
/// versions in order, each row with its own change id, re-deliveries recognised,
/// and one bad row makes the whole batch fall back to deciding each change alone.
#[tokio::test]
async fn a_batch_of_creates_answers_like_single_changes() {
    let (s, r) = server().await;
    let c = new_id();
    let ids: Vec<_> = (0..20).map(|_| new_id()).collect();
    let batch: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let coll = if i % 3 == 0 { "notes" } else { "songs" };
            let fields = if coll == "notes" {
                json!({"body": format!("b{i}")})
            } else {
                json!({"title": format!("t{i}"), "n": i})
            };
            upsert(cid(&c, i as u64 + 1), coll, id, None, fields)
        })
        .collect();
    let head = r.head().await.unwrap();
    let out = r.push(batch.clone()).await.unwrap();
    let versions: Vec<u64> = out.iter().map(applied).collect();
    let mut sorted = versions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ((head.0 + 1)..=(head.0 + 20)).collect::<Vec<_>>());
    for (i, id) in ids.iter().enumerate() {
        let coll = if i % 3 == 0 { "notes" } else { "songs" };
        let st = r.fetch(coll, id).await.unwrap().expect("written");
        assert_eq!(st.version.0, versions[i]);
        assert_eq!(
            st.change_id,
            Some(cid(&c, i as u64 + 1)),
            "its own change id"
        );
    }
    // Re-delivered: the same answers, nothing written.
    let again: Vec<u64> = r.push(batch).await.unwrap().iter().map(applied).collect();
    assert_eq!(again, versions);
    assert_eq!(r.head().await.unwrap(), Watermark(head.0 + 20));
    // One row breaks a CHECK: the others still apply, that one is rejected.
    let more: Vec<_> = (0..5).map(|_| new_id()).collect();
    let batch: Vec<_> = more
        .iter()
        .enumerate()
        .map(|(i, id)| {
            upsert(
                cid(&c, 100 + i as u64),
                "songs",
                id,
                None,
                json!({"n": if i == 2 { -5 } else { 1 }}),
            )
        })
        .collect();
    let out = r.push(batch).await.unwrap();
    for (i, o) in out.iter().enumerate() {
        if i == 2 {
            assert!(matches!(o, PushOutcome::Rejected(_)), "{o:?}");
        } else {
            applied(o);
        }
    }
    // Plain SQL writes after a push are not labelled with a change id.
    let sql = s.sql().await;
    let x = new_id();
    sql.execute(
        "INSERT INTO notes (id, body) VALUES ($1, 'plain')",
        &[&x.as_str()],
    )
    .await
    .unwrap();
    assert_eq!(r.fetch("notes", &x).await.unwrap().unwrap().change_id, None);
}

/// Racing writers on one base: exactly one lands, every other one is told the
/// winner's state — for updates on the same version and for creates of the same
/// new id (which meet on the primary key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_on_one_base_land_once() {
    let (s, r) = server().await;
    let x = new_id();
    let v = applied(
        &r.push(vec![upsert(
            cid(&new_id(), 1),
            "notes",
            &x,
            None,
            json!({"body": "v"}),
        )])
        .await
        .unwrap()[0],
    );
    for (label, base, id) in [("update", Some(v), x.clone()), ("create", None, new_id())] {
        let mut tasks = Vec::new();
        for w in 0..12 {
            let conn = s.admin_conn_str();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let r = postgres_remote::PostgresRemote::connect(&conn)
                    .await
                    .expect("connect");
                let c = new_id();
                let o = r
                    .push(vec![upsert(
                        cid(&c, 1),
                        "notes",
                        &id,
                        base,
                        json!({"body": format!("w{w}")}),
                    )])
                    .await
                    .expect("push");
                (c, o.into_iter().next().expect("one outcome"))
            }));
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                (c, PushOutcome::Applied { version }) => winners.push((c, version)),
                (_, PushOutcome::Conflict { current }) => losers.push(current),
                (_, o) => panic!("{label}: {o:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{label}: exactly one lands");
        let (wc, wv) = winners.pop().expect("winner");
        for l in &losers {
            assert_eq!(
                (l.version, l.change_id.clone()),
                (wv, Some(cid(&wc, 1))),
                "{label}: told the winner's state"
            );
        }
        let st = r.fetch("notes", &id).await.unwrap().expect("live");
        assert_eq!(st.version, wv);
    }
}
