//! [`SledStore`]: a [`LocalStore`] in a [sled](https://docs.rs/sled/0.34) database.
//!
//! # Layout
//!
//! - one tree per collection, `c/<name>`: record id → the record's fields as JSON;
//! - `meta`: format, client id, change counter, outbox and quarantine counters,
//!   watermark, resync flag, and `coll/<name>` → the collection's stored schema;
//! - `versions`: `<collection>\0<id>` → the record's known server version (u64 BE);
//! - `outbox`: outbox seq (u64 BE) → entry (JSON); `outbox_idx`:
//!   `<collection>\0<id>` → outbox seq;
//! - `seen`: `<collection>\0<id>` of records seen during a resync;
//! - `quarantine`: n (u64 BE) → refused change and rejection (JSON).
//!
//! Every mutating call is one sled transaction over all these trees (sled's
//! `Transactional` on a slice of trees), so it is applied whole or not at all.
//! Mutating calls are also serialised by a mutex, which makes the multi-tree scans
//! of `pending` and `finish_resync` consistent and keeps sled from ever retrying a
//! transaction closure.
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
//! ~500 ms of calls — never their atomicity.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ::sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use ::sled::{Db, IVec, Tree};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sync_traits::{
    Ack, ApplyReport, ChangeId, Fields, LocalStore, Op, Page, PendingChange, Quarantined, Record,
    RecordId, RemoteState, StoreError, SyncState, Version, Watermark,
};

use crate::schema::{
    canonical_fields, check_collection_name, schema_err, CollectionSchema, Schema,
};
use sync_traits::changed_fields;

