//! Room read endpoints: `/context`, `/event`, `/members`, `/joined_members`,
//! `/timestamp_to_event`.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, messages, send_ok, send_text, urlencode},
};

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn msgs(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// `(state_key, membership)` of the member events in a `/members` chunk, sorted.
fn members_of(body: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["state_key"].as_str().unwrap().to_owned(),
                e["content"]["membership"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(u, m)| (u.to_string(), m.to_string())).collect()
}

async fn join(client: &Client, room: &str) {
    let (status, body) = client
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The latest position of the room as a token, as a client would get it from `/messages`.
async fn now_token(client: &Client, room: &str) -> String {
    let (status, body) = messages(client, room, "dir=b&limit=1").await;
    assert_eq!(status, 200, "{body}");
    body["start"].as_str().unwrap().to_owned()
}

both_backends!(context_around_an_event, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    join(&bob, &room).await;
    // m0..m19, alice sending the even ones and bob the odd ones.
    let mut ids = Vec::new();
    for i in 0..20 {
        let sender = if i % 2 == 0 { &alice } else { &bob };
        ids.push(send_ok(sender, &room, &format!("t{i}"), &format!("m{i}")).await);
    }
    let path = |event: &str, query: &str| format!("/_matrix/client/v3/rooms/{room}/context/{event}?{query}");

    // Around the 10th message: 5 before (newest first), 5 after.
    let (status, ctx) = alice.get(&path(&ids[9], "limit=10")).await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["event_id"], ids[9].as_str());
    assert_eq!(ctx["event"]["content"]["body"], "m9");
    assert_eq!(bodies(&ctx["events_before"]), msgs((4..9).rev()));
    assert_eq!(bodies(&ctx["events_after"]), msgs(10..15));
    // m9 is bob's: its transaction ID is echoed to bob only.
    assert!(ctx["event"]["unsigned"].get("transaction_id").is_none(), "{ctx}");
    let (_, bob_ctx) = bob.get(&path(&ids[9], "limit=0")).await;
    assert_eq!(bob_ctx["event"]["unsigned"]["transaction_id"], "t9", "{bob_ctx}");
    // Without lazy loading the state is the full room state.
    let state_types: Vec<&str> = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.member",
    ] {
        assert!(state_types.contains(&t), "{t} missing from {state_types:?}");
    }

    // The tokens continue with /messages exactly where the context stopped.
    let start = ctx["start"].as_str().unwrap();
    let end = ctx["end"].as_str().unwrap();
    let (status, page) = messages(&alice, &room, &format!("dir=b&limit=3&from={start}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(bodies(&page["chunk"]), msgs([3, 2, 1].into_iter()));
    let (_, page) = messages(&alice, &room, &format!("dir=f&limit=3&from={end}")).await;
    assert_eq!(bodies(&page["chunk"]), msgs(15..18));

    // An odd limit gives the extra event to events_after; limit=0 returns only the event.
    let (_, ctx) = alice.get(&path(&ids[9], "limit=3")).await;
    assert_eq!(
        (bodies(&ctx["events_before"]), bodies(&ctx["events_after"])),
        (msgs(8..9), msgs(10..12))
    );
    let (_, ctx) = alice.get(&path(&ids[9], "limit=0")).await;
    assert_eq!(ctx["event"]["content"]["body"], "m9");
    assert!(
        bodies(&ctx["events_before"]).is_empty() && bodies(&ctx["events_after"]).is_empty(),
        "{ctx}"
    );
    // The last message has nothing after it; its end token still continues forwards.
    let (_, ctx) = alice.get(&path(&ids[19], "limit=4")).await;
    assert!(bodies(&ctx["events_after"]).is_empty());
    assert_eq!(send_text(&alice, &room, "t20", "m20").await.0, 200);
    let (_, page) = messages(&alice, &room, &format!("dir=f&from={}", ctx["end"].as_str().unwrap())).await;
    assert_eq!(bodies(&page["chunk"]), msgs(20..21));

    // The filter applies to the neighbours (not the event), and lazy loading keeps only the
    // senders' member events.
    let filter = urlencode(&json!({"senders": ["@alice:weft.test"], "lazy_load_members": true}).to_string());
    let (status, ctx) = bob.get(&path(&ids[9], &format!("limit=6&filter={filter}"))).await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "m9");
    assert_eq!(bodies(&ctx["events_before"]), msgs([8, 6, 4].into_iter()));
    assert_eq!(bodies(&ctx["events_after"]), msgs([10, 12, 14].into_iter()));
    let mut state: Vec<(&str, &str)> = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()))
        .collect();
    state.sort();
    // bob sent the event itself, alice the neighbours.
    assert_eq!(
        state,
        vec![
            ("m.room.member", "@alice:weft.test"),
            ("m.room.member", "@bob:weft.test")
        ]
    );
    let filter = urlencode(&json!({"senders": ["@alice:weft.test"], "lazy_load_members": true}).to_string());
    let (_, ctx) = bob.get(&path(&ids[8], &format!("limit=6&filter={filter}"))).await;
    let state: Vec<&str> = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(state, vec!["@alice:weft.test"]);

    // Negative: never a member of this (shared-history) room, unknown event, unknown room,
    // an event of another room.
    let private = create_room(&alice, json!({"preset": "private_chat"})).await;
    let (_, sent) = send_text(&alice, &private, "p1", "secret").await;
    let secret = sent["event_id"].as_str().unwrap();
    let (status, body) = carol
        .get(&format!("/_matrix/client/v3/rooms/{private}/context/{secret}"))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.get(&path("$unknown:weft.test", "")).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.get(&path(secret, "")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "another room's event: {body}"
    );
    let (status, _) = alice
        .get(&format!("/_matrix/client/v3/rooms/!nope:weft.test/context/{}", ids[0]))
        .await;
    assert_eq!(status, 404);
    let (status, body) = alice.get(&path(&ids[9], "filter=notjson")).await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
});

