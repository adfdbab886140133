//! `tidemark conflicts list|clear`: the conflict log.

use anyhow::Result;
use serde_json::json;

use super::output::{conflict_json, conflict_line, print_list};
use super::store::StoreArgs;
use super::{Output, OK};

/// `tidemark conflicts ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ConflictsCommand {
    /// List the logged conflicts: the local change, the server's version it met,
    /// and what the policy did (read-only).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove logged conflicts: the given ids, or every one if none is given.
    /// Only the log changes: each conflict was already resolved by its sync.
    Clear {
        /// Conflict ids (`conflicts list`); none: all.
        ids: Vec<u64>,
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

impl ConflictsCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::List { json, .. } | Self::Clear { json, .. } => *json,
        }
    }
}

pub(crate) async fn run(cmd: ConflictsCommand, out: Output) -> Result<u8> {
    match cmd {
        ConflictsCommand::List { store, .. } => {
            let st = store.inspect().await?;
            print_list(
                out,
                "conflicts",
                &st.conflicts,
                conflict_json,
                conflict_line,
                "no conflicts logged",
            );
        }
        ConflictsCommand::Clear { ids, store, .. } => {
            let s = store.open_existing().await?;
            let ids = if ids.is_empty() {
                s.conflicts().await?.iter().map(|c| c.id).collect()
            } else {
                ids
            };
            let n = s.clear_conflicts(ids).await?;
            if out.json {
                println!("{}", json!({ "ok": true, "cleared": n }));
            } else {
                println!("{n} conflict(s) cleared");
            }
        }
    }
    Ok(OK)
}
