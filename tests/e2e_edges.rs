//! The rules at the edges against a real PocketBase with real SQLite files and sled
//! databases, as an application meets them: a phone restored from a backup, a store
//! file copied to a second device, collections the remote does not sync or the app
//! keeps on the device, a collection and a value the app's schema does not expect,
//! conflicts nobody listens for, fields a write leaves out and values the server
//! coerces.

use std::path::Path;
use sync_traits::SyncStore;

use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use serde_json::{json, Value};
use sync_traits::{
    new_id, ClientWins, Fields, LocalStore, Op, PullMode, Record, RecordId, RemoteStore,
    RetryPolicy, ServerWins, SyncConfig, SyncEngine, SyncEvent, Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SledStore, SqliteStore};

fn song(title: &str, owner: &RecordId) -> Fields {
    json!({"title": title, "artist": "x", "order": 1, "owner": owner.as_str()})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn fast() -> SyncConfig {
    SyncConfig {
        retry: RetryPolicy::immediate(2),
        ..SyncConfig::default()
    }
}

/// A record as the remote's caller sees it on the server.
async fn on_server(r: &PocketBaseRemote, collection: &str, id: &RecordId) -> Option<Fields> {
    r.fetch(collection, id)
        .await
        .unwrap()
        .and_then(|s| s.fields)
}

async fn local(s: &dyn LocalStore, collection: &str, id: &RecordId) -> Option<Fields> {
    s.get(collection, id).await.unwrap().map(|r| r.fields)
}

/// Copies an SQLite store file (after the store checkpointed and closed) as a
/// backup tool or a device migration would.
fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for ext in ["-wal", "-shm"] {
        let side = format!("{}{ext}", from.display());
        if Path::new(&side).exists() {
            std::fs::copy(&side, format!("{}{ext}", to.display())).unwrap();
        }
    }
}

/// The case: a phone restored from a backup makes a new edit. Before, the
/// server's idempotency memory took the rolled-back counter for an old change and the
/// engine acked the edit as pushed while the server kept the old title. Now the edit
/// lands (client wins) or is a reported, persisted conflict (server wins); never
/// acked unapplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_phone_never_loses_an_edit() {
    let srv = TestServer::start();
    let owner = srv.create_user("restore@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let (phone_path, backup_path) = (dir.path().join("phone.db"), dir.path().join("backup.db"));
    let x = new_id();
    {
        let phone = SyncEngine::new(
            SqliteStore::open(&phone_path, Schema::sample()).unwrap(),
            srv.user("restore@t.io").await,
        )
        .with_config(fast());
        phone
            .local()
            .put(Record::new("songs", x.clone(), song("v1", &owner)))
            .await
            .unwrap();
        phone.sync().await.unwrap();
    }
    copy_file(&phone_path, &backup_path); // the backup
    {
        let phone = SyncEngine::new(
            SqliteStore::open(&phone_path, Schema::sample()).unwrap(),
            srv.user("restore@t.io").await,
        )
        .with_config(fast());
        for t in ["v2", "v3"] {
            phone
                .local()
                .put(Record::new("songs", x.clone(), song(t, &owner)))
                .await
                .unwrap();
            assert_eq!(phone.sync().await.unwrap().pushed, 1);
        }
    }
    let remote = srv.user("restore@t.io").await;
    assert_eq!(
        on_server(&remote, "songs", &x).await.unwrap()["title"],
        "v3"
    );

    for (policy, path) in [("server", "r1.db"), ("client", "r2.db")] {
        let restored_path = dir.path().join(path);
        copy_file(&backup_path, &restored_path);
        let store = SqliteStore::open(&restored_path, Schema::sample()).unwrap();
        let e = SyncEngine::new(store, srv.user("restore@t.io").await).with_config(fast());
        let e = if policy == "server" {
            e.with_policy(ServerWins)
        } else {
            e.with_policy(ClientWins)
        };
        let edit = format!("after restore ({policy})");
        e.local()
            .put(Record::new("songs", x.clone(), song(&edit, &owner)))
            .await
            .unwrap();
        let report = e.sync().await.unwrap();
        let mine = local(e.local(), "songs", &x).await.unwrap();
        let theirs = on_server(&remote, "songs", &x).await.unwrap();
        assert_eq!(
            mine["title"], theirs["title"],
            "{policy} wins: the restored phone holds what the server holds ({report:?})"
        );
        if policy == "client" {
            assert_eq!(theirs["title"], json!(edit), "the edit landed");
        } else {
            assert_eq!(
                report.conflicts, 1,
                "the lost edit was reported: {report:?}"
            );
            let log = e.local().conflicts().await.unwrap();
            assert_eq!(log.len(), 1, "and persisted");
            assert!(
                matches!(&log[0].conflict.local.op, Op::Upsert(f) if f["title"] == json!(edit)),
                "with its data: {log:?}"
            );
        }
    }
}

