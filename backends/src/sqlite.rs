//! [`SqliteStore`]: a [`LocalStore`] in one SQLite file, with a real typed table per
//! collection.
//!
//! # Layout
//!
//! Each collection of the [`Schema`] is a table named after it, with a `TEXT`
//! primary key `id` (15 chars of `[a-z0-9]`, enforced for plain-SQL inserts by a
//! `BEFORE INSERT` trigger; a plain-SQL insert without an id gets a random one), one typed column per declared field
//! (see [`FieldKind`]) and an `_extra` column holding, as a JSON object, the fields
//! the schema does not declare and explicit `null`s of declared fields. Query it
//! with plain SQL:
//!
//! ```sql
//! SELECT "title", "order" FROM "songs" WHERE "order" > 3 ORDER BY "order";
//! ```
//!
//! Sync metadata lives in `_tidemark_meta` (format, client id, change counter,
//! watermark, resync flag, resync epoch), `_tidemark_outbox`, `_tidemark_versions`,
//! `_tidemark_seen`, `_tidemark_quarantine` and `_tidemark_collections` (the
//! stored schema). A resync knows what it has seen without an extra table write
//! per record: an applied change stamps its version row with the current epoch
//! (which `begin_resync` moves on), and only records seen but not applied (stale,
//! or behind a pending local change) go to `_tidemark_seen`.
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
//! every other connection fires them. [`SqliteStore::with_connection`] turns
//! them on for the app's own SQL on the store's connection. (The same switch
//! means the app's *own* triggers on synced tables do not fire for the store's
//! writes either.) Record ids are
//! immutable (`UPDATE ... SET id` is refused) and must be 15 chars of `[a-z0-9]`.
//!
//! # Schema evolution
//!
//! Opening with a schema that declares new fields adds the columns
//! (`ALTER TABLE ADD COLUMN`), moves values already kept in `_extra` into them,
//! and regenerates the triggers. New collections get new tables. Nothing is ever
//! dropped: collections and fields missing from a later schema stay known.
//! Changing a declared field's kind is refused with [`StoreError::Schema`].
//!
//! # Concurrency
//!
//! One connection behind a `std::sync::Mutex`; each call does its (short,
//! CPU-bound) SQLite work under the lock on the calling task's thread — applying a
//! 10k-record page takes ~20 ms, a local put ~0.1 ms (see `BENCHMARKS.md`). On a
//! multi-threaded tokio runtime a page apply runs in `block_in_place`, so the
//! runtime's other tasks (the engine's pull of the next page) go on meanwhile.
//! Other connections (the app's readers) work concurrently thanks to WAL, which is
//! checkpointed every 32 MiB.
//!
//! The store keeps the file's page size (SQLite's default, 4 KiB, for a new file).
//! Larger pages trade small writes for bulk applies: measured on 100 pages of 1000
//! new records, 16 KiB pages applied ~25% faster but made a local put ~2x slower
//! (`backends/BENCHMARKS.md`). To choose them, create the file with
//! `PRAGMA page_size` before opening it as a store.
//!
//! # Durability
//!
//! WAL mode, `synchronous = NORMAL`: every call is one transaction, atomic across a
//! process crash; after a power loss the last few commits may be rolled back
//! (never partially applied). Use [`SqliteStore::set_synchronous_full`] for
//! durability across power loss too.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};
use serde_json::Value;
use sync_traits::{
    Ack, ApplyReport, ChangeId, Fields, LocalStore, Op, Page, PendingChange, Quarantined, Record,
    RecordId, RemoteState, StoreError, SyncState, Version, Watermark,
};

use crate::schema::{
    canonical_fields, check_collection_name, check_value, schema_err, CollectionSchema, FieldKind,
    Schema,
};
use sync_traits::changed_fields;

const FORMAT: &str = "tidemark-sqlite/1";

