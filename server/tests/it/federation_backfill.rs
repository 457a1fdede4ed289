//! History before a server joined a room: a user of a server that joined late pages
//! `/messages` back past the join and gets the room's whole history (fetched with `/backfill`
//! from the servers in the room, another one when the first is down), in order, while sync
//! never presents it as new.

use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, send_text, user_id},
    harness::Client,
    harness_federation::start_federation,
    rooms::create_room,
};

/// Every event `client` gets paging the room's `/messages` backwards `limit` at a time, oldest
/// first, and how many pages it took.
async fn page_back_all(client: &Client, room: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", enc(room));
        if let Some(token) = &from {
            path.push_str(&format!("&from={}", enc(token)));
        }
        let (status, page) = client.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
        assert!(pages < 100, "pagination does not end");
    }
    events.reverse();
    (events, pages)
}

fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn join_via(client: &Client, room: &str, via: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
}

both_backends!(
    a_late_joiner_pages_back_through_history_from_before_its_join,
    |backend| async move {
        let Some((_ca, servers)) = start_federation(backend, 2).await else {
            return;
        };
        let [a, b] = &servers[..] else { unreachable!() };
        let alice = a.register("alice", "password-alice").await;
        let bob = b.register("bob", "password-bob").await;
        // public_chat: history visibility "shared", so members see what was said before they came.
        let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Old times" })).await;
        let said: Vec<String> = (0..45).map(|i| format!("before bob {i}")).collect();
        for body in &said {
            send_text(&alice, &room, body).await;
        }

        join_via(&bob, &room, a.server_name()).await;
        let (_, first_sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
        let since = first_sync["next_batch"].as_str().unwrap().to_owned();

        // Pages of 10 go back past Bob's join to the room's creation, without a gap or a repeat.
        let (events, pages) = page_back_all(&bob, &room, 10).await;
        assert_eq!(message_bodies(&events), said);
        assert!(pages >= 5, "{pages} pages");
        assert_eq!(
            events[0]["type"], "m.room.create",
            "the history starts at the room's creation"
        );
        let ids: Vec<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
        let unique: std::collections::HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "no event twice");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "m.room.member");
        assert_eq!(last["state_key"], user_id("bob", b));

        // Old history is not news: an incremental sync shows none of it...
        let (_, sync) = bob
            .get(&format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&since)))
            .await;
        let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
        assert!(
            message_bodies(timeline.as_array().map(Vec::as_slice).unwrap_or_default()).is_empty(),
            "{sync}"
        );
        // ...and new messages still arrive after it, also in /messages.
        send_text(&alice, &room, "after bob").await;
        eventually("the new message on B", || async {
            let (_, sync) = bob
                .get(&format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&since)))
                .await;
            let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].clone();
            (message_bodies(timeline.as_array()?) == ["after bob"]).then_some(())
        })
        .await;
        let (events, _) = page_back_all(&bob, &room, 100).await;
        let mut expected = said.clone();
        expected.push("after bob".into());
        assert_eq!(message_bodies(&events), expected);

        // A page that starts from the end and asks for everything gets it in one go.
        let (status, page) = bob
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
                enc(&room)
            ))
            .await;
        assert_eq!(status, 200);
        assert_eq!(message_bodies(page["chunk"].as_array().unwrap()), {
            let mut newest_first = expected.clone();
            newest_first.reverse();
            newest_first
        });
        // A page with events carries `end` (as Synapse's do); the page after it is the
        // room's start: empty, with no `end`.
        if let Some(end) = page["end"].as_str() {
            let (status, next) = bob
                .get(&format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200&from={end}",
                    enc(&room)
                ))
                .await;
            assert_eq!(status, 200);
            assert!(
                next["chunk"].as_array().is_some_and(|c| c.is_empty()) && next["end"].is_null(),
                "the whole room fitted in one page: {next}"
            );
        }

        for server in servers {
            server.stop().await;
        }
    }
);

both_backends!(backfill_tries_another_server_when_one_is_down, |backend| async move {
    let Some((_ca, mut servers)) = start_federation(backend, 3).await else {
        return;
    };
    let c = servers.pop().unwrap();
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let carol = c.register("carol", "password-carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, a.server_name()).await;
    let said: Vec<String> = (0..12).map(|i| format!("while bob listened {i}")).collect();
    for body in &said {
        send_text(&alice, &room, body).await;
    }
    eventually("every message on B", || async {
        (crate::federation_rooms::bodies(&bob, &room).await == said).then_some(())
    })
    .await;
    join_via(&carol, &room, a.server_name()).await;
    eventually("carol's join on B", || async {
        (membership(&bob, &room, &user_id("carol", &c)).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // A goes away; Carol's server gets the history from B instead.
    a.stop().await;
    let (events, _) = page_back_all(&carol, &room, 5).await;
    assert_eq!(message_bodies(&events), said);

    b.stop().await;
    c.stop().await;
});
