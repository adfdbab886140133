//! The contract every [`LocalStore`] must pass: plain async functions that a store
//! implementation calls from its own tests, each with a fresh, empty store.
//!
//! The cases use two collections a store must be able to hold:
//! [`SONGS`] with fields `title` (text), `artist` (text), `order` (number, a SQL
//! reserved word on purpose) and [`FRIENDS`] with `name` (text). Stores with a
//! schema declare exactly these (see `tidemark_backends` for examples).
//!
//! ```no_run
//! # async fn demo() {
//! use sync_traits::testkit::{conformance, MemoryStore};
//! conformance::run_all(|| async { MemoryStore::new() }).await;
//! # }
//! ```
//!
//! Failures panic with a message naming the broken rule.

use std::future::Future;

use serde_json::{json, Value};

use crate::conflict::Resolution;
use crate::id::{new_id, ChangeId, RecordId};
use crate::record::{
    Ack, Conflict, Fields, Op, Page, Record, Rejection, RemoteChange, RemoteState, Version,
    Watermark,
};
use crate::store::LocalStore;
use crate::transaction::{Transact, TxMark, Write};

pub use super::feed_cases::{
    feed_coalesces_and_never_drops, feed_reports_a_transactions_writes,
    feed_reports_exactly_what_a_pull_applied, feed_reports_local_writes,
    feed_reports_records_an_ack_rewrote, feed_reports_resync_removals,
};

/// Collection with fields `title`, `artist` (text) and `order` (number).
pub const SONGS: &str = "songs";
/// Collection with field `name` (text).
pub const FRIENDS: &str = "friends";
/// A local-only collection with field `title` (text), for [`run_local_only`].
pub const DRAFTS: &str = "drafts";

fn fields(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => Fields::new(),
    }
}

/// A song record's fields.
pub fn song(title: &str, order: i64) -> Fields {
    fields(json!({"title": title, "artist": "someone", "order": order}))
}

pub(super) fn remote(
    collection: &str,
    id: &RecordId,
    version: u64,
    f: Option<Fields>,
) -> RemoteChange {
    RemoteChange {
        collection: collection.into(),
        id: id.clone(),
        state: RemoteState {
            version: Version(version),
            fields: f,
            change_id: None,
        },
    }
}

pub(super) fn page(changes: Vec<RemoteChange>, watermark: u64) -> Page {
    Page {
        changes,
        watermark: Watermark(watermark),
        more: false,
    }
}

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut, S>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: LocalStore,
{
    put_get_list_delete(&make().await).await;
    count_matches_list(&make().await).await;
    writes_go_to_outbox(&make().await).await;
    writes_coalesce(&make().await).await;
    pending_is_ordered_with_cursor(&make().await).await;
    client_id_is_stable(&make().await).await;
    apply_remote_writes_data_and_watermark(&make().await).await;
    apply_remote_skips_stale_versions(&make().await).await;
    apply_remote_defers_pending_records(&make().await).await;
    apply_remote_does_not_touch_outbox(&make().await).await;
    ack_applied_clears_entry_and_sets_base(&make().await).await;
    ack_applied_superseded_keeps_newer_write(&make().await).await;
    ack_rebase_replaces_op_and_data(&make().await).await;
    ack_rebase_superseded_changes_nothing(&make().await).await;
    ack_take_server(&make().await).await;
    ack_quarantine_keeps_data(&make().await).await;
    ack_batch_mixed(&make().await).await;
    resync_keeps_outbox_and_removes_unseen(&make().await).await;
    create_then_delete_before_push(&make().await).await;
    reserved_and_unknown_fields_round_trip(&make().await).await;
    invalid_collection_is_an_error(&make().await).await;
    tombstone_version_blocks_older_upsert(&make().await).await;
    ack_applied_without_entry_records_version(&make().await).await;
    ack_quarantine_superseded_keeps_newer_write(&make().await).await;
    ack_rebase_to_delete_removes_local_record(&make().await).await;
    a_page_is_not_refused_for_one_collection(&make().await).await;
    finish_resync_without_begin_is_a_no_op(&make().await).await;
    change_ids_increase_across_records(&make().await).await;
    ack_take_server_superseded_keeps_newer_write(&make().await).await;
    conflicts_are_logged_until_cleared(&make().await).await;
    quarantine_retry_writes_again_and_discard_forgets(&make().await).await;
    made_here_knows_its_own_change_ids(&make().await).await;
    finish_resync_removes_only_in_synced_collections(&make().await).await;
    a_value_of_another_type_is_kept_as_sent(&make().await).await;
    a_first_sync_begun_again_removes_what_it_no_longer_delivers(&make().await).await;
    a_first_sync_keeps_what_is_written_meanwhile(&make().await).await;
    a_first_sync_removes_a_server_state_an_ack_wrote_unless_delivered(&make().await).await;
    a_retried_change_keeps_a_value_of_another_type(&make().await).await;
    list_page_walks_in_id_order(&make().await).await;
    list_page_after_a_deleted_cursor(&make().await).await;
    list_page_is_stable_under_writes(&make().await).await;
    list_page_of_other_collections_is_as_list(&make().await).await;
    a_transaction_applies_every_write_with_its_outbox_entry(&make().await).await;
    a_failed_transaction_changes_nothing(&make().await).await;
    writes_in_a_transaction_coalesce_as_sequential_writes(&make().await).await;
    a_transaction_deletes_a_missing_record_as_delete_does(&make().await).await;
    sync_meta_is_kept_apart_from_the_data(&make().await).await;
    // The change feed (see crate::feed): a store without one fails these.
    feed_reports_exactly_what_a_pull_applied(&make().await).await;
    feed_reports_local_writes(&make().await).await;
    feed_reports_records_an_ack_rewrote(&make().await).await;
    feed_reports_resync_removals(&make().await).await;
    feed_coalesces_and_never_drops(&make().await).await;
    feed_reports_a_transactions_writes(&make().await).await;
}

/// The cases that need a store holding [`DRAFTS`] local-only (with a `title`
/// text field) besides [`SONGS`] and [`FRIENDS`]: a store whose constructor can
/// declare a local-only collection runs them too.
pub async fn run_local_only<F, Fut, S>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: LocalStore,
{
    a_transaction_writes_a_local_only_collection_as_put_does(&make().await).await;
}

/// put/get/list/delete behave like a map.
pub async fn put_get_list_delete(s: &dyn LocalStore) {
    let a = new_id();
    let b = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("b", 2)))
        .await
        .unwrap();
    s.put(Record::new(
        FRIENDS,
        a.clone(),
        fields(json!({"name": "x"})),
    ))
    .await
    .unwrap();
    let got = s
        .get(SONGS, &a)
        .await
        .unwrap()
        .expect("put record must be readable");
    assert_eq!(got.fields, song("a", 1), "get must return the fields put");
    let list = s.list(SONGS).await.unwrap();
    assert_eq!(
        list.len(),
        2,
        "list must hold only this collection's records"
    );
    assert!(
        list.windows(2).all(|w| w[0].id < w[1].id),
        "list must be ordered by id"
    );
    assert!(
        s.delete(SONGS, &a).await.unwrap(),
        "delete of a present record returns true"
    );
    assert!(
        s.get(SONGS, &a).await.unwrap().is_none(),
        "deleted record must be gone"
    );
    assert!(
        !s.delete(SONGS, &a).await.unwrap(),
        "delete of an absent record returns false"
    );
    assert!(
        s.get(FRIENDS, &a).await.unwrap().is_some(),
        "same id in another collection is separate"
    );
}

/// `count` agrees with `list`, per collection, through writes, deletes and applies.
pub async fn count_matches_list(s: &dyn LocalStore) {
    assert_eq!(s.count(SONGS).await.unwrap(), 0);
    let ids: Vec<_> = (0..3).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        s.put(Record::new(SONGS, id.clone(), song("c", i as i64)))
            .await
            .unwrap();
    }
    s.put(Record::new(FRIENDS, new_id(), fields(json!({"name": "f"}))))
        .await
        .unwrap();
    s.delete(SONGS, &ids[0]).await.unwrap();
    s.apply_remote(&page(
        vec![remote(SONGS, &new_id(), 1, Some(song("r", 9)))],
        1,
    ))
    .await
    .unwrap();
    for c in [SONGS, FRIENDS] {
        assert_eq!(
            s.count(c).await.unwrap(),
            s.list(c).await.unwrap().len(),
            "count({c}) must equal the length of list({c})"
        );
    }
    assert_eq!(s.count(SONGS).await.unwrap(), 3);
}

