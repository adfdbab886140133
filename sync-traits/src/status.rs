//! [`SyncStatus`]: what a [`SyncEngine`](crate::SyncEngine) is doing, as a
//! `tokio::sync::watch` an app can show (a status bar, an "offline since" banner).

use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::SyncError;
use crate::record::Watermark;

/// What the engine is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncPhase {
    /// No sync is running; the last one succeeded, or none ran yet.
    Idle,
    /// A sync is running: outbox entries settled and changes pulled so far in it.
    Syncing {
        /// Outbox entries settled so far.
        pushed: usize,
        /// Changes pulled so far.
        pulled: usize,
    },
    /// The server could not be reached (the last sync failed with a transient
    /// error: network, timeout, 5xx) since `since`, the first such failure in a
    /// row. Local writes go on and wait in the outbox.
    Offline {
        /// When the first failure of this run of failures happened.
        since: SystemTime,
        /// The last failure.
        error: String,
    },
    /// The last sync failed with an error that will not pass by itself
    /// (authentication, a protocol mismatch, the local store) since `since`.
    Failing {
        /// When the first failure of this run of failures happened.
        since: SystemTime,
        /// The last failure.
        error: String,
    },
}

/// A snapshot of the engine's state for an app to show; see
/// [`SyncEngine::status`](crate::SyncEngine::status).
///
/// Guarantees: `phase` is [`SyncPhase::Syncing`] exactly while a `sync()` or
/// `reconcile()` runs (a cancelled one included, until it is dropped); the other
/// fields are as of the end of the last sync that got that far (`watermark` and
/// `outbox` read from the store then).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStatus {
    /// What the engine is doing.
    pub phase: SyncPhase,
    /// When a sync last succeeded.
    pub last_success: Option<SystemTime>,
    /// The store's watermark after the last sync.
    pub watermark: Watermark,
    /// Outbox entries waiting after the last sync.
    pub outbox: usize,
    /// How far the store was behind the server when the last sync ended: `Some(0)`
    /// after a sync that pulled up to the server's head, `None` when the last sync
    /// did not get there (or none ran). Writes on the server since are not counted.
    pub lag: Option<u64>,
}

impl Default for SyncStatus {
    fn default() -> Self {
        Self {
            phase: SyncPhase::Idle,
            last_success: None,
            watermark: Watermark(0),
            outbox: 0,
            lag: None,
        }
    }
}

/// The engine's side of the status: it owns the sender.
#[derive(Debug)]
pub(crate) struct StatusCell {
    tx: watch::Sender<SyncStatus>,
}

impl StatusCell {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::Sender::new(SyncStatus::default()),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SyncStatus> {
        self.tx.subscribe()
    }

    /// A sync begins; the returned guard puts the phase back when the sync is
    /// dropped before it reports an outcome.
    pub(crate) fn begin(&self) -> Running<'_> {
        let before = self.tx.borrow().phase.clone();
        self.tx.send_modify(|s| {
            s.phase = SyncPhase::Syncing {
                pushed: 0,
                pulled: 0,
            }
        });
        Running {
            cell: self,
            before: Some(before),
        }
    }

    /// Progress within the running sync.
    pub(crate) fn progress(&self, pushed: Option<usize>, pulled: Option<usize>) {
        self.tx.send_if_modified(|s| match &mut s.phase {
            SyncPhase::Syncing {
                pushed: ps,
                pulled: pl,
            } => {
                if let Some(p) = pushed {
                    *ps = p;
                }
                if let Some(p) = pulled {
                    *pl = p;
                }
                true
            }
            _ => false,
        });
    }
}

/// A running sync's hold on the status ([`StatusCell::begin`]).
pub(crate) struct Running<'a> {
    cell: &'a StatusCell,
    before: Option<SyncPhase>,
}

impl Running<'_> {
    /// The sync ended with `outcome`; `state` is the store's watermark and outbox
    /// size read after it (when the store answered).
    pub(crate) fn end<T>(
        mut self,
        outcome: &Result<T, SyncError>,
        state: Option<(Watermark, usize)>,
    ) {
        let before = self.before.take();
        let now = SystemTime::now();
        self.cell.tx.send_modify(|s| {
            if let Some((wm, outbox)) = state {
                s.watermark = wm;
                s.outbox = outbox;
            }
            let since = match &before {
                Some(SyncPhase::Offline { since, .. } | SyncPhase::Failing { since, .. }) => *since,
                _ => now,
            };
            match outcome {
                Ok(_) => {
                    s.phase = SyncPhase::Idle;
                    s.last_success = Some(now);
                    s.lag = Some(0);
                }
                Err(e) => {
                    let error = e.to_string();
                    s.lag = None;
                    s.phase = if e.is_transient() {
                        SyncPhase::Offline { since, error }
                    } else {
                        SyncPhase::Failing { since, error }
                    };
                }
            }
        });
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(before) = self.before.take() {
            // Dropped before an outcome (a cancelled sync): back to what it was.
            self.cell.tx.send_modify(|s| s.phase = before);
        }
    }
}