const FORMAT: &[u8] = b"tidemark-sled/1";
const META: usize = 0;
const VERSIONS: usize = 1;
const OUTBOX: usize = 2;
const OUTBOX_IDX: usize = 3;
const SEEN: usize = 4;
const QUARANTINE: usize = 5;
const FIXED: [&str; 6] = [
    "meta",
    "versions",
    "outbox",
    "outbox_idx",
    "seen",
    "quarantine",
];

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn sled_err(e: ::sled::Error) -> StoreError {
    match e {
        ::sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(other.to_string()),
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

/// A remote change checked and encoded before its transaction: (tree index, key,
/// encoded record or `None` for a delete).
type Prepared = (usize, Vec<u8>, Option<Vec<u8>>);

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
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

/// An outbox entry as stored. The op is not stored: it is always the record's
/// current local state (upsert of its fields, or delete when absent).
#[derive(Serialize, Deserialize)]
struct Entry {
    collection: String,
    id: RecordId,
    n: u64,
    base: Option<u64>,
    changed: BTreeSet<String>,
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

/// A [`LocalStore`] in a sled database (see the [module docs](self)).
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    trees: Vec<Tree>,
    colls: HashMap<String, (usize, CollectionSchema)>,
    client: RecordId,
    write_lock: Mutex<()>,
    flush: bool,
}

impl SledStore {
    /// Opens (creating if needed) the store in the sled directory at `path`.
    ///
    /// Errors: [`StoreError::Corrupt`] if the directory holds a damaged database or
    /// a sled database that is not a tidemark store; [`StoreError::Schema`] if the
    /// schema is invalid or changes a stored field's kind.
    pub fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Self, StoreError> {
        Self::open_with(path, schema, SledOptions::default())
    }

    /// [`SledStore::open`] with options.
    pub fn open_with(
        path: impl AsRef<Path>,
        schema: Schema,
        opts: SledOptions,
    ) -> Result<Self, StoreError> {
        schema.validate()?;
        let path = path.as_ref().to_owned();
        let cap = opts.cache_capacity;
        // sled's background flusher can hold the directory lock for a moment after
        // the last handle of a previous store was dropped: wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            let p = path.clone();
            // sled panics on some kinds of damaged files instead of returning an error.
            let opened = std::panic::catch_unwind(move || {
                ::sled::Config::new().path(p).cache_capacity(cap).open()
            })
            .map_err(|_| corrupt("sled could not read the database"))?;
            match opened {
                Ok(db) => break db,
                // sled reports a held lock either as WouldBlock or as an Other error
                // that only says so in its message.
                Err(::sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Busy(format!(
                            "sled database {} is locked by another process or store: {io}",
                            path.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(::sled::Error::Io(io)) => {
                    return Err(StoreError::Corrupt(format!(
                        "cannot open as a sled database: {io}"
                    )))
                }
                Err(other) => return Err(sled_err(other)),
            }
        };
        Self::init(db, schema, opts.flush_every_write)
    }

    /// A store in a temporary sled database, removed when dropped.
    pub fn open_temporary(schema: Schema) -> Result<Self, StoreError> {
        schema.validate()?;
        let db = ::sled::Config::new()
            .temporary(true)
            .open()
            .map_err(sled_err)?;
        Self::init(db, schema, false)
    }

    fn init(db: Db, schema: Schema, flush: bool) -> Result<Self, StoreError> {
        let names = db.tree_names();
        let has_meta = names.iter().any(|n| n.as_ref() == b"meta");
        if !has_meta {
            let foreign = names.len() > 1 || !db.is_empty();
            if foreign {
                return Err(corrupt("the sled database is not a tidemark store"));
            }
        }
        let mut trees = Vec::new();
        for name in FIXED {
            trees.push(db.open_tree(name).map_err(sled_err)?);
        }
        let meta = trees[META].clone();
        if has_meta {
            let format = meta.get("format").map_err(sled_err)?;
            if format.as_deref() != Some(FORMAT) {
                return Err(corrupt("unsupported or missing tidemark store format"));
            }
        } else {
            let client = sync_traits::new_id();
            let mut b = ::sled::Batch::default();
            b.insert("client", client.as_str());
            for k in ["counter", "outbox_seq", "q_seq", "watermark", "resyncing"] {
                b.insert(k, &0u64.to_be_bytes());
            }
            b.insert("format", FORMAT);
            meta.apply_batch(b).map_err(sled_err)?;
        }
        let client = meta
            .get("client")
            .map_err(sled_err)?
            .ok_or_else(|| corrupt("client id missing"))?;
        let client = std::str::from_utf8(&client)
            .ok()
            .and_then(|s| RecordId::parse(s).ok())
            .ok_or_else(|| corrupt("client id is invalid"))?;

        // Stored collections, merged with the given schema.
        let mut effective: Vec<CollectionSchema> = Vec::new();
        for item in meta.scan_prefix("coll/") {
            let (_, v) = item.map_err(sled_err)?;
            let c: CollectionSchema =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("stored schema: {e}")))?;
            effective.push(c);
        }
        for c in &schema.collections {
            match effective.iter_mut().find(|e| e.name == c.name) {
                None => effective.push(c.clone()),
                Some(old) => {
                    for f in &c.fields {
                        match old.kind_of(&f.name) {
                            Some(k) if k == f.kind => {}
                            Some(k) => {
                                return Err(schema_err(
                                    &c.name,
                                    "",
                                    &format!(
                                        "field {:?} is stored as {k:?}; changing it to {:?} needs a manual migration",
                                        f.name, f.kind
                                    ),
                                ))
                            }
                            None => old.fields.push(f.clone()),
                        }
                    }
                }
            }
        }
        let mut batch = ::sled::Batch::default();
        let mut colls = HashMap::new();
        for c in effective {
            batch.insert(format!("coll/{}", c.name).as_bytes(), to_json(&c)?);
            colls.insert(c.name.clone(), (trees.len(), c.clone()));
            trees.push(db.open_tree(format!("c/{}", c.name)).map_err(sled_err)?);
        }
        meta.apply_batch(batch).map_err(sled_err)?;
        db.flush().map_err(sled_err)?;
        Ok(Self {
            db,
            trees,
            colls,
            client,
            write_lock: Mutex::new(()),
            flush,
        })
    }

    fn coll(&self, name: &str) -> Result<(usize, &CollectionSchema), StoreError> {
        check_collection_name(name)?;
        self.colls
            .get(name)
            .map(|(i, c)| (*i, c))
            .ok_or_else(|| StoreError::UnknownCollection(name.to_owned()))
    }

    /// [`LocalStore::apply_remote`] once the page is checked and encoded: one
    /// transaction. `prepared[i]` is change `i`'s (tree, key, encoded record).
    fn apply_prepared(
        &self,
        page: &Page,
        prepared: &[Prepared],
    ) -> Result<ApplyReport, StoreError> {
        let _g = self.lock();
        self.write(|tx| {
            let resyncing = tx.meta("resyncing")? != 0;
            let mut report = ApplyReport::default();
            for (c, (i, k, data)) in page.changes.iter().zip(prepared) {
                if resyncing {
                    tx.t[SEEN].insert(k.as_slice(), &[])?;
                }
                if tx.t[OUTBOX_IDX].get(k)?.is_some() {
                    report.deferred += 1;
                    continue;
                }
                if tx.version(k)?.is_some_and(|v| v >= c.state.version.0) {
                    report.stale += 1;
                    continue;
                }
                match data {
                    Some(d) => {
                        tx.t[*i].insert(c.id.as_str(), d.as_slice())?;
                    }
                    None => {
                        tx.t[*i].remove(c.id.as_str())?;
                    }
                }
                tx.t[VERSIONS].insert(k.as_slice(), &c.state.version.0.to_be_bytes())?;
                report.applied += 1;
            }
            if page.watermark.0 > tx.meta("watermark")? {
                tx.set_meta("watermark", page.watermark.0)?;
            }
            Ok(report)
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` as one transaction over every tree, then flushes if configured.
    fn write<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let out = self.trees[..]
            .transaction(|t: &Vec<TransactionalTree>| f(&Tx { t, s: self }))
            .map_err(tx_err)?;
        if self.flush {
            self.db.flush().map_err(sled_err)?;
        }
        Ok(out)
    }

    fn meta_u64(&self, k: &str) -> Result<u64, StoreError> {
        match self.trees[META].get(k).map_err(sled_err)? {
            Some(v) => u64_of(&v),
            None => Err(corrupt(format!("metadata {k} missing"))),
        }
    }

    /// Flushes sled's buffers to disk (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err)
    }

    /// The underlying sled database, for reads. Writing to the store's trees
    /// directly bypasses the outbox.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// A transaction's view of the store's trees.
struct Tx<'a> {
    t: &'a [TransactionalTree],
    s: &'a SledStore,
}

impl Tx<'_> {
    fn meta(&self, k: &str) -> TxResult<u64> {
        match self.t[META].get(k)? {
            Some(v) => u64_of(&v).or_else(abort),
            None => abort(corrupt(format!("metadata {k} missing"))),
        }
    }

    fn set_meta(&self, k: &str, v: u64) -> TxResult<()> {
        self.t[META].insert(k, &v.to_be_bytes())?;
        Ok(())
    }

    fn bump(&self, k: &str) -> TxResult<u64> {
        let v = self.meta(k)? + 1;
        self.set_meta(k, v)?;
        Ok(v)
    }

    fn coll(&self, name: &str) -> TxResult<(usize, &CollectionSchema)> {
        self.s.coll(name).or_else(abort)
    }

    fn read(&self, coll: usize, id: &RecordId) -> TxResult<Option<Fields>> {
        match self.t[coll].get(id.as_str())? {
            Some(v) => fields_of(&v).map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    fn write_row(&self, coll: &str, id: &RecordId, f: &Fields) -> TxResult<()> {
        let (i, c) = self.coll(coll)?;
        let f = canonical_fields(c, id, f).or_else(abort)?;
        self.t[i].insert(id.as_str(), to_json(&f).or_else(abort)?)?;
        Ok(())
    }

    fn delete_row(&self, coll: &str, id: &RecordId) -> TxResult<bool> {
        let (i, _) = self.coll(coll)?;
        Ok(self.t[i].remove(id.as_str())?.is_some())
    }

    fn version(&self, k: &[u8]) -> TxResult<Option<u64>> {
        match self.t[VERSIONS].get(k)? {
            Some(v) => u64_of(&v).map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    fn raise_version(&self, k: &[u8], v: u64) -> TxResult<()> {
        if self.version(k)?.is_none_or(|cur| cur < v) {
            self.t[VERSIONS].insert(k, &v.to_be_bytes())?;
        }
        Ok(())
    }

    fn entry(&self, k: &[u8]) -> TxResult<Option<(IVec, Entry)>> {
        let Some(seq) = self.t[OUTBOX_IDX].get(k)? else {
            return Ok(None);
        };
        let Some(v) = self.t[OUTBOX].get(&seq)? else {
            return abort(corrupt("outbox index points at a missing entry"));
        };
        let e: Entry = serde_json::from_slice(&v)
            .map_err(|e| corrupt(format!("outbox entry: {e}")))
            .or_else(abort)?;
        Ok(Some((seq, e)))
    }

    fn put_entry(&self, seq: &[u8], e: &Entry) -> TxResult<()> {
        self.t[OUTBOX].insert(seq, to_json(e).or_else(abort)?)?;
        Ok(())
    }

    fn remove_entry(&self, k: &[u8], seq: &[u8]) -> TxResult<()> {
        self.t[OUTBOX].remove(seq)?;
        self.t[OUTBOX_IDX].remove(k)?;
        Ok(())
    }

    /// The outbox seq of the record's entry if it carries `change_id`.
    fn matching(&self, k: &[u8], change_id: &ChangeId) -> TxResult<Option<IVec>> {
        Ok(self.entry(k)?.and_then(|(seq, e)| {
            (change_id.client == self.s.client && e.n == change_id.n).then_some(seq)
        }))
    }

    fn record_write(&self, coll: &str, id: &RecordId, changed: BTreeSet<String>) -> TxResult<()> {
        let n = self.bump("counter")?;
        let k = key(coll, id.as_str());
        match self.entry(&k)? {
            Some((seq, mut e)) => {
                e.n = n;
                e.changed.extend(changed);
                self.put_entry(&seq, &e)
            }
            None => {
                let seq = self.bump("outbox_seq")?.to_be_bytes();
                let e = Entry {
                    collection: coll.to_owned(),
                    id: id.clone(),
                    n,
                    base: self.version(&k)?,
                    changed,
                };
                self.put_entry(&seq, &e)?;
                self.t[OUTBOX_IDX].insert(k.as_slice(), &seq)?;
                Ok(())
            }
        }
    }

    fn set_server_state(&self, coll: &str, id: &RecordId, state: &RemoteState) -> TxResult<()> {
        match &state.fields {
            Some(f) => self.write_row(coll, id, f)?,
            None => {
                self.delete_row(coll, id)?;
            }
        }
        self.raise_version(&key(coll, id.as_str()), state.version.0)
    }

    fn ack(&self, ack: &Ack) -> TxResult<()> {
        match ack {
            Ack::Applied {
                collection,
                id,
                change_id,
                version,
            } => {
                let k = key(collection, id.as_str());
                match self.matching(&k, change_id)? {
                    Some(seq) => self.remove_entry(&k, &seq)?,
                    None => {
                        if let Some((seq, mut e)) = self.entry(&k)? {
                            e.base = Some(version.0);
                            self.put_entry(&seq, &e)?;
                        }
                    }
                }
                self.raise_version(&k, version.0)
            }
            Ack::Rebase {
                collection,
                id,
                change_id,
                base,
                op,
            } => {
                let k = key(collection, id.as_str());
                let Some(seq) = self.matching(&k, change_id)? else {
                    return Ok(());
                };
                match op {
                    Some(Op::Upsert(f)) => self.write_row(collection, id, f)?,
                    Some(Op::Delete) => {
                        self.delete_row(collection, id)?;
                    }
                    None => {}
                }
                if let Some((_, mut e)) = self.entry(&k)? {
                    e.base = Some(base.0);
                    self.put_entry(&seq, &e)?;
                }
                Ok(())
            }
            Ack::TakeServer {
                collection,
                id,
                change_id,
                state,
            } => {
                let k = key(collection, id.as_str());
                let Some(seq) = self.matching(&k, change_id)? else {
                    return Ok(());
                };
                self.remove_entry(&k, &seq)?;
                self.set_server_state(collection, id, state)
            }
            Ack::Quarantine {
                change,
                rejection,
                server,
            } => {
                let k = key(&change.collection, change.id.as_str());
                if let Some(seq) = self.matching(&k, &change.change_id)? {
                    self.remove_entry(&k, &seq)?;
                    match server {
                        Some(s) => self.set_server_state(&change.collection, &change.id, s)?,
                        None => {
                            self.delete_row(&change.collection, &change.id)?;
                        }
                    }
                }
                let n = self.bump("q_seq")?;
                let q = Quarantined {
                    change: change.clone(),
                    rejection: rejection.clone(),
                };
                self.t[QUARANTINE].insert(&n.to_be_bytes(), to_json(&q).or_else(abort)?)?;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl LocalStore for SledStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let (i, _) = self.coll(collection)?;
        match self.trees[i].get(id.as_str()).map_err(sled_err)? {
            Some(v) => Ok(Some(Record::new(collection, id.clone(), fields_of(&v)?))),
            None => Ok(None),
        }
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let (i, _) = self.coll(collection)?;
        let mut out = Vec::new();
        for item in self.trees[i].iter() {
            let (k, v) = item.map_err(sled_err)?;
            let id = std::str::from_utf8(&k).map_err(|_| corrupt("record key is not UTF-8"))?;
            out.push(Record::new(
                collection,
                RecordId::parse(id)?,
                fields_of(&v)?,
            ));
        }
        Ok(out)
    }

    async fn put(&self, record: Record) -> Result<(), StoreError> {
        let (i, c) = self.coll(&record.collection)?;
        let fields = canonical_fields(c, &record.id, &record.fields)?;
        let data = to_json(&fields)?;
        let _g = self.lock();
        self.write(|tx| {
            let old = tx.read(i, &record.id)?;
            let changed = changed_fields(old.as_ref(), Some(&fields));
            tx.t[i].insert(record.id.as_str(), data.as_slice())?;
            tx.record_write(&record.collection, &record.id, changed)
        })
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let (i, _) = self.coll(collection)?;
        let _g = self.lock();
        self.write(|tx| {
            let Some(old) = tx.read(i, id)? else {
                return Ok(false);
            };
            tx.t[i].remove(id.as_str())?;
            tx.record_write(collection, id, changed_fields(Some(&old), None))?;
            Ok(true)
        })
    }

    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.client.clone())
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        let _g = self.lock();
        Ok(SyncState {
            watermark: Watermark(self.meta_u64("watermark")?),
            resyncing: self.meta_u64("resyncing")? != 0,
        })
    }

    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        // Check collections and record types before the transaction.
        let mut prepared = Vec::with_capacity(page.changes.len());
        for c in &page.changes {
            let (i, schema) = self.coll(&c.collection)?;
            let data = match &c.state.fields {
                Some(f) => Some(to_json(&canonical_fields(schema, &c.id, f)?)?),
                None => None,
            };
            prepared.push((i, key(&c.collection, c.id.as_str()), data));
        }
        // The transaction (and its flush) blocks: let the runtime's other tasks go on.
        crate::blocking::run(|| self.apply_prepared(page, &prepared))
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
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
                    client: self.client.clone(),
                    n: e.n,
                },
                collection: e.collection,
                id: e.id,
                base: e.base.map(Version),
                op,
                changed: e.changed,
            });
        }
        Ok(out)
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        Ok(self.trees[OUTBOX].len())
    }

    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        let _g = self.lock();
        self.write(|tx| {
            for a in &acks {
                tx.ack(a)?;
            }
            Ok(())
        })
    }

    async fn begin_resync(&self) -> Result<(), StoreError> {
        let _g = self.lock();
        let seen: Vec<IVec> = self.trees[SEEN]
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)?;
        self.write(|tx| {
            tx.set_meta("watermark", 0)?;
            tx.set_meta("resyncing", 1)?;
            for k in &seen {
                tx.t[SEEN].remove(k)?;
            }
            Ok(())
        })
    }

    async fn finish_resync(&self) -> Result<usize, StoreError> {
        let _g = self.lock();
        if self.meta_u64("resyncing")? == 0 {
            return Ok(0);
        }
        // Under the lock nothing changes between this scan and the transaction.
        let mut gone: Vec<(usize, IVec, Vec<u8>)> = Vec::new();
        for (name, (i, _)) in &self.colls {
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
        let seen: Vec<IVec> = self.trees[SEEN]
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)?;
        self.write(|tx| {
            for (i, id, k) in &gone {
                tx.t[*i].remove(id)?;
                tx.t[VERSIONS].remove(k.as_slice())?;
            }
            for k in &seen {
                tx.t[SEEN].remove(k)?;
            }
            tx.set_meta("resyncing", 0)?;
            Ok(gone.len())
        })
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees[QUARANTINE].iter().values() {
            let v = item.map_err(sled_err)?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(format!("quarantine: {e}")))?);
        }
        Ok(out)
    }
}
