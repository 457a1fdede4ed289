//! Full-text search, the user directory and reporting.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text},
};

const SEARCH: &str = "/_matrix/client/v3/search";

async fn search(client: &Client, room_events: Value) -> (u16, Value) {
    client
        .post(SEARCH, json!({"search_categories": {"room_events": room_events}}))
        .await
}

fn result_bodies(body: &Value) -> Vec<String> {
    body["search_categories"]["room_events"]["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["result"]["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn join(client: &Client, inviter: &Client, room: &str, user_id: &str) {
    let (status, body) = inviter
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = client
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn send_ok(client: &Client, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = send_text(client, room, txn, text).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn set_displayname(client: &Client, user_id: &str, name: &str) {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/profile/{user_id}/displayname"),
            json!({"displayname": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

both_backends!(search_finds_visible_messages, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat", "name": "Zoology club"})).await;
    join(&bob, &alice, &room, "@bob:weft.test").await;
    send_ok(&alice, &room, "1", "the quick brown fox").await;
    send_ok(&bob, &room, "2", "lazy dogs sleeping").await;
    send_ok(&bob, &room, "3", "another fox appears").await;
    let secret = send_ok(&alice, &room, "4", "secret fox plans").await;
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{secret}/r1"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let carol_room = create_room(&carol, json!({"preset": "private_chat"})).await;
    send_ok(&carol, &carol_room, "1", "a fox of carol's own").await;

    // By word, newest first; not the redacted one, not carol's room.
    let (status, body) = search(&alice, json!({"search_term": "fox", "order_by": "recent"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_bodies(&body), vec!["another fox appears", "the quick brown fox"]);
    let events = &body["search_categories"]["room_events"];
    assert_eq!(events["count"], 2, "{body}");
    assert!(
        events["highlights"].as_array().unwrap().contains(&json!("fox")),
        "{body}"
    );
    let first = &events["results"][0];
    assert_eq!(first["result"]["room_id"], room.as_str());
    assert_eq!(first["result"]["type"], "m.room.message");
    assert!(first["rank"].is_number(), "{body}");
    assert!(first["result"]["unsigned"]["age"].is_number(), "{body}");
    assert!(first.get("context").is_none(), "no context unless asked: {body}");
    // Stemming: "dog" finds "dogs".
    let (_, body) = search(&alice, json!({"search_term": "dog"})).await;
    assert_eq!(result_bodies(&body), vec!["lazy dogs sleeping"]);
    // Carol sees only her own room; a redacted event is found by no one.
    let (_, body) = search(&carol, json!({"search_term": "fox"})).await;
    assert_eq!(result_bodies(&body), vec!["a fox of carol's own"]);
    let (_, body) = search(&bob, json!({"search_term": "secret"})).await;
    assert_eq!(result_bodies(&body), Vec::<String>::new(), "{body}");
    // Filters: senders and rooms.
    let (_, body) = search(
        &alice,
        json!({"search_term": "fox", "filter": {"senders": ["@bob:weft.test"]}}),
    )
    .await;
    assert_eq!(result_bodies(&body), vec!["another fox appears"]);
    let (_, body) = search(&alice, json!({"search_term": "fox", "filter": {"not_rooms": [room]}})).await;
    assert_eq!(result_bodies(&body), Vec::<String>::new());
    let (_, body) = search(&carol, json!({"search_term": "fox", "filter": {"rooms": [room]}})).await;
    assert_eq!(
        result_bodies(&body),
        Vec::<String>::new(),
        "a room filter does not widen access: {body}"
    );
    // Room names are searchable by content.name, and messages are not then searched.
    let (_, body) = search(&alice, json!({"search_term": "zoology", "keys": ["content.name"]})).await;
    let results = body["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 1, "{body}");
    assert_eq!(results[0]["result"]["type"], "m.room.name");
    let (_, body) = search(&alice, json!({"search_term": "fox", "keys": ["content.name"]})).await;
    assert_eq!(result_bodies(&body), Vec::<String>::new());
    // After leaving, bob still finds what he saw, but nothing sent later.
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    send_ok(&alice, &room, "5", "a fox after bob left").await;
    let (_, body) = search(&bob, json!({"search_term": "fox", "order_by": "recent"})).await;
    assert_eq!(
        result_bodies(&body),
        vec!["another fox appears", "the quick brown fox"],
        "{body}"
    );
    let (_, body) = search(&alice, json!({"search_term": "fox", "order_by": "recent"})).await;
    assert_eq!(result_bodies(&body)[0], "a fox after bob left");
    // Query syntax is text, never an error.
    let (status, body) = search(&alice, json!({"search_term": "fox NEAR( \" * OR -"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = search(&alice, json!({"search_term": ""})).await;
    assert_eq!(status, 200);

    // Bad requests.
    let (status, body) = alice
        .post(SEARCH, json!({"search_categories": {"people": {"search_term": "x"}}}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, _) = alice.post(SEARCH, json!({"search_categories": {}})).await;
    assert_eq!(status, 400);
    let (status, body) = search(&alice, json!({"search_term": "fox", "order_by": "sideways"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = search(&alice, json!({"search_term": "fox", "keys": ["content.nope"]})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, _) = search(
        &alice,
        json!({"search_term": "fox", "filter": {"senders": "not a list"}}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = alice
        .post(
            &format!("{SEARCH}?next_batch=bogus"),
            json!({"search_categories": {"room_events": {"search_term": "fox"}}}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    server.stop().await;
});

both_backends!(search_order_and_pagination, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    send_ok(&alice, &room, "a", "apple apple apple").await;
    send_ok(
        &alice,
        &room,
        "b",
        "an apple among many other unrelated words that dilute the match",
    )
    .await;
    let (_, body) = search(&alice, json!({"search_term": "apple", "order_by": "recent"})).await;
    let recent = result_bodies(&body);
    assert_eq!(
        recent[0], "an apple among many other unrelated words that dilute the match",
        "{body}"
    );
    let (_, body) = search(&alice, json!({"search_term": "apple", "order_by": "rank"})).await;
    let ranked = result_bodies(&body);
    assert_eq!(ranked[0], "apple apple apple", "{body}");
    let ranks: Vec<f64> = body["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks[0] > ranks[1], "{ranks:?}");

    for i in 0..7 {
        send_ok(&alice, &room, &format!("p{i}"), &format!("pager number{i}")).await;
    }
    for order in ["recent", "rank"] {
        let mut seen = Vec::new();
        let mut next: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &next {
                Some(t) => format!("{SEARCH}?next_batch={t}"),
                None => SEARCH.to_owned(),
            };
            let criteria = json!({"search_term": "pager", "order_by": order, "filter": {"limit": 3}});
            let (status, body) = alice
                .post(&path, json!({"search_categories": {"room_events": criteria}}))
                .await;
            assert_eq!(status, 200, "{body}");
            let page = result_bodies(&body);
            assert!(page.len() <= 3);
            assert_eq!(body["search_categories"]["room_events"]["count"], 7);
            seen.extend(page);
            pages += 1;
            match body["search_categories"]["room_events"]["next_batch"].as_str() {
                Some(t) => next = Some(t.to_owned()),
                None => break,
            }
            assert!(pages < 10, "pagination does not end");
        }
        assert_eq!(pages, 3, "{order}: {seen:?}");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 7, "{order}: {seen:?}");
        if order == "recent" {
            assert_eq!(
                seen,
                (0..7).rev().map(|i| format!("pager number{i}")).collect::<Vec<_>>()
            );
        }
    }
    // A token of one order does not continue the other.
    let (_, body) = search(
        &alice,
        json!({"search_term": "pager", "order_by": "recent", "filter": {"limit": 3}}),
    )
    .await;
    let token = body["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = alice
        .post(
            &format!("{SEARCH}?next_batch={token}"),
            json!({"search_categories": {"room_events": {"search_term": "pager", "order_by": "rank"}}}),
        )
        .await;
    assert_eq!(status, 400);
    server.stop().await;
});

both_backends!(search_event_context, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    set_displayname(&alice, "@alice:weft.test", "Alice Liddell").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    for (i, text) in ["ctx one", "ctx two", "needle here", "ctx four", "ctx five"]
        .iter()
        .enumerate()
    {
        send_ok(&alice, &room, &format!("c{i}"), text).await;
    }
    let (status, body) = search(
        &alice,
        json!({"search_term": "needle", "event_context": {"before_limit": 2, "after_limit": 1, "include_profile": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["search_categories"]["room_events"]["results"][0];
    assert_eq!(result["result"]["content"]["body"], "needle here");
    let ctx = &result["context"];
    let before: Vec<&str> = ctx["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let after: Vec<&str> = ctx["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(before, vec!["ctx two", "ctx one"], "{ctx}");
    assert_eq!(after, vec!["ctx four"], "{ctx}");
    assert_eq!(
        ctx["profile_info"]["@alice:weft.test"]["displayname"], "Alice Liddell",
        "{ctx}"
    );
    // The tokens paginate on from the context's edges.
    let start = ctx["start"].as_str().unwrap();
    let (status, page) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={start}"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_ne!(
        page["chunk"][0]["type"], "m.room.message",
        "the event before 'ctx one': {page}"
    );
    let end = ctx["end"].as_str().unwrap();
    let (_, page) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1&from={end}"
        ))
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "ctx five", "{page}");
    server.stop().await;
});

async fn directory(client: &Client, term: &str, limit: Option<u64>) -> (Vec<String>, Value) {
    let mut req = json!({"search_term": term});
    if let Some(limit) = limit {
        req["limit"] = json!(limit);
    }
    let (status, body) = client.post("/_matrix/client/v3/user_directory/search", req).await;
    assert_eq!(status, 200, "{body}");
    let ids = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body)
}

both_backends!(user_directory_search, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let erin = server.register("erin", "pw").await;
    set_displayname(&bob, "@bob:weft.test", "Bobby Tables").await;
    set_displayname(&carol, "@carol:weft.test", "Bea Carol").await;
    set_displayname(&dave, "@dave:weft.test", "Bobcat Dave").await;
    let shared = create_room(&alice, json!({"preset": "private_chat"})).await;
    join(&bob, &alice, &shared, "@bob:weft.test").await;
    join(&erin, &alice, &shared, "@erin:weft.test").await;
    create_room(&carol, json!({"preset": "public_chat", "visibility": "public"})).await;
    create_room(&dave, json!({"preset": "private_chat"})).await;

    // A user sharing a room, by display-name prefix (any word, any case), with their profile.
    let (ids, body) = directory(&alice, "bobby", None).await;
    assert_eq!(ids, vec!["@bob:weft.test"], "{body}");
    assert_eq!(body["results"][0]["display_name"], "Bobby Tables");
    assert_eq!(body["limited"], false);
    assert_eq!(directory(&alice, "TAB", None).await.0, vec!["@bob:weft.test"]);
    // A member of a public room, by localpart prefix.
    assert_eq!(directory(&alice, "caro", None).await.0, vec!["@carol:weft.test"]);
    // Not an unrelated user in a private room, whatever the name.
    assert_eq!(directory(&alice, "dave", None).await.0, Vec::<String>::new());
    assert_eq!(
        directory(&alice, "bob", None).await.0,
        vec!["@bob:weft.test"],
        "not dave's 'Bobcat'"
    );
    // Limit: "b" matches bob and carol ("Bea"); the room-mate comes first.
    let (ids, body) = directory(&alice, "b", Some(1)).await;
    assert_eq!(ids, vec!["@bob:weft.test"], "{body}");
    assert_eq!(body["limited"], true);
    let (ids, body) = directory(&alice, "b", None).await;
    assert_eq!(ids, vec!["@bob:weft.test", "@carol:weft.test"], "{body}");
    assert_eq!(body["limited"], false);
    // Dave sees carol (public room) but not bob (no shared room), nor himself.
    assert_eq!(directory(&dave, "b", None).await.0, vec!["@carol:weft.test"]);

    // A room anyone may join, unlisted: its members are found by room-mates and by anyone.
    let frank = server.register("frank", "pw").await;
    let open = create_room(&frank, json!({"preset": "public_chat"})).await;
    assert_eq!(directory(&dave, "frank", None).await.0, vec!["@frank:weft.test"]);
    let (status, _) = alice.post(&format!("/_matrix/client/v3/join/{open}"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(directory(&alice, "frank", None).await.0, vec!["@frank:weft.test"]);
    assert_eq!(directory(&frank, "alice", None).await.0, vec!["@alice:weft.test"]);
    // An invite-only room readable by anyone (world_readable) is public too.
    let gina = server.register("gina", "pw").await;
    let readable = create_room(&gina, json!({"preset": "private_chat"})).await;
    assert_eq!(directory(&dave, "gina", None).await.0, Vec::<String>::new());
    let (status, _) = gina
        .put(
            &format!("/_matrix/client/v3/rooms/{readable}/state/m.room.history_visibility"),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(directory(&dave, "gina", None).await.0, vec!["@gina:weft.test"]);

    // Deactivated users vanish.
    assert_eq!(directory(&alice, "erin", None).await.0, vec!["@erin:weft.test"]);
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, body) = erin.post(path, json!({})).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap();
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "erin"}, "password": "pw", "session": session});
    let (status, body) = erin.post(path, json!({"auth": auth})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(directory(&alice, "erin", None).await.0, Vec::<String>::new());
    server.stop().await;
});

both_backends!(reporting_events_and_rooms, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    join(&bob, &alice, &room, "@bob:weft.test").await;
    let event = send_ok(&alice, &room, "1", "something offensive").await;
    let report = |id: &str| format!("/_matrix/client/v3/rooms/{room}/report/{id}");

    let (status, body) = bob.post(&report(&event), json!({"reason": "rude", "score": -50})).await;
    assert_eq!((status, body.clone()), (200, json!({})), "{body}");
    let (status, body) = bob.post(&report(&event), json!({})).await;
    assert_eq!(status, 200, "reason and score are optional: {body}");
    let (status, body) = bob.post(&report("$unknown:weft.test"), json!({"reason": "x"})).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = bob.post(&report(&event), json!({"reason": "x", "score": 5})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = bob.post(&report(&event), json!({"score": -101})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = bob.post(&report(&event), json!({"score": "low"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    // Someone who cannot see the event cannot learn it exists.
    let (status, body) = carol.post(&report(&event), json!({"reason": "x"})).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    let room_report = |room: &str| format!("/_matrix/client/v3/rooms/{room}/report");
    let (status, body) = bob.post(&room_report(&room), json!({"reason": "spam room"})).await;
    assert_eq!((status, body.clone()), (200, json!({})), "{body}");
    let (status, body) = carol.post(&room_report(&room), json!({"reason": "x"})).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = bob
        .post(&room_report("!nowhere:weft.test"), json!({"reason": "x"}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    server.stop().await;
});
