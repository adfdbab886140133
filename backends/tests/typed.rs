#![cfg(all(feature = "sqlite", feature = "sled"))]
//! The typed collection handle (`store.collection::<T>(name)`) on the SQLite and
//! sled stores: the shared typed cases, local-only and undeclared collections,
//! and a model written by `tidemark generate` used unchanged.

use sync_traits::testkit::typed;
use sync_traits::{
    CollectionError, LocalStore, LocalStoreExt, RemoteCollection, RemoteField, RemoteFieldKind,
    RemoteSchema, StoreError,
};
use tidemark_backends::codegen::{generate, Options};
use tidemark_backends::{CollectionSchema, Schema, SledStore, SqliteStore};

/// The model `tidemark generate` writes for [`model_schema`], checked in so this
/// test compiles it as an app would (`generated_model_is_the_generators_output`
/// keeps it equal to the generator's output).
#[path = "generated/songs.rs"]
mod model;

const MODEL_PATH: &str = "tests/generated/songs.rs";

fn model_schema() -> RemoteSchema {
    let f = |name: &str, kind, required| RemoteField {
        name: name.into(),
        kind,
        required,
    };
    RemoteSchema {
        collections: vec![RemoteCollection {
            name: "songs".into(),
            fields: vec![
                f("title", RemoteFieldKind::Text, true),
                f("artist", RemoteFieldKind::Text, true),
                f("order", RemoteFieldKind::Number { only_int: false }, true),
                f("plays", RemoteFieldKind::Number { only_int: true }, false),
                f("liked", RemoteFieldKind::Bool, false),
                f(
                    "tags",
                    RemoteFieldKind::Select {
                        values: vec!["live".into(), "studio".into()],
                        multiple: true,
                    },
                    false,
                ),
            ],
        }],
    }
}

fn model_options() -> Options {
    Options {
        backends_path: "tidemark_backends".into(),
        source: "backends/tests/typed.rs".into(),
    }
}

/// `TIDEMARK_BLESS=1` rewrites the checked-in model from the generator.
#[test]
fn generated_model_is_the_generators_output() {
    let want = generate(&model_schema(), &model_options());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL_PATH);
    if std::env::var_os("TIDEMARK_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        have, want,
        "{MODEL_PATH} is not what `generate` writes now: rerun with TIDEMARK_BLESS=1"
    );
}

#[tokio::test]
async fn sqlite_file_passes_the_typed_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    typed::run_all(
        || {
            n += 1;
            let path = dir.path().join(format!("store{n}.db"));
            async move { SqliteStore::open(path, Schema::conformance()).unwrap() }
        },
        3000,
    )
    .await;
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_typed_cases() {
    typed::run_all(
        || async { SqliteStore::open_in_memory(Schema::conformance()).unwrap() },
        3000,
    )
    .await;
}

#[tokio::test]
async fn sled_passes_the_typed_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    typed::run_all(
        || {
            n += 1;
            let path = dir.path().join(format!("store{n}"));
            async move { SledStore::open(path, Schema::conformance()).unwrap() }
        },
        3000,
    )
    .await;
}

fn drafts_schema() -> Schema {
    Schema::new()
        .collection(
            CollectionSchema::new("songs")
                .text("title")
                .text("artist")
                .number("order"),
        )
        .collection(
            CollectionSchema::new("drafts")
                .text("title")
                .text("artist")
                .number("order")
                .local_only(),
        )
}

