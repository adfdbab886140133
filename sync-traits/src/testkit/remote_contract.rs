//! The contract every [`RemoteStore`] must pass, as a randomised suite a remote
//! author runs from their own tests (feature `testkit`).
//!
//! Each case runs 2–4 clients, each a [`SyncEngine`] over its own local store and
//! the remote under test, through a random scenario of [`Step`]s: offline edits and
//! deletes on a small pool of records (so clients collide), syncs, offline periods,
//! crashes after a push or a pull (a new engine over the same store), lost and
//! duplicated push responses, transient pull errors, writes the app makes while a
//! push or a pull is in flight, records the server refuses, direct admin writes and
//! deletes on the server, log compaction (also in the middle of a resync), restored
//! backups and copied stores, local-only records, transactions, a second collection
//! that starts syncing midway, and values of another type than the stores declare.
//! Then a quiet round (everyone online, no faults, four syncs each) and the checks:
//!
//! 1. **convergence**: every client's `songs` and `friends` equal the server's live
//!    records (read by the oracle, not through the remote);
//! 2. **no silent loss**: every local write was applied on the server (as the oracle
//!    tells), superseded by a later write of the same client to the same record, or
//!    kept in the store's conflict log or quarantine;
//! 3. **caught up**: each client's watermark is the server's head, no resync open;
//! 4. **crash safety**: no outbox left, and no change applied twice (where the
//!    oracle can count, [`ContractServer::applied_twice`]);
//! 5. **conflicts are real**: none reported against the client's own write;
//! 6. **local-only records** are exactly what the client wrote;
//! 7. after every step, **read your writes**: a record with an unpushed write shows
//!    exactly it.
//!
//! # Running it for a remote
//!
//! Implement [`ContractServer`] (the oracle: it writes to and reads the server
//! *directly*, as an admin would, never through the remote under test) and
//! [`ContractTarget`] (a fresh, isolated case: the oracle and one remote per
//! client), then call [`run_remote_contract`] from a test. The server must sync the
//! collections [`COLL`] (`title`, `artist` text, `order` number) and [`OTHER`]
//! (`name` text); the oracle's [`ContractServer::song`] adds what the server needs
//! (an owner, say).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sync_traits::testkit::remote_contract::{
//!     run_remote_contract, ContractConfig, ContractServer, ContractTarget,
//! };
//! use sync_traits::testkit::FakeRemote;
//!
//! struct MyTarget;
//!
//! #[sync_traits::async_trait]
//! impl ContractTarget for MyTarget {
//!     type Remote = FakeRemote; // your remote
//!     async fn case(
//!         &self,
//!         clients: usize,
//!     ) -> Result<(Arc<dyn ContractServer>, Vec<FakeRemote>), String> {
//!         // A fresh server (or a user of its own on a shared one) and its oracle;
//!         // here the fake, which is its own oracle.
//!         let server = FakeRemote::new();
//!         server.set_synced(Some(["songs", "friends"]));
//!         Ok((Arc::new(server.clone()), vec![server; clients]))
//!     }
//! }
//!
//! #[test]
//! fn my_remote_keeps_the_contract() {
//!     // MY_CASES sets the case count, MY_SEED repeats a printed seed.
//!     run_remote_contract(&MyTarget, &ContractConfig::from_env("MY_CASES", 16, "MY_SEED"));
//! }
//! ```
//!
//! A case fails with the broken invariant; [`run_remote_contract`] shrinks it to a
//! smaller scenario and panics with it and the seed. [`run_contract_case`] runs one
//! given scenario (for regression cases); [`scenario`] is the strategy, for a
//! `proptest!` of your own. Clients use [`MemoryStore`] unless
//! [`ContractConfig::stores`] names other stores ([`StoreKind::Open`]).
//!
//! What the oracle cannot see it may leave out: a server that keeps no count of
//! applications answers `None` from [`ContractServer::applied_twice`]; a server
//! that remembers only each writer's newest change to a record may count an
//! earlier change as applied when a later one of the same writer is
//! (tidemark's PocketBase and PostgreSQL oracles do); a server whose compaction
//! drops what the oracle reads keeps a copy before compacting
//! ([`ContractServer::compact`]).
//!
//! This is a testing aid, not a stable API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use crate::testkit::{FakeRemote, Fault, Faulty, MemoryStore};
use crate::{
    async_trait, new_id, ChangeId, ClientWins, FieldMerge, Fields, LocalStore, Op, Page, PullMode,
    PushChange, PushOutcome, Record, RecordId, RemoteError, RemoteState, RemoteStore, RetryPolicy,
    ServerWins, SyncConfig, SyncEngine, SyncEvent, Watermark,
};

/// Records the steps pick from (a small pool, so clients collide often).
pub const RECORDS: usize = 5;
/// The one synced collection used: the conformance suite's `songs`.
pub const COLL: &str = "songs";
/// A collection every client holds local-only (never synced).
pub const LOCAL_ONLY: &str = "drafts";
/// A second synced collection (the conformance suite's `friends`, field `name`):
/// the in-memory server syncs it only from a `ServerSyncsOther` step on, and
/// in-memory clients hold it only from a `DeclareOther` step on. Before the quiet
/// round both happen, so the final checks cover it like `songs`.
pub const OTHER: &str = "friends";

/// The collection of record `rec` of the pool: `songs` below `RECORDS`, then `friends`.
pub fn coll_of(rec: usize) -> &'static str {
    if rec < RECORDS {
        COLL
    } else {
        OTHER
    }
}
const FIELDS: [&str; 3] = ["title", "artist", "order"];

