// tidemark server extension: the write hooks of synced collections and the batch
// check in front of them.
//
// A tidemark push is a sub-request of /api/batch carrying "<base>:<change id>" in
// tm_push (upserts) or the `tm` query parameter (deletes). onBatch checks every tag
// of a batch once (format, and that its client id is the caller's) before PocketBase
// runs it; a tagged write outside /api/batch is refused, since nothing else checks
// whose client id it carries. The hooks check the base inside the transaction, never
// store tm_push, and answer:
// - written by a trigger (a new record, an update on the current version) or a
//   delete on its base: 200 with the tm_push / tm it was sent; the seq comes from
//   /api/tidemark/receipt;
// - written the slow way: 200, tm_push "", tm_seq the new version;
// - nothing written — the exact change applied before, or a stale base: an error
//   (409, data.tm_push.code "tm_dup" / "tm_conflict"), so that PocketBase runs no
//   after-success hooks and sends no realtime event for a write that did not happen
//   (it would carry the request's content as if stored). Inside a batch the error
//   fails the batch; the client settles that change (a receipt for tm_dup, a read
//   of the current state for tm_conflict) and sends the rest again. Deletes are
//   answered by a Request hook that writes nothing and fires nothing for these, so
//   they keep their 200 answers ("dup" with the seq, "conflict" with the record).
// A push never changes a password field (keepPasswords: passwords never sync).

const ids = require(`${__hooks}/tidemark/ids.js`);
const config = require(`${__hooks}/tidemark/config.js`);
const memory = require(`${__hooks}/tidemark/memory.js`);
const store = require(`${__hooks}/tidemark/store.js`);
const triggers = require(`${__hooks}/tidemark/triggers.js`);

function apiError(status, message, field, code) {
  const data = {};
  data[field] = new ValidationError(code, message);
  return new ApiError(status, message, data);
}

function dupError() {
  return apiError(409, "tidemark: this change was applied before", "tm_push", "tm_dup");
}

function conflictError() {
  return apiError(409, "tidemark: the change's base is not the current version", "tm_push", "tm_conflict");
}

function takenError() {
  return apiError(403, "tidemark: this id belongs to a deleted record of another owner", "id", "tm_taken");
}

function batchOnly() {
  return apiError(400, "tidemark: pushes (tm_push, ?tm=) are accepted only inside /api/batch", "tm_push", "tm_batch_only");
}

// ---- creates ------------------------------------------------------------------

// The registry entry {id, name, owner} of the record's collection if it is synced
// (the hooks stay bound to a collection whose sync was disabled since), else null.
function synced(e) {
  return config.syncedById(e.app, e.record.collection().id);
}

// A push to a collection whose sync was disabled (while these hooks were bound).
function notSynced(e) {
  return apiError(400, "tidemark: collection " + e.record.collection().name + " is not synced", "tm_push", "tm_not_synced");
}

function onCreate(e) {
  const entry = synced(e);
  if (!entry) {
    if (e.record.getString("tm_push")) throw notSynced(e);
    return e.next();
  }
  const rec = e.record;
  const raw = rec.getString("tm_push");
  if (!raw) {
    // A plain create: the insert trigger gives it its seq (and refuses an id that
    // another owner's tombstone holds).
    rec.set("tm_push", triggers.PLAIN);
    try {
      e.next();
    } catch (err) {
      if (String(err).indexOf(triggers.FOREIGN) >= 0) throw takenError();
      throw err;
    }
    rec.set("tm_push", "");
    return;
  }
  const push = ids.parsePush(raw);
  if (!e.app.isTransactional()) throw batchOnly();
  if (push.base === 0) {
    // A push of a new record: the trigger does it all, in the insert's statement. One
    // that meets a tombstone is refused by it and answered the slow way below.
    try {
      e.next();
      return;
    } catch (err) {
      const s = String(err);
      if (s.indexOf(triggers.FOREIGN) >= 0) throw takenError();
      if (s.indexOf(triggers.TOMBSTONED) < 0) throw err;
    }
  }
  const name = entry.name;
  const of = entry.owner;
  const owner = of ? rec.getString(of) : "";
  rec.set("tm_push", "");
  store.inTx(e, (tx) => {
    // Only a tombstone of the new owner (or an owner-less one) counts; another
    // owner's holds the id for good.
    const t = store.tombstone(tx, name, rec.id, owner);
    if (t && t.foreign) throw takenError();
    const clients = t ? t.clients : {};
    if (memory.remembered(clients, push)) throw dupError();
    // A base at the horizon with no tombstone left: the client saw the deletion
    // that compaction removed last, and nothing was written since (the conflict
    // answer for a compacted record is its tombstone at the horizon).
    if (push.base !== (t ? t.seq : 0) && (t || push.base !== store.state(tx).horizon)) throw conflictError();
    // A create (base 0) with no tombstone left, of a writer whose memory compaction
    // dropped at or above this counter: it may have been applied before, to a record
    // deleted and compacted since. Not applied again: a conflict with the tombstone
    // at the horizon (the client's policy decides, with a new change id).
    if (!t && push.base === 0 && memory.compactedCovers(tx, push)) throw conflictError();
    // Re-created on top of the tombstone the client has seen.
    const seq = store.nextSeq(tx);
    e.record.set("tm_seq", seq);
    e.record.set("tm_cid", push.cid);
    e.record.set("tm_clients", memory.remember(clients, push, seq));
    e.next();
  });
}

