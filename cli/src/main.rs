//! `tidemark`: run the demo, start a local PocketBase with the tidemark extension,
//! and the commands for any app's store and server (`app`: sync, watch, status,
//! quarantine, conflicts).

mod app;
mod demo;
mod schema_source;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sync_traits::SyncEvent;
use tidemark_backends::{Schema, SqliteStore};

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Offline-first sync between a local store and PocketBase",
    after_help = app::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local PocketBase with the tidemark hooks, sync two offline clients
    /// (an SQLite file and a sled database) through it, and print what happened.
    Demo {
        /// Use the in-memory fake server and in-memory stores instead (no PocketBase).
        #[arg(long)]
        offline: bool,
        /// Where the demo's SQLite file goes.
        #[arg(long, default_value = ".tidemark/demo.sqlite")]
        db: PathBuf,
    },
    /// Run a local PocketBase with the tidemark hooks and migrations until Ctrl-C.
    Serve,
    #[command(flatten)]
    App(app::AppCommand),
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo { offline: true, .. } => demo::offline().await?,
        Command::Demo { offline: false, db } => demo::pocketbase(&db).await?,
        Command::Serve => serve().await?,
        Command::App(cmd) => return app::run(cmd).await,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve() -> Result<()> {
    let server = pocketbase_remote::harness::TestServer::start();
    println!("PocketBase with the tidemark extension at {}", server.url());
    println!(
        "superuser: {} / {}   admin UI: {}/_/",
        pocketbase_remote::harness::ADMIN_EMAIL,
        pocketbase_remote::harness::ADMIN_PASSWORD,
        server.url()
    );
    println!("Ctrl-C to stop (the data directory is temporary).");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn open_sqlite(db: &std::path::Path) -> Result<SqliteStore> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    SqliteStore::open(db, Schema::sample()).with_context(|| format!("opening {}", db.display()))
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
