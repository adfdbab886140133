//! The sled store never blocks an async worker: its sled work (transactions,
//! fsyncs) runs on tokio's blocking pool, so other tasks keep making progress
//! while a large page applies and flushes, or while writes flush one by one.
//!
//! Every check counts progress, never wall-clock time: the ticks a 1 ms
//! `tokio::time::interval` made while *every* worker had a store call in flight
//! (so a tail where one call has finished and its worker is free counts nothing).
//! A store that blocked its workers would leave the ticker without a single turn
//! during its sled work, however fast or slow the machine.
//!
//! The store checks and encodes a page on the calling task, yielding between
//! slices of 512 changes, so the ticker gets a turn at those yields whatever the
//! store does with its sled work. The strict checks therefore apply pages of
//! tombstones, whose preparation is next to nothing (a blocked store would give
//! the ticker at most one turn per slice, within the few milliseconds it takes)
//! while their transaction is as large as any.
#![cfg(feature = "sled")]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::{
    new_id, Ack, ApplyReport, LocalStore, Page, Record, RemoteChange, RemoteState, Version,
    Watermark,
};
use tidemark_backends::{Schema, SledStore};

const BIG_PAGE: usize = 50_000;
/// Ticks the ticker must make while full pages apply. Their preparation alone
/// gives it some turns, so this only shows the runtime is not stalled overall.
const MIN_TICKS: u64 = 20;
/// Ticks the ticker must make while pages of tombstones apply, or while flushed
/// writes run. A store that blocked the workers would give it no more than the
/// yields of the preparation (under a hundred per page, and in practice only the
/// few milliseconds that preparation lasts); a free runtime gives it a tick for
/// every millisecond of the transactions and fsyncs.
const MIN_TICKS_STRICT: u64 = 100;

