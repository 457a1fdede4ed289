//! Rooms shared by three weft servers on loopback, over TLS from a test CA: joins by alias and
//! by ID, messages every way in one order, state changes, invites accepted and rejected, and
//! leaves, each seen by every server.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::Client,
    harness_federation::{start_federation, FederatedServer},
    rooms::create_room,
};

/// How long federation gets to deliver something before a test gives up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Polls `check` until it answers `Some`, or fails the test naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The room's message bodies as `client` sees them, oldest first.
pub(crate) async fn bodies(client: &Client, room: &str) -> Vec<String> {
    let (status, page) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(room)
        ))
        .await;
    if status != 200 {
        return Vec::new();
    }
    let mut list: Vec<String> = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    list.reverse();
    list
}

pub(crate) async fn send_text(client: &Client, room: &str, body: &str) {
    let (status, sent) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                weft_core::util::random_string(8)
            ),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
}

pub(crate) async fn membership(client: &Client, room: &str, user: &str) -> Option<String> {
    let (status, event) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        ))
        .await;
    (status == 200).then(|| event["membership"].as_str().unwrap_or_default().to_owned())
}

pub(crate) fn user_id(localpart: &str, server: &FederatedServer) -> String {
    format!("@{localpart}:{}", server.server_name())
}

both_backends!(three_servers_share_a_room, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 3).await else {
        return;
    };
    let [a, b, c] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let carol = c.register("carol", "password-carol").await;

    let room = create_room(
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby" }),
    )
    .await;
    // Bob joins by the alias of A, which B resolves over federation.
    let alias = format!("#lobby:{}", a.server_name());
    let (status, joined) = bob
        .post(&format!("/_matrix/client/v3/join/{}", enc(&alias)), json!({}))
        .await;
    assert_eq!(status, 200, "join by alias: {joined}");
    assert_eq!(joined["room_id"], room.as_str());
    // Carol joins by room ID through A.
    let (status, joined) = carol
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join by ID: {joined}");

    // Each server learns of every join: C's join reaches B through A.
    for (who, client) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        for joiner in [user_id("bob", b), user_id("carol", c)] {
            eventually(&format!("{who} to see {joiner} joined"), || async {
                (membership(client, &room, &joiner).await.as_deref() == Some("join")).then_some(())
            })
            .await;
        }
    }

    send_text(&alice, &room, "from A").await;
    eventually("A's message on B and C", || async {
        (bodies(&bob, &room).await == ["from A"] && bodies(&carol, &room).await == ["from A"]).then_some(())
    })
    .await;
    send_text(&bob, &room, "from B").await;
    eventually("B's message on A and C", || async {
        (bodies(&alice, &room).await.len() == 2 && bodies(&carol, &room).await.len() == 2).then_some(())
    })
    .await;
    send_text(&carol, &room, "from C").await;
    let expected = ["from A", "from B", "from C"];
    for (who, client) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        eventually(&format!("{who} to see all three messages in order"), || async {
            (bodies(client, &room).await == expected).then_some(())
        })
        .await;
    }

    // A state change on A is the current state everywhere.
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            json!({ "topic": "federated" }),
        )
        .await;
    assert_eq!(status, 200);
    for client in [&bob, &carol] {
        eventually("the topic everywhere", || async {
            let (status, topic) = client
                .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)))
                .await;
            (status == 200 && topic["topic"] == "federated").then_some(())
        })
        .await;
    }

    // A new display name reaches the room's members on every server.
    let (status, _) = carol
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&user_id("carol", c))),
            json!({ "displayname": "Carol of C" }),
        )
        .await;
    assert_eq!(status, 200);
    for client in [&alice, &bob] {
        eventually("carol's new name in the room everywhere", || async {
            let (status, member) = client
                .get(&format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&user_id("carol", c))
                ))
                .await;
            (status == 200 && member["displayname"] == "Carol of C").then_some(())
        })
        .await;
    }

    // Bob leaves; everyone sees it, and he receives no more messages.
    let (status, _) = bob
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200);
    for client in [&alice, &carol] {
        eventually("bob's leave everywhere", || async {
            (membership(client, &room, &user_id("bob", b)).await.as_deref() == Some("leave")).then_some(())
        })
        .await;
    }

    for server in servers {
        server.stop().await;
    }
});