both_backends!(single_event_and_history_visibility, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(
        &alice,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    let (_, sent) = send_text(&alice, &room, "a1", "before bob").await;
    let early = sent["event_id"].as_str().unwrap().to_owned();
    join(&bob, &room).await;
    let (_, sent) = send_text(&alice, &room, "a2", "after bob").await;
    let late = sent["event_id"].as_str().unwrap().to_owned();
    let get = |client: &Client, event: &str| {
        let client = client.clone();
        let path = format!("/_matrix/client/v3/rooms/{room}/event/{event}");
        async move { client.get(&path).await }
    };

    let (status, body) = get(&alice, &early).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["event_id"].as_str(), body["content"]["body"].as_str()),
        (Some(early.as_str()), Some("before bob"))
    );
    assert_eq!(body["sender"], "@alice:weft.test");
    assert!(body["unsigned"]["age"].is_number(), "{body}");
    let (status, body) = get(&bob, &late).await;
    assert_eq!(
        (status, body["content"]["body"].as_str()),
        (200, Some("after bob")),
        "{body}"
    );
    // History from before bob joined is hidden from him: indistinguishable from missing.
    let (status, body) = get(&bob, &early).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    // The context endpoint hides the same event, and does not list it as a neighbour.
    let (status, _) = bob
        .get(&format!("/_matrix/client/v3/rooms/{room}/context/{early}"))
        .await;
    assert_eq!(status, 404);
    let (_, ctx) = bob
        .get(&format!("/_matrix/client/v3/rooms/{room}/context/{late}"))
        .await;
    assert!(
        !bodies(&ctx["events_before"]).contains(&"before bob".to_owned()),
        "{ctx}"
    );
    // Non-members, unknown events, and events looked up through another room are all 404.
    let (status, body) = get(&carol, &late).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = get(&alice, "$doesnotexist:weft.test").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let other = create_room(&alice, json!({})).await;
    let (status, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{other}/event/{late}"))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    // A redacted event is still returned, with its content stripped.
    let (status, _) = alice
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{late}/r1"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = get(&alice, &late).await;
    assert_eq!(status, 200);
    assert_eq!(body["content"], json!({}), "{body}");
    server.stop().await;
});

