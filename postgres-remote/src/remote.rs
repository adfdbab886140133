//! The [`RemoteStore`] implementation: pull, push, fetch, horizon, counts,
//! collections.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use serde_json::{json, Value};
use sync_traits::{
    ChangeId, Op, Page, PullMode, PushChange, PushOutcome, RecordId, Rejection, RemoteChange,
    RemoteError, RemoteState, RemoteStore, Version, Watermark,
};
use tracing::warn;

use crate::client::PostgresRemote;
use crate::error::PgError;
use crate::schema::PROTOCOL;

fn seq_of(v: i64, what: &str) -> Result<u64, PgError> {
    u64::try_from(v).map_err(|_| PgError::Malformed(format!("negative {what} {v}")))
}

/// A row of `tidemark.pull`.
struct Row {
    seq: u64,
    collection: String,
    id: String,
    fields: Option<Value>,
    change_id: Option<String>,
    tomb: bool,
}

fn change_id(s: Option<&str>) -> Option<ChangeId> {
    s.and_then(|s| ChangeId::parse(s).ok())
}

fn fields_of(v: Value, what: &str) -> Result<sync_traits::Fields, PgError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(PgError::Malformed(format!(
            "{what}: fields are not a JSON object: {other}"
        ))),
    }
}

/// Cuts the merged rows (sorted by seq, a tombstone before a live row of the same
/// seq) into a page: the first `limit` rows plus the one sharing the last seq (a
/// write yields at most two rows: the live row and the tombstone of its old
/// owner), each record once with its newest state.
fn page_of(mut rows: Vec<Row>, head: u64, limit: usize) -> Page {
    rows.sort_by(|a, b| a.seq.cmp(&b.seq).then(b.tomb.cmp(&a.tomb)));
    let (rows, watermark, more) = if rows.len() > limit {
        let last = rows[limit - 1].seq;
        let mut end = limit;
        while end < rows.len() && rows[end].seq == last {
            end += 1;
        }
        let more = end < rows.len() || last < head;
        rows.truncate(end);
        (rows, last, more)
    } else {
        (rows, head, false)
    };
    // Each record once, at its newest row (the last one in order).
    let mut newest: HashMap<(String, String), usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        newest.insert((r.collection.clone(), r.id.clone()), i);
    }
    let mut changes = Vec::with_capacity(newest.len());
    for (i, r) in rows.into_iter().enumerate() {
        if newest.get(&(r.collection.clone(), r.id.clone())) != Some(&i) {
            continue;
        }
        let Ok(id) = RecordId::parse(&r.id) else {
            warn!(collection = %r.collection, id = %r.id,
                "row with an id that is not a tidemark record id; not synced");
            continue;
        };
        let fields = match (r.tomb, r.fields) {
            (false, Some(Value::Object(m))) => Some(m),
            (false, other) => {
                warn!(collection = %r.collection, id = %r.id, ?other,
                    "row whose fields are not an object; not synced");
                continue;
            }
            (true, _) => None,
        };
        changes.push(RemoteChange {
            collection: r.collection,
            id,
            state: RemoteState {
                version: Version(r.seq),
                fields,
                change_id: change_id(r.change_id.as_deref()),
            },
        });
    }
    Page {
        changes,
        watermark: Watermark(watermark),
        more,
    }
}

fn outcome(v: &Value) -> Result<PushOutcome, PgError> {
    let bad = || PgError::Malformed(format!("push outcome {v}"));
    let version = || {
        v.get("v")
            .and_then(Value::as_u64)
            .map(Version)
            .ok_or_else(bad)
    };
    match v.get("k").and_then(Value::as_str) {
        Some("a") => Ok(PushOutcome::Applied {
            version: version()?,
        }),
        Some("c") => {
            let fields = match v.get("f") {
                None | Some(Value::Null) => None,
                Some(f) => Some(fields_of(f.clone(), "conflict")?),
            };
            Ok(PushOutcome::Conflict {
                current: RemoteState {
                    version: version()?,
                    fields,
                    change_id: change_id(v.get("cid").and_then(Value::as_str)),
                },
            })
        }
        Some("r") => {
            let mut fields = BTreeMap::new();
            if let Some(Value::Object(m)) = v.get("fields") {
                for (k, m) in m {
                    fields.insert(k.clone(), m.as_str().unwrap_or_default().to_owned());
                }
            }
            let mut message = v
                .get("m")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned();
            if let Some(state) = v.get("state").and_then(Value::as_str) {
                message = format!("{message} ({state})");
            }
            Ok(PushOutcome::Rejected(Rejection { message, fields }))
        }
        _ => Err(bad()),
    }
}

