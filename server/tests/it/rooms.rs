//! Rooms on one server: creation, membership, sending, state, history, redaction.

use serde_json::{json, Value};

use crate::{both_backends, harness::*};

pub async fn create_room(client: &Client, body: Value) -> String {
    let (status, res) = client.post("/_matrix/client/v3/createRoom", body).await;
    assert_eq!(status, 200, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

pub async fn send_text(client: &Client, room: &str, txn: &str, body: &str) -> (u16, Value) {
    client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
}

/// Sends a text message that must be accepted; returns its event ID.
pub async fn send_ok(client: &Client, room: &str, txn: &str, body: &str) -> String {
    let (status, sent) = send_text(client, room, txn, body).await;
    assert_eq!(status, 200, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

pub async fn messages(client: &Client, room: &str, query: &str) -> (u16, Value) {
    client
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?{query}"))
        .await
}

/// The IDs of a room's messages, oldest first, as `/messages` pages them.
pub async fn message_ids(client: &Client, room: &str) -> Vec<String> {
    let (status, body) = messages(client, room, "dir=f&limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The room's forward extremities as stored.
async fn forward_extremities(server: &TestServer, room: &str) -> Vec<String> {
    let mut conn = server.running.as_ref().unwrap().state.db.conn().await.unwrap();
    weft_core::storage::rooms::head(&mut conn, room)
        .await
        .unwrap()
        .extremities
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

both_backends!(create_send_and_paginate, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(
        &alice,
        json!({"name": "Test room", "topic": "Testing", "preset": "private_chat"}),
    )
    .await;

    let (status, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"))
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("Test room")), "{body}");
    let (status, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"))
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("Test room")));
    let (status, body) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/state")).await;
    assert_eq!(status, 200);
    let types: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }

    let mut sent = Vec::new();
    for i in 0..25 {
        let (status, body) = send_text(&alice, &room, &format!("t{i}"), &format!("msg {i}")).await;
        assert_eq!(status, 200, "{body}");
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // Idempotent per transaction ID.
    let (_, again) = send_text(&alice, &room, "t3", "msg 3 again").await;
    assert_eq!(again["event_id"], sent[3]);

    // Paginate backwards 10 at a time and collect everything.
    let mut all = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let q = match &from {
            Some(f) => format!("dir=b&limit=10&from={f}"),
            None => "dir=b&limit=10".into(),
        };
        let (status, body) = messages(&alice, &room, &q).await;
        assert_eq!(status, 200, "{body}");
        all.extend(bodies(&body["chunk"]));
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
        if body["chunk"].as_array().unwrap().is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("msg {i}")).collect();
    assert_eq!(all, expected);
    // Forwards from the start gives creation order, and the transaction ID to its sender.
    let (_, body) = messages(&alice, &room, "dir=f&limit=100").await;
    let fwd = bodies(&body["chunk"]);
    assert_eq!(fwd, (0..25).map(|i| format!("msg {i}")).collect::<Vec<_>>());
    let first_msg = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.message")
        .unwrap();
    assert_eq!(first_msg["unsigned"]["transaction_id"], "t0");
    assert_eq!(body["chunk"][0]["type"], "m.room.create");
    // Filter by type.
    let filter = urlencode(&json!({"types": ["m.room.name"]}).to_string());
    let (_, body) = messages(&alice, &room, &format!("dir=b&limit=50&filter={filter}")).await;
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1);
    server.stop().await;
});

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

both_backends!(membership_and_auth_rules, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;

    // Invite-only: bob cannot join uninvited, cannot send.
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = send_text(&bob, &room, "x", "hi").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    // Invite, join, send.
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                json!({"user_id": "@bob:weft.test"})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
        200
    );
    assert_eq!(send_text(&bob, &room, "b1", "hello").await.0, 200);
    let (_, body) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(body["joined_rooms"], json!([room]));
    // Low power: bob may not change the name or kick.
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            json!({"name": "bob's"}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                json!({"user_id": "@carol:weft.test"})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        carol
            .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
            .await
            .0,
        200
    );
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            json!({"user_id": "@carol:weft.test"}),
        )
        .await;
    assert_eq!(status, 403);
    // Ban: banned users cannot rejoin; unban then invite works.
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/ban"),
                json!({"user_id": "@carol:weft.test", "reason": "spam"})
            )
            .await
            .0,
        200
    );
    let (status, body) = carol
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    assert_eq!(send_text(&carol, &room, "c", "let me in").await.0, 403);
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/unban"),
                json!({"user_id": "@carol:weft.test"})
            )
            .await
            .0,
        200
    );
    // Kick, leave, forget.
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/kick"),
                json!({"user_id": "@bob:weft.test"})
            )
            .await
            .0,
        200
    );
    assert_eq!(send_text(&bob, &room, "b2", "still here?").await.0, 403);
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/rooms/{room}/forget"), json!({}))
            .await
            .0,
        200
    );
    let (_, body) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(body["joined_rooms"], json!([]));
    let (status, _) = alice
        .post(&format!("/_matrix/client/v3/rooms/{room}/forget"), json!({}))
        .await;
    assert_eq!(status, 400, "joined users cannot forget");
    assert_eq!(
        alice
            .post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
            .await
            .0,
        200
    );

    // Public rooms are joinable by anyone; unknown rooms are 404.
    let public = create_room(&alice, json!({"preset": "public_chat", "room_alias_name": "lobby"})).await;
    let (status, body) = bob.post("/_matrix/client/v3/join/%23lobby:weft.test", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], public);
    let (status, body) = bob.post("/_matrix/client/v3/join/!nope:weft.test", json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = send_text(&bob, "!nope:weft.test", "n", "x").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    // Knocking (v7+).
    let knock_room = create_room(
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, body) = carol
        .post(
            &format!("/_matrix/client/v3/knock/{knock_room}"),
            json!({"reason": "pls"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{knock_room}/state/m.room.member/@carol:weft.test"
        ))
        .await;
    assert_eq!(body["membership"], "knock");
    server.stop().await;
});

