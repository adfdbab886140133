//! Times applying a 10k page against a raw bulk insert, alternating, to see the ratio.
use std::time::Instant;

use serde_json::json;
use sync_traits::{new_id, LocalStore, Page, RemoteChange, RemoteState, Version, Watermark};
use tidemark_backends::{Schema, SqliteStore};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let n = 10_000;
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                new_id(),
                json!({"title": format!("song number {i}"), "artist": "some artist", "order": i})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )
        })
        .collect();
    let page = Page {
        changes: rows
            .iter()
            .enumerate()
            .map(|(i, (id, f))| RemoteChange {
                collection: "songs".into(),
                id: id.clone(),
                state: RemoteState {
                    version: Version(i as u64 + 1),
                    fields: Some(f.clone()),
                    change_id: None,
                },
            })
            .collect(),
        watermark: Watermark(n as u64),
        more: false,
    };
    let (mut ts, mut tr) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path().join("s.db"), Schema::conformance()).unwrap();
        let t = Instant::now();
        rt.block_on(s.apply_remote(&page)).unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        let mut c = rusqlite::Connection::open(d.path().join("raw.db")).unwrap();
        c.execute_batch(r#"PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE "songs" ("id" TEXT PRIMARY KEY NOT NULL, "title" TEXT, "artist" TEXT, "order" NUMERIC);"#).unwrap();
        let t = Instant::now();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx.prepare_cached(r#"INSERT INTO "songs" ("id", "title", "artist", "order") VALUES (?1, ?2, ?3, ?4)"#).unwrap();
            for (id, f) in &rows {
                st.execute(rusqlite::params![
                    id.as_str(),
                    f["title"].as_str(),
                    f["artist"].as_str(),
                    f["order"].as_i64()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        tr.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    tr.sort_by(f64::total_cmp);
    println!(
        "store median {:.1} ms, raw median {:.1} ms, ratio {:.2}",
        ts[7],
        tr[7],
        ts[7] / tr[7]
    );
}
