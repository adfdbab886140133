//! One transaction's view of the store's trees, and the writes every call shares
//! (a local write and its outbox entry, a server state, an ack).

use std::cell::RefCell;
use std::collections::BTreeSet;

use ::sled::transaction::{ConflictableTransactionError, TransactionalTree};
use ::sled::IVec;
use sync_traits::{
    Ack, ChangeId, ChangeKind, Conflict, Fields, Op, PendingChange, RecordId, Rejection,
    RemoteState, StoreError,
};

use super::{
    abort, corrupt, fields_of, key, to_json, u64_of, Entry, Shared, StoredQuarantined, TxResult,
    CONFLICTS, META, OUTBOX, OUTBOX_IDX, QUARANTINE, SEEN, VERSIONS,
};
use crate::schema::canonical_remote_fields;

/// A transaction's view of the store's trees (indexed like [`Shared::trees`]).
pub(super) struct Tx<'a> {
    pub(super) t: &'a [TransactionalTree],
    pub(super) s: &'a Shared,
    /// The records this attempt of the transaction wrote or removed outside an
    /// apply (acks, retried changes), for the change feed.
    pub(super) changed: RefCell<Vec<(String, RecordId, ChangeKind)>>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(t: &'a [TransactionalTree], s: &'a Shared) -> Self {
        Tx {
            t,
            s,
            changed: RefCell::new(Vec::new()),
        }
    }

    fn changed(&self, coll: &str, id: &RecordId, kind: ChangeKind) {
        self.changed
            .borrow_mut()
            .push((coll.to_owned(), id.clone(), kind));
    }
}