/// The server side of a scenario: what the harness does to it directly (as an admin
/// would) and what it asks of it for the final checks. Implemented for the in-memory
/// `FakeRemote` here and for a real PocketBase in `tests/pocketbase_convergence.rs`.
#[async_trait]
pub trait ContractServer: Send + Sync + 'static {
    /// A write made directly on the server (admin UI) to a record of `COLL`: `None`
    /// deletes.
    async fn write(&self, id: &RecordId, fields: Option<Fields>) {
        self.write_in(COLL, id, fields).await
    }
    /// A write made directly on the server to a record of `collection`.
    async fn write_in(&self, collection: &str, id: &RecordId, fields: Option<Fields>);
    /// The server starts syncing `OTHER` (a no-op where it always did).
    async fn sync_other(&self) {}
    /// Compacts the log: tombstones go, the horizon moves to the head.
    async fn compact(&self);
    /// The head of the change sequence.
    async fn head(&self) -> Watermark;
    /// The live records of `collection` among `ids`.
    async fn live(&self, collection: &str, ids: &[RecordId]) -> BTreeMap<RecordId, Fields>;
    /// Which of these changes (collection, record, change id, whether it deletes)
    /// the server applied.
    async fn applied(
        &self,
        changes: &[(&'static str, RecordId, ChangeId, bool)],
    ) -> HashSet<ChangeId>;
    /// Sees the answers to a client's push, for a server that keeps no trace of some
    /// of what it applies. Nothing by default.
    async fn answered(&self, _changes: &[PushChange], _outcomes: &[PushOutcome]) {}
    /// A change applied more than once, if the server can tell.
    async fn applied_twice(&self) -> Option<(ChangeId, u32)>;
    /// A song record with value `v` (plus what the server requires, such as an owner).
    fn song(&self, v: i64) -> Fields;
    /// A record the server refuses.
    fn invalid(&self) -> Fields;
    /// A record of `OTHER` with value `v`.
    fn other(&self, v: i64) -> Fields;
    /// A song whose `title` holds a value of another type than the stores declare
    /// (a number), as the server keeps it.
    fn odd_song(&self, v: i64) -> Fields;
}

#[async_trait]
impl ContractServer for FakeRemote {
    async fn write_in(&self, collection: &str, id: &RecordId, fields: Option<Fields>) {
        self.server_write(collection, id, fields);
    }
    async fn sync_other(&self) {
        self.set_synced(Some([COLL, OTHER]));
    }
    async fn compact(&self) {
        FakeRemote::compact(self);
    }
    async fn head(&self) -> Watermark {
        FakeRemote::head(self)
    }
    async fn live(&self, collection: &str, ids: &[RecordId]) -> BTreeMap<RecordId, Fields> {
        self.snapshot()
            .into_iter()
            .filter(|r| r.collection == collection && ids.contains(&r.id))
            .map(|r| (r.id, r.fields))
            .collect()
    }
    async fn applied(
        &self,
        changes: &[(&'static str, RecordId, ChangeId, bool)],
    ) -> HashSet<ChangeId> {
        let all: HashMap<ChangeId, u32> = self.applied_change_ids().into_iter().collect();
        changes
            .iter()
            .filter(|(_, _, c, _)| all.contains_key(c))
            .map(|(_, _, c, _)| c.clone())
            .collect()
    }
    async fn applied_twice(&self) -> Option<(ChangeId, u32)> {
        self.applied_change_ids().into_iter().find(|(_, n)| *n > 1)
    }
    fn song(&self, v: i64) -> Fields {
        song(v)
    }
    fn invalid(&self) -> Fields {
        let mut f = song(-1);
        f.insert("invalid".into(), json!(true));
        f
    }
    fn other(&self, v: i64) -> Fields {
        json!({"name": format!("f{v}")})
            .as_object()
            .cloned()
            .unwrap()
    }
    fn odd_song(&self, v: i64) -> Fields {
        let mut f = song(v);
        f.insert("title".into(), json!(v));
        f
    }
}

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
    /// The remote applies the client's k-th next push, then the client dies before
    /// acking.
    CrashAfterPush(usize, usize),
    /// The client fetches its k-th next page, then dies before applying it.
    CrashAfterPull(usize, usize),
    /// While the client's push is in flight (after the remote applied it, before the
    /// answer), the app changes one field of the first pushed record locally.
    WriteDuringPush(usize, usize, i64),
    /// Right after the client's k-th pull returns a page (before it is applied), the
    /// app writes one field of the page's first record locally (creating it if
    /// absent).
    WriteDuringPull(usize, usize, usize, i64),
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
    /// While the client syncs, right after its k-th pull returns a page, the server
    /// deletes the first live record of that page and compacts (a resync in progress
    /// must notice the horizon move).
    DeleteAndCompactDuringPull(usize, usize),
    /// The client's store is backed up now (a copy of its file, kept aside).
    Snapshot(usize),
    /// The client's device is lost and its last backup restored: its store becomes
    /// that copy, opened anew (the writes made since the backup are gone with the
    /// device; those it pushed are on the server).
    Restore(usize),
    /// The second client's device is replaced by a copy of the first's store file
    /// (two devices now share one history).
    CloneStore(usize, usize),
    /// The client writes a record of its local-only collection.
    LocalOnlyWrite(usize, usize, i64),
    /// Client puts its local copy again without one field (if present).
    RemoveField(usize, usize, usize),
    /// Client writes record k of `OTHER` (if it holds that collection).
    OtherWrite(usize, usize, i64),
    /// The server starts syncing `OTHER`.
    ServerSyncsOther,
    /// An in-memory client starts holding `OTHER` (its app shipped a schema that
    /// declares it): what it skipped of it arrives.
    DeclareOther(usize),
    /// The server holds a song whose title is a number (another type than the
    /// stores declare).
    ServerOddValue(usize, i64),
    /// Client writes several songs in one transaction ([`LocalStore::transact`]):
    /// for each record (the first mention of each counts), `Some((field, v))` sets
    /// one field of its local copy (creating the record if absent), `None` deletes it.
    Transaction(usize, Vec<(usize, Option<(usize, i64)>)>),
}

/// Opens a fresh, empty store for one client (see [`StoreKind::Open`]).
pub type OpenStore = Arc<dyn Fn() -> Result<Arc<dyn LocalStore>, String> + Send + Sync>;

/// Which local store a client uses.
#[derive(Clone)]
pub enum StoreKind {
    /// [`MemoryStore`] holding [`COLL`] and local-only [`LOCAL_ONLY`]; it learns
    /// [`OTHER`] on a [`Step::DeclareOther`], and its backups and copies
    /// ([`Step::Snapshot`], [`Step::Restore`], [`Step::CloneStore`]) are taken.
    Memory,
    /// Another store, opened fresh and empty by the function: it must hold [`COLL`]
    /// and [`OTHER`] (the conformance suite's `songs` and `friends`) and the
    /// local-only text collection [`LOCAL_ONLY`] (field `title`) from the start.
    /// Backups, restores and copies are skipped for it. The name shows in failures.
    Open(&'static str, OpenStore),
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Memory => f.write_str("Memory"),
            StoreKind::Open(name, _) => f.write_str(name),
        }
    }
}

/// What one local write meant.
#[derive(Clone, Debug)]
struct Write {
    rec: usize,
    change_id: ChangeId,
    /// `None` for a delete; else the whole record written.
    fields: Option<Fields>,
    /// Fields this write changed (empty for a delete).
    changed: Vec<String>,
}

type Log = Arc<Mutex<Vec<Write>>>;

/// A local write the app makes while a push is in flight: (field, value).
type Pending = Arc<Mutex<Option<(usize, i64)>>>;

/// A local write the app makes after the k-th pull: (k, field, value).
type PendingPull = Arc<Mutex<Option<(usize, usize, i64)>>>;

/// Remote wrapper that performs queued app writes after the inner push was applied
/// and before its answer reaches the engine.
#[derive(Clone)]
struct Interleave<R: RemoteStore + Clone> {
    inner: Faulty<R>,
    server: Arc<dyn ContractServer>,
    store: Arc<dyn LocalStore>,
    during_push: Pending,
    log: Log,
    /// Pulls to let through before deleting a record of the returned page and
    /// compacting.
    during_pull: Arc<Mutex<Option<usize>>>,
    write_during_pull: PendingPull,
    /// Record ids, to log writes by index.
    ids: Arc<Vec<RecordId>>,
}

impl<R: RemoteStore + Clone> Interleave<R> {
    async fn app_write(&self, id: &RecordId, field: usize, v: i64) -> Result<(), RemoteError> {
        let rec = self.ids.iter().position(|i| i == id).unwrap_or(usize::MAX);
        let r = match self.store.get(COLL, id).await {
            Ok(Some(_)) => update(&*self.store, &self.log, rec, id, field, v).await,
            Ok(None) => write(&*self.store, &self.log, rec, id, Some(self.server.song(v))).await,
            Err(e) => Err(fail(e)),
        };
        r.map_err(|e| RemoteError::Permanent(format!("harness write failed: {e}")))
    }
}

#[async_trait]
impl<R: RemoteStore + Clone + 'static> RemoteStore for Interleave<R> {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        let r = self.inner.pull(since, limit, mode).await;
        let Ok(page) = &r else { return r };
        // The app writes the page's first record before the engine applies the page.
        let write = {
            let mut slot = self.write_during_pull.lock().unwrap();
            match slot.take() {
                Some((0, f, v)) if page.changes.iter().any(|c| c.collection == COLL) => page
                    .changes
                    .iter()
                    .find(|c| c.collection == COLL)
                    .map(|c| (c.id.clone(), f, v)),
                Some((k, f, v)) => {
                    *slot = Some((k.saturating_sub(1), f, v));
                    None
                }
                None => None,
            }
        };
        if let Some((id, f, v)) = write {
            self.app_write(&id, f, v).await?;
        }
        // The server deletes the page's first live record and compacts.
        let victim = {
            let mut slot = self.during_pull.lock().unwrap();
            match slot.take() {
                Some(0) => {
                    let live = page
                        .changes
                        .iter()
                        .find(|c| c.collection == COLL && c.state.fields.is_some());
                    if live.is_none() {
                        *slot = Some(0);
                    }
                    live.map(|c| c.id.clone())
                }
                Some(k) => {
                    *slot = Some(k - 1);
                    None
                }
                None => None,
            }
        };
        if let Some(id) = victim {
            self.server.write(&id, None).await;
            self.server.compact().await;
        }
        r
    }

    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        let first = changes
            .iter()
            .find(|c| c.collection == COLL)
            .map(|c| c.id.clone());
        let sent = changes.clone();
        let r = self.inner.push(changes).await;
        if let Ok(outcomes) = &r {
            self.server.answered(&sent, outcomes).await;
        }
        let queued = self.during_push.lock().unwrap().take();
        if let (Some((field, v)), Some(id)) = (queued, first) {
            self.app_write(&id, field, v).await?;
        }
        r
    }

    async fn fetch(&self, c: &str, id: &RecordId) -> Result<Option<RemoteState>, RemoteError> {
        self.inner.fetch(c, id).await
    }

    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        self.inner.horizon().await
    }

    fn max_push_batch(&self) -> usize {
        self.inner.max_push_batch()
    }
}

