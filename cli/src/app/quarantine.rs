//! `tidemark quarantine list|retry|discard`: the changes the server rejected.

use anyhow::{bail, Result};
use serde_json::json;

use super::output::{print_list, quarantined_json, quarantined_line};
use super::store::StoreArgs;
use super::{Output, OK};

/// `tidemark quarantine ...`.
#[derive(clap::Subcommand, Debug)]
pub enum QuarantineCommand {
    /// List the rejected changes with their data and the server's reasons
    /// (read-only).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a rejected change again as a new local write (the next sync pushes
    /// it) and take it out of the quarantine. Fix the data or the server's rules
    /// first, or it is rejected again.
    Retry {
        /// The quarantine id (`quarantine list`).
        id: u64,
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a rejected change for good.
    Discard {
        /// The quarantine id (`quarantine list`).
        id: u64,
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

impl QuarantineCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::List { json, .. } | Self::Retry { json, .. } | Self::Discard { json, .. } => {
                *json
            }
        }
    }
}

pub(crate) async fn run(cmd: QuarantineCommand, out: Output) -> Result<u8> {
    match cmd {
        QuarantineCommand::List { store, .. } => {
            let st = store.inspect().await?;
            print_list(
                out,
                "quarantine",
                &st.quarantined,
                quarantined_json,
                quarantined_line,
                "the quarantine is empty",
            );
        }
        QuarantineCommand::Retry { id, store, .. } => {
            let s = store.open_existing().await?;
            if !s.retry_quarantined(id).await? {
                bail!("no quarantined change #{id}");
            }
            done(out, "retried", id, "written again; the next sync pushes it");
        }
        QuarantineCommand::Discard { id, store, .. } => {
            let s = store.open_existing().await?;
            if !s.discard_quarantined(id).await? {
                bail!("no quarantined change #{id}");
            }
            done(out, "discarded", id, "removed for good");
        }
    }
    Ok(OK)
}

fn done(out: Output, what: &str, id: u64, text: &str) {
    if out.json {
        println!("{}", json!({ "ok": true, what: id }));
    } else {
        println!("#{id} {text}");
    }
}