/// Every write leaves an outbox entry with the data, the base and changed fields.
pub async fn writes_go_to_outbox(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "a put must create one outbox entry");
    let e = &p[0];
    assert_eq!((e.collection.as_str(), &e.id), (SONGS, &a));
    assert_eq!(e.base, None, "a never-synced record has no base");
    assert_eq!(e.op, Op::Upsert(song("a", 1)));
    assert_eq!(e.changed.len(), 3, "a create changes every field it sets");
    assert_eq!(
        e.change_id.client,
        s.client_id().await.unwrap(),
        "change id carries the client id"
    );
    assert_eq!(s.pending_count().await.unwrap(), 1);
}

/// Several writes to one record before a push are one entry, same position, newest
/// change id, union of changed fields.
pub async fn writes_coalesce(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let first = s.pending(0, 10).await.unwrap().remove(0);
    s.ack(vec![Ack::Applied {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: first.change_id.clone(),
        version: Version(3),
    }])
    .await
    .unwrap();
    let mut f = song("a", 1);
    f.insert("title".into(), json!("A"));
    s.put(Record::new(SONGS, a.clone(), f.clone()))
        .await
        .unwrap();
    let e1 = s.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(
        e1.base,
        Some(Version(3)),
        "base is the known server version"
    );
    assert_eq!(
        e1.changed.iter().collect::<Vec<_>>(),
        vec!["title"],
        "only title changed"
    );
    f.insert("order".into(), json!(9));
    s.put(Record::new(SONGS, a.clone(), f.clone()))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "writes to one record coalesce");
    let e2 = &p[0];
    assert_eq!(e2.seq, e1.seq, "coalescing keeps the outbox position");
    assert!(
        e2.change_id.n > e1.change_id.n,
        "each write gets a newer change id"
    );
    assert_eq!(e2.base, Some(Version(3)), "coalescing keeps the base");
    assert_eq!(
        e2.changed.iter().collect::<Vec<_>>(),
        vec!["order", "title"]
    );
    assert_eq!(e2.op, Op::Upsert(f));
    assert!(s.delete(SONGS, &a).await.unwrap());
    let e3 = s.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(e3.op, Op::Delete, "a delete replaces the op");
    assert_eq!(e3.base, Some(Version(3)));
}

/// `pending(after, limit)` pages through the outbox in order.
pub async fn pending_is_ordered_with_cursor(s: &dyn LocalStore) {
    for i in 0..5 {
        s.put(Record::new(SONGS, new_id(), song("x", i)))
            .await
            .unwrap();
    }
    let all = s.pending(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "pending is in seq order"
    );
    let two = s.pending(0, 2).await.unwrap();
    assert_eq!(two, all[..2].to_vec(), "limit is respected");
    let rest = s.pending(two[1].seq, 100).await.unwrap();
    assert_eq!(rest, all[2..].to_vec(), "the cursor skips what was seen");
    assert_eq!(s.pending_count().await.unwrap(), 5);
}

/// The client id is valid and does not change.
pub async fn client_id_is_stable(s: &dyn LocalStore) {
    let a = s.client_id().await.unwrap();
    let b = s.client_id().await.unwrap();
    assert_eq!(a, b, "client id must be stable");
    assert!(RecordId::parse(a.as_str()).is_ok());
}

/// A page's upserts and tombstones land and the watermark moves, never back.
pub async fn apply_remote_writes_data_and_watermark(s: &dyn LocalStore) {
    let a = new_id();
    let b = new_id();
    s.apply_remote(&page(
        vec![
            remote(SONGS, &a, 1, Some(song("a", 1))),
            remote(SONGS, &b, 2, Some(song("b", 2))),
        ],
        2,
    ))
    .await
    .unwrap();
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(2));
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 1)
    );
    let r = s
        .apply_remote(&page(
            vec![
                remote(SONGS, &a, 5, None),
                remote(SONGS, &b, 6, Some(song("B", 3))),
            ],
            7,
        ))
        .await
        .unwrap();
    assert_eq!(r.applied, 2);
    assert!(
        s.get(SONGS, &a).await.unwrap().is_none(),
        "a tombstone deletes"
    );
    assert_eq!(
        s.get(SONGS, &b).await.unwrap().unwrap().fields,
        song("B", 3)
    );
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(7));
    s.apply_remote(&page(vec![], 4)).await.unwrap();
    assert_eq!(
        s.sync_state().await.unwrap().watermark,
        Watermark(7),
        "the watermark never moves back"
    );
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "remote changes are not local writes"
    );
}

/// A change not newer than what the store has is skipped.
pub async fn apply_remote_skips_stale_versions(s: &dyn LocalStore) {
    let a = new_id();
    s.apply_remote(&page(vec![remote(SONGS, &a, 5, Some(song("new", 5)))], 5))
        .await
        .unwrap();
    let r = s
        .apply_remote(&page(vec![remote(SONGS, &a, 3, Some(song("old", 3)))], 5))
        .await
        .unwrap();
    assert_eq!(r.stale, 1);
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("new", 5),
        "older versions never overwrite newer"
    );
}

/// A remote change to a record with unpushed local writes is left to the push.
pub async fn apply_remote_defers_pending_records(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("mine", 1)))
        .await
        .unwrap();
    let r = s
        .apply_remote(&page(
            vec![remote(SONGS, &a, 4, Some(song("theirs", 2)))],
            4,
        ))
        .await
        .unwrap();
    assert_eq!(r.deferred, 1);
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("mine", 1),
        "local unpushed data is kept"
    );
    let e = s.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(e.base, None, "a deferred change does not move the base");
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(4));
}

/// Applying remote changes creates no outbox entries and leaves existing ones alone.
pub async fn apply_remote_does_not_touch_outbox(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("mine", 1)))
        .await
        .unwrap();
    let before = s.pending(0, 10).await.unwrap();
    let others: Vec<_> = (0..10)
        .map(|i| remote(SONGS, &new_id(), i + 1, Some(song("r", i as i64))))
        .collect();
    s.apply_remote(&page(others, 10)).await.unwrap();
    assert_eq!(
        s.pending(0, 100).await.unwrap(),
        before,
        "outbox unchanged by apply_remote"
    );
    assert_eq!(s.list(SONGS).await.unwrap().len(), 11);
}

/// Applied removes the entry; the version becomes the base of the next write.
pub async fn ack_applied_clears_entry_and_sets_base(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let e = s.pending(0, 10).await.unwrap().remove(0);
    s.ack(vec![Ack::Applied {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: e.change_id,
        version: Version(7),
    }])
    .await
    .unwrap();
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "applied entry leaves the outbox"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 1),
        "data stays"
    );
    let r = s
        .apply_remote(&page(vec![remote(SONGS, &a, 7, Some(song("A", 1)))], 7))
        .await
        .unwrap();
    assert_eq!(
        (r.stale, r.applied),
        (0, 1),
        "the echo of our own write at its version is applied: it is the server's copy"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("A", 1),
        "the server's normalised copy of a write comes back to the writer"
    );
    s.put(Record::new(SONGS, a.clone(), song("a", 2)))
        .await
        .unwrap();
    assert_eq!(s.pending(0, 10).await.unwrap()[0].base, Some(Version(7)));
}

/// A newer write made while the older one was in flight survives its ack.
pub async fn ack_applied_superseded_keeps_newer_write(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let sent = s.pending(0, 10).await.unwrap().remove(0);
    s.put(Record::new(SONGS, a.clone(), song("a", 2)))
        .await
        .unwrap();
    s.ack(vec![Ack::Applied {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: sent.change_id.clone(),
        version: Version(5),
    }])
    .await
    .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "the newer write must stay in the outbox");
    assert_ne!(p[0].change_id, sent.change_id);
    assert_eq!(
        p[0].base,
        Some(Version(5)),
        "the newer write is now based on the applied version"
    );
    assert_eq!(p[0].op, Op::Upsert(song("a", 2)));
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 2)
    );
}

