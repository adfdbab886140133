/// <reference path="../pb_data/types.d.ts" />
// tidemark: the registry of synced collections, _tm_collections (collection id, name,
// owner field). Which collections are synced is the operator's choice, made with
// POST /api/tidemark/collections/{name}/enable (or a migration calling
// registry.enable, see examples/fixture) and kept here; the hooks read it, not an
// environment variable.
//
// Upgrade from the versions configured by TIDEMARK_COLLECTIONS (deprecated: read
// only here, once): a collection is registered if an earlier version of the
// extension gave it triggers (the owner field read from its delete trigger), or if
// TIDEMARK_COLLECTIONS names it ("name[:ownerField]", a name alone meaning owner
// field "owner"), provided it exists and has the tidemark fields. The old triggers
// are replaced with the new ones right away (and at every start).
migrate(
  (app) => {
    const run = (sql, params) => app.db().newQuery(sql).bind(params || {}).execute();
    run(
      "CREATE TABLE IF NOT EXISTS _tm_collections (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, " +
        "owner TEXT NOT NULL DEFAULT '', at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    );
    const wanted = {};
    const old = arrayOf(new DynamicModel({ tbl: "", sql: "" }));
    app
      .db()
      .newQuery(
        "SELECT tbl_name AS tbl, sql FROM sqlite_master WHERE type = 'trigger' AND name GLOB 'tm_delete_v[0-9]*' " +
          "AND instr(sql, '_tm_state') > 0"
      )
      .all(old);
    for (const t of old) {
      const m = /COALESCE\(OLD\.[`"\[]?([A-Za-z0-9_]+)[`"\]]?, ''\)/.exec(t.sql);
      wanted[t.tbl] = m ? m[1] : "";
    }
    const env = $os.getenv("TIDEMARK_COLLECTIONS");
    if (env) {
      console.log("tidemark: TIDEMARK_COLLECTIONS is deprecated: read once to seed the registry, ignored from now on");
      for (const part of env.split(",")) {
        const p = part.trim();
        if (!p) continue;
        const i = p.indexOf(":");
        wanted[i < 0 ? p : p.slice(0, i)] = i < 0 ? "owner" : p.slice(i + 1);
      }
    }
    for (const name of Object.keys(wanted)) {
      let coll;
      try {
        coll = app.findCollectionByNameOrId(name);
      } catch (_) {
        continue;
      }
      if (coll.type !== "base") continue;
      let ok = true;
      for (const f of ["tm_seq", "tm_cid", "tm_push", "tm_clients"]) if (!coll.fields.getByName(f)) ok = false;
      if (!ok) continue;
      const owner = wanted[name] && coll.fields.getByName(wanted[name]) ? wanted[name] : "";
      run(
        "INSERT INTO _tm_collections (id, name, owner, at) VALUES ({:id}, {:n}, {:o}, CAST(strftime('%s','now') AS INTEGER)) " +
          "ON CONFLICT (id) DO NOTHING",
        { id: coll.id, n: coll.name, o: owner }
      );
    }
    // With the tidemark hooks loaded (the usual case), the registered collections get
    // the new triggers and hooks now, not at the next start.
    let registry = null;
    try {
      registry = require(`${__hooks}/tidemark/registry.js`);
    } catch (_) {
      registry = null;
    }
    if (registry) registry.activate(app);
  },
  (app) => {
    app.db().newQuery("DROP TABLE IF EXISTS _tm_collections").execute();
  }
);
