//! Load on one PocketBase: 10, 50 and 100 concurrent clients (SQLite stores, two
//! devices per user, `run_live` with realtime hints on), side by side in one run.
//! Each phase: every client writes `LOAD_RATE` songs per second (default 1) for
//! `LOAD_SECS` seconds (default 10) and syncs after each write; the other device of
//! the same user receives it through a hint. Printed per phase: changes/s into the
//! server (seqs taken) and out to clients (changes applied by stores), p50/p99 time
//! from a write on one device to its arrival in the other device's store, p99 of a
//! no-op sync (every client syncing at once, 5 each), the server's peak memory (PSS)
//! and CPU (from /proc/<pid>), and the CPU of this process (all clients).
//!
//! `LOAD_HINTS=0` leaves realtime out (each client then syncs every second).
//! `LOAD_REMOTE=postgres` runs the same against the PostgreSQL remote (its test
//! server: `TIDEMARK_PG_BINDIR`; server figures summed over the postmaster and its
//! backends).
//!
//! `bash scripts/install-pocketbase.sh && cargo run --release --example load [10,50,100]`

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Ack, ApplyReport, ChangeId, LocalStore, LoggedConflict, Page, PendingChange,
    Quarantined, Record, RecordId, RemoteStore, StoreError, SyncEngine, SyncState,
};
use tidemark_backends::{CollectionSchema, Schema, SqliteStore};

/// Writer index and write time of records not yet arrived on their other device.
type Sent = Arc<Mutex<HashMap<RecordId, (usize, Instant)>>>;

/// A store that notes when a record written elsewhere arrives (and counts applied
/// changes); every call forwards to the SQLite store.
struct Timed {
    me: usize,
    inner: SqliteStore,
    sent: Sent,
    arrivals: Arc<Mutex<Vec<Duration>>>,
    applied: Arc<AtomicU64>,
}

#[async_trait]
impl SyncStore for Timed {
    async fn list_page(
        &self,
        c: &str,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.list_page(c, after, limit).await
    }
    async fn count(&self, c: &str) -> Result<usize, StoreError> {
        self.inner.count(c).await
    }
    async fn client_id(&self) -> Result<RecordId, StoreError> {
        self.inner.client_id().await
    }
    async fn made_here(&self, change: &ChangeId) -> Result<bool, StoreError> {
        self.inner.made_here(change).await
    }
    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.inner.sync_state().await
    }
    async fn apply_remote(&self, page: &Page) -> Result<ApplyReport, StoreError> {
        let r = self.inner.apply_remote(page).await?;
        let now = Instant::now();
        self.applied.fetch_add(r.applied as u64, Ordering::Relaxed);
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let mut got = Vec::new();
        for ch in &page.changes {
            // A writer's own record comes back to it too: only the other device's
            // copy counts.
            if let Some(&(from, t)) = sent.get(&ch.id) {
                if from != self.me {
                    sent.remove(&ch.id);
                    got.push(now - t);
                }
            }
        }
        drop(sent);
        if !got.is_empty() {
            self.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(got);
        }
        Ok(r)
    }
    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<PendingChange>, StoreError> {
        self.inner.pending(after, limit).await
    }
    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.inner.pending_count().await
    }
    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> {
        self.inner.ack(acks).await
    }
    async fn begin_resync(&self) -> Result<(), StoreError> {
        self.inner.begin_resync().await
    }
    async fn finish_resync(&self, s: Option<BTreeSet<String>>) -> Result<usize, StoreError> {
        self.inner.finish_resync(s).await
    }
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.inner.quarantined().await
    }
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.inner.retry_quarantined(id).await
    }
    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        self.inner.discard_quarantined(id).await
    }
    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        self.inner.conflicts().await
    }
    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> {
        self.inner.clear_conflicts(ids).await
    }
}

