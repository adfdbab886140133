//! The README's Usage example, as pasted: its dependencies and `main.rs` go into a
//! new crate, which is built (offline, reusing this workspace's compiled
//! dependencies) and run against the built `tidemark dev --import
//! examples/pb_schema.json`; the song it writes must be on the server.

mod support;

use std::path::Path;
use std::process::Command;

use pocketbase_remote::PocketBaseRemote;
use serde_json::Value;
use support::{repo_root, DevProcess};

/// The fenced block of language `lang` right after the line `marker` in `text`.
fn block_after(text: &str, marker: &str, lang: &str) -> String {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"));
    let rest = &text[start + marker.len()..];
    let open = format!("```{lang}\n");
    let body = rest
        .trim_start()
        .strip_prefix(open.as_str())
        .unwrap_or_else(|| panic!("{marker} is not followed by a ```{lang} block"));
    let end = body
        .find("\n```")
        .unwrap_or_else(|| panic!("unterminated block after {marker}"));
    body[..end + 1].to_owned()
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_usage_example_stores_a_record_on_tidemark_dev() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let deps = block_after(&readme, "<!-- usage-cargo -->", "toml");
    let main_rs = block_after(&readme, "<!-- usage-example -->", "rust");
    assert!(
        deps.contains("path/to/tidemark"),
        "the dependency block names tidemark by path: {deps}"
    );
    let root_str = root.to_str().expect("utf-8 path");

    // The scratch crate: the README's dependencies (the path pointed here) and main.rs.
    let scratch = tempfile::tempdir().expect("tempdir");
    let krate = scratch.path().join("usage-example");
    write(
        &krate.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"usage-example\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [workspace]\n\n{}",
            deps.replace("path/to/tidemark", root_str)
        ),
    );
    write(&krate.join("src/main.rs"), &main_rs);
    // The workspace's lock: the same dependency versions, already compiled.
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(&cargo)
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success(),
        "the README example does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // The server the README starts.
    let work = tempfile::tempdir().expect("tempdir");
    let schema = root.join("examples/pb_schema.json");
    let mut dev = DevProcess::start(
        work.path(),
        &[
            "--import",
            schema.to_str().expect("utf-8 path"),
            "--user",
            "me@example.com",
            "--user-password",
            "my-password",
        ],
    );
    let run = Command::new(target.join("debug/usage-example"))
        .current_dir(work.path())
        .env("TIDEMARK_URL", dev.url())
        .env("TIDEMARK_EMAIL", "me@example.com")
        .env("TIDEMARK_PASSWORD", "my-password")
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "the example failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // What the README says it prints.
    assert!(
        stdout.contains("pushed 1, pulled 1, conflicts 0, rejected 0"),
        "{stdout}"
    );
    assert!(readme.contains("It prints `pushed 1, pulled 1, conflicts 0, rejected 0`"));
    assert!(work.path().join("app.sqlite").exists());

    // The song is on the server, owned by the user.
    let admin: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join(".tidemark/admin.json")).expect("admin.json"),
    )
    .expect("admin.json");
    let su = PocketBaseRemote::builder(dev.url())
        .superuser(
            admin["email"].as_str().expect("email"),
            admin["password"].as_str().expect("password"),
        )
        .connect()
        .await
        .expect("superuser");
    let me = PocketBaseRemote::builder(dev.url())
        .user("users", "me@example.com", "my-password")
        .connect()
        .await
        .expect("user")
        .user_id()
        .expect("user id");
    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/collections/songs/records", dev.url()))
        .header("Authorization", su.token().await.expect("token"))
        .send()
        .await
        .expect("list songs")
        .json()
        .await
        .expect("songs JSON");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["title"], "So What");
    assert_eq!(items[0]["owner"], me.as_str());
    let (status, out) = dev.terminate();
    assert!(status.success(), "{status}: {out}");
}
