//! [`SledStore`]: a [`LocalStore`] in a [sled](https://docs.rs/sled/0.34) database.
//!
//! # Layout
//!
//! - one tree per collection, `c/<name>`: record id → the record's fields as JSON;
//! - `meta`: format, change counter, outbox, quarantine and conflict counters,
//!   watermark, resync flag, and `coll/<name>` → the collection's stored schema;
//! - `writers`: writer id → the first change counter it issued (u64 BE) and its
//!   place in the order of opens (u64 BE): one writer per open of the store;
//! - `versions`: `<collection>\0<id>` → the record's known server version (u64 BE);
//! - `outbox`: outbox seq (u64 BE) → entry (JSON, with its writer id and counter,
//!   and the [`TxMark`](sync_traits::TxMark) of the last multi-record transaction
//!   that wrote it, if any);
//!   `outbox_idx`: `<collection>\0<id>` → outbox seq;
//! - `seen`: `<collection>\0<id>` of records seen during a resync;
//! - `quarantine`: quarantine id (u64 BE) → refused change and rejection (JSON);
//! - `conflicts`: conflict id (u64 BE) → logged conflict (JSON);
//! - `parked`: `<collection>\0<id>` → the newest pulled state (version u64 BE, then
//!   the state as JSON) of a record of a collection the schema does not declare.
//!   An open whose schema declares the collection applies them (by the rule of a
//!   pull, `rules::decide`: not over an outbox entry, not older than the known
//!   version, again at the known version; seen if a resync is under way) and
//!   removes them, in one transaction; `begin_resync` forgets them
//!   all (the resync delivers them again). Those of a collection declared
//!   local-only stay parked: a pull never touches a local-only collection.
//!
//! Every mutating call is one sled transaction over all these trees (sled's
//! `Transactional` on a slice of trees), so it is applied whole or not at all.
//! Mutating calls are also serialised by a mutex, which makes the multi-tree scans
//! of `pending` and `finish_resync` consistent and keeps sled from ever retrying a
//! transaction closure.
//!
//! # Writers
//!
//! Every open takes a fresh writer id ([`sync_traits::new_id`]) and records it,
//! durably, with the first counter it will issue; the change counter goes on from
//! where it was. A copy of the directory (a backup restored, a device cloned) so
//! never stamps a change id that the original also stamped, and
//! [`SyncStore::made_here`] answers only for the counters each writer issued. A
//! database of format 1 (one client id) is upgraded in place at open: its client
//! id becomes the first writer, from counter 1.
//!
//! # Not blocking the runtime
//!
//! Every [`LocalStore`] method runs its sled work (reads, transactions, flushes)
//! on tokio's blocking pool (`spawn_blocking`, the store's state behind an `Arc`),
//! never on an async worker; a pulled page is checked and encoded on the calling
//! task in slices, yielding between them. Outside a tokio runtime the work runs on
//! the calling thread. A call whose future is dropped after its work started still
//! completes whole (or fails whole): the call stays atomic either way.
//!
//! # Durability
//!
//! sled 0.34 commits a transaction into its in-memory log buffers and writes them
//! to the file when a buffer fills (segments are 512 KiB) or when it flushes; its
//! background flusher runs every `flush_every_ms` (500 ms by default) and
//! `Db::flush` writes and fsyncs on demand. A transaction is atomic across a
//! crash either way (recovery drops an incomplete batch — checked by the SIGKILL
//! tests in `backends/tests/crash.rs`). What a flush adds is durability: a
//! committed call that was never flushed can be lost. In our SIGKILL tests no
//! returned call was lost even without a flush (the process dies, the OS still
//! writes what it was handed), but an OS crash or power cut within the flush
//! interval would lose it. The store therefore flushes (fsync) at the end of every
//! mutating call by default, so a call that returned `Ok` survives a power cut;
//! [`SledOptions::flush_every_write`] turns this off for speed (a put drops from
//! 0.3–1.8 ms to ~0.07 ms, see `BENCHMARKS.md`), trading the durability of the last
//! ~500 ms of calls — never their atomicity. The writer an open takes is always
//! flushed before `open` returns.
//!
//! # Change feed
//!
//! [`LocalStore::changes`] watches a collection (see `sync_traits::feed`): every
//! call reports exactly the records it wrote or removed, after its transaction
//! commits and before it releases the write lock, so in commit order. Writes
//! straight to the trees of [`SledStore::db`] are not reported; parked records
//! applied at open are part of the state `open` returns.