impl Tx<'_> {
    pub(super) fn meta(&self, k: &str) -> TxResult<u64> {
        match self.t[META].get(k)? {
            Some(v) => u64_of(&v).or_else(abort),
            None => abort(corrupt(format!("metadata {k} missing"))),
        }
    }

    pub(super) fn set_meta(&self, k: &str, v: u64) -> TxResult<()> {
        self.t[META].insert(k, &v.to_be_bytes())?;
        Ok(())
    }

    pub(super) fn bump(&self, k: &str) -> TxResult<u64> {
        let v = self.meta(k)? + 1;
        self.set_meta(k, v)?;
        Ok(v)
    }

    pub(super) fn read(&self, coll: usize, id: &RecordId) -> TxResult<Option<Fields>> {
        match self.t[coll].get(id.as_str())? {
            Some(v) => fields_of(&v).map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    /// Writes data that did not come from the app's own `put` (a server state, a
    /// merge result, a quarantined change written again): values that do not fit
    /// their declared kind are kept as they are, like a pulled record's.
    pub(super) fn write_row(&self, coll: &str, id: &RecordId, f: &Fields) -> TxResult<()> {
        let (i, c) = self.s.coll(coll).or_else(abort)?;
        let (f, _) = canonical_remote_fields(c, id, f);
        self.t[i].insert(id.as_str(), to_json(&f).or_else(abort)?)?;
        Ok(())
    }

    pub(super) fn delete_row(&self, coll: &str, id: &RecordId) -> TxResult<bool> {
        let (i, _) = self.s.coll(coll).or_else(abort)?;
        Ok(self.t[i].remove(id.as_str())?.is_some())
    }

    pub(super) fn version(&self, k: &[u8]) -> TxResult<Option<u64>> {
        match self.t[VERSIONS].get(k)? {
            Some(v) => u64_of(&v).map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    pub(super) fn raise_version(&self, k: &[u8], v: u64) -> TxResult<()> {
        if self.version(k)?.is_none_or(|cur| cur < v) {
            self.t[VERSIONS].insert(k, &v.to_be_bytes())?;
        }
        Ok(())
    }

    pub(super) fn entry(&self, k: &[u8]) -> TxResult<Option<(IVec, Entry)>> {
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

    pub(super) fn has_entry(&self, k: &[u8]) -> TxResult<bool> {
        Ok(self.t[OUTBOX_IDX].get(k)?.is_some())
    }

    pub(super) fn put_entry(&self, seq: &[u8], e: &Entry) -> TxResult<()> {
        self.t[OUTBOX].insert(seq, to_json(e).or_else(abort)?)?;
        Ok(())
    }

    fn remove_entry(&self, k: &[u8], seq: &[u8]) -> TxResult<()> {
        self.t[OUTBOX].remove(seq)?;
        self.t[OUTBOX_IDX].remove(k)?;
        Ok(())
    }

    pub(super) fn mark_seen(&self, k: &[u8]) -> TxResult<()> {
        self.t[SEEN].insert(k, &[])?;
        Ok(())
    }

    /// The outbox seq of the record's entry if it carries `change_id`.
    fn matching(&self, k: &[u8], change_id: &ChangeId) -> TxResult<Option<IVec>> {
        Ok(self.entry(k)?.and_then(|(seq, e)| {
            (e.client == change_id.client && e.n == change_id.n).then_some(seq)
        }))
    }

    /// Records a local write of the record in the outbox
    /// ([`crate::rules::record_write`]).
    pub(super) fn record_write(
        &self,
        coll: &str,
        id: &RecordId,
        old: Option<&Fields>,
        new: Option<&Fields>,
    ) -> TxResult<()> {
        crate::rules::record_write(self, coll, id, old, new)
    }

    pub(super) fn set_server_state(
        &self,
        coll: &str,
        id: &RecordId,
        state: &RemoteState,
    ) -> TxResult<()> {
        match &state.fields {
            Some(f) => self.write_row(coll, id, f)?,
            None => {
                self.delete_row(coll, id)?;
            }
        }
        self.raise_version(&key(coll, id.as_str()), state.version.0)
    }

    /// Settles one ack ([`crate::rules::settle`]).
    pub(super) fn ack(&self, ack: &Ack) -> TxResult<()> {
        crate::rules::settle(self, ack)
    }

    /// [`SyncStore::retry_quarantined`](sync_traits::SyncStore::retry_quarantined)
    /// inside its transaction.
    pub(super) fn retry_quarantined(&self, qid: u64) -> TxResult<bool> {
        let qk = qid.to_be_bytes();
        let Some(v) = self.t[QUARANTINE].get(qk)? else {
            return Ok(false);
        };
        let q: StoredQuarantined = serde_json::from_slice(&v)
            .map_err(|e| corrupt(format!("quarantine: {e}")))
            .or_else(abort)?;
        let (coll, id) = (&q.change.collection, &q.change.id);
        let (i, _) = self.s.coll(coll).or_else(abort)?;
        let old = self.read(i, id)?;
        let new = match &q.change.op {
            Op::Upsert(f) => {
                let (i, c) = self.s.coll(coll).or_else(abort)?;
                let f = crate::rules::retried_fields(c, id, f);
                self.t[i].insert(id.as_str(), to_json(&f).or_else(abort)?)?;
                self.changed(coll, id, ChangeKind::Upserted);
                Some(f)
            }
            Op::Delete => {
                if self.t[i].remove(id.as_str())?.is_some() {
                    self.changed(coll, id, ChangeKind::Removed);
                }
                None
            }
        };
        self.record_write(coll, id, old.as_ref(), new.as_ref())?;
        self.t[QUARANTINE].remove(&qk)?;
        Ok(true)
    }
}

impl crate::rules::Txn for Tx<'_> {
    type Seq = IVec;
    type Error = ConflictableTransactionError<StoreError>;

    fn entry_seq(&self, c: &str, id: &RecordId) -> TxResult<Option<IVec>> {
        Ok(self.entry(&key(c, id.as_str()))?.map(|(seq, _)| seq))
    }

    fn matching(&self, c: &str, id: &RecordId, change_id: &ChangeId) -> TxResult<Option<IVec>> {
        Tx::matching(self, &key(c, id.as_str()), change_id)
    }

    fn remove_entry(&self, c: &str, id: &RecordId, seq: IVec) -> TxResult<()> {
        Tx::remove_entry(self, &key(c, id.as_str()), &seq)
    }

    fn set_base(&self, c: &str, id: &RecordId, seq: IVec, base: u64) -> TxResult<()> {
        if let Some((_, mut e)) = self.entry(&key(c, id.as_str()))? {
            e.base = Some(base);
            self.put_entry(&seq, &e)?;
        }
        Ok(())
    }

    fn renumber(&self, _: &str, _: &RecordId, seq: IVec) -> TxResult<()> {
        let Some(v) = self.t[OUTBOX].get(&seq)? else {
            return abort(corrupt("an outbox entry to renumber is missing"));
        };
        let mut e: Entry = serde_json::from_slice(&v)
            .map_err(|e| corrupt(format!("outbox entry: {e}")))
            .or_else(abort)?;
        e.client = self.s.client().clone();
        e.n = self.bump("counter")?;
        self.put_entry(&seq, &e)
    }

    fn set_record(&self, c: &str, id: &RecordId, fields: Option<&Fields>) -> TxResult<()> {
        match fields {
            Some(f) => {
                self.write_row(c, id, f)?;
                self.changed(c, id, ChangeKind::Upserted);
            }
            None => {
                if self.delete_row(c, id)? {
                    self.changed(c, id, ChangeKind::Removed);
                }
            }
        }
        Ok(())
    }

    fn raise_version(&self, c: &str, id: &RecordId, v: u64) -> TxResult<()> {
        Tx::raise_version(self, &key(c, id.as_str()), v)
    }

    fn quarantine(&self, change: &PendingChange, rejection: &Rejection) -> TxResult<()> {
        let n = self.bump("q_seq")?;
        let q = StoredQuarantined {
            change: change.clone(),
            rejection: rejection.clone(),
        };
        self.t[QUARANTINE].insert(&n.to_be_bytes(), to_json(&q).or_else(abort)?)?;
        Ok(())
    }

    fn log_conflict(&self, conflict: &Conflict) -> TxResult<()> {
        let n = self.bump("conflict_seq")?;
        self.t[CONFLICTS].insert(&n.to_be_bytes(), to_json(conflict).or_else(abort)?)?;
        Ok(())
    }
}

impl crate::rules::Outbox for Tx<'_> {
    type Entry = (IVec, Entry);
    type Error = ConflictableTransactionError<StoreError>;

    fn local_only(&self, c: &str) -> TxResult<bool> {
        Ok(self.s.coll(c).or_else(abort)?.1.local_only)
    }

    fn next_change(&self) -> TxResult<u64> {
        self.bump("counter")
    }

    fn entry(&self, c: &str, id: &RecordId) -> TxResult<Option<(IVec, Entry)>> {
        Tx::entry(self, &key(c, id.as_str()))
    }

    fn changed_mut(entry: &mut (IVec, Entry)) -> &mut BTreeSet<String> {
        &mut entry.1.changed
    }

    fn coalesce(&self, (seq, mut e): (IVec, Entry), n: u64) -> TxResult<()> {
        e.client = self.s.client().clone();
        e.n = n;
        self.put_entry(&seq, &e)
    }

    fn version(&self, c: &str, id: &RecordId) -> TxResult<Option<u64>> {
        Tx::version(self, &key(c, id.as_str()))
    }

    fn new_entry(
        &self,
        c: &str,
        id: &RecordId,
        n: u64,
        base: Option<u64>,
        changed: BTreeSet<String>,
    ) -> TxResult<()> {
        let seq = self.bump("outbox_seq")?.to_be_bytes();
        let e = Entry {
            collection: c.to_owned(),
            id: id.clone(),
            client: self.s.client().clone(),
            n,
            base,
            changed,
            tx: None,
        };
        self.put_entry(&seq, &e)?;
        self.t[OUTBOX_IDX].insert(key(c, id.as_str()), &seq)?;
        Ok(())
    }
}
