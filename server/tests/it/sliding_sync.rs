//! Simplified sliding sync (MSC4186): lists sorted by activity, ranges, filters, required
//! state, timeline, room subscriptions, long-polling, extensions.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

pub async fn sliding(client: &Client, pos: Option<&str>, timeout: u64, body: Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={p}"));
    }
    client.post(&path, body).await
}

fn list_body(limit: u64, ranges: Value) -> Value {
    json!({
        "lists": {
            "all": {
                "ranges": ranges,
                "timeline_limit": limit,
                "required_state": [["m.room.name", ""], ["m.room.member", "$ME"], ["m.room.create", ""]],
            },
            "invites": { "ranges": [[0, 10]], "filters": { "is_invite": true }, "timeline_limit": 0 },
        },
        "extensions": { "typing": { "enabled": true }, "receipts": { "enabled": true }, "account_data": { "enabled": true } },
    })
}

both_backends!(room_list_and_updates, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = create_room(&alice, json!({"name": format!("room {i}"), "preset": "public_chat"})).await;
        send_text(&alice, &room, "1", &format!("hello {i}")).await;
        rooms.push(room);
    }
    // Room 1 gets the latest activity: it sorts first.
    send_text(&alice, &rooms[1], "2", "latest").await;
    create_room(&bob, json!({"name": "for alice", "invite": ["@alice:weft.test"]})).await;

    let (status, body) = sliding(&alice, None, 0, list_body(3, json!([[0, 2]]))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["lists"]["all"]["count"], 6,
        "5 joined rooms and 1 invite: {}",
        body["lists"]
    );
    assert_eq!(body["lists"]["invites"]["count"], 1);
    let first = &body["rooms"][&rooms[1]];
    assert_eq!(first["name"], "room 1");
    assert_eq!(first["initial"], true);
    let timeline: Vec<&str> = first["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(timeline.last(), Some(&"latest"));
    assert!(first["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == "@alice:weft.test"));
    assert!(first["bump_stamp"].as_i64().unwrap() > body["rooms"][&rooms[4]]["bump_stamp"].as_i64().unwrap_or(0));
    // The invite shows up with its stripped state.
    let invited = body["rooms"]
        .as_object()
        .unwrap()
        .values()
        .find(|r| r.get("invite_state").is_some())
        .expect("invite in rooms");
    assert!(invited["invite_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.name"));
    // Only the range asked for is sent: the newest three (the invite is the newest of all).
    assert_eq!(body["rooms"].as_object().unwrap().len(), 3, "{}", body["rooms"]);
    assert!(body["rooms"].get(&rooms[0]).is_none(), "room 0 is outside the range");
    let pos = body["pos"].as_str().unwrap().to_owned();

    // Nothing new: an empty answer after the timeout.
    let start = Instant::now();
    let (_, body) = sliding(&alice, Some(&pos), 300, list_body(3, json!([[0, 2]]))).await;
    assert!(start.elapsed() >= Duration::from_millis(290));
    assert!(body["rooms"].as_object().unwrap().is_empty(), "{body}");
    let pos = body["pos"].as_str().unwrap().to_owned();

    // A long-poll wakes on a new message in a listed room and carries only the new event.
    let poller = alice.clone();
    let p2 = pos.clone();
    let handle = tokio::spawn(async move { sliding(&poller, Some(&p2), 20_000, list_body(3, json!([[0, 2]]))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.post(&format!("/_matrix/client/v3/join/{}", rooms[4]), json!({}))
        .await;
    send_text(&bob, &rooms[4], "b", "from bob").await;
    let (status, mut body) = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    // Bob's join and message may arrive in one response or two; collect up to three polls.
    let mut bodies: Vec<String> = Vec::new();
    for _ in 0..3 {
        let room = &body["rooms"][&rooms[4]];
        assert!(
            room.get("initial").is_none(),
            "already-sent rooms are not initial: {room}"
        );
        bodies.extend(
            room["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)),
        );
        if bodies.iter().any(|b| b == "from bob") {
            break;
        }
        let pos = body["pos"].as_str().unwrap().to_owned();
        body = sliding(&alice, Some(&pos), 5_000, list_body(3, json!([[0, 2]])))
            .await
            .1;
    }
    assert!(bodies.iter().any(|b| b == "from bob"), "{bodies:?}");
    assert!(
        !bodies.iter().any(|b| b == "hello 4"),
        "old events are not resent: {bodies:?}"
    );
    // An unknown pos tells the client to start over.
    let (status, body) = sliding(&alice, Some("999999"), 0, list_body(3, json!([[0, 2]]))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")));
    server.stop().await;
});

both_backends!(room_subscriptions_and_typing, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"name": "subscribed", "preset": "public_chat"})).await;
    for i in 0..4 {
        send_text(&alice, &room, &format!("{i}"), &format!("m{i}")).await;
    }
    let body = json!({
        "room_subscriptions": { &room: { "timeline_limit": 2, "required_state": [["*", "*"]] } },
        "extensions": { "typing": { "enabled": true } },
    });
    let (status, res) = sliding(&alice, None, 0, body.clone()).await;
    assert_eq!(status, 200, "{res}");
    let r = &res["rooms"][&room];
    assert_eq!(r["limited"], true);
    let bodies: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["m2", "m3"]);
    assert!(r["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    let pos = res["pos"].as_str().unwrap().to_owned();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@alice:weft.test"),
            json!({"typing": true, "timeout": 5000}),
        )
        .await;
    let (_, res) = sliding(&alice, Some(&pos), 5000, body).await;
    assert_eq!(
        res["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"],
        json!(["@alice:weft.test"]),
        "{res}"
    );
    server.stop().await;
});

// A response the client never got (a cancelled request, a dropped connection) must not count as
// seen: Element X's SDK cancels in-flight requests when its subscriptions change and retries the
// same pos, which has to carry the data again.
both_backends!(retried_pos_resends_lost_response, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"name": "retry", "preset": "public_chat"})).await;
    let (status, res) = sliding(&alice, None, 0, list_body(5, json!([[0, 9]]))).await;
    assert_eq!(status, 200, "{res}");
    let pos = res["pos"].as_str().unwrap().to_owned();
    send_text(&alice, &room, "1", "maybe lost").await;
    let bodies = |res: &Value| -> Vec<String> {
        res["rooms"][&room]["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, lost) = sliding(&alice, Some(&pos), 0, list_body(5, json!([[0, 9]]))).await;
    assert_eq!(bodies(&lost), vec!["maybe lost"], "{lost}");
    // The same pos again: the message comes again.
    let (status, retried) = sliding(&alice, Some(&pos), 0, list_body(5, json!([[0, 9]]))).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(bodies(&retried), vec!["maybe lost"], "{retried}");
    // Going on from the newest pos, it is not sent a third time.
    let next = retried["pos"].as_str().unwrap().to_owned();
    let (_, res) = sliding(&alice, Some(&next), 0, list_body(5, json!([[0, 9]]))).await;
    assert!(bodies(&res).is_empty(), "{res}");
    server.stop().await;
});
