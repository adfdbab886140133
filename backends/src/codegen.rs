//! Rust source for an app's model, generated from a remote's schema (what
//! `tidemark generate` writes).
//!
//! It lives beside [`Schema::from_remote`](crate::Schema::from_remote) so the
//! generated `schema()` is, field for field, the schema the store would be opened
//! with from the server; and it takes the neutral [`RemoteSchema`], so any remote
//! that can describe itself can feed it.
//!
//! The module holds, sorted by collection name (fields in the server's order):
//! - a constant per collection name (`pub const KITCHEN: &str = "kitchen";`);
//! - one serde struct per collection with typed fields, its `id` (a `String`,
//!   filled by `Record::to_typed`), optional fields (not `required` on the server)
//!   as `Option` (left out when `None`), each select's values as constants
//!   (`Kitchen::COURSE_MAIN`);
//! - `pub fn schema() -> <backends>::Schema`, the collections' store schema.
//!
//! Field types: text, editor, email, url, date → `String`; autodate →
//! `Option<String>` (the server sets it); number → `f64` (`i64` with `onlyInt`);
//! bool → `bool`; select → `String` (`Vec<String>` for several); relation → the
//! record id as `String` (`Vec<String>`); file → the file name as `String`
//! (`Vec<String>`; the bytes stay on the server); json and unknown types →
//! `serde_json::Value`; geoPoint → the module's `GeoPoint { lon, lat }`.
//!
//! An app reads and writes the structs through the typed handle,
//! `store.collection::<Kitchen>(KITCHEN)` (`sync_traits::LocalStoreExt`): reads
//! fill `id`, `put` writes under it and `insert` gives a value with an empty `id`
//! a new one (`backends/tests/typed.rs` uses a generated module unchanged).
//!
//! The output is deterministic (same schema, same text) and rustfmt-clean. The
//! crate using it needs `serde` (with `derive`) and `serde_json`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use heck::{ToPascalCase, ToShoutySnakeCase, ToSnakeCase};
use sync_traits::{RemoteCollection, RemoteFieldKind, RemoteSchema};

use crate::remote_schema::field_kind;
use crate::schema::FieldKind;

/// How to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The path of the backends crate in the generated code: `tidemark::backends`
    /// (the facade, the default) or `tidemark_backends`.
    pub backends_path: String,
    /// Where the schema came from, for the header comment (e.g. "the server's
    /// synced collections" or a file name); keep it free of what varies between
    /// runs (ports, dates) so the output only changes with the schema.
    pub source: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backends_path: "tidemark::backends".into(),
            source: "the server's synced collections".into(),
        }
    }
}

/// Rust keywords (2021 edition, strict and reserved) a field name must not be.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// A Rust identifier for `name` in `case`, made unique among `taken`.
fn ident(name: &str, snake: bool, taken: &mut BTreeSet<String>) -> String {
    let mut base = if snake {
        name.to_snake_case()
    } else {
        name.to_pascal_case()
    };
    base.retain(|c| c.is_ascii_alphanumeric() || c == '_');
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base = if snake {
            format!("f_{base}")
        } else {
            format!("C{base}")
        };
    }
    if snake && (base == "id" || base == "self" || base == "super" || base == "crate") {
        base.push('_');
    }
    if !snake && taken.contains(&base) {
        base.push_str("Record");
    }
    let mut out = base.clone();
    let mut n = 2;
    while taken.contains(&out) {
        out = format!("{base}_{n}");
        n += 1;
    }
    taken.insert(out.clone());
    if snake && KEYWORDS.contains(&out.as_str()) {
        format!("r#{out}")
    } else {
        out
    }
}

/// A Rust string literal for `s`.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// The Rust type of a required field of this kind, and whether it is the point type.
fn rust_type(kind: &RemoteFieldKind, point: &str) -> String {
    match kind {
        RemoteFieldKind::Text
        | RemoteFieldKind::Editor
        | RemoteFieldKind::Email
        | RemoteFieldKind::Url
        | RemoteFieldKind::Date
        | RemoteFieldKind::Autodate => "String".into(),
        RemoteFieldKind::Number { only_int: true } => "i64".into(),
        RemoteFieldKind::Number { only_int: false } => "f64".into(),
        RemoteFieldKind::Bool => "bool".into(),
        RemoteFieldKind::Select { multiple, .. }
        | RemoteFieldKind::Relation { multiple, .. }
        | RemoteFieldKind::File { multiple } => {
            if *multiple {
                "Vec<String>".into()
            } else {
                "String".into()
            }
        }
        RemoteFieldKind::GeoPoint => point.into(),
        // Json, unknown types, and kinds a later version of sync-traits adds.
        _ => "serde_json::Value".into(),
    }
}

