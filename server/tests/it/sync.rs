//! `/sync`: initial and incremental, gaps, state in gaps, invites and leaves, typing,
//! receipts, long-polling, filters.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text, urlencode},
    sliding_sync::sliding,
};

pub async fn sync(client: &Client, since: Option<&str>, extra: &str) -> Value {
    let mut q = String::from("timeout=0");
    if let Some(s) = since {
        q.push_str(&format!("&since={s}"));
    }
    if !extra.is_empty() {
        q.push('&');
        q.push_str(extra);
    }
    let (status, body) = client.get(&format!("/_matrix/client/v3/sync?{q}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn timeline_bodies(room: &Value) -> Vec<String> {
    room["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(initial_and_incremental, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"name": "Sync room", "preset": "public_chat"})).await;
    send_text(&alice, &room, "1", "first").await;

    let initial = sync(&alice, None, "").await;
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(joined), vec!["first"]);
    let state_types: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        state_types.contains(&"m.room.create") && state_types.contains(&"m.room.name"),
        "{state_types:?}"
    );
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    let token = initial["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: the room is absent, and the token stays as it was (also while waiting).
    let empty = sync(&alice, Some(&token), "").await;
    assert!(empty["rooms"]["join"].get(&room).is_none(), "{empty}");
    assert_eq!(empty["next_batch"], token.as_str());
    let (status, waited) = alice
        .get(&format!("/_matrix/client/v3/sync?timeout=300&since={token}"))
        .await;
    assert_eq!((status, &waited["next_batch"]), (200, &json!(token)), "{waited}");

    for i in 0..3 {
        send_text(&alice, &room, &format!("m{i}"), &format!("msg {i}")).await;
    }
    let inc = sync(&alice, Some(&token), "").await;
    let joined = &inc["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(joined), vec!["msg 0", "msg 1", "msg 2"]);
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["timeline"]["events"][0]["unsigned"]["transaction_id"], "m0");
    assert_eq!(joined["state"]["events"].as_array().unwrap().len(), 0);
    // The same token again gives the same answer; the new token gives nothing.
    let again = sync(&alice, Some(&token), "").await;
    assert_eq!(
        timeline_bodies(&again["rooms"]["join"][&room]),
        vec!["msg 0", "msg 1", "msg 2"]
    );
    let next = inc["next_batch"].as_str().unwrap();
    assert!(sync(&alice, Some(next), "").await["rooms"]["join"].get(&room).is_none());
    server.stop().await;
});

both_backends!(gaps_and_state_in_gaps, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"name": "Before", "preset": "public_chat"})).await;
    let token = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..5 {
        send_text(&alice, &room, &format!("a{i}"), &format!("early {i}")).await;
    }
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            json!({"name": "After"}),
        )
        .await;
    for i in 0..15 {
        send_text(&alice, &room, &format!("b{i}"), &format!("late {i}")).await;
    }
    let filter = urlencode(&json!({"room": {"timeline": {"limit": 5}}}).to_string());
    let inc = sync(&alice, Some(&token), &format!("filter={filter}")).await;
    let joined = &inc["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(
        timeline_bodies(joined),
        (10..15).map(|i| format!("late {i}")).collect::<Vec<_>>()
    );
    // The name changed inside the gap: it is in the state section.
    let name = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .expect("name change in state");
    assert_eq!(name["content"]["name"], "After");
    // prev_batch continues with /messages exactly where the timeline starts.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (_, page) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={prev}"
        ))
        .await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, vec!["late 9", "late 8", "late 7"]);
    server.stop().await;
});

