//! [`FakeRemote`]: an in-memory server that models what tidemark relies on in
//! PocketBase: a commit-ordered `seq`, tombstones, a retention horizon, conditional
//! writes on a base version, idempotent change ids and per-user visibility.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;

use crate::error::RemoteError;
use crate::id::{ChangeId, RecordId};
use crate::partial::{Filter, PullScope};
use crate::record::{
    Fields, Op, Page, PushChange, PushOutcome, Record, Rejection, RemoteChange, RemoteState,
    Version, Watermark,
};
use crate::remote::{PullMode, RemoteStore};

type Key = (String, RecordId);
/// A record's idempotency memory: writer id -> counter -> version it produced.
type Memory = std::collections::HashMap<RecordId, BTreeMap<u64, Version>>;

/// Who is asking, for visibility.
///
/// `User(u)` sees records whose `owner` field is absent, null, `""` or `u` — the
/// fake's stand-in for PocketBase's list/view rules. A record that was visible to `u`
/// and no longer is (owner changed, deleted) reaches `u` as a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Superuser: sees and may write everything.
    All,
    /// An ordinary user.
    User(String),
}

#[derive(Clone, Debug)]
struct Entry {
    fields: Option<Fields>,
    version: Version,
    change_id: Option<ChangeId>,
    past_owners: BTreeSet<String>,
    public_ever: bool,
    /// Per writer: every change counter applied to this record, with the version
    /// it produced (an ideal server's memory: PocketBase keeps each writer's newest
    /// per record, and none after compaction; see the `RemoteStore` contract).
    by_client: Memory,
}

#[derive(Debug, Default)]
struct Server {
    seq: u64,
    horizon: u64,
    records: BTreeMap<Key, Entry>,
    by_version: BTreeMap<u64, Key>,
    pulls: u64,
    pushes: u64,
    applied: std::collections::HashMap<ChangeId, u32>,
    /// Every collection ever written (the server's "synced collections").
    collections: BTreeSet<String>,
    /// The collections the server syncs; `None`: any collection.
    synced: Option<BTreeSet<String>>,
    /// Compacted tombstones keep only their idempotency memory.
    graveyard: std::collections::HashMap<Key, Memory>,
}

