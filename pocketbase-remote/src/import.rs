//! Importing collections in PocketBase's export format (superusers only).

use reqwest::Method;
use serde_json::{json, Value};
use sync_traits::RemoteError;

use crate::client::expect_ok;
use crate::error::ProtocolError;
use crate::PocketBaseRemote;

/// Whether a field or index belongs to tidemark (`tm_*` fields, indexes on them).
fn is_tidemark_field(f: &Value) -> bool {
    f.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.starts_with("tm_"))
}

fn name_of(c: &Value) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}

/// `imported`, with what tidemark added to the server's copy `existing` of the same
/// collection and the import lacks: its `tm_*` fields and the indexes that name
/// them. The server's id is kept when only the names match.
fn keep_tidemark_parts(imported: &Value, existing: &Value) -> Value {
    let mut out = imported.clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    if let Some(id) = existing.get("id") {
        obj.insert("id".into(), id.clone());
    }
    let mut fields = obj
        .get("fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for f in existing
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = f.get("name").and_then(Value::as_str);
        if is_tidemark_field(f)
            && !fields
                .iter()
                .any(|g| g.get("name").and_then(Value::as_str) == name)
        {
            fields.push(f.clone());
        }
    }
    obj.insert("fields".into(), Value::Array(fields));
    let mut indexes = obj
        .get("indexes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for i in existing
        .get("indexes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if i.as_str().is_some_and(|s| s.contains("tm_")) && !indexes.contains(i) {
            indexes.push(i.clone());
        }
    }
    obj.insert("indexes".into(), Value::Array(indexes));
    out
}

impl PocketBaseRemote {
    /// The server's collections in PocketBase's export format (superusers only): the
    /// `items` of `GET /api/collections`, system collections included.
    pub async fn export_collections(&self) -> Result<Vec<Value>, RemoteError> {
        let r = self
            .call_query(
                Method::GET,
                "/api/collections",
                &[("perPage", "1000".into()), ("skipTotal", "1".into())],
                None,
            )
            .await?;
        let v = expect_ok(&r, "collections")?;
        v.get("items")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| {
                ProtocolError::Field {
                    context: "collections".into(),
                    field: "items".into(),
                }
                .into()
            })
    }

    /// Imports `collections`, given in PocketBase's collections export format (what
    /// the admin UI's "Export collections" writes: an array of collection objects),
    /// with PocketBase's `PUT /api/collections/import` (superusers only).
    /// Collections the import does not name stay as they are. A collection that
    /// exists on the server (same name) keeps its id and the fields and indexes
    /// tidemark added to it (`tm_*`) that the import lacks, so re-importing a schema
    /// exported before sync was enabled keeps a synced collection synced, with its
    /// data. Fails with `RemoteError::Permanent` carrying PocketBase's validation
    /// message if PocketBase refuses the import (then nothing changed), and
    /// `RemoteError::Malformed` if an element is not an object with a `name`.
    /// Returns the imported collections' names.
    pub async fn import_collections(
        &self,
        collections: &[Value],
    ) -> Result<Vec<String>, RemoteError> {
        let existing = self.export_collections().await?;
        let mut out = Vec::with_capacity(collections.len());
        let mut names = Vec::with_capacity(collections.len());
        for c in collections {
            let name = name_of(c).ok_or_else(|| {
                RemoteError::Malformed("import: every collection needs a \"name\"".into())
            })?;
            names.push(name.to_owned());
            match existing.iter().find(|e| name_of(e) == Some(name)) {
                Some(e) => out.push(keep_tidemark_parts(c, e)),
                None => out.push(c.clone()),
            }
        }
        let body = json!({ "collections": out, "deleteMissing": false });
        let r = self
            .call(Method::PUT, "/api/collections/import", Some(&body))
            .await?;
        if !r.status.is_success() {
            let detail = String::from_utf8_lossy(&r.body);
            return Err(RemoteError::Permanent(format!(
                "import refused ({}): {}",
                r.status,
                detail.chars().take(2000).collect::<String>()
            )));
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tidemark_fields_and_indexes_the_import_lacks() {
        let imported = json!({
            "id": "pbc_new", "name": "songs",
            "fields": [{"name": "title", "type": "text"}, {"name": "tm_seq", "type": "number", "id": "mine"}],
            "indexes": ["CREATE INDEX idx_title ON songs (title)"],
        });
        let existing = json!({
            "id": "pbc_old", "name": "songs",
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "old", "type": "text"},
                {"name": "tm_seq", "type": "number", "id": "server"},
                {"name": "tm_cid", "type": "text"},
            ],
            "indexes": ["CREATE INDEX idx_tm ON songs (tm_seq)", "CREATE INDEX idx_old ON songs (old)"],
        });
        let got = keep_tidemark_parts(&imported, &existing);
        assert_eq!(got["id"], "pbc_old");
        let names: Vec<&str> = got["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str())
            .collect();
        // The import's own fields win; non-tidemark fields it dropped stay dropped.
        assert_eq!(names, ["title", "tm_seq", "tm_cid"]);
        assert_eq!(got["fields"][1]["id"], "mine");
        assert_eq!(
            got["indexes"],
            json!([
                "CREATE INDEX idx_title ON songs (title)",
                "CREATE INDEX idx_tm ON songs (tm_seq)"
            ])
        );
    }
}
