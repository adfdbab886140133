/// <reference path="../pb_data/types.d.ts" />
// tidemark server extension: hook and route registration only. The code lives in
// modules under tidemark/, one home per rule:
//   config.js    TIDEMARK_* settings, input limits
//   ids.js       formats of ids, change ids and push tags (strict validation)
//   memory.js    idempotency memory; client ids bound to their user (_tm_writers)
//   store.js     seq counter, sync state of records and tombstones, transactions
//   triggers.js  the SQLite triggers behind the common writes
//   writes.js    create/update/delete hooks, the batch check
//   routes.js    head, receipt, compact routes; the list hook
// Handlers cannot see this file's top-level variables, and a require() on every
// write cost ~10% of batch throughput, so the per-write handlers keep the module on
// their runtime's global object.

const TM_SYNCED = require(`${__hooks}/tidemark/config.js`).collectionNames();

// The triggers behind the common writes: at start, and with a synced collection
// created or renamed (in its transaction, if any).
onBootstrap((e) => {
  e.next();
  require(`${__hooks}/tidemark/triggers.js`).ensureAllTriggers(e.app);
});

onCollectionCreateExecute((e) => {
  e.next();
  require(`${__hooks}/tidemark/triggers.js`).ensureTriggers(e.app, e.collection);
}, ...TM_SYNCED);

onCollectionUpdateExecute((e) => {
  e.next();
  require(`${__hooks}/tidemark/triggers.js`).ensureTriggers(e.app, e.collection);
}, ...TM_SYNCED);

onRecordCreateExecute((e) => {
  (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onCreate(e);
}, ...TM_SYNCED);

onRecordUpdateExecute((e) => {
  (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onUpdate(e);
}, ...TM_SYNCED);

onRecordDeleteRequest((e) => {
  return (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onDeleteRequest(e);
}, ...TM_SYNCED);

// Every push tag of a batch checked once, and its client id bound to the caller.
onBatchRequest((e) => {
  return (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onBatch(e);
});

// Empty range pages are answered without PocketBase's randomized throttle.
onRecordsListRequest(
  (e) => {
    return require(`${__hooks}/tidemark/routes.js`).onList(e);
  },
  ...TM_SYNCED,
  "tm_tombstones"
);

// Head of the change sequence, retention horizon, synced collections, batch limit.
// requireAuth: an invalid token is answered 401 here, not silently treated as guest.
routerAdd(
  "GET",
  "/api/tidemark/head",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).head(e));
  },
  $apis.requireAuth()
);

// The seqs of pushes answered without one (upserts written by the triggers,
// deletes, retried changes).
routerAdd(
  "POST",
  "/api/tidemark/receipt",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).receipt(e));
  },
  $apis.requireAuth()
);

// Compacts tombstones now. Body (optional): {"olderThanSeconds": N}. Superusers only.
routerAdd(
  "POST",
  "/api/tidemark/compact",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).compactRoute(e));
  },
  $apis.requireSuperuserAuth()
);

// Retention job: TIDEMARK_COMPACT_CRON (default: hourly at minute 17).
cronAdd("tidemark_compact", $os.getenv("TIDEMARK_COMPACT_CRON") || "17 * * * *", () => {
  const cfg = require(`${__hooks}/tidemark/config.js`);
  const r = require(`${__hooks}/tidemark/routes.js`).compact($app, cfg.retentionSeconds());
  if (r.removed > 0) console.log(`tidemark: compacted ${r.removed} tombstones, horizon ${r.horizon}`);
});