// ---- updates ------------------------------------------------------------------

// The common ones — a push on the version PocketBase loaded, or a plain update — get
// their seq from the update trigger, not from JS: the hook sets tm_cid and the memory
// from the loaded record and hands the base on in tm_push ("<base>:<change id>", for
// a plain update "<base>:"); the trigger refuses it unless the stored version still
// is that base, then takes the next seq and clears tm_push. A refusal, an owner
// change (which writes a moved tombstone) and every other case go the slow way, in
// JS, in a transaction.
// The password fields of collection coll, cached per collection version (a
// collection change moves its `updated`): [] for almost every collection.
const PASSWORDS = {};
function passwordFields(coll) {
  const key = coll.id + "@" + String(coll.updated);
  let names = PASSWORDS[key];
  if (names === undefined) {
    names = [];
    const list = coll.fields;
    for (let i = 0; i < list.length; i++) if (list[i].type() === "password") names.push(list[i].name);
    PASSWORDS[key] = names;
  }
  return names;
}

// A tidemark push never changes a password field: passwords never sync, but a
// superuser is sent them (hidden fields included, as ""), and pushing that "" back
// would clear the stored hash. The record keeps the password it had.
function keepPasswords(e) {
  const names = passwordFields(e.record.collection());
  if (names.length === 0) return;
  const original = e.record.original();
  for (const n of names) e.record.setRaw(n, original.getRaw(n));
}

function onUpdate(e) {
  const entry = synced(e);
  if (!entry) {
    if (e.record.getString("tm_push")) throw notSynced(e);
    return e.next();
  }
  // (A stored PLAIN mark would only be left by a missing trigger: not a push.)
  const raw = e.record.getString("tm_push");
  let push = null;
  if (raw && raw !== triggers.PLAIN) {
    push = ids.parsePush(raw);
    if (!e.app.isTransactional()) throw batchOnly();
    keepPasswords(e);
  }
  const name = entry.name;
  const of = entry.owner;
  if (updateByTrigger(e, of, push, raw)) return;
  e.record.set("tm_push", "");
  store.inTx(e, (tx) => {
    let clientsRaw;
    let seq = 0;
    if (push) {
      // Common case in one statement: the base is current -> next seq.
      const m = store.scratch("seqCidClients", { seq: 0, cid: "", clients: "" });
      const onBase = store.oneOrNone(
        tx
          .db()
          .newQuery(
            "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1 AND " +
              "(SELECT [[tm_seq]] FROM {{" + name + "}} WHERE [[id]] = {:id}) = {:base} " +
              "RETURNING seq, (SELECT [[tm_cid]] FROM {{" + name + "}} WHERE [[id]] = {:id}) AS cid, " +
              "(SELECT COALESCE([[tm_clients]], '') FROM {{" + name + "}} WHERE [[id]] = {:id}) AS clients"
          )
          .bind({ id: e.record.id, base: push.base }),
        m
      );
      if (onBase) {
        seq = m.seq;
        const prev = ids.storedCid(m.cid);
        if (prev && prev.client === push.client) {
          // The same client wrote the previous version: its implicit entry moves on
          // with tm_cid, and the stored entries stay as they are.
          clientsRaw = null;
          memory.keepClients(e, m.clients);
        } else {
          clientsRaw = memory.withLatest(memory.parseClients(m.clients), m.cid, push.base);
        }
      }
    }
    if (push && !seq) {
      const cur = store.current(tx, name, e.record.id);
      const clients = cur ? cur.clients : {};
      if (memory.remembered(clients, push)) throw dupError();
      if (!cur || cur.seq !== push.base) throw conflictError();
      clientsRaw = clients;
    }
    if (!seq) seq = store.nextSeq(tx);
    if (of) {
      const oldOwner = e.record.original().getString(of);
      if (oldOwner && oldOwner !== e.record.getString(of)) {
        // The record leaves the old owner's view: tell them with a tombstone.
        store.putMoved(tx, name, e.record.id, oldOwner, seq);
      }
    }
    e.record.set("tm_seq", seq);
    e.record.set("tm_cid", push ? push.cid : "");
    // Never take tm_clients from the request body. A plain update ends the previous
    // writer's implicit entry, so it is stored.
    if (!push) {
      // The stored record, read in the transaction (the loaded one may be older).
      const cur = store.current(tx, name, e.record.id);
      e.record.set("tm_clients", memory.storeClients(cur ? cur.clients : {}));
    } else if (clientsRaw) {
      e.record.set("tm_clients", memory.storeClients(clientsRaw));
    }
    e.next();
  });
}

