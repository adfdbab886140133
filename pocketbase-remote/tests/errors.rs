//! What the client does with servers that misbehave: typed errors, never a panic.
//! A tiny fake HTTP server on 127.0.0.1 answers canned responses.

use std::sync::Arc;

use pocketbase_remote::PocketBaseRemote;
use serde_json::json;
use sync_traits::{
    new_id, ChangeId, Op, PullMode, PushChange, RemoteError, RemoteStore, Version, Watermark,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Handler = Arc<dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync>;

/// Serves `handler(method, path, body)` on a local port; returns the base URL. A
/// request with a body over [`RESET_OVER`] bytes gets its connection closed unread
/// (as PocketBase sometimes answers a body over its limit).
async fn fake(handler: Handler) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if len > RESET_OVER {
                            return;
                        }
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let first = text.lines().next().unwrap_or("");
                        let mut parts = first.split(' ');
                        let (m, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        let req_body = String::from_utf8_lossy(&buf[end + 4..]).to_string();
                        let (status, body) = h(m, p.split('?').next().unwrap_or(""), &req_body);
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

const RESET_OVER: usize = 1 << 20;

const HEAD: &str = r#"{"protocol":2,"pocketbase":"0.40.6","head":10,"horizon":0,"collections":["songs"],"batchMax":50,"superuser":false}"#;

fn base(m: &str, p: &str) -> Option<(u16, String)> {
    match (m, p) {
        ("POST", p) if p.ends_with("/auth-with-password") => {
            Some((200, json!({"token": "x.y.z", "record": {}}).to_string()))
        }
        ("GET", "/api/tidemark/head") => Some((200, HEAD.into())),
        _ => None,
    }
}

async fn connect(url: &str) -> PocketBaseRemote {
    PocketBaseRemote::builder(url)
        .user("users", "a@t.io", "pw")
        .connect()
        .await
        .unwrap()
}

fn change() -> PushChange {
    PushChange {
        change_id: ChangeId {
            client: new_id(),
            n: 1,
        },
        collection: "songs".into(),
        id: new_id(),
        base: None,
        op: Op::Upsert(Default::default()),
    }
}

#[tokio::test]
async fn garbage_bodies_are_malformed() {
    let url = fake(Arc::new(|m, p, _| {
        base(m, p).unwrap_or_else(|| match p {
            "/api/collections/songs/records" => (200, "{not json".into()),
            "/api/batch" => (
                200,
                r#"[{"status":200,"body":{"tm_push":"","tm_seq":"seven"}}]"#.into(),
            ),
            _ => (200, r#"{"items":[]}"#.into()),
        })
    }))
    .await;
    let r = connect(&url).await;
    let e = r
        .pull(Watermark(0), 100, PullMode::Incremental)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Malformed(_)), "{e:?}");
    let e = r.push(vec![change()]).await.unwrap_err();
    assert!(matches!(e, RemoteError::Malformed(_)), "{e:?}");
}

#[tokio::test]
async fn out_of_window_seqs_and_wrong_reply_counts_are_malformed() {
    let url = fake(Arc::new(|m, p, _| {
        base(m, p).unwrap_or_else(|| match p {
            "/api/collections/songs/records" => (
                200,
                json!({"items":[{"id": "aaaaaaaaaaaaaaa", "tm_seq": 99}]}).to_string(),
            ),
            "/api/batch" => (200, "[]".into()),
            _ => (200, r#"{"items":[]}"#.into()),
        })
    }))
    .await;
    let r = connect(&url).await;
    let e = r
        .pull(Watermark(0), 100, PullMode::Incremental)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Malformed(_)), "{e:?}");
    let e = r.push(vec![change()]).await.unwrap_err();
    assert!(matches!(e, RemoteError::Malformed(_)), "{e:?}");
}

