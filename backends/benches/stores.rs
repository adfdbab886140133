//! Store benchmarks: applying a 10k-record page vs a raw bulk insert of the same
//! rows (the incremental case), a first sync of 50k records into a fresh store
//! through the engine (the first-sync path: resync mode, many pages, the engine's
//! batching) vs a raw bulk insert of the same rows, local put-with-outbox vs a raw
//! single-row insert, opening a 100k store, a typed put
//! (`store.collection::<Song>("songs").put(&song)`) vs an untyped put of the same
//! record; each apply and first sync also with the change feed on (a watcher of
//! the applied collection) and with a watcher of another collection, side by side.
//!
//! cargo bench -p tidemark-backends --bench stores -- --warm-up-time 1 --measurement-time 3

use std::time::{Duration, Instant};
use sync_traits::SyncStore;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use sync_traits::{
    new_id, Fields, LocalStore, Page, Record, RecordId, RemoteChange, RemoteState, SyncConfig,
    Version, Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

// The raw SQLite baseline, shared with examples/apply_profile.rs so both report
// against the same thing.
#[path = "support/raw_sqlite.rs"]
mod raw_sqlite;
use raw_sqlite::{raw_sqlite, raw_sqlite_insert};

// The typed-vs-untyped put's records, shared with examples/typed_put_profile.rs.
#[path = "support/typed_song.rs"]
mod typed_song;

const N: usize = 10_000;

fn song(i: usize) -> Fields {
    json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn rows(n: usize) -> Vec<(RecordId, Fields)> {
    (0..n).map(|i| (new_id(), song(i))).collect()
}

fn page(rows: &[(RecordId, Fields)], base: u64) -> Page {
    Page {
        changes: rows
            .iter()
            .enumerate()
            .map(|(i, (id, f))| RemoteChange {
                collection: "songs".into(),
                id: id.clone(),
                state: RemoteState {
                    version: Version(base + i as u64 + 1),
                    fields: Some(f.clone()),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(base + rows.len() as u64),
        more: false,
    }
}

/// An empty SQLite store in a new temporary folder.
fn fresh_sqlite() -> (tempfile::TempDir, SqliteStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(d.path().join("s.db"), Schema::conformance()).unwrap();
    (d, s)
}

/// An empty sled store in a new temporary folder.
fn fresh_sled() -> (tempfile::TempDir, SledStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path().join("sled"), Schema::conformance()).unwrap();
    (d, s)
}

/// The raw SQLite baseline's empty table in a new temporary folder.
fn fresh_raw_sqlite() -> (tempfile::TempDir, rusqlite::Connection) {
    let d = tempfile::tempdir().unwrap();
    let c = raw_sqlite(&d.path().join("raw.db"));
    (d, c)
}

fn bench_apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let data = rows(N);
    let p = page(&data, 0);
    let mut g = c.benchmark_group("apply_10k_page");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("sqlite_store", |b| {
        b.iter_batched(
            fresh_sqlite,
            |(_d, s)| rt.block_on(s.apply_remote(&p)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sqlite_raw_insert", |b| {
        b.iter_batched(
            fresh_raw_sqlite,
            |(_d, mut c)| raw_sqlite_insert(&mut c, &data),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sled_store", |b| {
        b.iter_batched(
            fresh_sled,
            |(_d, s)| rt.block_on(s.apply_remote(&p)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    // The change feed, side by side (see also examples/feed_cost.rs): no watcher,
    // a watcher of the applied collection, a watcher of another collection. The
    // store, its folder and the watcher are dropped outside the timing in all three.
    for (name, watch) in [
        ("feed_off", None),
        ("feed_on", Some("songs")),
        ("feed_other_collection", Some("friends")),
    ] {
        g.bench_function(format!("sqlite_store_{name}"), |b| {
            b.iter_batched(
                || {
                    let (d, s) = fresh_sqlite();
                    let w = watch.map(|c| s.changes(c).unwrap());
                    (d, s, w)
                },
                |(d, s, w)| {
                    rt.block_on(s.apply_remote(&p)).unwrap();
                    (d, s, w)
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("sled_store_{name}"), |b| {
            b.iter_batched(
                || {
                    let (d, s) = fresh_sled();
                    let w = watch.map(|c| s.changes(c).unwrap());
                    (d, s, w)
                },
                |(d, s, w)| {
                    rt.block_on(s.apply_remote(&p)).unwrap();
                    (d, s, w)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("sled_raw_batch", |b| {
        b.iter_batched(
            || {
                let d = tempfile::tempdir().unwrap();
                let db = sled::open(d.path().join("raw")).unwrap();
                let t = db.open_tree("songs").unwrap();
                (d, db, t)
            },
            |(_d, db, t)| {
                let mut batch = sled::Batch::default();
                for (id, f) in &data {
                    batch.insert(id.as_str(), serde_json::to_vec(f).unwrap());
                }
                t.apply_batch(batch).unwrap();
                db.flush().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The first-sync path as `SyncEngine::sync` runs it, from an in-memory server so
/// the figure is the engine and the store alone: a fresh store, a resync of
/// `FIRST` records in pages of 1000, applied in the engine's resync batches.
fn bench_first_sync(c: &mut Criterion) {
    const FIRST: usize = 50_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = sync_traits::testkit::FakeRemote::new();
    let data = rows(FIRST);
    for (id, f) in &data {
        server.server_write("songs", id, Some(f.clone()));
    }
    fn first_sync<S: LocalStore>(
        rt: &tokio::runtime::Runtime,
        server: &sync_traits::testkit::FakeRemote,
        store: S,
        resync_batch: usize,
    ) {
        let engine = sync_traits::SyncEngine::new(store, server.clone()).with_config(
            sync_traits::SyncConfig {
                resync_batch,
                ..Default::default()
            },
        );
        let report = rt.block_on(engine.sync()).unwrap();
        assert_eq!(report.applied, FIRST);
    }
    let mut g = c.benchmark_group("first_sync_50k");
    g.throughput(Throughput::Elements(FIRST as u64));
    g.sample_size(10);
    g.bench_function("sqlite_store", |b| {
        b.iter_batched(
            fresh_sqlite,
            |(_d, s)| first_sync(&rt, &server, s, SyncConfig::default().resync_batch),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sqlite_store_page_by_page", |b| {
        b.iter_batched(
            fresh_sqlite,
            |(_d, s)| first_sync(&rt, &server, s, 1),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sqlite_raw_insert", |b| {
        b.iter_batched(
            fresh_raw_sqlite,
            |(_d, mut c)| raw_sqlite_insert(&mut c, &data),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sled_store", |b| {
        b.iter_batched(
            fresh_sled,
            |(_d, s)| first_sync(&rt, &server, s, SyncConfig::default().resync_batch),
            BatchSize::PerIteration,
        )
    });
    // The change feed, side by side: no watcher, a watcher of the synced
    // collection, one of another collection (folder and watcher dropped outside
    // the timing in all three).
    for (name, watch) in [
        ("feed_off", None),
        ("feed_on", Some("songs")),
        ("feed_other_collection", Some("friends")),
    ] {
        g.bench_function(format!("sqlite_store_{name}"), |b| {
            b.iter_batched(
                || {
                    let (d, s) = fresh_sqlite();
                    let w = watch.map(|c| s.changes(c).unwrap());
                    (d, s, w)
                },
                |(d, s, w)| {
                    first_sync(&rt, &server, s, SyncConfig::default().resync_batch);
                    (d, w)
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("sled_store_{name}"), |b| {
            b.iter_batched(
                || {
                    let (d, s) = fresh_sled();
                    let w = watch.map(|c| s.changes(c).unwrap());
                    (d, s, w)
                },
                |(d, s, w)| {
                    first_sync(&rt, &server, s, SyncConfig::default().resync_batch);
                    (d, w)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("sled_store_page_by_page", |b| {
        b.iter_batched(
            fresh_sled,
            |(_d, s)| first_sync(&rt, &server, s, 1),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_put(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("local_put");
    g.throughput(Throughput::Elements(1));
    let s = SqliteStore::open(d.path().join("s.db"), Schema::conformance()).unwrap();
    let mut i = 0;
    g.bench_function("sqlite_store_put_with_outbox", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(s.put(Record::new("songs", new_id(), song(i))))
                .unwrap()
        })
    });
    let raw = raw_sqlite(&d.path().join("raw.db"));
    g.bench_function("sqlite_raw_insert_autocommit", |b| {
        let mut st = raw
            .prepare(
                r#"INSERT INTO "songs" ("id", "title", "artist", "order") VALUES (?1, ?2, ?3, ?4)"#,
            )
            .unwrap();
        b.iter(|| {
            i += 1;
            let f = song(i);
            st.execute(rusqlite::params![
                new_id().as_str(),
                f["title"].as_str(),
                f["artist"].as_str(),
                f["order"].as_i64()
            ])
            .unwrap()
        })
    });
    let sl = SledStore::open(d.path().join("sled"), Schema::conformance()).unwrap();
    g.bench_function("sled_store_put_with_outbox_flush", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(sl.put(Record::new("songs", new_id(), song(i))))
                .unwrap()
        })
    });
    let sl2 = SledStore::open_with(
        d.path().join("sled2"),
        Schema::conformance(),
        tidemark_backends::sled::SledOptions {
            flush_every_write: false,
            ..Default::default()
        },
    )
    .unwrap();
    g.bench_function("sled_store_put_with_outbox_noflush", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(sl2.put(Record::new("songs", new_id(), song(i))))
                .unwrap()
        })
    });
    let db = sled::open(d.path().join("sledraw")).unwrap();
    let t = db.open_tree("songs").unwrap();
    g.bench_function("sled_raw_insert_flush", |b| {
        b.iter(|| {
            i += 1;
            t.insert(new_id().as_str(), serde_json::to_vec(&song(i)).unwrap())
                .unwrap();
            db.flush().unwrap();
        })
    });
    g.bench_function("sled_raw_insert_noflush", |b| {
        b.iter(|| {
            i += 1;
            t.insert(new_id().as_str(), serde_json::to_vec(&song(i)).unwrap())
                .unwrap();
        })
    });
    g.finish();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn bench_open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let sqlite_path = d.path().join("big.db");
    let sled_path = d.path().join("bigsled");
    {
        let s = SqliteStore::open(&sqlite_path, Schema::conformance()).unwrap();
        let l = SledStore::open(&sled_path, Schema::conformance()).unwrap();
        for k in 0..10u64 {
            let p = page(&rows(N), k * N as u64);
            rt.block_on(s.apply_remote(&p)).unwrap();
            rt.block_on(l.apply_remote(&p)).unwrap();
        }
    }
    // One measured open each, with resident memory before/after (printed).
    for (name, open) in [
        (
            "sqlite",
            Box::new(|| {
                Box::new(SqliteStore::open(&sqlite_path, Schema::conformance()).unwrap())
                    as Box<dyn LocalStore>
            }) as Box<dyn Fn() -> Box<dyn LocalStore>>,
        ),
        (
            "sled",
            Box::new(|| {
                Box::new(SledStore::open(&sled_path, Schema::conformance()).unwrap())
                    as Box<dyn LocalStore>
            }),
        ),
    ] {
        let before = rss_kib();
        let t = Instant::now();
        let s = open();
        let took = t.elapsed();
        let after_open = rss_kib();
        let t = Instant::now();
        let n = rt.block_on(s.list("songs")).unwrap().len();
        let list_took = t.elapsed();
        let after_list = rss_kib();
        drop(s);
        eprintln!(
            "open_100k/{name}: open {took:?}, RSS +{} KiB after open; list of all {n} records {list_took:?}, RSS +{} KiB after list",
            after_open.saturating_sub(before),
            after_list.saturating_sub(before)
        );
    }
    let mut g = c.benchmark_group("open_100k");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("sqlite_store", |b| {
        b.iter(|| SqliteStore::open(&sqlite_path, Schema::conformance()).unwrap())
    });
    g.bench_function("sled_store", |b| {
        b.iter(|| SledStore::open(&sled_path, Schema::conformance()).unwrap())
    });
    g.finish();
}

/// A typed put (`collection::<Song>("songs").put(&song)`: serialise, take the id
/// out, put) against an untyped put of the same record built beforehand, on
/// two fresh stores of each backend that receive the same records in the same
/// order. Building the value is outside the timing on both sides, so the typed
/// side's extra is exactly the handle's work.
fn bench_typed_put(c: &mut Criterion) {
    use sync_traits::LocalStoreExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("typed_put");
    g.throughput(Throughput::Elements(1));
    let sqlite_untyped = SqliteStore::open(d.path().join("u.db"), Schema::conformance()).unwrap();
    let sqlite_typed = SqliteStore::open(d.path().join("t.db"), Schema::conformance()).unwrap();
    let noflush = || tidemark_backends::sled::SledOptions {
        flush_every_write: false,
        ..Default::default()
    };
    let sled_untyped =
        SledStore::open_with(d.path().join("su"), Schema::conformance(), noflush()).unwrap();
    let sled_typed =
        SledStore::open_with(d.path().join("st"), Schema::conformance(), noflush()).unwrap();
    let stores: [(&str, &dyn LocalStore, &dyn LocalStore); 2] = [
        ("sqlite", &sqlite_untyped, &sqlite_typed),
        ("sled_noflush", &sled_untyped, &sled_typed),
    ];
    for (name, untyped, typed) in stores {
        let (mut iu, mut it) = (0usize, 0usize);
        g.bench_function(format!("{name}_untyped_put"), |b| {
            b.iter_batched(
                || {
                    iu += 1;
                    typed_song::untyped(&new_id(), iu)
                },
                |r| rt.block_on(untyped.put(r)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let songs = typed.collection::<typed_song::Song>("songs");
        g.bench_function(format!("{name}_typed_put"), |b| {
            b.iter_batched(
                || {
                    it += 1;
                    typed_song::typed(&new_id(), it)
                },
                |s| rt.block_on(songs.put(&s)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_apply,
    bench_first_sync,
    bench_put,
    bench_open,
    bench_typed_put
);
criterion_main!(benches);
