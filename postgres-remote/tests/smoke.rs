use postgres_remote::harness::TestServer;
use sync_traits::{new_id, ChangeId, Op, PullMode, PushChange, RemoteStore, Watermark};

#[tokio::test]
async fn smoke() {
    let s = TestServer::start();
    let admin = s.admin().await;
    assert_eq!(admin.install().await.unwrap(), 1);
    s.sql()
        .await
        .batch_execute("CREATE TABLE songs (id text PRIMARY KEY, title text, owner text)")
        .await
        .unwrap();
    admin.enable_sync("songs", Some("owner")).await.unwrap();
    let c = new_id();
    let id = new_id();
    let out = admin
        .push(vec![PushChange {
            change_id: ChangeId {
                client: c.clone(),
                n: 1,
            },
            collection: "songs".into(),
            id: id.clone(),
            base: None,
            op: Op::Upsert(
                serde_json::json!({"title":"a"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        }])
        .await
        .unwrap();
    println!("{out:?}");
    let p = admin
        .pull(Watermark(0), 10, PullMode::Resync)
        .await
        .unwrap();
    println!("{p:?}");
}
