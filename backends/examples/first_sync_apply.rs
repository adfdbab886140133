//! The store's side of a first sync, alone: a fresh store, `begin_resync`, `PAGES`
//! pages of `PER_PAGE` records applied in resync mode, `finish_resync`; timed per
//! store. The same calls, in the same order, as `SyncEngine`'s first sync makes.
//!
//! `cargo run --release -p tidemark-backends --example first_sync_apply -- [sqlite|sled] [records] [per_page]`
//! Under `valgrind --tool=callgrind` its instruction counts are repeatable on a
//! noisy machine.
use std::time::Instant;

use serde_json::json;
use sync_traits::{new_id, LocalStore, Page, RemoteChange, RemoteState, Version, Watermark};
use tidemark_backends::{Schema, SledStore, SqliteStore};

fn pages(records: usize, per_page: usize) -> Vec<Page> {
    let mut seq = 0u64;
    (0..records.div_ceil(per_page))
        .map(|p| {
            let n = per_page.min(records - p * per_page);
            let changes: Vec<_> = (0..n)
                .map(|_| {
                    seq += 1;
                    RemoteChange {
                        collection: "songs".into(),
                        id: new_id(),
                        state: RemoteState {
                            version: Version(seq),
                            fields: json!({"title": format!("song number {seq}"), "artist": "some artist", "order": seq})
                                .as_object()
                                .cloned(),
                            change_id: None,
                        },
                    }
                })
                .collect();
            Page {
                changes,
                watermark: Watermark(seq),
                more: (p + 1) * per_page < records,
            }
        })
        .collect()
}

async fn run(store: &dyn LocalStore, pages: &[Page]) -> usize {
    store.begin_resync().await.expect("begin_resync");
    let mut applied = 0;
    for page in pages {
        let report = store.apply_remote(page).await.expect("apply");
        applied += report.applied;
    }
    store.finish_resync(None).await.expect("finish_resync");
    applied
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("sqlite");
    let records: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let per_page: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let pages = pages(records, per_page);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let applied = rt.block_on(async {
        match which {
            "sled" => {
                let s = SledStore::open(dir.path().join("s.sled"), Schema::conformance())
                    .expect("open");
                let n = run(&s, &pages).await;
                s.flush().expect("flush");
                n
            }
            _ => {
                let s = SqliteStore::open(dir.path().join("s.db"), Schema::conformance())
                    .expect("open");
                run(&s, &pages).await
            }
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{which}: {applied} records in {} pages of {per_page}: {secs:.2} s, {:.0} records/s, {:.1} µs/record",
        pages.len(),
        applied as f64 / secs,
        secs * 1e6 / applied as f64
    );
}
