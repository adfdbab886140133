//! Initial sync of N records (default 100 000) from a real local PocketBase into a
//! fresh SQLite file, next to merely downloading the same records with PocketBase's
//! list API, with the peak memory the sync added and the CPU time each phase cost
//! this process and the server. Each of `ROUNDS` rounds (default 3) runs the
//! download, `RemoteStore::pull` alone and a full sync back to back; medians are
//! printed at the end, with the stores' applies of the same pages (SQLite and
//! sled, joined into the engine's resync batches) timed alone, wall and CPU.
//!
//! `bash scripts/install-pocketbase.sh && ROUNDS=5 cargo run --release --example initial_sync [N]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pocketbase_remote::harness::TestServer;
use sync_traits::{LocalStore, RemoteStore, SyncConfig, SyncEngine};
use tidemark_backends::{Schema, SledStore, SqliteStore};

/// `pages` joined into batches of `batch` changes, as `SyncEngine` applies a
/// resync's pages.
fn join_pages(pages: Vec<sync_traits::Page>, batch: usize) -> Vec<sync_traits::Page> {
    let mut out: Vec<sync_traits::Page> = Vec::new();
    for p in pages {
        match out.last_mut() {
            Some(last) if last.changes.len() < batch => {
                last.changes.extend(p.changes);
                last.watermark = p.watermark;
                last.more = p.more;
            }
            _ => out.push(p),
        }
    }
    out
}

/// A first sync's calls to the store: begin resync, every batch, finish.
async fn apply_all(store: &dyn LocalStore, batches: &[sync_traits::Page]) {
    store.begin_resync().await.expect("begin");
    for p in batches {
        store.apply_remote(p).await.expect("apply");
    }
    store.finish_resync(None).await.expect("finish");
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

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_secs(pid: &str) -> f64 {
    // /proc/<pid>/stat: fields 14 and 15 (utime, stime) in clock ticks, counted
    // after the parenthesised command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(t / 100.0)
        })
        .unwrap_or(0.0)
}

/// Runs `f`, returning its result, wall time and the CPU seconds it cost this
/// process and the server.
async fn timed<T>(
    server: &str,
    f: impl std::future::Future<Output = T>,
) -> (T, Duration, f64, f64) {
    let (c0, s0) = (cpu_secs("self"), cpu_secs(server));
    let t = Instant::now();
    let out = f.await;
    let wall = t.elapsed();
    (out, wall, cpu_secs("self") - c0, cpu_secs(server) - s0)
}

/// Pulls every page from zero (resync mode, 1000 per page), handing each to `each`.
async fn pull_all(remote: &impl RemoteStore, mut each: impl FnMut(sync_traits::Page)) {
    let mut wm = sync_traits::Watermark(0);
    loop {
        let p = remote
            .pull(wm, 1000, sync_traits::PullMode::Resync)
            .await
            .expect("pull");
        wm = p.watermark;
        let more = p.more;
        each(p);
        if !more {
            return;
        }
    }
}

