//! What a screen pays to show 50 records of a 100 000-record collection: one
//! typed page (`collection::<Song>("songs").page(after, 50)`, a range read)
//! against loading the whole collection (`list`), and `count`, on SQLite and
//! sled. Medians of 15 runs each, the page read from the middle of the id range.
//!
//! cargo run --release -p tidemark-backends --features sqlite,sled --example page_profile
use std::time::Instant;

use serde_json::json;
use sync_traits::{
    new_id, LocalStore, LocalStoreExt, Page, RecordId, RemoteChange, RemoteState, Version,
    Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

// Only the struct is used here.
#[allow(dead_code)]
#[path = "../benches/support/typed_song.rs"]
mod typed_song;

const N: usize = 100_000;
const RUNS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(mut f: impl FnMut() -> T) -> f64 {
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn fill(rt: &tokio::runtime::Runtime, s: &dyn LocalStore) {
    for k in 0..(N / 10_000) {
        let changes = (0..10_000)
            .map(|i| RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version((k * 10_000 + i + 1) as u64),
                    fields: json!({"title": format!("song {i}"), "artist": "a", "order": i})
                        .as_object()
                        .cloned(),
                    change_id: None,
                },
            })
            .collect();
        let page = Page {
            changes,
            watermark: Watermark(((k + 1) * 10_000) as u64),
            more: false,
        };
        rt.block_on(s.apply_remote(&page)).unwrap();
    }
}

fn report(name: &str, rt: &tokio::runtime::Runtime, s: &dyn LocalStore) {
    fill(rt, s);
    let middle = RecordId::parse("i00000000000000").unwrap();
    let songs = s.collection::<typed_song::Song>("songs");
    let all = time(|| rt.block_on(s.list("songs")).unwrap().len());
    let page = time(|| rt.block_on(songs.page(Some(&middle), 50)).unwrap());
    let raw_page = time(|| {
        rt.block_on(s.list_page("songs", Some(middle.clone()), 50))
            .unwrap()
    });
    let count = time(|| rt.block_on(s.count("songs")).unwrap());
    println!(
        "{name}, {N} records: list (all) {all:.2} ms; typed page of 50 {page:.3} ms \
         (list_page {raw_page:.3} ms): {:.0}x less; count {count:.2} ms",
        all / page
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(d.path().join("p.db"), Schema::conformance()).unwrap();
    report("SQLite", &rt, &sqlite);
    let sled = SledStore::open(d.path().join("p"), Schema::conformance()).unwrap();
    report("sled", &rt, &sled);
}
