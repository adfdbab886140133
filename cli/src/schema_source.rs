//! Where `sync` and `watch` get the store's schema from: a file in PocketBase's
//! collections export format (`pb_schema.json`, what the admin UI's "Export
//! collections" writes). A minimal parser: text-like fields (text, editor, email,
//! url, single select) as text, number, bool, date and autodate, json, multiple
//! select as json, relations (single and multiple); system fields, passwords,
//! `tm_*` fields and PocketBase's own `_*` collections are left out.

use std::path::Path;

use anyhow::{bail, Context, Result};
use pocketbase_remote::PocketBaseRemote;
use serde_json::Value;
use tidemark_backends::{CollectionSchema, FieldKind, Schema};

/// The schema for `remote`'s store: from `file` (PocketBase's export format).
/// Without a file this fails with a message saying `--schema` is required.
pub fn resolve(remote: &PocketBaseRemote, file: Option<&Path>) -> Result<Schema> {
    let Some(file) = file else {
        bail!(
            "--schema FILE is required (PocketBase's collections export, pb_schema.json) \
             for the server at {}",
            remote.url()
        );
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    parse_export(&v).with_context(|| format!("reading the collections of {}", file.display()))
}

fn parse_export(v: &Value) -> Result<Schema> {
    let Some(colls) = v.as_array() else {
        bail!("expected a JSON array of collections");
    };
    let mut schema = Schema::new();
    for c in colls {
        let name = c["name"].as_str().context("a collection without a name")?;
        if name.starts_with('_') || name.starts_with("tm_") || c["type"] == "view" {
            continue;
        }
        let mut cs = CollectionSchema::new(name);
        let fields = c
            .get("fields")
            .or_else(|| c.get("schema"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for f in &fields {
            let fname = f["name"].as_str().context("a field without a name")?;
            if fname == "id" || fname.starts_with("tm_") || f["system"] == true {
                continue;
            }
            let many = f["maxSelect"]
                .as_u64()
                .or_else(|| f["options"]["maxSelect"].as_u64())
                .is_some_and(|m| m > 1);
            let kind = match f["type"].as_str().unwrap_or_default() {
                "text" | "editor" | "email" | "url" => FieldKind::Text,
                "select" if many => FieldKind::Json,
                "select" => FieldKind::Text,
                "number" => FieldKind::Number,
                "bool" => FieldKind::Bool,
                "date" | "autodate" => FieldKind::Date,
                "json" | "geoPoint" => FieldKind::Json,
                "relation" if many => FieldKind::Relations,
                "relation" => FieldKind::Relation,
                "file" if many => FieldKind::Json,
                "file" => FieldKind::Text,
                _ => continue,
            };
            cs = cs.field(fname, kind);
        }
        schema = schema.collection(cs);
    }
    Ok(schema)
}
