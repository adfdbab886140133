//! `tidemark dev` as a user runs it: the built binary against real PocketBase, in a
//! fresh working folder.

mod support;

use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use support::{repo_root, DevProcess};
use sync_traits::testkit::MemoryStore;
use sync_traits::{new_id, LocalStore, Record, SyncEngine};

#[tokio::test(flavor = "multi_thread")]
async fn first_start_creates_credentials_restart_reuses_them_and_keeps_the_data() {
    let work = tempfile::tempdir().expect("tempdir");
    let schema = repo_root().join("examples/pb_schema.json");
    let schema = schema.to_str().expect("utf-8 path");
    let args = [
        "--import",
        schema,
        "--user",
        "user@example.com",
        "--user-password",
        "user-password-1",
    ];

    // First start: a superuser is generated, printed with its password, stored 0600.
    let mut dev = DevProcess::start(work.path(), &args);
    let out = dev.output();
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join(".tidemark/admin.json")).expect("admin.json"),
    )
    .expect("admin.json is JSON");
    let (email, password) = (
        stored["email"].as_str().expect("email").to_owned(),
        stored["password"].as_str().expect("password").to_owned(),
    );
    assert!(password.len() >= 8, "{password:?}");
    assert!(
        out.contains(&format!("superuser: {email} / {password}")),
        "first start prints the credentials: {out}"
    );
    assert!(
        out.contains(&format!("admin UI: {}/_/", dev.url())),
        "{out}"
    );
    assert!(out.contains("synced: songs (owner field owner)"), "{out}");
    assert!(out.contains("synced: friends (owner field owner)"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(work.path().join(".tidemark/admin.json"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.json mode {mode:o}");
    }

    // --import enabled sync: the collections are in the head, a user's record syncs.
    let admin = PocketBaseRemote::builder(dev.url())
        .superuser(&email, &password)
        .connect()
        .await
        .expect("superuser sign-in with the printed credentials");
    let mut synced = admin.head().await.expect("head").collections;
    synced.sort();
    assert_eq!(synced, ["friends", "songs"]);
    let user = PocketBaseRemote::builder(dev.url())
        .user("users", "user@example.com", "user-password-1")
        .connect()
        .await
        .expect("the --user account signs in");
    let owner = user.user_id().expect("user id");
    let engine = SyncEngine::new(MemoryStore::new(), user);
    let id = new_id();
    let fields = json!({"title": "So What", "order": 1, "owner": owner});
    engine
        .local()
        .put(Record::new(
            "songs",
            id.clone(),
            fields.as_object().cloned().unwrap_or_default(),
        ))
        .await
        .expect("put");
    let report = engine.sync().await.expect("sync");
    assert_eq!((report.pushed, report.rejected), (1, 0), "{report:?}");

    // Stops cleanly on SIGTERM.
    let (status, out) = dev.terminate();
    assert!(status.success(), "{status}: {out}");
    assert!(
        out.contains("SIGTERM: PocketBase stopped (exit status: 0)"),
        "{out}"
    );

    // Restart (importing again): same credentials, not printed; the data is there.
    let mut dev = DevProcess::start(work.path(), &args);
    let out = dev.output();
    assert!(
        !out.contains(&password),
        "a restart does not print the password: {out}"
    );
    assert!(
        out.contains(&format!("superuser: {email}   (password in")),
        "{out}"
    );
    PocketBaseRemote::builder(dev.url())
        .superuser(&email, &password)
        .connect()
        .await
        .expect("the stored credentials still sign in");
    let user = PocketBaseRemote::builder(dev.url())
        .user("users", "user@example.com", "user-password-1")
        .connect()
        .await
        .expect("user sign-in after restart");
    let fresh = SyncEngine::new(MemoryStore::new(), user);
    let report = fresh.sync().await.expect("sync after restart");
    assert_eq!(report.pulled, 1, "{report:?}");
    let got = fresh
        .local()
        .get("songs", &id)
        .await
        .expect("get")
        .expect("the song survived the restart");
    assert_eq!(got.fields["title"], "So What");
    let (status, out) = dev.terminate();
    assert!(status.success(), "{status}: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_credentials_from_flags_a_busy_port_and_a_busy_folder_are_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut dev = DevProcess::start(
        work.path(),
        &[
            "--admin-email",
            "boss@example.com",
            "--admin-password",
            "boss-password-1",
        ],
    );
    let out = dev.output();
    assert!(
        out.contains("superuser: boss@example.com / boss-password-1"),
        "{out}"
    );
    PocketBaseRemote::builder(dev.url())
        .superuser("boss@example.com", "boss-password-1")
        .connect()
        .await
        .expect("the given credentials sign in");
    // A second `dev` on the same port fails with a message instead of a half start.
    let other = tempfile::tempdir().expect("tempdir");
    let second = support::run_dev_to_end(other.path(), dev.port());
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is in use"), "{err}");
    // A second `dev` with the same folder (on a free port) is refused: two servers
    // never share a data folder.
    let port = pocketbase_remote::server::free_port().expect("port");
    let same = support::run_dev_to_end(work.path(), port);
    assert!(!same.status.success());
    let err = String::from_utf8_lossy(&same.stderr);
    assert!(err.contains("already running"), "{err}");
    // Ctrl-C stops it cleanly too, PocketBase included.
    let (status, out) = dev.interrupt();
    assert!(status.success(), "{status}: {out}");
    assert!(
        out.contains("Ctrl-C: PocketBase stopped (exit status: 0)"),
        "{out}"
    );
}

/// A collection with every PocketBase field type, owned by users.
fn every_type_collection() -> serde_json::Value {
    json!({
        "name": "things",
        "type": "base",
        "listRule": "@request.auth.id != '' && author = @request.auth.id",
        "viewRule": "@request.auth.id != '' && author = @request.auth.id",
        "createRule": "@request.auth.id != '' && @request.body.author = @request.auth.id",
        "updateRule": "@request.auth.id != '' && author = @request.auth.id",
        "deleteRule": "@request.auth.id != '' && author = @request.auth.id",
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "body", "type": "editor"},
            {"name": "mail", "type": "email"},
            {"name": "site", "type": "url"},
            {"name": "count", "type": "number", "onlyInt": true},
            {"name": "done", "type": "bool"},
            {"name": "due", "type": "date"},
            {"name": "made", "type": "autodate", "onCreate": true, "onUpdate": false},
            {"name": "kind", "type": "select", "values": ["a", "b"], "maxSelect": 1},
            {"name": "tags", "type": "select", "values": ["x", "y", "z"], "maxSelect": 3},
            {"name": "author", "type": "relation", "collectionId": "_pb_users_auth_", "maxSelect": 1},
            {"name": "readers", "type": "relation", "collectionId": "_pb_users_auth_", "maxSelect": 5},
            {"name": "meta", "type": "json"},
            {"name": "photo", "type": "file", "maxSelect": 1, "maxSize": 1000000},
            {"name": "photos", "type": "file", "maxSelect": 4, "maxSize": 1000000},
            {"name": "place", "type": "geoPoint"},
            {"name": "secret", "type": "password"},
        ],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_a_whole_admin_ui_export_with_every_field_type() {
    // An export as the admin UI writes it: every collection of a server, system ones
    // included, one of them with every field type.
    let source = tempfile::tempdir().expect("tempdir");
    let mut dev = DevProcess::start(
        source.path(),
        &[
            "--admin-email",
            "a@example.com",
            "--admin-password",
            "password-123",
        ],
    );
    let admin = PocketBaseRemote::builder(dev.url())
        .superuser("a@example.com", "password-123")
        .connect()
        .await
        .expect("superuser");
    admin
        .import_collections(&[every_type_collection()])
        .await
        .expect("create the collection");
    let export = admin.export_collections().await.expect("export");
    assert!(export.iter().any(|c| c["name"] == "_superusers"));
    assert!(dev.terminate().0.success());
    let file = source.path().join("pb_schema.json");
    std::fs::write(&file, serde_json::to_string_pretty(&export).expect("json")).expect("write");

    // A fresh project imports it and syncs the app's collection.
    let work = tempfile::tempdir().expect("tempdir");
    let mut dev = DevProcess::start(
        work.path(),
        &[
            "--import",
            file.to_str().expect("utf-8"),
            "--user",
            "u@example.com",
            "--user-password",
            "user-password-1",
        ],
    );
    let out = dev.output();
    assert!(out.contains("synced: things (owner field author)"), "{out}");
    assert!(!out.contains("synced: users"), "{out}");
    let user = PocketBaseRemote::builder(dev.url())
        .user("users", "u@example.com", "user-password-1")
        .connect()
        .await
        .expect("user");
    assert_eq!(user.collections(), ["things"]);
    let me = user.user_id().expect("user id");
    let engine = SyncEngine::new(MemoryStore::new(), user);
    let fields = json!({"title": "t", "count": 3, "done": true, "kind": "a", "tags": ["x", "z"],
        "author": me, "meta": {"k": [1, 2]}, "place": {"lon": 1.5, "lat": 2.5}});
    engine
        .local()
        .put(Record::new(
            "things",
            new_id(),
            fields.as_object().cloned().unwrap_or_default(),
        ))
        .await
        .expect("put");
    let report = engine.sync().await.expect("sync");
    assert_eq!((report.pushed, report.rejected), (1, 0), "{report:?}");
    assert!(dev.terminate().0.success());
}