fn owner(fields: &Fields) -> Option<&str> {
    match fields.get("owner") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

impl Access {
    fn sees_fields(&self, f: &Fields) -> bool {
        match self {
            Access::All => true,
            Access::User(u) => owner(f).is_none_or(|o| o == u),
        }
    }

    /// What this caller sees of an entry: `None` = nothing at all.
    fn view(&self, e: &Entry) -> Option<RemoteState> {
        let live = e.fields.as_ref().filter(|f| self.sees_fields(f));
        let ever = match self {
            Access::All => true,
            Access::User(u) => e.public_ever || e.past_owners.contains(u),
        };
        if live.is_none() && !ever {
            return None;
        }
        Some(RemoteState {
            version: e.version,
            fields: live.cloned(),
            change_id: e.change_id.clone(),
        })
    }
}

/// An in-memory PocketBase-like remote. Clones share one server; [`FakeRemote::as_user`]
/// gives another caller's view of the same server.
#[derive(Clone, Debug)]
pub struct FakeRemote {
    server: Arc<Mutex<Server>>,
    access: Access,
    max_batch: usize,
    max_body: usize,
    writes: WriteRules,
}

/// How the fake applies an upsert, for modelling a server that does not store a
/// write exactly as sent (PocketBase: a PATCH keeps the fields a write leaves out,
/// and values are coerced to the field's type).
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteRules {
    /// An upsert of a live record keeps the fields it does not name (a PATCH).
    pub patch: bool,
    /// Changes a record's fields as the server's schema would, after the write.
    pub normalise: Option<fn(&str, &mut Fields)>,
}

impl Default for FakeRemote {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRemote {
    /// An empty server, seen as superuser.
    pub fn new() -> Self {
        Self {
            server: Arc::default(),
            access: Access::All,
            max_batch: 500,
            max_body: usize::MAX,
            writes: WriteRules::default(),
        }
    }

    /// The same server as seen by `user`.
    pub fn as_user(&self, user: &str) -> Self {
        Self {
            access: Access::User(user.to_owned()),
            ..self.clone()
        }
    }

    /// The same server refusing, as a whole and with [`RemoteError::TooLarge`], any
    /// push whose changes' JSON adds up to more than `bytes` (PocketBase answers
    /// such a batch `413 Request entity too large`).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The same server applying this caller's upserts by `rules` (see
    /// [`WriteRules`]); by default an upsert replaces the record exactly as sent.
    pub fn with_write_rules(mut self, rules: WriteRules) -> Self {
        self.writes = rules;
        self
    }

    /// The same server with a different push batch limit.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// The caller's user id for filters (`""` for a superuser).
    fn user(&self) -> &str {
        match &self.access {
            Access::All => "",
            Access::User(u) => u,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Server> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One page of the log after `since` (the horizon checked for incremental
    /// pulls), in version order, as the caller sees it; with a `scope`
    /// ([`RemoteStore::pull_scoped`]), only the changes it wants, and a record
    /// changed in the range that does not match its collection's filter is sent as
    /// a tombstone at its version, unless the scope resyncs that collection.
    fn page(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: Option<&PullScope>,
    ) -> Result<Page, RemoteError> {
        let mut s = self.lock();
        s.pulls += 1;
        if mode == PullMode::Incremental && since.0 > 0 && since.0 < s.horizon {
            return Err(RemoteError::WatermarkExpired {
                since,
                horizon: Watermark(s.horizon),
            });
        }
        // Filters see the record as the caller sees it.
        let user = self.user();
        let limit = limit.max(1);
        let mut changes = Vec::new();
        let mut watermark = Watermark(s.seq);
        let mut more = false;
        for (v, key) in s.by_version.range(since.0 + 1..) {
            if !s.syncs(&key.0) || scope.is_some_and(|sc| !sc.wants(&key.0, *v)) {
                continue;
            }
            let Some(mut state) = s.records.get(key).and_then(|e| self.access.view(e)) else {
                continue;
            };
            let filter = scope.and_then(|sc| sc.filter_of(&key.0).map(|f| (sc, f)));
            if let (Some((scope, filter)), Some(fields)) = (filter, &state.fields) {
                let hit =
                    super::fake_filter::matches(filter.as_str(), fields, user).map_err(|e| {
                        RemoteError::Permanent(format!("400 bad filter {filter:?}: {e}"))
                    })?;
                if !hit {
                    if scope.resyncs(&key.0, mode) {
                        continue;
                    }
                    state.fields = None;
                }
            }
            if changes.len() == limit {
                more = true;
                break;
            }
            watermark = Watermark(*v);
            changes.push(RemoteChange {
                collection: key.0.clone(),
                id: key.1.clone(),
                state,
            });
        }
        if !more {
            watermark = Watermark(s.seq);
        }
        Ok(Page {
            changes,
            watermark,
            more,
        })
    }

    /// Drops every tombstone and sets the retention horizon to the current head, as
    /// the server's retention job does for "older than the period". Returns the new
    /// horizon.
    pub fn compact(&self) -> Watermark {
        let mut s = self.lock();
        let dead: Vec<(u64, Key)> = s
            .records
            .iter()
            .filter(|(_, e)| e.fields.is_none())
            .map(|(k, e)| (e.version.0, k.clone()))
            .collect();
        for (v, k) in dead {
            if let Some(e) = s.records.remove(&k) {
                s.graveyard.insert(k, e.by_client);
            }
            s.by_version.remove(&v);
        }
        s.horizon = s.seq;
        Watermark(s.horizon)
    }

    /// Sets which collections the server syncs (`None`: any). A collection taken
    /// out is neither pulled nor accepted in pushes; one added later is pulled from
    /// then on, with everything it holds.
    pub fn set_synced<I, S>(&self, collections: Option<I>)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lock().synced = collections.map(|c| c.into_iter().map(Into::into).collect());
    }

    /// The current head `seq`.
    pub fn head(&self) -> Watermark {
        Watermark(self.lock().seq)
    }

    /// Live records this caller can see, ordered by (collection, id).
    pub fn snapshot(&self) -> Vec<Record> {
        let s = self.lock();
        s.records
            .iter()
            .filter_map(|((c, id), e)| {
                let f = self.access.view(e)?.fields?;
                Some(Record::new(c.clone(), id.clone(), f))
            })
            .collect()
    }

    /// Number of pull and push calls served so far (round trips).
    pub fn round_trips(&self) -> (u64, u64) {
        let s = self.lock();
        (s.pulls, s.pushes)
    }

    /// How many times each change id was applied (an idempotent remote applies each
    /// at most once).
    pub fn applied_change_ids(&self) -> std::collections::HashMap<ChangeId, u32> {
        self.lock().applied.clone()
    }

    /// Removes a record behind sync's back, leaving no tombstone — like a raw SQL
    /// delete or a rule change that hides a record without any write. Only
    /// [`crate::SyncEngine::reconcile`] notices.
    pub fn raw_delete(&self, collection: &str, id: &RecordId) {
        let mut s = self.lock();
        if let Some(e) = s.records.remove(&(collection.to_owned(), id.clone())) {
            s.by_version.remove(&e.version.0);
        }
    }

    /// Changes a record's fields behind sync's back, keeping its version — like a
    /// rule change (or a raw SQL update) that shows a record to callers who did not
    /// see it, with no write they could pull. Only
    /// [`crate::SyncEngine::reconcile`] notices. Returns whether the record exists.
    pub fn raw_update(&self, collection: &str, id: &RecordId, fields: Fields) -> bool {
        let mut s = self.lock();
        match s.records.get_mut(&(collection.to_owned(), id.clone())) {
            Some(e) => {
                e.fields = Some(fields);
                true
            }
            None => false,
        }
    }

    /// A write made directly on the server (admin UI, another service): no base
    /// check, no change id.
    pub fn server_write(&self, collection: &str, id: &RecordId, fields: Option<Fields>) -> Version {
        let mut s = self.lock();
        s.write((collection.to_owned(), id.clone()), fields, None)
    }
}

impl Server {
    fn syncs(&self, collection: &str) -> bool {
        self.synced.as_ref().is_none_or(|s| s.contains(collection))
    }

    fn write(&mut self, key: Key, fields: Option<Fields>, change_id: Option<ChangeId>) -> Version {
        self.seq += 1;
        let version = Version(self.seq);
        self.collections.insert(key.0.clone());
        let grave = self.graveyard.remove(&key).unwrap_or_default();
        let entry = self.records.entry(key.clone()).or_insert_with(|| Entry {
            fields: None,
            version,
            change_id: None,
            past_owners: BTreeSet::new(),
            public_ever: false,
            by_client: grave,
        });
        let old = entry.version.0;
        if let Some(f) = &fields {
            match owner(f) {
                Some(o) => {
                    entry.past_owners.insert(o.to_owned());
                }
                None => entry.public_ever = true,
            }
        }
        entry.fields = fields;
        entry.version = version;
        if let Some(c) = &change_id {
            *self.applied.entry(c.clone()).or_default() += 1;
            entry
                .by_client
                .entry(c.client.clone())
                .or_default()
                .insert(c.n, version);
        }
        entry.change_id = change_id;
        self.by_version.remove(&old);
        self.by_version.insert(version.0, key);
        version
    }

    fn apply(&mut self, access: &Access, rules: WriteRules, c: PushChange) -> PushOutcome {
        let key = (c.collection.clone(), c.id.clone());
        let cur = self.records.get(&key);
        let grave = if cur.is_none() {
            self.graveyard.get(&key)
        } else {
            None
        };
        if let Some(by_client) = cur.map(|e| &e.by_client).or(grave) {
            // Idempotency: only a change id this record's memory names exactly is
            // answered as applied. Another counter of the same writer (a store
            // restored from a backup may send one) was not applied and goes through
            // the base check below.
            if let Some(v) = by_client
                .get(&c.change_id.client)
                .and_then(|m| m.get(&c.change_id.n))
            {
                return PushOutcome::Applied { version: *v };
            }
        }
        let reject = |m: &str| {
            PushOutcome::Rejected(Rejection {
                message: m.to_owned(),
                fields: Default::default(),
            })
        };
        if !self.syncs(&c.collection) {
            return reject("Missing or invalid collection context.");
        }
        // Permission: the caller must see the record now and may not give it away.
        if let Some(e) = cur {
            if let Some(f) = &e.fields {
                if !access.sees_fields(f) {
                    return reject("The requested resource wasn't found.");
                }
            }
        }
        if let Op::Upsert(f) = &c.op {
            if !access.sees_fields(f) {
                return reject("Failed to create record.");
            }
            if f.get("invalid") == Some(&Value::Bool(true)) {
                return PushOutcome::Rejected(Rejection {
                    message: "Failed to create record.".into(),
                    fields: [("invalid".to_string(), "Must be false.".to_string())].into(),
                });
            }
        }
        match cur {
            Some(e) if c.base != Some(e.version) => {
                return PushOutcome::Conflict {
                    current: access.view(e).unwrap_or(RemoteState {
                        version: e.version,
                        fields: None,
                        change_id: None,
                    }),
                }
            }
            None if (c.base.is_some() || grave.is_some())
                && c.base != Some(Version(self.horizon)) =>
            {
                // Deleted and compacted away: report a tombstone at the horizon.
                return PushOutcome::Conflict {
                    current: RemoteState {
                        version: Version(self.horizon),
                        fields: None,
                        change_id: None,
                    },
                };
            }
            _ => {}
        }
        let fields = match c.op {
            Op::Upsert(f) => Some(f),
            Op::Delete => None,
        };
        if fields.is_none() && cur.is_none_or(|e| e.fields.is_none()) {
            // Nothing to delete: already gone. Counts as applied (once: a repeat is
            // the same no-op, not a second application), and is remembered like any
            // applied change so a later delivery is recognised.
            let version = cur.map_or(Version(self.seq), |e| e.version);
            let memory = match self.records.get_mut(&key) {
                Some(e) => &mut e.by_client,
                None => self.graveyard.entry(key).or_default(),
            };
            memory
                .entry(c.change_id.client.clone())
                .or_default()
                .insert(c.change_id.n, version);
            self.applied.entry(c.change_id).or_insert(1);
            return PushOutcome::Applied { version };
        }
        let fields = fields.map(|mut f| {
            if rules.patch {
                if let Some(old) = cur.and_then(|e| e.fields.as_ref()) {
                    let mut merged = old.clone();
                    merged.append(&mut f);
                    f = merged;
                }
            }
            if let Some(normalise) = rules.normalise {
                normalise(&key.0, &mut f);
            }
            f
        });
        let version = self.write(key, fields, Some(c.change_id));
        PushOutcome::Applied { version }
    }
}

#[async_trait]
impl RemoteStore for FakeRemote {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        self.page(since, limit, mode, None)
    }

    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        if changes.len() > self.max_batch {
            return Err(RemoteError::TooLarge(format!(
                "batch of {} exceeds the limit of {}",
                changes.len(),
                self.max_batch
            )));
        }
        if self.max_body < usize::MAX {
            let body: usize = changes
                .iter()
                .map(|c| serde_json::to_string(&c.op).map_or(0, |j| j.len()))
                .sum();
            if body > self.max_body {
                return Err(RemoteError::TooLarge(format!(
                    "413 Request entity too large ({body} bytes)"
                )));
            }
        }
        let mut s = self.lock();
        s.pushes += 1;
        Ok(changes
            .into_iter()
            .map(|c| s.apply(&self.access, self.writes, c))
            .collect())
    }

    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        let s = self.lock();
        // A deleted record answers with its tombstone until compaction, as
        // PocketBase does.
        Ok(s.records
            .get(&(collection.to_owned(), id.clone()))
            .and_then(|e| self.access.view(e)))
    }

    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        Ok(Watermark(self.lock().horizon))
    }

    async fn counts(&self) -> Result<Option<std::collections::BTreeMap<String, u64>>, RemoteError> {
        let s = self.lock();
        let mut out: std::collections::BTreeMap<String, u64> = s
            .collections
            .iter()
            .filter(|c| s.syncs(c))
            .map(|c| (c.clone(), 0))
            .collect();
        drop(s);
        for r in self.snapshot() {
            if let Some(n) = out.get_mut(&r.collection) {
                *n += 1;
            }
        }
        Ok(Some(out))
    }

    async fn collections(&self) -> Result<Option<BTreeSet<String>>, RemoteError> {
        Ok(self.lock().synced.clone())
    }

    /// Partial sync over the fake's log: filters in the subset of PocketBase's
    /// syntax that `fake_filter` documents, evaluated on the record as the caller
    /// sees it (so a filter never shows another user's record). A record changed
    /// in the range that does not match is sent as a tombstone at its version,
    /// unless the scope resyncs its collection.
    async fn pull_scoped(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: &PullScope,
    ) -> Result<Page, RemoteError> {
        self.page(since, limit, mode, Some(scope))
    }

    async fn matching(
        &self,
        collection: &str,
        filter: &Filter,
    ) -> Result<BTreeMap<RecordId, Version>, RemoteError> {
        let s = self.lock();
        let user = self.user();
        let mut out = BTreeMap::new();
        if !s.syncs(collection) {
            return Ok(out);
        }
        for ((c, id), e) in &s.records {
            if c != collection {
                continue;
            }
            let Some(fields) = self.access.view(e).and_then(|v| v.fields) else {
                continue;
            };
            if super::fake_filter::matches(filter.as_str(), &fields, user)
                .map_err(|e| RemoteError::Permanent(format!("400 bad filter {filter:?}: {e}")))?
            {
                out.insert(id.clone(), e.version);
            }
        }
        Ok(out)
    }

    fn max_push_batch(&self) -> usize {
        self.max_batch
    }
}
