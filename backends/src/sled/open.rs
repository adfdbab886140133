//! Opening a store: the directory lock, the format (and the upgrade from format
//! 1), the schema merge, this open's writer, and what pulls parked for the
//! collections the schema now declares.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ::sled::transaction::TransactionalTree;
use ::sled::{Db, IVec, Transactional};
use serde::Deserialize;
use sync_traits::{RecordId, RemoteState, StoreError};

use super::{
    corrupt, record_id_of, sled_err, to_json, tx_err, u64_of, Entry, Shared, SledOptions, Tx,
    FIXED, FORMAT, FORMAT_V1, META, OUTBOX, PARKED, WRITERS,
};
use crate::schema::{CollectionSchema, Schema};

/// Opens the sled directory at `path`, waiting (bounded) for a lock a just-closed
/// store's flusher still holds.
pub(super) fn open_dir(
    path: &Path,
    schema: Schema,
    opts: SledOptions,
) -> Result<Shared, StoreError> {
    schema.validate()?;
    let path = path.to_owned();
    let cap = opts.cache_capacity;
    // sled's background flusher can hold the directory lock for a moment after
    // the last handle of a previous store was dropped: wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let db = loop {
        let p = path.clone();
        // sled panics on some kinds of damaged files instead of returning an error.
        let opened = std::panic::catch_unwind(move || {
            ::sled::Config::new().path(p).cache_capacity(cap).open()
        })
        .map_err(|_| corrupt("sled could not read the database"))?;
        match opened {
            Ok(db) => break db,
            // sled reports a held lock either as WouldBlock or as an Other error
            // that only says so in its message.
            Err(::sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Busy(
                        format!(
                            "sled database {} is locked by another process or store: {io}",
                            path.display()
                        )
                        .into(),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(::sled::Error::Io(io)) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot open as a sled database: {io}"
                )))
            }
            Err(other) => return Err(sled_err(other)),
        }
    };
    init(db, schema, opts.flush_every_write)
}

/// A store in a temporary sled database.
pub(super) fn open_temporary(schema: Schema) -> Result<Shared, StoreError> {
    schema.validate()?;
    let db = ::sled::Config::new()
        .temporary(true)
        .open()
        .map_err(sled_err)?;
    init(db, schema, false)
}

/// An outbox entry of format 1: its change id's client was the store's one
/// client id.
#[derive(Deserialize)]
struct EntryV1 {
    collection: String,
    id: RecordId,
    n: u64,
    base: Option<u64>,
    changed: std::collections::BTreeSet<String>,
}

/// A writer as stored: first counter, then its place in the order of opens.
fn writer_value(first: u64, ordinal: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&first.to_be_bytes());
    v[8..].copy_from_slice(&ordinal.to_be_bytes());
    v
}

/// Every writer the database had, in the order of opens, with its first counter
/// and its ordinal.
fn load_writers(tree: &::sled::Tree) -> Result<Vec<(RecordId, u64, u64)>, StoreError> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item.map_err(sled_err)?;
        if v.len() != 16 {
            return Err(corrupt("a writer record has the wrong length"));
        }
        let first = u64_of(&v[..8])?;
        let ordinal = u64_of(&v[8..])?;
        out.push((record_id_of(&k)?, first, ordinal));
    }
    out.sort_by_key(|w| w.2);
    Ok(out)
}

/// Format 1 → 2, in one transaction: the client id becomes the first writer
/// (first counter 1), outbox entries name it, the conflict log's counter starts.
fn upgrade_v1(trees: &[::sled::Tree]) -> Result<(), StoreError> {
    let meta = &trees[META];
    let client = meta
        .get("client")
        .map_err(sled_err)?
        .ok_or_else(|| corrupt("client id missing"))?;
    let client = std::str::from_utf8(&client)
        .ok()
        .and_then(|s| RecordId::parse(s).ok())
        .ok_or_else(|| corrupt("client id is invalid"))?;
    let mut entries: Vec<(IVec, Vec<u8>)> = Vec::new();
    for item in trees[OUTBOX].iter() {
        let (k, v) = item.map_err(sled_err)?;
        let e: EntryV1 =
            serde_json::from_slice(&v).map_err(|e| corrupt(format!("outbox entry: {e}")))?;
        let e = Entry {
            collection: e.collection,
            id: e.id,
            client: client.clone(),
            n: e.n,
            base: e.base,
            changed: e.changed,
            tx: None,
        };
        entries.push((k, to_json(&e)?));
    }
    trees
        .transaction(|t: &Vec<TransactionalTree>| {
            t[WRITERS].insert(client.as_str(), &writer_value(1, 0))?;
            for (k, v) in &entries {
                t[OUTBOX].insert(k, v.as_slice())?;
            }
            if t[META].get("conflict_seq")?.is_none() {
                t[META].insert("conflict_seq", &0u64.to_be_bytes())?;
            }
            t[META].remove("client")?;
            t[META].insert("format", FORMAT)?;
            Ok(())
        })
        .map_err(tx_err)
}

