//! A collection's table: its DDL, its capture triggers, its prepared SQL, and the
//! mapping between a record's JSON fields and the table's typed columns.

use rusqlite::types::{Value as SqlValue, ValueRef};
use serde_json::Value;
use sync_traits::{Fields, Mistyped, RecordId, StoreError};

use super::sql::{lit, q, sql_err};
use crate::schema::{check_value, CollectionSchema, FieldKind};

/// One value to bind; text lives in [`Rows::text`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    /// A byte range of [`Rows`]' text.
    Text(usize, usize),
}

/// Rows ready to bind, owned and compact: their values in one vector and all
/// their text in one string (a page of them is two allocations, however many
/// records it holds).
#[derive(Debug, Default)]
pub(super) struct Rows {
    pub(super) text: String,
    pub(super) cells: Vec<Cell>,
}

impl Rows {
    /// Appends `s` to the text; its cell.
    pub(super) fn text(&mut self, s: &str) -> Cell {
        let a = self.text.len();
        self.text.push_str(s);
        Cell::Text(a, self.text.len())
    }

    /// The text of a [`Cell::Text`] (empty if out of range, which the store never
    /// makes).
    pub(super) fn str(&self, a: usize, b: usize) -> &str {
        self.text.get(a..b).unwrap_or_default()
    }
}

/// A collection's table and its prepared SQL.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) schema: CollectionSchema,
    pub(super) select_one: String,
    pub(super) select_all: String,
    /// Up to `?2` rows with `"id" > ?1`, by id: a range of the primary key's index.
    pub(super) select_page: String,
    pub(super) count: String,
    pub(super) upsert: String,
    pub(super) delete: String,
}

impl Table {
    pub(super) fn new(schema: CollectionSchema) -> Self {
        let t = q(&schema.name);
        let cols: Vec<String> = schema.fields.iter().map(|f| q(&f.name)).collect();
        let mut data_cols = cols.clone();
        data_cols.push("\"_extra\"".into());
        let all = data_cols.join(", ");
        let placeholders: Vec<String> =
            (1..=data_cols.len() + 1).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = data_cols
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        Self {
            select_one: format!("SELECT {all} FROM {t} WHERE \"id\" = ?1"),
            select_all: format!("SELECT \"id\", {all} FROM {t} ORDER BY \"id\""),
            select_page: format!(
                "SELECT \"id\", {all} FROM {t} WHERE \"id\" > ?1 ORDER BY \"id\" LIMIT ?2"
            ),
            count: format!("SELECT COUNT(*) FROM {t}"),
            upsert: format!(
                "INSERT INTO {t} (\"id\", {all}) VALUES ({}) ON CONFLICT (\"id\") DO UPDATE SET {}",
                placeholders.join(", "),
                updates.join(", ")
            ),
            delete: format!("DELETE FROM {t} WHERE \"id\" = ?1"),
            schema,
        }
    }

    /// Binds a record (id, declared columns, `_extra`) to the upsert statement.
    ///
    /// A declared field's value that does not fit its kind is bound as NULL in its
    /// column and kept, exactly as it is, in `_extra` (where [`Table::read_fields`]
    /// finds it), and reported in `mistyped` when given. Callers that must refuse
    /// such values (an app's `put`) check the record before binding it.
    pub(super) fn bind_row(
        &self,
        st: &mut rusqlite::Statement<'_>,
        id: &RecordId,
        fields: &Fields,
        mistyped: Option<&mut Vec<Mistyped>>,
    ) -> Result<(), StoreError> {
        let mut rows = Rows::default();
        let mut none = Vec::new();
        let start = self.prepare_row(&mut rows, id, fields, mistyped.unwrap_or(&mut none));
        self.bind_prepared(st, &rows, start)
    }

