// tidemark server extension: the idempotency memory, and whose it is.
//
// Each record remembers, per client that wrote it, the newest change that client
// applied to it: [counter, seq it produced]. The latest writer's entry is implicit —
// tm_cid at tm_seq — and tm_clients (hidden JSON) holds the others', capped to the
// MAX_CLIENTS newest. A pushed change is "already applied" only if it is exactly the
// change remembered for its client (client part and counter): a lower or otherwise
// different counter is a new change (e.g. from a store restored from a backup) and is
// processed as a fresh conditional write.
//
// Client ids are bound to the first user that pushes with them (_tm_writers): a
// client id of user X is refused for any other user, so a user only ever meets the
// memory of their own clients (superusers may write for anyone).

const ids = require(`${__hooks}/tidemark/ids.js`);

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

// clients plus the entry of the writer of version seq (change id cid, as stored):
// for each client the entry of its latest write (highest seq) wins.
function withLatest(clients, cid, seq) {
  const c = cid ? ids.storedCid(cid) : null;
  if (c) {
    const m = clients[c.client];
    if (!(Array.isArray(m) && m[1] >= seq)) clients[c.client] = [c.n, seq];
  }
  return clients;
}

// The seq that an earlier delivery of exactly this change (push: parsed tag)
// produced, or 0. clients must include the latest writer's entry (see withLatest).
function remembered(clients, push) {
  const m = clients[push.client];
  return Array.isArray(m) && String(m[0]) === push.n && m[1] > 0 ? m[1] : 0;
}

