//! Push and first pull against a real PostgreSQL (started by the test harness),
//! each next to its baseline in the same run (criterion):
//!
//! - `push_10k/tidemark`: 10k new records through `RemoteStore::push` (10 batches
//!   of 1000); `push_10k/raw_insert_synced`: the same rows as 10 multi-row
//!   `INSERT ... SELECT FROM unnest(...)` statements into the same synced table
//!   (tidemark's trigger runs); `push_10k/raw_insert_plain`: into a table without it.
//! - `pull_100k/tidemark`: a first pull (resync) of 100k records in pages of 1000;
//!   `pull_100k/plain_select`: one `SELECT` of the same rows, decoded;
//!   `pull_100k/select_to_jsonb`: one `SELECT to_jsonb(r)` of them, decoded into JSON
//!   maps (what the pull must deliver).
//! - `noop_pull`: a pull with nothing to do (one round trip).
//!
//! `cargo bench -p postgres-remote --bench sync`. Under `cargo test` the sizes are a
//! tenth (a smoke test).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postgres_remote::harness::TestServer;
use postgres_remote::PostgresRemote;
use serde_json::json;
use sync_traits::{new_id, ChangeId, Op, PullMode, PushChange, RecordId, RemoteStore, Watermark};

fn scaled(n: usize) -> usize {
    if std::env::args().any(|a| a == "--bench") {
        n
    } else {
        n / 10
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

struct Env {
    s: TestServer,
    admin: PostgresRemote,
    sql: tokio_postgres::Client,
}

async fn env() -> Env {
    let s = TestServer::start();
    let admin = s.admin().await;
    let sql = s.sql().await;
    sql.batch_execute(
        "CREATE TABLE songs (id text PRIMARY KEY, title text, n int, owner text);
         CREATE TABLE plain (id text PRIMARY KEY, title text, n int, owner text);
         CREATE TABLE big (id text PRIMARY KEY, title text, n int, owner text);",
    )
    .await
    .expect("tables");
    admin
        .enable_sync("songs", Some("owner"))
        .await
        .expect("enable");
    Env { s, admin, sql }
}

fn changes(n: usize, client: &RecordId, counter: &mut u64) -> Vec<PushChange> {
    (0..n)
        .map(|i| {
            *counter += 1;
            PushChange {
                change_id: ChangeId {
                    client: client.clone(),
                    n: *counter,
                },
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
}

fn push(c: &mut Criterion) {
    let rt = rt();
    let e = rt.block_on(env());
    let n = scaled(10_000);
    let client = new_id();
    let mut counter = 0;
    let mut g = c.benchmark_group("push_10k");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("tidemark", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batches: Vec<_> = (0..n / 1000)
                    .map(|_| changes(1000, &client, &mut counter))
                    .collect();
                let t = Instant::now();
                rt.block_on(async {
                    for b in batches {
                        let out = e.admin.push(b).await.expect("push");
                        assert_eq!(out.len(), 1000);
                    }
                });
                total += t.elapsed();
            }
            total
        })
    });
    for table in ["songs", "plain"] {
        let name = if table == "songs" {
            "raw_insert_synced"
        } else {
            "raw_insert_plain"
        };
        let stmt = format!(
            "INSERT INTO {table} (id, title, n, owner)
             SELECT i, t, k, 'alice' FROM unnest($1::text[], $2::text[], $3::int[]) u(i, t, k)"
        );
        let titles: Vec<String> = (0..1000).map(|i| format!("song {i}")).collect();
        let ns: Vec<i32> = (0..1000).collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ids: Vec<Vec<String>> = (0..n / 1000)
                        .map(|_| (0..1000).map(|_| new_id().to_string()).collect())
                        .collect();
                    let t = Instant::now();
                    rt.block_on(async {
                        for ids in ids {
                            e.sql
                                .execute(&stmt, &[&ids, &titles, &ns])
                                .await
                                .expect("insert");
                        }
                    });
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    drop(e.s);
}

fn pull(c: &mut Criterion) {
    let rt = rt();
    let e = rt.block_on(env());
    let n = scaled(100_000);
    rt.block_on(async {
        e.sql
            .batch_execute(&format!(
                "INSERT INTO big (id, title, n, owner)
                 SELECT substr(md5(i::text), 1, 15), 'song ' || i, i, 'alice'
                 FROM generate_series(1, {n}) i;"
            ))
            .await
            .expect("seed");
        e.admin
            .enable_sync("big", Some("owner"))
            .await
            .expect("enable");
        e.sql
            .batch_execute("VACUUM ANALYZE big")
            .await
            .expect("vacuum");
    });
    let mut g = c.benchmark_group("pull_100k");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("tidemark", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut wm = Watermark(0);
                let mut got = 0;
                loop {
                    let p = e
                        .admin
                        .pull(wm, 1000, PullMode::Resync)
                        .await
                        .expect("pull");
                    got += p.changes.len();
                    wm = p.watermark;
                    if !p.more {
                        break;
                    }
                }
                assert_eq!(got, n);
            })
        })
    });
    g.bench_function("plain_select", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rows = e
                    .sql
                    .query("SELECT id, title, n, owner FROM big", &[])
                    .await
                    .expect("select");
                let mut k = 0usize;
                for r in &rows {
                    let (id, title, x, owner): (String, String, i32, String) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    k += id.len() + title.len() + owner.len() + (x as usize & 1);
                }
                assert_eq!(rows.len(), n);
                k
            })
        })
    });
    g.bench_function("select_to_jsonb", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rows = e
                    .sql
                    .query("SELECT to_jsonb(r) FROM big r", &[])
                    .await
                    .expect("select");
                let mut k = 0usize;
                for r in &rows {
                    let v: serde_json::Value = r.get(0);
                    k += v.as_object().map_or(0, |m| m.len());
                }
                assert_eq!(rows.len(), n);
                k
            })
        })
    });
    g.finish();
    let mut g = c.benchmark_group("noop_pull");
    let head = rt.block_on(e.admin.head()).expect("head");
    g.bench_function("tidemark", |b| {
        b.iter(|| {
            rt.block_on(async {
                let p = e
                    .admin
                    .pull(head, 1000, PullMode::Incremental)
                    .await
                    .expect("pull");
                assert!(p.changes.is_empty() && !p.more);
            })
        })
    });
    g.finish();
    drop(e.s);
}

criterion_group!(benches, push, pull);
criterion_main!(benches);
