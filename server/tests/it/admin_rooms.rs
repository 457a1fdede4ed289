//! The admin API for rooms, media and federation destinations, on Synapse's paths and shapes:
//! only admins, the room list's ordering and pagination, room details and timelines, a room
//! deletion (members kicked and moved, aliases moved, the room blocked, then purged) polled to
//! completion, media quarantine and deletion, users' media statistics, destinations after a
//! federation send, and the calls the synapse-admin web UI makes for its rooms and media pages.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, send_text},
    harness::*,
    harness_federation::start_federation,
    rooms::{create_room, send_ok},
    sync::sync,
};

/// Runs one statement on the server's database.
async fn sql(server: &TestServer, statement: &str) {
    let db = weft_core::Db::connect(&server.db.url, 1).await.expect("connect");
    sqlx::query(statement).execute(db.pool()).await.expect("statement");
    db.close().await;
}

async fn count(server: &TestServer, query: &str) -> i64 {
    let db = weft_core::Db::connect(&server.db.url, 1).await.expect("connect");
    let (n,): (i64,) = sqlx::query_as(query).fetch_one(db.pool()).await.expect("count");
    db.close().await;
    n
}

/// Registers `localpart` and makes them a server admin.
async fn register_admin(server: &TestServer, localpart: &str) -> Client {
    let client = server.register(localpart, "pw").await;
    sql(
        server,
        &format!(
            "UPDATE users SET is_admin = 1 WHERE user_id = '@{localpart}:{}'",
            server.config.server_name
        ),
    )
    .await;
    client
}

async fn upload(client: &Client, bytes: &'static [u8]) -> String {
    let res = client
        .http
        .post(format!("{}/_matrix/media/v3/upload", client.base))
        .bearer_auth(client.token.as_deref().unwrap())
        .header("content-type", "text/plain")
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    body["content_uri"].as_str().unwrap().to_owned()
}

async fn download_status(client: &Client, mxc: &str) -> u16 {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let (status, _) = client.get(&format!("/_matrix/client/v1/media/download/{path}")).await;
    status
}

/// Polls a deletion until it ends; answers its final status.
async fn wait_deleted(admin: &Client, delete_id: &str) -> Value {
    eventually("the room deletion to end", || async {
        let (status, body) = admin
            .get(&format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}"))
            .await;
        assert_eq!(status, 200, "{body}");
        (body["status"] == "complete" || body["status"] == "failed").then_some(body)
    })
    .await
}

