//! The demo: two clients write offline, sync, meet a conflict, converge.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use pocketbase_remote::server::{free_port, write_extension, Launcher, POCKETBASE_VERSION};
use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::{new_id, FieldMerge, Fields, LocalStore, Record, RemoteStore, SyncEngine};
use tidemark_backends::SledStore;

use crate::open_sqlite;

fn fields(v: serde_json::Value) -> Fields {
    v.as_object().cloned().unwrap_or_default()
}

/// Runs the scenario on any pair of stores and remotes; returns the record count.
async fn scenario<L1, L2, R1, R2>(
    laptop: L1,
    phone: L2,
    r1: R1,
    r2: R2,
    owner: &str,
) -> Result<usize>
where
    L1: LocalStore,
    L2: LocalStore,
    R1: RemoteStore + 'static,
    R2: RemoteStore + 'static,
{
    let laptop = SyncEngine::new(laptop, r1).with_policy(FieldMerge);
    let phone = SyncEngine::new(phone, r2).with_policy(FieldMerge);
    let song = new_id();
    println!("1. offline: the laptop adds 3 songs, the phone adds 1 friend");
    for (i, title) in ["Blue in Green", "So What", "Freddie Freeloader"]
        .iter()
        .enumerate()
    {
        let id = if i == 0 { song.clone() } else { new_id() };
        laptop
            .local()
            .put(Record::new("songs", id, fields(json!({"title": title, "artist": "Miles Davis", "order": i + 1, "owner": owner}))))
            .await?;
    }
    phone
        .local()
        .put(Record::new(
            "friends",
            new_id(),
            fields(json!({"name": "Bill", "owner": owner})),
        ))
        .await?;
    println!("2. both come online and sync");
    for (name, e) in [
        ("laptop", &laptop as &dyn Syncable),
        ("phone", &phone as &dyn Syncable),
    ] {
        e.run(name).await?;
    }
    laptop.sync().await?;
    println!("3. both edit the same song offline: the laptop its title, the phone its order");
    let mut a = laptop
        .local()
        .get("songs", &song)
        .await?
        .context("song missing on laptop")?;
    a.fields
        .insert("title".into(), json!("Blue in Green (take 2)"));
    laptop.local().put(a).await?;
    let mut b = phone
        .local()
        .get("songs", &song)
        .await?
        .context("song missing on phone")?;
    b.fields.insert("order".into(), json!(10));
    phone.local().put(b).await?;
    for (name, e) in [
        ("laptop", &laptop as &dyn Syncable),
        ("phone", &phone as &dyn Syncable),
    ] {
        e.run(name).await?;
    }
    laptop.sync().await?;
    let a = laptop
        .local()
        .get("songs", &song)
        .await?
        .context("song missing")?;
    let b = phone
        .local()
        .get("songs", &song)
        .await?
        .context("song missing")?;
    println!(
        "4. merged on both: {}",
        serde_json::Value::Object(a.fields.clone())
    );
    ensure!(a.fields == b.fields, "the two clients did not converge");
    ensure!(
        a.fields["title"] == "Blue in Green (take 2)" && a.fields["order"] == 10,
        "field merge lost an edit"
    );
    let mut total = 0;
    for c in ["songs", "friends"] {
        let (x, y) = (laptop.local().list(c).await?, phone.local().list(c).await?);
        ensure!(x == y, "{c} differ between the clients");
        total += x.len();
    }
    Ok(total)
}

/// Object-safe "sync and print" over engines of different types.
#[async_trait::async_trait]
trait Syncable: Sync {
    async fn run(&self, name: &str) -> Result<()>;
}

#[async_trait::async_trait]
impl<L: LocalStore, R: RemoteStore + 'static> Syncable for SyncEngine<L, R> {
    async fn run(&self, name: &str) -> Result<()> {
        let mut events = self.subscribe();
        let r = self
            .sync()
            .await
            .with_context(|| format!("{name} sync failed; local data is kept"))?;
        println!(
            "   {name}: pushed {}, pulled {}, conflicts {}",
            r.pushed, r.pulled, r.conflicts
        );
        crate::drain_events(&mut events);
        Ok(())
    }
}

/// The demo's schema: `songs` and `friends`, owned by users, as PocketBase's admin UI
/// exports it.
pub const DEMO_SCHEMA: &str = include_str!("../../examples/pb_schema.json");

/// A throwaway local PocketBase (temporary data), an SQLite laptop and a sled phone.
/// Refuses to replace an existing `db` (or its `.sled` folder) unless `force`.
pub async fn pocketbase(db: &Path, force: bool) -> Result<()> {
    let phone_dir = db.with_extension("sled");
    for p in [db, phone_dir.as_path()] {
        if p.exists() && !force {
            bail!(
                "{} exists; the demo starts from empty stores: pass --force to replace it, or --db another path",
                p.display()
            );
        }
    }
    let tmp = tempfile::tempdir().context("temporary folder")?;
    let bin = crate::dev::locate_pocketbase(Path::new(".tidemark")).await?;
    let ext = write_extension(tmp.path())?;
    let launcher = Launcher::new(bin, tmp.path().join("pb_data"), &ext)
        .log_to(tmp.path().join("pocketbase.log"));
    let password = format!("{}{}", new_id(), new_id());
    let l = launcher.clone();
    let pw = password.clone();
    let mut server = tokio::task::spawn_blocking(move || -> Result<_> {
        l.upsert_superuser("admin@example.com", &pw)?;
        Ok(l.start(free_port()?, std::time::Duration::from_secs(30))?)
    })
    .await??;
    let url = server.url();
    println!(
        "PocketBase {POCKETBASE_VERSION} with the tidemark extension at {url} (temporary data)"
    );
    let admin = PocketBaseRemote::builder(&url)
        .superuser("admin@example.com", &password)
        .connect()
        .await?;
    let schema = serde_json::from_str::<Vec<serde_json::Value>>(DEMO_SCHEMA)?;
    crate::dev::import_and_enable(&admin, &schema, None).await?;
    let user_password = format!("{}{}", new_id(), new_id());
    crate::dev::ensure_user(&admin, "alice@example.com", &user_password).await?;
    let user = || {
        PocketBaseRemote::builder(&url)
            .user("users", "alice@example.com", &user_password)
            .connect()
    };
    let (r1, r2) = (user().await?, user().await?);
    let owner = r1.user_id().context("the server named no user id")?;
    // The SQLite file's -wal and -shm go with it (a stale log must not meet a new file).
    let (wal, shm) = (
        std::path::PathBuf::from(format!("{}-wal", db.display())),
        std::path::PathBuf::from(format!("{}-shm", db.display())),
    );
    for p in [db, phone_dir.as_path(), wal.as_path(), shm.as_path()] {
        if p.is_dir() {
            std::fs::remove_dir_all(p).with_context(|| format!("removing old {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("removing old {}", p.display()))?;
        }
    }
    let laptop = open_sqlite(db)?;
    let phone = SledStore::open(&phone_dir, tidemark_backends::Schema::sample())
        .context("opening the sled store")?;
    println!(
        "laptop: SQLite file {}   phone: sled database {}",
        db.display(),
        phone_dir.display()
    );
    let n = scenario(laptop, phone, r1, r2, &owner).await?;
    println!("done: {n} records on each client; query them with plain SQL:");
    println!(
        "   sqlite3 {} 'SELECT id, title, \"order\" FROM songs'",
        db.display()
    );
    let _ = server.stop(std::time::Duration::from_secs(10));
    Ok(())
}
