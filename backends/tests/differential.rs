#![cfg(feature = "sqlite")]
//! Differential property test: the same random sequence of operations (put, delete,
//! apply_remote, pending, every ack variant incl. superseded ones and logged
//! conflicts, resync scoped or not, quarantine retry/discard, conflict clearing,
//! reopen, backup and restore of the file) runs against the reference
//! `MemoryStore` and every backend (sled with the `sled` feature); every
//! observable result, including `made_here` of every change id seen so far, must
//! be equal after every step.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    Ack, ChangeId, Conflict, Fields, LocalStore, LoggedConflict, Op, Page, PendingChange,
    Quarantined, Record, RecordId, Rejection, RemoteChange, RemoteState, Resolution, Version,
    Watermark,
};

use tidemark_backends::{Schema, SqliteStore};

/// The collections steps name: the two of the conformance schema, `albums`, which
/// no store holds until a `Declare` step, and a name no store can hold.
const COLLS: [&str; 4] = ["songs", "friends", "albums", "not a name!"];
/// What the stores hold from the start.
const HELD: [&str; 2] = ["songs", "friends"];

/// The schema of the SQLite stores: the conformance schema, plus `albums` once
/// declared.
fn schema(albums: bool) -> Schema {
    let s = Schema::conformance();
    if albums {
        s.collection(tidemark_backends::CollectionSchema::new("albums").text("name"))
    } else {
        s
    }
}

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
    /// One `transact` call: a put (`Some`) or delete of each (collection, record).
    Transact(Vec<(usize, usize, Option<Fields>)>),
    Apply(Vec<(usize, usize, u64, Option<Fields>)>, u64),
    Pending(u64, usize),
    /// Ack some pending entries (by index); `stale` acks an older change id.
    Ack(Vec<(usize, AckKind, bool)>),
    BeginResync,
    /// `finish_resync` over every collection, or only `COLLS[i]`.
    FinishResync(Option<usize>),
    Reopen,
    /// Start holding `albums` (SQLite: reopen with a schema that declares it;
    /// memory: `declare`), so what pulls parked of it applies. Nothing while a
    /// resync is under way (see `Step::Declare` in `main`'s loop).
    Declare,
    /// Log a conflict for a pending entry (by index), with a resolution.
    LogConflict(usize, u8),
    /// Clear logged conflicts (by index into the log; an index past it clears an
    /// id that does not exist).
    ClearConflicts(Vec<usize>),
    /// Retry a quarantined change (by index).
    RetryQuarantined(usize),
    /// Discard a quarantined change (by index).
    DiscardQuarantined(usize),
    /// Close the store and copy its file (a backup), then reopen it.
    Backup,
    /// Replace the store by the last backup, opened anew (a restore, or the file
    /// copied to another device). Nothing if there is no backup.
    Restore,
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
        4 => (0..3usize, 0..4usize, fields()).prop_map(|(c, i, f)| Step::Put(c, i, f)),
        2 => (0..3usize, 0..4usize).prop_map(|(c, i)| Step::Delete(c, i)),
        3 => proptest::collection::vec(
                (prop_oneof![8 => 0..2usize, 1 => 2..4usize], 0..4usize, proptest::option::weighted(0.7, fields())),
                0..5
            )
            .prop_map(Step::Transact),
        3 => (0..2usize, 0..4usize, fields()).prop_map(|(c, i, f)| Step::SqlPut(c, i, f)),
        1 => (0..2usize, 0..4usize).prop_map(|(c, i)| Step::SqlDelete(c, i)),
        3 => (
            proptest::collection::vec(
                (0..4usize, 0..4usize, 1u64..40, proptest::option::of(fields())),
                0..5
            ),
            0u64..40
        )
            .prop_map(|(c, w)| Step::Apply(c, w)),
        1 => (0u64..6, 0usize..6).prop_map(|(a, l)| Step::Pending(a, l)),
        3 => proptest::collection::vec((0..8usize, ack_kind(), proptest::bool::weighted(0.2)), 1..4)
            .prop_map(Step::Ack),
        1 => Just(Step::BeginResync),
        1 => proptest::option::of(0..3usize).prop_map(Step::FinishResync),
        1 => Just(Step::Reopen),
        1 => Just(Step::Declare),
        1 => (0..8usize, 0..3u8).prop_map(|(i, r)| Step::LogConflict(i, r)),
        1 => proptest::collection::vec(0..4usize, 1..3).prop_map(Step::ClearConflicts),
        1 => (0..4usize).prop_map(Step::RetryQuarantined),
        1 => (0..4usize).prop_map(Step::DiscardQuarantined),
        1 => Just(Step::Backup),
        1 => Just(Step::Restore),
    ]
}