#[tokio::test]
async fn oversize_responses_are_too_large() {
    let big = format!(r#"{{"items":[],"pad":"{}"}}"#, "x".repeat(200_000));
    let url = fake(Arc::new(move |m, p, _| {
        base(m, p).unwrap_or_else(|| (200, big.clone()))
    }))
    .await;
    let r = PocketBaseRemote::builder(&url)
        .user("users", "a@t.io", "pw")
        .max_response_bytes(100_000)
        .connect()
        .await
        .unwrap();
    let e = r
        .pull(Watermark(0), 100, PullMode::Incremental)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::TooLarge(_)), "{e:?}");
}

#[tokio::test]
async fn server_errors_and_unreachable_servers_are_transient() {
    let url = fake(Arc::new(|m, p, _| {
        base(m, p).unwrap_or((503, r#"{"message":"busy","status":503,"data":{}}"#.into()))
    }))
    .await;
    let r = connect(&url).await;
    assert!(r
        .pull(Watermark(0), 10, PullMode::Incremental)
        .await
        .unwrap_err()
        .is_transient());
    assert!(r.push(vec![change()]).await.unwrap_err().is_transient());

    // A batch whose failing sub-request is a 5xx is transient as a whole.
    let url = fake(Arc::new(|m, p, _| {
        base(m, p).unwrap_or((400, json!({"status":400,"message":"Batch transaction failed.","data":{"requests":{"0":{"code":"batch_request_failed","response":{"status":500,"message":"boom","data":{}}}}}}).to_string()))
    }))
    .await;
    let r = connect(&url).await;
    assert!(r.push(vec![change()]).await.unwrap_err().is_transient());

    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = PocketBaseRemote::builder(format!("http://127.0.0.1:{port}"))
        .user("users", "a@t.io", "pw")
        .connect()
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // The transport's own error is kept as the source, for the app to inspect.
    let RemoteError::Transient(cause) = &e else {
        panic!("expected a transient error, got {e:?}")
    };
    let source = std::error::Error::source(cause).expect("the transport's error is kept");
    assert!(
        source.downcast_ref::<reqwest::Error>().is_some(),
        "{source:?}"
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "the chain starts at the error"
    );
}

#[tokio::test]
async fn a_server_without_the_extension_is_a_permanent_error() {
    let url = fake(Arc::new(|m, p, _| match (m, p) {
        ("POST", _) => (200, json!({"token": "x.y.z"}).to_string()),
        _ => (
            404,
            r#"{"message":"not found","status":404,"data":{}}"#.into(),
        ),
    }))
    .await;
    let e = PocketBaseRemote::builder(&url)
        .superuser("a@t.io", "pw")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Permanent(_)), "{e:?}");
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_is_bisected() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let url = fake(Arc::new(move |m, p, body| {
        base(m, p).unwrap_or_else(|| {
            seen.fetch_add(1, Ordering::SeqCst);
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let reqs = v["requests"].as_array().cloned().unwrap_or_default();
            if reqs.len() > 2 {
                // Refused without naming a sub-request (e.g. a body limit).
                return (400, json!({"status":400,"message":"too big","data":{}}).to_string());
            }
            let replies: Vec<_> = reqs
                .iter()
                .map(|r| json!({"status":200,"body":{"id": r["body"]["id"], "tm_seq": 5, "tm_push": ""}}))
                .collect();
            (200, serde_json::Value::Array(replies).to_string())
        })
    }))
    .await;
    let r = connect(&url).await;
    let out = r.push((0..7).map(|_| change()).collect()).await.unwrap();
    assert_eq!(out.len(), 7);
    assert!(
        out.iter()
            .all(|o| matches!(o, sync_traits::PushOutcome::Applied { .. })),
        "{out:?}"
    );
    // 7 -> 3+4 -> (1+2) + (2+2): 1 + 2 + 4 batch calls.
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

/// New records and deletes answered with their own tag (`tm_push`, `?tm=`) get their
/// seqs from one receipt; a receipt that leaves one out is malformed (never a guessed
/// version), and a server without the receipt route is a permanent error.
#[tokio::test]
async fn receipts_give_new_records_their_seqs_or_a_typed_error() {
    use std::sync::Mutex;
    // What the receipt answers: every asked change at 40 + its position, minus `drop`.
    let drop: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
    let missing_route = Arc::new(Mutex::new(false));
    let (d, m) = (drop.clone(), missing_route.clone());
    let url = fake(Arc::new(move |meth, p, body| {
        base(meth, p).unwrap_or_else(|| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            match p {
                "/api/batch" => {
                    let replies: Vec<_> = v["requests"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|r| {
                            // Upserts echo their tm_push, deletes their ?tm=.
                            let url = r["url"].as_str().unwrap_or("");
                            let (id, tm) = match url.split_once("/records/") {
                                Some((_, rest)) => {
                                    let (id, tm) = rest.split_once("?tm=").unwrap_or((rest, ""));
                                    (json!(id), json!(tm))
                                }
                                None => (r["body"]["id"].clone(), r["body"]["tm_push"].clone()),
                            };
                            json!({"status": 200, "body": {"id": id, "tm_seq": 0, "tm_push": tm}})
                        })
                        .collect();
                    (200, serde_json::Value::Array(replies).to_string())
                }
                "/api/tidemark/receipt" if *m.lock().unwrap() => (
                    404,
                    r#"{"message":"not found","status":404,"data":{}}"#.into(),
                ),
                "/api/tidemark/receipt" => {
                    let mut got = serde_json::Map::new();
                    for (k, a) in v["songs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        if Some(k) != *d.lock().unwrap() {
                            got.insert(a[0].as_str().unwrap_or("").into(), json!(40 + k));
                        }
                    }
                    (200, json!({ "songs": got }).to_string())
                }
                _ => (
                    404,
                    r#"{"message":"not found","status":404,"data":{}}"#.into(),
                ),
            }
        })
    }))
    .await;
    let r = connect(&url).await;
    let delete = PushChange {
        base: Some(Version(7)),
        op: Op::Delete,
        ..change()
    };
    let out = r.push(vec![change(), delete, change()]).await.unwrap();
    let versions: Vec<u64> = out
        .iter()
        .map(|o| match o {
            sync_traits::PushOutcome::Applied { version } => version.0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, vec![40, 41, 42]);

    *drop.lock().unwrap() = Some(1);
    let e = r
        .push((0..3).map(|_| change()).collect())
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Malformed(_)), "{e:?}");

    *missing_route.lock().unwrap() = true;
    let e = r.push(vec![change()]).await.unwrap_err();
    assert!(matches!(e, RemoteError::Permanent(_)), "{e:?}");
}

