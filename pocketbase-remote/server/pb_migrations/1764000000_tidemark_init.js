/// <reference path="../pb_data/types.d.ts" />
// tidemark sync infrastructure: the global seq counter (_tm_state), the tombstones
// collection and the batch API settings: enabled, with at least 1000 requests and
// 30 s per batch (limits already higher stay). What it changed is kept in
// _tm_settings_prev, and the down migration restores exactly that.
migrate(
  (app) => {
    app
      .db()
      .newQuery(
        "CREATE TABLE IF NOT EXISTS _tm_state (id INTEGER PRIMARY KEY CHECK (id = 1), " +
          "seq INTEGER NOT NULL DEFAULT 0, horizon INTEGER NOT NULL DEFAULT 0)"
      )
      .execute();
    app.db().newQuery("INSERT OR IGNORE INTO _tm_state (id, seq, horizon) VALUES (1, 0, 0)").execute();

    // Tombstones hold ids and the owner only, never record data. Visible to the
    // owner (or to every signed-in user for owner-less collections) and superusers.
    const visible = "@request.auth.id != '' && (owner = '' || owner = @request.auth.id)";
    const tombstones = new Collection({
      type: "base",
      name: "tm_tombstones",
      listRule: visible,
      viewRule: visible,
      createRule: null,
      updateRule: null,
      deleteRule: null,
      fields: [
        { name: "coll", type: "text", required: true },
        { name: "rid", type: "text", required: true },
        { name: "owner", type: "text" },
        { name: "tm_seq", type: "number", onlyInt: true },
        { name: "tm_cid", type: "text" },
        // true: the record still exists but left `owner`'s view (owner change).
        { name: "moved", type: "bool" },
        // unix seconds, for retention
        { name: "at", type: "number", onlyInt: true },
        // idempotency memory carried over from the deleted record
        { name: "tm_clients", type: "json", hidden: true },
      ],
      indexes: [
        "CREATE UNIQUE INDEX idx_tm_tombstones_key ON tm_tombstones (coll, rid, owner)",
        "CREATE INDEX idx_tm_tombstones_seq ON tm_tombstones (tm_seq)",
      ],
    });
    app.save(tombstones);

    const settings = app.settings();
    const b = settings.batch;
    const prev = {};
    if (!b.enabled) prev.enabled = b.enabled;
    if (b.maxRequests < 1000) prev.maxRequests = b.maxRequests;
    if (b.timeout < 30) prev.timeout = b.timeout;
    app.db().newQuery("CREATE TABLE IF NOT EXISTS _tm_settings_prev (id INTEGER PRIMARY KEY CHECK (id = 1), batch TEXT NOT NULL)").execute();
    app.db().newQuery("INSERT OR REPLACE INTO _tm_settings_prev (id, batch) VALUES (1, {:b})").bind({ b: JSON.stringify(prev) }).execute();
    if (Object.keys(prev).length > 0) {
      b.enabled = true;
      b.maxRequests = Math.max(b.maxRequests, 1000);
      b.timeout = Math.max(b.timeout, 30);
      app.save(settings);
    }
  },
  (app) => {
    // The batch settings this migration changed, as they were (a database migrated by
    // a version that kept no record keeps its settings).
    let prev = null;
    try {
      const m = new DynamicModel({ batch: "" });
      app.db().newQuery("SELECT batch FROM _tm_settings_prev WHERE id = 1").one(m);
      prev = JSON.parse(m.batch);
    } catch (_) {
      prev = null;
    }
    if (prev && Object.keys(prev).length > 0) {
      const settings = app.settings();
      for (const k of Object.keys(prev)) settings.batch[k] = prev[k];
      app.save(settings);
    }
    app.db().newQuery("DROP TABLE IF EXISTS _tm_settings_prev").execute();
    app.delete(app.findCollectionByNameOrId("tm_tombstones"));
    app.db().newQuery("DROP TABLE IF EXISTS _tm_state").execute();
  }
);
