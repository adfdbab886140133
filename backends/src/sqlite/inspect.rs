//! [`SqliteStore::inspect`]: a store file read through a read-only connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use sync_traits::{RecordId, StoreError, SyncState, Watermark};

use super::core::Core;
use super::sql::{corrupt, from_json, sql_err, stored_u64, GET_META};
use super::table::Table;
use super::SqliteStore;
use crate::inspect::{CollectionInfo, Inspection};
use crate::schema::CollectionSchema;

impl SqliteStore {
    /// Reads what the store file at `path` holds — every stored collection with
    /// its record count, the watermark, the outbox size, the quarantine and the
    /// conflict log — through a read-only connection, in one read transaction.
    ///
    /// Never writes: no table is created, no writer id taken, no schema migrated,
    /// and a missing file is not created. A store no connection has open is read
    /// as an immutable file, leaving no `-wal` or `-shm` file behind; one that is
    /// open elsewhere (its `-wal` file exists) is read like any WAL reader, and its
    /// writer goes on meanwhile.
    ///
    /// Errors: [`StoreError::Backend`] if the file cannot be opened (missing,
    /// unreadable), [`StoreError::Corrupt`] if it is not a tidemark SQLite store.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, StoreError> {
        let path = path.as_ref();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let cannot = |e: rusqlite::Error| {
            StoreError::Backend(format!("cannot open {}: {e}", path.display()).into())
        };
        if !path.is_file() {
            return Err(StoreError::Backend(
                format!("cannot open {}: no such file", path.display()).into(),
            ));
        }
        // Without a `-wal` file every committed transaction is in the main file (no
        // connection has the store open, or the last one checkpointed and removed
        // the log on close), and a read-only WAL connection would leave a `-shm`
        // and an empty `-wal` behind: read it as immutable, which creates nothing.
        // With one, another connection may be writing: read through its WAL index
        // like any reader.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let conn = if Path::new(&wal).exists() {
            Connection::open_with_flags(path, flags).map_err(cannot)?
        } else {
            Connection::open_with_flags(immutable_uri(path), flags).map_err(cannot)?
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_err)?;
        // One read transaction, so every figure comes from one state of the file.
        conn.execute_batch("BEGIN").map_err(sql_err)?;
        read(conn)
    }
}

/// `file:<path>?immutable=1`, with the characters a URI path cannot hold escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
    .map_err(sql_err)
}

fn read(conn: Connection) -> Result<Inspection, StoreError> {
    if !has_table(&conn, "_tidemark_meta")? {
        return Err(corrupt("the database is not a tidemark store"));
    }
    super::sql::check_format(&conn)?;
    let writer: Option<String> = conn
        .query_row(GET_META, ["client"], |r| r.get(0))
        .optional()
        .map_err(sql_err)?;
    let writer = match writer {
        Some(w) => Some(RecordId::parse(&w).map_err(|e| corrupt(format!("client id: {e}")))?),
        None => None,
    };
    let mut tables = HashMap::new();
    {
        let mut st = conn
            .prepare(r#"SELECT "name", "schema" FROM "_tidemark_collections" ORDER BY "name""#)
            .map_err(sql_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql_err)?;
        for row in rows {
            let (name, js) = row.map_err(sql_err)?;
            let c: CollectionSchema = from_json(&format!("stored schema of {name}"), &js)?;
            tables.insert(name, Table::new(c));
        }
    }
    let has_conflicts = has_table(&conn, "_tidemark_conflicts")?;
    // The store's own read functions, on this read-only connection. The writer id
    // is only a placeholder: nothing here stamps a change.
    let core = Core {
        hub: sync_traits::ChangeHub::new(),
        conn: Mutex::new(conn),
        client: writer.clone().unwrap_or_else(sync_traits::new_id),
        tables,
    };
    let mut names: Vec<&String> = core.tables.keys().collect();
    names.sort();
    let mut collections = Vec::new();
    for name in names {
        collections.push(CollectionInfo {
            name: name.clone(),
            local_only: core.tables[name].schema.local_only,
            records: core.count(name)?,
        });
    }
    let state = {
        let conn = core.lock();
        SyncState {
            watermark: Watermark(stored_u64(Core::meta_i64(&conn, "watermark")?)),
            resyncing: Core::meta_i64(&conn, "resyncing")? != 0,
        }
    };
    let out = Inspection {
        collections,
        state,
        writer,
        outbox: core.pending_count()?,
        quarantined: core.quarantined()?,
        conflicts: if has_conflicts {
            core.conflicts()?
        } else {
            Vec::new()
        },
    };
    core.lock().execute_batch("COMMIT").map_err(sql_err)?;
    Ok(out)
}
