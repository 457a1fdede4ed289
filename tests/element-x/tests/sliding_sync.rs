//! matrix-rust-sdk (what Element X is built on) against an in-process weft: the room list
//! through simplified sliding sync (MSC4186) with matrix-sdk-ui's `SyncService` and
//! `RoomListService`, as Element X drives them; a new message arriving through it (event
//! handler, list order, the room's latest event); and opening the room, a timeline paginated
//! back from the sliding sync `prev_batch` to the room's creation.
//!
//! Runs on SQLite always and on PostgreSQL when `WEFT_TEST_POSTGRES` is set (a URL with rights to
//! create databases), like the `it` test crate's harness.

// The SDK's sync futures nest deeply; the default limit is too small for their layout.
#![recursion_limit = "256"]

use std::{path::PathBuf, time::Duration};

use futures::{pin_mut, Stream, StreamExt};
use matrix_sdk::{
    ruma::{
        api::client::room::create_room::v3::Request as CreateRoomRequest,
        events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        OwnedRoomId, OwnedUserId,
    },
    Client, Room, RoomState,
};
use matrix_sdk_ui::{
    eyeball_im::{Vector, VectorDiff},
    room_list_service::{filters::new_filter_non_left, RoomListItem, RoomListLoadingState, State},
    sync_service::{State as SyncServiceState, SyncService},
    timeline::{LatestEventValue, RoomExt, Timeline, TimelineItemContent},
    RoomListService,
};
use serde_json::{json, Value};
use tokio::{sync::mpsc, time::timeout};
use weft::config::{Api, Config, ListenerConfig};

