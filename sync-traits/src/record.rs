//! Records, versions, watermarks and the values that cross the two traits.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::FieldsError;
use crate::id::{ChangeId, RecordId};

/// A record's JSON fields, without its id and without sync metadata.
pub type Fields = Map<String, Value>;

/// The names of fields whose values differ between `old` and `new` (a field present
/// on one side only counts). Every [`crate::LocalStore`] uses this rule for
/// [`PendingChange::changed`].
pub fn changed_fields(old: Option<&Fields>, new: Option<&Fields>) -> BTreeSet<String> {
    let empty = Fields::new();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut out = BTreeSet::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}

/// One record of one collection, as the application sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Collection (table) name.
    pub collection: String,
    /// The record's id.
    pub id: RecordId,
    /// Field values. Never contains `id`.
    pub fields: Fields,
}

impl Record {
    /// A record from raw JSON fields. An `id` key in `fields` is removed (the id is
    /// [`Record::id`]).
    pub fn new(collection: impl Into<String>, id: RecordId, mut fields: Fields) -> Self {
        fields.remove("id");
        Self {
            collection: collection.into(),
            id,
            fields,
        }
    }

    /// A record from any serde-serialisable struct that serialises to a JSON object.
    /// An `id` field of the struct is dropped in favour of `id`.
    pub fn from_typed<T: Serialize>(
        collection: impl Into<String>,
        id: RecordId,
        value: &T,
    ) -> Result<Self, FieldsError> {
        match serde_json::to_value(value).map_err(FieldsError::Serde)? {
            Value::Object(map) => Ok(Self::new(collection, id, map)),
            other => Err(FieldsError::NotAnObject(kind(&other))),
        }
    }

    /// The fields deserialised into `T`. The id is offered to `T` as an `id` field,
    /// so structs may declare `id: RecordId` (or `String`) or leave it out.
    pub fn to_typed<T: DeserializeOwned>(&self) -> Result<T, FieldsError> {
        let mut map = self.fields.clone();
        map.insert("id".into(), Value::String(self.id.to_string()));
        serde_json::from_value(Value::Object(map)).map_err(FieldsError::Serde)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The server's commit sequence number of the last change to a record (`seq`).
/// Totally ordered in commit order across all collections of one remote.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

/// The highest server `seq` a local store has applied. Zero means "never pulled".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Watermark(pub u64);

/// A record's state on the server at some version: live with fields, or deleted
/// (a tombstone). `change_id` is the id of the write that produced it, when the
/// write came through tidemark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteState {
    /// Version (`seq`) of the write that produced this state.
    pub version: Version,
    /// `Some(fields)` for a live record, `None` for a tombstone.
    pub fields: Option<Fields>,
    /// Change id of the write that produced this state, if known.
    pub change_id: Option<ChangeId>,
}

/// One change pulled from a remote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteChange {
    /// Collection name.
    pub collection: String,
    /// Record id.
    pub id: RecordId,
    /// The record's state after the change.
    pub state: RemoteState,
}

/// A page of pulled changes.
///
/// Guarantee a remote must give: `changes` holds every change visible to the caller
/// with `since < seq <= watermark`, in ascending `seq` order (a record may appear
/// once, with its newest state in that range). `more` is true when changes after
/// `watermark` may exist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Changes in ascending version order.
    pub changes: Vec<RemoteChange>,
    /// The position this page brings the caller to.
    pub watermark: Watermark,
    /// Whether another pull may return more.
    pub more: bool,
}

/// What a local write did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Create or replace the record with these fields (the whole record).
    Upsert(Fields),
    /// Delete the record.
    Delete,
}

