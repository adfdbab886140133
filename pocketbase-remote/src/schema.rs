//! The schema of a PocketBase server's synced collections, as a neutral
//! [`RemoteSchema`]: read from the extension's schema route
//! ([`PocketBaseRemote::schema`]) or parsed from PocketBase's own collections export
//! ([`parse_export`], the `pb_schema.json` the admin UI writes).
//!
//! Both sources are PocketBase collection JSON; one parser reads them. What is left
//! out, whatever the source: password fields (they never sync), hidden fields
//! (PocketBase sends them to superusers only), the record id, tidemark's own fields
//! (`tm_*`) and collections (`tm_*`, `_tm_*`), and every collection that cannot sync
//! (auth, view and system collections).

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sync_traits::{RemoteCollection, RemoteError, RemoteField, RemoteFieldKind, RemoteSchema};
use thiserror::Error;

use crate::client::expect_ok;
use crate::PocketBaseRemote;

/// Why a collections export could not be read.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a collections export.
    #[error("not a PocketBase collections export: {0}")]
    Shape(String),
}

/// Parses PocketBase's collections export: the JSON array the admin UI exports
/// (`pb_schema.json`), or an object with that array as `collections` (the body of
/// `PUT /api/collections/import`, and what the extension's schema route answers).
///
/// Keeps the base collections that are not system collections and not tidemark's
/// own, sorted by name; in each, the fields in the export's order without the id,
/// password, hidden and `tm_*` fields. A relation's target is named by its
/// `collectionName` if the entry has one, else by the name of the export's
/// collection with its `collectionId` (PocketBase's default `_pb_users_auth_` is
/// `users`), else by the id itself. An unknown field type
/// becomes [`RemoteFieldKind::Other`].
pub fn parse_export(json: &str) -> Result<RemoteSchema, SchemaError> {
    let v: Value = serde_json::from_str(json)?;
    from_value(&v)
}

