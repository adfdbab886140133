//! First sync through a 10% filter against the full first sync, side by side in
//! one run, from a real local PocketBase into fresh SQLite files. The server holds
//! N records (default 100 000) of one user, every tenth with `artist = 'jazz'`
//! (random ids, so the matching records are spread over the whole seq range).
//! Each of `ROUNDS` rounds (default 3) runs, in alternating order: the full first
//! sync, the filtered first sync (`SyncScope` with `artist = 'jazz'`), and the
//! download of the same 10% with PocketBase's list API (`filter=artist='jazz'`,
//! 1000 per page), the floor for the filtered sync. Medians and ratios at the end.
//!
//! `bash scripts/install-pocketbase.sh && ROUNDS=3 cargo run --release --example partial_sync [N]`

use std::time::{Duration, Instant};

use pocketbase_remote::harness::TestServer;
use sync_traits::{Filter, SyncConfig, SyncEngine, SyncScope};
use tidemark_backends::{Schema, SqliteStore};

/// One first sync into a fresh SQLite file with `scope`; wall time and records.
async fn first_sync(srv: &TestServer, scope: SyncScope) -> (Duration, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("app.sqlite"), Schema::sample()).expect("store");
    let engine = SyncEngine::new(store, srv.user("bench@t.io").await)
        .with_config(SyncConfig {
            page_size: 1000,
            ..SyncConfig::default()
        })
        .with_scope(scope);
    let t = Instant::now();
    let report = engine.sync().await.expect("sync");
    (t.elapsed(), report.pulled)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let srv = TestServer::start();
    let owner = srv.create_user("bench@t.io").await;
    let remote = srv.user("bench@t.io").await;
    let t = Instant::now();
    pocketbase_remote::harness::seed_songs(&remote, &owner, n, |i| {
        if i % 10 == 0 {
            "jazz"
        } else {
            "rock"
        }
    })
    .await;
    let tenth = n.div_ceil(10);
    eprintln!("seeded {n} records ({tenth} jazz) in {:.1?}", t.elapsed());
    let jazz = || SyncScope::all().filter("songs", Filter::new("artist = 'jazz'").expect("filter"));
    let token = remote.token().await.expect("token");
    let http = reqwest::Client::new();
    let (mut full, mut filtered, mut floor) = (vec![], vec![], vec![]);
    println!("records: {n}, filter matches {tenth}, page size 1000, {rounds} rounds");
    for round in 1..=rounds {
        let (mut f, mut p) = (None, None);
        // Alternate which goes first, so neither always meets a warmer server.
        for which in if round % 2 == 1 { [0, 1] } else { [1, 0] } {
            if which == 0 {
                f = Some(first_sync(&srv, SyncScope::all()).await);
            } else {
                p = Some(first_sync(&srv, jazz()).await);
            }
        }
        let ((f, fn_), (p, pn)) = (f.expect("full"), p.expect("filtered"));
        assert_eq!((fn_, pn), (n, tenth), "every record, and exactly the 10%");
        let t = Instant::now();
        assert_eq!(
            pocketbase_remote::harness::download_matching_pages(
                &http,
                srv.url(),
                &token,
                "songs",
                Some("artist='jazz'"),
                tenth,
            )
            .await,
            tenth
        );
        let d = t.elapsed();
        println!(
            "round {round}: full first sync {f:.2?}, filtered {p:.2?} ({:.3}x of full), \
             filtered list download {d:.2?} (filtered sync {:.2}x of it)",
            p.as_secs_f64() / f.as_secs_f64(),
            p.as_secs_f64() / d.as_secs_f64()
        );
        full.push(f);
        filtered.push(p);
        floor.push(d);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (f, p, d) = (med(&mut full), med(&mut filtered), med(&mut floor));
    println!("medians over {rounds} rounds:");
    println!(
        "full first sync ({n}):          {f:.2?}  ({:.0}/s)",
        n as f64 / f.as_secs_f64()
    );
    println!(
        "filtered first sync ({tenth}):    {p:.2?}  ({:.0}/s)  {:.3}x of full",
        tenth as f64 / p.as_secs_f64(),
        p.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "filtered list download ({tenth}): {d:.2?}  filtered sync {:.2}x of it",
        p.as_secs_f64() / d.as_secs_f64()
    );
}