/// Every wait in this test is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_and_new_message_sqlite() {
    scenario(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_and_new_message_postgres() {
    scenario(Backend::Postgres).await
}

async fn scenario(backend: Backend) {
    init_logging();
    let Some(db) = TestDb::new(backend).await else { return };
    let running = weft::server::start(config(&db)).await.expect("weft starts");
    let base = format!("http://{}", running.addrs[0]);

    register(&base, "alice", "alice-password").await;
    let bob = register(&base, "bob", "bob-password").await;
    let bob_id: OwnedUserId = "@bob:weft.test".try_into().unwrap();

    // Alice is the SDK client, as Element X would be: in-memory stores, password login.
    // Like Element X: discover sliding sync support from /versions.
    let client = Client::builder()
        .homeserver_url(&base)
        .sliding_sync_version_builder(matrix_sdk::sliding_sync::VersionBuilder::DiscoverNative)
        .build()
        .await
        .expect("client builds (the server must announce simplified sliding sync)");
    client
        .matrix_auth()
        .login_username("alice", "alice-password")
        .initial_device_display_name("weft element-x test")
        .await
        .expect("alice logs in");

    // Three named rooms; bob is invited to the first and joins it.
    let mut rooms: Vec<(OwnedRoomId, &str)> = Vec::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        let mut request = CreateRoomRequest::new();
        request.name = Some(name.to_owned());
        if name == "Alpha" {
            request.invite = vec![bob_id.clone()];
        }
        let room = client
            .create_room(request)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        rooms.push((room.room_id().to_owned(), name));
    }
    let shared = rooms[0].0.clone();
    let (status, body) = http(
        &base,
        Some(&bob),
        "POST",
        &format!("/_matrix/client/v3/join/{shared}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "bob joins: {body}");

    // New messages reach event handlers through the sliding sync responses.
    let (message_tx, mut message_rx) = mpsc::unbounded_channel::<(OwnedRoomId, String, String)>();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
        let tx = message_tx.clone();
        async move {
            if let MessageType::Text(text) = ev.content.msgtype {
                let _ = tx.send((room.room_id().to_owned(), ev.sender.to_string(), text.body));
            }
        }
    });

    // The sync service, as Element X runs it: a room list sliding sync connection ("room-list",
    // one list "all_rooms" growing over the whole room list, then long-polling) and an encryption
    // connection (to-device and e2ee extensions), each in a task of its own.
    let sync_service = SyncService::builder(client.clone())
        .build()
        .await
        .expect("sync service");
    let service = sync_service.room_list_service();
    let (error_tx, mut error_rx) = mpsc::unbounded_channel::<String>();
    let mut sync_state = sync_service.state();
    let watcher = tokio::spawn(async move {
        while let Some(state) = sync_state.next().await {
            if let SyncServiceState::Error(e) = state {
                let _ = error_tx.send(format!("{e:?}"));
            }
        }
    });
    sync_service.start().await;

    let all_rooms = service.all_rooms().await.expect("all_rooms list");
    let (entries, controller) = all_rooms.entries_with_dynamic_adapters(50);
    assert!(controller.set_filter(Box::new(new_filter_non_left())));
    pin_mut!(entries);
    let mut list: Vector<RoomListItem> = Vector::new();

    // The list shows the three rooms, with the names sent by the server.
    let expected: Vec<(String, String)> = rooms
        .iter()
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect();
    wait_for_list(&mut entries, &mut list, &mut error_rx, "three named rooms", |list| {
        let mut shown: Vec<(String, String)> = list
            .iter()
            .map(|r| {
                (
                    r.room_id().to_string(),
                    r.cached_display_name().map(|n| n.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        shown.sort();
        let mut want = expected.clone();
        want.sort();
        shown == want
    })
    .await;
    for (id, name) in &rooms {
        let room = client.get_room(id).expect("room known to the client");
        assert_eq!(room.state(), RoomState::Joined);
        assert_eq!(room.name().as_deref(), Some(*name), "m.room.name of {id}");
        assert_eq!(room.display_name().await.expect("display name").to_string(), *name);
    }
    let alpha = client.get_room(&shared).unwrap();
    assert_eq!(alpha.joined_members_count(), 2, "alice and bob in Alpha");
    // The list's count from the server reaches the loading state (updated by a task of its own).
    let mut loading = all_rooms.loading_state();
    let loaded = RoomListLoadingState::Loaded {
        maximum_number_of_rooms: Some(3),
    };
    let result = timeout(WAIT, async {
        while loading.get() != loaded {
            if loading.next().await.is_none() {
                break;
            }
        }
    })
    .await;
    assert!(result.is_ok(), "loading state is {:?}, not {loaded:?}", loading.get());

    // Element X subscribes to the rooms on screen: Alpha gets a room subscription (more timeline,
    // more state) and its latest event is tracked for the list.
    service.subscribe_to_rooms(&[&shared]).await;

    // Let the service settle into long-polling, then bob speaks in the shared room.
    wait_for_state(&service, &mut error_rx).await;
    let (status, body) = http(
        &base,
        Some(&bob),
        "PUT",
        &format!("/_matrix/client/v3/rooms/{shared}/send/m.room.message/txn1"),
        json!({"msgtype": "m.text", "body": "hello from bob"}),
    )
    .await;
    assert_eq!(status, 200, "bob sends: {body}");
    let received = wait_for_message(&mut message_rx, &mut error_rx, "hello from bob").await;
    assert_eq!(
        received,
        (shared.clone(), bob_id.to_string(), "hello from bob".to_owned())
    );

    // The room with the new message moves to the top of the list, and the message becomes the
    // room's latest event (what the list shows under the room's name).
    wait_for_list(
        &mut entries,
        &mut list,
        &mut error_rx,
        "Alpha first after bob's message",
        |list| list.len() == 3 && list[0].room_id() == shared,
    )
    .await;
    let latest = timeout(WAIT, async {
        loop {
            if let LatestEventValue::Remote { sender, content, .. } = alpha.latest_event().await {
                if sender == bob_id && content.as_message().is_some_and(|m| m.body() == "hello from bob") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        latest.is_ok(),
        "Alpha's latest event is not bob's message: {:?}",
        alpha.latest_event().await
    );

    // Alice answers through the SDK and sees her message come back through sliding sync.
    let sent = alpha
        .send(RoomMessageEventContent::text_plain("hi bob"))
        .await
        .expect("alice sends");
    let received = wait_for_message(&mut message_rx, &mut error_rx, "hi bob").await;
    assert_eq!(received.1, "@alice:weft.test");
    // The event cache takes sync responses in a task of its own: let it catch up before opening
    // the timeline, as a person tapping the room would (the SDK races otherwise, not weft).
    let (room_cache, _handles) = alpha.event_cache().await.expect("room event cache");
    let cached = timeout(WAIT, async {
        while !room_cache
            .events()
            .await
            .expect("cached events")
            .iter()
            .any(|e| e.event_id().as_deref() == Some(&*sent.response.event_id))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        cached.is_ok(),
        "alice's message did not reach the event cache within {WAIT:?}"
    );

    // Opening the room: a timeline paginated back to the room's creation from the sliding sync
    // `prev_batch` (through /messages) shows the whole conversation in order.
    let timeline = alpha.timeline().await.expect("timeline");
    let reached_start = timeout(WAIT, async {
        loop {
            if timeline.paginate_backwards(20).await.expect("back-pagination") {
                return;
            }
        }
    })
    .await;
    assert!(
        reached_start.is_ok(),
        "back-pagination did not reach the room's start within {WAIT:?}"
    );
    // In order, each once (pagination overlapping the sliding sync timeline would duplicate). The
    // timeline takes the paginated events from the event cache in a task of its own: poll.
    let wanted = [
        "state m.room.create",
        "state m.room.name",
        "@bob:weft.test Some(Invited)",
        "@bob:weft.test Some(InvitationAccepted)",
        "@bob:weft.test: hello from bob",
        "@alice:weft.test: hi bob",
    ];
    let mut events = Vec::new();
    let complete = timeout(WAIT, async {
        loop {
            events = timeline_summary(&timeline).await;
            if events
                .iter()
                .map(String::as_str)
                .filter(|e| wanted.contains(e))
                .eq(wanted)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        complete.is_ok(),
        "timeline out of order, incomplete or with duplicates: {events:#?}"
    );

    timeout(WAIT, sync_service.stop()).await.expect("sync service stops");
    watcher.abort();
    running.shutdown().await;
    db.drop_db().await;
}

/// The timeline's events, one line each: "sender: body" for messages, "user change" for
/// memberships, "state type" for other state.
async fn timeline_summary(timeline: &Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event())
        .map(|event| match event.content() {
            TimelineItemContent::MsgLike(_) => {
                format!(
                    "{}: {}",
                    event.sender(),
                    event
                        .content()
                        .as_message()
                        .map(|m| m.body().to_owned())
                        .unwrap_or_default()
                )
            }
            TimelineItemContent::MembershipChange(change) => format!("{} {:?}", change.user_id(), change.change()),
            TimelineItemContent::OtherState(state) => format!("state {}", state.content().event_type()),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Applies room list diffs until `done` holds for the list, failing after `WAIT` or on a sync error.
async fn wait_for_list(
    entries: &mut (impl Stream<Item = Vec<VectorDiff<RoomListItem>>> + Unpin),
    list: &mut Vector<RoomListItem>,
    errors: &mut mpsc::UnboundedReceiver<String>,
    what: &str,
    done: impl Fn(&Vector<RoomListItem>) -> bool,
) {
    let result = timeout(WAIT, async {
        while !done(list) {
            tokio::select! {
                diffs = entries.next() => {
                    for diff in diffs.expect("room list stream ended") {
                        diff.apply(list);
                    }
                }
                Some(error) = errors.recv() => panic!("sliding sync failed: {error}"),
            }
        }
    })
    .await;
    if result.is_err() {
        let shown: Vec<String> = list
            .iter()
            .map(|r| format!("{} {:?}", r.room_id(), r.cached_display_name().map(|n| n.to_string())))
            .collect();
        panic!("room list did not show {what} within {WAIT:?}: {shown:?}");
    }
}

/// Waits for a text message with this body to reach the event handler; returns (room, sender, body).
async fn wait_for_message(
    messages: &mut mpsc::UnboundedReceiver<(OwnedRoomId, String, String)>,
    errors: &mut mpsc::UnboundedReceiver<String>,
    body: &str,
) -> (OwnedRoomId, String, String) {
    timeout(WAIT, async {
        loop {
            tokio::select! {
                Some(message) = messages.recv() => {
                    if message.2 == body {
                        return message;
                    }
                }
                Some(error) = errors.recv() => panic!("sliding sync failed: {error}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("alice's SDK did not receive {body:?} through sliding sync within {WAIT:?}"))
}

/// Waits until the room list service is running (its list fully loaded, long-polling).
async fn wait_for_state(service: &RoomListService, errors: &mut mpsc::UnboundedReceiver<String>) {
    let mut state = service.state();
    let result = timeout(WAIT, async {
        loop {
            if matches!(state.get(), State::Running) {
                return;
            }
            tokio::select! {
                next = state.next() => if next.is_none() { return },
                Some(error) = errors.recv() => panic!("sliding sync failed: {error}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "room list service not running within {WAIT:?}: {:?}",
        state.get()
    );
}

/// Open registration through UIA with `m.login.dummy`; returns the access token.
async fn register(base: &str, user: &str, password: &str) -> String {
    let path = "/_matrix/client/v3/register";
    let (status, body) = http(
        base,
        None,
        "POST",
        path,
        json!({"username": user, "password": password}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().expect("UIA session").to_owned();
    let auth = json!({"type": "m.login.dummy", "session": session});
    let (status, body) = http(
        base,
        None,
        "POST",
        path,
        json!({"username": user, "password": password, "auth": auth}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("access token").to_owned()
}

async fn http(base: &str, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.server_name = "weft.test".into();
    config.public_baseurl = "http://127.0.0.1/".into();
    config.database.url = db.url.clone();
    config.database.max_connections = Some(8);
    config.signing_key_path = db.dir.join("signing.key");
    config.media.path = db.dir.join("media");
    config.listeners = vec![ListenerConfig {
        address: [127, 0, 0, 1].into(),
        port: 0,
        apis: vec![Api::Client, Api::Media],
        tls_cert: None,
        tls_key: None,
    }];
    config.registration.enabled = true;
    config.rate_limits.enabled = false;
    config.log.level = "warn".into();
    config
}

/// `RUST_LOG=matrix_sdk=debug,tower_http=debug` shows the SDK's requests and weft's answers.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A fresh database: a SQLite file in a temporary directory, or a new database on the
/// PostgreSQL server named by `WEFT_TEST_POSTGRES` (`None`, said loudly, when it is not set).
struct TestDb {
    url: String,
    dir: PathBuf,
    admin: Option<(String, String)>,
}

impl TestDb {
    async fn new(backend: Backend) -> Option<TestDb> {
        let dir = std::env::temp_dir().join(format!("weft-element-x-{}", weft_core::util::random_string(12)));
        std::fs::create_dir_all(&dir).unwrap();
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite://{}/weft.db", dir.display()),
                dir,
                admin: None,
            }),
            Backend::Postgres => {
                let Ok(base) = std::env::var("WEFT_TEST_POSTGRES") else {
                    eprintln!("!!! WEFT_TEST_POSTGRES is not set: the PostgreSQL half of this test was SKIPPED !!!");
                    let _ = std::fs::remove_dir_all(&dir);
                    return None;
                };
                let name = format!("weft_test_{}", weft_core::util::random_string(12).to_lowercase());
                let db = weft_core::Db::connect(&base, 1)
                    .await
                    .expect("connect to WEFT_TEST_POSTGRES");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(db.pool())
                    .await
                    .expect("create test database");
                db.close().await;
                let url = replace_db_name(&base, &name);
                Some(TestDb {
                    url,
                    dir,
                    admin: Some((base, name)),
                })
            }
        }
    }

    async fn drop_db(&self) {
        if let Some((base, name)) = &self.admin {
            if let Ok(db) = weft_core::Db::connect(base, 1).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(db.pool())
                    .await;
                db.close().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}