type Engine<R> = SyncEngine<Arc<dyn LocalStore>, Interleave<R>>;

struct Client<R: RemoteStore + Clone> {
    engine: Engine<R>,
    store: Arc<dyn LocalStore>,
    /// The same store when it is a `MemoryStore` (backups and copies are taken of it).
    memory: Option<Arc<MemoryStore>>,
    /// The last backup: the copy, the write log and the local-only records then.
    backup: Option<Backup>,
    /// What the client's local-only collection must hold.
    local_only: BTreeMap<RecordId, Fields>,
    /// Whether the client's store holds `OTHER` yet.
    holds_other: bool,
    remote: Interleave<R>,
    policy: u8,
    online: bool,
    events: tokio::sync::broadcast::Receiver<SyncEvent>,
    client_id: RecordId,
    /// Change ids reported to the app in conflict or rejection events.
    reported: HashSet<ChangeId>,
    /// A conflict reported against this client's own write (a spurious conflict).
    spurious: Option<String>,
    log: Log,
}

type Made = (Arc<dyn LocalStore>, Option<Arc<MemoryStore>>);

/// A client's backup: the store's copy, its write log and its local-only records then.
type Backup = (Arc<MemoryStore>, Vec<Write>, BTreeMap<RecordId, Fields>);

fn make_store(kind: &StoreKind) -> Result<Made, TestCaseError> {
    Ok(match kind {
        StoreKind::Memory => {
            let m = Arc::new(MemoryStore::with_collections([COLL]).with_local_only([LOCAL_ONLY]));
            (m.clone(), Some(m))
        }
        StoreKind::Open(_, open) => (open().map_err(fail)?, None),
    })
}

