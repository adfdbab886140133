//! Partial sync in the engine: the scope ([`SyncScope`]), resyncs of some
//! collections alone, and the filter reconcile.
//!
//! A child module of `engine`, so it reaches the engine's private state.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, info_span, warn, Instrument};

use super::{SyncEngine, SyncEvent, SyncReport};
use crate::error::{Cause, RemoteError, StoreError, SyncError};
use crate::id::RecordId;
use crate::partial::{PullScope, ScopeNote, SyncScope};
use crate::record::Watermark;
use crate::remote::{PullMode, RemoteStore};
use crate::store::SyncStore;

/// What the engine remembers in memory about its scope.
#[derive(Debug, Default)]
pub(super) struct Memo {
    /// The scope this engine last finished a sync of the filtered collections
    /// with, for stores that do not keep it ([`SyncStore::keeps_sync_meta`]).
    remembered: Option<ScopeNote>,
    /// When the filtered collections were last reconciled or resynced.
    checked: Option<Instant>,
}

/// A resync of some collections alone.
#[derive(Debug)]
pub(super) struct Plan {
    /// The pull: every synced collection above the watermark, the resynced ones
    /// from zero.
    pull: PullScope,
    /// The collections resynced (their undelivered records are removed).
    collections: BTreeSet<String>,
}

