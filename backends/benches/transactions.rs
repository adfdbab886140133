//! Multi-record transactions vs the same writes as single calls: 100 puts of new
//! songs (each with its outbox entry) as one `transact` call or as 100 `put`
//! calls, on SQLite (WAL, `synchronous = NORMAL`) and sled (a flush per call, the
//! default), side by side in one run.
//!
//! cargo bench -p tidemark-backends --bench transactions -- --warm-up-time 1 --measurement-time 5

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use sync_traits::{new_id, Fields, LocalStore, Record, Write};
use tidemark_backends::{Schema, SledStore, SqliteStore};

const WRITES: usize = 100;

fn song(i: usize) -> Fields {
    json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn writes(from: usize) -> Vec<Record> {
    (from..from + WRITES)
        .map(|i| Record::new("songs", new_id(), song(i)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(d.path().join("s.db"), Schema::conformance()).unwrap();
    let sled = SledStore::open(d.path().join("sled"), Schema::conformance()).unwrap();
    let stores: [(&str, &dyn LocalStore); 2] = [("sqlite", &sqlite), ("sled", &sled)];
    let mut g = c.benchmark_group("write_100");
    g.throughput(Throughput::Elements(WRITES as u64));
    g.sample_size(20);
    let mut n = 0;
    for (name, s) in stores {
        g.bench_function(format!("{name}_transact"), |b| {
            b.iter(|| {
                n += WRITES;
                let w = writes(n).into_iter().map(Write::Put).collect();
                rt.block_on(s.transact(w)).unwrap()
            })
        });
        g.bench_function(format!("{name}_single_puts"), |b| {
            b.iter(|| {
                n += WRITES;
                for r in writes(n) {
                    rt.block_on(s.put(r)).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
