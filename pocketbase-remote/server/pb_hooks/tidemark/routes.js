// tidemark server extension: the routes (head, receipt, compact) and the list hook.
// Every route answers only about what the caller may see.

const ids = require(`${__hooks}/tidemark/ids.js`);
const config = require(`${__hooks}/tidemark/config.js`);
const memory = require(`${__hooks}/tidemark/memory.js`);
const store = require(`${__hooks}/tidemark/store.js`);

// protocol: the extension's protocol version (config.PROTOCOL; the client refuses
// any other), pocketbase: the server's PocketBase version.
function head(e) {
  const s = store.state(e.app);
  const batch = e.app.settings().batch;
  return {
    protocol: config.PROTOCOL,
    pocketbase: config.pocketbaseVersion(e.app),
    head: s.seq,
    horizon: s.horizon,
    collections: config.collectionNames(e.app),
    batchMax: !batch.enabled
      ? 0
      : e.hasSuperuserAuth()
        ? batch.maxRequests
        : Math.min(batch.maxRequests, config.userBatchMax()),
    superuser: e.hasSuperuserAuth(),
  };
}

function badBody(message) {
  return new BadRequestError("tidemark: " + message, { body: new ValidationError("tm_invalid", message) });
}

// The receipt's body {"<collection>": [[id, change id], ...]}, checked: synced
// collections only, well-formed ids and change ids, at most LIMITS.receiptPairs pairs.
function receiptBody(app, body) {
  if (!body || typeof body !== "object" || Array.isArray(body)) throw badBody("expected {\"<collection>\": [[id, change id], ...]}");
  let total = 0;
  const out = {};
  for (const name of Object.keys(body)) {
    if (!config.isSynced(app, name)) throw badBody("not a synced collection: " + String(name).slice(0, 64));
    const asked = body[name];
    if (!Array.isArray(asked)) throw badBody("expected an array of [id, change id] for " + name);
    total += asked.length;
    if (total > config.LIMITS.receiptPairs) throw badBody("more than " + config.LIMITS.receiptPairs + " changes asked");
    for (const a of asked) {
      if (!Array.isArray(a) || a.length !== 2 || !ids.isId(a[0]) || !ids.parseCid(a[1])) {
        throw badBody("expected [id, change id] pairs: id 15 chars [a-z0-9], change id <client>.<counter>");
      }
    }
    out[name] = asked;
  }
  return out;
}

// POST /api/tidemark/receipt: the seqs that pushed changes produced, body
// {"<collection>": [[id, change id], ...]} -> {"<collection>": {"<id>": seq}}. Read
// from each record's idempotency memory (or its tombstone's), so it holds even after
// other writes on top; a change the memory does not know is left out. A user is
// answered only about changes of their own client ids, on records and tombstones
// they own (for collections with an owner field): the seq of a change the caller
// made, nothing about anybody else's.
function receipt(e) {
  const app = e.app;
  const body = receiptBody(app, JSON.parse(JSON.stringify(e.requestInfo().body || {})));
  const su = e.hasSuperuserAuth();
  const uid = su ? "" : e.auth.id;
  let own = null;
  if (!su) {
    const clients = {};
    for (const name of Object.keys(body)) for (const a of body[name]) clients[ids.parseCid(a[1]).client] = true;
    own = memory.ownClients(app, memory.principal(e.auth), Object.keys(clients));
  }
  const out = {};
  for (const c of config.registry(app).list) {
    let asked = body[c.name];
    if (!asked) continue;
    if (own) asked = asked.filter((a) => own[ids.parseCid(a[1]).client]);
    const got = {};
    out[c.name] = got;
    if (asked.length === 0) continue;
    const of = su ? "" : ownerColumn(app, c);
    // The common cases in one statement and one JSON string each: the record still
    // holds the change as its latest version, or (a delete) its tombstone does.
    Object.assign(
      got,
      latestSeqs(
        app,
        asked,
        "{{" + c.name + "}} AS s ON s.[[id]] = json_extract(a.value, '$[0]') AND s.[[tm_cid]] = json_extract(a.value, '$[1]')" +
          (of ? " AND s.[[" + of + "]] = {:uid}" : ""),
        "s.[[id]]",
        { uid: uid }
      )
    );
    let rest = asked.filter((a) => !(a[0] in got));
    if (rest.length) {
      Object.assign(
        got,
        latestSeqs(
          app,
          rest,
          "tm_tombstones AS s ON s.coll = {:c} AND s.rid = json_extract(a.value, '$[0]') " +
            "AND s.tm_cid = json_extract(a.value, '$[1]') AND s.moved = FALSE" +
            (of ? " AND s.owner IN ('', {:uid})" : ""),
          "s.rid",
          { c: c.name, uid: uid }
        )
      );
      rest = rest.filter((a) => !(a[0] in got));
    }
    if (rest.length) {
      const want = {};
      for (const a of rest) want[a[0]] = ids.parseCid(a[1]);
      rememberedSeqs(app, c.name, of, uid, want, got);
    }
  }
  return out;
}

// The configured owner field of collection c if the collection has it, else "".
function ownerColumn(app, c) {
  if (!c.owner) return "";
  try {
    return app.findCollectionByNameOrId(c.name).fields.getByName(c.owner) ? c.owner : "";
  } catch (_) {
    return "";
  }
}

