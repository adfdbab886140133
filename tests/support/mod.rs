//! The convergence harness shared by the property tests: clients, steps, the final
//! quiet round and the invariant checks.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use proptest::test_runner::TestCaseError;
use serde_json::json;
use sync_traits::testkit::{FakeRemote, Fault, Faulty, MemoryStore};
use sync_traits::{
    new_id, ChangeId, ClientWins, FieldMerge, Fields, LocalStore, Record, RecordId, RetryPolicy,
    ServerWins, SyncConfig, SyncEngine, SyncEvent,
};

/// Records the steps pick from (a small pool, so clients collide often).
pub const RECORDS: usize = 5;
/// The one collection used: the conformance suite's `songs`.
pub const COLL: &str = "songs";
const FIELDS: [&str; 3] = ["title", "artist", "order"];

/// One step of a scenario.
#[derive(Clone, Debug)]
pub enum Step {
    /// Client creates record (if absent locally) with a value.
    Create(usize, usize, i64),
    /// Client changes one field of its local copy (if present).
    Update(usize, usize, usize, i64),
    /// Client deletes its local copy (if present).
    Delete(usize, usize),
    /// Client syncs (if online).
    Sync(usize),
    /// Client goes offline / online.
    ToggleOnline(usize),
    /// The remote applies the client's next push, then the client dies before acking.
    CrashAfterPush(usize),
    /// The client fetches a page, then dies before applying it.
    CrashAfterPull(usize),
    /// The response to the next push is lost (the engine retries).
    LoseResponse(usize),
    /// The next push is delivered twice.
    Duplicate(usize),
    /// The next pull fails transiently once.
    Transient(usize),
    /// Client writes a record the server will refuse.
    Invalid(usize, usize),
    /// A write made directly on the server (admin UI).
    ServerEdit(usize, i64),
    /// A delete made directly on the server.
    ServerDelete(usize),
    /// The server compacts its log: tombstones go, the horizon moves to the head.
    Compact,
}

/// Which local store a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `MemoryStore`.
    Memory,
}

type Engine = SyncEngine<Arc<dyn LocalStore>, Faulty<FakeRemote>>;

struct Client {
    engine: Engine,
    store: Arc<dyn LocalStore>,
    remote: Faulty<FakeRemote>,
    online: bool,
    events: tokio::sync::broadcast::Receiver<SyncEvent>,
    /// Change ids reported to the app in conflict or rejection events.
    reported: HashSet<ChangeId>,
    /// Every write: (record, change id), in order.
    writes: Vec<(usize, ChangeId)>,
}

fn make_store(kind: StoreKind) -> Arc<dyn LocalStore> {
    match kind {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
    }
}

fn make_engine(store: Arc<dyn LocalStore>, remote: Faulty<FakeRemote>, policy: u8) -> Engine {
    let e = SyncEngine::new(store, remote).with_config(SyncConfig {
        push_batch: 3,
        page_size: 2,
        retry: RetryPolicy::immediate(3),
        ..SyncConfig::default()
    });
    match policy % 3 {
        0 => e.with_policy(ServerWins),
        1 => e.with_policy(ClientWins),
        _ => e.with_policy(FieldMerge),
    }
}