both_backends!(invites_across_servers_are_accepted_and_rejected, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let dave = b.register("dave", "password-dave").await;
    let erin = b.register("erin", "password-erin").await;
    let room = create_room(&alice, json!({ "preset": "private_chat", "name": "Secret" })).await;

    for invitee in ["dave", "erin"] {
        let (status, body) = alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                json!({ "user_id": user_id(invitee, b) }),
            )
            .await;
        assert_eq!(status, 200, "invite {invitee}: {body}");
    }
    // The invite shows in the invitee's sync with the room's name from the stripped state.
    let invite_state: Value = eventually("dave's invite in his sync", || async {
        let (_, sync) = dave.get("/_matrix/client/v3/sync?timeout=0").await;
        sync["rooms"]["invite"].get(&room).cloned()
    })
    .await;
    let names: Vec<&Value> = invite_state["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names[0]["content"]["name"], "Secret", "{invite_state}");

    // Dave accepts, Erin rejects; Alice sees both.
    let (status, body) = dave
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "accept: {body}");
    let (status, body) = erin
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "reject: {body}");
    eventually("dave joined, on A", || async {
        (membership(&alice, &room, &user_id("dave", b)).await.as_deref() == Some("join")).then_some(())
    })
    .await;
    eventually("erin's rejection, on A", || async {
        (membership(&alice, &room, &user_id("erin", b)).await.as_deref() == Some("leave")).then_some(())
    })
    .await;
    // Erin's sync no longer offers the invite.
    let (_, sync) = erin.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");

    // Messages flow to the member who accepted.
    send_text(&alice, &room, "welcome").await;
    eventually("alice's message on B", || async {
        (bodies(&dave, &room).await == ["welcome"]).then_some(())
    })
    .await;

    for server in servers {
        server.stop().await;
    }
});

both_backends!(a_room_created_with_remote_invitees_invites_them, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = a.register("bob", "password-bob").await;
    let dave = b.register("dave", "password-dave").await;
    let (bob_id, dave_id) = (user_id("bob", a), user_id("dave", b));
    // A direct chat made with a local and a remote invitee, as clients start one.
    let room = create_room(
        &alice,
        json!({
            "preset": "trusted_private_chat", "name": "Made for two", "is_direct": true,
            "invite": [bob_id, dave_id],
        }),
    )
    .await;
    // Dave's server was asked (`/invite`): his sync offers the room, with its name and his
    // membership marked direct.
    let invite: Value = eventually("dave's invite in his sync", || async {
        let (_, sync) = dave.get("/_matrix/client/v3/sync?timeout=0").await;
        sync["rooms"]["invite"].get(&room).cloned()
    })
    .await;
    let events = invite["invite_state"]["events"].as_array().unwrap();
    let name = events.iter().find(|e| e["type"] == "m.room.name");
    assert_eq!(name.unwrap()["content"]["name"], "Made for two", "{invite}");
    let own = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == dave_id.as_str());
    assert_eq!(own.unwrap()["content"]["is_direct"], true, "{invite}");
    // Bob, local, is invited as before.
    let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&room).is_some(), "{sync}");

    // Dave accepts; the trusted private chat gave him power, as it gives local invitees.
    let (status, body) = dave
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "accept: {body}");
    eventually("dave joined, on A", || async {
        (membership(&alice, &room, &dave_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;
    let (status, power) = dave
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&room)
        ))
        .await;
    assert_eq!(status, 200, "{power}");
    assert_eq!(power["users"][&dave_id], 100, "{power}");
    send_text(&dave, &room, "hello from B").await;
    eventually("dave's message on A", || async {
        (bodies(&alice, &room).await == ["hello from B"]).then_some(())
    })
    .await;

    for server in servers {
        server.stop().await;
    }
});

both_backends!(rooms_of_every_version_federate, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    for version in 1..=12 {
        let room = create_room(
            &alice,
            json!({ "preset": "public_chat", "room_version": version.to_string() }),
        )
        .await;
        let (status, joined) = bob
            .post(
                &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {joined}");
        send_text(&bob, &room, &format!("hello v{version}")).await;
        // Sent once B's message is in, so that it follows it everywhere (sent at the same
        // time, the two would be concurrent, ordered differently on each server).
        eventually(&format!("B's message of the v{version} room on A"), || async {
            (bodies(&alice, &room).await.len() == 1).then_some(())
        })
        .await;
        send_text(&alice, &room, &format!("welcome v{version}")).await;
        let expected = [format!("hello v{version}"), format!("welcome v{version}")];
        for client in [&alice, &bob] {
            eventually(&format!("both messages of the v{version} room"), || async {
                (bodies(client, &room).await == expected).then_some(())
            })
            .await;
        }
    }
    for server in servers {
        server.stop().await;
    }
});