both_backends!(redaction_and_bad_input, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (_, body) = send_text(&bob, &room, "1", "secret").await;
    let target = body["event_id"].as_str().unwrap().to_owned();
    let (_, body) = send_text(&alice, &room, "1", "alice's").await;
    let alices = body["event_id"].as_str().unwrap().to_owned();

    // Bob cannot redact alice's message (power 0 < redact 50): the redaction is refused.
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{alices}/r1"),
            json!({}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{target}/r2"),
            json!({"reason": "spoiler"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = messages(&alice, &room, "dir=b&limit=10").await;
    let redacted = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == target)
        .unwrap();
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert_eq!(redacted["unsigned"]["redacted_because"]["content"]["reason"], "spoiler");
    let still = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == alices)
        .unwrap();
    assert_eq!(
        still["content"]["body"], "alice's",
        "bob's redaction of alice's event must not apply"
    );

    // Oversized events are M_TOO_LARGE and are not stored.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"),
            json!({"body": "x".repeat(70_000)}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{body}");
    let (status, body) = alice
        .raw(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/arr"),
            "[1]",
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (_, body) = messages(&alice, &room, "dir=b&limit=5").await;
    assert_eq!(
        bodies(&body["chunk"])[0],
        "alice's",
        "nothing was stored by the bad sends"
    );
    let (status, body) = alice
        .post("/_matrix/client/v3/createRoom", json!({"room_version": "999"}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNSUPPORTED_ROOM_VERSION"))
    );
    server.stop().await;
});

both_backends!(every_room_version, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    for v in 1..=12 {
        let room = create_room(
            &alice,
            json!({"room_version": v.to_string(), "preset": "public_chat", "name": format!("v{v}")}),
        )
        .await;
        let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "v{v}: {body}");
        let (status, body) = send_text(&bob, &room, "1", "hi").await;
        assert_eq!(status, 200, "v{v}: {body}");
        let (_, body) = alice
            .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create"))
            .await;
        assert_eq!(body["room_version"], v.to_string());
        // What other servers will check: every stored event of the room carries this server's
        // valid signature and a matching content hash.
        let running = server.running.as_ref().unwrap();
        let keys = weft_core::rooms::own_keys(&running.state.core);
        let rules = weft_core::events::rules_for(&v.to_string()).unwrap();
        let stored: Vec<(String,)> = sqlx::query_as("SELECT json FROM events WHERE room_id = $1")
            .bind(&room)
            .fetch_all(running.state.db.pool())
            .await
            .unwrap();
        assert!(stored.len() >= 5, "v{v}: {} events", stored.len());
        for (json,) in stored {
            let object: ruma::CanonicalJsonObject = serde_json::from_str(&json).unwrap();
            assert_eq!(
                ruma::signatures::verify_event(&keys, &object, &rules).ok(),
                Some(ruma::signatures::Verified::All),
                "v{v}: {json}"
            );
        }
        if v == 12 {
            let (_, state) = alice
                .get(&format!(
                    "/_matrix/client/v3/rooms/{room}/state/m.room.create/?format=event"
                ))
                .await;
            let create_id = state["event_id"].as_str().unwrap_or_default().to_owned();
            assert_eq!(
                room,
                format!("!{}", &create_id[1..]),
                "v12 room IDs are the create event's hash"
            );
        }
    }
    server.stop().await;
});

both_backends!(a_transaction_id_sent_at_once_is_one_event, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    // A client retrying before its first attempt answered: every attempt gets the one event.
    let attempts = (0..8).map(|_| send_text(&alice, &room, "retried", "once"));
    let answers = futures::future::join_all(attempts).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let (_, page) = messages(&alice, &room, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), vec!["once"]);
    server.stop().await;
});