fn kind_path(k: FieldKind) -> &'static str {
    match k {
        FieldKind::Text => "FieldKind::Text",
        FieldKind::Number => "FieldKind::Number",
        FieldKind::Bool => "FieldKind::Bool",
        FieldKind::Date => "FieldKind::Date",
        FieldKind::Json => "FieldKind::Json",
        FieldKind::Relation => "FieldKind::Relation",
        FieldKind::Relations => "FieldKind::Relations",
    }
}

/// What a field of this kind holds, for its doc comment.
fn describe(kind: &RemoteFieldKind) -> String {
    match kind {
        RemoteFieldKind::Relation {
            collection,
            multiple,
        } => format!(
            "relation to `{collection}`: {}",
            if *multiple {
                "record ids"
            } else {
                "a record id or \"\""
            }
        ),
        RemoteFieldKind::File { multiple } => format!(
            "file: {} (the bytes stay on the server)",
            if *multiple {
                "file names"
            } else {
                "a file name or \"\""
            }
        ),
        RemoteFieldKind::Select { multiple, .. } => format!(
            "select: {}",
            if *multiple {
                "several values"
            } else {
                "one value or \"\""
            }
        ),
        RemoteFieldKind::Autodate => "autodate: set by the server".into(),
        RemoteFieldKind::Number { only_int: true } => "number (integers only)".into(),
        k => k.type_name().to_owned(),
    }
}

