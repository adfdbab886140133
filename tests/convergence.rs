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
use support::{run_case, scenario, StoreKind};

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