/// Rebase with a replacement op changes both the entry and the local record, and
/// gives the entry a new change id.
pub async fn ack_rebase_replaces_op_and_data(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let e = s.pending(0, 10).await.unwrap().remove(0);
    s.ack(vec![Ack::Rebase {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: e.change_id.clone(),
        base: Version(9),
        op: Some(Op::Upsert(song("merged", 4))),
    }])
    .await
    .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "a rebased change stays pending");
    assert_eq!(p[0].base, Some(Version(9)));
    assert_eq!(p[0].op, Op::Upsert(song("merged", 4)));
    assert_eq!(p[0].seq, e.seq);
    // A re-based change is a new write: a new change id of this store's writer,
    // above the old one; the old id no longer settles the entry.
    assert_ne!(
        p[0].change_id, e.change_id,
        "a re-based change gets a new id"
    );
    assert_eq!(p[0].change_id.client, s.client_id().await.unwrap());
    assert!(p[0].change_id.n > e.change_id.n);
    assert!(s.made_here(&p[0].change_id).await.unwrap());
    s.ack(vec![Ack::Applied {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: e.change_id.clone(),
        version: Version(9),
    }])
    .await
    .unwrap();
    assert_eq!(
        s.pending(0, 10).await.unwrap(),
        p,
        "an ack of the old id is one of a superseded change"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("merged", 4)
    );
    s.ack(vec![Ack::Rebase {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: p[0].change_id.clone(),
        base: Version(10),
        op: None,
    }])
    .await
    .unwrap();
    let p2 = s.pending(0, 10).await.unwrap();
    assert_eq!(
        (p2[0].base, &p2[0].op),
        (Some(Version(10)), &Op::Upsert(song("merged", 4))),
        "op None keeps the op"
    );
}

/// Rebase of a superseded change id changes nothing.
pub async fn ack_rebase_superseded_changes_nothing(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let old = s.pending(0, 10).await.unwrap().remove(0);
    s.put(Record::new(SONGS, a.clone(), song("a", 2)))
        .await
        .unwrap();
    let before = s.pending(0, 10).await.unwrap();
    s.ack(vec![Ack::Rebase {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: old.change_id,
        base: Version(9),
        op: Some(Op::Delete),
    }])
    .await
    .unwrap();
    assert_eq!(s.pending(0, 10).await.unwrap(), before);
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 2)
    );
}

