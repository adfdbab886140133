//! Differential property test of the sled store alone against the reference
//! `MemoryStore`, over the whole contract: puts and deletes (a local-only
//! collection included), pages (with changes to an undeclared collection and to
//! the local-only one), pending, every ack variant (superseded ones and logged
//! conflicts included), resyncs scoped or not, the quarantine's retry and discard,
//! clearing conflicts, `made_here`, and reopening the sled store (a new writer
//! each time). Every result and every observable state must be equal after every
//! step. (`differential.rs` compares every backend, SQLite included.)
#![cfg(feature = "sled")]

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{json, Value};
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    Ack, ChangeId, Conflict, Fields, LocalStore, LoggedConflict, Op, Page, PendingChange,
    Quarantined, Record, RecordId, Rejection, RemoteChange, RemoteState, Resolution, Version,
    Watermark,
};
use tidemark_backends::{CollectionSchema, Schema, SledStore};

/// Held collections: two synced, one local-only.
const COLLS: [&str; 3] = ["songs", "friends", "notes"];
/// Pulled changes may also name a collection no store declares.
const PULLED: [&str; 4] = ["songs", "friends", "notes", "albums"];

fn ids() -> Vec<RecordId> {
    ["aaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbb", "ccccccccccccccc"]
        .iter()
        .map(|s| RecordId::parse(s).unwrap())
        .collect()
}

fn schema() -> Schema {
    Schema::conformance().collection(CollectionSchema::new("notes").text("body").local_only())
}

#[derive(Clone, Debug)]
enum AckKind {
    Applied(u64),
    Rebase(u64, Option<Option<Fields>>),
    TakeServer(u64, Option<Fields>),
    Quarantine(Option<(u64, Option<Fields>)>),
    Conflict(u64, u8),
}

#[derive(Clone, Debug)]
enum Step {
    Put(usize, usize, Fields),
    Delete(usize, usize),
    Apply(Vec<(usize, usize, u64, Option<Fields>)>, u64),
    Pending(u64, usize),
    /// Ack some pending entries (by index); `stale` acks an older change id.
    Ack(Vec<(usize, AckKind, bool)>),
    BeginResync,
    /// 0: every synced collection; 1: songs; 2: friends; 3: all three by name.
    FinishResync(u8),
    Retry(usize),
    Discard(usize),
    ClearConflicts(Vec<usize>),
    /// `made_here` of a pending entry's change id, moved by an offset.
    MadeHere(usize, u64),
    Reopen,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z]{0,4}".prop_map(Value::from),
        Just(json!({"nested": [1, "x", null]})),
    ]
}

/// Fields valid for every collection's schema plus undeclared fields.
fn fields() -> impl Strategy<Value = Fields> {
    (
        proptest::option::of(prop_oneof![
            "[a-z]{0,5}".prop_map(Value::from),
            Just(Value::Null)
        ]),
        proptest::option::of(prop_oneof![
            (-50i64..50).prop_map(Value::from),
            (-50i64..50).prop_map(|i| Value::from(i as f64 + 0.5)),
            Just(Value::Null)
        ]),
        proptest::option::of("[a-z]{0,5}".prop_map(Value::from)),
        proptest::option::of("[a-z]{0,5}".prop_map(Value::from)),
        proptest::option::of(value()),
    )
        .prop_map(|(title, order, name, body, x)| {
            let mut f = Fields::new();
            for (k, v) in [
                ("title", title),
                ("order", order),
                ("name", name),
                ("body", body),
                ("zz_extra", x),
            ] {
                if let Some(v) = v {
                    f.insert(k.into(), v);
                }
            }
            f
        })
}

