//! [`LocalStore::transact`](sync_traits::LocalStore::transact) for the SQLite
//! store: every write of a transaction, its outbox entry and the transaction's
//! mark in one IMMEDIATE SQLite transaction, so a refused write or a crash at any
//! point leaves all of it or none (WAL: a transaction not committed is not in the
//! file after a crash). Marks live in `_tidemark_outbox_tx` (see `sql.rs`).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, Transaction};
use sync_traits::{
    ChangeCause, ChangeKind, PendingChange, RecordId, StoreError, TxMark, TxReport, Write,
};

use super::core::Core;
use super::sql::{sql_err, stored_u64};

const MARK_SET: &str =
    r#"INSERT OR REPLACE INTO "_tidemark_outbox_tx" ("seq", "tx", "last") VALUES (?1, ?2, ?3)"#;
const MARK_FORGET: &str = r#"DELETE FROM "_tidemark_outbox_tx" WHERE "seq" = ?1"#;
const MARK_RANGE: &str =
    r#"SELECT "seq", "tx", "last" FROM "_tidemark_outbox_tx" WHERE "seq" BETWEEN ?1 AND ?2"#;

impl Core {
    /// Applies `writes` in order, as `put` and `delete` apply them, in one
    /// transaction, then marks the outbox entries they wrote.
    pub(super) fn transact(&self, writes: &[Write]) -> Result<TxReport, StoreError> {
        // Every collection is looked up before the transaction begins.
        let tables = writes
            .iter()
            .map(|w| self.table(w.key().0))
            .collect::<Result<Vec<_>, _>>()?;
        self.write_reporting(|tx, feed| {
            let mut report = TxReport::default();
            let mut wrote: BTreeSet<(&str, &RecordId)> = BTreeSet::new();
            for (w, t) in writes.iter().zip(&tables) {
                let existed = match w {
                    Write::Put(r) => {
                        let existed = Self::read_row(tx, t, &r.id)?.is_some();
                        Self::put_in(tx, t, &r.id, &r.fields)?;
                        feed.record(
                            &r.collection,
                            &r.id,
                            ChangeKind::Upserted,
                            ChangeCause::Local,
                        );
                        if !t.schema.local_only {
                            wrote.insert((&r.collection, &r.id));
                        }
                        existed
                    }
                    Write::Delete { collection, id } => match Self::read_row(tx, t, id)? {
                        Some(old) => {
                            Self::delete_row(tx, t, id)?;
                            Self::record_write(tx, t, id, Some(&old), None)?;
                            feed.record(collection, id, ChangeKind::Removed, ChangeCause::Local);
                            if !t.schema.local_only {
                                wrote.insert((collection, id));
                            }
                            true
                        }
                        None => false,
                    },
                };
                report.existed.push(existed);
            }
            report.mark = mark(tx, &wrote)?;
            Ok(report)
        })
    }
}

/// Marks the entries of the records in `wrote` with the transaction's mark: its
/// id the file's change counter now (the newest write's), its `last` their
/// highest seq. `None` when there is none.
fn mark(
    tx: &Transaction<'_>,
    wrote: &BTreeSet<(&str, &RecordId)>,
) -> Result<Option<TxMark>, StoreError> {
    let mut seqs = Vec::with_capacity(wrote.len());
    for (c, id) in wrote {
        if let Some((seq, _, _)) = Core::outbox_entry(tx, c, id)? {
            seqs.push(seq);
        }
    }
    let Some(&last) = seqs.iter().max() else {
        return Ok(None);
    };
    let id = Core::meta_i64(tx, "counter")?;
    let mut st = tx.prepare_cached(MARK_SET).map_err(sql_err)?;
    for seq in seqs {
        st.execute(params![seq, id, last]).map_err(sql_err)?;
    }
    Ok(Some(TxMark {
        id: stored_u64(id),
        last: stored_u64(last),
    }))
}

/// Fills in the marks of `entries` (one page of `pending`, in seq order).
pub(super) fn read_marks(
    conn: &Connection,
    entries: &mut [PendingChange],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let (lo, hi) = (
        i64::try_from(first.seq).unwrap_or(i64::MAX),
        i64::try_from(last.seq).unwrap_or(i64::MAX),
    );
    let mut st = conn.prepare_cached(MARK_RANGE).map_err(sql_err)?;
    let marks: BTreeMap<u64, TxMark> = st
        .query_map(params![lo, hi], |r| {
            Ok((
                stored_u64(r.get(0)?),
                TxMark {
                    id: stored_u64(r.get(1)?),
                    last: stored_u64(r.get(2)?),
                },
            ))
        })
        .map_err(sql_err)?
        .collect::<Result<_, _>>()
        .map_err(sql_err)?;
    if marks.is_empty() {
        return Ok(());
    }
    for e in entries {
        e.tx = marks.get(&e.seq).copied();
    }
    Ok(())
}

/// Forgets the mark of outbox entry `seq` (removed from the outbox).
pub(super) fn forget_mark(conn: &Connection, seq: i64) -> Result<(), StoreError> {
    conn.prepare_cached(MARK_FORGET)
        .and_then(|mut s| s.execute([seq]))
        .map_err(sql_err)?;
    Ok(())
}
