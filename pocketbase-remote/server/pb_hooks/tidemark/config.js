// tidemark server extension: settings (environment variables of `pocketbase serve`)
// and the limits every client-supplied value is held to. Loaded with
// require(`${__hooks}/tidemark/config.js`); modules are cached per JS runtime.

// Synced collections: TIDEMARK_COLLECTIONS="name[:ownerField],..." or this default.
// The owner field decides who sees a record's tombstone (empty: every signed-in user)
// and whose tombstone a create may build on.
const DEFAULT_COLLECTIONS = "songs:owner,friends:owner";

function config() {
  const raw = $os.getenv("TIDEMARK_COLLECTIONS") || DEFAULT_COLLECTIONS;
  const out = [];
  for (const part of raw.split(",")) {
    const p = part.trim();
    if (!p) continue;
    const i = p.indexOf(":");
    out.push(i < 0 ? { name: p, owner: "owner" } : { name: p.slice(0, i), owner: p.slice(i + 1) });
  }
  return out;
}

// Parsed once per JS runtime.
const CONFIG = config();

function collectionNames() {
  return CONFIG.map((c) => c.name);
}

function isSynced(name) {
  for (const c of CONFIG) {
    if (c.name === name) return true;
  }
  return false;
}

function ownerField(name) {
  for (const c of CONFIG) {
    if (c.name === name) return c.owner;
  }
  return "";
}

// Tombstone retention in seconds: TIDEMARK_TOMBSTONE_RETENTION, default 30 days.
function retentionSeconds() {
  const v = parseInt($os.getenv("TIDEMARK_TOMBSTONE_RETENTION") || "", 10);
  return v >= 0 ? v : 30 * 24 * 3600;
}

// Bounds of what clients send to our routes.
const LIMITS = {
  // [id, change id] pairs in one receipt request (the client asks for at most one
  // batch's worth; the migration sets batch.maxRequests to 1000).
  receiptPairs: 1000,
  // olderThanSeconds of the compact route: 0 .. 100 years.
  olderThanSeconds: 100 * 365 * 24 * 3600,
};

module.exports = { CONFIG, config, collectionNames, isSynced, ownerField, retentionSeconds, LIMITS };