const META_DDL: &str = r#"
CREATE TABLE "_tidemark_meta" (
  "key" TEXT PRIMARY KEY NOT NULL,
  "value"
) WITHOUT ROWID;
CREATE TABLE "_tidemark_collections" (
  "name" TEXT PRIMARY KEY NOT NULL,
  "schema" TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE "_tidemark_outbox" (
  "seq" INTEGER PRIMARY KEY AUTOINCREMENT,
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  "change_n" INTEGER NOT NULL,
  "base" INTEGER,
  "changed" TEXT NOT NULL DEFAULT '[]',
  UNIQUE ("collection", "id")
);
CREATE TABLE "_tidemark_versions" (
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  "version" INTEGER NOT NULL,
  "seen" INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY ("collection", "id")
) WITHOUT ROWID;
CREATE TABLE "_tidemark_seen" (
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  PRIMARY KEY ("collection", "id")
) WITHOUT ROWID;
CREATE TABLE "_tidemark_quarantine" (
  "n" INTEGER PRIMARY KEY AUTOINCREMENT,
  "change" TEXT NOT NULL,
  "rejection" TEXT NOT NULL
);
"#;

const GET_META: &str = r#"SELECT "value" FROM "_tidemark_meta" WHERE "key" = ?1"#;
const SET_META: &str = r#"UPDATE "_tidemark_meta" SET "value" = ?2 WHERE "key" = ?1"#;
const BUMP_COUNTER: &str = r#"UPDATE "_tidemark_meta" SET "value" = "value" + 1 WHERE "key" = 'counter' RETURNING "value""#;
const OUTBOX_FOR: &str = r#"SELECT "seq", "change_n", "changed" FROM "_tidemark_outbox" WHERE "collection" = ?1 AND "id" = ?2"#;
const OUTBOX_EXISTS: &str =
    r#"SELECT 1 FROM "_tidemark_outbox" WHERE "collection" = ?1 AND "id" = ?2"#;
const OUTBOX_INSERT: &str = r#"INSERT INTO "_tidemark_outbox" ("collection", "id", "change_n", "base", "changed") VALUES (?1, ?2, ?3, ?4, ?5)"#;
const OUTBOX_COALESCE: &str =
    r#"UPDATE "_tidemark_outbox" SET "change_n" = ?2, "changed" = ?3 WHERE "seq" = ?1"#;
const OUTBOX_SET_BASE: &str = r#"UPDATE "_tidemark_outbox" SET "base" = ?2 WHERE "seq" = ?1"#;
const OUTBOX_DELETE: &str = r#"DELETE FROM "_tidemark_outbox" WHERE "seq" = ?1"#;
const OUTBOX_PAGE: &str = r#"SELECT "seq", "collection", "id", "change_n", "base", "changed" FROM "_tidemark_outbox" WHERE "seq" > ?1 ORDER BY "seq" LIMIT ?2"#;
const VERSION_GET: &str =
    r#"SELECT "version" FROM "_tidemark_versions" WHERE "collection" = ?1 AND "id" = ?2"#;
const VERSION_RAISE: &str = r#"INSERT INTO "_tidemark_versions" ("collection", "id", "version") VALUES (?1, ?2, ?3) ON CONFLICT ("collection", "id") DO UPDATE SET "version" = excluded."version" WHERE excluded."version" > "version""#;
/// What `apply_remote` records for a change it applies: the version, and (in the
/// same row, so a resync costs no extra b-tree) the resync epoch that saw it.
const VERSION_APPLY: &str = r#"INSERT INTO "_tidemark_versions" ("collection", "id", "version", "seen") VALUES (?1, ?2, ?3, ?4) ON CONFLICT ("collection", "id") DO UPDATE SET "version" = excluded."version", "seen" = excluded."seen" WHERE excluded."version" > "version""#;
/// Seen marks for the (rare) records a resync sees without applying them: stale or
/// deferred behind a pending local change.
const SEEN_MARK: &str =
    r#"INSERT INTO "_tidemark_seen" ("collection", "id") VALUES (?1, ?2) ON CONFLICT DO NOTHING"#;

/// A version as stored: SQLite integers are signed 64-bit, so versions are capped
/// at `i64::MAX` (a server seq never gets near it).
fn sql_version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Quotes an SQL identifier.
fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return StoreError::Corrupt(e.to_string())
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::Busy(e.to_string())
            }
            _ => {}
        }
    }
    StoreError::Backend(e.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A collection's table and its prepared SQL.
#[derive(Debug)]
struct Table {
    schema: CollectionSchema,
    select_one: String,
    select_all: String,
    count: String,
    upsert: String,
    delete: String,
}

impl Table {
    fn new(schema: CollectionSchema) -> Self {
        let t = q(&schema.name);
        let cols: Vec<String> = schema.fields.iter().map(|f| q(&f.name)).collect();
        let mut data_cols = cols.clone();
        data_cols.push("\"_extra\"".into());
        let all = data_cols.join(", ");
        let placeholders: Vec<String> =
            (1..=data_cols.len() + 1).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = data_cols
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        Self {
            select_one: format!("SELECT {all} FROM {t} WHERE \"id\" = ?1"),
            select_all: format!("SELECT \"id\", {all} FROM {t} ORDER BY \"id\""),
            count: format!("SELECT COUNT(*) FROM {t}"),
            upsert: format!(
                "INSERT INTO {t} (\"id\", {all}) VALUES ({}) ON CONFLICT (\"id\") DO UPDATE SET {}",
                placeholders.join(", "),
                updates.join(", ")
            ),
            delete: format!("DELETE FROM {t} WHERE \"id\" = ?1"),
            schema,
        }
    }

    /// Checks a record against the schema and binds it (id, declared columns,
    /// `_extra`) to the upsert statement, without copying strings.
    fn bind_row(
        &self,
        st: &mut rusqlite::Statement<'_>,
        id: &RecordId,
        fields: &Fields,
    ) -> Result<(), StoreError> {
        let c = &self.schema;
        st.raw_bind_parameter(1, id.as_str()).map_err(sql_err)?;
        let mut extra: Vec<(&String, &Value)> = Vec::new();
        for (i, f) in c.fields.iter().enumerate() {
            let idx = i + 2;
            let r = match (f.kind, fields.get(&f.name)) {
                (_, None) => st.raw_bind_parameter(idx, SqlValue::Null),
                (_, Some(v @ Value::Null)) => {
                    extra.push((&f.name, v));
                    st.raw_bind_parameter(idx, SqlValue::Null)
                }
                (FieldKind::Text, Some(Value::String(s))) => st.raw_bind_parameter(idx, s.as_str()),
                (FieldKind::Number, Some(Value::Number(n))) if n.is_i64() => {
                    st.raw_bind_parameter(idx, n.as_i64().unwrap_or_default())
                }
                (FieldKind::Bool, Some(Value::Bool(b))) => st.raw_bind_parameter(idx, *b),
                (kind, Some(v)) => {
                    let v = check_value(&c.name, id, &f.name, kind, v)?;
                    st.raw_bind_parameter(idx, to_sql(kind, &v))
                }
            };
            r.map_err(sql_err)?;
        }
        for (k, v) in fields {
            if k != "id" && c.kind_of(k).is_none() {
                extra.push((k, v));
            }
        }
        let idx = c.fields.len() + 2;
        if extra.is_empty() {
            st.raw_bind_parameter(idx, SqlValue::Null)
        } else {
            extra.sort_by(|a, b| a.0.cmp(b.0));
            let map: serde_json::Map<String, Value> = extra
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            st.raw_bind_parameter(idx, Value::Object(map).to_string())
        }
        .map_err(sql_err)?;
        Ok(())
    }

    /// Reads declared columns and `_extra` starting at column `offset`.
    fn read_fields(&self, row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Fields> {
        let n = self.schema.fields.len();
        let mut out = match row.get_ref(offset + n)? {
            ValueRef::Text(t) => match serde_json::from_slice::<Value>(t) {
                Ok(Value::Object(m)) => m,
                _ => Fields::new(),
            },
            _ => Fields::new(),
        };
        for (i, f) in self.schema.fields.iter().enumerate() {
            let v = row.get_ref(offset + i)?;
            if let Some(v) = from_sql(f.kind, v) {
                out.insert(f.name.clone(), v);
            }
        }
        Ok(out)
    }
}

fn to_sql(kind: FieldKind, v: &Value) -> SqlValue {
    match (kind, v) {
        (_, Value::Null) => SqlValue::Null,
        (FieldKind::Json | FieldKind::Relations, v) => SqlValue::Text(v.to_string()),
        (_, Value::String(s)) => SqlValue::Text(s.clone()),
        (_, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
        },
        (_, v) => SqlValue::Text(v.to_string()),
    }
}

/// A column value as JSON; `None` for SQL NULL. Values written with plain SQL that
/// do not fit the declared kind are returned as they are stored (best effort).
fn from_sql(kind: FieldKind, v: ValueRef<'_>) -> Option<Value> {
    Some(match v {
        ValueRef::Null => return None,
        ValueRef::Integer(i) => match kind {
            FieldKind::Bool if i == 0 => Value::Bool(false),
            FieldKind::Bool if i == 1 => Value::Bool(true),
            _ => Value::from(i),
        },
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => {
            let s = String::from_utf8_lossy(t);
            match kind {
                FieldKind::Json | FieldKind::Relations => {
                    serde_json::from_str(&s).unwrap_or(Value::String(s.into_owned()))
                }
                _ => Value::String(s.into_owned()),
            }
        }
        ValueRef::Blob(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
    })
}

/// DDL for a collection's table.
fn create_table_sql(c: &CollectionSchema) -> String {
    let mut cols = vec![
        "\"id\" TEXT PRIMARY KEY NOT NULL DEFAULT (substr(lower(hex(randomblob(8))), 1, 15)) \
         "
        .to_string(),
    ];
    for f in &c.fields {
        cols.push(format!("{} {}", q(&f.name), f.kind.sql_type()));
    }
    cols.push("\"_extra\" TEXT".into());
    format!("CREATE TABLE {} (\n  {}\n)", q(&c.name), cols.join(",\n  "))
}

fn trigger_names(c: &CollectionSchema) -> [String; 5] {
    ["ai", "au", "ad", "id", "bi"].map(|s| q(&format!("_tidemark_{}_{s}", c.name)))
}

/// Triggers that capture plain-SQL writes on a collection's table into the outbox.
fn triggers_sql(c: &CollectionSchema) -> String {
    let t = q(&c.name);
    let cl = lit(&c.name);
    let path = |name: &str| lit(&format!("$.\"{name}\""));
    let declared: Vec<String> = c.fields.iter().map(|f| lit(&f.name)).collect();
    let keys_of = |row: &str| -> String {
        let mut parts: Vec<String> = c
            .fields
            .iter()
            .map(|f| {
                format!(
                    "SELECT {} AS k WHERE {row}.{} IS NOT NULL",
                    lit(&f.name),
                    q(&f.name)
                )
            })
            .collect();
        parts.push(format!(
            "SELECT \"key\" AS k FROM json_each(coalesce({row}.\"_extra\", '{{}}'))"
        ));
        parts.join(" UNION ")
    };
    let updated = {
        let mut parts: Vec<String> = c
            .fields
            .iter()
            .map(|f| {
                let col = q(&f.name);
                let p = path(&f.name);
                format!(
                    "SELECT {} AS k WHERE OLD.{col} IS NOT NEW.{col} OR (NEW.{col} IS NULL AND \
                     (OLD.\"_extra\" -> {p}) IS NOT (NEW.\"_extra\" -> {p}))",
                    lit(&f.name)
                )
            })
            .collect();
        parts.push(format!(
            "SELECT \"key\" AS k FROM (SELECT \"key\", \"fullkey\" FROM json_each(coalesce(NEW.\"_extra\", '{{}}')) \
             UNION SELECT \"key\", \"fullkey\" FROM json_each(coalesce(OLD.\"_extra\", '{{}}'))) \
             WHERE \"key\" NOT IN ({}) AND (coalesce(OLD.\"_extra\", '{{}}') -> \"fullkey\") IS NOT \
             (coalesce(NEW.\"_extra\", '{{}}') -> \"fullkey\")",
            declared.join(", ")
        ));
        parts.join(" UNION ")
    };
    let when = "";
    let body = |row: &str, changed: &str| -> String {
        format!(
            "UPDATE \"_tidemark_meta\" SET \"value\" = \"value\" + 1 WHERE \"key\" = 'counter';\n\
             UPDATE \"_tidemark_outbox\" SET \
               \"change_n\" = (SELECT \"value\" FROM \"_tidemark_meta\" WHERE \"key\" = 'counter'), \
               \"changed\" = (SELECT json_group_array(k) FROM (SELECT \"value\" AS k FROM json_each(\"_tidemark_outbox\".\"changed\") UNION {changed})) \
             WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\";\n\
             INSERT INTO \"_tidemark_outbox\" (\"collection\", \"id\", \"change_n\", \"base\", \"changed\") \
             SELECT {cl}, {row}.\"id\", (SELECT \"value\" FROM \"_tidemark_meta\" WHERE \"key\" = 'counter'), \
               (SELECT \"version\" FROM \"_tidemark_versions\" WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\"), \
               (SELECT json_group_array(k) FROM ({changed})) \
             WHERE NOT EXISTS (SELECT 1 FROM \"_tidemark_outbox\" WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\");"
        )
    };
    let [ai, au, ad, idt, bi] = trigger_names(c);
    format!(
        "CREATE TRIGGER {ai} AFTER INSERT ON {t} {when} BEGIN\n{}\nEND;\n\
         CREATE TRIGGER {au} AFTER UPDATE ON {t} {when} BEGIN\n{}\nEND;\n\
         CREATE TRIGGER {ad} AFTER DELETE ON {t} {when} BEGIN\n{}\nEND;\n\
         CREATE TRIGGER {idt} BEFORE UPDATE OF \"id\" ON {t} WHEN OLD.\"id\" IS NOT NEW.\"id\" BEGIN \
         SELECT RAISE(ABORT, 'tidemark: record ids cannot change; delete and insert instead'); END;\n\
         CREATE TRIGGER {bi} BEFORE INSERT ON {t} WHEN length(NEW.\"id\") IS NOT 15 OR NEW.\"id\" GLOB '*[^a-z0-9]*' BEGIN \
         SELECT RAISE(ABORT, 'tidemark: a record id is 15 characters of a-z0-9'); END;\n",
        body("NEW", &keys_of("NEW")),
        body("NEW", &updated),
        body("OLD", &keys_of("OLD")),
    )
}

/// A [`LocalStore`] in a SQLite database (see the [module docs](self)).
///
/// Calls run under a mutex on one connection; each is one SQLite transaction.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    client: RecordId,
    tables: HashMap<String, Table>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the SQLite file at `path`, creating
    /// or migrating the tables of `schema`.
    ///
    /// Errors: [`StoreError::Corrupt`] if the file is not a SQLite database, is
    /// damaged, or is a database that is not a tidemark store;
    /// [`StoreError::Schema`] if the schema is invalid or changes a field's kind.
    pub fn open(path: impl AsRef<Path>, schema: Schema) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sql_err)?;
        Self::init(conn, schema, true)
    }

    /// A store in a private in-memory database.
    pub fn open_in_memory(schema: Schema) -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        Self::init(conn, schema, false)
    }

    /// Switches to `synchronous = FULL` (commits survive power loss, at the cost
    /// of an fsync per commit). The default is `NORMAL`.
    pub fn set_synchronous_full(&self) -> Result<(), StoreError> {
        self.lock()
            .execute_batch("PRAGMA synchronous = FULL")
            .map_err(sql_err)
    }

    /// The effective schema (every collection and field this store knows).
    pub fn schema(&self) -> Schema {
        let mut s = Schema::new();
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        for n in names {
            if let Some(t) = self.tables.get(n) {
                s.collections.push(t.schema.clone());
            }
        }
        s
    }

    /// Runs `f` with the store's connection, for plain-SQL reads or writes. Writes
    /// to synced tables are captured into the outbox by the triggers, exactly as
    /// from any other connection.
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Result<T, StoreError> {
        struct TriggersOff<'a>(&'a Connection);
        impl Drop for TriggersOff<'_> {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false);
            }
        }
        let conn = self.lock();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)
            .map_err(sql_err)?;
        let guard = TriggersOff(&conn);
        let out = f(guard.0);
        drop(guard);
        Ok(out)
    }

    fn init(mut conn: Connection, schema: Schema, wal: bool) -> Result<Self, StoreError> {
        schema.validate()?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
        // Reading the schema first turns "not a database" into an error here.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sql_err)?;
        if wal {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(sql_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Backend(format!(
                    "could not switch to WAL mode (got {mode})"
                )));
            }
            // Checkpoint every ~32 MiB of WAL rather than SQLite's 1000 pages: a page
            // of remote changes with random ids dirties a few MiB of b-tree pages,
            // and checkpointing after every one (with its fsync) made a first sync
            // of 100k records ~1.5x slower. The file is cut back to 64 MiB after.
            let page: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sql_err)?;
            conn.execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = 67108864;",
                (32 << 20) / page.max(512)
            ))
            .map_err(sql_err)?;
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(sql_err)?;
        conn.set_prepared_statement_cache_capacity(128);
        // The store's own connection never fires the capture triggers: API writes
        // record their outbox entry themselves and remote applies must not echo.
        // Statements are compiled without the (non-TEMP) triggers, so this costs
        // nothing per row. Other connections to the file fire them.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(sql_err)?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let has_meta: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_tidemark_meta')",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        if !has_meta {
            let objects: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            if objects > 0 {
                return Err(corrupt(
                    "the database has tables but is not a tidemark store",
                ));
            }
            tx.execute_batch(META_DDL).map_err(sql_err)?;
            let client = sync_traits::new_id();
            let mut ins = tx
                .prepare(r#"INSERT INTO "_tidemark_meta" ("key", "value") VALUES (?1, ?2)"#)
                .map_err(sql_err)?;
            ins.execute(params!["format", FORMAT]).map_err(sql_err)?;
            ins.execute(params!["client", client.as_str()])
                .map_err(sql_err)?;
            for k in ["counter", "watermark", "resyncing"] {
                ins.execute(params![k, 0i64]).map_err(sql_err)?;
            }
            // Resync epochs start at 1: a version row's mark 0 means "never seen".
            ins.execute(params!["epoch", 1i64]).map_err(sql_err)?;
        } else {
            let format: Option<String> = tx
                .query_row(GET_META, ["format"], |r| r.get(0))
                .optional()
                .map_err(|e| corrupt(format!("bad tidemark metadata: {e}")))?;
            if format.as_deref() != Some(FORMAT) {
                return Err(corrupt(format!(
                    "unsupported tidemark store format {format:?} (expected {FORMAT})"
                )));
            }
            Self::upgrade_metadata(&tx)?;
        }
        let client: String = tx
            .query_row(GET_META, ["client"], |r| r.get(0))
            .map_err(|e| corrupt(format!("client id missing: {e}")))?;
        let client = RecordId::parse(&client).map_err(|e| corrupt(format!("client id: {e}")))?;

        // Stored collections.
        let mut stored: HashMap<String, CollectionSchema> = HashMap::new();
        {
            let mut st = tx
                .prepare(r#"SELECT "name", "schema" FROM "_tidemark_collections""#)
                .map_err(sql_err)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql_err)?;
            for row in rows {
                let (name, js) = row.map_err(sql_err)?;
                let c: CollectionSchema = serde_json::from_str(&js)
                    .map_err(|e| corrupt(format!("stored schema of {name}: {e}")))?;
                stored.insert(name, c);
            }
        }
        let mut tables = HashMap::new();
        for c in &schema.collections {
            let effective = match stored.remove(&c.name) {
                None => {
                    tx.execute_batch(&create_table_sql(c)).map_err(sql_err)?;
                    tx.execute_batch(&triggers_sql(c)).map_err(sql_err)?;
                    Self::store_schema(&tx, c)?;
                    c.clone()
                }
                Some(old) => {
                    let mut merged = old.clone();
                    let mut added = Vec::new();
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
                            None => {
                                merged.fields.push(f.clone());
                                added.push(f.clone());
                            }
                        }
                    }
                    if !added.is_empty() {
                        for f in &added {
                            tx.execute_batch(&format!(
                                "ALTER TABLE {} ADD COLUMN {} {}",
                                q(&c.name),
                                q(&f.name),
                                f.kind.sql_type()
                            ))
                            .map_err(sql_err)?;
                        }
                        for n in trigger_names(c) {
                            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {n}"))
                                .map_err(sql_err)?;
                        }
                        tx.execute_batch(&triggers_sql(&merged)).map_err(sql_err)?;
                        Self::store_schema(&tx, &merged)?;
                        Self::migrate_extra(&tx, &Table::new(merged.clone()), &added)?;
                    }
                    merged
                }
            };
            tables.insert(c.name.clone(), Table::new(effective));
        }
        for (name, c) in stored {
            tables.insert(name, Table::new(c));
        }
        tx.commit().map_err(sql_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            client,
            tables,
        })
    }

    fn store_schema(tx: &Transaction<'_>, c: &CollectionSchema) -> Result<(), StoreError> {
        let js = serde_json::to_string(c).map_err(|e| StoreError::Backend(e.to_string()))?;
        tx.execute(
            r#"INSERT INTO "_tidemark_collections" ("name", "schema") VALUES (?1, ?2)
               ON CONFLICT ("name") DO UPDATE SET "schema" = excluded."schema""#,
            params![c.name, js],
        )
        .map_err(sql_err)?;
        Ok(())
    }

    /// Moves values of newly declared fields from `_extra` into their columns.
    /// Values that do not fit the new kind stay in `_extra`.
    fn migrate_extra(
        tx: &Transaction<'_>,
        t: &Table,
        added: &[crate::schema::Field],
    ) -> Result<(), StoreError> {
        let cond: Vec<String> = added
            .iter()
            .map(|f| {
                format!(
                    "json_type(\"_extra\", {}) IS NOT NULL",
                    lit(&format!("$.\"{}\"", f.name))
                )
            })
            .collect();
        let mut all = t.select_all.replacen(
            " ORDER BY",
            &format!(
                " WHERE \"_extra\" IS NOT NULL AND json_valid(\"_extra\") AND ({}) ORDER BY",
                cond.join(" OR ")
            ),
            1,
        );
        if cond.is_empty() {
            all = t.select_all.clone();
        }
        let rows: Vec<(String, Fields)> = {
            let mut st = tx.prepare(&all).map_err(sql_err)?;
            let it = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, t.read_fields(r, 1)?)))
                .map_err(sql_err)?;
            it.collect::<Result<_, _>>().map_err(sql_err)?
        };
        let mut up = tx.prepare(&t.upsert).map_err(sql_err)?;
        for (id, fields) in rows {
            let Ok(id) = RecordId::parse(&id) else {
                continue;
            };
            if t.bind_row(&mut up, &id, &fields).is_ok() {
                up.raw_execute().map_err(sql_err)?;
            }
        }
        Ok(())
    }

    /// [`LocalStore::apply_remote`] once the page's collections are checked: one
    /// IMMEDIATE transaction.
    fn apply_page(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        self.write(|tx| {
            let resyncing = Self::meta_i64(tx, "resyncing")? != 0;
            let outbox_empty: bool = tx
                .query_row(
                    r#"SELECT NOT EXISTS (SELECT 1 FROM "_tidemark_outbox")"#,
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            // Applied changes carry the epoch in their version row; during a resync
            // that is what marks them seen (begin_resync moves the epoch on).
            let epoch = Self::meta_i64(tx, "epoch")?;
            let mut report = ApplyReport::default();
            let mut seen = tx.prepare_cached(SEEN_MARK).map_err(sql_err)?;
            let mut pending = tx.prepare_cached(OUTBOX_EXISTS).map_err(sql_err)?;
            let mut newer = tx.prepare_cached(VERSION_APPLY).map_err(sql_err)?;
            let mut upserts: Vec<(&str, rusqlite::CachedStatement<'_>)> = Vec::new();
            // Visit the page in key order (stable, so repeated keys keep their order
            // and the result is the same): the index inserts then hit neighbouring
            // b-tree pages instead of random ones.
            let mut order: Vec<&sync_traits::RemoteChange> = page.changes.iter().collect();
            order.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
            for c in order {
                let (coll, id) = (c.collection.as_str(), c.id.as_str());
                if !outbox_empty && pending.exists([coll, id]).map_err(sql_err)? {
                    if resyncing {
                        seen.execute([coll, id]).map_err(sql_err)?;
                    }
                    report.deferred += 1;
                    continue;
                }
                // Records the version (and the epoch) only if it is newer: one
                // statement reads and writes, and "no row changed" means stale.
                if newer
                    .execute(params![coll, id, sql_version(c.state.version.0), epoch])
                    .map_err(sql_err)?
                    == 0
                {
                    if resyncing {
                        seen.execute([coll, id]).map_err(sql_err)?;
                    }
                    report.stale += 1;
                    continue;
                }
                let t = self.table(coll)?;
                match &c.state.fields {
                    Some(f) => {
                        // One prepared upsert per collection for the whole page.
                        let st = match upserts.iter_mut().position(|(n, _)| *n == coll) {
                            Some(i) => &mut upserts[i].1,
                            None => {
                                let st = tx.prepare_cached(&t.upsert).map_err(sql_err)?;
                                upserts.push((coll, st));
                                let last = upserts.len() - 1;
                                &mut upserts[last].1
                            }
                        };
                        t.bind_row(st, &c.id, f)?;
                        st.raw_execute().map_err(sql_err)?;
                    }
                    None => {
                        Self::delete_row(tx, t, &c.id)?;
                    }
                }
                report.applied += 1;
            }
            let wm = Self::meta_i64(tx, "watermark")? as u64;
            if page.watermark.0 > wm {
                Self::set_meta(tx, "watermark", page.watermark.0 as i64)?;
            }
            Ok(report)
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped (rolled back) its transaction,
        // so the connection is consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self, collection: &str) -> Result<&Table, StoreError> {
        check_collection_name(collection)?;
        self.tables
            .get(collection)
            .ok_or_else(|| StoreError::UnknownCollection(collection.to_owned()))
    }

    /// Runs `f` in an IMMEDIATE transaction (triggers are off on this connection).
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(sql_err)?;
        Ok(out)
    }

    fn read_row(conn: &Connection, t: &Table, id: &RecordId) -> Result<Option<Fields>, StoreError> {
        let mut st = conn.prepare_cached(&t.select_one).map_err(sql_err)?;
        st.query_row([id.as_str()], |r| t.read_fields(r, 0))
            .optional()
            .map_err(sql_err)
    }

    fn write_row(
        conn: &Connection,
        t: &Table,
        id: &RecordId,
        fields: &Fields,
    ) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(&t.upsert).map_err(sql_err)?;
        t.bind_row(&mut st, id, fields)?;
        st.raw_execute().map_err(sql_err)?;
        Ok(())
    }

    fn delete_row(conn: &Connection, t: &Table, id: &RecordId) -> Result<bool, StoreError> {
        let mut st = conn.prepare_cached(&t.delete).map_err(sql_err)?;
        Ok(st.execute([id.as_str()]).map_err(sql_err)? > 0)
    }

    fn meta_i64(conn: &Connection, key: &str) -> Result<i64, StoreError> {
        let mut st = conn.prepare_cached(GET_META).map_err(sql_err)?;
        st.query_row([key], |r| r.get::<_, i64>(0))
            .map_err(|e| corrupt(format!("metadata {key}: {e}")))
    }

    fn set_meta(conn: &Connection, key: &str, v: i64) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(SET_META).map_err(sql_err)?;
        st.execute(params![key, v]).map_err(sql_err)?;
        Ok(())
    }

    /// Brings the metadata of a store written by an earlier release of this format
    /// up to date: the resync epoch (`_tidemark_versions.seen`, meta `epoch`).
    fn upgrade_metadata(tx: &Transaction<'_>) -> Result<(), StoreError> {
        let has_seen: bool = tx
            .query_row(
                r#"SELECT EXISTS (SELECT 1 FROM pragma_table_info('_tidemark_versions') WHERE "name" = 'seen')"#,
                [],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        if !has_seen {
            tx.execute_batch(
                r#"ALTER TABLE "_tidemark_versions" ADD COLUMN "seen" INTEGER NOT NULL DEFAULT 0"#,
            )
            .map_err(sql_err)?;
        }
        // Epoch 1, not 0: the rows just given the default mark 0 must not count as
        // seen by a resync that is under way (its marks are in `_tidemark_seen`).
        tx.execute(
            r#"INSERT INTO "_tidemark_meta" ("key", "value") VALUES ('epoch', 1) ON CONFLICT DO NOTHING"#,
            [],
        )
        .map_err(sql_err)?;
        Ok(())
    }

    fn version(conn: &Connection, c: &str, id: &RecordId) -> Result<Option<u64>, StoreError> {
        let mut st = conn.prepare_cached(VERSION_GET).map_err(sql_err)?;
        Ok(st
            .query_row(params![c, id.as_str()], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(sql_err)?
            .map(|v| v as u64))
    }

    fn raise_version(conn: &Connection, c: &str, id: &RecordId, v: u64) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(VERSION_RAISE).map_err(sql_err)?;
        st.execute(params![c, id.as_str(), sql_version(v)])
            .map_err(sql_err)?;
        Ok(())
    }

    /// The outbox entry of a record: (seq, change_n, changed).
    fn outbox_entry(
        conn: &Connection,
        c: &str,
        id: &RecordId,
    ) -> Result<Option<(i64, i64, String)>, StoreError> {
        let mut st = conn.prepare_cached(OUTBOX_FOR).map_err(sql_err)?;
        st.query_row(params![c, id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(sql_err)
    }

    /// The seq of the record's outbox entry if it carries `change_id`.
    fn matching(
        &self,
        conn: &Connection,
        c: &str,
        id: &RecordId,
        change_id: &ChangeId,
    ) -> Result<Option<i64>, StoreError> {
        Ok(Self::outbox_entry(conn, c, id)?.and_then(|(seq, n, _)| {
            (change_id.client == self.client && n as u64 == change_id.n).then_some(seq)
        }))
    }

    fn record_write(
        conn: &Connection,
        c: &str,
        id: &RecordId,
        changed: BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let n: i64 = conn
            .prepare_cached(BUMP_COUNTER)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?;
        match Self::outbox_entry(conn, c, id)? {
            Some((seq, _, old)) => {
                let mut set = parse_changed(&old)?;
                set.extend(changed);
                let js =
                    serde_json::to_string(&set).map_err(|e| StoreError::Backend(e.to_string()))?;
                conn.prepare_cached(OUTBOX_COALESCE)
                    .and_then(|mut s| s.execute(params![seq, n, js]))
                    .map_err(sql_err)?;
            }
            None => {
                let base = Self::version(conn, c, id)?.map(|v| v as i64);
                let js = serde_json::to_string(&changed)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                conn.prepare_cached(OUTBOX_INSERT)
                    .and_then(|mut s| s.execute(params![c, id.as_str(), n, base, js]))
                    .map_err(sql_err)?;
            }
        }
        Ok(())
    }

    fn set_server_state(
        &self,
        conn: &Connection,
        c: &str,
        id: &RecordId,
        state: &RemoteState,
    ) -> Result<(), StoreError> {
        let t = self.table(c)?;
        match &state.fields {
            Some(f) => Self::write_row(conn, t, id, f)?,
            None => {
                Self::delete_row(conn, t, id)?;
            }
        }
        Self::raise_version(conn, c, id, state.version.0)
    }

    fn ack_one(&self, tx: &Transaction<'_>, ack: Ack) -> Result<(), StoreError> {
        match ack {
            Ack::Applied {
                collection,
                id,
                change_id,
                version,
            } => {
                match self.matching(tx, &collection, &id, &change_id)? {
                    Some(seq) => {
                        tx.prepare_cached(OUTBOX_DELETE)
                            .and_then(|mut s| s.execute([seq]))
                            .map_err(sql_err)?;
                    }
                    None => {
                        if let Some((seq, _, _)) = Self::outbox_entry(tx, &collection, &id)? {
                            tx.prepare_cached(OUTBOX_SET_BASE)
                                .and_then(|mut s| s.execute(params![seq, sql_version(version.0)]))
                                .map_err(sql_err)?;
                        }
                    }
                }
                Self::raise_version(tx, &collection, &id, version.0)
            }
            Ack::Rebase {
                collection,
                id,
                change_id,
                base,
                op,
            } => {
                let Some(seq) = self.matching(tx, &collection, &id, &change_id)? else {
                    return Ok(());
                };
                if let Some(op) = &op {
                    let t = self.table(&collection)?;
                    match op {
                        Op::Upsert(f) => Self::write_row(tx, t, &id, f)?,
                        Op::Delete => {
                            Self::delete_row(tx, t, &id)?;
                        }
                    }
                }
                tx.prepare_cached(OUTBOX_SET_BASE)
                    .and_then(|mut s| s.execute(params![seq, sql_version(base.0)]))
                    .map_err(sql_err)?;
                Ok(())
            }
            Ack::TakeServer {
                collection,
                id,
                change_id,
                state,
            } => {
                let Some(seq) = self.matching(tx, &collection, &id, &change_id)? else {
                    return Ok(());
                };
                tx.prepare_cached(OUTBOX_DELETE)
                    .and_then(|mut s| s.execute([seq]))
                    .map_err(sql_err)?;
                self.set_server_state(tx, &collection, &id, &state)
            }
            Ack::Quarantine {
                change,
                rejection,
                server,
            } => {
                if let Some(seq) =
                    self.matching(tx, &change.collection, &change.id, &change.change_id)?
                {
                    tx.prepare_cached(OUTBOX_DELETE)
                        .and_then(|mut s| s.execute([seq]))
                        .map_err(sql_err)?;
                    match &server {
                        Some(s) => self.set_server_state(tx, &change.collection, &change.id, s)?,
                        None => {
                            let t = self.table(&change.collection)?;
                            Self::delete_row(tx, t, &change.id)?;
                        }
                    }
                }
                let cj = serde_json::to_string(&change)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let rj = serde_json::to_string(&rejection)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                tx.prepare_cached(
                    r#"INSERT INTO "_tidemark_quarantine" ("change", "rejection") VALUES (?1, ?2)"#,
                )
                .and_then(|mut s| s.execute(params![cj, rj]))
                .map_err(sql_err)?;
                Ok(())
            }
        }
    }
}

fn parse_changed(s: &str) -> Result<BTreeSet<String>, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("outbox changed-fields list: {e}")))
}

