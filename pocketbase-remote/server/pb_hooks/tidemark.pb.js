/// <reference path="../pb_data/types.d.ts" />
// tidemark server extension: hook and route registration only. The code lives in
// modules under tidemark/, one home per rule:
//   config.js     protocol version, tested PocketBase versions, the registry as the
//                 hooks read it, TIDEMARK_* settings, input limits
//   registry.js   which collections are synced (_tm_collections): enable, disable,
//                 runtime hook binding, startup
//   selfcheck.js  the startup self-check of the PocketBase behaviours we rest on
//   ids.js        formats of ids, change ids and push tags (strict validation)
//   memory.js     idempotency memory; client ids bound to their user (_tm_writers)
//   store.js      seq counter, sync state of records and tombstones, transactions
//   triggers.js   the SQLite triggers behind the common writes
//   writes.js     create/update/delete hooks, the batch check
//   routes.js     head, receipt, compact, enable/disable routes; the list hook
//   schema.js     the schema route: synced collections' fields for clients
// Handlers cannot see this file's top-level variables, and a require() on every
// write cost ~10% of batch throughput, so the per-write handlers keep the module on
// their runtime's global object.

// The record hooks of synced collections are bound at runtime, per collection
// (registry.js), with PocketBase's own binding functions, which exist only here
// (the loader): kept in the app store. So is the PocketBase version (the root
// command's), for the head route and the self-check.
$app.store().set("tidemark.bind.create", onRecordCreateExecute);
$app.store().set("tidemark.bind.update", onRecordUpdateExecute);
$app.store().set("tidemark.bind.deleteRequest", onRecordDeleteRequest);
$app.store().set("tidemark.bind.list", onRecordsListRequest);
$app.store().set("tidemark.pocketbaseVersion", ($app.rootCmd && $app.rootCmd.version) || "");

// At start: the self-check (a failure stops PocketBase), the triggers of every
// synced collection, the registry published, the record hooks bound.
onBootstrap((e) => {
  e.next();
  require(`${__hooks}/tidemark/registry.js`).bootstrap(e.app);
});

// A synced collection keeps its fields; its triggers follow renames and changes.
onCollectionUpdateExecute((e) => {
  return require(`${__hooks}/tidemark/registry.js`).onCollectionUpdate(e);
});

onCollectionDeleteExecute((e) => {
  return require(`${__hooks}/tidemark/registry.js`).onCollectionDelete(e);
});

// Every push tag of a batch checked once, and its client id bound to the caller.
onBatchRequest((e) => {
  return (globalThis.__tidemark || (globalThis.__tidemark = require(`${__hooks}/tidemark/writes.js`))).onBatch(e);
});

// Empty range pages are answered without PocketBase's randomized throttle (synced
// collections: bound by registry.js).
onRecordsListRequest((e) => {
  return require(`${__hooks}/tidemark/routes.js`).onList(e);
}, "tm_tombstones");

// Protocol version, PocketBase version, head of the change sequence, retention
// horizon, synced collections, batch limit. requireAuth: an invalid token is
// answered 401 here, not silently treated as guest.
routerAdd(
  "GET",
  "/api/tidemark/head",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).head(e));
  },
  $apis.requireAuth()
);

// The schema of the synced collections the caller may list (schema.js).
routerAdd(
  "GET",
  "/api/tidemark/schema",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/schema.js`).schema(e));
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

// Makes a collection synced: {"owner": "<field>"} or {"owner": ""}. Superusers only.
routerAdd(
  "POST",
  "/api/tidemark/collections/{name}/enable",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).enableRoute(e));
  },
  $apis.requireSuperuserAuth()
);

// Stops syncing a collection (its fields and data stay). Superusers only.
routerAdd(
  "POST",
  "/api/tidemark/collections/{name}/disable",
  (e) => {
    return e.json(200, require(`${__hooks}/tidemark/routes.js`).disableRoute(e));
  },
  $apis.requireSuperuserAuth()
);

// Retention job: TIDEMARK_COMPACT_CRON (default: hourly at minute 17).
cronAdd("tidemark_compact", $os.getenv("TIDEMARK_COMPACT_CRON") || "17 * * * *", () => {
  const cfg = require(`${__hooks}/tidemark/config.js`);
  const r = require(`${__hooks}/tidemark/routes.js`).compact($app, cfg.retentionSeconds());
  if (r.removed > 0) console.log(`tidemark: compacted ${r.removed} tombstones, horizon ${r.horizon}`);
});
