//! Chaos against a real PocketBase: K clients (SQLite and sled, two or more users and
//! a superuser) write at random — creates, edits of their own and of shared records,
//! deletes, offline periods — and sync with `run_live` (realtime hints on), each
//! through its own fault-injecting proxy (`chaos/proxy.rs`: latency, dropped and
//! reset connections, responses cut mid-body, partitions), while PocketBase is
//! SIGKILLed and restarted on the same data dir and tombstones are compacted.
//! Then the network heals, every client syncs until quiet, and an oracle reading the
//! server as superuser through the plain REST API checks: every store equals what
//! the server shows its user; every local write is on the server (it, or a later
//! change of the same writer to the same record, took a seq), kept in the store's
//! conflict log or quarantine, or superseded by the client's own later delete of a
//! record the server does not have; no change id took two seqs; every store is at
//! the server's head with an empty outbox.
//!
//! The driver compacts at random (a 2 s retention; `CHAOS_COMPACT=0` turns it off).
//!
//! Seeded: `CHAOS_SEED` repeats a run's choices (its seed is printed; thread timing
//! still varies). `CHAOS_SECS` (default 15) and `CHAOS_CLIENTS` (default 5) raise it.

#[path = "chaos/logged.rs"]
mod logged;
#[path = "chaos/oracle.rs"]
mod oracle;
#[path = "chaos/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pocketbase_remote::harness::{Options, TestServer, ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD};
use pocketbase_remote::PocketBaseRemote;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Map, Value};
use sync_traits::testkit::{Fault, Faulty};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, ClientWins, LocalStore, Record, RecordId, RemoteStore, RetryPolicy, ServerWins,
    SyncConfig, SyncEngine,
};
use tidemark_backends::{Schema, SledStore, SqliteStore};

use logged::Logged;
use oracle::{Oracle, APPLIED_LOG_MIGRATION};
use proxy::{Mode, Proxy};

const SONG_FIELDS: &[&str] = &["title", "artist", "order", "owner"];
const FRIEND_FIELDS: &[&str] = &["name", "owner"];

