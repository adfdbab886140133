//! `tidemark`: run the demo, run a local PocketBase with the tidemark extension for
//! development, sync a local SQLite store with a PocketBase server, show a store's
//! status.

mod demo;
mod dev;
mod generate;
mod schema_source;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pocketbase_remote::PocketBaseRemote;
use sync_traits::{LocalStore, SyncEngine, SyncEvent};
use tidemark_backends::{Schema, SqliteStore};

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Offline-first sync between a local store and PocketBase"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a throwaway local PocketBase with the tidemark extension, sync two
    /// offline clients (an SQLite file and a sled database) through it, and print
    /// what happened.
    Demo {
        /// Where the demo's SQLite file goes (its sled database goes beside it, with
        /// the extension `.sled`).
        #[arg(long, default_value = ".tidemark/demo.sqlite")]
        db: PathBuf,
        /// Replace the SQLite file and sled database if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Run a local PocketBase with the tidemark extension for development until
    /// Ctrl-C: pinned version (installed if needed), data kept in `.tidemark/`, a
    /// superuser, `--import pb_schema.json` to import collections and sync them.
    #[command(alias = "serve")]
    Dev(dev::DevArgs),
    /// Sync a local SQLite store (the demo's `songs`/`friends` schema) with a server.
    Sync {
        /// PocketBase URL.
        #[arg(long, env = "TIDEMARK_URL")]
        url: String,
        /// Auth collection of the user (`_superusers` for a superuser).
        #[arg(long, default_value = "users")]
        collection: String,
        /// Login.
        #[arg(long, env = "TIDEMARK_EMAIL")]
        email: String,
        /// Password.
        #[arg(long, env = "TIDEMARK_PASSWORD")]
        password: String,
        /// The SQLite file.
        #[arg(long, default_value = ".tidemark/demo.sqlite")]
        db: PathBuf,
    },
    /// Write the app's Rust model (serde structs, collection names, the store
    /// schema) from the server's synced collections or a pb_schema.json.
    Generate(generate::GenerateArgs),
    /// Print a local store's sync state: watermark, outbox, quarantine, records.
    Status {
        /// The SQLite file.
        #[arg(long, default_value = ".tidemark/demo.sqlite")]
        db: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo { db, force } => demo::pocketbase(&db, force).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Sync {
            url,
            collection,
            email,
            password,
            db,
        } => sync(&url, &collection, &email, &password, &db).await,
        Command::Status { db } => status(&db).await,
        Command::Generate(args) => generate::run(args).await,
    }
}

fn open_sqlite(db: &std::path::Path) -> Result<SqliteStore> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    SqliteStore::open(db, Schema::sample()).with_context(|| format!("opening {}", db.display()))
}

async fn sync(
    url: &str,
    coll: &str,
    email: &str,
    password: &str,
    db: &std::path::Path,
) -> Result<()> {
    let store = open_sqlite(db)?;
    let builder = PocketBaseRemote::builder(url);
    let builder = if coll == "_superusers" {
        builder.superuser(email, password)
    } else {
        builder.user(coll, email, password)
    };
    let remote = builder
        .connect()
        .await
        .context("connecting to PocketBase")?;
    let engine = SyncEngine::new(store, remote);
    let mut events = engine.subscribe();
    let report = engine
        .sync()
        .await
        .context("sync failed; local data is kept")?;
    drain_events(&mut events);
    println!("{report:?}");
    Ok(())
}

/// Prints every event still queued. A receiver that fell behind is told how many
/// it missed and goes on (the store keeps every conflict and rejection anyway:
/// `status` counts them).
pub(crate) fn drain_events(events: &mut tokio::sync::broadcast::Receiver<SyncEvent>) {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(e) => print_event(&e),
            Err(TryRecvError::Lagged(n)) => {
                println!("  ({n} events not shown; conflicts and rejections are kept in the store)")
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        }
    }
}

pub(crate) fn print_event(e: &SyncEvent) {
    match e {
        SyncEvent::Conflict {
            local,
            server,
            resolution,
        } => println!(
            "      conflict on {}/{}: local change to {:?} met server version {} -> {}",
            local.collection,
            local.id,
            local.changed,
            server.version.0,
            match resolution {
                sync_traits::Resolution::TakeServer => "took the server's record",
                sync_traits::Resolution::KeepLocal => "kept the local change",
                sync_traits::Resolution::Replace(_) => "merged field by field",
            }
        ),
        SyncEvent::Rejected { change, rejection } => println!(
            "  rejected {}/{}: {} {:?} (kept in quarantine)",
            change.collection, change.id, rejection.message, rejection.fields
        ),
        SyncEvent::ResyncStarted => println!("  watermark past the server's horizon: full resync"),
        SyncEvent::ResyncFinished { removed } if *removed > 0 => {
            println!("      resync done, {removed} stale records removed")
        }
        SyncEvent::ResyncFinished { .. } => {}
        SyncEvent::Retrying { error, delay } => println!("  retrying in {delay:?}: {error}"),
        SyncEvent::Mistyped(m) => println!(
            "  kept {}/{} field {:?} as the server sent it ({}), though the local schema expects {}",
            m.collection, m.id, m.field, m.value, m.expected
        ),
        SyncEvent::PushFailed { error } => println!("  push failed ({error}); pulled anyway"),
        SyncEvent::PushProgress { .. } | SyncEvent::PullProgress { .. } => {}
    }
}

async fn status(db: &std::path::Path) -> Result<()> {
    let store = open_sqlite(db)?;
    let st = store.sync_state().await?;
    println!("store:       {}", db.display());
    println!("client id:   {}", store.client_id().await?);
    println!(
        "watermark:   {}{}",
        st.watermark.0,
        if st.resyncing {
            " (resync in progress)"
        } else {
            ""
        }
    );
    println!("outbox:      {} unpushed", store.pending_count().await?);
    println!("quarantine:  {} refused", store.quarantined().await?.len());
    println!("conflicts:   {} logged", store.conflicts().await?.len());
    for c in ["songs", "friends"] {
        println!("{c:<12} {} records", store.list(c).await?.len());
    }
    Ok(())
}