both_backends!(only_admins_may_call, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = register_admin(&server, "admin").await;
    let user = server.register("user", "pw").await;
    let room = create_room(&user, json!({"name": "Mine"})).await;
    let r = enc(&room);
    let s = server.config.server_name.clone();
    let calls: Vec<(Method, String)> = vec![
        (Method::GET, "/_synapse/admin/v1/rooms".into()),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}")),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}/members")),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}/state")),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}/messages")),
        (
            Method::GET,
            format!("/_synapse/admin/v1/rooms/{r}/timestamp_to_event?ts=0"),
        ),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}/forward_extremities")),
        (
            Method::DELETE,
            format!("/_synapse/admin/v1/rooms/{r}/forward_extremities"),
        ),
        (Method::GET, format!("/_synapse/admin/v1/rooms/{r}/block")),
        (Method::PUT, format!("/_synapse/admin/v1/rooms/{r}/block")),
        (Method::POST, format!("/_synapse/admin/v1/rooms/{r}/make_room_admin")),
        (Method::DELETE, format!("/_synapse/admin/v2/rooms/{r}")),
        (Method::GET, format!("/_synapse/admin/v2/rooms/{r}/delete_status")),
        (Method::GET, "/_synapse/admin/v2/rooms/delete_status/abc".into()),
        (Method::GET, format!("/_synapse/admin/v1/room/{r}/media")),
        (Method::POST, format!("/_synapse/admin/v1/room/{r}/media/quarantine")),
        (Method::POST, format!("/_synapse/admin/v1/media/quarantine/{s}/abc")),
        (Method::POST, format!("/_synapse/admin/v1/media/unquarantine/{s}/abc")),
        (Method::POST, "/_synapse/admin/v1/media/protect/abc".into()),
        (Method::POST, "/_synapse/admin/v1/media/unprotect/abc".into()),
        (Method::GET, format!("/_synapse/admin/v1/media/{s}/abc")),
        (Method::DELETE, format!("/_synapse/admin/v1/media/{s}/abc")),
        (
            Method::POST,
            "/_synapse/admin/v1/media/delete?before_ts=1700000000000".into(),
        ),
        (
            Method::POST,
            "/_synapse/admin/v1/purge_media_cache?before_ts=1700000000000".into(),
        ),
        (Method::GET, "/_synapse/admin/v1/statistics/users/media".into()),
        (Method::GET, "/_synapse/admin/v1/federation/destinations".into()),
        (
            Method::GET,
            "/_synapse/admin/v1/federation/destinations/other.test".into(),
        ),
        (
            Method::GET,
            "/_synapse/admin/v1/federation/destinations/other.test/rooms".into(),
        ),
        (
            Method::POST,
            "/_synapse/admin/v1/federation/destinations/other.test/reset_connection".into(),
        ),
        (Method::GET, "/_synapse/admin/v1/background_updates/status".into()),
    ];
    let anonymous = server.client();
    for (method, path) in &calls {
        let (status, body) = user.request(method.clone(), path, Some(json!({"block": true}))).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{method} {path}"
        );
        let (status, body) = anonymous.request(method.clone(), path, Some(json!({}))).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (401, Some("M_MISSING_TOKEN")),
            "{method} {path}"
        );
    }
    // Nothing the refused calls asked for happened.
    let (_, block) = admin.get(&format!("/_synapse/admin/v1/rooms/{r}/block")).await;
    assert_eq!(block, json!({"block": false}));
    let (status, details) = admin.get(&format!("/_synapse/admin/v1/rooms/{r}")).await;
    assert_eq!((status, details["name"].as_str()), (200, Some("Mine")), "{details}");
    // An admin reaches each read-only one.
    let (status, body) = admin.get("/_synapse/admin/v1/background_updates/status").await;
    assert_eq!((status, body), (200, json!({"enabled": true, "current_updates": {}})));
    server.stop().await;
});