/// TakeServer drops the local change and stores the server's state.
pub async fn ack_take_server(s: &dyn LocalStore) {
    let a = new_id();
    let b = new_id();
    s.put(Record::new(SONGS, a.clone(), song("mine", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("mine", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    s.ack(vec![
        Ack::TakeServer {
            collection: SONGS.into(),
            id: a.clone(),
            change_id: p[0].change_id.clone(),
            state: RemoteState {
                version: Version(4),
                fields: Some(song("theirs", 1)),
                change_id: None,
            },
        },
        Ack::TakeServer {
            collection: SONGS.into(),
            id: b.clone(),
            change_id: p[1].change_id.clone(),
            state: RemoteState {
                version: Version(5),
                fields: None,
                change_id: None,
            },
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 0);
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("theirs", 1)
    );
    assert!(
        s.get(SONGS, &b).await.unwrap().is_none(),
        "a server tombstone deletes locally"
    );
    let r = s
        .apply_remote(&page(vec![remote(SONGS, &a, 4, Some(song("x", 0)))], 5))
        .await
        .unwrap();
    assert_eq!(
        r.applied, 1,
        "the taken version applies again, as the same state"
    );
}

/// A refused change is kept with its data; the record follows the server.
pub async fn ack_quarantine_keeps_data(s: &dyn LocalStore) {
    let a = new_id();
    let b = new_id();
    s.put(Record::new(SONGS, a.clone(), song("bad", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("bad", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    let rejection = Rejection {
        message: "invalid".into(),
        fields: [("title".to_string(), "too long".to_string())].into(),
    };
    s.ack(vec![
        Ack::Quarantine {
            change: p[0].clone(),
            rejection: rejection.clone(),
            server: None,
        },
        Ack::Quarantine {
            change: p[1].clone(),
            rejection: rejection.clone(),
            server: Some(RemoteState {
                version: Version(3),
                fields: Some(song("server", 2)),
                change_id: None,
            }),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "a quarantined change leaves the outbox"
    );
    let q = s.quarantined().await.unwrap();
    assert_eq!(q.len(), 2, "both refused changes are kept");
    assert_eq!(q[0].change, p[0], "with their data");
    assert_eq!(q[0].rejection, rejection);
    assert!(
        s.get(SONGS, &a).await.unwrap().is_none(),
        "record absent on the server is removed locally"
    );
    assert_eq!(
        s.get(SONGS, &b).await.unwrap().unwrap().fields,
        song("server", 2)
    );
}

/// One ack call with many kinds settles all of them.
pub async fn ack_batch_mixed(s: &dyn LocalStore) {
    let ids: Vec<_> = (0..50).map(|_| new_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        s.put(Record::new(SONGS, id.clone(), song("x", i as i64)))
            .await
            .unwrap();
    }
    let p = s.pending(0, 100).await.unwrap();
    let acks = p
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 3 {
            0 => Ack::Applied {
                collection: SONGS.into(),
                id: e.id.clone(),
                change_id: e.change_id.clone(),
                version: Version(i as u64 + 1),
            },
            1 => Ack::Rebase {
                collection: SONGS.into(),
                id: e.id.clone(),
                change_id: e.change_id.clone(),
                base: Version(100 + i as u64),
                op: None,
            },
            _ => Ack::TakeServer {
                collection: SONGS.into(),
                id: e.id.clone(),
                change_id: e.change_id.clone(),
                state: RemoteState {
                    version: Version(200 + i as u64),
                    fields: Some(song("s", 0)),
                    change_id: None,
                },
            },
        })
        .collect();
    s.ack(acks).await.unwrap();
    let left = s.pending(0, 100).await.unwrap();
    assert_eq!(
        left.len(),
        p.iter().enumerate().filter(|(i, _)| i % 3 == 1).count()
    );
    assert!(left.iter().all(|e| e.base.unwrap().0 >= 100));
    assert_eq!(s.list(SONGS).await.unwrap().len(), 50);
}

/// A resync keeps the outbox, keeps what the server still has, removes the rest.
pub async fn resync_keeps_outbox_and_removes_unseen(s: &dyn LocalStore) {
    let kept = new_id();
    let gone = new_id();
    let local = new_id();
    s.apply_remote(&page(
        vec![
            remote(SONGS, &kept, 1, Some(song("k", 1))),
            remote(SONGS, &gone, 2, Some(song("g", 2))),
        ],
        2,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, local.clone(), song("mine", 3)))
        .await
        .unwrap();
    s.begin_resync().await.unwrap();
    let st = s.sync_state().await.unwrap();
    assert!(st.resyncing, "resync state is visible");
    assert_eq!(st.watermark, Watermark(0), "a resync starts from zero");
    s.apply_remote(&page(vec![remote(SONGS, &kept, 1, Some(song("k", 1)))], 10))
        .await
        .unwrap();
    assert!(
        s.sync_state().await.unwrap().resyncing,
        "still resyncing until finished"
    );
    let removed = s.finish_resync(None).await.unwrap();
    assert_eq!(removed, 1, "only the unseen synced record is removed");
    assert!(s.get(SONGS, &gone).await.unwrap().is_none());
    assert!(s.get(SONGS, &kept).await.unwrap().is_some());
    assert!(
        s.get(SONGS, &local).await.unwrap().is_some(),
        "unpushed local records survive a resync"
    );
    assert_eq!(
        s.pending_count().await.unwrap(),
        1,
        "the outbox survives a resync"
    );
    let st = s.sync_state().await.unwrap();
    assert!(!st.resyncing);
    assert_eq!(st.watermark, Watermark(10));
}

/// A first sync (a resync begun on an empty store) that is begun again after
/// applying part of what it pulled is an ordinary resync: what the second pass
/// does not deliver is removed. (A store may skip looking for unseen records
/// when a resync begins on an empty store, and must decide that anew at every
/// `begin_resync`.)
pub async fn a_first_sync_begun_again_removes_what_it_no_longer_delivers(s: &dyn LocalStore) {
    let (kept, gone) = (new_id(), new_id());
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(
        vec![
            remote(SONGS, &kept, 1, Some(song("k", 1))),
            remote(SONGS, &gone, 2, Some(song("g", 2))),
        ],
        2,
    ))
    .await
    .unwrap();
    // Interrupted; the next sync starts the resync again, and `gone` was deleted
    // and compacted on the server meanwhile.
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(vec![remote(SONGS, &kept, 1, Some(song("k", 1)))], 5))
        .await
        .unwrap();
    assert_eq!(s.finish_resync(None).await.unwrap(), 1);
    assert!(s.get(SONGS, &gone).await.unwrap().is_none());
    assert!(s.get(SONGS, &kept).await.unwrap().is_some());
    assert!(!s.sync_state().await.unwrap().resyncing);
    // A later resync of a store with records looks for unseen ones again.
    s.begin_resync().await.unwrap();
    assert_eq!(s.finish_resync(None).await.unwrap(), 1, "nothing delivered");
    assert!(s.get(SONGS, &kept).await.unwrap().is_none());
}

/// A first sync keeps a record the app writes while it runs, and everything it
/// delivered.
pub async fn a_first_sync_keeps_what_is_written_meanwhile(s: &dyn LocalStore) {
    let (pulled, mine) = (new_id(), new_id());
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(
        vec![remote(SONGS, &pulled, 1, Some(song("p", 1)))],
        1,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, mine.clone(), song("mine", 2)))
        .await
        .unwrap();
    assert_eq!(s.finish_resync(None).await.unwrap(), 0);
    assert!(s.get(SONGS, &pulled).await.unwrap().is_some());
    assert!(s.get(SONGS, &mine).await.unwrap().is_some());
    assert_eq!(s.pending_count().await.unwrap(), 1);
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(1));
}

/// During a first sync (a resync begun on an empty store) an ack that writes a
/// record's server state with no outbox entry left (here: a take-server) makes
/// the resync an ordinary one: the record is removed at the finish unless the
/// resync delivered it, as in any resync, and what the resync applied stays.
pub async fn a_first_sync_removes_a_server_state_an_ack_wrote_unless_delivered(s: &dyn LocalStore) {
    let (pulled, mine) = (new_id(), new_id());
    s.begin_resync().await.unwrap();
    s.apply_remote(&page(
        vec![remote(SONGS, &pulled, 1, Some(song("p", 1)))],
        1,
    ))
    .await
    .unwrap();
    s.put(Record::new(SONGS, mine.clone(), song("mine", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    s.ack(vec![Ack::TakeServer {
        collection: SONGS.into(),
        id: mine.clone(),
        change_id: p[0].change_id.clone(),
        state: RemoteState {
            version: Version(7),
            fields: Some(song("theirs", 2)),
            change_id: None,
        },
    }])
    .await
    .unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 0);
    assert_eq!(s.finish_resync(None).await.unwrap(), 1, "not delivered");
    assert!(s.get(SONGS, &mine).await.unwrap().is_none());
    assert!(s.get(SONGS, &pulled).await.unwrap().is_some());
}

/// A record created and deleted before any push leaves a base-less delete.
pub async fn create_then_delete_before_push(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    assert!(s.delete(SONGS, &a).await.unwrap());
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].base, &p[0].op), (None, &Op::Delete));
}

/// Reserved-word field names work, and fields the store does not know are kept.
pub async fn reserved_and_unknown_fields_round_trip(s: &dyn LocalStore) {
    let a = new_id();
    let mut f = song("a", 1);
    f.insert("zz_server_only".into(), json!({"nested": [1, 2, "x"]}));
    s.apply_remote(&page(vec![remote(SONGS, &a, 1, Some(f.clone()))], 1))
        .await
        .unwrap();
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        f,
        "unknown fields are kept"
    );
    let mut g = f.clone();
    g.insert("order".into(), json!(2));
    s.put(Record::new(SONGS, a.clone(), g.clone()))
        .await
        .unwrap();
    let e = s.pending(0, 10).await.unwrap().remove(0);
    assert_eq!(
        e.op,
        Op::Upsert(g),
        "unknown fields are pushed back unchanged"
    );
    assert_eq!(e.changed.iter().collect::<Vec<_>>(), vec!["order"]);
}

/// A collection name that cannot exist is an error, not a panic.
pub async fn invalid_collection_is_an_error(s: &dyn LocalStore) {
    assert!(s.get("no such collection!", &new_id()).await.is_err());
    assert!(s
        .put(Record::new("no such collection!", new_id(), song("a", 1)))
        .await
        .is_err());
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "a failed put leaves nothing"
    );
}

/// A tombstone's version is remembered: an older upsert arriving later is stale.
pub async fn tombstone_version_blocks_older_upsert(s: &dyn LocalStore) {
    let a = new_id();
    s.apply_remote(&page(vec![remote(SONGS, &a, 2, Some(song("a", 1)))], 2))
        .await
        .unwrap();
    s.apply_remote(&page(vec![remote(SONGS, &a, 5, None)], 5))
        .await
        .unwrap();
    let r = s
        .apply_remote(&page(vec![remote(SONGS, &a, 3, Some(song("old", 3)))], 5))
        .await
        .unwrap();
    assert_eq!(r.stale, 1, "an upsert older than the tombstone is stale");
    assert!(
        s.get(SONGS, &a).await.unwrap().is_none(),
        "a deleted record is not resurrected by an older version"
    );
}

/// An Applied ack for a record without an outbox entry (a duplicate ack) only
/// records the version.
pub async fn ack_applied_without_entry_records_version(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let e = s.pending(0, 10).await.unwrap().remove(0);
    let ack = Ack::Applied {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: e.change_id,
        version: Version(4),
    };
    s.ack(vec![ack.clone()]).await.unwrap();
    s.ack(vec![ack]).await.unwrap();
    assert_eq!(
        s.pending_count().await.unwrap(),
        0,
        "a duplicate ack creates nothing"
    );
    let r = s
        .apply_remote(&page(vec![remote(SONGS, &a, 3, Some(song("x", 0)))], 4))
        .await
        .unwrap();
    assert_eq!(r.stale, 1, "a version older than the acked one is stale");
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 1)
    );
}

/// A superseded change is quarantined, but the newer write and its data stay.
pub async fn ack_quarantine_superseded_keeps_newer_write(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let old = s.pending(0, 10).await.unwrap().remove(0);
    s.put(Record::new(SONGS, a.clone(), song("a", 2)))
        .await
        .unwrap();
    let before = s.pending(0, 10).await.unwrap();
    s.ack(vec![Ack::Quarantine {
        change: old.clone(),
        rejection: Rejection {
            message: "no".into(),
            fields: Default::default(),
        },
        server: None,
    }])
    .await
    .unwrap();
    assert_eq!(s.quarantined().await.unwrap()[0].change, old);
    assert_eq!(
        s.pending(0, 10).await.unwrap(),
        before,
        "the newer entry stays"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("a", 2),
        "the newer data stays"
    );
}

/// A rebase whose merge result is a delete removes the local record.
pub async fn ack_rebase_to_delete_removes_local_record(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let e = s.pending(0, 10).await.unwrap().remove(0);
    s.ack(vec![Ack::Rebase {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: e.change_id,
        base: Version(3),
        op: Some(Op::Delete),
    }])
    .await
    .unwrap();
    assert!(s.get(SONGS, &a).await.unwrap().is_none());
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!((p[0].base, &p[0].op), (Some(Version(3)), &Op::Delete));
}

/// A change to a collection the store does not hold (undeclared, or a name no
/// store could hold) is skipped; the rest of the page applies and the watermark
/// moves.
pub async fn a_page_is_not_refused_for_one_collection(s: &dyn LocalStore) {
    let a = new_id();
    let r = s
        .apply_remote(&page(
            vec![
                remote(SONGS, &a, 1, Some(song("a", 1))),
                remote("no such collection!", &new_id(), 2, Some(song("b", 2))),
                remote(SONGS, &new_id(), 3, Some(song("c", 3))),
            ],
            3,
        ))
        .await
        .expect("a page is never refused for what one change names");
    assert_eq!(
        r.skipped, 1,
        "the impossible collection is skipped and counted"
    );
    assert_eq!(r.applied, 2, "every other change applies");
    assert!(s.get(SONGS, &a).await.unwrap().is_some());
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(3));
}