fn make_engine<R: RemoteStore + Clone + 'static>(
    store: Arc<dyn LocalStore>,
    remote: Interleave<R>,
    policy: u8,
) -> Engine<R> {
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

fn field_value(field: usize, v: i64) -> Value {
    if FIELDS[field] == "order" {
        json!(v)
    } else {
        json!(format!("{}{v}", FIELDS[field]))
    }
}

/// Writes through the store API and logs what the write meant.
async fn write(
    store: &dyn LocalStore,
    log: &Log,
    rec: usize,
    id: &RecordId,
    fields: Option<Fields>,
) -> Result<(), TestCaseError> {
    let coll = coll_of(rec);
    let before = store.get(coll, id).await.map_err(fail)?.map(|r| r.fields);
    let done = match &fields {
        Some(f) => {
            store
                .put(Record::new(coll, id.clone(), f.clone()))
                .await
                .map_err(fail)?;
            true
        }
        None => store.delete(coll, id).await.map_err(fail)?,
    };
    if !done {
        return Ok(());
    }
    let changed = match &fields {
        Some(f) => crate::changed_fields(before.as_ref(), Some(f))
            .into_iter()
            .collect(),
        None => vec![],
    };
    // The outbox entry for this record now carries this write's change id.
    let entries = store.pending(0, usize::MAX).await.map_err(fail)?;
    let e = entries
        .iter()
        .find(|e| &e.id == id)
        .ok_or_else(|| TestCaseError::fail("a local write left no outbox entry"))?;
    log.lock().unwrap().push(Write {
        rec,
        change_id: e.change_id.clone(),
        fields,
        changed,
    });
    Ok(())
}

/// A `Step::Transaction`: the writes in one `transact` call, each logged with the
/// change id its record's outbox entry carries after it.
async fn transaction(
    store: &dyn LocalStore,
    log: &Log,
    ids: &[RecordId],
    server: &dyn ContractServer,
    writes: &[(usize, Option<(usize, i64)>)],
) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    let mut tx = Vec::new();
    let mut planned = Vec::new();
    for &(rec, w) in writes {
        if !seen.insert(rec) {
            continue;
        }
        let id = &ids[rec];
        let before = store.get(COLL, id).await.map_err(fail)?.map(|r| r.fields);
        let after = w.map(|(field, v)| match &before {
            Some(f) => {
                let mut f = f.clone();
                f.insert(FIELDS[field].into(), field_value(field, v));
                f
            }
            None => server.song(v),
        });
        tx.push(match &after {
            Some(f) => crate::Write::Put(Record::new(COLL, id.clone(), f.clone())),
            None => crate::Write::Delete {
                collection: COLL.into(),
                id: id.clone(),
            },
        });
        planned.push((rec, before, after));
    }
    let report = store.transact(tx).await.map_err(fail)?;
    let entries = store.pending(0, usize::MAX).await.map_err(fail)?;
    for ((rec, before, after), existed) in planned.into_iter().zip(report.existed) {
        if after.is_none() && !existed {
            continue;
        }
        let e = entries
            .iter()
            .find(|e| e.id == ids[rec])
            .ok_or_else(|| TestCaseError::fail("a transaction's write left no outbox entry"))?;
        if e.tx != report.mark {
            return Err(TestCaseError::fail(format!(
                "a transaction's entry carries {:?}, not its mark {:?}",
                e.tx, report.mark
            )));
        }
        let changed = match &after {
            Some(f) => crate::changed_fields(before.as_ref(), Some(f))
                .into_iter()
                .collect(),
            None => vec![],
        };
        log.lock().unwrap().push(Write {
            rec,
            change_id: e.change_id.clone(),
            fields: after,
            changed,
        });
    }
    Ok(())
}

