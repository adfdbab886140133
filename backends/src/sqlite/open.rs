//! Opening a store: connection settings, the metadata tables (created, or brought
//! up to date from earlier releases of the format), the writer incarnation of this
//! open, the collections' tables (created or migrated), and the parked records of
//! newly declared collections — all in one IMMEDIATE transaction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sync_traits::{Fields, RecordId, StoreError};

use super::core::{Core, Writers};
use super::sql::{
    corrupt, from_json, lit, q, sql_err, to_json, BUMP_COUNTER, FORMAT, GET_META, LATER_DDL,
    META_DDL, OUTBOX_EXISTS, SEEN_MARK, VERSION_APPLY, VERSION_GET,
};
use super::table::{create_table_sql, trigger_names, triggers_sql, Table};
use crate::schema::{canonical_remote_fields, CollectionSchema, Schema};

impl Core {
    /// Opens the store on `conn` (see [`super::SqliteStore::open`]).
    pub(super) fn open(
        mut conn: Connection,
        schema: Schema,
        wal: bool,
    ) -> Result<Self, StoreError> {
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
                return Err(StoreError::Backend(
                    format!("could not switch to WAL mode (got {mode})").into(),
                ));
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
            let mut ins = tx
                .prepare(r#"INSERT INTO "_tidemark_meta" ("key", "value") VALUES (?1, ?2)"#)
                .map_err(sql_err)?;
            ins.execute(params!["format", FORMAT]).map_err(sql_err)?;
            for k in ["counter", "watermark", "resyncing"] {
                ins.execute(params![k, 0i64]).map_err(sql_err)?;
            }
            // Resync epochs start at 1: a version row's mark 0 means "never seen".
            ins.execute(params!["epoch", 1i64]).map_err(sql_err)?;
        } else {
            super::sql::check_format(&tx)?;
            upgrade_metadata(&tx)?;
        }
        tx.execute_batch(LATER_DDL).map_err(sql_err)?;
        let client = new_incarnation(&tx)?;

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
                let c: CollectionSchema = from_json(&format!("stored schema of {name}"), &js)?;
                stored.insert(name, c);
            }
        }
        let mut tables = HashMap::new();
        for c in &schema.collections {
            let effective = match stored.remove(&c.name) {
                None => {
                    tx.execute_batch(&create_table_sql(c)).map_err(sql_err)?;
                    store_schema(&tx, c)?;
                    c.clone()
                }
                Some(old) => migrate_collection(&tx, c, old)?,
            };
            tables.insert(c.name.clone(), Table::new(effective));
        }
        for (name, c) in stored {
            tables.insert(name, Table::new(c));
        }
        // Every table's triggers as this release writes them (new tables, new
        // fields, and a file from an earlier release, whose capture triggers do
        // not mark their entries unstamped).
        for t in tables.values() {
            for n in trigger_names(&t.schema) {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {n}"))
                    .map_err(sql_err)?;
            }
            tx.execute_batch(&triggers_sql(&t.schema))
                .map_err(sql_err)?;
        }
        stamp_trigger_writes(&tx)?;
        // What pulls kept of collections declared only now.
        for t in tables.values() {
            unpark(&tx, t)?;
        }
        tx.commit().map_err(sql_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            client,
            tables,
            hub: sync_traits::ChangeHub::new(),
        })
    }
}

