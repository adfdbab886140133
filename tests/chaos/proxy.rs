//! A fault-injecting TCP proxy on 127.0.0.1, one per client, in front of a server.
//!
//! Every accepted connection draws a plan from the proxy's seeded generator (in
//! [`Mode::Faulty`]): pass clean, add latency to every chunk, drop at once (FIN),
//! reset (SO_LINGER 0) after part of the request went upstream, or cut the response
//! after part of its bytes (FIN or reset). [`Mode::Refuse`] resets every connection at
//! once and [`Mode::Blackhole`] holds them without an answer: a partition. Switching
//! the mode resets every connection whose plan the new mode does not allow, so a
//! partition also cuts a pooled connection or a realtime stream, and healing
//! ([`Mode::Clean`]) leaves no faulty connection behind. Faults are counted by kind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every connection passes untouched.
    Clean,
    /// Each connection draws a fault plan.
    Faulty,
    /// Partitioned: every connection is reset at once.
    Refuse,
    /// Partitioned: connections are accepted and never answered until the mode
    /// changes (then reset).
    Blackhole,
}

/// Faults injected so far, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections with added latency.
    pub latency: AtomicU64,
    /// Connections closed (FIN) before anything was forwarded.
    pub dropped: AtomicU64,
    /// Connections reset after part of the request went upstream.
    pub reset: AtomicU64,
    /// Responses cut after part of their bytes.
    pub cut: AtomicU64,
    /// Connections reset by a partition in refuse mode.
    pub refused: AtomicU64,
    /// Connections held unanswered by a partition in blackhole mode.
    pub blackholed: AtomicU64,
    /// Live connections reset because the mode changed under them.
    pub interrupted: AtomicU64,
    /// Connections reset because the upstream server was down.
    pub upstream_down: AtomicU64,
}

impl Counts {
    /// `(kind, count)` of every counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("connections", g(&self.connections)),
            ("latency", g(&self.latency)),
            ("dropped", g(&self.dropped)),
            ("reset", g(&self.reset)),
            ("cut", g(&self.cut)),
            ("refused", g(&self.refused)),
            ("blackholed", g(&self.blackholed)),
            ("interrupted", g(&self.interrupted)),
            ("upstream_down", g(&self.upstream_down)),
        ]
    }
}

/// A connection's fault plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Clean,
    Latency(Duration),
    Drop,
    /// Reset once this many request bytes went upstream.
    ResetAfter(usize),
    /// Forward this many response bytes, then close (reset if `true`).
    CutAfter(usize, bool),
}

/// The proxy: listens on `127.0.0.1:<port>`, forwards to `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy in [`Mode::Clean`] in front of `upstream`, drawing plans from
    /// `seed`.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Clean);
        let counts = Arc::new(Counts::default());
        let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
        let task = tokio::spawn({
            let mode = mode.clone();
            let counts = counts.clone();
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    let rx = mode.subscribe();
                    let plan = match *rx.borrow() {
                        Mode::Faulty => draw(&rng),
                        _ => Plan::Clean,
                    };
                    tokio::spawn(handle(conn, upstream, plan, rx, counts.clone()));
                }
            }
        });
        Ok(Self {
            addr,
            mode,
            counts,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the mode for new and live connections.
    pub fn set_mode(&self, m: Mode) {
        self.mode.send_replace(m);
    }

    /// Faults so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn draw(rng: &Mutex<SmallRng>) -> Plan {
    let mut r = match rng.lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    match r.random_range(0..100u32) {
        0..35 => Plan::Clean,
        35..55 => Plan::Latency(Duration::from_millis(r.random_range(2..40))),
        55..65 => Plan::Drop,
        65..80 => Plan::ResetAfter(r.random_range(1..3000)),
        _ => Plan::CutAfter(r.random_range(1..6000), r.random_bool(0.5)),
    }
}

fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// Whether a connection with `plan` may live on under `mode`.
fn allowed(plan: Plan, mode: Mode) -> bool {
    match mode {
        Mode::Faulty => true,
        Mode::Clean => plan == Plan::Clean,
        Mode::Refuse | Mode::Blackhole => false,
    }
}

async fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    plan: Plan,
    mut mode: watch::Receiver<Mode>,
    counts: Arc<Counts>,
) {
    let now = *mode.borrow_and_update();
    match now {
        Mode::Refuse => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
        Mode::Blackhole => {
            counts.blackholed.fetch_add(1, Ordering::Relaxed);
            // Bounded: a partition never outlives the run.
            let _ = tokio::time::timeout(Duration::from_secs(120), mode.changed()).await;
            reset(&client);
            return;
        }
        Mode::Clean | Mode::Faulty => {}
    }
    match plan {
        Plan::Drop => {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Plan::Latency(_) => {
            counts.latency.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    let up = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            counts.upstream_down.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    pipe(client, up, plan, mode, &counts).await;
}

async fn pipe(
    mut client: TcpStream,
    mut up: TcpStream,
    plan: Plan,
    mut mode: watch::Receiver<Mode>,
    counts: &Counts,
) {
    let delay = match plan {
        Plan::Latency(d) => d,
        _ => Duration::ZERO,
    };
    let (mut sent, mut received) = (0usize, 0usize);
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let mut client_open = true;
    loop {
        tokio::select! {
            r = client.read(&mut cbuf), if client_open => {
                let n = match r {
                    Ok(0) => {
                        client_open = false;
                        let _ = up.shutdown().await;
                        continue;
                    }
                    Ok(n) => n,
                    Err(_) => { reset(&up); return; }
                };
                if let Plan::ResetAfter(limit) = plan {
                    if sent + n >= limit {
                        let _ = up.write_all(&cbuf[..limit - sent]).await;
                        counts.reset.fetch_add(1, Ordering::Relaxed);
                        // Let the part reach the server before both sides break.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        reset(&client);
                        reset(&up);
                        return;
                    }
                }
                sent += n;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if up.write_all(&cbuf[..n]).await.is_err() {
                    reset(&client);
                    return;
                }
            }
            r = up.read(&mut ubuf) => {
                let n = match r {
                    Ok(0) => {
                        let _ = client.shutdown().await;
                        return;
                    }
                    Ok(n) => n,
                    Err(_) => { reset(&client); return; }
                };
                if let Plan::CutAfter(limit, rst) = plan {
                    if received + n >= limit {
                        let _ = client.write_all(&ubuf[..limit - received]).await;
                        let _ = client.flush().await;
                        counts.cut.fetch_add(1, Ordering::Relaxed);
                        if rst {
                            reset(&client);
                        } else {
                            let _ = client.shutdown().await;
                        }
                        reset(&up);
                        return;
                    }
                }
                received += n;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if client.write_all(&ubuf[..n]).await.is_err() {
                    reset(&up);
                    return;
                }
            }
            c = mode.changed() => {
                if c.is_err() || !allowed(plan, *mode.borrow_and_update()) {
                    counts.interrupted.fetch_add(1, Ordering::Relaxed);
                    reset(&client);
                    reset(&up);
                    return;
                }
            }
        }
    }
}
