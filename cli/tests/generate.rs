//! `tidemark generate` as a user runs it, against a real PocketBase: the built
//! binary writes a module from the server's schema (a collection with every field
//! type), the module compiles in a scratch crate that depends on this workspace, and
//! that crate's program round-trips a record of every type through the server with
//! it (SQLite store → PocketBase → sled store, compared as typed structs). Then a
//! field added on the server shows as a diff when the module is generated again.

use std::path::{Path, PathBuf};
use std::process::Command;

use pocketbase_remote::harness::{TestServer, USER_PASSWORD};
use serde_json::{json, Value};

const EXPORT: &str = include_str!("../../examples/every_type.pb_schema.json");

/// The program of the scratch crate: `main.rs`, with the generated `model.rs` beside it.
const PROGRAM: &str = r#"
mod model;

use model::{GeoPoint, Kitchen, Parts, KITCHEN, PARTS};
use tidemark::backends::{SledStore, SqliteStore};
use tidemark::pocketbase::PocketBaseRemote;
use tidemark::{new_id, LocalStore, Record, SyncEngine};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} not set"));
    let (url, email, password, owner) =
        (env("PB_URL")?, env("PB_EMAIL")?, env("PB_PASSWORD")?, env("PB_OWNER")?);
    let dir = std::path::PathBuf::from(env("STORE_DIR")?);
    let connect = || PocketBaseRemote::builder(&url).user("users", &email, &password).connect();
    let a = SyncEngine::new(SqliteStore::open(dir.join("a.sqlite"), model::schema())?, connect().await?);
    let b = SyncEngine::new(SledStore::open(dir.join("b.sled"), model::schema())?, connect().await?);

    let from_server = tidemark::backends::Schema::from_remote(&a.remote().schema().await?)?;
    if from_server != model::schema() {
        return Err(format!("schema() differs from the server's:\n{from_server:?}").into());
    }
    let part = Parts { label: "leek".into(), ..Default::default() };
    let part_id = new_id();
    a.local().put(Record::from_typed(PARTS, part_id.clone(), &part)?).await?;
    let dish = Kitchen {
        title: "soup".into(),
        body: Some("<p>hot</p>".into()),
        contact: Some("chef@t.io".into()),
        homepage: Some("https://example.com/soup".into()),
        servings: Some(4),
        rating: Some(4.5),
        vegan: Some(true),
        cooked_on: Some("2024-05-01 10:00:00.000Z".into()),
        course: Some(Kitchen::COURSE_MAIN.into()),
        tags: Some(vec![Kitchen::TAGS_QUICK.into(), Kitchen::TAGS_SPICY.into()]),
        owner: Some(owner.clone()),
        main_part: Some(part_id.to_string()),
        parts: Some(vec![part_id.to_string()]),
        extra: Some(serde_json::json!({"steps": [1, 2]})),
        photo: Some(String::new()),
        gallery: Some(Vec::new()),
        place: Some(GeoPoint { lon: 13.4, lat: 52.5 }),
        ..Default::default()
    };
    let id = new_id();
    a.local().put(Record::from_typed(KITCHEN, id.clone(), &dish)?).await?;
    let ra = a.sync().await?;
    if ra.pushed != 2 || ra.rejected != 0 {
        return Err(format!("push: {ra:?}").into());
    }
    b.sync().await?;
    let got: Kitchen = b.local().get(KITCHEN, &id).await?.ok_or("not pulled")?.to_typed()?;
    let created = got.created.clone().ok_or("no created date")?;
    let want = Kitchen { id: id.to_string(), created: got.created.clone(), updated: got.updated.clone(), ..dish };
    if got != want {
        return Err(format!("round trip changed the record:\n{got:?}\n{want:?}").into());
    }
    let p: Parts = b.local().get(PARTS, &part_id).await?.ok_or("part not pulled")?.to_typed()?;
    if p.label != "leek" {
        return Err(format!("part: {p:?}").into());
    }
    println!("roundtrip {id} created {created}");
    Ok(())
}
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

