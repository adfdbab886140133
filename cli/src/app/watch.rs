//! `tidemark watch`: keeps a store in sync (realtime hints + a period) until Ctrl-C.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sync_traits::{LocalStore, SyncEvent};
use tokio::sync::broadcast;

use super::sync::RemoteArgs;
use super::OK;

/// `tidemark watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
    /// Sync at least this often (seconds), hints or not.
    #[arg(long, default_value_t = 30)]
    pub period: u64,
    /// No status line: one JSON object per line on stdout each time the state
    /// changes (`{"watermark", "outbox", "quarantine", "conflicts"}`), one per
    /// rejection (`{"rejected": {"collection", "record", "message"}}`) and one when
    /// stopped (`{"stopped": true, ...}`).
    #[arg(long)]
    pub json: bool,
}

/// How the status is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A live line on the terminal (stderr).
    Line,
    /// A text line on stdout per change.
    Log,
    /// A JSON object on stdout per change.
    Json,
}

/// What the status line shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Line {
    watermark: u64,
    outbox: usize,
    quarantine: usize,
    conflicts: usize,
}

impl Line {
    async fn read(store: &dyn LocalStore) -> Result<Self> {
        Ok(Self {
            watermark: store.sync_state().await?.watermark.0,
            outbox: store.pending_count().await?,
            quarantine: store.quarantined().await?.len(),
            conflicts: store.conflicts().await?.len(),
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "watermark": self.watermark,
            "outbox": self.outbox,
            "quarantine": self.quarantine,
            "conflicts": self.conflicts,
        })
    }

    fn text(&self) -> String {
        format!(
            "watermark {}, outbox {}, quarantine {}, conflicts {}",
            self.watermark, self.outbox, self.quarantine, self.conflicts
        )
    }
}

pub(crate) async fn run(args: WatchArgs) -> Result<u8> {
    let s = args.remote.session().await?;
    let mode = if args.json {
        Mode::Json
    } else if std::io::stderr().is_terminal() {
        Mode::Line
    } else {
        Mode::Log
    };
    let bar = ProgressBar::with_draw_target(
        None,
        if mode == Mode::Line {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    if mode != Mode::Json {
        println!(
            "watching {} (Ctrl-C to stop)",
            args.remote.url.trim_end_matches('/')
        );
    }
    let events = s.engine.subscribe();
    let status = tokio::spawn(follow(s.store.clone(), events, bar.clone(), mode));
    let hints = s.remote.subscribe();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = s
        .engine
        .run_live(hints, Duration::from_secs(args.period.max(1)), stop)
        .await;
    status.abort();
    bar.finish_and_clear();
    result.context("watch stopped; local data is kept")?;
    let line = Line::read(&*s.store).await?;
    if mode == Mode::Json {
        let mut v = line.json();
        v["stopped"] = true.into();
        println!("{v}");
    } else {
        println!("stopped: {}", line.text());
    }
    Ok(OK)
}

/// Keeps the status line up to date from the engine's events and the store, and
/// prints a line on stdout whenever what it shows changes (for logs and pipes).
async fn follow(
    store: Arc<dyn LocalStore>,
    mut events: broadcast::Receiver<SyncEvent>,
    bar: ProgressBar,
    mode: Mode,
) {
    use broadcast::error::RecvError;
    let mut shown: Option<Line> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(SyncEvent::Rejected { change, rejection }) => {
                    let text = format!(
                        "rejected {}/{}: {} (kept in the quarantine)",
                        change.collection, change.id, rejection.message
                    );
                    match mode {
                        Mode::Line => bar.println(text),
                        Mode::Log => println!("{text}"),
                        Mode::Json => println!(
                            "{}",
                            serde_json::json!({"rejected": {
                                "collection": change.collection,
                                "record": change.id.as_str(),
                                "message": rejection.message,
                            }})
                        ),
                    }
                }
                Ok(SyncEvent::Retrying { error, delay }) => {
                    let text = format!("retrying in {delay:?}: {error}");
                    if mode == Mode::Line {
                        bar.set_message(text);
                        // The next read puts the status back.
                        shown = None;
                        continue;
                    }
                    eprintln!("{text}");
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
        }
        let Ok(line) = Line::read(&*store).await else {
            continue;
        };
        if shown.as_ref() != Some(&line) {
            match mode {
                Mode::Line => {}
                Mode::Log => println!("{}", line.text()),
                Mode::Json => println!("{}", line.json()),
            }
            bar.set_message(format!("{} (changed {})", line.text(), clock_now()));
            shown = Some(line);
        }
    }
}

/// The time of day (UTC), `HH:MM:SS`.
fn clock_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
