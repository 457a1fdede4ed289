//! A federated server killed with SIGKILL while the room goes on without it receives, once it
//! is back, every event it missed, in order and exactly once; so does it when the sending
//! server is itself killed with those events still queued. Both servers run as child processes
//! (`FederatedProcess`), so the kills are real.
//!
//! Timing: the sending server backs a dead destination off (5 s after the first failure,
//! doubling, `outbox::destinations`), so on its own it would try again only at the end of the
//! current backoff, which grows with the outage. Any signed request from the destination clears
//! the backoff (`federation::auth` calls `outbox::wake_destination`): here the returning
//! server's user says something in the room, whose transaction reaches the sender and makes it
//! deliver the backlog at once. The test relies on that, not on the backoff running out.
//!
//! A killed process also leaves its leases (the outbox's tailer, a destination's sender)
//! behind. On SQLite, which one process uses, the restarted server drops them at start; on
//! PostgreSQL, where other processes may share the database, the restarted process takes back
//! its own at once, since it holds them under the same name (its host and listeners, see
//! `server::lease_holder`).

use std::time::Duration;

use serde_json::json;

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, send_text, PATIENCE},
    harness::{Backend, Client},
    harness_federation::{FederatedProcess, TestCa},
    rooms::create_room,
};

/// The room's messages as `client` sees them in `/messages`, oldest first: (body, event ID).
async fn messages(client: &Client, room: &str) -> Vec<(String, String)> {
    let (status, page) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
            enc(room)
        ))
        .await;
    if status != 200 {
        return Vec::new();
    }
    page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| {
            (
                e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                e["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The bodies of `seen` that start with `prefix`, in order, after checking that no event ID
/// appears twice.
fn with_prefix(seen: &[(String, String)], prefix: &str) -> Vec<String> {
    let ids: std::collections::HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), seen.len(), "an event appears twice: {seen:?}");
    seen.iter()
        .filter(|(body, _)| body.starts_with(prefix))
        .map(|(body, _)| body.clone())
        .collect()
}

/// How long delivery may take after a server was killed and restarted: less than the 20 s at
/// least that a dead run's lease would still hold (renewed every 10 s, 30 s long), so that
/// leases the restarted server does not take back fail the test.
fn patience_after_kill(_backend: Backend) -> Duration {
    Duration::from_secs(15)
}

/// Waits until `client` sees exactly `expected` among the messages starting with `prefix`.
async fn sees_exactly(who: &str, client: &Client, room: &str, prefix: &str, expected: &[String], patience: Duration) {
    let mut last = Vec::new();
    let found = tokio::time::timeout(patience, async {
        loop {
            last = messages(client, room).await;
            if with_prefix(&last, prefix) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{who} did not come to see {expected:?} (exactly once, in order); last saw {last:?}"
    );
}

/// Waits until `sender` has recorded a failed send to `destination`: it tried while the
/// destination was down and backed off.
async fn backed_off(sender: &FederatedProcess, destination: &str) {
    let db = weft_core::Db::connect(&sender.db.url, 1)
        .await
        .expect("the sender's database");
    eventually(&format!("the sender to back {destination} off"), || async {
        let count: Option<i64> =
            sqlx::query_scalar("SELECT retry_count FROM federation_destinations WHERE destination = $1")
                .bind(destination)
                .fetch_optional(db.pool())
                .await
                .unwrap();
        (count.unwrap_or(0) > 0).then_some(())
    })
    .await;
    db.close().await;
}

both_backends!(a_killed_server_receives_what_it_missed, |backend| async move {
    let ca = TestCa::new();
    let Some(mut a) = FederatedProcess::spawn(backend, &ca).await else {
        return;
    };
    let Some(mut b) = FederatedProcess::spawn(backend, &ca).await else {
        return;
    };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let bob_id = format!("@bob:{}", b.server_name());
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, joined) = bob
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {joined}");
    eventually("bob's join on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;
    send_text(&alice, &room, "alice: before").await;
    send_text(&bob, &room, "bob: before").await;
    let before = ["alice: before".to_owned()];
    sees_exactly("bob", &bob, &room, "alice:", &before, PATIENCE).await;
    sees_exactly("alice", &alice, &room, "bob:", &["bob: before".to_owned()], PATIENCE).await;
    let (status, synced) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200, "{synced}");
    let since = synced["next_batch"].as_str().unwrap().to_owned();

    // B dies; Alice goes on talking. A tries B, fails and backs off.
    b.kill();
    let outage: Vec<String> = (0..12).map(|i| format!("alice: while B was down {i}")).collect();
    for line in &outage {
        send_text(&alice, &room, line).await;
    }
    backed_off(&a, b.server_name()).await;

    // B is back (same database, same ports). Bob's first words reach A, which clears A's
    // backoff for B and sends the backlog.
    b.start().await;
    send_text(&bob, &room, "bob: I am back").await;
    let expected: Vec<String> = before.iter().chain(&outage).cloned().collect();
    sees_exactly("bob", &bob, &room, "alice:", &expected, patience_after_kill(backend)).await;
    sees_exactly(
        "alice",
        &alice,
        &room,
        "bob:",
        &["bob: before".to_owned(), "bob: I am back".to_owned()],
        patience_after_kill(backend),
    )
    .await;
    // Bob's sync from before the kill brings exactly the missed messages, in order, once.
    let filter = enc(&json!({ "room": { "timeline": { "limit": 100 } } }).to_string());
    let (status, caught_up) = bob
        .get(&format!(
            "/_matrix/client/v3/sync?timeout=0&since={since}&filter={filter}"
        ))
        .await;
    assert_eq!(status, 200, "{caught_up}");
    let timeline = &caught_up["rooms"]["join"][&room]["timeline"];
    let synced: Vec<String> = timeline["events"]
        .as_array()
        .unwrap_or_else(|| panic!("the room in bob's sync: {caught_up}"))
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|body| body.starts_with("alice:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(synced, outage, "bob's sync since before the kill: {timeline}");
    assert_eq!(timeline["limited"], false, "{timeline}");

    // B dies again; Alice talks; then A is killed too with those messages still queued for B.
    b.kill();
    let second: Vec<String> = (0..12).map(|i| format!("alice: second outage {i}")).collect();
    for line in &second {
        send_text(&alice, &room, line).await;
    }
    backed_off(&a, b.server_name()).await;
    a.kill();
    a.start().await;
    send_text(&alice, &room, "alice: A restarted").await;
    b.start().await;
    send_text(&bob, &room, "bob: back again").await;
    let expected: Vec<String> = expected
        .iter()
        .chain(&second)
        .cloned()
        .chain(["alice: A restarted".to_owned()])
        .collect();
    sees_exactly("bob", &bob, &room, "alice:", &expected, patience_after_kill(backend)).await;
    sees_exactly(
        "alice",
        &alice,
        &room,
        "bob:",
        &[
            "bob: before".to_owned(),
            "bob: I am back".to_owned(),
            "bob: back again".to_owned(),
        ],
        patience_after_kill(backend),
    )
    .await;

    a.stop().await;
    b.stop().await;
});