impl PostgresRemote {
    async fn pull_rows(&self, since: u64, limit: usize) -> Result<(Vec<Row>, u64, u64), PgError> {
        let since = i64::try_from(since)
            .map_err(|_| PgError::Invalid(format!("watermark {since} out of range")))?;
        let lim = i32::try_from(limit.min(100_000)).unwrap_or(100_000);
        self.with_conn("pull", move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT seq, collection, id, fields, change_id, tomb
                         FROM tidemark.pull($1, $2, $3)",
                        &[&PROTOCOL, &since, &lim],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                let mut header = None;
                for r in rows {
                    let seq = seq_of(r.try_get::<_, i64>(0)?, "seq")?;
                    let collection: Option<String> = r.try_get(1)?;
                    let change_id: Option<String> = r.try_get(4)?;
                    match collection {
                        None => {
                            let horizon = change_id
                                .as_deref()
                                .and_then(|h| h.parse::<u64>().ok())
                                .ok_or_else(|| PgError::Malformed("pull header".into()))?;
                            header = Some((seq, horizon));
                        }
                        Some(collection) => out.push(Row {
                            seq,
                            collection,
                            id: r.try_get(2)?,
                            fields: r.try_get(3)?,
                            change_id,
                            tomb: r.try_get(5)?,
                        }),
                    }
                }
                let (head, horizon) =
                    header.ok_or_else(|| PgError::Malformed("pull without a header".into()))?;
                Ok((out, head, horizon))
            })
        })
        .await
    }
}

