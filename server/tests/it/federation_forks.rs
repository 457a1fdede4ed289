//! Forks: two servers that change a room's state while apart, or at the same moment, reach the
//! same current state once each has the other's events (state resolution v2 on both sides),
//! with no state reset, and events that lost the resolution never reach clients as current.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, send_text, user_id},
    harness::Client,
    harness_federation::{start_federation, FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
    rooms::create_room,
};

/// The room's current state as `client`'s server has it: (type, state key) -> event ID.
async fn state_ids(client: &Client, room: &str) -> BTreeMap<(String, String), String> {
    let (status, state) = client
        .get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room)))
        .await;
    assert_eq!(status, 200, "{state}");
    state
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["state_key"].as_str().unwrap_or_default().to_owned(),
                ),
                e["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until both servers have the same current state, holding `wanted`; answers it.
async fn converged(
    what: &str,
    one: &Client,
    other: &Client,
    room: &str,
    wanted: impl Fn(&BTreeMap<(String, String), String>) -> bool,
) -> BTreeMap<(String, String), String> {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let found = tokio::time::timeout(crate::federation_rooms::PATIENCE, async {
        loop {
            let (a, b) = (state_ids(one, room).await, state_ids(other, room).await);
            if a == b && wanted(&a) {
                return a;
            }
            last = (a, b);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        let differ: Vec<_> = last
            .0
            .keys()
            .chain(last.1.keys())
            .filter(|k| last.0.get(*k) != last.1.get(*k))
            .map(|k| (k, last.0.get(k), last.1.get(k)))
            .collect();
        panic!(
            "{what}: the servers' states differ in {differ:#?}, or miss what is wanted: {:#?}",
            last.0
        )
    })
}

async fn state_event(client: &Client, room: &str, kind: &str, key: &str) -> Value {
    let (status, content) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
            enc(room),
            enc(key)
        ))
        .await;
    assert_eq!(status, 200, "{kind} of {room}: {content}");
    content
}

async fn put_state(client: &Client, room: &str, kind: &str, key: &str, content: Value) -> String {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key)),
            content,
        )
        .await;
    assert_eq!(status, 200, "{kind}: {body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// The event IDs of the room's timeline as `client` sees it in `/messages`.
async fn timeline_ids(client: &Client, room: &str) -> Vec<String> {
    let (status, page) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
            enc(room)
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

both_backends!(power_levels_changed_apart_converge, |backend| async move {
    let Some((_ca, mut servers)) = start_federation(backend, 2).await else {
        return;
    };
    let alice = servers[0].register("alice", "password-alice").await;
    let bob = servers[1].register("bob", "password-bob").await;
    let (alice_id, bob_id) = (user_id("alice", &servers[0]), user_id("bob", &servers[1]));
    let carol_id = format!("@carol:{}", servers[1].server_name());
    let room = create_room(
        &alice,
        json!({
            "preset": "public_chat",
            "room_version": "11",
            "name": "Fork",
            "power_level_content_override": {
                "users": { alice_id.clone(): 100, bob_id.clone(): 50 },
                "state_default": 50,
                "events": { "m.room.power_levels": 50 },
            },
        }),
    )
    .await;
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(servers[0].server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins: {body}");
    converged("after bob's join", &alice, &bob, &room, |s| {
        s.contains_key(&("m.room.member".into(), bob_id.clone()))
    })
    .await;

    // What bob will send on B, read while the servers still agree.
    let mut promoted = state_event(&bob, &room, "m.room.power_levels", "").await;
    assert_eq!(promoted["users"][&bob_id], 50);
    promoted["users"][&carol_id] = json!(50);

    // Apart: alice demotes bob on A while B is down; then A goes down, B comes back, and bob
    // (still 50 there) promotes carol: two power levels events on the same state, neither
    // server able to tell the other. Then A comes back and they meet.
    servers[1].halt().await;
    let mut demoted = state_event(&alice, &room, "m.room.power_levels", "").await;
    demoted["users"][&bob_id] = json!(0);
    let alice_pl = put_state(&alice, &room, "m.room.power_levels", "", demoted).await;
    servers[0].halt().await;
    servers[1].resume().await;
    let bob_pl = put_state(&bob, &room, "m.room.power_levels", "", promoted).await;
    servers[0].resume().await;

    // Both resolve the fork the same way: alice's change sorts first (earlier) and demotes
    // bob, after which bob's change is not allowed.
    let state = converged("after the fork", &alice, &bob, &room, |s| {
        s.get(&("m.room.power_levels".into(), String::new())) == Some(&alice_pl)
    })
    .await;
    for user in [&alice_id, &bob_id] {
        assert!(
            state.contains_key(&("m.room.member".into(), user.clone())),
            "no state reset: {user} is still a member"
        );
    }
    assert_eq!(state_event(&bob, &room, "m.room.name", "").await["name"], "Fork");
    // Bob's change lost on A before it arrived there (soft failed): A's clients never see it.
    assert!(
        !timeline_ids(&alice, &room).await.contains(&bob_pl),
        "a soft-failed event reached A's timeline"
    );

    // The room goes on from the merged state: bob may still talk, both servers see it, and a
    // state change made now is checked against the merged state (bob has 0 < 50).
    send_text(&bob, &room, "after the fork").await;
    send_text(&alice, &room, "merged").await;
    eventually("both messages on both servers", || async {
        let a = crate::federation_rooms::bodies(&alice, &room).await;
        let b = crate::federation_rooms::bodies(&bob, &room).await;
        (a.len() == 2 && b.len() == 2).then_some(())
    })
    .await;
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
            json!({ "topic": "bob may not" }),
        )
        .await;
    assert_eq!(status, 403, "bob's power is the merged state's: {body}");
    converged("after the merge", &alice, &bob, &room, |s| {
        s.get(&("m.room.power_levels".into(), String::new())) == Some(&alice_pl)
    })
    .await;
    for server in servers {
        server.stop().await;
    }
});

/// Rounds of state changes made on both servers at the same moment, each round a fork of the
/// one before: different keys (the topic by `one`, `other`'s member event) and the same key (the
/// room name by both); both servers must agree after each. Then `other` leaves, which both
/// must apply.
async fn fork_rounds(one: &Client, one_id: &str, other: &Client, other_id: &str, room: &str) {
    for round in 0..4 {
        let topic = format!("topic {round}");
        let name = format!("Other {round}");
        let (topic_id, member_id, name_one, name_other) = tokio::join!(
            put_state(one, room, "m.room.topic", "", json!({ "topic": topic })),
            put_state(
                other,
                room,
                "m.room.member",
                other_id,
                json!({ "membership": "join", "displayname": name })
            ),
            put_state(one, room, "m.room.name", "", json!({ "name": format!("One {round}") })),
            put_state(
                other,
                room,
                "m.room.name",
                "",
                json!({ "name": format!("Other {round}") })
            ),
        );
        let state = converged(&format!("round {round}"), one, other, room, |s| {
            s.get(&("m.room.topic".into(), String::new())) == Some(&topic_id)
                && s.get(&("m.room.member".into(), other_id.to_owned())) == Some(&member_id)
                && s.get(&("m.room.name".into(), String::new()))
                    .is_some_and(|id| *id == name_one || *id == name_other)
        })
        .await;
        assert!(
            state.contains_key(&("m.room.member".into(), one_id.to_owned())),
            "{state:#?}"
        );
    }
    let (status, body) = other
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the leave after the forks, on both servers", || async {
        (membership(one, room, other_id).await.as_deref() == Some("leave")
            && membership(other, room, other_id).await.as_deref() == Some("leave"))
        .then_some(())
    })
    .await;
}