fn song(v: i64) -> Fields {
    json!({"title": format!("t{v}"), "artist": "a", "order": v})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

impl Client {
    fn drain_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                SyncEvent::Conflict { local, .. } => {
                    self.reported.insert(local.change_id);
                }
                SyncEvent::Rejected { change, .. } => {
                    self.reported.insert(change.change_id);
                }
                _ => {}
            }
        }
    }

    async fn write(
        &mut self,
        rec: usize,
        id: &RecordId,
        fields: Option<Fields>,
    ) -> Result<(), TestCaseError> {
        let done = match fields {
            Some(f) => {
                self.store
                    .put(Record::new(COLL, id.clone(), f))
                    .await
                    .map_err(fail)?;
                true
            }
            None => self.store.delete(COLL, id).await.map_err(fail)?,
        };
        if done {
            // The outbox entry for this record now carries this write's change id.
            let entries = self.store.pending(0, usize::MAX).await.map_err(fail)?;
            let e = entries
                .iter()
                .find(|e| &e.id == id)
                .ok_or_else(|| TestCaseError::fail("a local write left no outbox entry"))?;
            self.writes.push((rec, e.change_id.clone()));
        }
        Ok(())
    }

    async fn sync(&mut self) {
        // Errors are expected here (injected crashes, exhausted retries); the data
        // must survive them, which the final checks prove.
        let _ = self.engine.sync().await;
        self.drain_events();
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Runs one scenario and checks every invariant.
pub fn run_case(kinds: &[StoreKind], policies: &[u8], steps: &[Step]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(fail)?;
    rt.block_on(run_case_async(kinds, policies, steps))
}

async fn run_case_async(
    kinds: &[StoreKind],
    policies: &[u8],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let server = FakeRemote::new();
    let ids: Vec<RecordId> = (0..RECORDS).map(|_| new_id()).collect();
    let mut clients: Vec<Client> = kinds
        .iter()
        .zip(policies)
        .map(|(k, p)| {
            let store = make_store(*k);
            let remote = Faulty::new(server.clone());
            let engine = make_engine(store.clone(), remote.clone(), *p);
            let events = engine.subscribe();
            Client {
                engine,
                store,
                remote,
                online: true,
                events,
                reported: HashSet::new(),
                writes: Vec::new(),
            }
        })
        .collect();

    for step in steps {
        match *step {
            Step::Create(c, r, v) => {
                let cl = &mut clients[c];
                if cl.store.get(COLL, &ids[r]).await.map_err(fail)?.is_none() {
                    cl.write(r, &ids[r], Some(song(v))).await?;
                }
            }
            Step::Update(c, r, f, v) => {
                let cl = &mut clients[c];
                if let Some(mut rec) = cl.store.get(COLL, &ids[r]).await.map_err(fail)? {
                    let val = if FIELDS[f] == "order" {
                        json!(v)
                    } else {
                        json!(format!("{}{v}", FIELDS[f]))
                    };
                    rec.fields.insert(FIELDS[f].into(), val);
                    cl.write(r, &ids[r], Some(rec.fields)).await?;
                }
            }
            Step::Delete(c, r) => {
                clients[c].write(r, &ids[r], None).await?;
            }
            Step::Invalid(c, r) => {
                let mut f = song(-1);
                f.insert("invalid".into(), json!(true));
                clients[c].write(r, &ids[r], Some(f)).await?;
            }
            Step::Sync(c) => {
                if clients[c].online {
                    clients[c].sync().await;
                }
            }
            Step::ToggleOnline(c) => clients[c].online = !clients[c].online,
            Step::CrashAfterPush(c) | Step::LoseResponse(c) | Step::Duplicate(c) => {
                let fault = match step {
                    Step::CrashAfterPush(_) => Fault::CrashAfter,
                    Step::LoseResponse(_) => Fault::LoseResponse,
                    _ => Fault::Duplicate,
                };
                let cl = &mut clients[c];
                if cl.online {
                    cl.remote.on_push(fault);
                    cl.sync().await;
                    // A crashed client restarts: a new engine over the same store.
                    let p = policies[c];
                    cl.engine = make_engine(cl.store.clone(), cl.remote.clone(), p);
                    cl.events = cl.engine.subscribe();
                }
            }
            Step::CrashAfterPull(c) | Step::Transient(c) => {
                let fault = if matches!(step, Step::Transient(_)) {
                    Fault::TransientBefore
                } else {
                    Fault::CrashAfter
                };
                let cl = &mut clients[c];
                if cl.online {
                    cl.remote.on_pull(fault);
                    cl.sync().await;
                }
            }
            Step::ServerEdit(r, v) => {
                server.server_write(COLL, &ids[r], Some(song(v)));
            }
            Step::ServerDelete(r) => {
                server.server_write(COLL, &ids[r], None);
            }
            Step::Compact => {
                server.compact();
            }
        }
        // Unused faults (a push fault when the outbox was empty) must not leak into
        // the quiet round; clear them by letting them expire in a no-op call.
        for cl in &clients {
            while cl.remote.queued() != (0, 0) {
                let (pull, push) = cl.remote.queued();
                if push > 0 {
                    let _ = sync_traits::RemoteStore::push(&cl.remote, vec![]).await;
                }
                if pull > 0 {
                    let _ = sync_traits::RemoteStore::pull(
                        &cl.remote,
                        server.head(),
                        1,
                        sync_traits::PullMode::Incremental,
                    )
                    .await;
                }
            }
        }
    }

    // Quiet round: everyone online, no faults, sync until nothing moves.
    for round in 0..4 {
        for cl in clients.iter_mut() {
            cl.online = true;
            let r = cl.engine.sync().await;
            cl.drain_events();
            if let Err(e) = r {
                return Err(TestCaseError::fail(format!(
                    "quiet sync {round} failed: {e}"
                )));
            }
        }
    }

    check_invariants(&server, &clients).await
}

async fn check_invariants(server: &FakeRemote, clients: &[Client]) -> Result<(), TestCaseError> {
    let truth: BTreeMap<RecordId, Fields> = server
        .snapshot()
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect();
    let applied = server.applied_change_ids();
    // 4. Idempotency: no change applied twice.
    if let Some((c, n)) = applied.iter().find(|(_, n)| **n > 1) {
        return Err(TestCaseError::fail(format!("change {c} applied {n} times")));
    }
    for (i, cl) in clients.iter().enumerate() {
        // 1. Convergence.
        let mine: BTreeMap<RecordId, Fields> = cl
            .store
            .list(COLL)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        if mine != truth {
            return Err(TestCaseError::fail(format!(
                "client {i} diverged:\n local  {mine:?}\n server {truth:?}"
            )));
        }
        // 3. Caught up.
        let st = cl.store.sync_state().await.map_err(fail)?;
        if st.watermark != server.head() || st.resyncing {
            return Err(TestCaseError::fail(format!(
                "client {i} not caught up: {st:?} vs head {:?}",
                server.head()
            )));
        }
        // 4. Nothing stuck.
        let left = cl.store.pending_count().await.map_err(fail)?;
        if left != 0 {
            return Err(TestCaseError::fail(format!(
                "client {i} has {left} unpushed changes after the quiet round"
            )));
        }
        // 2. No silent loss.
        let quarantined: HashSet<ChangeId> = cl
            .store
            .quarantined()
            .await
            .map_err(fail)?
            .into_iter()
            .map(|q| q.change.change_id)
            .collect();
        let mut last_per_record: HashMap<usize, usize> = HashMap::new();
        for (k, (rec, _)) in cl.writes.iter().enumerate() {
            last_per_record.insert(*rec, k);
        }
        for (k, (rec, cid)) in cl.writes.iter().enumerate() {
            let superseded = last_per_record.get(rec).is_some_and(|last| *last > k);
            let on_server = applied.contains_key(cid);
            let reported = cl.reported.contains(cid);
            if !(on_server || reported || superseded) {
                return Err(TestCaseError::fail(format!(
                    "client {i}: write {cid} to record {rec} was silently lost"
                )));
            }
            if cl.reported.contains(cid) && !on_server && !quarantined.contains(cid) {
                // Reported as a conflict: fine, the app had the data in the event.
            }
        }
    }
    Ok(())
}