#[async_trait]
impl RemoteStore for PostgresRemote {
    /// One statement (`tidemark.pull`), one snapshot: every change the caller may
    /// see with `since < seq <= head`, cut to `limit` on a seq boundary. Rows whose
    /// id is not a tidemark record id are left out (and logged).
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        let limit = limit.max(1);
        let (rows, head, horizon) = self.pull_rows(since.0, limit).await?;
        if mode == PullMode::Incremental && since.0 > 0 && (since.0 < horizon || since.0 > head) {
            // Below the horizon tombstones are gone; above the head the server was
            // restored from a backup. Either way the client must resync.
            return Err(RemoteError::WatermarkExpired {
                since,
                horizon: Watermark(horizon),
            });
        }
        if since.0 > head {
            return Ok(Page {
                changes: Vec::new(),
                watermark: since,
                more: false,
            });
        }
        Ok(page_of(rows, head, limit))
    }

    /// One statement (`tidemark.push`), so one transaction for the whole batch; each
    /// change in a subtransaction, so a change the server refuses is a
    /// [`PushOutcome::Rejected`] and the others still apply.
    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        if changes.len() > self.max_batch() {
            return Err(RemoteError::TooLarge(format!(
                "batch of {} exceeds the limit of {}",
                changes.len(),
                self.max_batch()
            )));
        }
        let n = changes.len();
        let body: Vec<Value> = changes
            .iter()
            .map(|c| {
                let mut o = json!({
                    "cid": c.change_id.to_string(),
                    "cl": c.change_id.client.as_str(),
                    "n": c.change_id.n,
                    "c": c.collection,
                    "id": c.id.as_str(),
                    "b": c.base.map(|v| v.0),
                });
                match &c.op {
                    Op::Delete => o["d"] = Value::Bool(true),
                    Op::Upsert(f) => o["f"] = Value::Object(f.clone()),
                }
                o
            })
            .collect();
        let body = Value::Array(body);
        let answer: Value = self
            .with_conn("push", move |c| {
                Box::pin(async move {
                    let row = c
                        .query_one("SELECT tidemark.push($1, $2)", &[&PROTOCOL, &body])
                        .await?;
                    Ok(row.try_get::<_, Value>(0)?)
                })
            })
            .await?;
        let Value::Array(items) = answer else {
            return Err(RemoteError::Malformed("push answer is not an array".into()));
        };
        if items.len() != n {
            return Err(RemoteError::Malformed(format!(
                "pushed {n} changes, got {} outcomes",
                items.len()
            )));
        }
        Ok(items.iter().map(outcome).collect::<Result<Vec<_>, _>>()?)
    }

    async fn fetch(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<RemoteState>, RemoteError> {
        let (collection, id) = (collection.to_owned(), id.as_str().to_owned());
        Ok(self
            .with_conn("fetch", move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "SELECT seq, fields, change_id FROM tidemark.fetch($1, $2, $3)",
                            &[&PROTOCOL, &collection, &id],
                        )
                        .await?;
                    let Some(r) = row else { return Ok(None) };
                    Ok(Some(RemoteState {
                        version: Version(seq_of(r.try_get(0)?, "seq")?),
                        fields: Some(fields_of(r.try_get(1)?, "fetch")?),
                        change_id: change_id(r.try_get::<_, Option<String>>(2)?.as_deref()),
                    }))
                })
            })
            .await?)
    }

    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        Ok(self
            .with_conn("horizon", |c| {
                Box::pin(async move {
                    let r = c
                        .query_one("SELECT horizon FROM tidemark.head", &[])
                        .await?;
                    Ok(Watermark(seq_of(r.try_get(0)?, "horizon")?))
                })
            })
            .await?)
    }

    /// Live rows per synced table the caller may read, counted under row level
    /// security.
    async fn counts(&self) -> Result<Option<BTreeMap<String, u64>>, RemoteError> {
        Ok(Some(
            self.with_conn("counts", |c| {
                Box::pin(async move {
                    let rows = c
                        .query(
                            "SELECT collection, n FROM tidemark.counts($1)",
                            &[&PROTOCOL],
                        )
                        .await?;
                    let mut out = BTreeMap::new();
                    for r in rows {
                        out.insert(r.try_get(0)?, seq_of(r.try_get(1)?, "count")?);
                    }
                    Ok(out)
                })
            })
            .await?,
        ))
    }

    /// The registered tables the caller may read.
    async fn collections(&self) -> Result<Option<BTreeSet<String>>, RemoteError> {
        Ok(Some(
            self.with_conn("collections", |c| {
                Box::pin(async move {
                    let rows = c
                        .query(
                            "SELECT collection FROM tidemark.synced
                             WHERE coalesce(has_table_privilege(to_regclass(format('%I.%I', schema_name, table_name)), 'SELECT'), false)",
                            &[],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| r.try_get::<_, String>(0).map_err(PgError::from))
                        .collect::<Result<BTreeSet<_>, _>>()
                })
            })
            .await?,
        ))
    }

    fn max_push_batch(&self) -> usize {
        self.max_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, id: &str, tomb: bool) -> Row {
        Row {
            seq,
            collection: "songs".into(),
            id: id.into(),
            fields: (!tomb).then(|| json!({})),
            change_id: None,
            tomb,
        }
    }

    #[test]
    fn a_page_is_cut_on_a_seq_boundary_and_keeps_the_newest_state() {
        let a = "aaaaaaaaaaaaaaa";
        let b = "bbbbbbbbbbbbbbb";
        // b moved (tombstone and live row at 3), a deleted at 4 after a write at 1.
        let rows = vec![
            row(1, a, false),
            row(3, b, false),
            row(3, b, true),
            row(4, a, true),
        ];
        let p = page_of(rows, 9, 2);
        assert_eq!(p.watermark, Watermark(3));
        assert!(p.more);
        assert_eq!(p.changes.len(), 2);
        assert!(
            p.changes[1].state.fields.is_some(),
            "the live row wins its seq"
        );
        let rows = vec![row(1, a, false), row(4, a, true)];
        let p = page_of(rows, 9, 10);
        assert_eq!(
            (p.watermark, p.more, p.changes.len()),
            (Watermark(9), false, 1)
        );
        assert!(p.changes[0].state.fields.is_none());
    }
}
