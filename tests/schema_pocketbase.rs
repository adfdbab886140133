//! The schema comes from the server (real PocketBase): a collection with every field
//! type imported from `examples/every_type.pb_schema.json`, its schema read by a
//! normal user through the extension, SQLite and sled stores opened from it, a
//! record of every type synced both ways, then a field and a collection added on the
//! server reaching both stores as a migration at their next open.

use pocketbase_remote::harness::TestServer;
use pocketbase_remote::PocketBaseRemote;
use serde_json::{json, Value};
use sync_traits::SyncStore;
use sync_traits::{
    new_id, Fields, LocalStore, PullMode, Record, RecordId, RemoteFieldKind, RemoteStore,
    StoreError, SyncEngine, Watermark,
};
use tidemark_backends::{FieldKind, Schema, SledStore, SqliteStore};

const EXPORT: &str = include_str!("../examples/every_type.pb_schema.json");

fn obj(v: Value) -> Fields {
    v.as_object().cloned().unwrap_or_default()
}

/// Superuser HTTP against the test server.
struct Admin {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    async fn new(srv: &TestServer) -> Self {
        let token = srv.superuser().await.token().await.unwrap();
        Self {
            url: srv.url().to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .header("Authorization", &self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn import(&self, collections: Value) {
        let (s, b) = self
            .send(
                self.http
                    .put(format!("{}/api/collections/import", self.url))
                    .json(&json!({"collections": collections, "deleteMissing": false})),
            )
            .await;
        assert_eq!(s, 204, "import: {b}");
    }

    async fn record(&self, collection: &str, id: &RecordId) -> Value {
        let (s, b) = self
            .send(self.http.get(format!(
                "{}/api/collections/{collection}/records/{id}",
                self.url
            )))
            .await;
        assert_eq!(s, 200, "get {collection}/{id}: {b}");
        b
    }

    async fn patch(&self, collection: &str, id: &RecordId, body: Value) {
        let (s, b) = self
            .send(
                self.http
                    .patch(format!(
                        "{}/api/collections/{collection}/records/{id}",
                        self.url
                    ))
                    .json(&body),
            )
            .await;
        assert_eq!(s, 200, "patch {collection}/{id}: {b}");
    }

    /// Uploads files into `collection/id` (multipart PATCH): `(field, file name, bytes)`.
    async fn upload(&self, collection: &str, id: &RecordId, files: &[(&str, &str, &[u8])]) {
        let boundary = "tidemarkboundary7c2f";
        let mut body = Vec::new();
        for (field, name, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                     filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let (s, b) = self
            .send(
                self.http
                    .patch(format!(
                        "{}/api/collections/{collection}/records/{id}",
                        self.url
                    ))
                    .header(
                        "Content-Type",
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body),
            )
            .await;
        assert_eq!(s, 200, "upload {collection}/{id}: {b}");
    }

    async fn add_field(&self, collection: &str, field: Value) {
        let (s, mut c) = self
            .send(
                self.http
                    .get(format!("{}/api/collections/{collection}", self.url)),
            )
            .await;
        assert_eq!(s, 200, "{c}");
        c["fields"].as_array_mut().unwrap().push(field);
        let (s, b) = self
            .send(
                self.http
                    .patch(format!("{}/api/collections/{collection}", self.url))
                    .json(&json!({"fields": c["fields"]})),
            )
            .await;
        assert_eq!(s, 200, "add field to {collection}: {b}");
    }
}

/// One collection as `r` sees it on the server, sorted by id.
async fn server_list(r: &PocketBaseRemote, collection: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut wm = Watermark(0);
    loop {
        let page = r.pull(wm, 1000, PullMode::Resync).await.unwrap();
        out.extend(
            page.changes
                .into_iter()
                .filter(|c| c.collection == collection)
                .filter_map(|c| c.state.fields.map(|f| Record::new(c.collection, c.id, f))),
        );
        wm = page.watermark;
        if !page.more {
            break;
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

async fn list<L: LocalStore>(s: &L, collection: &str) -> Vec<Record> {
    let mut v = s.list(collection).await.unwrap();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Both stores and the server hold the same records of `collection`.
async fn same_everywhere<A: LocalStore, B: LocalStore>(
    a: &A,
    b: &B,
    r: &PocketBaseRemote,
    collection: &str,
) -> Vec<Record> {
    let la = list(a, collection).await;
    assert_eq!(
        la,
        list(b, collection).await,
        "{collection}: SQLite and sled differ"
    );
    assert_eq!(
        la,
        server_list(r, collection).await,
        "{collection}: store and server differ"
    );
    la
}

async fn set<L: LocalStore>(s: &L, collection: &str, id: &RecordId, field: &str, v: Value) {
    let mut f = s.get(collection, id).await.unwrap().unwrap().fields;
    f.insert(field.into(), v);
    s.put(Record::new(collection, id.clone(), f)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_from_the_servers_schema_syncs_every_field_type_and_migrates() {
    let srv = TestServer::start();
    let admin = Admin::new(&srv).await;
    let export: Value = serde_json::from_str(EXPORT).unwrap();
    admin.import(export).await;
    let su = srv.superuser().await;
    su.enable_sync("parts", None).await.unwrap();
    su.enable_sync("kitchen", Some("owner")).await.unwrap();
    su.enable_sync("ledger", None).await.unwrap();
    let uid = srv.create_user("cook@t.io").await;
    let user = srv.user("cook@t.io").await;

    // What the user is shown: synced collections it may list, no password, hidden,
    // id or tm_ fields; the superuser also sees the superuser-only collection.
    let remote = user.schema().await.unwrap();
    let names: Vec<&str> = remote.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["friends", "kitchen", "parts", "songs"]);
    let all = su.schema().await.unwrap();
    assert!(all.get("ledger").is_some(), "{all:?}");
    let guest = reqwest::get(format!("{}/api/tidemark/schema", srv.url()))
        .await
        .unwrap();
    assert_eq!(
        guest.status().as_u16(),
        401,
        "the schema is for signed-in callers"
    );
    let k = remote.get("kitchen").unwrap();
    let fields: Vec<&str> = k.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        fields,
        [
            "title",
            "body",
            "contact",
            "homepage",
            "servings",
            "rating",
            "vegan",
            "cooked_on",
            "created",
            "updated",
            "course",
            "tags",
            "owner",
            "main_part",
            "parts",
            "extra",
            "photo",
            "gallery",
            "place"
        ]
    );
    assert!(k.field("title").unwrap().required);
    assert!(!k.field("body").unwrap().required);
    assert_eq!(
        k.field("parts").unwrap().kind,
        RemoteFieldKind::Relation {
            collection: "parts".into(),
            multiple: true
        }
    );
    assert_eq!(
        k.field("owner").unwrap().kind,
        RemoteFieldKind::Relation {
            collection: "users".into(),
            multiple: false
        }
    );
    assert_eq!(
        k.field("tags").unwrap().kind,
        RemoteFieldKind::Select {
            values: vec![
                "quick".into(),
                "spicy".into(),
                "sweet".into(),
                "cheap".into()
            ],
            multiple: true
        }
    );
    assert_eq!(
        k.field("servings").unwrap().kind,
        RemoteFieldKind::Number { only_int: true }
    );
    assert_eq!(k.field("place").unwrap().kind, RemoteFieldKind::GeoPoint);
    // The route and PocketBase's own export describe the same collection.
    let offline = pocketbase_remote::schema::parse_export(EXPORT).unwrap();
    assert_eq!(offline.get("kitchen"), Some(k));
    // And so does the export of the live server (what the admin UI exports).
    let (st, listed) = admin
        .send(
            admin
                .http
                .get(format!("{}/api/collections?perPage=500", admin.url)),
        )
        .await;
    assert_eq!(st, 200, "{listed}");
    let live = pocketbase_remote::schema::parse_export(&listed["items"].to_string()).unwrap();
    for name in ["kitchen", "parts", "ledger", "songs"] {
        assert_eq!(live.get(name), all.get(name), "{name}");
    }
    assert!(
        live.collections
            .iter()
            .all(|c| !c.name.starts_with('_') && c.name != "users"),
        "system and auth collections are left out: {live:?}"
    );
    // So does the trait method.
    assert_eq!(
        RemoteStore::schema(&user).await.unwrap().as_ref(),
        Some(&remote)
    );

    let schema = Schema::from_remote(&remote).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (db, sled_dir) = (dir.path().join("a.sqlite"), dir.path().join("b.sled"));
    let a = SyncEngine::new(
        SqliteStore::open(&db, schema.clone()).unwrap(),
        user.clone(),
    );
    let b = SyncEngine::new(
        SledStore::open(&sled_dir, schema.clone()).unwrap(),
        user.clone(),
    );

    // A record of every type, written on SQLite, pushed, pulled by sled.
    let (p1, p2, dish) = (new_id(), new_id(), new_id());
    for (id, label) in [(&p1, "leek"), (&p2, "potato")] {
        a.local()
            .put(Record::new(
                "parts",
                id.clone(),
                obj(json!({"label": label})),
            ))
            .await
            .unwrap();
    }
    let written = obj(json!({
        "title": "soup", "body": "<p>hot</p>", "contact": "chef@t.io",
        "homepage": "https://example.com/soup", "servings": 4, "rating": 4.5, "vegan": true,
        "cooked_on": "2024-05-01 10:00:00.000Z", "course": "main", "tags": ["quick", "spicy"],
        "owner": uid.as_str(), "main_part": p1.as_str(), "parts": [p1.as_str(), p2.as_str()],
        "extra": {"steps": [1, 2], "note": "stir"}, "photo": "", "gallery": [],
        "place": {"lon": 13.4, "lat": 52.5}
    }));
    a.local()
        .put(Record::new("kitchen", dish.clone(), written.clone()))
        .await
        .unwrap();
    let ra = a.sync().await.unwrap();
    assert_eq!((ra.pushed, ra.rejected), (3, 0), "{ra:?}");
    b.sync().await.unwrap();
    let got = same_everywhere(a.local(), b.local(), &user, "kitchen").await;
    let f = &got[0].fields;
    for (k, v) in &written {
        assert_eq!(&f[k], v, "field {k} came back changed");
    }
    for k in ["created", "updated"] {
        let d = f[k].as_str().unwrap();
        assert!(d.len() > 10 && d.ends_with('Z'), "{k}: {d}");
    }
    for k in ["pin", "chef_notes"] {
        assert!(!f.contains_key(k), "{k} reached a user's store: {f:?}");
    }
    same_everywhere(a.local(), b.local(), &user, "parts").await;

    // Files: the server stores bytes, the stores get the names.
    admin
        .upload(
            "kitchen",
            &dish,
            &[
                ("photo", "soup.txt", b"a photo"),
                ("gallery", "one.txt", b"1"),
                ("gallery", "two.txt", b"2"),
            ],
        )
        .await;
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    let got = same_everywhere(a.local(), b.local(), &user, "kitchen").await;
    let photo = got[0].fields["photo"].as_str().unwrap().to_owned();
    let gallery = got[0].fields["gallery"].clone();
    assert!(
        photo.starts_with("soup") && photo.ends_with(".txt"),
        "{photo}"
    );
    assert_eq!(gallery.as_array().unwrap().len(), 2, "{gallery}");

    // Edited on sled and pushed back with the names unchanged: the files stay.
    set(b.local(), "kitchen", &dish, "rating", json!(5)).await;
    set(b.local(), "kitchen", &dish, "tags", json!(["sweet"])).await;
    let rb = b.sync().await.unwrap();
    assert_eq!((rb.pushed, rb.rejected), (1, 0), "{rb:?}");
    a.sync().await.unwrap();
    let got = same_everywhere(a.local(), b.local(), &user, "kitchen").await;
    assert_eq!(got[0].fields["rating"], json!(5));
    assert_eq!(got[0].fields["tags"], json!(["sweet"]));
    let on_server = admin.record("kitchen", &dish).await;
    assert_eq!(on_server["photo"], json!(photo));
    assert_eq!(on_server["gallery"], gallery);
    // A file name the server does not hold is refused: the change is quarantined
    // and the record reset to the server's names (bytes never travel this way).
    set(b.local(), "kitchen", &dish, "photo", json!("made_up.txt")).await;
    let rb = b.sync().await.unwrap();
    assert_eq!((rb.pushed, rb.rejected), (0, 1), "{rb:?}");
    assert_eq!(admin.record("kitchen", &dish).await["photo"], json!(photo));
    let kept = b.local().get("kitchen", &dish).await.unwrap().unwrap();
    assert_eq!(kept.fields["photo"], json!(photo));
    let q = b.local().quarantined().await.unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(b.local().discard_quarantined(q[0].id).await.unwrap());
    let seen = user.fetch("kitchen", &dish).await.unwrap().unwrap();
    assert!(
        !seen.fields.unwrap().contains_key("pin"),
        "a user is sent a password field"
    );

    // A superuser is sent password fields (as ""): its pushes leave them unchanged.
    admin
        .patch("kitchen", &dish, json!({"pin": "pin-1234"}))
        .await;
    let hash = || async {
        let (st, b) =
            admin
                .send(admin.http.post(format!("{}/api/sql", admin.url)).json(
                    &json!({"query": format!("SELECT pin FROM kitchen WHERE id = '{dish}'")}),
                ))
                .await;
        assert_eq!(st, 200, "{b}");
        b["rows"][0][0].as_str().unwrap_or_default().to_owned()
    };
    let before = hash().await;
    assert!(before.starts_with("$2"), "a bcrypt hash: {before}");
    let s_eng = SyncEngine::new(
        SledStore::open_temporary(Schema::from_remote(&all).unwrap()).unwrap(),
        su.clone(),
    );
    s_eng.sync().await.unwrap();
    let theirs = s_eng.local().get("kitchen", &dish).await.unwrap().unwrap();
    assert_eq!(
        theirs.fields.get("pin"),
        Some(&json!("")),
        "superusers see hidden fields"
    );
    set(s_eng.local(), "kitchen", &dish, "rating", json!(3)).await;
    let rs = s_eng.sync().await.unwrap();
    assert_eq!((rs.pushed, rs.rejected), (1, 0), "{rs:?}");
    assert_eq!(admin.record("kitchen", &dish).await["rating"], json!(3));
    assert_eq!(hash().await, before, "a push cleared a password");
    drop(s_eng);
    a.sync().await.unwrap();
    b.sync().await.unwrap();

    // The server's schema changes: a field on kitchen, a new synced collection.
    admin
        .add_field(
            "kitchen",
            json!({"name": "spice", "type": "number", "onlyInt": true}),
        )
        .await;
    admin
        .import(json!([{
            "name": "pantry", "type": "base",
            "listRule": "@request.auth.id != ''", "viewRule": "@request.auth.id != ''",
            "createRule": "@request.auth.id != ''", "updateRule": "@request.auth.id != ''",
            "deleteRule": "@request.auth.id != ''",
            "fields": [{"name": "item", "type": "text"}, {"name": "stocked", "type": "bool"}]
        }]))
        .await;
    su.enable_sync("pantry", None).await.unwrap();
    // A password field added to a synced collection is made hidden: it never syncs.
    admin
        .add_field("kitchen", json!({"name": "door_code", "type": "password"}))
        .await;
    admin
        .patch(
            "kitchen",
            &dish,
            json!({"spice": 3, "door_code": "open-sesame-1"}),
        )
        .await;
    let jar = new_id();
    let (s, body) = admin
        .send(
            admin
                .http
                .post(format!("{}/api/collections/pantry/records", admin.url))
                .json(&json!({"id": jar.as_str(), "item": "salt", "stocked": true})),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    let remote2 = user.schema().await.unwrap();
    assert_eq!(
        remote2.get("kitchen").unwrap().field("spice").unwrap().kind,
        RemoteFieldKind::Number { only_int: true }
    );
    let schema2 = Schema::from_remote(&remote2).unwrap();
    assert!(schema2.get("pantry").is_some());
    drop((a, b));
    let a = SyncEngine::new(
        SqliteStore::open(&db, schema2.clone()).unwrap(),
        user.clone(),
    );
    let b = SyncEngine::new(SledStore::open(&sled_dir, schema2).unwrap(), user.clone());
    assert_eq!(
        a.local().schema().get("kitchen").unwrap().kind_of("spice"),
        Some(FieldKind::Number)
    );
    let columns: Vec<String> = a
        .local()
        .with_connection(|c| {
            let mut st = c.prepare("SELECT name FROM pragma_table_info('kitchen')")?;
            let names = st.query_map([], |r| r.get::<_, String>(0))?;
            names.collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .unwrap();
    assert!(columns.iter().any(|c| c == "spice"), "{columns:?}");
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    let got = same_everywhere(a.local(), b.local(), &user, "kitchen").await;
    assert_eq!(got[0].fields["spice"], json!(3));
    assert!(!got[0].fields.contains_key("door_code"), "{:?}", got[0]);
    assert!(remote2.get("kitchen").unwrap().field("door_code").is_none());
    let pantry = same_everywhere(a.local(), b.local(), &user, "pantry").await;
    assert_eq!(pantry.len(), 1);
    assert_eq!(pantry[0].fields["item"], json!("salt"));
    // The new field is declared (typed) in both stores, not kept as an extra.
    // The server changes a field's type (a select made multiple): the stores open
    // with the new schema, the field keeps its stored kind, and the pulled arrays
    // are kept as sent and reported as mistyped.
    let (st, mut coll) = admin
        .send(
            admin
                .http
                .get(format!("{}/api/collections/kitchen", admin.url)),
        )
        .await;
    assert_eq!(st, 200, "{coll}");
    for f in coll["fields"].as_array_mut().unwrap() {
        if f["name"] == "course" {
            f["maxSelect"] = json!(3);
        }
    }
    let (st, body) = admin
        .send(
            admin
                .http
                .patch(format!("{}/api/collections/kitchen", admin.url))
                .json(&json!({"fields": coll["fields"]})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    admin
        .patch("kitchen", &dish, json!({"course": ["main", "dessert"]}))
        .await;
    let remote3 = user.schema().await.unwrap();
    let schema3 = Schema::from_remote(&remote3).unwrap();
    assert_eq!(
        schema3.get("kitchen").unwrap().kind_of("course"),
        Some(FieldKind::Json)
    );
    drop((a, b));
    let a = SyncEngine::new(
        SqliteStore::open(&db, schema3.clone()).unwrap(),
        user.clone(),
    );
    let b = SyncEngine::new(SledStore::open(&sled_dir, schema3).unwrap(), user.clone());
    assert_eq!(
        a.local().schema().get("kitchen").unwrap().kind_of("course"),
        Some(FieldKind::Text),
        "a field keeps the kind it is stored as"
    );
    let (ra, rb) = (a.sync().await.unwrap(), b.sync().await.unwrap());
    assert_eq!((ra.mistyped, rb.mistyped), (1, 1), "{ra:?} {rb:?}");
    let got = same_everywhere(a.local(), b.local(), &user, "kitchen").await;
    assert_eq!(
        got[0].fields["course"],
        json!(["main", "dessert"]),
        "kept as sent"
    );

    let bad = a
        .local()
        .put(Record::new(
            "kitchen",
            dish.clone(),
            obj(json!({"title": "soup", "spice": "hot"})),
        ))
        .await;
    assert!(matches!(bad, Err(StoreError::Schema { .. })), "{bad:?}");
    let bad = b
        .local()
        .put(Record::new(
            "kitchen",
            dish.clone(),
            obj(json!({"title": "soup", "spice": "hot"})),
        ))
        .await;
    assert!(matches!(bad, Err(StoreError::Schema { .. })), "{bad:?}");
}