/// Gives every outbox entry a capture trigger wrote or coalesced since the last
/// open (`_tidemark_unstamped`) a new counter of this open's writer, in outbox
/// order. A trigger takes the file's next counter under the writer whose range
/// holds it, and a copy of the file written with plain SQL before any store opens
/// it continues the same counter as the original: without a new stamp its entries
/// could carry change ids the original pushed for other content, which a remote
/// would answer as already applied. Runs after [`new_incarnation`], so the new
/// counters are this open's writer's, which no other copy has.
fn stamp_trigger_writes(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let seqs: Vec<i64> = {
        let mut st = tx
            .prepare(
                r#"SELECT u."seq" FROM "_tidemark_unstamped" AS u JOIN "_tidemark_outbox" AS o ON o."seq" = u."seq" ORDER BY u."seq""#,
            )
            .map_err(sql_err)?;
        let it = st.query_map([], |r| r.get(0)).map_err(sql_err)?;
        it.collect::<Result<_, _>>().map_err(sql_err)?
    };
    for seq in seqs {
        let n: i64 = tx
            .query_row(BUMP_COUNTER, [], |r| r.get(0))
            .map_err(sql_err)?;
        tx.execute(
            r#"UPDATE "_tidemark_outbox" SET "change_n" = ?2 WHERE "seq" = ?1"#,
            params![seq, n],
        )
        .map_err(sql_err)?;
    }
    tx.execute(r#"DELETE FROM "_tidemark_unstamped""#, [])
        .map_err(sql_err)?;
    Ok(())
}

/// Takes this open's writer id: a fresh id whose first counter is the one after
/// the current counter, appended to `_tidemark_writers` (and kept as meta `client`,
/// so a release that knows a single client id stamps its writes with the newest
/// writer, whose range holds them). A store from before writers existed gets its
/// old client id as the first writer, from counter 1 (every change it made).
fn new_incarnation(tx: &Transaction<'_>) -> Result<RecordId, StoreError> {
    let has_writers: bool = tx
        .query_row(
            r#"SELECT EXISTS (SELECT 1 FROM "_tidemark_writers")"#,
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    if !has_writers {
        let old: Option<String> = tx
            .query_row(GET_META, ["client"], |r| r.get(0))
            .optional()
            .map_err(|e| corrupt(format!("client id: {e}")))?;
        if let Some(old) = old {
            let old = RecordId::parse(&old).map_err(|e| corrupt(format!("client id: {e}")))?;
            tx.execute(
                r#"INSERT INTO "_tidemark_writers" ("writer", "first") VALUES (?1, 1)"#,
                [old.as_str()],
            )
            .map_err(sql_err)?;
        }
    }
    let counter: i64 = tx
        .query_row(GET_META, ["counter"], |r| r.get(0))
        .map_err(|e| corrupt(format!("metadata counter: {e}")))?;
    let known = Writers::load(tx)?;
    // A fresh id is random; one this file already had is (practically) never
    // drawn, but drawing again costs nothing.
    let mut client = sync_traits::new_id();
    while known.contains(&client) {
        client = sync_traits::new_id();
    }
    tx.execute(
        r#"INSERT INTO "_tidemark_writers" ("writer", "first") VALUES (?1, ?2)"#,
        params![client.as_str(), counter.saturating_add(1)],
    )
    .map_err(sql_err)?;
    tx.execute(
        r#"INSERT INTO "_tidemark_meta" ("key", "value") VALUES ('client', ?1)
           ON CONFLICT ("key") DO UPDATE SET "value" = excluded."value""#,
        [client.as_str()],
    )
    .map_err(sql_err)?;
    Ok(client)
}

/// A stored collection opened with `c`: new fields become columns (values kept in
/// `_extra` move into them; the open regenerates every table's triggers after).
/// Changing a field's kind
/// or whether the collection is local-only is refused
/// ([`crate::rules::merge_collection`]).
fn migrate_collection(
    tx: &Transaction<'_>,
    c: &CollectionSchema,
    old: CollectionSchema,
) -> Result<CollectionSchema, StoreError> {
    let (merged, added) = crate::rules::merge_collection(&old, c)?;
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
        store_schema(tx, &merged)?;
        migrate_extra(tx, &Table::new(merged.clone()), &added)?;
    }
    Ok(merged)
}

fn store_schema(tx: &Transaction<'_>, c: &CollectionSchema) -> Result<(), StoreError> {
    let js = to_json(c)?;
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
        t.bind_row(&mut up, &id, &fields, None)?;
        up.raw_execute().map_err(sql_err)?;
    }
    Ok(())
}