/// Generates the module for `schema` (see the module docs).
pub fn generate(schema: &RemoteSchema, opts: &Options) -> String {
    let schema = schema.clone().sorted();
    // Names the module uses itself: a collection named like one gets `Record` appended.
    let mut type_names: BTreeSet<String> = [
        "Schema",
        "Field",
        "FieldKind",
        "CollectionSchema",
        "Serialize",
        "Deserialize",
        "String",
        "Vec",
        "Option",
        "Default",
        "Clone",
        "Debug",
        "PartialEq",
        "Self",
        "Box",
        "Result",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut const_names = BTreeSet::new();
    let structs: Vec<String> = schema
        .collections
        .iter()
        .map(|c| ident(&c.name, false, &mut type_names))
        .collect();
    let consts: Vec<String> = schema
        .collections
        .iter()
        .map(|c| {
            let mut s = c.name.to_shouty_snake_case();
            s.retain(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if s.is_empty() || s.starts_with(|ch: char| ch.is_ascii_digit()) {
                s = format!("C_{s}");
            }
            let mut out = s.clone();
            let mut n = 2;
            while !const_names.insert(out.clone()) {
                out = format!("{s}_{n}");
                n += 1;
            }
            out
        })
        .collect();
    let uses_point = schema
        .collections
        .iter()
        .flat_map(|c| &c.fields)
        .any(|f| f.kind == RemoteFieldKind::GeoPoint);
    let mut point = "GeoPoint".to_owned();
    while type_names.contains(&point) {
        point.insert_str(0, "Pb");
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! Generated by `tidemark generate` from {}.",
        opts.source.replace('\n', " ")
    );
    out.push_str(
        "//! Do not edit: run `tidemark generate` again after the server's schema changes.\n\n\
         // Generated whole: an app uses the items it needs.\n#![allow(dead_code)]\n\n",
    );
    let has_fields = schema.collections.iter().any(|c| !c.fields.is_empty());
    let mut backends = Vec::new();
    if !schema.collections.is_empty() {
        backends.push("CollectionSchema");
    }
    if has_fields {
        backends.extend(["Field", "FieldKind"]);
    }
    backends.push("Schema");
    let mut uses = vec![if backends.len() == 1 {
        format!("use {}::Schema;", opts.backends_path)
    } else {
        format!("use {}::{{{}}};", opts.backends_path, backends.join(", "))
    }];
    if !schema.collections.is_empty() {
        uses.push("use serde::{Deserialize, Serialize};".to_owned());
    }
    uses.sort();
    for u in uses {
        let _ = writeln!(out, "{u}");
    }
    for (c, k) in schema.collections.iter().zip(&consts) {
        let _ = write!(
            out,
            "\n/// The collection `{}`.\npub const {k}: &str = {};\n",
            c.name,
            lit(&c.name)
        );
    }
    if uses_point {
        let _ = write!(
            out,
            "\n/// A geoPoint field's value.\n\
             #[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]\n\
             pub struct {point} {{\n    \
             /// Longitude.\n    pub lon: f64,\n    \
             /// Latitude.\n    pub lat: f64,\n}}\n"
        );
    }
    for ((c, s), k) in schema.collections.iter().zip(&structs).zip(&consts) {
        collection_struct(&mut out, c, s, k, &point);
    }
    out.push_str(
        "\n/// The store schema of these collections (what `Schema::from_remote` makes of\n\
         /// the server's schema).\npub fn schema() -> Schema {\n",
    );
    if schema.collections.is_empty() {
        out.push_str("    Schema::new()\n}\n");
        return out;
    }
    out.push_str("    let mut schema = Schema::new();\n");
    for (c, k) in schema.collections.iter().zip(&consts) {
        if c.fields.is_empty() {
            let _ = writeln!(
                out,
                "    schema.collections.push(CollectionSchema::new({k}));"
            );
            continue;
        }
        let _ = writeln!(out, "    let mut c = CollectionSchema::new({k});");
        for f in &c.fields {
            let (name, kind) = (lit(&f.name), kind_path(field_kind(&f.kind)));
            // rustfmt's fn_call_width: arguments wider than 60 go one per line.
            if "&mut c".len() + 2 + name.len() + 2 + kind.len() <= 60 {
                let _ = writeln!(out, "    add(&mut c, {name}, {kind});");
            } else {
                let _ = writeln!(
                    out,
                    "    add(\n        &mut c,\n        {name},\n        {kind},\n    );"
                );
            }
        }
        out.push_str("    schema.collections.push(c);\n");
    }
    out.push_str("    schema\n}\n");
    if has_fields {
        out.push_str(
            "\nfn add(c: &mut CollectionSchema, name: &str, kind: FieldKind) {\n    c.fields.push(Field {\n        name: name.to_owned(),\n        kind,\n    });\n}\n",
        );
    }
    out
}

fn collection_struct(out: &mut String, c: &RemoteCollection, name: &str, konst: &str, point: &str) {
    let mut fields = BTreeSet::from(["id".to_owned()]);
    let mut selects = Vec::new();
    let _ = write!(
        out,
        "\n/// A record of `{}`.\n\
         #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]\n\
         pub struct {name} {{\n    \
         /// The record's id (`Record::to_typed` fills it; `Record::from_typed` takes the\n    \
         /// record's own).\n    #[serde(default)]\n    pub id: String,\n",
        c.name
    );
    for f in &c.fields {
        let id = ident(&f.name, true, &mut fields);
        let bare = id.trim_start_matches("r#");
        let ty = rust_type(&f.kind, point);
        let optional = !f.required || f.kind == RemoteFieldKind::Autodate;
        let _ = writeln!(
            out,
            "    /// `{}`: {}{}.",
            f.name,
            describe(&f.kind),
            if f.required { ", required" } else { "" }
        );
        let mut args = vec!["default".to_owned()];
        if optional {
            args.push("skip_serializing_if = \"Option::is_none\"".into());
        }
        if bare != f.name {
            args.push(format!("rename = {}", lit(&f.name)));
        }
        let one_line = format!("    #[serde({})]", args.join(", "));
        if one_line.len() <= 100 {
            let _ = writeln!(out, "{one_line}");
        } else {
            let _ = writeln!(
                out,
                "    #[serde(\n        {}\n    )]",
                args.join(",\n        ")
            );
        }
        if optional {
            let _ = writeln!(out, "    pub {id}: Option<{ty}>,");
        } else {
            let _ = writeln!(out, "    pub {id}: {ty},");
        }
        if let RemoteFieldKind::Select { values, .. } = &f.kind {
            selects.push((bare.to_owned(), f.name.clone(), values.clone()));
        }
    }
    out.push_str("}\n");
    let _ = write!(
        out,
        "\nimpl {name} {{\n    /// Its collection's name.\n    pub const COLLECTION: &'static str = {konst};\n"
    );
    let mut consts = BTreeSet::from(["COLLECTION".to_owned()]);
    for (field, raw, values) in selects {
        let prefix = field.to_shouty_snake_case();
        for (i, v) in values.iter().enumerate() {
            let mut tail = v.to_shouty_snake_case();
            tail.retain(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if tail.is_empty() {
                tail = i.to_string();
            }
            let base = format!("{prefix}_{tail}");
            let mut name = base.clone();
            let mut n = 2;
            while !consts.insert(name.clone()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            let _ = writeln!(out, "\n    /// A value of `{raw}`.");
            let line = format!("    pub const {name}: &'static str = {};", lit(v));
            if line.len() <= 100 {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(
                    out,
                    "    pub const {name}: &'static str =\n        {};",
                    lit(v)
                );
            }
        }
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_traits::RemoteField;

    fn f(name: &str, kind: RemoteFieldKind, required: bool) -> RemoteField {
        RemoteField {
            name: name.into(),
            kind,
            required,
        }
    }

    pub(crate) fn sample() -> RemoteSchema {
        RemoteSchema {
            collections: vec![
                RemoteCollection {
                    name: "shopping_items".into(),
                    fields: vec![
                        f("label", RemoteFieldKind::Text, true),
                        f("type", RemoteFieldKind::Text, false),
                        f("createdAt", RemoteFieldKind::Autodate, false),
                        f(
                            "tags",
                            RemoteFieldKind::Select {
                                values: vec!["a".into(), "b c".into()],
                                multiple: true,
                            },
                            false,
                        ),
                        f("spot", RemoteFieldKind::GeoPoint, false),
                        f("n", RemoteFieldKind::Number { only_int: true }, true),
                        f(
                            "aVeryLongCamelCaseFieldNameThatGoesOnAndOnForever",
                            RemoteFieldKind::Select {
                                values: vec!["x".repeat(80), String::new()],
                                multiple: false,
                            },
                            false,
                        ),
                    ],
                },
                RemoteCollection {
                    name: "empty".into(),
                    fields: vec![],
                },
                RemoteCollection {
                    name: "field".into(),
                    fields: vec![f("string", RemoteFieldKind::Text, true)],
                },
            ],
        }
    }

    #[test]
    fn the_output_is_sorted_deterministic_and_names_are_rust_identifiers() {
        let a = generate(&sample(), &Options::default());
        let mut reversed = sample();
        reversed.collections.reverse();
        assert_eq!(a, generate(&reversed, &Options::default()));
        assert!(a.starts_with("//! Generated by `tidemark generate`"));
        let empty = a.find("pub struct Empty").unwrap();
        let items = a.find("pub struct ShoppingItems").unwrap();
        assert!(empty < items, "collections sorted by name");
        assert!(a.contains("pub const SHOPPING_ITEMS: &str = \"shopping_items\";"));
        assert!(a.contains("pub r#type: Option<String>,"));
        assert!(a.contains("rename = \"createdAt\")]\n    pub created_at: Option<String>,"));
        assert!(a.contains("pub n: i64,"));
        assert!(a.contains("pub label: String,"));
        assert!(a.contains("pub spot: Option<GeoPoint>,"));
        assert!(a.contains("pub const TAGS_A: &'static str = \"a\";"));
        assert!(a.contains("pub const TAGS_B_C: &'static str = \"b c\";"));
        assert!(a.contains("add(&mut c, \"tags\", FieldKind::Json);"));
        assert!(a.contains("use tidemark::backends::{"));
        assert!(
            a.contains("pub struct FieldRecord {"),
            "a name the module uses"
        );
    }

    #[test]
    fn the_output_is_rustfmt_clean() {
        let only_empty = RemoteSchema {
            collections: vec![RemoteCollection {
                name: "bare".into(),
                fields: vec![],
            }],
        };
        for s in [sample(), RemoteSchema::default(), only_empty] {
            let src = generate(&s, &Options::default());
            assert_rustfmt_clean(&src);
        }
    }

    fn assert_rustfmt_clean(src: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("rustfmt")
            .args(["--edition", "2021", "--emit", "stdout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("rustfmt (part of the Rust toolchain) must be on PATH");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(src.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "rustfmt failed on:\n{src}");
        let formatted = String::from_utf8_lossy(&out.stdout);
        let first = formatted
            .lines()
            .zip(src.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        assert_eq!(
            formatted,
            src,
            "generated code is not rustfmt-clean from line {}:\nrustfmt: {:?}\ngenerated: {:?}",
            first + 1,
            formatted.lines().skip(first).take(4).collect::<Vec<_>>(),
            src.lines().skip(first).take(4).collect::<Vec<_>>()
        );
    }
}