// The fast path of onUpdate (raw: the tm_push it was sent, push: raw parsed); false
// (nothing written, the record as it was) when the update must go the slow way.
function updateByTrigger(e, of, push, raw) {
  const o = e.record.original();
  const base = o.getInt("tm_seq");
  if (push && push.base !== base) return false;
  const owner = of ? o.getString(of) : "";
  if (owner && owner !== e.record.getString(of)) return false;
  const prevCid = o.getString("tm_cid");
  const stored = memory.rawJson(o.get("tm_clients"));
  const prev = ids.storedCid(prevCid);
  if (prev && push && prev.client === push.client) {
    memory.keepClients(e, stored);
  } else {
    e.record.set("tm_clients", memory.storeClients(memory.withLatest(memory.parseClients(stored), prevCid, base)));
  }
  e.record.set("tm_cid", push ? push.cid : "");
  if (!push) e.record.set("tm_push", base + ":");
  try {
    e.next();
  } catch (err) {
    if (String(err).indexOf(triggers.STALE) < 0) throw err;
    e.record.set("tm_push", raw);
    return false;
  }
  if (!push) e.record.set("tm_push", "");
  return true;
}

// ---- deletes ------------------------------------------------------------------

// DELETE .../records/ID?tm=<base>:<cid>: conditional, idempotent delete that answers
// 200 with its tm (the tombstone's seq comes from the receipt), "dup" with the seq
// of an earlier delivery of exactly this change, or the current record on conflict,
// instead of 204. The tombstone itself is written by the delete trigger, which takes
// the change id from the tm_push stored just before the delete.
function onDeleteRequest(e) {
  const q = e.requestInfo().query["tm"];
  if (!q) return e.next();
  const entry = synced(e);
  if (!entry) throw notSynced(e);
  const push = ids.parsePush(q);
  if (!e.app.isTransactional()) throw batchOnly();
  const name = entry.name;
  let answer = null;
  // (In the batch's transaction: see the check above.)
  ((tx) => {
    // Common case in one statement: the base is the stored version -> hand the change
    // id to the delete trigger, which writes the tombstone with the next seq.
    const onBase = tx
      .db()
      .newQuery("UPDATE {{" + name + "}} SET [[tm_push]] = {:q} WHERE [[id]] = {:id} AND [[tm_seq]] = {:base}")
      .bind({ q: q, id: e.record.id, base: push.base })
      .execute();
    if (onBase.rowsAffected() === 1) {
      tx.delete(e.record);
      answer = { id: e.record.id, collectionName: name, tm_seq: 0, tm_cid: push.cid, tm_push: q };
      return;
    }
    const cur = store.current(tx, name, e.record.id);
    if (!cur) return;
    const done = memory.remembered(cur.clients, push);
    if (done) {
      // Retried delete of a record that was re-created since.
      answer = { id: e.record.id, collectionName: name, tm_seq: done, tm_cid: push.cid, tm_push: "dup" };
      return;
    }
    // Not on the stored version (the statement above would have matched): a conflict.
    const fresh = tx.findRecordById(name, e.record.id);
    fresh.set("tm_push", "conflict");
    answer = fresh;
  })(e.app);
  if (answer === null) throw new NotFoundError("tidemark: record already deleted");
  return e.json(200, answer);
}