async fn join_via(client: &Client, room: &str, server: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/join/{}?server_name={}", enc(room), enc(server)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
}

/// A room where both users may change any state.
async fn shared_room(host: &Client, host_id: &str, guest_id: &str) -> String {
    create_room(
        host,
        json!({
            "preset": "public_chat",
            // Not 12, where creators may not be listed in the power levels.
            "room_version": "11",
            "power_level_content_override": { "users": { host_id: 100, guest_id: 100 } },
        }),
    )
    .await
}

both_backends!(concurrent_state_changes_converge, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let (alice_id, bob_id) = (user_id("alice", a), user_id("bob", b));
    let room = shared_room(&alice, &alice_id, &bob_id).await;
    join_via(&bob, &room, a.server_name()).await;
    converged("after bob's join", &alice, &bob, &room, |s| {
        s.contains_key(&("m.room.member".into(), bob_id.clone()))
    })
    .await;
    fork_rounds(&alice, &alice_id, &bob, &bob_id, &room).await;
    for server in servers {
        server.stop().await;
    }
});

both_backends!(concurrent_state_changes_with_synapse_converge, |backend| async move {
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
    let alice_id = user_id("alice", &weft);
    let sam_id = synapse.user_id("sam");
    // A room of each server, the other's user joined, forked on purpose.
    let weft_room = shared_room(&alice, &alice_id, &sam_id).await;
    join_via(&sam, &weft_room, weft.server_name()).await;
    let synapse_room = shared_room(&sam, &sam_id, &alice_id).await;
    join_via(&alice, &synapse_room, &synapse.server_name).await;
    for room in [&weft_room, &synapse_room] {
        converged("after the joins", &alice, &sam, room, |s| {
            s.contains_key(&("m.room.member".into(), sam_id.clone()))
                && s.contains_key(&("m.room.member".into(), alice_id.clone()))
        })
        .await;
    }
    fork_rounds(&alice, &alice_id, &sam, &sam_id, &weft_room).await;
    fork_rounds(&sam, &sam_id, &alice, &alice_id, &synapse_room).await;
    drop(synapse);
    weft.stop().await;
});
