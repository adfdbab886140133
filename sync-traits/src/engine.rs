//! The sync algorithm, written once over [`SyncStore`] (the engine-facing part of
//! [`LocalStore`](crate::LocalStore)) and [`RemoteStore`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{broadcast, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::conflict::{ConflictPolicy, FieldMerge, Resolution};
use crate::error::{RemoteError, SyncError};
use crate::record::{
    Ack, Conflict, Mistyped, Page, PendingChange, PushChange, PushOutcome, Rejection, RemoteState,
    Watermark,
};
use crate::remote::{PullMode, RemoteStore};
use crate::store::SyncStore;

// Partial sync (the scope, collection resyncs, the filter reconcile): a child
// module, so it shares the engine's private state.
#[path = "engine_partial.rs"]
mod partial_sync;

/// Bounded exponential backoff for transient remote errors.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: usize,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Upper bound of any single delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 retries, 100 ms doubling up to 5 s, with jitter.
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Retry immediately, `n` times (for tests).
    pub fn immediate(n: usize) -> Self {
        Self {
            max_retries: n,
            initial_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }
}

/// Tuning for [`SyncEngine`].
///
/// Set the fields you need and take the rest from the default
/// (`SyncConfig { push_batch: 200, ..SyncConfig::default() }`): every field added
/// later comes with a default, so code written that way keeps compiling. (That
/// pattern is why this struct, unlike the reports and errors, is not
/// `#[non_exhaustive]`: that would forbid it outside this crate.)
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Outbox entries per push (also capped by [`RemoteStore::max_push_batch`]).
    pub push_batch: usize,
    /// Changes per pulled page.
    pub page_size: usize,
    /// Changes per local transaction during a full resync (a first sync is one):
    /// pulled pages are joined into one `apply_remote` call of up to this many
    /// changes (default 25,000), and up to 16 pages are downloaded ahead while one
    /// applies. A resync that stops midway starts again from zero, so this keeps
    /// no less progress than applying page by page. Fewer, larger transactions
    /// write each b-tree page of the store once per batch rather than once per
    /// page: with random record ids that is most of a first sync's cost (SQLite,
    /// 500k records: 4.2 CPU-s in batches of 10,000, 3.2 in 25,000, 2.3 in 50,000;
    /// BENCHMARKS.md). The price is memory: about this many changes plus 16 pages
    /// are held at once. `0` or `1`: page by page.
    pub resync_batch: usize,
    /// Retry policy for transient remote errors.
    pub retry: RetryPolicy,
    /// How many times one `sync()` re-pushes changes that met a conflict and were
    /// re-based; what remains goes out on the next `sync()`.
    pub max_conflict_rounds: usize,
    /// How many times one `sync()` restarts a full resync when the horizon moves
    /// past it while it runs.
    pub max_resyncs: usize,
    /// The longest one `sync()` (or `reconcile()`) may go without progress
    /// (default 30 s; `None`: no limit). Progress is any answer of the remote (a
    /// page, a push's outcomes, a count) and any page applied to the store; time
    /// spent waiting for an answer or backing off before a retry is not. A sync
    /// that makes none for this long (a server that accepts connections and never
    /// answers, one that answers only errors) fails with a transient
    /// `RemoteError::Transient`; what it settled stays settled, the rest goes out
    /// on the next sync. A long first sync is not cut short while pages arrive.
    pub stall_limit: Option<Duration>,
    /// How long [`SyncEngine::run_live`] waits after a hint before it syncs, so a
    /// burst of hints makes one sync (default 50 ms).
    pub hint_debounce: Duration,
    /// The longest one `sync()` (or `reconcile()`) may run at all (default `None`:
    /// no limit), failing the same way. A full resync (a first sync included)
    /// stopped by it starts again from zero on the next sync, so a limit shorter
    /// than the first sync of the app's data keeps that sync from ever finishing;
    /// [`SyncConfig::stall_limit`] is the bound to rely on.
    pub time_limit: Option<Duration>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            push_batch: 500,
            page_size: 1000,
            resync_batch: 25_000,
            retry: RetryPolicy::default(),
            max_conflict_rounds: 3,
            max_resyncs: 3,
            stall_limit: Some(Duration::from_secs(30)),
            hint_debounce: Duration::from_millis(50),
            time_limit: None,
        }
    }
}

/// Something the application may want to know about, sent while `sync()` runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// Outbox entries settled so far in this sync, out of the outbox size at start.
    PushProgress {
        /// Settled so far.
        pushed: usize,
        /// Outbox size when the sync started.
        total: usize,
    },
    /// Changes pulled so far in this sync.
    PullProgress {
        /// Changes received so far.
        pulled: usize,
        /// Watermark reached.
        watermark: Watermark,
    },
    /// A pushed change met a newer server version; `resolution` is what the policy
    /// decided. The local data is in `local` whatever the outcome.
    Conflict {
        /// The local change.
        local: PendingChange,
        /// The server's state.
        server: RemoteState,
        /// What was done.
        resolution: Resolution,
    },
    /// The remote refused a change for good; it is kept in the store's quarantine.
    Rejected {
        /// The refused change with its data.
        change: PendingChange,
        /// Why.
        rejection: Rejection,
    },
    /// The watermark was older than the server's horizon: a full resync started
    /// (also sent when some collections are resynced alone, partial sync:
    /// [`SyncReport::resynced_collections`]).
    ResyncStarted,
    /// A full resync (or a resync of some collections) finished; `removed` local
    /// records no longer exist on the server (or no longer match the filter).
    ResyncFinished {
        /// Records removed locally.
        removed: usize,
    },
    /// A pulled value does not fit the local schema's type for its field; the store
    /// kept it as the server sent it (see [`crate::ApplyReport::mistyped`]).
    Mistyped(Mistyped),
    /// A push failed with something other than an auth error; the pull runs
    /// anyway and `sync()` returns the error at the end.
    PushFailed {
        /// The error text.
        error: String,
    },
    /// A transient error; the call is retried after `delay`.
    Retrying {
        /// The error text.
        error: String,
        /// Wait before the next attempt.
        delay: Duration,
    },
}

/// What one `sync()` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Local changes the remote applied.
    pub pushed: usize,
    /// Remote changes received.
    pub pulled: usize,
    /// Remote changes written locally.
    pub applied: usize,
    /// Conflicts met (each also sent as an event).
    pub conflicts: usize,
    /// Changes refused and quarantined.
    pub rejected: usize,
    /// Whether a full resync ran.
    pub resynced: bool,
    /// Outbox entries still pending at the end (re-based conflicts beyond the round
    /// limit, writes made during the sync, changes to collections the remote does
    /// not sync).
    pub remaining: usize,
    /// Outbox entries not pushed because the remote does not sync their collection
    /// ([`RemoteStore::collections`]); they stay in the outbox, untouched.
    pub unsynced: usize,
    /// Pulled changes the store skipped: collections it does not hold (kept by the
    /// store until it declares them) or holds local-only.
    pub skipped: usize,
    /// Pulled values kept with another type than the local schema declares (each
    /// also sent as [`SyncEvent::Mistyped`]).
    pub mistyped: usize,
    /// Collections resynced alone (their scope changed, or the filter reconcile
    /// found records that stopped or started matching without a write; see
    /// [`crate::SyncScope`]); a full resync is [`SyncReport::resynced`].
    pub resynced_collections: std::collections::BTreeSet<String>,
}

