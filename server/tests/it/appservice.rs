//! Application services: a real bridge built with mautrix (PyPI; `tests/appservice/bridge.py`,
//! run with the Python `WEFT_TEST_MAUTRIX_PYTHON` names, which `.ci/run` installs) against a
//! server on loopback, and registration files refused at start.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{both_backends, harness::*, rooms::create_room};

const PYTHON_ENV: &str = "WEFT_TEST_MAUTRIX_PYTHON";
const AS_TOKEN: &str = "weft-test-as-token";
const HS_TOKEN: &str = "weft-test-hs-token";

/// The Python with mautrix; `None` (said loudly) when it is not set up outside CI. In CI (`CI`
/// set) a missing one fails the test instead of skipping it.
fn mautrix_python() -> Option<PathBuf> {
    match std::env::var_os(PYTHON_ENV) {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ if std::env::var_os("CI").is_some() => panic!("{PYTHON_ENV} must name a Python with mautrix in CI"),
        _ => {
            eprintln!(
                "!!! SKIPPED: {PYTHON_ENV} is not set (the Python of a virtualenv with mautrix, as .ci/run \
                 installs it): this appservice test did not run !!!"
            );
            None
        }
    }
}

fn registration(port: u16) -> String {
    format!(
        r#"id: testbridge
url: "http://127.0.0.1:{port}"
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: bridgebot
rate_limited: false
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: '@bridge_.*:weft\.test'
  aliases:
    - exclusive: true
      regex: '#bridge_.*:weft\.test'
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bridge as a child process, killed when dropped.
struct Bridge(Child);

impl Bridge {
    fn start(python: &Path, hs_url: &str, port: u16, log: &Path) -> Bridge {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/appservice/bridge.py");
        let child = Command::new(python)
            .arg(script)
            .args([hs_url, "weft.test", &port.to_string(), AS_TOKEN, HS_TOKEN])
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the bridge starts");
        Bridge(child)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bridge's log: what it was sent, in the order it was handled.
fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (up to 30 s) until the log satisfies `done`.
async fn wait_for(path: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..300 {
        let log = read_log(path);
        if done(&log) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the bridge never saw {what}; its log: {:#?}", read_log(path));
}

fn count(log: &[Value], kind: &str) -> usize {
    log.iter().filter(|e| e["kind"] == kind).count()
}

/// Event IDs of `m.room.message` events the bridge got from `sender`, in order.
fn messages_from(log: &[Value], sender: &str) -> Vec<String> {
    log.iter()
        .filter(|e| e["kind"] == "event" && e["type"] == "m.room.message" && e["sender"] == sender)
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn send_text(client: &Client, room: &str, txn: &str, body: &str) -> String {
    let (status, res) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    res["event_id"].as_str().unwrap().to_owned()
}

both_backends!(bridge_end_to_end, |backend| async move {
    let Some(python) = mautrix_python() else { return };
    let port = free_port();
    let dir = tempfile_dir();
    let reg_path = dir.join("bridge.yaml");
    std::fs::write(&reg_path, registration(port)).unwrap();
    let log = dir.join("bridge.log");
    let Some(mut server) =
        TestServer::start_with(backend, |c| c.appservice_config_files = vec![reg_path.clone()]).await
    else {
        return;
    };
    let mut bridge = Bridge::start(&python, &server.url(), port, &log);
    // It registered its puppets (the bot existed already) and pinged itself through the server.
    wait_for(&log, "its start", |l| count(l, "ready") == 1).await;

    let alice = server.register("alice", "password-alice").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    let (status, res) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@bridgebot:weft.test"}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    // The bot, sent its invite, joins.
    wait_for(&log, "its bot's join", |l| {
        l.iter()
            .any(|e| e["type"] == "m.room.member" && e["sender"] == "@bridgebot:weft.test")
    })
    .await;

    // Every event of the room, in order; a command answered by a puppet.
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send_text(&alice, &room, &format!("m{i}"), &format!("message {i}")).await);
    }
    sent.push(send_text(&alice, &room, "echo", "!echo hello").await);
    let seen = wait_for(&log, "alice's messages", |l| {
        messages_from(l, "@alice:weft.test").len() >= 6
    })
    .await;
    assert_eq!(messages_from(&seen, "@alice:weft.test"), sent, "in order, once each");
    wait_for(&log, "the puppet's echo", |l| {
        l.iter()
            .any(|e| e["sender"] == "@bridge_alice:weft.test" && e["body"] == "echo: hello")
    })
    .await;
    let (status, res) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"))
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(
        res["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sender"] == "@bridge_alice:weft.test" && e["content"]["body"] == "echo: hello"),
        "alice sees the puppet's answer: {res}"
    );

    // A portal room, created when its alias is first asked for.
    let (status, res) = alice
        .get("/_matrix/client/v3/directory/room/%23bridge_portal_chat:weft.test")
        .await;
    assert_eq!(status, 200, "{res}");
    let portal = res["room_id"].as_str().unwrap().to_owned();
    let (status, res) = alice
        .post("/_matrix/client/v3/join/%23bridge_portal_chat:weft.test", json!({}))
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["room_id"], portal);
    // Unknown aliases outside its namespace are not asked about; ones it refuses stay unknown.
    let (status, _) = alice
        .get("/_matrix/client/v3/directory/room/%23bridge_nothing:weft.test")
        .await;
    assert_eq!(status, 404);

    // Ephemeral events (MSC2409): typing and a read receipt in the bridged room.
    let (status, res) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@alice:weft.test"),
            json!({"typing": true, "timeout": 10000}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let last = sent.last().unwrap();
    let (status, res) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    wait_for(&log, "typing and a receipt", |l| {
        l.iter().any(|e| {
            e["kind"] == "ephemeral"
                && e["type"] == "m.typing"
                && e["content"]["user_ids"] == json!(["@alice:weft.test"])
        }) && l.iter().any(|e| {
            e["kind"] == "ephemeral"
                && e["type"] == "m.receipt"
                && !e["content"][last]["m.read"]["@alice:weft.test"].is_null()
        })
    })
    .await;

    // To-device messages to a puppet's device (logged in with m.login.application_service).
    let as_client = server.client().with_token(AS_TOKEN);
    let (status, res) = as_client
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bridge_bob"}, "device_id": "BOBDEVICE"}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let (status, res) = alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test.ping/td1",
            json!({"messages": {"@bridge_bob:weft.test": {"BOBDEVICE": {"hello": "bob"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    wait_for(&log, "the to-device message", |l| {
        l.iter().any(|e| {
            e["kind"] == "to_device"
                && e["to_user_id"] == "@bridge_bob:weft.test"
                && e["to_device_id"] == "BOBDEVICE"
                && e["sender"] == "@alice:weft.test"
        })
    })
    .await;

    // The bridge stops; what happens meanwhile (across a restart of the server too) reaches it
    // once it is back, once.
    drop(bridge);
    let mut missed = vec![send_text(&alice, &room, "d1", "while down 1").await];
    server.restart().await;
    let alice = alice_at(&server, &alice);
    missed.push(send_text(&alice, &room, "d2", "while down 2").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bridge = Bridge::start(&python, &server.url(), port, &log);
    missed.push(send_text(&alice, &room, "d3", "after it came back").await);
    let expected: Vec<String> = sent.iter().chain(missed.iter()).cloned().collect();
    let seen = wait_for(&log, "what it missed", |l| {
        messages_from(l, "@alice:weft.test").len() >= expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen_now = read_log(&log);
    assert_eq!(
        messages_from(&seen_now, "@alice:weft.test"),
        expected,
        "in order, once each: {seen:#?}"
    );
    drop(bridge);

    // Its namespace is its own: others cannot register there, and it cannot act outside it.
    let as_client = server.client().with_token(AS_TOKEN);
    let (status, res) = server
        .client()
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "bridge_mallory", "password": "password-m"}),
        )
        .await;
    assert_eq!((status, res["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{res}");
    let (status, res) = as_client
        .get("/_matrix/client/v3/account/whoami?user_id=@alice:weft.test")
        .await;
    assert_eq!((status, res["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{res}");
    let (status, res) = as_client
        .get("/_matrix/client/v3/account/whoami?user_id=@bridge_alice:weft.test")
        .await;
    assert_eq!(
        (status, res["user_id"].as_str()),
        (200, Some("@bridge_alice:weft.test")),
        "{res}"
    );
    server.stop().await;
});

/// A client for the same user at the restarted server's new address.
fn alice_at(server: &TestServer, alice: &Client) -> Client {
    Client {
        base: server.url(),
        ..alice.clone()
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-appservice-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Starting with `files` fails, with an error that contains `expected`.
async fn refused(files: &[(&str, String)], expected: &str) {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = test_config(&db);
    config.appservice_config_files = files
        .iter()
        .map(|(name, text)| {
            let path = db.dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let err = match weft::server::start(config).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("a server started with bad registrations ({expected})");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains(expected), "{err:?} should name {expected:?}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registration_files_are_refused_at_start() {
    let good = registration(9);
    let bad_regex = good.replace(r"'@bridge_.*:weft\.test'", "'@bridge_(:weft'");
    refused(&[("bad.yaml", bad_regex)], "bad regex").await;
    let copy = good
        .replace("id: testbridge", "id: other")
        .replace("bridgebot", "otherbot");
    refused(&[("a.yaml", good.clone()), ("b.yaml", copy.clone())], "token").await;
    let overlapping = copy.replace(AS_TOKEN, "other-as").replace(HS_TOKEN, "other-hs");
    refused(
        &[("a.yaml", good.clone()), ("b.yaml", overlapping)],
        "exclusive users namespace",
    )
    .await;
    refused(&[("broken.yaml", "id: [".into())], "broken.yaml").await;
}