/// finish_resync without begin_resync removes nothing.
pub async fn finish_resync_without_begin_is_a_no_op(s: &dyn LocalStore) {
    let a = new_id();
    s.apply_remote(&page(vec![remote(SONGS, &a, 1, Some(song("a", 1)))], 1))
        .await
        .unwrap();
    assert_eq!(s.finish_resync(None).await.unwrap(), 0);
    assert!(s.get(SONGS, &a).await.unwrap().is_some());
    assert_eq!(s.sync_state().await.unwrap().watermark, Watermark(1));
}

/// Change ids grow across records, so a remote can order one client's writes.
pub async fn change_ids_increase_across_records(s: &dyn LocalStore) {
    for i in 0..3 {
        s.put(Record::new(SONGS, new_id(), song("x", i)))
            .await
            .unwrap();
    }
    let p = s.pending(0, 10).await.unwrap();
    assert!(
        p.windows(2).all(|w| w[0].change_id.n < w[1].change_id.n),
        "change ids strictly increase"
    );
}

fn pushed(
    s_pending: &[crate::record::PendingChange],
    id: &RecordId,
) -> crate::record::PendingChange {
    s_pending
        .iter()
        .find(|p| &p.id == id)
        .cloned()
        .expect("the record has an outbox entry")
}

/// TakeServer for a change a newer local write superseded changes nothing: the
/// newer write stays, with its data, in the outbox (it will meet the server as a
/// conflict of its own).
pub async fn ack_take_server_superseded_keeps_newer_write(s: &dyn LocalStore) {
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("first", 1)))
        .await
        .unwrap();
    let first = pushed(&s.pending(0, 10).await.unwrap(), &a);
    s.put(Record::new(SONGS, a.clone(), song("newer", 2)))
        .await
        .unwrap();
    s.ack(vec![Ack::TakeServer {
        collection: SONGS.into(),
        id: a.clone(),
        change_id: first.change_id.clone(),
        state: RemoteState {
            version: Version(7),
            fields: Some(song("theirs", 9)),
            change_id: None,
        },
    }])
    .await
    .unwrap();
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("newer", 2),
        "a newer local write survives a TakeServer of the change it superseded"
    );
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "the newer write is still in the outbox");
    assert_eq!(p[0].op, Op::Upsert(song("newer", 2)));
}

/// Every conflict acked with [`Ack::Conflict`] is kept, with the local change, the
/// server state and the resolution, in order, until cleared by id.
pub async fn conflicts_are_logged_until_cleared(s: &dyn LocalStore) {
    assert!(s.conflicts().await.unwrap().is_empty());
    let (a, b) = (new_id(), new_id());
    s.put(Record::new(SONGS, a.clone(), song("mine a", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("mine b", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    let (pa, pb) = (pushed(&p, &a), pushed(&p, &b));
    let server = |v: u64, t: &str| RemoteState {
        version: Version(v),
        fields: Some(song(t, 0)),
        change_id: None,
    };
    let lost = Conflict {
        local: pa.clone(),
        server: server(5, "theirs a"),
        resolution: Resolution::TakeServer,
    };
    let kept = Conflict {
        local: pb.clone(),
        server: RemoteState {
            version: Version(6),
            fields: None,
            change_id: None,
        },
        resolution: Resolution::Replace(Op::Upsert(song("merged", 3))),
    };
    s.ack(vec![
        Ack::TakeServer {
            collection: SONGS.into(),
            id: a.clone(),
            change_id: pa.change_id.clone(),
            state: server(5, "theirs a"),
        },
        Ack::Conflict(lost.clone()),
        Ack::Rebase {
            collection: SONGS.into(),
            id: b.clone(),
            change_id: pb.change_id.clone(),
            base: Version(6),
            op: Some(Op::Upsert(song("merged", 3))),
        },
        Ack::Conflict(kept.clone()),
    ])
    .await
    .unwrap();
    let log = s.conflicts().await.unwrap();
    assert_eq!(log.len(), 2, "both conflicts are logged");
    assert_eq!(
        log[0].conflict, lost,
        "the losing local change is kept whole"
    );
    assert_eq!(log[1].conflict, kept);
    assert!(log[0].id < log[1].id, "ids grow in logging order");
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("theirs a", 0),
        "the resolution applied with the log entry"
    );
    assert_eq!(s.clear_conflicts(vec![log[0].id]).await.unwrap(), 1);
    let left = s.conflicts().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0], log[1],
        "clearing one keeps the others as they were"
    );
    assert_eq!(
        s.clear_conflicts(vec![log[0].id]).await.unwrap(),
        0,
        "clearing twice removes nothing"
    );
}

/// A quarantined change can be written again (a new outbox entry with its data,
/// on the record's known version) or discarded; both remove it from the quarantine.
pub async fn quarantine_retry_writes_again_and_discard_forgets(s: &dyn LocalStore) {
    let (a, b) = (new_id(), new_id());
    s.put(Record::new(SONGS, a.clone(), song("refused a", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("refused b", 2)))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    let rejection = Rejection {
        message: "invalid".into(),
        fields: Default::default(),
    };
    s.ack(vec![
        Ack::Quarantine {
            change: pushed(&p, &a),
            rejection: rejection.clone(),
            server: Some(RemoteState {
                version: Version(4),
                fields: Some(song("server a", 0)),
                change_id: None,
            }),
        },
        Ack::Quarantine {
            change: pushed(&p, &b),
            rejection,
            server: None,
        },
    ])
    .await
    .unwrap();
    let q = s.quarantined().await.unwrap();
    assert_eq!(q.len(), 2);
    assert!(q[0].id < q[1].id, "quarantine ids grow");
    let (qa, qb) = if q[0].change.id == a {
        (q[0].id, q[1].id)
    } else {
        (q[1].id, q[0].id)
    };
    assert!(s.retry_quarantined(qa).await.unwrap());
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        song("refused a", 1),
        "a retried change is the local data again"
    );
    let retried = s.pending(0, 10).await.unwrap();
    assert_eq!(retried.len(), 1, "and in the outbox");
    assert_eq!(retried[0].op, Op::Upsert(song("refused a", 1)));
    assert_eq!(
        retried[0].base,
        Some(Version(4)),
        "based on the version the store knows"
    );
    assert_ne!(
        retried[0].change_id,
        pushed(&p, &a).change_id,
        "a retry is a new write with a new change id"
    );
    assert!(!s.retry_quarantined(qa).await.unwrap(), "retried once only");
    assert!(s.discard_quarantined(qb).await.unwrap());
    assert!(!s.discard_quarantined(qb).await.unwrap());
    assert!(s.quarantined().await.unwrap().is_empty());
    assert!(s.get(SONGS, &b).await.unwrap().is_none());
}

/// A store knows the change ids it made, and no others: not another writer's, and
/// not a counter it never issued.
pub async fn made_here_knows_its_own_change_ids(s: &dyn LocalStore) {
    s.put(Record::new(SONGS, new_id(), song("x", 1)))
        .await
        .unwrap();
    let mine = s.pending(0, 10).await.unwrap()[0].change_id.clone();
    assert!(s.made_here(&mine).await.unwrap(), "its own change id");
    assert_eq!(mine.client, s.client_id().await.unwrap());
    let foreign = ChangeId {
        client: new_id(),
        n: mine.n,
    };
    assert!(!s.made_here(&foreign).await.unwrap(), "another writer's");
    let unissued = ChangeId {
        client: mine.client.clone(),
        n: mine.n + 1000,
    };
    assert!(
        !s.made_here(&unissued).await.unwrap(),
        "a counter this store never issued (a copy of it made that one)"
    );
}

/// A resync scoped to the collections the remote syncs never removes records of
/// the others.
pub async fn finish_resync_removes_only_in_synced_collections(s: &dyn LocalStore) {
    let (song_id, friend) = (new_id(), new_id());
    s.apply_remote(&page(
        vec![
            remote(SONGS, &song_id, 1, Some(song("s", 1))),
            remote(FRIENDS, &friend, 2, Some(fields(json!({"name": "f"})))),
        ],
        2,
    ))
    .await
    .unwrap();
    s.begin_resync().await.unwrap();
    let only_songs = [SONGS.to_string()].into_iter().collect();
    assert_eq!(s.finish_resync(Some(only_songs)).await.unwrap(), 1);
    assert!(s.get(SONGS, &song_id).await.unwrap().is_none());
    assert!(
        s.get(FRIENDS, &friend).await.unwrap().is_some(),
        "a collection the remote does not sync is never emptied by a resync"
    );
}

/// A pulled value of another type than the store declares for its field (`order`
/// is a number; the server sends a string) is kept exactly as sent, reported if the
/// store has types, and the rest of the page applies; a later local write that
/// leaves the value as it is is accepted and changes only what it changes.
pub async fn a_value_of_another_type_is_kept_as_sent(s: &dyn LocalStore) {
    let (a, b) = (new_id(), new_id());
    let mut odd = song("odd", 0);
    odd.insert("order".into(), json!("not a number"));
    let r = s
        .apply_remote(&page(
            vec![
                remote(SONGS, &a, 1, Some(odd.clone())),
                remote(SONGS, &b, 2, Some(song("fine", 2))),
            ],
            2,
        ))
        .await
        .expect("a page is never refused for one value");
    assert_eq!(r.applied, 2, "both records apply");
    assert!(
        r.mistyped.is_empty()
            || (r.mistyped.len() == 1
                && r.mistyped[0].id == a
                && r.mistyped[0].field == "order"
                && r.mistyped[0].value == json!("not a number")),
        "a store with types reports the value it kept: {:?}",
        r.mistyped
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        odd,
        "kept exactly as sent, not coerced or dropped"
    );
    let mut edited = odd.clone();
    edited.insert("title".into(), json!("edited"));
    s.put(Record::new(SONGS, a.clone(), edited.clone()))
        .await
        .expect("a write that leaves the odd value as it is is accepted");
    assert_eq!(s.get(SONGS, &a).await.unwrap().unwrap().fields, edited);
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].changed,
        ["title".to_string()].into_iter().collect(),
        "only what the write changed"
    );
}

