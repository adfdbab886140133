//! `SqliteStore::inspect` and `SledStore::inspect`: what a store holds, read
//! without changing a byte of it.

use std::path::{Path, PathBuf};
use sync_traits::SyncStore;

use serde_json::json;
use sync_traits::{LocalStore, Record};
use tidemark_backends::{CollectionSchema, Schema, SledStore, SqliteStore};

fn schema() -> Schema {
    Schema::new()
        .collection(CollectionSchema::new("songs").text("title"))
        .collection(CollectionSchema::new("drafts").text("body").local_only())
}

fn song(title: &str) -> Record {
    Record::new(
        "songs",
        sync_traits::new_id(),
        json!({ "title": title }).as_object().cloned().unwrap(),
    )
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn names(s: &[(PathBuf, Vec<u8>)]) -> Vec<&PathBuf> {
    s.iter().map(|(p, _)| p).collect()
}

#[tokio::test]
async fn sqlite_inspect_reports_the_store_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite");
    {
        let s = SqliteStore::open(&path, schema()).unwrap();
        s.put(song("a")).await.unwrap();
        s.put(song("b")).await.unwrap();
    }
    let before = snapshot(dir.path());
    let st = SqliteStore::inspect(&path).unwrap();
    let after = snapshot(dir.path());
    assert!(
        before == after,
        "files changed: {:?} -> {:?}",
        names(&before),
        names(&after)
    );
    let songs = st.collections.iter().find(|c| c.name == "songs").unwrap();
    assert_eq!((songs.records, songs.local_only), (2, false));
    let drafts = st.collections.iter().find(|c| c.name == "drafts").unwrap();
    assert!(drafts.local_only);
    assert_eq!(st.outbox, 2);
    assert_eq!(st.state.watermark.0, 0);
    assert!(st.quarantined.is_empty() && st.conflicts.is_empty());
    assert!(st.writer.is_some());

    // While the store is open elsewhere, writes still in its WAL are seen.
    let s = SqliteStore::open(&path, schema()).unwrap();
    s.put(song("c")).await.unwrap();
    let st = SqliteStore::inspect(&path).unwrap();
    assert_eq!(st.outbox, 3);
    assert_eq!(st.writer, Some(s.client_id().await.unwrap()));
}

#[test]
fn sqlite_inspect_creates_no_file_and_refuses_what_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sqlite");
    assert!(SqliteStore::inspect(&missing).is_err());
    assert!(!missing.exists());
    let text = dir.path().join("text.sqlite");
    std::fs::write(&text, b"plain text").unwrap();
    assert!(SqliteStore::inspect(&text).is_err());
    assert_eq!(std::fs::read(&text).unwrap(), b"plain text");
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    let e = SqliteStore::inspect(&empty).unwrap_err();
    assert!(matches!(e, sync_traits::StoreError::Corrupt(_)), "{e:?}");
    assert_eq!(std::fs::read(&empty).unwrap().len(), 0);
}

#[tokio::test]
async fn sled_inspect_reads_a_copy_and_leaves_the_directory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sled");
    let writer = {
        let p = path.clone();
        let s = tokio::task::spawn_blocking(move || SledStore::open(p, schema()))
            .await
            .unwrap()
            .unwrap();
        s.put(song("a")).await.unwrap();
        s.client_id().await.unwrap()
    };
    let before = snapshot(&path);
    let st = SledStore::inspect(&path).unwrap();
    let after = snapshot(&path);
    assert!(
        before == after,
        "files changed: {:?} -> {:?}",
        names(&before),
        names(&after)
    );
    let songs = st.collections.iter().find(|c| c.name == "songs").unwrap();
    assert_eq!(songs.records, 1);
    assert_eq!(st.outbox, 1);
    assert_eq!(
        st.writer,
        Some(writer),
        "the store's own newest writer, not the copy's"
    );
    assert!(SledStore::inspect(dir.path().join("nothing")).is_err());
}
