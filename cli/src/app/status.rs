//! `tidemark status`: a store's state, read without writing to it.

use anyhow::{Context, Result};
use serde_json::json;

use super::auth::AuthArgs;
use super::output::{conflict_json, conflict_line, quarantined_json, quarantined_line};
use super::store::StoreArgs;
use super::{Output, OK};

/// `tidemark status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// A PocketBase URL: also show the server's head and how far the store lags
    /// behind it (needs credentials, see --email / --token). Not read from
    /// TIDEMARK_URL: without it, status never touches the network.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: StatusArgs, out: Output) -> Result<u8> {
    let (kind, path) = args.store.describe();
    let st = args.store.inspect().await?;
    let head = match &args.url {
        Some(url) => {
            let remote = args.auth.connect(url).await?;
            Some(remote.head().await.context("reading the server's head")?)
        }
        None => None,
    };
    let watermark = st.state.watermark.0;
    let lag = head.as_ref().map(|h| h.head.0.saturating_sub(watermark));
    if out.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "store": path.display().to_string(),
                "kind": kind,
                "writer": st.writer.as_ref().map(|w| w.as_str()),
                "watermark": watermark,
                "resyncing": st.state.resyncing,
                "head": head.as_ref().map(|h| h.head.0),
                "lag": lag,
                "outbox": st.outbox,
                "collections": st.collections.iter().map(|c| json!({
                    "name": c.name,
                    "records": c.records,
                    "local_only": c.local_only,
                })).collect::<Vec<_>>(),
                "quarantine": st.quarantined.iter().map(quarantined_json).collect::<Vec<_>>(),
                "conflicts": st.conflicts.iter().map(conflict_json).collect::<Vec<_>>(),
            })
        );
        return Ok(OK);
    }
    println!("store:       {} ({kind})", path.display());
    if let Some(w) = &st.writer {
        println!("writer id:   {w} (of its last open)");
    }
    let resync = if st.state.resyncing {
        " (full resync in progress)"
    } else {
        ""
    };
    match (&head, lag) {
        (Some(h), Some(lag)) => println!(
            "watermark:   {watermark}{resync}; server head {} ({lag} behind)",
            h.head.0
        ),
        _ => println!("watermark:   {watermark}{resync}"),
    }
    println!("outbox:      {} unpushed", st.outbox);
    println!("quarantine:  {} rejected", st.quarantined.len());
    for q in &st.quarantined {
        println!("  {}", quarantined_line(q));
    }
    println!("conflicts:   {} logged", st.conflicts.len());
    for c in &st.conflicts {
        println!("  {}", conflict_line(c));
    }
    println!("collections:");
    for c in &st.collections {
        println!(
            "  {:<24} {} records{}",
            c.name,
            c.records,
            if c.local_only { " (local-only)" } else { "" }
        );
    }
    Ok(OK)
}
