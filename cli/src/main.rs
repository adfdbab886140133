//! `tidemark`: run a local PocketBase with the tidemark extension for development,
//! run the demo, generate an app's model, and the commands for any app's store and
//! server (`app`: sync, watch, status, quarantine, conflicts).

mod app;
mod demo;
mod dev;
mod generate;
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
    /// Start a throwaway local PocketBase with the tidemark extension, sync two
    /// offline clients (an SQLite file and a sled database) through it, and print
    /// what happened.
    Demo {
        /// Where the demo's SQLite file goes (its sled database goes beside it, with
        /// the extension `.sled`). Without it the demo uses its own
        /// `.tidemark/demo.sqlite`, replaced at every run; a path given here that
        /// exists is refused unless `--force`.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Replace the SQLite file and sled database given with `--db` if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Run a local PocketBase with the tidemark extension for development until
    /// Ctrl-C: pinned version (installed if needed), data kept in `.tidemark/`, a
    /// superuser, `--import pb_schema.json` to import collections and sync them.
    #[command(alias = "serve")]
    Dev(dev::DevArgs),
    /// Write the app's Rust model (serde structs, collection names, the store
    /// schema) from the server's synced collections or a pb_schema.json.
    Generate(generate::GenerateArgs),
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
        Command::Demo {
            db: Some(db),
            force,
        } => demo::pocketbase(&db, force).await?,
        // The demo's own files: each run starts them again.
        Command::Demo { db: None, .. } => {
            demo::pocketbase(std::path::Path::new(".tidemark/demo.sqlite"), true).await?
        }
        Command::Dev(args) => dev::run(args).await?,
        Command::Generate(args) => generate::run(args).await?,
        Command::App(cmd) => return app::run(cmd).await,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn open_sqlite(db: &std::path::Path) -> Result<SqliteStore> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    SqliteStore::open(db, Schema::sample()).with_context(|| format!("opening {}", db.display()))
}

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
            app::output::resolution_phrase(resolution)
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
        // Progress is shown elsewhere; events a later sync-traits adds are not shown.
        _ => {}
    }
}
