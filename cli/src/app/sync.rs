//! `tidemark sync`: one sync of a local store with a server, with progress bars.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::{
    ClientWins, FieldMerge, LocalStore, LoggedConflict, Quarantined, ServerWins, SyncEngine,
    SyncEvent, SyncReport,
};
use tokio::sync::broadcast;

use super::auth::AuthArgs;
use super::output::{
    conflict_json, conflict_line, quarantined_json, quarantined_line, report_json,
};
use super::store::StoreArgs;
use super::{Output, OK, REJECTED};

/// How conflicts are resolved.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub(crate) enum Policy {
    /// The server's record wins; the local change is dropped (and logged).
    Server,
    /// The local change wins (last writer wins).
    Client,
    /// Field by field: the fields the local writes changed win, the server's
    /// other fields stay.
    #[default]
    Merge,
}

/// What `sync` and `watch` need: the server, the credentials, the store, the schema.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RemoteArgs {
    /// PocketBase URL, e.g. http://127.0.0.1:8090.
    #[arg(long, env = "TIDEMARK_URL")]
    pub url: String,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The schema, from PocketBase's collections export (pb_schema.json) instead
    /// of from the server.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// How conflicts are resolved (every conflict is also logged in the store).
    #[arg(long, value_enum, default_value_t = Policy::Merge)]
    pub policy: Policy,
}

/// `tidemark sync`.
#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
    /// Print one JSON object on stdout (the report, and the rejections and
    /// conflicts of this run) and no progress bars.
    #[arg(long)]
    pub json: bool,
}

/// A signed-in remote, an open store, and an engine over them.
pub(crate) struct Session {
    pub remote: PocketBaseRemote,
    pub store: Arc<dyn LocalStore>,
    pub engine: SyncEngine<Arc<dyn LocalStore>, PocketBaseRemote>,
}

impl RemoteArgs {
    /// Signs in, resolves the schema, opens the store with it.
    pub async fn session(&self) -> Result<Session> {
        let remote = self.auth.connect(&self.url).await?;
        let schema = crate::schema_source::resolve(&remote, self.schema.as_deref()).await?;
        let store = self.store.open(schema).await?;
        let engine = SyncEngine::new(store.clone(), remote.clone());
        let engine = match self.policy {
            Policy::Server => engine.with_policy(ServerWins),
            Policy::Client => engine.with_policy(ClientWins),
            Policy::Merge => engine.with_policy(FieldMerge),
        };
        Ok(Session {
            remote,
            store,
            engine,
        })
    }
}

/// The quarantine and conflict log ids present before a sync, to tell what it added.
pub(crate) struct Before {
    quarantine: u64,
    conflicts: u64,
}

impl Before {
    pub async fn read(store: &dyn LocalStore) -> Result<Self> {
        Ok(Self {
            quarantine: store
                .quarantined()
                .await?
                .iter()
                .map(|q| q.id)
                .max()
                .unwrap_or(0),
            conflicts: store
                .conflicts()
                .await?
                .iter()
                .map(|c| c.id)
                .max()
                .unwrap_or(0),
        })
    }

    /// What the store's quarantine and conflict log gained since.
    pub async fn added(
        &self,
        store: &dyn LocalStore,
    ) -> Result<(Vec<Quarantined>, Vec<LoggedConflict>)> {
        let mut q = store.quarantined().await?;
        q.retain(|q| q.id > self.quarantine);
        let mut c = store.conflicts().await?;
        c.retain(|c| c.id > self.conflicts);
        Ok((q, c))
    }
}

