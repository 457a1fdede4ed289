//! Room aliases and the public room directory, on both backends.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, urlencode},
};

fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", urlencode(alias))
}

async fn join(client: &Client, room: &str) {
    let (status, body) = client
        .post(&format!("/_matrix/client/v3/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn errcode(body: &Value) -> Option<&str> {
    body["errcode"].as_str()
}

/// Registers a server admin through the shared-secret admin API.
async fn register_admin(server: &TestServer, user: &str) -> Client {
    use hmac::{Hmac, Mac};
    let c = server.client();
    let (_, body) = c.get("/_synapse/admin/v1/register").await;
    let nonce = body["nonce"].as_str().unwrap().to_owned();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    mac.update(format!("{nonce}\0{user}\0pw\0admin").as_bytes());
    let mac = hex::encode(mac.finalize().into_bytes());
    let (status, body) = c
        .post(
            "/_synapse/admin/v1/register",
            json!({"nonce": nonce, "username": user, "password": "pw", "admin": true, "mac": mac}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    c.with_token(body["access_token"].as_str().unwrap())
}

both_backends!(alias_create_resolve_delete, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    let other_room = create_room(&alice, json!({"preset": "private_chat"})).await;

    let (status, body) = alice
        .put(&alias_path("#lounge:weft.test"), json!({"room_id": room}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Resolving needs no access token.
    let (status, body) = server.client().get(&alias_path("#lounge:weft.test")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"room_id": room, "servers": ["weft.test"]}));

    // Taken, even for another room: 409 M_UNKNOWN as the spec says; the mapping is unchanged.
    let (status, body) = alice
        .put(&alias_path("#lounge:weft.test"), json!({"room_id": other_room}))
        .await;
    assert_eq!((status, errcode(&body)), (409, Some("M_UNKNOWN")), "{body}");
    let (_, body) = alice.get(&alias_path("#lounge:weft.test")).await;
    assert_eq!(body["room_id"], room);

    // Another server's alias, an unknown room, a non-member: refused, nothing created.
    let (status, body) = alice
        .put(&alias_path("#lounge:other.test"), json!({"room_id": room}))
        .await;
    assert_eq!((status, errcode(&body)), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = alice
        .put(&alias_path("#ghost:weft.test"), json!({"room_id": "!nope:weft.test"}))
        .await;
    assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = bob.put(&alias_path("#bobs:weft.test"), json!({"room_id": room})).await;
    assert_eq!((status, errcode(&body)), (403, Some("M_FORBIDDEN")), "{body}");
    for gone in ["#ghost:weft.test", "#bobs:weft.test"] {
        let (status, body) = alice.get(&alias_path(gone)).await;
        assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{gone}: {body}");
    }
    // A missing room_id is a bad request.
    let (status, body) = alice.put(&alias_path("#empty:weft.test"), json!({})).await;
    assert_eq!((status, errcode(&body)), (400, Some("M_BAD_JSON")), "{body}");

    // The room's local aliases, for members only (the room is not world-readable).
    assert_eq!(
        alice
            .put(&alias_path("#annex:weft.test"), json!({"room_id": room}))
            .await
            .0,
        200
    );
    let (status, body) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/aliases")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aliases"], json!(["#annex:weft.test", "#lounge:weft.test"]));
    let (status, body) = bob.get(&format!("/_matrix/client/v3/rooms/{room}/aliases")).await;
    assert_eq!((status, errcode(&body)), (403, Some("M_FORBIDDEN")), "{body}");
    let (_, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{other_room}/aliases"))
        .await;
    assert_eq!(body["aliases"], json!([]));

    // Delete: gone afterwards, and a second delete is 404.
    let (status, body) = alice.delete(&alias_path("#lounge:weft.test"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice.get(&alias_path("#lounge:weft.test")).await;
    assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.delete(&alias_path("#lounge:weft.test"), json!({})).await;
    assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{body}");
    let (_, body) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/aliases")).await;
    assert_eq!(body["aliases"], json!(["#annex:weft.test"]));
    // The freed alias can be taken again.
    assert_eq!(
        alice
            .put(&alias_path("#lounge:weft.test"), json!({"room_id": other_room}))
            .await
            .0,
        200
    );
    server.stop().await;
});

both_backends!(alias_delete_permissions_and_canonical_alias, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    join(&bob, &room).await;
    join(&carol, &room).await;

    // Bob (power 0, but joined) may create an alias and delete his own; carol may not delete it.
    assert_eq!(
        bob.put(&alias_path("#bobs:weft.test"), json!({"room_id": room}))
            .await
            .0,
        200
    );
    let (status, body) = carol.delete(&alias_path("#bobs:weft.test"), json!({})).await;
    assert_eq!((status, errcode(&body)), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(carol.get(&alias_path("#bobs:weft.test")).await.0, 200);

    // Alice (power 100) may delete anyone's alias in her room; carol's is the example.
    assert_eq!(
        carol
            .put(&alias_path("#carols:weft.test"), json!({"room_id": room}))
            .await
            .0,
        200
    );
    assert_eq!(alice.delete(&alias_path("#carols:weft.test"), json!({})).await.0, 200);
    assert_eq!(alice.get(&alias_path("#carols:weft.test")).await.0, 404);

    // The canonical alias names #main with #bobs and #extra as alternatives.
    for a in ["#main:weft.test", "#extra:weft.test"] {
        assert_eq!(alice.put(&alias_path(a), json!({"room_id": room})).await.0, 200);
    }
    let canonical = json!({"alias": "#main:weft.test", "alt_aliases": ["#bobs:weft.test", "#extra:weft.test"]});
    let state_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias");
    let (status, body) = alice.put(&state_path, canonical.clone()).await;
    assert_eq!(status, 200, "{body}");

    // Bob deletes his alias, but may not send m.room.canonical_alias: the deletion still
    // succeeds and the event stays as it was.
    assert_eq!(bob.delete(&alias_path("#bobs:weft.test"), json!({})).await.0, 200);
    assert_eq!(bob.get(&alias_path("#bobs:weft.test")).await.0, 404);
    let (_, body) = alice.get(&state_path).await;
    assert_eq!(body, canonical);

    // Alice deletes the main alias: the event loses it.
    assert_eq!(alice.delete(&alias_path("#main:weft.test"), json!({})).await.0, 200);
    let (_, body) = alice.get(&state_path).await;
    assert_eq!(body, json!({"alt_aliases": ["#bobs:weft.test", "#extra:weft.test"]}));
    // And an alternative alias.
    assert_eq!(alice.delete(&alias_path("#extra:weft.test"), json!({})).await.0, 200);
    let (_, body) = alice.get(&state_path).await;
    assert_eq!(body, json!({"alt_aliases": ["#bobs:weft.test"]}));

    // A server admin outside the room may delete any local alias.
    assert_eq!(
        alice
            .put(&alias_path("#spam:weft.test"), json!({"room_id": room}))
            .await
            .0,
        200
    );
    let admin = register_admin(&server, "root").await;
    assert_eq!(admin.delete(&alias_path("#spam:weft.test"), json!({})).await.0, 200);
    assert_eq!(alice.get(&alias_path("#spam:weft.test")).await.0, 404);
    // Another server's alias cannot be deleted here.
    let (status, body) = admin.delete(&alias_path("#spam:other.test"), json!({})).await;
    assert_eq!((status, errcode(&body)), (400, Some("M_INVALID_PARAM")), "{body}");
    server.stop().await;
});

both_backends!(aliases_of_world_readable_room, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &alice,
        json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
        ]}),
    )
    .await;
    assert_eq!(
        alice
            .put(&alias_path("#open:weft.test"), json!({"room_id": room}))
            .await
            .0,
        200
    );
    let (status, body) = bob.get(&format!("/_matrix/client/v3/rooms/{room}/aliases")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aliases"], json!(["#open:weft.test"]));
    let (status, _) = bob.get("/_matrix/client/v3/rooms/!unknown:weft.test/aliases").await;
    assert_eq!(status, 404);
    server.stop().await;
});

both_backends!(directory_visibility, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat", "name": "Quiet"})).await;
    let path = format!("/_matrix/client/v3/directory/list/room/{room}");

    // Not published unless asked for; readable without a token.
    let (status, body) = server.client().get(&path).await;
    assert_eq!((status, body["visibility"].as_str()), (200, Some("private")), "{body}");
    assert!(listed(&alice).await.is_empty());

    // Bob is not in the room, then in it without power: refused both times.
    let (status, body) = bob.put(&path, json!({"visibility": "public"})).await;
    assert_eq!((status, errcode(&body)), (403, Some("M_FORBIDDEN")), "{body}");
    join(&bob, &room).await;
    let (status, body) = bob.put(&path, json!({"visibility": "public"})).await;
    assert_eq!((status, errcode(&body)), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(alice.get(&path).await.1["visibility"], "private");

    // Alice publishes it; it shows up in /publicRooms.
    assert_eq!(alice.put(&path, json!({"visibility": "public"})).await.0, 200);
    assert_eq!(alice.get(&path).await.1["visibility"], "public");
    assert_eq!(listed(&alice).await, vec![room.clone()]);
    // A bad value changes nothing.
    let (status, body) = alice.put(&path, json!({"visibility": "sideways"})).await;
    assert_eq!((status, errcode(&body)), (400, Some("M_INVALID_PARAM")), "{body}");
    assert_eq!(alice.get(&path).await.1["visibility"], "public");
    // Unpublished again.
    assert_eq!(alice.put(&path, json!({"visibility": "private"})).await.0, 200);
    assert!(listed(&alice).await.is_empty());

    // createRoom with visibility=public publishes straight away.
    let published = create_room(&alice, json!({"visibility": "public", "preset": "public_chat"})).await;
    assert_eq!(listed(&alice).await, vec![published]);

    let unknown = "/_matrix/client/v3/directory/list/room/!nope:weft.test";
    let (status, body) = alice.get(unknown).await;
    assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.put(unknown, json!({"visibility": "public"})).await;
    assert_eq!((status, errcode(&body)), (404, Some("M_NOT_FOUND")), "{body}");
    server.stop().await;
});

async fn listed(client: &Client) -> Vec<String> {
    let (status, body) = client.get("/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, 200, "{body}");
    room_ids(&body)
}

fn room_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(public_rooms_listing_search_and_pagination, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let mut body = json!({"visibility": "public", "preset": "public_chat", "name": format!("Room {i}"), "topic": format!("Topic {i}")});
        if i == 2 {
            body["topic"] = json!("All about Gardening");
        }
        if i == 3 {
            body["room_alias_name"] = json!("cats");
        }
        if i == 1 {
            body["initial_state"] = json!([{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]);
        }
        rooms.push(create_room(&alice, body).await);
    }
    create_room(&alice, json!({"preset": "public_chat", "name": "Room unlisted"})).await;
    // Bob joins room 4, which makes it the biggest and so the first.
    join(&bob, &rooms[4]).await;

    // Everything at once, with the fields a client shows.
    let (status, body) = server.client().get("/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_room_count_estimate"], 5);
    let ids = room_ids(&body);
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], rooms[4]);
    let first = &body["chunk"][0];
    assert_eq!(first["name"], "Room 4");
    assert_eq!(first["topic"], "Topic 4");
    assert_eq!(first["num_joined_members"], 2);
    assert_eq!(first["world_readable"], false);
    assert_eq!(first["guest_can_join"], false);
    // An absent join_rule means public (the spec's default).
    assert!(first.get("join_rule").is_none_or(|r| r == "public"), "{first}");
    assert!(body.get("next_batch").is_none(), "{body}");
    let cats = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == rooms[3].as_str())
        .unwrap();
    assert_eq!(cats["canonical_alias"], "#cats:weft.test");
    let knock = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == rooms[1].as_str())
        .unwrap();
    assert_eq!(knock["join_rule"], "knock");

    // Pages of 2 with GET: 3 pages, every room once, tokens both ways.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &since {
            Some(s) => format!("?limit=2&since={}", urlencode(s)),
            None => "?limit=2".into(),
        };
        let (status, body) = alice.get(&format!("/_matrix/client/v3/publicRooms{q}")).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        assert_eq!(body["total_room_count_estimate"], 5);
        assert_eq!(body.get("prev_batch").is_some(), since.is_some(), "{body}");
        seen.extend(room_ids(&body));
        match body["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
    // prev_batch of the last page leads back to the second one.
    let (_, last) = alice
        .get(&format!(
            "/_matrix/client/v3/publicRooms?limit=2&since={}",
            urlencode(since.as_deref().unwrap())
        ))
        .await;
    let prev = last["prev_batch"].as_str().unwrap();
    let (_, second) = alice
        .get(&format!(
            "/_matrix/client/v3/publicRooms?limit=2&since={}",
            urlencode(prev)
        ))
        .await;
    assert_eq!(room_ids(&second), ids[2..4].to_vec());

    // The same with POST.
    let (status, body) = alice.post("/_matrix/client/v3/publicRooms", json!({"limit": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(room_ids(&body), ids[..2].to_vec());
    let next = body["next_batch"].as_str().unwrap();
    let (_, body) = alice
        .post("/_matrix/client/v3/publicRooms", json!({"limit": 2, "since": next}))
        .await;
    assert_eq!(room_ids(&body), ids[2..4].to_vec());

    // Search, case-insensitively, in the topic, the name and the canonical alias.
    let search = |term: &str| json!({"filter": {"generic_search_term": term}});
    let (_, body) = alice.post("/_matrix/client/v3/publicRooms", search("gARDEN")).await;
    assert_eq!(room_ids(&body), vec![rooms[2].clone()]);
    assert_eq!(body["total_room_count_estimate"], 1);
    let (_, body) = alice.post("/_matrix/client/v3/publicRooms", search("#CATS")).await;
    assert_eq!(room_ids(&body), vec![rooms[3].clone()]);
    let (_, body) = alice.post("/_matrix/client/v3/publicRooms", search("room 1")).await;
    assert_eq!(room_ids(&body), vec![rooms[1].clone()]);
    let (_, body) = alice
        .post("/_matrix/client/v3/publicRooms", search("nothing like this"))
        .await;
    assert_eq!(room_ids(&body), Vec::<String>::new());
    // A search that matches all of them paginates over the matches.
    let (_, body) = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({"limit": 4, "filter": {"generic_search_term": "room"}}),
        )
        .await;
    assert_eq!(room_ids(&body).len(), 4);
    assert_eq!(body["total_room_count_estimate"], 5);
    // Spaces only: none of these is one.
    let (_, body) = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({"filter": {"room_types": ["m.space"]}}),
        )
        .await;
    assert_eq!(room_ids(&body), Vec::<String>::new());

    // Errors: POST needs a token, tokens must be ours, other servers are not reachable yet.
    let (status, _) = server.client().post("/_matrix/client/v3/publicRooms", json!({})).await;
    assert_eq!(status, 401);
    let (status, body) = alice.get("/_matrix/client/v3/publicRooms?since=garbage").await;
    assert_eq!((status, errcode(&body)), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = alice
        .get("/_matrix/client/v3/publicRooms?server=weft.test&limit=1")
        .await;
    assert_eq!((status, room_ids(&body)), (200, vec![rooms[4].clone()]), "{body}");
    // Another server's directory is asked over federation; one that cannot be reached is a
    // bad gateway (listing a reachable one: federation_rooms.rs).
    let (status, body) = alice.get("/_matrix/client/v3/publicRooms?server=other.test").await;
    assert_eq!(status, 502, "{body}");
    server.stop().await;
});
