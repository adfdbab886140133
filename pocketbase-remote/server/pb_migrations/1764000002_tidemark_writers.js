/// <reference path="../pb_data/types.d.ts" />
// tidemark: which user each client id belongs to. A client id (the client part of a
// change id) is bound to the first user that pushes with it; the hooks refuse it for
// everyone else (superusers excepted), so no user can claim another's changes or
// read their idempotency memory. A table of our own (raw SQL), like _tm_state:
// not a collection, invisible to the API.
migrate(
  (app) => {
    app
      .db()
      .newQuery(
        "CREATE TABLE IF NOT EXISTS _tm_writers (client TEXT PRIMARY KEY NOT NULL, " +
          "principal TEXT NOT NULL, at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
      )
      .execute();
  },
  (app) => {
    app.db().newQuery("DROP TABLE IF EXISTS _tm_writers").execute();
  }
);
