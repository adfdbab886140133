//! Property test: the sync algorithm converges under random interleavings of offline
//! edits on 2–4 clients, crashes at named points, lost and duplicated responses,
//! transient errors, direct server edits, rejections and log compaction.
//!
//! After a final quiet sync round it asserts DESIGN.md's invariants:
//! 1. convergence — every client's store equals the server;
//! 2. no silent loss — every local write was applied on the server, superseded by a
//!    later write of the same client to the same record, or reported to the app as a
//!    conflict or rejection (with its data);
//! 3. no skipped change — each client's watermark reached the server's head and its
//!    data equals the server's (a skipped change would leave a difference);
//! 4. crash safety — no change id was ever applied twice, and no outbox is left;
//! 5. retention — clients past the horizon resynced and their outboxes still landed
//!    (part of 2).
//!
//! `PROPTEST_CASES` raises the case count (default 256).

mod support;

use proptest::prelude::*;
use support::{run_case, Step, StoreKind};

fn step(clients: usize) -> impl Strategy<Value = Step> {
    let c = 0..clients;
    let rec = 0..support::RECORDS;
    prop_oneof![
        4 => (c.clone(), rec.clone(), 0..100i64).prop_map(|(c, r, v)| Step::Create(c, r, v)),
        6 => (c.clone(), rec.clone(), 0..3usize, 0..100i64).prop_map(|(c, r, f, v)| Step::Update(c, r, f, v)),
        2 => (c.clone(), rec.clone()).prop_map(|(c, r)| Step::Delete(c, r)),
        6 => c.clone().prop_map(Step::Sync),
        1 => c.clone().prop_map(Step::ToggleOnline),
        1 => (c.clone(), 0..3usize).prop_map(|(c, k)| Step::CrashAfterPush(c, k)),
        1 => (c.clone(), 0..3usize).prop_map(|(c, k)| Step::CrashAfterPull(c, k)),
        1 => (c.clone(), 0..3usize, 0..100i64).prop_map(|(c, f, v)| Step::WriteDuringPush(c, f, v)),
        1 => (c.clone(), 0..3usize, 0..3usize, 0..100i64).prop_map(|(c, k, f, v)| Step::WriteDuringPull(c, k, f, v)),
        1 => c.clone().prop_map(Step::LoseResponse),
        1 => c.clone().prop_map(Step::Duplicate),
        1 => c.clone().prop_map(Step::Transient),
        1 => (c.clone(), rec.clone()).prop_map(|(c, r)| Step::Invalid(c, r)),
        1 => (rec.clone(), 0..100i64).prop_map(|(r, v)| Step::ServerEdit(r, v)),
        1 => rec.clone().prop_map(Step::ServerDelete),
        1 => Just(Step::Compact),
        1 => (c.clone(), 0..3usize).prop_map(|(c, k)| Step::DeleteAndCompactDuringPull(c, k)),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<u8>, Vec<Step>)> {
    (2usize..=4).prop_flat_map(|n| {
        (
            prop::collection::vec(0u8..3, n),
            prop::collection::vec(step(n), 1..80),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Every client on the in-memory store.
    #[test]
    fn converges_memory((policies, steps) in scenario()) {
        let kinds = vec![StoreKind::Memory; policies.len()];
        run_case(&kinds, &policies, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256) / 4,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Clients on SQLite, sled and memory mixed in one run.
    #[test]
    fn converges_mixed_stores((policies, steps) in scenario()) {
        let all = [StoreKind::Sqlite, StoreKind::Sled, StoreKind::Memory];
        let kinds: Vec<_> = (0..policies.len()).map(|i| all[(i + policies[0] as usize) % 3]).collect();
        run_case(&kinds, &policies, &steps)?;
    }
}