fn big_page(n: usize) -> Page {
    Page {
        changes: (0..n)
            .map(|i| RemoteChange {
                collection: "songs".into(),
                id: new_id(),
                state: RemoteState {
                    version: Version(i as u64 + 1),
                    fields: json!({"title": format!("song {i}"), "artist": "a", "order": i})
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

/// Tombstones of the same records, at newer versions.
fn tombstones(p: &Page) -> Page {
    let base = p.watermark.0;
    Page {
        changes: p
            .changes
            .iter()
            .map(|c| RemoteChange {
                collection: c.collection.clone(),
                id: c.id.clone(),
                state: RemoteState {
                    version: Version(c.state.version.0 + base),
                    fields: None,
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(2 * base),
        more: false,
    }
}

/// Counts ticks of a 1 ms interval made while at least `want` tracked calls are
/// in flight.
struct Ticker {
    want: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    ticks: Arc<AtomicU64>,
}

impl Ticker {
    fn start() -> Self {
        let want = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let ticks = Arc::new(AtomicU64::new(0));
        let (w, a, t) = (want.clone(), active.clone(), ticks.clone());
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(1));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                iv.tick().await;
                let want = w.load(Ordering::SeqCst);
                if want > 0 && a.load(Ordering::SeqCst) >= want {
                    t.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self {
            want,
            active,
            ticks,
        }
    }

    /// `work`, counted as in flight while it runs.
    fn track<F: std::future::Future>(
        &self,
        work: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let active = self.active.clone();
        async move {
            active.fetch_add(1, Ordering::SeqCst);
            let out = work.await;
            active.fetch_sub(1, Ordering::SeqCst);
            out
        }
    }

    /// Runs `work`, counting the ticks made while `want` tracked calls were in
    /// flight; returns its output and those ticks.
    async fn during<T>(&self, want: usize, work: impl std::future::Future<Output = T>) -> (T, u64) {
        // Let the ticker task start before the work does.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.ticks.store(0, Ordering::SeqCst);
        self.want.store(want, Ordering::SeqCst);
        let out = work.await;
        self.want.store(0, Ordering::SeqCst);
        (out, self.ticks.load(Ordering::SeqCst))
    }
}

/// Applies `pages[i]` to `stores[i]`, each in a tracked task of its own, and
/// returns the reports.
async fn apply_all(
    ticker: &Ticker,
    stores: &[Arc<SledStore>],
    pages: &[Arc<Page>],
) -> Vec<ApplyReport> {
    let tasks: Vec<_> = stores
        .iter()
        .zip(pages)
        .map(|(s, page)| {
            let (s, page) = (s.clone(), page.clone());
            tokio::spawn(ticker.track(async move { s.apply_remote(&page).await }))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(dir: &tempfile::TempDir, name: &str) -> Arc<SledStore> {
    Arc::new(SledStore::open(dir.path().join(name), Schema::conformance()).unwrap())
}

/// Two large pages applying at once, one per worker: the ticker still ticks,
/// through the transactions and fsyncs too.
#[test]
fn other_tasks_progress_while_large_pages_apply_on_two_workers() {
    two_workers().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let stores = [open(&dir, "a"), open(&dir, "b")];
        let pages = [Arc::new(big_page(BIG_PAGE)), Arc::new(big_page(BIG_PAGE))];
        let ticker = Ticker::start();
        let (reports, ticks) = ticker
            .during(2, apply_all(&ticker, &stores, &pages))
            .await;
        for r in &reports {
            assert_eq!(r.applied, BIG_PAGE);
        }
        eprintln!("ticks while two {BIG_PAGE}-record pages applied: {ticks}");
        assert!(
            ticks >= MIN_TICKS,
            "the ticker ticked {ticks} times while the pages applied: the store blocked the workers"
        );
        let gone = [
            Arc::new(tombstones(&pages[0])),
            Arc::new(tombstones(&pages[1])),
        ];
        let (reports, ticks) = ticker.during(2, apply_all(&ticker, &stores, &gone)).await;
        for r in &reports {
            assert_eq!(r.applied, BIG_PAGE);
        }
        for s in &stores {
            assert_eq!(s.count("songs").await.unwrap(), 0);
        }
        eprintln!("ticks while two pages of {BIG_PAGE} tombstones applied: {ticks}");
        assert!(
            ticks >= MIN_TICKS_STRICT,
            "the ticker ticked {ticks} times while the transactions ran: the store blocked the workers"
        );
    });
}

/// Two tasks writing one record at a time, each write flushed (fsync), then
/// acking them all: the ticker still ticks while both are writing.
#[test]
fn other_tasks_progress_while_writes_flush_on_two_workers() {
    two_workers().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let stores = [open(&dir, "a"), open(&dir, "b")];
        let ticker = Ticker::start();
        let writes = |s: Arc<SledStore>| async move {
            for i in 0..300 {
                let f = json!({"name": format!("friend {i}")});
                let r = Record::new("friends", new_id(), f.as_object().cloned().unwrap());
                s.put(r).await.unwrap();
            }
            let acks = s
                .pending(0, 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| Ack::Applied {
                    collection: e.collection,
                    id: e.id,
                    change_id: e.change_id,
                    version: Version(1),
                })
                .collect();
            s.ack(acks).await.unwrap();
        };
        let (_, ticks) = ticker
            .during(2, async {
                let tasks: Vec<_> = stores
                    .iter()
                    .map(|s| tokio::spawn(ticker.track(writes(s.clone()))))
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
            .await;
        for s in &stores {
            assert_eq!(s.pending_count().await.unwrap(), 0);
            assert_eq!(s.count("friends").await.unwrap(), 300);
        }
        eprintln!("ticks while 2 x 300 flushed puts ran: {ticks}");
        assert!(
            ticks >= MIN_TICKS_STRICT,
            "the ticker ticked {ticks} times while the writes flushed: the store blocked the workers"
        );
    });
}

/// Even a current-thread runtime (one thread for every task) keeps running other
/// tasks while a large page applies: the store's sled work is on the blocking
/// pool and the page is encoded in slices.
#[test]
fn other_tasks_progress_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, "a");
        let page = big_page(BIG_PAGE);
        let ticker = Ticker::start();
        let (r, ticks) = ticker.during(1, ticker.track(s.apply_remote(&page))).await;
        assert_eq!(r.unwrap().applied, BIG_PAGE);
        eprintln!("ticks on one thread while a {BIG_PAGE}-record page applied: {ticks}");
        assert!(
            ticks >= MIN_TICKS,
            "only {ticks} ticks: the store blocked the thread"
        );
        let gone = tombstones(&page);
        let (r, ticks) = ticker.during(1, ticker.track(s.apply_remote(&gone))).await;
        assert_eq!(r.unwrap().applied, BIG_PAGE);
        eprintln!("ticks on one thread while {BIG_PAGE} tombstones applied: {ticks}");
        assert!(
            ticks >= MIN_TICKS_STRICT,
            "only {ticks} ticks: the store's transaction blocked the thread"
        );
    });
}

/// Outside any tokio runtime the calls run on the calling thread, to the same
/// effect.
#[test]
fn calls_work_outside_a_tokio_runtime() {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path().join("db"), Schema::conformance()).unwrap();
    let id = new_id();
    let f = json!({"name": "x"}).as_object().cloned().unwrap();
    block_on(s.put(Record::new("friends", id.clone(), f.clone()))).unwrap();
    assert_eq!(
        block_on(s.get("friends", &id)).unwrap().map(|r| r.fields),
        Some(f)
    );
    let r = block_on(s.apply_remote(&big_page(2000))).unwrap();
    assert_eq!(r.applied, 2000);
    assert_eq!(block_on(s.pending_count()).unwrap(), 1);
}