both_backends!(room_list_orders_and_pages, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = register_admin(&server, "admin").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    // Bravo has three members, Charlie two, Alpha one; Alpha is public and encrypted.
    let alpha = create_room(
        &alice,
        json!({"name": "Alpha", "visibility": "public", "preset": "public_chat",
               "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let bravo = create_room(
        &alice,
        json!({"name": "Bravo", "preset": "public_chat", "room_alias_name": "bravo"}),
    )
    .await;
    let charlie = create_room(&alice, json!({"name": "Charlie", "preset": "public_chat"})).await;
    for (who, room) in [(&bob, &bravo), (&carol, &bravo), (&bob, &charlie)] {
        let (status, body) = who
            .post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let names = |body: &Value| -> Vec<String> {
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (status, body) = admin.get("/_synapse/admin/v1/rooms").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["Alpha", "Bravo", "Charlie"]);
    assert_eq!(
        (body["total_rooms"].as_u64(), body["offset"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(
        body.get("next_batch").is_none() && body.get("prev_batch").is_none(),
        "{body}"
    );
    let (_, body) = admin.get("/_synapse/admin/v1/rooms?order_by=name&dir=b").await;
    assert_eq!(names(&body), ["Charlie", "Bravo", "Alpha"]);
    // Member counts: largest first, `dir=b` reverses.
    let (_, body) = admin.get("/_synapse/admin/v1/rooms?order_by=joined_members").await;
    assert_eq!(names(&body), ["Bravo", "Charlie", "Alpha"]);
    let (_, body) = admin
        .get("/_synapse/admin/v1/rooms?order_by=joined_local_members&dir=b")
        .await;
    assert_eq!(names(&body), ["Alpha", "Charlie", "Bravo"]);
    // Pages of two.
    let (_, first) = admin.get("/_synapse/admin/v1/rooms?limit=2").await;
    assert_eq!(names(&first), ["Alpha", "Bravo"]);
    assert_eq!(first["next_batch"], 2);
    let (_, second) = admin.get("/_synapse/admin/v1/rooms?limit=2&from=2").await;
    assert_eq!(names(&second), ["Charlie"]);
    assert_eq!(
        (second["prev_batch"].as_u64(), second["total_rooms"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(second.get("next_batch").is_none());
    // Search by name (any case) and alias.
    let (_, body) = admin.get("/_synapse/admin/v1/rooms?search_term=CHAR").await;
    assert_eq!(names(&body), ["Charlie"]);
    let (_, body) = admin.get("/_synapse/admin/v1/rooms?search_term=%23bravo").await;
    assert_eq!(
        (names(&body), body["total_rooms"].as_u64()),
        (vec!["Bravo".to_owned()], Some(1))
    );
    // Bad parameters are Matrix errors.
    for bad in ["order_by=colour", "dir=x", "from=-1", "limit=x"] {
        let (status, body) = admin.get(&format!("/_synapse/admin/v1/rooms?{bad}")).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{bad}: {body}"
        );
    }

    // What synapse-admin reads on its room list and room page.
    let (_, body) = admin
        .get("/_synapse/admin/v1/rooms?from=0&limit=10&order_by=name&dir=f&search_term=Alpha")
        .await;
    let listed = &body["rooms"][0];
    assert_eq!(listed["room_id"], alpha);
    assert_eq!(listed["canonical_alias"], Value::Null);
    assert_eq!(
        (
            listed["joined_members"].as_u64(),
            listed["joined_local_members"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(listed["version"], "11");
    assert_eq!(listed["creator"], "@alice:weft.test");
    assert_eq!(listed["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(
        (listed["federatable"].as_bool(), listed["public"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(listed["join_rules"], "public");
    assert_eq!(listed["history_visibility"], "shared");
    assert!(listed["state_events"].as_u64().unwrap() >= 6, "{listed}");
    let (status, details) = admin.get(&format!("/_synapse/admin/v1/rooms/{}", enc(&bravo))).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["canonical_alias"], "#bravo:weft.test");
    assert_eq!(details["joined_members"], 3);
    assert_eq!(details["joined_local_devices"], 3);
    assert_eq!(
        (details["public"].as_bool(), details["forgotten"].as_bool()),
        (Some(false), Some(false))
    );
    let (_, members) = admin
        .get(&format!("/_synapse/admin/v1/rooms/{}/members", enc(&bravo)))
        .await;
    assert_eq!(
        members,
        json!({"members": ["@alice:weft.test", "@bob:weft.test", "@carol:weft.test"], "total": 3})
    );
    let (_, state) = admin
        .get(&format!("/_synapse/admin/v1/rooms/{}/state", enc(&bravo)))
        .await;
    let state = state["state"].as_array().unwrap();
    assert_eq!(state.len() as u64, details["state_events"].as_u64().unwrap());
    assert!(state
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Bravo" && e["event_id"].is_string()));
    let (status, _) = admin.get("/_synapse/admin/v1/rooms/!unknown:weft.test").await;
    assert_eq!(status, 404);

    // The admin, in none of these rooms, reads the timeline both ways and by time.
    let first = send_ok(&alice, &bravo, "t1", "one").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_two = weft_core::util::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = send_ok(&alice, &bravo, "t2", "two").await;
    let (status, page) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{}/messages?dir=b&limit=2",
            enc(&bravo)
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let (_, older) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{}/messages?dir=b&limit=100&from={}",
            enc(&bravo),
            page["end"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        older["chunk"].as_array().unwrap().last().unwrap()["type"],
        "m.room.create"
    );
    let (_, found) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{}/timestamp_to_event?ts={before_two}&dir=f",
            enc(&bravo)
        ))
        .await;
    assert_eq!(found["event_id"], second.as_str());
    let (_, found) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{}/timestamp_to_event?ts={before_two}&dir=b",
            enc(&bravo)
        ))
        .await;
    assert_eq!(found["event_id"], first.as_str());
    let (_, extremities) = admin
        .get(&format!("/_synapse/admin/v1/rooms/{}/forward_extremities", enc(&bravo)))
        .await;
    assert_eq!(extremities["count"], 1);
    assert_eq!(extremities["results"][0]["event_id"], second.as_str());
    let (_, deleted) = admin
        .delete(
            &format!("/_synapse/admin/v1/rooms/{}/forward_extremities", enc(&bravo)),
            json!({}),
        )
        .await;
    assert_eq!(deleted, json!({"deleted": 0}));

    // make_room_admin: the admin gets alice's power in Charlie, joining it as it is public.
    let (status, body) = admin
        .post(
            &format!("/_synapse/admin/v1/rooms/{}/make_room_admin", enc(&charlie)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin
        .post(&format!("/_matrix/client/v3/join/{}", enc(&charlie)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&charlie)),
            json!({"topic": "moderated"}),
        )
        .await;
    assert_eq!(status, 200, "the admin has power now: {body}");
    server.stop().await;
});

both_backends!(room_deletion_kicks_moves_blocks_and_purges, |backend| async move {
    let Some(mut server) = TestServer::start(backend).await else {
        return;
    };
    let admin = register_admin(&server, "admin").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(
        &alice,
        json!({"name": "Doomed", "preset": "public_chat", "room_alias_name": "doomed"}),
    )
    .await;
    let (status, _) = bob
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200);
    send_ok(&alice, &room, "m1", "bad content").await;
    let since = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();

    // Unknown rooms and unknown owners of the notice room are refused up front.
    let (status, _) = admin
        .delete("/_synapse/admin/v2/rooms/!nope:weft.test", json!({}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = admin
        .delete(
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            json!({"new_room_user_id": "@ghost:weft.test"}),
        )
        .await;
    assert_eq!(status, 400);

    // Shut down, block, move members to a notice room; no purge yet.
    let (status, body) = admin
        .delete(
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            json!({"new_room_user_id": "@admin:weft.test", "room_name": "Gone", "message": "Moved here",
                   "block": true, "purge": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let delete_id = body["delete_id"].as_str().unwrap().to_owned();
    let done = wait_deleted(&admin, &delete_id).await;
    assert_eq!(done["status"], "complete", "{done}");
    let shutdown = &done["shutdown_room"];
    let mut kicked: Vec<&str> = shutdown["kicked_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    kicked.sort();
    assert_eq!(kicked, ["@alice:weft.test", "@bob:weft.test"]);
    assert_eq!(shutdown["failed_to_kick_users"], json!([]));
    assert_eq!(shutdown["local_aliases"], json!(["#doomed:weft.test"]));
    let new_room = shutdown["new_room_id"].as_str().unwrap().to_owned();

    // Bob sees the leave, and is in the notice room with its message.
    let wide = format!("filter={}", enc(r#"{"room":{"timeline":{"limit":50}}}"#));
    let after = sync(&bob, Some(&since), &wide).await;
    let left = &after["rooms"]["leave"][&room];
    assert!(
        left["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == "@bob:weft.test"
                && e["content"]["membership"] == "leave"),
        "{after}"
    );
    let joined = &after["rooms"]["join"][&new_room];
    assert!(
        joined["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "Moved here"),
        "{after}"
    );
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/x", enc(&new_room)),
            json!({"msgtype": "m.text", "body": "can I speak?"}),
        )
        .await;
    assert_eq!(status, 403, "members of the notice room cannot speak: {body}");
    // The alias now leads to the notice room; the old room is blocked.
    let (_, resolved) = bob.get("/_matrix/client/v3/directory/room/%23doomed:weft.test").await;
    assert_eq!(resolved["room_id"], new_room.as_str());
    let (_, block) = admin
        .get(&format!("/_synapse/admin/v1/rooms/{}/block", enc(&room)))
        .await;
    assert_eq!(block, json!({"block": true, "user_id": "@admin:weft.test"}));
    let (status, body) = bob
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // Then the purge: the room's rows are gone from the database.
    let (status, body) = admin
        .delete(
            &format!("/_synapse/admin/v2/rooms/{}", enc(&room)),
            json!({"purge": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let purge_id = body["delete_id"].as_str().unwrap().to_owned();
    let purged = wait_deleted(&admin, &purge_id).await;
    assert_eq!(purged["status"], "complete", "{purged}");
    let (status, _) = admin
        .get(&format!("/_synapse/admin/v1/rooms/{}/messages", enc(&room)))
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin.get(&format!("/_synapse/admin/v1/rooms/{}", enc(&room))).await;
    assert_eq!(status, 404);
    let (_, list) = admin.get("/_synapse/admin/v1/rooms").await;
    assert_eq!(list["total_rooms"], 1, "only the notice room is left: {list}");
    for table in [
        "events",
        "current_state",
        "room_memberships",
        "state_groups",
        "rooms",
        "event_search",
    ] {
        let n = count(
            &server,
            &format!("SELECT COUNT(*) FROM {table} WHERE room_id = '{room}'"),
        )
        .await;
        assert_eq!(n, 0, "{table} still has rows of the purged room");
    }
    // Still blocked, and both deletions are listed for the room.
    let (status, _) = bob
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 403);
    let (_, statuses) = admin
        .get(&format!("/_synapse/admin/v2/rooms/{}/delete_status", enc(&room)))
        .await;
    let ids: Vec<&str> = statuses["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["delete_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [delete_id.as_str(), purge_id.as_str()]);
    let (status, _) = admin.get("/_synapse/admin/v2/rooms/delete_status/unknown").await;
    assert_eq!(status, 404);

    // A job its server stopped running is reported failed, not active for ever.
    sql(
        &server,
        "INSERT INTO room_deletions (delete_id, room_id, status, params, created_ts, updated_ts)
         VALUES ('stale', '!x:weft.test', 'purging', '{}', 1, 1)",
    )
    .await;
    let (_, stale) = admin.get("/_synapse/admin/v2/rooms/delete_status/stale").await;
    assert_eq!(stale["status"], "failed", "{stale}");
    assert!(stale["error"].as_str().unwrap().contains("interrupted"));
    // On SQLite (one process) a restart fails at once the jobs its previous run left active.
    if matches!(backend, Backend::Sqlite) {
        sql(
            &server,
            &format!(
                "INSERT INTO room_deletions (delete_id, room_id, status, params, created_ts, updated_ts)
                 VALUES ('cut', '!y:weft.test', 'shutting_down', '{{}}', 1, {})",
                weft_core::util::now_ms()
            ),
        )
        .await;
        server.restart().await;
        let admin = Client {
            base: server.url(),
            ..admin.clone()
        };
        let (_, cut) = admin.get("/_synapse/admin/v2/rooms/delete_status/cut").await;
        assert_eq!(cut["status"], "failed", "{cut}");
    }
    server.stop().await;
});

both_backends!(media_quarantine_protection_and_deletion, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = register_admin(&server, "admin").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let s = server.config.server_name.clone();
    let posted = upload(&alice, b"posted in the room").await;
    let kept = upload(&alice, b"kept").await;
    let bobs = upload(&bob, b"bob's file, longer than the others").await;
    let id = |mxc: &str| mxc.rsplit('/').next().unwrap().to_owned();
    let room = create_room(&alice, json!({"name": "Pics"})).await;
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/f1", enc(&room)),
            json!({"msgtype": "m.file", "body": "file", "url": posted}),
        )
        .await;
    assert_eq!(status, 200);

    // The room's media, quarantined as a whole.
    let (_, media) = admin
        .get(&format!("/_synapse/admin/v1/room/{}/media", enc(&room)))
        .await;
    assert_eq!(
        (media["local"].clone(), media["remote"].clone()),
        (json!([posted]), json!([]))
    );
    assert_eq!(download_status(&bob, &posted).await, 200);
    let (_, body) = admin
        .post(
            &format!("/_synapse/admin/v1/room/{}/media/quarantine", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(body, json!({"num_quarantined": 1}));
    assert_eq!(download_status(&bob, &posted).await, 404);
    assert_eq!(download_status(&alice, &posted).await, 404);

    // One item at a time: quarantine, release; protected media cannot be quarantined.
    let (status, _) = admin
        .post(
            &format!("/_synapse/admin/v1/media/quarantine/{s}/{}", id(&kept)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(download_status(&alice, &kept).await, 404);
    let (_, info) = admin.get(&format!("/_synapse/admin/v1/media/{s}/{}", id(&kept))).await;
    assert_eq!(info["media_info"]["quarantined_by"], "@admin:weft.test");
    assert_eq!(info["media_info"]["user_id"], "@alice:weft.test");
    assert_eq!(info["media_info"]["media_length"], 4);
    let (status, _) = admin
        .post(
            &format!("/_synapse/admin/v1/media/unquarantine/{s}/{}", id(&kept)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(download_status(&alice, &kept).await, 200);
    let (status, _) = admin
        .post(&format!("/_synapse/admin/v1/media/protect/{}", id(&kept)), json!({}))
        .await;
    assert_eq!(status, 200);
    admin
        .post(
            &format!("/_synapse/admin/v1/media/quarantine/{s}/{}", id(&kept)),
            json!({}),
        )
        .await;
    assert_eq!(
        download_status(&alice, &kept).await,
        200,
        "protected media is not quarantined"
    );
    let (_, info) = admin.get(&format!("/_synapse/admin/v1/media/{s}/{}", id(&kept))).await;
    assert_eq!(info["media_info"]["safe_from_quarantine"], true);
    let (status, _) = admin.post("/_synapse/admin/v1/media/protect/unknown", json!({})).await;
    assert_eq!(status, 404);

    // Users' usage, as synapse-admin's media statistics page asks for it.
    let (status, stats) = admin
        .get("/_synapse/admin/v1/statistics/users/media?from=0&limit=10&order_by=media_length&dir=b")
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["users"][0]["user_id"], "@bob:weft.test");
    assert_eq!(stats["users"][0]["media_count"], 1);
    assert_eq!(stats["users"][1]["user_id"], "@alice:weft.test");
    assert_eq!(
        (
            stats["users"][1]["media_count"].as_u64(),
            stats["users"][1]["media_length"].as_u64()
        ),
        (Some(2), Some(("posted in the room".len() + "kept".len()) as u64))
    );
    assert!(stats["users"][1].get("displayname").is_some());
    let (_, page) = admin.get("/_synapse/admin/v1/statistics/users/media?limit=1").await;
    assert_eq!(
        (page["users"].as_array().unwrap().len(), page["next_token"].as_u64()),
        (1, Some(1))
    );
    let (_, found) = admin
        .get("/_synapse/admin/v1/statistics/users/media?search_term=bob")
        .await;
    assert_eq!(found["total"], 1);

    // Deletion by age and size: protected media stays, and so does quarantined media.
    let (status, body) = admin.post("/_synapse/admin/v1/media/delete", json!({})).await;
    assert_eq!(status, 400, "{body}");
    let now = weft_core::util::now_ms() + 1000;
    let (status, body) = admin
        .post(
            &format!("/_synapse/admin/v1/media/delete?before_ts={now}&size_gt=5"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"deleted_media": [id(&bobs)], "total": 1}));
    assert_eq!(download_status(&bob, &bobs).await, 404);
    assert_eq!(download_status(&alice, &kept).await, 200);
    // Delete by ID; the file goes with its last row.
    let (status, body) = admin
        .delete(&format!("/_synapse/admin/v1/media/{s}/{}", id(&posted)), json!({}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"deleted_media": [id(&posted)], "total": 1}))
    );
    let (status, _) = admin
        .get(&format!("/_synapse/admin/v1/media/{s}/{}", id(&posted)))
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .delete(&format!("/_synapse/admin/v1/media/{s}/{}", id(&posted)), json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin.delete("/_synapse/admin/v1/media/other.test/abc", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM media").await, 1);
    let (status, body) = admin
        .post(
            &format!("/_synapse/admin/v1/purge_media_cache?before_ts={now}"),
            json!({}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"deleted": 0})));
    server.stop().await;
});

both_backends!(destinations_after_a_federation_send, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let (a, b) = (&servers[0], &servers[1]);
    let admin = register_admin(a, "admin").await;
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(a.server_name())
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    send_text(&alice, &room, "over the wire").await;
    let other = b.server_name().to_owned();
    // Listed once the send was acknowledged.
    let listed = eventually("the destination to be listed with a success", || async {
        let (status, body) = admin
            .get("/_synapse/admin/v1/federation/destinations?from=0&limit=10")
            .await;
        assert_eq!(status, 200, "{body}");
        body["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["destination"] == other.as_str() && d["last_successful_stream_ordering"].is_i64())
            .cloned()
            .map(|d| (d, body["total"].clone()))
    })
    .await;
    let (destination, total) = listed;
    assert_eq!(total, 1);
    assert_eq!(
        (
            destination["retry_last_ts"].as_i64(),
            destination["retry_interval"].as_i64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(destination["failure_ts"], Value::Null);
    let (status, one) = admin
        .get(&format!("/_synapse/admin/v1/federation/destinations/{}", enc(&other)))
        .await;
    assert_eq!((status, one["destination"].as_str()), (200, Some(other.as_str())));
    let (_, rooms) = admin
        .get(&format!(
            "/_synapse/admin/v1/federation/destinations/{}/rooms",
            enc(&other)
        ))
        .await;
    assert_eq!(rooms["total"], 1);
    assert_eq!(rooms["rooms"][0]["room_id"], room.as_str());
    assert!(rooms["rooms"][0]["stream_ordering"].is_i64());
    // Nothing to reset while it is reachable; unknown destinations are 404.
    let (status, _) = admin
        .post(
            &format!(
                "/_synapse/admin/v1/federation/destinations/{}/reset_connection",
                enc(&other)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = admin
        .get("/_synapse/admin/v1/federation/destinations/nowhere.test")
        .await;
    assert_eq!(status, 404);
    // A destination in backoff is reset.
    sql(
        a,
        &format!(
            "UPDATE federation_destinations SET retry_count = 3, retry_after_ts = {}, last_failure_ts = 1000
             WHERE destination = '{other}'",
            weft_core::util::now_ms() + 3_600_000
        ),
    )
    .await;
    let (_, backed_off) = admin
        .get(&format!("/_synapse/admin/v1/federation/destinations/{}", enc(&other)))
        .await;
    assert_eq!(
        (backed_off["retry_last_ts"].as_i64(), backed_off["failure_ts"].as_i64()),
        (Some(1000), Some(1000))
    );
    assert!(backed_off["retry_interval"].as_i64().unwrap() > 0);
    let (status, body) = admin
        .post(
            &format!(
                "/_synapse/admin/v1/federation/destinations/{}/reset_connection",
                enc(&other)
            ),
            json!({}),
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    let (_, reset) = admin
        .get(&format!("/_synapse/admin/v1/federation/destinations/{}", enc(&other)))
        .await;
    assert_eq!(reset["retry_interval"], 0);
    for server in servers {
        server.stop().await;
    }
});