async fn update(
    store: &dyn LocalStore,
    log: &Log,
    rec: usize,
    id: &RecordId,
    field: usize,
    v: i64,
) -> Result<(), TestCaseError> {
    if let Some(mut r) = store.get(COLL, id).await.map_err(fail)? {
        r.fields.insert(FIELDS[field].into(), field_value(field, v));
        write(store, log, rec, id, Some(r.fields)).await?;
    }
    Ok(())
}

async fn remove_field(
    store: &dyn LocalStore,
    log: &Log,
    rec: usize,
    id: &RecordId,
    field: usize,
) -> Result<(), TestCaseError> {
    if let Some(mut r) = store.get(COLL, id).await.map_err(fail)? {
        if r.fields.remove(FIELDS[field]).is_some() {
            write(store, log, rec, id, Some(r.fields)).await?;
        }
    }
    Ok(())
}

impl<R: RemoteStore + Clone + 'static> Client<R> {
    fn drain_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                SyncEvent::Conflict { local, server, .. } => {
                    if server
                        .change_id
                        .as_ref()
                        .is_some_and(|c| c.client == self.client_id)
                    {
                        self.spurious = Some(format!("{local:?} vs {server:?}"));
                    }
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
        write(&*self.store, &self.log, rec, id, fields).await
    }

    async fn sync(&mut self) {
        // Errors are expected here (injected crashes, exhausted retries); the data
        // must survive them, which the final checks prove.
        let _ = self.engine.sync().await;
        self.drain_events();
    }

    /// The client's app starts declaring `OTHER` (in-memory stores; the others hold
    /// it from the start).
    fn declare_other(&mut self) {
        if let Some(m) = &self.memory {
            m.declare(OTHER);
        }
        self.holds_other = true;
    }

    /// A crashed client restarts: a new engine over the same store.
    fn restart(&mut self) {
        self.engine = make_engine(self.store.clone(), self.remote.clone(), self.policy);
        self.events = self.engine.subscribe();
    }

    /// The client's device now runs on `store` (a restored backup, a copy), with a
    /// new engine, and its write log and local-only records as they were in it.
    async fn replace_store(
        &mut self,
        store: Arc<MemoryStore>,
        log: Vec<Write>,
        local_only: BTreeMap<RecordId, Fields>,
    ) -> Result<(), TestCaseError> {
        let dyn_store: Arc<dyn LocalStore> = store.clone();
        self.store = dyn_store.clone();
        self.memory = Some(store);
        self.remote.store = dyn_store;
        *self.log.lock().unwrap() = log;
        self.local_only = local_only;
        self.holds_other = self.memory.as_ref().is_none_or(|m| m.holds(OTHER));
        self.client_id = self.store.client_id().await.map_err(fail)?;
        self.restart();
        Ok(())
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// What a remote under test provides the suite: for each case, a fresh view of its
/// server (the oracle) and one remote per client, all talking to the same server
/// and kept apart from other cases (a fresh server, or a user of its own).
#[async_trait]
pub trait ContractTarget: Send + Sync {
    /// The remote the clients' engines talk to.
    type Remote: RemoteStore + Clone + 'static;
    /// A fresh case for `clients` clients: the oracle and exactly `clients` remotes.
    async fn case(
        &self,
        clients: usize,
    ) -> Result<(Arc<dyn ContractServer>, Vec<Self::Remote>), String>;
}

/// The reference target: a fresh [`FakeRemote`] per case that behaves like
/// PocketBase where remotes may differ (a push is a PATCH: fields a write leaves out
/// stay; the server normalises what it stores: titles upper-cased), syncing [`COLL`]
/// until a [`Step::ServerSyncsOther`].
pub struct FakeTarget;

/// Upper-cases a song's title: the fake's stand-in for a server that normalises.
fn upper_title(_: &str, f: &mut Fields) {
    if let Some(Value::String(t)) = f.get_mut("title") {
        *t = t.to_uppercase();
    }
}

#[async_trait]
impl ContractTarget for FakeTarget {
    type Remote = FakeRemote;
    async fn case(
        &self,
        clients: usize,
    ) -> Result<(Arc<dyn ContractServer>, Vec<FakeRemote>), String> {
        let server = FakeRemote::new().with_write_rules(crate::testkit::WriteRules {
            patch: true,
            normalise: Some(upper_title),
        });
        server.set_synced(Some([COLL]));
        Ok((Arc::new(server.clone()), vec![server; clients]))
    }
}

/// Runs one scenario on a fresh case of `target`: client `i` uses store `kinds[i]`
/// and conflict policy `policies[i]` (0 server wins, 1 client wins, 2 field merge,
/// modulo 3); then a quiet round, then every invariant (see the module docs).
/// Fails with the broken invariant.
pub async fn run_contract_case<T: ContractTarget + ?Sized>(
    target: &T,
    kinds: &[StoreKind],
    policies: &[u8],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let n = kinds.len().min(policies.len());
    let (server, remotes) = target.case(n).await.map_err(fail)?;
    if remotes.len() != n {
        return Err(TestCaseError::fail(format!(
            "the target gave {} remotes for {n} clients",
            remotes.len()
        )));
    }
    let remotes = Mutex::new(remotes);
    run_case_with(
        server,
        || {
            remotes
                .lock()
                .map(|mut r| r.pop())
                .ok()
                .flatten()
                .expect("one remote per client, counted above")
        },
        &kinds[..n],
        &policies[..n],
        steps,
    )
    .await
}

/// How [`run_remote_contract`] runs: how many random cases, from which seed, and
/// which stores the clients use.
#[derive(Clone, Debug)]
pub struct ContractConfig {
    /// Random scenarios to run.
    pub cases: u32,
    /// The seed of the scenario generator; `None` draws one (it is printed either
    /// way, so a failure can be repeated).
    pub seed: Option<u64>,
    /// How hard a failure is shrunk to a smaller scenario.
    pub max_shrink_iters: u32,
    /// The stores clients take in turn: client `i` of a case uses
    /// `stores[(i + policies[0]) % stores.len()]`. Empty means all [`StoreKind::Memory`].
    pub stores: Vec<StoreKind>,
}

impl ContractConfig {
    /// `cases` from the environment variable `cases_var` (else `default_cases`), the
    /// seed from `seed_var` (else random), every client on a [`MemoryStore`].
    pub fn from_env(cases_var: &str, default_cases: u32, seed_var: &str) -> Self {
        ContractConfig {
            cases: std::env::var(cases_var)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default_cases),
            seed: std::env::var(seed_var).ok().and_then(|s| s.parse().ok()),
            max_shrink_iters: 200,
            stores: vec![],
        }
    }

    /// The same, with clients taking `stores` in turn.
    pub fn with_stores(mut self, stores: Vec<StoreKind>) -> Self {
        self.stores = stores;
        self
    }

    /// The store of each client of a case with these policies.
    pub fn kinds(&self, policies: &[u8]) -> Vec<StoreKind> {
        let first = policies.first().copied().unwrap_or(0) as usize;
        (0..policies.len())
            .map(|i| {
                if self.stores.is_empty() {
                    StoreKind::Memory
                } else {
                    self.stores[(i + first) % self.stores.len()].clone()
                }
            })
            .collect()
    }
}

