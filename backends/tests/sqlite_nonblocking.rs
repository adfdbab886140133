//! No `SqliteStore` call blocks an async worker: on a 2-worker runtime, a ticker
//! task and a computing task keep making progress while several store calls are
//! stuck (a large page applying, another connection holding the write lock).
//! With the store's SQLite work on the workers, those calls would occupy both
//! workers and the progress counts would stand still.
//!
//! The assertions are on progress counts observed while the store calls are
//! still unfinished, never on how long anything took.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_traits::SyncStore;

use rusqlite::Connection;
use serde_json::json;
use sync_traits::{
    new_id, LocalStore, Page, Record, RemoteChange, RemoteState, Version, Watermark,
};
use tidemark_backends::{Schema, SqliteStore};
use tokio::task::JoinHandle;

struct Progress {
    ticks: Arc<AtomicU64>,
    steps: Arc<AtomicU64>,
}

impl Progress {
    /// A 1 ms interval ticker and a computation that yields after each step
    /// (it uses no store).
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let ticks = Arc::new(AtomicU64::new(0));
        let steps = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        rt.spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(1));
            loop {
                iv.tick().await;
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        let s = steps.clone();
        rt.spawn(async move {
            let mut x: u64 = 1;
            loop {
                for i in 0..1000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                }
                std::hint::black_box(x);
                s.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        Self { ticks, steps }
    }

    fn now(&self) -> (u64, u64) {
        (
            self.ticks.load(Ordering::SeqCst),
            self.steps.load(Ordering::SeqCst),
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Store reads from several tasks, each calling again and again until `stop`
/// (true) or a hang guard (false):
/// each would hold a worker while it waits if the store ran SQLite (or waited for
/// its connection) on it.
fn readers(
    rt: &tokio::runtime::Runtime,
    store: &SqliteStore,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<bool>> {
    (0..n)
        .map(|i| {
            let (s, stop) = (store.clone(), stop.clone());
            rt.spawn(async move {
                // A hang guard, not a measure: with the store's work on the
                // workers these loops starve everything else, the store call
                // they wait behind included.
                let guard = std::time::Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    if guard.elapsed() > Duration::from_secs(20) {
                        return false;
                    }
                    match i % 3 {
                        0 => drop(s.count("songs").await.unwrap()),
                        1 => drop(s.sync_state().await.unwrap()),
                        _ => drop(s.pending_count().await.unwrap()),
                    }
                }
                true
            })
        })
        .collect()
}

/// Progress made while `busy` is unfinished, from a moment when the store calls
/// have had time to get stuck, to the last look before `busy` finished. Waits on
/// this plain thread, not on the runtime.
fn progress_while(p: &Progress, busy: &[JoinHandle<()>], looks: Option<usize>) -> (u64, u64) {
    let unfinished = || busy.iter().any(|b| !b.is_finished());
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        unfinished(),
        "the store calls finished before they could be watched"
    );
    let start = p.now();
    let mut during = (0, 0);
    let mut n = 0;
    while unfinished() && looks.is_none_or(|l| n < l) {
        let (t, s) = p.now();
        during = (t - start.0, s - start.1);
        std::thread::sleep(Duration::from_millis(5));
        n += 1;
    }
    during
}

#[test]
fn other_tasks_progress_while_a_large_page_applies() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("app.db"), Schema::conformance()).unwrap();
    let n = 50_000u64;
    let page = Page {
        changes: (0..n)
            .map(|i| RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version(i + 1),
                    fields: json!({"title": format!("song {i}"), "artist": "a", "order": i})
                        .as_object()
                        .cloned(),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(n),
        more: false,
    };
    let p = Progress::start(&rt);
    // Let both tasks get going.
    while p.now().0 < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = store.clone();
    let apply = rt.spawn(async move {
        let r = s.apply_remote(&page).await.unwrap();
        assert_eq!(r.applied, 50_000);
    });
    let stop = Arc::new(AtomicBool::new(false));
    let waiting = readers(&rt, &store, 4, &stop);
    let (ticks, steps) = progress_while(&p, std::slice::from_ref(&apply), None);
    rt.block_on(apply).unwrap();
    stop.store(true, Ordering::SeqCst);
    for r in waiting {
        assert!(
            rt.block_on(r).unwrap(),
            "a reader was still starving the runtime after 20 s"
        );
    }
    assert!(
        ticks >= 10 && steps >= 10,
        "ticks {ticks} and computation steps {steps} while the page applied"
    );
    assert_eq!(
        rt.block_on(store.count("songs")).unwrap(),
        50_000,
        "the page applied"
    );
}

#[test]
fn other_tasks_progress_while_another_connection_holds_the_write_lock() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, Schema::conformance()).unwrap();
    let p = Progress::start(&rt);
    while p.now().0 < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Two writes wait for the lock (the store's busy timeout), the reads wait
    // for the store's connection behind them.
    let writes: Vec<JoinHandle<()>> = (0..2)
        .map(|_| {
            let s = store.clone();
            rt.spawn(async move {
                s.put(Record::new(
                    "songs",
                    new_id(),
                    json!({"title": "x"}).as_object().cloned().unwrap(),
                ))
                .await
                .unwrap();
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let waiting = readers(&rt, &store, 4, &stop);
    // Watch progress while the writes cannot finish; then let them.
    let (ticks, steps) = progress_while(&p, &writes, Some(50));
    assert!(
        writes.iter().all(|w| !w.is_finished()),
        "a write finished while another connection held the lock"
    );
    other.execute_batch("COMMIT").unwrap();
    for w in writes {
        rt.block_on(w).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for r in waiting {
        assert!(
            rt.block_on(r).unwrap(),
            "a reader was still starving the runtime after 20 s"
        );
    }
    assert!(
        ticks >= 10 && steps >= 10,
        "ticks {ticks} and computation steps {steps} while the lock was held"
    );
    assert_eq!(rt.block_on(store.pending_count()).unwrap(), 2);
}

/// On a current-thread runtime too: its one thread keeps running other tasks
/// while a page waits for the write lock another connection holds (the store's
/// transaction waits on the blocking pool, not on the runtime's thread).
#[test]
fn a_current_thread_runtime_keeps_running_while_an_apply_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path, Schema::conformance()).unwrap();
    let page = Page {
        changes: (0..10u64)
            .map(|i| RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version(i + 1),
                    fields: json!({"title": format!("song {i}")}).as_object().cloned(),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(10),
        more: false,
    };
    let ticks = Arc::new(AtomicU64::new(0));
    let (go, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (t, g, d) = (ticks.clone(), go.clone(), done.clone());
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(Duration::from_millis(1));
                loop {
                    iv.tick().await;
                    t.fetch_add(1, Ordering::SeqCst);
                }
            });
            while !g.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let r = store.apply_remote(&page).await.unwrap();
            d.store(true, Ordering::SeqCst);
            assert_eq!(r.applied, 10);
        });
    });
    while ticks.load(Ordering::SeqCst) < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    go.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    let start = ticks.load(Ordering::SeqCst);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !done.load(Ordering::SeqCst),
            "applied while another connection held the lock"
        );
    }
    let during = ticks.load(Ordering::SeqCst) - start;
    other.execute_batch("COMMIT").unwrap();
    runner.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(during >= 10, "{during} ticks while the apply waited");
}
