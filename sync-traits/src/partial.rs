//! Partial sync: which collections an engine syncs, and through which filter.
//!
//! [`SyncScope`] is what the application asks for (a subset of the remote's synced
//! collections, a [`Filter`] per collection); [`PullScope`] is what one pull asks
//! the remote for ([`crate::RemoteStore::pull_scoped`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::Watermark;
use crate::remote::PullMode;

/// The longest filter [`Filter::new`] accepts, in bytes (PocketBase reads filters
/// from the query string of a list request).
pub const MAX_FILTER_LEN: usize = 2048;

/// A filter in PocketBase's filter syntax (`status = 'open' && owner = @request.auth.id`),
/// evaluated by the server for the caller, under the collection's own rules.
///
/// The server decides what a filter means: tidemark only checks that the text is
/// one expression (not empty, at most [`MAX_FILTER_LEN`] bytes, parentheses
/// balanced outside quoted strings), so that a remote can combine it with its own
/// conditions as `(...) && (filter)` without the filter escaping the parentheses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Filter(String);

/// Why [`Filter::new`] refused a filter.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FilterError {
    /// Nothing but white space.
    #[error("a filter cannot be empty")]
    Empty,
    /// Longer than [`MAX_FILTER_LEN`].
    #[error("a filter of {len} bytes is longer than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A `)` without its `(`, a `(` never closed, or a quote never closed.
    #[error("unbalanced parentheses or quotes in filter {0:?}")]
    Unbalanced(String),
}

impl Filter {
    /// Checks `expr` (see the type's docs) and wraps it.
    pub fn new(expr: impl Into<String>) -> Result<Self, FilterError> {
        let expr: String = expr.into();
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(FilterError::Empty);
        }
        if trimmed.len() > MAX_FILTER_LEN {
            return Err(FilterError::TooLong {
                len: trimmed.len(),
                max: MAX_FILTER_LEN,
            });
        }
        let unbalanced = || FilterError::Unbalanced(trimmed.chars().take(64).collect());
        let mut depth: usize = 0;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for ch in trimmed.chars() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                }
                continue;
            }
            match ch {
                '\'' | '"' => quote = Some(ch),
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1).ok_or_else(unbalanced)?,
                _ => {}
            }
        }
        if depth != 0 || quote.is_some() {
            return Err(unbalanced());
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The filter's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Filter {
    type Error = FilterError;
    fn try_from(s: String) -> Result<Self, FilterError> {
        Filter::new(s)
    }
}

impl From<Filter> for String {
    fn from(f: Filter) -> String {
        f.0
    }
}

/// What an engine syncs ([`crate::SyncEngine::with_scope`]); the default syncs
/// everything the remote syncs, unfiltered.
///
/// - `only`: the engine pushes, pulls and removes (in a full resync) only these
///   collections, intersected with [`crate::RemoteStore::collections`]. Outbox
///   entries of the others wait untouched (counted in
///   [`crate::SyncReport::unsynced`]) and their local records are never removed.
/// - `filters`: a collection with a filter holds only the records the server
///   says match it, for this caller. A record that stops matching leaves the
///   store: through the pull when it was written (the server sends it as a
///   removal, at the version of that write), through a filter reconcile when it
///   stopped matching without a write (a filter on `@now`, a relation that
///   changed): [`crate::SyncEngine::reconcile_filters`], run on demand, by
///   [`crate::SyncEngine::reconcile`], and after a sync when `reconcile_every`
///   passed since the last one. A local write that does not match goes to the
///   server and then leaves the store like any other.
/// - A collection whose scope changed (a filter added, changed or removed, a
///   collection added to `only`) is resynced alone at the next sync: its filtered
///   snapshot pulled from zero, its local records not delivered removed, its
///   outbox kept and pushed; the other collections go on from the watermark. The
///   engine remembers the scope each collection was last synced with in the
///   store ([`crate::SyncStore::set_sync_meta`]); with a store that cannot keep
///   it ([`crate::SyncStore::keeps_sync_meta`] `false`), an engine whose scope is
///   not everything resyncs every collection it syncs at its first sync (it
///   cannot know what an earlier engine left out), each alone as above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncScope {
    /// The collections to sync (`None`: every collection the remote syncs).
    pub only: Option<BTreeSet<String>>,
    /// A server-side filter per collection.
    pub filters: BTreeMap<String, Filter>,
    /// How often a sync also runs the filter reconcile (`None`: only on demand
    /// and in [`crate::SyncEngine::reconcile`]). Measured from the engine's last
    /// filter reconcile or resync of the filtered collections.
    pub reconcile_every: Option<Duration>,
}

