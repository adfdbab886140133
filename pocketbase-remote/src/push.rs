//! Push through `/api/batch`: chunking, outcome mapping, isolating failures.

use std::collections::{BTreeMap, VecDeque};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sync_traits::{Op, PushChange, PushOutcome, Rejection, RemoteError, RemoteState, Version};

use crate::client::{check_collection_name, PocketBaseRemote, Resp};
use crate::error::{ApiError, ProtocolError};
use crate::pull::{change_id, field, record_state};

/// What one `/api/batch` call answered.
enum BatchReply {
    /// All sub-requests ran: `(status, body)` each, in order.
    Done(Vec<(u16, Value)>),
    /// The transaction failed at sub-request `index` (nothing was saved).
    FailedAt {
        index: usize,
        status: u16,
        body: Value,
    },
    /// The batch as a whole was refused for what it holds (413 over the body limit,
    /// 400 for a body PocketBase cannot read, a connection reset under a large body);
    /// nothing was saved.
    Refused(String),
}

/// A request body at least this large whose connection breaks while it is sent is
/// taken as refused for its size (PocketBase sometimes resets a body over its limit
/// instead of answering 413): the batch is bisected, a single change rejected.
const LARGE_BODY: usize = 1 << 20;

/// The tidemark code of a failed sub-request (`data.<field>.code` starting `tm_`).
fn tm_code(body: &Value) -> Option<&str> {
    body.get("data")?
        .as_object()?
        .values()
        .filter_map(|v| v.get("code").and_then(Value::as_str))
        .find(|c| c.starts_with("tm_"))
}

/// What a change sends as `tm_push` (upserts) or `?tm=` (deletes).
fn push_tag(c: &PushChange) -> String {
    format!("{}:{}", c.base.map(|v| v.0).unwrap_or(0), c.change_id)
}

fn request_of(c: &PushChange) -> Value {
    let tm = push_tag(c);
    match &c.op {
        Op::Upsert(fields) => {
            let mut body: serde_json::Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !k.starts_with("tm_") && k.as_str() != "id")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            body.insert("id".into(), Value::String(c.id.to_string()));
            body.insert("tm_push".into(), Value::String(tm));
            json!({
                "method": "PUT",
                "url": format!("/api/collections/{}/records", c.collection),
                "body": body,
            })
        }
        Op::Delete => json!({
            "method": "DELETE",
            "url": format!("/api/collections/{}/records/{}?tm={}", c.collection, c.id, tm),
        }),
    }
}

/// A change the server applied without reading its seq (an upsert written by one of
/// its triggers — a new record, or an update on the current version — or a delete on
/// its base): answered with the `tm_push` it was sent (`<base>:<change id>`), its seq
/// is read with a receipt.
fn awaits_receipt(c: &PushChange, status: u16, body: &Value) -> bool {
    (200..300).contains(&status)
        && body.get("tm_push").and_then(Value::as_str) == Some(push_tag(c).as_str())
}

fn rejection(status: u16, e: &ApiError) -> Rejection {
    let fields: BTreeMap<String, String> = e
        .data
        .iter()
        .map(|(k, v)| {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| v.get("code").and_then(Value::as_str))
                .unwrap_or("invalid");
            (k.clone(), msg.to_owned())
        })
        .collect();
    let message = if e.message.is_empty() {
        format!("refused with status {status}")
    } else {
        e.message.clone()
    };
    Rejection { message, fields }
}

impl PocketBaseRemote {
    pub(crate) async fn push_changes(
        &self,
        changes: Vec<PushChange>,
    ) -> Result<Vec<PushOutcome>, RemoteError> {
        for c in &changes {
            check_collection_name(&c.collection)?;
        }
        let max = sync_traits::RemoteStore::max_push_batch(self);
        let mut out = Vec::with_capacity(changes.len());
        let mut auth_verified = false;
        for chunk in changes.chunks(max) {
            out.extend(self.push_chunk(chunk, &mut auth_verified).await?);
        }
        Ok(out)
    }

