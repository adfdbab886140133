//! [`SqliteStore`]: a [`LocalStore`] in one SQLite file, with a real typed table per
//! collection.
//!
//! # Layout
//!
//! Each collection of the [`Schema`] is a table named after it, with a `TEXT`
//! primary key `id` (15 chars of `[a-z0-9]`, enforced for plain-SQL inserts by a
//! `BEFORE INSERT` trigger; a plain-SQL insert without an id gets a random one),
//! one typed column per declared field (see [`FieldKind`](crate::FieldKind)) and an
//! `_extra` column holding, as a JSON object, the fields the schema does not
//! declare, explicit `null`s of declared fields, and pulled values that do not fit
//! their declared kind (their column is NULL; see *Pulls* below). Query it with
//! plain SQL:
//!
//! ```sql
//! SELECT "title", "order" FROM "songs" WHERE "order" > 3 ORDER BY "order";
//! ```
//!
//! Sync metadata lives in `_tidemark_meta` (format, change counter, watermark,
//! resync flag, resync epoch, and the current writer id as `client`),
//! `_tidemark_writers` (every writer id the file had, with the first change counter
//! each issued), `_tidemark_outbox`, `_tidemark_versions`, `_tidemark_seen`,
//! `_tidemark_quarantine`, `_tidemark_conflicts` (the conflict log),
//! `_tidemark_parked` (pulled records of collections the schema does not declare),
//! `_tidemark_outbox_tx` (the [`TxMark`](sync_traits::TxMark) of each outbox entry a
//! multi-record transaction wrote, removed with the entry)
//! and `_tidemark_collections` (the stored schema). A resync knows what it has seen
//! without an extra table write per record: an applied change stamps its version
//! row with the current epoch (which `begin_resync` moves on), and only records
//! seen but not applied (stale, or behind a pending local change) go to
//! `_tidemark_seen`.
//!
//! # Writer incarnations
//!
//! Every open takes a fresh writer id ([`SyncStore::client_id`]) whose counters go
//! on from the file's change counter, and records it in `_tidemark_writers` in the
//! open transaction. A change id is its writer and counter; an outbox entry's
//! writer is the one whose counter range holds the entry's counter. So a file
//! restored from a backup, or copied to another device, never issues a change id
//! it (or the original) issued before for other content, and
//! [`SyncStore::made_here`] answers `false` for changes the original made after
//! the copy. A file from before writers existed (one `client` id) is upgraded in
//! place: that id becomes the first writer, from counter 1.
//!
//! # Writes with plain SQL
//!
//! `INSERT`/`UPDATE`/`DELETE` on a synced table from any connection to the file
//! (the app's own rusqlite connection, the `sqlite3` shell) are captured into the
//! outbox by triggers, coalesced like API writes, and pushed by the next sync. The
//! store's own writes (API writes, which record the outbox entry themselves, and
//! remote applies, which must not be echoed) never fire them: the store's
//! connection runs with `SQLITE_DBCONFIG_ENABLE_TRIGGER` off, which makes SQLite
//! compile its statements without the triggers (no per-row cost at all), while
//! every other connection fires them. A trigger takes the file's next change
//! counter, and marks its entry *unstamped* (`_tidemark_unstamped`). An open store
//! confirms the marks before any change id leaves it (`pending`): written while
//! it has the file open, their counters are its writer's. Every open first gives
//! each entry still unstamped a new counter of its own fresh writer id.
//! That is what keeps plain SQL safe on a restored or copied file: written before
//! any store opens it, the copy's triggers continue the counter the original also
//! went on with after the copy, under the writer id both had then, so their
//! change ids could equal ones the original already pushed for other content, and
//! a remote would answer "already applied" for a write it never saw. Restamped by
//! the copy's open, they carry its writer id, which no other copy has. (An entry
//! a store pushed between a trigger's write and its confirmation is restamped by
//! the next open: the remote meets it as a conflict with the store's own earlier
//! change, which the engine re-bases without a report, so it costs one more
//! write, never a loss.) [`SqliteStore::with_connection`] turns
//! them on for the app's own SQL on the store's connection. (The same switch
//! means the app's *own* triggers on synced tables do not fire for the store's
//! writes either.) Record ids are immutable (`UPDATE ... SET id` is refused) and
//! must be 15 chars of `[a-z0-9]`.
//!
//! # Local-only collections
//!
//! A collection declared [`local_only`](crate::CollectionSchema::local_only) is a
//! table like any other, but its writes (API or plain SQL: it has no capture
//! triggers) never make an outbox entry, pulls skip changes to it (counted in
//! [`ApplyReport::skipped`](sync_traits::ApplyReport::skipped)), and a resync never
//! removes its records. Whether a stored collection is local-only cannot change
//! at a later open ([`StoreError::Schema`]).
//!
//! # Pulls
//!
//! A page is never refused for what one record holds. A change to a collection
//! the schema does not declare is skipped and counted; if its name is a valid
//! collection name, the record's newest state is *parked*, and applied (in the
//! open transaction) when the store is opened with a schema that declares the
//! collection, so it is not lost behind the watermark: by the rule of a pulled
//! page (a record with an outbox entry keeps it, an older version than the known
//! one is stale, the known one applies again). `begin_resync` drops what
//! is parked (the resync delivers it again). A pulled value that does not fit its
//! declared kind is kept exactly as sent, in `_extra` with NULL in its column, and
//! listed in [`ApplyReport::mistyped`](sync_traits::ApplyReport::mistyped); `get`
//! returns it as sent. An app `put` that leaves such a value as it is succeeds;
//! one that writes a value of the wrong kind (a new or changed one) is refused
//! with [`StoreError::Schema`]. A quarantined change holding such a value is
//! retried with it kept as it is (`retry_quarantined` never coerces or refuses
//! it).
//!
//! # Schema evolution
//!
//! Opening with a schema that declares new fields adds the columns
//! (`ALTER TABLE ADD COLUMN`), moves values already kept in `_extra` into them
//! (values that do not fit stay there), and regenerates the triggers. New
//! collections get new tables (and their parked records). Nothing is ever
//! dropped: collections and fields missing from a later schema stay known.
//! A field keeps the kind it is stored as: a schema declaring another kind for it
//! opens, and values of the other kind follow the mistyped-value rule (pulled ones
//! kept as sent and reported, the app's own writes refused).
//!
//! # Concurrency
//!
//! One connection behind a `std::sync::Mutex`, shared with the calls in flight.
//! No [`LocalStore`] method runs SQLite (or waits for the mutex, or for another
//! connection's write lock, up to the 5 s busy timeout) on an async worker: each
//! runs its transaction on tokio's blocking pool (`spawn_blocking`), so the
//! runtime's other tasks go on meanwhile, on a current-thread runtime too. A
//! call's transaction runs to its end even if its future is dropped (it is
//! atomic either way). Outside a tokio runtime the work runs on the calling
//! thread. [`SyncStore::client_id`] reads no SQLite. `apply_remote` first turns
//! the page, on the calling task, into owned bind-ready rows (a classification
//! and type check of each value, no SQLite, no locks: the work binding did inside
//! the transaction before), yielding to the runtime every 1000 changes. The synchronous
//! [`SqliteStore::with_connection`] and [`SqliteStore::set_synchronous_full`]
//! take the mutex on the calling thread: call them from blocking code (or
//! `spawn_blocking`), not from an async task. Other connections (the app's
//! readers) work concurrently thanks to WAL, which is checkpointed every 32 MiB.
//! Applying a 10k-record page takes ~20 ms, a local put ~0.1 ms (see
//! `BENCHMARKS.md`).
//!
//! The store keeps the file's page size (SQLite's default, 4 KiB, for a new file).
//! Larger pages trade small writes for bulk applies: measured on 100 pages of 1000
//! new records, 16 KiB pages applied ~25% faster but made a local put ~2x slower
//! (`backends/BENCHMARKS.md`). To choose them, create the file with
//! `PRAGMA page_size` before opening it as a store.
//!
//! # Change feed
//!
//! [`LocalStore::changes`] watches a collection (see `sync_traits::feed`): every
//! call reports exactly the records it wrote or removed, after its transaction
//! commits and while it still holds the connection, so in commit order. A
//! collection nobody watches costs one lookup per collection of a page. Writes
//! through other connections or [`SqliteStore::with_connection`] (plain SQL) are
//! not reported; parked records applied at open are part of the state `open`
//! returns.
//!
//! # Durability
//!
//! WAL mode, `synchronous = NORMAL`: every call is one transaction, atomic across a
//! process crash; after a power loss the last few commits may be rolled back
//! (never partially applied). Use [`SqliteStore::set_synchronous_full`] for
//! durability across power loss too. To copy or back up a live store file, copy
//! its `-wal` file with it, or checkpoint first (`PRAGMA wal_checkpoint(TRUNCATE)`
//! through [`SqliteStore::with_connection`]); a copy opened later is a new writer.

