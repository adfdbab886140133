//! Pull (consistent multi-collection cut over PocketBase's list API) and fetch.

use std::collections::{BTreeMap, HashSet};

use futures_util::future::try_join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use sync_traits::{
    ChangeId, Fields, Filter, Page, PullMode, PullScope, RecordId, RemoteChange, RemoteError,
    RemoteState, Version, Watermark,
};
use tracing::warn;

use crate::client::{check_collection_name, expect_ok, PocketBaseRemote, Resp};
use crate::error::ProtocolError;
use crate::TOMBSTONES;

/// PocketBase clamps `perPage` to this.
pub(crate) const MAX_PER_PAGE: usize = 1000;

/// Members of a record response that are not record fields.
const META: &[&str] = &[
    "id",
    "collectionId",
    "collectionName",
    "expand",
    "tm_seq",
    "tm_cid",
    "tm_push",
    "tm_clients",
];

/// One pulled item before merging: seq, whether it is a live record (wins over a
/// tombstone with the same seq), the change.
struct Item {
    seq: u64,
    live: bool,
    change: RemoteChange,
}

/// Splits a record body into its fields and sync metadata (moving the fields out,
/// no copies: a pull page is a thousand of these).
pub(crate) fn record_state(v: Value, ctx: &str) -> Result<(RecordId, RemoteState), ProtocolError> {
    let Value::Object(mut obj) = v else {
        return Err(ProtocolError::Invalid {
            context: ctx.into(),
            message: "record is not an object".into(),
        });
    };
    let id = parse_id(&obj, "id", ctx)?;
    let seq = obj
        .get("tm_seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| field(ctx, "tm_seq"))?;
    let change_id = change_id(&obj);
    for k in META {
        obj.remove(*k);
    }
    let fields: Fields = obj;
    Ok((
        id,
        RemoteState {
            version: Version(seq),
            fields: Some(fields),
            change_id,
        },
    ))
}

/// A tombstone body → (collection, id, state).
fn tombstone_state(v: &Value, ctx: &str) -> Result<(String, RecordId, RemoteState), ProtocolError> {
    let obj = v.as_object().ok_or_else(|| ProtocolError::Invalid {
        context: ctx.into(),
        message: "tombstone is not an object".into(),
    })?;
    let coll = obj
        .get("coll")
        .and_then(Value::as_str)
        .filter(|c| check_collection_name(c).is_ok())
        .ok_or_else(|| field(ctx, "coll"))?;
    let id = parse_id(obj, "rid", ctx)?;
    let seq = obj
        .get("tm_seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| field(ctx, "tm_seq"))?;
    Ok((
        coll.to_owned(),
        id,
        RemoteState {
            version: Version(seq),
            fields: None,
            change_id: change_id(obj),
        },
    ))
}

pub(crate) fn change_id(obj: &Map<String, Value>) -> Option<ChangeId> {
    obj.get("tm_cid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| ChangeId::parse(s).ok())
}

fn parse_id(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<RecordId, ProtocolError> {
    obj.get(key)
        .and_then(Value::as_str)
        .and_then(|s| RecordId::parse(s).ok())
        .ok_or_else(|| field(ctx, key))
}

/// The `items` of a list response (moved out, no copies), or a typed error.
fn list_items(r: &Resp, ctx: &str) -> Result<Vec<Value>, RemoteError> {
    match expect_ok(r, ctx)?.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(field(ctx, "items").into()),
    }
}

pub(crate) fn field(ctx: &str, f: &str) -> ProtocolError {
    ProtocolError::Field {
        context: ctx.into(),
        field: f.into(),
    }
}

impl PocketBaseRemote {
    pub(crate) async fn pull_page(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
        scope: Option<&PullScope>,
    ) -> Result<Page, RemoteError> {
        let head = self.head().await?;
        if since > head.head {
            // The server lost history (e.g. restored from a backup): start over.
            return Err(RemoteError::WatermarkExpired {
                since,
                horizon: head.horizon,
            });
        }
        if mode == PullMode::Incremental && since.0 > 0 && since < head.horizon {
            return Err(RemoteError::WatermarkExpired {
                since,
                horizon: head.horizon,
            });
        }
        if since == head.head {
            return Ok(Page {
                changes: Vec::new(),
                watermark: since,
                more: false,
            });
        }
        let h = head.head.0;
        let per = limit.clamp(1, MAX_PER_PAGE);
        let su = head.superuser;
        let sources = self
            .collections()
            .into_iter()
            .filter(|c| scope.is_none_or(|s| s.includes(c)))
            .map(|c| {
                // Each collection from above its floor (a resync of other
                // collections pulls this one from the watermark only).
                let from = scope.map_or(since.0, |s| s.floor_of(&c).0.max(since.0));
                let filter = scope.and_then(|s| s.filter_of(&c));
                let removals = filter.is_some() && !scope.is_some_and(|s| s.resyncs(&c, mode));
                async move {
                    if from >= h {
                        return Ok((Vec::new(), None));
                    }
                    match filter {
                        None => self.list_range(&c, false, from, h, per, su, None).await,
                        Some(f) if !removals => {
                            self.list_range(&c, false, from, h, per, su, Some(f)).await
                        }
                        Some(f) => self.list_filtered(&c, f, from, h, per, su).await,
                    }
                }
            });
        let tombs = self.list_range(TOMBSTONES, true, since.0, h, per, su, None);
        let (mut lists, tombs) =
            futures_util::future::try_join(try_join_all(sources), tombs).await?;
        lists.push(tombs);

        // Consistent cut: everything <= w is complete in every source.
        let mut w = h;
        for (_, cut) in &lists {
            if let Some(cut) = cut {
                w = w.min(*cut);
            }
        }
        let mut all: Vec<Item> = lists
            .into_iter()
            .flat_map(|(items, _)| items)
            .filter(|i| i.seq <= w)
            .filter(|i| {
                scope.is_none_or(|s| s.wants(&i.change.collection, i.change.state.version.0))
            })
            .collect();
        all.sort_by_key(|i| (i.seq, i.live));
        if all.len() > limit.max(1) {
            let lim = limit.max(1);
            let s = all[lim - 1].seq;
            let cut = if all[lim].seq == s {
                let first = all.iter().position(|i| i.seq == s).unwrap_or(0);
                if first == 0 {
                    all.iter().position(|i| i.seq > s).unwrap_or(all.len())
                } else {
                    first
                }
            } else {
                lim
            };
            all.truncate(cut);
            w = all.last().map(|i| i.seq).unwrap_or(since.0);
        }
        // A record appears once, with its newest state in the page.
        let mut seen = HashSet::new();
        let mut changes: Vec<RemoteChange> = all
            .into_iter()
            .rev()
            .filter(|i| seen.insert((i.change.collection.clone(), i.change.id.clone())))
            .map(|i| i.change)
            .collect();
        changes.reverse();
        Ok(Page {
            changes,
            watermark: Watermark(w),
            more: w < h,
        })
    }

    /// The changes of a filtered collection in `since < tm_seq <= head` for an
    /// incremental pull: the records that match `filter` (under the collection's
    /// list rule, as any list), and, for each record changed in the range that does
    /// not match, a removal at its seq (a record that stopped matching with that
    /// write). Two lists: the range's ids and seqs first, then, only if the range
    /// holds anything, the matching records (PocketBase delays filtered lists of
    /// users that come back empty; the ids list is tidemark's own range filter,
    /// which the extension answers at once). The cut is the lower of the two.
    async fn list_filtered(
        &self,
        name: &str,
        filter: &Filter,
        since: u64,
        head: u64,
        per: usize,
        superuser: bool,
    ) -> Result<(Vec<Item>, Option<u64>), RemoteError> {
        let (ids, ids_cut) = self.list_ids_range(name, since, head, per).await?;
        if ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let (mut items, cut) = self
            .list_range(name, false, since, head, per, superuser, Some(filter))
            .await?;
        let matched: HashSet<RecordId> = items.iter().map(|i| i.change.id.clone()).collect();
        for (seq, id) in ids {
            if !matched.contains(&id) {
                items.push(Item {
                    seq,
                    live: false,
                    change: RemoteChange {
                        collection: name.to_owned(),
                        id,
                        state: RemoteState {
                            version: Version(seq),
                            fields: None,
                            change_id: None,
                        },
                    },
                });
            }
        }
        let cut = match (cut, ids_cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((items, cut))
    }

    /// `(seq, id)` of the records of `name` with `since < tm_seq <= head` the
    /// caller may list, ascending, at most `per`, and the cut (the last seq, if
    /// the list was full).
    async fn list_ids_range(
        &self,
        name: &str,
        since: u64,
        head: u64,
        per: usize,
    ) -> Result<(Vec<(u64, RecordId)>, Option<u64>), RemoteError> {
        let ctx = format!("list ids {name}");
        let q = [
            ("filter", format!("(tm_seq>{since} && tm_seq<={head})")),
            ("sort", "tm_seq".to_owned()),
            ("fields", "id,tm_seq".to_owned()),
            ("perPage", per.to_string()),
            ("page", "1".to_owned()),
            ("skipTotal", "1".to_owned()),
        ];
        let path = format!("/api/collections/{name}/records");
        let r = self.call_query(Method::GET, &path, &q, None).await?;
        if r.status == StatusCode::FORBIDDEN {
            return Ok((Vec::new(), None));
        }
        let items = list_items(&r, &ctx)?;
        if items.len() > per {
            return Err(ProtocolError::Invalid {
                context: ctx,
                message: format!("{} items for perPage {per}", items.len()),
            }
            .into());
        }
        let mut out = Vec::with_capacity(items.len());
        let mut prev = since;
        for it in &items {
            let obj = it.as_object().ok_or_else(|| field(&ctx, "items"))?;
            let id = parse_id(obj, "id", &ctx)?;
            let seq = obj
                .get("tm_seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| field(&ctx, "tm_seq"))?;
            if seq <= since || seq > head || seq < prev {
                return Err(ProtocolError::Invalid {
                    context: ctx,
                    message: format!("seq {seq} out of order or outside ({since}, {head}]"),
                }
                .into());
            }
            prev = seq;
            out.push((seq, id));
        }
        let cut = (out.len() >= per).then_some(prev);
        Ok((out, cut))
    }

    /// Every record of `collection` the caller may list that matches `filter`:
    /// id and seq, paged by id (1000 a request, keyset on the id, which a record
    /// never changes), for the filter reconcile.
    pub(crate) async fn matching_ids(
        &self,
        collection: &str,
        filter: &Filter,
    ) -> Result<BTreeMap<RecordId, Version>, RemoteError> {
        check_collection_name(collection)?;
        let ctx = format!("matching {collection}");
        let path = format!("/api/collections/{collection}/records");
        let mut out = BTreeMap::new();
        let mut after: Option<RecordId> = None;
        // Bounded: 10 million records.
        for _ in 0..10_000 {
            let f = match &after {
                None => format!("({filter})"),
                Some(id) => format!("({filter}) && id>'{id}'"),
            };
            let q = [
                ("filter", f),
                ("sort", "id".to_owned()),
                ("fields", "id,tm_seq".to_owned()),
                ("perPage", MAX_PER_PAGE.to_string()),
                ("page", "1".to_owned()),
                ("skipTotal", "1".to_owned()),
            ];
            let r = self.call_query(Method::GET, &path, &q, None).await?;
            if r.status == StatusCode::FORBIDDEN {
                return Ok(out);
            }
            if r.status == StatusCode::BAD_REQUEST {
                return Err(RemoteError::Permanent(format!(
                    "{ctx}: 400 (is the filter {filter:?} valid for this collection?)"
                )));
            }
            let items = list_items(&r, &ctx)?;
            let n = items.len();
            for it in &items {
                let obj = it.as_object().ok_or_else(|| field(&ctx, "items"))?;
                let id = parse_id(obj, "id", &ctx)?;
                let seq = obj
                    .get("tm_seq")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| field(&ctx, "tm_seq"))?;
                if after.as_ref().is_some_and(|a| id <= *a) {
                    return Err(ProtocolError::Invalid {
                        context: ctx,
                        message: format!("id {id} out of order"),
                    }
                    .into());
                }
                after = Some(id.clone());
                out.insert(id, Version(seq));
            }
            if n < MAX_PER_PAGE {
                return Ok(out);
            }
        }
        Err(ProtocolError::Invalid {
            context: ctx,
            message: "more than 10 million matching records".into(),
        }
        .into())
    }

    /// One source's changes with `since < tm_seq <= head`, ascending, at most `per`
    /// (those matching `user_filter` too, if given), and the cut: the last seq if
    /// the list was full (everything at or below it is complete).
    #[allow(clippy::too_many_arguments)]
    async fn list_range(
        &self,
        name: &str,
        tombstones: bool,
        since: u64,
        head: u64,
        per: usize,
        superuser: bool,
        user_filter: Option<&Filter>,
    ) -> Result<(Vec<Item>, Option<u64>), RemoteError> {
        let mut filter = format!("(tm_seq>{since} && tm_seq<={head})");
        if tombstones && superuser {
            // A superuser sees the record itself; "left your view" tombstones are
            // for the old owner only.
            filter.push_str(" && moved=false");
        }
        if let Some(f) = user_filter {
            // One expression (Filter::new checked the parentheses): it cannot
            // reach outside its own.
            filter = format!("{filter} && ({f})");
        }
        let ctx = format!("list {name}");
        let path = format!("/api/collections/{name}/records");
        let q = [
            ("filter", filter),
            ("sort", "tm_seq".to_owned()),
            ("perPage", per.to_string()),
            ("page", "1".to_owned()),
            ("skipTotal", "1".to_owned()),
        ];
        let r = self.call_query(Method::GET, &path, &q, None).await?;
        if r.status == StatusCode::FORBIDDEN {
            warn!(
                collection = name,
                "list refused; treating the collection as invisible"
            );
            return Ok((Vec::new(), None));
        }
        if r.status == StatusCode::NOT_FOUND || r.status == StatusCode::BAD_REQUEST {
            return Err(RemoteError::Permanent(match user_filter {
                Some(f) => format!(
                    "{ctx}: {} (is the filter {f:?} valid for this collection?)",
                    r.status
                ),
                None => format!(
                    "{ctx}: {} (is the collection synced, with a tm_seq field?)",
                    r.status
                ),
            }));
        }
        let items = list_items(&r, &ctx)?;
        if items.len() > per {
            return Err(ProtocolError::Invalid {
                context: ctx,
                message: format!("{} items for perPage {per}", items.len()),
            }
            .into());
        }
        let mut out = Vec::with_capacity(items.len());
        let mut prev = since;
        for it in items {
            let (collection, id, state) = if tombstones {
                tombstone_state(&it, &ctx)?
            } else {
                let (id, st) = record_state(it, &ctx)?;
                (name.to_owned(), id, st)
            };
            let seq = state.version.0;
            if seq <= since || seq > head || seq < prev {
                return Err(ProtocolError::Invalid {
                    context: ctx,
                    message: format!("seq {seq} out of order or outside ({since}, {head}]"),
                }
                .into());
            }
            prev = seq;
            out.push(Item {
                seq,
                live: !tombstones,
                change: RemoteChange {
                    collection,
                    id,
                    state,
                },
            });
        }
        let cut = (out.len() >= per).then_some(prev);
        Ok((out, cut))
    }

    pub(crate) async fn fetch_state(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        check_collection_name(collection)?;
        let ctx = format!("fetch {collection}/{id}");
        let r = self
            .call(
                Method::GET,
                &format!("/api/collections/{collection}/records/{id}"),
                None,
            )
            .await?;
        if r.status.is_success() {
            let (got, st) = record_state(r.json(&ctx)?, &ctx)?;
            if &got != id {
                return Err(ProtocolError::Invalid {
                    context: ctx,
                    message: format!("server answered record {got}"),
                }
                .into());
            }
            return Ok(Some(st));
        }
        if r.status != StatusCode::NOT_FOUND && r.status != StatusCode::FORBIDDEN {
            expect_ok(&r, &ctx)?;
        }
        match self.tombstone_of(collection, id).await? {
            Some(t) => Ok(Some(t)),
            None => {
                self.verify_auth().await?;
                Ok(None)
            }
        }
    }

    /// How many records of each synced collection the caller may list now: PocketBase's
    /// own `totalItems` under the collection's list rule (one request per collection).
    pub(crate) async fn count_visible(&self) -> Result<BTreeMap<String, u64>, RemoteError> {
        let mut out = BTreeMap::new();
        for name in self.collections() {
            let ctx = format!("count {name}");
            let q = [("perPage", "1".to_owned()), ("fields", "id".to_owned())];
            let r = self
                .call_query(
                    Method::GET,
                    &format!("/api/collections/{name}/records"),
                    &q,
                    None,
                )
                .await?;
            if r.status == StatusCode::FORBIDDEN {
                // As for pulls: a list the caller may not run shows it nothing.
                out.insert(name, 0);
                continue;
            }
            let v = expect_ok(&r, &ctx)?;
            let n = v
                .get("totalItems")
                .and_then(Value::as_u64)
                .ok_or_else(|| field(&ctx, "totalItems"))?;
            out.insert(name, n);
        }
        Ok(out)
    }

    /// The newest tombstone of a record visible to the caller.
    pub(crate) async fn tombstone_of(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        let ctx = format!("tombstone {collection}/{id}");
        let q = [
            ("filter", format!("(coll='{collection}' && rid='{id}')")),
            ("sort", "-tm_seq".to_owned()),
            ("perPage", "1".to_owned()),
            ("skipTotal", "1".to_owned()),
        ];
        let r = self
            .call_query(
                Method::GET,
                &format!("/api/collections/{TOMBSTONES}/records"),
                &q,
                None,
            )
            .await?;
        let items = list_items(&r, &ctx)?;
        match items.first() {
            None => Ok(None),
            Some(t) => Ok(Some(tombstone_state(t, &ctx)?.2)),
        }
    }
}
