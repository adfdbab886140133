//! A server that stops answering (accepts connections, never replies) fails a sync
//! with a transient error instead of hanging: the PocketBase client's connect and
//! request time limits, and the engine's whole-sync limit, each stop it alone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync_traits::SyncStore;

use pocketbase_remote::harness::{TestServer, USER_PASSWORD};
use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::testkit::MemoryStore;
use sync_traits::{
    new_id, LocalStore, Record, RemoteError, RetryPolicy, SyncConfig, SyncEngine, SyncError,
};

/// A TCP proxy to `upstream` that can freeze: from then on it forwards nothing in
/// either direction and holds every connection, old and new, open without a reply.
struct FreezingProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl FreezingProxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frozen.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (f, s) = (f.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, &f, &s));
                }
            }
        });
        Self { port, frozen, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either closes; once `frozen`, copies nothing more and
/// keeps both open (until `stop`).
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A listener that accepts connections and never answers.
fn silent_listener() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            if s.load(Ordering::SeqCst) {
                return;
            }
            if let Ok(c) = c {
                held.push(c);
            }
        }
    });
    (port, stop)
}

fn song(owner: &str) -> Record {
    let fields = json!({"title": "So What", "order": 1, "owner": owner});
    Record::new(
        "songs",
        new_id(),
        fields.as_object().cloned().unwrap_or_default(),
    )
}

#[tokio::test]
async fn connect_to_a_silent_server_fails_transient() {
    let (port, stop) = silent_listener();
    let r = PocketBaseRemote::builder(format!("http://127.0.0.1:{port}"))
        .user("users", "a@example.com", "password-123")
        .timeout(Duration::from_millis(300))
        .connect()
        .await;
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    match r {
        Err(e @ RemoteError::Transient(_)) => assert!(e.is_transient()),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

/// A connected client whose server freezes, through `remote`'s settings.
async fn frozen_setup(
    server: &TestServer,
    timeout: Duration,
) -> (
    FreezingProxy,
    SyncEngine<MemoryStore, PocketBaseRemote>,
    String,
) {
    let id = server.create_user("frozen@example.com").await;
    let proxy = FreezingProxy::start(
        server
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port"),
    );
    let remote = PocketBaseRemote::builder(proxy.url())
        .user("users", "frozen@example.com", USER_PASSWORD)
        .timeout(timeout)
        .connect()
        .await
        .expect("connect through the proxy");
    assert_eq!(remote.user_id().as_deref(), Some(id.as_str()));
    let engine = SyncEngine::new(MemoryStore::new(), remote);
    // It works before the freeze.
    engine.local().put(song(id.as_str())).await.expect("put");
    let report = engine.sync().await.expect("sync before the freeze");
    assert_eq!((report.pushed, report.rejected), (1, 0), "{report:?}");
    (proxy, engine, id.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn request_time_limit_fails_a_sync_against_a_frozen_server() {
    let server = TestServer::start();
    let (proxy, engine, owner) = frozen_setup(&server, Duration::from_millis(300)).await;
    let engine = engine.with_config(SyncConfig {
        retry: RetryPolicy::immediate(1),
        stall_limit: None,
        time_limit: None,
        ..SyncConfig::default()
    });
    engine.local().put(song(&owner)).await.expect("put");
    proxy.freeze();
    let e = engine
        .sync()
        .await
        .expect_err("a frozen server cannot complete a sync");
    assert!(e.is_transient(), "{e}");
    assert!(
        matches!(e.cause(), SyncError::Remote(RemoteError::Transient(_))),
        "{e:?}"
    );
    assert_eq!(engine.local().pending_count().await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_sync_time_limit_stops_a_sync_whose_requests_would_wait_longer() {
    let server = TestServer::start();
    // Each request would wait ten minutes; the sync's own limit ends it first.
    let (proxy, engine, owner) = frozen_setup(&server, Duration::from_secs(600)).await;
    let engine = engine.with_config(SyncConfig {
        stall_limit: None,
        time_limit: Some(Duration::from_millis(500)),
        ..SyncConfig::default()
    });
    engine.local().put(song(&owner)).await.expect("put");
    proxy.freeze();
    let e = engine
        .sync()
        .await
        .expect_err("a frozen server cannot complete a sync");
    assert!(e.is_transient(), "{e}");
    match e.cause() {
        SyncError::Remote(RemoteError::Transient(m)) => {
            assert!(m.message().contains("time limit"), "{m}")
        }
        other => panic!("expected the time limit's transient error, got {other:?}"),
    }
    // The unpushed change waits for the next sync.
    assert_eq!(engine.local().pending_count().await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_keeps_the_same_time_limit() {
    let server = TestServer::start();
    let (proxy, engine, _) = frozen_setup(&server, Duration::from_secs(600)).await;
    let engine = engine.with_config(SyncConfig {
        stall_limit: None,
        time_limit: Some(Duration::from_millis(500)),
        ..SyncConfig::default()
    });
    proxy.freeze();
    let e = engine
        .reconcile()
        .await
        .expect_err("a frozen server cannot complete a reconcile");
    match e.cause() {
        SyncError::Remote(RemoteError::Transient(m)) => {
            assert!(m.message().contains("time limit"), "{m}")
        }
        other => panic!("expected the time limit's transient error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stall_limit_stops_a_sync_that_gets_no_answer() {
    let server = TestServer::start();
    // Each request would wait ten minutes; no answer comes, so no progress.
    let (proxy, engine, owner) = frozen_setup(&server, Duration::from_secs(600)).await;
    let engine = engine.with_config(SyncConfig {
        stall_limit: Some(Duration::from_millis(500)),
        time_limit: None,
        ..SyncConfig::default()
    });
    engine.local().put(song(&owner)).await.expect("put");
    proxy.freeze();
    let e = engine
        .sync()
        .await
        .expect_err("a frozen server cannot complete a sync");
    match e.cause() {
        SyncError::Remote(RemoteError::Transient(m)) => {
            assert!(m.message().contains("no progress"), "{m}")
        }
        other => panic!("expected the stall limit's transient error, got {other:?}"),
    }
    assert_eq!(engine.local().pending_count().await.expect("count"), 1);
}
