//! Relations (`/relations`, `/threads`, edits in unsigned), room upgrades and the space
//! hierarchy.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, messages, send_text, urlencode},
};

async fn send(client: &Client, room: &str, kind: &str, txn: &str, content: Value) -> String {
    let (status, body) = client
        .put(&format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}"), content)
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn react(client: &Client, room: &str, txn: &str, target: &str, key: &str) -> String {
    send(
        client,
        room,
        "m.reaction",
        txn,
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}),
    )
    .await
}

async fn thread_reply(client: &Client, room: &str, txn: &str, root: &str, body: &str) -> String {
    let content =
        json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send(client, room, "m.room.message", txn, content).await
}

async fn put_state(client: &Client, room: &str, kind: &str, key: &str, content: Value) -> (u16, Value) {
    client
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{key}"), content)
        .await
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap_or_else(|| panic!("no chunk in {chunk}"))
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn room_ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms in {body}"))
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(relations_threads_and_edits, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
        200
    );

    let (_, root) = send_text(&alice, &room, "r", "root").await;
    let root = root["event_id"].as_str().unwrap().to_owned();
    let a1 = react(&bob, &room, "a1", &root, "👍").await;
    let a2 = react(&alice, &room, "a2", &root, "🎉").await;
    let edit = send(
        &alice,
        &room,
        "m.room.message",
        "e1",
        json!({"msgtype": "m.text", "body": "* root edited", "m.new_content": {"msgtype": "m.text", "body": "root edited"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    let t1 = thread_reply(&bob, &room, "t1", &root, "bob in thread").await;
    let t2 = thread_reply(&alice, &room, "t2", &root, "alice in thread").await;
    // A reaction to a thread reply relates to the root only indirectly.
    let nested = react(&alice, &room, "n1", &t1, "👀").await;
    // An unrelated message is never a relation.
    send_text(&alice, &room, "plain", "plain").await;

    let base = format!("/_matrix/client/v1/rooms/{room}/relations/{root}");
    let (status, body) = alice.get(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body["chunk"]),
        vec![t2.clone(), t1.clone(), edit.clone(), a2.clone(), a1.clone()]
    );
    assert!(
        body.get("next_batch").is_none() && body.get("recursion_depth").is_none(),
        "{body}"
    );
    let (_, body) = alice.get(&format!("{base}?dir=f")).await;
    assert_eq!(
        ids(&body["chunk"]),
        vec![a1.clone(), a2.clone(), edit.clone(), t1.clone(), t2.clone()]
    );

    // By relation type, and by relation and event type.
    let (status, body) = alice.get(&format!("{base}/m.annotation")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["chunk"]), vec![a2.clone(), a1.clone()]);
    assert_eq!(body["chunk"][1]["content"]["m.relates_to"]["key"], "👍");
    let (_, body) = alice.get(&format!("{base}/m.annotation/m.reaction")).await;
    assert_eq!(ids(&body["chunk"]), vec![a2.clone(), a1.clone()]);
    let (_, body) = alice.get(&format!("{base}/m.annotation/m.room.message")).await;
    assert_eq!(ids(&body["chunk"]), Vec::<String>::new());
    let (_, body) = alice.get(&format!("{base}/m.thread/m.room.message")).await;
    assert_eq!(ids(&body["chunk"]), vec![t2.clone(), t1.clone()]);

    // Recursion follows the reaction on the thread reply.
    let (_, body) = alice.get(&format!("{base}?recurse=true")).await;
    assert_eq!(
        ids(&body["chunk"]),
        vec![
            nested.clone(),
            t2.clone(),
            t1.clone(),
            edit.clone(),
            a2.clone(),
            a1.clone()
        ]
    );
    assert_eq!(body["recursion_depth"], 3, "{body}");
    let (_, body) = alice.get(&format!("{base}/m.annotation?recurse=true")).await;
    assert_eq!(ids(&body["chunk"]), vec![nested.clone(), a2.clone(), a1.clone()]);

    // Pagination: pages of two, each continuing where the last stopped.
    let mut all = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &from {
            Some(f) => format!("?limit=2&from={}", urlencode(f)),
            None => "?limit=2".into(),
        };
        let (status, body) = alice.get(&format!("{base}{q}")).await;
        assert_eq!(status, 200, "{body}");
        let page = ids(&body["chunk"]);
        assert!(page.len() <= 2 && !page.is_empty(), "{body}");
        if from.is_some() {
            assert_eq!(body["prev_batch"].as_str(), from.as_deref());
        }
        all.extend(page);
        pages += 1;
        match body["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all, vec![t2.clone(), t1.clone(), edit.clone(), a2.clone(), a1.clone()]);

    // Unknown parent, a stranger, and a non-event ID.
    let (status, body) = alice
        .get(&format!("/_matrix/client/v1/rooms/{room}/relations/$nope"))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, _) = carol.get(&base).await;
    assert_eq!(status, 404);
    let (status, body) = alice.get(&format!("{base}?from=garbage")).await;
    assert_eq!(status, 400, "{body}");

    // A redacted reaction no longer counts.
    let (status, _) = bob
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{a1}/red1"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, body) = alice.get(&format!("{base}/m.annotation")).await;
    assert_eq!(ids(&body["chunk"]), vec![a2.clone()]);

    // The edit is bundled with the original in /messages, and the thread summary too.
    let (_, body) = messages(&alice, &room, "dir=b&limit=50").await;
    let original = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("root in /messages")
        .clone();
    assert_eq!(
        original["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str(),
        "{original}"
    );
    assert_eq!(
        original["unsigned"]["m.relations"]["m.thread"]["count"], 2,
        "{original}"
    );

    // Threads: a second thread by bob, more recently active.
    let (_, root2) = send_text(&bob, &room, "r2", "second root").await;
    let root2 = root2["event_id"].as_str().unwrap().to_owned();
    thread_reply(&bob, &room, "t3", &root2, "bob again").await;
    let threads = format!("/_matrix/client/v1/rooms/{room}/threads");
    let (status, body) = alice.get(&threads).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["chunk"]), vec![root2.clone(), root.clone()]);
    let summary = &body["chunk"][1]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        (summary["count"].as_u64(), summary["latest_event"]["event_id"].as_str()),
        (Some(2), Some(t2.as_str())),
        "{body}"
    );
    assert_eq!(summary["current_user_participated"], true);
    // New activity moves a thread to the front.
    thread_reply(&alice, &room, "t4", &root, "alice again").await;
    let (_, body) = alice.get(&threads).await;
    assert_eq!(ids(&body["chunk"]), vec![root.clone(), root2.clone()]);
    // Alice took part only in the first; bob in both.
    let (_, body) = alice.get(&format!("{threads}?include=participated")).await;
    assert_eq!(ids(&body["chunk"]), vec![root.clone()]);
    let (_, body) = bob.get(&format!("{threads}?include=participated")).await;
    assert_eq!(ids(&body["chunk"]), vec![root.clone(), root2.clone()]);
    // One thread per page.
    let (_, body) = alice.get(&format!("{threads}?limit=1")).await;
    assert_eq!(ids(&body["chunk"]), vec![root.clone()]);
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, body) = alice.get(&format!("{threads}?limit=1&from={}", urlencode(&next))).await;
    assert_eq!(ids(&body["chunk"]), vec![root2.clone()]);
    assert!(body.get("next_batch").is_none(), "{body}");
    // Outsiders of a non-world-readable room may not list threads.
    let (status, _) = carol.get(&threads).await;
    assert_eq!(status, 403);
    server.stop().await;
});