async fn admin_send(srv: &TestServer, req: reqwest::RequestBuilder) -> (u16, Value) {
    let token = srv.superuser().await.token().await.unwrap();
    let r = req.header("Authorization", token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn generate(srv: &TestServer, out: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args([
            "generate",
            "--url",
            srv.url(),
            "--email",
            "gen@t.io",
            "--out",
        ])
        .arg(out)
        .env("TIDEMARK_PASSWORD", USER_PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_module_compiles_and_round_trips_every_field_type_through_pocketbase() {
    let srv = TestServer::start();
    let http = reqwest::Client::new();
    let export: Value = serde_json::from_str(EXPORT).unwrap();
    let (s, b) = admin_send(
        &srv,
        http.put(format!("{}/api/collections/import", srv.url()))
            .json(&json!({"collections": export, "deleteMissing": false})),
    )
    .await;
    assert_eq!(s, 204, "import: {b}");
    let su = srv.superuser().await;
    su.enable_sync("parts", None).await.unwrap();
    su.enable_sync("kitchen", Some("owner")).await.unwrap();
    su.enable_sync("ledger", None).await.unwrap();
    let uid = srv.create_user("gen@t.io").await;

    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let model = src.join("model.rs");
    let (ok, out) = generate(&srv, &model);
    assert!(ok, "generate failed: {out}");
    assert!(out.contains("wrote"), "{out}");
    let code = std::fs::read_to_string(&model).unwrap();
    assert!(
        code.starts_with("//! Generated by `tidemark generate`"),
        "{code}"
    );
    assert!(code.contains("pub struct Kitchen {"), "{code}");
    assert!(
        !code.contains("pub struct Ledger"),
        "a collection the user cannot list: {code}"
    );
    assert!(!code.contains("pin"), "a password field: {code}");

    // The scratch crate: path dependencies on this workspace, its lock file, built
    // offline into the workspace's target dir (compiled dependencies reused).
    let root = repo_root();
    std::fs::write(
        scratch.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"tidemark-generated-check\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\ntidemark = {{ path = {:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\
             serde_json = \"1\"\ntokio = {{ version = \"1\", features = [\"rt-multi-thread\", \"macros\"] }}\n\n[workspace]\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), scratch.path().join("Cargo.lock")).unwrap();
    std::fs::write(src.join("main.rs"), PROGRAM).unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(scratch.path())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the generated module does not compile:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let warnings = String::from_utf8_lossy(&build.stderr);
    assert!(
        !warnings.contains("warning"),
        "the generated module compiles with warnings:\n{warnings}"
    );
    let store_dir = scratch.path().join("stores");
    std::fs::create_dir_all(&store_dir).unwrap();
    let run = Command::new(target.join("debug/tidemark-generated-check"))
        .env("PB_URL", srv.url())
        .env("PB_EMAIL", "gen@t.io")
        .env("PB_PASSWORD", USER_PASSWORD)
        .env("PB_OWNER", uid.as_str())
        .env("STORE_DIR", &store_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "round trip failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id = stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    let (s, rec) = admin_send(
        &srv,
        http.get(format!(
            "{}/api/collections/kitchen/records/{id}",
            srv.url()
        )),
    )
    .await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["title"], "soup");
    assert_eq!(rec["tags"], json!(["quick", "spicy"]));
    assert_eq!(rec["place"], json!({"lon": 13.4, "lat": 52.5}));
    assert_eq!(rec["owner"], json!(uid.as_str()));

    // Unchanged schema: nothing to do. A field added on the server: a unified diff.
    let (ok, out) = generate(&srv, &model);
    assert!(ok && out.contains("up to date"), "{out}");
    let (s, mut coll) = admin_send(
        &srv,
        http.get(format!("{}/api/collections/kitchen", srv.url())),
    )
    .await;
    assert_eq!(s, 200, "{coll}");
    coll["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "spice", "type": "number", "onlyInt": true}));
    let (s, b) = admin_send(
        &srv,
        http.patch(format!("{}/api/collections/kitchen", srv.url()))
            .json(&json!({"fields": coll["fields"]})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (ok, out) = generate(&srv, &model);
    assert!(ok, "{out}");
    assert!(
        out.contains("(before)") && out.contains("(generated)"),
        "{out}"
    );
    assert!(out.contains("+    pub spice: Option<i64>,"), "{out}");
    assert!(
        out.contains("+    add(&mut c, \"spice\", FieldKind::Number);"),
        "{out}"
    );
    assert!(out.contains("updated"), "{out}");
    assert!(std::fs::read_to_string(&model)
        .unwrap()
        .contains("pub spice: Option<i64>,"));
}

#[test]
fn generate_from_a_collections_export_works_offline_and_check_reports_a_stale_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("src/model.rs");
    let export = repo_root().join("examples/every_type.pb_schema.json");
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .arg("generate")
            .arg("--schema")
            .arg(&export)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env_remove("TIDEMARK_URL")
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, text) = run(&[]);
    assert!(ok && text.contains("wrote"), "{text}");
    let code = std::fs::read_to_string(&out).unwrap();
    // A file export holds every base collection, superuser-only ones included.
    assert!(code.contains("pub struct Ledger {"), "{code}");
    assert!(
        !code.contains("pin") && !code.contains("chef_notes"),
        "{code}"
    );
    let (ok, text) = run(&["--check"]);
    assert!(ok && text.contains("up to date"), "{text}");
    std::fs::write(&out, code.replace("pub title: String,", "pub title: u8,")).unwrap();
    let (ok, text) = run(&["--check"]);
    assert!(!ok, "a stale file passed --check: {text}");
    assert!(
        text.contains("-    pub title: u8,\n+    pub title: String,"),
        "{text}"
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("pub title: u8,"),
        "--check wrote the file"
    );
}