#[async_trait]
impl LocalStore for SqliteStore {
    async fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let t = self.table(collection)?;
        let conn = self.lock();
        Ok(Self::read_row(&conn, t, id)?.map(|f| Record::new(collection, id.clone(), f)))
    }

    async fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
        let t = self.table(collection)?;
        let conn = self.lock();
        let mut st = conn.prepare_cached(&t.select_all).map_err(sql_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, t.read_fields(r, 1)?)))
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, f) = row.map_err(sql_err)?;
            out.push(Record::new(collection, RecordId::parse(&id)?, f));
        }
        Ok(out)
    }

    async fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let t = self.table(collection)?;
        let conn = self.lock();
        let mut st = conn.prepare_cached(&t.count).map_err(sql_err)?;
        let n: i64 = st.query_row([], |r| r.get(0)).map_err(sql_err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn put(&self, record: Record) -> Result<(), StoreError> {
        let t = self.table(&record.collection)?;
        let fields = canonical_fields(&t.schema, &record.id, &record.fields)?;
        self.write(|tx| {
            let old = Self::read_row(tx, t, &record.id)?;
            let changed = changed_fields(old.as_ref(), Some(&fields));
            Self::write_row(tx, t, &record.id, &fields)?;
            Self::record_write(tx, &record.collection, &record.id, changed)
        })
    }

    async fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let t = self.table(collection)?;
        self.write(|tx| {
            let Some(old) = Self::read_row(tx, t, id)? else {
                return Ok(false);
            };
            Self::delete_row(tx, t, id)?;
            Self::record_write(tx, collection, id, changed_fields(Some(&old), None))?;
            Ok(true)
        })
    }

    async fn client_id(&self) -> Result<RecordId, StoreError> {
        Ok(self.client.clone())
    }

    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        let conn = self.lock();
        Ok(SyncState {
            watermark: Watermark(Self::meta_i64(&conn, "watermark")? as u64),
            resyncing: Self::meta_i64(&conn, "resyncing")? != 0,
        })
    }

    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        for c in &page.changes {
            self.table(&c.collection)?;
        }
        crate::blocking::run(|| self.apply_page(page))
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        let conn = self.lock();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, String, i64, Option<i64>, String)> = {
            let mut st = conn.prepare_cached(OUTBOX_PAGE).map_err(sql_err)?;
            let it = st
                .query_map(params![after, limit], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(sql_err)?;
            it.collect::<Result<_, _>>().map_err(sql_err)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, coll, id, n, base, changed) in rows {
            let id = RecordId::parse(&id)?;
            let t = self
                .tables
                .get(&coll)
                .ok_or_else(|| corrupt(format!("outbox names unknown collection {coll:?}")))?;
            let op = match Self::read_row(&conn, t, &id)? {
                Some(f) => Op::Upsert(f),
                None => Op::Delete,
            };
            out.push(PendingChange {
                seq: seq as u64,
                change_id: ChangeId {
                    client: self.client.clone(),
                    n: n as u64,
                },
                collection: coll,
                id,
                base: base.map(|b| Version(b as u64)),
                op,
                changed: parse_changed(&changed)?,
            });
        }
        Ok(out)
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        let conn = self.lock();
        let n: i64 = conn
            .prepare_cached(r#"SELECT count(*) FROM "_tidemark_outbox""#)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?;
        Ok(n as usize)
    }

    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.write(|tx| {
            for ack in acks {
                self.ack_one(tx, ack)?;
            }
            Ok(())
        })
    }

    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            Self::set_meta(tx, "watermark", 0)?;
            Self::set_meta(tx, "resyncing", 1)?;
            // A new epoch: every version row's mark is now from an earlier one.
            let epoch = Self::meta_i64(tx, "epoch")?;
            Self::set_meta(tx, "epoch", epoch + 1)?;
            tx.execute(r#"DELETE FROM "_tidemark_seen""#, [])
                .map_err(sql_err)?;
            Ok(())
        })
    }

    async fn finish_resync(&self) -> Result<usize, StoreError> {
        self.write(|tx| {
            if Self::meta_i64(tx, "resyncing")? == 0 {
                return Ok(0);
            }
            let epoch = Self::meta_i64(tx, "epoch")?;
            let mut removed = 0;
            for (name, _) in self.tables.iter() {
                let t = q(name);
                let l = lit(name);
                let unseen = format!(
                    "SELECT \"id\" FROM {t} AS r WHERE NOT EXISTS (SELECT 1 FROM \"_tidemark_versions\" v WHERE v.\"collection\" = {l} AND v.\"id\" = r.\"id\" AND v.\"seen\" = {epoch}) \
                     AND NOT EXISTS (SELECT 1 FROM \"_tidemark_seen\" s WHERE s.\"collection\" = {l} AND s.\"id\" = r.\"id\") \
                     AND NOT EXISTS (SELECT 1 FROM \"_tidemark_outbox\" o WHERE o.\"collection\" = {l} AND o.\"id\" = r.\"id\")"
                );
                tx.execute(
                    &format!("DELETE FROM \"_tidemark_versions\" WHERE \"collection\" = {l} AND \"id\" IN ({unseen})"),
                    [],
                )
                .map_err(sql_err)?;
                removed += tx
                    .execute(&format!("DELETE FROM {t} WHERE \"id\" IN ({unseen})"), [])
                    .map_err(sql_err)?;
            }
            Self::set_meta(tx, "resyncing", 0)?;
            tx.execute(r#"DELETE FROM "_tidemark_seen""#, [])
                .map_err(sql_err)?;
            Ok(removed)
        })
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                r#"SELECT "change", "rejection" FROM "_tidemark_quarantine" ORDER BY "n""#,
            )
            .map_err(sql_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (c, r) = row.map_err(sql_err)?;
            out.push(Quarantined {
                change: serde_json::from_str(&c)
                    .map_err(|e| corrupt(format!("quarantine: {e}")))?,
                rejection: serde_json::from_str(&r)
                    .map_err(|e| corrupt(format!("quarantine: {e}")))?,
            });
        }
        Ok(out)
    }
}