#[async_trait]
impl LocalStore for Timed {
    async fn get(&self, c: &str, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.inner.get(c, id).await
    }
    async fn list(&self, c: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.list(c).await
    }
    async fn put(&self, r: Record) -> Result<(), StoreError> {
        self.inner.put(r).await
    }
    async fn delete(&self, c: &str, id: &RecordId) -> Result<bool, StoreError> {
        self.inner.delete(c, id).await
    }
    async fn transact(
        &self,
        w: Vec<sync_traits::Write>,
    ) -> Result<sync_traits::TxReport, StoreError> {
        self.inner.transact(w).await
    }
}

/// `(memory KiB, cpu seconds)` of process `pid` from /proc. Memory is the
/// proportional set size (shared pages split among the processes sharing them, so
/// a sum over PostgreSQL's backends does not count its shared buffers once per
/// backend); VmRSS where smaps_rollup is not readable.
fn proc_stats(pid: u32) -> (u64, f64) {
    let field = |file: &str, key: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let rss = field("smaps_rollup", "Pss:")
        .or_else(|| field("status", "VmRSS:"))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Phase {
    clients: usize,
    writes: u64,
    into_server: f64,
    out_to_clients: f64,
    arrived: usize,
    p50: Duration,
    p99: Duration,
    noop_p99: Duration,
    rss_mib: f64,
    cpu_cores: f64,
    client_cores: f64,
    errors: u64,
}

/// A hint stream that ends at once: `run_live` then syncs on its period alone.
struct NoHints;

impl futures_core::Stream for NoHints {
    type Item = ();
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        std::task::Poll::Ready(None)
    }
}

/// The server under load.
enum Server {
    PocketBase(TestServer),
    /// PostgreSQL with `songs` synced (owner column `owner`: the role name).
    Postgres(
        postgres_remote::harness::TestServer,
        postgres_remote::PostgresRemote,
    ),
}

impl Server {
    async fn postgres() -> Self {
        let s = postgres_remote::harness::TestServer::start();
        let admin = s.admin().await;
        s.sql()
            .await
            .batch_execute(
                "CREATE TABLE songs (id text PRIMARY KEY, title text, artist text, n int, owner text)",
            )
            .await
            .expect("create songs");
        admin
            .enable_sync("songs", Some("owner"))
            .await
            .expect("enable songs");
        Server::Postgres(s, admin)
    }

    fn name(&self) -> &'static str {
        match self {
            Server::PocketBase(_) => "PocketBase",
            Server::Postgres(..) => "PostgreSQL",
        }
    }

    /// The local schema of `songs` (PocketBase's sample, or the table above).
    fn schema(&self) -> Schema {
        match self {
            Server::PocketBase(_) => Schema::sample(),
            Server::Postgres(..) => Schema::new().collection(
                CollectionSchema::new("songs")
                    .text("title")
                    .text("artist")
                    .number("n")
                    .relation("owner"),
            ),
        }
    }

    /// The number field of a song.
    fn number_field(&self) -> &'static str {
        match self {
            Server::PocketBase(_) => "order",
            Server::Postgres(..) => "n",
        }
    }

    /// Makes user `k` of phase `round`; returns its owner value.
    async fn create_user(&self, round: usize, k: usize) -> String {
        match self {
            Server::PocketBase(s) => s
                .create_user(&format!("load{round}-{k}@t.io"))
                .await
                .as_str()
                .to_owned(),
            Server::Postgres(s, _) => {
                let name = format!("u{round:03}{k:011}");
                s.create_user(&name).await;
                name
            }
        }
    }

    /// A remote signed in as user `k` of phase `round`, with its hints.
    async fn remote(
        &self,
        round: usize,
        k: usize,
        hints: bool,
    ) -> (Box<dyn RemoteStore>, Option<sync_traits::Hints>) {
        match self {
            Server::PocketBase(s) => {
                let r = PocketBaseRemote::builder(s.url())
                    .user(
                        "users",
                        format!("load{round}-{k}@t.io"),
                        pocketbase_remote::harness::USER_PASSWORD,
                    )
                    .connect()
                    .await
                    .expect("connect");
                let h = hints.then(|| r.subscribe());
                (Box::new(r), h)
            }
            Server::Postgres(s, _) => {
                let name = format!("u{round:03}{k:011}");
                let r = postgres_remote::PostgresRemote::builder(
                    &s.conn_str(&name, postgres_remote::harness::USER_PASSWORD),
                )
                .expect("conn str")
                .max_connections(1)
                .connect()
                .await
                .expect("connect");
                let h = hints.then(|| r.subscribe());
                (Box::new(r), h)
            }
        }
    }

    async fn head(&self) -> u64 {
        match self {
            Server::PocketBase(s) => s.superuser().await.head().await.expect("head").head.0,
            Server::Postgres(_, admin) => admin.head().await.expect("head").0,
        }
    }

    /// The server's processes: PocketBase's, or the postmaster and its children.
    fn pids(&self) -> Vec<u32> {
        match self {
            Server::PocketBase(s) => vec![s.pid()],
            Server::Postgres(s, _) => postgres_pids(s.port()),
        }
    }
}

