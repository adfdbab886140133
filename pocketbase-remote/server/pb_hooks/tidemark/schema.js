// tidemark server extension: the schema of the synced collections, for clients
// (GET /api/tidemark/schema). PocketBase shows collection schemas to superusers
// only; this route publishes, to any signed-in caller, the fields of the synced
// collections that caller may list (a null list rule means superusers only), in the
// shape of PocketBase's own collections export (pb_schema.json) cut down to what a
// client needs to store and type records: name, type, required, and per type
// maxSelect, values, onlyInt, the relation's target (collectionId and its name).
// Never a password field, a hidden field (PocketBase sends it to superusers only),
// the record id, or tidemark's own fields (tm_*); never a collection of tidemark's
// own (synced collections are base collections of the app: see registry.js).

const config = require(`${__hooks}/tidemark/config.js`);

// Field options a client needs, by name: copied when present.
const OPTIONS = ["maxSelect", "values", "onlyInt", "collectionId", "onCreate", "onUpdate"];

// Whether field f (its exported JSON) is described: not the id, not a password, not
// hidden, not one of tidemark's fields.
function published(f) {
  if (!f || typeof f.name !== "string") return false;
  if (f.primaryKey || f.name === "id") return false;
  if (f.type === "password" || f.hidden) return false;
  return !/^tm_/i.test(f.name);
}

function describeField(app, f) {
  const out = { name: f.name, type: f.type, required: !!f.required };
  for (const k of OPTIONS) if (f[k] !== undefined && f[k] !== null) out[k] = f[k];
  if (f.type === "relation" && f.collectionId) {
    try {
      out.collectionName = app.findCollectionByNameOrId(f.collectionId).name;
    } catch (_) {
      out.collectionName = "";
    }
  }
  return out;
}

// {collections: [{name, type, fields: [...]}]} sorted by name, for the caller of e.
function schema(e) {
  const app = e.app;
  const su = e.hasSuperuserAuth();
  const out = [];
  for (const entry of config.registry(app).list) {
    let coll;
    try {
      coll = app.findCollectionByNameOrId(entry.id);
    } catch (_) {
      continue;
    }
    if (!su && (coll.listRule === null || coll.listRule === undefined)) continue;
    if (/^_?tm_/i.test(coll.name)) continue;
    const exported = JSON.parse(JSON.stringify(coll));
    const fields = (exported.fields || []).filter(published).map((f) => describeField(app, f));
    out.push({ name: coll.name, type: coll.type, fields: fields });
  }
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { collections: out };
}

module.exports = { schema };
