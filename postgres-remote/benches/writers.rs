//! Write throughput of concurrent writers (pgbench, 1/8/32 clients) on three
//! tables: no trigger, tidemark's seq trigger (counter row), and the alternative
//! design (a `xid8` column from `pg_current_xact_id()`, no counter row); plus the
//! xid design's weak spot, measured: how far a poller's safe horizon
//! (`pg_snapshot_xmin`) falls behind while one long transaction is open.
//!
//! `cargo bench -p postgres-remote --bench writers` (seconds per run:
//! `TIDEMARK_BENCH_SECS`, default 5). Prints a table; not a criterion bench because
//! the load comes from pgbench processes.

use std::process::Command;
use std::time::Duration;

use postgres_remote::harness::{bindir, TestServer, ADMIN, ADMIN_PASSWORD, DATABASE};

fn pgbench(s: &TestServer, script: &str, clients: usize, secs: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("script");
    let out = Command::new(bindir().join("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &s.port().to_string(),
            "-U",
            ADMIN,
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-f",
        ])
        .arg(&file)
        .arg(DATABASE)
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

fn main() {
    // One second per cell when `cargo test --benches` runs this as a smoke test.
    let default = if std::env::args().any(|a| a == "--bench") {
        5
    } else {
        1
    };
    let secs: u64 = std::env::var("TIDEMARK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let s = TestServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let admin = s.admin().await;
        s.sql()
            .await
            .batch_execute(
                "CREATE TABLE plain (id text PRIMARY KEY, body text, owner text);
                 CREATE TABLE synced (id text PRIMARY KEY, body text, owner text);
                 CREATE TABLE xid (id text PRIMARY KEY, body text, owner text,
                                   tx xid8 NOT NULL DEFAULT pg_current_xact_id());
                 CREATE INDEX ON xid (tx);",
            )
            .await
            .expect("tables");
        admin
            .enable_sync("synced", Some("owner"))
            .await
            .expect("enable");
    });
    println!("writers: single-row INSERT transactions per second, {secs} s per run");
    println!(
        "{:<8} {:>10} {:>10} {:>10}",
        "clients", "plain", "seq-trig", "xid8"
    );
    for clients in [1usize, 8, 32] {
        let mut row = Vec::new();
        for t in ["plain", "synced", "xid"] {
            let script = format!(
                "INSERT INTO {t} (id, body, owner) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 15), 'x', 'alice');\n"
            );
            row.push(pgbench(&s, &script, clients, secs));
        }
        println!(
            "{clients:<8} {:>10.0} {:>10.0} {:>10.0}",
            row[0], row[1], row[2]
        );
    }
    // Batched writers: 10 rows per transaction.
    println!("writers: 10-row INSERT transactions per second");
    for clients in [8usize, 32] {
        let mut row = Vec::new();
        for t in ["plain", "synced", "xid"] {
            let script = format!(
                "INSERT INTO {t} (id, body, owner) SELECT substr(md5(random()::text || i::text || clock_timestamp()::text), 1, 15), 'x', 'alice' FROM generate_series(1, 10) i;\n"
            );
            row.push(pgbench(&s, &script, clients, secs));
        }
        println!(
            "{clients:<8} {:>10.0} {:>10.0} {:>10.0}",
            row[0], row[1], row[2]
        );
    }
    // The xid design's horizon: one transaction held open for 3 s while 8 writers
    // commit. A poller may only deliver rows with tx < pg_snapshot_xmin, so every
    // row committed behind the open transaction waits for it.
    rt.block_on(async {
        let long = s.sql().await;
        long.batch_execute("BEGIN; INSERT INTO xid (id, body) VALUES ('longlonglonglon', 'long')")
            .await
            .expect("open");
        let poll = s.sql().await;
        let before: i64 = poll
            .query_one("SELECT count(*) FROM xid", &[])
            .await
            .expect("count")
            .get(0);
        let writer = {
            let script = "INSERT INTO xid (id, body, owner) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 15), 'x', 'alice');\n".to_owned();
            let s_port = s.port();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().expect("tempdir");
                let file = dir.path().join("w.sql");
                std::fs::write(&file, script).expect("script");
                Command::new(bindir().join("pgbench"))
                    .args(["-n", "-h", "127.0.0.1", "-p", &s_port.to_string(), "-U", ADMIN])
                    .args(["-c", "8", "-j", "2", "-T", "3", "-f"])
                    .arg(&file)
                    .arg(DATABASE)
                    .env("PGPASSWORD", ADMIN_PASSWORD)
                    .output()
                    .expect("pgbench")
            })
        };
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let row = poll
            .query_one(
                "SELECT count(*) FILTER (WHERE tx < pg_snapshot_xmin(pg_current_snapshot())),
                        count(*)
                 FROM xid",
                &[],
            )
            .await
            .expect("horizon");
        let (deliverable, committed): (i64, i64) = (row.get(0), row.get(1));
        let _ = writer.join();
        long.batch_execute("COMMIT").await.expect("commit");
        println!(
            "xid8 horizon with one transaction open 2.5 s: {} of {} rows committed since it began are deliverable",
            deliverable - before.min(deliverable),
            committed - before
        );
    });
}