both_backends!(two_servers_on_one_database_send_into_one_room, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // A second process on the same database: each remembers the room's head from its own
    // last send, which the other's sends keep moving.
    let second = weft::server::start(server.config.clone())
        .await
        .expect("second server starts");
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let mut other = alice.clone();
    other.base = format!("http://{}", second.addrs[0]);
    let send_many = |client: Client, tag: &'static str| {
        let room = room.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(send_ok(&client, &room, &format!("{tag}{i}"), &format!("{tag} {i}")).await);
            }
            ids
        }
    };
    let (a, b) = tokio::join!(send_many(alice.clone(), "a"), send_many(other.clone(), "b"));
    let seen = message_ids(&alice, &room).await;
    assert_eq!(seen.len(), 50, "every acknowledged event once");
    for id in a.iter().chain(&b) {
        assert!(seen.contains(id), "acknowledged {id} missing");
    }
    // Each server's own sends keep their order, and the graph stayed linear.
    let order = |ids: &[String]| {
        ids.iter()
            .map(|id| seen.iter().position(|s| s == id))
            .collect::<Vec<_>>()
    };
    for ids in [&a, &b] {
        let positions = order(ids);
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
    let extremities = forward_extremities(&server, &room).await;
    assert_eq!(extremities.len(), 1, "{extremities:?}");
    second.shutdown().await;
    server.stop().await;
});

