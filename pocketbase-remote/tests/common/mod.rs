//! Shared helpers for the PocketBase integration tests.
#![allow(dead_code)]

use pocketbase_remote::PocketBaseRemote;
use serde_json::{json, Value};
use sync_traits::{
    new_id, ChangeId, Fields, Op, Page, PullMode, PushChange, PushOutcome, RecordId, RemoteStore,
    Version, Watermark,
};

pub fn fields(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

pub fn song(title: &str, order: i64, owner: &RecordId) -> Fields {
    fields(json!({"title": title, "artist": "x", "order": order, "owner": owner.as_str()}))
}

/// A change-id generator standing in for one local store.
pub struct Client {
    pub id: RecordId,
    pub n: u64,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self { id: new_id(), n: 0 }
    }
    pub fn cid(&mut self) -> ChangeId {
        self.n += 1;
        ChangeId {
            client: self.id.clone(),
            n: self.n,
        }
    }
    pub fn upsert(
        &mut self,
        coll: &str,
        id: &RecordId,
        base: Option<u64>,
        f: Fields,
    ) -> PushChange {
        PushChange {
            change_id: self.cid(),
            collection: coll.into(),
            id: id.clone(),
            base: base.map(Version),
            op: Op::Upsert(f),
        }
    }
    pub fn delete(&mut self, coll: &str, id: &RecordId, base: u64) -> PushChange {
        PushChange {
            change_id: self.cid(),
            collection: coll.into(),
            id: id.clone(),
            base: Some(Version(base)),
            op: Op::Delete,
        }
    }
}

pub fn applied(o: &PushOutcome) -> u64 {
    match o {
        PushOutcome::Applied { version } => version.0,
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// Pulls everything from `since` page by page; returns all pages.
pub async fn pull_all(r: &PocketBaseRemote, since: u64, limit: usize) -> Vec<Page> {
    let mut wm = Watermark(since);
    let mut pages = Vec::new();
    for _ in 0..10_000 {
        let p = r
            .pull(wm, limit, PullMode::Incremental)
            .await
            .expect("pull");
        assert!(p.watermark >= wm, "watermark went back");
        assert!(p.changes.len() <= limit, "page over limit");
        wm = p.watermark;
        let more = p.more;
        pages.push(p);
        if !more {
            return pages;
        }
    }
    panic!("pull did not finish");
}