/// A store file copied to a second device: both write the same records, round
/// after round, and no write is lost or acked unapplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_copied_to_a_second_device_loses_no_write() {
    let srv = TestServer::start();
    let owner = srv.create_user("clone@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let (one_path, two_path) = (dir.path().join("one.db"), dir.path().join("two.db"));
    let ids: Vec<RecordId> = (0..3).map(|_| new_id()).collect();
    {
        let one = SqliteStore::open(&one_path, Schema::sample()).unwrap();
        for id in &ids {
            one.put(Record::new("songs", id.clone(), song("start", &owner)))
                .await
                .unwrap();
        }
        SyncEngine::new(one, srv.user("clone@t.io").await)
            .sync()
            .await
            .unwrap();
    }
    copy_file(&one_path, &two_path);
    let one = SyncEngine::new(
        SqliteStore::open(&one_path, Schema::sample()).unwrap(),
        srv.user("clone@t.io").await,
    )
    .with_config(fast())
    .with_policy(ServerWins);
    let two = SyncEngine::new(
        SqliteStore::open(&two_path, Schema::sample()).unwrap(),
        srv.user("clone@t.io").await,
    )
    .with_config(fast())
    .with_policy(ServerWins);
    assert_ne!(
        one.local().client_id().await.unwrap(),
        two.local().client_id().await.unwrap()
    );
    let remote = srv.user("clone@t.io").await;
    for round in 1..=3 {
        for (i, id) in ids.iter().enumerate() {
            let e = if (i + round) % 2 == 0 { &one } else { &two };
            e.sync().await.unwrap(); // up to date first, as an app would be
            let title = format!("round {round} record {i}");
            e.local()
                .put(Record::new("songs", id.clone(), song(&title, &owner)))
                .await
                .unwrap();
            let r = e.sync().await.unwrap();
            assert_eq!((r.pushed, r.conflicts), (1, 0), "round {round}: {r:?}");
            assert_eq!(
                on_server(&remote, "songs", id).await.unwrap()["title"],
                json!(title),
                "round {round}: the write is on the server"
            );
        }
    }
    one.sync().await.unwrap();
    two.sync().await.unwrap();
    for id in &ids {
        assert_eq!(
            local(one.local(), "songs", id).await,
            local(two.local(), "songs", id).await
        );
    }
}

