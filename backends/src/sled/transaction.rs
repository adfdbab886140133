//! [`LocalStore::transact`](sync_traits::LocalStore::transact) for the sled
//! store: every write of a transaction, its outbox entry and the transaction's
//! mark (on the stored [`Entry`](super::Entry)) in one sled transaction over all
//! trees, which sled applies whole or not at all, across a crash too (recovery
//! drops an incomplete batch).

use std::collections::BTreeSet;

use sync_traits::{ChangeCause, ChangeKind, RecordId, StoreError, TxMark, TxReport, Write};

use super::tx::Tx;
use super::{abort, key, to_json, u64_of, Shared, TxResult};

impl Shared {
    /// Applies `writes` in order, as `put` and `delete` apply them, in one
    /// transaction under the write lock, then marks the outbox entries they wrote.
    pub(super) fn transact(&self, writes: &[Write]) -> Result<TxReport, StoreError> {
        let colls = writes
            .iter()
            .map(|w| self.coll(w.key().0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut feed = self.hub.batch();
        let g = self.lock();
        let report = self.write(|tx| {
            let mut report = TxReport::default();
            let mut wrote: BTreeSet<(&str, &RecordId)> = BTreeSet::new();
            for (w, (i, c)) in writes.iter().zip(&colls) {
                let (coll, id) = w.key();
                let old = tx.read(*i, id)?;
                report.existed.push(old.is_some());
                match w {
                    Write::Put(r) => {
                        let fields = crate::rules::canonical_write(c, id, &r.fields, old.as_ref())
                            .or_else(abort)?;
                        tx.t[*i].insert(id.as_str(), to_json(&fields).or_else(abort)?)?;
                        tx.record_write(coll, id, old.as_ref(), Some(&fields))?;
                    }
                    Write::Delete { .. } => {
                        if old.is_none() {
                            continue;
                        }
                        tx.t[*i].remove(id.as_str())?;
                        tx.record_write(coll, id, old.as_ref(), None)?;
                    }
                }
                if !c.local_only {
                    wrote.insert((coll, id));
                }
            }
            report.mark = mark(tx, &wrote)?;
            Ok(report)
        })?;
        // Committed: report what each write changed (a put wrote its record, a
        // delete removed one that was there), in order, under the store's lock.
        for (w, existed) in writes.iter().zip(&report.existed) {
            match w {
                Write::Put(r) => feed.record(
                    &r.collection,
                    &r.id,
                    ChangeKind::Upserted,
                    ChangeCause::Local,
                ),
                Write::Delete { collection, id } if *existed => {
                    feed.record(collection, id, ChangeKind::Removed, ChangeCause::Local)
                }
                Write::Delete { .. } => {}
            }
        }
        feed.publish();
        drop(g);
        Ok(report)
    }
}

/// Marks the entries of the records in `wrote` with the transaction's mark: its
/// id the change counter now (the newest write's), its `last` their highest seq.
fn mark(tx: &Tx<'_>, wrote: &BTreeSet<(&str, &RecordId)>) -> TxResult<Option<TxMark>> {
    let mut entries = Vec::with_capacity(wrote.len());
    for (c, id) in wrote {
        if let Some((seq, e)) = tx.entry(&key(c, id.as_str()))? {
            entries.push((u64_of(&seq).or_else(abort)?, seq, e));
        }
    }
    let Some(last) = entries.iter().map(|(n, _, _)| *n).max() else {
        return Ok(None);
    };
    let mark = TxMark {
        id: tx.meta("counter")?,
        last,
    };
    for (_, seq, mut e) in entries {
        e.tx = Some(mark);
        tx.put_entry(&seq, &e)?;
    }
    Ok(Some(mark))
}
