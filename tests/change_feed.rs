//! The change feed end to end (issue 18, "see what changed"): a UI-like task
//! watching one collection, through the engine, on all three stores.
//!
//! The task keeps a view of `songs` that it refreshes only from the feed, by
//! re-reading each id a change names. While it runs, the engine makes a first
//! sync of 10 000 songs and 2 000 friends from `FakeRemote` and the app writes
//! locally at the same time; then an incremental pull with server updates and
//! deletions, conflicts the policy resolves (server wins), and a reconcile that
//! removes records which vanished from the server without a tombstone. At the end
//! the view must equal the store's `songs`, the task must have heard of every
//! song id that was written, and of no friend. A second watcher that never reads
//! until the end must hold every changed song too: nothing is dropped for lag.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sync_traits::testkit::{FakeRemote, MemoryStore};
use sync_traits::{
    async_trait, new_id, ChangeCause, ChangeKind, Fields, LocalStore, Page, PullMode, PushChange,
    PushOutcome, Record, RecordId, RemoteError, RemoteState, RemoteStore, ServerWins, SyncEngine,
    Watermark,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};
use tokio::sync::{oneshot, Notify};

const SONGS: &str = "songs";
const FRIENDS: &str = "friends";
const FIRST_SONGS: usize = 10_000;
const FIRST_FRIENDS: usize = 2_000;
/// Bound on one scenario (a hang guard, not a speed check).
const LIMIT: Duration = Duration::from_secs(300);