/// A remote that syncs only `songs` (`builder.collections(["songs"])`) and an app
/// that also keeps `friends` and a local-only `drafts`: nothing of them is pushed,
/// rejected, quarantined or deleted, through a first sync, a resync and a reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_the_remote_does_not_sync_are_never_touched() {
    let srv = TestServer::start();
    let owner = srv.create_user("local@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let schema =
        Schema::sample().collection(CollectionSchema::new("drafts").text("title").local_only());
    let remote = PocketBaseRemote::builder(srv.url())
        .user(
            "users",
            "local@t.io",
            pocketbase_remote::harness::USER_PASSWORD,
        )
        .collections(["songs"])
        .connect()
        .await
        .unwrap();
    let e = SyncEngine::new(
        SqliteStore::open(dir.path().join("app.db"), schema).unwrap(),
        remote,
    )
    .with_config(fast());
    let (s, f, d) = (new_id(), new_id(), new_id());
    e.local()
        .put(Record::new("songs", s.clone(), song("synced", &owner)))
        .await
        .unwrap();
    let friend = json!({"name": "kept here", "owner": owner.as_str()});
    e.local()
        .put(Record::new(
            "friends",
            f.clone(),
            friend.as_object().cloned().unwrap(),
        ))
        .await
        .unwrap();
    let draft = json!({"title": "mine only"});
    e.local()
        .put(Record::new(
            "drafts",
            d.clone(),
            draft.as_object().cloned().unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(
        e.local().pending_count().await.unwrap(),
        2,
        "drafts make no outbox entry"
    );
    let r = e.sync().await.unwrap();
    assert_eq!((r.pushed, r.rejected, r.unsynced), (1, 0, 1), "{r:?}");
    e.reconcile().await.unwrap();
    assert!(e.local().quarantined().await.unwrap().is_empty());
    assert!(
        local(e.local(), "friends", &f).await.is_some(),
        "never deleted"
    );
    assert!(
        local(e.local(), "drafts", &d).await.is_some(),
        "never deleted"
    );
    let admin = srv.superuser().await;
    assert!(
        on_server(&admin, "friends", &f).await.is_none(),
        "never pushed"
    );
}

/// The server syncs `friends`, which the app's schema does not declare, and holds
/// an `order` of another type than the app declares: the sync goes on, every song
/// arrives, the odd value is kept and reported, and the friends arrive once a
/// later version of the app declares them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_collection_and_value_never_stop_the_sync() {
    let srv = TestServer::start();
    let owner = srv.create_user("schema@t.io").await;
    let writer = SyncEngine::new(
        SledStore::open_temporary(Schema::sample()).unwrap(),
        srv.user("schema@t.io").await,
    );
    let songs: Vec<RecordId> = (0..5).map(|_| new_id()).collect();
    for id in &songs {
        writer
            .local()
            .put(Record::new("songs", id.clone(), song("s", &owner)))
            .await
            .unwrap();
    }
    let fr = new_id();
    let friend = json!({"name": "bo", "owner": owner.as_str()});
    writer
        .local()
        .put(Record::new(
            "friends",
            fr.clone(),
            friend.as_object().cloned().unwrap(),
        ))
        .await
        .unwrap();
    writer.sync().await.unwrap();

    // The app: songs only, and `order` declared as text.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let app_schema = Schema::new().collection(
        CollectionSchema::new("songs")
            .text("title")
            .text("artist")
            .text("order")
            .relation("owner"),
    );
    let app = SyncEngine::new(
        SqliteStore::open(&path, app_schema.clone()).unwrap(),
        srv.user("schema@t.io").await,
    )
    .with_config(fast());
    let mut events = app.subscribe();
    let r = app
        .sync()
        .await
        .expect("nothing the server holds stops a sync");
    assert_eq!(r.skipped, 1, "the friend is skipped: {r:?}");
    assert_eq!(r.mistyped, 5, "every song's order is reported: {r:?}");
    for id in &songs {
        let f = local(app.local(), "songs", id)
            .await
            .expect("every song arrived");
        assert_eq!(f["order"], json!(1), "kept exactly as the server sent it");
    }
    let reported = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, SyncEvent::Mistyped(m) if m.field == "order"))
        .count();
    assert_eq!(reported, 5);
    // The app edits a song without touching `order`: accepted, and synced.
    let mut f = local(app.local(), "songs", &songs[0]).await.unwrap();
    f.insert("title".into(), json!("edited"));
    app.local()
        .put(Record::new("songs", songs[0].clone(), f))
        .await
        .expect("an unchanged odd value does not refuse the app's write");
    assert_eq!(app.sync().await.unwrap().pushed, 1);
    drop(app);

    // A later app version declares friends.
    let app = SyncEngine::new(
        SqliteStore::open(
            &path,
            app_schema.collection(
                CollectionSchema::new("friends")
                    .text("name")
                    .relation("owner"),
            ),
        )
        .unwrap(),
        srv.user("schema@t.io").await,
    );
    assert_eq!(
        local(app.local(), "friends", &fr)
            .await
            .map(|f| f["name"].clone()),
        Some(json!("bo")),
        "what was skipped arrives when declared, not lost behind the watermark"
    );
    app.sync().await.unwrap();
}