both_backends!(invites_leaves_and_lazy_members, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let bob_token = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let room = create_room(&alice, json!({"name": "Invite me", "invite": ["@bob:weft.test"]})).await;
    let inc = sync(&bob, Some(&bob_token), "").await;
    let invite = &inc["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invite me"),
        "{inc}"
    );
    assert!(invite
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));
    let t2 = inc["next_batch"].as_str().unwrap().to_owned();

    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let inc = sync(&bob, Some(&t2), "").await;
    assert!(inc["rooms"]["join"].get(&room).is_some(), "joined room appears in join");
    assert!(inc["rooms"]["invite"].get(&room).is_none());
    // Newly joined: full state.
    assert!(inc["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(inc["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap())
        .any(|e| e["type"] == "m.room.create"));
    let t3 = inc["next_batch"].as_str().unwrap().to_owned();

    // Lazy loading: state carries only the members of timeline senders.
    let carol = server.register("carol", "pw").await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@carol:weft.test"}),
        )
        .await;
    carol.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    send_text(&alice, &room, "x", "hello").await;
    let lazy =
        urlencode(&json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}).to_string());
    let initial = sync(&bob, None, &format!("filter={lazy}")).await;
    let members: Vec<&str> = initial["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(members.contains(&"@alice:weft.test"), "{members:?}");
    assert!(
        !members.contains(&"@carol:weft.test"),
        "carol sent nothing in the timeline: {members:?}"
    );

    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            json!({"user_id": "@bob:weft.test"}),
        )
        .await;
    let inc = sync(&bob, Some(&t3), "").await;
    let left = &inc["rooms"]["leave"][&room];
    assert!(
        left["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == "@bob:weft.test"
                && e["content"]["membership"] == "leave"),
        "{inc}"
    );
    assert!(inc["rooms"]["join"].get(&room).is_none());
    server.stop().await;
});

