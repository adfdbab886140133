//! Writer incarnations of the SQLite store: every open is a new writer, a restored
//! or copied file never reuses a change id and disowns what the original made
//! after the copy; files from before writers existed upgrade in place. Also: the
//! conflict log and the quarantine ids survive a reopen and are never reused.
#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};
use sync_traits::SyncStore;

use rusqlite::Connection;
use serde_json::{json, Value};
use sync_traits::{
    new_id, Ack, ChangeId, Conflict, Fields, LocalStore, Record, RecordId, Rejection, RemoteState,
    Resolution, Version,
};
use tidemark_backends::{Schema, SqliteStore};

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

async fn put(s: &SqliteStore, id: &RecordId, title: &str) -> ChangeId {
    s.put(Record::new("songs", id.clone(), f(json!({"title": title}))))
        .await
        .unwrap();
    s.pending(0, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|p| &p.id == id)
        .unwrap()
        .change_id
}

fn copy_with_wal(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let w = PathBuf::from(format!("{}{suffix}", from.display()));
        if w.exists() {
            std::fs::copy(&w, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

/// A backup taken while the store is open (checkpointed first, or with its -wal
/// copied alongside), opened later: a new writer id, the original's change ids
/// from before the copy are its own, those made after are not, and its own new
/// writes never reuse one of the original's change ids.
#[tokio::test]
async fn a_restored_copy_is_a_new_writer_and_disowns_later_changes() {
    for checkpoint in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let copy = dir.path().join("copy.db");
        let original = SqliteStore::open(&path, Schema::conformance()).unwrap();
        let (a, b) = (new_id(), new_id());
        let before = put(&original, &a, "before the copy").await;
        if checkpoint {
            original
                .with_connection(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
                .unwrap()
                .unwrap();
            std::fs::copy(&path, &copy).unwrap();
        } else {
            copy_with_wal(&path, &copy);
        }
        let after_b = put(&original, &b, "after the copy").await;
        let after_a = put(&original, &a, "after the copy too").await;
        assert!(after_b.n > before.n && after_a.n > after_b.n);

        let restored = SqliteStore::open(&copy, Schema::conformance()).unwrap();
        let me = restored.client_id().await.unwrap();
        assert_ne!(me, original.client_id().await.unwrap(), "a new writer id");
        assert!(
            restored.made_here(&before).await.unwrap(),
            "made before the copy"
        );
        assert!(
            !restored.made_here(&after_b).await.unwrap(),
            "made by the original after the copy"
        );
        assert!(!restored.made_here(&after_a).await.unwrap());
        // Its outbox is the one of the copy point, with the original change id.
        let p = restored.pending(0, 10).await.unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].change_id, before,
            "a restored entry keeps its change id"
        );
        // Its own writes use its own writer id: never one of the original's ids,
        // though its counter went on from the same point.
        let mine = put(&restored, &b, "written on the copy").await;
        assert_eq!(mine.client, me);
        assert_ne!(mine, after_b);
        assert_ne!(mine, after_a);
        assert!(restored.made_here(&mine).await.unwrap());
        assert!(!original.made_here(&mine).await.unwrap());
        assert!(original.made_here(&after_a).await.unwrap());
        assert!(original.made_here(&before).await.unwrap());
    }
}

/// Reopening the same file takes a new writer id; entries written under the old
/// one keep their change ids (so a remote that applied them recognises them) and
/// stay the store's own; acking them by that id settles them.
#[tokio::test]
async fn a_reopen_is_a_new_writer_that_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let a = new_id();
    let (first_writer, old) = {
        let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
        (s.client_id().await.unwrap(), put(&s, &a, "x").await)
    };
    let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
    assert_ne!(s.client_id().await.unwrap(), first_writer);
    assert!(s.made_here(&old).await.unwrap());
    assert_eq!(s.pending(0, 10).await.unwrap()[0].change_id, old);
    // A write now coalesces into the entry under the new writer id.
    let newer = put(&s, &a, "y").await;
    assert_eq!(newer.client, s.client_id().await.unwrap());
    assert_eq!(newer.n, old.n + 1, "the counter goes on");
    assert!(s.made_here(&old).await.unwrap() && s.made_here(&newer).await.unwrap());
    s.ack(vec![Ack::Applied {
        collection: "songs".into(),
        id: a.clone(),
        change_id: newer,
        version: Version(3),
    }])
    .await
    .unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 0);
}