pub(crate) async fn run(args: SyncArgs, out: Output) -> Result<u8> {
    let s = args.remote.session().await?;
    let before = Before::read(&*s.store).await?;
    let start = s.store.sync_state().await?.watermark.0;
    let head = s.remote.head().await.context("reading the server's head")?;
    // The pull goes up to the head, plus a seq for each change this push applies.
    let outbox = s.store.pending_count().await? as u64;
    let bars = Bars::new(
        !args.json && std::io::stderr().is_terminal(),
        head.head.0.saturating_sub(start) + outbox,
    );
    let events = s.engine.subscribe();
    let (done, finished) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(bars.clone().follow(events, start, finished));
    let result = s.engine.sync().await;
    let _ = done.send(());
    let _ = progress.await;
    bars.finish();
    let report = result.context("sync failed; local data is kept")?;
    let (rejected, conflicts) = before.added(&*s.store).await?;
    let watermark = s.store.sync_state().await?.watermark.0;
    let code = if report.rejected > 0 || !rejected.is_empty() {
        REJECTED
    } else {
        OK
    };
    if out.json {
        println!(
            "{}",
            json!({
                "ok": code == OK,
                "exit": code,
                "kind": if code == OK { "ok" } else { "rejected" },
                "report": report_json(&report),
                "watermark": watermark,
                "head": head.head.0.max(watermark),
                "rejections": rejected.iter().map(quarantined_json).collect::<Vec<_>>(),
                "conflicts": conflicts.iter().map(conflict_json).collect::<Vec<_>>(),
            })
        );
    } else {
        print_report(&report, watermark);
        for q in &rejected {
            println!("rejected {}", quarantined_line(q));
        }
        for c in &conflicts {
            println!("conflict {}", conflict_line(c));
        }
        if !rejected.is_empty() {
            println!(
                "{} change(s) rejected and kept in the quarantine: `tidemark quarantine list`",
                rejected.len()
            );
        }
    }
    Ok(code)
}

fn print_report(r: &SyncReport, watermark: u64) {
    println!(
        "pushed {}, pulled {} (applied {}), conflicts {}, rejected {}{}; watermark {}, {} still in the outbox",
        r.pushed,
        r.pulled,
        r.applied,
        r.conflicts,
        r.rejected,
        if r.resynced { ", full resync" } else { "" },
        watermark,
        r.remaining
    );
    if r.unsynced > 0 {
        println!(
            "{} outbox entries wait: the server does not sync their collection",
            r.unsynced
        );
    }
    if r.skipped > 0 {
        println!(
            "{} pulled changes skipped (collections this store does not hold)",
            r.skipped
        );
    }
    if r.mistyped > 0 {
        println!(
            "{} pulled values kept as sent: they do not fit the local schema",
            r.mistyped
        );
    }
}

/// The push and pull bars (stderr; hidden when not drawn).
#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    push: ProgressBar,
    pull: ProgressBar,
}

impl Bars {
    /// `pull_total`: the seqs between the store's watermark and the server's head.
    fn new(draw: bool, pull_total: u64) -> Self {
        let multi = MultiProgress::with_draw_target(if draw {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = |t: &str| {
            ProgressStyle::with_template(t)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", s.per_sec());
                })
        };
        let push = multi.add(ProgressBar::new(0));
        push.set_style(style("push {bar:30} {pos}/{len} changes  {rate}  {msg}"));
        let pull = multi.add(ProgressBar::new(pull_total));
        pull.set_style(style("pull {bar:30} seq {pos}/{len}  {msg}  {rate}"));
        pull.set_message("0 changes");
        for b in [&push, &pull] {
            b.enable_steady_tick(Duration::from_millis(200));
        }
        Self { multi, push, pull }
    }

    /// Follows the events until `finished`, then takes the ones still queued.
    async fn follow(
        self,
        mut events: broadcast::Receiver<SyncEvent>,
        start: u64,
        mut finished: tokio::sync::oneshot::Receiver<()>,
    ) {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = &mut finished => loop {
                    match events.try_recv() {
                        Ok(e) => self.show(e, start),
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                },
            };
            match event {
                Ok(e) => self.show(e, start),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn show(&self, event: SyncEvent, start: u64) {
        match event {
            SyncEvent::PushProgress { pushed, total } => {
                self.push.set_length(total as u64);
                self.push.set_position(pushed as u64);
            }
            SyncEvent::PullProgress { pulled, watermark } => {
                let pos = watermark.0.saturating_sub(start);
                if pos > self.pull.length().unwrap_or(0) {
                    self.pull.set_length(pos);
                }
                self.pull.set_position(pos);
                self.pull.set_message(format!("{pulled} changes"));
            }
            SyncEvent::ResyncStarted => self.pull.set_message("full resync".to_string()),
            SyncEvent::Retrying { error, delay } => {
                self.pull.println(format!("retrying in {delay:?}: {error}"));
            }
            _ => {}
        }
    }

    fn finish(&self) {
        for b in [&self.push, &self.pull] {
            if let Some(len) = b.length() {
                b.set_length(len.max(b.position()));
            }
            b.finish();
        }
        // indicatif leaves the cursor at the end of the last bar: what is printed
        // next starts a line of its own.
        if !self.multi.is_hidden() {
            eprintln!();
        }
    }
}
