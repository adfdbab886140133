//! Which local store a command works on: a SQLite file (`--db`) or a sled
//! directory (`--sled`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use sync_traits::LocalStore;
use tidemark_backends::{Inspection, Schema, SledStore, SqliteStore};

/// `--db FILE` or `--sled DIR` (exactly one).
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub(crate) struct StoreArgs {
    /// The local store: a SQLite file.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// The local store: a sled database directory.
    #[arg(long, value_name = "DIR")]
    pub sled: Option<PathBuf>,
}

impl StoreArgs {
    /// The path given, and what kind of store it is.
    pub fn describe(&self) -> (&'static str, PathBuf) {
        match (&self.db, &self.sled) {
            (Some(p), _) => ("sqlite", p.clone()),
            (None, Some(p)) => ("sled", p.clone()),
            // clap's group makes one of them required.
            (None, None) => ("sqlite", PathBuf::new()),
        }
    }

    /// Opens the store (creating it if needed) with `schema`: new collections and
    /// fields are added to what the store already holds, nothing is removed. With
    /// an empty schema, the store opens with the collections it has stored.
    pub async fn open(&self, schema: Schema) -> Result<Arc<dyn LocalStore>> {
        let (kind, path) = self.describe();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let p = path.clone();
        let store: Arc<dyn LocalStore> = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok(match kind {
                "sled" => Arc::new(SledStore::open(&p, schema)?) as Arc<dyn LocalStore>,
                _ => Arc::new(SqliteStore::open(&p, schema)?) as Arc<dyn LocalStore>,
            })
        })
        .await
        .context("opening the store")?
        .with_context(|| format!("opening {}", path.display()))?;
        Ok(store)
    }

    /// Opens an existing store with the schema it has stored; fails if there is no
    /// store at the path (nothing is created: the path is inspected first).
    pub async fn open_existing(&self) -> Result<Arc<dyn LocalStore>> {
        self.inspect().await?;
        self.open(Schema::new()).await
    }

    /// Reads the store without writing to it (see `SqliteStore::inspect` and
    /// `SledStore::inspect`).
    pub async fn inspect(&self) -> Result<Inspection> {
        let (kind, path) = self.describe();
        let p = path.clone();
        tokio::task::spawn_blocking(move || match kind {
            "sled" => SledStore::inspect(&p),
            _ => SqliteStore::inspect(&p),
        })
        .await
        .context("reading the store")?
        .with_context(|| format!("reading {}", path.display()))
    }
}