impl SyncScope {
    /// Everything the remote syncs, unfiltered (the default).
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these collections (each still limited to what the remote syncs).
    pub fn only<I, S>(collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            only: Some(collections.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// This scope with `collection` synced through `filter`.
    pub fn filter(mut self, collection: impl Into<String>, filter: Filter) -> Self {
        self.filters.insert(collection.into(), filter);
        self
    }

    /// This scope with the filter reconcile run by a sync at least this often.
    pub fn reconcile_every(mut self, every: Duration) -> Self {
        self.reconcile_every = Some(every);
        self
    }

    /// Whether this is the default scope (everything, unfiltered).
    pub fn is_everything(&self) -> bool {
        self.only.is_none() && self.filters.is_empty()
    }

    /// Whether the engine syncs `collection` at all (before the remote's own set).
    pub fn includes(&self, collection: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(collection))
    }

    /// What the engine remembers of this scope, to see what changed next time.
    pub(crate) fn note(&self) -> ScopeNote {
        ScopeNote {
            only: self.only.clone(),
            filters: self.filters.clone(),
        }
    }
}

/// The scope a store was last synced with, as the engine keeps it in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScopeNote {
    pub only: Option<BTreeSet<String>>,
    pub filters: BTreeMap<String, Filter>,
}

impl ScopeNote {
    /// The sync-meta key it is kept under.
    pub const KEY: &'static str = "tidemark.scope";
}

/// What one pull asks for ([`crate::RemoteStore::pull_scoped`]).
///
/// A change to collection `c` at version `v` is asked for when `c` is in `only`
/// (or `only` is `None`) and `v` is above both the pull's `since` and
/// [`floor_of(c)`](PullScope::floor_of). For a collection with a filter the remote
/// sends only records whose current state matches it; a record changed in the
/// range that does not match is sent as a removal (a tombstone at the record's
/// version) unless [`resyncs(c, mode)`](PullScope::resyncs) (its snapshot is being
/// re-read from zero, and the store removes what it did not receive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullScope {
    /// The collections asked for (`None`: all).
    pub only: Option<BTreeSet<String>>,
    /// A filter per collection.
    pub filters: BTreeMap<String, Filter>,
    /// Changes at or below this version are not needed, for collections not in
    /// `floors` (a resync of some collections pulls the others from the store's
    /// watermark only).
    pub floor: Watermark,
    /// Per-collection exceptions to `floor`.
    pub floors: BTreeMap<String, Watermark>,
}

impl PullScope {
    /// Whether the scope asks for nothing but the plain pull would give.
    pub fn is_everything(&self) -> bool {
        self.only.is_none()
            && self.filters.is_empty()
            && self.floor == Watermark(0)
            && self.floors.values().all(|f| *f == Watermark(0))
    }

    /// Whether changes of `collection` are asked for at all.
    pub fn includes(&self, collection: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(collection))
    }

    /// The version at or below which `collection`'s changes are not needed.
    pub fn floor_of(&self, collection: &str) -> Watermark {
        self.floors.get(collection).copied().unwrap_or(self.floor)
    }

    /// The filter of `collection`, if any.
    pub fn filter_of(&self, collection: &str) -> Option<&Filter> {
        self.filters.get(collection)
    }

    /// Whether a change of `collection` at `version` is asked for (before filters).
    pub fn wants(&self, collection: &str, version: u64) -> bool {
        self.includes(collection) && version > self.floor_of(collection).0
    }

    /// Whether `collection`'s snapshot is re-read from zero in this pull (a resync
    /// of it): records that do not match its filter are then left out rather than
    /// sent as removals.
    pub fn resyncs(&self, collection: &str, mode: PullMode) -> bool {
        mode == PullMode::Resync && self.floor_of(collection) == Watermark(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_one_expression() {
        assert!(Filter::new("status = 'open'").is_ok());
        assert!(Filter::new("(a = 1 || b = 2) && c = ')'").is_ok());
        assert_eq!(Filter::new("  ").unwrap_err(), FilterError::Empty);
        for bad in ["a = 1) || (1 = 1", "(a = 1", "a = 'x", "a = 'it\\'s"] {
            assert!(
                matches!(Filter::new(bad), Err(FilterError::Unbalanced(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Filter::new("a".repeat(MAX_FILTER_LEN + 1)),
            Err(FilterError::TooLong { .. })
        ));
        let f = Filter::new(" a = \"(\" ").unwrap();
        assert_eq!(f.as_str(), "a = \"(\"");
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), f);
        assert!(serde_json::from_str::<Filter>("\"(\"").is_err());
    }

    #[test]
    fn floors_and_modes() {
        let s = PullScope {
            only: Some(["a".to_string(), "b".to_string()].into()),
            filters: BTreeMap::new(),
            floor: Watermark(10),
            floors: [("a".to_string(), Watermark(0))].into(),
        };
        assert!(s.wants("a", 3) && !s.wants("b", 3) && s.wants("b", 11));
        assert!(!s.wants("c", 11));
        assert!(s.resyncs("a", PullMode::Resync) && !s.resyncs("b", PullMode::Resync));
        assert!(!s.resyncs("a", PullMode::Incremental));
        assert!(!s.is_everything() && PullScope::default().is_everything());
    }
}
