//! How results and errors are printed: text for people, or one JSON object on
//! stdout for scripts (`--json`).

use serde_json::{json, Value};
use sync_traits::{LoggedConflict, Quarantined, Resolution, SyncError, SyncReport};

use super::kind_name;

/// Text or JSON.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints `e`: `{"ok": false, "exit": code, "kind": ..., "error": ..., "report": ...}`
    /// on stdout with `--json` (`report`: what a sync did before it failed, or
    /// null), else `error: ...` on stderr.
    pub fn error(&self, e: &anyhow::Error, code: u8) {
        if self.json {
            let done = e
                .chain()
                .find_map(|c| c.downcast_ref::<SyncError>())
                .and_then(SyncError::done)
                .map(report_json);
            println!(
                "{}",
                json!({
                    "ok": false,
                    "exit": code,
                    "kind": kind_name(code),
                    "error": format!("{e:#}"),
                    "report": done,
                })
            );
        } else {
            eprintln!("error: {e:#}");
        }
    }
}

/// A [`SyncReport`] as JSON (its fields by name).
/// Prints `items` as one JSON object (`{"ok": true, key: [...]}`) with `--json`,
/// else a line each, or `empty` when there are none.
pub(crate) fn print_list<T>(
    out: Output,
    key: &str,
    items: &[T],
    as_json: impl Fn(&T) -> Value,
    as_line: impl Fn(&T) -> String,
    empty: &str,
) {
    if out.json {
        let list: Vec<Value> = items.iter().map(as_json).collect();
        println!("{}", json!({ "ok": true, key: list }));
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        for i in items {
            println!("{}", as_line(i));
        }
    }
}

pub(crate) fn report_json(r: &SyncReport) -> Value {
    json!({
        "pushed": r.pushed,
        "pulled": r.pulled,
        "applied": r.applied,
        "conflicts": r.conflicts,
        "rejected": r.rejected,
        "resynced": r.resynced,
        "remaining": r.remaining,
        "unsynced": r.unsynced,
        "skipped": r.skipped,
        "mistyped": r.mistyped,
    })
}

/// A quarantined change as JSON: `{"id", "collection", "record", "change_id",
/// "op": "upsert"|"delete", "data", "message", "fields"}`.
pub(crate) fn quarantined_json(q: &Quarantined) -> Value {
    let (op, data) = match &q.change.op {
        sync_traits::Op::Upsert(f) => ("upsert", Value::Object(f.clone())),
        sync_traits::Op::Delete => ("delete", Value::Null),
    };
    json!({
        "id": q.id,
        "collection": q.change.collection,
        "record": q.change.id.as_str(),
        "change_id": q.change.change_id.to_string(),
        "op": op,
        "data": data,
        "message": q.rejection.message,
        "fields": q.rejection.fields,
    })
}

/// What a resolution did, in words.
pub(crate) fn resolution_name(r: &Resolution) -> &'static str {
    match r {
        Resolution::TakeServer => "server",
        Resolution::KeepLocal => "client",
        Resolution::Replace(_) => "merged",
        _ => "resolved",
    }
}

/// What a resolution did, in a phrase ("took the server's record").
pub(crate) fn resolution_phrase(r: &Resolution) -> &'static str {
    match r {
        Resolution::TakeServer => "took the server's record",
        Resolution::KeepLocal => "kept the local change",
        Resolution::Replace(_) => "merged field by field",
        _ => "resolved by the policy",
    }
}

/// A logged conflict as JSON: `{"id", "collection", "record", "changed",
/// "server_version", "resolution": "server"|"client"|"merged", "local", "server"}`.
pub(crate) fn conflict_json(c: &LoggedConflict) -> Value {
    let k = &c.conflict;
    let local = match &k.local.op {
        sync_traits::Op::Upsert(f) => Value::Object(f.clone()),
        sync_traits::Op::Delete => Value::Null,
    };
    json!({
        "id": c.id,
        "collection": k.local.collection,
        "record": k.local.id.as_str(),
        "changed": k.local.changed,
        "server_version": k.server.version.0,
        "resolution": resolution_name(&k.resolution),
        "local": local,
        "server": k.server.fields,
    })
}

/// One line about a quarantined change.
pub(crate) fn quarantined_line(q: &Quarantined) -> String {
    let op = match q.change.op {
        sync_traits::Op::Upsert(_) => "write",
        sync_traits::Op::Delete => "delete",
    };
    let fields: Vec<String> = q
        .rejection
        .fields
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect();
    format!(
        "#{} {} of {}/{}: {}{}",
        q.id,
        op,
        q.change.collection,
        q.change.id,
        q.rejection.message,
        if fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", fields.join("; "))
        }
    )
}

/// One line about a logged conflict.
pub(crate) fn conflict_line(c: &LoggedConflict) -> String {
    let k = &c.conflict;
    let changed: Vec<&str> = k.local.changed.iter().map(String::as_str).collect();
    format!(
        "#{} {}/{}: local change to [{}] met server version {}; {}",
        c.id,
        k.local.collection,
        k.local.id,
        changed.join(", "),
        k.server.version.0,
        resolution_phrase(&k.resolution)
    )
}