both_backends!(member_lists, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let eve = server.register("eve", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let members = |client: &Client, query: &str| {
        let client = client.clone();
        let path = format!("/_matrix/client/v3/rooms/{room}/members?{query}");
        async move { client.get(&path).await }
    };
    assert_eq!(send_text(&alice, &room, "a1", "hello").await.0, 200);
    let before_bob = now_token(&alice, &room).await;
    join(&bob, &room).await;
    let (status, _) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@carol:weft.test"}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = members(&alice, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        members_of(&body),
        pairs(&[
            ("@alice:weft.test", "join"),
            ("@bob:weft.test", "join"),
            ("@carol:weft.test", "invite")
        ])
    );
    // As of a token from before bob joined: only alice.
    let (status, body) = members(&alice, &format!("at={before_bob}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(members_of(&body), pairs(&[("@alice:weft.test", "join")]));
    // bob, who joined later, may look at that point of a shared-history room too.
    let (_, body) = members(&bob, &format!("at={before_bob}")).await;
    assert_eq!(members_of(&body), pairs(&[("@alice:weft.test", "join")]));

    // membership / not_membership filters (both together narrow the list).
    let (_, body) = members(&alice, "membership=join").await;
    assert_eq!(
        members_of(&body),
        pairs(&[("@alice:weft.test", "join"), ("@bob:weft.test", "join")])
    );
    let (_, body) = members(&alice, "membership=invite").await;
    assert_eq!(members_of(&body), pairs(&[("@carol:weft.test", "invite")]));
    let (_, body) = members(&alice, "not_membership=join").await;
    assert_eq!(members_of(&body), pairs(&[("@carol:weft.test", "invite")]));
    let (_, body) = members(&alice, "membership=join&not_membership=join").await;
    assert_eq!(members_of(&body), pairs(&[]));
    let (_, body) = members(&alice, "membership=ban").await;
    assert_eq!(members_of(&body), pairs(&[]));

    // Never joined: a stranger and an invitee are refused.
    let (status, body) = members(&dave, "").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = members(&carol, "").await;
    assert_eq!(status, 403);
    // Bad input.
    let (status, body) = members(&alice, "at=garbage").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, _) = alice.get("/_matrix/client/v3/rooms/!nope:weft.test/members").await;
    assert_eq!(status, 404);

    // bob leaves, then eve joins: bob sees the members as of his leave, not eve.
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
            .await
            .0,
        200
    );
    join(&eve, &room).await;
    let (status, body) = members(&bob, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        members_of(&body),
        pairs(&[
            ("@alice:weft.test", "join"),
            ("@bob:weft.test", "leave"),
            ("@carol:weft.test", "invite")
        ])
    );
    let now = now_token(&alice, &room).await;
    let (_, body) = members(&bob, &format!("at={now}")).await;
    assert!(!members_of(&body).iter().any(|(u, _)| u == "@eve:weft.test"), "{body}");
    let (_, body) = members(&alice, "").await;
    assert!(members_of(&body).contains(&("@eve:weft.test".into(), "join".into())));
    // carol rejects her invite: she was never in the room.
    assert_eq!(
        carol
            .post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
            .await
            .0,
        200
    );
    let (status, _) = members(&carol, "").await;
    assert_eq!(status, 403);
    server.stop().await;
});