enum Kind {
    Memory,
    SqliteMemory,
    SqliteFile(PathBuf),
    #[cfg(feature = "sled")]
    Sled(PathBuf),
}

struct Subject {
    kind: Kind,
    store: Option<Box<dyn LocalStore>>,
    sqlite: Option<Arc<SqliteStore>>,
    memory: Option<Arc<MemoryStore>>,
    /// Where `Backup` put the store's copy (the memory store keeps it in memory).
    backup: Option<PathBuf>,
    memory_backup: Option<MemoryStore>,
    /// Whether `albums` is declared.
    albums: bool,
    /// Every change id this subject's pending entries showed so far, in the order
    /// first seen (the same order for every subject when they agree).
    seen: Vec<ChangeId>,
}

fn copy_path(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_path(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        std::fs::remove_dir_all(p).unwrap();
    } else if p.exists() {
        std::fs::remove_file(p).unwrap();
    }
}

impl Subject {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            store: None,
            sqlite: None,
            memory: None,
            backup: None,
            memory_backup: None,
            albums: false,
            seen: Vec::new(),
        }
    }

    fn open(&mut self) {
        self.store = None; // close before reopening
        self.sqlite = None;
        self.memory = None;
        self.store = Some(match &self.kind {
            Kind::Memory => {
                let s = Arc::new(MemoryStore::with_collections(HELD));
                self.memory = Some(s.clone());
                Box::new(s)
            }
            Kind::SqliteMemory => {
                let s = Arc::new(SqliteStore::open_in_memory(schema(self.albums)).unwrap());
                self.sqlite = Some(s.clone());
                Box::new(s)
            }
            Kind::SqliteFile(p) => {
                let s = Arc::new(SqliteStore::open(p, schema(self.albums)).unwrap());
                self.sqlite = Some(s.clone());
                Box::new(s)
            }
            #[cfg(feature = "sled")]
            Kind::Sled(p) => Box::new(
                tidemark_backends::SledStore::open_with(
                    p,
                    schema(self.albums),
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
        if !matches!(self.kind, Kind::Memory | Kind::SqliteMemory) {
            self.open();
        }
    }
    fn path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Memory | Kind::SqliteMemory => None,
            Kind::SqliteFile(p) => Some(p),
            #[cfg(feature = "sled")]
            Kind::Sled(p) => Some(p),
        }
    }
    /// Closes the store (a closed SQLite file has no -wal left), copies its
    /// file or directory, and opens it again.
    fn backup(&mut self, dir: &Path, n: usize) {
        match &self.kind {
            Kind::Memory => {
                let m = self.memory.as_ref().unwrap();
                self.memory_backup = Some(m.reopen_copy());
            }
            Kind::SqliteMemory => {
                let to = dir.join(format!("mem-backup-{n}.db"));
                remove_path(&to);
                let sql = format!("VACUUM INTO '{}'", to.display());
                self.sqlite
                    .as_ref()
                    .unwrap()
                    .with_connection(|c| c.execute_batch(&sql))
                    .unwrap()
                    .unwrap();
                self.backup = Some(to);
            }
            _ => {
                self.store = None;
                self.sqlite = None;
                let from = self.path().unwrap().to_path_buf();
                let to = dir.join(format!("backup-{n}"));
                remove_path(&to);
                copy_path(&from, &to);
                self.backup = Some(to);
                self.open();
            }
        }
    }
    /// Replaces the store by its backup, opened anew.
    fn restore(&mut self, dir: &Path, n: usize) {
        if let Kind::Memory = self.kind {
            if let Some(b) = &self.memory_backup {
                let s = Arc::new(b.reopen_copy());
                if self.albums {
                    // The SQLite stores open the restored file with the schema
                    // of now.
                    s.declare("albums");
                }
                self.memory = Some(s.clone());
                self.store = Some(Box::new(s));
            }
            return;
        }
        let Some(backup) = self.backup.clone() else {
            return;
        };
        self.store = None;
        self.sqlite = None;
        if let Kind::SqliteMemory = self.kind {
            // The in-memory store's backup is a file: from now on it is a file store.
            self.kind = Kind::SqliteFile(dir.join(format!("mem-restored-{n}.db")));
        }
        let to = self.path().unwrap().to_path_buf();
        remove_path(&to);
        for suffix in ["-wal", "-shm"] {
            remove_path(Path::new(&format!("{}{suffix}", to.display())));
        }
        copy_path(&backup, &to);
        self.open();
    }
    /// Starts holding `albums`.
    fn declare(&mut self, dir: &Path, n: usize) {
        if self.albums {
            return;
        }
        self.albums = true;
        match &self.kind {
            Kind::Memory => {
                self.memory.as_ref().unwrap().declare("albums");
            }
            Kind::SqliteMemory => {
                // Only a file can be reopened with another schema. (This is no
                // backup a later `Restore` would use.)
                let saved = self.backup.take();
                self.backup(dir, n);
                self.restore(dir, n);
                self.backup = saved;
            }
            _ => self.open(),
        }
    }
    fn s(&self) -> &dyn LocalStore {
        self.store.as_deref().unwrap()
    }
}

/// A pending change without its client id: (seq, change n, collection, id, base, op, changed).
type Norm = (
    u64,
    u64,
    String,
    RecordId,
    Option<Version>,
    Op,
    Vec<String>,
    Option<sync_traits::TxMark>,
);

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
        p.tx,
    )
}

