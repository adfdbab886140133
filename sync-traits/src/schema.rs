//! A neutral description of the schema a remote syncs: its collections, their fields
//! and each field's kind, as the server declares them.
//!
//! A remote reports it with [`RemoteStore::schema`](crate::RemoteStore::schema); local
//! stores turn it into their own schema (`tidemark_backends::Schema::from_remote`)
//! and code generators into types. It names only what the caller may sync: never
//! password fields, never the sync extension's own fields or collections.

use serde::{Deserialize, Serialize};

/// The collections a remote syncs for the caller, with their fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSchema {
    /// The collections, sorted by name when a remote builds it.
    pub collections: Vec<RemoteCollection>,
}

impl RemoteSchema {
    /// The collection named `name`.
    pub fn get(&self, name: &str) -> Option<&RemoteCollection> {
        self.collections.iter().find(|c| c.name == name)
    }

    /// The same schema with collections sorted by name (fields keep their order).
    pub fn sorted(mut self) -> Self {
        self.collections.sort_by(|a, b| a.name.cmp(&b.name));
        self
    }
}

/// One synced collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCollection {
    /// The collection's name.
    pub name: String,
    /// Its fields in the server's order, without the record id.
    pub fields: Vec<RemoteField>,
}

impl RemoteCollection {
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&RemoteField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One field of a synced collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteField {
    /// The field's name.
    pub name: String,
    /// What it holds.
    pub kind: RemoteFieldKind,
    /// Whether the server refuses a record without a (non-empty) value in it.
    #[serde(default)]
    pub required: bool,
}

/// The kind of a field, covering every PocketBase 0.40 field type that can sync
/// (a password field never does and is never described).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum RemoteFieldKind {
    /// Plain text.
    Text,
    /// Rich text (HTML) as a string.
    Editor,
    /// An e-mail address as a string.
    Email,
    /// A URL as a string.
    Url,
    /// A number; `only_int`: integers only.
    Number {
        /// Integers only.
        #[serde(default, rename = "onlyInt")]
        only_int: bool,
    },
    /// A bool.
    Bool,
    /// A date string (`2024-05-01 10:00:00.000Z`) or `""`.
    Date,
    /// A date the server sets on create and/or update; values a client sends are
    /// ignored.
    Autodate,
    /// One or several of `values`: a string, or an array of strings when `multiple`.
    Select {
        /// The allowed values, in the server's order.
        values: Vec<String>,
        /// Several values (PocketBase `maxSelect > 1`): an array of strings.
        #[serde(default)]
        multiple: bool,
    },
    /// Record id(s) of `collection`: an id string (`""` for none), or an array of
    /// ids when `multiple`.
    Relation {
        /// The target collection's name (its id when the remote could not resolve it).
        collection: String,
        /// Several records (PocketBase `maxSelect > 1`): an array of ids.
        #[serde(default)]
        multiple: bool,
    },
    /// Any JSON value.
    Json,
    /// File name(s): a string, or an array of strings when `multiple`. Only the names
    /// sync; the files' bytes stay on the server (download them by name).
    File {
        /// Several files (PocketBase `maxSelect > 1`): an array of names.
        #[serde(default)]
        multiple: bool,
    },
    /// A geographic point `{"lon": f64, "lat": f64}`.
    GeoPoint,
    /// A type this crate does not know (a newer server): treated as any JSON value.
    Other {
        /// The server's name of the type.
        name: String,
    },
}

impl RemoteFieldKind {
    /// The PocketBase name of this kind (`"text"`, `"geoPoint"`, ...).
    pub fn type_name(&self) -> &str {
        match self {
            RemoteFieldKind::Text => "text",
            RemoteFieldKind::Editor => "editor",
            RemoteFieldKind::Email => "email",
            RemoteFieldKind::Url => "url",
            RemoteFieldKind::Number { .. } => "number",
            RemoteFieldKind::Bool => "bool",
            RemoteFieldKind::Date => "date",
            RemoteFieldKind::Autodate => "autodate",
            RemoteFieldKind::Select { .. } => "select",
            RemoteFieldKind::Relation { .. } => "relation",
            RemoteFieldKind::Json => "json",
            RemoteFieldKind::File { .. } => "file",
            RemoteFieldKind::GeoPoint => "geoPoint",
            RemoteFieldKind::Other { name } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_json_with_their_options() {
        let c = RemoteCollection {
            name: "posts".into(),
            fields: vec![
                RemoteField {
                    name: "tags".into(),
                    kind: RemoteFieldKind::Select {
                        values: vec!["a".into(), "b".into()],
                        multiple: true,
                    },
                    required: true,
                },
                RemoteField {
                    name: "n".into(),
                    kind: RemoteFieldKind::Number { only_int: true },
                    required: false,
                },
                RemoteField {
                    name: "where".into(),
                    kind: RemoteFieldKind::GeoPoint,
                    required: false,
                },
            ],
        };
        let s = RemoteSchema {
            collections: vec![c],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["collections"][0]["fields"][0]["kind"]["type"], "select");
        assert_eq!(v["collections"][0]["fields"][1]["kind"]["onlyInt"], true);
        assert_eq!(v["collections"][0]["fields"][2]["kind"]["type"], "geoPoint");
        let back: RemoteSchema = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.collections[0].fields[2].kind.type_name(), "geoPoint");
    }
}