    /// Pushes one chunk. A failed batch saves nothing; the failing sub-request (named
    /// by PocketBase) gets its outcome and the rest is sent again, so one bad record
    /// never blocks the others. A batch refused as a whole is bisected.
    async fn push_chunk(
        &self,
        chunk: &[PushChange],
        auth_verified: &mut bool,
    ) -> Result<Vec<PushOutcome>, RemoteError> {
        let mut outcomes: Vec<Option<PushOutcome>> = vec![None; chunk.len()];
        // A collection the server does not sync has no hooks: its writes would get no
        // seq and no conflict check. Refuse them without sending.
        let synced = self.collections();
        for (i, c) in chunk.iter().enumerate() {
            if !synced.iter().any(|s| s == &c.collection) {
                outcomes[i] = Some(PushOutcome::Rejected(Rejection {
                    message: format!("collection {:?} is not synced by this server", c.collection),
                    fields: BTreeMap::new(),
                }));
            }
        }
        let first: Vec<usize> = (0..chunk.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        // Changes written by the server's triggers (new records, updates on the current
        // version): seqs from one receipt.
        let mut receipts: Vec<usize> = Vec::new();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::from([first]);
        while let Some(group) = queue.pop_front() {
            if group.is_empty() {
                continue;
            }
            let reqs: Vec<Value> = group.iter().map(|&i| request_of(&chunk[i])).collect();
            match self.batch(reqs).await? {
                BatchReply::Done(replies) => {
                    if replies.len() != group.len() {
                        return Err(ProtocolError::Invalid {
                            context: "batch".into(),
                            message: format!(
                                "{} replies for {} requests",
                                replies.len(),
                                group.len()
                            ),
                        }
                        .into());
                    }
                    for (&i, (status, body)) in group.iter().zip(replies) {
                        if awaits_receipt(&chunk[i], status, &body) {
                            receipts.push(i);
                            continue;
                        }
                        outcomes[i] = Some(
                            self.outcome(&chunk[i], status, &body, auth_verified)
                                .await?,
                        );
                    }
                }
                BatchReply::FailedAt {
                    index,
                    status,
                    body,
                } => {
                    let Some(&i) = group.get(index) else {
                        return Err(ProtocolError::Invalid {
                            context: "batch".into(),
                            message: format!(
                                "failure reported at index {index} of {}",
                                group.len()
                            ),
                        }
                        .into());
                    };
                    let settled = match tm_code(&body) {
                        // Nothing written (the server answers such writes with an
                        // error, so that PocketBase fires no event for them).
                        Some("tm_dup") => {
                            self.settle_retries(chunk, &group, i, &mut outcomes).await?
                        }
                        Some("tm_conflict") => {
                            outcomes[i] = Some(self.conflict_of(&chunk[i]).await?);
                            vec![i]
                        }
                        // The client id belongs to another user: so does every change
                        // of it.
                        Some("tm_client_taken") => {
                            let r = rejection(status, &ApiError::from_value(&body));
                            let client = &chunk[i].change_id.client;
                            let same: Vec<usize> = group
                                .iter()
                                .copied()
                                .filter(|&j| &chunk[j].change_id.client == client)
                                .collect();
                            for &j in &same {
                                outcomes[j] = Some(PushOutcome::Rejected(r.clone()));
                            }
                            same
                        }
                        _ => {
                            outcomes[i] = Some(
                                self.outcome(&chunk[i], status, &body, auth_verified)
                                    .await?,
                            );
                            vec![i]
                        }
                    };
                    let rest: Vec<usize> =
                        group.into_iter().filter(|j| !settled.contains(j)).collect();
                    queue.push_front(rest);
                }
                BatchReply::Refused(message) => {
                    if let [i] = group[..] {
                        // Refused for what this one change holds: a rejection of it,
                        // so that the others go through.
                        outcomes[i] = Some(PushOutcome::Rejected(Rejection {
                            message: format!("refused by the server as a whole request: {message}"),
                            fields: BTreeMap::new(),
                        }));
                        continue;
                    }
                    let (a, b) = group.split_at(group.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
            }
        }
        if !receipts.is_empty() {
            let seqs = self.receipt(chunk, &receipts).await?;
            for (&i, seq) in receipts.iter().zip(seqs) {
                outcomes[i] = Some(PushOutcome::Applied { version: seq });
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| RemoteError::Malformed("batch: change left without outcome".into()))
            })
            .collect()
    }

    /// Change `i` of `group` was applied before (the server answered `tm_dup`): a
    /// retried delivery, likely of the whole group (a response was lost). One receipt
    /// for the group settles every change of it the server already holds; returns
    /// those (with `i`), the rest is sent again.
    async fn settle_retries(
        &self,
        chunk: &[PushChange],
        group: &[usize],
        i: usize,
        outcomes: &mut [Option<PushOutcome>],
    ) -> Result<Vec<usize>, RemoteError> {
        let seqs = self.receipt_seqs(chunk, group).await?;
        let mut settled = Vec::new();
        for (&j, seq) in group.iter().zip(seqs) {
            if let Some(v) = seq {
                outcomes[j] = Some(PushOutcome::Applied { version: v });
                settled.push(j);
            }
        }
        if !settled.contains(&i) {
            let c = &chunk[i];
            return Err(ProtocolError::Invalid {
                context: "receipt".into(),
                message: format!(
                    "change {} of {}/{} answered as applied before, but the receipt does not name it",
                    c.change_id, c.collection, c.id
                ),
            }
            .into());
        }
        Ok(settled)
    }

    /// The outcome of a change the server refused for a stale base (`tm_conflict`):
    /// a conflict with the record's current state, or its tombstone, as the caller
    /// sees it now. Neither visible (deleted and compacted since): a conflict with a
    /// tombstone at the retention horizon, as `FakeRemote` answers; a change re-based
    /// on it is applied (the hooks take a base at the horizon for a record with no
    /// tombstone left).
    async fn conflict_of(&self, c: &PushChange) -> Result<PushOutcome, RemoteError> {
        let current = match self.fetch_state(&c.collection, &c.id).await? {
            Some(current) => current,
            None => RemoteState {
                version: Version(self.head().await?.horizon.0),
                fields: None,
                change_id: None,
            },
        };
        Ok(PushOutcome::Conflict { current })
    }

    /// The seqs that the changes `pending` (indexes into `chunk`, answered with their
    /// own `tm_push`) produced, in order: one `POST /api/tidemark/receipt`. The
    /// server reads them from the records' idempotency memory, so other writes since
    /// do not hide them. A change it does not name is an error, not a guess: the
    /// engine pushes it again and the server answers with its seq.
    async fn receipt(
        &self,
        chunk: &[PushChange],
        pending: &[usize],
    ) -> Result<Vec<Version>, RemoteError> {
        let seqs = self.receipt_seqs(chunk, pending).await?;
        pending
            .iter()
            .zip(seqs)
            .map(|(&i, seq)| {
                let c = &chunk[i];
                seq.ok_or_else(|| {
                    ProtocolError::Invalid {
                        context: "receipt".into(),
                        message: format!(
                            "no seq for change {} of {}/{}",
                            c.change_id, c.collection, c.id
                        ),
                    }
                    .into()
                })
            })
            .collect()
    }

    /// The seq each change of `pending` produced, if the server names it.
    async fn receipt_seqs(
        &self,
        chunk: &[PushChange],
        pending: &[usize],
    ) -> Result<Vec<Option<Version>>, RemoteError> {
        let mut ask: BTreeMap<&str, Vec<[String; 2]>> = BTreeMap::new();
        for &i in pending {
            let c = &chunk[i];
            ask.entry(c.collection.as_str())
                .or_default()
                .push([c.id.to_string(), c.change_id.to_string()]);
        }
        let r = self
            .call(Method::POST, "/api/tidemark/receipt", Some(&json!(ask)))
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Err(RemoteError::Permanent(
                "POST /api/tidemark/receipt not found: the server's pb_hooks are older than this client"
                    .into(),
            ));
        }
        let v = crate::client::expect_ok(&r, "receipt")?;
        Ok(pending
            .iter()
            .map(|&i| {
                let c = &chunk[i];
                v.get(&c.collection)
                    .and_then(|m| m.get(c.id.as_str()))
                    .and_then(Value::as_u64)
                    .filter(|&s| s > 0)
                    .map(Version)
            })
            .collect())
    }

    async fn batch(&self, requests: Vec<Value>) -> Result<BatchReply, RemoteError> {
        let n = requests.len();
        let body = json!({ "requests": requests });
        let r: Resp = match self
            .call_checked(Method::POST, "/api/batch", &[], Some(&body))
            .await
        {
            Ok(r) => r,
            Err(f)
                if f.broken && serde_json::to_vec(&body).map_or(0, |b| b.len()) >= LARGE_BODY =>
            {
                return Ok(BatchReply::Refused(format!(
                    "connection broken while sending a large request ({})",
                    f.error
                )));
            }
            Err(f) => return Err(f.error),
        };
        let ctx = "batch";
        if r.status.is_success() {
            let v = r.json(ctx)?;
            let arr = v.as_array().ok_or_else(|| field(ctx, "[]"))?;
            let mut out = Vec::with_capacity(n);
            for item in arr {
                let status = item
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| field(ctx, "status"))?;
                out.push((status, item.get("body").cloned().unwrap_or(Value::Null)));
            }
            return Ok(BatchReply::Done(out));
        }
        if r.status == StatusCode::FORBIDDEN {
            return Err(RemoteError::Permanent(format!(
                "batch API refused: {}",
                ApiError::parse(&r.body).message
            )));
        }
        if r.status == StatusCode::PAYLOAD_TOO_LARGE {
            return Ok(BatchReply::Refused(format!(
                "413 {}",
                ApiError::parse(&r.body).message
            )));
        }
        let e = ApiError::parse(&r.body);
        // {"data":{"requests":{"<i>":{"code":"batch_request_failed","response":{...}}}}}
        if let Some(reqs) = e.data.get("requests").and_then(Value::as_object) {
            for (k, v) in reqs {
                if v.get("code").and_then(Value::as_str) != Some("batch_request_failed") {
                    continue;
                }
                let (Ok(index), Some(resp)) = (k.parse::<usize>(), v.get("response")) else {
                    continue;
                };
                let status = resp
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(400);
                return Ok(BatchReply::FailedAt {
                    index,
                    status,
                    body: resp.clone(),
                });
            }
        }
        if r.status == StatusCode::BAD_REQUEST {
            // A body PocketBase cannot read, or over maxRequests: refused for what it
            // holds.
            return Ok(BatchReply::Refused(format!("400 {}", e.message)));
        }
        Err(RemoteError::Permanent(format!(
            "batch: {} {}",
            r.status.as_u16(),
            e.message
        )))
    }

