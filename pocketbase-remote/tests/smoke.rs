mod common;

use common::*;
use pocketbase_remote::harness::TestServer;
use sync_traits::{PullMode, PushOutcome, RemoteStore, Watermark};

#[tokio::test]
async fn push_pull_round_trip() {
    let srv = TestServer::start();
    let uid = srv.create_user("a@t.io").await;
    let r = srv.user("a@t.io").await;
    let mut c = Client::new();
    let id = sync_traits::new_id();
    let out = r
        .push(vec![c.upsert("songs", &id, None, song("t", 1, &uid))])
        .await
        .unwrap();
    let v = applied(&out[0]);
    let p = r
        .pull(Watermark(0), 100, PullMode::Incremental)
        .await
        .unwrap();
    assert_eq!(p.changes.len(), 1, "{p:?}");
    assert_eq!(p.changes[0].state.version.0, v);
    assert_eq!(p.changes[0].state.fields.as_ref().unwrap()["order"], 1);
    // delete
    let out = r.push(vec![c.delete("songs", &id, v)]).await.unwrap();
    let d = applied(&out[0]);
    assert!(d > v);
    let p = r
        .pull(Watermark(v), 100, PullMode::Incremental)
        .await
        .unwrap();
    assert_eq!(p.changes.len(), 1, "{p:?}");
    assert!(p.changes[0].state.fields.is_none());
    // retried delete
    let again = r.push(vec![c.delete("songs", &id, v)]).await;
    eprintln!("{again:?}");
    let _ = PushOutcome::Applied {
        version: sync_traits::Version(0),
    };
}
