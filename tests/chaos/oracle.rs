//! What the server holds, read as superuser through PocketBase's plain REST API
//! (not through the remote under test): live records, tombstones, and every seq a
//! synced write took with its change id (`chaos_applied`, filled by the SQLite
//! triggers of [`APPLIED_LOG_MIGRATION`] inside each write's own statement).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Migration (added to the test server) that logs `(change id, seq, collection,
/// record)` of every write to `songs`, `friends` and the tombstones into the
/// superuser-only collection `chaos_applied`. The triggers run in the write's own
/// statement, so a logged row is exactly a committed write.
pub const APPLIED_LOG_MIGRATION: &str = r#"/// <reference path="../pb_data/types.d.ts" />
migrate(
  (app) => {
    const c = new Collection({
      type: "base",
      name: "chaos_applied",
      listRule: null,
      viewRule: null,
      createRule: null,
      updateRule: null,
      deleteRule: null,
      fields: [
        { name: "cid", type: "text" },
        { name: "seq", type: "number", onlyInt: true },
        { name: "coll", type: "text" },
        { name: "rid", type: "text" },
      ],
    });
    app.save(c);
    const run = (sql) => app.db().newQuery(sql).execute();
    const log = (cid, seq, coll, rid) =>
      `INSERT INTO chaos_applied (id, cid, seq, coll, rid) VALUES ` +
      `(substr(lower(hex(randomblob(8))), 1, 15), ${cid}, ${seq}, ${coll}, ${rid});`;
    for (const t of ["songs", "friends"]) {
      run(`CREATE TRIGGER chaos_ins_${t} AFTER INSERT ON ${t} WHEN NEW.tm_seq <> 0 BEGIN ` +
        log("NEW.tm_cid", "NEW.tm_seq", `'${t}'`, "NEW.id") + " END");
      run(`CREATE TRIGGER chaos_upd_${t} AFTER UPDATE OF tm_seq ON ${t} WHEN NEW.tm_seq <> OLD.tm_seq BEGIN ` +
        log("NEW.tm_cid", "NEW.tm_seq", `'${t}'`, "NEW.id") + " END");
    }
    run("CREATE TRIGGER chaos_ins_tomb AFTER INSERT ON tm_tombstones BEGIN " +
      log("NEW.tm_cid", "NEW.tm_seq", "NEW.coll", "NEW.rid") + " END");
    run("CREATE TRIGGER chaos_upd_tomb AFTER UPDATE ON tm_tombstones WHEN NEW.tm_seq <> OLD.tm_seq BEGIN " +
      log("NEW.tm_cid", "NEW.tm_seq", "NEW.coll", "NEW.rid") + " END");
  },
  (app) => {}
);
"#;

/// One row of `chaos_applied`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    /// The change id (`<writer>.<n>`, or empty for a write without one).
    pub cid: String,
    /// The seq it took.
    pub seq: u64,
    /// Collection.
    pub coll: String,
    /// Record id.
    pub rid: String,
}

/// Reads the server at `url` with a superuser `token`.
pub struct Oracle {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Oracle {
    /// An oracle for the server at `url`.
    pub fn new(url: &str, token: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_owned(),
            token,
        }
    }

    /// Every item of `collection`, page by page.
    pub async fn all(&self, collection: &str) -> Vec<Map<String, Value>> {
        let mut out = Vec::new();
        for page in 1..10_000 {
            let r = self
                .http
                .get(format!("{}/api/collections/{collection}/records", self.url))
                .query(&[
                    ("page", page.to_string()),
                    ("perPage", "500".to_string()),
                    ("sort", "id".to_string()),
                    ("skipTotal", "1".to_string()),
                ])
                .header("Authorization", &self.token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("oracle list {collection}: {e}"));
            let status = r.status();
            let v: Value = r
                .json()
                .await
                .unwrap_or_else(|e| panic!("oracle list {collection}: {e}"));
            assert!(
                status.is_success(),
                "oracle list {collection}: {status} {v}"
            );
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let n = items.len();
            out.extend(items.into_iter().filter_map(|i| i.as_object().cloned()));
            if n < 500 {
                break;
            }
        }
        out
    }

    /// Live records of `collection`: id → the fields named in `fields`.
    pub async fn live(
        &self,
        collection: &str,
        fields: &[&str],
    ) -> BTreeMap<String, Map<String, Value>> {
        self.all(collection)
            .await
            .into_iter()
            .map(|item| {
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                let f = fields
                    .iter()
                    .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect();
                (id, f)
            })
            .collect()
    }

    /// `(collection, record id)` of every tombstone the server still holds.
    pub async fn tombstones(&self) -> BTreeSet<(String, String)> {
        self.all("tm_tombstones")
            .await
            .into_iter()
            .map(|t| {
                (
                    t["coll"].as_str().unwrap_or_default().to_owned(),
                    t["rid"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Every logged write.
    pub async fn applied(&self) -> Vec<Applied> {
        self.all("chaos_applied")
            .await
            .into_iter()
            .map(|a| Applied {
                cid: a["cid"].as_str().unwrap_or_default().to_owned(),
                seq: a["seq"].as_u64().unwrap_or(0),
                coll: a["coll"].as_str().unwrap_or_default().to_owned(),
                rid: a["rid"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }
}