    /// Maps one sub-request's answer onto a [`PushOutcome`].
    async fn outcome(
        &self,
        c: &PushChange,
        status: u16,
        body: &Value,
        auth_verified: &mut bool,
    ) -> Result<PushOutcome, RemoteError> {
        let ctx = format!("push {}/{}", c.collection, c.id);
        if (200..300).contains(&status) {
            let obj = body.as_object().ok_or_else(|| ProtocolError::Invalid {
                context: ctx.clone(),
                message: format!(
                    "status {status} without a body: is {} a synced collection?",
                    c.collection
                ),
            })?;
            let marker = obj.get("tm_push").and_then(Value::as_str).ok_or_else(|| {
                ProtocolError::Invalid {
                    context: ctx.clone(),
                    message: format!(
                        "no tm_push in the answer: is {} a synced collection?",
                        c.collection
                    ),
                }
            })?;
            let seq = obj
                .get("tm_seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| field(&ctx, "tm_seq"))?;
            return match marker {
                // ("deleted": a delete's answer from servers before the receipt
                // covered deletes.)
                "" | "dup" | "deleted" => {
                    if seq == 0 {
                        return Err(ProtocolError::Invalid {
                            context: ctx,
                            message: "applied at seq 0".into(),
                        }
                        .into());
                    }
                    Ok(PushOutcome::Applied {
                        version: Version(seq),
                    })
                }
                "conflict" => {
                    let (_, current) = record_state(body.clone(), &ctx)?;
                    Ok(PushOutcome::Conflict { current })
                }
                "tombstone" => Ok(PushOutcome::Conflict {
                    current: RemoteState {
                        version: Version(seq),
                        fields: None,
                        change_id: change_id(obj),
                    },
                }),
                other => Err(ProtocolError::Invalid {
                    context: ctx,
                    message: format!("unknown tm_push answer {other:?}"),
                }
                .into()),
            };
        }
        if status >= 500 || status == 429 || status == 408 {
            return Err(RemoteError::Transient(
                format!("{ctx}: {status} {}", ApiError::from_value(body).message).into(),
            ));
        }
        if status == 401 {
            return Err(RemoteError::Auth(format!("{ctx}: unauthorized")));
        }
        // A 4xx may also mean our token silently became a guest's: check once.
        if !*auth_verified {
            self.verify_auth().await?;
            *auth_verified = true;
        }
        if status == 404 && c.op == Op::Delete {
            if let Some(o) = self.delete_of_missing(c).await? {
                return Ok(o);
            }
        }
        Ok(PushOutcome::Rejected(rejection(
            status,
            &ApiError::from_value(body),
        )))
    }

    /// The outcome of a delete of a record the caller cannot find (404), decided as
    /// the in-memory reference server decides it. With a tombstone: our own earlier
    /// delivery, or a delete based on that very tombstone, is applied (nothing is
    /// left to delete); any other is a conflict with the tombstone. Without one (the
    /// caller sees neither record nor tombstone: compacted away, or not theirs): a
    /// delete based on nothing (a record created and deleted before it was ever
    /// pushed) or on the horizon is applied at the head; one based on a version
    /// below the horizon is a conflict with a tombstone at the horizon; any other is
    /// `None`, a rejection (not the caller's record).
    async fn delete_of_missing(&self, c: &PushChange) -> Result<Option<PushOutcome>, RemoteError> {
        // Our own earlier delivery: the tombstone's memory names it (also for an
        // owner-less tombstone, which shows no change id).
        if let Some(v) = self.receipt_seqs(std::slice::from_ref(c), &[0]).await?[0] {
            return Ok(Some(PushOutcome::Applied { version: v }));
        }
        let Some(t) = self.tombstone_of(&c.collection, &c.id).await? else {
            // Nothing the caller can see: no record, no tombstone. A delete based on
            // nothing, or on the horizon (re-based after the conflict below), has
            // nothing left to delete: applied at the head. One based on a version
            // below the horizon may be of a record deleted and compacted away since
            // (its tombstone's seq was at most the horizon): it meets a tombstone at
            // the horizon, as FakeRemote answers, so the engine settles it. Any other
            // was never the caller's to see: refused.
            let head = self.head().await?;
            return Ok(match c.base {
                None | Some(Version(0)) => Some(PushOutcome::Applied {
                    version: Version(head.head.0),
                }),
                Some(v) if v.0 == head.horizon.0 => Some(PushOutcome::Applied {
                    version: Version(head.head.0),
                }),
                Some(v) if v.0 < head.horizon.0 => Some(PushOutcome::Conflict {
                    current: RemoteState {
                        version: Version(head.horizon.0),
                        fields: None,
                        change_id: None,
                    },
                }),
                Some(_) => None,
            });
        };
        // Our own earlier delivery, or the very tombstone the change was based on
        // (a client that keeps its delete over someone else's re-bases on it).
        if t.change_id.as_ref() == Some(&c.change_id) || Some(t.version) == c.base {
            return Ok(Some(PushOutcome::Applied { version: t.version }));
        }
        Ok(Some(PushOutcome::Conflict { current: t }))
    }
}