both_backends!(knocks_and_restricted_joins_cross_servers, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let carol = b.register("carol", "password-carol").await;
    let via = format!("?via={}", enc(a.server_name()));

    // A knock from B shows as a knock on both servers, with the room's name for the knocker.
    let knock_room = create_room(
        &alice,
        json!({
            "room_version": "10",
            "name": "Knock here",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }),
    )
    .await;
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/knock/{}{via}", enc(&knock_room)),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "knock: {body}");
    eventually("bob's knock on A", || async {
        (membership(&alice, &knock_room, &user_id("bob", b)).await.as_deref() == Some("knock")).then_some(())
    })
    .await;
    let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    let knock_state = &sync["rooms"]["knock"][&knock_room]["knock_state"]["events"];
    assert!(
        knock_state.as_array().is_some_and(|events| events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here")),
        "{sync}"
    );
    // Let in by an invite, then joined.
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&knock_room)),
            json!({ "user_id": user_id("bob", b) }),
        )
        .await;
    assert_eq!(status, 200, "invite after knock: {body}");
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{}{via}", enc(&knock_room)), json!({}))
        .await;
    assert_eq!(status, 200, "join after invite: {body}");
    eventually("bob joined the knock room, on A", || async {
        (membership(&alice, &knock_room, &user_id("bob", b)).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // A restricted room lets in members of its allowed room, authorised by A's user.
    let lobby = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let restricted = create_room(
        &alice,
        json!({
            "room_version": "10",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": lobby }] },
            }],
        }),
    )
    .await;
    // Carol is in no allowed room: refused.
    let (status, body) = carol
        .post(&format!("/_matrix/client/v3/join/{}{via}", enc(&restricted)), json!({}))
        .await;
    assert_eq!(status, 403, "a join without an allowed room: {body}");
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{}{via}", enc(&lobby)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{}{via}", enc(&restricted)), json!({}))
        .await;
    assert_eq!(status, 200, "a join through an allowed room: {body}");
    let (_, member) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&restricted),
            enc(&user_id("bob", b))
        ))
        .await;
    assert_eq!(member["membership"], "join", "{member}");
    assert_eq!(
        member["join_authorised_via_users_server"],
        user_id("alice", a),
        "{member}"
    );

    for server in servers {
        server.stop().await;
    }
});

/// The user's sync since `since` (`None`: an initial sync) with a long timeline.
async fn sync_since(client: &Client, since: Option<&str>) -> Value {
    let filter = enc(&json!({ "room": { "timeline": { "limit": 50 } } }).to_string());
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    let (status, sync) = client
        .get(&format!("/_matrix/client/v3/sync?timeout=0&filter={filter}{since}"))
        .await;
    assert_eq!(status, 200, "{sync}");
    sync
}

/// The `m.room.member` event about `user` in a sync section's timeline, if any.
fn membership_in(section: &Value, user: &str) -> Option<Value> {
    section["timeline"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
        .cloned()
}

both_backends!(a_remote_user_is_kicked_then_banned, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let (alice_id, bob_id) = (user_id("alice", a), user_id("bob", b));
    let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Strict" })).await;
    let join_path = format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name()));
    let (status, joined) = bob.post(&join_path, json!({})).await;
    assert_eq!(status, 200, "join: {joined}");
    eventually("bob joined, on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;
    let since = sync_since(&bob, None).await["next_batch"].as_str().unwrap().to_owned();

    // Alice kicks Bob: his sync moves the room to `leave`, with Alice's leave event for him.
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            json!({ "user_id": bob_id, "reason": "calm down" }),
        )
        .await;
    assert_eq!(status, 200, "kick: {body}");
    let kicked = eventually("bob's sync to show the kick", || async {
        let sync = sync_since(&bob, Some(&since)).await;
        sync["rooms"]["leave"].get(&room).cloned().map(|left| (sync, left))
    })
    .await;
    let (sync, left) = kicked;
    let kick = membership_in(&left, &bob_id).unwrap_or_else(|| panic!("the kick in bob's leave section: {left}"));
    assert_eq!(kick["content"]["membership"], "leave", "{kick}");
    assert_eq!(kick["sender"], alice_id.as_str(), "{kick}");
    assert_eq!(kick["content"]["reason"], "calm down", "{kick}");
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    assert_eq!(membership(&alice, &room, &bob_id).await.as_deref(), Some("leave"));
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Alice bans him: both servers hold the ban, and his sync shows it.
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            json!({ "user_id": bob_id, "reason": "enough" }),
        )
        .await;
    assert_eq!(status, 200, "ban: {body}");
    assert_eq!(membership(&alice, &room, &bob_id).await.as_deref(), Some("ban"));
    let ban = eventually("bob's sync to show the ban", || async {
        let sync = sync_since(&bob, Some(&since)).await;
        membership_in(&sync["rooms"]["leave"][&room], &bob_id)
    })
    .await;
    assert_eq!(ban["content"]["membership"], "ban", "{ban}");
    assert_eq!(ban["sender"], alice_id.as_str(), "{ban}");
    eventually("the ban on B", || async {
        (membership(&bob, &room, &bob_id).await.as_deref() == Some("ban")).then_some(())
    })
    .await;

    // He cannot come back, by ID or through the room's server.
    let (status, body) = bob.post(&join_path, json!({})).await;
    assert_eq!(status, 403, "a banned user's join: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_eq!(membership(&alice, &room, &bob_id).await.as_deref(), Some("ban"));
    // What Alice says now does not reach him.
    send_text(&alice, &room, "after the ban").await;
    let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    assert!(bodies(&bob, &room).await.iter().all(|b| b != "after the ban"));

    for server in servers {
        server.stop().await;
    }
});

