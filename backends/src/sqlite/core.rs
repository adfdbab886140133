//! The store's operations as plain blocking functions on its one connection. The
//! async [`LocalStore`](sync_traits::LocalStore) methods of
//! [`super::SqliteStore`] run these off the runtime's workers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sync_traits::{
    Ack, ChangeBatch, ChangeCause, ChangeHub, ChangeId, ChangeKind, Conflict, Fields,
    LoggedConflict, Op, PendingChange, Quarantined, Record, RecordId, Rejection, StoreError,
    SyncState, Version, Watermark,
};

use super::sql::{
    corrupt, from_json, lit, q, sql_err, sql_version, stored_u64, to_json, BUMP_COUNTER,
    CONFLICT_INSERT, GET_META, OUTBOX_COALESCE, OUTBOX_DELETE, OUTBOX_FOR, OUTBOX_INSERT,
    OUTBOX_PAGE, OUTBOX_RENUMBER, OUTBOX_SET_BASE, QUARANTINE_INSERT, SET_META, VERSION_GET,
    VERSION_RAISE, WRITERS,
};
use super::table::Table;
use crate::rules::canonical_write;
use crate::schema::check_collection_name;

/// The open store: its connection, the writer id of this open, and its tables.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) conn: Mutex<Connection>,
    pub(super) client: RecordId,
    pub(super) tables: HashMap<String, Table>,
    /// Reports every change the store's calls make (see `sync_traits::feed`): a
    /// call takes its batch before the connection, publishes it after commit.
    pub(super) hub: ChangeHub,
}

/// The writer ids a store had, in the order it took them, each with the first
/// change counter it issued.
#[derive(Debug, Default)]
pub(super) struct Writers(Vec<(RecordId, u64)>);

impl Writers {
    pub(super) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut st = conn.prepare_cached(WRITERS).map_err(sql_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (w, first) = row.map_err(sql_err)?;
            let w = RecordId::parse(&w).map_err(|e| corrupt(format!("writer id: {e}")))?;
            out.push((w, stored_u64(first)));
        }
        Ok(Self(out))
    }

    pub(super) fn contains(&self, w: &RecordId) -> bool {
        self.0.iter().any(|(x, _)| x == w)
    }

    /// The writer that issued counter `n`: the last one whose first counter is at
    /// most `n` (firsts never decrease, and a writer that issued nothing before the
    /// next one took over has an empty range).
    pub(super) fn writer_of(&self, n: u64) -> Result<&RecordId, StoreError> {
        self.0
            .iter()
            .rev()
            .find(|(_, first)| *first <= n)
            .map(|(w, _)| w)
            .ok_or_else(|| corrupt(format!("change counter {n} is older than every writer")))
    }

    /// Whether `change` is a counter issued under its writer id: from the writer's
    /// first counter to the next writer's first - 1, or to `counter` for the last.
    pub(super) fn made_here(&self, change: &ChangeId, counter: u64) -> bool {
        let Some(i) = self.0.iter().position(|(w, _)| *w == change.client) else {
            return false;
        };
        let first = self.0[i].1;
        let end = self
            .0
            .get(i + 1)
            .map_or(counter, |(_, next)| next.saturating_sub(1));
        (first..=end).contains(&change.n)
    }
}

fn parse_changed(s: &str) -> Result<BTreeSet<String>, StoreError> {
    from_json("outbox changed-fields list", s)
}