both_backends!(joined_member_profiles, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
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
    join(&bob, &room).await;
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
    // alice sets a per-room name and avatar through her member event.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@alice:weft.test"),
            json!({"membership": "join", "displayname": "Alice in Room", "avatar_url": "mxc://weft.test/alice"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let path = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    let (status, body) = bob.get(&path).await;
    assert_eq!(status, 200, "{body}");
    let joined = body["joined"].as_object().unwrap();
    let mut users: Vec<&String> = joined.keys().collect();
    users.sort();
    assert_eq!(
        users,
        vec!["@alice:weft.test", "@bob:weft.test"],
        "invitees are not joined"
    );
    assert_eq!(joined["@alice:weft.test"]["display_name"], "Alice in Room");
    assert_eq!(joined["@alice:weft.test"]["avatar_url"], "mxc://weft.test/alice");

    // Not joined: invited, stranger, unknown room, and after leaving.
    let (status, body) = carol.get(&path).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let stranger = server.register("dave", "pw").await;
    assert_eq!(stranger.get(&path).await.0, 403);
    assert_eq!(
        alice
            .get("/_matrix/client/v3/rooms/!nope:weft.test/joined_members")
            .await
            .0,
        404
    );
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(bob.get(&path).await.0, 403);
    let (_, body) = alice.get(&path).await;
    assert_eq!(body["joined"].as_object().unwrap().len(), 1, "{body}");
    server.stop().await;
});

both_backends!(timestamp_to_event, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(
        &alice,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    // Three messages with distinct timestamps.
    let mut sent = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        let (_, body) = send_text(&alice, &room, &format!("t{i}"), &format!("m{i}")).await;
        let id = body["event_id"].as_str().unwrap().to_owned();
        let (_, event) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}")).await;
        sent.push((id, event["origin_server_ts"].as_i64().unwrap()));
    }
    assert!(sent[0].1 < sent[1].1 && sent[1].1 < sent[2].1, "{sent:?}");
    let lookup = |client: &Client, ts: i64, dir: &str| {
        let client = client.clone();
        let path = format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
        async move { client.get(&path).await }
    };

    for (ts, dir, want) in [
        (sent[1].1, "f", &sent[1]),
        (sent[1].1, "b", &sent[1]),
        (sent[1].1 + 1, "f", &sent[2]),
        (sent[1].1 - 1, "b", &sent[0]),
        (sent[2].1 + 60_000, "b", &sent[2]),
    ] {
        let (status, body) = lookup(&alice, ts, dir).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["event_id"].as_str(), body["origin_server_ts"].as_i64()),
            (Some(want.0.as_str()), Some(want.1)),
            "ts={ts} dir={dir}"
        );
    }
    // From the dawn of time forwards: the room's creation.
    let (_, body) = lookup(&alice, 0, "f").await;
    let (_, create) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/event/{}",
            body["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(create["type"], "m.room.create");
    // Nothing after the last event or before the first one.
    let (status, body) = lookup(&alice, sent[2].1 + 60_000, "f").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, _) = lookup(&alice, 0, "b").await;
    assert_eq!(status, 404);

    // bob joins later in a joined-history room: the earlier messages are invisible to him.
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    join(&bob, &room).await;
    // (The room's first events predate the history_visibility event, so they stay visible.)
    let (status, body) = lookup(&bob, sent[2].1, "b").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        sent.iter().all(|(id, _)| body["event_id"] != id.as_str()),
        "bob must not find m0..m2: {body}"
    );
    assert!(body["origin_server_ts"].as_i64().unwrap() < sent[0].1, "{body}");
    let (status, body) = lookup(&bob, sent[0].1, "f").await;
    assert_eq!(status, 200, "{body}");
    let (_, event) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/event/{}",
            body["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (event["type"].as_str(), event["state_key"].as_str()),
        (Some("m.room.member"), Some("@bob:weft.test")),
        "{event}"
    );

    // Non-members are refused; bad direction is rejected.
    let (status, body) = lookup(&carol, sent[1].1, "f").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = lookup(&alice, sent[1].1, "sideways").await;
    assert_eq!(status, 400);
    let (status, _) = alice
        .get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir=f"))
        .await;
    assert_eq!(status, 400, "ts is required");
    assert_eq!(lookup(&alice, 0, "f").await.0, 200);
    let (status, _) = alice
        .get("/_matrix/client/v1/rooms/!nope:weft.test/timestamp_to_event?ts=0&dir=f")
        .await;
    assert_eq!(status, 404);
    server.stop().await;
});