both_backends!(concurrent_sends_make_one_linear_history, |backend| async move {
    let Some(mut server) = TestServer::start(backend).await else {
        return;
    };
    let owner = server.register("owner", "pw").await;
    let room = create_room(&owner, json!({"preset": "public_chat"})).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let c = server.register(&format!("sender{i}"), "pw").await;
        assert_eq!(
            c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
            200
        );
        clients.push(c);
    }
    // 10 clients x 20 sends, all at once.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, room) = (c.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0..20 {
                acked.push(send_ok(&c, &room, &format!("c{i}-{j}"), &format!("{i}-{j}")).await);
            }
            acked
        }));
    }
    // Meanwhile someone outside the room tries too: refused each time, without failing the
    // sends that share a transaction with theirs.
    let outsider = server.register("outsider", "pw").await;
    let refused = {
        let room = room.clone();
        tokio::spawn(async move {
            for j in 0..20 {
                let (status, body) = send_text(&outsider, &room, &format!("o-{j}"), "let me in").await;
                assert_eq!(status, 403, "{body}");
                assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
            }
        })
    };
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    refused.await.unwrap();
    assert_eq!(acked.len(), 200);

    let seen = message_ids(&clients[0], &room).await;
    assert_eq!(seen.len(), 200, "every acknowledged event exactly once");
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 200);
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} missing");
    }
    // Every reader sees the same order, and each sender's own messages keep their order.
    for c in &clients[1..] {
        assert_eq!(message_ids(c, &room).await, seen);
    }
    // The graph is linear: one forward extremity.
    let extremities = forward_extremities(&server, &room).await;
    assert_eq!(extremities.len(), 1, "{extremities:?}");

    // Restart: nothing acknowledged is lost.
    server.restart().await;
    let reader = server.client().with_token(clients[3].token.as_deref().unwrap());
    assert_eq!(message_ids(&reader, &room).await, seen);
    assert_eq!(send_text(&reader, &room, "after-restart", "still works").await.0, 200);
    server.stop().await;
});

both_backends!(guests_follow_guest_access, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| c.registration.allow_guests = true).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let open = create_room(&alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.guest_access", "content": {"guest_access": "can_join"}}]})).await;
    let closed = create_room(&alice, json!({"preset": "public_chat"})).await;
    let (status, body) = server
        .client()
        .post("/_matrix/client/v3/register?kind=guest", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let guest = server.client().with_token(body["access_token"].as_str().unwrap());
    let (_, whoami) = guest.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(whoami["is_guest"], true);
    assert_eq!(
        guest
            .post(&format!("/_matrix/client/v3/join/{open}"), json!({}))
            .await
            .0,
        200
    );
    let (status, body) = guest
        .post(&format!("/_matrix/client/v3/join/{closed}"), json!({}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_GUEST_ACCESS_FORBIDDEN"))
    );
    server.stop().await;
});

both_backends!(restricted_join_through_an_allowed_room, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let space = create_room(&alice, json!({"preset": "public_chat"})).await;
    let restricted = create_room(&alice, json!({"room_version": "10", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]})).await;
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{space}"), json!({})).await.0,
        200
    );
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{restricted}"), json!({}))
        .await;
    assert_eq!(status, 200, "a member of the allowed room may join: {body}");
    let (_, member) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{restricted}/state/m.room.member/@bob:weft.test"
        ))
        .await;
    assert_eq!(member["join_authorised_via_users_server"], "@alice:weft.test");
    let (status, body) = carol
        .post(&format!("/_matrix/client/v3/join/{restricted}"), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    server.stop().await;
});

both_backends!(joins_with_an_empty_body_and_keeps_the_reason, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;

    // No body at all (Content-Length: 0), on both join endpoints.
    for (client, path) in [
        (&bob, format!("/_matrix/client/v3/join/{room}")),
        (&carol, format!("/_matrix/client/v3/rooms/{room}/join")),
    ] {
        let (status, body) = client.raw(reqwest::Method::POST, &path, "").await;
        assert_eq!(
            (status, body["room_id"].as_str()),
            (200, Some(room.as_str())),
            "{path}: {body}"
        );
    }
    // Other endpoints whose body fields are all optional take no body either.
    let (status, body) = bob
        .raw(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The reason is kept in the member event.
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            json!({"reason": "back again", "foo": "bar"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, member) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:weft.test"
        ))
        .await;
    assert_eq!((status, member["membership"].as_str()), (200, Some("join")), "{member}");
    assert_eq!(member["reason"], "back again", "{member}");
    server.stop().await;
});