/// [`parse_export`] of an already parsed JSON value.
pub fn from_value(v: &Value) -> Result<RemoteSchema, SchemaError> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("collections")
            .and_then(Value::as_array)
            .ok_or_else(|| SchemaError::Shape("an object without a `collections` array".into()))?,
        _ => return Err(SchemaError::Shape("neither an array nor an object".into())),
    };
    // PocketBase's default `users` collection has this id in every new database, so
    // an export that leaves `users` out still names it.
    let mut names = BTreeMap::from([("_pb_users_auth_".to_owned(), "users".to_owned())]);
    for c in list {
        if let (Some(id), Some(name)) = (
            c.get("id").and_then(Value::as_str),
            c.get("name").and_then(Value::as_str),
        ) {
            names.insert(id.to_owned(), name.to_owned());
        }
    }
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let obj = c
            .as_object()
            .ok_or_else(|| SchemaError::Shape(format!("collection {i} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SchemaError::Shape(format!("collection {i} has no name")))?;
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("base");
        let system = obj.get("system").and_then(Value::as_bool).unwrap_or(false);
        if kind != "base" || system || is_internal(name) {
            continue;
        }
        let fields = obj.get("fields").and_then(Value::as_array).ok_or_else(|| {
            SchemaError::Shape(format!("collection {name} has no `fields` array"))
        })?;
        let mut described = Vec::new();
        for (j, f) in fields.iter().enumerate() {
            if let Some(field) = field_of(f, &names)
                .map_err(|m| SchemaError::Shape(format!("{name}, field {j}: {m}")))?
            {
                described.push(field);
            }
        }
        out.push(RemoteCollection {
            name: name.to_owned(),
            fields: described,
        });
    }
    Ok(RemoteSchema { collections: out }.sorted())
}

/// tidemark's own collections and fields: `tm_*` and `_tm_*`.
fn is_internal(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.starts_with("tm_") || l.starts_with("_tm_")
}

/// The described field of export entry `f`, `None` for one that is left out.
fn field_of(f: &Value, names: &BTreeMap<String, String>) -> Result<Option<RemoteField>, String> {
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or("no name")?
        .to_owned();
    let ty = f.get("type").and_then(Value::as_str).ok_or("no type")?;
    let flag = |k: &str| f.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("primaryKey")
        || name == "id"
        || flag("hidden")
        || ty == "password"
        || is_internal(&name)
    {
        return Ok(None);
    }
    let multiple = f.get("maxSelect").and_then(Value::as_u64).unwrap_or(1) > 1;
    let kind = match ty {
        "text" => RemoteFieldKind::Text,
        "editor" => RemoteFieldKind::Editor,
        "email" => RemoteFieldKind::Email,
        "url" => RemoteFieldKind::Url,
        "number" => RemoteFieldKind::Number {
            only_int: flag("onlyInt"),
        },
        "bool" => RemoteFieldKind::Bool,
        "date" => RemoteFieldKind::Date,
        "autodate" => RemoteFieldKind::Autodate,
        "select" => RemoteFieldKind::Select {
            values: f
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            multiple,
        },
        "relation" => {
            let by_name = f
                .get("collectionName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            let id = f.get("collectionId").and_then(Value::as_str).unwrap_or("");
            let collection = by_name
                .map(str::to_owned)
                .or_else(|| names.get(id).cloned())
                .unwrap_or_else(|| id.to_owned());
            RemoteFieldKind::Relation {
                collection,
                multiple,
            }
        }
        "json" => RemoteFieldKind::Json,
        "file" => RemoteFieldKind::File { multiple },
        "geoPoint" => RemoteFieldKind::GeoPoint,
        other => RemoteFieldKind::Other {
            name: other.to_owned(),
        },
    };
    Ok(Some(RemoteField {
        name,
        kind,
        required: flag("required"),
    }))
}

impl PocketBaseRemote {
    /// The schema of the synced collections the caller may list (a collection whose
    /// list rule is null is listed to superusers only), from the extension's route
    /// `GET /api/tidemark/schema`: PocketBase itself shows collection schemas to
    /// superusers only. Sorted by collection name; see [`parse_export`] for what is
    /// left out.
    ///
    /// Fails with `RemoteError::Permanent` when the server's extension has no schema
    /// route, `RemoteError::Malformed` when its answer is not a collections export.
    pub async fn schema(&self) -> Result<RemoteSchema, RemoteError> {
        let r = self.call(Method::GET, "/api/tidemark/schema", None).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Err(RemoteError::Permanent(
                "GET /api/tidemark/schema not found: the server's tidemark pb_hooks have no \
                 schema route (upgrade them)"
                    .into(),
            ));
        }
        let v = expect_ok(&r, "schema")?;
        from_value(&v).map_err(|e| RemoteError::Malformed(format!("schema: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_export_keeps_synced_kinds_and_drops_what_never_syncs() {
        let export = json!([
            {"id": "_pb_users_auth_", "name": "users", "type": "auth", "system": false,
             "fields": [{"name": "email", "type": "email"}]},
            {"id": "pbc_1", "name": "_superusers", "type": "auth", "system": true, "fields": []},
            {"id": "pbc_2", "name": "tm_tombstones", "type": "base", "fields": []},
            {"id": "pbc_3", "name": "notes", "type": "base", "system": false, "fields": [
                {"name": "id", "type": "text", "primaryKey": true, "system": true},
                {"name": "title", "type": "text", "required": true},
                {"name": "secret", "type": "password"},
                {"name": "internal", "type": "text", "hidden": true},
                {"name": "tm_seq", "type": "number"},
                {"name": "tags", "type": "select", "maxSelect": 3, "values": ["a", "b"]},
                {"name": "owner", "type": "relation", "maxSelect": 1, "collectionId": "_pb_users_auth_"},
                {"name": "refs", "type": "relation", "maxSelect": 9, "collectionId": "missing"},
                {"name": "pics", "type": "file", "maxSelect": 2},
                {"name": "n", "type": "number", "onlyInt": true},
                {"name": "later", "type": "vector"}
            ]},
            {"id": "pbc_4", "name": "a_view", "type": "view", "fields": []}
        ]);
        let s = parse_export(&export.to_string()).unwrap();
        assert_eq!(s.collections.len(), 1);
        let c = &s.collections[0];
        let names: Vec<&str> = c.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["title", "tags", "owner", "refs", "pics", "n", "later"]
        );
        assert!(c.fields[0].required);
        assert_eq!(
            c.field("tags").unwrap().kind,
            RemoteFieldKind::Select {
                values: vec!["a".into(), "b".into()],
                multiple: true
            }
        );
        assert_eq!(
            c.field("owner").unwrap().kind,
            RemoteFieldKind::Relation {
                collection: "users".into(),
                multiple: false
            }
        );
        assert_eq!(
            c.field("refs").unwrap().kind,
            RemoteFieldKind::Relation {
                collection: "missing".into(),
                multiple: true
            }
        );
        assert_eq!(
            c.field("pics").unwrap().kind,
            RemoteFieldKind::File { multiple: true }
        );
        assert_eq!(
            c.field("later").unwrap().kind,
            RemoteFieldKind::Other {
                name: "vector".into()
            }
        );
        // The import body's shape reads the same.
        let wrapped = json!({"collections": export, "deleteMissing": false});
        assert_eq!(parse_export(&wrapped.to_string()).unwrap(), s);
    }

    #[test]
    fn what_is_not_an_export_is_a_typed_error() {
        assert!(matches!(parse_export("nope"), Err(SchemaError::Json(_))));
        assert!(matches!(parse_export("3"), Err(SchemaError::Shape(_))));
        assert!(matches!(
            parse_export(r#"[{"name": "x", "type": "base"}]"#),
            Err(SchemaError::Shape(_))
        ));
        assert!(matches!(
            parse_export(r#"[{"name": "x", "fields": [{"type": "text"}]}]"#),
            Err(SchemaError::Shape(_))
        ));
    }
}