/// An outbox entry: unpushed local writes to one record, coalesced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingChange {
    /// Position in the outbox (ascending in order of the record's first unpushed write).
    pub seq: u64,
    /// Id of the newest write folded into this entry.
    pub change_id: ChangeId,
    /// Collection name.
    pub collection: String,
    /// Record id.
    pub id: RecordId,
    /// The server version this change was made on top of; `None` if the store never
    /// saw the record on the server (a create).
    pub base: Option<Version>,
    /// The record's state after the writes.
    pub op: Op,
    /// Fields changed by the writes relative to `base` (for field-level merge). A
    /// create or delete lists every field it touched.
    pub changed: BTreeSet<String>,
    /// The mark of the last multi-record transaction
    /// ([`crate::LocalStore::transact`]) whose write this entry holds, if any: the
    /// engine keeps a transaction's entries in one push batch. `None` for entries
    /// only plain puts and deletes wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<crate::transaction::TxMark>,
}

/// A change as sent to a remote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushChange {
    /// Idempotency key: a remote that already applied this change id answers
    /// [`PushOutcome::Applied`] again instead of applying it twice.
    pub change_id: ChangeId,
    /// Collection name.
    pub collection: String,
    /// Record id (client-chosen for creates).
    pub id: RecordId,
    /// Expected current server version; `None` means "must not exist yet". A remote
    /// applies the change only if the record's current version (live or tombstone)
    /// equals this, and otherwise answers [`PushOutcome::Conflict`].
    pub base: Option<Version>,
    /// The write.
    pub op: Op,
}

impl From<&PendingChange> for PushChange {
    fn from(p: &PendingChange) -> Self {
        Self {
            change_id: p.change_id.clone(),
            collection: p.collection.clone(),
            id: p.id.clone(),
            base: p.base,
            op: p.op.clone(),
        }
    }
}

/// Why a remote refused a change for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Human-readable reason from the server.
    pub message: String,
    /// Per-field validation errors: field name → message.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The remote's answer for one pushed change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PushOutcome {
    /// Applied (now or by an earlier delivery of the same change id) at `version`.
    Applied {
        /// The record's version after this change.
        version: Version,
    },
    /// The base version was stale; nothing was written. `current` is the server's
    /// state of the record now.
    Conflict {
        /// The server's current state (tombstone if deleted).
        current: RemoteState,
    },
    /// Refused permanently (validation, permissions). Nothing was written.
    Rejected(Rejection),
}

/// What [`crate::SyncStore::apply_remote`] did with a page.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Changes written to local data.
    pub applied: usize,
    /// Changes left alone because the record has unpushed local writes.
    pub deferred: usize,
    /// Changes skipped because the store already had a newer version.
    pub stale: usize,
    /// Changes to collections this store does not hold (not declared, or declared
    /// local-only). The watermark still covers them: a store keeps what it skips of
    /// an undeclared collection and applies it when the collection is declared, so
    /// nothing is lost behind the watermark.
    pub skipped: usize,
    /// Values that do not fit the type the store declares for their field. Each is
    /// kept exactly as the server sent it (not coerced, not dropped) and the rest
    /// of its record applies.
    pub mistyped: Vec<Mistyped>,
}

/// A pulled value of another type than the local schema declares for its field.
/// The store keeps the value as it came (so the record still equals the server's)
/// and reports it here; see [`ApplyReport::mistyped`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mistyped {
    /// Collection name.
    pub collection: String,
    /// Record id.
    pub id: RecordId,
    /// Field name.
    pub field: String,
    /// What the local schema expects there (for example `"a string"`).
    pub expected: String,
    /// The value as the server sent it, kept as it is.
    pub value: Value,
}

/// A conflict as it happened: the local change that met a newer server state, that
/// state, and what the policy decided. Every conflict the engine meets is persisted
/// in the store ([`Ack::Conflict`], [`crate::SyncStore::conflicts`]); events are a
/// convenience, never the only record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// The local change, with its data, as it was pushed.
    pub local: PendingChange,
    /// The server's state it met.
    pub server: RemoteState,
    /// What was done.
    pub resolution: crate::conflict::Resolution,
}

/// A conflict kept in a store's conflict log, with the id that clears it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedConflict {
    /// Store-assigned id, increasing in the order conflicts were logged.
    pub id: u64,
    /// The conflict.
    pub conflict: Conflict,
}

