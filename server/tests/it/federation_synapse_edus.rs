//! Typing notifications and read receipts between weft and Synapse (`harness_synapse`), both
//! ways: a user on one server types and reads, and the other server's user sees it in /sync.
//!
//! Without `WEFT_TEST_SYNAPSE` (set by .ci/run) these tests print a SKIPPED line and pass.

use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, send_text},
    harness::Client,
    harness_federation::{FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
    rooms::create_room,
};

/// Waits until `client`'s syncs show an ephemeral event of `room` that `wanted` accepts. It
/// syncs as a client does, each request from the last one's `next_batch`: Synapse answers a
/// repeated identical sync request from a cache for a while.
async fn sees_ephemeral(client: &Client, room: &str, what: &str, wanted: impl Fn(&Value) -> bool) {
    let mut since: Option<String> = None;
    let found = tokio::time::timeout(crate::federation_rooms::PATIENCE, async {
        loop {
            let path = match &since {
                Some(token) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(token)),
                None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
            };
            let (status, sync) = client.get(&path).await;
            if status == 200 {
                let events = sync["rooms"]["join"][room]["ephemeral"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if events.iter().any(&wanted) {
                    return;
                }
                since = sync["next_batch"].as_str().map(str::to_owned);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for {what}");
}

/// The ID of the message with `body` as `client`'s server has it, once it has it.
async fn message_id(client: &Client, room: &str, body: &str) -> String {
    eventually(&format!("{body:?} seen"), || async {
        let (status, page) = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
                enc(room)
            ))
            .await;
        if status != 200 {
            return None;
        }
        page["chunk"]
            .as_array()?
            .iter()
            .find(|e| e["content"]["body"] == body)
            .and_then(|e| e["event_id"].as_str().map(str::to_owned))
    })
    .await
}

/// `actor` (user `actor_id`) types, then reads `watcher`'s message; `watcher`, on the other
/// server, sees both in its sync.
async fn typing_and_receipt_cross(actor: &Client, actor_id: &str, watcher: &Client, room: &str, what: &str) {
    let (status, body) = actor
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room), enc(actor_id)),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_ephemeral(watcher, room, &format!("{what}: typing seen across"), |e| {
        e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .is_some_and(|u| u.contains(&json!(actor_id)))
    })
    .await;

    let body = format!("read me ({what})");
    send_text(watcher, room, &body).await;
    let event_id = message_id(actor, room, &body).await;
    let (status, answer) = actor
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(&event_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    sees_ephemeral(watcher, room, &format!("{what}: read receipt seen across"), |e| {
        e["type"] == "m.receipt" && !e["content"][&event_id]["m.read"][actor_id].is_null()
    })
    .await;
}

both_backends!(typing_and_receipts_between_weft_and_synapse, |backend| async move {
    let Some(python) = synapse_python() else {
        return;
    };
    let ca = TestCa::new();
    let Some(weft) = FederatedServer::start(backend, &ca).await else {
        return;
    };
    let synapse = Synapse::start(&python, &ca).await;
    let alice = weft.register("alice", "password-alice").await;
    let sam = synapse.register("sam").await;
    let alice_id = format!("@alice:{}", weft.server_name());
    let sam_id = synapse.user_id("sam");

    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) = sam
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(weft.server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("sam joined, on weft", || async {
        (membership(&alice, &room, &sam_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    let both = async {
        typing_and_receipt_cross(&sam, &sam_id, &alice, &room, "Synapse to weft").await;
        typing_and_receipt_cross(&alice, &alice_id, &sam, &room, "weft to Synapse").await;
    };
    if let Err(panic) = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(both)).await {
        eprintln!("----- Synapse's homeserver.log -----\n{}", synapse.log_tail(300));
        std::panic::resume_unwind(panic);
    }

    drop(synapse);
    weft.stop().await;
});