both_backends!(
    a_malformed_room_id_in_the_path_is_an_invalid_param,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let alice = server.register("alice", "pw").await;
        for path in [
            "/_matrix/client/v3/rooms/notaroom/state",
            "/_matrix/client/v3/rooms/notaroom/messages",
            "/_matrix/client/v3/profile/notauser",
        ] {
            let (status, body) = alice.get(path).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (400, Some("M_INVALID_PARAM")),
                "{path}: {body}"
            );
        }
        server.stop().await;
    }
);

/// Every event of a room, oldest first, as `/messages` pages them.
async fn all_events(client: &Client, room: &str) -> Vec<Value> {
    let (status, body) = messages(client, room, "dir=f&limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

both_backends!(redactions_need_the_power_and_the_same_room, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let alices = send_ok(&alice, &room, "a1", "alice's").await;
    let elsewhere = send_ok(&alice, &other, "o1", "elsewhere").await;
    let before = all_events(&alice, &room).await.len();

    // Without the redact power level, on /redact and on /send: 403, nothing stored.
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{alices}/r1"),
            json!({}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.redaction/r2"),
            json!({"redacts": alices}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // An event of another room: 400, even for a sender who may redact.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{elsewhere}/r3"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let events = all_events(&alice, &room).await;
    assert_eq!(events.len(), before, "nothing was stored: {events:?}");
    let (_, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{other}/event/{elsewhere}"))
        .await;
    assert_eq!(body["content"]["body"], "elsewhere", "{body}");

    // Bob may still redact his own event.
    let bobs = send_ok(&bob, &room, "b1", "bob's").await;
    let (status, body) = bob
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{bobs}/r4"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
});

both_backends!(repeated_state_and_joins_write_nothing, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let topic_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    let (status, first) = alice.put(&topic_path, json!({"topic": "same"})).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, joined) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:weft.test?format=event"
        ))
        .await;
    let count = all_events(&alice, &room).await.len();

    // The same state again answers the current event's ID.
    let (status, again) = alice.put(&topic_path, json!({"topic": "same"})).await;
    assert_eq!((status, &again["event_id"]), (200, &first["event_id"]), "{again}");
    // A join while joined with the same profile too, on both join endpoints.
    for path in [
        format!("/_matrix/client/v3/join/{room}"),
        format!("/_matrix/client/v3/rooms/{room}/join"),
    ] {
        let (status, body) = bob.post(&path, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, member) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:weft.test?format=event"
        ))
        .await;
    assert_eq!(member["event_id"], joined["event_id"], "{member}");
    assert_eq!(all_events(&alice, &room).await.len(), count, "nothing new was written");

    // A change, or the same content from another sender, is a new event.
    let (status, changed) = alice.put(&topic_path, json!({"topic": "new"})).await;
    assert_eq!(status, 200, "{changed}");
    assert_ne!(changed["event_id"], first["event_id"]);
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{room}"), json!({"reason": "why not"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(all_events(&alice, &room).await.len(), count + 2);
    server.stop().await;
});

both_backends!(known_state_content_is_validated, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat", "name": "Kept"})).await;
    let count = all_events(&alice, &room).await.len();
    for (kind, content) in [
        ("m.room.name", json!({"name": 5})),
        ("m.room.name", json!({})),
        ("m.room.topic", json!({"topic": ["a"]})),
        ("m.room.join_rules", json!({"join_rule": 7})),
        ("m.room.join_rules", json!({})),
        ("m.room.history_visibility", json!({"history_visibility": true})),
        ("m.room.power_levels", json!({"users": {"@alice:weft.test": "lots"}})),
        ("m.room.power_levels", json!({"ban": {"no": 1}})),
    ] {
        let (status, body) = alice
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/{kind}"),
                content.clone(),
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_BAD_JSON")),
            "{kind} {content}: {body}"
        );
    }
    assert_eq!(all_events(&alice, &room).await.len(), count, "nothing was stored");
    let (_, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"))
        .await;
    assert_eq!(body["name"], "Kept");
    // Well-formed content still goes through, with custom fields.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
            json!({"topic": "ok", "custom": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
});