both_backends!(typing_and_read_receipts_cross_servers, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bob_id = user_id("bob", b);
    eventually("bob joined, on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // Bob types on B: Alice's sync on A shows it.
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob_id)),
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, 200);
    let ephemeral_of = |sync: &Value| sync["rooms"]["join"][&room]["ephemeral"]["events"].clone();
    eventually("bob typing, in alice's sync", || async {
        let (_, sync) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
        let events = ephemeral_of(&sync);
        events
            .as_array()?
            .iter()
            .any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.contains(&json!(bob_id)))
            })
            .then_some(())
    })
    .await;

    // Bob reads Alice's message on B: Alice's sync on A shows his receipt on it.
    send_text(&alice, &room, "read me").await;
    let (_, page) = eventually("alice's message on B", || async {
        let (status, page) = bob
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5",
                enc(&room)
            ))
            .await;
        let found = page["chunk"]
            .as_array()?
            .iter()
            .any(|e| e["content"]["body"] == "read me");
        (status == 200 && found).then_some(((), page))
    })
    .await;
    let event_id = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "read me")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event_id)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("bob's receipt, in alice's sync", || async {
        let (_, sync) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
        let events = ephemeral_of(&sync);
        events
            .as_array()?
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][&event_id]["m.read"].get(&bob_id).is_some())
            .then_some(())
    })
    .await;

    for server in servers {
        server.stop().await;
    }
});

both_backends!(
    an_invite_is_rejected_when_the_inviting_server_is_down,
    |backend| async move {
        let Some((_ca, mut servers)) = start_federation(backend, 2).await else {
            return;
        };
        let b = servers.pop().unwrap();
        let a = servers.pop().unwrap();
        let alice = a.register("alice", "password-alice").await;
        let frank = b.register("frank", "password-frank").await;
        let room = create_room(&alice, json!({ "preset": "private_chat", "name": "Gone soon" })).await;
        let (status, body) = alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
                json!({ "user_id": user_id("frank", &b) }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually("frank's invite in his sync", || async {
            let (_, sync) = frank.get("/_matrix/client/v3/sync?timeout=0").await;
            sync["rooms"]["invite"].get(&room).map(|_| ())
        })
        .await;
        a.stop().await;
        // The inviting server cannot be told; the invite still leaves Frank's sync.
        let (status, body) = frank
            .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, sync) = frank.get("/_matrix/client/v3/sync?timeout=0").await;
        assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
        b.stop().await;
    }
);

both_backends!(another_servers_public_rooms_are_listed, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let room = create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Open house", "visibility": "public" }),
    )
    .await;
    create_room(&alice, json!({ "preset": "private_chat", "name": "Not listed" })).await;
    // Bob browses A's directory from B, unfiltered and filtered.
    let (status, listed) = bob
        .get(&format!(
            "/_matrix/client/v3/publicRooms?server={}",
            enc(a.server_name())
        ))
        .await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["Open house"], "{listed}");
    assert_eq!(listed["chunk"][0]["room_id"], room.as_str());
    let (status, filtered) = bob
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", enc(a.server_name())),
            json!({ "filter": { "generic_search_term": "nothing like it" } }),
        )
        .await;
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(filtered["chunk"], json!([]), "{filtered}");
    // B's own directory does not list A's room.
    let (_, own) = bob.get("/_matrix/client/v3/publicRooms").await;
    assert_eq!(own["chunk"], json!([]), "{own}");
    for server in servers {
        server.stop().await;
    }
});
