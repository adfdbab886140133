//! The change feed's part of the [`LocalStore`] contract (see [`crate::feed`]):
//! every case checks that a store reports exactly the records a call changed —
//! nothing it skipped, nothing twice, nothing of another collection. Run by
//! [`super::conformance::run_all`]; re-exported from there.

use std::collections::BTreeSet;

use serde_json::json;

use super::conformance::{page, remote, song, FRIENDS, SONGS};
use crate::feed::{ChangeCause, ChangeKind, ChangeWatcher};
use crate::id::{new_id, RecordId};
use crate::record::{Ack, Fields, Op, Record, Rejection, RemoteState, Version};
use crate::store::LocalStore;
use crate::transaction::Transact;

use ChangeCause::{Local, Pull, Resync, Settlement};
use ChangeKind::{Removed, Upserted};

type Seen = BTreeSet<(String, RecordId, ChangeKind, ChangeCause)>;

fn friend(name: &str) -> Fields {
    json!({ "name": name })
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn watch(s: &dyn LocalStore, collection: Option<&str>) -> ChangeWatcher {
    match collection {
        Some(c) => s.changes(c),
        None => s.all_changes(),
    }
    .expect("the store reports its changes (LocalStore::change_hub)")
}

/// What the watcher holds now, as a set; checks no record is named twice.
fn drain(w: &mut ChangeWatcher) -> Seen {
    let v = w.try_changed();
    let n = v.len();
    let set: Seen = v
        .into_iter()
        .map(|c| (c.collection.to_string(), c.id, c.kind, c.cause))
        .collect();
    assert_eq!(set.len(), n, "a record is named once per read");
    set
}

fn seen(items: &[(&str, &RecordId, ChangeKind, ChangeCause)]) -> Seen {
    items
        .iter()
        .map(|(c, id, k, cause)| ((*c).to_owned(), (*id).clone(), *k, *cause))
        .collect()
}

/// `apply_remote` reports the changes it applied, and none it skipped: stale,
/// deferred behind an outbox entry, of an impossible collection, or the deletion
/// of a record the store does not hold. Another collection's watcher sees only
/// its own.
pub async fn feed_reports_exactly_what_a_pull_applied(s: &dyn LocalStore) {
    let (stale, deferred, new, gone, missing, other) =
        (new_id(), new_id(), new_id(), new_id(), new_id(), new_id());
    s.apply_remote(&page(
        vec![
            remote(SONGS, &stale, 5, Some(song("v5", 1))),
            remote(SONGS, &gone, 6, Some(song("gone", 2))),
            remote(SONGS, &deferred, 7, Some(song("server", 3))),
        ],
        7,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, deferred.clone(), song("mine", 3)))
        .await
        .unwrap();
    let mut songs = watch(s, Some(SONGS));
    let mut friends = watch(s, Some(FRIENDS));
    let mut all = watch(s, None);
    let r = s
        .apply_remote(&page(
            vec![
                remote(SONGS, &stale, 3, Some(song("v3", 1))),
                remote(SONGS, &deferred, 9, Some(song("server 2", 3))),
                remote(SONGS, &new, 10, Some(song("new", 4))),
                remote(SONGS, &gone, 11, None),
                remote(SONGS, &missing, 12, None),
                remote("no such collection!", &new_id(), 13, Some(song("x", 0))),
                remote(FRIENDS, &other, 14, Some(friend("f"))),
            ],
            14,
        ))
        .await
        .unwrap();
    assert_eq!((r.stale, r.deferred, r.skipped), (1, 1, 1));
    let expected_songs = seen(&[(SONGS, &new, Upserted, Pull), (SONGS, &gone, Removed, Pull)]);
    assert_eq!(
        drain(&mut songs),
        expected_songs,
        "exactly the applied changes; stale, deferred, skipped and no-op deletions unreported"
    );
    assert_eq!(
        drain(&mut friends),
        seen(&[(FRIENDS, &other, Upserted, Pull)]),
        "a watcher of another collection sees only its own"
    );
    let mut expected_all = expected_songs;
    expected_all.insert((FRIENDS.into(), other.clone(), Upserted, Pull));
    assert_eq!(
        drain(&mut all),
        expected_all,
        "an all-collections watcher sees both"
    );
    // A change at the known version applies again (the server's copy): reported.
    s.apply_remote(&page(
        vec![remote(SONGS, &new, 10, Some(song("new", 4)))],
        14,
    ))
    .await
    .unwrap();
    assert_eq!(drain(&mut songs), seen(&[(SONGS, &new, Upserted, Pull)]));
}

/// Local writes are reported when they commit; a delete of a missing record and
/// a refused write report nothing; a retried quarantined change is a local write.
pub async fn feed_reports_local_writes(s: &dyn LocalStore) {
    let (a, b, missing) = (new_id(), new_id(), new_id());
    let mut songs = watch(s, Some(SONGS));
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    assert_eq!(
        drain(&mut songs),
        seen(&[(SONGS, &a, Upserted, Local)]),
        "reported by the time put returns"
    );
    s.put(Record::new(FRIENDS, b.clone(), friend("b")))
        .await
        .unwrap();
    assert!(!s.delete(SONGS, &missing).await.unwrap());
    assert!(s
        .put(Record::new("no such collection!", b.clone(), song("x", 0)))
        .await
        .is_err());
    assert!(
        drain(&mut songs).is_empty(),
        "another collection, a delete of nothing and a refused write report nothing"
    );
    assert!(s.delete(SONGS, &a).await.unwrap());
    assert_eq!(drain(&mut songs), seen(&[(SONGS, &a, Removed, Local)]));
    // A refused change, retried: written again.
    let c = new_id();
    let cid = c.clone();
    s.put(Record::new(SONGS, c.clone(), song("refused", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    let change = p.iter().find(|c| c.id == cid).cloned().expect("the entry");
    s.ack(vec![Ack::Quarantine {
        change,
        rejection: Rejection {
            message: "invalid".into(),
            fields: Default::default(),
        },
        server: None,
    }])
    .await
    .unwrap();
    assert_eq!(
        drain(&mut songs),
        seen(&[(SONGS, &c, Removed, Settlement)]),
        "a rejected new record is removed (it has no server state)"
    );
    let q = s.quarantined().await.unwrap();
    assert!(s.retry_quarantined(q[0].id).await.unwrap());
    assert_eq!(drain(&mut songs), seen(&[(SONGS, &c, Upserted, Local)]));
}

/// An ack reports the records it rewrote (a server state taken, a merge written,
/// a rejected change's record reset) and nothing for settlements that only
/// change the outbox (applied, re-based without a new op, superseded, logged).
pub async fn feed_reports_records_an_ack_rewrote(s: &dyn LocalStore) {
    let ids: Vec<RecordId> = (0..7).map(|_| new_id()).collect();
    for (n, id) in ids.iter().enumerate() {
        s.put(Record::new(SONGS, id.clone(), song("mine", n as i64)))
            .await
            .unwrap();
    }
    let p = s.pending(0, 20).await.unwrap();
    let cid = |id: &RecordId| {
        p.iter()
            .find(|c| c.id == *id)
            .map(|c| c.change_id.clone())
            .expect("an entry per record")
    };
    // ids[6] is written again: its pushed change is superseded.
    s.put(Record::new(SONGS, ids[6].clone(), song("newer", 6)))
        .await
        .unwrap();
    let mut songs = watch(s, Some(SONGS));
    let state = |v: u64, f: Option<Fields>| RemoteState {
        version: Version(v),
        fields: f,
        change_id: None,
    };
    let conflict = crate::record::Conflict {
        local: p.iter().find(|c| c.id == ids[0]).cloned().expect("entry"),
        server: state(3, Some(song("theirs", 0))),
        resolution: crate::conflict::Resolution::TakeServer,
    };
    s.ack(vec![
        Ack::TakeServer {
            collection: SONGS.into(),
            id: ids[0].clone(),
            change_id: cid(&ids[0]),
            state: state(3, Some(song("theirs", 0))),
        },
        Ack::TakeServer {
            collection: SONGS.into(),
            id: ids[1].clone(),
            change_id: cid(&ids[1]),
            state: state(4, None),
        },
        Ack::Rebase {
            collection: SONGS.into(),
            id: ids[2].clone(),
            change_id: cid(&ids[2]),
            base: Version(5),
            op: Some(Op::Upsert(song("merged", 2))),
        },
        Ack::Rebase {
            collection: SONGS.into(),
            id: ids[3].clone(),
            change_id: cid(&ids[3]),
            base: Version(6),
            op: None,
        },
        Ack::Applied {
            collection: SONGS.into(),
            id: ids[4].clone(),
            change_id: cid(&ids[4]),
            version: Version(7),
        },
        Ack::Quarantine {
            change: p.iter().find(|c| c.id == ids[5]).cloned().expect("entry"),
            rejection: Rejection {
                message: "invalid".into(),
                fields: Default::default(),
            },
            server: Some(state(8, Some(song("server", 5)))),
        },
        Ack::TakeServer {
            collection: SONGS.into(),
            id: ids[6].clone(),
            change_id: cid(&ids[6]),
            state: state(9, Some(song("theirs", 6))),
        },
        Ack::Conflict(conflict),
    ])
    .await
    .unwrap();
    assert_eq!(
        drain(&mut songs),
        seen(&[
            (SONGS, &ids[0], Upserted, Settlement),
            (SONGS, &ids[1], Removed, Settlement),
            (SONGS, &ids[2], Upserted, Settlement),
            (SONGS, &ids[5], Upserted, Settlement),
        ]),
        "exactly the records the ack rewrote"
    );
    assert_eq!(
        s.get(SONGS, &ids[6]).await.unwrap().map(|r| r.fields),
        Some(song("newer", 6)),
        "a superseded entry's record is untouched (and so unreported)"
    );
}

/// `finish_resync` reports the records it removed, and only those; the first-sync
/// path (begun on empty tables) reports the server states an ack wrote
/// meanwhile and the resync did not deliver.
pub async fn feed_reports_resync_removals(s: &dyn LocalStore) {
    // A first sync: an ack writes a server state the resync does not deliver.
    let (delivered, acked) = (new_id(), new_id());
    s.begin_resync().await.unwrap();
    let mut songs = watch(s, Some(SONGS));
    s.apply_remote(&page(
        vec![remote(SONGS, &delivered, 1, Some(song("d", 1)))],
        1,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, acked.clone(), song("mine", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    s.ack(vec![Ack::TakeServer {
        collection: SONGS.into(),
        id: acked.clone(),
        change_id: p[0].change_id.clone(),
        state: RemoteState {
            version: Version(2),
            fields: Some(song("theirs", 2)),
            change_id: None,
        },
    }])
    .await
    .unwrap();
    assert_eq!(
        drain(&mut songs),
        seen(&[
            (SONGS, &delivered, Upserted, Pull),
            (SONGS, &acked, Upserted, Settlement),
        ])
    );
    assert_eq!(s.finish_resync(None).await.unwrap(), 1);
    assert_eq!(
        drain(&mut songs),
        seen(&[(SONGS, &acked, Removed, Resync)]),
        "the first sync removes the undelivered server state, and reports it"
    );

    // An ordinary resync: an unseen record goes, a pending one and a seen one stay.
    let (kept, pending, unseen, friend_unseen) = (new_id(), new_id(), new_id(), new_id());
    s.apply_remote(&page(
        vec![
            remote(SONGS, &kept, 3, Some(song("k", 3))),
            remote(SONGS, &unseen, 4, Some(song("u", 4))),
            remote(FRIENDS, &friend_unseen, 5, Some(friend("f"))),
        ],
        5,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, pending.clone(), song("p", 5)))
        .await
        .unwrap();
    drain(&mut songs);
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(vec![remote(SONGS, &kept, 3, Some(song("k", 3)))], 5))
        .await
        .unwrap();
    assert_eq!(drain(&mut songs), seen(&[(SONGS, &kept, Upserted, Pull)]));
    assert_eq!(s.finish_resync(None).await.unwrap(), 3);
    assert_eq!(
        drain(&mut songs),
        seen(&[
            (SONGS, &delivered, Removed, Resync),
            (SONGS, &unseen, Removed, Resync),
        ]),
        "exactly the removed records of the watched collection"
    );
    // A resync that delivers every record removes nothing.
    let mut all = watch(s, None);
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(vec![remote(SONGS, &kept, 3, Some(song("k", 3)))], 5))
        .await
        .unwrap();
    drain(&mut all);
    s.finish_resync(None).await.unwrap();
    assert!(
        drain(&mut all).is_empty(),
        "nothing left to remove, nothing reported"
    );
}

/// Changes to one record coalesce (latest kind and cause win), and a watcher
/// that does not read keeps everything: nothing is dropped for lag. A watcher
/// sees only changes made after it was created.
pub async fn feed_coalesces_and_never_drops(s: &dyn LocalStore) {
    let early = new_id();
    s.put(Record::new(SONGS, early.clone(), song("early", 0)))
        .await
        .unwrap();
    let mut songs = watch(s, Some(SONGS));
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    s.apply_remote(&page(
        vec![remote(SONGS, &a, 1, Some(song("server", 1)))],
        1,
    ))
    .await
    .unwrap();
    assert!(s.delete(SONGS, &a).await.unwrap());
    let ids: Vec<RecordId> = (0..2000).map(|_| new_id()).collect();
    for chunk in ids.chunks(500) {
        let changes = chunk
            .iter()
            .map(|id| remote(SONGS, id, 2, Some(song("bulk", 2))))
            .collect();
        s.apply_remote(&page(changes, 2)).await.unwrap();
    }
    assert_eq!(songs.unread(), ids.len() + 1);
    let got = songs.changed().await.expect("the store is open");
    assert_eq!(got.len(), ids.len() + 1, "every record once, none dropped");
    assert_eq!(
        (&got[0].id, got[0].kind, got[0].cause),
        (&a, Removed, Local),
        "the first-changed record first, with its latest kind"
    );
    let got_ids: BTreeSet<&RecordId> = got.iter().map(|c| &c.id).collect();
    assert!(ids.iter().all(|id| got_ids.contains(id)));
    assert!(
        !got_ids.contains(&early),
        "a change before the watcher existed is not reported"
    );
}

/// A transaction reports every record it wrote, by the time it returns: a put as
/// upserted, a delete of a record that was there as removed (a record written
/// then deleted inside it: removed), a delete of nothing not at all; a failed
/// transaction reports nothing.
pub async fn feed_reports_a_transactions_writes(s: &dyn LocalStore) {
    let (a, b, c, missing) = (new_id(), new_id(), new_id(), new_id());
    s.put(Record::new(SONGS, b.clone(), song("b", 1)))
        .await
        .unwrap();
    let mut songs = watch(s, Some(SONGS));
    s.transaction()
        .put(Record::new(SONGS, a.clone(), song("a", 1)))
        .delete(SONGS, &b)
        .delete(SONGS, &missing)
        .put(Record::new(SONGS, c.clone(), song("c", 1)))
        .delete(SONGS, &c)
        .put(Record::new(FRIENDS, new_id(), friend("f")))
        .commit()
        .await
        .unwrap();
    assert_eq!(
        drain(&mut songs),
        seen(&[
            (SONGS, &a, Upserted, Local),
            (SONGS, &b, Removed, Local),
            (SONGS, &c, Removed, Local),
        ]),
        "a transaction's writes, reported by the time it returns"
    );
    assert!(s
        .transaction()
        .put(Record::new(SONGS, new_id(), song("x", 2)))
        .put(Record::new("no such collection!", new_id(), song("y", 3)))
        .commit()
        .await
        .is_err());
    assert!(
        drain(&mut songs).is_empty(),
        "a failed transaction reports nothing"
    );
}
