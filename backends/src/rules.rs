//! The rules of the [`LocalStore`](sync_traits::LocalStore) contract, written once
//! for every backend of this crate.
//!
//! A backend implements the storage primitives of [`Txn`] over one of its
//! transactions; the functions here make the decisions: how an [`Ack`] settles
//! ([`settle`]), how a local write enters the outbox ([`record_write`]), what
//! `apply_remote` does with one change ([`decide`]), and which values of an app's
//! put are accepted ([`canonical_write`]). The backends keep only their storage
//! fast paths (SQLite's prepared per-page statements, sled's encoded values).

use sync_traits::{Fields, RecordId, StoreError};

use crate::schema::{canonical_fields, check_value, CollectionSchema};

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
