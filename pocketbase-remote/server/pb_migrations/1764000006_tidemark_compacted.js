/// <reference path="../pb_data/types.d.ts" />
// tidemark: what compaction forgets, per writer. Compacting a tombstone drops the
// idempotency memory it kept (which change of which writer was applied to the
// record). _tm_compacted keeps, per writer (client id), the highest counter whose
// memory a compaction dropped: a create of that writer at or below it may have been
// applied before and deleted since, so it is answered as a conflict with a
// tombstone at the horizon instead of being applied again (see writes.js and the
// insert trigger in triggers.js). One row per writer whose changes were compacted.
// A table of our own (raw SQL), like _tm_writers: not a collection, invisible to the
// API. (Compactions before this table existed are not reflected in it.)
migrate(
  (app) => {
    app
      .db()
      .newQuery(
        "CREATE TABLE IF NOT EXISTS _tm_compacted (client TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID"
      )
      .execute();
  },
  (app) => {
    app.db().newQuery("DROP TABLE IF EXISTS _tm_compacted").execute();
  }
);
