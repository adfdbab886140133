// tidemark server extension: the SQLite triggers behind the common writes.
//
// Creates, updates on the current version and deletes get their seq (and deletes
// their tombstone) from one trigger each per synced collection, inside PocketBase's
// own INSERT/UPDATE/DELETE statement — so in the write's transaction, in commit
// order — rather than from JS: measured on paired batches, the hooks' SQL from JS
// was most of what they cost per record. PocketBase answers from the in-memory
// record, which never sees a trigger's seq: the client reads the seqs of its pushes
// with one receipt per batch (see routes.js).
//
// The triggers are (re)created when PocketBase starts, when a collection is enabled
// (or its owner field changed) and when a synced collection is changed or renamed
// (registry.js) — each time in one transaction with what changed; never from a
// write hook, whose batch could roll back. They are named PREFIX + kind + table.

const memory = require(`${__hooks}/tidemark/memory.js`);

// The message of the insert trigger's refusal of a push create of a tombstoned id
// (the hook answers it the slow way, see writes.js).
const TOMBSTONED = "tidemark: tombstoned";
// ... of any create of an id that another owner's tombstone holds.
const FOREIGN = "tidemark: id of another owner";
// The message of the update trigger's refusal of an update whose base is no longer stored.
const STALE = "tidemark: stale base";
// tm_push of a plain create, set by the create hook for the insert trigger.
const PLAIN = "p";
// Every trigger (and nothing else) we create starts with this. Triggers of others,
// whatever their name (tm_* included), are left alone.
const PREFIX = "_tidemark_";
const TM_FIELDS = ["tm_seq", "tm_cid", "tm_push", "tm_clients"];

// The names of our triggers on table `name`.
function names(name) {
  return { insert: PREFIX + "insert_" + name, update: PREFIX + "update_" + name, delete: PREFIX + "delete_" + name };
}

// Drops our triggers on table `name`: ours (PREFIX), and those of earlier versions of
// this extension (tm_insert_v<n>_<table> etc.: recognised by their name and by their
// body, which counts in _tm_state), so a write never takes two seqs.
function dropTriggers(app, name) {
  const found = arrayOf(new DynamicModel({ name: "" }));
  app
    .db()
    .newQuery(
      "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = {:t} AND " +
        "(substr(name, 1, " + PREFIX.length + ") = {:p} OR ((name GLOB 'tm_insert_v[0-9]*' OR " +
        "name GLOB 'tm_update_v[0-9]*' OR name GLOB 'tm_delete_v[0-9]*') AND instr(sql, '_tm_state') > 0))"
    )
    .bind({ t: name, p: PREFIX })
    .all(found);
  for (const t of found) app.db().newQuery("DROP TRIGGER IF EXISTS [[" + t.name + "]]").execute();
  return found.length;
}

