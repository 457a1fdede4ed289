//! Several Weft processes on one database: a change made through one process wakes the
//! long-polls another holds, and typing set through one shows in the other's syncs (the
//! notifier's relay over PostgreSQL LISTEN/NOTIFY). SQLite is one process by construction: there
//! each test runs with both clients on that one process.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use weft::server::Running;

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_ok},
    sync::sync,
};

/// How long the long-polls below may wait, and how soon the change they wait for must end them.
const LONG_POLL: Duration = Duration::from_secs(20);
const PROMPTLY: Duration = Duration::from_secs(5);

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// A server and a second process on its database (PostgreSQL only).
struct TwoProcesses {
    server: TestServer,
    second: Option<Running>,
}

impl TwoProcesses {
    async fn start(backend: Backend) -> Option<TwoProcesses> {
        let server = TestServer::start(backend).await?;
        let second = match backend {
            Backend::Postgres => Some(
                weft::server::start(server.config.clone())
                    .await
                    .expect("second process starts"),
            ),
            Backend::Sqlite => {
                eprintln!("!!! SQLite is one process: this test ran on one, its cross-process half was SKIPPED !!!");
                None
            }
        };
        Some(TwoProcesses { server, second })
    }

    /// `client`, talking to the second process.
    fn on_second(&self, client: &Client) -> Client {
        let mut client = client.clone();
        if let Some(second) = &self.second {
            client.base = format!("http://{}", second.addrs[0]);
        }
        client
    }

    async fn stop(self) {
        if let Some(second) = self.second {
            second.shutdown().await;
        }
        self.server.stop().await;
    }
}

/// Alice on the first process, Bob on the second, both in a room Alice made; and Bob's sync
/// token after joining.
async fn alice_and_bob(procs: &TwoProcesses) -> (Client, Client, String, String) {
    let alice = procs.server.register("alice", "pw").await;
    let bob = procs.on_second(&procs.server.register("bob", "pw").await);
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let token = next_batch(&sync(&bob, None, "").await);
    (alice, bob, room, token)
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Starts a long-poll and gives it time to park before the caller makes the change it waits for.
async fn park<T: Send + 'static>(poll: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long-poll answered before anything changed");
    poll
}

/// The answer of a parked long-poll, which the change made at `changed` must have ended.
async fn woken<T>(poll: JoinHandle<T>, changed: Instant) -> T {
    let answer = poll.await.expect("long-poll task");
    let took = changed.elapsed();
    assert!(
        took < PROMPTLY,
        "answered {took:?} after the change: it did not wake the long-poll"
    );
    answer
}

async fn long_poll(client: Client, since: String) -> Value {
    let path = format!(
        "/_matrix/client/v3/sync?timeout={}&since={since}",
        LONG_POLL.as_millis()
    );
    let (status, body) = client.get(&path).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The room's ephemeral event of this type in a `/sync` answer.
fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

fn has_event(events: &Value, event_id: &str) -> bool {
    events
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["event_id"] == event_id))
}

both_backends!(a_message_wakes_a_sync_on_the_other_process, |backend| async move {
    let Some(procs) = TwoProcesses::start(backend).await else {
        return;
    };
    let (alice, bob, room, token) = alice_and_bob(&procs).await;
    let poll = park(long_poll(bob.clone(), token)).await;
    let sent = Instant::now();
    let event_id = send_ok(&alice, &room, "1", "across processes").await;
    let answer = woken(poll, sent).await;
    assert!(
        has_event(&answer["rooms"]["join"][&room]["timeline"]["events"], &event_id),
        "{answer}"
    );
    procs.stop().await;
});

both_backends!(
    a_message_wakes_a_sliding_sync_on_the_other_process,
    |backend| async move {
        let Some(procs) = TwoProcesses::start(backend).await else {
            return;
        };
        let (alice, bob, room, _) = alice_and_bob(&procs).await;
        let request = json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 5}}});
        let (status, first) = bob.post(&format!("{SLIDING}?timeout=0"), request.clone()).await;
        assert_eq!(status, 200, "{first}");
        let path = format!(
            "{SLIDING}?timeout={}&pos={}",
            LONG_POLL.as_millis(),
            first["pos"].as_str().expect("pos")
        );
        let poll = park(async move { bob.post(&path, request).await }).await;
        let sent = Instant::now();
        let event_id = send_ok(&alice, &room, "1", "across processes").await;
        let (status, answer) = woken(poll, sent).await;
        assert_eq!(status, 200, "{answer}");
        assert!(has_event(&answer["rooms"][&room]["timeline"], &event_id), "{answer}");
        procs.stop().await;
    }
);