// clients with the entry of change cid at seq, in its stored form.
function remember(clients, push, seq) {
  clients[push.client] = [push.n, seq];
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

// Sets tm_clients to raw unless the record already holds exactly that (the request
// body may carry its own value: never keep it).
function keepClients(e, raw) {
  if (e.record.getString("tm_clients") !== raw) e.record.set("tm_clients", raw);
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

// Tombstones keep the deleted record's memory as stored, plus [change id, seq]
// pairs under keys starting with "~": PREV, the deleted record's latest writer; DEL,
// the delete itself; "~p<seq>", "~d<seq>", "~e<seq>" those of a tombstone it replaced
// (see TOMBSTONE_UPSERT). No JSON key is built from a client's string.
const PREV = "~prev";
const DEL = "~del";

// SQL: the stored memory in column col as a JSON object ('{}' if it is none).
function memoryObject(col) {
  return "CASE WHEN json_valid(" + col + ") THEN (CASE json_type(" + col + ") WHEN 'object' " +
    "THEN " + col + " ELSE '{}' END) ELSE '{}' END";
}
const PREV_PATH = "'$.\"" + PREV + "\"'";
const DEL_PATH = "'$.\"" + DEL + "\"'";
const OLD_MEMORY = memoryObject("tm_tombstones.tm_clients");
// Writing a tombstone where one exists for the same (coll, rid, owner) — a record
// deleted, created again, deleted again — keeps the old one's memory: its entries,
// its PREV and its own delete, each under a key of its seq. (The replaced one's
// memory would otherwise be lost, and a late retry of a change it remembered
// answered as a conflict: found by tests/pocketbase_convergence.rs.)
const TOMBSTONE_UPSERT =
  "ON CONFLICT (coll, rid, owner) DO UPDATE SET tm_seq = excluded.tm_seq, tm_cid = excluded.tm_cid, " +
  "moved = excluded.moved, at = excluded.at, tm_clients = json_patch(json_set(json_remove(" +
  OLD_MEMORY + ", " + PREV_PATH + ", " + DEL_PATH + "), " +
  "'$.\"~p' || tm_tombstones.tm_seq || '\"', json_extract(" + OLD_MEMORY + ", " + PREV_PATH + "), " +
  "'$.\"~e' || tm_tombstones.tm_seq || '\"', json_extract(" + OLD_MEMORY + ", " + DEL_PATH + "), " +
  "'$.\"~d' || tm_tombstones.tm_seq || '\"', json_array(tm_tombstones.tm_cid, tm_tombstones.tm_seq)), " +
  "excluded.tm_clients)";

// A tombstone's idempotency memory from its stored form: the deleted record's
// entries, the [change id, seq] pairs under "~" keys and the delete's own change
// (tm_cid at tm_seq; blank for owner-less tombstones, whose DEL holds it).
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

// ---- what compaction forgets -------------------------------------------------

// SQL: folds the memory of the tombstones with tm_seq <= {:s} (about to be
// compacted) into _tm_compacted: per writer, the highest counter remembered in
// them (entries by client, the "~" [change id, seq] pairs, the delete's tm_cid).
// Counters are compared as integers (a counter beyond SQLite's range counts as its
// largest: covered, the cautious side).
const TOMB_MEMORY = "json_each(" + memoryObject("t.tm_clients") + ")";
const FOLD_COMPACTED =
  "INSERT INTO _tm_compacted (client, n) SELECT client, MAX(n) FROM (" +
  "SELECT j.key AS client, CAST(json_extract(j.value, '$[0]') AS INTEGER) AS n FROM tm_tombstones t, " + TOMB_MEMORY +
  " j WHERE t.tm_seq <= {:s} AND substr(j.key, 1, 1) <> '~' AND json_type(j.value) = 'array' " +
  "UNION ALL SELECT substr(c, 1, instr(c, '.') - 1), CAST(substr(c, instr(c, '.') + 1) AS INTEGER) FROM (" +
  "SELECT json_extract(j.value, '$[0]') AS c FROM tm_tombstones t, " + TOMB_MEMORY +
  " j WHERE t.tm_seq <= {:s} AND substr(j.key, 1, 1) = '~' AND json_type(j.value) = 'array' " +
  "UNION ALL SELECT t.tm_cid FROM tm_tombstones t WHERE t.tm_seq <= {:s} AND t.tm_cid <> ''" +
  ") WHERE typeof(c) = 'text' AND instr(c, '.') > 1" +
  ") WHERE client <> '' GROUP BY client ON CONFLICT (client) DO UPDATE SET n = MAX(n, excluded.n)";

// Folds the memory of the tombstones up to seq into _tm_compacted (in tx, before
// they are deleted).
function foldCompacted(tx, seq) {
  tx.db().newQuery(FOLD_COMPACTED).bind({ s: seq }).execute();
}

// SQL (in a trigger on a push create, tm_push "0:<client>.<n>"): true if a
// compaction dropped the memory of this writer at or above this counter.
const COMPACTED_COVERS_NEW =
  "EXISTS (SELECT 1 FROM _tm_compacted WHERE client = substr(NEW.[[tm_push]], 3, 15) AND " +
  "n >= CAST(substr(NEW.[[tm_push]], 19) AS INTEGER))";

// True if a compaction dropped the memory of push's writer at or above its counter:
// the change may have been applied before, to a record deleted and compacted since.
function compactedCovers(tx, push) {
  const m = new DynamicModel({ n: 0 });
  try {
    tx.db()
      .newQuery("SELECT 1 AS n FROM _tm_compacted WHERE client = {:c} AND n >= CAST({:n} AS INTEGER)")
      .bind({ c: push.client, n: push.n })
      .one(m);
  } catch (err) {
    if (String(err).indexOf("no rows") >= 0) return false;
    throw err;
  }
  return true;
}

// ---- whose client ids ---------------------------------------------------------

// The key a user's client ids are bound to: "<auth collection id>:<record id>".
function principal(auth) {
  return auth.collection().id + ":" + auth.id;
}

// Binds the client ids not bound yet to p and returns the first of clients bound
// to someone else ("" if none). Two statements per batch, outside its transaction
// (a binding stays even if the batch fails: the id was used first by p).
function bind(app, p, clients) {
  const list = JSON.stringify(clients);
  app
    .db()
    .newQuery(
      "INSERT INTO _tm_writers (client, principal, at) SELECT value, {:p}, CAST(strftime('%s','now') AS INTEGER) " +
        "FROM json_each({:c}) WHERE true ON CONFLICT (client) DO NOTHING"
    )
    .bind({ p: p, c: list })
    .execute();
  const m = new DynamicModel({ client: "" });
  try {
    app
      .db()
      .newQuery(
        "SELECT client FROM _tm_writers WHERE client IN (SELECT value FROM json_each({:c})) AND principal <> {:p} LIMIT 1"
      )
      .bind({ p: p, c: list })
      .one(m);
  } catch (err) {
    if (String(err).indexOf("no rows") >= 0) return "";
    throw err;
  }
  return m.client;
}

// The client ids among clients bound to p (a set).
function ownClients(app, p, clients) {
  const rows = arrayOf(new DynamicModel({ client: "" }));
  app
    .db()
    .newQuery("SELECT client FROM _tm_writers WHERE principal = {:p} AND client IN (SELECT value FROM json_each({:c}))")
    .bind({ p: p, c: JSON.stringify(clients) })
    .all(rows);
  const out = {};
  for (const r of rows) out[r.client] = true;
  return out;
}

module.exports = {
  parseClients,
  withLatest,
  remembered,
  remember,
  storeClients,
  keepClients,
  rawJson,
  tombClients,
  memoryObject,
  PREV_PATH,
  DEL_PATH,
  TOMBSTONE_UPSERT,
  foldCompacted,
  compactedCovers,
  COMPACTED_COVERS_NEW,
  principal,
  bind,
  ownClients,
};