    /// Turns a record into the values its upsert binds (id, declared columns,
    /// `_extra`), appended to `rows`; returns where they start. The rules of
    /// [`Table::bind_row`]; values that do not fit are added to `mistyped`.
    pub(super) fn prepare_row(
        &self,
        rows: &mut Rows,
        id: &RecordId,
        fields: &Fields,
        mistyped: &mut Vec<Mistyped>,
    ) -> usize {
        let c = &self.schema;
        let start = rows.cells.len();
        let cell = rows.text(id.as_str());
        rows.cells.push(cell);
        let mut extra: Vec<(&String, &Value)> = Vec::new();
        // How many of the record's fields are declared ones: when that is all of
        // them, there is nothing undeclared to look for.
        let mut declared = 0;
        for f in &c.fields {
            let v = fields.get(&f.name);
            declared += usize::from(v.is_some());
            let cell = match (f.kind, v) {
                (_, None) => Cell::Null,
                (_, Some(v @ Value::Null)) => {
                    extra.push((&f.name, v));
                    Cell::Null
                }
                (FieldKind::Text, Some(Value::String(s))) => rows.text(s),
                (FieldKind::Number, Some(Value::Number(n))) if n.is_i64() => {
                    Cell::Int(n.as_i64().unwrap_or_default())
                }
                (FieldKind::Bool, Some(Value::Bool(b))) => Cell::Int(i64::from(*b)),
                (kind, Some(v)) => match check_value(&c.name, id, &f.name, kind, v) {
                    Ok(v) => match to_sql(kind, &v) {
                        SqlValue::Null => Cell::Null,
                        SqlValue::Integer(i) => Cell::Int(i),
                        SqlValue::Real(r) => Cell::Real(r),
                        SqlValue::Text(t) => rows.text(&t),
                        SqlValue::Blob(b) => rows.text(&String::from_utf8_lossy(&b)),
                    },
                    Err(_) => {
                        mistyped.push(Mistyped {
                            collection: c.name.clone(),
                            id: id.clone(),
                            field: f.name.clone(),
                            expected: kind.expected().to_owned(),
                            value: v.clone(),
                        });
                        extra.push((&f.name, v));
                        Cell::Null
                    }
                },
            };
            rows.cells.push(cell);
        }
        if declared < fields.len() {
            for (k, v) in fields {
                if k != "id" && c.kind_of(k).is_none() {
                    extra.push((k, v));
                }
            }
        }
        let cell = if extra.is_empty() {
            Cell::Null
        } else {
            extra.sort_by(|a, b| a.0.cmp(b.0));
            let map: serde_json::Map<String, Value> = extra
                .into_iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            rows.text(&Value::Object(map).to_string())
        };
        rows.cells.push(cell);
        start
    }

    /// Binds the values [`Table::prepare_row`] put at `start` to the upsert.
    pub(super) fn bind_prepared(
        &self,
        st: &mut rusqlite::Statement<'_>,
        rows: &Rows,
        start: usize,
    ) -> Result<(), StoreError> {
        let n = self.schema.fields.len() + 2;
        let cells = rows
            .cells
            .get(start..start + n)
            .ok_or_else(|| StoreError::Backend("prepared row out of range".into()))?;
        for (i, cell) in cells.iter().enumerate() {
            let idx = i + 1;
            match *cell {
                Cell::Null => st.raw_bind_parameter(idx, SqlValue::Null),
                Cell::Int(v) => st.raw_bind_parameter(idx, v),
                Cell::Real(v) => st.raw_bind_parameter(idx, v),
                Cell::Text(a, b) => st.raw_bind_parameter(idx, rows.str(a, b)),
            }
            .map_err(sql_err)?;
        }
        Ok(())
    }

