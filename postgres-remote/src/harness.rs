//! Starts a real PostgreSQL server for tests and benchmarks (feature
//! `test-harness`). A testing aid, not a stable API.
//!
//! The binaries (`initdb`, `postgres`) are taken from `$TIDEMARK_PG_BINDIR`, else
//! from `pg_config --bindir`, else `/usr/lib/postgresql/15/bin`
//! (`scripts/install-postgres.sh` installs them). The server listens on 127.0.0.1
//! on a free random port with a temporary data directory, runs as the unprivileged
//! `postgres` user (or `nobody`) when the tests run as root (PostgreSQL refuses to
//! run as root), and is stopped when the [`TestServer`] is dropped. If it cannot
//! start, the harness panics with the reason: tests never skip silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::PostgresRemote;

/// The superuser created by `initdb`.
pub const ADMIN: &str = "tidemark_admin";
/// Its password.
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// Password of the roles made by [`TestServer::create_user`].
pub const USER_PASSWORD: &str = "user-password-123";
/// The database the tests use.
pub const DATABASE: &str = "tidemark_test";

/// A running PostgreSQL in a temporary directory; stopped on drop.
pub struct TestServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("port", &self.port)
            .finish()
    }
}

/// The directory holding `initdb` and `postgres`.
pub fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("TIDEMARK_PG_BINDIR") {
        return PathBuf::from(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if d.join("postgres").exists() {
                return d;
            }
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free local port: {e}"))
}

/// The uid/gid to run the server as: ours unless we are root, then `postgres`'s
/// or `nobody`'s from /etc/passwd.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                    return Some((u, g));
                }
            }
        }
    }
    panic!(
        "running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    );
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((u, g)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(u).gid(g);
    }
}