fn song(title: &str, order: i64) -> Fields {
    json!({"title": title, "artist": "someone", "order": order})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn friend(name: &str) -> Fields {
    json!({ "name": name })
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// What the UI task ends with.
struct Ui {
    view: BTreeMap<RecordId, Fields>,
    heard: BTreeSet<RecordId>,
    causes: BTreeSet<(ChangeKind, ChangeCause)>,
    foreign: usize,
}

/// The UI task: refreshes its view of `songs` from the feed only, until `done`.
fn spawn_ui<S: LocalStore + 'static>(
    store: Arc<S>,
    mut done: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Ui> {
    // Created before the task starts (and before the sync): then the initial
    // read below misses nothing.
    let mut watcher = store.changes(SONGS).expect("the store reports changes");
    tokio::spawn(async move {
        let mut ui = Ui {
            view: BTreeMap::new(),
            heard: BTreeSet::new(),
            causes: BTreeSet::new(),
            foreign: 0,
        };
        for r in store.list(SONGS).await.expect("list") {
            ui.view.insert(r.id, r.fields);
        }
        let mut finishing = false;
        loop {
            let changes = if finishing {
                // Everything published before `done` was sent is already here.
                let c = watcher.try_changed();
                if c.is_empty() {
                    return ui;
                }
                c
            } else {
                tokio::select! {
                    c = watcher.changed() => c.expect("the store is open"),
                    _ = &mut done => { finishing = true; continue; }
                }
            };
            for c in changes {
                if &*c.collection != SONGS {
                    ui.foreign += 1;
                    continue;
                }
                ui.causes.insert((c.kind, c.cause));
                ui.heard.insert(c.id.clone());
                match store.get(SONGS, &c.id).await.expect("get") {
                    Some(r) => {
                        ui.view.insert(c.id, r.fields);
                    }
                    None => {
                        ui.view.remove(&c.id);
                    }
                }
            }
        }
    })
}

async fn scenario<S: LocalStore + 'static>(name: &str, store: S) {
    let store = Arc::new(store);
    let server = FakeRemote::new();
    let song_ids: Vec<RecordId> = (0..FIRST_SONGS).map(|_| new_id()).collect();
    for (n, id) in song_ids.iter().enumerate() {
        server.server_write(SONGS, id, Some(song("server", n as i64)));
    }
    for n in 0..FIRST_FRIENDS {
        server.server_write(FRIENDS, &new_id(), Some(friend(&format!("f{n}"))));
    }
    let engine = SyncEngine::new(store.clone(), server.clone()).with_policy(ServerWins);
    let mut lazy = store.changes(SONGS).expect("a second watcher");
    let mut friends_watcher = store.changes(FRIENDS).expect("a friends watcher");
    let (done_tx, done_rx) = oneshot::channel();
    let ui = spawn_ui(store.clone(), done_rx);

    // Every song id something wrote (the server, the app): the task must hear of
    // each.
    let mut written: BTreeSet<RecordId> = song_ids.iter().cloned().collect();

    // 1. The first sync, with the app writing at the same time: new songs,
    //    updates of some songs the sync brings, deletes, and friends.
    let local_new: Vec<RecordId> = (0..300).map(|_| new_id()).collect();
    written.extend(local_new.iter().cloned());
    let writer = {
        let store = store.clone();
        let local_new = local_new.clone();
        let updates: Vec<RecordId> = song_ids[..200].to_vec();
        tokio::spawn(async move {
            for (n, id) in local_new.iter().enumerate() {
                store
                    .put(Record::new(SONGS, id.clone(), song("local", n as i64)))
                    .await
                    .expect("put");
                store
                    .put(Record::new(FRIENDS, new_id(), friend("local")))
                    .await
                    .expect("put friend");
                if n % 3 == 0 {
                    store
                        .delete(SONGS, &local_new[n / 3])
                        .await
                        .expect("delete");
                }
                if let Some(id) = updates.get(n) {
                    // May land before or after the sync applies the record.
                    store
                        .put(Record::new(SONGS, id.clone(), song("local update", 0)))
                        .await
                        .expect("update");
                }
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    engine.sync().await.expect("first sync");
    writer.await.expect("writer task");
    engine.sync().await.expect("push the local writes");

    // 2. An incremental pull: server updates, creations and deletions.
    for id in &song_ids[1000..1500] {
        server.server_write(SONGS, id, Some(song("server 2", 2)));
    }
    for id in &song_ids[1500..1600] {
        server.server_write(SONGS, id, None);
    }
    for _ in 0..500 {
        let id = new_id();
        server.server_write(SONGS, &id, Some(song("server new", 3)));
        written.insert(id);
    }
    engine.sync().await.expect("incremental sync");

    // 3. Conflicts: the app and the server write the same records; server wins.
    for id in &song_ids[2000..2050] {
        store
            .put(Record::new(SONGS, id.clone(), song("mine", 4)))
            .await
            .expect("put");
        server.server_write(SONGS, id, Some(song("theirs", 4)));
    }
    engine.sync().await.expect("sync with conflicts");

    // 4. Records vanish from the server without a tombstone: reconcile resyncs.
    for id in &song_ids[3000..3020] {
        server.raw_delete(SONGS, id);
    }
    engine.reconcile().await.expect("reconcile");

    done_tx.send(()).expect("the UI task is running");
    let ui = ui.await.expect("the UI task");

    let actual: BTreeMap<RecordId, Fields> = store
        .list(SONGS)
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect();
    assert_eq!(
        ui.foreign, 0,
        "{name}: the songs watcher heard of another collection"
    );
    assert_eq!(
        ui.view.len(),
        actual.len(),
        "{name}: the view refreshed from the feed has as many songs as the store"
    );
    assert!(
        ui.view == actual,
        "{name}: the view equals the store's songs"
    );
    let unheard: Vec<&RecordId> = written.difference(&ui.heard).collect();
    assert!(
        unheard.is_empty(),
        "{name}: {} written songs never reported, e.g. {:?}",
        unheard.len(),
        unheard.first()
    );
    // The causes no later change of the scenario overwrites (a watcher reports a
    // record's latest change: a conflict's settlement or a local write is
    // followed by the pull of the server's copy, so whether the task saw them
    // depends on when it read; the conformance cases check those exactly).
    for expected in [
        (ChangeKind::Upserted, ChangeCause::Pull),
        (ChangeKind::Removed, ChangeCause::Pull),
        (ChangeKind::Removed, ChangeCause::Local),
        (ChangeKind::Removed, ChangeCause::Resync),
    ] {
        assert!(
            ui.causes.contains(&expected),
            "{name}: no {expected:?} reported; got {:?}",
            ui.causes
        );
    }
    // The lazy watcher read nothing until now, and holds every song changed.
    let all = lazy.try_changed();
    let lazy_ids: BTreeSet<RecordId> = all.iter().map(|c| c.id.clone()).collect();
    assert_eq!(lazy_ids.len(), all.len(), "{name}: one entry per record");
    assert!(
        all.iter().all(|c| &*c.collection == SONGS),
        "{name}: only songs"
    );
    assert_eq!(
        lazy_ids, ui.heard,
        "{name}: a watcher that never read holds every change the reading one saw"
    );
    for c in &all {
        let present = actual.contains_key(&c.id);
        assert_eq!(
            c.kind == ChangeKind::Upserted,
            present,
            "{name}: the latest kind of {} matches the store",
            c.id
        );
    }
    let friends = friends_watcher.try_changed();
    assert!(
        friends.len() >= FIRST_FRIENDS + 300,
        "{name}: the friends watcher saw its own collection ({})",
        friends.len()
    );
    assert!(friends.iter().all(|c| &*c.collection == FRIENDS));
}

async fn bounded<S: LocalStore + 'static>(name: &str, store: S) {
    tokio::time::timeout(LIMIT, scenario(name, store))
        .await
        .unwrap_or_else(|_| panic!("{name}: the scenario did not finish within {LIMIT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ui_watching_songs_sees_every_change_on_memory_store() {
    bounded("memory", MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ui_watching_songs_sees_every_change_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("feed.db"), Schema::conformance()).expect("open");
    bounded("sqlite", store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ui_watching_songs_sees_every_change_on_sled() {
    let store = SledStore::open_temporary(Schema::conformance()).expect("open");
    bounded("sled", store).await;
}

/// A remote that holds its `HOLD_AT`-th pull until released, so a test can act
/// while a sync is certainly under way.
struct Gate {
    inner: FakeRemote,
    pulls: AtomicUsize,
    reached: Notify,
    release: Notify,
}

const HOLD_AT: usize = 10;

#[async_trait]
impl RemoteStore for Gate {
    async fn pull(
        &self,
        since: Watermark,
        limit: usize,
        mode: PullMode,
    ) -> Result<Page, RemoteError> {
        if self.pulls.fetch_add(1, Ordering::SeqCst) + 1 == HOLD_AT {
            self.reached.notify_one();
            self.release.notified().await;
        }
        self.inner.pull(since, limit, mode).await
    }
    async fn push(&self, changes: Vec<PushChange>) -> Result<Vec<PushOutcome>, RemoteError> {
        self.inner.push(changes).await
    }
    async fn fetch(&self, c: &str, id: &RecordId) -> Result<Option<RemoteState>, RemoteError> {
        self.inner.fetch(c, id).await
    }
    async fn horizon(&self) -> Result<Watermark, RemoteError> {
        self.inner.horizon().await
    }
    async fn collections(&self) -> Result<Option<BTreeSet<String>>, RemoteError> {
        self.inner.collections().await
    }
    fn max_push_batch(&self) -> usize {
        self.inner.max_push_batch()
    }
}

/// A watcher created while the engine is mid-sync (some pages applied, one
/// perhaps in flight), followed by a read of the initial state, misses nothing:
/// the initial read plus the feed equal the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_created_mid_sync_plus_its_initial_read_misses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: Vec<(&str, Arc<dyn LocalStore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        (
            "sqlite",
            Arc::new(
                SqliteStore::open(dir.path().join("mid.db"), Schema::conformance()).expect("open"),
            ),
        ),
        (
            "sled",
            Arc::new(SledStore::open_temporary(Schema::conformance()).expect("open")),
        ),
    ];
    for (name, store) in stores {
        let server = FakeRemote::new();
        for n in 0..20_000 {
            server.server_write(SONGS, &new_id(), Some(song("s", n)));
        }
        let gate = Arc::new(Gate {
            inner: server,
            pulls: AtomicUsize::new(0),
            reached: Notify::new(),
            release: Notify::new(),
        });
        let config = sync_traits::SyncConfig {
            page_size: 500,
            resync_batch: 500,
            ..Default::default()
        };
        let engine = Arc::new(SyncEngine::new(store.clone(), gate.clone()).with_config(config));
        let sync = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.sync().await.map(|_| ()) })
        };
        tokio::time::timeout(LIMIT, gate.reached.notified())
            .await
            .expect("the sync reaches the held pull");
        let mut w = store.changes(SONGS).expect("watch");
        let mut view: BTreeSet<RecordId> = store
            .list(SONGS)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(
            view.len() < 20_000,
            "{name}: subscribed before the sync ended"
        );
        gate.release.notify_one();
        tokio::time::timeout(LIMIT, sync)
            .await
            .expect("the sync ends")
            .expect("sync task")
            .expect("sync");
        let changes = w.try_changed();
        assert!(
            !changes.is_empty(),
            "{name}: the pages after the watcher are reported"
        );
        for c in changes {
            match c.kind {
                ChangeKind::Upserted => view.insert(c.id),
                ChangeKind::Removed => view.remove(&c.id),
            };
        }
        let actual: BTreeSet<RecordId> = store
            .list(SONGS)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(actual.len(), 20_000, "{name}: the sync completed");
        assert!(
            view == actual,
            "{name}: initial read + feed == store ({} vs {})",
            view.len(),
            actual.len()
        );
    }
}
