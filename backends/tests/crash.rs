#![cfg(all(feature = "sqlite", feature = "sled"))]
//! Crash safety with a real kill: a child process (this test binary re-run with an
//! environment variable) applies large pages and acks large pushes in a loop and is
//! SIGKILLed at a random moment; the reopened store must hold each call whole or
//! not at all, and (with the default durability settings) every call the child saw
//! return.
//!
//! Workload, round `r` = 1, 2, ...:
//! 1. apply a page that sets all `PAGE` songs to `order = r`, watermark `r * PAGE`;
//! 2. put `LOCAL` friends records with `order = r`, one call each;
//! 3. ack all their outbox entries as applied in one call.
//!
//! Invariants after a kill: every song has `order == watermark / PAGE` (a page is
//! never half applied, and the watermark moves with its data); among the friends,
//! the outbox holds exactly the newest round's writes or nothing (an ack is never
//! half applied); the watermark is at least the last one the child reported.
//!
//! A second workload kills a *first sync* (a resync begun on an empty store, the
//! case a store may take a shorter path for): each child starts on a new empty
//! store and runs `begin_resync`, `FIRST_PAGES` pages, `finish_resync`. After the
//! kill, a store that finished holds exactly what the server held; one killed
//! midway still says it is resyncing, and the resync the engine starts again (a
//! server state that no longer has a fifth of those records) leaves exactly the
//! new state: nothing of the interrupted one survives.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sync_traits::{
    Ack, LocalStore, Page, Record, RecordId, RemoteChange, RemoteState, Version, Watermark,
};
use tidemark_backends::Schema;

const PAGE: u64 = 3000;
const LOCAL: u64 = 200;
const KILLS: usize = 24;
/// Prefix of the child's progress lines on its stdout.
const MARK: &str = "tidemark-crash-child: ";

fn id(prefix: char, i: u64) -> RecordId {
    RecordId::parse(&format!("{prefix}{i:014}")).unwrap()
}