/// A quarantined change holding a value of another type than the store declares
/// (a pulled value the app's write kept) is retried as it is: the value kept
/// exactly, not coerced and not refused, the change in the outbox again.
pub async fn a_retried_change_keeps_a_value_of_another_type(s: &dyn LocalStore) {
    let a = new_id();
    let mut odd = song("odd", 0);
    odd.insert("order".into(), json!("not a number"));
    s.apply_remote(&page(vec![remote(SONGS, &a, 1, Some(odd.clone()))], 1))
        .await
        .unwrap();
    let mut edited = odd.clone();
    edited.insert("title".into(), json!("edited"));
    s.put(Record::new(SONGS, a.clone(), edited.clone()))
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    s.ack(vec![Ack::Quarantine {
        change: pushed(&p, &a),
        rejection: Rejection {
            message: "invalid".into(),
            fields: Default::default(),
        },
        server: Some(RemoteState {
            version: Version(2),
            fields: Some(song("server", 0)),
            change_id: None,
        }),
    }])
    .await
    .unwrap();
    let q = s.quarantined().await.unwrap();
    assert_eq!(q.len(), 1);
    assert!(
        s.retry_quarantined(q[0].id)
            .await
            .expect("a retry is not refused for a value the change was accepted with"),
        "the change was in the quarantine"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().unwrap().fields,
        edited,
        "the retried data, the odd value kept exactly as it was"
    );
    let retried = s.pending(0, 10).await.unwrap();
    assert_eq!(retried.len(), 1, "in the outbox again");
    assert_eq!(retried[0].op, Op::Upsert(edited));
    assert_eq!(retried[0].base, Some(Version(2)));
    assert!(s.quarantined().await.unwrap().is_empty());
}

/// Walks `collection` with [`SyncStore::list_page`] pages of `limit`, checking
/// each page's order, size and exclusive cursor; returns every id in walk order.
async fn walk_pages(s: &dyn LocalStore, collection: &str, limit: usize) -> Vec<RecordId> {
    assert!(limit > 0);
    let mut out: Vec<RecordId> = Vec::new();
    let mut after: Option<RecordId> = None;
    for _ in 0..100_000 {
        let page = s.list_page(collection, after.clone(), limit).await.unwrap();
        assert!(page.len() <= limit, "a page holds at most `limit` records");
        for w in page.windows(2) {
            assert!(w[0].id < w[1].id, "a page is in ascending id order");
        }
        if let (Some(a), Some(first)) = (&after, page.first()) {
            assert!(
                first.id > *a,
                "the cursor is exclusive: {first:?} after {a:?}"
            );
        }
        assert!(
            page.iter().all(|r| r.collection == collection),
            "a page holds only its collection's records"
        );
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(last.id.clone());
        out.extend(page.into_iter().map(|r| r.id));
    }
    panic!("list_page never reached the end of {collection}");
}

/// `list_page` walks a collection in id order, page by page: the pages put
/// together are `list`; the cursor is exclusive; `limit` 0 returns nothing; a
/// cursor past the last record returns nothing; other collections never show.
pub async fn list_page_walks_in_id_order(s: &dyn LocalStore) {
    assert!(s.list_page(SONGS, None, 10).await.unwrap().is_empty());
    for i in 0..23 {
        s.put(Record::new(SONGS, new_id(), song("p", i)))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        s.put(Record::new(FRIENDS, new_id(), fields(json!({"name": "f"}))))
            .await
            .unwrap();
    }
    s.apply_remote(&page(
        vec![remote(SONGS, &new_id(), 1, Some(song("pulled", 99)))],
        1,
    ))
    .await
    .unwrap();
    let all: Vec<RecordId> = s
        .list(SONGS)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all.len(), 24);
    for limit in [1, 5, 7, 24, 25, 1000] {
        assert_eq!(
            walk_pages(s, SONGS, limit).await,
            all,
            "pages of {limit} put together are list()"
        );
    }
    let first = s.list_page(SONGS, None, 5).await.unwrap();
    assert_eq!(
        first,
        s.list(SONGS).await.unwrap()[..5].to_vec(),
        "a page holds the records as list does, fields included"
    );
    assert!(
        s.list_page(SONGS, None, 0).await.unwrap().is_empty(),
        "limit 0"
    );
    assert!(
        s.list_page(SONGS, Some(all[3].clone()), 0)
            .await
            .unwrap()
            .is_empty(),
        "limit 0 after a cursor"
    );
    let rest = s
        .list_page(SONGS, Some(all[3].clone()), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        all[4..].to_vec(),
        "everything after the cursor, the cursor excluded"
    );
    let last = all.last().unwrap();
    assert!(
        s.list_page(SONGS, Some(last.clone()), 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing after the last record"
    );
    let top = RecordId::parse("zzzzzzzzzzzzzzz").unwrap();
    let bottom = RecordId::parse("000000000000000").unwrap();
    assert!(s
        .list_page(SONGS, Some(top.clone()), 10)
        .await
        .unwrap()
        .is_empty());
    let from_bottom = s.list_page(SONGS, Some(bottom.clone()), 3).await.unwrap();
    assert_eq!(
        from_bottom.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        all[..3].to_vec(),
        "a cursor below every id starts at the first record"
    );
    assert_eq!(walk_pages(s, FRIENDS, 3).await.len(), 4);
}