fn ack_kind() -> impl Strategy<Value = AckKind> {
    prop_oneof![
        (1u64..40).prop_map(AckKind::Applied),
        (
            1u64..40,
            proptest::option::of(proptest::option::of(fields()))
        )
            .prop_map(|(b, op)| AckKind::Rebase(b, op)),
        (1u64..40, proptest::option::of(fields())).prop_map(|(v, f)| AckKind::TakeServer(v, f)),
        proptest::option::of((1u64..40, proptest::option::of(fields())))
            .prop_map(AckKind::Quarantine),
        (1u64..40, 0u8..3).prop_map(|(v, r)| AckKind::Conflict(v, r)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..3usize, 0..3usize, fields()).prop_map(|(c, i, f)| Step::Put(c, i, f)),
        2 => (0..3usize, 0..3usize).prop_map(|(c, i)| Step::Delete(c, i)),
        3 => (
            proptest::collection::vec(
                (0..4usize, 0..3usize, 1u64..40, proptest::option::of(fields())),
                0..5
            ),
            0u64..40
        )
            .prop_map(|(c, w)| Step::Apply(c, w)),
        1 => (0u64..6, 0usize..6).prop_map(|(a, l)| Step::Pending(a, l)),
        4 => proptest::collection::vec((0..8usize, ack_kind(), proptest::bool::weighted(0.2)), 1..4)
            .prop_map(Step::Ack),
        1 => Just(Step::BeginResync),
        1 => (0u8..4).prop_map(Step::FinishResync),
        1 => (0..4usize).prop_map(Step::Retry),
        1 => (0..4usize).prop_map(Step::Discard),
        1 => proptest::collection::vec(0..4usize, 0..3).prop_map(Step::ClearConflicts),
        1 => (0..4usize, prop_oneof![Just(0u64), Just(1), Just(1000)])
            .prop_map(|(i, o)| Step::MadeHere(i, o)),
        1 => Just(Step::Reopen),
    ]
}

/// A pending change without its client id: (seq, change n, collection, id, base,
/// op, changed).
type Norm = (u64, u64, String, RecordId, Option<Version>, Op, Vec<String>);

/// A pending change with the client id blanked (each store has its own).
fn norm(p: &PendingChange) -> Norm {
    (
        p.seq,
        p.change_id.n,
        p.collection.clone(),
        p.id.clone(),
        p.base,
        p.op.clone(),
        p.changed.iter().cloned().collect(),
    )
}

fn norm_q(q: &Quarantined) -> (u64, Norm, String) {
    (q.id, norm(&q.change), q.rejection.message.clone())
}

fn norm_c(c: &LoggedConflict) -> (u64, Norm, String) {
    (
        c.id,
        norm(&c.conflict.local),
        format!("{:?} {:?}", c.conflict.server, c.conflict.resolution),
    )
}

#[derive(Debug, PartialEq)]
struct Observed {
    records: Vec<Record>,
    pending: Vec<Norm>,
    count: usize,
    watermark: Watermark,
    resyncing: bool,
    quarantine: Vec<(u64, Norm, String)>,
    conflicts: Vec<(u64, Norm, String)>,
}

async fn observe(s: &dyn LocalStore) -> Observed {
    let mut records = Vec::new();
    for c in COLLS {
        records.extend(s.list(c).await.unwrap());
        assert_eq!(s.count(c).await.unwrap(), s.list(c).await.unwrap().len());
    }
    let st = s.sync_state().await.unwrap();
    Observed {
        records,
        pending: s.pending(0, 1000).await.unwrap().iter().map(norm).collect(),
        count: s.pending_count().await.unwrap(),
        watermark: st.watermark,
        resyncing: st.resyncing,
        quarantine: s.quarantined().await.unwrap().iter().map(norm_q).collect(),
        conflicts: s.conflicts().await.unwrap().iter().map(norm_c).collect(),
    }
}

fn state(version: u64, fields: Option<Fields>) -> RemoteState {
    RemoteState {
        version: Version(version),
        fields,
        change_id: None,
    }
}

fn ack_of(e: &PendingChange, kind: &AckKind, stale: bool) -> Ack {
    let mut change_id = e.change_id.clone();
    if stale {
        change_id.n = change_id.n.saturating_sub(1);
    }
    let (collection, id) = (e.collection.clone(), e.id.clone());
    match kind {
        AckKind::Applied(v) => Ack::Applied {
            collection,
            id,
            change_id,
            version: Version(*v),
        },
        AckKind::Rebase(b, op) => Ack::Rebase {
            collection,
            id,
            change_id,
            base: Version(*b),
            op: op.clone().map(|o| o.map_or(Op::Delete, Op::Upsert)),
        },
        AckKind::TakeServer(v, f) => Ack::TakeServer {
            collection,
            id,
            change_id,
            state: state(*v, f.clone()),
        },
        AckKind::Quarantine(server) => {
            let mut change = e.clone();
            change.change_id = change_id;
            Ack::Quarantine {
                change,
                rejection: Rejection {
                    message: "no".into(),
                    fields: Default::default(),
                },
                server: server.clone().map(|(v, f)| state(v, f)),
            }
        }
        AckKind::Conflict(v, r) => Ack::Conflict(Conflict {
            local: e.clone(),
            server: state(*v, None),
            resolution: match r {
                0 => Resolution::TakeServer,
                1 => Resolution::KeepLocal,
                _ => Resolution::Replace(Op::Delete),
            },
        }),
    }
}

