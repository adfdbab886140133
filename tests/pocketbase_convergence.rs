//! The remote contract (`sync_traits::testkit::remote_contract`, as in
//! tests/convergence.rs) against a real PocketBase
//! 0.40.6 running the tidemark extension: the same random interleavings of offline
//! edits on 2–4 clients, crashes after a push or a pull, lost and duplicated
//! responses, direct admin edits and deletes, rejected writes and compaction — but
//! every push, pull, conflict, retry and compaction goes through the real hooks,
//! triggers and routes.
//!
//! Each case gets a user of its own (the owner rule keeps the cases apart on the one
//! server) and checks after a quiet round: every client equals the server, caught up
//! to its head, no outbox left, no conflict against a client's own write, and no
//! silent loss — each write was applied, superseded by the same client, or reported.
//!
//! The oracle is not the code under test: what the server holds and which changes it
//! applied are read as superuser through PocketBase's plain record API — the records
//! (their `tm_cid`, and `tm_clients`, the newest change of each other writer) and the
//! `tm_tombstones` collection (the deleted record's memory and the delete's own change
//! id) — never through the extension's routes or the client. PocketBase remembers
//! only each writer's newest change to a record, so an earlier change of the same
//! writer to the same record counts as applied when a later one is, whichever
//! client's log holds the later one (a copied store's log holds its original's
//! changes up to the copy; the exact rule is checked against the in-memory server,
//! which remembers every change, and by `tests/e2e_edges.rs`). A delete answered while the record was not live writes
//! nothing to read back, so it is noted when answered. Compaction (the extension's
//! superuser route `/api/tidemark/compact`, with a retention of 0 s) removes the
//! tombstones and their memory, so the oracle reads every tombstone just before each
//! compaction and keeps what it saw. Not checked here, unlike against the in-memory
//! server: "no change applied twice" (PocketBase keeps no count).
//!
//! `PB_PROPTEST_CASES` sets the case count (default 12); the seed is printed, and
//! `TIDEMARK_PB_SEED=<seed>` runs the same cases again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use serde_json::{json, Value};
use sync_traits::testkit::remote_contract::{
    run_contract_case, run_remote_contract, ContractConfig, ContractServer, ContractTarget, Step,
    StoreKind,
};
use sync_traits::{
    async_trait, ChangeId, Fields, Op, PushChange, PushOutcome, RecordId, Watermark,
};

/// Members of a record response that are not record fields (as the client strips them).
const META: &[&str] = &[
    "id",
    "collectionId",
    "collectionName",
    "expand",
    "tm_seq",
    "tm_cid",
    "tm_push",
    "tm_clients",
];

/// A writer's change as the server's memory names it: (writer id, counter).
type Remembered = (String, u64);

/// (collection, record id): the key of a record's memory.
type Key = (String, String);

/// One case's view of the shared server: its user, and the superuser for direct
/// writes and for the oracle.
struct Pb {
    url: String,
    admin: PocketBaseRemote,
    admin_token: String,
    owner: RecordId,
    http: reqwest::Client,
    /// Deletes answered as applied while the record was not live on the server.
    noop_deletes: Mutex<HashSet<ChangeId>>,
    /// The memory of every tombstone, read just before each compaction removed it.
    compacted: Mutex<HashMap<Key, HashSet<Remembered>>>,
}

/// "<writer>.<counter>" → (writer, counter), as the hooks store a change id.
fn parse_cid(s: &str) -> Option<Remembered> {
    let (client, n) = s.rsplit_once('.')?;
    Some((client.to_owned(), n.parse().ok()?))
}

/// The changes a stored record or tombstone remembers as applied: its latest
/// writer's (`tm_cid`), each other writer's newest (`tm_clients` entries
/// `writer: [counter, seq]`) and, in a tombstone, the `[change id, seq]` pairs under
/// `~` keys (the deleted record's latest writer, the delete, replaced tombstones').
fn remembered(obj: &Value) -> HashSet<Remembered> {
    let mut out = HashSet::new();
    if let Some(c) = obj["tm_cid"].as_str().and_then(parse_cid) {
        out.insert(c);
    }
    if let Some(m) = obj["tm_clients"].as_object() {
        for (k, v) in m {
            let got = if k.starts_with('~') {
                v[0].as_str().and_then(parse_cid)
            } else {
                let n = match &v[0] {
                    Value::String(s) => s.parse().ok(),
                    n => n.as_u64(),
                };
                n.map(|n| (k.clone(), n))
            };
            out.extend(got);
        }
    }
    out
}