// ---- the batch check ------------------------------------------------------------

// PocketBase's own answer shape for a batch whose sub-request i failed.
function failAt(e, i, status, message, field, code) {
  const requests = {};
  const data = {};
  data[field] = { code: code, message: message };
  requests[String(i)] = {
    code: "batch_request_failed",
    message: "Batch request failed.",
    response: { data: data, message: message, status: status },
  };
  return e.json(400, { data: { requests: requests }, message: "Batch transaction failed.", status: 400 });
}

// The push tag a sub-request carries ("" if none): tm_push of its body — under its
// name or with PocketBase's ":autogenerate" modifier, which sets a text field too —
// or, for a delete, ?tm=. Throws a 400 for a malformed or ambiguous one. (PocketBase
// hands a sub-request's body fields to the record as one JSON payload: these keys
// are the only ones that reach tm_push.)
function tagOf(r) {
  let tag = "";
  const body = r.body;
  if (body) {
    for (const key of PUSH_KEYS) {
      const t = body[key];
      if (t === undefined || t === null || t === "") continue;
      if (typeof t !== "string") throw ids.bad("tidemark: tm_push must be a string");
      if (tag) throw ids.bad("tidemark: ambiguous tm_push");
      tag = t;
    }
  }
  // (Only a delete's ?tm= is read by the hooks; one on any other method is checked
  // all the same, which saves reading the method of every sub-request.)
  const q = ids.tmOfUrl(String(r.url));
  if (q) {
    if (tag) throw ids.bad("tidemark: ambiguous push tag");
    tag = q;
  }
  if (tag) ids.parsePush(tag);
  return tag;
}
const PUSH_KEYS = ["tm_push", "tm_push:autogenerate"];

// onBatchRequest: checks every push tag of the batch (one JS call per batch, not per
// write) and binds their client ids to the caller; a client id of another user, or a
// push by a guest, fails the batch at that sub-request with 403. Superusers may push
// with any client id.
function onBatch(e) {
  // Superusers may push with any client id, and the write hooks check the format of
  // every tag they meet: nothing to do per sub-request.
  if (e.hasSuperuserAuth()) return e.next();
  const first = {};
  const clients = [];
  const reqs = e.batch;
  const n = reqs.length;
  const max = config.userBatchMax();
  if (n > max) {
    // The operator's bound on one user's hold of the single writer, answered as
    // PocketBase answers a batch over its own maxRequests (the whole batch, so the
    // client splits it; it also chunks to the head route's batchMax).
    const msg = "tidemark: a user's batch may carry at most " + max + " requests (TIDEMARK_USER_BATCH_MAX)";
    return e.json(400, {
      data: { requests: { code: "validation_length_too_long", message: msg, params: { max: max } } },
      message: msg,
      status: 400,
    });
  }
  for (let i = 0; i < n; i++) {
    let tag;
    try {
      tag = tagOf(reqs[i]);
    } catch (err) {
      const msg = err && err.message ? String(err.message) : String(err);
      return failAt(e, i, 400, msg, "tm_push", "tm_invalid");
    }
    if (!tag) continue;
    const client = tag.slice(tag.indexOf(":") + 1, tag.indexOf("."));
    if (!(client in first)) {
      first[client] = i;
      clients.push(client);
    }
  }
  if (clients.length === 0) return e.next();
  if (!e.auth) {
    return failAt(e, first[clients[0]], 403, "tidemark: pushes need a signed-in user", "tm_push", "tm_auth");
  }
  const taken = memory.bind(e.app, memory.principal(e.auth), clients);
  if (taken) {
    return failAt(
      e,
      first[taken],
      403,
      "tidemark: client id " + taken + " belongs to another user (use one local store per user)",
      "tm_push",
      "tm_client_taken"
    );
  }
  return e.next();
}

module.exports = { onCreate, onUpdate, onDeleteRequest, onBatch };
