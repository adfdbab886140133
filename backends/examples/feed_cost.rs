//! What the change feed costs the applies, measured side by side in one run.
//!
//! For each store (SQLite, sled), three variants of the same work, alternating
//! round by round so machine load hits them alike, medians reported:
//! - `off`: no watcher;
//! - `on`: a watcher of `songs`, the collection applied (drained between rounds,
//!   outside the timing: the app reads on its own task);
//! - `other`: a watcher of `friends` only, while `songs` is applied.
//!
//! Work: `apply`, one 10 000-record page into a fresh store; `first_sync`, a first
//! sync of 100 000 records through `SyncEngine` from an in-memory server.
//!
//! ```sh
//! cargo run --release -p tidemark-backends --example feed_cost -- [apply|first_sync|all] [rounds]
//! # one variant once (for `valgrind --tool=callgrind`, whose counts repeat):
//! cargo run --release -p tidemark-backends --example feed_cost -- once sqlite|sled apply|first_sync off|on|other|skip
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use sync_traits::testkit::FakeRemote;
use sync_traits::{
    new_id, ChangeWatcher, Fields, LocalStore, Page, RecordId, RemoteChange, RemoteState,
    SyncEngine, Version, Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

const PAGE: usize = 10_000;
const FIRST: usize = 100_000;

fn song(i: usize) -> Fields {
    json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn page(rows: &[(RecordId, Fields)]) -> Page {
    Page {
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
        watermark: Watermark(rows.len() as u64),
        more: false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Off,
    On,
    Other,
    /// The setup alone (store opened, page built), no work: what `once` counts
    /// subtract to get the work's own instructions.
    Skip,
}

const VARIANTS: [Variant; 3] = [Variant::Off, Variant::On, Variant::Other];

fn open(kind: &str, dir: &std::path::Path) -> Box<dyn LocalStore> {
    match kind {
        "sqlite" => Box::new(SqliteStore::open(dir.join("s.db"), Schema::conformance()).unwrap()),
        _ => Box::new(SledStore::open(dir.join("sled"), Schema::conformance()).unwrap()),
    }
}

fn watcher(store: &dyn LocalStore, v: Variant) -> Option<ChangeWatcher> {
    match v {
        Variant::Off | Variant::Skip => None,
        Variant::On => Some(store.changes("songs").unwrap()),
        Variant::Other => Some(store.changes("friends").unwrap()),
    }
}

/// One run of `work` on a fresh store with variant `v`: the time of the work
/// alone, and how many changes the watcher got.
fn run(
    rt: &tokio::runtime::Runtime,
    kind: &str,
    work: &str,
    v: Variant,
    data: &[(RecordId, Fields)],
    p: &Page,
    server: &FakeRemote,
) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(kind, dir.path());
    let mut w = watcher(store.as_ref(), v);
    let t = Instant::now();
    if v == Variant::Skip {
        return (t.elapsed(), 0);
    }
    match work {
        "apply" => {
            let r = rt.block_on(store.apply_remote(p)).unwrap();
            assert_eq!(r.applied, data.len());
        }
        _ => {
            let engine = SyncEngine::new(store, server.clone());
            let r = rt.block_on(engine.sync()).unwrap();
            assert_eq!(r.applied, FIRST);
            let took = t.elapsed();
            let got = w.as_mut().map_or(0, |w| w.try_changed().len());
            return (took, got);
        }
    }
    let took = t.elapsed();
    let got = w.as_mut().map_or(0, |w| w.try_changed().len());
    (took, got)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let page_rows: Vec<(RecordId, Fields)> = (0..PAGE).map(|i| (new_id(), song(i))).collect();
    let p = page(&page_rows);
    let server = FakeRemote::new();
    let what = args.first().map_or("all", |s| s.as_str());
    let needs_server =
        what != "apply" && !(what == "once" && args.get(2).map(|s| s.as_str()) == Some("apply"));
    if needs_server {
        for i in 0..FIRST {
            server.server_write("songs", &new_id(), Some(song(i)));
        }
    }
    if what == "once" {
        let kind = args.get(1).map_or("sqlite", |s| s.as_str());
        let work = args.get(2).map_or("apply", |s| s.as_str());
        let v = match args.get(3).map(|s| s.as_str()) {
            Some("on") => Variant::On,
            Some("other") => Variant::Other,
            Some("skip") => Variant::Skip,
            _ => Variant::Off,
        };
        let (t, got) = run(&rt, kind, work, v, &page_rows, &p, &server);
        println!("{kind} {work} {v:?}: {t:?}, {got} changes reported");
        return;
    }
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let works: Vec<&str> = match what {
        "apply" => vec!["apply"],
        "first_sync" => vec!["first_sync"],
        _ => vec!["apply", "first_sync"],
    };
    for work in works {
        for kind in ["sqlite", "sled"] {
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); 3];
            let mut got = [0usize; 3];
            // One unmeasured warm-up round.
            for v in VARIANTS {
                run(&rt, kind, work, v, &page_rows, &p, &server);
            }
            for round in 0..rounds {
                // Rotate the order each round, so no variant always runs first.
                for k in 0..3 {
                    let i = (round + k) % 3;
                    let (t, n) = run(&rt, kind, work, VARIANTS[i], &page_rows, &p, &server);
                    times[i].push(t);
                    got[i] = n;
                }
            }
            let off = median(&mut times[0]);
            let on = median(&mut times[1]);
            let other = median(&mut times[2]);
            println!(
                "{work:<10} {kind:<6} off {off:>10.2?}  on {on:>10.2?} ({:.3}x, {} changes)  other-collection watcher {other:>10.2?} ({:.3}x, {} changes)  [{rounds} rounds, medians]",
                on.as_secs_f64() / off.as_secs_f64(),
                got[1],
                other.as_secs_f64() / off.as_secs_f64(),
                got[2],
            );
        }
    }
}
