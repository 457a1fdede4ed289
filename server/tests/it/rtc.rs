//! MatrixRTC for Element Call: LiveKit tokens issued by Weft (lk-jwt-service's `/sfu/get` and
//! `/get_token` with an OpenID token, MSC4195's `get_token` with an access token), checked
//! with LiveKit's own verifier (PyPI `livekit-api`, which `.ci/run` installs and names in
//! `WEFT_TEST_LIVEKIT_PYTHON`); the transports a client discovers; and delayed events
//! (MSC4140): fired on time, restarted, cancelled, sent at once, refused when they may not be
//! sent, fired after a restart, and fired once by several processes on one database.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, routing::post, Json, Router};
use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, messages},
};

const PYTHON_ENV: &str = "WEFT_TEST_LIVEKIT_PYTHON";
const API_KEY: &str = "weft-test-key";
const API_SECRET: &str = "weft-test-secret-that-is-long-enough-for-livekit";

/// The Python with `livekit-api`; `None` (said loudly) when it is not set up outside CI. In CI
/// (`CI` set) a missing verifier fails the test instead of skipping it.
fn livekit_python() -> Option<PathBuf> {
    match std::env::var_os(PYTHON_ENV) {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ if std::env::var_os("CI").is_some() => panic!("{PYTHON_ENV} must name a Python with livekit-api in CI"),
        _ => {
            eprintln!(
                "!!! SKIPPED: {PYTHON_ENV} is not set (the Python of a virtualenv with livekit-api, as .ci/run \
                 installs it): this LiveKit token test did not run !!!"
            );
            None
        }
    }
}

/// What LiveKit's verifier makes of `token` (`Err` with its refusal); with `derive`, also the
/// room name (`[room_id, slot_id]`) and identity (the rest) as Python derives them.
fn verify(python: &PathBuf, token: &str, derive: &[&str]) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/livekit/verify.py");
    let out = Command::new(python)
        .arg(script)
        .args([API_KEY, API_SECRET, token])
        .args(derive)
        .output()
        .expect("the verifier runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(serde_json::from_str(&stdout).expect("the verifier prints JSON"))
}

/// A stand-in for the SFU's room service: records each `CreateRoom` (its bearer token and
/// body) and answers as LiveKit does.
#[derive(Clone, Default)]
struct FakeSfu {
    created: Arc<Mutex<Vec<(String, Value)>>>,
    /// Whether participants are connected, and whom the server asked about.
    connected: Arc<std::sync::atomic::AtomicBool>,
    asked: Arc<Mutex<Vec<(String, String)>>>,
}

async fn get_participant_call(State(sfu): State<FakeSfu>, Json(body): Json<Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let room = body["room"].as_str().unwrap_or_default().to_owned();
    let identity = body["identity"].as_str().unwrap_or_default().to_owned();
    sfu.asked.lock().unwrap().push((room, identity.clone()));
    if sfu.connected.load(std::sync::atomic::Ordering::SeqCst) {
        Json(json!({ "identity": identity, "state": "ACTIVE" })).into_response()
    } else {
        (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "msg": "participant does not exist" })),
        )
            .into_response()
    }
}

async fn create_room_call(State(sfu): State<FakeSfu>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let name = body["name"].clone();
    sfu.created.lock().unwrap().push((token, body));
    Json(json!({ "name": name, "sid": "RM_test" }))
}

async fn start_fake_sfu() -> (String, FakeSfu) {
    let sfu = FakeSfu::default();
    let app = Router::new()
        .route("/twirp/livekit.RoomService/CreateRoom", post(create_room_call))
        .route("/twirp/livekit.RoomService/GetParticipant", post(get_participant_call))
        .with_state(sfu.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("ws://{addr}"), sfu)
}