mod inspect;
mod open;
mod transaction;
mod tx;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use ::sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use ::sled::{Db, IVec, Tree};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sync_traits::SyncStore;
use sync_traits::{
    Ack, ApplyReport, Cause, ChangeBatch, ChangeCause, ChangeHub, ChangeId, ChangeKind, Fields,
    LocalStore, LoggedConflict, Mistyped, Op, Page, PendingChange, Quarantined, Record, RecordId,
    Rejection, StoreError, SyncState, Version, Watermark,
};

use crate::rules::{Holds, What};
use crate::schema::{canonical_remote_fields, check_collection_name, CollectionSchema, Schema};
use tx::Tx;

const FORMAT: &[u8] = b"tidemark-sled/2";
/// The format before writer incarnations: one client id in `meta`.
const FORMAT_V1: &[u8] = b"tidemark-sled/1";
const META: usize = 0;
const VERSIONS: usize = 1;
const OUTBOX: usize = 2;
const OUTBOX_IDX: usize = 3;
const SEEN: usize = 4;
const QUARANTINE: usize = 5;
const CONFLICTS: usize = 6;
const PARKED: usize = 7;
const WRITERS: usize = 8;
const FIXED: [&str; 9] = [
    "meta",
    "versions",
    "outbox",
    "outbox_idx",
    "seen",
    "quarantine",
    "conflicts",
    "parked",
    "writers",
];

/// How many pulled changes are checked and encoded between two yields to the
/// runtime (each slice takes well under a millisecond).
const PREPARE_SLICE: usize = 512;

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn sled_err(e: ::sled::Error) -> StoreError {
    match e {
        ::sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(Cause::of(other)),
    }
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => sled_err(e),
    }
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + id.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn u64_of(v: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| corrupt("an 8-byte integer has the wrong length"))?;
    Ok(u64::from_be_bytes(b))
}

fn fields_of(v: &[u8]) -> Result<Fields, StoreError> {
    serde_json::from_slice(v).map_err(|e| corrupt(format!("record data: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(Cause::of(e)))
}

fn record_id_of(k: &[u8]) -> Result<RecordId, StoreError> {
    let id = std::str::from_utf8(k).map_err(|_| corrupt("record key is not UTF-8"))?;
    RecordId::parse(id).map_err(|e| corrupt(format!("record key: {e}")))
}

/// An outbox entry as stored. The op is not stored: it is always the record's
/// current local state (upsert of its fields, or delete when absent). The change
/// id is `client.n`: the writer that made the newest write folded in, and its
/// counter.
#[derive(Serialize, Deserialize)]
struct Entry {
    collection: String,
    id: RecordId,
    client: RecordId,
    n: u64,
    base: Option<u64>,
    changed: BTreeSet<String>,
    /// The mark of the last multi-record transaction that wrote the entry
    /// (`sled/transaction.rs`); absent for entries only plain writes made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tx: Option<sync_traits::TxMark>,
}

/// A quarantined change as stored; its id is its key.
#[derive(Serialize, Deserialize)]
struct StoredQuarantined {
    change: PendingChange,
    rejection: Rejection,
}

/// A pulled change checked and encoded before its transaction.
enum Prepared {
    /// An impossible collection name, or a local-only collection: skipped.
    Skip,
    /// A collection the schema does not declare: skipped, its newest state kept.
    Park {
        key: Vec<u8>,
        version: u64,
        /// The version (u64 BE) followed by the state as JSON.
        value: Vec<u8>,
    },
    /// A declared collection.
    Apply {
        tree: usize,
        key: Vec<u8>,
        id: RecordId,
        version: u64,
        /// The encoded record, or `None` for a tombstone.
        data: Option<Vec<u8>>,
        mistyped: Vec<Mistyped>,
    },
}

/// Options for [`SledStore::open_with`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// Flush (fsync) at the end of every mutating call, so that a call that
    /// returned survives a crash. Default `true`.
    pub flush_every_write: bool,
    /// sled's page cache size in bytes. Default 64 MiB.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            flush_every_write: true,
            cache_capacity: 64 << 20,
        }
    }
}

