//! The raw SQLite baseline the store is compared with: a plain table
//! `songs(id TEXT PRIMARY KEY, title, artist, order)` in WAL mode with
//! `synchronous = NORMAL` (the store's settings), filled with one prepared `INSERT`
//! per row in one transaction. Included by `benches/stores.rs` and
//! `examples/apply_profile.rs`.

use std::path::Path;

use sync_traits::{Fields, RecordId};

/// A fresh raw database at `path` with the `songs` table.
pub fn raw_sqlite(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        r#"PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
           CREATE TABLE "songs" ("id" TEXT PRIMARY KEY NOT NULL, "title" TEXT, "artist" TEXT, "order" NUMERIC);"#,
    )
    .unwrap();
    c
}

/// Inserts `rows` in one transaction.
pub fn raw_sqlite_insert(c: &mut rusqlite::Connection, rows: &[(RecordId, Fields)]) {
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare_cached(
                r#"INSERT INTO "songs" ("id", "title", "artist", "order") VALUES (?1, ?2, ?3, ?4)"#,
            )
            .unwrap();
        for (id, f) in rows {
            st.execute(rusqlite::params![
                id.as_str(),
                f["title"].as_str(),
                f["artist"].as_str(),
                f["order"].as_i64()
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}
