#![cfg(all(feature = "sqlite", feature = "sled"))]
//! Differential property test: the same random sequence of operations (put, delete,
//! apply_remote, pending, every ack variant incl. superseded ones, resync, reopen)
//! runs against the reference `MemoryStore` and every backend; every observable
//! result must be equal after every step.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    Ack, Fields, LocalStore, Op, Page, PendingChange, Quarantined, Record, RecordId, Rejection,
    RemoteChange, RemoteState, Version, Watermark,
};

use tidemark_backends::{Schema, SqliteStore};

const COLLS: [&str; 2] = ["songs", "friends"];

fn ids() -> Vec<RecordId> {
    [
        "aaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbb",
        "ccccccccccccccc",
        "ddddddddddddddd",
    ]
    .iter()
    .map(|s| RecordId::parse(s).unwrap())
    .collect()
}

#[derive(Clone, Debug)]
enum AckKind {
    Applied(u64),
    Rebase(u64, Option<Option<Fields>>),
    TakeServer(u64, Option<Fields>),
    Quarantine(Option<(u64, Option<Fields>)>),
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
    FinishResync,
    Reopen,
    /// A put made with plain SQL from the app's own connection (captured by the
    /// triggers); a normal put on stores without SQL.
    SqlPut(usize, usize, Fields),
    /// A delete made with plain SQL; a normal delete on stores without SQL.
    SqlDelete(usize, usize),
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

/// Fields valid for either collection's schema (text `title`/`artist`/`name`, number
/// `order`) plus undeclared fields.
fn fields() -> impl Strategy<Value = Fields> {
    (
        proptest::option::of(prop_oneof![
            "[a-z]{0,5}".prop_map(Value::from),
            Just(Value::Null)
        ]),
        proptest::option::of(prop_oneof![
            "[a-z]{0,3}".prop_map(Value::from),
            Just(Value::Null)
        ]),
        proptest::option::of(prop_oneof![
            (-50i64..50).prop_map(Value::from),
            (-50i64..50).prop_map(|i| Value::from(i as f64 + 0.5)),
            Just(Value::Null)
        ]),
        proptest::option::of("[a-z]{0,5}".prop_map(Value::from)),
        proptest::option::of(value()),
        proptest::option::of(value()),
    )
        .prop_map(|(title, artist, order, name, x, group)| {
            let mut f = Fields::new();
            for (k, v) in [
                ("title", title),
                ("artist", artist),
                ("order", order),
                ("name", name),
                ("zz_extra", x),
                ("group", group),
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
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, fields()).prop_map(|(c, i, f)| Step::Put(c, i, f)),
        2 => (0..2usize, 0..4usize).prop_map(|(c, i)| Step::Delete(c, i)),
        3 => (0..2usize, 0..4usize, fields()).prop_map(|(c, i, f)| Step::SqlPut(c, i, f)),
        1 => (0..2usize, 0..4usize).prop_map(|(c, i)| Step::SqlDelete(c, i)),
        3 => (
            proptest::collection::vec(
                (0..2usize, 0..4usize, 1u64..40, proptest::option::of(fields())),
                0..5
            ),
            0u64..40
        )
            .prop_map(|(c, w)| Step::Apply(c, w)),
        1 => (0u64..6, 0usize..6).prop_map(|(a, l)| Step::Pending(a, l)),
        3 => proptest::collection::vec((0..8usize, ack_kind(), proptest::bool::weighted(0.2)), 1..4)
            .prop_map(Step::Ack),
        1 => Just(Step::BeginResync),
        1 => Just(Step::FinishResync),
        1 => Just(Step::Reopen),
    ]
}

enum Kind {
    Memory,
    SqliteMemory,
    SqliteFile(PathBuf),
    Sled(PathBuf),
}

struct Subject {
    kind: Kind,
    store: Option<Box<dyn LocalStore>>,
    sqlite: Option<Arc<SqliteStore>>,
}

impl Subject {
    fn open(&mut self) {
        self.store = None; // close before reopening
        self.sqlite = None;
        self.store = Some(match &self.kind {
            Kind::Memory => Box::new(MemoryStore::new()),
            Kind::SqliteMemory => {
                let s = Arc::new(SqliteStore::open_in_memory(Schema::conformance()).unwrap());
                self.sqlite = Some(s.clone());
                Box::new(s)
            }
            Kind::SqliteFile(p) => {
                let s = Arc::new(SqliteStore::open(p, Schema::conformance()).unwrap());
                self.sqlite = Some(s.clone());
                Box::new(s)
            }
            Kind::Sled(p) => Box::new(
                tidemark_backends::SledStore::open_with(
                    p,
                    Schema::conformance(),
                    tidemark_backends::sled::SledOptions {
                        flush_every_write: false,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
        });
    }
    fn reopen(&mut self) {
        if matches!(self.kind, Kind::SqliteFile(_) | Kind::Sled(_)) {
            self.open();
        }
    }
    fn s(&self) -> &dyn LocalStore {
        self.store.as_deref().unwrap()
    }
}

/// A pending change without its client id: (seq, change n, collection, id, base, op, changed).
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

fn norm_q(q: &Quarantined) -> (String, String) {
    (
        format!("{:?}", norm(&q.change)),
        q.rejection.message.clone(),
    )
}

#[derive(Debug, PartialEq)]
struct Observed {
    records: Vec<Record>,
    pending: Vec<Norm>,
    count: usize,
    watermark: Watermark,
    resyncing: bool,
    quarantine: Vec<(String, String)>,
}

async fn observe(s: &dyn LocalStore) -> Observed {
    let mut records = Vec::new();
    for c in COLLS {
        records.extend(s.list(c).await.unwrap());
    }
    let st = s.sync_state().await.unwrap();
    Observed {
        records,
        pending: s.pending(0, 1000).await.unwrap().iter().map(norm).collect(),
        count: s.pending_count().await.unwrap(),
        watermark: st.watermark,
        resyncing: st.resyncing,
        quarantine: s.quarantined().await.unwrap().iter().map(norm_q).collect(),
    }
}

fn state(version: u64, fields: Option<Fields>) -> RemoteState {
    RemoteState {
        version: Version(version),
        fields,
        change_id: None,
    }
}

/// The plain-SQL version of a put or delete, as an app would write it.
fn sql_step(conn: &rusqlite::Connection, step: &Step, ids: &[RecordId]) -> String {
    use rusqlite::types::Value as Sql;
    match step {
        Step::SqlPut(c, i, f) => {
            let coll = COLLS[*c];
            let declared: &[&str] = if coll == "songs" {
                &["title", "artist", "order"]
            } else {
                &["name"]
            };
            let mut vals = vec![Sql::Text(ids[*i].to_string())];
            let mut extra = Fields::new();
            for d in declared {
                vals.push(match f.get(*d) {
                    None => Sql::Null,
                    Some(Value::Null) => {
                        extra.insert((*d).into(), Value::Null);
                        Sql::Null
                    }
                    Some(Value::String(s)) => Sql::Text(s.clone()),
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(i) => Sql::Integer(i),
                        None => Sql::Real(n.as_f64().unwrap()),
                    },
                    Some(other) => panic!("generator made {other} for {d}"),
                });
            }
            for (k, v) in f {
                if !declared.contains(&k.as_str()) {
                    extra.insert(k.clone(), v.clone());
                }
            }
            vals.push(if extra.is_empty() {
                Sql::Null
            } else {
                Sql::Text(Value::Object(extra).to_string())
            });
            let cols: Vec<String> = declared.iter().map(|d| format!("\"{d}\"")).collect();
            let sql = format!(
                "INSERT INTO \"{coll}\" (\"id\", {cols}, \"_extra\") VALUES ({qs}) \
                 ON CONFLICT (\"id\") DO UPDATE SET {sets}, \"_extra\" = excluded.\"_extra\"",
                cols = cols.join(", "),
                qs = vec!["?"; declared.len() + 2].join(", "),
                sets = cols
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            conn.execute(&sql, rusqlite::params_from_iter(vals))
                .unwrap();
            format!("{:?}", Ok::<(), String>(()))
        }
        Step::SqlDelete(c, i) => {
            let n = conn
                .execute(
                    &format!("DELETE FROM \"{}\" WHERE \"id\" = ?1", COLLS[*c]),
                    [ids[*i].as_str()],
                )
                .unwrap();
            format!("{:?}", Ok::<bool, String>(n > 0))
        }
        _ => unreachable!(),
    }
}

async fn run_step(s: &dyn LocalStore, step: &Step, ids: &[RecordId]) -> String {
    match step {
        Step::Put(c, i, f) => {
            format!(
                "{:?}",
                s.put(Record::new(COLLS[*c], ids[*i].clone(), f.clone()))
                    .await
                    .map_err(|e| e.to_string())
            )
        }
        Step::Delete(c, i) => format!(
            "{:?}",
            s.delete(COLLS[*c], &ids[*i])
                .await
                .map_err(|e| e.to_string())
        ),
        Step::Apply(changes, w) => {
            let page = Page {
                changes: changes
                    .iter()
                    .map(|(c, i, v, f)| RemoteChange {
                        collection: COLLS[*c].into(),
                        id: ids[*i].clone(),
                        state: state(*v, f.clone()),
                    })
                    .collect(),
                watermark: Watermark(*w),
                more: false,
            };
            format!(
                "{:?}",
                s.apply_remote(&page).await.map_err(|e| e.to_string())
            )
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
            let acks: Vec<Ack> = list
                .iter()
                .map(|(idx, kind, stale)| {
                    let e = &p[idx % p.len()];
                    let mut change_id = e.change_id.clone();
                    if *stale {
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
                    }
                })
                .collect();
            format!("{:?}", s.ack(acks).await.map_err(|e| e.to_string()))
        }
        Step::BeginResync => format!("{:?}", s.begin_resync().await.map_err(|e| e.to_string())),
        Step::FinishResync => format!("{:?}", s.finish_resync().await.map_err(|e| e.to_string())),
        Step::Reopen => "reopen".into(),
        Step::SqlPut(c, i, f) => format!(
            "{:?}",
            s.put(Record::new(COLLS[*c], ids[*i].clone(), f.clone()))
                .await
                .map_err(|e| e.to_string())
        ),
        Step::SqlDelete(c, i) => format!(
            "{:?}",
            s.delete(COLLS[*c], &ids[*i])
                .await
                .map_err(|e| e.to_string())
        ),
    }
}

proptest! {
    // `PROPTEST_CASES` raises the count, as for every property test here.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96),
        .. ProptestConfig::default()
    })]

    #[test]
    fn backends_behave_like_memory_store(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ids = ids();
        let mut subjects = vec![
            Subject { kind: Kind::Memory, store: None, sqlite: None },
            Subject { kind: Kind::SqliteMemory, store: None, sqlite: None },
            Subject { kind: Kind::SqliteFile(dir.path().join("s.db")), store: None, sqlite: None },
            Subject { kind: Kind::Sled(dir.path().join("sled")), store: None, sqlite: None },
        ];
        for s in &mut subjects {
            s.open();
        }
        rt.block_on(async {
            for (n, step) in steps.iter().enumerate() {
                if let Step::Reopen = step {
                    for s in &mut subjects {
                        s.reopen();
                    }
                }
                let mut results = Vec::new();
                let mut obs = Vec::new();
                for s in &subjects {
                    results.push(match (step, &s.kind, &s.sqlite) {
                        (Step::SqlPut(..) | Step::SqlDelete(..), Kind::SqliteFile(p), _) => {
                            // The app's own connection to the file.
                            let c = rusqlite::Connection::open(p).unwrap();
                            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                            sql_step(&c, step, &ids)
                        }
                        (Step::SqlPut(..) | Step::SqlDelete(..), _, Some(st)) => {
                            st.with_connection(|c| sql_step(c, step, &ids)).unwrap()
                        }
                        _ => run_step(s.s(), step, &ids).await,
                    });
                    obs.push(observe(s.s()).await);
                }
                for i in 1..subjects.len() {
                    prop_assert_eq!(&results[i], &results[0], "step {} {:?}: result of store {} differs", n, step, i);
                    prop_assert_eq!(&obs[i], &obs[0], "step {} {:?}: state of store {} differs", n, step, i);
                }
            }
            Ok(())
        })?;
    }
}