impl TestServer {
    /// Starts a server (fsync off: test data is thrown away). Panics with the
    /// reason if it cannot.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that also accepts TLS, with a certificate for 127.0.0.1
    /// signed by a throwaway CA, both made by the `openssl` command
    /// ([`TestServer::tls_cert_pem`] is the CA).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = bindir();
        for b in ["initdb", "postgres"] {
            if !bin.join(b).exists() {
                panic!(
                    "{} not found. Run postgres-remote/scripts/install-postgres.sh \
                     (installs the distribution's postgresql-15) or set TIDEMARK_PG_BINDIR.",
                    bin.join(b).display()
                );
            }
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, tls) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("could not start PostgreSQL from {}: {last}", bin.display());
    }

    fn try_start(bin: &Path, tls: bool) -> Result<Self, String> {
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix("tidemark-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        if let Some((u, g)) = user {
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, ADMIN_PASSWORD).map_err(|e| format!("pwfile: {e}"))?;
        if let Some((u, g)) = user {
            std::os::unix::fs::chown(&pwfile, Some(u), Some(g)).map_err(|e| e.to_string())?;
        }
        let data = dir.path().join("data");
        let mut init = Command::new(bin.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args([
                "-U",
                ADMIN,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        as_user(&mut init, user);
        let out = init.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port();
        let log =
            std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        if let Some((u, g)) = user {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(u), Some(g))
                .map_err(|e| e.to_string())?;
        }
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut ssl = Vec::new();
        if tls {
            let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            let p = |n: &str| dir.path().join(n);
            let ext = p("leaf.ext");
            std::fs::write(
                &ext,
                "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            )
            .map_err(|e| e.to_string())?;
            // A CA (the certificate clients trust) and a leaf for 127.0.0.1 signed by it.
            let steps: Vec<Vec<std::ffi::OsString>> = vec![
                vec![
                    "req".into(),
                    "-x509".into(),
                    "-newkey".into(),
                    "rsa:2048".into(),
                    "-nodes".into(),
                    "-days".into(),
                    "2".into(),
                    "-subj".into(),
                    "/CN=tidemark test CA".into(),
                    "-keyout".into(),
                    p("ca.key").into(),
                    "-out".into(),
                    p("ca.crt").into(),
                ],
                vec![
                    "req".into(),
                    "-newkey".into(),
                    "rsa:2048".into(),
                    "-nodes".into(),
                    "-subj".into(),
                    "/CN=127.0.0.1".into(),
                    "-keyout".into(),
                    key.clone().into(),
                    "-out".into(),
                    p("leaf.csr").into(),
                ],
                vec![
                    "x509".into(),
                    "-req".into(),
                    "-in".into(),
                    p("leaf.csr").into(),
                    "-CA".into(),
                    p("ca.crt").into(),
                    "-CAkey".into(),
                    p("ca.key").into(),
                    "-CAcreateserial".into(),
                    "-days".into(),
                    "2".into(),
                    "-extfile".into(),
                    ext.into(),
                    "-out".into(),
                    crt.clone().into(),
                ],
            ];
            for args in steps {
                let out = Command::new("openssl")
                    .args(&args)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("openssl: {e}"))?;
                if !out.status.success() {
                    return Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            if let Some((u, g)) = user {
                for f in [&crt, &key] {
                    std::os::unix::fs::chown(f, Some(u), Some(g)).map_err(|e| e.to_string())?;
                }
            }
            ssl = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", crt.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.args(&ssl);
        cmd.arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
            ])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        as_user(&mut cmd, user);
        let child = cmd.spawn().map_err(|e| format!("spawn postgres: {e}"))?;
        let mut me = Self {
            child,
            dir,
            port,
            tls,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let conn = format!(
            "host=127.0.0.1 port={} user={ADMIN} password={ADMIN_PASSWORD} dbname=postgres connect_timeout=2",
            self.port
        );
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            let conn = conn.clone();
            // A thread of its own: `start` may be called inside a runtime.
            let ok = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    match tokio_postgres::connect(&conn, NoTls).await {
                        Ok((client, connection)) => {
                            let h = tokio::spawn(connection);
                            let r = client
                                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                                .await;
                            drop(client);
                            let _ = h.await;
                            // The server's message ("... already exists"), not just "db error".
                            r.map_err(|e| {
                                e.as_db_error()
                                    .map(|d| d.message().to_owned())
                                    .unwrap_or_else(|| e.to_string())
                            })
                        }
                        Err(e) => Err(e.to_string()),
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("readiness check panicked".into()));
            match ok {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("already exists") => return Ok(()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Err(format!("not ready within 30 s: {}", self.log()))
    }

    /// The certificate of the CA that signed the server's certificate (PEM), if
    /// started with [`TestServer::start_tls`]: what a client trusts.
    pub fn tls_cert_pem(&self) -> Option<Vec<u8>> {
        if !self.tls {
            return None;
        }
        std::fs::read(self.dir.path().join("ca.crt")).ok()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `user` with `password` to the test database.
    pub fn conn_str(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={DATABASE}",
            self.port
        )
    }

    /// The superuser's connection string.
    pub fn admin_conn_str(&self) -> String {
        self.conn_str(ADMIN, ADMIN_PASSWORD)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A plain driver connection as the superuser (for SQL that bypasses tidemark).
    pub async fn sql(&self) -> tokio_postgres::Client {
        self.sql_as(ADMIN, ADMIN_PASSWORD).await
    }

    /// A plain driver connection as `user`.
    pub async fn sql_as(&self, user: &str, password: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.conn_str(user, password), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        tokio::spawn(connection);
        client
    }

    /// The superuser's remote, with tidemark installed.
    pub async fn admin(&self) -> PostgresRemote {
        PostgresRemote::builder(&self.admin_conn_str())
            .unwrap_or_else(|e| panic!("{e}"))
            .install()
            .await
            .unwrap_or_else(|e| panic!("install: {e}\n{}", self.log()))
    }

    /// Creates the login role `name` (password [`USER_PASSWORD`]) in
    /// `tidemark_sync`. Needs tidemark installed.
    pub async fn create_user(&self, name: &str) {
        self.sql()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{USER_PASSWORD}' IN ROLE tidemark_sync"
            ))
            .await
            .unwrap_or_else(|e| panic!("create role {name}: {e}"));
    }

    /// A remote connected as `name` (made with [`TestServer::create_user`]).
    pub async fn user(&self, name: &str) -> PostgresRemote {
        PostgresRemote::connect(&self.conn_str(name, USER_PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("connect as {name}: {e}"))
    }

    /// Kills the server as a crash would: the postmaster is frozen (SIGSTOP, so it
    /// forks nothing more), then it and every backend get SIGKILL, with no
    /// shutdown checkpoint. Returns once none of them runs. The data directory and
    /// the port stay; [`TestServer::restart`] starts the server on them again.
    pub fn kill9(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            panic!("postmaster pid out of range");
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let children = child_pids(pid);
        for p in std::iter::once(pid).chain(children.iter().copied()) {
            // SAFETY: signalling the postmaster and its backends, which we started.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&p| running(p)) {
            assert!(
                Instant::now() < deadline,
                "backends still running 10 s after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory and port (after
    /// [`TestServer::kill9`]); PostgreSQL runs its crash recovery from the WAL.
    /// Panics with the server's log if it is not ready within 30 s.
    pub fn restart(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("server.log"))
            .unwrap_or_else(|e| panic!("server.log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("server.log: {e}"));
        let mut cmd = Command::new(bindir().join("postgres"));
        if self.tls {
            cmd.args(["-c", "ssl=on", "-c"])
                .arg(format!(
                    "ssl_cert_file={}",
                    dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
            ])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        as_user(&mut cmd, server_user());
        self.child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn postgres: {e}"));
        if let Err(e) = self.wait_ready() {
            panic!("restart: {e}");
        }
    }
}

/// The processes whose parent is `parent` (from /proc).
fn child_pids(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if stat_field(pid, 1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Field `n` after the command name of /proc/<pid>/stat (0: state, 1: ppid).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    stat_field(pid, 0).is_some_and(|s| s != "Z")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown; the postmaster takes its backends down.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