// (Re)creates the triggers of collection coll with owner field `of` ("" for none):
// drops ours first (another version's, another owner field's, the old name's after a
// rename), so run it in a transaction. Returns false (creating nothing) if the
// collection lacks one of the fields.
function ensureTriggers(app, coll, of) {
  for (const f of TM_FIELDS) {
    if (!coll.fields.getByName(f)) {
      console.log(`tidemark: ${coll.name} lacks the field ${f}; it is not synced`);
      return false;
    }
  }
  const name = coll.name;
  const n = names(name);
  const onInsert = n.insert;
  const onUpdate = n.update;
  const onDelete = n.delete;
  const run = (sql) => app.db().newQuery(sql).execute();
  dropTriggers(app, name);
  const lit = "'" + name.replace(/'/g, "''") + "'";
  const hasOwner = of && coll.fields.getByName(of);
  const newOwner = hasOwner ? "COALESCE(NEW.[[" + of + "]], '')" : "''";
  const oldOwner = hasOwner ? "COALESCE(OLD.[[" + of + "]], '')" : "''";
  const isPush = "substr(NEW.[[tm_push]], 1, 2) = '0:'";
  // Creates (tm_push set: "p" for a plain create, "0:<change id>" for a push of a
  // new record; or tm_seq 0: a create no hook of ours saw, e.g. one racing an
  // enable, see registry.js; the slow way sets both to others): 2 = another owner's tombstone holds the id (refused, whoever
  // creates); 1 = a tombstone the new owner may build on (a plain create does; a
  // push goes the slow way, which checks its base); none: the next seq. The
  // tombstone lookup is one (coll, rid) index search.
  run(
    "CREATE TRIGGER [[" + onInsert + "]] AFTER INSERT ON {{" + name + "}} " +
      "WHEN NEW.[[tm_push]] <> '' OR NEW.[[tm_seq]] = 0 BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "UPDATE {{" + name + "}} SET [[tm_seq]] = CASE (SELECT MAX(CASE WHEN owner <> '' AND owner <> " + newOwner +
      " THEN 2 ELSE 1 END) FROM tm_tombstones WHERE coll = " + lit + " AND rid = NEW.[[id]] AND moved = FALSE) " +
      "WHEN 2 THEN RAISE(ABORT, '" + FOREIGN + "') " +
      "WHEN 1 THEN (CASE WHEN " + isPush + " THEN RAISE(ABORT, '" + TOMBSTONED + "') " +
      "ELSE (SELECT seq FROM _tm_state WHERE id = 1) END) " +
      "ELSE (CASE WHEN " + isPush + " AND " + memory.COMPACTED_COVERS_NEW + " THEN RAISE(ABORT, '" + TOMBSTONED + "') " +
      "ELSE (SELECT seq FROM _tm_state WHERE id = 1) END) END, " +
      "[[tm_cid]] = CASE WHEN " + isPush + " THEN substr(NEW.[[tm_push]], 3) ELSE '' END, " +
      "[[tm_push]] = '', [[tm_clients]] = NULL WHERE rowid = NEW.rowid; END"
  );
  // Updates (see writes.js onUpdate). OF id: PocketBase's UPDATE of a record sets
  // every column, id included, while the insert trigger's own UPDATE above does not,
  // so it neither fires this one nor compiles it into every insert. Refuses the write
  // unless the stored tm_seq still is the base handed over in tm_push — atomic with
  // the write. An update no hook of ours saw (tm_push "", tm_seq unchanged: one
  // racing an enable) is a plain one on the stored version. The slow way sets
  // tm_seq itself (always above the stored one) and tm_push "": left alone.
  run(
    "CREATE TRIGGER [[" + onUpdate + "]] AFTER UPDATE OF [[id]] ON {{" + name + "}} " +
      "WHEN NEW.[[tm_push]] <> '' OR NEW.[[tm_seq]] = OLD.[[tm_seq]] BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "UPDATE {{" + name + "}} SET [[tm_seq]] = CASE WHEN NEW.[[tm_push]] = '' OR " +
      "CAST(substr(NEW.[[tm_push]], 1, instr(NEW.[[tm_push]], ':') - 1) AS INTEGER) = OLD.[[tm_seq]] " +
      "THEN (SELECT seq FROM _tm_state WHERE id = 1) ELSE RAISE(ABORT, '" + STALE + "') END, " +
      "[[tm_cid]] = substr(NEW.[[tm_push]], instr(NEW.[[tm_push]], ':') + 1), " +
      "[[tm_push]] = '' WHERE rowid = NEW.rowid; END"
  );
  // Deletes: every delete (tidemark's, plain ones, cascades) leaves a tombstone with
  // the next seq. A tidemark delete hands its change id over in the stored tm_push
  // (see writes.js onDeleteRequest). The deleted record's memory goes along as
  // stored, its latest writer under PREV and the delete under DEL (no JSON is taken
  // apart in SQL). An owner-less tombstone is listed to every signed-in user: it
  // shows no change id (DEL keeps it, hidden).
  const cid = "substr(OLD.[[tm_push]], instr(OLD.[[tm_push]], ':') + 1)";
  const seq = "(SELECT seq FROM _tm_state WHERE id = 1)";
  run(
    "CREATE TRIGGER [[" + onDelete + "]] AFTER DELETE ON {{" + name + "}} BEGIN " +
      "UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; " +
      "INSERT INTO tm_tombstones (id, coll, rid, owner, tm_seq, tm_cid, moved, at, tm_clients) VALUES " +
      "(substr(lower(hex(randomblob(8))), 1, 15), " + lit + ", OLD.[[id]], " + oldOwner + ", " + seq + ", " +
      "CASE WHEN " + oldOwner + " = '' THEN '' ELSE " + cid + " END, FALSE, " +
      "CAST(strftime('%s','now') AS INTEGER), " +
      "json_set(" + memory.memoryObject("OLD.[[tm_clients]]") + ", " +
      memory.PREV_PATH + ", json_array(OLD.[[tm_cid]], OLD.[[tm_seq]]), " +
      memory.DEL_PATH + ", json_array(" + cid + ", " + seq + "))) " +
      memory.TOMBSTONE_UPSERT + "; END"
  );
  return true;
}

module.exports = { ensureTriggers, dropTriggers, names, TM_FIELDS, PREFIX, TOMBSTONED, FOREIGN, STALE, PLAIN };