impl<L: SyncStore, R: RemoteStore + 'static> SyncEngine<L, R> {
    /// Syncs only what `scope` says: a subset of the remote's collections, a
    /// server-side filter per collection (see [`SyncScope`] for what happens to
    /// records that stop matching, and to a collection whose scope changes).
    ///
    /// A remote that cannot filter answers a sync with a filter with
    /// [`RemoteError::Unsupported`] (the PostgreSQL remote does); a subset works
    /// with every remote.
    pub fn with_scope(mut self, scope: SyncScope) -> Self {
        self.scope = scope;
        self
    }

    /// The scope this engine syncs.
    pub fn scope(&self) -> &SyncScope {
        &self.scope
    }

    /// The collections this engine syncs now: the remote's synced set
    /// ([`RemoteStore::collections`]) narrowed to [`SyncScope::only`]; `None`:
    /// whatever the store holds.
    pub(super) async fn scoped_collections(&self) -> Result<Option<BTreeSet<String>>, SyncError> {
        let remote = self
            .retry("collections", || self.remote.collections())
            .await?;
        Ok(match (remote, &self.scope.only) {
            (None, None) => None,
            (Some(r), None) => Some(r),
            (None, Some(o)) => Some(o.clone()),
            (Some(r), Some(o)) => Some(r.intersection(o).cloned().collect()),
        })
    }

    /// The pull scope of an ordinary pull (no floors); `None` when the scope is
    /// everything (the plain [`RemoteStore::pull`] is used).
    pub(super) fn full_pull_scope(&self) -> Option<Arc<PullScope>> {
        if self.scope.is_everything() {
            return None;
        }
        Some(Arc::new(PullScope {
            only: self.scope.only.clone(),
            filters: self.scope.filters.clone(),
            ..PullScope::default()
        }))
    }

    /// Records that the store now holds everything under the current scope (after
    /// a full resync, or a resync of the collections whose scope changed).
    pub(super) async fn remember_scope(&self) -> Result<(), SyncError> {
        let note = self.scope.note();
        if self.local.keeps_sync_meta() {
            let json = serde_json::to_string(&note)
                .map_err(|e| StoreError::Backend(Cause::new(format!("scope note: {e}"), e)))?;
            let kept = self.local.sync_meta(ScopeNote::KEY).await?;
            if kept.as_deref() != Some(json.as_str()) {
                self.local.set_sync_meta(ScopeNote::KEY, Some(json)).await?;
            }
        }
        let mut memo = self.memo();
        memo.remembered = Some(note);
        if !self.scope.filters.is_empty() {
            memo.checked = Some(Instant::now());
        }
        Ok(())
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.scope_memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The scope the store was last synced with: `None` when nobody knows (a
    /// store that does not keep notes, at this engine's first sync).
    async fn scope_before(&self) -> Result<Option<ScopeNote>, SyncError> {
        if self.local.keeps_sync_meta() {
            return Ok(match self.local.sync_meta(ScopeNote::KEY).await? {
                // Never noted: synced before partial sync existed, with everything.
                None => Some(ScopeNote::default()),
                Some(json) => match serde_json::from_str(&json) {
                    Ok(note) => Some(note),
                    Err(e) => {
                        warn!(%e, "unreadable scope note; resyncing the scoped collections");
                        None
                    }
                },
            });
        }
        let remembered = self.memo().remembered.clone();
        Ok(remembered.or_else(|| {
            // An engine syncing everything cannot tell an earlier one's scope:
            // taken as the same (the behaviour before partial sync).
            self.scope.is_everything().then(ScopeNote::default)
        }))
    }

    /// Which collections need a resync of their own because their scope changed
    /// since the store was last synced (a filter added, changed or removed, a
    /// collection added to the subset); `None`: nothing changed. A change that
    /// cannot be resynced collection by collection (the subset widened to
    /// "everything" while the remote does not list its collections) is a full
    /// resync: every collection from zero.
    pub(super) async fn scope_plan(
        &self,
        synced: Option<&BTreeSet<String>>,
        watermark: Watermark,
    ) -> Result<Option<Plan>, SyncError> {
        let now = self.scope.note();
        let before = self.scope_before().await?;
        if before.as_ref() == Some(&now) {
            return Ok(None);
        }
        let changed = |c: &str, before: &Option<ScopeNote>| match before {
            None => true,
            Some(b) => {
                !b.only.as_ref().is_none_or(|o| o.contains(c))
                    || b.filters.get(c) != now.filters.get(c)
            }
        };
        let (floor, collections) = match synced {
            Some(set) => (
                watermark,
                set.iter()
                    .filter(|c| changed(c, &before))
                    .cloned()
                    .collect::<BTreeSet<_>>(),
            ),
            None => match &before {
                Some(b) if b.only.is_none() => (
                    watermark,
                    b.filters
                        .keys()
                        .chain(now.filters.keys())
                        .filter(|c| changed(c, &before))
                        .cloned()
                        .collect(),
                ),
                // Collections come back that cannot be named: all from zero.
                _ => (Watermark(0), BTreeSet::new()),
            },
        };
        if floor.0 > 0 && collections.is_empty() {
            // Only collections left the scope: nothing to pull again.
            self.remember_scope().await?;
            return Ok(None);
        }
        let mut pull = PullScope {
            only: self.scope.only.clone(),
            filters: self.scope.filters.clone(),
            floor,
            ..PullScope::default()
        };
        pull.floors = collections
            .iter()
            .map(|c| (c.clone(), Watermark(0)))
            .collect();
        info!(?collections, ?floor, "the scope changed; resyncing");
        Ok(Some(Plan { pull, collections }))
    }

    /// Resyncs `plan.collections` alone: their snapshot pulled from zero through
    /// their filter, their records not delivered (and without an outbox entry)
    /// removed, while every other synced collection is pulled from the watermark in
    /// the same pass. The outbox is untouched (it was pushed before; what it still
    /// holds goes out next time). A plan with no collections, or one whose floor
    /// the server's horizon has passed (tombstones the other collections need are
    /// gone), is a full resync. A crash midway leaves the store resyncing, and the
    /// next sync resyncs fully.
    pub(super) async fn resync_collections(
        &self,
        plan: Plan,
        synced: Option<BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        if plan.pull.floor.0 == 0 {
            return self.full_resync(synced, report).await;
        }
        let pull = Arc::new(plan.pull);
        let remove: BTreeSet<String> = plan.collections;
        for attempt in 0..=self.config.max_resyncs {
            let before = self.retry("horizon", || self.remote.horizon()).await?;
            if before > pull.floor {
                info!(horizon = ?before, floor = ?pull.floor, "tombstones past the watermark are gone; full resync");
                return self.full_resync(synced, report).await;
            }
            self.emit(SyncEvent::ResyncStarted);
            self.local.begin_resync().await?;
            self.pull_pages(Watermark(0), PullMode::Resync, Some(pull.clone()), report)
                .instrument(info_span!("collection_resync"))
                .await?;
            let after = self.retry("horizon", || self.remote.horizon()).await?;
            if after == before {
                let removed = self.local.finish_resync(Some(remove.clone())).await?;
                info!(collections = ?remove, removed, "collections resynced");
                self.emit(SyncEvent::ResyncFinished { removed });
                report.resynced_collections.extend(remove);
                return self.remember_scope().await;
            }
            info!(
                attempt,
                ?before,
                ?after,
                "horizon moved during a collection resync; restarting it"
            );
        }
        Err(SyncError::Remote(RemoteError::Transient(
            "the server's retention horizon kept moving during a resync".into(),
        )))
    }

    async fn full_resync(
        &self,
        synced: Option<BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        self.emit(SyncEvent::ResyncStarted);
        report.resynced = true;
        self.resync(synced, report).await?;
        self.remember_scope().await
    }

    /// Checks every filtered collection for records that stopped matching its
    /// filter without a write (a filter on `@now`, a relation that changed, a rule),
    /// or started to: the ids the server matches now ([`RemoteStore::matching`],
    /// ids and versions only) against the store's records. A collection holding a
    /// record the server no longer matches (and that has no outbox entry), or
    /// missing one the server matches at a version the store has pulled past, is
    /// resynced alone ([`SyncReport::resynced_collections`]); the resync, not a
    /// removal by id, because only the server's snapshot tells each record's
    /// version, which a later return of the record must be able to reuse.
    ///
    /// Runs a sync first; runs also within [`SyncEngine::reconcile`], and after a
    /// sync when [`SyncScope::reconcile_every`] has passed. Same limits and status
    /// as [`SyncEngine::sync`].
    pub async fn reconcile_filters(&self) -> Result<SyncReport, SyncError> {
        let _guard = self.running.lock().await;
        let run = async {
            let mut report = self.sync_locked().await?;
            let synced = self.scoped_collections().await?;
            self.reconcile_filters_locked(synced.as_ref(), &mut report)
                .await?;
            report.remaining = self.local.pending_count().await?;
            Ok(report)
        }
        .instrument(info_span!("reconcile_filters"));
        self.tracked(run).await
    }

    /// The filter reconcile, if [`SyncScope::reconcile_every`] has passed.
    pub(super) async fn reconcile_filters_if_due(
        &self,
        synced: Option<&BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let Some(every) = self.scope.reconcile_every else {
            return Ok(());
        };
        if self.scope.filters.is_empty() {
            return Ok(());
        }
        let due = self.memo().checked.is_none_or(|t| t.elapsed() >= every);
        if due {
            self.reconcile_filters_locked(synced, report).await?;
        }
        Ok(())
    }

    /// The ids of the records the store holds in `collection`, read a page at a
    /// time ([`SyncStore::list_page`]: the records themselves are not kept).
    async fn held_ids(&self, collection: &str) -> Result<HashSet<RecordId>, StoreError> {
        const PAGE: usize = 1000;
        let mut ids = HashSet::new();
        let mut after = None;
        loop {
            let page = self.local.list_page(collection, after.take(), PAGE).await?;
            let full = page.len() == PAGE;
            let last = page.last().map(|r| r.id.clone());
            ids.extend(page.into_iter().map(|r| r.id));
            match last {
                Some(id) if full => after = Some(id),
                _ => return Ok(ids),
            }
        }
    }

    pub(super) async fn reconcile_filters_locked(
        &self,
        synced: Option<&BTreeSet<String>>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        if self.scope.filters.is_empty() {
            return Ok(());
        }
        let watermark = self.local.sync_state().await?.watermark;
        let pending = self.pending_ids().await?;
        let none = HashSet::new();
        let mut drifted = BTreeSet::new();
        for (collection, filter) in &self.scope.filters {
            if !self.scope.includes(collection) || synced.is_some_and(|s| !s.contains(collection)) {
                continue;
            }
            let held = match self.held_ids(collection).await {
                Ok(ids) => ids,
                // Not held here: nothing to compare.
                Err(StoreError::UnknownCollection(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let matched = self
                .retry("matching", || self.remote.matching(collection, filter))
                .await?;
            let pend = pending.get(collection).unwrap_or(&none);
            let stale = held
                .iter()
                .filter(|id| !matched.contains_key(*id) && !pend.contains(*id))
                .count();
            let missing = matched
                .iter()
                .filter(|(id, v)| v.0 <= watermark.0 && !held.contains(id) && !pend.contains(*id))
                .count();
            if stale + missing > 0 {
                info!(%collection, stale, missing, "records left or entered the filter without a write");
                drifted.insert(collection.clone());
            }
        }
        self.memo().checked = Some(Instant::now());
        if drifted.is_empty() || watermark.0 == 0 {
            return Ok(());
        }
        let plan = Plan {
            pull: PullScope {
                only: self.scope.only.clone(),
                filters: self.scope.filters.clone(),
                floor: watermark,
                floors: drifted.iter().map(|c| (c.clone(), Watermark(0))).collect(),
            },
            collections: drifted,
        };
        self.resync_collections(plan, synced.cloned(), report).await
    }

    /// The ids with an outbox entry, per collection.
    async fn pending_ids(&self) -> Result<HashMap<String, HashSet<RecordId>>, SyncError> {
        let mut out: HashMap<String, HashSet<RecordId>> = HashMap::new();
        let mut after = 0;
        loop {
            let entries = self.local.pending(after, 1000).await?;
            let Some(last) = entries.last() else { break };
            if last.seq <= after {
                return Err(SyncError::Store(StoreError::Backend(
                    "the outbox did not advance while listing it".into(),
                )));
            }
            after = last.seq;
            for e in entries {
                out.entry(e.collection).or_default().insert(e.id);
            }
        }
        Ok(out)
    }
}
