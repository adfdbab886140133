// tidemark server extension: the SQL the write hooks and routes share — the seq
// counter, live records' and tombstones' sync state, transactions.

const memory = require(`${__hooks}/tidemark/memory.js`);

// Scratch models, one per shape and JS runtime (a module is loaded once per pooled
// runtime, and a runtime runs one handler at a time; values are read out before
// e.next()). `new DynamicModel` builds a Go struct type by reflection on every call:
// measured, that alone cost a push more than the rest of its hook.
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

function state(app) {
  const m = new DynamicModel({ seq: 0, horizon: 0 });
  app.db().newQuery("SELECT seq, horizon FROM _tm_state WHERE id = 1").one(m);
  return m;
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
    ? { seq: m.tm_seq, cid: m.tm_cid, clients: memory.withLatest(memory.parseClients(m.tm_clients), m.tm_cid, m.tm_seq) }
    : null;
}

// The newest (non-moved) tombstone of a record that `owner` may build on: their own
// or an owner-less one -> {seq, clients}; {foreign: true} if another owner's
// tombstone holds the id (nobody else may create it); null if there is none.
function tombstone(tx, coll, id, owner) {
  const m = scratch("tombstone", { tm_seq: 0, tm_cid: "", owner: "", tm_clients: "", alien: 0 });
  const found = oneOrNone(
    tx.db()
      .newQuery(
        "SELECT tm_seq, tm_cid, owner, COALESCE(tm_clients, '') AS tm_clients, " +
          "(owner <> '' AND owner <> {:o}) AS alien FROM tm_tombstones " +
          "WHERE coll = {:c} AND rid = {:r} AND moved = FALSE ORDER BY alien DESC, tm_seq DESC LIMIT 1"
      )
      .bind({ c: coll, r: id, o: owner }),
    m
  );
  if (!found) return null;
  if (m.alien) return { foreign: true };
  return { seq: m.tm_seq, clients: memory.tombClients(m.tm_clients, m.tm_cid, m.tm_seq) };
}

// A "moved" tombstone: the record left owner's view at seq (its owner changed). It
// carries no change id and no memory: the old owner only drops the record.
function putMoved(tx, coll, id, owner, seq) {
  tx.db()
    .newQuery(
      "INSERT INTO tm_tombstones (id, coll, rid, owner, tm_seq, tm_cid, moved, at, tm_clients) VALUES " +
        "(substr(lower(hex(randomblob(8))), 1, 15), {:c}, {:r}, {:o}, {:s}, '', TRUE, " +
        "CAST(strftime('%s','now') AS INTEGER), '{}') " +
        memory.TOMBSTONE_UPSERT
    )
    .bind({ c: coll, r: id, o: owner, s: seq })
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

module.exports = { scratch, oneOrNone, nextSeq, state, current, tombstone, putMoved, inTx };
