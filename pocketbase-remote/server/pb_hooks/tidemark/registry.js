// tidemark server extension: which collections are synced — the operator's choice,
// kept in the database (_tm_collections: collection id, name, owner field), made
// with the enable/disable routes (or a migration calling enable()).
//
// Enabling a collection, in one transaction: adds the fields (tm_seq, tm_cid,
// tm_push, tm_clients) and indexes it lacks, makes its password fields hidden (also
// when a later change adds one: a password never syncs), registers it, (re)creates its triggers,
// gives every existing record a seq and an empty idempotency memory, publishes the
// registry to the hooks and binds the record hooks to the collection (by id, so a
// rename keeps them). Disabling drops our triggers and unregisters it; the fields,
// their values and the tombstones stay (enabling it again stamps every record anew).
//
// The record hooks are bound per synced collection, at runtime: tidemark.pb.js keeps
// PocketBase's hook-binding functions of its loader in the app store, and bind()
// calls them for a collection id once per process. A handler bound to a collection
// that was disabled since does nothing (it reads the published registry). So
// collections that are not synced pay for no JS call on their writes.

const config = require(`${__hooks}/tidemark/config.js`);
const triggers = require(`${__hooks}/tidemark/triggers.js`);
const store = require(`${__hooks}/tidemark/store.js`);

const TABLE = "_tm_collections";

// The fields a synced collection needs, as PocketBase field options.
const FIELDS = [
  { name: "tm_seq", type: "number", onlyInt: true },
  { name: "tm_cid", type: "text" },
  { name: "tm_push", type: "text" },
  // idempotency memory: {"<client>": [newest applied counter, its seq]}
  { name: "tm_clients", type: "json", hidden: true },
];

