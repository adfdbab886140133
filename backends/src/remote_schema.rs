//! A store's [`Schema`] from the schema a remote reports ([`RemoteSchema`], e.g.
//! PocketBase's synced collections through `PocketBaseRemote::schema`).
//!
//! Every PocketBase field type maps to one [`FieldKind`] ([`field_kind`]):
//!
//! | PocketBase field | `FieldKind` | value in a record |
//! |---|---|---|
//! | text, editor, email, url | `Text` | a string |
//! | number (`onlyInt` or not) | `Number` | a number |
//! | bool | `Bool` | a bool |
//! | date, autodate | `Date` | `"2024-05-01 10:00:00.000Z"` or `""` (autodate: set by the server, a client's value is ignored) |
//! | select, single | `Text` | one of the values, or `""` |
//! | select, multiple | `Json` | an array of values |
//! | relation, single | `Relation` | a record id, or `""` |
//! | relation, multiple | `Relations` | an array of record ids |
//! | json | `Json` | any JSON value |
//! | file, single | `Text` | the file's name, or `""` |
//! | file, multiple | `Json` | an array of file names |
//! | geoPoint | `Json` | `{"lon": f64, "lat": f64}` |
//! | a type this version does not know | `Json` | as the server sends it |
//! | password | — | never described, never synced |
//!
//! Files: only their names sync; the bytes stay on the server (fetch them from
//! PocketBase's file URL by name). A name pushed back unchanged keeps the file.
//!
//! Opening a store again with a schema the server changed is a migration, done by
//! the open itself: new collections and new fields are added (SQLite: new tables and
//! columns), fields the server dropped stay in the store. Values that do not fit a
//! field's kind are kept as sent and reported (`ApplyReport::mistyped`).

use sync_traits::{RemoteFieldKind, RemoteSchema, StoreError};

use crate::schema::{CollectionSchema, Field, FieldKind, Schema};

/// The local kind of a remote field kind; see the module docs for the table.
pub fn field_kind(kind: &RemoteFieldKind) -> FieldKind {
    match kind {
        RemoteFieldKind::Text
        | RemoteFieldKind::Editor
        | RemoteFieldKind::Email
        | RemoteFieldKind::Url => FieldKind::Text,
        RemoteFieldKind::Number { .. } => FieldKind::Number,
        RemoteFieldKind::Bool => FieldKind::Bool,
        RemoteFieldKind::Date | RemoteFieldKind::Autodate => FieldKind::Date,
        RemoteFieldKind::Select { multiple, .. } | RemoteFieldKind::File { multiple } => {
            if *multiple {
                FieldKind::Json
            } else {
                FieldKind::Text
            }
        }
        RemoteFieldKind::Relation { multiple, .. } => {
            if *multiple {
                FieldKind::Relations
            } else {
                FieldKind::Relation
            }
        }
        // Json, GeoPoint, unknown types, and kinds a later version of sync-traits adds.
        _ => FieldKind::Json,
    }
}

impl Schema {
    /// The store schema of what `remote` syncs: one synced collection per remote
    /// collection, one declared field per remote field, kinds by [`field_kind`], in
    /// the remote's order.
    ///
    /// Fails with [`StoreError::Schema`] for a name a store cannot hold (see
    /// [`Schema::validate`]), e.g. a field called `_extra`.
    pub fn from_remote(remote: &RemoteSchema) -> Result<Schema, StoreError> {
        let schema = Schema {
            collections: remote
                .collections
                .iter()
                .map(|c| CollectionSchema {
                    name: c.name.clone(),
                    fields: c
                        .fields
                        .iter()
                        .map(|f| Field {
                            name: f.name.clone(),
                            kind: field_kind(&f.kind),
                        })
                        .collect(),
                    local_only: false,
                })
                .collect(),
        };
        schema.validate()?;
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_traits::{RemoteCollection, RemoteField};

    fn f(name: &str, kind: RemoteFieldKind) -> RemoteField {
        RemoteField {
            name: name.into(),
            kind,
            required: false,
        }
    }

    #[test]
    fn every_pocketbase_type_has_its_kind() {
        use RemoteFieldKind as R;
        let sel = |multiple| R::Select {
            values: vec!["a".into()],
            multiple,
        };
        let rel = |multiple| R::Relation {
            collection: "users".into(),
            multiple,
        };
        let cases = [
            (R::Text, FieldKind::Text),
            (R::Editor, FieldKind::Text),
            (R::Email, FieldKind::Text),
            (R::Url, FieldKind::Text),
            (R::Number { only_int: true }, FieldKind::Number),
            (R::Number { only_int: false }, FieldKind::Number),
            (R::Bool, FieldKind::Bool),
            (R::Date, FieldKind::Date),
            (R::Autodate, FieldKind::Date),
            (sel(false), FieldKind::Text),
            (sel(true), FieldKind::Json),
            (rel(false), FieldKind::Relation),
            (rel(true), FieldKind::Relations),
            (R::Json, FieldKind::Json),
            (R::File { multiple: false }, FieldKind::Text),
            (R::File { multiple: true }, FieldKind::Json),
            (R::GeoPoint, FieldKind::Json),
            (R::Other { name: "x".into() }, FieldKind::Json),
        ];
        let remote = RemoteSchema {
            collections: vec![RemoteCollection {
                name: "all".into(),
                fields: cases
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| f(&format!("f{i}"), k.clone()))
                    .collect(),
            }],
        };
        let s = Schema::from_remote(&remote).unwrap();
        let c = s.get("all").unwrap();
        assert!(!c.local_only);
        for (i, (k, want)) in cases.iter().enumerate() {
            assert_eq!(c.kind_of(&format!("f{i}")), Some(*want), "{k:?}");
        }
    }

    #[test]
    fn a_name_no_store_can_hold_is_refused() {
        let remote = RemoteSchema {
            collections: vec![RemoteCollection {
                name: "x".into(),
                fields: vec![f("_extra", RemoteFieldKind::Text)],
            }],
        };
        assert!(matches!(
            Schema::from_remote(&remote),
            Err(StoreError::Schema { .. })
        ));
    }
}
