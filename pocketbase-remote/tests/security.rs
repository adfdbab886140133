//! One user against another (and a guest) on a real PocketBase 0.40.6 running the
//! tidemark extension: every test here tries an attack that worked against earlier
//! versions of the hooks and checks that it fails now.

mod common;

use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use serde_json::{json, Value};
use sync_traits::{new_id, ChangeId, PullMode, PushOutcome, RecordId, RemoteStore, Watermark};

struct Two {
    srv: TestServer,
    a: RecordId,
    ra: PocketBaseRemote,
    b: RecordId,
    rb: PocketBaseRemote,
}

async fn two() -> Two {
    let srv = TestServer::start();
    let a = srv.create_user("a@t.io").await;
    let b = srv.create_user("b@t.io").await;
    let (ra, rb) = (srv.user("a@t.io").await, srv.user("b@t.io").await);
    Two { srv, a, ra, b, rb }
}

/// A raw request with `token` (None: a guest); returns status and JSON body.
async fn raw(
    srv: &TestServer,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", srv.url()));
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `/api/batch` with these sub-requests.
async fn batch(srv: &TestServer, token: Option<&str>, requests: Value) -> (u16, Value) {
    raw(
        srv,
        token,
        reqwest::Method::POST,
        "/api/batch",
        Some(json!({ "requests": requests })),
    )
    .await
}

/// The inner answer of a failed batch's sub-request `i`.
fn failed(v: &Value, i: usize) -> &Value {
    &v["data"]["requests"][i.to_string()]["response"]
}

fn everything(pages: Vec<sync_traits::Page>) -> Vec<sync_traits::RemoteChange> {
    pages.into_iter().flat_map(|p| p.changes).collect()
}

fn rejected(o: &PushOutcome) -> &sync_traits::Rejection {
    match o {
        PushOutcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Item 1: the update rule checked only the stored owner, so B could PATCH its own
/// record to `owner: A` and plant it in A's account (A's next pull received it).
#[tokio::test]
async fn a_user_cannot_move_a_record_into_another_users_account() {
    let t = two().await;
    let mut cb = Client::new();
    let id = new_id();
    let v = applied(
        &t.rb
            .push(vec![cb.upsert("songs", &id, None, song("mine", 1, &t.b))])
            .await
            .unwrap()[0],
    );
    let token = t.rb.token().await.unwrap();
    // A plain REST update...
    let (status, body) = raw(
        &t.srv,
        Some(&token),
        reqwest::Method::PATCH,
        &format!("/api/collections/songs/records/{id}"),
        Some(json!({"title": "planted", "owner": t.a.as_str()})),
    )
    .await;
    assert!(status >= 400, "{status} {body}");
    // ... and a tidemark push.
    let out =
        t.rb.push(vec![cb.upsert(
            "songs",
            &id,
            Some(v),
            song("planted", 2, &t.a),
        )])
        .await
        .unwrap();
    rejected(&out[0]);
    assert!(everything(pull_all(&t.ra, 0, 100).await).is_empty());
    let st = t.rb.fetch("songs", &id).await.unwrap().unwrap();
    assert_eq!(st.fields.unwrap()["owner"], json!(t.b.as_str()));
    // Naming oneself as the owner, or leaving the owner out, still works.
    let (status, body) = raw(
        &t.srv,
        Some(&token),
        reqwest::Method::PATCH,
        &format!("/api/collections/songs/records/{id}"),
        Some(json!({"title": "renamed", "owner": t.b.as_str()})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v2 = t.rb.fetch("songs", &id).await.unwrap().unwrap().version;
    let out =
        t.rb.push(vec![cb.upsert(
            "songs",
            &id,
            Some(v2.0),
            fields(json!({"title": "again"})),
        )])
        .await
        .unwrap();
    applied(&out[0]);
}

/// Item 1: a client id belongs to the first user that pushes with it; another user's
/// pushes with it are rejected (all of them, with a clear message), their other
/// changes go through; a superuser may push with any client id; a guest none.
#[tokio::test]
async fn a_client_id_is_bound_to_the_first_user_that_pushes_with_it() {
    let t = two().await;
    let mut x = Client::new();
    applied(
        &t.ra
            .push(vec![x.upsert("songs", &new_id(), None, song("a", 1, &t.a))])
            .await
            .unwrap()[0],
    );
    // B claims x, twice in one push, next to a change of its own client.
    let mut stolen = Client {
        id: x.id.clone(),
        n: 100,
    };
    let mut cb = Client::new();
    let out =
        t.rb.push(vec![
            stolen.upsert("songs", &new_id(), None, song("b1", 1, &t.b)),
            cb.upsert("songs", &new_id(), None, song("b2", 2, &t.b)),
            stolen.upsert("songs", &new_id(), None, song("b3", 3, &t.b)),
        ])
        .await
        .unwrap();
    for i in [0, 2] {
        let r = rejected(&out[i]);
        assert!(r.message.contains("belongs to another user"), "{r:?}");
    }
    applied(&out[1]);
    // Nor through PocketBase's ":autogenerate" modifier, which sets tm_push too.
    let token_b = t.rb.token().await.unwrap();
    let (status, v) = batch(
        &t.srv,
        Some(&token_b),
        json!([{"method": "PUT", "url": "/api/collections/songs/records",
                "body": {"id": new_id().as_str(), "title": "b4", "owner": t.b.as_str(),
                         "tm_push:autogenerate": format!("0:{}.200", x.id)}}]),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        failed(&v, 0)["data"]["tm_push"]["code"],
        "tm_client_taken",
        "{v}"
    );
    let mine: Vec<_> = everything(pull_all(&t.rb, 0, 100).await);
    assert_eq!(mine.len(), 1, "only B's own client wrote: {mine:?}");
    // A superuser may write with anyone's client id.
    let admin = t.srv.superuser().await;
    applied(
        &admin
            .push(vec![x.upsert(
                "songs",
                &new_id(),
                None,
                song("su", 1, &t.a),
            )])
            .await
            .unwrap()[0],
    );
    // A still may.
    applied(
        &t.ra
            .push(vec![x.upsert(
                "songs",
                &new_id(),
                None,
                song("a2", 2, &t.a),
            )])
            .await
            .unwrap()[0],
    );
    // A guest may not push at all.
    let (status, v) = batch(
        &t.srv,
        None,
        json!([{"method": "PUT", "url": "/api/collections/songs/records",
                "body": {"id": new_id().as_str(), "title": "g", "tm_push": format!("0:{}.1", new_id())}}]),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(failed(&v, 0)["status"], 403, "{v}");
}

/// Item 2: a create that writes nothing (answered "tombstone" or "dup") used to
/// return 200 without calling `e.next()`; PocketBase still ran its after-success
/// hooks and A's realtime subscription got a `create` event for A's live record
/// carrying B's content. Such writes are failed sub-requests now: no event fires.
#[tokio::test]
async fn a_write_that_writes_nothing_sends_no_realtime_event() {
    let t = two().await;
    let mut ca = Client::new();
    let id = new_id();
    let v = applied(
        &t.ra
            .push(vec![ca.upsert("songs", &id, None, song("real", 1, &t.a))])
            .await
            .unwrap()[0],
    );
    // A listens to songs/*.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/api/realtime", t.srv.url()))
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "PB_CONNECT");
    let client_id: Value = serde_json::from_str(&first.data).unwrap();
    let token_a = t.ra.token().await.unwrap();
    let (status, body) = raw(
        &t.srv,
        Some(&token_a),
        reqwest::Method::POST,
        "/api/realtime",
        Some(json!({"clientId": client_id["clientId"], "subscriptions": ["songs/*"]})),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    // B creates a record with the id of A's live record, with a push tag whose base
    // and change id make the hooks answer without writing.
    let token_b = t.rb.token().await.unwrap();
    let cb = new_id();
    for (method, tag) in [
        ("POST", format!("{}:{cb}.1", v + 7)),
        ("POST", format!("0:{cb}.2")),
    ] {
        let (status, body) = batch(
            &t.srv,
            Some(&token_b),
            json!([{"method": method, "url": "/api/collections/songs/records",
                    "body": {"id": id.as_str(), "title": "forged", "owner": t.b.as_str(), "tm_push": tag}}]),
        )
        .await;
        assert_ne!(status, 200, "{body}");
    }
    // A's own stale and retried pushes write nothing either.
    let (status, body) = batch(
        &t.srv,
        Some(&token_a),
        json!([{"method": "PUT", "url": "/api/collections/songs/records",
                "body": {"id": id.as_str(), "title": "stale", "tm_push": format!("{}:{}.9", v + 1, ca.id)}}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(failed(&body, 0)["data"]["tm_push"]["code"], "tm_conflict");
    let (status, body) = batch(
        &t.srv,
        Some(&token_a),
        json!([{"method": "PUT", "url": "/api/collections/songs/records",
                "body": {"id": id.as_str(), "title": "retry", "tm_push": format!("0:{}.1", ca.id)}}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(failed(&body, 0)["data"]["tm_push"]["code"], "tm_dup");

    // Then a real write: its event must be the first one A receives.
    let sentinel = new_id();
    applied(
        &t.ra
            .push(vec![ca.upsert(
                "songs",
                &sentinel,
                None,
                song("s", 2, &t.a),
            )])
            .await
            .unwrap()[0],
    );
    let ev = tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("hang guard: no realtime event at all")
        .unwrap()
        .unwrap();
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["record"]["id"], json!(sentinel.as_str()), "{data}");
    assert_eq!(data["action"], "create");
    let st = t.ra.fetch("songs", &id).await.unwrap().unwrap();
    assert_eq!(st.fields.unwrap()["title"], "real");
    assert_eq!(st.version.0, v);
}

/// Item 3: tombstones belong to their owner. B may not build on A's tombstone —
/// not with a push create (any base), not with A's second device's client id, not
/// with a plain create — so A's second device's offline re-create lands, as a new
/// write, and is not answered "dup" with B's (or anybody's) memory.
#[tokio::test]
async fn nobody_builds_on_another_owners_tombstone() {
    let t = two().await;
    let (mut a1, mut a2) = (Client::new(), Client::new());
    // a2 pushed before (its client id is A's), then went offline.
    applied(
        &t.ra
            .push(vec![a2.upsert(
                "songs",
                &new_id(),
                None,
                song("a2", 0, &t.a),
            )])
            .await
            .unwrap()[0],
    );
    let id = new_id();
    let v = applied(
        &t.ra
            .push(vec![a1.upsert("songs", &id, None, song("one", 1, &t.a))])
            .await
            .unwrap()[0],
    );
    let d = applied(&t.ra.push(vec![a1.delete("songs", &id, v)]).await.unwrap()[0]);
    let head = t.ra.head().await.unwrap().head.0;

    let mut cb = Client::new();
    let mut as_a2 = Client {
        id: a2.id.clone(),
        n: a2.n + 1,
    };
    let out =
        t.rb.push(vec![cb.upsert("songs", &id, None, song("b", 1, &t.b))])
            .await
            .unwrap();
    assert!(rejected(&out[0]).fields.contains_key("id"), "{out:?}");
    let out =
        t.rb.push(vec![cb.upsert("songs", &id, Some(d), song("b", 1, &t.b))])
            .await
            .unwrap();
    assert!(rejected(&out[0]).fields.contains_key("id"), "{out:?}");
    let out =
        t.rb.push(vec![as_a2.upsert(
            "songs",
            &id,
            Some(d),
            song("b", 1, &t.b),
        )])
        .await
        .unwrap();
    rejected(&out[0]);
    let token_b = t.rb.token().await.unwrap();
    let (status, body) = raw(
        &t.srv,
        Some(&token_b),
        reqwest::Method::POST,
        "/api/collections/songs/records",
        Some(json!({"id": id.as_str(), "title": "b", "owner": t.b.as_str()})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["data"]["id"]["code"], "tm_taken", "{body}");
    assert_eq!(t.ra.head().await.unwrap().head.0, head, "B wrote nothing");

    // A's second device re-creates the record it had (offline) on the tombstone.
    let redo = a2.upsert("songs", &id, Some(d), song("back", 3, &t.a));
    let v2 = applied(&t.ra.push(vec![redo.clone()]).await.unwrap()[0]);
    assert_eq!(v2, head + 1, "a new write, not an earlier one");
    let st = t.ra.fetch("songs", &id).await.unwrap().unwrap();
    assert_eq!(st.fields.unwrap()["title"], "back");
    assert_eq!(st.change_id, Some(redo.change_id.clone()));
    // A plain create by A itself on its own tombstone is fine too.
    let id2 = new_id();
    let v3 = applied(
        &t.ra
            .push(vec![a1.upsert("songs", &id2, None, song("x", 1, &t.a))])
            .await
            .unwrap()[0],
    );
    applied(&t.ra.push(vec![a1.delete("songs", &id2, v3)]).await.unwrap()[0]);
    let token_a = t.ra.token().await.unwrap();
    let (status, body) = raw(
        &t.srv,
        Some(&token_a),
        reqwest::Method::POST,
        "/api/collections/songs/records",
        Some(json!({"id": id2.as_str(), "title": "again", "owner": t.a.as_str()})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Item 4: the receipt route answered for any record id and client id (the seq of
/// A's record or tombstone, whether a client ever wrote it), a refused create showed
/// the seq of A's delete, and owner-less tombstones were listed with the change id
/// of whoever deleted them. Every answer now is about the caller's own changes only.
#[tokio::test]
async fn answers_reveal_nothing_about_other_users() {
    let t = two().await;
    let mut ca = Client::new();
    let (r1, r2) = (new_id(), new_id());
    let c1 = ca.upsert("songs", &r1, None, song("one", 1, &t.a));
    let c2 = ca.upsert("songs", &r2, None, song("two", 2, &t.a));
    let (cid1, cid2) = (c1.change_id.to_string(), c2.change_id.to_string());
    let out = t.ra.push(vec![c1, c2]).await.unwrap();
    let v2 = applied(&out[1]);
    let del = ca.delete("songs", &r2, v2);
    let cid3 = del.change_id.to_string();
    let d = applied(&t.ra.push(vec![del]).await.unwrap()[0]);

    let token_b = t.rb.token().await.unwrap();
    let ask = json!({"songs": [[r1.as_str(), cid1], [r2.as_str(), cid2], [r2.as_str(), cid3]]});
    let (status, got) = raw(
        &t.srv,
        Some(&token_b),
        reqwest::Method::POST,
        "/api/tidemark/receipt",
        Some(ask.clone()),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, json!({"songs": {}}));
    // B's own client id on A's records: nothing either.
    let mut cb = Client::new();
    applied(
        &t.rb
            .push(vec![cb.upsert(
                "songs",
                &new_id(),
                None,
                song("b", 1, &t.b),
            )])
            .await
            .unwrap()[0],
    );
    let (status, got) = raw(
        &t.srv,
        Some(&token_b),
        reqwest::Method::POST,
        "/api/tidemark/receipt",
        Some(json!({"songs": [[r1.as_str(), format!("{}.1", cb.id)], [r2.as_str(), format!("{}.1", cb.id)]]})),
    )
    .await;
    assert_eq!((status, got), (200, json!({"songs": {}})));
    // A guest is not answered at all.
    let (status, _) = raw(
        &t.srv,
        None,
        reqwest::Method::POST,
        "/api/tidemark/receipt",
        Some(ask.clone()),
    )
    .await;
    assert_eq!(status, 401);
    // A is answered about its own changes.
    let token_a = t.ra.token().await.unwrap();
    let (status, got) = raw(
        &t.srv,
        Some(&token_a),
        reqwest::Method::POST,
        "/api/tidemark/receipt",
        Some(ask),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["songs"][r2.as_str()], json!(d), "{got}");

    // A create refused on A's tombstone shows B nothing of A's delete.
    let (status, body) = batch(
        &t.srv,
        Some(&token_b),
        json!([{"method": "PUT", "url": "/api/collections/songs/records",
                "body": {"id": r2.as_str(), "title": "b", "owner": t.b.as_str(), "tm_push": format!("0:{}.2", cb.id)}}]),
    )
    .await;
    assert_eq!(status, 400);
    let resp = failed(&body, 0);
    assert_eq!(resp["status"], 403, "{body}");
    assert_eq!(resp["data"].as_object().map(|m| m.len()), Some(1), "{body}");
    assert!(!body.to_string().contains("tm_seq"), "{body}");

    // An owner-less tombstone (a superuser's create, then delete) is listed to every
    // user: ids only, no change id.
    let admin = t.srv.superuser().await;
    let mut cs = Client::new();
    let r3 = new_id();
    let vs = applied(
        &admin
            .push(vec![cs.upsert(
                "songs",
                &r3,
                None,
                fields(json!({"title": "shared"})),
            )])
            .await
            .unwrap()[0],
    );
    let del = cs.delete("songs", &r3, vs);
    let ds = applied(&admin.push(vec![del.clone()]).await.unwrap()[0]);
    let seen =
        t.rb.pull(Watermark(ds - 1), 100, PullMode::Incremental)
            .await
            .unwrap();
    let tomb = seen
        .changes
        .iter()
        .find(|c| c.id == r3)
        .expect("the owner-less tombstone is listed");
    assert_eq!(tomb.state.change_id, None, "{tomb:?}");
    let (_, list) = raw(
        &t.srv,
        Some(&token_b),
        reqwest::Method::GET,
        &format!("/api/collections/tm_tombstones/records?filter=(rid='{r3}')"),
        None,
    )
    .await;
    assert_eq!(list["items"][0]["tm_cid"], "", "{list}");
    assert!(!list.to_string().contains(cs.id.as_str()), "{list}");
    // The superuser's retried delete is still recognised (from the hidden memory).
    assert_eq!(applied(&admin.push(vec![del]).await.unwrap()[0]), ds);
}

/// Item 5: every client-supplied string is bounded and validated. `?tm=` on a
/// delete skipped every limit (a 200,000-character change id was stored in a
/// tombstone); malformed tags, receipts and compact bodies are refused with a 400.
#[tokio::test]
async fn client_strings_are_bounded_and_validated() {
    let t = two().await;
    let mut ca = Client::new();
    let id = new_id();
    let v = applied(
        &t.ra
            .push(vec![ca.upsert("songs", &id, None, song("one", 1, &t.a))])
            .await
            .unwrap()[0],
    );
    let token = t.ra.token().await.unwrap();
    let head = t.ra.head().await.unwrap().head.0;
    // (reqwest refuses URLs over 64 KiB; 60,000 characters is far over any limit.)
    let huge = format!("{v}:{}.{}", ca.id, "9".repeat(60_000));
    let (status, body) = raw(
        &t.srv,
        Some(&token),
        reqwest::Method::DELETE,
        &format!("/api/collections/songs/records/{id}?tm={huge}"),
        None,
    )
    .await;
    let text = body.to_string();
    assert_eq!(status, 400, "{}", &text[..text.len().min(500)]);
    assert!(text.len() < 2000, "not echoed");
    // Malformed tags, in upserts and deletes.
    let long_client = format!("{}{}", ca.id, "a".repeat(5000));
    let bad_tags = [
        format!("0:{}", ca.id),
        format!("0:{}.", ca.id),
        format!("00:{}.1", ca.id),
        format!("0:{}.01", ca.id),
        format!("0:{}.18446744073709551616", ca.id),
        format!("0:{}.-1", ca.id),
        format!("0:{}.1", &ca.id.as_str()[..14]),
        format!("0:{long_client}.1"),
        format!("0:{}.1 ", ca.id),
        format!("x:{}.1", ca.id),
        "p".to_owned(),
    ];
    for tag in &bad_tags {
        let (status, body) = batch(
            &t.srv,
            Some(&token),
            json!([{"method": "PUT", "url": "/api/collections/songs/records",
                    "body": {"id": new_id().as_str(), "title": "x", "owner": t.a.as_str(), "tm_push": tag}}]),
        )
        .await;
        let short = &tag[..tag.len().min(80)];
        assert_eq!(status, 400, "{short}: {body}");
        assert_eq!(failed(&body, 0)["status"], 400, "{short}: {body}");
        let (status, body) = batch(
            &t.srv,
            Some(&token),
            json!([{"method": "DELETE",
                    "url": format!("/api/collections/songs/records/{id}?tm={}", urlencode(tag))}]),
        )
        .await;
        assert_eq!(status, 400, "{short}: {body}");
    }
    // Two tm parameters are ambiguous.
    let ok = format!("{v}:{}.7", ca.id);
    let (status, body) = batch(
        &t.srv,
        Some(&token),
        json!([{"method": "DELETE",
                "url": format!("/api/collections/songs/records/{id}?tm={ok}&tm={ok}")}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // A tag in the body and another in the URL are ambiguous too (the delete hook
    // reads the URL's).
    let other = format!("{v}:{}.7", new_id());
    let (status, body) = batch(
        &t.srv,
        Some(&token),
        json!([{"method": "DELETE", "body": {"tm_push": ok},
                "url": format!("/api/collections/songs/records/{id}?tm={other}")}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(t.ra.head().await.unwrap().head.0, head, "nothing written");
    assert!(t
        .ra
        .fetch("songs", &id)
        .await
        .unwrap()
        .unwrap()
        .fields
        .is_some());

    // Receipts: only {"<synced collection>": [[id, change id], ...]}, bounded.
    let cid = format!("{}.1", ca.id);
    let too_many: Vec<Value> = (0..1001).map(|_| json!([id.as_str(), cid])).collect();
    for body in [
        json!([1, 2]),
        json!({"songs": "x"}),
        json!({"songs": [[id.as_str()]]}),
        json!({"songs": [[id.as_str(), 5]]}),
        json!({"songs": [[id.as_str(), "nope"]]}),
        json!({"songs": [["short", cid]]}),
        json!({"users": [[id.as_str(), cid]]}),
        json!({"songs": too_many}),
    ] {
        let (status, got) = raw(
            &t.srv,
            Some(&token),
            reqwest::Method::POST,
            "/api/tidemark/receipt",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {got}");
    }
    // Compact: a bounded integer.
    let admin = t.srv.superuser().await.token().await.unwrap();
    for n in [json!(-1), json!("10"), json!(1.5), json!(1e300)] {
        let (status, got) = raw(
            &t.srv,
            Some(&admin),
            reqwest::Method::POST,
            "/api/tidemark/compact",
            Some(json!({"olderThanSeconds": n})),
        )
        .await;
        assert_eq!(status, 400, "{n}: {got}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Item 6: "already applied" only for the exact change id the server remembers for
/// that client on that record. A lower counter (a store restored from a backup) is a
/// new change: a conflict on a stale base, a new write on the current one — never an
/// acknowledgement of a write that did not happen.
#[tokio::test]
async fn a_lower_counter_is_a_new_change() {
    let t = two().await;
    let client = new_id();
    let change = |n: u64, base: Option<u64>, title: &str| sync_traits::PushChange {
        change_id: ChangeId {
            client: client.clone(),
            n,
        },
        collection: "songs".into(),
        id: id_of(),
        base: base.map(sync_traits::Version),
        op: sync_traits::Op::Upsert(song(title, n as i64, &t.a)),
    };
    let v5 = applied(&t.ra.push(vec![change(5, None, "five")]).await.unwrap()[0]);
    // .3, made on a base the server moved past: not applied, a conflict.
    match &t.ra.push(vec![change(3, None, "three")]).await.unwrap()[0] {
        PushOutcome::Conflict { current } => {
            assert_eq!(current.version.0, v5);
            assert_eq!(current.fields.as_ref().unwrap()["title"], "five");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let st = t.ra.fetch("songs", &id_of()).await.unwrap().unwrap();
    assert_eq!(
        (st.version.0, st.fields.unwrap()["title"].clone()),
        (v5, json!("five"))
    );
    // .3 on the current version: a new write at a new seq.
    let v3 = applied(&t.ra.push(vec![change(3, Some(v5), "three")]).await.unwrap()[0]);
    assert!(v3 > v5);
    let st = t.ra.fetch("songs", &id_of()).await.unwrap().unwrap();
    assert_eq!(
        (st.version.0, st.fields.unwrap()["title"].clone()),
        (v3, json!("three"))
    );
    // Its retry is recognised; .5 is no longer the change remembered: a conflict.
    assert_eq!(
        applied(&t.ra.push(vec![change(3, Some(v5), "three")]).await.unwrap()[0]),
        v3
    );
    assert!(matches!(
        t.ra.push(vec![change(5, None, "five")]).await.unwrap()[0],
        PushOutcome::Conflict { .. }
    ));
    assert_eq!(
        t.ra.head().await.unwrap().head.0,
        v3,
        "nothing else written"
    );
}

fn id_of() -> RecordId {
    RecordId::parse("lowercounter001").unwrap()
}

/// Item 7: a record PocketBase refuses as a whole request (over the batch body
/// limit: 413, or a reset connection) used to fail the push with a permanent
/// error; now it is a rejection of that change and the others are applied.
#[tokio::test]
async fn a_record_refused_as_a_whole_request_is_rejected_and_the_rest_applied() {
    let t = two().await;
    let admin = t.srv.superuser().await.token().await.unwrap();
    let (status, body) = raw(
        &t.srv,
        Some(&admin),
        reqwest::Method::PATCH,
        "/api/settings",
        Some(json!({"batch": {"enabled": true, "maxRequests": 1000, "timeout": 30, "maxBodySize": 1 << 20}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut ca = Client::new();
    let big = "x".repeat(3 << 20);
    let out =
        t.ra.push(vec![
            ca.upsert("songs", &new_id(), None, song("small", 1, &t.a)),
            ca.upsert("songs", &new_id(), None, song(&big, 2, &t.a)),
            ca.upsert("songs", &new_id(), None, song("small", 3, &t.a)),
            ca.upsert("songs", &new_id(), None, song("small", 4, &t.a)),
        ])
        .await
        .unwrap();
    applied(&out[0]);
    let r = rejected(&out[1]);
    assert!(r.message.contains("as a whole"), "{r:?}");
    applied(&out[2]);
    applied(&out[3]);
    assert_eq!(everything(pull_all(&t.ra, 0, 100).await).len(), 3);
}

/// The operator bounds how many requests one user's batch may carry (one batch holds
/// PocketBase's single writer; other users' writes wait): the head route tells users
/// the bound, the client chunks to it, and a larger batch from anyone else is
/// refused whole. Superusers keep the server's own limit.
#[tokio::test]
async fn a_users_batch_is_bounded_by_the_operator() {
    let srv = TestServer::start_with_env(&[("TIDEMARK_USER_BATCH_MAX", "5")]);
    let a = srv.create_user("a@t.io").await;
    let ra = srv.user("a@t.io").await;
    assert_eq!(
        ra.head().await.unwrap().batch_max,
        5,
        "users are told the bound"
    );
    assert_eq!(ra.max_push_batch(), 5);
    let admin = srv.superuser().await;
    assert_eq!(
        admin.head().await.unwrap().batch_max,
        1000,
        "superusers are not bound"
    );

    // Six creates in one raw batch: refused whole, as PocketBase refuses a batch over
    // its own limit; nothing is written.
    let token = ra.token().await.unwrap();
    let reqs: Vec<Value> = (0..6)
        .map(|i| {
            json!({"method": "POST", "url": "/api/collections/songs/records",
                   "body": song("x", i, &a)})
        })
        .collect();
    let (status, body) = batch(&srv, Some(&token), json!(reqs)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["data"]["requests"]["code"], "validation_length_too_long",
        "{body}"
    );
    assert_eq!(body["data"]["requests"]["params"]["max"], 5);
    assert!(
        everything(pull_all(&ra, 0, 100).await).is_empty(),
        "nothing written"
    );

    // The client's push of 12 changes goes through in chunks of 5.
    let mut c = Client::new();
    let changes: Vec<_> = (0..12)
        .map(|i| c.upsert("songs", &new_id(), None, song("s", i, &a)))
        .collect();
    let outcomes = ra.push(changes).await.unwrap();
    assert_eq!(outcomes.len(), 12);
    for o in &outcomes {
        applied(o);
    }
}
