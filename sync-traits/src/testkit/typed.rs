//! Cases for the typed handle ([`crate::LocalStoreExt::collection`]) that every
//! store runs from its own tests, like [`super::conformance`]: plain async
//! functions over a fresh store holding the conformance collections
//! ([`SONGS`]: `title`, `artist` text, `order` number).
//!
//! ```no_run
//! # async fn demo() {
//! use sync_traits::testkit::{typed, MemoryStore};
//! typed::run_all(|| async { MemoryStore::new() }, 2000).await;
//! # }
//! ```
//!
//! Failures panic with a message naming the broken rule.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::collection::{CollectionError, LocalStoreExt};
use crate::id::{new_id, RecordId};
use crate::record::{Page, Record, RemoteChange, RemoteState, Version, Watermark};
use crate::store::LocalStore;

pub use super::conformance::SONGS;

/// A song shaped as `tidemark generate` writes a collection's struct: an `id:
/// String` with `#[serde(default)]`, then the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Song {
    /// The record's id (`""` before it has one).
    #[serde(default)]
    pub id: String,
    /// `title`: text, required.
    #[serde(default)]
    pub title: String,
    /// `artist`: text, required.
    #[serde(default)]
    pub artist: String,
    /// `order`: number, required.
    #[serde(default)]
    pub order: f64,
}

/// A song without an id field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Bare {
    title: String,
    artist: String,
    order: i64,
}

/// A song whose id is a [`RecordId`] and whose fields are all required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Strict {
    id: RecordId,
    title: String,
    artist: String,
    order: i64,
}

/// A value that refuses to serialise.
struct Unserialisable;

impl Serialize for Unserialisable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses on purpose"))
    }
}

fn song(title: &str, order: f64) -> Song {
    Song {
        id: String::new(),
        title: title.into(),
        artist: "someone".into(),
        order,
    }
}

/// A seed for the randomised cases: `TIDEMARK_SEED` or a fresh one, printed so a
/// failing run can be repeated.
pub fn seed() -> u64 {
    let seed = std::env::var("TIDEMARK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("operating system RNG unavailable");
            u64::from_le_bytes(b)
        });
    println!("typed collection cases: TIDEMARK_SEED={seed}");
    seed
}

/// splitmix64: enough randomness for choosing what to write, repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A random valid id (ids chosen here so a seed repeats the whole run).
    fn id(&mut self) -> RecordId {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let s: String = (0..crate::ID_LEN)
            .map(|_| A[self.below(A.len())] as char)
            .collect();
        RecordId::parse(&s).expect("alphabet ids are valid")
    }
}

