//! Presence across servers (`m.presence` EDUs): a user's status set on one server shows in the
//! `/sync` of users on another server who share a room with them, both ways, between two wefts
//! and between weft and Synapse; a user sharing no room sees none of it.

use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, user_id},
    harness::{Backend, Client},
    harness_federation::{start_federation, FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
    rooms::create_room,
};

async fn set_status(client: &Client, user: &str, presence: &str, status_msg: &str) {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(user)),
            json!({ "presence": presence, "status_msg": status_msg }),
        )
        .await;
    assert_eq!(status, 200, "{user} sets their presence: {body}");
}

/// `user`'s presence event in an initial sync of `client`'s, if any (a sync of its own each
/// time: Synapse answers a repeated identical one from a cache for a while).
async fn presence_in_sync(client: &Client, user: &str) -> Option<Value> {
    let filter = json!({ "room": { "timeline": { "limit": 1 + weft_core::util::now_ms() % 1000 } } }).to_string();
    let (status, sync) = client
        .get(&format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&filter)))
        .await;
    if status != 200 {
        return None;
    }
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user)
        .cloned()
}

/// Waits until `client`'s sync shows `user` in `state` with `status_msg`.
async fn sees_status(client: &Client, user: &str, state: &str, status_msg: &str) {
    eventually(&format!("{user} {state} ({status_msg}) in a sync"), || async {
        let event = presence_in_sync(client, user).await?;
        (event["content"]["presence"] == state && event["content"]["status_msg"] == status_msg).then_some(())
    })
    .await;
}

async fn join(client: &Client, room: &str, via: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

both_backends!(presence_crosses_between_wefts, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let carol = a.register("carol", "password-carol").await;
    let bob = b.register("bob", "password-bob").await;
    let (alice_id, bob_id) = (user_id("alice", a), user_id("bob", b));
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room, a.server_name()).await;
    eventually("bob joined, on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // Alice's status reaches Bob on B; Bob's reaches Alice on A.
    set_status(&alice, &alice_id, "online", "at lunch").await;
    sees_status(&bob, &alice_id, "online", "at lunch").await;
    set_status(&bob, &bob_id, "unavailable", "in a meeting").await;
    sees_status(&alice, &bob_id, "unavailable", "in a meeting").await;
    // A change is sent again, not only the first presence.
    set_status(&alice, &alice_id, "online", "back").await;
    sees_status(&bob, &alice_id, "online", "back").await;

    // Carol, on A but in no room with Bob, is not shown his presence.
    assert!(presence_in_sync(&carol, &bob_id).await.is_none());
    for server in servers {
        server.stop().await;
    }
});

/// A weft server and a Synapse federating, or `None` when Synapse or the backend is missing.
async fn weft_and_synapse(backend: Backend) -> Option<(TestCa, FederatedServer, Synapse)> {
    let python = synapse_python()?;
    let ca = TestCa::new();
    let weft = FederatedServer::start(backend, &ca).await?;
    let synapse = Synapse::start(&python, &ca).await;
    Some((ca, weft, synapse))
}

both_backends!(presence_crosses_between_weft_and_synapse, |backend| async move {
    let Some((_ca, weft, synapse)) = weft_and_synapse(backend).await else {
        return;
    };
    let alice = weft.register("alice", "password-alice").await;
    let sam = synapse.register("sam").await;
    let alice_id = format!("@alice:{}", weft.server_name());
    let sam_id = synapse.user_id("sam");
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&sam, &room, weft.server_name()).await;
    eventually("sam joined, on weft", || async {
        (membership(&alice, &room, &sam_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    set_status(&alice, &alice_id, "online", "weft side").await;
    sees_status(&sam, &alice_id, "online", "weft side").await;
    set_status(&sam, &sam_id, "online", "synapse side").await;
    sees_status(&alice, &sam_id, "online", "synapse side").await;
    weft.stop().await;
});
