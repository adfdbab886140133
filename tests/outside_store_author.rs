//! What the author of an outside store depends on: only `tidemark`, without its
//! default features, with `testkit`. A new crate with exactly that dependency (the
//! path pointed here) implements `LocalStore` by forwarding to the testkit's
//! `MemoryStore` (standing in for their own store) and runs the store conformance
//! suite on it; it must build offline (reusing this workspace's compiled
//! dependencies), pull in neither SQLite nor sled nor an HTTP client, and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN_RS: &str = r#"
use std::collections::BTreeSet;

use tidemark::testkit::{conformance, MemoryStore};
use tidemark::{
    async_trait, Ack, ApplyReport, ChangeId, LocalStore, LoggedConflict, Page, PendingChange,
    Quarantined, Record, RecordId, StoreError, SyncState, SyncStore, TxReport, Write,
};

/// An outside store: here it forwards to MemoryStore.
struct MyStore(MemoryStore);

#[async_trait]
impl SyncStore for MyStore {
    async fn list_page(&self, c: &str, after: Option<RecordId>, limit: usize) -> Result<Vec<Record>, StoreError> { self.0.list_page(c, after, limit).await }
    async fn client_id(&self) -> Result<RecordId, StoreError> { self.0.client_id().await }
    async fn made_here(&self, c: &ChangeId) -> Result<bool, StoreError> { self.0.made_here(c).await }
    async fn sync_state(&self) -> Result<SyncState, StoreError> { self.0.sync_state().await }
    async fn apply_remote(&self, p: &Page) -> Result<ApplyReport, StoreError> { self.0.apply_remote(p).await }
    async fn pending(&self, a: u64, l: usize) -> Result<Vec<PendingChange>, StoreError> { self.0.pending(a, l).await }
    async fn pending_count(&self) -> Result<usize, StoreError> { self.0.pending_count().await }
    async fn ack(&self, acks: Vec<Ack>) -> Result<(), StoreError> { self.0.ack(acks).await }
    async fn begin_resync(&self) -> Result<(), StoreError> { self.0.begin_resync().await }
    async fn finish_resync(&self, s: Option<BTreeSet<String>>) -> Result<usize, StoreError> { self.0.finish_resync(s).await }
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> { self.0.quarantined().await }
    async fn retry_quarantined(&self, id: u64) -> Result<bool, StoreError> { self.0.retry_quarantined(id).await }
    async fn discard_quarantined(&self, id: u64) -> Result<bool, StoreError> { self.0.discard_quarantined(id).await }
    async fn conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> { self.0.conflicts().await }
    async fn clear_conflicts(&self, ids: Vec<u64>) -> Result<usize, StoreError> { self.0.clear_conflicts(ids).await }
}

#[async_trait]
impl LocalStore for MyStore {
    async fn get(&self, c: &str, id: &RecordId) -> Result<Option<Record>, StoreError> { self.0.get(c, id).await }
    async fn put(&self, r: Record) -> Result<(), StoreError> { self.0.put(r).await }
    async fn delete(&self, c: &str, id: &RecordId) -> Result<bool, StoreError> { self.0.delete(c, id).await }
    async fn transact(&self, w: Vec<Write>) -> Result<TxReport, StoreError> { self.0.transact(w).await }
    fn change_hub(&self) -> Option<tidemark::ChangeHub> { self.0.change_hub() }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    conformance::run_all(|| async { MyStore(MemoryStore::new()) }).await;
    println!("conformance passed");
}
"#;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn tidemark_with_only_testkit_runs_the_conformance_suite_on_an_outside_store() {
    let root = repo_root();
    let scratch = tempfile::tempdir().expect("tempdir");
    let krate = scratch.path().join("outside-store");
    write(
        &krate.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"outside-store\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [workspace]\n\n[dependencies]\n\
             tidemark = {{ path = {:?}, default-features = false, features = [\"testkit\"] }}\n\
             tokio = {{ version = \"1\", features = [\"macros\", \"rt\"] }}\n",
            root.to_str().expect("utf-8 path")
        ),
    );
    write(&krate.join("src/main.rs"), MAIN_RS);
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = krate.join("Cargo.toml");

    // Only tidemark's core: no store backend, no HTTP client, no PostgreSQL driver.
    let tree = Command::new(&cargo)
        .args([
            "tree",
            "--offline",
            "--prefix",
            "none",
            "--edges",
            "normal",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    for heavy in [
        "rusqlite",
        "sled",
        "reqwest",
        "tokio-postgres",
        "tidemark-backends",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{heavy} "))),
            "tidemark with only testkit pulls in {heavy}:\n{tree}"
        );
    }

    let run = Command::new(&cargo)
        .args(["run", "--offline", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo run");
    assert!(
        run.status.success(),
        "the outside store's conformance run failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("conformance passed"));
}