fn open(kind: &str, path: &std::path::Path) -> Box<dyn LocalStore> {
    match kind {
        "sqlite" => {
            Box::new(tidemark_backends::SqliteStore::open(path, Schema::conformance()).unwrap())
        }
        "sled-noflush" => Box::new(
            tidemark_backends::SledStore::open_with(
                path,
                Schema::conformance(),
                tidemark_backends::sled::SledOptions {
                    flush_every_write: false,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        _ => Box::new(tidemark_backends::SledStore::open(path, Schema::conformance()).unwrap()),
    }
}

async fn child(kind: &str, path: &std::path::Path) {
    let s = open(kind, path);
    let mut round = s.sync_state().await.unwrap().watermark.0 / PAGE;
    let mut out = std::io::stdout();
    // Settle what a killed predecessor left in the outbox, so each round starts empty.
    ack_all(&*s, round * PAGE).await;
    loop {
        round += 1;
        let page = Page {
            changes: (0..PAGE)
                .map(|i| RemoteChange {
                    collection: "songs".into(),
                    id: id('s', i),
                    state: RemoteState {
                        version: Version((round - 1) * PAGE + i + 1),
                        fields: Some(
                            json!({"title": format!("song {i}"), "artist": "x", "order": round})
                                .as_object()
                                .cloned()
                                .unwrap(),
                        ),
                        change_id: None,
                    },
                })
                .collect(),
            watermark: Watermark(round * PAGE),
            more: false,
        };
        s.apply_remote(&page).await.unwrap();
        // A line of its own: libtest has already printed `test <name> ... `
        // without a newline, and the parent reads these markers wherever they stand.
        writeln!(out, "\n{MARK}APPLIED {}", round * PAGE).unwrap();
        out.flush().unwrap();
        for i in 0..LOCAL {
            let f = json!({"name": format!("friend {i}"), "order": round});
            s.put(Record::new(
                "friends",
                id('f', i),
                f.as_object().cloned().unwrap(),
            ))
            .await
            .unwrap();
        }
        ack_all(&*s, round * PAGE).await;
        writeln!(out, "\n{MARK}ACKED {round}").unwrap();
        out.flush().unwrap();
    }
}

async fn ack_all(s: &dyn LocalStore, version: u64) {
    let acks = s
        .pending(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| Ack::Applied {
            collection: e.collection,
            id: e.id,
            change_id: e.change_id,
            version: Version(version),
        })
        .collect();
    s.ack(acks).await.unwrap();
}

/// What the parent read from a child's stdout: the last watermark it reported
/// applied and the last round it reported acked. A marker may follow other text on
/// its line (libtest's `test sqlite_survives_sigkill ... `).
fn parse_progress(out: impl BufRead) -> (u64, u64) {
    let mut last = (0u64, 0u64);
    for line in out.lines().map_while(Result::ok) {
        let Some(at) = line.find(MARK) else { continue };
        let marker = &line[at + MARK.len()..];
        if let Some(w) = marker.strip_prefix("APPLIED ") {
            last.0 = last.0.max(w.trim().parse().unwrap_or(0));
        } else if let Some(r) = marker.strip_prefix("ACKED ") {
            last.1 = last.1.max(r.trim().parse().unwrap_or(0));
        }
    }
    last
}

#[test]
fn progress_markers_are_read_wherever_they_stand() {
    let out = format!(
        "\nrunning 1 test\ntest sled_survives_sigkill ... {MARK}APPLIED 3000\n{MARK}ACKED 1\n\n{MARK}APPLIED 6000\n{MARK}APPL"
    );
    assert_eq!(parse_progress(out.as_bytes()), (6000, 1));
    assert_eq!(
        parse_progress("test sled_survives_sigkill ... ".as_bytes()),
        (0, 0)
    );
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn check(kind: &str, path: &std::path::Path, reported_wm: u64, acked: u64) -> (u64, usize) {
    let s = open(kind, path);
    let wm = s.sync_state().await.unwrap().watermark.0;
    assert_eq!(wm % PAGE, 0, "watermark {wm} is not at a page boundary");
    if kind == "sled-noflush" {
        if wm < reported_wm {
            eprintln!(
                "{kind}: LOST {} pages that the child saw applied",
                (reported_wm - wm) / PAGE
            );
        }
    } else {
        assert!(
            wm >= reported_wm,
            "{kind}: watermark {wm} lost an apply the child saw return ({reported_wm})"
        );
    }
    let round = wm / PAGE;
    let songs = s.list("songs").await.unwrap();
    if round == 0 {
        assert!(songs.is_empty(), "{kind}: songs present with watermark 0");
    } else {
        assert_eq!(songs.len() as u64, PAGE, "{kind}: page half applied");
        for r in &songs {
            assert_eq!(
                r.fields["order"],
                json!(round),
                "{kind}: song {} does not match watermark {wm}",
                r.id
            );
        }
    }
    let friends = s.list("friends").await.unwrap();
    let newest = friends
        .iter()
        .filter_map(|r| r.fields["order"].as_u64())
        .max()
        .unwrap_or(0);
    let of_newest = friends
        .iter()
        .filter(|r| r.fields["order"] == json!(newest))
        .count();
    let pending = s.pending(0, 100_000).await.unwrap();
    // Only the newest round's writes can be pending (every round starts with an
    // empty outbox), and an ack settles all of them or none.
    let mut pending_ids: Vec<_> = pending.iter().map(|e| e.id.clone()).collect();
    pending_ids.sort();
    let newest_ids: Vec<_> = friends
        .iter()
        .filter(|r| r.fields["order"] == json!(newest))
        .map(|r| r.id.clone())
        .collect();
    assert!(
        pending.is_empty() || pending_ids == newest_ids,
        "{kind}: ack half applied: {} pending, {} records of round {newest}",
        pending.len(),
        of_newest
    );
    if kind == "sled-noflush" && newest < acked {
        eprintln!("{kind}: LOST acked round {acked}, friends are at round {newest}");
    }
    if kind != "sled-noflush" {
        assert!(
            newest >= acked,
            "{kind}: round {acked} was acked but friends are at {newest}"
        );
    }
    (wm, pending.len())
}

/// The store kind and path the parent gave this process, if it is a child.
fn child_env() -> Option<(String, String)> {
    Some((
        std::env::var("TIDEMARK_CRASH_KIND").ok()?,
        std::env::var("TIDEMARK_CRASH_PATH").ok()?,
    ))
}

/// The seed of the kill times (`TIDEMARK_CRASH_SEED` repeats one), printed.
fn kill_seed(kind: &str) -> u64 {
    let seed = std::env::var("TIDEMARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{kind}: kill times from seed {seed} (TIDEMARK_CRASH_SEED={seed} repeats them)");
    seed
}

/// This test binary started again as the child of test `test`, on store `kind`
/// at `path`, its progress markers on a pipe.
fn spawn_child(test: &str, kind: &str, path: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("TIDEMARK_CRASH_KIND", kind)
        .env("TIDEMARK_CRASH_PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The kill test `test` (its own name) for store `kind`. Run by the parent, it
/// starts itself again as the child (this binary, `test --exact`, with the store
/// path in the environment), kills it at random moments and checks the store each
/// time; run as that child, it does the workload until it is killed.
fn kill_loop(kind: &str, test: &str) {
    if let Some((child_kind, path)) = child_env() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(&child_kind, std::path::Path::new(&path)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let seed = kill_seed(kind);
    let mut rng = Rng(seed | 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut reported, mut acked) = (0u64, 0u64);
    let mut kills = 0;
    let mut mid_ack = 0;
    while kills < KILLS {
        let mut c = spawn_child(test, kind, &path);
        let stdout = c.stdout.take().unwrap();
        // The child's output, line by line; the first applied page is signalled.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut signalled = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !signalled && line.contains(&format!("{MARK}APPLIED")) {
                    signalled = tx.send(()).is_ok();
                }
                lines.push(line);
            }
            lines.join("\n")
        });
        // Killed at a random moment after its first applied page, however slow the
        // machine: the wait for that page is bounded, not timed.
        let _ = rx.recv_timeout(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(rng.next() % 900));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let (w, a) = parse_progress(reader.join().unwrap().as_bytes());
        reported = reported.max(w);
        acked = acked.max(a);
        if kind == "sled-noflush" {
            // Lost calls are expected here: measure, then restart the count from
            // what survived.
            let (wm, _) = rt.block_on(check(kind, &path, reported, acked));
            reported = wm;
            acked = 0;
        }
        let (wm, pending) = rt.block_on(check(kind, &path, reported, acked));
        if pending > 0 {
            mid_ack += 1;
        }
        eprintln!("{kind}: kill {kills}: watermark {wm}, {pending} pending");
        kills += 1;
    }
    assert!(reported > 0, "{kind}: the child never got to apply a page");
    assert!(
        mid_ack > 0,
        "{kind}: no kill of {kills} landed with local writes pending, so no kill tested \
         a half-done round of puts and ack (seed {seed})"
    );
    eprintln!(
        "{kind}: {kills} kills, {mid_ack} with local writes pending, last watermark {reported}"
    );
}

/// Records of the first-sync workload: `FIRST_PAGES` pages of `FIRST_PAGE`.
const FIRST_PAGES: u64 = 8;
const FIRST_PAGE: u64 = 2500;
const FIRST_KILLS: usize = 10;

/// The server's state in generation `g` as a resync delivers it: the songs whose
/// number `i` has `(i + g) % 5 != 0`, with `order = g`, in pages.
fn generation(g: u64) -> Vec<Page> {
    let ids: Vec<u64> = (0..FIRST_PAGES * FIRST_PAGE)
        .filter(|i| !(i + g).is_multiple_of(5))
        .collect();
    let chunks: Vec<&[u64]> = ids.chunks(FIRST_PAGE as usize).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(k, chunk)| Page {
            changes: chunk
                .iter()
                .map(|&i| RemoteChange {
                    collection: "songs".into(),
                    id: id('s', i),
                    state: RemoteState {
                        version: Version(g * 1_000_000 + i + 1),
                        fields: json!({"title": format!("song {i}"), "artist": "x", "order": g})
                            .as_object()
                            .cloned(),
                        change_id: None,
                    },
                })
                .collect(),
            watermark: Watermark(g * 1_000_000 + chunk.last().copied().unwrap_or(0) + 1),
            more: k != last,
        })
        .collect()
}

/// A resync of generation `g`, as the engine makes it; `mark` prints progress.
async fn resync(s: &dyn LocalStore, g: u64, mut mark: impl FnMut(&str)) {
    s.begin_resync().await.unwrap();
    mark("BEGUN");
    for page in generation(g) {
        s.apply_remote(&page).await.unwrap();
        mark("PAGE");
    }
    s.finish_resync(None).await.unwrap();
    mark("FINISHED");
}

/// Whether `s` holds exactly generation `g` and is not resyncing.
async fn holds_generation(kind: &str, s: &dyn LocalStore, g: u64) {
    let st = s.sync_state().await.unwrap();
    assert!(!st.resyncing, "{kind}: still resyncing after finish");
    let want: Vec<_> = generation(g)
        .into_iter()
        .flat_map(|p| p.changes.into_iter().map(|c| c.id))
        .collect();
    let mut songs = s.list("songs").await.unwrap();
    songs.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<_> = songs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{kind}: generation {g} not held exactly"
    );
    assert_eq!(got, want, "{kind}: generation {g} not held exactly");
    assert!(
        songs.iter().all(|r| r.fields["order"] == json!(g)),
        "{kind}: a record of an earlier generation survived"
    );
}

/// The first-sync workload (see the module docs): the child side when started by
/// the parent, else the parent's kill loop.
fn first_sync_kill_loop(kind: &str, test: &str) {
    if let Some((child_kind, path)) = child_env() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = open(&child_kind, std::path::Path::new(&path));
        let mut out = std::io::stdout();
        rt.block_on(resync(&*s, 1, |m| {
            writeln!(out, "\n{MARK}{m}").unwrap();
            out.flush().unwrap();
        }));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = kill_seed(kind);
    let mut rng = Rng(seed | 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut midway, mut finished) = (0, 0);
    for kill in 0..FIRST_KILLS {
        let path = dir.path().join(format!("store-{kill}"));
        let mut c = spawn_child(test, kind, &path);
        // Killed after the child's `k`-th progress mark (0: before any) and a few
        // more milliseconds, so most kills land inside the first sync whatever the
        // machine's speed; `k` past the last mark lets it finish first.
        let k = (rng.next() % 10) as usize;
        let stdout = c.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find(MARK) {
                    let _ = tx.send(line[at + MARK.len()..].trim().to_owned());
                }
            }
        });
        let mut marks = Vec::new();
        while marks.len() < k {
            // Bounded: a child that stops printing (or exits) ends the wait.
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(m) => marks.push(m),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 30));
        c.kill().unwrap(); // SIGKILL (or nothing, if it already finished)
        c.wait().unwrap();
        reader.join().unwrap();
        marks.extend(rx.try_iter());
        let s = open(kind, &path);
        let st = rt.block_on(s.sync_state()).unwrap();
        let saw_finish = marks.iter().any(|m| m == "FINISHED");
        if st.resyncing {
            assert!(
                !saw_finish,
                "{kind}: finished, yet the store says resyncing"
            );
            midway += 1;
            // The engine starts the resync again; the server has moved on.
            rt.block_on(resync(&*s, 2, |_| {}));
            rt.block_on(holds_generation(kind, &*s, 2));
        } else if marks.iter().any(|m| m == "BEGUN") {
            assert!(
                saw_finish || st.watermark.0 > 0,
                "{kind}: a begun resync vanished"
            );
            finished += 1;
            rt.block_on(holds_generation(kind, &*s, 1));
        } else {
            assert!(rt.block_on(s.list("songs")).unwrap().is_empty());
        }
        eprintln!(
            "{kind}: kill {kill}: {} marks, resyncing {}",
            marks.len(),
            st.resyncing
        );
    }
    assert!(
        midway > 0,
        "{kind}: no kill of {FIRST_KILLS} landed inside the first sync (seed {seed})"
    );
    eprintln!("{kind}: {FIRST_KILLS} kills: {midway} inside the first sync, {finished} after it");
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_first_sync_survives_sigkill() {
    first_sync_kill_loop("sqlite", "sqlite_first_sync_survives_sigkill");
}

#[cfg(feature = "sled")]
#[test]
fn sled_first_sync_survives_sigkill() {
    first_sync_kill_loop("sled", "sled_first_sync_survives_sigkill");
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_survives_sigkill() {
    kill_loop("sqlite", "sqlite_survives_sigkill");
}

#[cfg(feature = "sled")]
#[test]
fn sled_survives_sigkill() {
    kill_loop("sled", "sled_survives_sigkill");
}

/// sled without a flush per call: each call must still be atomic under SIGKILL (the
/// loss of recent calls is measured and printed, not asserted: without a flush sled
/// does not promise it).
#[cfg(feature = "sled")]
#[test]
fn sled_without_flush_stays_atomic_under_sigkill() {
    kill_loop(
        "sled-noflush",
        "sled_without_flush_stays_atomic_under_sigkill",
    );
}