/// A local-only collection pages and counts like any other (and writes no outbox
/// entry); an undeclared one is the store's `UnknownCollection`, kept as the
/// source of a `CollectionError::Store` naming it.
async fn local_only_and_undeclared(store: &dyn LocalStore) {
    let drafts = store.collection::<typed::Song>("drafts");
    for n in 0..7 {
        drafts
            .insert(&typed::Song {
                title: format!("draft {n}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.pending_count().await.unwrap(),
        0,
        "local-only: no outbox"
    );
    let p1 = drafts.page(None, 4).await.unwrap();
    let p2 = drafts.page(p1.next.as_ref(), 4).await.unwrap();
    assert_eq!((p1.items.len(), p2.items.len(), p2.next), (4, 3, None));
    let listed = store.list("drafts").await.unwrap();
    let paged: Vec<String> = p1
        .items
        .iter()
        .chain(&p2.items)
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(
        paged,
        listed.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(),
        "as list does"
    );
    assert_eq!(drafts.count().await.unwrap(), 7);

    let nowhere = store.collection::<typed::Song>("nowhere");
    for err in [
        nowhere.page(None, 3).await.unwrap_err(),
        nowhere.list(None, 3).await.map(|_| ()).unwrap_err(),
        nowhere.count().await.map(|_| ()).unwrap_err(),
        nowhere
            .get(&sync_traits::new_id())
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        match &err {
            CollectionError::Store {
                collection,
                source: StoreError::UnknownCollection(_),
            } => assert_eq!(collection, "nowhere"),
            other => panic!("expected the store's UnknownCollection, got {other}"),
        }
    }
}

#[tokio::test]
async fn local_only_and_undeclared_collections_on_sqlite_and_sled() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("a.db"), drafts_schema()).unwrap();
    local_only_and_undeclared(&sqlite).await;
    let sled = SledStore::open(dir.path().join("b"), drafts_schema()).unwrap();
    local_only_and_undeclared(&sled).await;
}

/// The generated struct, const and schema work with the handle unchanged.
async fn generated_model_round_trips(store: &dyn LocalStore) {
    use model::Songs;
    let songs = store.collection::<Songs>(model::SONGS);
    let id = songs
        .insert(&Songs {
            title: "So What".into(),
            artist: "Miles Davis".into(),
            order: 1.5,
            plays: Some(12),
            tags: Some(vec![Songs::TAGS_LIVE.into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = songs.get(&id).await.unwrap().expect("inserted");
    assert_eq!(got.id, id.as_str(), "the generated id field is filled");
    assert_eq!(got.plays, Some(12));
    assert_eq!(got.liked, None, "an optional field left out reads as None");
    assert_eq!(got.tags, Some(vec!["live".to_owned()]));
    let edited = Songs {
        liked: Some(true),
        ..got.clone()
    };
    assert_eq!(songs.put(&edited).await.unwrap(), id);
    assert_eq!(songs.get(&id).await.unwrap(), Some(edited.clone()));
    for n in 0..20 {
        songs
            .insert(&Songs {
                title: format!("t{n}"),
                artist: "a".into(),
                order: f64::from(n),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = songs.page(cursor.as_ref(), 6).await.unwrap();
        all.extend(page.items);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all, songs.all().await.unwrap());
    assert_eq!(all.len(), 21);
    assert!(all.contains(&edited));
}

#[tokio::test]
async fn a_generated_model_works_on_sqlite_and_sled() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("m.db"), model::schema()).unwrap();
    generated_model_round_trips(&sqlite).await;
    let sled = SledStore::open(dir.path().join("m"), model::schema()).unwrap();
    generated_model_round_trips(&sled).await;
}

/// The SQLite table layout serves `list_page`'s query (`"id" > ? ORDER BY "id"
/// LIMIT ?`, the shape of `Table::select_page`) as a search of the primary key's
/// index, with no sort: a page reads `limit` rows, not the table.
#[test]
fn sqlite_pages_are_an_index_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    drop(SqliteStore::open(&path, Schema::conformance()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut st = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT \"id\", \"title\", \"artist\", \"order\", \"_extra\" \
             FROM \"songs\" WHERE \"id\" > ?1 ORDER BY \"id\" LIMIT ?2",
        )
        .unwrap();
    let plan: Vec<String> = st
        .query_map(rusqlite::params!["", 10], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let plan = plan.join(" | ");
    assert!(
        plan.contains("SEARCH") && plan.contains("INDEX") && plan.contains("id>?"),
        "an index range: {plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
}