/// Applies what pulls parked of `t`'s collection while the schema did not declare
/// it (each record's newest state, behind a watermark that has moved on), as
/// `apply_remote` would have ([`crate::rules::decide`]): a record with an outbox
/// entry is left alone (the push meets the server's state), a version older than
/// the known one is stale, one at the known version applies again, and values
/// that do not fit their kind are kept. The records count as seen by a resync
/// under way (a resync clears the parked table when it begins, so whatever is
/// parked was delivered by it). A local-only collection takes nothing from the
/// server: its parked records are dropped.
fn unpark(tx: &Transaction<'_>, t: &Table) -> Result<(), StoreError> {
    let c = &t.schema.name;
    let rows: Vec<(String, i64, Option<String>)> = {
        let mut st = tx
            .prepare_cached(
                r#"SELECT "id", "version", "fields" FROM "_tidemark_parked" WHERE "collection" = ?1"#,
            )
            .map_err(sql_err)?;
        let it = st
            .query_map([c], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql_err)?;
        it.collect::<Result<_, _>>().map_err(sql_err)?
    };
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(
        r#"DELETE FROM "_tidemark_parked" WHERE "collection" = ?1"#,
        [c],
    )
    .map_err(sql_err)?;
    if t.schema.local_only {
        return Ok(());
    }
    let meta = |key: &str| -> Result<i64, StoreError> {
        tx.query_row(GET_META, [key], |r| r.get(0))
            .map_err(|e| corrupt(format!("metadata {key}: {e}")))
    };
    let epoch = meta("epoch")?;
    let resyncing = meta("resyncing")? != 0;
    let mut pending = tx.prepare_cached(OUTBOX_EXISTS).map_err(sql_err)?;
    let mut known = tx.prepare_cached(VERSION_GET).map_err(sql_err)?;
    let mut seen = tx.prepare_cached(SEEN_MARK).map_err(sql_err)?;
    let mut newer = tx.prepare_cached(VERSION_APPLY).map_err(sql_err)?;
    let mut up = tx.prepare_cached(&t.upsert).map_err(sql_err)?;
    let mut del = tx.prepare_cached(&t.delete).map_err(sql_err)?;
    for (id, version, fields) in rows {
        let id = RecordId::parse(&id).map_err(|e| corrupt(format!("parked record id: {e}")))?;
        let what = crate::rules::decide(
            crate::rules::Holds::Held,
            || pending.exists([c, id.as_str()]).map_err(sql_err),
            || {
                known
                    .query_row([c, id.as_str()], |r| r.get::<_, i64>(0))
                    .optional()
                    .map(|v| v.map(|v| u64::try_from(v).unwrap_or(0)))
                    .map_err(sql_err)
            },
            u64::try_from(version).unwrap_or(0),
        )?;
        if what != crate::rules::What::Apply {
            if resyncing {
                seen.execute([c, id.as_str()]).map_err(sql_err)?;
            }
            continue;
        }
        newer
            .execute(params![c, id.as_str(), version, epoch])
            .map_err(sql_err)?;
        match fields {
            Some(js) => {
                let fields: Fields = from_json("parked record", &js)?;
                let (fields, _) = canonical_remote_fields(&t.schema, &id, &fields);
                t.bind_row(&mut up, &id, &fields, None)?;
                up.raw_execute().map_err(sql_err)?;
            }
            None => {
                del.execute([id.as_str()]).map_err(sql_err)?;
            }
        }
    }
    Ok(())
}

/// Brings the metadata of a store written by an earlier release of this format
/// up to date: the resync epoch (`_tidemark_versions.seen`, meta `epoch`). (The
/// tables added later are created by [`LATER_DDL`], and the writers by
/// [`new_incarnation`].)
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
