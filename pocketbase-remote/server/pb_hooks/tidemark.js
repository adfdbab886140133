// tidemark server extension: shared code, loaded with require(`${__hooks}/tidemark.js`).
// Not a hook file itself (only *.pb.js files are loaded as hooks).
//
// Protocol summary (see pocketbase-remote/README.md):
// - every synced collection has fields tm_seq (number), tm_cid (text), tm_push (text)
//   and an index on tm_seq;
// - every create/update/delete gets the next global seq from the one-row table
//   _tm_state inside the write's transaction;
// - a tidemark client puts "<base>:<change id>" into tm_push (upserts) or the `tm`
//   query parameter (deletes); the hooks and triggers check it, never keep it, and
//   answer through tm_push in the response: the tm_push it was sent (written by a
//   trigger, or a delete on its base; the seq comes from /api/tidemark/receipt), ""
//   applied, "dup" already applied, "conflict" stale base (body = current record),
//   "tombstone" stale base against a deleted record. (Older versions of these
//   hooks answered a delete "deleted" with its seq.)

// Synced collections: TIDEMARK_COLLECTIONS="name[:ownerField],..." or this default.
// The owner field decides who sees a record's tombstone (empty: every signed-in user).
const DEFAULT_COLLECTIONS = "songs:owner,friends:owner";

function config() {
  const raw = $os.getenv("TIDEMARK_COLLECTIONS") || DEFAULT_COLLECTIONS;
  const out = [];
  for (const part of raw.split(",")) {
    const p = part.trim();
    if (!p) continue;
    const i = p.indexOf(":");
    out.push(i < 0 ? { name: p, owner: "owner" } : { name: p.slice(0, i), owner: p.slice(i + 1) });
  }
  return out;
}

// Parsed once per JS runtime (modules are cached per runtime).
const CONFIG = config();

function collectionNames() {
  return CONFIG.map((c) => c.name);
}

function ownerField(name) {
  for (const c of CONFIG) {
    if (c.name === name) return c.owner;
  }
  return "";
}

// "<base>:<change id>" -> {base, cid}; "" -> null.
function parsePush(s) {
  if (!s) return null;
  const i = s.indexOf(":");
  if (i < 0) throw new BadRequestError("tidemark: malformed tm_push");
  const base = parseInt(s.slice(0, i), 10);
  if (!(base >= 0)) throw new BadRequestError("tidemark: malformed base in tm_push");
  return { base: base, cid: s.slice(i + 1) };
}

// "<client>.<n>" -> {client, n}; anything else -> null (no idempotency memory).
function parseCid(cid) {
  const i = cid.lastIndexOf(".");
  if (i <= 0) return null;
  const n = parseInt(cid.slice(i + 1), 10);
  return n >= 0 ? { client: cid.slice(0, i), n: n } : null;
}

// Idempotency memory: per client that wrote the record, [newest applied counter,
// seq it produced]. The latest writer's entry is implicit — tm_cid at tm_seq — and
// tm_clients (hidden JSON field) holds the others', capped to the newest entries.
// So the common writes (a client creating a record, or updating one it wrote last)
// leave tm_clients alone: setting a JSON field is one of the costlier things a
// hook does per record.
const MAX_CLIENTS = 64;

function parseClients(raw) {
  if (!raw) return {};
  try {
    const v = JSON.parse(raw);
    return v && typeof v === "object" && !Array.isArray(v) ? v : {};
  } catch (_) {
    return {};
  }
}

// clients plus the implicit entry of the writer of version seq (change id cid).
function withLatest(clients, cid, seq) {
  const c = cid ? parseCid(cid) : null;
  if (c) {
    const m = clients[c.client];
    if (!(Array.isArray(m) && m[0] >= c.n)) clients[c.client] = [c.n, seq];
  }
  return clients;
}

// Sets tm_clients to raw unless the record already holds exactly that (the request
// body may carry its own value: never keep it).
function keepClients(e, raw) {
  if (e.record.getString("tm_clients") !== raw) e.record.set("tm_clients", raw);
}

// The seq that an earlier delivery of this change produced, or 0. clients must
// include the latest writer's entry (see withLatest).
function remembered(clients, cid) {
  const c = parseCid(cid);
  if (!c) return 0;
  const m = clients[c.client];
  return Array.isArray(m) && m[0] >= c.n ? m[1] : 0;
}

