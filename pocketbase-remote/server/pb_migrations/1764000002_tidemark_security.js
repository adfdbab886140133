/// <reference path="../pb_data/types.d.ts" />
// tidemark: which user each client id belongs to, and owner-less tombstones that show
// no change id.
//
// _tm_writers: a client id (the client part of a change id) is bound to the first
// user that pushes with it; the hooks refuse it for everyone else (superusers
// excepted), so no user can claim another's changes or meet their idempotency memory.
// A table of our own (raw SQL), like _tm_state: not a collection, invisible to the
// API. Seeded from the data already there: the client ids that wrote a user's records
// (and tombstones) in the synced collections with an owner relation are that user's,
// so that nobody can claim them before their owner pushes again.
//
// Owner-less tombstones are listed to every signed-in user: their change id moves
// into the hidden memory (under "~del", where the delete trigger keeps it now).
migrate(
  (app) => {
    const run = (sql, params) => app.db().newQuery(sql).bind(params || {}).execute();
    run(
      "CREATE TABLE IF NOT EXISTS _tm_writers (client TEXT PRIMARY KEY NOT NULL, " +
        "principal TEXT NOT NULL, at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    );
    const raw = $os.getenv("TIDEMARK_COLLECTIONS") || "songs:owner,friends:owner";
    for (const part of raw.split(",")) {
      const p = part.trim();
      if (!p) continue;
      const i = p.indexOf(":");
      const name = i < 0 ? p : p.slice(0, i);
      const owner = i < 0 ? "owner" : p.slice(i + 1);
      if (!owner) continue;
      let coll;
      try {
        coll = app.findCollectionByNameOrId(name);
      } catch (_) {
        continue;
      }
      const f = coll.fields.getByName(owner);
      if (!f || f.type() !== "relation" || !coll.fields.getByName("tm_cid")) continue;
      const client = "substr(tm_cid, 1, instr(tm_cid, '.') - 1)";
      const now = "CAST(strftime('%s','now') AS INTEGER)";
      run(
        "INSERT INTO _tm_writers (client, principal, at) SELECT " + client + ", {:p} || [[" + owner + "]], " + now +
          " FROM {{" + name + "}} WHERE instr(tm_cid, '.') > 1 AND [[" + owner + "]] <> '' " +
          "ORDER BY [[tm_seq]] ON CONFLICT (client) DO NOTHING",
        { p: f.collectionId + ":" }
      );
      run(
        "INSERT INTO _tm_writers (client, principal, at) SELECT " + client + ", {:p} || owner, " + now +
          " FROM tm_tombstones WHERE coll = {:c} AND instr(tm_cid, '.') > 1 AND owner <> '' " +
          "ORDER BY tm_seq ON CONFLICT (client) DO NOTHING",
        { p: f.collectionId + ":", c: name }
      );
    }
    run(
      "UPDATE tm_tombstones SET tm_clients = json_set(CASE WHEN json_valid(tm_clients) AND " +
        "json_type(tm_clients) = 'object' THEN tm_clients ELSE '{}' END, '$.\"~del\"', json_array(tm_cid, tm_seq)), " +
        "tm_cid = '' WHERE owner = '' AND tm_cid <> ''"
    );
  },
  (app) => {
    app.db().newQuery("DROP TABLE IF EXISTS _tm_writers").execute();
  }
);