// {id: seq} of the asked [id, change id] pairs that `join` (a JOIN clause on json_each
// row a, the matching row as s, with params) finds; one statement, one JSON string.
// CROSS JOIN keeps the asked pairs outside: with a plain JOIN SQLite walked every
// tombstone of the collection and the asked pairs inside (seen: deletes ~20x slower).
function latestSeqs(app, asked, join, idCol, params) {
  const m = store.scratch("receipt", { m: "" });
  app
    .db()
    .newQuery(
      "SELECT COALESCE(json_group_object(" + idCol + ", s.[[tm_seq]]), '{}') AS m FROM json_each({:ask}) AS a CROSS JOIN " + join
    )
    .bind(Object.assign({ ask: JSON.stringify(asked) }, params))
    .one(m);
  return JSON.parse(m.m);
}

// Into got: the seqs that changes want (id -> parsed change id) produced, from each
// record's idempotency memory or its tombstone's (others wrote or deleted since).
// of: the owner field the caller is held to ("" for none).
function rememberedSeqs(app, coll, of, uid, want, got) {
  const idsJson = JSON.stringify(Object.keys(want));
  const rows = arrayOf(new DynamicModel({ id: "", tm_seq: 0, tm_cid: "", tm_clients: "" }));
  app
    .db()
    .newQuery(
      "SELECT [[id]], [[tm_seq]], [[tm_cid]], COALESCE([[tm_clients]], '') AS tm_clients FROM {{" +
        coll +
        "}} WHERE [[id]] IN (SELECT value FROM json_each({:ids}))" +
        (of ? " AND [[" + of + "]] = {:uid}" : "")
    )
    .bind({ ids: idsJson, uid: uid })
    .all(rows);
  for (const r of rows) {
    const seq = memory.remembered(memory.withLatest(memory.parseClients(r.tm_clients), r.tm_cid, r.tm_seq), want[r.id]);
    if (seq) got[r.id] = seq;
  }
  const ts = arrayOf(new DynamicModel({ rid: "", tm_seq: 0, tm_cid: "", tm_clients: "" }));
  app
    .db()
    .newQuery(
      "SELECT rid, tm_seq, tm_cid, COALESCE(tm_clients, '') AS tm_clients FROM tm_tombstones " +
        "WHERE coll = {:c} AND moved = FALSE AND rid IN (SELECT value FROM json_each({:ids}))" +
        (of ? " AND owner IN ('', {:uid})" : "")
    )
    .bind({ c: coll, ids: idsJson, uid: uid })
    .all(ts);
  for (const t of ts) {
    const seq = memory.remembered(memory.tombClients(t.tm_clients, t.tm_cid, t.tm_seq), want[t.rid]);
    if (seq && !got[t.rid]) got[t.rid] = seq;
  }
}

// Exactly the range filters the tidemark client sends.
const RANGE_FILTER = /^\(tm_seq>\d{1,20} && tm_seq<=\d{1,20}\)( && moved=false)?$/;

// PocketBase delays filtered list requests of non-superusers that come back empty
// (a randomized throttle against filter timing attacks, observed up to ~500 ms). A
// pull asks every synced collection and the tombstones for a seq range, and most of
// those answers are empty. For exactly tidemark's range filter (on tm_seq only,
// under the collection's own list rule, revealing nothing the head route does not)
// answer the empty page directly; everything else goes through unchanged.
function onList(e) {
  if (e.records.length > 0) return e.next();
  if (e.collection.name !== "tm_tombstones" && !config.syncedById(e.app, e.collection.id)) return e.next();
  const f = e.requestInfo().query["filter"] || "";
  if (!RANGE_FILTER.test(f)) return e.next();
  // The list result as PocketBase would send it, marked (the throttle is random,
  // so tests look for which path answered, not how fast).
  const r = e.result;
  return e.json(200, {
    page: r.page,
    perPage: r.perPage,
    totalItems: r.totalItems,
    totalPages: r.totalPages,
    items: [],
    tidemark: "empty-range",
  });
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
      memory.foldCompacted(tx, m.s);
      const r = tx.db().newQuery("DELETE FROM tm_tombstones WHERE tm_seq <= {:s}").bind({ s: m.s }).execute();
      result.removed = r.rowsAffected();
    }
    result.horizon = store.state(tx).horizon;
  });
  return result;
}

// POST /api/tidemark/compact {"olderThanSeconds": N} (optional; superusers only).
function compactRoute(e) {
  const body = e.requestInfo().body || {};
  let olderThan = config.retentionSeconds();
  const v = body.olderThanSeconds;
  if (v !== undefined && v !== null) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > config.LIMITS.olderThanSeconds) {
      throw badBody("olderThanSeconds must be an integer from 0 to " + config.LIMITS.olderThanSeconds);
    }
    olderThan = v;
  }
  return compact(e.app, olderThan);
}

// POST /api/tidemark/collections/{name}/enable {"owner": "<field>" | ""} and
// .../disable (superusers only): see registry.js.
function enableRoute(e) {
  const name = e.request.pathValue("name");
  const body = e.requestInfo().body || {};
  const owner = body.owner === undefined || body.owner === null ? "" : body.owner;
  if (typeof owner !== "string" || owner.length > 255 || !/^[A-Za-z0-9_]*$/.test(owner)) {
    throw badBody("owner must be a field name (or \"\" for none)");
  }
  return require(`${__hooks}/tidemark/registry.js`).enable(e.app, name, owner);
}

function disableRoute(e) {
  return require(`${__hooks}/tidemark/registry.js`).disable(e.app, e.request.pathValue("name"));
}

module.exports = { head, receipt, onList, compact, compactRoute, enableRoute, disableRoute };
