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
    /// The batch as a whole was refused (size, body limit, ...); nothing was saved.
    Refused(ApiError),
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
                    outcomes[i] = Some(
                        self.outcome(&chunk[i], status, &body, auth_verified)
                            .await?,
                    );
                    let rest: Vec<usize> = group.into_iter().filter(|&j| j != i).collect();
                    queue.push_front(rest);
                }
                BatchReply::Refused(e) => {
                    if group.len() == 1 {
                        return Err(RemoteError::Permanent(format!(
                            "batch of one refused: {}",
                            e.message
                        )));
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

    /// The seqs that the changes `pending` (indexes into `chunk`, answered with their
    /// own `tm_push`) produced, in order: one `POST /api/tidemark/receipt`. The
    /// server reads them from the records' idempotency memory, so other writes since
    /// do not hide them. A change it does not name is an error, not a guess: the
    /// engine pushes it again and the server answers `"dup"` with its seq.
    async fn receipt(
        &self,
        chunk: &[PushChange],
        pending: &[usize],
    ) -> Result<Vec<Version>, RemoteError> {
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
        pending
            .iter()
            .map(|&i| {
                let c = &chunk[i];
                v.get(&c.collection)
                    .and_then(|m| m.get(c.id.as_str()))
                    .and_then(Value::as_u64)
                    .filter(|&s| s > 0)
                    .map(Version)
                    .ok_or_else(|| {
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

    async fn batch(&self, requests: Vec<Value>) -> Result<BatchReply, RemoteError> {
        let n = requests.len();
        let r: Resp = self
            .call(
                Method::POST,
                "/api/batch",
                Some(&json!({ "requests": requests })),
            )
            .await?;
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
            return Ok(BatchReply::Refused(ApiError::parse(&r.body)));
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
        Ok(BatchReply::Refused(e))
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
            return Err(RemoteError::Transient(format!(
                "{ctx}: {status} {}",
                ApiError::from_value(body).message
            )));
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
    /// left to delete); any other is a conflict with the tombstone. Without one: a
    /// delete based on nothing (a record created and deleted before it was ever
    /// pushed) is applied at the head; one based on a version is `None`, a
    /// rejection (not the caller's record, or compacted away).
    async fn delete_of_missing(&self, c: &PushChange) -> Result<Option<PushOutcome>, RemoteError> {
        let Some(t) = self.tombstone_of(&c.collection, &c.id).await? else {
            if c.base.is_none_or(|v| v.0 == 0) {
                let head = self.head().await?;
                return Ok(Some(PushOutcome::Applied {
                    version: Version(head.head.0),
                }));
            }
            return Ok(None);
        };
        // Our own earlier delivery, or the very tombstone the change was based on
        // (a client that keeps its delete over someone else's re-bases on it).
        if t.change_id.as_ref() == Some(&c.change_id) || Some(t.version) == c.base {
            return Ok(Some(PushOutcome::Applied { version: t.version }));
        }
        Ok(Some(PushOutcome::Conflict { current: t }))
    }
}
