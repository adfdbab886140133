/// <reference path="../pb_data/types.d.ts" />
// tidemark server extension: seq assignment, conflict checks, tombstones, head route,
// retention. Shared code lives in tidemark.js. Handlers cannot see this file's
// top-level variables, and a require() on every write cost ~10% of batch throughput,
// so the per-write handlers keep the module on their runtime's global object.

const TM_SYNCED = require(`${__hooks}/tidemark.js`).collectionNames();

// The triggers behind the common writes (see ensureTriggers in tidemark.js): at
// start, and with a synced collection created or renamed (in its transaction, if any).
onBootstrap((e) => {
  e.next();
  require(`${__hooks}/tidemark.js`).ensureAllTriggers(e.app);
});

onCollectionCreateExecute((e) => {
  e.next();
  require(`${__hooks}/tidemark.js`).ensureTriggers(e.app, e.collection);
}, ...TM_SYNCED);

onCollectionUpdateExecute((e) => {
  e.next();
  require(`${__hooks}/tidemark.js`).ensureTriggers(e.app, e.collection);
}, ...TM_SYNCED);

onRecordCreateExecute((e) => {
  (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark.js`))).onCreate(e);
}, ...TM_SYNCED);

onRecordUpdateExecute((e) => {
  (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark.js`))).onUpdate(e);
}, ...TM_SYNCED);

onRecordDeleteRequest((e) => {
  return (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark.js`))).onDeleteRequest(e);
}, ...TM_SYNCED);

// Empty range pages are answered without PocketBase's randomized throttle (see onList).
onRecordsListRequest(
  (e) => {
    return require(`${__hooks}/tidemark.js`).onList(e);
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
    return e.json(200, require(`${__hooks}/tidemark.js`).head(e));
  },
  $apis.requireAuth()
);

// The seqs of pushes answered without one (upserts written by the triggers, deletes;
// see tidemark.js).
routerAdd(
  "POST",
  "/api/tidemark/receipt",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark.js`).receipt(e.app, JSON.parse(JSON.stringify(e.requestInfo().body || {}))));
  },
  $apis.requireAuth()
);

// Compacts tombstones now. Body (optional): {"olderThanSeconds": N}. Superusers only.
routerAdd(
  "POST",
  "/api/tidemark/compact",
  (e) => {
    const tm = require(`${__hooks}/tidemark.js`);
    const body = e.requestInfo().body || {};
    const olderThan = typeof body.olderThanSeconds === "number" ? body.olderThanSeconds : tm.retentionSeconds();
    return e.json(200, tm.compact(e.app, olderThan));
  },
  $apis.requireSuperuserAuth()
);

// Retention job: TIDEMARK_COMPACT_CRON (default: hourly at minute 17).
cronAdd("tidemark_compact", $os.getenv("TIDEMARK_COMPACT_CRON") || "17 * * * *", () => {
  const tm = require(`${__hooks}/tidemark.js`);
  const r = tm.compact($app, tm.retentionSeconds());
  if (r.removed > 0) console.log(`tidemark: compacted ${r.removed} tombstones, horizon ${r.horizon}`);
});