/// What the store's calls share, behind an `Arc` so that each call's sled work can
/// run on tokio's blocking pool.
#[derive(Debug)]
struct Shared {
    db: Db,
    /// The [`FIXED`] trees, then one tree per collection.
    trees: Vec<Tree>,
    colls: HashMap<String, (usize, CollectionSchema)>,
    /// Every writer this store had, in the order of opens, each with the first
    /// counter it issued; the last one is this open's, `client`.
    writers: Vec<(RecordId, u64)>,
    /// This open's writer id.
    client: RecordId,
    write_lock: Mutex<()>,
    flush: bool,
    /// Reports every change the store's calls make (see `sync_traits::feed`): a
    /// call takes its batch before the write lock, publishes it after commit.
    hub: ChangeHub,
}

/// A [`LocalStore`] in a sled database (see the [module docs](self)).
///
/// Cheap to share: clone an `Arc<SledStore>` to use one store from many tasks.
/// Dropping the last handle closes the database once the calls still running on
/// the blocking pool have finished.
#[derive(Debug)]
pub struct SledStore {
    shared: Arc<Shared>,
}

impl SledStore {
    /// Opens (creating if needed) the store in the sled directory at `path`, with a
    /// new writer id (see the [module docs](self#writers)) that is on disk before
    /// this returns. Collections declared in `schema` for the first time receive
    /// what earlier pulls parked for them, in one transaction.
    ///
    /// Errors: [`StoreError::Corrupt`] if the directory holds a damaged database or
    /// a sled database that is not a tidemark store; [`StoreError::Schema`] if the
    /// schema is invalid or declares a stored collection local-only that was
    /// synced (or the other way; a changed field kind is not an error: the field
    /// keeps its stored kind, as in the SQLite store); [`StoreError::Busy`] if
    /// another store holds the database (after a bounded wait).
    ///
    /// This blocks (it reads and fsyncs the database): from async code, call it
    /// with `tokio::task::spawn_blocking`. Called on a multi-threaded runtime's
    /// worker it hands that worker's other tasks to another thread meanwhile.
    pub fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Self, StoreError> {
        Self::open_with(path, schema, SledOptions::default())
    }

    /// [`SledStore::open`] with options.
    pub fn open_with(
        path: impl AsRef<Path>,
        schema: Schema,
        opts: SledOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        crate::blocking::run(|| open::open_dir(path, schema, opts)).map(Self::from)
    }

    /// A store in a temporary sled database, removed when dropped. Its calls are
    /// atomic but never flushed.
    pub fn open_temporary(schema: Schema) -> Result<Self, StoreError> {
        open::open_temporary(schema).map(Self::from)
    }

    /// Flushes sled's buffers to disk (fsync). Blocks; see [`SledStore::open`].
    pub fn flush(&self) -> Result<(), StoreError> {
        crate::blocking::run(|| self.shared.db.flush().map(|_| ()).map_err(sled_err))
    }

    /// The underlying sled database, for reads. Writing to the store's trees
    /// directly bypasses the outbox.
    pub fn db(&self) -> &Db {
        &self.shared.db
    }

    /// Runs `f`, the sled work of one call, on tokio's blocking pool (or inline
    /// outside a tokio runtime), so no async worker waits on sled.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        crate::blocking::unblock(move || f(&shared)).await
    }

    /// Checks and encodes a pulled page on the calling task, yielding to the
    /// runtime between slices. Returns one [`Prepared`] per change.
    async fn prepare(&self, page: &Page) -> Vec<Prepared> {
        let mut out = Vec::with_capacity(page.changes.len());
        for (n, c) in page.changes.iter().enumerate() {
            if n > 0 && n % PREPARE_SLICE == 0 {
                tokio::task::yield_now().await;
            }
            out.push(self.shared.prepare(c));
        }
        out
    }
}