// clients with the entry of change cid at seq, in its stored form.
function remember(clients, cid, seq) {
  const c = parseCid(cid);
  if (c) clients[c.client] = [c.n, seq];
  return storeClients(clients);
}

// The stored form of clients: the MAX_CLIENTS newest entries, as JSON.
function storeClients(clients) {
  const keys = Object.keys(clients);
  if (keys.length > MAX_CLIENTS) {
    keys.sort((a, b) => clients[b][1] - clients[a][1]);
    for (const k of keys.slice(MAX_CLIENTS)) delete clients[k];
  }
  return JSON.stringify(clients);
}

function rawJson(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  try {
    return toString(v);
  } catch (_) {
    return "";
  }
}

// Scratch models, one per shape and JS runtime (this module is loaded once per
// pooled runtime, and a runtime runs one handler at a time; values are read out
// before e.next()). `new DynamicModel` builds a Go struct type by reflection on every
// call: measured, that alone cost a push more than the rest of its hook.
const MODELS = {};

function scratch(key, shape) {
  return MODELS[key] || (MODELS[key] = new DynamicModel(shape));
}

// q.one(m), or false if the query returned no row.
function oneOrNone(q, m) {
  try {
    q.one(m);
    return true;
  } catch (err) {
    if (String(err).indexOf("no rows") >= 0) return false;
    throw err;
  }
}

function nextSeq(tx) {
  const m = scratch("seq", { seq: 0 });
  tx.db().newQuery("UPDATE _tm_state SET seq = seq + 1 WHERE id = 1 RETURNING seq").one(m);
  return m.seq;
}

// Current {seq, cid, clients} of a live record, read inside the transaction; null if absent.
function current(tx, coll, id) {
  const m = scratch("current", { tm_seq: 0, tm_cid: "", tm_clients: "" });
  const found = oneOrNone(
    tx.db()
      .newQuery(
        "SELECT [[tm_seq]], [[tm_cid]], COALESCE([[tm_clients]], '') AS tm_clients FROM {{" +
          coll +
          "}} WHERE [[id]] = {:id} LIMIT 1"
      )
      .bind({ id: id }),
    m
  );
  return found
    ? { seq: m.tm_seq, cid: m.tm_cid, clients: withLatest(parseClients(m.tm_clients), m.tm_cid, m.tm_seq) }
    : null;
}

// The key under which the delete trigger keeps the deleted record's latest writer,
// [change id, seq], in the tombstone's tm_clients. Keys starting with "~" hold such
// [change id, seq] pairs; TOMBSTONE_UPSERT keeps those of the tombstone it replaces
// under "~p<seq>" and "~d<seq>".
const PREV = "~prev";

// Writing a tombstone where one exists for the same (coll, rid, owner) — a record
// deleted, created again, deleted again — keeps the old one's memory: its entries,
// its PREV and its own delete, each [change id, seq] under a key of its seq. (The
// replaced one's memory would otherwise be lost, and a late retry of a change it
// remembered answered as a conflict: found by tests/pocketbase_convergence.rs.)
// No JSON key is built from a client's string.
// SQL: the stored memory in column col as a JSON object ('{}' if it is none).
function memoryObject(col) {
  return "CASE WHEN json_valid(" + col + ") THEN (CASE json_type(" + col + ") WHEN 'object' " +
    "THEN " + col + " ELSE '{}' END) ELSE '{}' END";
}
// SQL: the JSON path of PREV.
const PREV_PATH = "'$.\"" + PREV + "\"'";
const OLD_MEMORY = memoryObject("tm_tombstones.tm_clients");
const TOMBSTONE_UPSERT =
  "ON CONFLICT (coll, rid, owner) DO UPDATE SET tm_seq = excluded.tm_seq, tm_cid = excluded.tm_cid, " +
  "moved = excluded.moved, at = excluded.at, tm_clients = json_patch(json_set(json_remove(" +
  OLD_MEMORY + ", " + PREV_PATH + "), " +
  "'$.\"~p' || tm_tombstones.tm_seq || '\"', json_extract(" + OLD_MEMORY + ", " + PREV_PATH + "), " +
  "'$.\"~d' || tm_tombstones.tm_seq || '\"', json_array(tm_tombstones.tm_cid, tm_tombstones.tm_seq)), " +
  "excluded.tm_clients)";