    /// Reads declared columns and `_extra` starting at column `offset`.
    pub(super) fn read_fields(
        &self,
        row: &rusqlite::Row<'_>,
        offset: usize,
    ) -> rusqlite::Result<Fields> {
        let n = self.schema.fields.len();
        let mut out = match row.get_ref(offset + n)? {
            ValueRef::Text(t) => match serde_json::from_slice::<Value>(t) {
                Ok(Value::Object(m)) => m,
                _ => Fields::new(),
            },
            _ => Fields::new(),
        };
        for (i, f) in self.schema.fields.iter().enumerate() {
            let v = row.get_ref(offset + i)?;
            if let Some(v) = from_sql(f.kind, v) {
                out.insert(f.name.clone(), v);
            }
        }
        Ok(out)
    }
}

fn to_sql(kind: FieldKind, v: &Value) -> SqlValue {
    match (kind, v) {
        (_, Value::Null) => SqlValue::Null,
        (FieldKind::Json | FieldKind::Relations, v) => SqlValue::Text(v.to_string()),
        (_, Value::String(s)) => SqlValue::Text(s.clone()),
        (_, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
        },
        (_, v) => SqlValue::Text(v.to_string()),
    }
}

/// A column value as JSON; `None` for SQL NULL. Values written with plain SQL that
/// do not fit the declared kind are returned as they are stored (best effort).
fn from_sql(kind: FieldKind, v: ValueRef<'_>) -> Option<Value> {
    Some(match v {
        ValueRef::Null => return None,
        ValueRef::Integer(i) => match kind {
            FieldKind::Bool if i == 0 => Value::Bool(false),
            FieldKind::Bool if i == 1 => Value::Bool(true),
            _ => Value::from(i),
        },
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => {
            let s = String::from_utf8_lossy(t);
            match kind {
                FieldKind::Json | FieldKind::Relations => {
                    serde_json::from_str(&s).unwrap_or(Value::String(s.into_owned()))
                }
                _ => Value::String(s.into_owned()),
            }
        }
        ValueRef::Blob(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
    })
}

/// DDL for a collection's table.
pub(super) fn create_table_sql(c: &CollectionSchema) -> String {
    let mut cols = vec![
        "\"id\" TEXT PRIMARY KEY NOT NULL DEFAULT (substr(lower(hex(randomblob(8))), 1, 15)) \
         "
        .to_string(),
    ];
    for f in &c.fields {
        cols.push(format!("{} {}", q(&f.name), f.kind.sql_type()));
    }
    cols.push("\"_extra\" TEXT".into());
    format!("CREATE TABLE {} (\n  {}\n)", q(&c.name), cols.join(",\n  "))
}

pub(super) fn trigger_names(c: &CollectionSchema) -> [String; 5] {
    ["ai", "au", "ad", "id", "bi"].map(|s| q(&format!("_tidemark_{}_{s}", c.name)))
}

/// Triggers that capture plain-SQL writes on a collection's table into the outbox
/// (none for a local-only collection), and guard its record ids.
pub(super) fn triggers_sql(c: &CollectionSchema) -> String {
    let t = q(&c.name);
    let cl = lit(&c.name);
    let path = |name: &str| lit(&format!("$.\"{name}\""));
    let declared: Vec<String> = c.fields.iter().map(|f| lit(&f.name)).collect();
    let keys_of = |row: &str| -> String {
        let mut parts: Vec<String> = c
            .fields
            .iter()
            .map(|f| {
                format!(
                    "SELECT {} AS k WHERE {row}.{} IS NOT NULL",
                    lit(&f.name),
                    q(&f.name)
                )
            })
            .collect();
        parts.push(format!(
            "SELECT \"key\" AS k FROM json_each(coalesce({row}.\"_extra\", '{{}}'))"
        ));
        parts.join(" UNION ")
    };
    let updated = {
        let mut parts: Vec<String> = c
            .fields
            .iter()
            .map(|f| {
                let col = q(&f.name);
                let p = path(&f.name);
                format!(
                    "SELECT {} AS k WHERE OLD.{col} IS NOT NEW.{col} OR (NEW.{col} IS NULL AND \
                     (OLD.\"_extra\" -> {p}) IS NOT (NEW.\"_extra\" -> {p}))",
                    lit(&f.name)
                )
            })
            .collect();
        parts.push(format!(
            "SELECT \"key\" AS k FROM (SELECT \"key\", \"fullkey\" FROM json_each(coalesce(NEW.\"_extra\", '{{}}')) \
             UNION SELECT \"key\", \"fullkey\" FROM json_each(coalesce(OLD.\"_extra\", '{{}}'))) \
             WHERE \"key\" NOT IN ({}) AND (coalesce(OLD.\"_extra\", '{{}}') -> \"fullkey\") IS NOT \
             (coalesce(NEW.\"_extra\", '{{}}') -> \"fullkey\")",
            declared.join(", ")
        ));
        parts.join(" UNION ")
    };
    let when = "";
    let body = |row: &str, changed: &str| -> String {
        format!(
            "UPDATE \"_tidemark_meta\" SET \"value\" = \"value\" + 1 WHERE \"key\" = 'counter';\n\
             UPDATE \"_tidemark_outbox\" SET \
               \"change_n\" = (SELECT \"value\" FROM \"_tidemark_meta\" WHERE \"key\" = 'counter'), \
               \"changed\" = (SELECT json_group_array(k) FROM (SELECT \"value\" AS k FROM json_each(\"_tidemark_outbox\".\"changed\") UNION {changed})) \
             WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\";\n\
             INSERT INTO \"_tidemark_outbox\" (\"collection\", \"id\", \"change_n\", \"base\", \"changed\") \
             SELECT {cl}, {row}.\"id\", (SELECT \"value\" FROM \"_tidemark_meta\" WHERE \"key\" = 'counter'), \
               (SELECT \"version\" FROM \"_tidemark_versions\" WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\"), \
               (SELECT json_group_array(k) FROM ({changed})) \
             WHERE NOT EXISTS (SELECT 1 FROM \"_tidemark_outbox\" WHERE \"collection\" = {cl} AND \"id\" = {row}.\"id\");\n\
             INSERT INTO \"_tidemark_unstamped\" (\"seq\") \
             SELECT o.\"seq\" FROM \"_tidemark_outbox\" AS o WHERE o.\"collection\" = {cl} AND o.\"id\" = {row}.\"id\" \
               AND NOT EXISTS (SELECT 1 FROM \"_tidemark_unstamped\" AS u WHERE u.\"seq\" = o.\"seq\");"
        )
    };
    let [ai, au, ad, idt, bi] = trigger_names(c);
    // A local-only collection's writes never reach the outbox, whichever
    // connection makes them: it gets the id guards only.
    let capture = if c.local_only {
        String::new()
    } else {
        format!(
            "CREATE TRIGGER {ai} AFTER INSERT ON {t} {when} BEGIN\n{}\nEND;\n\
             CREATE TRIGGER {au} AFTER UPDATE ON {t} {when} BEGIN\n{}\nEND;\n\
             CREATE TRIGGER {ad} AFTER DELETE ON {t} {when} BEGIN\n{}\nEND;\n",
            body("NEW", &keys_of("NEW")),
            body("NEW", &updated),
            body("OLD", &keys_of("OLD")),
        )
    };
    format!(
        "{capture}\
         CREATE TRIGGER {idt} BEFORE UPDATE OF \"id\" ON {t} WHEN OLD.\"id\" IS NOT NEW.\"id\" BEGIN \
         SELECT RAISE(ABORT, 'tidemark: record ids cannot change; delete and insert instead'); END;\n\
         CREATE TRIGGER {bi} BEFORE INSERT ON {t} WHEN length(NEW.\"id\") IS NOT 15 OR NEW.\"id\" GLOB '*[^a-z0-9]*' BEGIN \
         SELECT RAISE(ABORT, 'tidemark: a record id is 15 characters of a-z0-9'); END;\n",
    )
}