/// A change whose request is refused as a whole (its connection reset under a large
/// body, or 400 for the whole batch) is rejected once it is alone in its batch; the
/// others are applied.
#[tokio::test]
async fn a_change_refused_as_a_whole_request_is_rejected() {
    let url = fake(Arc::new(|m, p, body| {
        base(m, p).unwrap_or_else(|| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let reqs = v["requests"].as_array().cloned().unwrap_or_default();
            if reqs.iter().any(|r| r["body"]["title"] == "unreadable") {
                return (
                    400,
                    json!({"status":400,"message":"Failed to read the submitted batch data.","data":{}})
                        .to_string(),
                );
            }
            let replies: Vec<_> = reqs
                .iter()
                .map(|r| json!({"status":200,"body":{"id": r["body"]["id"], "tm_seq": 5, "tm_push": ""}}))
                .collect();
            (200, serde_json::Value::Array(replies).to_string())
        })
    }))
    .await;
    let r = connect(&url).await;
    let with = |title: String| PushChange {
        op: Op::Upsert([("title".to_owned(), json!(title))].into_iter().collect()),
        ..change()
    };
    let out = r
        .push(vec![
            with("small".into()),
            with("x".repeat(2 << 20)),
            with("small".into()),
            with("unreadable".into()),
            with("small".into()),
        ])
        .await
        .unwrap();
    let kinds: Vec<&str> = out
        .iter()
        .map(|o| match o {
            sync_traits::PushOutcome::Applied { .. } => "applied",
            sync_traits::PushOutcome::Rejected(_) => "rejected",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["applied", "rejected", "applied", "rejected", "applied"]
    );
}
