#![cfg(all(feature = "sqlite", feature = "sled"))]
//! Crash safety of multi-record transactions with a real kill: a child process
//! (this test binary re-run with an environment variable) commits a stream of
//! transactions and is SIGKILLed at a random moment (the seed is printed;
//! `TIDEMARK_CRASH_SEED` repeats it); the reopened store must hold every
//! transaction whole or not at all, records and outbox entries alike.
//!
//! Workload, round `r` = 1, 2, ...: one transaction that puts `SONGS` songs with
//! `order = r` (coalescing into their outbox entries after the first round) and
//! deletes the `FRIENDS` friends in odd rounds, puts them with `order = r` in even
//! ones; after every fourth round one `ack` settles the whole outbox, so the next
//! transaction makes new entries (and SQLite's marks of the removed ones go).
//!
//! Invariants after a kill, with `R` the round of the songs: every song has
//! `order == R` (a transaction is never half applied); the friends are absent if
//! `R` is odd, all there with `order == R` if it is even; the outbox is empty (an
//! ack after round `R`) or holds exactly one entry per record written (round 1
//! deletes friends that were never there: none for them), each with the op the
//! data says, all carrying the mark of one transaction whose id is the newest
//! change counter and whose `last` is the highest seq; `R` is at least the last
//! round the child saw committed.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sync_traits::{Ack, LocalStore, Op, Record, RecordId, Transact, Version};
use tidemark_backends::Schema;

const SONGS: u64 = 1500;
const FRIENDS: u64 = 10;
const KILLS: usize = 16;
/// Prefix of the child's progress lines on its stdout.
const MARK: &str = "tidemark-tx-crash-child: ";

fn id(prefix: char, i: u64) -> RecordId {
    RecordId::parse(&format!("{prefix}{i:014}")).unwrap()
}

fn open(kind: &str, path: &std::path::Path) -> Box<dyn LocalStore> {
    match kind {
        "sqlite" => {
            Box::new(tidemark_backends::SqliteStore::open(path, Schema::conformance()).unwrap())
        }
        _ => Box::new(tidemark_backends::SledStore::open(path, Schema::conformance()).unwrap()),
    }
}

/// The round the songs are at (0: none yet).
async fn round_of(s: &dyn LocalStore) -> u64 {
    s.get("songs", &id('s', 0))
        .await
        .unwrap()
        .and_then(|r| r.fields["order"].as_u64())
        .unwrap_or(0)
}

async fn child(kind: &str, path: &std::path::Path) {
    let s = open(kind, path);
    let mut round = round_of(&*s).await;
    let mut out = std::io::stdout();
    loop {
        round += 1;
        let mut tx = s.transaction();
        for i in 0..SONGS {
            let f = json!({"title": format!("song {i}"), "artist": "x", "order": round});
            tx = tx.put(Record::new(
                "songs",
                id('s', i),
                f.as_object().cloned().unwrap(),
            ));
        }
        for i in 0..FRIENDS {
            tx = if round % 2 == 1 {
                tx.delete("friends", &id('f', i))
            } else {
                let f = json!({"name": format!("friend {i}"), "order": round});
                tx.put(Record::new(
                    "friends",
                    id('f', i),
                    f.as_object().cloned().unwrap(),
                ))
            };
        }
        tx.commit().await.unwrap();
        // A line of its own: libtest has already printed `test <name> ... `
        // without a newline, and the parent reads these markers wherever they stand.
        writeln!(out, "\n{MARK}COMMITTED {round}").unwrap();
        out.flush().unwrap();
        if round % 4 == 0 {
            let acks = s
                .pending(0, 100_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| Ack::Applied {
                    collection: e.collection,
                    id: e.id,
                    change_id: e.change_id,
                    version: Version(round),
                })
                .collect();
            s.ack(acks).await.unwrap();
        }
    }
}

