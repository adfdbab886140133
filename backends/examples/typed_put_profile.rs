//! A typed put (`store.collection::<Song>("songs").put(&song)`) against an untyped
//! put of the same record, interleaved call by call so both sides meet the same
//! machine load: in each round, record `i` is put untyped into one store and
//! typed into another (which goes first alternates), each call timed alone.
//! Prints, per backend, the median call of each side, their ratio, and the
//! spread of the per-round ratios (sum of typed ÷ sum of untyped calls).
//!
//! cargo run --release -p tidemark-backends --features sqlite,sled --example typed_put_profile
use std::time::Instant;

use sync_traits::testkit::MemoryStore;
use sync_traits::{new_id, LocalStore, LocalStoreExt};
use tidemark_backends::{Schema, SledStore, SqliteStore};

#[path = "../benches/support/typed_song.rs"]
mod typed_song;

const ROUNDS: usize = 15;
const PER_ROUND: usize = 400;

fn report(
    name: &str,
    rt: &tokio::runtime::Runtime,
    untyped: &dyn LocalStore,
    typed: &dyn LocalStore,
) {
    let handle = typed.collection::<typed_song::Song>("songs");
    let (mut calls_u, mut calls_t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let ids: Vec<_> = (0..PER_ROUND).map(|_| new_id()).collect();
        let records: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| typed_song::untyped(id, round * PER_ROUND + i))
            .collect();
        let songs: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| typed_song::typed(id, round * PER_ROUND + i))
            .collect();
        let (mut sum_u, mut sum_t) = (0.0, 0.0);
        for (i, (r, s)) in records.into_iter().zip(&songs).enumerate() {
            let put_untyped = || {
                let t = Instant::now();
                rt.block_on(untyped.put(r)).unwrap();
                t.elapsed().as_secs_f64()
            };
            let put_typed = || {
                let t = Instant::now();
                rt.block_on(handle.put(s)).unwrap();
                t.elapsed().as_secs_f64()
            };
            let (u, t) = if i % 2 == 0 {
                let u = put_untyped();
                (u, put_typed())
            } else {
                let t = put_typed();
                (put_untyped(), t)
            };
            if round > 0 {
                // round 0 warms up
                calls_u.push(u);
                calls_t.push(t);
                sum_u += u;
                sum_t += t;
            }
        }
        if round > 0 {
            ratios.push(sum_t / sum_u);
        }
    }
    for v in [&mut calls_u, &mut calls_t, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let (mu, mt) = (calls_u[calls_u.len() / 2], calls_t[calls_t.len() / 2]);
    println!(
        "{name}: median call untyped {:.2} µs, typed {:.2} µs: {:.3}x; per-round ratio \
         median {:.3}x (min {:.3}x, max {:.3}x; {ROUNDS} rounds of {PER_ROUND} pairs)",
        mu * 1e6,
        mt * 1e6,
        mt / mu,
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let su = SqliteStore::open(d.path().join("u.db"), Schema::conformance()).unwrap();
    let st = SqliteStore::open(d.path().join("t.db"), Schema::conformance()).unwrap();
    report("SQLite", &rt, &su, &st);
    let noflush = || tidemark_backends::sled::SledOptions {
        flush_every_write: false,
        ..Default::default()
    };
    let lu = SledStore::open_with(d.path().join("lu"), Schema::conformance(), noflush()).unwrap();
    let lt = SledStore::open_with(d.path().join("lt"), Schema::conformance(), noflush()).unwrap();
    report("sled (flush_every_write: false)", &rt, &lu, &lt);
    let fu = SledStore::open(d.path().join("fu"), Schema::conformance()).unwrap();
    let ft = SledStore::open(d.path().join("ft"), Schema::conformance()).unwrap();
    report("sled (flush per call, default)", &rt, &fu, &ft);
    // No I/O at all: the handle's own cost against the cheapest store there is.
    report(
        "MemoryStore (no I/O: the handle's cost alone)",
        &rt,
        &MemoryStore::new(),
        &MemoryStore::new(),
    );
}