// A tombstone's idempotency memory from its stored form: the deleted record's
// entries, the [change id, seq] pairs under "~" keys (its latest writer, and those
// of tombstones it replaced) and the delete's own change (tm_cid at tm_seq).
// (Tombstones written before the delete trigger hold all of it in tm_clients.)
function tombClients(raw, cid, seq) {
  const clients = parseClients(raw);
  for (const k of Object.keys(clients)) {
    if (k.charAt(0) !== "~") continue;
    const pair = clients[k];
    delete clients[k];
    if (Array.isArray(pair) && typeof pair[0] === "string") withLatest(clients, pair[0], pair[1]);
  }
  return withLatest(clients, cid, seq);
}

// Newest tombstone {seq, cid, owner, clients} of a record; null if none.
function tombstone(tx, coll, id) {
  const m = scratch("tombstone", { tm_seq: 0, tm_cid: "", owner: "", tm_clients: "" });
  const found = oneOrNone(
    tx.db()
      .newQuery(
        "SELECT tm_seq, tm_cid, owner, COALESCE(tm_clients, '') AS tm_clients FROM tm_tombstones " +
          "WHERE coll = {:c} AND rid = {:r} AND moved = FALSE ORDER BY tm_seq DESC LIMIT 1"
      )
      .bind({ c: coll, r: id }),
    m
  );
  return found
    ? { seq: m.tm_seq, cid: m.tm_cid, owner: m.owner, clients: tombClients(m.tm_clients, m.tm_cid, m.tm_seq) }
    : null;
}

function putTombstone(tx, coll, id, owner, seq, cid, moved, clients) {
  tx.db()
    .newQuery(
      "INSERT INTO tm_tombstones (id, coll, rid, owner, tm_seq, tm_cid, moved, at, tm_clients) VALUES " +
        "(substr(lower(hex(randomblob(8))), 1, 15), {:c}, {:r}, {:o}, {:s}, {:cid}, {:m}, " +
        "CAST(strftime('%s','now') AS INTEGER), {:cl}) " +
        TOMBSTONE_UPSERT
    )
    .bind({ c: coll, r: id, o: owner, s: seq, cid: cid, m: moved, cl: clients || "{}" })
    .execute();
}

// Runs fn(tx) in a transaction with e.app = tx. Inside /api/batch the app already is
// the batch's transaction: use it directly (cheaper than a nested runInTransaction).
function inTx(e, fn) {
  const app = e.app;
  if (app.isTransactional()) {
    fn(app);
    return;
  }
  app.runInTransaction((tx) => {
    e.app = tx;
    try {
      fn(tx);
    } finally {
      e.app = app;
    }
  });
}

// The message of the trigger that refuses a push create of a tombstoned id.
const TOMBSTONED = "tidemark: tombstoned";
// The message of the trigger that refuses an update whose base is no longer stored.
const STALE = "tidemark: stale base";

// Creates — a plain one, or a push of a new record (tm_push "0:<change id>"), the
// commonest push — are done by one SQLite trigger per synced collection rather than
// by JS: measured on paired batches, the hook's seq query (and a push's tombstone
// lookup) were most of what our hooks cost per record. The hook only marks a plain
// create (tm_push "p") and lets the insert through; tm_insert_v5_<c> (AFTER INSERT,
// when tm_push is set)
// - refuses a push of an id with a live tombstone (the hook catches that and answers
//   the slow way, see onCreate), and
// - takes the next seq and stores it with tm_cid (the change id, or "" for a plain
//   create), clearing tm_push and tm_clients,
// all in the insert's own statement, so in the write's transaction, in commit order.
// (Two statements, the refusal folded into the second: each statement a trigger runs
// costs every insert, so fewer is measurably cheaper.)
// PocketBase answers from the in-memory record, which never sees that seq: a create's
// answer has tm_seq 0, and a push's carries its tm_push unchanged; the client asks
// /api/tidemark/receipt for the seqs its changes produced (one request per batch).
// The slow path (a create on a stale or tombstoned base) clears tm_push and takes its
// seq in JS, so the trigger leaves it alone.
//
// The triggers (this one, and those for updates and deletes below) are created when
// PocketBase starts and when a synced collection is created or renamed
// (tidemark.pb.js) — in committed state, or in the same transaction as the
// collection itself; never from a write hook, whose batch could roll back.
// PocketBase changes tables only by ALTER TABLE, which keeps triggers.
const PLAIN = "p";
const TM_FIELDS = ["tm_seq", "tm_cid", "tm_push", "tm_clients"];

