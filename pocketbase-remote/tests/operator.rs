//! The operator's side of the extension against a real PocketBase 0.40.6: the
//! protocol handshake, the startup self-check, the registry of synced collections
//! (no demo defaults), enabling sync on an app's own collection while it is written
//! to, and what deletes reach in a collection shared through a team.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use pocketbase_remote::harness::{Options, TestServer, USER_PASSWORD};
use pocketbase_remote::{is_protocol_mismatch, PocketBaseRemote, PROTOCOL_VERSION};
use serde_json::{json, Value};
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    new_id, LocalStore, PullMode, PushOutcome, Record, RecordId, RemoteError, RemoteStore,
    SyncEngine, Watermark,
};

/// A raw request as the superuser; returns status and JSON body.
async fn admin(
    srv: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let token = srv.superuser().await.token().await.unwrap();
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", srv.url()))
        .header("Authorization", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn admin_ok(
    srv: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (s, v) = admin(srv, method, path, body).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

/// A test-only route that runs raw SQL (superusers), in a copy of the hooks.
const SQL_HOOK: &str = r#"
routerAdd("POST", "/api/test/sql", (e) => {
  const b = e.requestInfo().body;
  if (b.query) {
    const rows = arrayOf(new DynamicModel({ v: "" }));
    $app.db().newQuery(b.sql).all(rows);
    return e.json(200, rows.map((r) => r.v));
  }
  $app.db().newQuery(b.sql).execute();
  return e.json(200, []);
}, $apis.requireSuperuserAuth());
"#;

async fn sql(srv: &TestServer, q: &str) {
    admin_ok(
        srv,
        reqwest::Method::POST,
        "/api/test/sql",
        Some(json!({"sql": q})),
    )
    .await;
}

async fn sql_query(srv: &TestServer, q: &str) -> Vec<String> {
    let v = admin_ok(
        srv,
        reqwest::Method::POST,
        "/api/test/sql",
        Some(json!({"sql": q, "query": true})),
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn triggers_on(srv: &TestServer, table: &str) -> Vec<String> {
    let mut t = sql_query(
        srv,
        &format!(
            "SELECT name AS v FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{table}'"
        ),
    )
    .await;
    t.sort();
    t
}

// ---- 6. protocol handshake -------------------------------------------------------

#[tokio::test]
async fn the_head_route_reports_the_protocol_and_pocketbase_versions() {
    let srv = TestServer::start();
    let head = srv.superuser().await.head().await.unwrap();
    assert_eq!(head.protocol, PROTOCOL_VERSION);
    assert!(head.pocketbase.starts_with("0.40."), "{head:?}");
}

async fn connect_err(srv: &TestServer) -> RemoteError {
    PocketBaseRemote::builder(srv.url())
        .superuser(
            pocketbase_remote::harness::ADMIN_EMAIL,
            pocketbase_remote::harness::ADMIN_PASSWORD,
        )
        .connect()
        .await
        .expect_err("connect must refuse another protocol version")
}

#[tokio::test]
async fn connect_refuses_an_older_extension_and_says_to_upgrade_the_server() {
    let srv = TestServer::start_with(&Options::default().patch_hooks(
        "tidemark/config.js",
        "const PROTOCOL = 2;",
        "const PROTOCOL = 1;",
    ));
    let e = connect_err(&srv).await;
    assert!(is_protocol_mismatch(&e), "{e:?}");
    assert!(e.to_string().contains("upgrade the server"), "{e}");
}

#[tokio::test]
async fn connect_refuses_an_extension_that_sends_no_version() {
    let srv = TestServer::start_with(&Options::default().patch_hooks(
        "tidemark/routes.js",
        "    protocol: config.PROTOCOL,\n",
        "",
    ));
    let e = connect_err(&srv).await;
    assert!(is_protocol_mismatch(&e), "{e:?}");
    assert!(e.to_string().contains("upgrade the server"), "{e}");
}

#[tokio::test]
async fn connect_refuses_a_newer_extension_and_says_to_upgrade_the_client() {
    let srv = TestServer::start_with(&Options::default().patch_hooks(
        "tidemark/config.js",
        "const PROTOCOL = 2;",
        "const PROTOCOL = 3;",
    ));
    let e = connect_err(&srv).await;
    assert!(is_protocol_mismatch(&e), "{e:?}");
    assert!(e.to_string().contains("upgrade the client"), "{e}");
    assert!(!is_protocol_mismatch(&RemoteError::Permanent(
        "other".into()
    )));
}

// ---- 7. startup self-check -------------------------------------------------------

fn refused(opts: Options, check: &str) {
    let err = match TestServer::try_start_with(&opts) {
        Ok(_) => panic!("PocketBase started although the {check} check must fail"),
        Err(e) => e,
    };
    assert!(err.contains("tidemark: startup self-check failed"), "{err}");
    assert!(err.contains(&format!("{check}:")), "{err}");
}

#[test]
fn startup_refuses_when_a_plain_update_does_not_fire_the_update_trigger() {
    refused(
        Options::default().patch_hooks(
            "tidemark/triggers.js",
            "\"WHEN NEW.[[tm_push]] <> '' OR NEW.[[tm_seq]] = OLD.[[tm_seq]] BEGIN \"",
            "\"WHEN NEW.[[tm_push]] = 'never' BEGIN \"",
        ),
        "update",
    );
}

#[test]
fn startup_refuses_when_a_plain_delete_writes_no_tombstone() {
    refused(
        Options::default().patch_hooks(
            "tidemark/triggers.js",
            "]] AFTER DELETE ON {{\" + name + \"}} BEGIN \"",
            "]] AFTER DELETE ON {{\" + name + \"}} WHEN 0 BEGIN \"",
        ),
        "delete",
    );
}

#[test]
fn startup_refuses_an_untested_pocketbase_version() {
    refused(
        Options::default().patch_hooks(
            "tidemark/config.js",
            "const TESTED_POCKETBASE = /^0\\.40\\.[0-9]+$/;",
            "const TESTED_POCKETBASE = /^0\\.41\\.[0-9]+$/;",
        ),
        "version",
    );
}

#[test]
fn startup_refuses_without_the_hook_binding_functions() {
    refused(
        Options::default().patch_hooks(
            "tidemark.pb.js",
            "$app.store().set(\"tidemark.bind.list\", onRecordsListRequest);",
            "",
        ),
        "binding",
    );
}

#[test]
fn startup_refuses_when_an_insert_gets_no_seq() {
    refused(
        Options::default().patch_hooks(
            "tidemark/triggers.js",
            "\"WHEN NEW.[[tm_push]] <> '' OR NEW.[[tm_seq]] = 0 BEGIN \"",
            "\"WHEN 0 BEGIN \"",
        ),
        "insert",
    );
}

/// The self-check leaves nothing behind: no scratch collection, no seq taken.
#[tokio::test]
async fn the_self_check_leaves_nothing_behind() {
    let mut srv = TestServer::start();
    let (_, v) = admin(
        &srv,
        reqwest::Method::GET,
        "/api/collections?perPage=200",
        None,
    )
    .await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("selfcheck")), "{names:?}");
    let head = srv.superuser().await.head().await.unwrap().head;
    srv.stop();
    srv.resume();
    assert_eq!(srv.superuser().await.head().await.unwrap().head, head);
}

// ---- 8. no demo defaults; the registry ---------------------------------------------

#[test]
fn the_shipped_migrations_hold_no_sample_schema() {
    let dir = pocketbase_remote::harness::server_dir();
    let list = |d: std::path::PathBuf| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list(dir.join("pb_migrations")),
        [
            "1764000000_tidemark_init.js",
            "1764000002_tidemark_security.js",
            "1764000004_tidemark_registry.js",
            "1764000006_tidemark_compacted.js"
        ]
    );
    assert_eq!(
        list(pocketbase_remote::harness::fixture_migrations_dir()),
        [
            "1764000001_tidemark_fixture.js",
            "1764000003_tidemark_fixture_owner_guard.js",
            "1764000005_tidemark_fixture_sync.js"
        ]
    );
}

#[tokio::test]
async fn a_production_server_syncs_nothing_until_the_operator_says_so() {
    // TIDEMARK_COLLECTIONS names collections that do not exist: nothing registered.
    let srv = TestServer::start_with(
        &Options::default()
            .no_fixture()
            .env("TIDEMARK_COLLECTIONS", "songs:owner"),
    );
    let su = srv.superuser().await;
    assert!(su.head().await.unwrap().collections.is_empty());
    let (s, _) = admin(&srv, reqwest::Method::GET, "/api/collections/songs", None).await;
    assert_eq!(s, 404, "no sample collection in production");
    // The batch API is on, with the limits the client needs.
    let settings = admin_ok(&srv, reqwest::Method::GET, "/api/settings", None).await;
    assert_eq!(settings["batch"]["enabled"], json!(true));
    assert!(settings["batch"]["maxRequests"].as_u64().unwrap() >= 1000);
}

/// Which collections are synced is kept in the database: a restart with a different
/// TIDEMARK_COLLECTIONS changes nothing. Triggers of earlier versions are replaced by
/// ours (one seq per write), triggers of the app's own (named tm_* too) are left alone,
/// and changing a collection's owner field regenerates its triggers.
#[tokio::test]
async fn the_registry_survives_restarts_and_leaves_other_triggers_alone() {
    let mut srv = TestServer::start_with(&Options::default().add_hook("test_sql.pb.js", SQL_HOOK));
    let a = srv.create_user("a@t.io").await;
    // An app's own trigger named like ours, and a trigger of an earlier version of the
    // extension (its name and a body that counts in _tm_state).
    sql(&srv, "CREATE TABLE audit (rid TEXT)").await;
    sql(&srv, "CREATE TRIGGER tm_audit AFTER INSERT ON friends BEGIN INSERT INTO audit VALUES (NEW.id); END").await;
    sql(
        &srv,
        "CREATE TRIGGER tm_insert_v5_friends AFTER INSERT ON friends BEGIN UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; END",
    )
    .await;
    srv.stop();
    srv.resume_with_env(&[("TIDEMARK_COLLECTIONS", "friends:")]);
    let su = srv.superuser().await;
    assert_eq!(su.head().await.unwrap().collections, ["friends", "songs"]);
    assert_eq!(
        triggers_on(&srv, "friends").await,
        [
            "_tidemark_delete_friends",
            "_tidemark_insert_friends",
            "_tidemark_update_friends",
            "tm_audit"
        ]
    );
    let ra = srv.user("a@t.io").await;
    let mut x = Client::new();
    let head = ra.head().await.unwrap().head.0;
    let id = new_id();
    let out = ra
        .push(vec![x.upsert(
            "friends",
            &id,
            None,
            fields(json!({"name": "f", "owner": a.as_str()})),
        )])
        .await
        .unwrap();
    assert_eq!(applied(&out[0]), head + 1, "one seq per write");
    assert_eq!(
        sql_query(&srv, "SELECT rid AS v FROM audit").await,
        [id.as_str()]
    );

    // Owner field "" -> tombstones without owner; back to "owner" -> the owner's.
    let e = su.enable_sync("friends", None).await.unwrap();
    assert_eq!((e.owner.as_str(), e.backfilled), ("", 0));
    let del = |id: &RecordId| format!("/api/collections/friends/records/{id}");
    admin_ok(&srv, reqwest::Method::DELETE, &del(&id), None).await;
    let owners = |id: &RecordId| format!("SELECT owner AS v FROM tm_tombstones WHERE rid = '{id}'");
    assert_eq!(sql_query(&srv, &owners(&id)).await, [""]);
    su.enable_sync("friends", Some("owner")).await.unwrap();
    let id2 = new_id();
    ra.push(vec![x.upsert(
        "friends",
        &id2,
        None,
        fields(json!({"name": "g", "owner": a.as_str()})),
    )])
    .await
    .unwrap();
    admin_ok(&srv, reqwest::Method::DELETE, &del(&id2), None).await;
    assert_eq!(sql_query(&srv, &owners(&id2)).await, [a.as_str()]);
    assert!(triggers_on(&srv, "friends")
        .await
        .contains(&"tm_audit".to_owned()));
}

// ---- 9. enabling sync on an app's own collection --------------------------------------

/// A collection created through the admin API (a relation to songs, an owner
/// relation to users) with records, made synced while writers keep writing to it:
/// every record ends up with a seq and is pulled at its newest state, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enabling_sync_on_a_live_collection_skips_no_record() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let su = srv.superuser().await;
    let (_, users) = admin(&srv, reqwest::Method::GET, "/api/collections/users", None).await;
    let (_, songs) = admin(&srv, reqwest::Method::GET, "/api/collections/songs", None).await;
    let rule = "@request.auth.id != '' && owner = @request.auth.id";
    admin_ok(
        &srv,
        reqwest::Method::POST,
        "/api/collections",
        Some(json!({
            "name": "tasks", "type": "base",
            "listRule": rule, "viewRule": rule, "updateRule": rule, "deleteRule": rule,
            "createRule": "@request.auth.id != '' && @request.body.owner = @request.auth.id",
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "n", "type": "number"},
                {"name": "song", "type": "relation", "collectionId": songs["id"], "maxSelect": 1},
                {"name": "owner", "type": "relation", "collectionId": users["id"], "maxSelect": 1},
            ],
        })),
    )
    .await;
    let song = new_id();
    admin_ok(
        &srv,
        reqwest::Method::POST,
        "/api/collections/songs/records",
        Some(json!({"id": song.as_str(), "title": "s", "owner": a.as_str()})),
    )
    .await;
    for i in 0..40 {
        admin_ok(
            &srv,
            reqwest::Method::POST,
            "/api/collections/tasks/records",
            Some(json!({"title": format!("old{i}"), "n": 0, "song": song.as_str(), "owner": a.as_str()})),
        )
        .await;
    }
    // Not synced yet: not listed, and a pull does not ask for it.
    assert!(!su
        .head()
        .await
        .unwrap()
        .collections
        .contains(&"tasks".to_owned()));

    // Writers: creates and updates (n counts each record's writes) by the owner and
    // by the superuser, through plain REST, while the collection is enabled.
    let stop = Arc::new(AtomicBool::new(false));
    let token_a = srv.user("a@t.io").await.token().await.unwrap();
    let token_su = su.token().await.unwrap();
    let mut writers = Vec::new();
    for (w, token) in [(0, token_a.clone()), (1, token_su.clone()), (2, token_a)] {
        let (url, stop, a) = (srv.url().to_owned(), stop.clone(), a.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut mine: Vec<(String, i64)> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 20 {
                i += 1;
                if i % 3 == 0 && !mine.is_empty() {
                    let k = i % mine.len();
                    mine[k].1 += 1;
                    let r = http
                        .patch(format!("{url}/api/collections/tasks/records/{}", mine[k].0))
                        .header("Authorization", &token)
                        .json(&json!({"n": mine[k].1}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                } else {
                    let id = new_id();
                    let r = http
                        .post(format!("{url}/api/collections/tasks/records"))
                        .header("Authorization", &token)
                        .json(&json!({"id": id.as_str(), "title": format!("w{w}-{i}"), "n": 0, "owner": a.as_str()}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                    mine.push((id.as_str().to_owned(), 0));
                }
            }
            i
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let e = su.enable_sync("tasks", Some("owner")).await.unwrap();
    assert!(e.backfilled >= 40, "{e:?}");
    assert_eq!(e.owner, "owner");
    assert!(su.collections().contains(&"tasks".to_owned()));
    // The fields and indexes it lacked were added.
    let coll = admin_ok(&srv, reqwest::Method::GET, "/api/collections/tasks", None).await;
    let names: Vec<&str> = coll["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in ["tm_seq", "tm_cid", "tm_push", "tm_clients"] {
        assert!(names.contains(&f), "{names:?}");
    }
    let indexes = coll["indexes"].to_string();
    assert!(
        indexes.contains("(`tm_seq`)") && indexes.contains("(`owner`, `tm_seq`)"),
        "{indexes}"
    );
    // A poller from 0 while the writers go on.
    let ra = srv.user("a@t.io").await;
    let mut seen: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    let mut wm = Watermark(0);
    let poll = |wm: Watermark| {
        let ra = ra.clone();
        async move { ra.pull(wm, 200, PullMode::Incremental).await.unwrap() }
    };
    for _ in 0..5 {
        let p = poll(wm).await;
        for c in p.changes {
            if c.collection == "tasks" {
                let f = c.state.fields.clone().unwrap_or_default();
                seen.insert(
                    c.id.as_str().to_owned(),
                    (c.state.version.0, Value::Object(f)),
                );
            }
        }
        wm = p.watermark;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() >= 20);
    }
    loop {
        let p = poll(wm).await;
        for c in p.changes {
            if c.collection == "tasks" {
                let f = c.state.fields.clone().unwrap_or_default();
                seen.insert(
                    c.id.as_str().to_owned(),
                    (c.state.version.0, Value::Object(f)),
                );
            }
        }
        wm = p.watermark;
        if !p.more {
            break;
        }
    }
    // The server's records as PocketBase lists them (every one has a seq).
    let mut server: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut page = 1;
    loop {
        let (_, v) = admin(
            &srv,
            reqwest::Method::GET,
            &format!("/api/collections/tasks/records?perPage=500&page={page}"),
            None,
        )
        .await;
        let items = v["items"].as_array().unwrap().clone();
        for it in &items {
            let seq = it["tm_seq"].as_u64().unwrap();
            assert!(seq > 0, "a record without a seq: {it}");
            server.insert(
                it["id"].as_str().unwrap().to_owned(),
                (seq, it["n"].as_i64().unwrap()),
            );
        }
        if items.len() < 500 {
            break;
        }
        page += 1;
    }
    assert!(server.len() > 60);
    let got: BTreeMap<String, (u64, i64)> = seen
        .iter()
        .map(|(k, (v, f))| (k.clone(), (*v, f["n"].as_i64().unwrap())))
        .collect();
    assert_eq!(
        got, server,
        "the poller holds every record at its newest state"
    );
    // A pull from 0 lists every record exactly once.
    let all: Vec<_> = pull_all(&ra, 0, 1000)
        .await
        .into_iter()
        .flat_map(|p| p.changes)
        .filter(|c| c.collection == "tasks")
        .collect();
    let ids: HashSet<_> = all.iter().map(|c| c.id.as_str().to_owned()).collect();
    assert_eq!((all.len(), ids.len()), (server.len(), server.len()));
    // Seqs are unique.
    let seqs: HashSet<u64> = server.values().map(|v| v.0).collect();
    assert_eq!(seqs.len(), server.len());

    // Idempotent: nothing restamped.
    let head = su.head().await.unwrap().head;
    let again = su.enable_sync("tasks", Some("owner")).await.unwrap();
    assert_eq!((again.backfilled, again.head), (0, head));

    // Pushes work on it (fast path: one seq), and so does a relation field.
    let mut x = Client::new();
    let id = new_id();
    let out = ra
        .push(vec![x.upsert(
            "tasks",
            &id,
            None,
            fields(json!({"title": "pushed", "n": 1, "song": song.as_str(), "owner": a.as_str()})),
        )])
        .await
        .unwrap();
    assert_eq!(applied(&out[0]), head.0 + 1);
}

#[tokio::test]
async fn disabling_sync_unregisters_and_keeps_the_data() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let su = srv.superuser().await;
    let ra = srv.user("a@t.io").await;
    let mut x = Client::new();
    let id = new_id();
    let v = applied(
        &ra.push(vec![x.upsert(
            "friends",
            &id,
            None,
            fields(json!({"name": "f", "owner": a.as_str()})),
        )])
        .await
        .unwrap()[0],
    );
    assert!(su.disable_sync("friends").await.unwrap());
    assert!(!su.disable_sync("friends").await.unwrap(), "idempotent");
    assert_eq!(su.collections(), ["songs"]);
    // Writes no longer take seqs; a push to it is refused (kept by the client).
    let head = su.head().await.unwrap().head;
    admin_ok(
        &srv,
        reqwest::Method::PATCH,
        &format!("/api/collections/friends/records/{id}"),
        Some(json!({"name": "g"})),
    )
    .await;
    assert_eq!(su.head().await.unwrap().head, head);
    let out = ra
        .push(vec![x.upsert(
            "friends",
            &id,
            Some(v),
            fields(json!({"name": "h", "owner": a.as_str()})),
        )])
        .await
        .unwrap();
    assert!(matches!(out[0], PushOutcome::Rejected(_)), "{out:?}");
    // The data stays; enabling again stamps every record anew.
    let (_, rec) = admin(
        &srv,
        reqwest::Method::GET,
        &format!("/api/collections/friends/records/{id}"),
        None,
    )
    .await;
    assert_eq!(rec["name"], json!("g"));
    let e = su.enable_sync("friends", Some("owner")).await.unwrap();
    assert_eq!(e.backfilled, 1);
    let st = ra.fetch("friends", &id).await.unwrap().unwrap();
    assert_eq!(st.version.0, e.head.0);
    assert_eq!(st.fields.unwrap()["name"], json!("g"));
}

#[tokio::test]
async fn enable_refuses_what_cannot_be_synced() {
    let srv = TestServer::start();
    srv.create_user("a@t.io").await;
    let su = srv.superuser().await;
    let e = su
        .enable_sync("no_such_collection", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no collection"), "{e}");
    let e = su
        .enable_sync("songs", Some("no_such_field"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no field"), "{e}");
    let e = su.enable_sync("users", None).await.unwrap_err();
    assert!(e.to_string().contains("only base collections"), "{e}");
    let ra = srv.user("a@t.io").await;
    assert!(
        ra.enable_sync("songs", None).await.is_err(),
        "superusers only"
    );
    // A synced collection keeps its fields.
    let (s, v) = admin(
        &srv,
        reqwest::Method::PATCH,
        "/api/collections/songs",
        Some(json!({"fields": [{"name": "title", "type": "text"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

// ---- 10. tombstones in a collection shared through a team ---------------------------

/// `docs` is shared with a team (`team.members.id ?= @request.auth.id`), owned by its
/// creator. A member who is not the owner pulls the record and its edits; the
/// owner's delete leaves a tombstone only the owner sees, so the member's pull keeps
/// the record, and the member's reconcile (counts differ) removes it.
#[tokio::test]
async fn a_team_member_receives_edits_and_reconcile_removes_a_deleted_record() {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let b = srv.create_user("b@t.io").await;
    let su = srv.superuser().await;
    let (_, users) = admin(&srv, reqwest::Method::GET, "/api/collections/users", None).await;
    let teams = admin_ok(
        &srv,
        reqwest::Method::POST,
        "/api/collections",
        Some(json!({
            "name": "teams", "type": "base",
            "listRule": "members ?= @request.auth.id", "viewRule": "members ?= @request.auth.id",
            "fields": [{"name": "members", "type": "relation", "collectionId": users["id"], "maxSelect": 10}],
        })),
    )
    .await;
    // (`team.members ?= @request.auth.id` matches nothing in PocketBase 0.40.6; the
    // members' ids do.)
    let member = "@request.auth.id != '' && team.members.id ?= @request.auth.id";
    admin_ok(
        &srv,
        reqwest::Method::POST,
        "/api/collections",
        Some(json!({
            "name": "docs", "type": "base",
            "listRule": member, "viewRule": member, "updateRule": member,
            "deleteRule": "@request.auth.id != '' && owner = @request.auth.id",
            "createRule": "@request.auth.id != '' && @request.body.owner = @request.auth.id",
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "team", "type": "relation", "collectionId": teams["id"], "maxSelect": 1},
                {"name": "owner", "type": "relation", "collectionId": users["id"], "maxSelect": 1},
            ],
        })),
    )
    .await;
    let team = admin_ok(
        &srv,
        reqwest::Method::POST,
        "/api/collections/teams/records",
        Some(json!({"members": [a.as_str(), b.as_str()]})),
    )
    .await;
    let team = team["id"].as_str().unwrap().to_owned();
    su.enable_sync("docs", Some("owner")).await.unwrap();

    let owner = SyncEngine::new(MemoryStore::new(), srv.user("a@t.io").await);
    let reader = SyncEngine::new(MemoryStore::new(), srv.user("b@t.io").await);
    let id = new_id();
    owner
        .local()
        .put(Record::new(
            "docs",
            id.clone(),
            fields(json!({"title": "v1", "team": team, "owner": a.as_str()})),
        ))
        .await
        .unwrap();
    let r = owner.sync().await.unwrap();
    assert_eq!(r.pushed, 1, "{r:?}");
    reader.sync().await.unwrap();
    let got = reader
        .local()
        .get("docs", &id)
        .await
        .unwrap()
        .expect("the member receives it");
    assert_eq!(got.fields["title"], json!("v1"));

    // An edit reaches the member through the pull.
    let mut f = owner
        .local()
        .get("docs", &id)
        .await
        .unwrap()
        .unwrap()
        .fields;
    f.insert("title".into(), json!("v2"));
    owner
        .local()
        .put(Record::new("docs", id.clone(), f))
        .await
        .unwrap();
    owner.sync().await.unwrap();
    reader.sync().await.unwrap();
    assert_eq!(
        reader
            .local()
            .get("docs", &id)
            .await
            .unwrap()
            .unwrap()
            .fields["title"],
        json!("v2")
    );

    // The owner deletes it: the tombstone is the owner's.
    owner.local().delete("docs", &id).await.unwrap();
    owner.sync().await.unwrap();
    assert!(owner.local().get("docs", &id).await.unwrap().is_none());
    reader.sync().await.unwrap();
    assert!(
        reader.local().get("docs", &id).await.unwrap().is_some(),
        "the pull carries no tombstone to a reader who is not the owner"
    );
    assert_eq!(reader.remote().counts().await.unwrap().unwrap()["docs"], 0);
    reader.reconcile().await.unwrap();
    assert!(
        reader.local().get("docs", &id).await.unwrap().is_none(),
        "reconcile removes it"
    );
    let _ = USER_PASSWORD;
}

/// The init migration raises only the batch limits it needs (a higher limit stays)
/// and its down migration restores what it changed.
#[tokio::test]
async fn the_init_migration_raises_batch_limits_and_its_down_restores_them() {
    let pre = r#"migrate((app) => {
  const s = app.settings();
  s.batch.enabled = false;
  s.batch.maxRequests = 5000;
  s.batch.timeout = 10;
  app.save(s);
}, (app) => {});
"#;
    let mut srv = TestServer::start_with(
        &Options::default()
            .no_fixture()
            .add_migration("1763999999_operator_settings.js", pre),
    );
    let batch = |v: Value| v["batch"].clone();
    let up = batch(admin_ok(&srv, reqwest::Method::GET, "/api/settings", None).await);
    assert_eq!(
        (
            up["enabled"].clone(),
            up["maxRequests"].clone(),
            up["timeout"].clone()
        ),
        (json!(true), json!(5000), json!(30))
    );
    srv.stop();
    // The four tidemark migrations, down.
    let (ok, out) = srv.command(&["migrate", "down", "4"], "y\n");
    assert!(ok, "{out}");
    for f in [
        "1764000000_tidemark_init.js",
        "1764000002_tidemark_security.js",
        "1764000004_tidemark_registry.js",
        "1764000006_tidemark_compacted.js",
    ] {
        std::fs::remove_file(srv.migrations_dir().join(f)).unwrap();
    }
    srv.resume();
    // (The head route needs the tables the down migrations dropped: plain login.)
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/api/collections/_superusers/auth-with-password", srv.url()))
        .json(&json!({"identity": pocketbase_remote::harness::ADMIN_EMAIL, "password": pocketbase_remote::harness::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let settings: Value = http
        .get(format!("{}/api/settings", srv.url()))
        .header("Authorization", login["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let down = batch(settings);
    assert_eq!(
        (
            down["enabled"].clone(),
            down["maxRequests"].clone(),
            down["timeout"].clone()
        ),
        (json!(false), json!(5000), json!(10))
    );
}