both_backends!(room_upgrade, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &alice,
        json!({"preset": "public_chat", "name": "Old name", "topic": "Old topic", "room_alias_name": "upg"}),
    )
    .await;
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
        200
    );
    let (_, mut pl) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"))
        .await;
    pl["users"]["@bob:weft.test"] = json!(42);
    assert_eq!(put_state(&alice, &room, "m.room.power_levels", "", pl).await.0, 200);

    let upgrade = format!("/_matrix/client/v3/rooms/{room}/upgrade");
    let (status, body) = bob.post(&upgrade, json!({"new_version": "11"})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = alice.post(&upgrade, json!({"new_version": "999"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNSUPPORTED_ROOM_VERSION")),
        "{body}"
    );
    let (status, body) = alice.post(&upgrade, json!({})).await;
    assert_eq!(status, 400, "{body}");
    // Nothing happened so far.
    let (status, _) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.tombstone"))
        .await;
    assert_eq!(status, 404);

    let (status, body) = alice.post(&upgrade, json!({"new_version": "11"})).await;
    assert_eq!(status, 200, "{body}");
    let new_room = body["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new_room, room);

    let (status, tombstone) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.tombstone"))
        .await;
    assert_eq!(
        (status, tombstone["replacement_room"].as_str()),
        (200, Some(new_room.as_str())),
        "{tombstone}"
    );
    let (_, create) = alice
        .get(&format!("/_matrix/client/v3/rooms/{new_room}/state/m.room.create"))
        .await;
    assert_eq!(create["predecessor"]["room_id"], room.as_str(), "{create}");
    assert_eq!(create["room_version"], "11");
    // The predecessor names the old room's tombstone event.
    let (_, old_state) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/state")).await;
    let tombstone_id = old_state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.tombstone")
        .map(|e| e["event_id"].clone())
        .unwrap();
    assert_eq!(create["predecessor"]["event_id"], tombstone_id, "{create}");
    let (_, name) = alice
        .get(&format!("/_matrix/client/v3/rooms/{new_room}/state/m.room.name"))
        .await;
    assert_eq!(name["name"], "Old name");
    let (_, topic) = alice
        .get(&format!("/_matrix/client/v3/rooms/{new_room}/state/m.room.topic"))
        .await;
    assert_eq!(topic["topic"], "Old topic");
    let (_, join_rules) = alice
        .get(&format!("/_matrix/client/v3/rooms/{new_room}/state/m.room.join_rules"))
        .await;
    assert_eq!(join_rules["join_rule"], "public");
    let (_, new_pl) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{new_room}/state/m.room.power_levels"
        ))
        .await;
    assert_eq!(
        (
            new_pl["users"]["@bob:weft.test"].as_i64(),
            new_pl["users"]["@alice:weft.test"].as_i64()
        ),
        (Some(42), Some(100)),
        "{new_pl}"
    );

    // The alias now leads to the new room, which names it as canonical; the old one no longer does.
    let (status, resolved) = alice
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            urlencode("#upg:weft.test")
        ))
        .await;
    assert_eq!(
        (status, resolved["room_id"].as_str()),
        (200, Some(new_room.as_str())),
        "{resolved}"
    );
    let (_, canonical) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{new_room}/state/m.room.canonical_alias"
        ))
        .await;
    assert_eq!(canonical["alias"], "#upg:weft.test");
    let (_, old_canonical) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"))
        .await;
    assert!(old_canonical.get("alias").is_none(), "{old_canonical}");

    // The old room is closed to ordinary users.
    let (_, old_pl) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"))
        .await;
    assert!(
        old_pl["events_default"].as_i64() >= Some(50) && old_pl["invite"].as_i64() >= Some(50),
        "{old_pl}"
    );
    assert_eq!(send_text(&bob, &room, "late", "anyone?").await.0, 403);
    // Bob can follow into the new (public) room and talk there.
    assert_eq!(
        bob.post(&format!("/_matrix/client/v3/join/{new_room}"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(send_text(&bob, &new_room, "hi", "hi").await.0, 200);

    // To v12: creators have implicit power, so alice leaves `users`; bob keeps his level.
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{new_room}/upgrade"),
            json!({"new_version": "12"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v12 = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, create) = alice
        .get(&format!("/_matrix/client/v3/rooms/{v12}/state/m.room.create"))
        .await;
    assert_eq!(
        (
            create["room_version"].as_str(),
            create["predecessor"]["room_id"].as_str()
        ),
        (Some("12"), Some(new_room.as_str())),
        "{create}"
    );
    let (_, v12_pl) = alice
        .get(&format!("/_matrix/client/v3/rooms/{v12}/state/m.room.power_levels"))
        .await;
    assert!(v12_pl["users"].get("@alice:weft.test").is_none(), "{v12_pl}");
    assert_eq!(v12_pl["users"]["@bob:weft.test"], 42);
    let (_, name) = alice
        .get(&format!("/_matrix/client/v3/rooms/{v12}/state/m.room.name"))
        .await;
    assert_eq!(name["name"], "Old name");
    // Alice, as creator, can still administer the new room.
    assert_eq!(
        put_state(&alice, &v12, "m.room.name", "", json!({"name": "New name"}))
            .await
            .0,
        200
    );
    server.stop().await;
});

both_backends!(space_hierarchy, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let space_of = |name: &str| json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}});
    let space = create_room(&alice, space_of("Space")).await;
    let sub = create_room(&alice, space_of("Subspace")).await;
    let grandchild = create_room(
        &alice,
        json!({"preset": "public_chat", "name": "Grandchild", "topic": "deep"}),
    )
    .await;
    let private = create_room(&alice, json!({"preset": "private_chat", "name": "Private"})).await;
    let via = json!(["weft.test"]);
    assert_eq!(
        put_state(
            &alice,
            &space,
            "m.space.child",
            &sub,
            json!({"via": via, "order": "a", "suggested": true})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put_state(
            &alice,
            &space,
            "m.space.child",
            &private,
            json!({"via": via, "order": "b"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put_state(&alice, &sub, "m.space.child", &grandchild, json!({"via": via}))
            .await
            .0,
        200
    );
    // A child without `via` is no child.
    let ghost = create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(
        put_state(&alice, &space, "m.space.child", &ghost, json!({})).await.0,
        200
    );

    let path = format!("/_matrix/client/v1/rooms/{space}/hierarchy");
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, 200, "{body}");
    // Depth-first, children ordered by `order`.
    assert_eq!(
        room_ids(&body),
        vec![space.clone(), sub.clone(), grandchild.clone(), private.clone()]
    );
    assert!(body.get("next_batch").is_none());
    let root = &body["rooms"][0];
    assert_eq!(
        (
            root["name"].as_str(),
            root["room_type"].as_str(),
            root["num_joined_members"].as_u64()
        ),
        (Some("Space"), Some("m.space"), Some(1)),
        "{root}"
    );
    let children: Vec<&str> = root["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(children, vec![sub.as_str(), private.as_str()]);
    assert_eq!(root["children_state"][0]["type"], "m.space.child");
    assert_eq!(root["children_state"][0]["content"]["via"], via);
    let leaf = &body["rooms"][2];
    assert_eq!(
        (
            leaf["name"].as_str(),
            leaf["topic"].as_str(),
            leaf["world_readable"].as_bool()
        ),
        (Some("Grandchild"), Some("deep"), Some(false)),
        "{leaf}"
    );
    assert_eq!(leaf["children_state"], json!([]));
    assert_eq!(body["rooms"][3]["join_rule"], "invite");

    let (_, body) = alice.get(&format!("{path}?max_depth=1")).await;
    assert_eq!(room_ids(&body), vec![space.clone(), sub.clone(), private.clone()]);
    let (_, body) = alice.get(&format!("{path}?max_depth=0")).await;
    assert_eq!(room_ids(&body), vec![space.clone()]);
    // Only suggested children, at every level.
    let (_, body) = alice.get(&format!("{path}?suggested_only=true")).await;
    assert_eq!(room_ids(&body), vec![space.clone(), sub.clone()]);
    assert_eq!(body["rooms"][0]["children_state"].as_array().unwrap().len(), 1);

    // Pages of two.
    let (_, body) = alice.get(&format!("{path}?limit=2")).await;
    assert_eq!(room_ids(&body), vec![space.clone(), sub.clone()]);
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, body) = alice.get(&format!("{path}?limit=2&from={}", urlencode(&next))).await;
    assert_eq!(room_ids(&body), vec![grandchild.clone(), private.clone()]);
    assert!(body.get("next_batch").is_none(), "{body}");
    let (status, body) = alice
        .get(&format!("{path}?limit=2&from={}&suggested_only=true", urlencode(&next)))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, _) = alice.get(&format!("{path}?limit=0")).await;
    assert_eq!(status, 400);

    // Bob sees the public rooms but not the invite-only one, and not a private root.
    let (_, body) = bob.get(&path).await;
    assert_eq!(room_ids(&body), vec![space.clone(), sub.clone(), grandchild.clone()]);
    let (status, body) = bob.get(&format!("/_matrix/client/v1/rooms/{private}/hierarchy")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = bob.get("/_matrix/client/v1/rooms/!unknown:weft.test/hierarchy").await;
    assert_eq!(status, 403);
    // Once invited, bob may peek at the private room too.
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{private}/invite"),
                json!({"user_id": "@bob:weft.test"})
            )
            .await
            .0,
        200
    );
    let (_, body) = bob.get(&path).await;
    assert_eq!(
        room_ids(&body),
        vec![space.clone(), sub.clone(), grandchild.clone(), private.clone()]
    );
    server.stop().await;
});
