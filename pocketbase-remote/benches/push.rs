//! Push and sync costs against a real PocketBase (started by the test harness).
//!
//! - `push/batched`: 10k changes through `RemoteStore::push` (batches of the server's
//!   `maxRequests`) vs `push/one_request_per_record` (2k changes, one request each: a
//!   `/api/batch` of one, as pushes are accepted only there); compare the elements/s
//!   figures.
//! - `batch_hooks`: raw `/api/batch` of 1000 new records with and without the
//!   tidemark hooks (a server whose sample collections are not synced), as
//!   plain `POST` creates and as tidemark pushes (`PUT` + `tm_push`, plus the receipt
//!   that reads the new records' seqs).
//! - `noop_sync`: a pull with nothing to do (one round trip).
//! - `initial_pull`: 20k records pulled from zero through `RemoteStore::pull` vs just
//!   downloading the same list pages (`tm_seq` keyset, perPage 1000).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pocketbase_remote::harness::{download_list_pages, TestServer};
use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::{new_id, ChangeId, Op, PullMode, PushChange, RecordId, RemoteStore};

/// Full sizes under `cargo bench`; a tenth when `cargo test` runs the benches once
/// as a smoke test.
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
        .unwrap()
}

fn songs(n: usize, owner: &RecordId, client: &RecordId, counter: &mut u64) -> Vec<PushChange> {
    (0..n)
        .map(|i| {
            *counter += 1;
            PushChange {
                change_id: ChangeId { client: client.clone(), n: *counter },
                collection: "songs".into(),
                id: new_id(),
                base: None,
                op: Op::Upsert(
                    json!({"title": format!("song {i}"), "artist": "bench", "order": i, "owner": owner.as_str()})
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
    let srv = TestServer::start();
    let (owner, remote) = rt.block_on(async {
        let owner = srv.create_user("bench@t.io").await;
        (owner, srv.user("bench@t.io").await)
    });
    let client = new_id();
    let mut counter = 0u64;
    let http = reqwest::Client::new();
    let token = rt.block_on(remote.token()).unwrap();

    let mut g = c.benchmark_group("push");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let (n_batched, n_single) = (scaled(10_000), scaled(2_000));
    g.throughput(Throughput::Elements(n_batched as u64));
    g.bench_function("batched", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = songs(n_batched, &owner, &client, &mut counter);
                let t = Instant::now();
                let out = rt.block_on(remote.push(batch)).unwrap();
                total += t.elapsed();
                assert_eq!(out.len(), n_batched);
            }
            total
        })
    });
    g.throughput(Throughput::Elements(n_single as u64));
    g.bench_function("one_request_per_record", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = songs(n_single, &owner, &client, &mut counter);
                let t = Instant::now();
                rt.block_on(async {
                    for ch in batch {
                        let Op::Upsert(mut f) = ch.op else {
                            unreachable!()
                        };
                        f.insert("id".into(), json!(ch.id.as_str()));
                        f.insert("tm_push".into(), json!(format!("0:{}", ch.change_id)));
                        let one = json!({"requests": [{"method": "PUT",
                            "url": "/api/collections/songs/records", "body": f}]});
                        let r = http
                            .post(format!("{}/api/batch", srv.url()))
                            .header("Authorization", &token)
                            .json(&one)
                            .send()
                            .await
                            .unwrap();
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        assert!(status.is_success(), "{status} {body}");
                    }
                });
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// One `/api/batch` of `n` new songs: plain `POST` creates (what any app or the admin
/// UI sends), or with `tidemark` the way the client pushes them (`PUT` upserts
/// carrying `tm_push = "<base>:<change id>"`, which the hooks check and answer).
async fn raw_batch(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    owner: &RecordId,
    n: usize,
    tidemark: bool,
) {
    let client = new_id();
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            let mut body = json!({"id": new_id().as_str(), "title": format!("s{i}"), "artist": "b", "order": i, "owner": owner.as_str()});
            if tidemark {
                body["tm_push"] = json!(format!("0:{client}.{}", i + 1));
            }
            json!({"method": if tidemark { "PUT" } else { "POST" },
                   "url": "/api/collections/songs/records", "body": body})
        })
        .collect();
    let r = http
        .post(format!("{url}/api/batch"))
        .header("Authorization", token)
        .json(&json!({ "requests": reqs }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    if !tidemark {
        let _ = r.bytes().await;
        return;
    }
    let answers: Vec<serde_json::Value> = r.json().await.unwrap();
    // New records created by the hooks' trigger answer with their own tm_push; the
    // client reads their seqs with one receipt, so that is part of the cost.
    let ask: Vec<_> = answers
        .iter()
        .filter_map(|a| {
            let push = a["body"]["tm_push"].as_str()?;
            let cid = push.strip_prefix("0:")?;
            Some(json!([a["body"]["id"], cid]))
        })
        .collect();
    if !ask.is_empty() {
        let r = http
            .post(format!("{url}/api/tidemark/receipt"))
            .header("Authorization", token)
            .json(&json!({ "songs": ask }))
            .send()
            .await
            .unwrap();
        // (A server without the hooks refuses the receipt of a collection it does not
        // sync with a 400: the same round trip, for the comparison.)
        assert!(
            r.status().is_success() || r.status() == reqwest::StatusCode::BAD_REQUEST,
            "{}",
            r.status()
        );
        let _ = r.bytes().await;
    }
}

fn batch_hooks(c: &mut Criterion) {
    let rt = rt();
    // Users' batches of 500 as before the operator's bound (TIDEMARK_USER_BATCH_MAX).
    let unbounded =
        || pocketbase_remote::harness::Options::default().env("TIDEMARK_USER_BATCH_MAX", "1000");
    let with = TestServer::start_with(&unbounded());
    let without = TestServer::start_with(&unbounded().fixture_unsynced());
    let http = reqwest::Client::new();
    let mut g = c.benchmark_group("batch_hooks");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(1000));
    for (name, srv) in [("with_hooks", &with), ("without_hooks", &without)] {
        let (owner, token, admin) = rt.block_on(async {
            let owner = srv.create_user("bench@t.io").await;
            let token = srv.user("bench@t.io").await.token().await.unwrap();
            (owner, token, srv.superuser().await.token().await.unwrap())
        });
        for (kind, tidemark) in [("create", false), ("tidemark_push", true)] {
            g.bench_function(format!("{name}/{kind}/user"), |b| {
                b.iter(|| rt.block_on(raw_batch(&http, srv.url(), &token, &owner, 1000, tidemark)))
            });
            g.bench_function(format!("{name}/{kind}/superuser"), |b| {
                b.iter(|| rt.block_on(raw_batch(&http, srv.url(), &admin, &owner, 1000, tidemark)))
            });
        }
    }
    g.finish();
}

fn noop_sync(c: &mut Criterion) {
    let rt = rt();
    let srv = TestServer::start();
    let remote: PocketBaseRemote = rt.block_on(async {
        srv.create_user("bench@t.io").await;
        srv.user("bench@t.io").await
    });
    let head = rt.block_on(remote.head()).unwrap().head;
    c.bench_function("noop_sync/pull_at_head", |b| {
        b.iter(|| {
            let p = rt
                .block_on(remote.pull(head, 1000, PullMode::Incremental))
                .unwrap();
            assert!(p.changes.is_empty() && !p.more);
        })
    });
}

fn initial_pull(c: &mut Criterion) {
    let n_records = scaled(20_000);
    let rt = rt();
    let srv = TestServer::start();
    let (remote, token) = rt.block_on(async {
        let owner = srv.create_user("bench@t.io").await;
        let remote = srv.user("bench@t.io").await;
        let client = new_id();
        let mut counter = 0;
        remote
            .push(songs(n_records, &owner, &client, &mut counter))
            .await
            .unwrap();
        let token = remote.token().await.unwrap();
        (remote, token)
    });
    let http = reqwest::Client::new();
    let mut g = c.benchmark_group("initial_pull");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n_records as u64));
    g.bench_function("remote_pull", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut wm = sync_traits::Watermark(0);
                let mut n = 0;
                loop {
                    let p = remote.pull(wm, 1000, PullMode::Resync).await.unwrap();
                    n += p.changes.len();
                    wm = p.watermark;
                    if !p.more {
                        break;
                    }
                }
                assert_eq!(n, n_records);
            })
        })
    });
    g.bench_function("download_pages", |b| {
        b.iter(|| {
            rt.block_on(async {
                let n = download_list_pages(&http, srv.url(), &token, "songs", n_records).await;
                assert_eq!(n, n_records);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, push, batch_hooks, noop_sync, initial_pull);
criterion_main!(benches);
