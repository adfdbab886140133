//! The `tidemark` binary as a user runs it, against a real PocketBase (the test
//! harness's server with the sample `songs`/`friends` schema, owner field `owner`):
//! `sync` of a SQLite and a sled store converging, `status` leaving the file as it
//! was, `watch` pulling a change made through the REST API, the quarantine and
//! conflict commands, `--json` output, and every error exit code.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pocketbase_remote::harness::{Options, TestServer, ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD};
use serde_json::{json, Value};
use sync_traits::{LocalStore, Record, RecordId};
use tidemark_backends::{Schema, SledStore, SqliteStore};

/// The sample schema in PocketBase's collections export format (pb_schema.json).
const PB_SCHEMA: &str = r#"[
  {"name": "songs", "type": "base", "fields": [
    {"name": "id", "type": "text", "system": true, "primaryKey": true},
    {"name": "title", "type": "text"},
    {"name": "artist", "type": "text"},
    {"name": "order", "type": "number"},
    {"name": "owner", "type": "relation", "maxSelect": 1, "collectionId": "_pb_users_auth_"}
  ]},
  {"name": "friends", "type": "base", "fields": [
    {"name": "id", "type": "text", "system": true, "primaryKey": true},
    {"name": "name", "type": "text"},
    {"name": "owner", "type": "relation", "maxSelect": 1, "collectionId": "_pb_users_auth_"}
  ]}
]"#;

/// A server, a user on it, and a folder for stores and the schema file.
struct Env {
    srv: TestServer,
    dir: tempfile::TempDir,
    email: String,
    user: RecordId,
}

