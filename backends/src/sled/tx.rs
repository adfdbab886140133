//! One transaction's view of the store's trees, and the writes every call shares
//! (a local write and its outbox entry, a server state, an ack).

use std::collections::BTreeSet;

use ::sled::transaction::TransactionalTree;
use ::sled::IVec;
use sync_traits::{Ack, ChangeId, Fields, Op, RecordId, RemoteState};

use super::{
    abort, corrupt, fields_of, key, to_json, u64_of, Entry, Shared, StoredQuarantined, TxResult,
    CONFLICTS, META, OUTBOX, OUTBOX_IDX, QUARANTINE, SEEN, VERSIONS,
};
use crate::schema::canonical_remote_fields;

/// A transaction's view of the store's trees (indexed like [`Shared::trees`]).
pub(super) struct Tx<'a> {
    pub(super) t: &'a [TransactionalTree],
    pub(super) s: &'a Shared,
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

    fn put_entry(&self, seq: &[u8], e: &Entry) -> TxResult<()> {
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

    /// Records a local write of the record in the outbox: a new change id under
    /// the current writer, coalesced into the record's entry if it has one, else a
    /// new entry based on the record's known version. Local-only collections get
    /// no entry.
    pub(super) fn record_write(
        &self,
        coll: &str,
        id: &RecordId,
        changed: BTreeSet<String>,
    ) -> TxResult<()> {
        let (_, c) = self.s.coll(coll).or_else(abort)?;
        if c.local_only {
            return Ok(());
        }
        let n = self.bump("counter")?;
        let client = self.s.client().clone();
        let k = key(coll, id.as_str());
        match self.entry(&k)? {
            Some((seq, mut e)) => {
                e.client = client;
                e.n = n;
                e.changed.extend(changed);
                self.put_entry(&seq, &e)
            }
            None => {
                let seq = self.bump("outbox_seq")?.to_be_bytes();
                let e = Entry {
                    collection: coll.to_owned(),
                    id: id.clone(),
                    client,
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

    pub(super) fn ack(&self, ack: &Ack) -> TxResult<()> {
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
                let q = StoredQuarantined {
                    change: change.clone(),
                    rejection: rejection.clone(),
                };
                self.t[QUARANTINE].insert(&n.to_be_bytes(), to_json(&q).or_else(abort)?)?;
                Ok(())
            }
            Ack::Conflict(conflict) => {
                let n = self.bump("conflict_seq")?;
                self.t[CONFLICTS].insert(&n.to_be_bytes(), to_json(conflict).or_else(abort)?)?;
                Ok(())
            }
        }
    }

    /// [`LocalStore::retry_quarantined`](sync_traits::LocalStore::retry_quarantined)
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
                let (f, _) = canonical_remote_fields(c, id, f);
                self.t[i].insert(id.as_str(), to_json(&f).or_else(abort)?)?;
                Some(f)
            }
            Op::Delete => {
                self.t[i].remove(id.as_str())?;
                None
            }
        };
        let changed = sync_traits::changed_fields(old.as_ref(), new.as_ref());
        self.record_write(coll, id, changed)?;
        self.t[QUARANTINE].remove(&qk)?;
        Ok(true)
    }
}