impl Core {
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped (rolled back) its transaction,
        // so the connection is consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn table(&self, collection: &str) -> Result<&Table, StoreError> {
        check_collection_name(collection)?;
        self.tables
            .get(collection)
            .ok_or_else(|| StoreError::UnknownCollection(collection.to_owned()))
    }

    /// Runs `f` in an IMMEDIATE transaction (triggers are off on this connection).
    pub(super) fn write<T>(
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

    /// [`Core::write`] for a call that changes records: `f` records them in the
    /// call's [`ChangeBatch`] (taken before the connection), published after the
    /// commit and before the connection is released, so watchers get calls'
    /// changes in commit order (see `sync_traits::feed`).
    pub(super) fn write_reporting<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut ChangeBatch<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut feed = self.hub.batch();
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let out = f(&tx, &mut feed)?;
        tx.commit().map_err(sql_err)?;
        feed.publish();
        Ok(out)
    }

    /// Confirms the outbox entries capture triggers wrote while this store has the
    /// file open (clears `_tidemark_unstamped`), before their change ids leave the
    /// store: their counters are this open's writer's, which no other copy of the
    /// file issues. Whatever is still unstamped at the next open was written while
    /// no store had the file open, or not yet confirmed, and gets new counters then
    /// (`open::stamp_trigger_writes`). Writes only when there is something to clear.
    fn confirm_trigger_writes(&self) -> Result<(), StoreError> {
        let marked: bool = self
            .lock()
            .query_row(
                r#"SELECT EXISTS (SELECT 1 FROM "_tidemark_unstamped")"#,
                [],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        if marked {
            self.write(|tx| {
                tx.execute(r#"DELETE FROM "_tidemark_unstamped""#, [])
                    .map_err(sql_err)?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs `f` in a read (DEFERRED) transaction, so its several reads see one
    /// state of the file.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql_err)?;
        let out = f(&tx)?;
        tx.finish().map_err(sql_err)?;
        Ok(out)
    }

    pub(super) fn read_row(
        conn: &Connection,
        t: &Table,
        id: &RecordId,
    ) -> Result<Option<Fields>, StoreError> {
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
        t.bind_row(&mut st, id, fields, None)?;
        st.raw_execute().map_err(sql_err)?;
        Ok(())
    }

    pub(super) fn delete_row(
        conn: &Connection,
        t: &Table,
        id: &RecordId,
    ) -> Result<bool, StoreError> {
        let mut st = conn.prepare_cached(&t.delete).map_err(sql_err)?;
        Ok(st.execute([id.as_str()]).map_err(sql_err)? > 0)
    }

    pub(super) fn meta_i64(conn: &Connection, key: &str) -> Result<i64, StoreError> {
        let mut st = conn.prepare_cached(GET_META).map_err(sql_err)?;
        st.query_row([key], |r| r.get::<_, i64>(0))
            .map_err(|e| corrupt(format!("metadata {key}: {e}")))
    }

    pub(super) fn set_meta(conn: &Connection, key: &str, v: i64) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(SET_META).map_err(sql_err)?;
        st.execute(params![key, v]).map_err(sql_err)?;
        Ok(())
    }

    fn version(conn: &Connection, c: &str, id: &RecordId) -> Result<Option<i64>, StoreError> {
        let mut st = conn.prepare_cached(VERSION_GET).map_err(sql_err)?;
        st.query_row(params![c, id.as_str()], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(sql_err)
    }

    fn raise_version(conn: &Connection, c: &str, id: &RecordId, v: u64) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(VERSION_RAISE).map_err(sql_err)?;
        st.execute(params![c, id.as_str(), sql_version(v)])
            .map_err(sql_err)?;
        Ok(())
    }

    /// The outbox entry of a record: (seq, change_n, changed).
    pub(super) fn outbox_entry(
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

    /// The seq of the record's outbox entry if it carries `change_id` (its counter,
    /// issued under `change_id`'s writer).
    fn matching(
        conn: &Connection,
        writers: &Writers,
        c: &str,
        id: &RecordId,
        change_id: &ChangeId,
    ) -> Result<Option<i64>, StoreError> {
        let Some((seq, n, _)) = Self::outbox_entry(conn, c, id)? else {
            return Ok(None);
        };
        let n = stored_u64(n);
        Ok((n == change_id.n && *writers.writer_of(n)? == change_id.client).then_some(seq))
    }

    /// Records a local write of a record of `t` in the outbox
    /// ([`crate::rules::record_write`]).
    pub(super) fn record_write(
        conn: &Connection,
        t: &Table,
        id: &RecordId,
        old: Option<&Fields>,
        new: Option<&Fields>,
    ) -> Result<(), StoreError> {
        crate::rules::record_write(&TableWrite { conn, t }, &t.schema.name, id, old, new)
    }

    /// An app's put, in `tx` (also a retried quarantined upsert).
    pub(super) fn put_in(
        tx: &Transaction<'_>,
        t: &Table,
        id: &RecordId,
        fields: &Fields,
    ) -> Result<(), StoreError> {
        let old = Self::read_row(tx, t, id)?;
        let fields = canonical_write(&t.schema, id, fields, old.as_ref())?;
        Self::write_row(tx, t, id, &fields)?;
        Self::record_write(tx, t, id, old.as_ref(), Some(&fields))
    }

    // ---- the LocalStore operations ----

    pub(super) fn get(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<Record>, StoreError> {
        let t = self.table(collection)?;
        let conn = self.lock();
        Ok(Self::read_row(&conn, t, id)?.map(|f| Record::new(collection, id.clone(), f)))
    }

    pub(super) fn list(&self, collection: &str) -> Result<Vec<Record>, StoreError> {
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

    /// One SELECT over the primary key's index from just after `after` (`""` sorts
    /// below every id), so a page reads `limit` rows, in one consistent snapshot.
    pub(super) fn list_page(
        &self,
        collection: &str,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let t = self.table(collection)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conn = self.lock();
        let mut st = conn.prepare_cached(&t.select_page).map_err(sql_err)?;
        let lo = after.map_or("", RecordId::as_str);
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![lo, n], |r| {
                Ok((r.get::<_, String>(0)?, t.read_fields(r, 1)?))
            })
            .map_err(sql_err)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in rows {
            let (id, f) = row.map_err(sql_err)?;
            out.push(Record::new(collection, RecordId::parse(&id)?, f));
        }
        Ok(out)
    }

    pub(super) fn count(&self, collection: &str) -> Result<usize, StoreError> {
        let t = self.table(collection)?;
        let conn = self.lock();
        let mut st = conn.prepare_cached(&t.count).map_err(sql_err)?;
        let n: i64 = st.query_row([], |r| r.get(0)).map_err(sql_err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(super) fn put(&self, record: &Record) -> Result<(), StoreError> {
        let t = self.table(&record.collection)?;
        self.write_reporting(|tx, feed| {
            Self::put_in(tx, t, &record.id, &record.fields)?;
            feed.record(
                &record.collection,
                &record.id,
                ChangeKind::Upserted,
                ChangeCause::Local,
            );
            Ok(())
        })
    }

    pub(super) fn delete(&self, collection: &str, id: &RecordId) -> Result<bool, StoreError> {
        let t = self.table(collection)?;
        self.write_reporting(|tx, feed| {
            let Some(old) = Self::read_row(tx, t, id)? else {
                return Ok(false);
            };
            Self::delete_row(tx, t, id)?;
            Self::record_write(tx, t, id, Some(&old), None)?;
            feed.record(collection, id, ChangeKind::Removed, ChangeCause::Local);
            Ok(true)
        })
    }

    pub(super) fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        self.read(|tx| {
            let counter = stored_u64(Self::meta_i64(tx, "counter")?);
            Ok(Writers::load(tx)?.made_here(change, counter))
        })
    }

    pub(super) fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.read(|tx| {
            Ok(SyncState {
                watermark: Watermark(stored_u64(Self::meta_i64(tx, "watermark")?)),
                resyncing: Self::meta_i64(tx, "resyncing")? != 0,
            })
        })
    }

    pub(super) fn pending(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PendingChange>, StoreError> {
        self.confirm_trigger_writes()?;
        self.read(|tx| {
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows: Vec<(i64, String, String, i64, Option<i64>, String)> = {
                let mut st = tx.prepare_cached(OUTBOX_PAGE).map_err(sql_err)?;
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
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let writers = Writers::load(tx)?;
            let mut out = Vec::with_capacity(rows.len());
            for (seq, coll, id, n, base, changed) in rows {
                let id = RecordId::parse(&id)?;
                let t = self
                    .tables
                    .get(&coll)
                    .ok_or_else(|| corrupt(format!("outbox names unknown collection {coll:?}")))?;
                let op = match Self::read_row(tx, t, &id)? {
                    Some(f) => Op::Upsert(f),
                    None => Op::Delete,
                };
                let n = stored_u64(n);
                out.push(PendingChange {
                    seq: stored_u64(seq),
                    change_id: ChangeId {
                        client: writers.writer_of(n)?.clone(),
                        n,
                    },
                    collection: coll,
                    id,
                    base: base.map(|b| Version(stored_u64(b))),
                    op,
                    changed: parse_changed(&changed)?,
                    tx: None,
                });
            }
            super::transaction::read_marks(tx, &mut out)?;
            Ok(out)
        })
    }

    pub(super) fn pending_count(&self) -> Result<usize, StoreError> {
        let conn = self.lock();
        let n: i64 = conn
            .prepare_cached(r#"SELECT count(*) FROM "_tidemark_outbox""#)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(super) fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.write_reporting(|tx, feed| {
            // A resync begun on empty tables (2) skips finish_resync's scan, as
            // every record is one it applied or one with an outbox entry. An ack can
            // write a record's server state with no outbox entry, which an ordinary
            // resync removes unless it delivers it: so the resync becomes an
            // ordinary one (the records it applied carry its epoch: they are seen).
            if Self::meta_i64(tx, "resyncing")? == 2 {
                Self::set_meta(tx, "resyncing", 1)?;
            }
            let txn = SqlTxn {
                core: self,
                tx,
                writers: Writers::load(tx)?,
                feed: std::cell::RefCell::new(feed),
            };
            for ack in &acks {
                crate::rules::settle(&txn, ack)?;
            }
            Ok(())
        })
    }

    pub(super) fn begin_resync(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            Self::set_meta(tx, "watermark", 0)?;
            // `resyncing` is 2 when no synced table holds a record as the resync
            // begins (a first sync): then no record can be missing from it, and
            // finish_resync has nothing to look for.
            let mut empty = true;
            for (name, table) in self.tables.iter() {
                if !table.schema.local_only {
                    let any: bool = tx
                        .query_row(
                            &format!("SELECT EXISTS (SELECT 1 FROM {})", q(name)),
                            [],
                            |r| r.get(0),
                        )
                        .map_err(sql_err)?;
                    empty &= !any;
                }
            }
            Self::set_meta(tx, "resyncing", if empty { 2 } else { 1 })?;
            // A new epoch: every version row's mark is now from an earlier one.
            let epoch = Self::meta_i64(tx, "epoch")?;
            Self::set_meta(tx, "epoch", epoch.saturating_add(1))?;
            // The resync delivers everything again, parked records included.
            tx.execute_batch(r#"DELETE FROM "_tidemark_seen"; DELETE FROM "_tidemark_parked";"#)
                .map_err(sql_err)?;
            Ok(())
        })
    }

    pub(super) fn finish_resync(
        &self,
        synced: Option<BTreeSet<String>>,
    ) -> Result<usize, StoreError> {
        self.write_reporting(|tx, feed| {
            let resyncing = Self::meta_i64(tx, "resyncing")?;
            if resyncing == 0 {
                return Ok(0);
            }
            let epoch = Self::meta_i64(tx, "epoch")?;
            let mut removed = 0;
            for (name, table) in self.tables.iter() {
                // Begun on empty tables (2): every record is one this resync applied
                // or one with an outbox entry, so none is to be removed.
                if resyncing == 2
                    || table.schema.local_only
                    || synced.as_ref().is_some_and(|s| !s.contains(name))
                {
                    continue;
                }
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
                let delete = format!("DELETE FROM {t} WHERE \"id\" IN ({unseen})");
                if feed.watched(name) {
                    // Watched: the removed ids, for the feed.
                    let mut st = tx
                        .prepare(&format!("{delete} RETURNING \"id\""))
                        .map_err(sql_err)?;
                    let mut rows = st.query([]).map_err(sql_err)?;
                    while let Some(row) = rows.next().map_err(sql_err)? {
                        let id: String = row.get(0).map_err(sql_err)?;
                        let id = RecordId::parse(&id)?;
                        feed.push(name, &id, ChangeKind::Removed, ChangeCause::Resync);
                        removed += 1;
                    }
                } else {
                    removed += tx.execute(&delete, []).map_err(sql_err)?;
                }
            }
            Self::set_meta(tx, "resyncing", 0)?;
            tx.execute(r#"DELETE FROM "_tidemark_seen""#, [])
                .map_err(sql_err)?;
            Ok(removed)
        })
    }

    pub(super) fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                r#"SELECT "n", "change", "rejection" FROM "_tidemark_quarantine" ORDER BY "n""#,
            )
            .map_err(sql_err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (n, c, r) = row.map_err(sql_err)?;
            out.push(Quarantined {
                id: stored_u64(n),
                change: from_json("quarantined change", &c)?,
                rejection: from_json("quarantined change's rejection", &r)?,
            });
        }
        Ok(out)
    }

    /// Takes the quarantined change `id` out of the quarantine, in `tx`.
    fn take_quarantined(
        tx: &Transaction<'_>,
        id: u64,
    ) -> Result<Option<PendingChange>, StoreError> {
        let Ok(n) = i64::try_from(id) else {
            return Ok(None);
        };
        let change: Option<String> = tx
            .prepare_cached(
                r#"DELETE FROM "_tidemark_quarantine" WHERE "n" = ?1 RETURNING "change""#,
            )
            .and_then(|mut s| s.query_row([n], |r| r.get(0)).optional())
            .map_err(sql_err)?;
        change
            .map(|c| from_json("quarantined change", &c))
            .transpose()
    }

    pub(super) fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.write_reporting(|tx, feed| {
            let Some(change) = Self::take_quarantined(tx, id)? else {
                return Ok(false);
            };
            let t = self.table(&change.collection)?;
            match &change.op {
                Op::Upsert(f) => {
                    let old = Self::read_row(tx, t, &change.id)?;
                    let fields = crate::rules::retried_fields(&t.schema, &change.id, f);
                    Self::write_row(tx, t, &change.id, &fields)?;
                    Self::record_write(tx, t, &change.id, old.as_ref(), Some(&fields))?;
                    feed.record(
                        &change.collection,
                        &change.id,
                        ChangeKind::Upserted,
                        ChangeCause::Local,
                    );
                }
                Op::Delete => {
                    // A new write of the delete, whether or not the record is
                    // there now (the refused delete is what is written again).
                    let old = Self::read_row(tx, t, &change.id)?;
                    Self::delete_row(tx, t, &change.id)?;
                    Self::record_write(tx, t, &change.id, old.as_ref(), None)?;
                    if old.is_some() {
                        feed.record(
                            &change.collection,
                            &change.id,
                            ChangeKind::Removed,
                            ChangeCause::Local,
                        );
                    }
                }
            }
            Ok(true)
        })
    }

    pub(super) fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.write(|tx| Ok(Self::take_quarantined(tx, id)?.is_some()))
    }

    pub(super) fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(r#"SELECT "id", "conflict" FROM "_tidemark_conflicts" ORDER BY "id""#)
            .map_err(sql_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, c) = row.map_err(sql_err)?;
            out.push(LoggedConflict {
                id: stored_u64(id),
                conflict: from_json("logged conflict", &c)?,
            });
        }
        Ok(out)
    }

    pub(super) fn clear_conflicts(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.write(|tx| {
            let mut st = tx
                .prepare_cached(r#"DELETE FROM "_tidemark_conflicts" WHERE "id" = ?1"#)
                .map_err(sql_err)?;
            let mut removed = 0;
            let unique: BTreeSet<u64> = ids.iter().copied().collect();
            for id in unique {
                if let Ok(id) = i64::try_from(id) {
                    removed += st.execute([id]).map_err(sql_err)?;
                }
            }
            Ok(removed)
        })
    }
}

/// A write transaction of the store, as the shared rules see it
/// ([`crate::rules::Txn`]).
struct SqlTxn<'a, 'f> {
    core: &'a Core,
    tx: &'a Transaction<'a>,
    writers: Writers,
    /// The records the ack rewrites, for the feed.
    feed: std::cell::RefCell<&'a mut ChangeBatch<'f>>,
}

impl crate::rules::Txn for SqlTxn<'_, '_> {
    type Seq = i64;
    type Error = StoreError;

    fn entry_seq(&self, c: &str, id: &RecordId) -> Result<Option<i64>, StoreError> {
        Ok(Core::outbox_entry(self.tx, c, id)?.map(|(seq, _, _)| seq))
    }

    fn matching(
        &self,
        c: &str,
        id: &RecordId,
        change_id: &ChangeId,
    ) -> Result<Option<i64>, StoreError> {
        Core::matching(self.tx, &self.writers, c, id, change_id)
    }

    fn remove_entry(&self, _: &str, _: &RecordId, seq: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(OUTBOX_DELETE)
            .and_then(|mut s| s.execute([seq]))
            .map_err(sql_err)?;
        super::transaction::forget_mark(self.tx, seq)
    }

    fn set_base(&self, _: &str, _: &RecordId, seq: i64, base: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(OUTBOX_SET_BASE)
            .and_then(|mut s| s.execute(params![seq, sql_version(base)]))
            .map_err(sql_err)?;
        Ok(())
    }

    fn renumber(&self, _: &str, _: &RecordId, seq: i64) -> Result<(), StoreError> {
        let n: i64 = self
            .tx
            .prepare_cached(BUMP_COUNTER)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?;
        self.tx
            .prepare_cached(OUTBOX_RENUMBER)
            .and_then(|mut s| s.execute(params![seq, n]))
            .map_err(sql_err)?;
        Ok(())
    }

    fn set_record(
        &self,
        c: &str,
        id: &RecordId,
        fields: Option<&Fields>,
    ) -> Result<(), StoreError> {
        let t = self.core.table(c)?;
        let kind = match fields {
            Some(f) => {
                Core::write_row(self.tx, t, id, f)?;
                ChangeKind::Upserted
            }
            None if Core::delete_row(self.tx, t, id)? => ChangeKind::Removed,
            None => return Ok(()),
        };
        self.feed
            .borrow_mut()
            .record(c, id, kind, ChangeCause::Settlement);
        Ok(())
    }

    fn raise_version(&self, c: &str, id: &RecordId, v: u64) -> Result<(), StoreError> {
        Core::raise_version(self.tx, c, id, v)
    }

    fn quarantine(&self, change: &PendingChange, rejection: &Rejection) -> Result<(), StoreError> {
        let (cj, rj) = (to_json(change)?, to_json(rejection)?);
        self.tx
            .prepare_cached(QUARANTINE_INSERT)
            .and_then(|mut s| s.execute(params![cj, rj]))
            .map_err(sql_err)?;
        Ok(())
    }

    fn log_conflict(&self, conflict: &Conflict) -> Result<(), StoreError> {
        let js = to_json(conflict)?;
        self.tx
            .prepare_cached(CONFLICT_INSERT)
            .and_then(|mut s| s.execute([js]))
            .map_err(sql_err)?;
        Ok(())
    }
}

/// A local write to one table, as the shared outbox rule sees it
/// ([`crate::rules::Outbox`]); the collection it is asked about is `t`'s.
struct TableWrite<'a> {
    conn: &'a Connection,
    t: &'a Table,
}

/// An outbox entry read for coalescing: its seq and changed fields.
struct SqlEntry {
    seq: i64,
    changed: BTreeSet<String>,
}

impl crate::rules::Outbox for TableWrite<'_> {
    type Entry = SqlEntry;
    type Error = StoreError;

    fn local_only(&self, _: &str) -> Result<bool, StoreError> {
        Ok(self.t.schema.local_only)
    }

    fn next_change(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(BUMP_COUNTER)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?;
        Ok(stored_u64(n))
    }

    fn entry(&self, c: &str, id: &RecordId) -> Result<Option<SqlEntry>, StoreError> {
        match Core::outbox_entry(self.conn, c, id)? {
            Some((seq, _, changed)) => Ok(Some(SqlEntry {
                seq,
                changed: parse_changed(&changed)?,
            })),
            None => Ok(None),
        }
    }

    fn changed_mut(entry: &mut SqlEntry) -> &mut BTreeSet<String> {
        &mut entry.changed
    }

    fn coalesce(&self, e: SqlEntry, n: u64) -> Result<(), StoreError> {
        let js = to_json(&e.changed)?;
        self.conn
            .prepare_cached(OUTBOX_COALESCE)
            .and_then(|mut s| s.execute(params![e.seq, sql_version(n), js]))
            .map_err(sql_err)?;
        Ok(())
    }

    fn version(&self, c: &str, id: &RecordId) -> Result<Option<u64>, StoreError> {
        Ok(Core::version(self.conn, c, id)?.map(stored_u64))
    }

    fn new_entry(
        &self,
        c: &str,
        id: &RecordId,
        n: u64,
        base: Option<u64>,
        changed: BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let js = to_json(&changed)?;
        self.conn
            .prepare_cached(OUTBOX_INSERT)
            .and_then(|mut s| {
                s.execute(params![
                    c,
                    id.as_str(),
                    sql_version(n),
                    base.map(sql_version),
                    js
                ])
            })
            .map_err(sql_err)?;
        Ok(())
    }
}