// The record hooks of a synced collection. Their source is compiled by PocketBase
// on its own (they see no variable of this module).
const HANDLERS = {
  create: (e) => {
    (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onCreate(e);
  },
  update: (e) => {
    (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onUpdate(e);
  },
  deleteRequest: (e) => {
    return (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onDeleteRequest(e);
  },
  list: (e) => {
    return require(`${__hooks}/tidemark/routes.js`).onList(e);
  },
};

// App store keys of PocketBase's binding functions (set by tidemark.pb.js).
const BINDERS = {
  create: "tidemark.bind.create",
  update: "tidemark.bind.update",
  deleteRequest: "tidemark.bind.deleteRequest",
  list: "tidemark.bind.list",
};

function badRequest(message) {
  return new BadRequestError("tidemark: " + message, { collection: new ValidationError("tm_invalid", message) });
}

function tableExists(app, name) {
  const m = new DynamicModel({ n: 0 });
  app.db().newQuery("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = {:t}").bind({ t: name }).one(m);
  return m.n > 0;
}

// The registry as stored: [{id, name, owner}], by name.
function load(app) {
  if (!tableExists(app, TABLE)) return [];
  const rows = arrayOf(new DynamicModel({ id: "", name: "", owner: "" }));
  app.db().newQuery("SELECT id, name, owner FROM " + TABLE + " ORDER BY name").all(rows);
  return rows.map((r) => ({ id: r.id, name: r.name, owner: r.owner }));
}

// Makes the registry as `app` sees it (inside a transaction: as it will be once that
// commits) the one every hook reads.
function publish(app) {
  const list = load(app);
  app.store().set(config.REGISTRY_KEY, JSON.stringify(list));
  return list;
}

// Whether PocketBase's hook-binding functions are at hand (false where our pb_hooks
// are not loaded, e.g. a migration run by a server without them).
function canBind(app) {
  for (const k of Object.keys(BINDERS)) {
    if (typeof app.store().get(BINDERS[k]) !== "function") return false;
  }
  return true;
}

// Binds the record hooks to collection `id`, once per process.
function bind(app, id) {
  if (!canBind(app)) return false;
  const s = app.store();
  const b = {};
  for (const k of Object.keys(BINDERS)) b[k] = s.get(BINDERS[k]);
  s.getOrSet("tidemark.bound." + id, () => {
    b.create(HANDLERS.create, id);
    b.update(HANDLERS.update, id);
    b.deleteRequest(HANDLERS.deleteRequest, id);
    b.list(HANDLERS.list, id);
    return true;
  });
  return true;
}

function indexColumns(sql) {
  const m = /\(([^)]*)\)/.exec(sql);
  return m ? m[1].replace(/[`"\[\]\s]/g, "").toLowerCase() : "";
}

// Whether collection coll has an index on exactly these columns (in this order).
function hasIndex(coll, cols) {
  const want = cols.join(",").toLowerCase();
  const list = coll.indexes || [];
  for (let i = 0; i < list.length; i++) {
    if (indexColumns(String(list[i])) === want) return true;
  }
  return false;
}

function checkOwner(coll, owner) {
  if (!owner) return;
  const f = coll.fields.getByName(owner);
  if (!f) throw badRequest(`${coll.name} has no field ${owner}`);
  const t = f.type();
  if (t === "relation") {
    if (f.maxSelect > 1) throw badRequest(`owner field ${owner} holds more than one record (maxSelect > 1)`);
  } else if (t !== "text") {
    throw badRequest(`owner field ${owner} must be a relation or text field holding the owner's user id`);
  }
}

// Makes every password field of coll hidden (PocketBase then leaves it out of every
// record it sends): a password never syncs, and a client that pulled one would push
// it back. Returns whether a field changed.
function hidePasswords(coll) {
  let changed = false;
  const list = coll.fields;
  for (let i = 0; i < list.length; i++) {
    const f = list[i];
    if (f.type() === "password" && !f.hidden) {
      f.hidden = true;
      changed = true;
    }
  }
  return changed;
}

function newField(def) {
  switch (def.type) {
    case "number":
      return new NumberField({ name: def.name, onlyInt: !!def.onlyInt });
    case "text":
      return new TextField({ name: def.name });
    default:
      return new JSONField({ name: def.name, hidden: !!def.hidden });
  }
}

// Enables sync of collection `nameOrId` with owner field `owner` ("" for none), see
// the top of this file. Idempotent: enabling a synced collection with the same owner
// only re-creates its triggers; with another owner field, also registers that one
// (later tombstones follow it). Returns {collection, id, owner, backfilled, head}.
function enable(app, nameOrId, owner) {
  owner = owner || "";
  let out = null;
  try {
    app.runInTransaction((tx) => {
      out = enableIn(tx, nameOrId, owner);
    });
  } catch (err) {
    publish(app);
    throw err;
  }
  return out;
}

function enableIn(tx, nameOrId, owner) {
  if (!tableExists(tx, TABLE)) throw badRequest("the tidemark migrations have not run (no " + TABLE + ")");
  let coll;
  try {
    coll = tx.findCollectionByNameOrId(nameOrId);
  } catch (_) {
    throw new NotFoundError("tidemark: no collection " + String(nameOrId).slice(0, 64));
  }
  if (coll.type !== "base" || coll.system || coll.name === "tm_tombstones") {
    throw badRequest(`only base collections of your own can be synced (${coll.name} is ${coll.system ? "a system" : coll.type} collection)`);
  }
  checkOwner(coll, owner);
  const prev = load(tx).filter((c) => c.id === coll.id)[0] || null;
  let changed = false;
  for (const def of FIELDS) {
    const f = coll.fields.getByName(def.name);
    if (!f) {
      coll.fields.add(newField(def));
      changed = true;
    } else if (f.type() !== def.type) {
      throw badRequest(`${coll.name}.${def.name} is a ${f.type()} field; tidemark needs a ${def.type} field of that name`);
    }
  }
  if (hidePasswords(coll)) changed = true;
  if (!hasIndex(coll, ["tm_seq"])) {
    coll.addIndex("idx_tidemark_seq_" + coll.id, false, "`tm_seq`", "");
    changed = true;
  }
  if (owner && !hasIndex(coll, [owner, "tm_seq"])) {
    coll.addIndex("idx_tidemark_owner_seq_" + coll.id, false, "`" + owner + "`, `tm_seq`", "");
    changed = true;
  }
  if (changed) {
    tx.save(coll);
    coll = tx.findCollectionByNameOrId(coll.id);
  }
  let backfilled = 0;
  if (!prev) {
    // Every record gets a new seq, in insertion order, and an empty memory: records
    // written before (or while the collection was not synced) are all pulled again.
    const m = new DynamicModel({ n: 0 });
    tx.db().newQuery("SELECT COUNT(*) AS n FROM {{" + coll.name + "}}").one(m);
    backfilled = m.n;
    if (backfilled > 0) {
      const s = store.state(tx).seq;
      tx.db()
        .newQuery(
          "UPDATE {{" + coll.name + "}} SET [[tm_seq]] = {:s} + r.n, [[tm_cid]] = '', [[tm_push]] = '', " +
            "[[tm_clients]] = NULL FROM (SELECT rowid AS rr, ROW_NUMBER() OVER (ORDER BY rowid) AS n FROM {{" +
            coll.name + "}}) AS r WHERE {{" + coll.name + "}}.rowid = r.rr"
        )
        .bind({ s: s })
        .execute();
      tx.db().newQuery("UPDATE _tm_state SET seq = seq + {:n} WHERE id = 1").bind({ n: backfilled }).execute();
    }
  }
  tx.db()
    .newQuery(
      "INSERT INTO " + TABLE + " (id, name, owner, at) VALUES ({:id}, {:name}, {:owner}, CAST(strftime('%s','now') AS INTEGER)) " +
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner"
    )
    .bind({ id: coll.id, name: coll.name, owner: owner })
    .execute();
  if (!triggers.ensureTriggers(tx, coll, owner)) throw badRequest(`${coll.name} lacks the tidemark fields`);
  // Published and bound before the commit: a write waiting for the database (all
  // writes go through one connection) meets hooks and triggers together.
  publish(tx);
  bind(tx, coll.id);
  return { collection: coll.name, id: coll.id, owner: owner, backfilled: backfilled, head: store.state(tx).seq };
}

// Stops syncing collection `nameOrId`: drops our triggers and unregisters it. The
// fields, their values and the tombstones stay. Returns {collection, id, wasSynced}.
function disable(app, nameOrId) {
  let out = null;
  try {
    app.runInTransaction((tx) => {
      let coll;
      try {
        coll = tx.findCollectionByNameOrId(nameOrId);
      } catch (_) {
        throw new NotFoundError("tidemark: no collection " + String(nameOrId).slice(0, 64));
      }
      const was = tableExists(tx, TABLE) && load(tx).some((c) => c.id === coll.id);
      triggers.dropTriggers(tx, coll.name);
      if (was) tx.db().newQuery("DELETE FROM " + TABLE + " WHERE id = {:id}").bind({ id: coll.id }).execute();
      publish(tx);
      out = { collection: coll.name, id: coll.id, wasSynced: was };
    });
  } catch (err) {
    publish(app);
    throw err;
  }
  return out;
}

// Runs fn(tx) with e.app = tx, joining the transaction e.app is in, if any.
function inTx(e, fn) {
  store.inTx(e, fn);
}

// onCollectionUpdateExecute (every collection; collection changes are rare): a
// synced collection keeps its fields and owner field (refused otherwise: disable it
// first), its password fields are made hidden, and it gets its triggers and registry entry anew — after a rename under the
// new name, its tombstones too — in the change's transaction.
function onCollectionUpdate(e) {
  const entry = config.syncedById(e.app, e.collection.id);
  if (!entry) return e.next();
  const coll = e.collection;
  for (const def of FIELDS) {
    const f = coll.fields.getByName(def.name);
    if (!f || f.type() !== def.type) {
      throw badRequest(`${coll.name} is synced: its ${def.type} field ${def.name} must stay (disable sync first)`);
    }
  }
  hidePasswords(coll);
  let owner = entry.owner;
  if (owner && !coll.fields.getByName(owner)) {
    // A renamed owner field keeps its id.
    let renamed = "";
    try {
      const old = e.app.findCachedCollectionByNameOrId(coll.id).fields.getByName(owner);
      const now = old ? coll.fields.getById(old.id) : null;
      renamed = now ? now.name : "";
    } catch (_) {
      renamed = "";
    }
    if (!renamed) throw badRequest(`${coll.name} is synced with owner field ${owner}: enable it with another owner first`);
    owner = renamed;
  }
  inTx(e, (tx) => {
    triggers.dropTriggers(tx, entry.name);
    e.next();
    tx.db()
      .newQuery("UPDATE " + TABLE + " SET name = {:name}, owner = {:owner} WHERE id = {:id}")
      .bind({ id: coll.id, name: coll.name, owner: owner })
      .execute();
    if (entry.name !== coll.name) {
      tx.db()
        .newQuery("UPDATE tm_tombstones SET coll = {:n} WHERE coll = {:o}")
        .bind({ n: coll.name, o: entry.name })
        .execute();
    }
    triggers.ensureTriggers(tx, tx.findCollectionByNameOrId(coll.id), owner);
    publish(tx);
  });
}

// onCollectionDeleteExecute: a deleted synced collection is unregistered (its
// triggers go with its table; its tombstones stay until compacted).
function onCollectionDelete(e) {
  const entry = config.syncedById(e.app, e.collection.id);
  if (!entry) return e.next();
  inTx(e, (tx) => {
    e.next();
    tx.db().newQuery("DELETE FROM " + TABLE + " WHERE id = {:id}").bind({ id: entry.id }).execute();
    publish(tx);
  });
}

// At start (onBootstrap): the self-check (refuses to start if PocketBase does not
// behave as the extension needs, see selfcheck.js), then every registered
// collection's triggers anew (an upgrade replaces older versions' triggers) in one
// transaction, the registry published and the hooks bound.
function bootstrap(app) {
  require(`${__hooks}/tidemark/selfcheck.js`).run(app);
  if (!tableExists(app, TABLE)) {
    // A new database: the migrations run after this (they create the table, and may
    // enable collections themselves).
    publish(app);
    return;
  }
  activate(app);
}

// Every registered collection's triggers anew (replacing older versions' ones), the
// registry published and the hooks bound: at start, and from the migration that
// creates the registry (an upgrade must not wait for a restart).
function activate(app) {
  app.runInTransaction((tx) => {
    for (const c of load(tx)) {
      let coll;
      try {
        coll = tx.findCollectionByNameOrId(c.id);
      } catch (_) {
        // Deleted while our hooks were not loaded.
        tx.db().newQuery("DELETE FROM " + TABLE + " WHERE id = {:id}").bind({ id: c.id }).execute();
        continue;
      }
      if (coll.name !== c.name) {
        tx.db().newQuery("UPDATE " + TABLE + " SET name = {:n} WHERE id = {:id}").bind({ n: coll.name, id: c.id }).execute();
      }
      triggers.ensureTriggers(tx, coll, c.owner);
    }
    publish(tx);
    for (const c of load(tx)) bind(tx, c.id);
  });
}

module.exports = {
  TABLE,
  FIELDS,
  enable,
  disable,
  publish,
  bind,
  load,
  activate,
  onCollectionUpdate,
  onCollectionDelete,
  bootstrap,
  tableExists,
};