/// The postmaster listening on `port` (found by its `-p <port>` argument) and its
/// children.
fn postgres_pids(port: u16) -> Vec<u32> {
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid, cmd))
        })
        .collect();
    let needle = format!("\0-p\0{port}\0");
    let Some(master) = procs
        .iter()
        .find(|(_, _, c)| c.contains("postgres") && c.contains(&needle))
        .map(|p| p.0)
    else {
        return Vec::new();
    };
    std::iter::once(master)
        .chain(procs.iter().filter(|p| p.1 == master).map(|p| p.0))
        .collect()
}

/// Summed `(rss KiB, cpu seconds)` of `pids`.
fn procs_stats(pids: &[u32]) -> (u64, f64) {
    pids.iter()
        .map(|p| proc_stats(*p))
        .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

async fn phase(srv: &Server, n: usize, secs: f64, rate: f64, round: usize) -> Phase {
    let hints_on = env_f64("LOAD_HINTS", 1.0) != 0.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let sent: Sent = Arc::default();
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let applied = Arc::new(AtomicU64::new(0));
    let mut engines = Vec::new();
    let mut all_hints = Vec::new();
    let mut owners = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            owners.push(srv.create_user(round, i / 2).await);
        }
        let store = Timed {
            me: i,
            inner: SqliteStore::open(dir.path().join(format!("c{i}.sqlite")), srv.schema())
                .expect("sqlite"),
            sent: sent.clone(),
            arrivals: arrivals.clone(),
            applied: applied.clone(),
        };
        let (remote, hints) = srv.remote(round, i / 2, hints_on).await;
        all_hints.push(hints);
        engines.push(Arc::new(SyncEngine::new(store, remote)));
    }
    let head0 = srv.head().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let errors = Arc::new(AtomicU64::new(0));
    let mut live = Vec::new();
    for (e, hints) in engines.iter().zip(all_hints) {
        let (e, mut stop) = (e.clone(), stop_rx.clone());
        live.push(tokio::spawn(async move {
            let stop = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            match hints {
                Some(h) => e.run_live(h, Duration::from_secs(30), stop).await,
                None => e.run_live(NoHints, Duration::from_secs(1), stop).await,
            }
        }));
    }
    // Let the first syncs and the realtime subscriptions settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pids = srv.pids();
    let (rss0, cpu0) = procs_stats(&pids);
    let me0 = proc_stats(std::process::id()).1;
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampler = {
        let (peak, pids, mut stop) = (peak.clone(), pids.clone(), stop_rx.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                peak.fetch_max(procs_stats(&pids).0, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
            }
        })
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        let (e, sent, writes, errors) = (e.clone(), sent.clone(), writes.clone(), errors.clone());
        let owner = owners[i / 2].clone();
        let num = srv.number_field();
        let gap = Duration::from_secs_f64(1.0 / rate);
        writers.push(tokio::spawn(async move {
            // Spread the clients' first writes over one gap.
            tokio::time::sleep(gap.mul_f64(i as f64 / n as f64)).await;
            let mut k = 0u64;
            while Instant::now() < deadline {
                k += 1;
                let id = new_id();
                let f = json!({"title": format!("c{i}-{k}"), "artist": "load", num: k, "owner": owner.as_str()});
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), (i, Instant::now()));
                e.local()
                    .put(Record::new("songs", id, f.as_object().cloned().unwrap_or_default()))
                    .await
                    .expect("put");
                writes.fetch_add(1, Ordering::Relaxed);
                if e.sync().await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(gap).await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    // Wait (bounded) for the last writes to arrive.
    let settle = Instant::now() + Duration::from_secs(20);
    while Instant::now() < settle && !sent.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (_, cpu1) = procs_stats(&pids);
    let me1 = proc_stats(std::process::id()).1;
    let head1 = srv.head().await;

    // No-op syncs: everything is caught up; every client syncs 5 times, all at once.
    let noops = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for e in &engines {
        let (e, noops, errors) = (e.clone(), noops.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let t = Instant::now();
                match e.sync().await {
                    Ok(_) => noops
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("noop");
    }
    stop_tx.send_replace(true);
    for l in live {
        if l.await.expect("live").is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = sampler.await;
    let mut lat = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut noops = noops.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Phase {
        clients: n,
        writes: writes.load(Ordering::Relaxed),
        into_server: (head1 - head0) as f64 / wall,
        out_to_clients: applied.load(Ordering::Relaxed) as f64 / wall,
        arrived: lat.len(),
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        noop_p99: pct(&mut noops, 0.99),
        rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        cpu_cores: (cpu1 - cpu0) / wall,
        client_cores: (me1 - me0) / wall,
        errors: errors.load(Ordering::Relaxed),
    }
}

#[tokio::main]
async fn main() {
    let postgres = std::env::var("LOAD_REMOTE").as_deref() == Ok("postgres");
    // Each PostgreSQL client holds two connections; the test server allows 300.
    let counts: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .map(|n: usize| n.max(2))
        .collect();
    let secs = env_f64("LOAD_SECS", 10.0);
    let rate = env_f64("LOAD_RATE", 1.0);
    let srv = if postgres {
        Server::postgres().await
    } else {
        Server::PocketBase(TestServer::start())
    };
    println!(
        "load: one {} server, {secs} s per phase, {rate} writes/s per client, SQLite stores, \
         run_live {}, 2 devices per user",
        srv.name(),
        if env_f64("LOAD_HINTS", 1.0) != 0.0 {
            "with realtime hints"
        } else {
            "without hints (1 s period)"
        }
    );
    let mut rows = Vec::new();
    for (round, &n) in counts.iter().enumerate() {
        let p = phase(&srv, n, secs, rate, round).await;
        eprintln!("load: {n} clients done");
        rows.push(p);
    }
    println!(
        "{:>8} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>7}",
        "clients",
        "writes",
        "in/s",
        "out/s",
        "arrived",
        "p50",
        "p99",
        "noop p99",
        "srv PSS MiB",
        "srv cores",
        "cli cores",
        "errors"
    );
    for p in rows {
        println!(
            "{:>8} {:>7} {:>10.1} {:>10.1} {:>8} {:>7.1}ms {:>7.1}ms {:>9.1}ms {:>9.1} {:>9.2} {:>9.2} {:>7}",
            p.clients,
            p.writes,
            p.into_server,
            p.out_to_clients,
            p.arrived,
            p.p50.as_secs_f64() * 1e3,
            p.p99.as_secs_f64() * 1e3,
            p.noop_p99.as_secs_f64() * 1e3,
            p.rss_mib,
            p.cpu_cores,
            p.client_cores,
            p.errors
        );
    }
}