/// Samples RSS every 2 ms until stopped; returns the peak.
fn sample_peak() -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let peak = Arc::new(AtomicU64::new(0));
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            peak.fetch_max(rss_kib(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, h)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let srv = TestServer::start();
    let owner = srv.create_user("bench@t.io").await;
    let remote = srv.user("bench@t.io").await;
    let t = Instant::now();
    pocketbase_remote::harness::seed_songs(&remote, &owner, n, |_| "someone").await;
    eprintln!("seeded {n} records in {:.1?}", t.elapsed());

    let token = remote.token().await.expect("token");
    let http = reqwest::Client::new();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut syncs, mut pulls, mut downloads, mut applies) = (vec![], vec![], vec![], vec![]);
    let mut peak_added = 0;
    println!("records: {n}, page size 1000, {rounds} rounds (each: download, pull, sync)");
    let server = srv.pid().to_string();
    for round in 1..=rounds {
        // 1. Baseline: download the same records with the list API, 1000 per page.
        let (got, download, dl_c, dl_s) = timed(
            &server,
            pocketbase_remote::harness::download_list_pages(&http, srv.url(), &token, "songs", n),
        )
        .await;
        assert_eq!(got, n);

        // 2. The remote alone: the same pages through RemoteStore::pull, no store.
        let puller = srv.user("bench@t.io").await;
        let (pulled, pull_only, pl_c, pl_s) = timed(&server, async {
            let mut pulled = 0;
            pull_all(&puller, |p| pulled += p.changes.len()).await;
            pulled
        })
        .await;
        assert_eq!(pulled, n);

        // 3. tidemark: a full first sync into a fresh SQLite file (pull + apply +
        //    watermark), the peak memory it adds sampled every 2 ms.
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(dir.path().join("app.sqlite"), Schema::sample()).expect("store");
        let engine = SyncEngine::new(store, srv.user("bench@t.io").await).with_config(SyncConfig {
            page_size: 1000,
            ..SyncConfig::default()
        });
        let before = rss_kib();
        let (stop, peak) = sample_peak();
        let (report, sync_time, sy_c, sy_s) = timed(&server, engine.sync()).await;
        let report = report.expect("sync");
        stop.store(true, Ordering::Relaxed);
        let peak = peak.join().unwrap_or(0);
        assert_eq!(report.pulled, n);
        if round == 1 {
            peak_added = peak.saturating_sub(before);
        }
        println!(
            "round {round}: download {download:.2?} (CPU client {dl_c:.2} s, server {dl_s:.2} s), \
             RemoteStore::pull {pull_only:.2?} ({pl_c:.2} s, {pl_s:.2} s), \
             sync→SQLite {sync_time:.2?} ({sy_c:.2} s, {sy_s:.2} s): {:.2}x",
            sync_time.as_secs_f64() / download.as_secs_f64()
        );
        downloads.push(download);
        pulls.push(pull_only);
        syncs.push(sync_time);
    }

    // 4. The stores alone: the same pages, pulled beforehand, applied to a fresh
    //    file the way the first sync does (begin resync, the pages joined into the
    //    engine's resync batches, finish), with the CPU time it cost.
    let mut pages = Vec::new();
    pull_all(&srv.user("bench@t.io").await, |p| pages.push(p)).await;
    let batches = join_pages(pages, SyncConfig::default().resync_batch);
    let (mut sled_applies, mut apply_cpu, mut sled_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(dir.path().join("app.sqlite"), Schema::sample()).expect("store");
        let (t, c) = (Instant::now(), cpu_secs("self"));
        apply_all(&store, &batches).await;
        applies.push(t.elapsed());
        apply_cpu.push(cpu_secs("self") - c);
        let store = SledStore::open(dir.path().join("app.sled"), Schema::sample()).expect("store");
        let (t, c) = (Instant::now(), cpu_secs("self"));
        apply_all(&store, &batches).await;
        store.flush().expect("flush");
        sled_applies.push(t.elapsed());
        sled_cpu.push(cpu_secs("self") - c);
    }
    apply_cpu.sort_by(f64::total_cmp);
    sled_cpu.sort_by(f64::total_cmp);
    let (apply_cpu, sled_cpu) = (apply_cpu[apply_cpu.len() / 2], sled_cpu[sled_cpu.len() / 2]);

    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (download, pull_only, sync_time, apply) = (
        med(&mut downloads),
        med(&mut pulls),
        med(&mut syncs),
        med(&mut applies),
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("medians over {rounds} rounds:");
    println!(
        "download pages (list API):    {download:.2?}  ({:.0}/s)",
        rate(download)
    );
    println!(
        "RemoteStore::pull pages only: {pull_only:.2?}  ({:.0}/s)  {:.2}x",
        rate(pull_only),
        pull_only.as_secs_f64() / download.as_secs_f64()
    );
    let sled_apply = med(&mut sled_applies);
    println!(
        "SQLite apply of those pages:  {apply:.2?}  ({:.0}/s, CPU {apply_cpu:.2} s: {:.0}/CPU-s)",
        rate(apply),
        n as f64 / apply_cpu
    );
    println!(
        "sled apply of those pages:    {sled_apply:.2?}  ({:.0}/s, CPU {sled_cpu:.2} s: {:.0}/CPU-s)",
        rate(sled_apply),
        n as f64 / sled_cpu
    );
    println!(
        "tidemark initial sync→SQLite: {sync_time:.2?}  ({:.0}/s)  {:.2}x",
        rate(sync_time),
        sync_time.as_secs_f64() / download.as_secs_f64()
    );
    println!("peak RSS added by the first sync: {peak_added} KiB");
}