/// Runs every case, each on a fresh store from `make`; `records` is the size of
/// the paging case's collection (a few thousand in the stores' own tests).
pub async fn run_all<F, Fut, S>(mut make: F, records: usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: LocalStore,
{
    let seed = seed();
    round_trip(&make().await).await;
    id_rules(&make().await).await;
    a_mistyped_stored_value_is_a_typed_error(&make().await).await;
    pages_end_without_an_empty_page(&make().await).await;
    paging_is_stable_under_concurrent_writes(&make().await, records, seed).await;
}

/// insert → get → put → put_with_id → delete, with the id flowing through the
/// `id` field and never stored as a field.
pub async fn round_trip<S: LocalStore + ?Sized>(s: &S) {
    let songs = s.collection::<Song>(SONGS);
    assert_eq!(songs.name(), SONGS);
    let id = songs.insert(&song("So What", 1.0)).await.unwrap();
    let got = songs.get(&id).await.unwrap().expect("inserted");
    assert_eq!(got.id, id.as_str(), "get fills the id field");
    assert_eq!(
        got,
        Song {
            id: id.to_string(),
            ..song("So What", 1.0)
        }
    );
    let raw = s.get(SONGS, &id).await.unwrap().unwrap();
    assert!(
        !raw.fields.contains_key("id"),
        "the id is not stored as a field"
    );
    assert_eq!(raw.fields["title"], json!("So What"));

    let changed = Song {
        title: "Blue in Green".into(),
        order: 2.5,
        ..got.clone()
    };
    assert_eq!(
        songs.put(&changed).await.unwrap(),
        id,
        "put writes under the value's id"
    );
    assert_eq!(songs.get(&id).await.unwrap().unwrap(), changed);
    assert_eq!(
        s.pending_count().await.unwrap(),
        1,
        "typed writes go to the outbox (coalesced)"
    );

    let other = new_id();
    songs.put_with_id(&other, &changed).await.unwrap();
    let copy = songs.get(&other).await.unwrap().unwrap();
    assert_eq!(
        copy.id,
        other.as_str(),
        "put_with_id: the id given wins over the field"
    );
    assert_eq!(songs.count().await.unwrap(), 2);

    // A type whose id is a RecordId: written from it, filled into it.
    let strict = s.collection::<Strict>(SONGS);
    let third = Strict {
        id: new_id(),
        title: "t".into(),
        artist: "a".into(),
        order: 3,
    };
    assert_eq!(strict.put(&third).await.unwrap(), third.id);
    assert_eq!(strict.get(&third.id).await.unwrap(), Some(third.clone()));
    assert_eq!(songs.get(&third.id).await.unwrap().unwrap().order, 3.0);

    assert!(songs.delete(&other).await.unwrap());
    assert_eq!(songs.get(&other).await.unwrap(), None);
    assert_eq!(songs.count().await.unwrap(), 2);
}

/// What `put` and `insert` do with the id, and what they refuse (writing nothing).
pub async fn id_rules<S: LocalStore + ?Sized>(s: &S) {
    let songs = s.collection::<Song>(SONGS);
    let no_id = songs.put(&song("x", 1.0)).await.unwrap_err();
    assert!(
        matches!(&no_id, CollectionError::NoId { collection, .. } if collection == SONGS),
        "{no_id}"
    );
    let bad = Song {
        id: "NOT-AN-ID".into(),
        ..song("x", 1.0)
    };
    let err = songs.put(&bad).await.unwrap_err();
    assert!(matches!(err, CollectionError::InvalidId { .. }), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the InvalidId is the source"
    );
    let has = Song {
        id: new_id().to_string(),
        ..song("x", 1.0)
    };
    let err = songs.insert(&has).await.unwrap_err();
    assert!(
        matches!(&err, CollectionError::HasId { id, .. } if *id == has.id),
        "{err}"
    );
    let err = s
        .collection::<i64>(SONGS)
        .put_with_id(&new_id(), &5)
        .await
        .unwrap_err();
    assert!(matches!(err, CollectionError::Encode { .. }), "{err}");
    let err = s
        .collection::<Unserialisable>(SONGS)
        .insert(&Unserialisable)
        .await
        .unwrap_err();
    assert!(matches!(err, CollectionError::Encode { .. }), "{err}");
    assert_eq!(
        s.count(SONGS).await.unwrap(),
        0,
        "a refused write writes nothing"
    );
    assert_eq!(s.pending_count().await.unwrap(), 0, "nor an outbox entry");

    // A type without an id field: insert works, put cannot, entries gives the ids.
    let bare = s.collection::<Bare>(SONGS);
    let value = Bare {
        title: "b".into(),
        artist: "a".into(),
        order: 4,
    };
    let err = bare.put(&value).await.unwrap_err();
    assert!(matches!(err, CollectionError::NoId { .. }), "{err}");
    let id = bare.insert(&value).await.unwrap();
    assert_eq!(bare.get(&id).await.unwrap(), Some(value.clone()));
    assert_eq!(
        bare.entries(None, 10).await.unwrap(),
        vec![(id.clone(), value)]
    );
    assert!(bare.delete(&id).await.unwrap());
    assert!(
        !bare.delete(&id).await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(bare.get(&id).await.unwrap(), None);

    // An id of another JSON type than a string.
    #[derive(Serialize)]
    struct NumberId {
        id: u32,
    }
    let err = s
        .collection::<NumberId>(SONGS)
        .put(&NumberId { id: 7 })
        .await
        .unwrap_err();
    assert!(matches!(err, CollectionError::InvalidId { .. }), "{err}");
}

/// A stored record whose fields do not deserialise into `T` (a pulled value of
/// another type, kept as sent; a field the type requires missing) is a
/// [`CollectionError::Decode`] naming the collection and the record, with serde's
/// error as its source; reads of other records and untyped reads go on working.
pub async fn a_mistyped_stored_value_is_a_typed_error<S: LocalStore + ?Sized>(s: &S) {
    let songs = s.collection::<Song>(SONGS);
    let good = songs.insert(&song("fine", 1.0)).await.unwrap();
    let odd = new_id();
    let fields = json!({"title": "odd", "artist": "x", "order": "seven"});
    s.apply_remote(&Page {
        changes: vec![RemoteChange {
            collection: SONGS.into(),
            id: odd.clone(),
            state: RemoteState {
                version: Version(1),
                fields: fields.as_object().cloned(),
                change_id: None,
            },
        }],
        watermark: Watermark(1),
        more: false,
    })
    .await
    .unwrap();
    let err = songs.get(&odd).await.unwrap_err();
    match &err {
        CollectionError::Decode { collection, id, .. } => {
            assert_eq!((collection.as_str(), id), (SONGS, &odd));
        }
        other => panic!("expected Decode, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(SONGS) && text.contains(odd.as_str()),
        "{text}"
    );
    let source = std::error::Error::source(&err).expect("serde's error is the source");
    assert!(source.downcast_ref::<serde_json::Error>().is_some());
    assert!(
        songs.page(None, 10).await.is_err(),
        "a page holding it fails whole"
    );
    assert!(songs.all().await.is_err());
    assert!(
        songs.get(&good).await.unwrap().is_some(),
        "other records read on"
    );
    assert_eq!(
        s.get(SONGS, &odd).await.unwrap().unwrap().fields["order"],
        json!("seven")
    );

    // A field the type requires, missing.
    let strict = s.collection::<Strict>(SONGS);
    let partial = new_id();
    s.put(Record::new(
        SONGS,
        partial.clone(),
        json!({"title": "t"}).as_object().cloned().unwrap(),
    ))
    .await
    .unwrap();
    let err = strict.get(&partial).await.unwrap_err();
    assert!(
        matches!(&err, CollectionError::Decode { id, .. } if *id == partial),
        "{err}"
    );
}

/// `page` reads one record past the page to know whether there is more, so the
/// last page says so itself; `limit` 0 reads nothing and ends the walk.
pub async fn pages_end_without_an_empty_page<S: LocalStore + ?Sized>(s: &S) {
    let songs = s.collection::<Song>(SONGS);
    let empty = songs.page(None, 5).await.unwrap();
    assert!(empty.items.is_empty() && empty.next.is_none());
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(songs.insert(&song("p", f64::from(n))).await.unwrap());
    }
    ids.sort();
    let p1 = songs.page(None, 4).await.unwrap();
    assert_eq!(
        p1.next.as_ref(),
        Some(&ids[3]),
        "next is the last item's id"
    );
    let p2 = songs.page(p1.next.as_ref(), 4).await.unwrap();
    let p3 = songs.page(p2.next.as_ref(), 4).await.unwrap();
    assert_eq!(p3.items.len(), 2);
    assert_eq!(p3.next, None, "the last page has no next");
    let exact = songs.page(Some(&ids[5]), 4).await.unwrap();
    assert_eq!(exact.items.len(), 4);
    assert_eq!(
        exact.next, None,
        "a page ending at the last record has no next"
    );
    let zero = songs.page(Some(&ids[2]), 0).await.unwrap();
    assert!(zero.items.is_empty() && zero.next.is_none(), "limit 0");
    let listed: Vec<String> = songs
        .list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let all: Vec<String> = songs
        .all()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, all);
    assert_eq!(
        all,
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "id order"
    );
    assert_eq!(
        songs.list(Some(&ids[8]), 100).await.unwrap().len(),
        1,
        "after is exclusive"
    );
}

/// A walk with [`crate::Collection::page`] over `records` records while another
/// future inserts and deletes records (new ones, and some of the original ones
/// not yet reached or already passed) at the same time, and more writes between
/// pages: the walk is ascending without a repeat, returns every original record
/// that was never deleted, returns nothing deleted before the walk began, and
/// ends.
pub async fn paging_is_stable_under_concurrent_writes<S: LocalStore + ?Sized>(
    s: &S,
    records: usize,
    seed: u64,
) {
    let songs = s.collection::<Song>(SONGS);
    let mut rng = Rng(seed);
    let mut original = BTreeSet::new();
    for n in 0..records {
        let id = rng.id();
        songs
            .put(&Song {
                id: id.to_string(),
                ..song("o", n as f64)
            })
            .await
            .unwrap();
        original.insert(id);
    }
    let original: Vec<RecordId> = original.into_iter().collect();
    // Deleted before the walk: must never be returned.
    let gone: BTreeSet<RecordId> = original.iter().step_by(11).cloned().collect();
    for id in &gone {
        assert!(songs.delete(id).await.unwrap());
    }
    // Deleted by the writer during the walk: may or may not be returned.
    let doomed: Vec<RecordId> = original
        .iter()
        .skip(3)
        .step_by(13)
        .filter(|id| !gone.contains(*id))
        .cloned()
        .collect();
    let doomed_set: BTreeSet<RecordId> = doomed.iter().cloned().collect();
    let done = Cell::new(false);
    let mut writer_rng = Rng(seed ^ 0x5eed);

    let walker = async {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<RecordId> = None;
        let mut pages = 0usize;
        loop {
            pages += 1;
            assert!(pages <= records + 10, "the walk must end");
            let page = songs.page(cursor.as_ref(), 97).await.unwrap();
            seen.extend(page.items.into_iter().map(|s| s.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
            // Between pages, too: one insert.
            let id = new_id();
            songs.put_with_id(&id, &song("between", 0.0)).await.unwrap();
            tokio::task::yield_now().await;
        }
        done.set(true);
        seen
    };
    let writer = async {
        let mut writes = 0usize;
        let mut doomed = doomed.iter();
        while !done.get() && writes < records * 4 {
            writes += 1;
            if writes.is_multiple_of(3) {
                if let Some(d) = doomed.next() {
                    assert!(songs.delete(d).await.unwrap());
                    continue;
                }
            }
            let id = writer_rng.id();
            songs.put_with_id(&id, &song("writer", 0.0)).await.unwrap();
            tokio::task::yield_now().await;
        }
        writes
    };
    let (seen, writes) = tokio::join!(walker, writer);
    assert!(writes > 0, "the writer ran during the walk");
    for w in seen.windows(2) {
        assert!(
            w[0] < w[1],
            "the walk is strictly ascending: {} then {}",
            w[0],
            w[1]
        );
    }
    let seen: BTreeSet<String> = seen.into_iter().collect();
    for id in &original {
        let s = id.to_string();
        if gone.contains(id) {
            assert!(
                !seen.contains(&s),
                "{id} was deleted before the walk but returned"
            );
        } else if !doomed_set.contains(id) {
            assert!(
                seen.contains(&s),
                "{id} existed throughout but the walk skipped it"
            );
        }
    }
    let now = s.list(SONGS).await.unwrap().len();
    assert_eq!(songs.count().await.unwrap(), now, "count agrees with list");
}
