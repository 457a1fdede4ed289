//! The serving endpoints through the federation router, with a stand-in for request signing
//! (every request counts as signed by `remote.test`, which has no member in the room): that
//! each is routed, refuses what core refuses with the right Matrix error, answers the query
//! endpoints, and never answers bad input with a server error. What a member server reads is
//! tested in `weft_core::rooms::for_servers`; signed requests between real servers come with
//! the request verification.

use std::sync::Arc;

use axum::{body::Body, http, Router};
use futures::future::BoxFuture;
use ruma::{owned_server_name, user_id, OwnedServerName, RoomVersionId};
use serde_json::{json, Map, Value};
use tower::ServiceExt;
use weft_core::{
    rooms::create::{create_room, CreateRoom, Preset},
    storage::{rooms, users},
    Core, Db,
};
use weft_http::{
    config::Config,
    error::MatrixError,
    state::{AppState, ServerAuth},
};

/// Takes every request as signed by one server.
struct SignedBy(OwnedServerName);

impl ServerAuth for SignedBy {
    fn verify<'a>(
        &'a self,
        _: &'a http::request::Parts,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<OwnedServerName, MatrixError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

struct Scene {
    router: Router,
    room_id: String,
    event_id: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This server with alice, her public room (alias `#place:local.test`), on SQLite.
async fn scene() -> Scene {
    let dir = TempDir(std::env::temp_dir().join(format!("weft-fed-{}", weft_core::util::random_string(12))));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = Db::connect(&format!("sqlite://{}/weft.db", dir.0.display()), 2)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let key = weft_core::signing_key::load_or_create(&dir.0.join("signing.key")).unwrap();
    let core = Core::new(db.clone(), owned_server_name!("local.test"), key);
    let alice = user_id!("@alice:local.test");
    let mut tx = db.write().await.unwrap();
    users::insert(&mut tx, alice.as_str(), None, false, false, Some("Alice"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let created = create_room(
        &core,
        alice,
        CreateRoom {
            version: RoomVersionId::V10,
            preset: Preset::PublicChat,
            creation_content: Map::new(),
            power_level_override: None,
            name: None,
            topic: None,
            alias: None,
            invite: Vec::new(),
            is_direct: false,
            initial_state: Vec::new(),
            public: false,
        },
    )
    .await
    .unwrap();
    let mut conn = db.conn().await.unwrap();
    rooms::alias_insert(&mut conn, "#place:local.test", &created.room_id, alice.as_str())
        .await
        .unwrap();
    let event_id = rooms::current_state_event(&mut conn, &created.room_id, "m.room.create", "")
        .await
        .unwrap()
        .unwrap();
    let auth: Arc<dyn ServerAuth> = Arc::new(SignedBy(owned_server_name!("remote.test")));
    let state = AppState::with_server_auth(Config::default(), core, Some(auth));
    Scene {
        router: crate::router().with_state(state),
        room_id: created.room_id,
        event_id,
        _dir: dir,
    }
}

impl Scene {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = path
            .replace("{room}", &self.room_id)
            .replace("{event}", &self.event_id)
            .replace('#', "%23")
            .replace('$', "%24")
            .replace('!', "%21");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let request = http::Request::builder().method(method).uri(&path).body(body).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn room_reads_refuse_a_server_without_a_member() {
    let s = scene().await;
    let room_reads = [
        ("GET", "/_matrix/federation/v1/event/{event}", None),
        ("GET", "/_matrix/federation/v1/state/{room}?event_id={event}", None),
        ("GET", "/_matrix/federation/v1/state_ids/{room}?event_id={event}", None),
        ("GET", "/_matrix/federation/v1/event_auth/{room}/{event}", None),
        ("GET", "/_matrix/federation/v1/backfill/{room}?v={event}&limit=10", None),
        (
            "POST",
            "/_matrix/federation/v1/get_missing_events/{room}",
            Some(json!({"earliest_events": [], "latest_events": [s.event_id]})),
        ),
    ];
    for (method, path, body) in room_reads {
        let (status, body) = s.call(method, path, body).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = s.call("GET", "/_matrix/federation/v1/event/$unknown", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
}

#[tokio::test]
async fn unknown_media_is_not_found() {
    let s = scene().await;
    for path in [
        "/_matrix/federation/v1/media/download/NoSuchMedia",
        "/_matrix/federation/v1/media/thumbnail/NoSuchMedia?width=32&height=32",
    ] {
        let (status, body) = s.call("GET", path, None).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn query_answers_aliases_and_profiles_of_this_server() {
    let s = scene().await;
    let (status, body) = s
        .call(
            "GET",
            "/_matrix/federation/v1/query/directory?room_alias=#place:local.test",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"room_id": s.room_id, "servers": ["local.test"]}));
    for alias in ["#nope:local.test", "#place:elsewhere.test"] {
        let (status, body) = s
            .call(
                "GET",
                &format!("/_matrix/federation/v1/query/directory?room_alias={alias}"),
                None,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{alias}"
        );
    }

    let profile = "/_matrix/federation/v1/query/profile?user_id=@alice:local.test";
    let (status, body) = s.call("GET", profile, None).await;
    assert_eq!((status, body), (200, json!({"displayname": "Alice"})));
    let (status, body) = s.call("GET", &format!("{profile}&field=avatar_url"), None).await;
    assert_eq!((status, body), (200, json!({})), "only the field asked for");
    let (status, body) = s.call("GET", &format!("{profile}&field=displayname"), None).await;
    assert_eq!((status, body), (200, json!({"displayname": "Alice"})));
    for user in ["@nobody:local.test", "@alice:elsewhere.test"] {
        let (status, body) = s
            .call(
                "GET",
                &format!("/_matrix/federation/v1/query/profile?user_id={user}"),
                None,
            )
            .await;
        assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{user}");
    }
}

#[tokio::test]
async fn bad_input_is_a_client_error() {
    let s = scene().await;
    let cases = [
        ("GET", "/_matrix/federation/v1/state_ids/{room}", None),
        (
            "GET",
            "/_matrix/federation/v1/state_ids/not-a-room?event_id={event}",
            None,
        ),
        ("GET", "/_matrix/federation/v1/backfill/{room}?v={event}&limit=-1", None),
        ("GET", "/_matrix/federation/v1/backfill/{room}?v={event}", None),
        ("GET", "/_matrix/federation/v1/query/directory?room_alias=nope", None),
        ("GET", "/_matrix/federation/v1/query/profile?user_id=alice", None),
        (
            "POST",
            "/_matrix/federation/v1/get_missing_events/{room}",
            Some(json!({"limit": "ten"})),
        ),
        ("POST", "/_matrix/federation/v1/get_missing_events/{room}", None),
        ("GET", "/_matrix/federation/v1/media/thumbnail/abc?width=32", None),
        (
            "GET",
            "/_matrix/federation/v1/media/thumbnail/abc?width=32&height=32&method=spin",
            None,
        ),
        ("GET", "/_matrix/federation/v1/media/download/abc?timeout_ms=soon", None),
    ];
    for (method, path, body) in cases {
        let (status, body) = s.call(method, path, body).await;
        assert!((400..500).contains(&status), "{method} {path}: {status} {body}");
    }
}