fn fields_of(collection: &str) -> &'static [&'static str] {
    if collection == "songs" {
        SONG_FIELDS
    } else {
        FRIEND_FIELDS
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Client {
    name: String,
    /// The user it signs in as; `None` for the superuser.
    user: Option<RecordId>,
    engine: SyncEngine<Logged, PocketBaseRemote>,
    proxy: Proxy,
}

/// What the run did, by kind.
#[derive(Default)]
struct Stats {
    creates: AtomicU64,
    edits_own: AtomicU64,
    edits_shared: AtomicU64,
    deletes: AtomicU64,
    offline: AtomicU64,
    kills: AtomicU64,
    compactions: AtomicU64,
    partitions: AtomicU64,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn new_fields(collection: &str, tag: &str, n: i64, owner: &RecordId) -> Map<String, Value> {
    let v = if collection == "songs" {
        json!({"title": tag, "artist": tag, "order": n, "owner": owner.as_str()})
    } else {
        json!({"name": tag, "owner": owner.as_str()})
    };
    v.as_object().cloned().unwrap_or_default()
}

/// Changes one field (not the owner) of `r` to a new value.
fn edited(r: &Record, rng: &mut SmallRng, tag: &str, n: i64) -> Record {
    let names: Vec<&str> = fields_of(&r.collection)
        .iter()
        .copied()
        .filter(|f| *f != "owner")
        .collect();
    let f = names[rng.random_range(0..names.len())];
    let mut fields = r.fields.clone();
    fields.insert(
        f.to_owned(),
        if f == "order" { json!(n) } else { json!(tag) },
    );
    Record::new(r.collection.clone(), r.id.clone(), fields)
}

/// One client's random writes until `deadline`.
async fn writer(
    c: &Client,
    idx: usize,
    seed: u64,
    users: &[RecordId],
    deadline: Instant,
    stats: &Stats,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let store = c.engine.local();
    let mut mine: Vec<(&'static str, RecordId)> = Vec::new();
    let mut offline_until: Option<Instant> = None;
    for k in 1..=20_000i64 {
        if Instant::now() >= deadline {
            break;
        }
        if offline_until.is_some_and(|t| Instant::now() >= t) {
            offline_until = None;
            c.proxy.set_mode(Mode::Faulty);
        }
        let tag = format!("c{idx}-{k}");
        let n = (idx as i64) * 1_000_000 + k;
        let coll: &'static str = if rng.random_bool(0.7) {
            "songs"
        } else {
            "friends"
        };
        match rng.random_range(0..100u32) {
            0..30 => {
                let owner = match &c.user {
                    Some(u) => u.clone(),
                    None => users[rng.random_range(0..users.len())].clone(),
                };
                let id = new_id();
                store
                    .put(Record::new(
                        coll,
                        id.clone(),
                        new_fields(coll, &tag, n, &owner),
                    ))
                    .await
                    .unwrap_or_else(|e| panic!("{}: create: {e}", c.name));
                mine.push((coll, id));
                bump(&stats.creates);
            }
            30..55 if !mine.is_empty() => {
                let (coll, id) = mine[rng.random_range(0..mine.len())].clone();
                if let Some(r) = store.get(coll, &id).await.expect("get") {
                    store
                        .put(edited(&r, &mut rng, &tag, n))
                        .await
                        .unwrap_or_else(|e| panic!("{}: edit: {e}", c.name));
                    bump(&stats.edits_own);
                }
            }
            55..80 => {
                let all = store.list(coll).await.expect("list");
                let shared: Vec<&Record> = all
                    .iter()
                    .filter(|r| !mine.iter().any(|(_, m)| m == &r.id))
                    .collect();
                if !shared.is_empty() {
                    let r = shared[rng.random_range(0..shared.len())];
                    store
                        .put(edited(r, &mut rng, &tag, n))
                        .await
                        .unwrap_or_else(|e| panic!("{}: edit: {e}", c.name));
                    bump(&stats.edits_shared);
                }
            }
            80..90 => {
                let all = store.list(coll).await.expect("list");
                if !all.is_empty() {
                    let r = &all[rng.random_range(0..all.len())];
                    if store.delete(coll, &r.id).await.expect("delete") {
                        bump(&stats.deletes);
                    }
                }
            }
            90..100 if offline_until.is_none() => {
                let m = if rng.random_bool(0.5) {
                    Mode::Refuse
                } else {
                    Mode::Blackhole
                };
                c.proxy.set_mode(m);
                offline_until =
                    Some(Instant::now() + Duration::from_millis(rng.random_range(300..2000)));
                bump(&stats.offline);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
    }
    if offline_until.is_some() {
        c.proxy.set_mode(Mode::Faulty);
    }
}

/// `run_live` until `stop` turns true; a permanent error is noted and the loop
/// started again (an application would ask its user; here it is a finding).
async fn live(c: &Client, stop: tokio::sync::watch::Receiver<bool>) -> Vec<String> {
    let mut errors = Vec::new();
    while !*stop.borrow() && errors.len() < 100 {
        let hints = c.engine.remote().subscribe();
        let mut s = stop.clone();
        let r = c
            .engine
            .run_live(hints, Duration::from_millis(500), async move {
                let _ = s.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = r {
            errors.push(format!("{}: run_live ended: {e}", c.name));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    errors
}

/// Kills and restarts the server, compacts, partitions clients, until `deadline`.
async fn driver(
    srv: Arc<Mutex<TestServer>>,
    admin: PocketBaseRemote,
    clients: Arc<Vec<Client>>,
    seed: u64,
    deadline: Instant,
    compact: bool,
    stats: Arc<Stats>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Each kind once per round of three, in a random order: even a short run kills,
    // compacts and partitions.
    let mut order = [0u32, 1, 2];
    for step in 0..10_000usize {
        if step % 3 == 0 {
            for i in (1..3).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
        }
        let wait = Duration::from_millis(rng.random_range(700..2500));
        if Instant::now() + wait >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        match order[step % 3] {
            0 => {
                let down = Duration::from_millis(rng.random_range(50..1500));
                let s = srv.clone();
                tokio::task::spawn_blocking(move || {
                    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                    // `stop` is SIGKILL (std's Child::kill on Unix).
                    s.stop();
                    std::thread::sleep(down);
                    s.resume();
                })
                .await
                .expect("restart");
                bump(&stats.kills);
            }
            1 if compact => {
                let older = Duration::from_secs(rng.random_range(0..3));
                if admin.compact(older).await.is_ok() {
                    bump(&stats.compactions);
                }
            }
            1 => {}
            _ => {
                let c = &clients[rng.random_range(0..clients.len())];
                let m = if rng.random_bool(0.5) {
                    Mode::Refuse
                } else {
                    Mode::Blackhole
                };
                c.proxy.set_mode(m);
                bump(&stats.partitions);
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
                c.proxy.set_mode(Mode::Faulty);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_under_network_faults_and_server_kills_lose_nothing_and_converge() {
    let t0 = Instant::now();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let secs = env_u64("CHAOS_SECS", 15);
    let k = env_u64("CHAOS_CLIENTS", 5).max(3) as usize;
    let compact = env_u64("CHAOS_COMPACT", 1) != 0;
    eprintln!(
        "chaos: CHAOS_SEED={seed} CHAOS_SECS={secs} CHAOS_CLIENTS={k} CHAOS_COMPACT={}",
        compact as u8
    );

    let mut opts =
        Options::default().add_migration("1764000009_chaos_applied.js", APPLIED_LOG_MIGRATION);
    if compact {
        opts = opts
            .env("TIDEMARK_TOMBSTONE_RETENTION", "2")
            .env("TIDEMARK_COMPACT_CRON", "* * * * *");
    }
    let srv = TestServer::start_with(&opts);
    let url = srv.url().to_owned();
    let upstream: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    let n_users = ((k - 1) / 2).max(2);
    let mut users = Vec::new();
    for u in 0..n_users {
        users.push(srv.create_user(&format!("u{u}@chaos.test")).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut clients = Vec::new();
    for i in 0..k {
        let proxy = Proxy::start(
            upstream,
            seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
        .await
        .expect("proxy");
        let superuser = i == k - 1;
        let b = PocketBaseRemote::builder(proxy.url()).timeout(Duration::from_secs(4));
        let (b, user) = if superuser {
            (b.superuser(ADMIN_EMAIL, ADMIN_PASSWORD), None)
        } else {
            let u = i % n_users;
            (
                b.user("users", format!("u{u}@chaos.test"), USER_PASSWORD),
                Some(users[u].clone()),
            )
        };
        let remote = b.connect().await.expect("connect");
        let store: Box<dyn LocalStore> = if i % 2 == 0 {
            Box::new(
                SqliteStore::open(dir.path().join(format!("c{i}.sqlite")), Schema::sample())
                    .expect("sqlite"),
            )
        } else {
            Box::new(
                SledStore::open(dir.path().join(format!("c{i}.sled")), Schema::sample())
                    .expect("sled"),
            )
        };
        let config = SyncConfig {
            retry: RetryPolicy {
                max_retries: 3,
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(500),
            },
            push_batch: 50,
            ..SyncConfig::default()
        };
        let engine = SyncEngine::new(Logged::new(store), remote).with_config(config);
        let (engine, policy) = match i % 3 {
            0 => (engine, "field-merge"),
            1 => (engine.with_policy(ServerWins), "server-wins"),
            _ => (engine.with_policy(ClientWins), "client-wins"),
        };
        let name = format!(
            "c{i}({}, {}, {policy})",
            if i % 2 == 0 { "sqlite" } else { "sled" },
            if superuser {
                "superuser".to_owned()
            } else {
                format!("u{}", i % n_users)
            }
        );
        proxy.set_mode(Mode::Faulty);
        clients.push(Client {
            name,
            user,
            engine,
            proxy,
        });
    }
    let clients = Arc::new(clients);
    let srv = Arc::new(Mutex::new(srv));
    let admin = PocketBaseRemote::builder(&url)
        .superuser(ADMIN_EMAIL, ADMIN_PASSWORD)
        .timeout(Duration::from_secs(4))
        .connect()
        .await
        .expect("admin");
    let stats = Arc::new(Stats::default());
    let setup = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(secs);

    // ---- chaos ----
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..k {
        let (clients, users, stats, stop) = (
            clients.clone(),
            users.clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        let wseed = seed.wrapping_add(1000 + i as u64);
        tasks.push(tokio::spawn(async move {
            let c = &clients[i];
            let (errors, ()) =
                tokio::join!(live(c, stop), writer(c, i, wseed, &users, deadline, &stats));
            errors
        }));
    }
    driver(
        srv.clone(),
        admin.clone(),
        clients.clone(),
        seed.wrapping_add(7),
        deadline,
        compact,
        stats.clone(),
    )
    .await;
    // Writers stop at the deadline; the live loops run on until told.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    let stopping = Instant::now();
    let mut live_errors = Vec::new();
    for t in tasks {
        live_errors.extend(t.await.expect("client task"));
    }
    // How long the live loops took to end: a sync under way finishes first.
    let stop_took = stopping.elapsed();
    // What the server refused so far (kept, with its data, in each quarantine).
    for c in clients.iter() {
        for q in c.engine.local().quarantined().await.expect("quarantined") {
            eprintln!(
                "chaos: {} quarantined {} {}/{}: {}",
                c.name, q.change.change_id, q.change.collection, q.change.id, q.rejection.message
            );
        }
    }
    let heal_start = Instant::now();

    // ---- heal, then sync until quiet ----
    for c in clients.iter() {
        c.proxy.set_mode(Mode::Clean);
    }
    let mut quiet_after = None;
    let mut last = String::new();
    // A client whose sync fails the same way three rounds in a row on a healed
    // network with a running server is wedged: no later round would move it.
    let mut same_error: Vec<(String, u32)> = vec![(String::new(), 0); clients.len()];
    for round in 1..=12 {
        let mut busy = false;
        for (i, c) in clients.iter().enumerate() {
            let r = c.engine.sync().await;
            let e = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            same_error[i] = if !e.is_empty() && e == same_error[i].0 {
                (e, same_error[i].1 + 1)
            } else {
                (e, 1)
            };
            assert!(
                same_error[i].1 < 3,
                "{} is wedged: its sync failed the same way 3 rounds in a row on a healed \
                 network: {}",
                c.name,
                same_error[i].0
            );
            match r {
                Ok(r) => {
                    if r.pushed + r.pulled + r.remaining + r.conflicts + r.rejected > 0
                        || r.resynced
                    {
                        busy = true;
                        last = format!("{}: {r:?}", c.name);
                    }
                }
                Err(e) => {
                    busy = true;
                    last = format!("{}: {e}", c.name);
                }
            }
        }
        if !busy {
            quiet_after = Some(round);
            break;
        }
    }
    let heal_took = heal_start.elapsed();
    let quiet_after = quiet_after.unwrap_or_else(|| {
        panic!("not quiet after 12 rounds of syncs on a healed network; last: {last}")
    });

    // ---- the oracle ----
    let token = admin.token().await.expect("token");
    let oracle = Oracle::new(&url, token);
    let head = admin.head().await.expect("head").head;
    let mut server: BTreeMap<&str, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    for coll in ["songs", "friends"] {
        server.insert(coll, oracle.live(coll, fields_of(coll)).await);
    }
    let tombstones = oracle.tombstones().await;
    let applied = oracle.applied().await;

    // No change id applied twice: each took one seq.
    let mut seqs: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for a in applied.iter().filter(|a| !a.cid.is_empty()) {
        seqs.entry(a.cid.as_str()).or_default().insert(a.seq);
    }
    let twice: Vec<_> = seqs.iter().filter(|(_, s)| s.len() > 1).collect();
    if !twice.is_empty() {
        // The trail: every write the server logged to those records, and what each
        // client's conflict log says of those change ids.
        for (cid, _) in &twice {
            let Some(first) = applied.iter().find(|a| a.cid == **cid) else {
                continue;
            };
            for a in applied
                .iter()
                .filter(|a| a.coll == first.coll && a.rid == first.rid)
            {
                eprintln!(
                    "chaos: trail {}/{}: seq {} cid {}",
                    a.coll, a.rid, a.seq, a.cid
                );
            }
            for c in clients.iter() {
                for l in c.engine.local().conflicts().await.expect("conflicts") {
                    if l.conflict.local.change_id.to_string() == **cid {
                        eprintln!("chaos: {} logged a conflict of {cid}: {l:?}", c.name);
                    }
                }
            }
        }
    }
    assert!(
        twice.is_empty(),
        "changes applied more than once: {twice:?}"
    );
    // (writer, collection, record) -> the newest counter the server applied.
    let mut newest: HashMap<(String, String, String), u64> = HashMap::new();
    for a in &applied {
        if let Some((w, n)) = a.cid.split_once('.') {
            if let Ok(n) = n.parse::<u64>() {
                let e = newest
                    .entry((w.to_owned(), a.coll.clone(), a.rid.clone()))
                    .or_insert(0);
                *e = (*e).max(n);
            }
        }
    }

    let (mut writes, mut conflicts, mut quarantined, mut lost) = (0usize, 0, 0, Vec::new());
    for c in clients.iter() {
        let store = c.engine.local();
        for coll in ["songs", "friends"] {
            let want: BTreeMap<String, Map<String, Value>> = server[coll]
                .iter()
                .filter(|(_, f)| {
                    c.user
                        .as_ref()
                        .is_none_or(|u| f.get("owner") == Some(&json!(u.as_str())))
                })
                .map(|(id, f)| (id.clone(), f.clone()))
                .collect();
            let have: BTreeMap<String, Map<String, Value>> = store
                .list(coll)
                .await
                .expect("list")
                .into_iter()
                .map(|r| (r.id.as_str().to_owned(), r.fields))
                .collect();
            let diff: Vec<_> = want
                .keys()
                .chain(have.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|id| want.get(*id) != have.get(*id))
                .map(|id| (id, have.get(id), want.get(id)))
                .collect();
            assert!(
                diff.is_empty(),
                "{} {coll}: store differs from the server's view (id, local, server): {diff:?}",
                c.name
            );
        }
        assert_eq!(
            store.pending_count().await.expect("pending"),
            0,
            "{}: outbox not empty when quiet",
            c.name
        );
        let st = store.sync_state().await.expect("state");
        assert!(
            st.watermark == head && !st.resyncing,
            "{}: not caught up: {st:?}, head {head:?}",
            c.name
        );
        // Every write is on the server (it, or a later change of the same writer
        // to the same record, took a seq), kept in the conflict log or the
        // quarantine, or a delete of what the server no longer has.
        let mut kept: HashMap<(String, String, String), u64> = HashMap::new();
        let cl = store.conflicts().await.expect("conflicts");
        let q = store.quarantined().await.expect("quarantined");
        conflicts += cl.len();
        quarantined += q.len();
        for ch in cl
            .iter()
            .map(|c| &c.conflict.local)
            .chain(q.iter().map(|q| &q.change))
        {
            // Kept with its data: an upsert holds the whole record it wrote.
            if let sync_traits::Op::Upsert(f) = &ch.op {
                assert!(
                    f.contains_key("owner"),
                    "{}: change {} kept without its data: {:?}",
                    c.name,
                    ch.change_id,
                    ch.op
                );
            }
            let e = kept
                .entry((
                    ch.change_id.client.as_str().to_owned(),
                    ch.collection.clone(),
                    ch.id.as_str().to_owned(),
                ))
                .or_insert(0);
            *e = (*e).max(ch.change_id.n);
        }
        let log = store.writes();
        for (i, w) in log.iter().enumerate() {
            writes += 1;
            let key = (
                w.change.client.as_str().to_owned(),
                w.collection.clone(),
                w.id.as_str().to_owned(),
            );
            let on_server = newest.get(&key).is_some_and(|n| *n >= w.change.n);
            let reported = kept.get(&key).is_some_and(|n| *n >= w.change.n);
            // A delete (this write or a later one of this client) of a record the
            // server no longer has: a create deleted before it was pushed, or a
            // delete of what another client deleted, writes nothing.
            let gone = !server[w.collection.as_str()].contains_key(w.id.as_str())
                && log[i..]
                    .iter()
                    .any(|l| l.delete && l.collection == w.collection && l.id == w.id);
            if !(on_server || reported || gone) {
                let trail: Vec<String> = applied
                    .iter()
                    .filter(|a| a.coll == w.collection && a.rid == w.id.as_str())
                    .map(|a| format!("{}@{}", a.cid, a.seq))
                    .collect();
                let kept_here: Vec<String> = cl
                    .iter()
                    .filter(|k| k.conflict.local.id == w.id)
                    .map(|k| format!("{}:{:?}", k.conflict.local.change_id, k.conflict.resolution))
                    .collect();
                lost.push(format!(
                    "{}: {} {}/{} (delete: {}); server: {:?}; seqs taken: {trail:?}; conflicts logged: {kept_here:?}",
                    c.name,
                    w.change,
                    w.collection,
                    w.id,
                    w.delete,
                    server[w.collection.as_str()].get(w.id.as_str()),
                ));
            }
        }
    }

    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for c in clients.iter() {
        for (kind, n) in c.proxy.counts().snapshot() {
            *faults.entry(kind).or_insert(0) += n;
        }
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "chaos: seed {seed}, {k} clients, {} users; setup {:.1} s, {secs} s of chaos, live loops \
         stopped in {:.1} s, quiet after {quiet_after} rounds ({:.1} s); total {:.1} s",
        n_users,
        setup.as_secs_f64(),
        stop_took.as_secs_f64(),
        heal_took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "chaos: writes {writes} (creates {}, own edits {}, shared edits {}, deletes {}), \
         offline periods {}, partitions {}, server kills {}, compactions {}",
        g(&stats.creates),
        g(&stats.edits_own),
        g(&stats.edits_shared),
        g(&stats.deletes),
        g(&stats.offline),
        g(&stats.partitions),
        g(&stats.kills),
        g(&stats.compactions)
    );
    eprintln!("chaos: proxy faults {faults:?}");
    eprintln!(
        "chaos: server seq head {}, {} logged seqs, {} live songs, {} live friends, {} tombstones; \
         conflicts logged {conflicts}, quarantined {quarantined}, lost {}",
        head.0,
        applied.len(),
        server["songs"].len(),
        server["friends"].len(),
        tombstones.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "writes silently lost: {lost:#?}");
    assert!(
        live_errors.is_empty(),
        "run_live stopped on a permanent error under transient faults: {live_errors:#?}"
    );
    assert!(writes > 0 && g(&stats.kills) + g(&stats.partitions) > 0);
}

/// Found by the chaos run: an edit made on a record that another device deleted,
/// pushed after the delete's tombstone was compacted, is refused for its stale base,
/// and the remote then finds neither the record nor its tombstone. The push answers a
/// transient error for it every time, so the edit never leaves the outbox and every
/// later sync fails: the upload is wedged. It must settle (a conflict with the
/// deletion, logged with the edit's data, or the record made again) within a few
/// syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_record_deleted_and_compacted_elsewhere_settles() {
    let srv = TestServer::start();
    let user = srv.create_user("gone@chaos.test").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = SyncConfig {
        retry: RetryPolicy::immediate(1),
        ..SyncConfig::default()
    };
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).expect("sqlite"),
        srv.user("gone@chaos.test").await,
    )
    .with_config(fast.clone());
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).expect("sled"),
        srv.user("gone@chaos.test").await,
    )
    .with_config(fast)
    .with_policy(ServerWins);
    let id = new_id();
    a.local()
        .put(Record::new(
            "songs",
            id.clone(),
            new_fields("songs", "first", 1, &user),
        ))
        .await
        .expect("put");
    a.sync().await.expect("a sync");
    b.sync().await.expect("b sync");
    let r = b
        .local()
        .get("songs", &id)
        .await
        .expect("get")
        .expect("synced to b");

    // B edits offline; A deletes; the tombstone is compacted before B comes back.
    let mut f = r.fields.clone();
    f.insert("title".into(), json!("edited on b"));
    b.local()
        .put(Record::new("songs", id.clone(), f))
        .await
        .expect("edit");
    assert!(a.local().delete("songs", &id).await.expect("delete"));
    a.sync().await.expect("a sync");
    srv.superuser()
        .await
        .compact(Duration::ZERO)
        .await
        .expect("compact");

    let mut results = Vec::new();
    for _ in 0..5 {
        let r = b.sync().await;
        let done = r.is_ok() && b.local().pending_count().await.expect("pending") == 0;
        results.push(r.map(|r| r.conflicts).map_err(|e| e.to_string()));
        if done {
            break;
        }
    }
    assert_eq!(
        b.local().pending_count().await.expect("pending"),
        0,
        "the edit is still in B's outbox after 5 syncs: {results:?}"
    );
    let kept = b.local().conflicts().await.expect("conflicts");
    let on_server = srv
        .superuser()
        .await
        .fetch("songs", &id)
        .await
        .expect("fetch")
        .and_then(|s| s.fields)
        .is_some_and(|f| f["title"] == "edited on b");
    assert!(
        on_server || kept.iter().any(|c| c.conflict.local.id == id),
        "the edit is neither on the server nor in B's conflict log: {results:?}"
    );
}

/// The same wedge as [`an_edit_of_a_record_deleted_and_compacted_elsewhere_settles`],
/// reached after the conflict: under ClientWins an edit that met the deletion of its
/// record is kept and re-based on the tombstone, to be written again; if the
/// tombstone is compacted before that push, the push is refused for its base and
/// the remote, finding neither record nor tombstone, answers a transient error on
/// every sync. The reference remote answers a conflict with a tombstone at the
/// horizon and then accepts the write: the kept edit must end up on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_wins_edit_rebased_on_a_compacted_tombstone_settles() {
    let srv = TestServer::start();
    let user = srv.create_user("wins@chaos.test").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).expect("sqlite"),
        srv.user("wins@chaos.test").await,
    )
    .with_config(SyncConfig {
        retry: RetryPolicy::immediate(1),
        ..SyncConfig::default()
    });
    // B re-pushes a re-based change only on its next sync.
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).expect("sled"),
        srv.user("wins@chaos.test").await,
    )
    .with_config(SyncConfig {
        retry: RetryPolicy::immediate(1),
        max_conflict_rounds: 0,
        ..SyncConfig::default()
    })
    .with_policy(ClientWins);
    let id = new_id();
    a.local()
        .put(Record::new(
            "songs",
            id.clone(),
            new_fields("songs", "first", 1, &user),
        ))
        .await
        .expect("put");
    a.sync().await.expect("a sync");
    b.sync().await.expect("b sync");
    let mut f = b
        .local()
        .get("songs", &id)
        .await
        .expect("get")
        .expect("synced to b")
        .fields;
    f.insert("title".into(), json!("kept by b"));
    b.local()
        .put(Record::new("songs", id.clone(), f))
        .await
        .expect("edit");
    assert!(a.local().delete("songs", &id).await.expect("delete"));
    a.sync().await.expect("a sync");
    // B meets the tombstone; ClientWins keeps the edit, re-based on the tombstone.
    let r = b.sync().await.expect("b sync");
    assert_eq!(r.conflicts, 1, "{r:?}");
    assert_eq!(b.local().pending_count().await.expect("pending"), 1);
    srv.superuser()
        .await
        .compact(Duration::ZERO)
        .await
        .expect("compact");

    let mut results = Vec::new();
    for _ in 0..4 {
        let r = b.sync().await;
        results.push(r.map_err(|e| e.to_string()));
    }
    let q = b.local().quarantined().await.expect("quarantined");
    let on_server = srv
        .superuser()
        .await
        .fetch("songs", &id)
        .await
        .expect("fetch")
        .and_then(|s| s.fields)
        .is_some_and(|f| f["title"] == "kept by b");
    assert!(
        on_server,
        "the ClientWins edit is not on the server; quarantined: {:?}; syncs: {results:?}",
        q.iter().map(|q| &q.rejection.message).collect::<Vec<_>>()
    );
}

/// Found by the chaos run (with compaction): a delete of a record that another
/// device deleted, pushed after that tombstone was compacted, is quarantined as a
/// rejection ("The requested resource wasn't found.", `delete_of_missing` finds no
/// tombstone for a delete based on a version), though what it asked for is done: the
/// record is gone. The reference remote answers it as a conflict with a tombstone at
/// the horizon, which settles without a rejection. Nothing is lost, but the
/// application is told a delete was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_a_record_deleted_and_compacted_elsewhere_is_not_a_rejection() {
    let srv = TestServer::start();
    let user = srv.create_user("twice@chaos.test").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = SyncConfig {
        retry: RetryPolicy::immediate(1),
        ..SyncConfig::default()
    };
    let a = SyncEngine::new(
        SqliteStore::open(dir.path().join("a.sqlite"), Schema::sample()).expect("sqlite"),
        srv.user("twice@chaos.test").await,
    )
    .with_config(fast.clone());
    let b = SyncEngine::new(
        SledStore::open(dir.path().join("b.sled"), Schema::sample()).expect("sled"),
        srv.user("twice@chaos.test").await,
    )
    .with_config(fast);
    let id = new_id();
    a.local()
        .put(Record::new(
            "songs",
            id.clone(),
            new_fields("songs", "first", 1, &user),
        ))
        .await
        .expect("put");
    a.sync().await.expect("a sync");
    b.sync().await.expect("b sync");
    // Both delete; A's reaches the server and its tombstone is compacted first.
    assert!(a.local().delete("songs", &id).await.expect("delete"));
    assert!(b.local().delete("songs", &id).await.expect("delete"));
    a.sync().await.expect("a sync");
    srv.superuser()
        .await
        .compact(Duration::ZERO)
        .await
        .expect("compact");
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(
            b.sync()
                .await
                .map(|r| r.rejected)
                .map_err(|e| e.to_string()),
        );
    }
    let q = b.local().quarantined().await.expect("quarantined");
    assert!(
        q.is_empty(),
        "a delete of what is already gone was quarantined: {:?}; syncs: {results:?}",
        q.iter().map(|q| &q.rejection.message).collect::<Vec<_>>()
    );
    assert_eq!(b.local().pending_count().await.expect("pending"), 0);
    assert!(b.local().get("songs", &id).await.expect("get").is_none());
}

/// Finding 3: a create whose answer was lost, pushed again after another device
/// deleted the record and its tombstone was compacted, must not be applied again
/// (the deleted record would come back under a change id applied before). With
/// ServerWins the deletion stands and the create's data is kept in the conflict
/// log; with ClientWins the record is written again, as a new change id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_after_its_deletion_was_compacted_is_not_applied_twice() {
    let srv = TestServer::start();
    let user = srv.create_user("retry@chaos.test").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = SyncConfig {
        retry: RetryPolicy::immediate(1),
        ..SyncConfig::default()
    };
    for (round, client_wins) in [(0, false), (1, true)] {
        let remote = Faulty::new(srv.user("retry@chaos.test").await);
        let a = SyncEngine::new(
            SqliteStore::open(
                dir.path().join(format!("a{round}.sqlite")),
                Schema::sample(),
            )
            .expect("sqlite"),
            remote.clone(),
        )
        .with_config(fast.clone());
        let a = if client_wins {
            a.with_policy(ClientWins)
        } else {
            a.with_policy(ServerWins)
        };
        let b = SyncEngine::new(
            SledStore::open(dir.path().join(format!("b{round}.sled")), Schema::sample())
                .expect("sled"),
            srv.user("retry@chaos.test").await,
        )
        .with_config(fast.clone());
        let id = new_id();
        a.local()
            .put(Record::new(
                "songs",
                id.clone(),
                new_fields("songs", "created", 1, &user),
            ))
            .await
            .expect("put");
        let cid = a.local().pending(0, 10).await.expect("pending")[0]
            .change_id
            .clone();
        // The server applies the create; A never learns it.
        remote.on_push(Fault::CrashAfter);
        assert!(a.sync().await.is_err(), "the answer was lost");
        assert_eq!(a.local().pending_count().await.expect("pending"), 1);
        // B pulls it and deletes it; the tombstone is compacted.
        b.sync().await.expect("b sync");
        assert!(b.local().delete("songs", &id).await.expect("delete"));
        b.sync().await.expect("b sync");
        srv.superuser()
            .await
            .compact(Duration::ZERO)
            .await
            .expect("compact");
        // A pushes its create again.
        for _ in 0..3 {
            a.sync().await.expect("a sync");
        }
        assert_eq!(a.local().pending_count().await.expect("pending"), 0);
        let logged: Vec<_> = a
            .local()
            .conflicts()
            .await
            .expect("conflicts")
            .into_iter()
            .filter(|c| c.conflict.local.change_id == cid)
            .collect();
        assert_eq!(logged.len(), 1, "the retried create met the deletion");
        assert_eq!(
            logged[0].conflict.local.op,
            sync_traits::Op::Upsert(new_fields("songs", "created", 1, &user)),
            "its data is kept"
        );
        let server = srv
            .superuser()
            .await
            .fetch("songs", &id)
            .await
            .expect("fetch");
        let live = server.as_ref().and_then(|s| s.fields.as_ref());
        if client_wins {
            let state = server.as_ref().expect("written again");
            assert!(live.is_some_and(|f| f["title"] == "created"), "{server:?}");
            assert_ne!(state.change_id.as_ref(), Some(&cid), "as a new change id");
            assert!(a.local().get("songs", &id).await.expect("get").is_some());
        } else {
            assert!(live.is_none(), "the deletion stands: {server:?}");
            assert!(a.local().get("songs", &id).await.expect("get").is_none());
        }
    }
}

/// The proxy itself: clean passes everything, refuse and blackhole partition (and
/// healing resets a held connection), faulty mode injects every kind of fault it
/// counts, and a cut response is shorter than the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_injects_the_faults_it_counts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: usize = 10_000;
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("proxy test: CHAOS_SEED={seed}");
    // Upstream: reads a 3000-byte request, answers BODY bytes, closes.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up_addr = up.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 3000];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&vec![b'x'; BODY]).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    let proxy = Proxy::start(up_addr, seed).await.expect("proxy");
    let addr: SocketAddr = proxy
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    // One exchange: bytes received (None: an error, e.g. a reset).
    async fn exchange(addr: SocketAddr) -> Option<usize> {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(&[b'r'; 3000]).await.ok()?;
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await {
            Ok(Ok(_)) => Some(got.len()),
            _ => None,
        }
    }

    assert_eq!(
        exchange(addr).await,
        Some(BODY),
        "clean mode passes the whole body"
    );

    // A partition breaks a connection under way.
    let mut live = tokio::net::TcpStream::connect(addr).await.expect("connect");
    live.write_all(b"part of a request").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set_mode(Mode::Refuse);
    let mut buf = [0u8; 16];
    let cut = tokio::time::timeout(Duration::from_secs(5), live.read(&mut buf))
        .await
        .expect("a partition ends a live connection");
    assert!(matches!(&cut, Err(_) | Ok(0)), "{cut:?}");
    assert_eq!(proxy.counts().interrupted.load(Ordering::Relaxed), 1);

    assert!(exchange(addr).await.is_none_or(|n| n == 0), "refused");

    proxy.set_mode(Mode::Blackhole);
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    held.write_all(b"r").await.expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), held.read(&mut buf))
            .await
            .is_err(),
        "a blackholed connection gets no answer"
    );
    proxy.set_mode(Mode::Clean);
    let healed = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .expect("healing ends a held connection");
    assert!(matches!(&healed, Err(_) | Ok(0)), "{healed:?}");

    proxy.set_mode(Mode::Faulty);
    let (mut full, mut short) = (0, 0);
    for _ in 0..300 {
        match exchange(addr).await {
            Some(BODY) => full += 1,
            _ => short += 1,
        }
    }
    let counts: BTreeMap<&str, u64> = proxy.counts().snapshot().into_iter().collect();
    eprintln!("proxy test: {full} full, {short} short; {counts:?}");
    for kind in [
        "latency",
        "dropped",
        "reset",
        "cut",
        "refused",
        "blackholed",
        "interrupted",
    ] {
        assert!(counts[kind] > 0, "no {kind} fault counted: {counts:?}");
    }
    // Every dropped, reset or cut connection lost its answer (or part of it); the
    // others (clean, latency) passed it whole.
    assert_eq!(
        short as u64,
        counts["dropped"] + counts["reset"] + counts["cut"],
        "{counts:?}"
    );
}
