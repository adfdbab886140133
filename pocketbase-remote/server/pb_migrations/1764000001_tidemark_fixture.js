/// <reference path="../pb_data/types.d.ts" />
// Sample schema (the seed's): `songs` and `friends`, owned by users, synced by tidemark.
// A synced collection needs the fields tm_seq (number), tm_cid (text), tm_push (text),
// tm_clients (json, hidden),
// an index on tm_seq, and its name in TIDEMARK_COLLECTIONS (see pb_hooks/tidemark/config.js),
// and rules that keep records with their owner (pocketbase-remote/README.md; the update
// rule is tightened by 1764000003_tidemark_fixture_owner_guard.js).
migrate(
  (app) => {
    const users = app.findCollectionByNameOrId("users");
    const own = "@request.auth.id != '' && owner = @request.auth.id";
    const create = "@request.auth.id != '' && @request.body.owner = @request.auth.id";
    const tmFields = [
      { name: "tm_seq", type: "number", onlyInt: true },
      { name: "tm_cid", type: "text" },
      { name: "tm_push", type: "text" },
      // idempotency memory: {"<client>": [newest applied counter, its seq]}
      { name: "tm_clients", type: "json", hidden: true },
    ];
    const owner = { name: "owner", type: "relation", collectionId: users.id, maxSelect: 1, cascadeDelete: false };

    const defs = [
      {
        name: "songs",
        fields: [
          { name: "title", type: "text" },
          { name: "artist", type: "text" },
          { name: "order", type: "number" },
          owner,
        ],
      },
      { name: "friends", fields: [{ name: "name", type: "text" }, owner] },
    ];
    for (const d of defs) {
      const c = new Collection({
        type: "base",
        name: d.name,
        listRule: own,
        viewRule: own,
        createRule: create,
        updateRule: own,
        deleteRule: own,
        fields: d.fields.concat(tmFields),
        // tm_seq: range scans for pulls; (owner, tm_seq): the same scan limited to
        // one owner's records, which the owner rule turns every user pull into.
        indexes: [
          `CREATE INDEX idx_${d.name}_tm_seq ON ${d.name} (tm_seq)`,
          `CREATE INDEX idx_${d.name}_owner_tm_seq ON ${d.name} (owner, tm_seq)`,
        ],
      });
      app.save(c);
    }
  },
  (app) => {
    for (const n of ["songs", "friends"]) {
      app.delete(app.findCollectionByNameOrId(n));
    }
  }
);
