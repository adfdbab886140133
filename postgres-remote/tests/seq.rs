//! The change sequence under concurrent writers: unique, gap-free, in commit
//! order, and a poller that runs while they write never misses a change.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use postgres_remote::PostgresRemote;
use serde_json::json;
use sync_traits::{new_id, PullMode, PushOutcome, RemoteStore, Watermark};

/// Writers through the client (batches, several connections) and through plain SQL
/// (multi-row transactions, some rolled back), all at once, inserting only: then
/// every seq from 1 to head belongs to exactly one row. Meanwhile a checker reads,
/// in one snapshot, the head and how many rows have a seq at or below it: commit
/// order equals seq order exactly when that count always equals the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_are_unique_gap_free_and_commit_ordered() {
    let (s, admin) = server().await;
    let conn = s.admin_conn_str();
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let sql = s.sql().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) || checks < 10 {
                let row = sql
                    .query_one(
                        "SELECT h.seq, (SELECT count(*) FROM notes n WHERE n.tm_seq <= h.seq)
                         FROM tidemark.head h",
                        &[],
                    )
                    .await
                    .expect("check");
                let (head, below): (i64, i64) = (row.get(0), row.get(1));
                assert_eq!(head, below, "a seq at or below the head is not visible yet");
                checks += 1;
            }
            checks
        })
    };
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let conn = conn.clone();
        writers.push(tokio::spawn(async move {
            let r = PostgresRemote::connect(&conn).await.expect("connect");
            let client = new_id();
            let mut n = 0;
            for _ in 0..15 {
                let batch: Vec<_> = (0..8)
                    .map(|_| {
                        n += 1;
                        upsert(
                            cid(&client, n),
                            "notes",
                            &new_id(),
                            None,
                            json!({"body": format!("w{w}")}),
                        )
                    })
                    .collect();
                for o in r.push(batch).await.expect("push") {
                    assert!(matches!(o, PushOutcome::Applied { .. }), "{o:?}");
                }
            }
            15 * 8
        }));
    }
    for w in 0..2 {
        let sql = s.sql().await;
        writers.push(tokio::spawn(async move {
            let mut rows = 0;
            for t in 0..20 {
                let ids: Vec<String> = (0..5).map(|_| new_id().to_string()).collect();
                let mut stmt = String::from("BEGIN;");
                for id in &ids {
                    stmt.push_str(&format!(
                        "INSERT INTO notes (id, body) VALUES ('{id}', 'sql{w}');"
                    ));
                }
                // Every third transaction rolls back: its seqs are given back.
                stmt.push_str(if t % 3 == 0 { "ROLLBACK;" } else { "COMMIT;" });
                sql.batch_execute(&stmt).await.expect("sql writer");
                if t % 3 != 0 {
                    rows += 5;
                }
            }
            rows
        }));
    }
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer");
    }
    stop.store(true, Ordering::SeqCst);
    let checks = checker.await.expect("checker");
    println!("{checks} consistency checks while writing");
    let head = admin.head().await.unwrap();
    assert_eq!(
        head,
        Watermark(total as u64),
        "gap-free: one seq per committed row"
    );
    let seqs: Vec<i64> = s
        .sql()
        .await
        .query("SELECT tm_seq FROM notes ORDER BY tm_seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=total as i64).collect::<Vec<_>>(),
        "unique and gap-free"
    );
}

/// Writers create, update and delete (through the client and plain SQL) while a
/// poller pulls incrementally in small pages; after the writers stop and one last
/// pull, the poller's copy equals the table: no change was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_never_misses_a_change_while_writers_run() {
    let (s, admin) = server().await;
    let mut rng = Rng::from_env("a_poller_never_misses_a_change_while_writers_run");
    let conn = s.admin_conn_str();
    let ids: Vec<_> = (0..40).map(|_| new_id()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let r = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut copy: HashMap<String, serde_json::Value> = HashMap::new();
            let mut wm = Watermark(0);
            let mut pulls = 0;
            loop {
                let last_round = stop.load(Ordering::SeqCst);
                loop {
                    let mode = if wm.0 == 0 {
                        PullMode::Resync
                    } else {
                        PullMode::Incremental
                    };
                    let p = r.pull(wm, 7, mode).await.expect("pull");
                    pulls += 1;
                    assert!(p.watermark >= wm, "watermark went back");
                    for c in &p.changes {
                        assert!(
                            c.state.version.0 > wm.0
                                && c.state.version <= sync_traits::Version(p.watermark.0)
                        );
                        match &c.state.fields {
                            Some(f) => copy.insert(c.id.to_string(), f["body"].clone()),
                            None => copy.remove(c.id.as_str()),
                        };
                    }
                    wm = p.watermark;
                    if !p.more {
                        break;
                    }
                }
                if last_round {
                    return (copy, pulls);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    let deadlocks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..3u64 {
        let deadlocks = deadlocks.clone();
        let conn = conn.clone();
        let ids = ids.clone();
        let seed = rng.next();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed.max(1));
            let r = PostgresRemote::connect(&conn).await.expect("connect");
            let client = new_id();
            for n in 1..=60u64 {
                let id = &ids[rng.below(ids.len() as u64) as usize];
                let cur = r
                    .fetch("notes", id)
                    .await
                    .expect("fetch")
                    .map(|s| s.version.0);
                let change = if rng.below(4) == 0 {
                    delete(cid(&client, n), "notes", id, cur)
                } else {
                    upsert(
                        cid(&client, n),
                        "notes",
                        id,
                        cur,
                        json!({"body": format!("w{w} n{n}")}),
                    )
                };
                // Racing writers conflict sometimes; that is fine here. A
                // deadlock with the SQL writer is transient: retried.
                let mut tries = 0;
                loop {
                    match r.push(vec![change.clone()]).await {
                        Ok(_) => break,
                        Err(e) if e.is_transient() && tries < 20 => {
                            tries += 1;
                            deadlocks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("push: {e}"),
                    }
                }
            }
        }));
    }
    {
        let deadlocks = deadlocks.clone();
        let sql = s.sql().await;
        let ids = ids.clone();
        let seed = rng.next();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed.max(1));
            for n in 0..60 {
                let id = ids[rng.below(ids.len() as u64) as usize].to_string();
                let stmt = match rng.below(3) {
                    0 => format!("DELETE FROM notes WHERE id = '{id}'"),
                    _ => format!(
                        "INSERT INTO notes (id, body) VALUES ('{id}', 'sql {n}')
                         ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
                    ),
                };
                // An upsert takes the head lock (BEFORE INSERT) before the row's,
                // an update the row's first: they can deadlock, and PostgreSQL
                // aborts one (40P01). Writers retry that, as any service must.
                let mut tries = 0;
                loop {
                    match sql.batch_execute(&stmt).await {
                        Ok(()) => break,
                        Err(e)
                            if e.code()
                                == Some(
                                    &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                                )
                                && tries < 20 =>
                        {
                            tries += 1;
                            deadlocks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("sql writer: {e:?}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, Ordering::SeqCst);
    let (copy, pulls) = poller.await.expect("poller");
    println!(
        "poller: {pulls} pulls; {} deadlocks retried",
        deadlocks.load(Ordering::SeqCst)
    );
    let table: HashMap<String, serde_json::Value> = s
        .sql()
        .await
        .query("SELECT id, body FROM notes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                serde_json::Value::String(r.get::<_, String>(1)),
            )
        })
        .collect();
    assert_eq!(copy, table, "the poller's copy equals the table");
}
