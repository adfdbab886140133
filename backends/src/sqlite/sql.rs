//! The store's fixed SQL: metadata tables, the statements every call uses, quoting
//! and error mapping.

use rusqlite::ErrorCode;
use sync_traits::{Cause, StoreError};

pub(super) const FORMAT: &str = "tidemark-sqlite/1";

/// The tables of a new store. Tables added since the first release of the format
/// are in [`LATER_DDL`], which every open runs (`IF NOT EXISTS`), so a store from
/// an earlier release gains them in its open transaction.
pub(super) const META_DDL: &str = r#"
CREATE TABLE "_tidemark_meta" (
  "key" TEXT PRIMARY KEY NOT NULL,
  "value"
) WITHOUT ROWID;
CREATE TABLE "_tidemark_collections" (
  "name" TEXT PRIMARY KEY NOT NULL,
  "schema" TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE "_tidemark_outbox" (
  "seq" INTEGER PRIMARY KEY AUTOINCREMENT,
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  "change_n" INTEGER NOT NULL,
  "base" INTEGER,
  "changed" TEXT NOT NULL DEFAULT '[]',
  UNIQUE ("collection", "id")
);
CREATE TABLE "_tidemark_versions" (
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  "version" INTEGER NOT NULL,
  "seen" INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY ("collection", "id")
) WITHOUT ROWID;
CREATE TABLE "_tidemark_seen" (
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  PRIMARY KEY ("collection", "id")
) WITHOUT ROWID;
CREATE TABLE "_tidemark_quarantine" (
  "n" INTEGER PRIMARY KEY AUTOINCREMENT,
  "change" TEXT NOT NULL,
  "rejection" TEXT NOT NULL
);
"#;

/// Tables added after the format's first release.
///
/// - `_tidemark_writers`: every writer id (incarnation) the store had, in the order
///   it took them (`n`), with the first change counter each issued. A writer's
///   counters run from its `first` to the next writer's `first` - 1 (the current
///   writer's to the current counter).
/// - `_tidemark_conflicts`: the conflict log, one JSON [`sync_traits::Conflict`]
///   per row; AUTOINCREMENT, so a cleared id is never handed out again.
/// - `_tidemark_parked`: the newest pulled state of each record of a collection
///   the schema does not declare (fields as JSON, NULL for a tombstone).
/// - `_tidemark_unstamped`: the outbox entries (by `seq`) a capture trigger
///   wrote or coalesced: their counter may be one another copy of the file also
///   issued, so the next open gives them counters of its own fresh writer (see
///   the module docs, *Writes with plain SQL*). A `seq` no longer in the outbox is
///   ignored (outbox seqs are never reused).
/// - `_tidemark_outbox_tx`: the transaction mark ([`sync_traits::TxMark`]) of
///   each outbox entry (by `seq`) a multi-record transaction wrote: its id and
///   the highest seq it wrote. Removed with the entry.
pub(super) const LATER_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS "_tidemark_outbox_tx" (
  "seq" INTEGER PRIMARY KEY,
  "tx" INTEGER NOT NULL,
  "last" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "_tidemark_unstamped" (
  "seq" INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS "_tidemark_writers" (
  "n" INTEGER PRIMARY KEY,
  "writer" TEXT NOT NULL UNIQUE,
  "first" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "_tidemark_conflicts" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT,
  "conflict" TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "_tidemark_parked" (
  "collection" TEXT NOT NULL,
  "id" TEXT NOT NULL,
  "version" INTEGER NOT NULL,
  "fields" TEXT,
  PRIMARY KEY ("collection", "id")
) WITHOUT ROWID;
"#;

pub(super) const GET_META: &str = r#"SELECT "value" FROM "_tidemark_meta" WHERE "key" = ?1"#;
pub(super) const SET_META: &str = r#"UPDATE "_tidemark_meta" SET "value" = ?2 WHERE "key" = ?1"#;
pub(super) const BUMP_COUNTER: &str = r#"UPDATE "_tidemark_meta" SET "value" = "value" + 1 WHERE "key" = 'counter' RETURNING "value""#;
pub(super) const OUTBOX_FOR: &str = r#"SELECT "seq", "change_n", "changed" FROM "_tidemark_outbox" WHERE "collection" = ?1 AND "id" = ?2"#;
pub(super) const OUTBOX_EXISTS: &str =
    r#"SELECT 1 FROM "_tidemark_outbox" WHERE "collection" = ?1 AND "id" = ?2"#;
pub(super) const OUTBOX_INSERT: &str = r#"INSERT INTO "_tidemark_outbox" ("collection", "id", "change_n", "base", "changed") VALUES (?1, ?2, ?3, ?4, ?5)"#;
pub(super) const OUTBOX_COALESCE: &str =
    r#"UPDATE "_tidemark_outbox" SET "change_n" = ?2, "changed" = ?3 WHERE "seq" = ?1"#;
pub(super) const OUTBOX_SET_BASE: &str =
    r#"UPDATE "_tidemark_outbox" SET "base" = ?2 WHERE "seq" = ?1"#;
pub(super) const OUTBOX_RENUMBER: &str =
    r#"UPDATE "_tidemark_outbox" SET "change_n" = ?2 WHERE "seq" = ?1"#;
pub(super) const OUTBOX_DELETE: &str = r#"DELETE FROM "_tidemark_outbox" WHERE "seq" = ?1"#;
pub(super) const OUTBOX_PAGE: &str = r#"SELECT "seq", "collection", "id", "change_n", "base", "changed" FROM "_tidemark_outbox" WHERE "seq" > ?1 ORDER BY "seq" LIMIT ?2"#;
pub(super) const VERSION_GET: &str =
    r#"SELECT "version" FROM "_tidemark_versions" WHERE "collection" = ?1 AND "id" = ?2"#;
pub(super) const VERSION_RAISE: &str = r#"INSERT INTO "_tidemark_versions" ("collection", "id", "version") VALUES (?1, ?2, ?3) ON CONFLICT ("collection", "id") DO UPDATE SET "version" = excluded."version" WHERE excluded."version" > "version""#;
/// What `apply_remote` records for a change it applies: the version, and (in the
/// same row, so a resync costs no extra b-tree) the resync epoch that saw it.
/// A change at the known version applies again (it is the server's copy of what was
/// acked); only an older one is stale.
pub(super) const VERSION_APPLY: &str = r#"INSERT INTO "_tidemark_versions" ("collection", "id", "version", "seen") VALUES (?1, ?2, ?3, ?4) ON CONFLICT ("collection", "id") DO UPDATE SET "version" = excluded."version", "seen" = excluded."seen" WHERE excluded."version" >= "version""#;
/// Seen marks for the (rare) records a resync sees without applying them: stale or
/// deferred behind a pending local change.
pub(super) const SEEN_MARK: &str =
    r#"INSERT INTO "_tidemark_seen" ("collection", "id") VALUES (?1, ?2) ON CONFLICT DO NOTHING"#;
/// Keeps the newest pulled state of a record of an undeclared collection.
pub(super) const PARK: &str = r#"INSERT INTO "_tidemark_parked" ("collection", "id", "version", "fields") VALUES (?1, ?2, ?3, ?4) ON CONFLICT ("collection", "id") DO UPDATE SET "version" = excluded."version", "fields" = excluded."fields" WHERE excluded."version" > "version""#;
pub(super) const WRITERS: &str =
    r#"SELECT "writer", "first" FROM "_tidemark_writers" ORDER BY "n""#;
pub(super) const QUARANTINE_INSERT: &str =
    r#"INSERT INTO "_tidemark_quarantine" ("change", "rejection") VALUES (?1, ?2)"#;
pub(super) const CONFLICT_INSERT: &str =
    r#"INSERT INTO "_tidemark_conflicts" ("conflict") VALUES (?1)"#;

/// A version as stored: SQLite integers are signed 64-bit, so versions are capped
/// at `i64::MAX` (a server seq never gets near it).
pub(super) fn sql_version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored non-negative integer (version, counter, seq) as `u64`; a negative one
/// (only plain SQL could write it) reads as 0.
pub(super) fn stored_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Quotes an SQL identifier.
pub(super) fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub(super) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) fn sql_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return StoreError::Corrupt(e.to_string())
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::Busy(Cause::of(e))
            }
            _ => {}
        }
    }
    StoreError::Backend(Cause::of(e))
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Serialises one of the store's own values (never fails for them; mapped to a
/// backend error rather than a panic all the same).
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(Cause::of(e)))
}

/// Reads back one of the store's own JSON values; a value that does not parse is
/// damage to the file.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

/// Refuses a file whose tidemark metadata names another store format.
pub(super) fn check_format(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let format: Option<String> = conn
        .query_row(GET_META, ["format"], |r| r.get(0))
        .optional()
        .map_err(|e| corrupt(format!("bad tidemark metadata: {e}")))?;
    if format.as_deref() != Some(FORMAT) {
        return Err(corrupt(format!(
            "unsupported tidemark store format {format:?} (expected {FORMAT})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use rusqlite::ffi;

    use super::*;

    /// A mapped error keeps rusqlite's as its source (an app can downcast it).
    #[test]
    fn mapped_errors_keep_rusqlite_as_their_source() {
        let busy = sql_err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        ));
        assert!(matches!(busy, StoreError::Busy(_)) && busy.is_transient());
        let other = sql_err(rusqlite::Error::InvalidQuery);
        assert!(matches!(other, StoreError::Backend(_)));
        for e in [busy, other] {
            let cause = e.source().expect("the cause");
            let beneath = cause.source().expect("rusqlite's error");
            assert!(
                beneath.downcast_ref::<rusqlite::Error>().is_some(),
                "{beneath:?}"
            );
        }
    }
}
