//! Spawning the built `tidemark` binary in a working folder.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("workspace root")
}

/// A `tidemark` command run in `dir`, with the test's PocketBase binary.
pub fn tidemark(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.current_dir(dir)
        .env("TIDEMARK_POCKETBASE", pocketbase_remote::harness::binary())
        .env_remove("TIDEMARK_ADMIN_EMAIL")
        .env_remove("TIDEMARK_ADMIN_PASSWORD")
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// A running `tidemark dev` (killed on drop).
pub struct DevProcess {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    seen: String,
}

/// How long `tidemark dev` may take to say it is ready before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(90);

impl DevProcess {
    /// Starts `tidemark dev --port <free> args…` in `dir` and waits until it prints
    /// "Ctrl-C to stop."; panics with its output if it exits or stays silent.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        let port = pocketbase_remote::server::free_port().expect("free port");
        let mut child = tidemark(dir)
            .arg("dev")
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidemark dev");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut me = Self {
            child,
            port,
            lines,
            seen: String::new(),
        };
        loop {
            match me.lines.recv_timeout(READY_WITHIN) {
                Ok(line) => {
                    me.seen.push_str(&line);
                    me.seen.push('\n');
                    if line == "Ctrl-C to stop." {
                        return me;
                    }
                }
                Err(_) => {
                    let status = me.child.try_wait().ok().flatten();
                    panic!("tidemark dev not ready ({status:?}): {}", me.seen);
                }
            }
        }
    }

    /// What it printed so far.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.seen.clone()
    }

    /// Its API URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends SIGTERM and waits for the exit; returns the status and all output.
    pub fn terminate(&mut self) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::TERM)
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the exit; returns the status
    /// and all output.
    pub fn interrupt(&mut self) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::INT)
    }

    fn signal(&mut self, signal: rustix::process::Signal) -> (ExitStatus, String) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
        let status = self.child.wait().expect("wait");
        // The reader threads end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status, self.seen.clone())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tidemark dev --port port` in `dir` to its end (for refusals).
pub fn run_dev_to_end(dir: &Path, port: u16) -> Output {
    tidemark(dir)
        .arg("dev")
        .arg("--port")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run tidemark dev")
}
