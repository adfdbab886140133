//! The rules of the [`LocalStore`](sync_traits::LocalStore) contract, written once
//! for every backend of this crate.
//!
//! A backend implements the storage primitives of [`Txn`] over one of its
//! transactions; the functions here make the decisions: how an [`Ack`] settles
//! ([`settle`]), how a local write enters the outbox ([`record_write`]), what
//! `apply_remote` does with one change ([`decide`]), which values of an app's
//! put are accepted ([`canonical_write`]) and which a retried quarantined change
//! writes ([`retried_fields`]). The backends keep only their storage
//! fast paths (SQLite's prepared per-page statements, sled's encoded values).

use std::collections::BTreeSet;

use sync_traits::{
    changed_fields, Ack, ChangeId, Conflict, Fields, Op, PendingChange, RecordId, Rejection,
    StoreError,
};

use crate::schema::{
    canonical_fields, canonical_remote_fields, check_collection_name, check_value, schema_err,
    CollectionSchema, Field,
};

/// The fields of an app's write (a put, or a retried quarantined upsert where the
/// backend treats it as one), checked against the collection's schema and made
/// canonical.
///
/// Guarantees: a write that fits the schema is returned canonical; a value of
/// another type than its field's declared kind is refused with the error
/// [`canonical_fields`] gives for it — unless the record already holds exactly
/// that value (`old`, a pulled value kept as the server sent it, which the app's
/// write leaves unchanged): then it is kept as it is. Fields the schema does not
/// declare are kept; `id` is dropped. Never panics.
pub(crate) fn canonical_write(
    c: &CollectionSchema,
    id: &RecordId,
    fields: &Fields,
    old: Option<&Fields>,
) -> Result<Fields, StoreError> {
    // Nearly every put fits its schema: check it whole first.
    let err = match canonical_fields(c, id, fields) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    if old.is_none() {
        return Err(err);
    }
    let mut out = Fields::new();
    for (k, v) in fields {
        if k == "id" {
            continue;
        }
        let v = match c.kind_of(k) {
            Some(kind) => match check_value(&c.name, id, k, kind, v) {
                Ok(v) => v,
                Err(e) => {
                    if old.and_then(|o| o.get(k)) == Some(v) {
                        v.clone()
                    } else {
                        return Err(e);
                    }
                }
            },
            None => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

/// The fields a retried quarantined upsert writes
/// ([`SyncStore::retry_quarantined`](sync_traits::SyncStore::retry_quarantined)):
/// the mistyped-value rule, once for every backend.
///
/// Guarantees: the change's data made canonical, and a value of another type than
/// its field declares kept exactly as the change holds it — not coerced, not
/// refused (it was accepted once, as a value pulled from the server; refusing it
/// would leave the change stuck in the quarantine, and dropping it would lose it).
/// The retry pushes it again; a server that refuses it again sends it back to the
/// quarantine, reported as a rejection. `id` is dropped. Never panics.
pub(crate) fn retried_fields(c: &CollectionSchema, id: &RecordId, fields: &Fields) -> Fields {
    canonical_remote_fields(c, id, fields).0
}

/// The storage primitives of one store transaction that [`settle`] builds on.
///
/// Every method acts inside the caller's transaction: an error aborts the whole
/// call, so a primitive may fail half-way without care. `Seq` names an outbox
/// entry (its position).
pub(crate) trait Txn {
    /// An outbox entry's handle (its position in the outbox).
    type Seq: Clone;
    /// The transaction's error.
    type Error;

    /// The record's outbox entry, if it has one.
    fn entry_seq(&self, c: &str, id: &RecordId) -> Result<Option<Self::Seq>, Self::Error>;
    /// The record's outbox entry if it carries `change_id` (it is that write, not
    /// one that superseded it).
    fn matching(
        &self,
        c: &str,
        id: &RecordId,
        change_id: &ChangeId,
    ) -> Result<Option<Self::Seq>, Self::Error>;
    /// Removes the record's outbox entry `seq`.
    fn remove_entry(&self, c: &str, id: &RecordId, seq: Self::Seq) -> Result<(), Self::Error>;
    /// Sets the base version of the record's outbox entry `seq`.
    fn set_base(
        &self,
        c: &str,
        id: &RecordId,
        seq: Self::Seq,
        base: u64,
    ) -> Result<(), Self::Error>;
    /// Gives the record's outbox entry `seq` a new change id: the next counter of
    /// the store's current writer.
    fn renumber(&self, c: &str, id: &RecordId, seq: Self::Seq) -> Result<(), Self::Error>;
    /// Writes the record's local state (`None`: absent) as it comes from the server
    /// or a merge (values of another type than declared are kept as they are).
    fn set_record(
        &self,
        c: &str,
        id: &RecordId,
        fields: Option<&Fields>,
    ) -> Result<(), Self::Error>;
    /// Raises the record's known server version to `v` (never lowers it).
    fn raise_version(&self, c: &str, id: &RecordId, v: u64) -> Result<(), Self::Error>;
    /// Adds a refused change to the quarantine.
    fn quarantine(&self, change: &PendingChange, rejection: &Rejection) -> Result<(), Self::Error>;
    /// Appends a conflict to the conflict log.
    fn log_conflict(&self, conflict: &Conflict) -> Result<(), Self::Error>;
}

/// Settles one [`Ack`] in `txn`: the contract's rules, once for every backend.
///
/// Guarantees, where "the entry" is the record's outbox entry and it "matches"
/// when it still carries the acked change id:
/// - `Applied`: a matching entry is removed; an entry superseded by a newer local
///   write stays and is rebased on `version`; the known version is raised to
///   `version` either way.
/// - `Rebase`: only a matching entry is touched: the record is set to `op` (if
///   any) and the entry rebased on `base`, with a new change id. A re-based change
///   is a new write: its old id may have been applied before (a remote that lost
///   that memory to compaction answers such a retry with a conflict), and a remote
///   applies a change id at most once.
/// - `TakeServer`: only a matching entry is removed, and the record set to the
///   server's state with its version raised.
/// - `Quarantine`: a matching entry is removed and the record set to the server's
///   state (or removed when there is none); the change is quarantined whether or
///   not the entry matched.
/// - `Conflict`: the conflict is logged.
pub(crate) fn settle<T: Txn>(txn: &T, ack: &Ack) -> Result<(), T::Error> {
    match ack {
        Ack::Applied {
            collection,
            id,
            change_id,
            version,
        } => {
            match txn.matching(collection, id, change_id)? {
                Some(seq) => txn.remove_entry(collection, id, seq)?,
                None => {
                    if let Some(seq) = txn.entry_seq(collection, id)? {
                        txn.set_base(collection, id, seq, version.0)?;
                    }
                }
            }
            txn.raise_version(collection, id, version.0)
        }
        Ack::Rebase {
            collection,
            id,
            change_id,
            base,
            op,
        } => {
            let Some(seq) = txn.matching(collection, id, change_id)? else {
                return Ok(());
            };
            match op {
                Some(Op::Upsert(f)) => txn.set_record(collection, id, Some(f))?,
                Some(Op::Delete) => txn.set_record(collection, id, None)?,
                None => {}
            }
            txn.set_base(collection, id, seq.clone(), base.0)?;
            txn.renumber(collection, id, seq)
        }
        Ack::TakeServer {
            collection,
            id,
            change_id,
            state,
        } => {
            let Some(seq) = txn.matching(collection, id, change_id)? else {
                return Ok(());
            };
            txn.remove_entry(collection, id, seq)?;
            txn.set_record(collection, id, state.fields.as_ref())?;
            txn.raise_version(collection, id, state.version.0)
        }
        Ack::Quarantine {
            change,
            rejection,
            server,
        } => {
            let (c, id) = (&change.collection, &change.id);
            if let Some(seq) = txn.matching(c, id, &change.change_id)? {
                txn.remove_entry(c, id, seq)?;
                match server {
                    Some(s) => {
                        txn.set_record(c, id, s.fields.as_ref())?;
                        txn.raise_version(c, id, s.version.0)?;
                    }
                    None => txn.set_record(c, id, None)?,
                }
            }
            txn.quarantine(change, rejection)
        }
        Ack::Conflict(conflict) => txn.log_conflict(conflict),
    }
}

/// The storage primitives of one store transaction that [`record_write`] builds
/// on: the outbox as a local write sees it.
pub(crate) trait Outbox {
    /// A record's outbox entry as read, to be written back coalesced.
    type Entry;
    /// The transaction's error.
    type Error;

    /// Whether collection `c` is declared local-only (its writes get no entry).
    fn local_only(&self, c: &str) -> Result<bool, Self::Error>;
    /// Takes the next change counter (under this open's writer id).
    fn next_change(&self) -> Result<u64, Self::Error>;
    /// The record's outbox entry, if it has one.
    fn entry(&self, c: &str, id: &RecordId) -> Result<Option<Self::Entry>, Self::Error>;
    /// The changed fields of an entry read by [`Outbox::entry`].
    fn changed_mut(entry: &mut Self::Entry) -> &mut BTreeSet<String>;
    /// Writes `entry` back at its position with its base unchanged, its change id
    /// now counter `n` under this open's writer id, and its changed fields.
    fn coalesce(&self, entry: Self::Entry, n: u64) -> Result<(), Self::Error>;
    /// The record's known server version.
    fn version(&self, c: &str, id: &RecordId) -> Result<Option<u64>, Self::Error>;
    /// Appends a new entry for the record at the end of the outbox.
    fn new_entry(
        &self,
        c: &str,
        id: &RecordId,
        n: u64,
        base: Option<u64>,
        changed: BTreeSet<String>,
    ) -> Result<(), Self::Error>;
}

/// Records a local write of a record in the outbox: an app's put or delete, and
/// a retried quarantined change (which is written like one). The record's data,
/// `old` before the write and `new` after it (`None`: absent), is already
/// written.
///
/// Guarantees: nothing for a local-only collection. Otherwise a new change
/// counter is taken, and a record with an outbox entry has the write folded into
/// it — the newest change id, the union of the changed fields, the same position
/// and the same base — while a record without one gets a new entry at the end,
/// based on the record's known version. The write's changed fields are
/// [`changed_fields`]`(old, new)`.
pub(crate) fn record_write<O: Outbox>(
    out: &O,
    c: &str,
    id: &RecordId,
    old: Option<&Fields>,
    new: Option<&Fields>,
) -> Result<(), O::Error> {
    if out.local_only(c)? {
        return Ok(());
    }
    let changed = changed_fields(old, new);
    let n = out.next_change()?;
    match out.entry(c, id)? {
        Some(mut e) => {
            O::changed_mut(&mut e).extend(changed);
            out.coalesce(e, n)
        }
        None => {
            let base = out.version(c, id)?;
            out.new_entry(c, id, n, base, changed)
        }
    }
}

/// How a store holds the collection of a pulled change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holds {
    /// Never applied: a local-only collection, or a name no collection can have.
    Skip,
    /// A collection the schema does not declare (a later one may): parked.
    Park,
    /// A declared, synced collection.
    Held,
}

/// What `apply_remote` does with one pulled change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum What {
    /// Not applied, counted as skipped.
    Skip,
    /// Not applied, counted as skipped; its newest state is kept for a schema that
    /// declares its collection.
    Park,
    /// Not applied: the record has an outbox entry (the push meets it).
    Defer,
    /// Not applied: older than the record's known version.
    Stale,
    /// Applied, its version recorded as the known one.
    Apply,
}

/// How the store holds collection `name`, given its declared schema if any.
///
/// Guarantees: a local-only collection and a name no collection can have are
/// [`Holds::Skip`]; any other undeclared name is [`Holds::Park`]; a declared
/// synced collection is [`Holds::Held`]. Reads no storage.
pub(crate) fn holds(name: &str, declared: Option<&CollectionSchema>) -> Holds {
    match declared {
        Some(c) if c.local_only => Holds::Skip,
        Some(_) => Holds::Held,
        None if check_collection_name(name).is_err() => Holds::Skip,
        None => Holds::Park,
    }
}

/// The decision of `apply_remote` for one change at `version`: the contract's
/// rule, once for every backend.
///
/// Guarantees, in this order: a collection not held is skipped or parked
/// ([`holds`]); a record with an outbox entry is deferred; a change older than
/// the record's known version is stale; anything else applies — a change *at*
/// the known version applies again (the server's copy of what was acknowledged
/// or taken). `known` (the record's known version) is asked only when the
/// decision needs it, so a backend pays for no read it does not need.
pub(crate) fn decide<E>(
    holds: Holds,
    has_entry: impl FnOnce() -> Result<bool, E>,
    known: impl FnOnce() -> Result<Option<u64>, E>,
    version: u64,
) -> Result<What, E> {
    Ok(match holds {
        Holds::Skip => What::Skip,
        Holds::Park => What::Park,
        Holds::Held if has_entry()? => What::Defer,
        Holds::Held if is_stale(known()?, version) => What::Stale,
        Holds::Held => What::Apply,
    })
}

/// Whether a pulled change at `version` is stale for a record whose known
/// version is `known`: strictly older only. (SQLite's `VERSION_APPLY` statement
/// writes the version exactly when this is false.)
pub(crate) fn is_stale(known: Option<u64>, version: u64) -> bool {
    known.is_some_and(|k| k > version)
}

/// A stored collection's schema merged with the one an open declares: the
/// schema rule at open, once for every backend.
///
/// Guarantees: the result is `old` with every field of `new` it lacks appended
/// (in `new`'s order, also returned as the added fields). A field keeps the kind it
/// is stored as: one `new` declares with another kind (a server that changed a
/// field's type, e.g. a select made multiple) is not refused, and its values of the
/// new kind follow the mistyped-value rule — pulled ones are kept as sent and
/// reported, the app's own writes of them are refused — until the data moves to a
/// store opened with the new kind. A collection stored as local-only declared
/// synced, or the other way, is refused ([`StoreError::Schema`]): followed, the
/// switch would push records written as never to leave the device, or strand the
/// outbox entries of a synced one; the error says what to do instead.
pub(crate) fn merge_collection(
    old: &CollectionSchema,
    new: &CollectionSchema,
) -> Result<(CollectionSchema, Vec<Field>), StoreError> {
    if old.local_only != new.local_only {
        let (was, now) = if old.local_only {
            ("local-only", "synced")
        } else {
            ("synced", "local-only")
        };
        return Err(schema_err(
            &new.name,
            "",
            &format!(
                "the collection is stored as {was} and cannot become {now} at open (that would \
                 push records never meant to leave the device, or strand unpushed changes): \
                 declare it {was} as before, or declare a new collection {now} and copy the \
                 records into it"
            ),
        ));
    }
    let mut merged = old.clone();
    let mut added = Vec::new();
    for f in &new.fields {
        if old.kind_of(&f.name).is_none() {
            merged.fields.push(f.clone());
            added.push(f.clone());
        }
    }
    Ok((merged, added))
}
