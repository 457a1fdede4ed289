//! Joining a big room hosted on another server: the joining server stores the host's state and
//! auth chain (hundreds of events, checked and written in batches) and ends with the host's
//! state, except an event whose signature does not verify, which is left out.

use futures::StreamExt;
use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, membership, user_id},
    harness::Client,
    harness_federation::start_federation,
    rooms::create_room,
};

/// Members made on the host: more than one write batch of the joining server's.
const MEMBERS: usize = 300;

/// The joined members' user IDs, sorted.
async fn joined_members(client: &Client, room: &str) -> Vec<String> {
    let (status, body) = client
        .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut users: Vec<String> = body["joined"].as_object().expect("joined").keys().cloned().collect();
    users.sort();
    users
}

async fn power_levels(client: &Client, room: &str) -> Value {
    let (status, body) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(room)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

both_backends!(a_big_room_joins_with_the_hosts_state, |backend| async move {
    let Some((_ca, mut servers)) = start_federation(backend, 3).await else {
        return;
    };
    let alice = servers[0].register("alice", "password-alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;

    // Members of the host, joined through its client API.
    let host = servers[0].client();
    let joins = futures::stream::iter(0..MEMBERS)
        .map(|i| {
            let host = host.clone();
            let room = room.clone();
            async move {
                let member = host.register(&format!("member{i}"), "password-member").await;
                let (status, body) = member
                    .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        })
        .buffer_unordered(4);
    joins.collect::<Vec<()>>().await;
    // Power levels that name some of them, so that comparing them says something.
    let mut levels = power_levels(&alice, &room).await;
    for i in [1, 7, 42] {
        levels["users"][format!("@member{i}:{}", servers[0].server_name())] = json!(50);
    }
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)),
            levels.clone(),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Mallory joins from C; then C's key is replaced by another of the same key ID, so that her
    // join's signature, which A checked when it came, no longer verifies for anyone asking C
    // now: to B it is a forged event in A's state.
    let mallory = servers[2].register("mallory", "password-mallory").await;
    let (status, body) = mallory
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&room),
                enc(servers[0].server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "mallory's join: {body}");
    let mallory_id = user_id("mallory", &servers[2]);
    assert_eq!(membership(&alice, &room, &mallory_id).await.as_deref(), Some("join"));
    let key_path = servers[2].config.signing_key_path.clone();
    let old = std::fs::read_to_string(&key_path).expect("C's key file");
    let version = old.split_whitespace().nth(1).expect("a key version").to_owned();
    let other = weft_core::signing_key::load_or_create(&key_path.with_extension("other")).expect("another key");
    let other_text = std::fs::read_to_string(key_path.with_extension("other")).expect("the other key file");
    let seed = other_text.split_whitespace().nth(2).expect("a seed");
    assert_ne!(other.key_id, format!("ed25519:{version}"));
    std::fs::write(&key_path, format!("ed25519 {version} {seed}\n")).expect("C's key replaced");
    servers[2].restart().await;

    // Bob joins from B through A.
    let bob = servers[1].register("bob", "password-bob").await;
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&room),
                enc(servers[0].server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob's join: {body}");

    // B has A's members (bob among them), all but mallory, and A's power levels.
    let on_a = joined_members(&alice, &room).await;
    let on_b = joined_members(&bob, &room).await;
    assert_eq!(on_a.len(), MEMBERS + 3, "alice, the members, mallory and bob on A");
    let expected: Vec<String> = on_a.iter().filter(|u| **u != mallory_id).cloned().collect();
    assert_eq!(on_b, expected);
    assert_eq!(power_levels(&bob, &room).await, power_levels(&alice, &room).await);
    assert_eq!(power_levels(&bob, &room).await["users"], levels["users"]);
    let (status, _) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&mallory_id)
        ))
        .await;
    assert_eq!(status, 404, "mallory's unverifiable join is not in B's state");

    for server in servers {
        server.stop().await;
    }
});