both_backends!(typing_shows_in_a_sync_on_the_other_process, |backend| async move {
    let Some(procs) = TwoProcesses::start(backend).await else {
        return;
    };
    let (alice, bob, room, token) = alice_and_bob(&procs).await;
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/@alice:weft.test");
    let mut token = token;
    // Starting to type and stopping both reach the other process.
    for (body, typing_users) in [
        (json!({"typing": true, "timeout": 30_000}), json!(["@alice:weft.test"])),
        (json!({"typing": false}), json!([])),
    ] {
        let poll = park(long_poll(bob.clone(), token)).await;
        let changed = Instant::now();
        assert_eq!(alice.put(&typing, body).await.0, 200);
        let answer = woken(poll, changed).await;
        let event = ephemeral(&answer, &room, "m.typing").unwrap_or_else(|| panic!("no typing: {answer}"));
        assert_eq!(event["content"]["user_ids"], typing_users);
        token = next_batch(&answer);
    }
    procs.stop().await;
});

both_backends!(a_receipt_wakes_a_sync_on_the_other_process, |backend| async move {
    let Some(procs) = TwoProcesses::start(backend).await else {
        return;
    };
    let (alice, bob, room, _) = alice_and_bob(&procs).await;
    let event_id = send_ok(&bob, &room, "1", "read me").await;
    let token = next_batch(&sync(&bob, None, "").await);
    let poll = park(long_poll(bob.clone(), token)).await;
    let read = Instant::now();
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}");
    assert_eq!(alice.post(&path, json!({})).await.0, 200);
    let answer = woken(poll, read).await;
    let receipt = ephemeral(&answer, &room, "m.receipt").unwrap_or_else(|| panic!("no receipt: {answer}"));
    assert!(
        receipt["content"][&event_id]["m.read"]["@alice:weft.test"].is_object(),
        "{receipt}"
    );
    procs.stop().await;
});

both_backends!(
    a_process_that_lost_its_relay_connection_catches_up,
    |backend| async move {
        let Some(procs) = TwoProcesses::start(backend).await else {
            return;
        };
        if backend == Backend::Sqlite {
            return; // no relay to lose
        }
        let (alice, bob, room, token) = alice_and_bob(&procs).await;
        let poll = park(long_poll(bob.clone(), token)).await;
        // Both processes lose their listening connection; a message sent meanwhile is announced to
        // nobody, so the second process must look once it listens again.
        let db = weft_core::Db::connect(&procs.server.db.url, 1).await.expect("connect");
        let (killed,): (i64,) = sqlx::query_as(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'weft-relay'",
        )
        .fetch_one(db.pool())
        .await
        .expect("terminate the relay's connections");
        db.close().await;
        assert_eq!(killed, 2, "one listening connection per process");
        let sent = Instant::now();
        let first = send_ok(&alice, &room, "1", "while reconnecting").await;
        let answer = woken(poll, sent).await;
        assert!(
            has_event(&answer["rooms"]["join"][&room]["timeline"]["events"], &first),
            "{answer}"
        );
        // Listening again: the next message wakes a long-poll as before.
        let poll = park(long_poll(bob.clone(), next_batch(&answer))).await;
        let sent = Instant::now();
        let second = send_ok(&alice, &room, "2", "after reconnecting").await;
        let answer = woken(poll, sent).await;
        assert!(
            has_event(&answer["rooms"]["join"][&room]["timeline"]["events"], &second),
            "{answer}"
        );
        procs.stop().await;
    }
);

both_backends!(a_sliding_sync_pos_is_known_only_to_its_process, |backend| async move {
    let Some(procs) = TwoProcesses::start(backend).await else {
        return;
    };
    if backend == Backend::Sqlite {
        return; // one process knows every pos it gave
    }
    let (_, bob, _, _) = alice_and_bob(&procs).await;
    let mut bob_on_first = bob.clone();
    bob_on_first.base = procs.server.url();
    let request = json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}});
    // The same connection (user, device, conn_id) on both processes, each at its first pos.
    assert_eq!(bob.post(&format!("{SLIDING}?timeout=0"), request.clone()).await.0, 200);
    let (status, first) = bob_on_first
        .post(&format!("{SLIDING}?timeout=0"), request.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    // The first process's pos is unknown to the second, whose own first pos stands for what it
    // sent: the client must start over rather than be answered as if it had that.
    let pos = first["pos"].as_str().expect("pos");
    let (status, body) = bob.post(&format!("{SLIDING}?timeout=0&pos={pos}"), request).await;
    assert_eq!((status, &body["errcode"]), (400, &json!("M_UNKNOWN_POS")), "{body}");
    procs.stop().await;
});