/// A store from before writer incarnations (a single `client` id in the metadata,
/// no writers, conflicts or parked tables) opens in place: its client id becomes
/// the first writer (counter 1 on), its entries keep their change ids, and the
/// open takes a new writer id.
#[tokio::test]
async fn a_single_client_store_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let (a, b) = (new_id(), new_id());
    let (ca, cb) = {
        let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
        (put(&s, &a, "a").await, put(&s, &b, "b").await)
    };
    assert_eq!(ca.client, cb.client);
    // Turn it into the old layout: the one client id is the meta value.
    let old_client = ca.client.clone();
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        r#"DROP TABLE "_tidemark_writers"; DROP TABLE "_tidemark_conflicts";
           DROP TABLE "_tidemark_parked";"#,
    )
    .unwrap();
    c.execute(
        r#"UPDATE "_tidemark_meta" SET "value" = ?1 WHERE "key" = 'client'"#,
        [old_client.as_str()],
    )
    .unwrap();
    drop(c);

    let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
    assert_ne!(s.client_id().await.unwrap(), old_client);
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(
        p.iter().map(|p| p.change_id.clone()).collect::<Vec<_>>(),
        vec![ca.clone(), cb.clone()],
        "entries keep the old client id"
    );
    assert!(s.made_here(&ca).await.unwrap() && s.made_here(&cb).await.unwrap());
    let never = ChangeId {
        client: old_client,
        n: cb.n + 1,
    };
    assert!(
        !s.made_here(&never).await.unwrap(),
        "not issued by the old client"
    );
    assert!(
        s.conflicts().await.unwrap().is_empty(),
        "the log exists now"
    );
}

/// The conflict log and the quarantine survive a reopen, and their ids are never
/// handed out again after a clear or discard.
#[tokio::test]
async fn conflict_and_quarantine_ids_survive_reopen_and_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (a, b) = (new_id(), new_id());
    let rejection = Rejection {
        message: "no".into(),
        fields: Default::default(),
    };
    let (logged, quarantined) = {
        let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
        put(&s, &a, "a").await;
        put(&s, &b, "b").await;
        let p = s.pending(0, 10).await.unwrap();
        let conflict = |i: usize| Conflict {
            local: p[i].clone(),
            server: RemoteState {
                version: Version(5),
                fields: None,
                change_id: None,
            },
            resolution: Resolution::KeepLocal,
        };
        s.ack(vec![
            Ack::Conflict(conflict(0)),
            Ack::Conflict(conflict(1)),
            Ack::Quarantine {
                change: p[0].clone(),
                rejection: rejection.clone(),
                server: None,
            },
            Ack::Quarantine {
                change: p[1].clone(),
                rejection: rejection.clone(),
                server: None,
            },
        ])
        .await
        .unwrap();
        let log = s.conflicts().await.unwrap();
        assert_eq!(s.clear_conflicts(vec![log[1].id]).await.unwrap(), 1);
        let q = s.quarantined().await.unwrap();
        assert!(s.discard_quarantined(q[1].id).await.unwrap());
        (log, q)
    };
    let s = SqliteStore::open(&path, Schema::conformance()).unwrap();
    assert_eq!(s.conflicts().await.unwrap(), vec![logged[0].clone()]);
    assert_eq!(s.quarantined().await.unwrap(), vec![quarantined[0].clone()]);
    put(&s, &a, "again").await;
    let p = s.pending(0, 10).await.unwrap();
    s.ack(vec![
        Ack::Conflict(Conflict {
            local: p[0].clone(),
            server: RemoteState {
                version: Version(6),
                fields: None,
                change_id: None,
            },
            resolution: Resolution::TakeServer,
        }),
        Ack::Quarantine {
            change: p[0].clone(),
            rejection,
            server: None,
        },
    ])
    .await
    .unwrap();
    let log = s.conflicts().await.unwrap();
    assert!(
        log[1].id > logged[1].id,
        "a cleared conflict id is not reused"
    );
    let q = s.quarantined().await.unwrap();
    assert!(
        q[1].id > quarantined[1].id,
        "a discarded quarantine id is not reused"
    );
    // Retrying the first quarantined change writes it again.
    assert!(s.retry_quarantined(q[0].id).await.unwrap());
    assert_eq!(
        s.get("songs", &a).await.unwrap().unwrap().fields,
        f(json!({"title": "a"}))
    );
}

