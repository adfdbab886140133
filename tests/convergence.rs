//! The remote contract (`sync_traits::testkit::remote_contract`) against the
//! in-memory `FakeRemote` (`FakeTarget`): random interleavings of offline edits on
//! 2–4 clients, crashes at named points, lost and duplicated responses, transient
//! errors, direct server edits, rejections and log compaction, then every invariant
//! of DESIGN.md (convergence, no silent loss, no skipped change, crash safety — the
//! fake counts applications, so "no change applied twice" is checked here —, and
//! retention). The suite's module docs list them.
//!
//! `PROPTEST_CASES` raises the case count (default 256; mixed stores a quarter).

use std::sync::Arc;

use proptest::prelude::*;
use sync_traits::testkit::remote_contract::{
    run_contract_case, scenario, FakeTarget, StoreKind, LOCAL_ONLY,
};
use sync_traits::LocalStore;

fn run(
    kinds: &[StoreKind],
    policies: &[u8],
    steps: &[sync_traits::testkit::remote_contract::Step],
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(run_contract_case(&FakeTarget, kinds, policies, steps))
}

fn schema() -> tidemark_backends::Schema {
    tidemark_backends::Schema::conformance().collection(
        tidemark_backends::CollectionSchema::new(LOCAL_ONLY)
            .text("title")
            .local_only(),
    )
}

/// SQLite on an in-memory database, sled on a temporary one, and memory.
fn mixed() -> [StoreKind; 3] {
    [
        StoreKind::Open(
            "Sqlite",
            Arc::new(|| {
                tidemark_backends::SqliteStore::open_in_memory(schema())
                    .map(|s| Arc::new(s) as Arc<dyn LocalStore>)
                    .map_err(|e| e.to_string())
            }),
        ),
        StoreKind::Open(
            "Sled",
            Arc::new(|| {
                tidemark_backends::SledStore::open_temporary(schema())
                    .map(|s| Arc::new(s) as Arc<dyn LocalStore>)
                    .map_err(|e| e.to_string())
            }),
        ),
        StoreKind::Memory,
    ]
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
        run(&kinds, &policies, &steps)?;
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
        let all = mixed();
        let kinds: Vec<_> = (0..policies.len()).map(|i| all[(i + policies[0] as usize) % 3].clone()).collect();
        run(&kinds, &policies, &steps)?;
    }
}