mod apply;
mod core;
mod inspect;
mod open;
mod sql;
mod table;
mod transaction;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::Connection;
use sync_traits::SyncStore;
use sync_traits::{
    Ack, ApplyReport, ChangeId, LocalStore, LoggedConflict, Page, PendingChange, Quarantined,
    Record, RecordId, StoreError, SyncState, TxReport, Write,
};

use self::core::Core;
use self::sql::sql_err;
use crate::blocking::unblock;
use crate::schema::Schema;

/// How many changes of a page `apply_remote` prepares between two yields to the
/// runtime (about 0.3 ms of work).
const PREPARE_RUN: usize = 1000;

/// A [`LocalStore`] in a SQLite database (see the [module docs](self)).
///
/// Cloning is cheap and gives another handle to the same open store (same
/// connection, same writer id). Each call is one SQLite transaction, run off the
/// async runtime's workers.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    core: Arc<Core>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the SQLite file at `path`, creating
    /// or migrating the tables of `schema`, taking a new writer id, giving the
    /// entries plain SQL wrote since the last open counters of that writer (see
    /// *Writes with plain SQL*), and applying what earlier pulls parked of
    /// collections `schema` now declares — all in one transaction. Blocks the calling thread (up to the busy timeout if another
    /// connection holds the write lock).
    ///
    /// Errors: [`StoreError::Corrupt`] if the file is not a SQLite database, is
    /// damaged, or is a database that is not a tidemark store;
    /// [`StoreError::Schema`] if the schema is invalid or changes whether a
    /// collection is local-only. A changed field kind is not an error: the field
    /// keeps its stored kind (see the [module docs](self#schema-evolution)).
    pub fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sql_err)?;
        Ok(Self {
            core: Arc::new(Core::open(conn, schema, true)?),
        })
    }

    /// A store in a private in-memory database.
    pub fn open_in_memory(schema: Schema) -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        Ok(Self {
            core: Arc::new(Core::open(conn, schema, false)?),
        })
    }

    /// Switches to `synchronous = FULL` (commits survive power loss, at the cost
    /// of an fsync per commit). The default is `NORMAL`. Takes the connection on
    /// the calling thread.
    pub fn set_synchronous_full(&self) -> Result<(), StoreError> {
        self.core
            .lock()
            .execute_batch("PRAGMA synchronous = FULL")
            .map_err(sql_err)
    }

    /// The effective schema (every collection and field this store knows).
    pub fn schema(&self) -> Schema {
        let mut s = Schema::new();
        let mut names: Vec<&String> = self.core.tables.keys().collect();
        names.sort();
        for n in names {
            if let Some(t) = self.core.tables.get(n) {
                s.collections.push(t.schema.clone());
            }
        }
        s
    }

    /// Runs `f` with the store's connection, for plain-SQL reads or writes. Writes
    /// to synced tables are captured into the outbox by the triggers, exactly as
    /// from any other connection.
    ///
    /// Runs on the calling thread and waits for the store's calls in flight: from
    /// async code, call it inside `tokio::task::spawn_blocking`.
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Result<T, StoreError> {
        struct TriggersOff<'a>(&'a Connection);
        impl Drop for TriggersOff<'_> {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false);
            }
        }
        let conn = self.core.lock();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)
            .map_err(sql_err)?;
        let guard = TriggersOff(&conn);
        let out = f(guard.0);
        drop(guard);
        Ok(out)
    }

    /// Runs `f` on the store off the async workers (see the module docs).
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Core) -> Result<T, StoreError> + Send + 'static,
    {
        let core = self.core.clone();
        unblock(move || f(&core)).await
    }
}

