//! Timings, not tests (a paired example; run it in release):
//!
//! ```sh
//! cargo run --release -p tidemark-backends --example sqlite_timing
//! ```
//!
//! The latency of one local `put` (outbox included) on a current-thread and on a
//! multi-thread runtime, and of `apply_remote` for 10k and 50k new records, each
//! as the median of several rounds. They use only calls every version of the
//! store has, so the same file measures an older one.

use std::time::Instant;
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::{
    new_id, LocalStore, Page, Record, RemoteChange, RemoteState, Version, Watermark,
};
use tidemark_backends::{Schema, SqliteStore};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn runtimes() -> Vec<(&'static str, tokio::runtime::Runtime)> {
    vec![
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "multi-thread(2)",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ]
}

fn put_latency() {
    for (name, rt) in runtimes() {
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let s = SqliteStore::open(dir.path().join("s.db"), Schema::conformance()).unwrap();
            let n = 2000;
            let t = Instant::now();
            rt.block_on(async {
                for i in 0..n {
                    let f = json!({"title": "t", "artist": "a", "order": i});
                    s.put(Record::new(
                        "songs",
                        new_id(),
                        f.as_object().cloned().unwrap(),
                    ))
                    .await
                    .unwrap();
                }
            });
            rounds.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        println!("put on {name}: median {:.1} us per put", median(rounds));
    }
}

fn apply_latency() {
    for n in [10_000u64, 50_000] {
        let page = Page {
            changes: (0..n)
                .map(|i| RemoteChange {
                    collection: "songs".into(),
                    id: new_id(),
                    state: RemoteState {
                        version: Version(i + 1),
                        fields: json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
                            .as_object()
                            .cloned(),
                        change_id: None,
                    },
                })
                .collect(),
            watermark: Watermark(n),
            more: false,
        };
        for (name, rt) in runtimes() {
            let mut rounds = Vec::new();
            for _ in 0..9 {
                let dir = tempfile::tempdir().unwrap();
                let s = SqliteStore::open(dir.path().join("s.db"), Schema::conformance()).unwrap();
                let t = Instant::now();
                rt.block_on(s.apply_remote(&page)).unwrap();
                rounds.push(t.elapsed().as_secs_f64() * 1e3);
            }
            println!("apply {n} on {name}: median {:.1} ms", median(rounds));
        }
    }
}

fn main() {
    put_latency();
    apply_latency();
}
