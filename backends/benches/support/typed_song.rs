//! The records of the typed-vs-untyped put comparison, shared by the criterion
//! bench (`typed_put` in benches/stores.rs) and the paired example
//! (examples/typed_put_profile.rs): song `i` as a struct shaped like the ones
//! `tidemark generate` writes, and the same song as the untyped record.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_traits::{Record, RecordId};

/// A song as `tidemark generate` writes its struct.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Song {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub artist: String,
    #[serde(default)]
    pub order: f64,
}

/// Song `i` under `id`, typed.
pub fn typed(id: &RecordId, i: usize) -> Song {
    Song {
        id: id.to_string(),
        title: format!("song number {i}"),
        artist: "some artist".into(),
        order: i as f64,
    }
}

/// The same song as a ready-made untyped record (what `put` takes).
pub fn untyped(id: &RecordId, i: usize) -> Record {
    let fields =
        json!({"title": format!("song number {i}"), "artist": "some artist", "order": i as f64});
    Record::new(
        "songs",
        id.clone(),
        fields.as_object().cloned().unwrap_or_default(),
    )
}