both_backends!(typing_and_receipts, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (_, sent) = send_text(&alice, &room, "1", "read me").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let token = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();

    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@alice:weft.test"),
            json!({"typing": true, "timeout": 1500}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@bob:weft.test"),
            json!({"typing": true, "timeout": 1500}),
        )
        .await;
    assert_eq!(status, 403, "cannot type for others");
    let inc = sync(&bob, Some(&token), "").await;
    let typing = inc["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .cloned()
        .expect("typing event");
    assert_eq!(typing["content"]["user_ids"], json!(["@alice:weft.test"]));
    let t2 = inc["next_batch"].as_str().unwrap().to_owned();
    // Typing expires on its own and the expiry is synced.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let inc = sync(&bob, Some(&t2), "").await;
    let typing = inc["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .cloned()
        .expect("typing expiry");
    assert_eq!(typing["content"]["user_ids"], json!([]));
    let t3 = inc["next_batch"].as_str().unwrap().to_owned();

    assert_eq!(
        bob.post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}"),
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        bob.post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/$nope"),
            json!({})
        )
        .await
        .0,
        404
    );
    let inc = sync(&alice, Some(&t3), "").await;
    let receipt = inc["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("receipt");
    assert!(
        receipt["content"][&event_id]["m.read"]["@bob:weft.test"]["ts"].is_number(),
        "{receipt}"
    );
    // Private receipts stay private.
    let (_, sent) = send_text(&alice, &room, "2", "again").await;
    let second = sent["event_id"].as_str().unwrap().to_owned();
    let t4 = inc["next_batch"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
        json!({"m.fully_read": second, "m.read.private": second}),
    )
    .await;
    let inc = sync(&alice, Some(&t4), "").await;
    let leaked = inc["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .map(|a| a.iter().any(|e| e["content"][&second]["m.read.private"].is_object()))
        .unwrap_or(false);
    assert!(!leaked, "{inc}");
    let own = sync(&bob, Some(&t4), "").await;
    let room_json = &own["rooms"]["join"][&room];
    assert!(
        room_json["ephemeral"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"][&second]["m.read.private"]["@bob:weft.test"].is_object()),
        "{own}"
    );
    assert!(room_json["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == second));
    server.stop().await;
});

both_backends!(long_poll_wakes_on_send, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let token = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();

    let poller = bob.clone();
    let path = format!("/_matrix/client/v3/sync?timeout=20000&since={token}");
    let handle = tokio::spawn(async move {
        let (status, body) = poller.get(&path).await;
        (status, body, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!handle.is_finished(), "long-poll returned before anything happened");
    let sent_at = Instant::now();
    send_text(&alice, &room, "1", "wake up").await;
    let (status, body, returned_at) = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(timeline_bodies(&body["rooms"]["join"][&room]), vec!["wake up"]);
    let waited = returned_at.duration_since(sent_at);
    assert!(
        waited < Duration::from_millis(1000),
        "long-poll took {waited:?} after the send"
    );

    // A timeout with nothing to report returns empty after the timeout.
    let t2 = body["next_batch"].as_str().unwrap();
    let start = Instant::now();
    let (_, empty) = bob
        .get(&format!("/_matrix/client/v3/sync?timeout=300&since={t2}"))
        .await;
    assert!(start.elapsed() >= Duration::from_millis(290));
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty());
    server.stop().await;
});

both_backends!(unread_counts_per_thread, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (_, root) = send_text(&bob, &room, "root", "thread root").await;
    let root = root["event_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        bob.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"),
            json!({"msgtype": "m.text", "body": format!("in thread {i}"), "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    }
    let threaded = urlencode(&json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string());
    let body = sync(&alice, None, &format!("filter={threaded}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 1,
        "only the root counts for the room: {joined}"
    );
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 2);
    // Without the filter flag everything counts for the room.
    let plain = sync(&alice, None, "").await;
    assert_eq!(
        plain["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        3
    );
    assert!(
        plain["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.push_rules"),
        "initial sync carries push rules"
    );
    server.stop().await;
});

both_backends!(many_long_polls_share_a_small_pool, |backend| async move {
    // More waiting syncs than pooled connections: each must still answer, none may starve the
    // sender (a sync that held one connection while waiting for another would deadlock here).
    let Some(server) = TestServer::start_with(backend, |c| c.database.max_connections = Some(3)).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let mut receivers = Vec::new();
    for i in 0..12 {
        let c = server.register(&format!("r{i}"), "pw").await;
        c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        let token = sync(&c, None, "").await["next_batch"].as_str().unwrap().to_owned();
        receivers.push((c, token));
    }
    let mut polls = Vec::new();
    for (c, token) in receivers {
        let room = room.clone();
        polls.push(tokio::spawn(async move {
            // Other users' presence may wake a poll first; follow next_batch like a client.
            let mut since = token;
            for _ in 0..20 {
                let (status, body) = c
                    .get(&format!("/_matrix/client/v3/sync?timeout=15000&since={since}"))
                    .await;
                assert_eq!(status, 200, "{body}");
                let bodies = timeline_bodies(&body["rooms"]["join"][&room]);
                if !bodies.is_empty() {
                    return bodies;
                }
                since = body["next_batch"].as_str().unwrap().to_owned();
            }
            Vec::new()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    assert_eq!(send_text(&alice, &room, "x", "to everyone").await.0, 200);
    for p in polls {
        let bodies = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("sync answered")
            .unwrap();
        assert_eq!(bodies, vec!["to everyone"]);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "fan-out took {:?}",
        start.elapsed()
    );
    server.stop().await;
});

both_backends!(account_data_in_sync_wakes_long_poll, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({})).await;
    let token = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let poller = alice.clone();
    let path = format!("/_matrix/client/v3/sync?timeout=20000&since={token}");
    let handle = tokio::spawn(async move { poller.get(&path).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    alice
        .put(
            "/_matrix/client/v3/user/@alice:weft.test/account_data/org.example.theme",
            json!({"dark": true}),
        )
        .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "woke after {:?}",
        start.elapsed()
    );
    assert!(
        body["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "org.example.theme" && e["content"]["dark"] == true),
        "{body}"
    );
    let next = body["next_batch"].as_str().unwrap().to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/user/@alice:weft.test/rooms/{room}/account_data/m.tag"),
            json!({"tags": {"u.work": {}}}),
        )
        .await;
    let inc = sync(&alice, Some(&next), "").await;
    let events = inc["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"].is_object()),
        "{inc}"
    );
    server.stop().await;
});

// An initial sync reads all rooms at once: each room must still get its own timeline, state,
// receipts, counts and summary; an incremental sync carries the summary only where a
// membership changed.
both_backends!(many_rooms_initial_and_summaries, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let alpha = create_room(&alice, json!({"name": "Alpha", "preset": "public_chat"})).await;
    let beta = create_room(&alice, json!({"name": "Beta", "preset": "public_chat"})).await;
    let gamma = create_room(&alice, json!({"name": "Gamma", "preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{alpha}"), json!({})).await;
    bob.post(&format!("/_matrix/client/v3/join/{gamma}"), json!({})).await;
    let mut alpha_ids = Vec::new();
    for i in 0..12 {
        let (_, sent) = send_text(&bob, &alpha, &format!("a{i}"), &format!("a{i}")).await;
        alpha_ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    let (status, _) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{alpha}/receipt/m.read/{}", alpha_ids[9]),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    for i in 0..2 {
        send_text(&alice, &beta, &format!("b{i}"), &format!("b{i}")).await;
    }
    let (status, _) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{beta}/invite"),
            json!({"user_id": "@carol:weft.test"}),
        )
        .await;
    assert_eq!(status, 200);
    send_text(&bob, &gamma, "c0", "c0").await;

    let filter = urlencode(&json!({"room": {"timeline": {"limit": 5}}}).to_string());
    let initial = sync(&alice, None, &format!("filter={filter}")).await;
    let rooms = &initial["rooms"]["join"];
    let name_of = |room: &Value| {
        room["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(room["timeline"]["events"].as_array().unwrap())
            .find(|e| e["type"] == "m.room.name")
            .map(|e| e["content"]["name"].as_str().unwrap().to_owned())
    };

    let a = &rooms[&alpha];
    assert_eq!(timeline_bodies(a), (7..12).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(a["timeline"]["limited"], true);
    assert_eq!(name_of(a).as_deref(), Some("Alpha"));
    assert_eq!(a["unread_notifications"]["notification_count"], 2, "{a}");
    assert_eq!(a["summary"]["m.joined_member_count"], 2);
    assert_eq!(a["summary"]["m.invited_member_count"], 0);
    // Named, so no heroes (as Synapse answers; the spec requires them for unnamed rooms).
    assert!(a["summary"].get("m.heroes").is_none(), "{a}");
    let receipt = a["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .expect("receipt in alpha");
    assert!(
        receipt["content"][&alpha_ids[9]]["m.read"]["@alice:weft.test"].is_object(),
        "{receipt}"
    );

    let b = &rooms[&beta];
    assert_eq!(timeline_bodies(b), vec!["b0", "b1"]);
    assert_eq!(name_of(b).as_deref(), Some("Beta"));
    assert_eq!(b["unread_notifications"]["notification_count"], 0);
    assert_eq!(b["summary"]["m.joined_member_count"], 1);
    assert_eq!(b["summary"]["m.invited_member_count"], 1);
    assert!(b["summary"].get("m.heroes").is_none(), "{b}");
    assert!(b["ephemeral"]["events"].as_array().unwrap().is_empty(), "{b}");

    let c = &rooms[&gamma];
    assert_eq!(timeline_bodies(c), vec!["c0"]);
    assert_eq!(name_of(c).as_deref(), Some("Gamma"));
    assert_eq!(c["unread_notifications"]["notification_count"], 1);
    assert_eq!(c["summary"]["m.joined_member_count"], 2);

    // A message changes no summary; a join does.
    let token = initial["next_batch"].as_str().unwrap().to_owned();
    send_text(&bob, &alpha, "a12", "a12").await;
    carol.post(&format!("/_matrix/client/v3/join/{beta}"), json!({})).await;
    let inc = sync(&alice, Some(&token), &format!("filter={filter}")).await;
    let rooms = &inc["rooms"]["join"];
    assert_eq!(timeline_bodies(&rooms[&alpha]), vec!["a12"]);
    assert_eq!(rooms[&alpha]["unread_notifications"]["notification_count"], 3);
    assert!(rooms[&alpha]["summary"].get("m.joined_member_count").is_none(), "{inc}");
    assert_eq!(rooms[&beta]["summary"]["m.joined_member_count"], 2);
    assert_eq!(rooms[&beta]["summary"]["m.invited_member_count"], 0);
    assert!(rooms.get(&gamma).is_none(), "{inc}");
    server.stop().await;
});

both_backends!(a_sync_over_many_rooms_reports_each_rooms_own, |backend| async move {
    // More rooms than a short list binds one by one: the rooms go to the database as one list
    // (`storage::InList`), and each room must still get its own timeline, state, summary,
    // unread counts and receipts, in an initial and in an incremental sync.
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    const ROOMS: usize = 11;
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = create_room(&alice, json!({"name": format!("Room {r}"), "preset": "public_chat"})).await;
        bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        // Room r gets r + 2 messages from Bob, the last of which Alice marks as read in the
        // even rooms.
        let mut last = String::new();
        for i in 0..r + 2 {
            let (_, sent) = send_text(&bob, &room, &format!("m{i}"), &format!("room {r} message {i}")).await;
            last = sent["event_id"].as_str().unwrap().to_owned();
        }
        if r % 2 == 0 {
            let (status, _) = alice
                .post(
                    &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200);
        }
        rooms.push(room);
    }
    let filter = urlencode(&json!({"room": {"timeline": {"limit": 3}}}).to_string());
    let initial = sync(&alice, None, &format!("filter={filter}")).await;
    for (r, room) in rooms.iter().enumerate() {
        let joined = &initial["rooms"]["join"][room];
        let expected: Vec<String> = (r.saturating_sub(1)..r + 2)
            .map(|i| format!("room {r} message {i}"))
            .collect();
        assert_eq!(timeline_bodies(joined), expected, "room {r}");
        let name = joined["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(joined["timeline"]["events"].as_array().unwrap())
            .find(|e| e["type"] == "m.room.name")
            .map(|e| e["content"]["name"].clone());
        assert_eq!(name, Some(json!(format!("Room {r}"))), "room {r}");
        assert_eq!(joined["summary"]["m.joined_member_count"], 2, "room {r}");
        assert!(joined["summary"].get("m.heroes").is_none(), "named room {r}");
        let unread = if r % 2 == 0 { 0 } else { r + 2 };
        assert_eq!(
            joined["unread_notifications"]["notification_count"], unread,
            "room {r}: {}",
            joined["unread_notifications"]
        );
    }

    // Incremental: one new message in every room but the first.
    let token = initial["next_batch"].as_str().unwrap().to_owned();
    for (r, room) in rooms.iter().enumerate().skip(1) {
        send_text(&bob, room, "late", &format!("room {r} late")).await;
    }
    let inc = sync(&alice, Some(&token), &format!("filter={filter}")).await;
    assert!(
        inc["rooms"]["join"].get(&rooms[0]).is_none(),
        "{}",
        inc["rooms"]["join"]
    );
    for (r, room) in rooms.iter().enumerate().skip(1) {
        let joined = &inc["rooms"]["join"][room];
        assert_eq!(timeline_bodies(joined), vec![format!("room {r} late")], "room {r}");
        assert_eq!(joined["timeline"]["limited"], false, "room {r}");
    }
});

/// The room's `m.typing` user IDs in an incremental sync.
fn typing_users(sync: &Value, room: &str) -> Value {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.typing"))
        .map(|e| e["content"]["user_ids"].clone())
        .unwrap_or(Value::Null)
}

both_backends!(typing_stops_without_a_timeout, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let token = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room}/typing/@alice:weft.test");

    let (status, body) = alice.put(&path, json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(status, 200, "{body}");
    let inc = sync(&bob, Some(&token), "").await;
    assert_eq!(typing_users(&inc, &room), json!(["@alice:weft.test"]), "{inc}");
    let token = inc["next_batch"].as_str().unwrap().to_owned();

    // `{"typing": false}` needs no timeout, and stops at once.
    let (status, body) = alice.put(&path, json!({"typing": false})).await;
    assert_eq!(status, 200, "{body}");
    let inc = sync(&bob, Some(&token), "").await;
    assert_eq!(typing_users(&inc, &room), json!([]), "{inc}");
    server.stop().await;
});

/// The room's `m.tag` content in a sync's per-room account data, if it carries one.
fn synced_tags(sync: &Value, room: &str) -> Option<Value> {
    sync["rooms"]["join"][room]["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.tag")
        .map(|e| e["content"].clone())
}

both_backends!(room_tags_are_synced_account_data, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let tags = format!("/_matrix/client/v3/user/@alice:weft.test/rooms/{room}/tags");
    let favourite = format!("{tags}/m.favourite");
    let (status, body) = alice.get(&tags).await;
    assert_eq!((status, body), (200, json!({"tags": {}})));
    let token = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let sliding_body = json!({
        "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 0 } },
        "extensions": { "account_data": { "enabled": true } },
    });
    let (status, first) = sliding(&alice, None, 0, sliding_body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let pos = first["pos"].as_str().unwrap().to_owned();

    let (status, body) = alice.put(&favourite, json!({"order": 0.5})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice.get(&tags).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"tags": {"m.favourite": {"order": 0.5}}})),
        "{body}"
    );
    // Only for yourself.
    let (status, body) = bob.get(&tags).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = bob.put(&favourite, json!({"order": 1})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = bob.delete(&favourite, json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // Both syncs carry the change as the room's m.tag account data.
    let inc = sync(&alice, Some(&token), "").await;
    assert_eq!(
        synced_tags(&inc, &room),
        Some(json!({"tags": {"m.favourite": {"order": 0.5}}})),
        "{inc}"
    );
    let token = inc["next_batch"].as_str().unwrap().to_owned();
    let (status, next) = sliding(&alice, Some(&pos), 0, sliding_body.clone()).await;
    assert_eq!(status, 200, "{next}");
    let synced = next["extensions"]["account_data"]["rooms"][&room]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.tag"))
        .map(|e| e["content"].clone());
    assert_eq!(synced, Some(json!({"tags": {"m.favourite": {"order": 0.5}}})), "{next}");

    // Deleting it leaves no tags, and syncs say so.
    let (status, body) = alice.delete(&favourite, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = alice.get(&tags).await;
    assert_eq!(body, json!({"tags": {}}));
    let inc = sync(&alice, Some(&token), "").await;
    assert_eq!(synced_tags(&inc, &room), Some(json!({"tags": {}})), "{inc}");
    server.stop().await;
});

both_backends!(ignored_users_are_left_out_of_syncs, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    for c in [&bob, &carol] {
        assert_eq!(
            c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
            200
        );
    }
    let (status, body) = alice
        .put(
            "/_matrix/client/v3/user/@alice:weft.test/account_data/m.ignored_user_list",
            json!({"ignored_users": {"@bob:weft.test": {}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    send_text(&bob, &room, "b1", "from bob").await;
    send_text(&carol, &room, "c1", "from carol").await;
    // Bob's state events still make up the room's state.
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:weft.test"),
            json!({"membership": "join", "displayname": "Bob in the room"}),
        )
        .await;
    assert_eq!(status, 200);

    let initial = sync(&alice, None, "").await;
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(timeline_bodies(joined), vec!["from carol"], "{joined}");
    assert!(
        joined["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(joined["state"]["events"].as_array().unwrap())
            .any(|e| e["type"] == "m.room.member" && e["content"]["displayname"] == "Bob in the room"),
        "{joined}"
    );
    let token = initial["next_batch"].as_str().unwrap().to_owned();

    // Incremental: bob's messages and bob's invites stay out; carol's arrive.
    send_text(&bob, &room, "b2", "bob again").await;
    send_text(&carol, &room, "c2", "carol again").await;
    let bobs_room = create_room(&bob, json!({"invite": ["@alice:weft.test"]})).await;
    let carols_room = create_room(&carol, json!({"invite": ["@alice:weft.test"]})).await;
    let inc = sync(&alice, Some(&token), "").await;
    assert_eq!(
        timeline_bodies(&inc["rooms"]["join"][&room]),
        vec!["carol again"],
        "{inc}"
    );
    assert!(inc["rooms"]["invite"].get(&bobs_room).is_none(), "{inc}");
    assert!(inc["rooms"]["invite"].get(&carols_room).is_some(), "{inc}");
    let initial = sync(&alice, None, "").await;
    assert!(initial["rooms"]["invite"].get(&bobs_room).is_none(), "{initial}");

    // Paging back through history leaves them out too.
    let (status, page) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    assert_eq!(status, 200, "{page}");
    let paged: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(paged, vec!["carol again", "from carol"], "{page}");

    // Simplified sliding sync: the same.
    let body = json!({
        "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 10, "required_state": [["m.room.member", "@bob:weft.test"]] } },
    });
    let (status, body) = sliding(&alice, None, 0, body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lists"]["all"]["count"], 2, "the room and carol's invite: {body}");
    assert!(body["rooms"].get(&bobs_room).is_none(), "{body}");
    let bodies: Vec<&str> = body["rooms"][&room]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["from carol", "carol again"], "{body}");
    assert_eq!(
        body["rooms"][&room]["required_state"][0]["content"]["displayname"], "Bob in the room",
        "{body}"
    );
    server.stop().await;
});

fn presence_of(sync: &Value) -> Vec<String> {
    sync["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["sender"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(own_presence_and_new_room_mates_presence, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // Syncing marks a user online, and they see that themselves, in no room at all.
    let alice = server.register("alice", "pw").await;
    let initial = sync(&alice, None, "").await;
    assert_eq!(presence_of(&initial), vec!["@alice:weft.test"], "{initial}");
    let event = &initial["presence"]["events"][0];
    assert_eq!(event["content"]["presence"], "online", "{event}");

    // Bob and carol are online (their syncs) before sharing any room with alice.
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    sync(&bob, None, "").await;
    sync(&carol, None, "").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let carols = create_room(&carol, json!({"preset": "public_chat"})).await;
    let token = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let quiet = sync(&alice, Some(&token), "").await;
    assert!(presence_of(&quiet).is_empty(), "{quiet}");

    // Bob joins alice's room: his presence comes with it, unchanged as it is.
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
        200
    );
    let inc = sync(&alice, Some(&token), "").await;
    assert_eq!(presence_of(&inc), vec!["@bob:weft.test"], "{inc}");
    assert_eq!(inc["presence"]["events"][0]["content"]["presence"], "online");
    let token = inc["next_batch"].as_str().unwrap().to_owned();

    // Alice joins carol's room: carol's presence comes with it.
    assert_eq!(
        alice
            .post(&format!("/_matrix/client/v3/join/{carols}"), json!({}))
            .await
            .0,
        200
    );
    let inc = sync(&alice, Some(&token), "").await;
    assert_eq!(presence_of(&inc), vec!["@carol:weft.test"], "{inc}");
    server.stop().await;
});