/// A cursor whose record was deleted (or never existed) still pages on from its
/// place in id order.
pub async fn list_page_after_a_deleted_cursor(s: &dyn LocalStore) {
    for i in 0..10 {
        s.put(Record::new(SONGS, new_id(), song("d", i)))
            .await
            .unwrap();
    }
    let all: Vec<RecordId> = s
        .list(SONGS)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let page = s.list_page(SONGS, None, 4).await.unwrap();
    let cursor = page.last().unwrap().id.clone();
    assert_eq!(cursor, all[3]);
    assert!(s.delete(SONGS, &cursor).await.unwrap());
    let next = s.list_page(SONGS, Some(cursor.clone()), 4).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        all[4..8].to_vec(),
        "the page after a deleted cursor starts at the next id"
    );
    let absent = new_id();
    let expected: Vec<RecordId> = all
        .iter()
        .filter(|id| **id > absent && **id != cursor)
        .cloned()
        .collect();
    let got: Vec<RecordId> = s
        .list_page(SONGS, Some(absent.clone()), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, expected, "a cursor that never was a record");
}

/// Paging is stable under writes between pages: every record that exists from
/// the first page to the last is returned exactly once, none is returned twice,
/// and a record deleted before its page is not returned.
pub async fn list_page_is_stable_under_writes(s: &dyn LocalStore) {
    let mut live: Vec<RecordId> = Vec::new();
    for i in 0..60 {
        let id = new_id();
        s.put(Record::new(SONGS, id.clone(), song("s", i)))
            .await
            .unwrap();
        live.push(id);
    }
    live.sort();
    // Deleted during the walk, each before the walk reaches it (or after).
    let doomed: Vec<RecordId> = live.iter().skip(1).step_by(7).cloned().collect();
    let mut seen: Vec<RecordId> = Vec::new();
    let mut inserted: Vec<RecordId> = Vec::new();
    let mut after: Option<RecordId> = None;
    let mut round = 0usize;
    loop {
        round += 1;
        assert!(round < 1000, "the walk must end");
        let page = s.list_page(SONGS, after.clone(), 5).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page.into_iter().map(|r| r.id));
        // Between pages: two new records anywhere in id order, a delete.
        for _ in 0..2 {
            let id = new_id();
            s.put(Record::new(SONGS, id.clone(), song("new", 0)))
                .await
                .unwrap();
            inserted.push(id);
        }
        if let Some(d) = doomed.get(round - 1) {
            s.delete(SONGS, d).await.unwrap();
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted, seen,
        "ids strictly ascending across pages: no repeat"
    );
    for id in live.iter().filter(|id| !doomed.contains(id)) {
        assert!(
            seen.contains(id),
            "a record that existed throughout was skipped"
        );
    }
    for (round, d) in doomed.iter().enumerate() {
        // `d` was deleted after page `round + 1`; it is seen only if that page or
        // an earlier one had reached it.
        let reached = seen.iter().position(|x| x == d);
        if let Some(p) = reached {
            assert!(
                p < (round + 1) * 5,
                "a deleted record was returned after its delete"
            );
        }
    }
    for id in &inserted {
        if seen.contains(id) {
            assert!(
                s.get(SONGS, id).await.unwrap().is_some(),
                "an inserted record returned exists"
            );
        }
    }
}

/// `list_page` and `count` of a collection the store does not hold (undeclared,
/// or a name that cannot exist) answer as `list` does: the same error, or the
/// same (empty) answer.
pub async fn list_page_of_other_collections_is_as_list(s: &dyn LocalStore) {
    for c in ["undeclared_here", "no such collection!"] {
        let list = s.list(c).await;
        let paged = s.list_page(c, None, 10).await;
        let count = s.count(c).await;
        match list {
            Ok(all) => {
                assert_eq!(paged.unwrap(), all, "list_page({c:?}) as list");
                assert_eq!(count.unwrap(), all.len(), "count({c:?}) as list");
            }
            Err(e) => {
                let (p, n) = (paged.unwrap_err(), count.unwrap_err());
                assert_eq!(
                    std::mem::discriminant(&p),
                    std::mem::discriminant(&e),
                    "list_page({c:?}) fails as list does: {p} / {e}"
                );
                assert_eq!(
                    std::mem::discriminant(&n),
                    std::mem::discriminant(&e),
                    "count({c:?}) fails as list does: {n} / {e}"
                );
            }
        }
    }
}

// ---- multi-record transactions ----

/// A transaction applies every write, each with its outbox entry, all marked with
/// the transaction's [`TxMark`] (the highest seq among them as `last`), and
/// reports whether each record existed.
pub async fn a_transaction_applies_every_write_with_its_outbox_entry(s: &dyn LocalStore) {
    let (a, b, c) = (new_id(), new_id(), new_id());
    s.put(Record::new(SONGS, b.clone(), song("b", 1)))
        .await
        .unwrap();
    let before = s.pending(0, 10).await.unwrap();
    let report = s
        .transaction()
        .put(Record::new(SONGS, a.clone(), song("a", 2)))
        .put(Record::new(
            FRIENDS,
            c.clone(),
            fields(json!({"name": "c"})),
        ))
        .delete(SONGS, &b)
        .commit()
        .await
        .unwrap();
    assert_eq!(
        report.existed,
        vec![false, false, true],
        "a transaction reports whether each record existed"
    );
    assert_eq!(
        s.get(SONGS, &a).await.unwrap().map(|r| r.fields),
        Some(song("a", 2))
    );
    assert!(s.get(FRIENDS, &c).await.unwrap().is_some());
    assert!(
        s.get(SONGS, &b).await.unwrap().is_none(),
        "the delete applied"
    );
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 3, "one outbox entry per record written");
    let mark = report
        .mark
        .expect("a transaction that wrote entries has a mark");
    assert!(
        p.iter().all(|e| e.tx == Some(mark)),
        "every entry the transaction wrote carries its mark: {p:?}"
    );
    assert_eq!(
        mark.last,
        p.iter().map(|e| e.seq).max().unwrap(),
        "the mark's last is the highest seq of its entries"
    );
    assert_eq!(
        mark.id,
        p.iter().map(|e| e.change_id.n).max().unwrap(),
        "the mark's id is the counter of the transaction's newest write"
    );
    let eb = pushed(&p, &b);
    assert_eq!(
        (eb.seq, &eb.op, eb.base),
        (before[0].seq, &Op::Delete, None),
        "the delete folded into b's entry at its position"
    );
    assert!(
        p.iter().all(|e| e.change_id.n > before[0].change_id.n),
        "every write of the transaction took a new change counter"
    );
    assert_eq!(s.pending_count().await.unwrap(), 3);
}

/// A transaction with a write the store refuses fails with that write's error and
/// changes nothing: no record, no outbox entry, no change counter.
pub async fn a_failed_transaction_changes_nothing(s: &dyn LocalStore) {
    let (a, b) = (new_id(), new_id());
    s.put(Record::new(SONGS, b.clone(), song("b", 1)))
        .await
        .unwrap();
    let before = s.pending(0, 10).await.unwrap();
    let err = s
        .transact(vec![
            Write::Put(Record::new(SONGS, a.clone(), song("a", 2))),
            Write::Put(Record::new(SONGS, b.clone(), song("b2", 3))),
            Write::Delete {
                collection: SONGS.into(),
                id: b.clone(),
            },
            Write::Put(Record::new("no such collection!", new_id(), song("x", 0))),
        ])
        .await;
    assert!(
        matches!(err, Err(crate::error::StoreError::UnknownCollection(_))),
        "the refused write's error is the transaction's: {err:?}"
    );
    assert!(
        s.get(SONGS, &a).await.unwrap().is_none(),
        "a failed transaction writes no record"
    );
    assert_eq!(
        s.get(SONGS, &b).await.unwrap().map(|r| r.fields),
        Some(song("b", 1)),
        "a failed transaction changes and deletes no record"
    );
    assert_eq!(
        s.pending(0, 10).await.unwrap(),
        before,
        "a failed transaction leaves the outbox as it was"
    );
    s.put(Record::new(SONGS, a.clone(), song("a", 4)))
        .await
        .unwrap();
    let n = pushed(&s.pending(0, 10).await.unwrap(), &a).change_id.n;
    assert_eq!(
        n,
        before[0].change_id.n + 1,
        "a failed transaction takes no change counter"
    );
}

