//! The `tidemark` binary is built without test code: neither the PocketBase test
//! harness (`pocketbase-remote/test-harness`) nor the testkit (`sync-traits/testkit`)
//! is enabled in its normal dependency graph.

use std::process::Command;

#[test]
fn the_binary_enables_no_test_feature() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "tidemark-cli",
            "--edges",
            "normal,features",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    // The graph is the real one: it names the crates the binary uses.
    assert!(tree.contains("pocketbase-remote"), "{tree}");
    assert!(tree.contains("sync-traits"), "{tree}");
    for feature in [
        "pocketbase-remote feature \"test-harness\"",
        "sync-traits feature \"testkit\"",
    ] {
        assert!(
            !tree.contains(feature),
            "the binary enables {feature}:\n{tree}"
        );
    }
}