impl Env {
    async fn new(srv: TestServer) -> Self {
        let email = "alice@tidemark.test".to_string();
        let user = srv.create_user(&email).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pb_schema.json"), PB_SCHEMA).expect("schema file");
        Self {
            srv,
            dir,
            email,
            user,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tidemark <cmd> --url .. --email .. --password-stdin --schema .. <rest>`,
    /// with the user's password on stdin.
    fn remote_cmd(&self, cmd: &str, rest: &[&str]) -> Output {
        let schema = self.path("pb_schema.json");
        let mut args = vec![
            cmd,
            "--url",
            self.srv.url(),
            "--email",
            &self.email,
            "--password-stdin",
            "--schema",
            schema.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(rest);
        tidemark(&args, Some(&format!("{USER_PASSWORD}\n")))
    }

    fn song(&self, title: &str, owner: bool) -> serde_json::Map<String, Value> {
        let mut f = json!({"title": title, "artist": "a", "order": 1});
        if owner {
            f["owner"] = json!(self.user.as_str());
        }
        f.as_object().cloned().expect("object")
    }
}

/// Runs the built binary with `args`, `stdin` (or none) and no `TIDEMARK_*`
/// variables from the test's environment.
fn tidemark(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(args)
        .env_remove("TIDEMARK_PASSWORD")
        .env_remove("TIDEMARK_EMAIL")
        .env_remove("TIDEMARK_TOKEN")
        .env_remove("TIDEMARK_URL")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tidemark");
    if let Some(input) = stdin {
        // A run refused before it reads stdin (a usage error) closes it early.
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
    }
    child.wait_with_output().expect("tidemark output")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The one JSON object a `--json` run prints on stdout.
fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn expect_code(o: &Output, want: i32) {
    assert_eq!(
        code(o),
        want,
        "exit code\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

async fn put_sqlite(path: &Path, rec: Record) {
    let s = SqliteStore::open(path, Schema::sample()).expect("open sqlite");
    s.put(rec).await.expect("put");
}

async fn put_sled(path: &Path, rec: Record) {
    let p = path.to_owned();
    let s = tokio::task::spawn_blocking(move || SledStore::open(p, Schema::sample()))
        .await
        .expect("join")
        .expect("open sled");
    s.put(rec).await.expect("put");
}

async fn get_sqlite(path: &Path, id: &RecordId) -> Option<Record> {
    let s = SqliteStore::open(path, Schema::sample()).expect("open sqlite");
    s.get("songs", id).await.expect("get")
}

/// A directory's files (relative paths) with their bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").to_owned();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// Panics naming the files that differ between two snapshots (not their bytes).
fn assert_unchanged(before: &[(PathBuf, Vec<u8>)], after: &[(PathBuf, Vec<u8>)], what: &str) {
    let names = |s: &[(PathBuf, Vec<u8>)]| {
        s.iter()
            .map(|(p, b)| (p.clone(), b.len()))
            .collect::<Vec<_>>()
    };
    let changed: Vec<&PathBuf> = before
        .iter()
        .zip(after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert!(
        before == after,
        "{what} changed the store's files: before {:?}, after {:?}, differing {changed:?}",
        names(before),
        names(after)
    );
}

fn songs_count(status: &Value) -> u64 {
    status["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .find(|c| c["name"] == "songs")
        .and_then(|c| c["records"].as_u64())
        .expect("songs count")
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_converges_a_sqlite_and_a_sled_store_and_status_changes_no_byte() {
    let env = Env::new(TestServer::start()).await;
    let (a, b) = (env.path("a/app.sqlite"), env.path("b.sled"));
    std::fs::create_dir_all(a.parent().expect("parent")).expect("mkdir");
    let id = sync_traits::new_id();
    put_sqlite(
        &a,
        Record::new("songs", id.clone(), env.song("first", true)),
    )
    .await;

    let o = env.remote_cmd("sync", &["--db", a.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    let j = json_out(&o);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["report"]["pushed"], 1, "{j}");
    assert_eq!(j["report"]["rejected"], 0, "{j}");
    assert_eq!(j["rejections"], json!([]), "{j}");
    assert_eq!(j["watermark"], j["head"], "{j}");

    // The sled store is created by its first sync and receives the song.
    let o = env.remote_cmd("sync", &["--sled", b.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    let j = json_out(&o);
    assert_eq!(j["report"]["pulled"], 1, "{j}");
    assert_eq!(j["report"]["applied"], 1, "{j}");

    // An edit on the sled side reaches the SQLite side.
    put_sled(
        &b,
        Record::new("songs", id.clone(), env.song("edited", true)),
    )
    .await;
    let o = env.remote_cmd("sync", &["--sled", b.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    assert_eq!(json_out(&o)["report"]["pushed"], 1);
    // Without --json: the text report on stdout, no bars (stderr is not a TTY).
    let o = env.remote_cmd("sync", &["--db", a.to_str().unwrap()]);
    expect_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pulled 1"), "{text}");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = get_sqlite(&a, &id).await.expect("song in A");
    assert_eq!(got.fields["title"], "edited");

    // status reads both stores (with the server's head) and writes nothing.
    let before = snapshot(a.parent().unwrap());
    let o = env.remote_cmd("status", &["--db", a.to_str().unwrap(), "--json"]);
    // `status` takes --url and the credentials but not --schema.
    expect_code(&o, 2);
    let o = tidemark(
        &[
            "status",
            "--db",
            a.to_str().unwrap(),
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--password-stdin",
            "--json",
        ],
        Some(&format!("{USER_PASSWORD}\n")),
    );
    expect_code(&o, 0);
    let st = json_out(&o);
    assert_unchanged(&before, &snapshot(a.parent().unwrap()), "status --db");
    assert_eq!(st["kind"], "sqlite");
    assert_eq!(songs_count(&st), 1, "{st}");
    assert_eq!(st["outbox"], 0, "{st}");
    assert_eq!(st["lag"], 0, "{st}");
    assert_eq!(st["watermark"], st["head"], "{st}");
    assert_eq!(st["quarantine"], json!([]));

    let before_b = snapshot(&b);
    let o = tidemark(&["status", "--sled", b.to_str().unwrap(), "--json"], None);
    expect_code(&o, 0);
    let st_b = json_out(&o);
    assert_unchanged(&before_b, &snapshot(&b), "status --sled");
    assert_eq!(st_b["kind"], "sled");
    assert_eq!(songs_count(&st_b), 1, "{st_b}");
    assert_eq!(st_b["watermark"], st["watermark"], "both stores caught up");
    assert_eq!(st_b["lag"], Value::Null, "no --url, no lag");

    // Text status of a store with an unpushed write shows it.
    put_sqlite(
        &a,
        Record::new("songs", sync_traits::new_id(), env.song("x", true)),
    )
    .await;
    let o = tidemark(&["status", "--db", a.to_str().unwrap()], None);
    expect_code(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("outbox:      1 unpushed"), "{text}");
    assert!(text.contains("songs"), "{text}");

    // A file that is not a store is refused and left alone; a missing one is not made.
    let other = env.path("other.sqlite");
    std::fs::write(&other, b"not a database, just text\n").expect("write");
    let bytes = std::fs::read(&other).expect("other");
    let o = tidemark(&["status", "--db", other.to_str().unwrap()], None);
    expect_code(&o, 1);
    assert_eq!(std::fs::read(&other).expect("other"), bytes);
    let missing = env.path("missing.sqlite");
    let o = tidemark(&["status", "--db", missing.to_str().unwrap()], None);
    expect_code(&o, 1);
    assert!(!missing.exists(), "status created {}", missing.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_change_exits_6_and_the_quarantine_commands_retry_and_discard_it() {
    let env = Env::new(TestServer::start()).await;
    let a = env.path("a.sqlite");
    // The sample schema's create rule requires `owner` to be the signed-in user.
    let id = sync_traits::new_id();
    put_sqlite(
        &a,
        Record::new("songs", id.clone(), env.song("no owner", false)),
    )
    .await;
    let db = a.to_str().unwrap();

    let o = env.remote_cmd("sync", &["--db", db, "--json"]);
    expect_code(&o, 6);
    let j = json_out(&o);
    assert_eq!(j["kind"], "rejected", "{j}");
    assert_eq!(j["report"]["rejected"], 1, "{j}");
    let rej = j["rejections"].as_array().expect("rejections");
    assert_eq!(rej.len(), 1, "{j}");
    assert_eq!(rej[0]["collection"], "songs");
    assert_eq!(rej[0]["record"], id.as_str());
    assert_eq!(rej[0]["data"]["title"], "no owner");
    let first = rej[0]["id"].as_u64().expect("quarantine id");

    let o = tidemark(&["quarantine", "list", "--db", db, "--json"], None);
    expect_code(&o, 0);
    let q = json_out(&o)["quarantine"].clone();
    assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
    assert_eq!(q[0]["id"], first);

    // Retry writes it again: back in the outbox, out of the quarantine.
    let o = tidemark(
        &["quarantine", "retry", &first.to_string(), "--db", db],
        None,
    );
    expect_code(&o, 0);
    let st = json_out(&tidemark(&["status", "--db", db, "--json"], None));
    assert_eq!(st["outbox"], 1, "{st}");
    assert_eq!(st["quarantine"], json!([]), "{st}");

    // Still without an owner, so rejected again, under a new quarantine id.
    let o = env.remote_cmd("sync", &["--db", db]);
    expect_code(&o, 6);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("rejected 1"), "{text}");
    assert!(text.contains("tidemark quarantine list"), "{text}");
    let q = json_out(&tidemark(
        &["quarantine", "list", "--db", db, "--json"],
        None,
    ));
    let second = q["quarantine"][0]["id"].as_u64().expect("id");
    assert!(second > first, "{q}");

    let o = tidemark(
        &["quarantine", "discard", &second.to_string(), "--db", db],
        None,
    );
    expect_code(&o, 0);
    let q = json_out(&tidemark(
        &["quarantine", "list", "--db", db, "--json"],
        None,
    ));
    assert_eq!(q["quarantine"], json!([]));
    // Unknown ids are an error.
    let o = tidemark(
        &["quarantine", "discard", &second.to_string(), "--db", db],
        None,
    );
    expect_code(&o, 1);
    // The write commands open only an existing store: an empty file stays empty.
    let empty = env.path("empty.sqlite");
    std::fs::write(&empty, b"").expect("empty file");
    let o = tidemark(
        &["quarantine", "retry", "1", "--db", empty.to_str().unwrap()],
        None,
    );
    expect_code(&o, 1);
    let o = tidemark(
        &["conflicts", "clear", "--db", empty.to_str().unwrap()],
        None,
    );
    expect_code(&o, 1);
    assert_eq!(std::fs::read(&empty).expect("empty").len(), 0);
    // Nothing is left to push: the next sync is clean.
    let o = env.remote_cmd("sync", &["--db", db, "--json"]);
    expect_code(&o, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_is_resolved_by_the_policy_logged_listed_and_cleared() {
    let env = Env::new(TestServer::start()).await;
    let (a, b) = (env.path("a.sqlite"), env.path("b.sled"));
    let (db, sled) = (a.to_str().unwrap(), b.to_str().unwrap());
    let id = sync_traits::new_id();
    put_sqlite(&a, Record::new("songs", id.clone(), env.song("v1", true))).await;
    expect_code(&env.remote_cmd("sync", &["--db", db]), 0);
    expect_code(&env.remote_cmd("sync", &["--sled", sled]), 0);

    // Both edit the title; A's edit reaches the server first.
    put_sqlite(
        &a,
        Record::new("songs", id.clone(), env.song("from a", true)),
    )
    .await;
    put_sled(
        &b,
        Record::new("songs", id.clone(), env.song("from b", true)),
    )
    .await;
    expect_code(&env.remote_cmd("sync", &["--db", db]), 0);
    let o = env.remote_cmd("sync", &["--sled", sled, "--policy", "server", "--json"]);
    expect_code(&o, 0);
    let j = json_out(&o);
    assert_eq!(j["report"]["conflicts"], 1, "{j}");
    let c = j["conflicts"].as_array().expect("conflicts");
    assert_eq!(c.len(), 1, "{j}");
    assert_eq!(c[0]["resolution"], "server");
    assert_eq!(c[0]["record"], id.as_str());
    assert_eq!(c[0]["local"]["title"], "from b");
    assert_eq!(c[0]["server"]["title"], "from a");

    let o = tidemark(&["conflicts", "list", "--sled", sled, "--json"], None);
    expect_code(&o, 0);
    let listed = json_out(&o)["conflicts"].clone();
    assert_eq!(listed, j["conflicts"], "list shows what the sync reported");
    let o = tidemark(&["conflicts", "list", "--sled", sled], None);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("took the server's record"), "{text}");

    let o = tidemark(&["conflicts", "clear", "--sled", sled, "--json"], None);
    expect_code(&o, 0);
    assert_eq!(json_out(&o)["cleared"], 1);
    let o = tidemark(&["conflicts", "list", "--sled", sled, "--json"], None);
    assert_eq!(json_out(&o)["conflicts"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_has_its_exit_code() {
    let env = Env::new(TestServer::start()).await;
    let a = env.path("a.sqlite");
    let db = a.to_str().unwrap();
    let schema = env.path("pb_schema.json");
    let schema = schema.to_str().unwrap();

    // A wrong password: 3, and --json says so.
    let o = tidemark(
        &[
            "sync",
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--password-stdin",
            "--schema",
            schema,
            "--db",
            db,
            "--json",
        ],
        Some("wrong-password-1\n"),
    );
    expect_code(&o, 3);
    let j = json_out(&o);
    assert_eq!(j["kind"], "auth", "{j}");
    assert_eq!(j["ok"], false);

    // An invalid token: 3 as well.
    let o = tidemark(
        &[
            "sync",
            "--url",
            env.srv.url(),
            "--token",
            "not-a-token",
            "--schema",
            schema,
            "--db",
            db,
        ],
        None,
    );
    expect_code(&o, 3);

    // Nothing listening: 4.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let o = tidemark(
        &[
            "sync",
            "--url",
            &url,
            "--email",
            &env.email,
            "--password-stdin",
            "--schema",
            schema,
            "--db",
            db,
            "--json",
        ],
        Some(&format!("{USER_PASSWORD}\n")),
    );
    expect_code(&o, 4);
    assert_eq!(json_out(&o)["kind"], "unreachable");

    // No password source (no flag, no variable, no terminal): 2, before any request.
    let o = tidemark(
        &[
            "sync",
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--schema",
            schema,
            "--db",
            db,
        ],
        None,
    );
    expect_code(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--password-stdin"), "{err}");
    // TIDEMARK_PASSWORD is a password source.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    let o = cmd
        .args([
            "sync",
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--schema",
            schema,
            "--db",
            db,
        ])
        .env("TIDEMARK_PASSWORD", USER_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    expect_code(&o, 0);
    // A password flag does not exist; clap's usage error is 2.
    let o = tidemark(
        &[
            "sync",
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--password",
            "x",
            "--db",
            db,
        ],
        None,
    );
    expect_code(&o, 2);
    // Neither --db nor --sled: 2.
    let o = tidemark(&["status"], None);
    expect_code(&o, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_another_protocol_version_exits_5() {
    let srv = TestServer::start_with(&Options::default().patch_hooks(
        "tidemark/config.js",
        "const PROTOCOL = 2;",
        "const PROTOCOL = 3;",
    ));
    // Signing in as the superuser: the harness's user helpers refuse this server.
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("pb_schema.json");
    std::fs::write(&schema, PB_SCHEMA).expect("schema");
    let a = dir.path().join("a.sqlite");
    let o = tidemark(
        &[
            "sync",
            "--url",
            srv.url(),
            "--collection",
            "_superusers",
            "--email",
            ADMIN_EMAIL,
            "--password-stdin",
            "--schema",
            schema.to_str().unwrap(),
            "--db",
            a.to_str().unwrap(),
            "--json",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    expect_code(&o, 5);
    let j = json_out(&o);
    assert_eq!(j["kind"], "protocol", "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap_or_default()
            .contains("upgrade the client"),
        "{j}"
    );
    assert!(!a.exists(), "a refused server must not create the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_pulls_a_change_made_through_the_rest_api_and_stops_on_ctrl_c() {
    let env = Env::new(TestServer::start()).await;
    let a = env.path("a.sqlite");
    let schema = env.path("pb_schema.json");
    // A long period: only the realtime hint can bring the change in time.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args([
            "watch",
            "--url",
            env.srv.url(),
            "--email",
            &env.email,
            "--password-stdin",
            "--schema",
            schema.to_str().unwrap(),
            "--db",
            a.to_str().unwrap(),
            "--period",
            "3600",
            "--json",
        ])
        .env_remove("TIDEMARK_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{USER_PASSWORD}\n").as_bytes())
        .expect("password");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |what: &str, f: &dyn Fn(&str) -> bool| -> String {
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if f(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("watch printed no line {what} ({e})"),
            }
        }
    };
    let state = |l: &str| -> Option<Value> {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(|v| v["watermark"].is_u64())
    };
    let first = wait_for("after its first sync", &|l| state(l).is_some());
    let w0 = state(&first).expect("state")["watermark"]
        .as_u64()
        .expect("watermark");

    // A superuser creates a song through PocketBase's REST API.
    let token = env.srv.superuser().await.token().await.expect("token");
    let id = sync_traits::new_id();
    let r = reqwest::Client::new()
        .post(format!("{}/api/collections/songs/records", env.srv.url()))
        .header("Authorization", token)
        .json(&json!({"id": id.as_str(), "title": "from the API", "artist": "x", "order": 2, "owner": env.user.as_str()}))
        .send()
        .await
        .expect("create");
    assert!(r.status().is_success(), "{:?}", r.text().await);

    wait_for("with the new watermark", &|l| {
        state(l).is_some_and(|v| v["watermark"].as_u64() > Some(w0))
    });
    let st = json_out(&tidemark(
        &["status", "--db", a.to_str().unwrap(), "--json"],
        None,
    ));
    assert_eq!(songs_count(&st), 1, "{st}");

    // Ctrl-C stops it cleanly.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(0), "watch exit; stderr: {err}");
    let last = wait_for("when stopped", &|l| {
        state(l).is_some_and(|v| v["stopped"] == true)
    });
    let last = state(&last).expect("state");
    assert_eq!(last["outbox"], 0, "{last}");
    assert_eq!(last["quarantine"], 0, "{last}");
    let got = get_sqlite(&a, &id).await.expect("song pulled by watch");
    assert_eq!(got.fields["title"], "from the API");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_the_password_is_prompted_for_and_progress_bars_are_drawn() {
    let env = Env::new(TestServer::start()).await;
    let a = env.path("a.sqlite");
    for n in 0..3 {
        put_sqlite(
            &a,
            Record::new(
                "songs",
                sync_traits::new_id(),
                env.song(&format!("s{n}"), true),
            ),
        )
        .await;
    }
    // `script` (util-linux) runs the command on a pseudo-terminal and passes its
    // own stdin to it: the password reaches the prompt, not a flag or variable.
    let cmd = format!(
        "{} sync --url {} --email {} --schema {} --db {}",
        env!("CARGO_BIN_EXE_tidemark"),
        env.srv.url(),
        env.email,
        env.path("pb_schema.json").display(),
        a.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("TIDEMARK_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) is needed for the terminal test");
    // The password is typed once the prompt is up. (Whether the terminal echoes
    // it depends on whether it arrives before the prompt turns echo off: not
    // checked.)
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut screen = Vec::new();
    let prompt = format!("password for {}: ", env.email);
    while !String::from_utf8_lossy(&screen).contains(&prompt) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(chunk) => screen.extend(chunk),
            Err(e) => panic!(
                "no password prompt ({e}): {}",
                String::from_utf8_lossy(&screen)
            ),
        }
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{USER_PASSWORD}\n").as_bytes())
        .expect("type the password");
    let status = child.wait().expect("script");
    drop(stdin);
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(30)) {
        screen.extend(chunk);
    }
    let screen = String::from_utf8_lossy(&screen).into_owned();
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(
        screen.contains(&format!("password for {}", env.email)),
        "{screen}"
    );
    assert!(screen.contains("push "), "no push bar: {screen}");
    assert!(
        screen.contains("3/3 changes"),
        "push bar without its counts: {screen}"
    );
    assert!(screen.contains("pull "), "no pull bar: {screen}");
    assert!(screen.contains("pushed 3, "), "{screen}");
    let st = json_out(&tidemark(
        &["status", "--db", a.to_str().unwrap(), "--json"],
        None,
    ));
    assert_eq!(st["outbox"], 0, "{st}");
}
