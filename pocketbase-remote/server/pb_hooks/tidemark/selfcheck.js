// tidemark server extension: the startup self-check. The extension rests on
// behaviours of PocketBase that no API promises; at every start (onBootstrap) it
// checks them on a scratch collection, in a transaction it rolls back, and refuses to
// start (the error fails `pocketbase serve`, and every other command) if one fails:
//
// - version:  the PocketBase version is one this extension was tested with
//             (config.TESTED_POCKETBASE);
// - binding:  PocketBase's hook-binding functions are at hand for runtime binding
//             (registry.js binds the record hooks per synced collection);
// - insert:   a create marked by the hook gets its seq from the insert trigger;
// - update:   a plain update (PocketBase's UPDATE sets every column, id included)
//             fires the update trigger, and so does one marked by the hook;
// - delete:   a plain delete writes a tombstone with the record's owner and seq.
//
// Nothing of the scratch work stays: the transaction is rolled back, and the
// collections cache, which PocketBase refreshes inside it, is reloaded.

const config = require(`${__hooks}/tidemark/config.js`);
const triggers = require(`${__hooks}/tidemark/triggers.js`);

const ROLLBACK = "tidemark: self-check rollback";

function fail(checks) {
  return new Error(
    "tidemark: startup self-check failed, refusing to run: " +
      checks.join("; ") +
      " (see pocketbase-remote/README.md, \"Startup self-check\")"
  );
}

function one(tx, sql, params, shape) {
  const m = new DynamicModel(shape);
  tx.db().newQuery(sql).bind(params || {}).one(m);
  return m;
}

function run(app) {
  const failed = [];
  const version = config.pocketbaseVersion(app);
  if (!config.TESTED_POCKETBASE.test(version)) {
    failed.push(`version: PocketBase ${version} is not one this extension was tested with (${config.TESTED_POCKETBASE})`);
  }
  const binders = ["tidemark.bind.create", "tidemark.bind.update", "tidemark.bind.deleteRequest", "tidemark.bind.list"];
  for (const k of binders) {
    if (typeof app.store().get(k) !== "function") {
      failed.push("binding: PocketBase's hook-binding functions are not at hand (" + k + ")");
      break;
    }
  }
  try {
    app.runInTransaction((tx) => {
      scratchChecks(tx, failed);
      throw new Error(ROLLBACK);
    });
  } catch (err) {
    if (String(err).indexOf(ROLLBACK) < 0) failed.push("scratch collection: " + String(err));
  } finally {
    try {
      app.reloadCachedCollections();
    } catch (_) {
      // nothing else to do
    }
  }
  if (failed.length) {
    console.log(String(fail(failed)));
    throw fail(failed);
  }
}

function scratchChecks(tx, failed) {
  // A new database has no tidemark tables yet (the migrations run after this):
  // scratch ones, rolled back with the rest.
  tx.db()
    .newQuery(
      "CREATE TABLE IF NOT EXISTS _tm_state (id INTEGER PRIMARY KEY CHECK (id = 1), " +
        "seq INTEGER NOT NULL DEFAULT 0, horizon INTEGER NOT NULL DEFAULT 0)"
    )
    .execute();
  tx.db().newQuery("INSERT OR IGNORE INTO _tm_state (id, seq, horizon) VALUES (1, 0, 0)").execute();
  tx.db()
    .newQuery("CREATE TABLE IF NOT EXISTS _tm_compacted (client TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID")
    .execute();
  tx.db()
    .newQuery(
      "CREATE TABLE IF NOT EXISTS tm_tombstones (id TEXT PRIMARY KEY NOT NULL, coll TEXT NOT NULL DEFAULT '', " +
        "rid TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '', tm_seq NUMERIC NOT NULL DEFAULT 0, " +
        "tm_cid TEXT NOT NULL DEFAULT '', moved BOOLEAN NOT NULL DEFAULT FALSE, at NUMERIC NOT NULL DEFAULT 0, " +
        "tm_clients JSON DEFAULT NULL, UNIQUE (coll, rid, owner))"
    )
    .execute();
  const name = "_tidemark_selfcheck_" + $security.randomStringWithAlphabet(8, "abcdefghijklmnopqrstuvwxyz0123456789");
  const coll = new Collection({
    type: "base",
    name: name,
    fields: [
      { name: "owner", type: "text" },
      { name: "v", type: "text" },
      { name: "tm_seq", type: "number", onlyInt: true },
      { name: "tm_cid", type: "text" },
      { name: "tm_push", type: "text" },
      { name: "tm_clients", type: "json", hidden: true },
    ],
  });
  tx.save(coll);
  const saved = tx.findCollectionByNameOrId(name);
  if (!triggers.ensureTriggers(tx, saved, "owner")) {
    failed.push("triggers: could not be created");
    return;
  }
  const seq = () => one(tx, "SELECT seq FROM _tm_state WHERE id = 1", {}, { seq: 0 }).seq;
  const stored = (id) => one(tx, "SELECT [[tm_seq]] AS s FROM {{" + name + "}} WHERE id = {:id}", { id: id }, { s: 0 }).s;

  // insert: as the create hook marks a plain create.
  const rec = new Record(saved);
  rec.set("owner", "u1");
  rec.set("v", "a");
  rec.set("tm_push", triggers.PLAIN);
  tx.save(rec);
  const h1 = seq();
  if (stored(rec.id) !== h1 || h1 < 1) failed.push(`insert: the insert trigger gave no seq (tm_seq ${stored(rec.id)}, head ${h1})`);

  // update, plain: nothing of ours marked, only a field changed.
  let r = tx.findRecordById(name, rec.id);
  r.set("v", "b");
  tx.save(r);
  const h2 = seq();
  if (h2 !== h1 + 1 || stored(rec.id) !== h2) {
    failed.push(
      `update: a plain UPDATE did not fire the update trigger (PocketBase no longer sets every column?) ` +
        `(tm_seq ${stored(rec.id)}, head ${h2}, expected ${h1 + 1})`
    );
  }
  // update, as the update hook marks a plain one.
  r = tx.findRecordById(name, rec.id);
  r.set("v", "c");
  r.set("tm_push", stored(rec.id) + ":");
  tx.save(r);
  const h3 = seq();
  if (h3 !== h2 + 1 || stored(rec.id) !== h3) failed.push(`update: a marked update did not fire the update trigger (head ${h3})`);

  // delete: a plain delete leaves a tombstone of the record's owner at the next seq.
  tx.delete(tx.findRecordById(name, rec.id));
  const h4 = seq();
  const t = one(
    tx,
    "SELECT COUNT(*) AS n, COALESCE(MAX(tm_seq), 0) AS s FROM tm_tombstones WHERE coll = {:c} AND rid = {:r} AND owner = 'u1'",
    { c: name, r: rec.id },
    { n: 0, s: 0 }
  );
  if (t.n !== 1 || t.s !== h4 || h4 !== h3 + 1) {
    failed.push(`delete: a plain DELETE wrote no tombstone at the next seq (${t.n} tombstones, seq ${t.s}, head ${h4})`);
  }
}

module.exports = { run };
