//! Collection schemas: which collections a store holds and the typed fields of each.
//!
//! The SQLite store turns each [`CollectionSchema`] into a real table with one typed
//! column per [`Field`]; the sled store uses the same schema to check records, so
//! both backends accept and refuse exactly the same input.
//!
//! Fields a record carries that its collection's schema does not declare (for
//! example a field the server added after the app shipped) are *kept*: the SQLite
//! store puts them in the table's `_extra` JSON column, and both stores return them
//! from `get`/`list` and push them back unchanged.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_traits::{Fields, RecordId, StoreError};

/// The type of one declared field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A JSON string. SQLite column type `TEXT`.
    Text,
    /// A JSON number (64-bit integer or finite float). SQLite column type `NUMERIC`.
    ///
    /// Floats with an integral value that fits an `i64` (`3.0`) are stored and
    /// returned as integers (`3`), as PocketBase itself sends them.
    Number,
    /// A JSON bool. SQLite column type `BOOLEAN` (0/1).
    Bool,
    /// A date as PocketBase writes it (`"2024-05-01 10:00:00.000Z"`) or `""` (no
    /// date). SQLite column type `TEXT`.
    Date,
    /// Any JSON value, stored as JSON text. SQLite column type `TEXT`.
    Json,
    /// A single relation: a record id, or `""` for none. SQLite column type `TEXT`.
    Relation,
    /// A multiple relation: a JSON array of record ids. SQLite column type `TEXT`
    /// holding the JSON array.
    Relations,
}

impl FieldKind {
    /// What a value of this kind looks like, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            FieldKind::Text => "a string",
            FieldKind::Number => "a number",
            FieldKind::Bool => "a bool",
            FieldKind::Date => "a date string or \"\"",
            FieldKind::Json => "any JSON value",
            FieldKind::Relation => "a record id string",
            FieldKind::Relations => "an array of record ids",
        }
    }

    /// The SQLite column type this kind is declared with.
    pub fn sql_type(self) -> &'static str {
        match self {
            FieldKind::Number => "NUMERIC",
            FieldKind::Bool => "BOOLEAN",
            _ => "TEXT",
        }
    }
}

/// One declared field of a collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Field (column) name: 1–64 characters of `[A-Za-z0-9_]`, not `id` and not
    /// starting with `_` followed by `extra`/`tidemark`. SQL reserved words are fine.
    pub name: String,
    /// Its type.
    pub kind: FieldKind,
}

/// A collection the store holds: its name, declared fields, and whether it syncs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSchema {
    /// Collection (table) name: 1–64 characters of `[A-Za-z0-9_]`, not starting
    /// with `_tidemark` or `sqlite_`.
    pub name: String,
    /// Declared fields, in column order.
    pub fields: Vec<Field>,
    /// Held on this device only: its writes make no outbox entries, pulls never
    /// touch it (a server collection of the same name is skipped), and a resync
    /// never removes its records. Fixed for a stored collection: a store opened
    /// with it switched refuses with [`StoreError::Schema`](sync_traits::StoreError::Schema).
    #[serde(default)]
    pub local_only: bool,
}

impl CollectionSchema {
    /// A collection with no declared fields yet (every field would be kept in
    /// `_extra`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            fields: Vec::new(),
            local_only: false,
        }
    }

    /// Makes the collection local-only (see [`CollectionSchema::local_only`]).
    pub fn local_only(mut self) -> Self {
        self.local_only = true;
        self
    }

    /// Adds a field of any kind.
    pub fn field(mut self, name: impl Into<String>, kind: FieldKind) -> Self {
        self.fields.push(Field {
            name: name.into(),
            kind,
        });
        self
    }

    /// Adds a [`FieldKind::Text`] field.
    pub fn text(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Text)
    }
    /// Adds a [`FieldKind::Number`] field.
    pub fn number(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Number)
    }
    /// Adds a [`FieldKind::Bool`] field.
    pub fn bool(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Bool)
    }
    /// Adds a [`FieldKind::Date`] field.
    pub fn date(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Date)
    }
    /// Adds a [`FieldKind::Json`] field.
    pub fn json(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Json)
    }
    /// Adds a [`FieldKind::Relation`] field.
    pub fn relation(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Relation)
    }
    /// Adds a [`FieldKind::Relations`] field.
    pub fn relations(self, name: impl Into<String>) -> Self {
        self.field(name, FieldKind::Relations)
    }

    /// The declared kind of `name`, if declared.
    pub fn kind_of(&self, name: &str) -> Option<FieldKind> {
        self.fields.iter().find(|f| f.name == name).map(|f| f.kind)
    }
}

