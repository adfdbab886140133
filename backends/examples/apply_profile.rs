//! Times applying a 10k page against a raw bulk insert, alternating, to see the ratio.
use std::time::Instant;
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::{new_id, Page, RemoteChange, RemoteState, Version, Watermark};
use tidemark_backends::{Schema, SqliteStore};

// The same raw baseline as the criterion bench.
#[path = "../benches/support/raw_sqlite.rs"]
mod raw_sqlite;
use raw_sqlite::{raw_sqlite, raw_sqlite_insert};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let n = 10_000;
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                new_id(),
                json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )
        })
        .collect();
    let page = Page {
        changes: rows
            .iter()
            .enumerate()
            .map(|(i, (id, f))| RemoteChange {
                collection: "songs".into(),
                id: id.clone(),
                state: RemoteState {
                    version: Version(i as u64 + 1),
                    fields: Some(f.clone()),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(n as u64),
        more: false,
    };
    let (mut ts, mut tr) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path().join("s.db"), Schema::conformance()).unwrap();
        let t = Instant::now();
        rt.block_on(s.apply_remote(&page)).unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        let mut c = raw_sqlite(&d.path().join("raw.db"));
        let t = Instant::now();
        raw_sqlite_insert(&mut c, &rows);
        tr.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    tr.sort_by(f64::total_cmp);
    println!(
        "store median {:.1} ms, raw median {:.1} ms, ratio {:.2}",
        ts[7],
        tr[7],
        ts[7] / tr[7]
    );
}
