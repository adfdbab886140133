//! [`SledStore::inspect`]: a store read from a copy of its directory.
//!
//! sled 0.34 has no read-only open (opening recovers and writes its log, takes
//! the directory lock and flushes on close), so the store is copied into a
//! temporary directory, the copy opened and read, and the copy removed.

use std::path::{Path, PathBuf};

use sync_traits::{LoggedConflict, Quarantined, StoreError, SyncState, Watermark};

use super::open::open_dir;
use super::{
    corrupt, sled_err, u64_of, Shared, SledOptions, SledStore, StoredQuarantined, CONFLICTS,
    OUTBOX, QUARANTINE,
};
use crate::inspect::{CollectionInfo, Inspection};
use crate::schema::Schema;

impl SledStore {
    /// Reads what the sled store at `path` holds — every stored collection with its
    /// record count, the watermark, the outbox size, the quarantine and the
    /// conflict log — without writing to `path`: the directory is copied into a
    /// temporary directory, which is opened (with the stored schema) and removed.
    ///
    /// The original is never opened, so nothing there is created, migrated or
    /// locked, and no writer id is taken in it. If another process writes the
    /// store meanwhile, the copy is what a crash at that moment would leave
    /// (sled's recovery makes it consistent): the figures may be a moment behind.
    ///
    /// Errors: [`StoreError::Backend`] if `path` is not a readable directory (or
    /// the copy cannot be made), [`StoreError::Corrupt`] if it is not a tidemark
    /// sled store.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, StoreError> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Err(StoreError::Backend(
                format!("{} is not a sled store directory", path.display()).into(),
            ));
        }
        if !path.join("conf").is_file() {
            return Err(corrupt(format!(
                "{} is not a sled database (no conf file)",
                path.display()
            )));
        }
        let copy = std::env::temp_dir().join(format!(
            "tidemark-inspect-{}-{}",
            std::process::id(),
            sync_traits::new_id()
        ));
        let out = crate::blocking::run(|| {
            copy_dir(path, &copy).map_err(|e| {
                StoreError::Backend(format!("copying {}: {e}", path.display()).into())
            })?;
            let opts = SledOptions {
                flush_every_write: false,
                ..SledOptions::default()
            };
            let shared = open_dir(&copy, Schema::new(), opts)?;
            let out = read(&shared);
            drop(shared);
            out
        });
        let _ = std::fs::remove_dir_all(&copy);
        out
    }
}

fn copy_dir(from: &Path, to: &PathBuf) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn read(s: &Shared) -> Result<Inspection, StoreError> {
    let mut names: Vec<&String> = s.colls.keys().collect();
    names.sort();
    let mut collections = Vec::new();
    for name in names {
        let (i, c) = &s.colls[name];
        collections.push(CollectionInfo {
            name: name.clone(),
            local_only: c.local_only,
            records: s.trees[*i].len(),
        });
    }
    let mut quarantined = Vec::new();
    for item in s.trees[QUARANTINE].iter() {
        let (k, v) = item.map_err(sled_err)?;
        let q: StoredQuarantined =
            serde_json::from_slice(&v).map_err(|e| corrupt(format!("quarantine: {e}")))?;
        quarantined.push(Quarantined {
            id: u64_of(&k)?,
            change: q.change,
            rejection: q.rejection,
        });
    }
    let mut conflicts = Vec::new();
    for item in s.trees[CONFLICTS].iter() {
        let (k, v) = item.map_err(sled_err)?;
        let conflict =
            serde_json::from_slice(&v).map_err(|e| corrupt(format!("conflict log: {e}")))?;
        conflicts.push(LoggedConflict {
            id: u64_of(&k)?,
            conflict,
        });
    }
    Ok(Inspection {
        collections,
        state: SyncState {
            watermark: Watermark(s.meta_u64("watermark")?),
            resyncing: s.meta_u64("resyncing")? != 0,
        },
        // The copy's open took the last writer; the store's own newest is the one
        // before it.
        writer: s.writers.iter().rev().nth(1).map(|(w, _)| w.clone()),
        outbox: s.trees[OUTBOX].len(),
        quarantined,
        conflicts,
    })
}