/// Writes to one record inside a transaction coalesce as sequential writes do: one
/// entry, at the record's old position if it had one, with the newest change id
/// and the union of changed fields; a record created and deleted inside one is a
/// delete based on nothing. An entry keeps the mark after a later plain put, and a
/// later transaction's mark replaces it.
pub async fn writes_in_a_transaction_coalesce_as_sequential_writes(s: &dyn LocalStore) {
    let (a, b, c, d) = (new_id(), new_id(), new_id(), new_id());
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    s.put(Record::new(SONGS, b.clone(), song("b", 1)))
        .await
        .unwrap();
    let old = s.pending(0, 10).await.unwrap();
    let (a_seq, b_seq) = (pushed(&old, &a).seq, pushed(&old, &b).seq);
    let mut a2 = song("a", 1);
    a2.insert("title".into(), json!("a2"));
    let mut a3 = a2.clone();
    a3.insert("artist".into(), json!("other"));
    let report = s
        .transaction()
        .put(Record::new(SONGS, a.clone(), a2))
        .put(Record::new(SONGS, c.clone(), song("c", 1)))
        .put(Record::new(SONGS, a.clone(), a3.clone()))
        .put(Record::new(SONGS, d.clone(), song("d", 1)))
        .delete(SONGS, &d)
        .commit()
        .await
        .unwrap();
    assert_eq!(report.existed, vec![true, false, true, false, true]);
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 4, "a, b, c and d have one entry each: {p:?}");
    let ea = pushed(&p, &a);
    assert_eq!(ea.seq, a_seq, "a keeps its outbox position");
    assert_eq!(ea.op, Op::Upsert(a3), "a's entry holds its newest write");
    assert_eq!(
        ea.changed,
        ["title", "artist", "order"].map(String::from).into(),
        "changed fields are the union of the writes' (the create's included)"
    );
    let ed = pushed(&p, &d);
    assert_eq!(
        (&ed.op, ed.base),
        (&Op::Delete, None),
        "created and deleted inside the transaction: a delete based on nothing"
    );
    let mark = report.mark.unwrap();
    let marked: Vec<&RecordId> = p
        .iter()
        .filter(|e| e.tx == Some(mark))
        .map(|e| &e.id)
        .collect();
    assert_eq!(marked.len(), 3, "a, c and d carry the mark, b does not");
    assert!(!marked.contains(&&b) && pushed(&p, &b).tx.is_none());
    assert!(mark.last > b_seq && mark.last == pushed(&p, &d).seq.max(pushed(&p, &c).seq));
    assert_eq!(
        ea.change_id.n,
        pushed(&p, &c).change_id.n + 1,
        "a's entry carries the change id of its newest write (the one after c's)"
    );
    // A later plain put keeps the mark; a later transaction replaces it.
    s.put(Record::new(SONGS, c.clone(), song("c", 2)))
        .await
        .unwrap();
    assert_eq!(pushed(&s.pending(0, 10).await.unwrap(), &c).tx, Some(mark));
    let second = s
        .transaction()
        .put(Record::new(SONGS, b.clone(), song("b", 2)))
        .put(Record::new(SONGS, c.clone(), song("c", 3)))
        .commit()
        .await
        .unwrap()
        .mark
        .unwrap();
    assert!(second.id > mark.id, "transaction ids grow");
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(pushed(&p, &b).tx, Some(second));
    assert_eq!(pushed(&p, &c).tx, Some(second));
    assert_eq!(pushed(&p, &a).tx, Some(mark));
    assert_eq!(
        second,
        TxMark {
            id: second.id,
            last: pushed(&p, &c).seq.max(pushed(&p, &b).seq)
        }
    );
}

/// A delete of a record that is not there inside a transaction writes nothing
/// and is no error, as [`LocalStore::delete`]; a transaction that writes no entry
/// (none but such deletes, or none at all) has no mark.
pub async fn a_transaction_deletes_a_missing_record_as_delete_does(s: &dyn LocalStore) {
    let (a, missing) = (new_id(), new_id());
    let report = s
        .transaction()
        .delete(SONGS, &missing)
        .put(Record::new(SONGS, a.clone(), song("a", 1)))
        .commit()
        .await
        .unwrap();
    assert_eq!(report.existed, vec![false, false]);
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "no entry for the missing record: {p:?}");
    assert_eq!(p[0].id, a);
    let none = s
        .transaction()
        .delete(SONGS, &missing)
        .commit()
        .await
        .unwrap();
    assert_eq!((none.existed, none.mark), (vec![false], None));
    let empty = s.transact(Vec::new()).await.unwrap();
    assert_eq!((empty.existed.len(), empty.mark), (0, None));
    assert_eq!(s.pending(0, 10).await.unwrap(), p, "nothing else changed");
}

/// Writes to a local-only collection inside a transaction are applied as `put`
/// and `delete` apply them: the data changes, no outbox entry, no mark; the
/// synced writes beside them get theirs.
pub async fn a_transaction_writes_a_local_only_collection_as_put_does(s: &dyn LocalStore) {
    let (a, d, e) = (new_id(), new_id(), new_id());
    let title = |t: &str| fields(json!({ "title": t }));
    s.put(Record::new(DRAFTS, e.clone(), title("e")))
        .await
        .unwrap();
    assert_eq!(s.pending_count().await.unwrap(), 0);
    let only = s
        .transaction()
        .put(Record::new(DRAFTS, d.clone(), title("d")))
        .delete(DRAFTS, &e)
        .commit()
        .await
        .unwrap();
    assert_eq!((only.existed, only.mark), (vec![false, true], None));
    assert_eq!(s.pending_count().await.unwrap(), 0, "local-only: no entry");
    assert_eq!(
        s.get(DRAFTS, &d).await.unwrap().map(|r| r.fields),
        Some(title("d"))
    );
    assert!(s.get(DRAFTS, &e).await.unwrap().is_none());
    let mixed = s
        .transaction()
        .put(Record::new(DRAFTS, d.clone(), title("d2")))
        .put(Record::new(SONGS, a.clone(), song("a", 1)))
        .commit()
        .await
        .unwrap();
    let p = s.pending(0, 10).await.unwrap();
    assert_eq!(p.len(), 1, "only the synced write has an entry: {p:?}");
    assert_eq!((p[0].id.clone(), p[0].tx), (a, mixed.mark));
    assert_eq!(mixed.mark.map(|m| m.last), Some(p[0].seq));
    assert_eq!(
        s.get(DRAFTS, &d).await.unwrap().map(|r| r.fields),
        Some(title("d2"))
    );
}

/// The engine's notes ([`SyncStore::set_sync_meta`]) read back as set, overwrite,
/// are removed by `None`, and touch no record, outbox entry or watermark. A store
/// that does not keep them ([`SyncStore::keeps_sync_meta`] `false`) is skipped.
pub async fn sync_meta_is_kept_apart_from_the_data(s: &dyn LocalStore) {
    if !s.keeps_sync_meta() {
        return;
    }
    let a = new_id();
    s.put(Record::new(SONGS, a.clone(), song("a", 1)))
        .await
        .unwrap();
    let before = (
        s.sync_state().await.unwrap(),
        s.pending_count().await.unwrap(),
    );
    assert_eq!(s.sync_meta("scope").await.unwrap(), None, "never set: None");
    let json = r#"{"only":null,"filters":{"songs":"genre = 'jazz'"}}"#;
    s.set_sync_meta("scope", Some(json.to_owned()))
        .await
        .unwrap();
    assert_eq!(s.sync_meta("scope").await.unwrap().as_deref(), Some(json));
    assert_eq!(s.sync_meta("other").await.unwrap(), None, "keys are apart");
    s.set_sync_meta("scope", Some("é two".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        s.sync_meta("scope").await.unwrap().as_deref(),
        Some("é two"),
        "overwritten"
    );
    s.set_sync_meta("scope", None).await.unwrap();
    assert_eq!(s.sync_meta("scope").await.unwrap(), None, "removed");
    s.set_sync_meta("scope", None).await.unwrap();
    let after = (
        s.sync_state().await.unwrap(),
        s.pending_count().await.unwrap(),
    );
    assert_eq!(
        after, before,
        "notes never touch the watermark or the outbox"
    );
    assert_eq!(s.list(SONGS).await.unwrap().len(), 1);
}
