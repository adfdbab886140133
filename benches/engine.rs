//! The engine's own overhead: one full sync of 10k records between MemoryStores
//! through the FakeRemote, next to a raw copy of the same records (the floor).
//!
//! `cargo bench --bench engine`

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{new_id, LocalStore, Record, SyncEngine};

const N: usize = 10_000;

fn records() -> Vec<Record> {
    (0..N)
        .map(|i| {
            Record::new(
                "songs",
                new_id(),
                json!({"title": format!("song {i}"), "artist": "someone", "order": i})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = records();
    // A server that already holds the 10k records, for the pull side.
    let full = FakeRemote::new();
    rt.block_on(async {
        let s = Arc::new(MemoryStore::new());
        for r in &data {
            s.put(r.clone()).await.expect("put");
        }
        SyncEngine::new(s, full.clone()).sync().await.expect("seed");
    });

    let mut g = c.benchmark_group("sync_10k");
    g.sample_size(10);
    g.bench_function("raw_copy_floor", |b| {
        b.iter_batched(
            || data.clone(),
            |rs| {
                let mut m = BTreeMap::new();
                for r in rs {
                    m.insert((r.collection, r.id), r.fields);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("push_10k", |b| {
        b.iter_batched(
            || {
                let s = Arc::new(MemoryStore::new());
                rt.block_on(async {
                    for r in &data {
                        s.put(r.clone()).await.expect("put");
                    }
                });
                (s, FakeRemote::new())
            },
            |(s, remote)| {
                rt.block_on(SyncEngine::new(s, remote).sync())
                    .expect("sync")
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("pull_10k", |b| {
        b.iter_batched(
            || Arc::new(MemoryStore::new()),
            |s| {
                rt.block_on(SyncEngine::new(s, full.clone()).sync())
                    .expect("sync")
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