fn show<T: std::fmt::Debug>(r: Result<T, sync_traits::StoreError>) -> String {
    format!("{:?}", r.map_err(|e| e.to_string()))
}

async fn run_step(s: &dyn LocalStore, step: &Step, ids: &[RecordId]) -> String {
    match step {
        Step::Put(c, i, f) => show(
            s.put(Record::new(COLLS[*c], ids[*i].clone(), f.clone()))
                .await,
        ),
        Step::Delete(c, i) => show(s.delete(COLLS[*c], &ids[*i]).await),
        Step::Apply(changes, w) => {
            let page = Page {
                changes: changes
                    .iter()
                    .map(|(c, i, v, f)| RemoteChange {
                        collection: PULLED[*c].into(),
                        id: ids[*i].clone(),
                        state: state(*v, f.clone()),
                    })
                    .collect(),
                watermark: Watermark(*w),
                more: false,
            };
            show(s.apply_remote(&page).await)
        }
        Step::Pending(a, l) => {
            let p = s.pending(*a, *l).await.unwrap();
            format!("{:?}", p.iter().map(norm).collect::<Vec<_>>())
        }
        Step::Ack(list) => {
            let p = s.pending(0, 1000).await.unwrap();
            if p.is_empty() {
                return "no pending".into();
            }
            let acks = list
                .iter()
                .map(|(idx, kind, stale)| ack_of(&p[idx % p.len()], kind, *stale))
                .collect();
            show(s.ack(acks).await)
        }
        Step::BeginResync => show(s.begin_resync().await),
        Step::FinishResync(scope) => {
            let names = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
            let synced = match scope {
                0 => None,
                1 => names(&["songs"]),
                2 => names(&["friends"]),
                _ => names(&COLLS),
            };
            show(s.finish_resync(synced).await)
        }
        Step::Retry(i) | Step::Discard(i) => {
            let q = s.quarantined().await.unwrap();
            // An index past the quarantine names an id that is not there.
            let id = q.get(*i).map_or(1000, |q| q.id);
            match step {
                Step::Retry(_) => show(s.retry_quarantined(id).await),
                _ => show(s.discard_quarantined(id).await),
            }
        }
        Step::ClearConflicts(idx) => {
            let log = s.conflicts().await.unwrap();
            let ids = idx
                .iter()
                .map(|i| log.get(*i).map_or(1000, |c| c.id))
                .collect();
            show(s.clear_conflicts(ids).await)
        }
        Step::MadeHere(i, offset) => {
            let p = s.pending(0, 1000).await.unwrap();
            let Some(e) = p.get(i % p.len().max(1)) else {
                return "no pending".into();
            };
            let c = ChangeId {
                client: e.change_id.client.clone(),
                n: e.change_id.n + offset,
            };
            let counter_issued = *offset == 0;
            let answer = s.made_here(&c).await.unwrap();
            // Both stores know their own; neither claims a counter it never issued
            // (for offset 1, only when that counter is not issued yet).
            if counter_issued {
                assert!(answer, "made_here of an own pending change");
            }
            if *offset == 1000 {
                assert!(!answer, "made_here of a counter never issued");
            }
            format!("{offset}")
        }
        Step::Reopen => "reopen".into(),
    }
}

fn open_sled(p: &std::path::Path) -> Box<dyn LocalStore> {
    Box::new(
        SledStore::open_with(
            p,
            schema(),
            tidemark_backends::sled::SledOptions {
                flush_every_write: false,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

proptest! {
    // `PROPTEST_CASES` raises the count, as for every property test here.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96),
        .. ProptestConfig::default()
    })]

    #[test]
    fn sled_behaves_like_memory_store(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sled");
        let ids = ids();
        let memory: Box<dyn LocalStore> = Box::new(
            MemoryStore::with_collections(["songs", "friends"]).with_local_only(["notes"]),
        );
        let mut sled = Some(open_sled(&path));
        rt.block_on(async {
            for (n, step) in steps.iter().enumerate() {
                if let Step::Reopen = step {
                    drop(sled.take()); // close before reopening
                    sled = Some(open_sled(&path));
                }
                let s = sled.as_deref().unwrap();
                let want = run_step(&*memory, step, &ids).await;
                let got = run_step(s, step, &ids).await;
                prop_assert_eq!(&got, &want, "step {} {:?}: result differs", n, step);
                let (want, got) = (observe(&*memory).await, observe(s).await);
                prop_assert_eq!(&got, &want, "step {} {:?}: state differs", n, step);
            }
            Ok(())
        })?;
    }
}