impl From<Shared> for SledStore {
    fn from(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl Shared {
    fn client(&self) -> &RecordId {
        &self.client
    }

    fn coll(&self, name: &str) -> Result<(usize, &CollectionSchema), StoreError> {
        check_collection_name(name)?;
        self.colls
            .get(name)
            .map(|(i, c)| (*i, c))
            .ok_or_else(|| StoreError::UnknownCollection(name.to_owned()))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` as one transaction over every tree, then flushes if configured.
    /// The caller holds the write lock.
    fn write<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        self.write_changes(f).map(|(out, _)| out)
    }

    /// [`Shared::write`], also returning the records the committed attempt wrote
    /// or removed through [`Tx`]'s ack and retry paths (for the change feed).
    #[allow(clippy::type_complexity)]
    fn write_changes<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<(T, Vec<(String, RecordId, ChangeKind)>), StoreError> {
        let out = self.trees[..]
            .transaction(|t: &Vec<TransactionalTree>| {
                let tx = Tx::new(t, self);
                let out = f(&tx)?;
                Ok((out, tx.changed.take()))
            })
            .map_err(tx_err)?;
        if self.flush {
            self.db.flush().map_err(sled_err)?;
        }
        Ok(out)
    }

    /// The name of the collection in tree `tree`.
    fn name_of(&self, tree: usize) -> Option<&str> {
        self.colls
            .iter()
            .find(|(_, (i, _))| *i == tree)
            .map(|(n, _)| n.as_str())
    }

    /// Hands what `write_changes` reported to the feed, with `cause`.
    fn publish(
        mut feed: ChangeBatch<'_>,
        changed: Vec<(String, RecordId, ChangeKind)>,
        cause: ChangeCause,
    ) {
        for (c, id, kind) in changed {
            feed.record(&c, &id, kind, cause);
        }
        feed.publish();
    }

    fn meta_u64(&self, k: &str) -> Result<u64, StoreError> {
        match self.trees[META].get(k).map_err(sled_err)? {
            Some(v) => u64_of(&v),
            None => Err(corrupt(format!("metadata {k} missing"))),
        }
    }

    fn keys_of(&self, tree: usize) -> Result<Vec<IVec>, StoreError> {
        self.trees[tree]
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)
    }

    /// Checks and encodes one pulled change (no sled access).
    fn prepare(&self, c: &sync_traits::RemoteChange) -> Prepared {
        let declared = self.colls.get(&c.collection);
        let holds = crate::rules::holds(&c.collection, declared.map(|(_, s)| s));
        let k = key(&c.collection, c.id.as_str());
        let version = c.state.version.0;
        match (holds, declared) {
            (Holds::Skip, _) => Prepared::Skip,
            (Holds::Held, Some((tree, schema))) => {
                let (data, mistyped) = match &c.state.fields {
                    Some(f) => {
                        let (f, m) = canonical_remote_fields(schema, &c.id, f);
                        match serde_json::to_vec(&f) {
                            Ok(d) => (Some(d), m),
                            // A map of JSON values always serialises; if it ever did
                            // not, the record would be unreadable: skip it instead.
                            Err(_) => return Prepared::Skip,
                        }
                    }
                    None => (None, Vec::new()),
                };
                Prepared::Apply {
                    tree: *tree,
                    key: k,
                    id: c.id.clone(),
                    version,
                    data,
                    mistyped,
                }
            }
            (Holds::Park, _) | (Holds::Held, None) => {
                let mut value = version.to_be_bytes().to_vec();
                if serde_json::to_writer(&mut value, &c.state).is_err() {
                    return Prepared::Skip;
                }
                Prepared::Park {
                    key: k,
                    version,
                    value,
                }
            }
        }
    }

    /// [`SyncStore::apply_remote`] once the page is checked and encoded: one
    /// transaction.
    fn apply_prepared(
        &self,
        watermark: Watermark,
        mut prepared: Vec<Prepared>,
    ) -> Result<ApplyReport, StoreError> {
        let mut feed = self.hub.batch();
        let _g = self.lock();
        let (mut report, applied, removed) = self.write(|tx| {
            let resyncing = tx.meta("resyncing")? != 0;
            let mut report = ApplyReport::default();
            let mut applied = Vec::new();
            // Applied deletions of records the store held (the others changed nothing).
            let mut removed = Vec::new();
            for (n, p) in prepared.iter().enumerate() {
                match p {
                    Prepared::Skip => report.skipped += 1,
                    Prepared::Park {
                        key,
                        version,
                        value,
                    } => {
                        report.skipped += 1;
                        let newer = match tx.t[PARKED].get(key.as_slice())? {
                            Some(old) => u64_of(old.get(..8).unwrap_or_default())
                                .or_else(abort)?
                                .lt(version),
                            None => true,
                        };
                        if newer {
                            tx.t[PARKED].insert(key.as_slice(), value.as_slice())?;
                        }
                    }
                    Prepared::Apply {
                        tree,
                        key,
                        id,
                        version,
                        data,
                        ..
                    } => {
                        if resyncing {
                            tx.mark_seen(key)?;
                        }
                        match crate::rules::decide(
                            Holds::Held,
                            || tx.has_entry(key),
                            || tx.version(key),
                            *version,
                        )? {
                            What::Apply => {}
                            What::Defer => {
                                report.deferred += 1;
                                continue;
                            }
                            // At the known version: the server's copy of what was
                            // acked, applied again; only an older one is stale.
                            What::Stale => {
                                report.stale += 1;
                                continue;
                            }
                            // Not for a held collection; counted like one anyway.
                            What::Skip | What::Park => {
                                report.skipped += 1;
                                continue;
                            }
                        }
                        match data {
                            Some(d) => {
                                tx.t[*tree].insert(id.as_str(), d.as_slice())?;
                            }
                            None => {
                                if tx.t[*tree].remove(id.as_str())?.is_some() {
                                    removed.push(n);
                                }
                            }
                        }
                        tx.t[VERSIONS].insert(key.as_slice(), &version.to_be_bytes())?;
                        report.applied += 1;
                        applied.push(n);
                    }
                }
            }
            if watermark.0 > tx.meta("watermark")? {
                tx.set_meta("watermark", watermark.0)?;
            }
            Ok((report, applied, removed))
        })?;
        // Per tree of the page, once: whether anyone watches its collection.
        let mut watched: Vec<Option<Option<&str>>> = vec![None; self.trees.len()];
        let mut removed = removed.into_iter().peekable();
        for n in applied {
            if let Some(Prepared::Apply {
                mistyped,
                tree,
                id,
                data,
                ..
            }) = prepared.get_mut(n)
            {
                report.mistyped.append(mistyped);
                let name = *watched[*tree]
                    .get_or_insert_with(|| self.name_of(*tree).filter(|name| feed.watched(name)));
                let kind = match data {
                    Some(_) => Some(ChangeKind::Upserted),
                    None if removed.next_if_eq(&n).is_some() => Some(ChangeKind::Removed),
                    None => None,
                };
                if let (Some(name), Some(kind)) = (name, kind) {
                    feed.push(name, id, kind, ChangeCause::Pull);
                }
            }
        }
        // Published under the write lock: watchers get calls' changes in commit
        // order.
        feed.publish();
        drop(_g);
        Ok(report)
    }

    fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        let _g = self.lock();
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.trees[OUTBOX].range(from.to_be_bytes()..).take(limit) {
            let (seq, v) = item.map_err(sled_err)?;
            let e: Entry =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("outbox entry: {e}")))?;
            let (i, _) = self
                .coll(&e.collection)
                .map_err(|_| corrupt("outbox names an unknown collection"))?;
            let op = match self.trees[i].get(e.id.as_str()).map_err(sled_err)? {
                Some(d) => Op::Upsert(fields_of(&d)?),
                None => Op::Delete,
            };
            out.push(PendingChange {
                seq: u64_of(&seq)?,
                change_id: ChangeId {
                    client: e.client,
                    n: e.n,
                },
                collection: e.collection,
                id: e.id,
                base: e.base.map(Version),
                op,
                changed: e.changed,
                tx: e.tx,
            });
        }
        Ok(out)
    }

    fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        let Some(i) = self.writers.iter().position(|(w, _)| *w == change.client) else {
            return Ok(false);
        };
        let first = self.writers[i].1;
        let end = match self.writers.get(i + 1) {
            Some((_, next)) => next.saturating_sub(1),
            None => self.meta_u64("counter")?,
        };
        Ok((first..=end).contains(&change.n))
    }

    fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        let mut feed = self.hub.batch();
        let _g = self.lock();
        match self.meta_u64("resyncing")? {
            0 => return Ok(0),
            // Begun on empty trees, and no ack since: every record is one this
            // resync applied or one with an outbox entry, so none is to be removed.
            // The seen marks stay until the next begin_resync clears them.
            2 => {
                return self.write(|tx| {
                    tx.set_meta("resyncing", 0)?;
                    Ok(0)
                })
            }
            _ => {}
        }
        // Under the lock nothing changes between this scan and the transaction.
        let mut gone: Vec<(usize, IVec, Vec<u8>)> = Vec::new();
        for (name, (i, c)) in &self.colls {
            if c.local_only || synced.as_ref().is_some_and(|s| !s.contains(name)) {
                continue;
            }
            for item in self.trees[*i].iter().keys() {
                let id = item.map_err(sled_err)?;
                let id_str = std::str::from_utf8(&id).map_err(|_| corrupt("record key"))?;
                let k = key(name, id_str);
                let seen = self.trees[SEEN].contains_key(&k).map_err(sled_err)?;
                let pending = self.trees[OUTBOX_IDX].contains_key(&k).map_err(sled_err)?;
                if !seen && !pending {
                    gone.push((*i, id, k));
                }
            }
        }
        let seen = self.keys_of(SEEN)?;
        let n = self.write(|tx| {
            for (i, id, k) in &gone {
                tx.t[*i].remove(id)?;
                tx.t[VERSIONS].remove(k.as_slice())?;
            }
            for k in &seen {
                tx.t[SEEN].remove(k)?;
            }
            tx.set_meta("resyncing", 0)?;
            Ok(gone.len())
        })?;
        for (i, id, _) in &gone {
            if let Some(name) = self.name_of(*i).filter(|n| feed.watched(n)) {
                let id = record_id_of(id)?;
                feed.push(name, &id, ChangeKind::Removed, ChangeCause::Resync);
            }
        }
        feed.publish();
        drop(_g);
        Ok(n)
    }
}

#[async_trait]
impl SyncStore for SledStore {
    /// A range scan of the collection's tree from just after `after`: reads
    /// `limit` entries, not the tree.
    async fn list_page(
        &self,
        collection: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        use std::ops::Bound;
        let (i, _) = self.shared.coll(collection)?;
        let collection = collection.to_owned();
        self.run(move |s| {
            let start = match &after {
                Some(a) => Bound::Excluded(a.as_str().as_bytes()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::with_capacity(limit.min(1024));
            for item in s.trees[i]
                .range::<&[u8], _>((start, Bound::Unbounded))
                .take(limit)
            {
                let (k, v) = item.map_err(sled_err)?;
                out.push(Record::new(
                    collection.as_str(),
                    record_id_of(&k)?,
                    fields_of(&v)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let (i, _) = self.shared.coll(collection)?;
        self.run(move |s| Ok(s.trees[i].len())).await
    }

    /// This open's writer id: a new one at every open (see the
    /// [module docs](self#writers)).
    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.shared.client().clone())
    }

    /// True only for a writer id this database had, with a counter issued under
    /// it: from its first counter to the next writer's first counter - 1, or to
    /// the current counter for this open's writer.
    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        let change = change.clone();
        self.run(move |s| s.made_here(&change)).await
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.run(|s| {
            let _g = s.lock();
            Ok(SyncState {
                watermark: Watermark(s.meta_u64("watermark")?),
                resyncing: s.meta_u64("resyncing")? != 0,
            })
        })
        .await
    }

    /// Applies the page in one transaction on the blocking pool. Changes to a
    /// collection the schema does not declare are skipped and parked (the newest
    /// state per record), and applied when a later open declares it; changes to
    /// impossible collection names and to local-only collections are skipped.
    /// Values that do not fit their declared kind are kept as sent and listed in
    /// [`ApplyReport::mistyped`] (for the changes that applied).
    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        let prepared = self.prepare(page).await;
        let watermark = page.watermark;
        self.run(move |s| s.apply_prepared(watermark, prepared))
            .await
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        self.run(move |s| s.pending(after, limit)).await
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.run(|s| Ok(s.trees[OUTBOX].len())).await
    }

    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.run(move |s| {
            let feed = s.hub.batch();
            let g = s.lock();
            // A resync begun on empty trees (2) skips finish_resync's scan, as every
            // record is one it applied or one with an outbox entry. An ack can write
            // a record's server state with no outbox entry, which an ordinary resync
            // removes unless it delivered it: so the resync becomes an ordinary one
            // (its seen marks are kept in both modes).
            let fresh = s.meta_u64("resyncing")? == 2;
            let ((), changed) = s.write_changes(|tx| {
                if fresh {
                    tx.set_meta("resyncing", 1)?;
                }
                for a in &acks {
                    tx.ack(a)?;
                }
                Ok(())
            })?;
            Shared::publish(feed, changed, ChangeCause::Settlement);
            drop(g);
            Ok(())
        })
        .await
    }

    /// Also forgets what earlier pulls parked: the resync delivers it again.
    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.run(|s| {
            let _g = s.lock();
            let seen = s.keys_of(SEEN)?;
            let parked = s.keys_of(PARKED)?;
            // 2 when no synced tree holds a record (a first sync): see finish_resync.
            let mut empty = true;
            for (i, c) in s.colls.values() {
                if !c.local_only {
                    empty &= s.trees[*i].is_empty();
                }
            }
            s.write(|tx| {
                tx.set_meta("watermark", 0)?;
                tx.set_meta("resyncing", if empty { 2 } else { 1 })?;
                for k in &seen {
                    tx.t[SEEN].remove(k)?;
                }
                for k in &parked {
                    tx.t[PARKED].remove(k)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        self.run(move |s| s.finish_resync(synced)).await
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.run(|s| {
            let mut out = Vec::new();
            for item in s.trees[QUARANTINE].iter() {
                let (k, v) = item.map_err(sled_err)?;
                let q: StoredQuarantined =
                    serde_json::from_slice(&v).map_err(|e| corrupt(format!("quarantine: {e}")))?;
                out.push(Quarantined {
                    id: u64_of(&k)?,
                    change: q.change,
                    rejection: q.rejection,
                });
            }
            Ok(out)
        })
        .await
    }

    /// A put of the change's data (or a delete) exactly as the app's own write:
    /// a new change id, coalesced into the record's outbox entry if it has one,
    /// else based on the record's known version; values the store kept as the
    /// server sent them are accepted as they are. One transaction with the
    /// removal from the quarantine.
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.run(move |s| {
            let feed = s.hub.batch();
            let g = s.lock();
            let (retried, changed) = s.write_changes(|tx| tx.retry_quarantined(id))?;
            Shared::publish(feed, changed, ChangeCause::Local);
            drop(g);
            Ok(retried)
        })
        .await
    }

    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.run(move |s| {
            let _g = s.lock();
            s.write(|tx| Ok(tx.t[QUARANTINE].remove(&id.to_be_bytes())?.is_some()))
        })
        .await
    }

    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        self.run(|s| {
            let mut out = Vec::new();
            for item in s.trees[CONFLICTS].iter() {
                let (k, v) = item.map_err(sled_err)?;
                let conflict = serde_json::from_slice(&v)
                    .map_err(|e| corrupt(format!("conflict log: {e}")))?;
                out.push(LoggedConflict {
                    id: u64_of(&k)?,
                    conflict,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.run(move |s| {
            let _g = s.lock();
            s.write(|tx| {
                let mut n = 0;
                for id in &ids {
                    if tx.t[CONFLICTS].remove(&id.to_be_bytes())?.is_some() {
                        n += 1;
                    }
                }
                Ok(n)
            })
        })
        .await
    }

    /// Kept in the meta tree, under `engine.<key>`.
    fn keeps_sync_meta(&self) -> bool {
        true
    }

    async fn sync_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = format!("engine.{key}");
        self.run(
            move |s| match s.trees[META].get(key.as_bytes()).map_err(sled_err)? {
                None => Ok(None),
                Some(v) => String::from_utf8(v.to_vec())
                    .map(Some)
                    .map_err(|_| corrupt(format!("metadata {key} is not text"))),
            },
        )
        .await
    }

    async fn set_sync_meta(&self, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let key = format!("engine.{key}");
        self.run(move |s| {
            let _g = s.lock();
            s.write(|tx| {
                match &value {
                    Some(v) => tx.t[META].insert(key.as_bytes(), v.as_bytes())?,
                    None => tx.t[META].remove(key.as_bytes())?,
                };
                Ok(())
            })
        })
        .await
    }
}

#[async_trait]
impl LocalStore for SledStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let (i, _) = self.shared.coll(collection)?;
        let (collection, id) = (collection.to_owned(), id.clone());
        self.run(
            move |s| match s.trees[i].get(id.as_str()).map_err(sled_err)? {
                Some(v) => Ok(Some(Record::new(collection, id, fields_of(&v)?))),
                None => Ok(None),
            },
        )
        .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let (i, _) = self.shared.coll(collection)?;
        let collection = collection.to_owned();
        self.run(move |s| {
            let mut out = Vec::new();
            for item in s.trees[i].iter() {
                let (k, v) = item.map_err(sled_err)?;
                out.push(Record::new(
                    collection.as_str(),
                    record_id_of(&k)?,
                    fields_of(&v)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Checks the record against its collection's schema: a value that does not
    /// fit its declared kind is refused ([`StoreError::Schema`], or
    /// [`StoreError::InvalidId`] for a relation) and nothing changes, unless the
    /// stored record already holds exactly that value (a mistyped value a pull
    /// kept, which the app left unchanged). Local-only collections get no outbox
    /// entry.
    async fn put(&self, record: Record) -> Result<(), StoreError> {
        self.shared.coll(&record.collection)?;
        self.run(move |s| {
            let (i, c) = s.coll(&record.collection)?;
            let mut feed = s.hub.batch();
            let g = s.lock();
            s.write(|tx| {
                let old = tx.read(i, &record.id)?;
                let fields =
                    crate::rules::canonical_write(c, &record.id, &record.fields, old.as_ref())
                        .or_else(abort)?;
                tx.t[i].insert(record.id.as_str(), to_json(&fields).or_else(abort)?)?;
                tx.record_write(&record.collection, &record.id, old.as_ref(), Some(&fields))
            })?;
            feed.record(
                &record.collection,
                &record.id,
                ChangeKind::Upserted,
                ChangeCause::Local,
            );
            feed.publish();
            drop(g);
            Ok(())
        })
        .await
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let (i, _) = self.shared.coll(collection)?;
        let (collection, id) = (collection.to_owned(), id.clone());
        self.run(move |s| {
            let mut feed = s.hub.batch();
            let g = s.lock();
            let existed = s.write(|tx| {
                let Some(old) = tx.read(i, &id)? else {
                    return Ok(false);
                };
                tx.t[i].remove(id.as_str())?;
                tx.record_write(&collection, &id, Some(&old), None)?;
                Ok(true)
            })?;
            if existed {
                feed.record(&collection, &id, ChangeKind::Removed, ChangeCause::Local);
                feed.publish();
            }
            drop(g);
            Ok(existed)
        })
        .await
    }

    /// One sled transaction over every tree (`sled/transaction.rs`): each write
    /// checked as `put` checks it; a refused one aborts it all.
    async fn transact(
        &self,
        writes: Vec<sync_traits::Write>,
    ) -> Result<sync_traits::TxReport, StoreError> {
        for w in &writes {
            self.shared.coll(w.key().0)?;
        }
        self.run(move |s| s.transact(&writes)).await
    }

    /// Every change made through this store, reported; writes straight to the
    /// trees of [`SledStore::db`] are not (see `sync_traits::feed`).
    fn change_hub(&self) -> Option<ChangeHub> {
        Some(self.shared.hub.clone())
    }
}
