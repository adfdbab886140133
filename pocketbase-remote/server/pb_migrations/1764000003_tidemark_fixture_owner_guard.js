/// <reference path="../pb_data/types.d.ts" />
// Sample schema: the update rule of `songs` and `friends` guards the new owner too.
// `owner = @request.auth.id` alone checks the stored owner only: a user could PATCH
// their record to `owner: <someone else>` and plant it in that user's account.
migrate(
  (app) => {
    const rule =
      "@request.auth.id != '' && owner = @request.auth.id && " +
      "(@request.body.owner:isset = false || @request.body.owner = @request.auth.id)";
    for (const n of ["songs", "friends"]) {
      let c;
      try {
        c = app.findCollectionByNameOrId(n);
      } catch (_) {
        continue;
      }
      c.updateRule = rule;
      app.save(c);
    }
  },
  (app) => {
    const rule = "@request.auth.id != '' && owner = @request.auth.id";
    for (const n of ["songs", "friends"]) {
      let c;
      try {
        c = app.findCollectionByNameOrId(n);
      } catch (_) {
        continue;
      }
      c.updateRule = rule;
      app.save(c);
    }
  }
);