/// Plain-SQL writes to a restored backup before any store opens it: the triggers
/// continue the backup's counter, which the original also went on with after the
/// backup (its own plain-SQL writes, pushed). The copy, opened and synced, must
/// never push a change id the original pushed for other content, so nothing is
/// acked that the server did not apply: each of the copy's writes ends on the
/// server or in its conflict log.
#[tokio::test]
async fn plain_sql_writes_to_a_restored_copy_reuse_no_change_id() {
    use sync_traits::testkit::FakeRemote;
    use sync_traits::SyncEngine;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let copy = dir.path().join("copy.db");
    let server = FakeRemote::new();
    let (a, b) = (new_id(), new_id());
    let title = |id: &RecordId| {
        server
            .snapshot()
            .into_iter()
            .find(|r| &r.id == id)
            .and_then(|r| r.fields.get("title").cloned())
    };
    {
        let original = SqliteStore::open(&path, Schema::conformance()).unwrap();
        put(&original, &a, "first").await;
        let engine = SyncEngine::new(original, server.clone());
        engine.sync().await.unwrap();
        // A backup of the synced file.
        engine
            .local()
            .with_connection(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
            .unwrap()
            .unwrap();
        std::fs::copy(&path, &copy).unwrap();
        // The original goes on: the app's own connection edits a and creates b.
        let c = Connection::open(&path).unwrap();
        c.execute(
            r#"UPDATE "songs" SET "title" = 'original edit' WHERE "id" = ?1"#,
            [a.as_str()],
        )
        .unwrap();
        c.execute(
            r#"INSERT INTO "songs" ("id", "title") VALUES (?1, 'original b')"#,
            [b.as_str()],
        )
        .unwrap();
        drop(c);
        let r = engine.sync().await.unwrap();
        assert_eq!(r.pushed, 2);
    }
    assert_eq!(title(&a), Some(json!("original edit")));
    let pushed: Vec<ChangeId> = server.applied_change_ids().into_keys().collect();

    // The restored copy: plain-SQL writes before any store opens it.
    let c = Connection::open(&copy).unwrap();
    c.execute(
        r#"UPDATE "songs" SET "title" = 'copy edit' WHERE "id" = ?1"#,
        [a.as_str()],
    )
    .unwrap();
    c.execute(
        r#"INSERT INTO "songs" ("id", "title") VALUES (?1, 'copy b')"#,
        [b.as_str()],
    )
    .unwrap();
    drop(c);
    let restored = SqliteStore::open(&copy, Schema::conformance()).unwrap();
    let me = restored.client_id().await.unwrap();
    for p in restored.pending(0, 10).await.unwrap() {
        assert!(
            !pushed.contains(&p.change_id),
            "the copy's entry for {} reuses {} which the original pushed",
            p.id,
            p.change_id
        );
        assert_eq!(p.change_id.client, me, "stamped by the open that found it");
    }
    let engine = SyncEngine::new(restored, server.clone());
    engine.sync().await.unwrap();
    let logged: Vec<RecordId> = engine
        .local()
        .conflicts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conflict.local.id)
        .collect();
    for (id, mine) in [(&a, "copy edit"), (&b, "copy b")] {
        assert!(
            title(id) == Some(json!(mine)) || logged.contains(id),
            "the copy's write {mine:?} is neither on the server ({:?}) nor reported",
            title(id)
        );
    }
    assert!(engine.local().pending(0, 10).await.unwrap().is_empty());
}
