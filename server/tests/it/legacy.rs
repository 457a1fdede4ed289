//! Deprecated endpoints bots still use: `/events`, `/initialSync`, `/rooms/{roomId}/initialSync`,
//! `/events/{eventId}` and sends without a transaction ID.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_ok},
};

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"))
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn events(client: &Client, query: &str) -> Value {
    let (status, body) = client.get(&format!("/_matrix/client/v3/events?{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["start"].is_string() && body["end"].is_string(), "{body}");
    body
}

both_backends!(events_stream_and_initial_sync, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"name": "Bots", "preset": "private_chat"})).await;
    send_ok(&alice, &room, "1", "one").await;

    // The global initial sync: the room with its state and latest messages, and a token.
    let (status, initial) = alice.get("/_matrix/client/v3/initialSync?limit=5").await;
    assert_eq!(status, 200, "{initial}");
    let rooms = initial["rooms"].as_array().unwrap();
    let ours = rooms.iter().find(|r| r["room_id"] == room.as_str()).unwrap();
    assert_eq!(ours["membership"], "join");
    assert_eq!(bodies(&ours["messages"]["chunk"]), vec!["one"], "{ours}");
    assert!(ours["messages"]["start"].is_string());
    assert!(
        ours["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Bots"),
        "{ours}"
    );
    assert_eq!(ours["visibility"], "private");
    let end = initial["end"].as_str().unwrap().to_owned();

    // Nothing new: an empty chunk, at once with timeout=0.
    let quiet = events(&alice, &format!("from={end}&timeout=0")).await;
    assert_eq!(quiet["chunk"], json!([]), "{quiet}");
    assert_eq!(quiet["start"], end.as_str());

    // A long-poll wakes on a new message, which comes with its room ID.
    let poll = {
        let alice = alice.clone();
        let end = end.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (
                events(&alice, &format!("from={end}&timeout=10000")).await,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_ok(&alice, &room, "2", "two").await;
    let (woken, waited) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(bodies(&woken["chunk"]), vec!["two"], "{woken}");
    assert_eq!(woken["chunk"][0]["room_id"], room.as_str());
    assert_eq!(woken["chunk"][0]["unsigned"]["transaction_id"], "2");
    let next = woken["end"].as_str().unwrap().to_owned();
    assert_ne!(next, end);
    // Following `end` gives only what came after; a room filter keeps to that room.
    send_ok(&alice, &room, "3", "three").await;
    let other = create_room(&alice, json!({})).await;
    send_ok(&alice, &other, "4", "elsewhere").await;
    let more = events(&alice, &format!("from={next}&timeout=0")).await;
    assert_eq!(bodies(&more["chunk"]), vec!["three", "elsewhere"], "{more}");
    let only = events(&alice, &format!("from={next}&timeout=0&room_id={room}")).await;
    assert_eq!(bodies(&only["chunk"]), vec!["three"], "{only}");
    // The old r0 path too; bob sees none of alice's rooms.
    let (status, r0) = alice
        .get(&format!("/_matrix/client/r0/events?from={next}&timeout=0"))
        .await;
    assert_eq!((status, bodies(&r0["chunk"]).len()), (200, 2), "{r0}");
    let bobs = events(&bob, "from=s0&timeout=0").await;
    assert!(bodies(&bobs["chunk"]).is_empty(), "{bobs}");
    // Without `from` it starts now.
    let now = events(&alice, "timeout=0").await;
    assert_eq!(now["chunk"], json!([]), "{now}");
    // Malformed parameters.
    for query in ["from=garbage", "timeout=soon", "room_id=nope"] {
        let (status, body) = alice.get(&format!("/_matrix/client/v3/events?{query}")).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{query}: {body}"
        );
    }
    assert_eq!(server.client().get("/_matrix/client/v3/events?timeout=0").await.0, 401);

    // One room's initial sync; someone outside a private room is refused.
    let path = format!("/_matrix/client/v3/rooms/{room}/initialSync");
    let (status, one) = alice.get(&path).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["room_id"], room.as_str());
    assert_eq!(one["membership"], "join");
    assert_eq!(bodies(&one["messages"]["chunk"]), vec!["one", "two", "three"], "{one}");
    assert!(one["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    let (status, body) = bob.get(&path).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    server.stop().await;
});

both_backends!(event_by_id_and_send_without_txn, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;

    // POST without a transaction ID: every request is a new event.
    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message");
    let content = json!({"msgtype": "m.text", "body": "posted"});
    let (status, first) = alice.post(&send, content.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = alice.post(&send, content.clone()).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let (status, body) = alice.raw(reqwest::Method::POST, &send, "{not json").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{body}");
    let (status, body) = alice.post(&send, json!(["a list"])).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (status, body) = bob.post(&send, content.clone()).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/rooms/not-a-room/send/m.room.message",
            content.clone(),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    assert_eq!(server.client().post(&send, content).await.0, 401);

    // GET /events/{eventId}: the event for who may see it, 404 for anyone else.
    let event_id = first["event_id"].as_str().unwrap();
    let (status, event) = alice.get(&format!("/_matrix/client/v3/events/{event_id}")).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(
        (event["content"]["body"].as_str(), event["room_id"].as_str()),
        (Some("posted"), Some(room.as_str())),
        "{event}"
    );
    let (status, body) = bob.get(&format!("/_matrix/client/v3/events/{event_id}")).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, _) = alice.get("/_matrix/client/v3/events/$unknown:weft.test").await;
    assert_eq!(status, 404);
    let (status, body) = alice.get("/_matrix/client/v3/events/not-an-id").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    server.stop().await;
});