impl Pb {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .header("Authorization", &self.admin_token)
            .send()
            .await
            .expect("PocketBase request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The stored record (every field, hidden ones included), or `None` if it is not
    /// live.
    async fn record(&self, coll: &str, id: &str) -> Option<Value> {
        let url = format!("{}/api/collections/{coll}/records/{id}", self.url);
        let (status, body) = self.send(self.http.get(url)).await;
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!("read {coll}/{id}: {status} {body}"),
        }
    }

    /// Every stored tombstone.
    async fn tombstones(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for page in 1.. {
            let url = format!("{}/api/collections/tm_tombstones/records", self.url);
            let q = [
                ("page", page.to_string()),
                ("perPage", "1000".into()),
                ("sort", "tm_seq,id".into()),
                ("skipTotal", "1".into()),
            ];
            let (status, body) = self.send(self.http.get(url).query(&q)).await;
            assert_eq!(status, 200, "list tombstones: {body}");
            let items = body["items"].as_array().cloned().unwrap_or_default();
            let last = items.len() < 1000;
            out.extend(items);
            if last {
                break;
            }
        }
        out
    }

    /// What the server remembers as applied for each record of `keys`: the live
    /// record's memory, its tombstones' and what compactions removed.
    async fn memory(&self, keys: &HashSet<Key>) -> HashMap<Key, HashSet<Remembered>> {
        let mut out: HashMap<Key, HashSet<Remembered>> = HashMap::new();
        for (coll, id) in keys {
            if let Some(r) = self.record(coll, id).await {
                out.entry((coll.clone(), id.clone()))
                    .or_default()
                    .extend(remembered(&r));
            }
        }
        for t in self.tombstones().await {
            let key = (
                t["coll"].as_str().unwrap_or_default().to_owned(),
                t["rid"].as_str().unwrap_or_default().to_owned(),
            );
            if keys.contains(&key) {
                out.entry(key).or_default().extend(remembered(&t));
            }
        }
        for (key, m) in self.compacted.lock().unwrap().iter() {
            if keys.contains(key) {
                out.entry(key.clone())
                    .or_default()
                    .extend(m.iter().cloned());
            }
        }
        out
    }
}

#[async_trait]
impl ContractServer for Pb {
    async fn write_in(&self, coll: &str, id: &RecordId, fields: Option<Fields>) {
        let one = format!("{}/api/collections/{coll}/records/{id}", self.url);
        let (status, body) = match fields {
            None => self.send(self.http.delete(&one)).await,
            Some(f) => {
                let (status, body) = self.send(self.http.patch(&one).json(&f)).await;
                if status != 404 {
                    (status, body)
                } else {
                    let mut f = f;
                    f.insert("id".into(), json!(id.as_str()));
                    let all = format!("{}/api/collections/{coll}/records", self.url);
                    self.send(self.http.post(all).json(&f)).await
                }
            }
        };
        assert!(
            (200..300).contains(&status) || status == 404,
            "admin write: {status} {body}"
        );
    }

    async fn compact(&self) {
        // What the tombstones remember goes with them: read it first.
        let mut seen = Vec::new();
        for t in self.tombstones().await {
            let key = (
                t["coll"].as_str().unwrap_or_default().to_owned(),
                t["rid"].as_str().unwrap_or_default().to_owned(),
            );
            seen.push((key, remembered(&t)));
        }
        {
            let mut compacted = self.compacted.lock().unwrap();
            for (key, m) in seen {
                compacted.entry(key).or_default().extend(m);
            }
        }
        let url = format!("{}/api/tidemark/compact", self.url);
        let ask = json!({ "olderThanSeconds": 0 });
        let (status, body) = self.send(self.http.post(url).json(&ask)).await;
        assert_eq!(status, 200, "compact: {body}");
        assert!(
            self.tombstones().await.is_empty(),
            "compaction with a retention of 0 s left tombstones"
        );
    }

    async fn head(&self) -> Watermark {
        self.admin.head().await.expect("head").head
    }

    async fn live(&self, coll: &str, ids: &[RecordId]) -> BTreeMap<RecordId, Fields> {
        let mut out = BTreeMap::new();
        for id in ids {
            let Some(Value::Object(mut r)) = self.record(coll, id.as_str()).await else {
                continue;
            };
            if r.get("owner").and_then(Value::as_str) != Some(self.owner.as_str()) {
                continue;
            }
            for k in META {
                r.remove(*k);
            }
            out.insert(id.clone(), r);
        }
        out
    }