function ensureTriggers(app, coll) {
  for (const f of TM_FIELDS) {
    if (!coll.fields.getByName(f)) {
      console.log(`tidemark: ${coll.name} lacks the field ${f}; it is not synced`);
      return;
    }
  }
  const name = coll.name;
  const trigger = "tm_insert_v5_" + name;
  const onUpdate = "tm_update_v1_" + name;
  const onDelete = "tm_delete_v2_" + name;
  // Others of ours on this table (another version's, or the old name's after a
  // rename) would take a second seq per write.
  const stale = arrayOf(new DynamicModel({ name: "" }));
  app
    .db()
    .newQuery(
      "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = {:t} " +
        "AND substr(name, 1, 3) = 'tm_' AND name NOT IN ({:n}, {:u}, {:d})"
    )
    .bind({ t: name, n: trigger, u: onUpdate, d: onDelete })
    .all(stale);
  const run = (sql) => app.db().newQuery(sql).execute();
  for (const t of stale) run("DROP TRIGGER IF EXISTS [[" + t.name + "]]");
  const lit = "'" + name.replace(/'/g, "''") + "'";
  const isPush = "substr(NEW.[[tm_push]], 1, 2) = '0:'";
  run(
    "CREATE TRIGGER IF NOT EXISTS [[" + trigger + "]] AFTER INSERT ON {{" + name + "}} " +
      "WHEN NEW.[[tm_push]] <> '' BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "UPDATE {{" + name + "}} SET [[tm_seq]] = CASE WHEN " + isPush +
      " AND EXISTS (SELECT 1 FROM tm_tombstones WHERE coll = " + lit +
      " AND rid = NEW.[[id]] AND moved = FALSE) THEN RAISE(ABORT, '" + TOMBSTONED + "') " +
      "ELSE (SELECT seq FROM _tm_state WHERE id = 1) END, " +
      "[[tm_cid]] = CASE WHEN " + isPush + " THEN substr(NEW.[[tm_push]], 3) ELSE '' END, " +
      "[[tm_push]] = '', [[tm_clients]] = NULL WHERE rowid = NEW.rowid; END"
  );
  // The update trigger (see onUpdate). OF id: PocketBase's UPDATE of a record sets
  // every column, id included, while the insert trigger's own UPDATE above does not,
  // so it neither fires this one nor compiles it into every insert.
  run(
    "CREATE TRIGGER IF NOT EXISTS [[" + onUpdate + "]] AFTER UPDATE OF [[id]] ON {{" + name + "}} " +
      "WHEN NEW.[[tm_push]] <> '' BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "UPDATE {{" + name + "}} SET [[tm_seq]] = CASE WHEN " +
      "CAST(substr(NEW.[[tm_push]], 1, instr(NEW.[[tm_push]], ':') - 1) AS INTEGER) = OLD.[[tm_seq]] " +
      "THEN (SELECT seq FROM _tm_state WHERE id = 1) ELSE RAISE(ABORT, '" + STALE + "') END, " +
      "[[tm_push]] = '' WHERE rowid = NEW.rowid; END"
  );
  // The delete trigger: every delete (tidemark's, plain ones, cascades) leaves a
  // tombstone with the next seq, in the DELETE's own statement. A tidemark delete
  // hands its change id over in the stored tm_push (see onDeleteRequest). The deleted
  // record's memory goes along as stored, its latest writer under PREV (see
  // tombClients): no JSON is taken apart in SQL.
  const of = ownerField(name);
  const owner = of && coll.fields.getByName(of) ? "COALESCE(OLD.[[" + of + "]], '')" : "''";
  run(
    "CREATE TRIGGER IF NOT EXISTS [[" + onDelete + "]] AFTER DELETE ON {{" + name + "}} BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "INSERT INTO tm_tombstones (id, coll, rid, owner, tm_seq, tm_cid, moved, at, tm_clients) VALUES " +
      "(substr(lower(hex(randomblob(8))), 1, 15), " + lit + ", OLD.[[id]], " + owner + ", " +
      "(SELECT seq FROM _tm_state WHERE id = 1), " +
      "substr(OLD.[[tm_push]], instr(OLD.[[tm_push]], ':') + 1), FALSE, " +
      "CAST(strftime('%s','now') AS INTEGER), " +
      "json_set(" + memoryObject("OLD.[[tm_clients]]") + ", " +
      PREV_PATH + ", json_array(OLD.[[tm_cid]], OLD.[[tm_seq]]))) " +
      TOMBSTONE_UPSERT + "; END"
  );
}

// The insert trigger of every synced collection that exists.
function ensureAllTriggers(app) {
  for (const c of CONFIG) {
    let coll;
    try {
      coll = app.findCollectionByNameOrId(c.name);
    } catch (_) {
      continue;
    }
    ensureTriggers(app, coll);
  }
}

function onCreate(e) {
  const rec = e.record;
  const raw = rec.getString("tm_push");
  if (!raw || (raw.length > 2 && raw.charCodeAt(0) === 48 && raw.charCodeAt(1) === 58)) {
    // A plain create, or a push of a new record: the trigger does it all (see above),
    // in one statement that needs no transaction of ours. A push that meets a
    // tombstone is refused by it and answered the slow way below.
    if (!raw) rec.set("tm_push", PLAIN);
    try {
      e.next();
      if (!raw) rec.set("tm_push", "");
      return;
    } catch (err) {
      if (!raw || String(err).indexOf(TOMBSTONED) < 0) throw err;
    }
  }
  const push = parsePush(raw);
  rec.set("tm_push", "");
  inTx(e, (tx) => {
    const t = tombstone(tx, e.record.collection().name, e.record.id);
    const clients = t ? t.clients : {};
    const done = remembered(clients, push.cid);
    if (done) {
      // Retried delivery; the record was deleted since.
      e.record.set("tm_seq", done);
      e.record.set("tm_push", "dup");
      return;
    }
    const cur = t ? t.seq : 0;
    if (push.base !== cur) {
      // Stale base against a deleted (or never seen) record: write nothing. The
      // change id is only shown to the record's owner (the create rule has checked
      // the new owner against the caller).
      const of = ownerField(e.record.collection().name);
      const mine = t && (!t.owner || !of || t.owner === e.record.getString(of));
      e.record.set("tm_seq", cur);
      e.record.set("tm_cid", mine ? t.cid : "");
      e.record.set("tm_push", "tombstone");
      return;
    }
    // Re-created on top of the tombstone the client has seen.
    const seq = nextSeq(tx);
    e.record.set("tm_seq", seq);
    e.record.set("tm_cid", push.cid);
    e.record.set("tm_clients", remember(clients, push.cid, seq));
    e.next();
  });
}

// Updates. The common ones — a push on the version PocketBase loaded, or a plain
// update — get their seq from the update trigger tm_update_v1_<c>, not from JS (a
// query from JS cost about as much as the rest of the hook): the hook sets tm_cid and
// the idempotency memory from the loaded record and hands the base on in tm_push
// ("<base>:<change id>", for a plain update "<base>:"); the trigger, in the UPDATE's
// own statement, refuses it unless the stored version still is that base — so the
// check holds even outside a transaction, where another write may land between
// PocketBase's load and its UPDATE — then takes the next seq and clears tm_push. As
// with creates, the answer is built from the in-memory record: a push's carries its
// tm_push unchanged (the client asks for the seq with a receipt), a plain update's
// the previous tm_seq. A refusal, an owner change (which writes a tombstone) and
// every other case go the slow way, in JS, in a transaction.
function onUpdate(e) {
  // (A stored PLAIN mark would only be left by a missing trigger: not a push.)
  const raw = e.record.getString("tm_push");
  const push = raw === PLAIN ? null : parsePush(raw);
  const name = e.record.collection().name;
  if (updateByTrigger(e, name, push, raw)) return;
  e.record.set("tm_push", "");
  inTx(e, (tx) => {
    let clientsRaw;
    let seq = 0;
    if (push) {
      // Common case in one statement: the base is current -> next seq (a retried
      // delivery never has a current base: seqs only grow).
      const m = scratch("seqCidClients", { seq: 0, cid: "", clients: "" });
      const onBase = oneOrNone(
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
        const prev = parseCid(m.cid);
        const mine = parseCid(push.cid);
        if (prev && mine && prev.client === mine.client) {
          // The same client wrote the previous version: its implicit entry moves
          // on with tm_cid, and the stored entries stay as they are.
          clientsRaw = null;
          keepClients(e, m.clients);
        } else {
          clientsRaw = withLatest(parseClients(m.clients), m.cid, push.base);
        }
      }
    }
    if (push && !seq) {
      const cur = current(tx, name, e.record.id);
      const clients = cur ? cur.clients : {};
      const done = remembered(clients, push.cid);
      if (done) {
        // Retried delivery of a change that already landed: answer its seq.
        e.record.load(tx.findRecordById(name, e.record.id).fieldsData());
        e.record.set("tm_seq", done);
        e.record.set("tm_push", "dup");
        return;
      }
      if (!cur || cur.seq !== push.base) {
        e.record.load(tx.findRecordById(name, e.record.id).fieldsData());
        e.record.set("tm_push", "conflict");
        return;
      }
      clientsRaw = clients;
    }
    if (!seq) seq = nextSeq(tx);
    const of = ownerField(name);
    if (of) {
      const oldOwner = e.record.original().getString(of);
      if (oldOwner && oldOwner !== e.record.getString(of)) {
        // The record leaves the old owner's view: tell them with a tombstone.
        putTombstone(tx, name, e.record.id, oldOwner, seq, push ? push.cid : "", true, "{}");
      }
    }
    e.record.set("tm_seq", seq);
    e.record.set("tm_cid", push ? push.cid : "");
    // Never take tm_clients from the request body. A plain update ends the previous
    // writer's implicit entry, so it is stored.
    if (!push) {
      // The stored record, read in the transaction (the loaded one may be older).
      const cur = current(tx, name, e.record.id);
      e.record.set("tm_clients", storeClients(cur ? cur.clients : {}));
    } else if (clientsRaw) {
      e.record.set("tm_clients", storeClients(clientsRaw));
    }
    e.next();
  });
}

// The fast path of onUpdate (raw: the tm_push it was sent, push: raw parsed); false
// (nothing written, the record as it was) when the update must go the slow way.
function updateByTrigger(e, name, push, raw) {
  const o = e.record.original();
  const base = o.getInt("tm_seq");
  if (push && push.base !== base) return false;
  const of = ownerField(name);
  const owner = of ? o.getString(of) : "";
  if (owner && owner !== e.record.getString(of)) return false;
  const prevCid = o.getString("tm_cid");
  const stored = rawJson(o.get("tm_clients"));
  const prev = parseCid(prevCid);
  const mine = push ? parseCid(push.cid) : null;
  if (prev && mine && prev.client === mine.client) {
    // The same client wrote the previous version: its implicit entry moves on with
    // tm_cid, and the stored entries stay as they are.
    keepClients(e, stored);
  } else {
    e.record.set("tm_clients", storeClients(withLatest(parseClients(stored), prevCid, base)));
  }
  e.record.set("tm_cid", push ? push.cid : "");
  if (!push) e.record.set("tm_push", base + ":");
  try {
    e.next();
  } catch (err) {
    if (String(err).indexOf(STALE) < 0) throw err;
    e.record.set("tm_push", raw);
    return false;
  }
  if (!push) e.record.set("tm_push", "");
  return true;
}

// DELETE .../records/ID?tm=<base>:<cid>: conditional, idempotent delete that answers
// 200 with its tm (the tombstone's seq comes from the receipt), "dup" with the seq
// of an earlier delivery, or the current record on conflict, instead of 204. The
// tombstone itself is written by the delete trigger (see ensureTriggers), which takes
// the change id from the tm_push stored just before the delete.
function onDeleteRequest(e) {
  const q = e.requestInfo().query["tm"];
  if (!q) return e.next();
  const push = parsePush(q);
  const name = e.record.collection().name;
  let answer = null;
  inTx(e, (tx) => {
    // Common case in one statement: the base is the stored version -> hand the change
    // id to the delete trigger, which writes the tombstone with the next seq.
    const onBase = tx
      .db()
      .newQuery("UPDATE {{" + name + "}} SET [[tm_push]] = {:q} WHERE [[id]] = {:id} AND [[tm_seq]] = {:base}")
      .bind({ q: q, id: e.record.id, base: push.base })
      .execute();
    if (onBase.rowsAffected() === 1) {
      // Answered like a push the triggers wrote: with its tm_push, the seq from the
      // receipt (reading the seq here cost deletes ~10% of their throughput).
      tx.delete(e.record);
      answer = { id: e.record.id, collectionName: name, tm_seq: 0, tm_cid: push.cid, tm_push: q };
      return;
    }
    const cur = current(tx, name, e.record.id);
    if (!cur) return;
    const done = remembered(cur.clients, push.cid);
    if (done) {
      // Retried delete of a record that was re-created since.
      answer = { id: e.record.id, collectionName: name, tm_seq: done, tm_cid: push.cid, tm_push: "dup" };
      return;
    }
    // Not on the stored version (the statement above would have matched): a conflict.
    const fresh = tx.findRecordById(name, e.record.id);
    fresh.set("tm_push", "conflict");
    answer = fresh;
  });
  if (answer === null) throw new NotFoundError("tidemark: record already deleted");
  return e.json(200, answer);
}

// The seqs that pushed changes produced: body {"<collection>": [[id, change id], ...]}
// -> {"<collection>": {"<id>": seq}}. Read from each record's idempotency memory (or
// its tombstone's), so it holds even after other writes on top; a change the memory
// does not know is left out. Reveals nothing but the seq of a change whose id the
// caller already knows.
function receipt(app, body) {
  const out = {};
  for (const c of CONFIG) {
    const asked = body[c.name];
    if (!Array.isArray(asked) || asked.length === 0) continue;
    // The common cases in one statement and one JSON string each: the record still
    // holds the change as its latest version, or (a delete) its tombstone does.
    const got = latestSeqs(
      app,
      asked,
      "{{" + c.name + "}} AS s ON s.[[id]] = json_extract(a.value, '$[0]') AND s.[[tm_cid]] = json_extract(a.value, '$[1]')",
      "s.[[id]]",
      {}
    );
    let rest = unnamed(asked, got);
    if (rest.length) {
      Object.assign(
        got,
        latestSeqs(
          app,
          rest,
          "tm_tombstones AS s ON s.coll = {:c} AND s.rid = json_extract(a.value, '$[0]') " +
            "AND s.tm_cid = json_extract(a.value, '$[1]') AND s.moved = FALSE",
          "s.rid",
          { c: c.name }
        )
      );
      rest = unnamed(rest, got);
    }
    if (rest.length) {
      const want = {};
      for (const a of rest) want[a[0]] = a[1];
      rememberedSeqs(app, c.name, want, got);
    }
    out[c.name] = got;
  }
  return out;
}

// {id: seq} of the asked [id, change id] pairs that `join` (a JOIN clause on json_each
// row a, the matching row as s, with params) finds; one statement, one JSON string.
// CROSS JOIN keeps the asked pairs outside: with a plain JOIN SQLite walked every
// tombstone of the collection and the asked pairs inside (seen: deletes ~20x slower).
function latestSeqs(app, asked, join, idCol, params) {
  const m = scratch("receipt", { m: "" });
  app
    .db()
    .newQuery(
      "SELECT COALESCE(json_group_object(" + idCol + ", s.[[tm_seq]]), '{}') AS m FROM json_each({:ask}) AS a CROSS JOIN " + join
    )
    .bind(Object.assign({ ask: JSON.stringify(asked) }, params))
    .one(m);
  return JSON.parse(m.m);
}

// The well-formed [id, change id] pairs of asked whose id got does not name.
function unnamed(asked, got) {
  return asked.filter((a) => Array.isArray(a) && typeof a[0] === "string" && typeof a[1] === "string" && !(a[0] in got));
}

// Into got: the seqs that changes want (id -> change id) produced, from each record's
// idempotency memory or its tombstone's (others wrote or deleted since).
function rememberedSeqs(app, coll, want, got) {
  const ids = JSON.stringify(Object.keys(want));
  const rows = arrayOf(new DynamicModel({ id: "", tm_seq: 0, tm_cid: "", tm_clients: "" }));
  app
    .db()
    .newQuery(
      "SELECT [[id]], [[tm_seq]], [[tm_cid]], COALESCE([[tm_clients]], '') AS tm_clients FROM {{" +
        coll +
        "}} WHERE [[id]] IN (SELECT value FROM json_each({:ids}))"
    )
    .bind({ ids: ids })
    .all(rows);
  for (const r of rows) {
    const seq = remembered(withLatest(parseClients(r.tm_clients), r.tm_cid, r.tm_seq), want[r.id]);
    if (seq) got[r.id] = seq;
  }
  const ts = arrayOf(new DynamicModel({ rid: "", tm_seq: 0, tm_cid: "", tm_clients: "" }));
  app
    .db()
    .newQuery(
      "SELECT rid, tm_seq, tm_cid, COALESCE(tm_clients, '') AS tm_clients FROM tm_tombstones " +
        "WHERE coll = {:c} AND moved = FALSE AND rid IN (SELECT value FROM json_each({:ids}))"
    )
    .bind({ c: coll, ids: ids })
    .all(ts);
  for (const t of ts) {
    const seq = remembered(tombClients(t.tm_clients, t.tm_cid, t.tm_seq), want[t.rid]);
    if (seq && !got[t.rid]) got[t.rid] = seq;
  }
}

// Exactly the range filters the tidemark client sends.
const RANGE_FILTER = /^\(tm_seq>\d+ && tm_seq<=\d+\)( && moved=false)?$/;

// PocketBase delays filtered list requests of non-superusers that come back empty
// (a randomized throttle against filter timing attacks, observed up to ~500 ms). A
// pull asks every synced collection and the tombstones for a seq range, and most of
// those answers are empty. For exactly tidemark's range filter (on tm_seq only,
// under the collection's own list rule, revealing nothing the head route does not)
// answer the empty page directly; everything else goes through unchanged.
function onList(e) {
  if (e.records.length > 0) return e.next();
  const f = e.requestInfo().query["filter"] || "";
  if (!RANGE_FILTER.test(f)) return e.next();
  return e.json(200, e.result);
}

function state(app) {
  const m = new DynamicModel({ seq: 0, horizon: 0 });
  app.db().newQuery("SELECT seq, horizon FROM _tm_state WHERE id = 1").one(m);
  return m;
}

function head(e) {
  const s = state(e.app);
  const batch = e.app.settings().batch;
  return {
    head: s.seq,
    horizon: s.horizon,
    collections: collectionNames(),
    batchMax: batch.enabled ? batch.maxRequests : 0,
    superuser: e.hasSuperuserAuth(),
  };
}

// Tombstone retention in seconds: TIDEMARK_TOMBSTONE_RETENTION, default 30 days.
function retentionSeconds() {
  const v = parseInt($os.getenv("TIDEMARK_TOMBSTONE_RETENTION") || "", 10);
  return v >= 0 ? v : 30 * 24 * 3600;
}

// Removes tombstones older than olderThan seconds and moves the horizon past them.
function compact(app, olderThan) {
  let result = { removed: 0, horizon: 0 };
  app.runInTransaction((tx) => {
    const cutoff = Math.floor(Date.now() / 1000) - olderThan;
    const m = new DynamicModel({ s: 0, n: 0 });
    tx.db()
      .newQuery("SELECT COALESCE(MAX(tm_seq), 0) AS s, COUNT(*) AS n FROM tm_tombstones WHERE at <= {:cutoff}")
      .bind({ cutoff: cutoff })
      .one(m);
    if (m.n > 0) {
      tx.db().newQuery("UPDATE _tm_state SET horizon = MAX(horizon, {:s}) WHERE id = 1").bind({ s: m.s }).execute();
      const r = tx.db().newQuery("DELETE FROM tm_tombstones WHERE tm_seq <= {:s}").bind({ s: m.s }).execute();
      result.removed = r.rowsAffected();
    }
    result.horizon = state(tx).horizon;
  });
  return result;
}

module.exports = {
  config,
  collectionNames,
  ensureTriggers,
  ensureAllTriggers,
  onCreate,
  onUpdate,
  onDeleteRequest,
  onList,
  receipt,
  head,
  compact,
  retentionSeconds,
};