/// The remote contract: `config.cases` random [`scenario`]s, each on a fresh case of
/// `target` ([`run_contract_case`]), on a runtime of its own. Prints the seed first
/// (`seed N`); panics with the shrunk failing scenario and the seed.
pub fn run_remote_contract<T: ContractTarget + ?Sized>(target: &T, config: &ContractConfig) {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let seed = config.seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u64)
    });
    eprintln!("remote contract: seed {seed}, {} cases", config.cases);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: config.cases,
            max_shrink_iters: config.max_shrink_iters,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let result = runner.run(&scenario(), |(policies, steps)| {
        let kinds = config.kinds(&policies);
        rt.block_on(run_contract_case(target, &kinds, &policies, &steps))
    });
    if let Err(e) = result {
        panic!("remote contract failed: {e} (seed {seed})");
    }
}

/// Runs one scenario against `server`, each client talking to it through its own
/// `remote()`, and checks every invariant the server lets the harness observe.
async fn run_case_with<R: RemoteStore + Clone + 'static>(
    server: Arc<dyn ContractServer>,
    remote: impl Fn() -> R,
    kinds: &[StoreKind],
    policies: &[u8],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    // Songs, then as many friends.
    let ids: Arc<Vec<RecordId>> = Arc::new((0..2 * RECORDS).map(|_| new_id()).collect());
    let mut clients = Vec::new();
    for (k, p) in kinds.iter().zip(policies) {
        let (store, memory) = make_store(k)?;
        let holds_other = memory.is_none();
        let log = Log::default();
        let remote = Interleave {
            inner: Faulty::new(remote()),
            server: server.clone(),
            store: store.clone(),
            during_push: Pending::default(),
            log: log.clone(),
            during_pull: Arc::default(),
            write_during_pull: PendingPull::default(),
            ids: ids.clone(),
        };
        let engine = make_engine(store.clone(), remote.clone(), *p);
        let events = engine.subscribe();
        let client_id = store.client_id().await.map_err(fail)?;
        clients.push(Client {
            engine,
            store,
            memory,
            backup: None,
            local_only: BTreeMap::new(),
            holds_other,
            remote,
            policy: *p,
            online: true,
            events,
            client_id,
            reported: HashSet::new(),
            spurious: None,
            log,
        });
    }

    for step in steps {
        match *step {
            Step::Create(c, r, v) => {
                let cl = &mut clients[c];
                if cl.store.get(COLL, &ids[r]).await.map_err(fail)?.is_none() {
                    cl.write(r, &ids[r], Some(server.song(v))).await?;
                }
            }
            Step::Update(c, r, f, v) => {
                let cl = &clients[c];
                update(&*cl.store, &cl.log, r, &ids[r], f, v).await?;
            }
            Step::Delete(c, r) => clients[c].write(r, &ids[r], None).await?,
            Step::RemoveField(c, r, f) => {
                let cl = &clients[c];
                remove_field(&*cl.store, &cl.log, r, &ids[r], f).await?;
            }
            Step::Invalid(c, r) => clients[c].write(r, &ids[r], Some(server.invalid())).await?,
            Step::Sync(c) => {
                if clients[c].online {
                    clients[c].sync().await;
                }
            }
            Step::ToggleOnline(c) => clients[c].online = !clients[c].online,
            Step::WriteDuringPush(c, f, v) => {
                let cl = &mut clients[c];
                if cl.online {
                    *cl.remote.during_push.lock().unwrap() = Some((f, v));
                    cl.sync().await;
                    *cl.remote.during_push.lock().unwrap() = None;
                }
            }
            Step::WriteDuringPull(c, k, f, v) => {
                let cl = &mut clients[c];
                if cl.online {
                    *cl.remote.write_during_pull.lock().unwrap() = Some((k, f, v));
                    cl.sync().await;
                    *cl.remote.write_during_pull.lock().unwrap() = None;
                }
            }
            Step::CrashAfterPush(c, k) | Step::CrashAfterPull(c, k) => {
                let cl = &mut clients[c];
                if cl.online {
                    let push = matches!(step, Step::CrashAfterPush(..));
                    for f in std::iter::repeat_n(Fault::Pass, k).chain([Fault::CrashAfter]) {
                        if push {
                            cl.remote.inner.on_push(f);
                        } else {
                            cl.remote.inner.on_pull(f);
                        }
                    }
                    cl.sync().await;
                    cl.restart();
                }
            }
            Step::LoseResponse(c) | Step::Duplicate(c) => {
                let cl = &mut clients[c];
                if cl.online {
                    cl.remote
                        .inner
                        .on_push(if matches!(step, Step::LoseResponse(_)) {
                            Fault::LoseResponse
                        } else {
                            Fault::Duplicate
                        });
                    cl.sync().await;
                }
            }
            Step::Transient(c) => {
                let cl = &mut clients[c];
                if cl.online {
                    cl.remote.inner.on_pull(Fault::TransientBefore);
                    cl.sync().await;
                }
            }
            Step::Snapshot(c) => {
                let cl = &mut clients[c];
                if let Some(m) = &cl.memory {
                    let log = cl.log.lock().unwrap().clone();
                    cl.backup = Some((Arc::new(m.reopen_copy()), log, cl.local_only.clone()));
                }
            }
            Step::Restore(c) => {
                let cl = &mut clients[c];
                if let Some((copy, log, local_only)) = cl.backup.clone() {
                    // Opened anew each time, so one backup can be restored twice.
                    cl.replace_store(Arc::new(copy.reopen_copy()), log, local_only)
                        .await?;
                }
            }
            Step::CloneStore(from, to) => {
                if from != to {
                    if let (Some(m), true) = (&clients[from].memory, clients[to].memory.is_some()) {
                        let copy = Arc::new(m.reopen_copy());
                        let log = clients[from].log.lock().unwrap().clone();
                        let local_only = clients[from].local_only.clone();
                        clients[to].replace_store(copy, log, local_only).await?;
                    }
                }
            }
            Step::LocalOnlyWrite(c, r, v) => {
                let cl = &mut clients[c];
                let f = json!({"title": format!("draft {v}")})
                    .as_object()
                    .cloned()
                    .unwrap();
                cl.store
                    .put(Record::new(LOCAL_ONLY, ids[r].clone(), f.clone()))
                    .await
                    .map_err(fail)?;
                cl.local_only.insert(ids[r].clone(), f);
            }
            Step::OtherWrite(c, r, v) => {
                let cl = &mut clients[c];
                if cl.holds_other {
                    let f = server.other(v);
                    cl.write(RECORDS + r, &ids[RECORDS + r], Some(f)).await?;
                }
            }
            Step::ServerSyncsOther => server.sync_other().await,
            Step::DeclareOther(c) => clients[c].declare_other(),
            Step::ServerOddValue(r, v) => server.write(&ids[r], Some(server.odd_song(v))).await,
            Step::Transaction(c, ref writes) => {
                let cl = &clients[c];
                transaction(&*cl.store, &cl.log, &ids, &*server, writes).await?;
            }
            Step::ServerEdit(r, v) => server.write(&ids[r], Some(server.song(v))).await,
            Step::ServerDelete(r) => server.write(&ids[r], None).await,
            Step::Compact => server.compact().await,
            Step::DeleteAndCompactDuringPull(c, k) => {
                let cl = &mut clients[c];
                if cl.online {
                    *cl.remote.during_pull.lock().unwrap() = Some(k);
                    cl.sync().await;
                    *cl.remote.during_pull.lock().unwrap() = None;
                }
            }
        }
        // Read your writes: a record with unpushed writes shows exactly them.
        for (i, cl) in clients.iter().enumerate() {
            for e in cl.store.pending(0, usize::MAX).await.map_err(fail)? {
                let local = cl
                    .store
                    .get(&e.collection, &e.id)
                    .await
                    .map_err(fail)?
                    .map(|r| r.fields);
                let want = match &e.op {
                    Op::Upsert(f) => Some(f),
                    Op::Delete => None,
                };
                if local.as_ref() != want {
                    return Err(TestCaseError::fail(format!(
                        "client {i} after {step:?}: record {} shows {local:?} but its unpushed write is {:?}",
                        e.id, e.op
                    )));
                }
            }
        }
        // Faults that found no call (a push fault when the outbox was empty) must not
        // leak into later steps: spend them on no-op calls.
        for cl in &clients {
            let faulty = &cl.remote.inner;
            while faulty.queued() != (0, 0) {
                let (pull, push) = faulty.queued();
                if push > 0 {
                    let _ = faulty.push(vec![]).await;
                }
                if pull > 0 {
                    let _ = faulty
                        .pull(server.head().await, 1, PullMode::Incremental)
                        .await;
                }
            }
        }
    }

    // Quiet round: the server syncs every collection and every client holds it,
    // everyone online, no faults, sync until nothing moves.
    server.sync_other().await;
    for cl in clients.iter_mut() {
        cl.declare_other();
    }
    for round in 0..4 {
        for cl in clients.iter_mut() {
            cl.online = true;
            let r = cl.engine.sync().await;
            cl.drain_events();
            match r {
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "quiet sync {round} failed: {e}"
                    )))
                }
                Ok(rep) if std::env::var_os("TIDEMARK_HARNESS_TRACE").is_some() => {
                    eprintln!("quiet sync {round} of {}: {rep:?}", cl.client_id);
                }
                Ok(_) => {}
            }
        }
    }

    check_invariants(&*server, &ids, &clients).await
}

