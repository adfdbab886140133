// tidemark server extension: the protocol version, the PocketBase versions it was
// tested with, the registry of synced collections as the hooks see it, settings
// (environment variables of `pocketbase serve`) and the limits every
// client-supplied value is held to. Loaded with
// require(`${__hooks}/tidemark/config.js`); modules are cached per JS runtime.

// The protocol this extension speaks, reported by the head route. The client
// (pocketbase-remote's PROTOCOL_VERSION) refuses to connect to any other. Raise it
// with every change a client of the previous version would misread. 1 was the
// extension before the handshake (its head route sent no version).
const PROTOCOL = 2;

// PocketBase versions this extension was tested with: the startup self-check refuses
// any other (see selfcheck.js).
const TESTED_POCKETBASE = /^0\.40\.[0-9]+$/;

// The PocketBase version, read from the root command when the hooks are loaded
// (tidemark.pb.js), kept in the app store.
const VERSION_KEY = "tidemark.pocketbaseVersion";

function pocketbaseVersion(app) {
  const v = app.store().get(VERSION_KEY);
  return typeof v === "string" && v ? v : "(unknown)";
}

// ---- the registry -------------------------------------------------------------
//
// Synced collections live in the table _tm_collections (collection id, name, owner
// field; see registry.js). The hooks read it from the app store, where registry.js
// publishes it as one JSON string under REGISTRY_KEY whenever it changes (inside the
// changing transaction). Each JS runtime parses it again only when the string
// changes: one store lookup per write.

const REGISTRY_KEY = "tidemark.registry";
let CACHE = { raw: null, byId: {}, byName: {}, list: [] };

function parseRegistry(raw) {
  const out = { raw: raw, byId: {}, byName: {}, list: [] };
  let list = [];
  try {
    list = JSON.parse(raw) || [];
  } catch (_) {
    list = [];
  }
  for (const c of list) {
    out.byId[c.id] = c;
    out.byName[c.name] = c;
    out.list.push(c);
  }
  return out;
}

function registry(app) {
  const raw = app.store().get(REGISTRY_KEY);
  const s = typeof raw === "string" ? raw : "[]";
  if (s !== CACHE.raw) CACHE = parseRegistry(s);
  return CACHE;
}

// The registry entry {id, name, owner} of a synced collection (by id), or null.
function syncedById(app, id) {
  return registry(app).byId[id] || null;
}

// ... by name, or null.
function syncedByName(app, name) {
  return registry(app).byName[name] || null;
}

function collectionNames(app) {
  return registry(app).list.map((c) => c.name);
}

function isSynced(app, name) {
  return !!syncedByName(app, name);
}

// The owner field of a synced collection ("" for none or not synced).
function ownerField(app, name) {
  const c = syncedByName(app, name);
  return c ? c.owner : "";
}

// Tombstone retention in seconds: TIDEMARK_TOMBSTONE_RETENTION, default 30 days.
function retentionSeconds() {
  const v = parseInt($os.getenv("TIDEMARK_TOMBSTONE_RETENTION") || "", 10);
  return v >= 0 ? v : 30 * 24 * 3600;
}

// The most sub-requests a non-superuser's /api/batch may carry
// (TIDEMARK_USER_BATCH_MAX, default 200). One batch is one transaction on
// PocketBase's single writer: a 1,000-request, 10 MB batch held it 1.2-1.8 s, and
// every other user's write waited. The head route tells users this limit, so the
// client chunks its pushes to it.
function userBatchMax() {
  const v = parseInt($os.getenv("TIDEMARK_USER_BATCH_MAX") || "", 10);
  return v >= 1 ? v : 200;
}

// Bounds of what clients send to our routes.
const LIMITS = {
  // [id, change id] pairs in one receipt request (the client asks for at most one
  // batch's worth; the migration raises batch.maxRequests to 1000).
  receiptPairs: 1000,
  // olderThanSeconds of the compact route: 0 .. 100 years.
  olderThanSeconds: 100 * 365 * 24 * 3600,
};

module.exports = {
  PROTOCOL,
  TESTED_POCKETBASE,
  VERSION_KEY,
  pocketbaseVersion,
  REGISTRY_KEY,
  registry,
  syncedById,
  syncedByName,
  collectionNames,
  isSynced,
  ownerField,
  retentionSeconds,
  userBatchMax,
  LIMITS,
};