fn norm_q(q: &Quarantined) -> (u64, String, String) {
    (
        q.id,
        format!("{:?}", norm(&q.change)),
        q.rejection.message.clone(),
    )
}

/// A logged conflict with the local change's client id blanked.
fn norm_c(c: &LoggedConflict) -> (u64, String, String, String) {
    (
        c.id,
        format!("{:?}", norm(&c.conflict.local)),
        format!("{:?}", c.conflict.server),
        format!("{:?}", c.conflict.resolution),
    )
}

#[derive(Debug, PartialEq)]
struct Observed {
    records: Vec<Record>,
    pending: Vec<Norm>,
    count: usize,
    watermark: Watermark,
    resyncing: bool,
    quarantine: Vec<(u64, String, String)>,
    conflicts: Vec<(u64, String, String, String)>,
    /// `made_here` of every change id seen so far.
    made_here: Vec<bool>,
}

async fn observe(s: &dyn LocalStore, seen: &mut Vec<ChangeId>) -> Observed {
    let pending = s.pending(0, 1000).await.unwrap();
    for p in &pending {
        if !seen.contains(&p.change_id) {
            seen.push(p.change_id.clone());
        }
    }
    let mut made_here = Vec::new();
    for c in seen.iter() {
        made_here.push(s.made_here(c).await.unwrap());
    }
    let mut records = Vec::new();
    for c in COLLS {
        // `albums` errors alike until declared.
        records.extend(s.list(c).await.unwrap_or_default());
    }
    let st = s.sync_state().await.unwrap();
    Observed {
        records,
        pending: pending.iter().map(norm).collect(),
        count: s.pending_count().await.unwrap(),
        watermark: st.watermark,
        resyncing: st.resyncing,
        quarantine: s.quarantined().await.unwrap().iter().map(norm_q).collect(),
        conflicts: s.conflicts().await.unwrap().iter().map(norm_c).collect(),
        made_here,
    }
}

