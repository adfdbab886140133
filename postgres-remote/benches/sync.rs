//! Push and first pull against a real PostgreSQL, each next to its baseline in the
//! same run: push of 10k new records (10 batches of 1000) vs a raw multi-row INSERT
//! of the same rows (10 statements of 1000 rows, into the same synced table and
//! into a table without the trigger); first pull of 100k records (pages of 1000)
//! vs one plain SELECT of the same rows.
//!
//! `cargo bench -p postgres-remote --bench sync` (repetitions:
//! `TIDEMARK_BENCH_REPS`, default 3; the median is printed).

use std::time::{Duration, Instant};

use postgres_remote::harness::TestServer;
use serde_json::json;
use sync_traits::{new_id, ChangeId, Op, PullMode, PushChange, RemoteStore, Watermark};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::var("TIDEMARK_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let s = TestServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let admin = s.admin().await;
        let sql = s.sql().await;
        sql.batch_execute(
            "CREATE TABLE songs (id text PRIMARY KEY, title text, n int, owner text);
             CREATE TABLE plain (id text PRIMARY KEY, title text, n int, owner text);
             CREATE TABLE big (id text PRIMARY KEY, title text, n int, owner text);",
        )
        .await
        .expect("tables");
        admin.enable_sync("songs", Some("owner")).await.expect("enable");
        let client = new_id();
        let mut counter = 0u64;
        let (mut push_t, mut raw_t, mut plain_t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let batches: Vec<Vec<PushChange>> = (0..10)
                .map(|_| {
                    (0..1000)
                        .map(|i| {
                            counter += 1;
                            PushChange {
                                change_id: ChangeId { client: client.clone(), n: counter },
                                collection: "songs".into(),
                                id: new_id(),
                                base: None,
                                op: Op::Upsert(
                                    json!({"title": format!("song {i}"), "n": i, "owner": "alice"})
                                        .as_object()
                                        .cloned()
                                        .unwrap_or_default(),
                                ),
                            }
                        })
                        .collect()
                })
                .collect();
            let t = Instant::now();
            for b in batches {
                let out = admin.push(b).await.expect("push");
                assert_eq!(out.len(), 1000);
            }
            push_t.push(t.elapsed());
            for (table, times) in [("songs", &mut raw_t), ("plain", &mut plain_t)] {
                let rows: Vec<Vec<String>> = (0..10)
                    .map(|_| (0..1000).map(|_| new_id().to_string()).collect())
                    .collect();
                let titles: Vec<String> = (0..1000).map(|i| format!("song {i}")).collect();
                let ns: Vec<i32> = (0..1000).collect();
                let stmt = format!(
                    "INSERT INTO {table} (id, title, n, owner)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int[]), LATERAL (SELECT 'alice') o"
                );
                let t = Instant::now();
                for ids in rows {
                    sql.execute(&stmt, &[&ids, &titles, &ns]).await.expect("insert");
                }
                times.push(t.elapsed());
            }
        }
        let (p, r, q) = (median(push_t), median(raw_t), median(plain_t));
        println!("push 10k new records (10 x 1000): {p:?}");
        println!("raw multi-row INSERT, same synced table (trigger runs): {r:?}  -> push is {:.2}x", p.as_secs_f64() / r.as_secs_f64());
        println!("raw multi-row INSERT, table without trigger: {q:?}  -> push is {:.2}x", p.as_secs_f64() / q.as_secs_f64());

        // First pull of 100k records.
        sql.batch_execute(
            "INSERT INTO big (id, title, n, owner)
             SELECT substr(md5(i::text), 1, 15), 'song ' || i, i, 'alice' FROM generate_series(1, 100000) i;",
        )
        .await
        .expect("seed");
        admin.enable_sync("big", Some("owner")).await.expect("enable big");
        sql.batch_execute("VACUUM ANALYZE big").await.expect("vacuum");
        let (mut pull_t, mut select_t) = (Vec::new(), Vec::new());
        let head = admin.head().await.expect("head");
        for _ in 0..reps {
            let t = Instant::now();
            let mut wm = Watermark(0);
            let mut n = 0;
            loop {
                let page = admin.pull(wm, 1000, PullMode::Resync).await.expect("pull");
                n += page.changes.iter().filter(|c| c.collection == "big").count();
                wm = page.watermark;
                if !page.more {
                    break;
                }
            }
            pull_t.push(t.elapsed());
            assert_eq!(n, 100_000);
            assert_eq!(wm, head);
            let t = Instant::now();
            let rows = sql
                .query("SELECT id, title, n, owner FROM big", &[])
                .await
                .expect("select");
            let mut bytes = 0usize;
            for r in &rows {
                let (id, title, n, owner): (String, String, i32, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
                bytes += id.len() + title.len() + owner.len() + n as usize % 2;
            }
            select_t.push(t.elapsed());
            assert_eq!(rows.len(), 100_000);
            assert!(bytes > 0);
        }
        let (p, q) = (median(pull_t), median(select_t));
        println!("first pull of 100k records (pages of 1000, other tables included): {p:?}");
        println!("plain SELECT of the same 100k rows: {q:?}  -> pull is {:.2}x", p.as_secs_f64() / q.as_secs_f64());
    });
}