/// Whether `later` (same client, same record) carries `earlier`'s intent forward: a
/// delete or recreate replaces everything; an upsert keeps each field `earlier`
/// changed, or changes it again on purpose.
fn supersedes(later: &Write, earlier: &Write) -> bool {
    match (&later.fields, &earlier.fields) {
        (None, _) | (Some(_), None) => true,
        (Some(l), Some(e)) => earlier
            .changed
            .iter()
            .all(|f| l.get(f) == e.get(f) || later.changed.contains(f)),
    }
}

async fn check_invariants<R: RemoteStore + Clone + 'static>(
    server: &dyn ContractServer,
    ids: &[RecordId],
    clients: &[Client<R>],
) -> Result<(), TestCaseError> {
    let (songs, others) = ids.split_at(RECORDS);
    let truth = server.live(COLL, songs).await;
    let other_truth = server.live(OTHER, others).await;
    let head = server.head().await;
    // 4. Idempotency: no change applied twice.
    if let Some((c, n)) = server.applied_twice().await {
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
        let mine: BTreeMap<RecordId, Fields> = cl
            .store
            .list(OTHER)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        if mine != other_truth {
            return Err(TestCaseError::fail(format!(
                "client {i} diverged in {OTHER}:\n local  {mine:?}\n server {other_truth:?}"
            )));
        }
        // 3. Caught up.
        let st = cl.store.sync_state().await.map_err(fail)?;
        if st.watermark != head || st.resyncing {
            return Err(TestCaseError::fail(format!(
                "client {i} not caught up: {st:?} vs head {head:?}"
            )));
        }
        // 4. Nothing stuck.
        let left = cl.store.pending(0, usize::MAX).await.map_err(fail)?;
        if !left.is_empty() {
            return Err(TestCaseError::fail(format!(
                "client {i} has {} unpushed changes after the quiet round: {left:?}",
                left.len()
            )));
        }
        // Conflicts are real: never against the client's own earlier write.
        if let Some(s) = &cl.spurious {
            return Err(TestCaseError::fail(format!(
                "client {i}: conflict with its own write: {s}"
            )));
        }
        // Local-only records are exactly what the client wrote: never pushed (the
        // outbox is empty, checked above), never changed by a pull or a resync.
        let drafts: BTreeMap<RecordId, Fields> = cl
            .store
            .list(LOCAL_ONLY)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        if drafts != cl.local_only {
            return Err(TestCaseError::fail(format!(
                "client {i}: local-only records changed:\n local {drafts:?}\n wrote {:?}",
                cl.local_only
            )));
        }
        // 2. No silent loss: every write is on the server, superseded, or kept in
        // the store's conflict log or quarantine (events are not counted: a store
        // must persist them).
        let mut kept: HashSet<ChangeId> = HashSet::new();
        for c in cl.store.conflicts().await.map_err(fail)? {
            kept.insert(c.conflict.local.change_id);
        }
        for q in cl.store.quarantined().await.map_err(fail)? {
            kept.insert(q.change.change_id);
        }
        let writes = cl.log.lock().unwrap().clone();
        let asked: Vec<(&'static str, RecordId, ChangeId, bool)> = writes
            .iter()
            .filter(|w| w.rec < ids.len())
            .map(|w| {
                (
                    coll_of(w.rec),
                    ids[w.rec].clone(),
                    w.change_id.clone(),
                    w.fields.is_none(),
                )
            })
            .collect();
        let applied = server.applied(&asked).await;
        for (k, w) in writes.iter().enumerate() {
            let superseded = writes[k + 1..]
                .iter()
                .any(|l| l.rec == w.rec && supersedes(l, w));
            let on_server = applied.contains(&w.change_id);
            let reported = kept.contains(&w.change_id);
            if !(on_server || reported || superseded) {
                return Err(TestCaseError::fail(format!(
                    "client {i}: write {} to record {} was silently lost: {w:?}",
                    w.change_id, w.rec
                )));
            }
        }
    }
    Ok(())
}

/// One random step for `clients` clients.
pub fn step(clients: usize) -> impl Strategy<Value = Step> {
    let c = 0..clients;
    let rec = 0..RECORDS;
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
        1 => c.clone().prop_map(Step::Snapshot),
        1 => c.clone().prop_map(Step::Restore),
        1 => (c.clone(), c.clone()).prop_map(|(a, b)| Step::CloneStore(a, b)),
        1 => (c.clone(), rec.clone(), 0..100i64).prop_map(|(c, r, v)| Step::LocalOnlyWrite(c, r, v)),
        1 => (c.clone(), rec.clone(), 0..3usize).prop_map(|(c, r, f)| Step::RemoveField(c, r, f)),
        2 => (c.clone(), rec.clone(), 0..100i64).prop_map(|(c, r, v)| Step::OtherWrite(c, r, v)),
        1 => Just(Step::ServerSyncsOther),
        1 => c.clone().prop_map(Step::DeclareOther),
        1 => (rec.clone(), 0..100i64).prop_map(|(r, v)| Step::ServerOddValue(r, v)),
        2 => (c.clone(), prop::collection::vec((rec.clone(), prop::option::weighted(0.8, (0..3usize, 0..100i64))), 2..5))
            .prop_map(|(c, w)| Step::Transaction(c, w)),
    ]
}

/// 2–4 clients with their conflict policies, and up to 80 steps.
pub fn scenario() -> impl Strategy<Value = (Vec<u8>, Vec<Step>)> {
    (2usize..=4).prop_flat_map(|n| {
        (
            prop::collection::vec(0u8..3, n),
            prop::collection::vec(step(n), 1..80),
        )
    })
}