#[async_trait]
impl SyncStore for SqliteStore {
    /// A range of the table's primary-key index (`WHERE "id" > ? ORDER BY "id"
    /// LIMIT ?`): reads `limit` rows, not the table.
    async fn list_page(
        &self,
        collection: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let c = collection.to_owned();
        self.run(move |s| s.list_page(&c, after.as_ref(), limit))
            .await
    }

    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let c = collection.to_owned();
        self.run(move |s| s.count(&c)).await
    }

    /// This open's writer id (taken at open, see the module docs); reads no SQLite.
    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.core.client.clone())
    }

    /// Whether one of the file's writer ids issued `change` within its counter
    /// range (see the module docs).
    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        let change = change.clone();
        self.run(move |s| s.made_here(&change)).await
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.run(|s| s.sync_state()).await
    }

    /// See the trait, and *Pulls* in the module docs. The page is first turned,
    /// on the calling task, into the owned values its rows bind (classifying each
    /// change and checking its values, no SQLite), a thousand changes at a
    /// time with a yield between runs; the transaction runs on the blocking pool.
    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        // Preparing is pure CPU on this task (about 0.3 µs a record): done in runs
        // with a yield between them, so no poll of it holds the worker long.
        let mut prepared = Core::prepared_page(page);
        for (i, run) in page.changes.chunks(PREPARE_RUN).enumerate() {
            if i > 0 {
                tokio::task::yield_now().await;
            }
            self.core.prepare_changes(&mut prepared, run)?;
        }
        self.run(move |s| s.apply_prepared(&prepared)).await
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        self.run(move |s| s.pending(after, limit)).await
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.run(|s| s.pending_count()).await
    }

    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.run(move |s| s.ack(acks)).await
    }

    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.run(|s| s.begin_resync()).await
    }

    async fn finish_resync(&self, synced: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        self.run(move |s| s.finish_resync(synced)).await
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.run(|s| s.quarantined()).await
    }

    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.run(move |s| s.retry_quarantined(id)).await
    }

    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.run(move |s| s.discard_quarantined(id)).await
    }

    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        self.run(|s| s.conflicts()).await
    }

    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.run(move |s| s.clear_conflicts(&ids)).await
    }

    /// Kept in `_tidemark_meta`, under `engine.<key>`.
    fn keeps_sync_meta(&self) -> bool {
        true
    }

    async fn sync_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = format!("engine.{key}");
        self.run(move |s| {
            use rusqlite::OptionalExtension;
            s.lock()
                .query_row(
                    r#"SELECT "value" FROM "_tidemark_meta" WHERE "key" = ?1"#,
                    [&key],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(sql::sql_err)
        })
        .await
    }

    async fn set_sync_meta(&self, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let key = format!("engine.{key}");
        self.run(move |s| {
            s.write(|tx| {
                match &value {
                    Some(v) => tx.execute(
                        r#"INSERT INTO "_tidemark_meta" ("key", "value") VALUES (?1, ?2)
                           ON CONFLICT ("key") DO UPDATE SET "value" = excluded."value""#,
                        [&key, v],
                    ),
                    None => tx.execute(r#"DELETE FROM "_tidemark_meta" WHERE "key" = ?1"#, [&key]),
                }
                .map_err(sql::sql_err)?;
                Ok(())
            })
        })
        .await
    }
}

#[async_trait]
impl LocalStore for SqliteStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let (c, id) = (collection.to_owned(), id.clone());
        self.run(move |s| s.get(&c, &id)).await
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let c = collection.to_owned();
        self.run(move |s| s.list(&c)).await
    }

    async fn put(&self, record: Record) -> Result<(), StoreError> {
        self.run(move |s| s.put(&record)).await
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let (c, id) = (collection.to_owned(), id.clone());
        self.run(move |s| s.delete(&c, &id)).await
    }

    /// One SQLite transaction (see `transaction.rs`): every write checked as
    /// `put` checks it, a refused one rolls all back.
    async fn transact(&self, writes: Vec<Write>) -> Result<TxReport, StoreError> {
        self.run(move |s| s.transact(&writes)).await
    }

    /// Every change made through this store (any clone of it), reported; writes
    /// with plain SQL (other connections, [`SqliteStore::with_connection`]) are
    /// not (see `sync_traits::feed`).
    fn change_hub(&self) -> Option<sync_traits::ChangeHub> {
        Some(self.core.hub.clone())
    }
}