/// The last round a child reported committed; a marker may follow other text on
/// its line.
fn parse_progress(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| {
            let at = l.find(MARK)?;
            l[at + MARK.len()..]
                .strip_prefix("COMMITTED ")?
                .trim()
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
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

/// Checks the invariants; returns the round and the outbox size.
async fn check(kind: &str, path: &std::path::Path, reported: u64) -> (u64, usize) {
    let s = open(kind, path);
    let round = round_of(&*s).await;
    assert!(
        round >= reported,
        "{kind}: at round {round}, but the child saw round {reported} commit"
    );
    let songs = s.list("songs").await.unwrap();
    if round > 0 {
        assert_eq!(songs.len() as u64, SONGS, "{kind}: songs half written");
    }
    for r in &songs {
        assert_eq!(
            r.fields["order"],
            json!(round),
            "{kind}: song {} is not at round {round}: a transaction half applied",
            r.id
        );
    }
    let friends = s.list("friends").await.unwrap();
    if round % 2 == 1 {
        assert!(
            friends.is_empty(),
            "{kind}: round {round} deleted the friends, {} are there",
            friends.len()
        );
    } else if round > 0 {
        assert_eq!(
            friends.len() as u64,
            FRIENDS,
            "{kind}: friends half written"
        );
        assert!(
            friends.iter().all(|r| r.fields["order"] == json!(round)),
            "{kind}: a friend is not at round {round}"
        );
    }
    let pending = s.pending(0, 100_000).await.unwrap();
    if !pending.is_empty() {
        // Round 1 deletes friends that were never there: no entries for them.
        let friends_written = if round == 1 { 0 } else { FRIENDS };
        assert_eq!(
            pending.len() as u64,
            SONGS + friends_written,
            "{kind}: the outbox holds part of a transaction (round {round})"
        );
        let mark = pending[0]
            .tx
            .expect("a transaction's entry carries its mark");
        assert!(
            pending.iter().all(|e| e.tx == Some(mark)),
            "{kind}: the entries carry the marks of different transactions"
        );
        assert_eq!(
            mark.id,
            pending.iter().map(|e| e.change_id.n).max().unwrap(),
            "{kind}: the mark's id is not the newest change counter"
        );
        assert_eq!(
            mark.last,
            pending.iter().map(|e| e.seq).max().unwrap(),
            "{kind}: the mark's last is not the highest seq"
        );
        for e in &pending {
            let deleted = e.collection == "friends" && round % 2 == 1;
            assert_eq!(
                matches!(e.op, Op::Delete),
                deleted,
                "{kind}: {}/{} has an entry whose op does not match the data",
                e.collection,
                e.id
            );
        }
    } else {
        assert!(
            round % 4 == 0,
            "{kind}: empty outbox at round {round}, which is not acked"
        );
    }
    (round, pending.len())
}

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

/// Run by the parent, starts this test again as the child, kills it at random
/// moments and checks the store each time; run as the child, does the workload
/// until it is killed.
fn kill_loop(kind: &str, test: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let (Ok(child_kind), Ok(path)) = (
        std::env::var("TIDEMARK_TX_CRASH_KIND"),
        std::env::var("TIDEMARK_TX_CRASH_PATH"),
    ) {
        rt.block_on(child(&child_kind, std::path::Path::new(&path)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let seed = kill_seed(kind);
    let mut rng = Rng(seed | 1);
    let mut reported = 0u64;
    let mut rounds_seen = std::collections::BTreeSet::new();
    let mut with_outbox = 0;
    for kill in 0..KILLS {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("TIDEMARK_TX_CRASH_KIND", kind)
            .env("TIDEMARK_TX_CRASH_PATH", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = c.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut signalled = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !signalled && line.contains(&format!("{MARK}COMMITTED")) {
                    signalled = tx.send(()).is_ok();
                }
                lines.push(line);
            }
            lines.join("\n")
        });
        // Killed at a random moment after its first commit, however slow the
        // machine: the wait for that commit is bounded, not timed.
        let _ = rx.recv_timeout(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(rng.next() % 700));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        reported = reported.max(parse_progress(&reader.join().unwrap()));
        let (round, pending) = rt.block_on(check(kind, &path, reported));
        rounds_seen.insert(round);
        if pending > 0 {
            with_outbox += 1;
        }
        eprintln!("{kind}: kill {kill}: round {round}, {pending} pending");
    }
    assert!(
        reported > 0,
        "{kind}: the child never committed a transaction"
    );
    assert!(
        with_outbox > 0 && rounds_seen.len() > 1,
        "{kind}: every kill found the same state, so none tested a transaction under way (seed {seed})"
    );
    eprintln!(
        "{kind}: {KILLS} kills, {with_outbox} with a transaction's entries pending, rounds {rounds_seen:?}"
    );
}

#[test]
fn progress_markers_are_read_wherever_they_stand() {
    let out = format!("test x ... \n{MARK}COMMITTED 3\nnoise {MARK}COMMITTED 7\n{MARK}COMMITTED");
    assert_eq!(parse_progress(&out), 7);
}

#[test]
fn sqlite_transactions_survive_sigkill() {
    kill_loop("sqlite", "sqlite_transactions_survive_sigkill");
}

#[test]
fn sled_transactions_survive_sigkill() {
    kill_loop("sled", "sled_transactions_survive_sigkill");
}