/// The fields of a pending upsert (empty for a delete).
fn local_fields(p: &PendingChange) -> Fields {
    match &p.op {
        Op::Upsert(f) => f.clone(),
        Op::Delete => Fields::new(),
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
        Step::Transact(writes) => {
            let writes = writes
                .iter()
                .map(|(c, i, f)| match f {
                    Some(f) => {
                        sync_traits::Write::Put(Record::new(COLLS[*c], ids[*i].clone(), f.clone()))
                    }
                    None => sync_traits::Write::Delete {
                        collection: COLLS[*c].into(),
                        id: ids[*i].clone(),
                    },
                })
                .collect();
            format!("{:?}", s.transact(writes).await.map_err(|e| e.to_string()))
        }
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
        Step::FinishResync(only) => {
            let synced = only.map(|i| [COLLS[i].to_string()].into_iter().collect::<BTreeSet<_>>());
            format!(
                "{:?}",
                s.finish_resync(synced).await.map_err(|e| e.to_string())
            )
        }
        Step::Reopen => "reopen".into(),
        Step::Declare => "declare".into(),
        Step::Backup => "backup".into(),
        Step::Restore => "restore".into(),
        Step::LogConflict(i, r) => {
            let p = s.pending(0, 1000).await.unwrap();
            if p.is_empty() {
                return "no pending".into();
            }
            let local = p[i % p.len()].clone();
            let resolution = match r {
                0 => Resolution::TakeServer,
                1 => Resolution::KeepLocal,
                _ => Resolution::Replace(Op::Upsert(local_fields(&local))),
            };
            let conflict = Conflict {
                local,
                server: state(7, None),
                resolution,
            };
            format!(
                "{:?}",
                s.ack(vec![Ack::Conflict(conflict)])
                    .await
                    .map_err(|e| e.to_string())
            )
        }
        Step::ClearConflicts(idx) => {
            let log = s.conflicts().await.unwrap();
            let ids: Vec<u64> = idx
                .iter()
                .map(|i| log.get(*i).map_or(1000 + *i as u64, |c| c.id))
                .collect();
            format!(
                "{:?}",
                s.clear_conflicts(ids).await.map_err(|e| e.to_string())
            )
        }
        Step::RetryQuarantined(i) | Step::DiscardQuarantined(i) => {
            let q = s.quarantined().await.unwrap();
            if q.is_empty() {
                return "no quarantine".into();
            }
            let id = q[i % q.len()].id;
            let r = if let Step::RetryQuarantined(_) = step {
                s.retry_quarantined(id).await
            } else {
                s.discard_quarantined(id).await
            };
            format!("{:?}", r.map_err(|e| e.to_string()))
        }
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
            Subject::new(Kind::Memory),
            Subject::new(Kind::SqliteMemory),
            Subject::new(Kind::SqliteFile(dir.path().join("s.db"))),
            #[cfg(feature = "sled")]
            Subject::new(Kind::Sled(dir.path().join("sled"))),
        ];
        for s in &mut subjects {
            s.open();
        }
        rt.block_on(async {
            for (n, step) in steps.iter().enumerate() {
                // MemoryStore::declare does not count what it brings in as seen
                // by a resync under way (so a finish_resync removes it); SQLite
                // does (a resync drops the parked records when it begins, so what
                // is parked came with it). Declaring mid-resync is left out.
                let resyncing = subjects[0].s().sync_state().await.unwrap().resyncing;
                for (k, s) in subjects.iter_mut().enumerate() {
                    let at = dir.path().join(format!("subject-{k}"));
                    std::fs::create_dir_all(&at).unwrap();
                    match step {
                        Step::Reopen => s.reopen(),
                        Step::Backup => s.backup(&at, n),
                        Step::Restore => s.restore(&at, n),
                        Step::Declare if !resyncing => s.declare(&at, n),
                        _ => {}
                    }
                }
                let mut results = Vec::new();
                let mut obs = Vec::new();
                for s in &mut subjects {
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
                    let mut seen = std::mem::take(&mut s.seen);
                    obs.push(observe(s.s(), &mut seen).await);
                    s.seen = seen;
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