/// Moves changes both ways between a local store and a remote.
///
/// `sync()` pushes the outbox in batches, then pulls pages until caught up. It is
/// idempotent and safe to interrupt at any await point: the store's atomic steps
/// (apply+watermark, ack) and the remote's idempotent pushes make a resumed sync
/// converge with no duplicates. Concurrent `sync()` calls on one engine are
/// serialised.
///
/// The remote is shared (`Arc`) with the task that pulls pages ahead while the
/// current one is applied, hence `R: 'static` (any owned remote, `Box<dyn
/// RemoteStore>` or `Arc<…>`). Outside a tokio runtime pages are pulled one by one
/// and the time limits are not kept. In a tokio runtime the engine needs its timers
/// (`enable_time`, or `enable_all` as `#[tokio::main]` does) for the time limits and
/// the retries' backoff.
pub struct SyncEngine<L, R> {
    local: L,
    remote: Arc<R>,
    policy: Box<dyn ConflictPolicy>,
    config: SyncConfig,
    events: broadcast::Sender<SyncEvent>,
    running: Mutex<()>,
    progress: Arc<Progress>,
    status: crate::status::StatusCell,
    scope: crate::partial::SyncScope,
    scope_memo: std::sync::Mutex<partial_sync::Memo>,
}

/// When the running sync last made progress ([`SyncConfig::stall_limit`]).
#[derive(Debug)]
struct Progress {
    start: std::time::Instant,
    /// Milliseconds after `start`.
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Progress was made now.
    fn made(&self) {
        self.last
            .fetch_max(self.now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago progress was last made.
    fn idle(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(self.now().saturating_sub(last))
    }
}

impl<L: SyncStore, R: RemoteStore + 'static> SyncEngine<L, R> {
    /// An engine with the default config and the [`FieldMerge`] conflict policy.
    pub fn new(local: L, remote: R) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            local,
            remote: Arc::new(remote),
            policy: Box::new(FieldMerge),
            config: SyncConfig::default(),
            events,
            running: Mutex::new(()),
            progress: Arc::new(Progress::new()),
            status: crate::status::StatusCell::new(),
            scope: crate::partial::SyncScope::default(),
            scope_memo: std::sync::Mutex::default(),
        }
    }

    /// Replaces the conflict policy.
    pub fn with_policy(mut self, policy: impl ConflictPolicy + 'static) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// Replaces the config.
    pub fn with_config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// Receives [`SyncEvent`]s from now on. Slow receivers may miss events (see
    /// `tokio::sync::broadcast`); [`SyncReport`] always has the totals.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    /// What the engine is doing, as a `tokio::sync::watch` that always holds the
    /// latest [`SyncStatus`](crate::SyncStatus) (idle, syncing with progress,
    /// offline since, failing since), the last success, the watermark, the outbox
    /// size and the lag: a receiver that lags sees the newest state, never a stale
    /// one, unlike [`SyncEngine::subscribe`].
    pub fn status(&self) -> tokio::sync::watch::Receiver<crate::SyncStatus> {
        self.status.subscribe()
    }

    /// The local store.
    pub fn local(&self) -> &L {
        &self.local
    }

    /// The remote.
    pub fn remote(&self) -> &R {
        &self.remote
    }

    /// Runs one sync: push, then pull until caught up. It stops with a transient
    /// error when it makes no progress for [`SyncConfig::stall_limit`] or runs past
    /// [`SyncConfig::time_limit`]; [`SyncEngine::status`] shows it while it runs.
    pub async fn sync(&self) -> Result<SyncReport, SyncError> {
        let _guard = self.running.lock().await;
        self.tracked(self.sync_locked().instrument(info_span!("sync")))
            .await
    }

    /// [`SyncEngine::sync`], stopped as soon as `cancel` completes (pass
    /// `token.cancelled()` of a `tokio_util::sync::CancellationToken`, a shutdown
    /// signal, a timer): it answers [`SyncError::Cancelled`] at the next await point
    /// of the sync, even in the middle of a long resync, without waiting for the
    /// page being pulled. Cancelling is as safe as a crash of the app at that
    /// moment, which the engine is built for: a store call under way completes or
    /// not as a whole (every call is one transaction), a push the server applied
    /// but whose answer was not read is answered "already applied" by the next
    /// sync, and a resync cut short starts again on the next one.
    pub async fn sync_until(
        &self,
        cancel: impl Future<Output = ()>,
    ) -> Result<SyncReport, SyncError> {
        tokio::select! {
            r = self.sync() => r,
            _ = cancel => {
                info!("sync cancelled");
                Err(SyncError::Cancelled)
            }
        }
    }

    /// Runs `run` (a sync or a reconcile) with its status shown in
    /// [`SyncEngine::status`], stopped with a transient error when it makes no
    /// progress for [`SyncConfig::stall_limit`] or runs longer than
    /// [`SyncConfig::time_limit`].
    async fn tracked<T>(
        &self,
        run: impl Future<Output = Result<T, SyncError>>,
    ) -> Result<T, SyncError> {
        let running = self.status.begin();
        let outcome = self.limited(run).await;
        // The store's state for the status, unless the store is what failed.
        let store_failed = matches!(
            outcome.as_ref().err().map(SyncError::cause),
            Some(SyncError::Store(_))
        );
        let state = if store_failed {
            None
        } else {
            match (
                self.local.sync_state().await,
                self.local.pending_count().await,
            ) {
                (Ok(st), Ok(outbox)) => Some((st.watermark, outbox)),
                _ => None,
            }
        };
        running.end(&outcome, state);
        outcome
    }

    async fn limited<T>(
        &self,
        run: impl Future<Output = Result<T, SyncError>>,
    ) -> Result<T, SyncError> {
        let (stall, total) = (self.config.stall_limit, self.config.time_limit);
        // Outside a tokio runtime there are no timers to keep the limits with.
        if (stall.is_none() && total.is_none()) || tokio::runtime::Handle::try_current().is_err() {
            return run.await;
        }
        self.progress.made();
        let stalled = async {
            let Some(limit) = stall else {
                return std::future::pending().await;
            };
            loop {
                let idle = self.progress.idle();
                if idle >= limit {
                    return limit;
                }
                tokio::time::sleep(limit - idle).await;
            }
        };
        let over = async {
            match total {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    limit
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = run => r,
            limit = stalled => {
                warn!(?limit, "sync stopped: no progress within its stall limit");
                Err(SyncError::Remote(RemoteError::Transient(format!(
                    "sync made no progress for {limit:?} (SyncConfig::stall_limit)"
                ).into())))
            }
            limit = over => {
                warn!(?limit, "sync stopped at its time limit");
                Err(SyncError::Remote(RemoteError::Transient(format!(
                    "sync did not finish within its time limit of {limit:?} (SyncConfig::time_limit)"
                ).into())))
            }
        }
    }

    async fn sync_locked(&self) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        match self.sync_steps(&mut report).await {
            Ok(()) => {
                info!(?report, "sync done");
                Ok(report)
            }
            Err(e) => Err(SyncError::after(report, e)),
        }
    }

    /// Push, then pull. A push that fails with anything but an auth error does not
    /// stop the pull: its error is returned after the pull ran.
    async fn sync_steps(&self, report: &mut SyncReport) -> Result<(), SyncError> {
        let synced = self.scoped_collections().await?;
        let pushed = self
            .push_all(synced.as_ref(), report)
            .instrument(info_span!("push"))
            .await;
        if let Err(e) = &pushed {
            // Only a remote that answered (or failed) goes on to the pull; a
            // failing store or refused credentials stop the sync here.
            if matches!(
                e,
                SyncError::Store(_) | SyncError::Remote(RemoteError::Auth(_))
            ) {
                return pushed;
            }
            warn!(%e, "push failed; pulling anyway");
            self.emit(SyncEvent::PushFailed {
                error: e.to_string(),
            });
        }
        let pulled = self
            .pull_all(synced.clone(), report)
            .instrument(info_span!("pull"))
            .await;
        if let (Err(push), Err(pull)) = (&pushed, &pulled) {
            warn!(%pull, "the pull failed too; returning the push's error ({push})");
        }
        pushed?;
        pulled?;
        self.reconcile_filters_if_due(synced.as_ref(), report)
            .await?;
        report.remaining = self.local.pending_count().await?;
        Ok(())
    }

    /// A sync, then a check for records that left or entered the caller's view
    /// without any trace the pull could see (a changed access rule, a record shared
    /// through a team relation, a write that bypassed the server's hooks): after a
    /// complete pull the store holds exactly the records the server shows the
    /// caller, so a collection whose local count differs from what
    /// [`RemoteStore::counts`] reports has stale or missing records, and a full
    /// resync removes the ones and pulls the others. One extra request when the
    /// counts agree.
    ///
    /// Collections synced through a filter ([`crate::SyncScope`]) are checked by
    /// the filter reconcile instead ([`SyncEngine::reconcile_filters`], run here
    /// first, whatever the outbox holds).
    ///
    /// The count check is skipped (reported as not resynced) while the outbox is not empty, since
    /// unpushed creates would count too, and when the remote cannot count. A write
    /// landing on the server between the pull and the count can hide a stale record
    /// until the next reconcile, or start a resync that was not needed.
    /// Runs within the same limits as [`SyncEngine::sync`] ([`SyncConfig::stall_limit`],
    /// [`SyncConfig::time_limit`]) and shows in [`SyncEngine::status`] the same way.
    pub async fn reconcile(&self) -> Result<SyncReport, SyncError> {
        let _guard = self.running.lock().await;
        let run = async {
            let mut report = self.sync_locked().await?;
            let synced = self.scoped_collections().await?;
            // Filtered collections first: their check keeps records with an
            // outbox entry itself, so it runs whatever the outbox holds.
            self.reconcile_filters_locked(synced.as_ref(), &mut report)
                .await?;
            if report.remaining > 0 {
                info!(
                    remaining = report.remaining,
                    "outbox not empty; reconcile skipped"
                );
                return Ok(report);
            }
            let Some(counts) = self.retry("counts", || self.remote.counts()).await? else {
                return Ok(report);
            };
            let mut stale = Vec::new();
            for (collection, remote) in &counts {
                // A filtered collection holds less than the server counts: the
                // filter reconcile below checks it.
                if synced.as_ref().is_some_and(|s| !s.contains(collection))
                    || self.scope.filters.contains_key(collection)
                {
                    continue;
                }
                let local = match self.local.count(collection).await {
                    Ok(n) => n,
                    // A collection this store does not hold: nothing to compare.
                    Err(crate::error::StoreError::UnknownCollection(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                if local as u64 != *remote {
                    stale.push((collection.clone(), local as i64 - *remote as i64));
                }
            }
            if !stale.is_empty() {
                info!(
                    ?stale,
                    "local collections differ from what the server shows; resync"
                );
                self.emit(SyncEvent::ResyncStarted);
                report.resynced = true;
                self.resync(synced.clone(), &mut report).await?;
                self.remember_scope().await?;
            }
            Ok(report)
        }
        .instrument(info_span!("reconcile"));
        self.tracked(run).await
    }

    /// Keeps the store in sync until `stop` completes: syncs at once, then whenever
    /// `hints` yields (e.g. `pocketbase_remote::Hints` from realtime) and at least every
    /// `period`. Hints only make syncs earlier; correctness never depends on them, and
    /// if the hint stream ends the loop goes on with the period alone. A burst of
    /// hints (a batch of writes elsewhere, this client's own pushes echoed back)
    /// makes one sync: after a hint the loop waits [`SyncConfig::hint_debounce`]
    /// and takes every hint that came meanwhile with it.
    ///
    /// `stop` is watched during a sync too (pass `token.cancelled()` of a
    /// `tokio_util::sync::CancellationToken`): the loop returns `Ok(())` promptly,
    /// with a sync under way cut short as [`SyncEngine::sync_until`] describes.
    ///
    /// A failed sync never ends the loop but for an authentication failure, which
    /// is returned so the app can ask the user to sign in again: transient errors,
    /// protocol errors and store errors are logged (and sent as events by the
    /// retries), and the next sync comes after a backoff that doubles from
    /// [`RetryPolicy::initial_delay`] up to `period` (hints do not shorten it) and
    /// starts over after a success. Local data is kept either way.
    pub async fn run_live<S, F>(
        &self,
        mut hints: S,
        period: Duration,
        stop: F,
    ) -> Result<(), SyncError>
    where
        S: futures_core::Stream<Item = ()> + Unpin,
        F: Future<Output = ()>,
    {
        let mut stop = std::pin::pin!(stop);
        let mut hints_open = true;
        let mut failures: u32 = 0;
        loop {
            let outcome = tokio::select! {
                r = self.sync() => r,
                _ = &mut stop => return Ok(()),
            };
            let backoff = match outcome {
                Ok(_) => {
                    failures = 0;
                    None
                }
                Err(e) if e.is_auth() => return Err(e),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let base = self
                        .config
                        .retry
                        .initial_delay
                        .max(Duration::from_millis(10));
                    let delay = base
                        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
                        .min(period);
                    warn!(%e, ?delay, failures, "sync failed; the live loop goes on after a backoff");
                    Some(delay)
                }
            };
            if let Some(delay) = backoff {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            let hint = async {
                if hints_open {
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut hints).poll_next(cx)).await
                } else {
                    std::future::pending().await
                }
            };
            let hinted = tokio::select! {
                _ = &mut stop => return Ok(()),
                h = hint => {
                    if h.is_none() {
                        hints_open = false;
                    }
                    h.is_some()
                }
                _ = tokio::time::sleep(period) => false,
            };
            if hinted {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(self.config.hint_debounce) => {}
                }
                // Every hint that came during the wait is served by the next sync.
                while hints_open {
                    let ready = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(std::pin::Pin::new(&mut hints).poll_next(cx))
                    })
                    .await;
                    match ready {
                        std::task::Poll::Ready(Some(())) => {}
                        std::task::Poll::Ready(None) => hints_open = false,
                        std::task::Poll::Pending => break,
                    }
                }
            }
        }
    }

    fn emit(&self, e: SyncEvent) {
        match &e {
            SyncEvent::PushProgress { pushed, .. } => self.status.progress(Some(*pushed), None),
            SyncEvent::PullProgress { pulled, .. } => self.status.progress(None, Some(*pulled)),
            _ => {}
        }
        let _ = self.events.send(e);
    }

    async fn retry<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        retry(&self.config.retry, &self.events, &self.progress, what, f).await
    }

    async fn push_all(
        &self,
        synced: Option<&std::collections::BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let total = self.local.pending_count().await?;
        if total == 0 {
            return Ok(());
        }
        let batch = self
            .config
            .push_batch
            .min(self.remote.max_push_batch())
            .max(1);
        let mut settled = 0;
        // What the store has pulled up to: an applied change at or below it was
        // pulled (and deferred) before its ack, so its echo will not come again.
        let pulled_to = self.local.sync_state().await?.watermark;
        // Each pass walks the whole outbox once. Entries re-based after a conflict
        // stay in the outbox and go out again in the next pass.
        for pass in 0..=self.config.max_conflict_rounds {
            let mut after = 0;
            let mut any = false;
            let mut unsynced = 0;
            loop {
                let mut entries = self.local.pending(after, batch).await?;
                // A transaction's entries go in one batch when they fit in one.
                let end = crate::transaction::batch_end(&entries, entries.len() == batch);
                entries.truncate(end);
                let Some(last) = entries.last() else { break };
                after = last.seq;
                if let Some(synced) = synced {
                    let before = entries.len();
                    entries.retain(|e| synced.contains(&e.collection));
                    unsynced += before - entries.len();
                }
                if entries.is_empty() {
                    continue;
                }
                any = true;
                debug!(pass, n = entries.len(), "pushing batch");
                settled += self.push_batch(entries, pulled_to, report).await?;
                self.emit(SyncEvent::PushProgress {
                    pushed: settled,
                    total,
                });
            }
            report.unsynced = unsynced;
            if !any {
                break;
            }
        }
        if report.unsynced > 0 {
            info!(
                unsynced = report.unsynced,
                "outbox entries wait: the remote does not sync their collections"
            );
        }
        Ok(())
    }

    /// Pushes `changes` and answers one outcome per change. A push refused as a
    /// whole for what it holds (a permanent error or a size limit, not auth, not
    /// transient, not a malformed answer) is split in halves until the refusal
    /// names one change, which becomes a rejection of that change: one bad change
    /// never holds back the others. The flag says an outcome is such a refusal.
    fn push_outcomes<'a>(&'a self, changes: &'a [PushChange]) -> Outcomes<'a>
    where
        L: 'a,
    {
        Box::pin(async move {
            let e = match self
                .retry("push", || self.remote.push(changes.to_vec()))
                .await
            {
                Ok(outcomes) => return Ok(outcomes.into_iter().map(|o| (o, false)).collect()),
                Err(e) => e,
            };
            if !matches!(e, RemoteError::Permanent(_) | RemoteError::TooLarge(_)) {
                return Err(e);
            }
            if changes.len() == 1 {
                warn!(change = %changes[0].change_id, %e, "the remote refused one change; rejecting it");
                return Ok(vec![(
                    PushOutcome::Rejected(Rejection {
                        message: e.to_string(),
                        fields: Default::default(),
                    }),
                    true,
                )]);
            }
            let (left, right) = changes.split_at(changes.len() / 2);
            let mut out = self.push_outcomes(left).await?;
            out.extend(self.push_outcomes(right).await?);
            Ok(out)
        })
    }

    /// Pushes one batch and settles it; returns how many entries left the outbox.
    async fn push_batch(
        &self,
        entries: Vec<PendingChange>,
        pulled_to: Watermark,
        report: &mut SyncReport,
    ) -> Result<usize, SyncError> {
        let changes: Vec<PushChange> = entries.iter().map(PushChange::from).collect();
        let outcomes = self.push_outcomes(&changes).await?;
        if entries.len() > 1 && outcomes.iter().all(|(_, refused)| *refused) {
            // Every change refused on its own: the remote refuses the requests,
            // not one record (a disabled API, say). Keep them all in the outbox.
            return Err(SyncError::Remote(RemoteError::Permanent(format!(
                "the remote refused each of {} changes on its own; kept in the outbox",
                entries.len()
            ))));
        }
        let outcomes: Vec<PushOutcome> = outcomes.into_iter().map(|(o, _)| o).collect();
        if outcomes.len() != entries.len() {
            return Err(SyncError::Protocol(format!(
                "pushed {} changes, got {} outcomes",
                entries.len(),
                outcomes.len()
            )));
        }
        let mut acks = Vec::with_capacity(entries.len());
        let mut settled = 0;
        // Applied changes the store had already pulled past (see `reread_late`).
        let mut late = Vec::new();
        for (entry, outcome) in entries.into_iter().zip(outcomes) {
            let (collection, id, change_id) = (
                entry.collection.clone(),
                entry.id.clone(),
                entry.change_id.clone(),
            );
            match outcome {
                PushOutcome::Applied { version } => {
                    report.pushed += 1;
                    settled += 1;
                    if version.0 <= pulled_to.0 {
                        late.push((collection.clone(), id.clone(), version));
                    }
                    acks.push(Ack::Applied {
                        collection,
                        id,
                        change_id,
                        version,
                    });
                }
                PushOutcome::Conflict { current } => {
                    let own = match &current.change_id {
                        Some(c) if c != &entry.change_id => self.local.made_here(c).await?,
                        _ => false,
                    };
                    if current.change_id.as_ref() == Some(&entry.change_id) {
                        // The remote should have answered Applied; accept it.
                        report.pushed += 1;
                        settled += 1;
                        acks.push(Ack::Applied {
                            collection,
                            id,
                            change_id,
                            version: current.version,
                        });
                    } else if current.change_id.as_ref().is_some_and(|c| {
                        c.client == entry.change_id.client && c.n > entry.change_id.n
                    }) {
                        // The server holds a later write of the very writer that made
                        // this entry: this store is a restored or copied one, and its
                        // own history went on without it. That later write carries this
                        // one forward, so take it (logged, reported; no policy asked:
                        // re-pushing would undo the writer's own later edit).
                        report.conflicts += 1;
                        settled += 1;
                        info!(%id, change = %entry.change_id, "superseded by a later write of its own writer (a restored or copied store)");
                        let resolution = Resolution::TakeServer;
                        acks.push(Ack::TakeServer {
                            collection,
                            id,
                            change_id,
                            state: current.clone(),
                        });
                        acks.push(Ack::Conflict(Conflict {
                            local: entry.clone(),
                            server: current.clone(),
                            resolution: resolution.clone(),
                        }));
                        self.emit(SyncEvent::Conflict {
                            local: entry,
                            server: current,
                            resolution,
                        });
                    } else if own {
                        // The server holds an earlier write of ours whose ack was
                        // lost; our entry already contains it. That earlier write is
                        // applied: its ack re-bases the entry that superseded it (same
                        // change id: this one was never applied), no conflict.
                        debug!(%id, "re-basing on own earlier write");
                        if let Some(earlier) = current.change_id.clone() {
                            acks.push(Ack::Applied {
                                collection,
                                id,
                                change_id: earlier,
                                version: current.version,
                            });
                        }
                    } else {
                        report.conflicts += 1;
                        let resolution = self.policy.resolve(&entry, &current);
                        acks.push(match &resolution {
                            Resolution::TakeServer => {
                                settled += 1;
                                Ack::TakeServer {
                                    collection,
                                    id,
                                    change_id,
                                    state: current.clone(),
                                }
                            }
                            Resolution::KeepLocal => Ack::Rebase {
                                collection,
                                id,
                                change_id,
                                base: current.version,
                                op: None,
                            },
                            Resolution::Replace(op) => Ack::Rebase {
                                collection,
                                id,
                                change_id,
                                base: current.version,
                                op: Some(op.clone()),
                            },
                        });
                        acks.push(Ack::Conflict(Conflict {
                            local: entry.clone(),
                            server: current.clone(),
                            resolution: resolution.clone(),
                        }));
                        self.emit(SyncEvent::Conflict {
                            local: entry,
                            server: current,
                            resolution,
                        });
                    }
                }
                PushOutcome::Rejected(rejection) => {
                    report.rejected += 1;
                    settled += 1;
                    let server = self
                        .retry("fetch", || self.remote.fetch(&collection, &id))
                        .await?;
                    warn!(%collection, %id, message = %rejection.message, "change rejected; quarantined");
                    self.emit(SyncEvent::Rejected {
                        change: entry.clone(),
                        rejection: rejection.clone(),
                    });
                    acks.push(Ack::Quarantine {
                        change: entry,
                        rejection,
                        server,
                    });
                }
            }
        }
        self.local.ack(acks).await?;
        self.reread_late(late, pulled_to).await?;
        Ok(settled)
    }

    /// The server's copy of a change comes back to the writer with the pull (it may
    /// differ: normalised values, fields a PATCH kept). For a change acked only after
    /// the store pulled past its version (a lost answer, a push that failed before
    /// the pull ran), that copy was pulled while the change was still pending and
    /// left alone, so it is read again here and applied by the store's usual rules.
    /// A record the caller can no longer see at all (`fetch` answers `None`:
    /// deleted by a remote that shows no tombstone, compacted, out of view) is gone
    /// for it: a tombstone at the acked version, which the store now knows, removes
    /// it (a newer deletion or re-creation above the watermark comes with the pull).
    async fn reread_late(
        &self,
        late: Vec<(String, crate::id::RecordId, crate::record::Version)>,
        pulled_to: Watermark,
    ) -> Result<(), SyncError> {
        let mut changes = Vec::new();
        for (collection, id, version) in late {
            let state = self
                .retry("fetch", || self.remote.fetch(&collection, &id))
                .await?
                .unwrap_or(RemoteState {
                    version,
                    fields: None,
                    change_id: None,
                });
            // A newer state above the watermark comes with the next pull.
            if let Some(state) = Some(state).filter(|s| s.version.0 <= pulled_to.0) {
                changes.push(crate::record::RemoteChange {
                    collection,
                    id,
                    state,
                });
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        changes.sort_by_key(|c| c.state.version);
        debug!(
            n = changes.len(),
            "re-reading changes acked after the pull passed them"
        );
        self.local
            .apply_remote(&Page {
                changes,
                watermark: pulled_to,
                more: false,
            })
            .await?;
        Ok(())
    }

    async fn pull_all(
        &self,
        synced: Option<std::collections::BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let state = self.local.sync_state().await?;
        if state.resyncing {
            // A resync interrupted by a crash: the horizon it began under is unknown,
            // so start it again.
            info!("resuming an interrupted resync from zero");
            self.emit(SyncEvent::ResyncStarted);
            report.resynced = true;
            self.resync(synced, report).await?;
            return self.remember_scope().await;
        }
        if state.watermark.0 == 0 {
            // The first sync is a resync: anything the store holds that the server
            // lacks is removed at the end, and pages below the horizon are safe.
            self.resync(synced, report).await?;
            return self.remember_scope().await;
        }
        if let Some(plan) = self.scope_plan(synced.as_ref(), state.watermark).await? {
            // Some collections' scope changed: resync them alone (the others are
            // pulled from the watermark in the same pass).
            return self.resync_collections(plan, synced, report).await;
        }
        match self
            .pull_pages(
                state.watermark,
                PullMode::Incremental,
                self.full_pull_scope(),
                report,
            )
            .await
        {
            Err(SyncError::Remote(RemoteError::WatermarkExpired { since, horizon })) => {
                info!(?since, ?horizon, "watermark expired; full resync");
                self.emit(SyncEvent::ResyncStarted);
                report.resynced = true;
                self.resync(synced, report).await?;
                self.remember_scope().await
            }
            other => other,
        }
    }

    /// Full resync: re-read everything from zero, then remove what was not seen. If
    /// the server's horizon moves meanwhile, a tombstone this resync needed may have
    /// been compacted, so it starts again (bounded by `max_resyncs`).
    async fn resync(
        &self,
        synced: Option<std::collections::BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        for attempt in 0..=self.config.max_resyncs {
            let before = self.retry("horizon", || self.remote.horizon()).await?;
            self.local.begin_resync().await?;
            self.pull_pages(
                Watermark(0),
                PullMode::Resync,
                self.full_pull_scope(),
                report,
            )
            .await?;
            let after = self.retry("horizon", || self.remote.horizon()).await?;
            if after == before {
                let removed = self.local.finish_resync(synced.clone()).await?;
                self.emit(SyncEvent::ResyncFinished { removed });
                return Ok(());
            }
            info!(
                attempt,
                ?before,
                ?after,
                "horizon moved during resync; restarting it"
            );
        }
        Err(SyncError::Remote(RemoteError::Transient(
            "the server's retention horizon kept moving during a full resync".into(),
        )))
    }

    /// Pulls and applies pages from `from` until the remote says there is no more.
    ///
    /// Pipelined: on a tokio runtime a puller task fetches (and checks) the pages one
    /// after another into a channel of one slot while this task applies them, so a
    /// slow store and a slow network overlap instead of adding up, and a slow apply
    /// (a checkpoint, say) does not leave the server idle. The watermark still only
    /// moves when the store has applied a page; if the apply fails, the puller is
    /// aborted and its pages are dropped. At most three pages are in memory (being
    /// applied, waiting, being pulled). Outside a runtime pages go one by one.
    async fn pull_pages(
        &self,
        from: Watermark,
        mode: PullMode,
        scope: Option<Arc<crate::partial::PullScope>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let limit = self.config.page_size.max(1);
        if tokio::runtime::Handle::try_current().is_err() {
            let mut wm = from;
            loop {
                let (policy, events) = (&self.config.retry, &self.events);
                let page = pull_checked(
                    &*self.remote,
                    policy,
                    events,
                    &self.progress,
                    (wm, limit, mode),
                    scope.as_deref(),
                )
                .await?;
                wm = page.watermark;
                if !self.apply_page(&page, report).await? {
                    return Ok(());
                }
            }
        }
        // During a resync pages are joined into batches of `resync_batch` changes,
        // and up to 16 pages are downloaded ahead while a batch applies.
        let batch = match mode {
            PullMode::Resync => self.config.resync_batch.max(1),
            _ => 1,
        };
        let ahead = batch.div_ceil(limit).clamp(1, 16);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Page, SyncError>>(ahead);
        let (remote, policy, events, progress) = (
            self.remote.clone(),
            self.config.retry.clone(),
            self.events.clone(),
            self.progress.clone(),
        );
        let mut puller = Puller(Some(tokio::spawn(
            async move {
                let mut wm = from;
                loop {
                    let page = pull_checked(
                        &*remote,
                        &policy,
                        &events,
                        &progress,
                        (wm, limit, mode),
                        scope.as_deref(),
                    )
                    .await;
                    let more = match &page {
                        Ok(p) => {
                            wm = p.watermark;
                            p.more
                        }
                        Err(_) => false,
                    };
                    if tx.send(page).await.is_err() || !more {
                        return;
                    }
                }
            }
            .instrument(tracing::Span::current()),
        )));
        loop {
            let mut page = match rx.recv().await {
                Some(page) => page?,
                None => return Err(puller.stopped().await),
            };
            while page.more && page.changes.len() < batch {
                let next = match rx.recv().await {
                    Some(next) => next?,
                    None => return Err(puller.stopped().await),
                };
                page.changes.extend(next.changes);
                page.watermark = next.watermark;
                page.more = next.more;
            }
            if !self.apply_page(&page, report).await? {
                return Ok(());
            }
        }
    }

    /// Applies one checked page and reports progress; returns `page.more`.
    async fn apply_page(&self, page: &Page, report: &mut SyncReport) -> Result<bool, SyncError> {
        let applied = self.local.apply_remote(page).await?;
        self.progress.made();
        report.pulled += page.changes.len();
        report.applied += applied.applied;
        report.skipped += applied.skipped;
        report.mistyped += applied.mistyped.len();
        for m in applied.mistyped {
            warn!(collection = %m.collection, id = %m.id, field = %m.field, expected = %m.expected,
                "a pulled value does not fit the local schema; kept as it came");
            self.emit(SyncEvent::Mistyped(m));
        }
        self.emit(SyncEvent::PullProgress {
            pulled: report.pulled,
            watermark: page.watermark,
        });
        Ok(page.more)
    }
}

/// The outcomes of a push as `push_outcomes` answers them, each flagged when it is
/// a refusal the engine turned into a rejection.
type Outcomes<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<Vec<(PushOutcome, bool)>, RemoteError>> + Send + 'a>,
>;

/// Runs `f` until it succeeds, fails permanently, or the policy's retries run out,
/// announcing each retry as a [`SyncEvent::Retrying`].
async fn retry<T, F, Fut>(
    p: &RetryPolicy,
    events: &broadcast::Sender<SyncEvent>,
    progress: &Progress,
    what: &'static str,
    f: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(p.initial_delay)
        .with_max_delay(p.max_delay)
        .with_max_times(p.max_retries)
        .with_jitter();
    let answer = f
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(RemoteError::is_transient)
        .notify(|e, delay| {
            warn!(%e, ?delay, what, "transient remote error, retrying");
            let _ = events.send(SyncEvent::Retrying {
                error: e.to_string(),
                delay,
            });
        })
        .await;
    if answer.is_ok() {
        progress.made();
    }
    answer
}

/// Pulls the page after `wm` (retrying transient errors) and checks it.
async fn pull_checked<R: RemoteStore + ?Sized>(
    remote: &R,
    policy: &RetryPolicy,
    events: &broadcast::Sender<SyncEvent>,
    progress: &Progress,
    (wm, limit, mode): (Watermark, usize, PullMode),
    scope: Option<&crate::partial::PullScope>,
) -> Result<Page, SyncError> {
    let page = retry(policy, events, progress, "pull", || async move {
        match scope {
            Some(scope) => remote.pull_scoped(wm, limit, mode, scope).await,
            None => remote.pull(wm, limit, mode).await,
        }
    })
    .await?;
    check_page(wm, &page)?;
    Ok(page)
}

/// The task pulling pages ahead of the store. Dropping it (the sync was cancelled,
/// or an apply failed) aborts the task.
struct Puller(Option<tokio::task::JoinHandle<()>>);

impl Drop for Puller {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl Puller {
    /// Why the task ended without sending a last page: a panic in the remote
    /// resurfaces here, as it would have inline.
    async fn stopped(&mut self) -> SyncError {
        match self.0.take() {
            Some(h) => match h.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => RemoteError::Transient(format!("page puller stopped: {e}").into()).into(),
                Ok(()) => SyncError::Protocol("page puller ended before the last page".into()),
            },
            None => SyncError::Protocol("page puller already stopped".into()),
        }
    }
}

/// Rejects pages that would break the watermark invariant.
fn check_page(since: Watermark, page: &Page) -> Result<(), SyncError> {
    if page.watermark < since {
        return Err(SyncError::Protocol(format!(
            "page watermark {:?} is behind the request {:?}",
            page.watermark, since
        )));
    }
    if page.more && page.watermark == since {
        return Err(SyncError::Protocol(
            "page says more but did not advance the watermark".into(),
        ));
    }
    let mut prev = since;
    for c in &page.changes {
        let v = Watermark(c.state.version.0);
        if v <= since || v > page.watermark || v < prev {
            return Err(SyncError::Protocol(format!(
                "change {}/{} at {:?} is outside or out of order in page ({:?}, {:?}]",
                c.collection, c.id, c.state.version, since, page.watermark
            )));
        }
        prev = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Error paths of the engine, with mocked stores.

    use super::*;
    use crate::error::StoreError;
    use crate::id::{new_id, ChangeId, RecordId};
    use crate::record::{ApplyReport, Op, PushOutcome, RemoteChange, SyncState, Version};
    use crate::remote::MockRemoteStore;
    use crate::store::MockSyncStore;
    use mockall::predicate::eq;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A mocked remote that syncs every collection.
    fn mock_remote() -> MockRemoteStore {
        let mut r = MockRemoteStore::new();
        r.expect_collections().returning(|| Ok(None));
        r
    }

    fn change(client: &RecordId) -> PendingChange {
        PendingChange {
            seq: 1,
            change_id: ChangeId {
                client: client.clone(),
                n: 1,
            },
            collection: "songs".into(),
            id: new_id(),
            base: None,
            op: Op::Upsert(
                serde_json::json!({"title": "x"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            changed: ["title".to_string()].into(),
            tx: None,
        }
    }

    fn local_with(pending: Vec<PendingChange>, wm: u64) -> MockSyncStore {
        local_counted(pending, wm).0
    }

    /// A mock store whose outbox empties when the returned counter is set to 0.
    fn local_counted(pending: Vec<PendingChange>, wm: u64) -> (MockSyncStore, Arc<AtomicUsize>) {
        let client = pending
            .first()
            .map(|p| p.change_id.client.clone())
            .unwrap_or_else(new_id);
        let mut l = MockSyncStore::new();
        l.expect_client_id().returning(move || Ok(client.clone()));
        l.expect_keeps_sync_meta().return_const(false);
        let n = pending.len();
        let count = Arc::new(AtomicUsize::new(n));
        let c2 = count.clone();
        let c3 = count.clone();
        l.expect_pending_count()
            .returning(move || Ok(c2.load(Ordering::SeqCst)));
        l.expect_pending().returning(move |after, _| {
            Ok(pending
                .iter()
                .filter(|p| p.seq > after && count.load(Ordering::SeqCst) > 0)
                .cloned()
                .collect())
        });
        l.expect_sync_state().returning(move || {
            Ok(SyncState {
                watermark: Watermark(wm),
                resyncing: false,
            })
        });
        (l, c3)
    }

    fn fast<L: SyncStore, R: RemoteStore + 'static>(e: SyncEngine<L, R>) -> SyncEngine<L, R> {
        e.with_config(SyncConfig {
            retry: RetryPolicy::immediate(3),
            ..SyncConfig::default()
        })
    }

    fn empty_page(wm: u64) -> Page {
        Page {
            changes: vec![],
            watermark: Watermark(wm),
            more: false,
        }
    }

    #[tokio::test]
    async fn transient_pull_errors_are_retried_then_succeed() {
        let mut local = local_with(vec![], 3);
        local.expect_apply_remote().times(1).returning(|p| {
            assert_eq!(p.changes.len(), 1);
            Ok(ApplyReport {
                applied: 1,
                ..Default::default()
            })
        });
        let mut remote = mock_remote();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        remote.expect_pull().returning(move |since, _, mode| {
            assert_eq!((since, mode), (Watermark(3), PullMode::Incremental));
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(RemoteError::Transient("connection reset".into()))
            } else {
                Ok(Page {
                    changes: vec![RemoteChange {
                        collection: "songs".into(),
                        id: new_id(),
                        state: RemoteState {
                            version: Version(4),
                            fields: None,
                            change_id: None,
                        },
                    }],
                    watermark: Watermark(4),
                    more: false,
                })
            }
        });
        let engine = fast(SyncEngine::new(local, remote));
        let mut events = engine.subscribe();
        let report = engine.sync().await.expect("sync succeeds after retries");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then success"
        );
        assert_eq!((report.pulled, report.applied), (1, 1));
        let mut retries = 0;
        while let Ok(e) = events.try_recv() {
            if matches!(e, SyncEvent::Retrying { .. }) {
                retries += 1;
            }
        }
        assert_eq!(retries, 2, "each retry is reported");
    }

    #[tokio::test]
    async fn transient_errors_give_up_after_the_bound_and_change_nothing() {
        let client = new_id();
        let mut local = local_with(vec![change(&client)], 4);
        local.expect_ack().never();
        local.expect_apply_remote().never();
        let mut remote = mock_remote();
        remote.expect_max_push_batch().return_const(100usize);
        remote
            .expect_push()
            .times(4)
            .returning(|_| Err(RemoteError::Transient("503".into())));
        // The pull runs anyway, and meets the same outage.
        remote
            .expect_pull()
            .times(4)
            .returning(|_, _, _| Err(RemoteError::Transient("connection refused".into())));
        let err = fast(SyncEngine::new(local, remote))
            .sync()
            .await
            .unwrap_err();
        assert!(err.is_transient(), "the caller may try again later: {err}");
        assert!(
            err.to_string().contains("503"),
            "the push's error is the one returned: {err}"
        );
    }

    #[tokio::test]
    async fn permanent_rejection_is_quarantined_and_reported() {
        let client = new_id();
        let pending = change(&client);
        let (mut local, outbox) = local_counted(vec![pending.clone()], 0);
        let p2 = pending.clone();
        local.expect_ack().times(1).returning(move |acks| {
            outbox.store(0, Ordering::SeqCst);
            assert_eq!(acks.len(), 1);
            match &acks[0] {
                Ack::Quarantine {
                    change,
                    rejection,
                    server,
                } => {
                    assert_eq!(change, &p2, "the change is kept whole, with its data");
                    assert_eq!(
                        rejection.fields.get("title").map(String::as_str),
                        Some("too long")
                    );
                    assert!(server.is_none());
                }
                other => panic!("expected quarantine, got {other:?}"),
            }
            Ok(())
        });
        local.expect_begin_resync().returning(|| Ok(()));
        local
            .expect_apply_remote()
            .returning(|_| Ok(ApplyReport::default()));
        local.expect_finish_resync().returning(|_| Ok(0));
        let mut remote = mock_remote();
        remote.expect_horizon().returning(|| Ok(Watermark(0)));
        remote.expect_max_push_batch().return_const(100usize);
        remote.expect_push().times(1).returning(|_| {
            Ok(vec![PushOutcome::Rejected(Rejection {
                message: "Failed to create record.".into(),
                fields: [("title".to_string(), "too long".to_string())].into(),
            })])
        });
        remote.expect_fetch().times(1).returning(|_, _| Ok(None));
        remote.expect_pull().returning(|_, _, _| Ok(empty_page(0)));
        let engine = fast(SyncEngine::new(local, remote));
        let mut events = engine.subscribe();
        let report = engine.sync().await.unwrap();
        assert_eq!(report.rejected, 1);
        let rejected = std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| matches!(e, SyncEvent::Rejected { change, .. } if change == &pending))
            .count();
        assert_eq!(rejected, 1, "the app is told, with the data");
    }

    #[tokio::test]
    async fn expired_watermark_resyncs_from_zero_keeping_the_outbox() {
        let mut local = local_with(vec![], 7);
        let mut seq = mockall::Sequence::new();
        local
            .expect_begin_resync()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|| Ok(()));
        local
            .expect_apply_remote()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(ApplyReport::default()));
        local
            .expect_finish_resync()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(2));
        local.expect_ack().never();
        let mut remote = mock_remote();
        remote
            .expect_horizon()
            .times(2)
            .returning(|| Ok(Watermark(9)));
        remote
            .expect_pull()
            .with(
                eq(Watermark(7)),
                mockall::predicate::always(),
                eq(PullMode::Incremental),
            )
            .times(1)
            .returning(|since, _, _| {
                Err(RemoteError::WatermarkExpired {
                    since,
                    horizon: Watermark(9),
                })
            });
        remote
            .expect_pull()
            .with(
                eq(Watermark(0)),
                mockall::predicate::always(),
                eq(PullMode::Resync),
            )
            .times(1)
            .returning(|_, _, _| Ok(empty_page(12)));
        let engine = fast(SyncEngine::new(local, remote));
        let mut events = engine.subscribe();
        let report = engine.sync().await.unwrap();
        assert!(report.resynced);
        let evs: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert!(evs.contains(&SyncEvent::ResyncStarted));
        assert!(evs.contains(&SyncEvent::ResyncFinished { removed: 2 }));
    }

    #[tokio::test]
    async fn auth_failure_is_a_clear_error_and_changes_nothing() {
        let client = new_id();
        let mut local = local_with(vec![change(&client)], 0);
        local.expect_ack().never();
        local.expect_apply_remote().never();
        local.expect_begin_resync().never();
        let mut remote = mock_remote();
        remote.expect_max_push_batch().return_const(100usize);
        remote
            .expect_push()
            .times(1)
            .returning(|_| Err(RemoteError::Auth("token expired; sign in again".into())));
        let err = fast(SyncEngine::new(local, remote))
            .sync()
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::Remote(RemoteError::Auth(_))));
        assert!(!err.is_transient());
        assert!(
            err.to_string()
                .contains("authentication failed: token expired"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_outcome_count_is_a_protocol_error_and_acks_nothing() {
        let client = new_id();
        let mut local = local_with(vec![change(&client)], 5);
        local.expect_ack().never();
        local
            .expect_apply_remote()
            .times(1)
            .returning(|_| Ok(ApplyReport::default()));
        let mut remote = mock_remote();
        remote.expect_max_push_batch().return_const(100usize);
        remote.expect_push().returning(|_| Ok(vec![]));
        remote
            .expect_pull()
            .times(1)
            .returning(|_, _, _| Ok(empty_page(5)));
        let err = fast(SyncEngine::new(local, remote))
            .sync()
            .await
            .unwrap_err();
        assert!(matches!(err.cause(), SyncError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn a_page_outside_its_range_is_refused_before_applying() {
        let mut local = local_with(vec![], 5);
        local.expect_apply_remote().never();
        let mut remote = mock_remote();
        remote.expect_pull().returning(|_, _, _| {
            Ok(Page {
                changes: vec![RemoteChange {
                    collection: "songs".into(),
                    id: new_id(),
                    state: RemoteState {
                        version: Version(3),
                        fields: None,
                        change_id: None,
                    },
                }],
                watermark: Watermark(6),
                more: false,
            })
        });
        let err = fast(SyncEngine::new(local, remote))
            .sync()
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::Protocol(_)), "{err}");
    }

    /// A remote of `pages` pages of one change each, pages numbered from 1; the
    /// returned flags record which pages were asked for.
    fn paged_remote(pages: u64) -> (MockRemoteStore, Arc<Vec<std::sync::atomic::AtomicBool>>) {
        let asked: Arc<Vec<_>> = Arc::new(
            (0..=pages)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        );
        let a = asked.clone();
        let mut remote = mock_remote();
        remote.expect_pull().returning(move |since, _, _| {
            let n = since.0 + 1;
            a[n as usize].store(true, Ordering::SeqCst);
            Ok(Page {
                changes: vec![RemoteChange {
                    collection: "songs".into(),
                    id: new_id(),
                    state: RemoteState {
                        version: Version(n),
                        fields: None,
                        change_id: None,
                    },
                }],
                watermark: Watermark(n),
                more: n < pages,
            })
        });
        (remote, asked)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_are_pulled_ahead_while_a_slow_apply_runs() {
        let (remote, asked) = paged_remote(4);
        let mut local = local_with(vec![], 1);
        let overlapped = Arc::new(AtomicUsize::new(0));
        let o = overlapped.clone();
        local.expect_apply_remote().returning(move |page| {
            // A slow, blocking store (as SQLite is during a checkpoint) waits here,
            // up to 5 s, for the engine to ask for the page *after next*: pulling
            // must not wait for applies.
            let after_next = page.watermark.0 as usize + 2;
            if after_next < asked.len() {
                let seen = tokio::task::block_in_place(|| {
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_secs(5) {
                        if asked[after_next].load(Ordering::SeqCst) {
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    false
                });
                if seen {
                    o.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(ApplyReport {
                applied: page.changes.len(),
                ..ApplyReport::default()
            })
        });
        let report = fast(SyncEngine::new(local, remote)).sync().await.unwrap();
        assert_eq!(report.pulled, 3, "pages 2, 3 and 4");
        assert_eq!(
            overlapped.load(Ordering::SeqCst),
            1,
            "page 4 was pulled while page 2 was still being applied"
        );
    }

    #[tokio::test]
    async fn a_failed_apply_drops_the_pages_pulled_ahead_and_moves_nothing() {
        let (remote, _) = paged_remote(4);
        let mut local = local_with(vec![], 1);
        let applied = Arc::new(AtomicUsize::new(0));
        let a = applied.clone();
        local.expect_apply_remote().returning(move |page| {
            if page.watermark.0 == 3 {
                return Err(StoreError::Busy("database is locked".into()));
            }
            a.fetch_add(1, Ordering::SeqCst);
            Ok(ApplyReport::default())
        });
        let err = fast(SyncEngine::new(local, remote))
            .sync()
            .await
            .unwrap_err();
        assert!(
            matches!(err.cause(), SyncError::Store(StoreError::Busy(_))),
            "{err}"
        );
        assert_eq!(
            err.done().map(|d| d.pulled),
            Some(1),
            "the error says what the sync did before it failed"
        );
        assert_eq!(
            applied.load(Ordering::SeqCst),
            1,
            "only page 2 applied; page 4, pulled ahead, never reached the store"
        );
    }

    #[tokio::test]
    async fn store_failure_stops_the_sync() {
        let mut local = MockSyncStore::new();
        local
            .expect_pending_count()
            .returning(|| Err(StoreError::Busy("database is locked".into())));
        local.expect_sync_state().never();
        let remote = mock_remote();
        let err = SyncEngine::new(local, remote).sync().await.unwrap_err();
        assert!(err.is_transient());
    }
}