/// Under ServerWins with nobody listening, the losing edit is kept in the store's
/// conflict log, and survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_nobody_listens_for_is_kept() {
    let srv = TestServer::start();
    let owner = srv.create_user("conflict@t.io").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let a = SyncEngine::new(
        SledStore::open_temporary(Schema::sample()).unwrap(),
        srv.user("conflict@t.io").await,
    );
    let b = SyncEngine::new(
        SqliteStore::open(&path, Schema::sample()).unwrap(),
        srv.user("conflict@t.io").await,
    )
    .with_policy(ServerWins);
    let x = new_id();
    a.local()
        .put(Record::new("songs", x.clone(), song("v1", &owner)))
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.local()
        .put(Record::new("songs", x.clone(), song("a's", &owner)))
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.local()
        .put(Record::new("songs", x.clone(), song("b's", &owner)))
        .await
        .unwrap();
    assert_eq!(b.sync().await.unwrap().conflicts, 1);
    drop(b);
    let reopened = SqliteStore::open(&path, Schema::sample()).unwrap();
    let log = reopened.conflicts().await.unwrap();
    assert_eq!(log.len(), 1);
    assert!(matches!(&log[0].conflict.local.op, Op::Upsert(f) if f["title"] == "b's"));
    assert_eq!(
        log[0].conflict.server.fields.as_ref().unwrap()["title"],
        "a's"
    );
    assert_eq!(local(&reopened, "songs", &x).await.unwrap()["title"], "a's");
}

/// PocketBase keeps the fields a write leaves out (a push is a PATCH) and coerces
/// values to the field's type. The writer gets the server's copy back, so after a
/// quiet sync both devices hold exactly what the server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_fields_and_coerced_values_converge() {
    let srv = TestServer::start();
    let owner = srv.create_user("coerce@t.io").await;
    // `order` may hold anything locally; on the server it is a number.
    let loose = Schema::new().collection(
        CollectionSchema::new("songs")
            .text("title")
            .text("artist")
            .json("order")
            .relation("owner"),
    );
    let a = SyncEngine::new(
        SqliteStore::open_in_memory(loose.clone()).unwrap(),
        srv.user("coerce@t.io").await,
    );
    let b = SyncEngine::new(
        SledStore::open_temporary(loose).unwrap(),
        srv.user("coerce@t.io").await,
    );
    let cases: Vec<(RecordId, Value)> = [
        json!("12"),
        json!(true),
        json!(9007199254740993u64),
        json!("abc"),
    ]
    .into_iter()
    .map(|v| (new_id(), v))
    .collect();
    for (id, v) in &cases {
        let mut f = song("t", &owner);
        f.insert("order".into(), v.clone());
        a.local()
            .put(Record::new("songs", id.clone(), f))
            .await
            .unwrap();
    }
    // And a put that leaves `artist` out of a record the server already has.
    let gap = new_id();
    a.local()
        .put(Record::new("songs", gap.clone(), song("full", &owner)))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let mut f = song("no artist", &owner);
    f.remove("artist");
    a.local()
        .put(Record::new("songs", gap.clone(), f))
        .await
        .unwrap();
    for _ in 0..2 {
        a.sync().await.unwrap();
        b.sync().await.unwrap();
    }
    let remote = srv.user("coerce@t.io").await;
    let mut wm = Watermark(0);
    let mut server = Vec::new();
    loop {
        let p = remote.pull(wm, 1000, PullMode::Resync).await.unwrap();
        server.extend(p.changes.into_iter().filter(|c| c.collection == "songs"));
        wm = p.watermark;
        if !p.more {
            break;
        }
    }
    assert_eq!(server.len(), cases.len() + 1);
    for c in &server {
        let want = c.state.fields.clone();
        assert_eq!(
            local(a.local(), "songs", &c.id).await,
            want,
            "the writer holds the server's copy"
        );
        assert_eq!(
            local(b.local(), "songs", &c.id).await,
            want,
            "and so does the other device"
        );
    }
    assert_eq!(
        on_server(&remote, "songs", &gap).await.unwrap()["artist"],
        "x",
        "the server kept the field the write left out, and so do both devices"
    );
}
