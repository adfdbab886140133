//! Shared helpers of the tests against a real PostgreSQL.
#![allow(dead_code)]

use postgres_remote::harness::TestServer;
use postgres_remote::PostgresRemote;
use serde_json::Value;
use sync_traits::{
    new_id, ChangeId, Fields, Op, Page, PullMode, PushChange, RecordId, RemoteStore, Version,
    Watermark,
};

pub fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap_or_default()
}

/// A started server with tidemark installed and `songs (id, title, n int,
/// owner)` synced with row level security on `owner`, and `notes (id, body)`
/// synced without an owner.
pub async fn server() -> (TestServer, PostgresRemote) {
    let s = TestServer::start();
    let admin = s.admin().await;
    s.sql()
        .await
        .batch_execute(
            "CREATE TABLE songs (id text PRIMARY KEY, title text, n int CHECK (n IS NULL OR n >= 0), owner text);
             CREATE TABLE notes (id text PRIMARY KEY, body text);",
        )
        .await
        .expect("create tables");
    admin
        .enable_sync("songs", Some("owner"))
        .await
        .expect("enable songs");
    admin
        .enable_sync("notes", None)
        .await
        .expect("enable notes");
    (s, admin)
}

pub fn cid(client: &RecordId, n: u64) -> ChangeId {
    ChangeId {
        client: client.clone(),
        n,
    }
}

pub fn upsert(
    c: ChangeId,
    coll: &str,
    id: &RecordId,
    base: Option<u64>,
    fields: Value,
) -> PushChange {
    PushChange {
        change_id: c,
        collection: coll.into(),
        id: id.clone(),
        base: base.map(Version),
        op: Op::Upsert(f(fields)),
    }
}

pub fn delete(c: ChangeId, coll: &str, id: &RecordId, base: Option<u64>) -> PushChange {
    PushChange {
        change_id: c,
        collection: coll.into(),
        id: id.clone(),
        base: base.map(Version),
        op: Op::Delete,
    }
}

/// Everything after `since` (incremental), all pages.
pub async fn pull_all(r: &PostgresRemote, since: u64, page: usize) -> Vec<Page> {
    let mut out = Vec::new();
    let mut wm = Watermark(since);
    for _ in 0..100_000 {
        let p = r
            .pull(
                wm,
                page,
                if wm.0 == 0 {
                    PullMode::Resync
                } else {
                    PullMode::Incremental
                },
            )
            .await
            .expect("pull");
        assert!(p.watermark >= wm);
        wm = p.watermark;
        let more = p.more;
        out.push(p);
        if !more {
            return out;
        }
    }
    panic!("pull did not finish");
}

/// A deterministic RNG (xorshift) for randomised tests; the seed is printed.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("TIDEMARK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let id = new_id();
                id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                })
            });
        println!("{test}: seed {seed} (repeat with TIDEMARK_SEED={seed})");
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
