//! Timing of the sled store's page apply, the same work as the `stores` bench's
//! `apply_10k_page/sled_store` (a fresh store, one 10k-record page, flushed), for
//! builds where that bench cannot run (it needs both features), and of single
//! puts (flushed or not) and gets. A paired example; run it in release:
//!
//! cargo run --release -p tidemark-backends --no-default-features --features sled \
//!   --example sled_timing

use std::time::{Duration, Instant};
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::{
    new_id, LocalStore, Page, Record, RemoteChange, RemoteState, Version, Watermark,
};
use tidemark_backends::sled::SledOptions;
use tidemark_backends::{Schema, SledStore};

const N: usize = 10_000;

fn page(n: usize) -> Page {
    Page {
        changes: (0..n)
            .map(|i| RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version(i as u64 + 1),
                    fields: json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
                        .as_object()
                        .cloned(),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(n as u64),
        more: false,
    }
}

fn sled_apply_10k_page_timing() {
    let runs: usize = std::env::var("TIMING_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let p = page(N);
    for (name, rt) in [
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ),
        (
            "multi_thread(2)",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ] {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..runs {
            let d = tempfile::tempdir().unwrap();
            let s = SledStore::open(d.path().join("sled"), Schema::conformance()).unwrap();
            let t = Instant::now();
            let r = rt.block_on(s.apply_remote(&p)).unwrap();
            times.push(t.elapsed());
            assert_eq!(r.applied, N);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "sled apply {N} page on {name}: median {:.1} ms, min {:.1} ms, max {:.1} ms ({runs} runs)",
            ms(times[runs / 2]),
            ms(times[0]),
            ms(times[runs - 1])
        );
    }
}

fn sled_put_and_get_timing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let us = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
    for (flush, n) in [(false, 5000), (true, 300)] {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open_with(
            d.path().join("sled"),
            Schema::conformance(),
            SledOptions {
                flush_every_write: flush,
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<_> = (0..n).map(|_| new_id()).collect();
        let t = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            let f = json!({"title": format!("song {i}"), "artist": "a", "order": i});
            rt.block_on(s.put(Record::new(
                "songs",
                id.clone(),
                f.as_object().cloned().unwrap(),
            )))
            .unwrap();
        }
        let put = t.elapsed();
        let t = Instant::now();
        for id in &ids {
            assert!(rt.block_on(s.get("songs", id)).unwrap().is_some());
        }
        let get = t.elapsed();
        println!(
            "sled put (flush_every_write: {flush}): {:.1} us per call; get: {:.1} us per call ({n} calls)",
            us(put, n),
            us(get, n)
        );
    }
}

fn main() {
    sled_apply_10k_page_timing();
    sled_put_and_get_timing();
}