async fn openid_token(client: &Client, user_id: &str) -> Value {
    let (status, token) = client
        .post(
            &format!("/_matrix/client/v3/user/{user_id}/openid/request_token"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    token
}

async fn whoami(client: &Client) -> (String, String) {
    let (status, me) = client.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "{me}");
    (
        me["user_id"].as_str().unwrap().to_owned(),
        me["device_id"].as_str().unwrap().to_owned(),
    )
}

const MSC4195_GET_TOKEN: &str = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token";

both_backends!(livekit_tokens_verify_with_livekits_verifier, |backend| async move {
    let Some(python) = livekit_python() else { return };
    let (sfu_url, sfu) = start_fake_sfu().await;
    let Some(server) = TestServer::start_with(backend, |config| {
        config.livekit.url = sfu_url.clone();
        config.livekit.api_key = API_KEY.into();
        config.livekit.api_secret = API_SECRET.into();
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_device) = whoami(&alice).await;
    let (bob_id, _) = whoami(&bob).await;
    let room = create_room(&alice, json!({})).await;
    let anyone = server.client();

    // Element Call discovers the token service and the SFU.
    let (_, well_known) = anyone.get("/.well-known/matrix/client").await;
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"],
        json!([{ "type": "livekit", "livekit_service_url": "http://127.0.0.1/livekit/jwt" }]),
        "{well_known}"
    );
    let (status, transports) = alice
        .get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
        .await;
    assert_eq!(status, 200, "{transports}");
    assert_eq!(
        transports["rtc_transports"],
        json!([
            { "type": "livekit", "livekit_service_url": "http://127.0.0.1/livekit/jwt" },
            { "type": "m.livekit", "url": sfu_url },
        ])
    );
    // Also at the path MSC4143 gives for when it is stable.
    let (status, stable) = alice.get("/_matrix/client/v1/rtc/transports").await;
    assert_eq!((status, &stable), (200, &transports));

    // lk-jwt-service's legacy /sfu/get, as today's Element Call calls it.
    let token = openid_token(&alice, &alice_id).await;
    let (status, answer) = anyone
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": room, "openid_token": token, "device_id": alice_device }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["url"], sfu_url.as_str());
    let claims = verify(&python, answer["jwt"].as_str().unwrap(), &[&room, "m.call#ROOM"]).expect("the token verifies");
    let video = &claims["video"];
    assert_eq!(claims["identity"], format!("{alice_id}:{alice_device}"));
    assert_eq!(video["room"], claims["expected_room"], "{claims}");
    assert_eq!(
        (
            &video["room_join"],
            &video["can_publish"],
            &video["can_subscribe"],
            &video["room_create"]
        ),
        (&json!(true), &json!(true), &json!(true), &json!(false)),
        "{claims}"
    );
    // The room was created on the SFU first, by this server, with a token for just that.
    let created = sfu.created.lock().unwrap().clone();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].1["name"], video["room"]);
    let service = verify(&python, &created[0].0, &[]).expect("the room service token verifies");
    assert_eq!(service["video"]["room_create"], true, "{service}");
    assert_eq!(service["video"]["room_join"], false, "{service}");

    // A signature under another secret is not LiveKit's: the verifier is not a rubber stamp.
    // One character inside the signature changes (not the last, whose low bits may be padding
    // that decodes to the same bytes).
    let jwt = answer["jwt"].as_str().unwrap();
    let at = jwt.rfind('.').unwrap() + 5;
    let swapped = if jwt.as_bytes()[at] == b'A' { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &jwt[..at], &jwt[at + 1..]);
    assert_ne!(forged, jwt);
    assert!(verify(&python, &forged, &[]).is_err());

    // lk-jwt-service's /get_token for a MatrixRTC slot.
    let (status, answer) = anyone
        .post(
            "/livekit/jwt/get_token",
            json!({
                "room_id": room, "slot_id": "m.call#ROOM", "openid_token": token,
                "member": { "id": "member-1", "claimed_user_id": alice_id, "claimed_device_id": alice_device },
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let claims = verify(
        &python,
        answer["jwt"].as_str().unwrap(),
        &[&room, "m.call#ROOM", &alice_id, &alice_device, "member-1"],
    )
    .unwrap();
    assert_eq!(claims["identity"], claims["expected_identity"], "{claims}");
    assert_eq!(claims["video"]["room"], claims["expected_room"], "{claims}");
    // Claiming to be someone else with one's own token is refused.
    let (status, body) = anyone
        .post(
            "/livekit/jwt/get_token",
            json!({
                "room_id": room, "slot_id": "m.call#ROOM", "openid_token": token,
                "member": { "id": "member-1", "claimed_user_id": bob_id, "claimed_device_id": "X" },
            }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );

    // MSC4195: the client asks its own server with its access token.
    let (status, answer) = alice
        .post(
            MSC4195_GET_TOKEN,
            json!({ "url": sfu_url, "room_id": room, "slot_id": "the_slot", "member_id": "member-2" }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let claims = verify(
        &python,
        answer["jwt"].as_str().unwrap(),
        &[&room, "the_slot", &alice_id, "member-2"],
    )
    .unwrap();
    assert_eq!(claims["identity"], claims["expected_identity"], "{claims}");
    assert_eq!(claims["video"]["room"], claims["expected_room"], "{claims}");
    assert_eq!(claims["video"]["can_publish"], true, "{claims}");
    assert_eq!(claims["video"]["can_update_own_metadata"], false, "{claims}");
    assert_eq!(claims["video"]["room_create"], false, "{claims}");
    // Another SFU is not this server's to issue for.
    let (status, body) = alice
        .post(
            MSC4195_GET_TOKEN,
            json!({ "url": "wss://elsewhere.example", "room_id": room, "slot_id": "s", "member_id": "m" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );

    // Bob is not in the room: no token, whichever way he asks.
    let created_before = sfu.created.lock().unwrap().len();
    let bob_token = openid_token(&bob, &bob_id).await;
    let (status, body) = anyone
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": room, "openid_token": bob_token, "device_id": "BOBDEVICE" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = bob
        .post(
            MSC4195_GET_TOKEN,
            json!({ "url": sfu_url, "room_id": room, "slot_id": "the_slot", "member_id": "m" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(
        sfu.created.lock().unwrap().len(),
        created_before,
        "no room is made for a refusal"
    );

    // A made-up OpenID token, or a good one said to be from another server, is refused.
    let (status, body) = anyone
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": room, "device_id": "D",
                    "openid_token": { "access_token": "made-up", "matrix_server_name": server.config.server_name } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );
    // Malformed requests are the client's error.
    let (status, body) = anyone.post("/livekit/jwt/sfu/get", json!({ "room": room })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    server.stop().await;
});

both_backends!(livekit_endpoints_are_off_by_default, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (status, body) = server
        .client()
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": "!r:x", "device_id": "D", "openid_token": {} }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED")),
        "{body}"
    );
    let (status, transports) = alice
        .get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
        .await;
    assert_eq!(
        (status, &transports["rtc_transports"]),
        (200, &json!([])),
        "{transports}"
    );
    let (_, well_known) = server.client().get("/.well-known/matrix/client").await;
    assert!(well_known.get("org.matrix.msc4143.rtc_foci").is_none(), "{well_known}");
    server.stop().await;
});

both_backends!(delegated_leave_events_follow_the_sfu, |backend| async move {
    let (sfu_url, sfu) = start_fake_sfu().await;
    let Some(server) = TestServer::start_with(backend, |config| {
        config.livekit.url = sfu_url.clone();
        config.livekit.api_key = API_KEY.into();
        config.livekit.api_secret = API_SECRET.into();
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (alice_id, _) = whoami(&alice).await;
    let room = create_room(&alice, json!({})).await;
    let member_key = format!("_{alice_id}_m.call");
    // Alice's call membership, and its delayed end (an empty membership).
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{member_key}"),
            json!({ "application": "m.call", "call_id": "" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, res) = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{member_key}?org.matrix.msc4140.delay=1500"
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let delay_id = res["delay_id"].as_str().unwrap().to_owned();
    const DELEGATE: &str = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave";
    let delegation = |url: &str, delay_id: &str| json!({ "url": url, "room_id": room, "slot_id": "m.call#ROOM", "member_id": "mem", "delay_id": delay_id });
    // Only this server's SFU, and only one's own scheduled event in that room.
    let (status, body) = alice
        .post(DELEGATE, delegation("wss://elsewhere.example", &delay_id))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = alice.post(DELEGATE, delegation(&sfu_url, "not-a-delay-id")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );

    sfu.connected.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = alice.post(DELEGATE, delegation(&sfu_url, &delay_id)).await;
    assert_eq!(status, 200, "{body}");
    let membership = || {
        let (alice, room, key) = (alice.clone(), room.clone(), member_key.clone());
        async move {
            alice
                .get(&format!(
                    "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/{key}"
                ))
                .await
                .1
        }
    };
    // Connected for more than twice the delay: the server kept the event from firing.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        membership().await["application"],
        "m.call",
        "the leave event fired while connected"
    );
    let asked = sfu
        .asked
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("the server asked the SFU");
    assert_eq!(asked.0, weft_core::rtc::livekit::room_name(&room, "m.call#ROOM"));
    let identity = weft_core::rtc::livekit::Identity::Member {
        user_id: &alice_id,
        member_id: "mem",
    }
    .derive();
    assert_eq!(asked.1, identity);
    // Gone from the SFU: the leave event is sent at once, well before its delay would.
    sfu.connected.store(false, std::sync::atomic::Ordering::SeqCst);
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(5);
    while membership().await.get("application").is_some() {
        assert!(Instant::now() < deadline, "the leave event was never sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finalised = listed(&alice, "finalised").await;
    assert_eq!(
        finalised[0]["delay_id"].as_str(),
        Some(delay_id.as_str()),
        "{finalised:?}"
    );
    assert!(finalised[0]["event_id"].is_string());
    server.stop().await;
});

// ---- Delayed events ----

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// Schedules a text message `body` in `room` after `delay_ms`; its `delay_id`.
async fn schedule_message(client: &Client, room: &str, txn: &str, body: &str, delay_ms: u64) -> String {
    let (status, res) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay_ms}"),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res.get("event_id").is_none(), "{res}");
    res["delay_id"].as_str().unwrap().to_owned()
}

/// The bodies of the room's latest text messages.
async fn bodies(client: &Client, room: &str) -> Vec<String> {
    let (status, page) = messages(client, room, "dir=b&limit=50").await;
    assert_eq!(status, 200, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn count_of(client: &Client, room: &str, body: &str) -> usize {
    bodies(client, room).await.iter().filter(|b| *b == body).count()
}

/// Waits (up to `within`) until `body` is in the room; when it got there.
async fn wait_for(client: &Client, room: &str, body: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if count_of(client, room, body).await > 0 {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{body:?} was not sent within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn act(client: &Client, delay_id: &str, action: &str) -> (u16, Value) {
    // The management endpoint needs no access token: the delay_id is the authority.
    let anyone = Client {
        token: None,
        ..client.clone()
    };
    anyone.post(&format!("{DELAYED}/{delay_id}/{action}"), json!({})).await
}

async fn listed(client: &Client, status: &str) -> Vec<Value> {
    let (code, list) = client.get(&format!("{DELAYED}?status={status}")).await;
    assert_eq!(code, 200, "{list}");
    list["delayed_events"].as_array().unwrap().clone()
}

both_backends!(delayed_events_fire_restart_cancel_send, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({})).await;
    let (_, versions) = server.client().get("/_matrix/client/versions").await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true, "{versions}");

    // Fired on time: not before its delay, soon after.
    let scheduled_at = Instant::now();
    let fired = schedule_message(&alice, &room, "t1", "on time", 1500).await;
    let scheduled = listed(&alice, "scheduled").await;
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    assert_eq!(
        (scheduled[0]["delay_id"].as_str(), &scheduled[0]["delay"]),
        (Some(fired.as_str()), &json!(1500))
    );
    assert_eq!(scheduled[0]["content"]["body"], "on time");
    // A retry of the same transaction is the same delayed event.
    assert_eq!(schedule_message(&alice, &room, "t1", "on time", 1500).await, fired);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count_of(&alice, &room, "on time").await, 0, "sent before its delay");
    let at = wait_for(&alice, &room, "on time", Duration::from_secs(8)).await;
    assert!(at - scheduled_at >= Duration::from_millis(1500));
    let finalised = listed(&alice, "finalised").await;
    assert_eq!(finalised[0]["delay_id"].as_str(), Some(fired.as_str()), "{finalised:?}");
    let event_id = finalised[0]["event_id"].as_str().expect("the event's ID").to_owned();
    // Its sender sees which delayed event it was; nobody else does.
    let (status, event) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"))
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(
        event["unsigned"]["org.matrix.msc4140.delay_id"].as_str(),
        Some(fired.as_str()),
        "{event}"
    );
    assert!(listed(&alice, "scheduled").await.is_empty());
    // Sending what was sent is fine; cancelling it is a conflict.
    assert_eq!(act(&alice, &fired, "send").await.0, 200);
    let (status, body) = act(&alice, &fired, "cancel").await;
    assert_eq!((status, body["errcode"].as_str()), (409, Some("M_UNKNOWN")), "{body}");

    // Restarted: the delay counts again from the restart. A state event this time, through
    // the MSC's own scheduling endpoint.
    let (status, res) = alice
        .put(
            &format!("/_matrix/client/unstable/org.matrix.msc4140/rooms/{room}/delayed_event/m.room.topic/t2"),
            json!({ "delay": 2000, "state_key": "", "content": { "topic": "restarted" } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let restarted = res["delay_id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(act(&alice, &restarted, "restart").await.0, 200);
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let topic = |c: Client| {
        let room = room.clone();
        async move {
            c.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"))
                .await
        }
    };
    assert!(started.elapsed() > Duration::from_millis(2000));
    assert_ne!(
        topic(alice.clone()).await.1["topic"],
        "restarted",
        "sent on its first schedule"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while topic(alice.clone()).await.1["topic"] != "restarted" {
        assert!(Instant::now() < deadline, "the restarted event was never sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restarted_at.elapsed() >= Duration::from_millis(2000));

    // Cancelled: never sent; cancelling again is fine, sending or restarting it a conflict.
    let cancelled = schedule_message(&alice, &room, "t3", "cancelled", 1000).await;
    assert_eq!(act(&alice, &cancelled, "cancel").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_of(&alice, &room, "cancelled").await, 0);
    assert_eq!(act(&alice, &cancelled, "cancel").await.0, 200);
    assert_eq!(act(&alice, &cancelled, "send").await.0, 409);
    assert_eq!(act(&alice, &cancelled, "restart").await.0, 409);

    // Sent now, long before its delay; with the first form of the endpoint (action in the
    // body, access token).
    let now = schedule_message(&alice, &room, "t4", "sent now", 600_000).await;
    let (status, body) = alice
        .post(&format!("{DELAYED}/{now}"), json!({ "action": "send" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count_of(&alice, &room, "sent now").await, 1);
    let (status, one) = alice.get(&format!("{DELAYED}/{now}")).await;
    assert_eq!(status, 200, "{one}");
    assert!(one["event_id"].is_string() && one["finalised_ts"].is_number(), "{one}");

    // Bad requests change nothing.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t5?org.matrix.msc4140.delay=999999999999"),
            json!({ "msgtype": "m.text", "body": "too late" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("ORG.MATRIX.MSC4140_MAX_DELAY_EXCEEDED")),
        "{body}"
    );
    assert_eq!(body["org.matrix.msc4140.max_delay"], 86_400_000);
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t6?org.matrix.msc4140.delay=soon"),
            json!({ "msgtype": "m.text", "body": "x" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = act(&alice, "no-such-delay", "send").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    assert!(listed(&alice, "scheduled").await.is_empty());
    // Nobody else sees Alice's delayed events.
    let bob = server.register("bob", "pw").await;
    assert!(listed(&bob, "finalised").await.is_empty());
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({ "user_id": "@bob:weft.test" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
            .await
            .0,
        200
    );
    let (status, event) = bob
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"))
        .await;
    assert_eq!(status, 200, "{event}");
    assert!(
        event["unsigned"].get("org.matrix.msc4140.delay_id").is_none(),
        "{event}"
    );
    assert_eq!(bob.get(&format!("{DELAYED}/{now}")).await.0, 404);
    server.stop().await;
});

both_backends!(delayed_events_follow_the_auth_rules_when_sent, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Bob may schedule a topic change, but not make it: it fails when it fires, and says why.
    let (status, res) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/?org.matrix.msc4140.delay=500"),
            json!({ "topic": "bob's" }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let delay_id = res["delay_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(8);
    let failed = loop {
        let finalised = listed(&bob, "finalised").await;
        if let Some(f) = finalised.into_iter().find(|d| d["delay_id"] == delay_id.as_str()) {
            break f;
        }
        assert!(Instant::now() < deadline, "the delayed event was never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["error"]["errcode"], "M_FORBIDDEN", "{failed}");
    assert!(failed.get("event_id").is_none(), "{failed}");
    let (_, topic) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"))
        .await;
    assert_ne!(topic["topic"], "bob's");
    // Membership is not for this endpoint, delayed or not.
    let (status, body) = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/@alice:weft.test?org.matrix.msc4140.delay=500"
            ),
            json!({ "membership": "leave" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert!(listed(&bob, "scheduled").await.is_empty());
    server.stop().await;
});

both_backends!(delayed_events_fire_after_a_restart, |backend| async move {
    let Some(mut server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({})).await;
    let scheduled_at = Instant::now();
    let survivor = schedule_message(&alice, &room, "r1", "survived a restart", 2500).await;
    server.restart().await;
    let alice = Client {
        base: server.url(),
        ..alice
    };
    let at = wait_for(&alice, &room, "survived a restart", Duration::from_secs(12)).await;
    assert!(at - scheduled_at >= Duration::from_millis(2500));
    let finalised = listed(&alice, "finalised").await;
    assert_eq!(finalised[0]["delay_id"].as_str(), Some(survivor.as_str()));
    server.stop().await;
});

both_backends!(
    delayed_events_are_sent_once_by_several_processes,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        // A second process on the same database (PostgreSQL; SQLite is one process).
        let second = match backend {
            Backend::Postgres => Some(
                weft::server::start(server.config.clone())
                    .await
                    .expect("second process"),
            ),
            Backend::Sqlite => None,
        };
        let alice = server.register("alice", "pw").await;
        let room = create_room(&alice, json!({})).await;
        let on_second = match &second {
            Some(s) => Client {
                base: format!("http://{}", s.addrs[0]),
                ..alice.clone()
            },
            None => alice.clone(),
        };
        for i in 0..10 {
            let via = if i % 2 == 0 { &alice } else { &on_second };
            schedule_message(via, &room, &format!("m{i}"), &format!("once {i}"), 800).await;
        }
        wait_for(&alice, &room, "once 9", Duration::from_secs(12)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let seen = bodies(&alice, &room).await;
        for i in 0..10 {
            let body = format!("once {i}");
            assert_eq!(seen.iter().filter(|b| **b == body).count(), 1, "{body:?} in {seen:?}");
        }
        if let Some(second) = second {
            second.shutdown().await;
        }
        server.stop().await;
    }
);

both_backends!(livekit_tokens_across_servers, |backend| async move {
    let Some(python) = livekit_python() else { return };
    let (sfu_url, _sfu) = start_fake_sfu().await;
    let ca = crate::harness_federation::TestCa::new();
    let Some(a) = crate::harness_federation::FederatedServer::start_with(backend, &ca, |config| {
        config.livekit.url = sfu_url.clone();
        config.livekit.api_key = API_KEY.into();
        config.livekit.api_secret = API_SECRET.into();
    })
    .await
    else {
        return;
    };
    let Some(b) = crate::harness_federation::FederatedServer::start(backend, &ca).await else {
        return;
    };
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let carol = b.register("carol", "pw").await;
    let (bob_id, bob_device) = whoami(&bob).await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let via = form_urlencoded::byte_serialize(a.server_name().as_bytes()).collect::<String>();
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{room}?server_name={via}"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // lk-jwt-service's /sfu/get on A with Bob's OpenID token from B: A asks B who it is.
    let token = openid_token(&bob, &bob_id).await;
    assert_eq!(token["matrix_server_name"], b.server_name());
    let (status, answer) = a
        .client()
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": room, "openid_token": token, "device_id": bob_device }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let claims = verify(&python, answer["jwt"].as_str().unwrap(), &[]).unwrap();
    assert_eq!(claims["identity"], format!("{bob_id}:{bob_device}"));
    // A token that B does not know is refused by A.
    let (status, body) = a
        .client()
        .post(
            "/livekit/jwt/sfu/get",
            json!({ "room": room, "device_id": "D",
                    "openid_token": { "access_token": "made-up", "matrix_server_name": b.server_name() } }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );

    // MSC4195: Bob asks his own server B for a token for A's SFU; B asks A over federation.
    let request = json!({
        "server_name": a.server_name(), "url": sfu_url, "room_id": room, "slot_id": "m.call#ROOM", "member_id": "bm",
    });
    let (status, answer) = bob.post(MSC4195_GET_TOKEN, request.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let claims = verify(
        &python,
        answer["jwt"].as_str().unwrap(),
        &[&room, "m.call#ROOM", &bob_id, "bm"],
    )
    .unwrap();
    assert_eq!(claims["identity"], claims["expected_identity"], "{claims}");
    assert_eq!(claims["video"]["room"], claims["expected_room"], "{claims}");
    // Bob publishes on his own server's SFU, not on A's: this token only subscribes.
    assert_eq!(claims["video"]["can_publish"], false, "{claims}");
    assert_eq!(claims["video"]["can_subscribe"], true, "{claims}");
    // Carol is not in the room: B refuses her before asking A.
    let (status, body) = carol.post(MSC4195_GET_TOKEN, request).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // An SFU A does not have: A's refusal reaches Bob as it is.
    let (status, body) = bob
        .post(
            MSC4195_GET_TOKEN,
            json!({ "server_name": a.server_name(), "url": "wss://elsewhere.example", "room_id": room,
                    "slot_id": "m.call#ROOM", "member_id": "bm" }),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    a.stop().await;
    b.stop().await;
});