/// The collections a store holds. Serialisable, so it can live in a JSON file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The collections, in any order.
    pub collections: Vec<CollectionSchema>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collection.
    pub fn collection(mut self, c: CollectionSchema) -> Self {
        self.collections.push(c);
        self
    }

    /// The collection named `name`.
    pub fn get(&self, name: &str) -> Option<&CollectionSchema> {
        self.collections.iter().find(|c| c.name == name)
    }

    /// The schema the conformance suite of `sync_traits::testkit::conformance`
    /// expects: `songs(title text, artist text, order number)` and
    /// `friends(name text)`.
    pub fn conformance() -> Self {
        Schema::new()
            .collection(
                CollectionSchema::new("songs")
                    .text("title")
                    .text("artist")
                    .number("order"),
            )
            .collection(CollectionSchema::new("friends").text("name"))
    }

    /// The sample schema of the seed project, which `pocketbase-remote`'s fixture
    /// migration serves: `songs(title, artist: text, order: number, owner:
    /// relation)` and `friends(name: text, owner: relation)`.
    pub fn sample() -> Self {
        Schema::new()
            .collection(
                CollectionSchema::new("songs")
                    .text("title")
                    .text("artist")
                    .number("order")
                    .relation("owner"),
            )
            .collection(
                CollectionSchema::new("friends")
                    .text("name")
                    .relation("owner"),
            )
    }

    /// Checks names: valid, unique, not reserved.
    pub fn validate(&self) -> Result<(), StoreError> {
        let mut names = HashSet::new();
        for c in &self.collections {
            check_collection_name(&c.name)?;
            let lower = c.name.to_ascii_lowercase();
            if lower.starts_with("_tidemark") || lower.starts_with("sqlite_") {
                return Err(schema_err(&c.name, "", "collection name is reserved"));
            }
            if !names.insert(lower) {
                return Err(schema_err(&c.name, "", "collection declared twice"));
            }
            let mut fields = HashSet::new();
            for f in &c.fields {
                if !valid_name(&f.name) {
                    return Err(schema_err(
                        &c.name,
                        "",
                        &format!("field name {:?} must be 1-64 chars of [A-Za-z0-9_]", f.name),
                    ));
                }
                let lf = f.name.to_ascii_lowercase();
                if lf == "id" || lf == "_extra" || lf.starts_with("_tidemark") {
                    return Err(schema_err(
                        &c.name,
                        "",
                        &format!("field name {:?} is reserved", f.name),
                    ));
                }
                if !fields.insert(lf) {
                    return Err(schema_err(
                        &c.name,
                        "",
                        &format!("field {:?} declared twice", f.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a collection name: 1–64 characters of `[A-Za-z0-9_]`, as the reference
/// store does.
pub(crate) fn check_collection_name(name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::UnknownCollection(name.to_owned()))
    }
}

pub(crate) fn schema_err(collection: &str, id: &str, message: &str) -> StoreError {
    StoreError::Schema {
        collection: collection.to_owned(),
        id: id.to_owned(),
        message: message.to_owned(),
    }
}

fn check_relation_id(s: &str) -> Result<(), StoreError> {
    if s.is_empty() {
        return Ok(());
    }
    RecordId::parse(s).map(|_| ()).map_err(StoreError::from)
}

fn looks_like_date(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// Checks one value against its declared kind and returns its canonical form
/// (integral floats become integers in number fields). `null` fits every kind.
pub(crate) fn check_value(
    collection: &str,
    id: &RecordId,
    name: &str,
    kind: FieldKind,
    v: &Value,
) -> Result<Value, StoreError> {
    let bad = |what: &str| {
        schema_err(
            collection,
            id.as_str(),
            &format!("field {name:?} must be {what}, got {v}"),
        )
    };
    match (kind, v) {
        (_, Value::Null) => Ok(Value::Null),
        (FieldKind::Text, Value::String(_)) => Ok(v.clone()),
        (FieldKind::Text, _) => Err(bad("a string")),
        (FieldKind::Date, Value::String(s)) if looks_like_date(s) => Ok(v.clone()),
        (FieldKind::Date, _) => Err(bad("a date string (YYYY-MM-DD...) or \"\"")),
        (FieldKind::Bool, Value::Bool(_)) => Ok(v.clone()),
        (FieldKind::Bool, _) => Err(bad("a bool")),
        (FieldKind::Number, Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::from(i))
            } else if n.is_u64() {
                Err(bad("a number that fits a 64-bit signed integer"))
            } else {
                let f = n.as_f64().ok_or_else(|| bad("a finite number"))?;
                if f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f) {
                    Ok(Value::from(f as i64))
                } else {
                    Ok(v.clone())
                }
            }
        }
        (FieldKind::Number, _) => Err(bad("a number")),
        (FieldKind::Json, _) => Ok(v.clone()),
        (FieldKind::Relation, Value::String(s)) => {
            check_relation_id(s)?;
            Ok(v.clone())
        }
        (FieldKind::Relation, _) => Err(bad("a record id string")),
        (FieldKind::Relations, Value::Array(items)) => {
            for it in items {
                match it {
                    Value::String(s) if !s.is_empty() => check_relation_id(s)?,
                    _ => return Err(bad("an array of record ids")),
                }
            }
            Ok(v.clone())
        }
        (FieldKind::Relations, _) => Err(bad("an array of record ids")),
    }
}

/// A pulled record's fields made canonical, with the values that do not fit their
/// declared kind set apart: they are kept as the server sent them (the store keeps
/// them beside the typed columns) and listed as [`sync_traits::Mistyped`], so a
/// page is never refused for what one record holds.
pub(crate) fn canonical_remote_fields(
    c: &CollectionSchema,
    id: &RecordId,
    fields: &Fields,
) -> (Fields, Vec<sync_traits::Mistyped>) {
    let mut out = Fields::new();
    let mut mistyped = Vec::new();
    for (k, v) in fields {
        if k == "id" {
            continue;
        }
        let v = match c.kind_of(k) {
            Some(kind) => match check_value(&c.name, id, k, kind, v) {
                Ok(v) => v,
                Err(_) => {
                    mistyped.push(sync_traits::Mistyped {
                        collection: c.name.clone(),
                        id: id.clone(),
                        field: k.clone(),
                        expected: kind.expected().to_owned(),
                        value: v.clone(),
                    });
                    v.clone()
                }
            },
            None => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    (out, mistyped)
}

/// Checks every declared field of `fields` and returns the canonical fields
/// (undeclared fields are kept as they are).
pub(crate) fn canonical_fields(
    c: &CollectionSchema,
    id: &RecordId,
    fields: &Fields,
) -> Result<Fields, StoreError> {
    let mut out = Fields::new();
    for (k, v) in fields {
        if k == "id" {
            continue;
        }
        let v = match c.kind_of(k) {
            Some(kind) => check_value(&c.name, id, k, kind, v)?,
            None => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_canonical() {
        let id = sync_traits::new_id();
        let k = FieldKind::Number;
        assert_eq!(
            check_value("c", &id, "n", k, &json!(3.0)).unwrap(),
            json!(3)
        );
        assert_eq!(
            check_value("c", &id, "n", k, &json!(3.5)).unwrap(),
            json!(3.5)
        );
        assert!(check_value("c", &id, "n", k, &json!(u64::MAX)).is_err());
        assert!(check_value("c", &id, "n", k, &json!("3")).is_err());
    }

    #[test]
    fn relations_and_dates_are_checked() {
        let id = sync_traits::new_id();
        let ok = json!([id.as_str()]);
        assert!(check_value("c", &id, "r", FieldKind::Relations, &ok).is_ok());
        assert!(matches!(
            check_value("c", &id, "r", FieldKind::Relation, &json!("BAD")),
            Err(StoreError::InvalidId(_))
        ));
        assert!(check_value(
            "c",
            &id,
            "d",
            FieldKind::Date,
            &json!("2024-01-02 00:00:00.000Z")
        )
        .is_ok());
        assert!(check_value("c", &id, "d", FieldKind::Date, &json!("yesterday")).is_err());
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(Schema::conformance().validate().is_ok());
        let bad = Schema::new().collection(CollectionSchema::new("x").text("id"));
        assert!(bad.validate().is_err());
        let bad = Schema::new().collection(CollectionSchema::new("_tidemark_x"));
        assert!(bad.validate().is_err());
        let bad = Schema::new().collection(CollectionSchema::new("a b"));
        assert!(bad.validate().is_err());
    }
}