    async fn answered(&self, changes: &[PushChange], outcomes: &[PushOutcome]) {
        // A delete of what is already gone (never there, or deleted by someone else)
        // writes nothing, so leaves no trace to ask about later: note it when it is
        // answered, if the record is indeed not live on the server.
        for (c, o) in changes.iter().zip(outcomes) {
            if c.op == Op::Delete
                && matches!(o, PushOutcome::Applied { .. })
                && self.record(&c.collection, c.id.as_str()).await.is_none()
            {
                self.noop_deletes
                    .lock()
                    .unwrap()
                    .insert(c.change_id.clone());
            }
        }
    }

    async fn applied(
        &self,
        changes: &[(&'static str, RecordId, ChangeId, bool)],
    ) -> HashSet<ChangeId> {
        let keys: HashSet<Key> = changes
            .iter()
            .map(|(coll, id, _, _)| ((*coll).to_owned(), id.as_str().to_owned()))
            .collect();
        let memory = self.memory(&keys).await;
        let mut out = HashSet::new();
        for (coll, id, cid, delete) in changes {
            if *delete && self.noop_deletes.lock().unwrap().contains(cid) {
                out.insert(cid.clone());
                continue;
            }
            // Applied, or an earlier change of a writer whose later change to the
            // same record is applied: the later one was made on top of it, by the
            // same store (its outbox folds a record's writes into one entry).
            let key = ((*coll).to_owned(), id.as_str().to_owned());
            if memory.get(&key).is_some_and(|m| {
                m.iter()
                    .any(|(w, n)| w.as_str() == cid.client.as_str() && *n >= cid.n)
            }) {
                out.insert(cid.clone());
            }
        }
        out
    }

    async fn applied_twice(&self) -> Option<(ChangeId, u32)> {
        None
    }

    fn song(&self, v: i64) -> Fields {
        json!({"title": format!("t{v}"), "artist": "a", "order": v, "owner": self.owner.as_str()})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    fn invalid(&self) -> Fields {
        // An owner that does not exist: PocketBase refuses the relation (400).
        let mut f = self.song(-1);
        f.insert("owner".into(), json!("nosuchuser0000"));
        f
    }

    fn other(&self, v: i64) -> Fields {
        json!({"name": format!("f{v}"), "owner": self.owner.as_str()})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    fn odd_song(&self, v: i64) -> Fields {
        // PocketBase coerces a number sent to a text field: the stored title is
        // the number's text, which every client must then hold too.
        let mut f = self.song(v);
        f.insert("title".into(), json!(v));
        f
    }
}

/// The shared server; each case is a user of its own.
struct PbTarget {
    srv: TestServer,
    n: AtomicUsize,
}

#[async_trait]
impl ContractTarget for PbTarget {
    type Remote = PocketBaseRemote;
    async fn case(
        &self,
        clients: usize,
    ) -> Result<(Arc<dyn ContractServer>, Vec<PocketBaseRemote>), String> {
        let srv = &self.srv;
        let email = format!("case{}@t.io", self.n.fetch_add(1, Ordering::SeqCst));
        let owner = srv.create_user(&email).await;
        let mut remotes = Vec::new();
        for _ in 0..clients {
            remotes.push(srv.user(&email).await);
        }
        let admin = srv.superuser().await;
        let server = Pb {
            url: srv.url().to_owned(),
            admin_token: admin.token().await.map_err(|e| e.to_string())?,
            admin,
            owner,
            http: reqwest::Client::new(),
            noop_deletes: Mutex::default(),
            compacted: Mutex::default(),
        };
        Ok((Arc::new(server), remotes))
    }
}

#[test]
fn converges_against_real_pocketbase() {
    let target = PbTarget {
        srv: TestServer::start(),
        n: AtomicUsize::new(0),
    };
    // Its own variables: `PROPTEST_CASES` sized for the in-memory tests (thousands)
    // would run for hours against a real server.
    run_remote_contract(
        &target,
        &ContractConfig::from_env("PB_PROPTEST_CASES", 12, "TIDEMARK_PB_SEED"),
    );
}

/// Cases this test once failed on, run every time (as proptest's regression files
/// would; `TestRunner` driven by hand keeps none).
#[test]
fn pocketbase_regressions() {
    use Step::*;
    #[rustfmt::skip]
    let cases: Vec<(Vec<u8>, Vec<Step>)> = vec![
        // A client keeping its delete over another client's delete (a conflict with
        // the tombstone, then a re-based delete that must land).
        (vec![1, 1, 0, 0], vec![
            Create(1, 4, 48), CrashAfterPush(1, 0), Update(2, 2, 0, 25), ToggleOnline(3),
            ToggleOnline(0), Create(3, 1, 96), Create(0, 4, 63), Update(2, 2, 1, 89),
            Update(2, 4, 1, 1), Sync(0), ServerEdit(3, 31), Delete(1, 4), Transient(2),
            Create(3, 0, 94), Delete(2, 1), CrashAfterPush(1, 2), CrashAfterPull(1, 2), Sync(0),
            ToggleOnline(2), CrashAfterPush(0, 0), WriteDuringPush(3, 0, 54), Update(3, 2, 2, 33),
            Update(2, 2, 1, 99), Sync(2), Sync(3), Invalid(3, 2), Delete(0, 4), Sync(0),
            Update(2, 1, 1, 55), Sync(3), Create(2, 1, 81), Update(3, 1, 1, 90), Sync(2),
            LoseResponse(2), Delete(1, 1), CrashAfterPush(0, 2), Transient(3), Sync(3),
        ]),
        // A record created and deleted before it was ever pushed.
        (vec![0, 0], vec![Create(1, 4, 0), Delete(1, 4), WriteDuringPull(0, 0, 0, 0)]),
        // The same, while another client creates the same id.
        (vec![0, 0, 0], vec![
            ToggleOnline(1), Create(1, 4, 0), Create(2, 4, 59), ToggleOnline(2), Delete(0, 4),
            Create(2, 1, 58), Sync(0), Update(0, 1, 0, 96), Create(0, 3, 62), Sync(1),
            WriteDuringPull(2, 0, 1, 6), Sync(1), Update(1, 1, 1, 18), ServerDelete(1),
            WriteDuringPush(0, 1, 9), ServerEdit(2, 30), Update(0, 3, 0, 99), Delete(1, 4),
            Update(1, 0, 2, 65), Update(0, 0, 2, 3), ServerDelete(4), ServerDelete(0), Delete(2, 2),
            Update(1, 3, 0, 26), Invalid(1, 2),
        ]),
        // A delete of a record someone else deleted, based on that tombstone.
        (vec![0, 0, 0], vec![
            Create(0, 2, 0), Transient(0), Sync(2), Delete(2, 2), Sync(2), LoseResponse(1),
            Create(1, 2, 0), Delete(1, 2),
        ]),
        // A store copied before its first push: both copies push its change, the
        // original then writes on top; the copy's log holds only the earlier change.
        (vec![0, 0], vec![
            ToggleOnline(1), Create(1, 0, 0), CloneStore(1, 0), WriteDuringPull(0, 1, 0, 0),
            ToggleOnline(1), WriteDuringPush(1, 0, 0),
        ]),
        // A write removing a field, then a later write of the same client on top of
        // the server's copy (PocketBase gave the removed field its zero value): the
        // earlier change is applied though only the later one is remembered.
        (vec![0, 1, 0], vec![
            Create(1, 3, 0), Create(0, 0, 0), CrashAfterPush(0, 0), RemoveField(1, 3, 0),
            WriteDuringPull(1, 0, 0, 0), Update(1, 3, 1, 0),
        ]),
        // Deleted, created again and deleted again by the admin after a client's
        // write: the second tombstone must keep the first one's memory.
        (vec![0, 0], vec![
            Create(0, 3, 0), WriteDuringPush(0, 0, 0), ServerDelete(3), ServerEdit(3, 0),
            ServerDelete(3), Create(0, 0, 0),
        ]),
        // A create on a record whose tombstone was compacted, its base below the
        // horizon: the conflict is with a tombstone at the horizon, and the create
        // re-based on it lands (it once failed every sync as "a state that is gone").
        // ServerWins takes the tombstone; ClientWins re-bases the create on it.
        (vec![0, 0, 0], vec![
            ServerOddValue(0, 0), DeleteAndCompactDuringPull(1, 1), Sync(0), Delete(1, 0),
            Sync(1), WriteDuringPush(2, 2, 33), Compact, Create(2, 0, 97),
        ]),
        (vec![1, 1, 1], vec![
            ServerOddValue(0, 0), DeleteAndCompactDuringPull(1, 1), Sync(0), Delete(1, 0),
            Sync(1), WriteDuringPush(2, 2, 33), Compact, Create(2, 0, 97),
        ]),
    ];
    let target = PbTarget {
        srv: TestServer::start(),
        n: AtomicUsize::new(0),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (policies, steps) in cases {
        let kinds = vec![StoreKind::Memory; policies.len()];
        if let Err(e) = rt.block_on(run_contract_case(&target, &kinds, &policies, &steps)) {
            panic!("{e}\n{policies:?} {steps:?}");
        }
    }
}