/// The stored collections merged with `schema` ([`crate::rules::merge_collection`]):
/// new collections and fields are added; a field's kind and whether a collection
/// is local-only never change (refused).
fn merge_schema(
    stored: Vec<CollectionSchema>,
    schema: &Schema,
) -> Result<Vec<CollectionSchema>, StoreError> {
    let mut effective = stored;
    for c in &schema.collections {
        match effective.iter_mut().find(|e| e.name == c.name) {
            None => effective.push(c.clone()),
            Some(old) => {
                let (merged, _) = crate::rules::merge_collection(old, c)?;
                *old = merged;
            }
        }
    }
    Ok(effective)
}

fn init(db: Db, schema: Schema, flush: bool) -> Result<Shared, StoreError> {
    let names = db.tree_names();
    let has_meta = names.iter().any(|n| n.as_ref() == b"meta");
    if !has_meta {
        let foreign = names.len() > 1 || !db.is_empty();
        if foreign {
            return Err(corrupt("the sled database is not a tidemark store"));
        }
    }
    let mut trees = Vec::new();
    for name in FIXED {
        trees.push(db.open_tree(name).map_err(sled_err)?);
    }
    let meta = trees[META].clone();
    if has_meta {
        let format = meta.get("format").map_err(sled_err)?;
        match format.as_deref() {
            Some(f) if f == FORMAT => {}
            Some(f) if f == FORMAT_V1 => upgrade_v1(&trees)?,
            _ => return Err(corrupt("unsupported or missing tidemark store format")),
        }
    } else {
        let mut b = ::sled::Batch::default();
        for k in [
            "counter",
            "outbox_seq",
            "q_seq",
            "conflict_seq",
            "watermark",
            "resyncing",
        ] {
            b.insert(k, &0u64.to_be_bytes());
        }
        b.insert("format", FORMAT);
        meta.apply_batch(b).map_err(sled_err)?;
    }

    // Stored collections, merged with the given schema.
    let mut stored: Vec<CollectionSchema> = Vec::new();
    for item in meta.scan_prefix("coll/") {
        let (_, v) = item.map_err(sled_err)?;
        let c: CollectionSchema =
            serde_json::from_slice(&v).map_err(|e| corrupt(format!("stored schema: {e}")))?;
        stored.push(c);
    }
    let effective = merge_schema(stored, &schema)?;
    let mut schema_rows: Vec<(String, Vec<u8>)> = Vec::new();
    let mut colls = HashMap::new();
    for c in effective {
        schema_rows.push((format!("coll/{}", c.name), to_json(&c)?));
        colls.insert(c.name.clone(), (trees.len(), c.clone()));
        trees.push(db.open_tree(format!("c/{}", c.name)).map_err(sled_err)?);
    }

    // This open's writer: a fresh id, from the counter on.
    let old = load_writers(&trees[WRITERS])?;
    let counter = match meta.get("counter").map_err(sled_err)? {
        Some(v) => u64_of(&v)?,
        None => return Err(corrupt("metadata counter missing")),
    };
    let ordinal = old.last().map_or(0, |w| w.2 + 1);
    let writer = sync_traits::new_id();
    let first = counter + 1;
    let mut writers: Vec<(RecordId, u64)> = old.into_iter().map(|(w, f, _)| (w, f)).collect();
    writers.push((writer.clone(), first));

    // What pulls parked for the collections now declared (and synced).
    let mut parked: Vec<(IVec, String, RecordId, RemoteState)> = Vec::new();
    for (name, (_, c)) in &colls {
        if c.local_only {
            continue;
        }
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        for item in trees[PARKED].scan_prefix(&prefix) {
            let (k, v) = item.map_err(sled_err)?;
            let id = record_id_of(&k[prefix.len()..])?;
            let state: RemoteState = v
                .get(8..)
                .and_then(|j| serde_json::from_slice(j).ok())
                .ok_or_else(|| corrupt("a parked record is unreadable"))?;
            parked.push((k, name.clone(), id, state));
        }
    }

    let shared = Shared {
        db,
        trees,
        colls,
        writers,
        client: writer.clone(),
        write_lock: Mutex::new(()),
        flush,
        hub: sync_traits::ChangeHub::new(),
    };
    shared.trees[..]
        .transaction(|t: &Vec<TransactionalTree>| {
            let tx = Tx::new(t, &shared);
            // The schema, this open's writer and the parked records: one commit.
            for (k, v) in &schema_rows {
                t[META].insert(k.as_bytes(), v.as_slice())?;
            }
            t[WRITERS].insert(writer.as_str(), &writer_value(first, ordinal))?;
            let resyncing = tx.meta("resyncing")? != 0;
            for (k, coll, id, state) in &parked {
                t[PARKED].remove(k)?;
                let rk = super::key(coll, id.as_str());
                // A resync since forgot everything parked before it, so this was
                // delivered by the resync under way: it is seen.
                if resyncing {
                    tx.mark_seen(&rk)?;
                }
                // The rule of a pulled page: a pending local change is not
                // overwritten, an older version is stale, one at the known
                // version applies again.
                let what = crate::rules::decide(
                    crate::rules::Holds::Held,
                    || tx.has_entry(&rk),
                    || tx.version(&rk),
                    state.version.0,
                )?;
                if what == crate::rules::What::Apply {
                    tx.set_server_state(coll, id, state)?;
                }
            }
            Ok(())
        })
        .map_err(tx_err)?;
    shared.db.flush().map_err(sled_err)?;
    Ok(shared)
}