/// How to settle one pushed outbox entry; passed in a batch to
/// [`crate::SyncStore::ack`], which applies the whole batch atomically.
///
/// Every variant names the `change_id` it settles. If the record's outbox entry has
/// since been superseded by a newer local write (its `change_id` differs), the store
/// keeps the newer write, as documented on each variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ack {
    /// The remote applied the change at `version`. The entry is removed and the
    /// record's known version becomes `version`. If superseded, the newer entry stays
    /// and its base becomes `version`.
    Applied {
        /// Collection name.
        collection: String,
        /// Record id.
        id: RecordId,
        /// The settled change.
        change_id: ChangeId,
        /// Server version after the change.
        version: Version,
    },
    /// Keep the local change but re-base it on `base` (client wins / merge). If `op`
    /// is given it replaces both the entry's op and the local record (merge result).
    /// The entry gets a new change id (the store's next counter): a change re-based
    /// after a conflict is a new write, and its old id may have been applied before
    /// (a remote that lost that memory to compaction answers a retry with a
    /// conflict), so the old id is never pushed again. If superseded, nothing
    /// changes (the newer write will conflict and be resolved again).
    Rebase {
        /// Collection name.
        collection: String,
        /// Record id.
        id: RecordId,
        /// The settled change.
        change_id: ChangeId,
        /// New base version.
        base: Version,
        /// Replacement op, if the resolution changed the data.
        op: Option<Op>,
    },
    /// Drop the local change and take the server's state (server wins). If
    /// superseded, nothing changes.
    TakeServer {
        /// Collection name.
        collection: String,
        /// Record id.
        id: RecordId,
        /// The settled change.
        change_id: ChangeId,
        /// Server state to store locally.
        state: RemoteState,
    },
    /// The remote refused the change for good. The change (with its data) is moved
    /// to the quarantine; the local record is reset to `server` (or removed if the
    /// server has no such record). If superseded, the change is still quarantined but
    /// the newer entry and local data stay.
    Quarantine {
        /// The refused change, kept whole.
        change: PendingChange,
        /// Why.
        rejection: Rejection,
        /// The server's current state, if the record exists there.
        server: Option<RemoteState>,
    },
    /// Append this conflict to the store's conflict log (in the same transaction as
    /// the ack that settles it, which comes in the same batch). Settles no entry.
    Conflict(Conflict),
}

impl Ack {
    /// The record this ack is about.
    pub fn key(&self) -> (&str, &RecordId) {
        match self {
            Ack::Applied { collection, id, .. }
            | Ack::Rebase { collection, id, .. }
            | Ack::TakeServer { collection, id, .. } => (collection, id),
            Ack::Quarantine { change, .. } => (&change.collection, &change.id),
            Ack::Conflict(c) => (&c.local.collection, &c.local.id),
        }
    }
}

/// A refused change kept by the store for the application to inspect, retry
/// ([`crate::SyncStore::retry_quarantined`]) or discard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Store-assigned id, increasing in the order changes were quarantined.
    pub id: u64,
    /// The change as it was when refused.
    pub change: PendingChange,
    /// Why it was refused.
    pub rejection: Rejection,
}

/// The store's sync position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Highest server seq applied.
    pub watermark: Watermark,
    /// A full resync was begun and not finished.
    pub resyncing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::new_id;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Song {
        title: String,
        order: i64,
    }

    #[test]
    fn typed_round_trip() {
        let id = new_id();
        let s = Song {
            title: "a".into(),
            order: 3,
        };
        let r = Record::from_typed("songs", id.clone(), &s).unwrap();
        assert_eq!(r.fields["order"], 3);
        assert!(!r.fields.contains_key("id"));
        assert_eq!(r.to_typed::<Song>().unwrap(), s);
        assert!(matches!(
            Record::from_typed("songs", id, &5),
            Err(FieldsError::NotAnObject("number"))
        ));
    }
}
