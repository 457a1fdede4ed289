//! The admin API for users (Synapse's paths and shapes): accounts, devices, sessions, media,
//! shadow-bans, suspension, locks, rate limit overrides, deactivation with erasure, server
//! notices and event reports; and the requests the synapse-admin web UI makes for its users.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_ok, send_text, urlencode},
    sync::sync,
};

/// Registers through `/_synapse/admin/v1/register` with the shared secret.
async fn admin_register(server: &TestServer, user: &str, admin: bool) -> Client {
    use hmac::{Hmac, Mac};
    let c = server.client();
    let (status, body) = c.get("/_synapse/admin/v1/register").await;
    assert_eq!(status, 200, "{body}");
    let nonce = body["nonce"].as_str().unwrap().to_owned();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
    let admin_flag = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0pw\0{admin_flag}").as_bytes());
    let mac = hex::encode(mac.finalize().into_bytes());
    let (status, body) = c
        .post(
            "/_synapse/admin/v1/register",
            json!({"nonce": nonce, "username": user, "password": "pw", "admin": admin, "mac": mac}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    c.with_token(body["access_token"].as_str().unwrap())
}

async fn login(server: &TestServer, user: &str, password: &str) -> (u16, Value) {
    server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
}

async fn login_ok(server: &TestServer, user: &str, password: &str) -> Client {
    let (status, body) = login(server, user, password).await;
    assert_eq!(status, 200, "{body}");
    server.client().with_token(body["access_token"].as_str().unwrap())
}

async fn ok(client: &Client, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, res) = client.request(method.clone(), path, body).await;
    assert!((200..300).contains(&status), "{method} {path}: {status} {res}");
    res
}

async fn join(client: &Client, inviter: &Client, room: &str, user_id: &str) {
    let invite = format!("/_matrix/client/v3/rooms/{room}/invite");
    ok(inviter, Method::POST, &invite, Some(json!({"user_id": user_id}))).await;
    ok(
        client,
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
}

/// The events of a room's `/messages`, oldest first.
async fn room_events(client: &Client, room: &str) -> Vec<Value> {
    let body = ok(
        client,
        Method::GET,
        &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100"),
        None,
    )
    .await;
    body["chunk"].as_array().unwrap().clone()
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

// Every endpoint answers 401 without a token and 403 M_FORBIDDEN to a non-admin; and login
// as a user is off unless configured.
both_backends!(admin_endpoints_need_an_admin, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let plain = admin_register(&server, "plain", false).await;
    let anon = server.client();
    let u = "@plain:weft.test";
    let endpoints: Vec<(Method, String, Value)> = vec![
        (Method::GET, "/_synapse/admin/v1/server_version".into(), json!(null)),
        (Method::GET, "/_synapse/admin/v2/users".into(), json!(null)),
        (Method::GET, "/_synapse/admin/v3/users".into(), json!(null)),
        (Method::GET, format!("/_synapse/admin/v2/users/{u}"), json!(null)),
        (
            Method::PUT,
            "/_synapse/admin/v2/users/@new:weft.test".into(),
            json!({"password": "x"}),
        ),
        (
            Method::POST,
            format!("/_synapse/admin/v1/reset_password/{u}"),
            json!({"new_password": "x"}),
        ),
        (Method::GET, format!("/_synapse/admin/v1/whois/{u}"), json!(null)),
        (
            Method::GET,
            format!("/_synapse/admin/v1/users/{u}/joined_rooms"),
            json!(null),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v1/users/{u}/memberships"),
            json!(null),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v2/users/{u}/devices"),
            json!(null),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v2/users/{u}/devices/X"),
            json!(null),
        ),
        (
            Method::PUT,
            format!("/_synapse/admin/v2/users/{u}/devices/X"),
            json!({}),
        ),
        (
            Method::DELETE,
            format!("/_synapse/admin/v2/users/{u}/devices/X"),
            json!(null),
        ),
        (
            Method::POST,
            format!("/_synapse/admin/v2/users/{u}/delete_devices"),
            json!({"devices": []}),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v1/users/{u}/accountdata"),
            json!(null),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v1/users/{u}/pushers"),
            json!(null),
        ),
        (Method::GET, format!("/_synapse/admin/v1/users/{u}/media"), json!(null)),
        (
            Method::DELETE,
            format!("/_synapse/admin/v1/users/{u}/media"),
            json!(null),
        ),
        (
            Method::POST,
            format!("/_synapse/admin/v1/users/{u}/shadow_ban"),
            json!({}),
        ),
        (
            Method::DELETE,
            format!("/_synapse/admin/v1/users/{u}/shadow_ban"),
            json!(null),
        ),
        (
            Method::GET,
            format!("/_synapse/admin/v1/users/{u}/override_ratelimit"),
            json!(null),
        ),
        (
            Method::POST,
            format!("/_synapse/admin/v1/users/{u}/override_ratelimit"),
            json!({}),
        ),
        (
            Method::DELETE,
            format!("/_synapse/admin/v1/users/{u}/override_ratelimit"),
            json!(null),
        ),
        (Method::POST, format!("/_synapse/admin/v1/users/{u}/login"), json!({})),
        (Method::POST, format!("/_synapse/admin/v1/deactivate/{u}"), json!({})),
        (
            Method::PUT,
            format!("/_synapse/admin/v1/suspend/{u}"),
            json!({"suspend": true}),
        ),
        (
            Method::GET,
            "/_synapse/admin/v1/username_available?username=x".into(),
            json!(null),
        ),
        (
            Method::POST,
            "/_synapse/admin/v1/send_server_notice".into(),
            json!({"user_id": u, "content": {}}),
        ),
        (
            Method::PUT,
            "/_synapse/admin/v1/send_server_notice/t1".into(),
            json!({"user_id": u, "content": {}}),
        ),
        (Method::GET, "/_synapse/admin/v1/event_reports".into(), json!(null)),
        (Method::GET, "/_synapse/admin/v1/event_reports/1".into(), json!(null)),
        (Method::DELETE, "/_synapse/admin/v1/event_reports/1".into(), json!(null)),
    ];
    for (method, path, body) in &endpoints {
        let body = (!body.is_null()).then(|| body.clone());
        let (status, res) = anon.request(method.clone(), path, body.clone()).await;
        assert_eq!(
            (status, res["errcode"].as_str()),
            (401, Some("M_MISSING_TOKEN")),
            "{method} {path}"
        );
        let (status, res) = plain.request(method.clone(), path, body).await;
        assert_eq!(
            (status, res["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{method} {path}"
        );
    }
    // Nothing the non-admin asked for happened.
    assert_eq!(admin.get("/_synapse/admin/v2/users/@new:weft.test").await.0, 404);
    let _ = login_ok(&server, "plain", "pw").await;

    let body = ok(&admin, Method::GET, "/_synapse/admin/v1/server_version", None).await;
    assert!(body["server_version"].as_str().unwrap().starts_with("weft "), "{body}");
    // Logging in as a user is off by default.
    let (status, body) = admin
        .post(&format!("/_synapse/admin/v1/users/{u}/login"), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // Another server's user, a bad user ID, an unknown user.
    let (status, _) = admin.get("/_synapse/admin/v2/users/@x:elsewhere.test").await;
    assert_eq!(status, 400);
    let (status, _) = admin.get("/_synapse/admin/v2/users/nonsense").await;
    assert_eq!(status, 400);
    let (status, body) = admin.get("/_synapse/admin/v1/whois/@ghost:weft.test").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    server.stop().await;
});

// Accounts made and changed through `PUT /v2/users/{userId}` log in; the list pages with
// `next_token` and `total` under its filters and orders; passwords are reset.
both_backends!(users_created_listed_and_changed, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    for name in ["anna", "bert", "cleo", "dora", "emil"] {
        let (status, body) = admin
            .put(
                &format!("/_synapse/admin/v2/users/@{name}:weft.test"),
                json!({"password": "secret", "displayname": format!("{name} display")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["name"], format!("@{name}:weft.test"));
        assert_eq!(body["displayname"], format!("{name} display"));
        assert_eq!(body["admin"], false);
    }
    let anna = login_ok(&server, "anna", "secret").await;
    let (_, who) = anna.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(who["user_id"], "@anna:weft.test");

    // Pages of two, walked by next_token, see every user once.
    let mut seen = Vec::new();
    let mut from = Some("0".to_owned());
    while let Some(f) = from {
        let body = ok(
            &admin,
            Method::GET,
            &format!("/_synapse/admin/v2/users?from={f}&limit=2"),
            None,
        )
        .await;
        assert_eq!(body["total"], 6, "{body}");
        for u in body["users"].as_array().unwrap() {
            seen.push(u["name"].as_str().unwrap().to_owned());
        }
        from = body["next_token"].as_str().map(str::to_owned);
    }
    let expected: Vec<String> = ["anna", "bert", "cleo", "dora", "emil", "root"]
        .iter()
        .map(|n| format!("@{n}:weft.test"))
        .collect();
    assert_eq!(seen, expected);
    // Newest name first, filters by name and admin flag.
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users?dir=b&limit=1", None).await;
    assert_eq!(body["users"][0]["name"], "@root:weft.test");
    assert_eq!(body["next_token"], "1");
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users?name=CLEO%20disp", None).await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["users"][0]["name"], "@cleo:weft.test");
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users?admins=true", None).await;
    assert_eq!(body["total"], 1);
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v2/users?order_by=creation_ts&dir=b",
        None,
    )
    .await;
    assert_eq!(body["users"][0]["name"], "@emil:weft.test");
    let (status, body) = admin.get("/_synapse/admin/v2/users?order_by=nonsense").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (status, _) = admin.get("/_synapse/admin/v2/users?from=-1").await;
    assert_eq!(status, 400);

    // Modify: a new display name and the admin flag; the user query shows them.
    let (status, body) = admin
        .put(
            "/_synapse/admin/v2/users/@bert:weft.test",
            json!({"displayname": "Bertram", "admin": true, "user_type": "bot", "threepids": [], "external_ids": []}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users/@bert:weft.test", None).await;
    assert_eq!(
        (&body["displayname"], &body["admin"], &body["user_type"]),
        (&json!("Bertram"), &json!(true), &json!("bot"))
    );
    let (_, profile) = anna.get("/_matrix/client/v3/profile/@bert:weft.test").await;
    assert_eq!(profile["displayname"], "Bertram");
    // An admin may not demote themselves.
    let (status, _) = admin
        .put("/_synapse/admin/v2/users/@root:weft.test", json!({"admin": false}))
        .await;
    assert_eq!(status, 400);

    // Deactivated users leave the v2 list unless asked for; v3 lists everyone.
    ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/deactivate/@dora:weft.test",
        Some(json!({})),
    )
    .await;
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users", None).await;
    assert_eq!(body["total"], 5);
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users?deactivated=true", None).await;
    assert_eq!(body["total"], 6);
    let body = ok(&admin, Method::GET, "/_synapse/admin/v3/users?deactivated=true", None).await;
    assert_eq!(body["total"], 1);
    // Reactivating needs a password.
    let (status, _) = admin
        .put(
            "/_synapse/admin/v2/users/@dora:weft.test",
            json!({"deactivated": false}),
        )
        .await;
    assert_eq!(status, 400);
    ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v2/users/@dora:weft.test",
        Some(json!({"deactivated": false, "password": "again"})),
    )
    .await;
    login_ok(&server, "dora", "again").await;

    // Password reset: the old one stops working and devices are logged out.
    ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/reset_password/@anna:weft.test",
        Some(json!({"new_password": "fresh"})),
    )
    .await;
    assert_eq!(login(&server, "anna", "secret").await.0, 403);
    assert_eq!(anna.get("/_matrix/client/v3/account/whoami").await.0, 401);
    login_ok(&server, "anna", "fresh").await;

    // Username availability.
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/username_available?username=zed",
        None,
    )
    .await;
    assert_eq!(body["available"], true);
    let (status, body) = admin.get("/_synapse/admin/v1/username_available?username=anna").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = admin.get("/_synapse/admin/v1/username_available?username=Bad!").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")));

    // A locked user can neither use their token nor log in.
    let emil = login_ok(&server, "emil", "secret").await;
    ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v2/users/@emil:weft.test",
        Some(json!({"locked": true})),
    )
    .await;
    let (status, body) = emil.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_USER_LOCKED")),
        "{body}"
    );
    assert_eq!(login(&server, "emil", "secret").await.0, 401);
    // v2 leaves locked users out unless asked for; v3 filters by it.
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users", None).await;
    assert!(!body.to_string().contains("@emil:weft.test"), "{body}");
    let body = ok(&admin, Method::GET, "/_synapse/admin/v3/users?locked=true", None).await;
    assert_eq!(body["users"][0]["name"], "@emil:weft.test");
    assert_eq!(body["total"], 1);
    ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v2/users/@emil:weft.test",
        Some(json!({"locked": false})),
    )
    .await;
    assert_eq!(emil.get("/_matrix/client/v3/account/whoami").await.0, 200);
    server.stop().await;
});

// Deactivation with erasure: the profile is gone, the user left their rooms, and what they
// sent is shown redacted to the others.
both_backends!(deactivate_with_erase, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    ok(
        &bob,
        Method::PUT,
        "/_matrix/client/v3/profile/@bob:weft.test/displayname",
        Some(json!({"displayname": "Bob Builder"})),
    )
    .await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    join(&bob, &alice, &room, "@bob:weft.test").await;
    let said = send_ok(&bob, &room, "1", "something regrettable").await;
    send_ok(&alice, &room, "2", "alice stays").await;
    assert_eq!(
        bodies(&room_events(&alice, &room).await),
        ["something regrettable", "alice stays"]
    );

    let body = ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/deactivate/@bob:weft.test",
        Some(json!({"erase": true})),
    )
    .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    // The message is still there, redacted; alice's is untouched.
    let events = room_events(&alice, &room).await;
    let erased = events
        .iter()
        .find(|e| e["event_id"] == said.as_str())
        .expect("the event");
    assert_eq!(erased["content"], json!({}), "{erased}");
    assert_eq!(bodies(&events), ["alice stays"]);
    // Bob left, and no member event shows his name any more.
    let members = ok(
        &alice,
        Method::GET,
        &format!("/_matrix/client/v3/rooms/{room}/members"),
        None,
    )
    .await;
    let bob_member = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state_key"] == "@bob:weft.test")
        .expect("bob's member event")
        .clone();
    assert_eq!(bob_member["content"]["membership"], "leave");
    assert!(!members.to_string().contains("Bob Builder"), "{members}");
    // The profile is gone, the token too, and the admin API tells.
    let (status, _) = alice.get("/_matrix/client/v3/profile/@bob:weft.test").await;
    assert_eq!(status, 404);
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 401);
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users/@bob:weft.test", None).await;
    assert_eq!((&body["deactivated"], &body["erased"]), (&json!(true), &json!(true)));
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/users/@bob:weft.test/joined_rooms",
        None,
    )
    .await;
    assert_eq!(body["total"], 0);
    // An initial sync of a new member shows it redacted as well.
    let carol = server.register("carol", "pw").await;
    join(&carol, &alice, &room, "@carol:weft.test").await;
    let filter = urlencode(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let synced = sync(&carol, None, &format!("filter={filter}")).await;
    let timeline = synced["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let seen = timeline
        .iter()
        .find(|e| e["event_id"] == said.as_str())
        .expect("in carol's timeline");
    assert_eq!(seen["content"], json!({}));
    server.stop().await;
});

// A shadow-banned user's sends seem to work and reach no one; a suspended user reads but
// cannot send; both are lifted.
both_backends!(shadow_ban_and_suspension, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "private_chat"})).await;
    join(&bob, &alice, &room, "@bob:weft.test").await;
    send_ok(&bob, &room, "1", "before").await;

    ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/users/@bob:weft.test/shadow_ban",
        Some(json!({})),
    )
    .await;
    let body = ok(&admin, Method::GET, "/_synapse/admin/v2/users/@bob:weft.test", None).await;
    assert_eq!(body["shadow_banned"], true);
    let ghost = send_ok(&bob, &room, "2", "nobody hears this").await;
    assert!(ghost.starts_with('$'));
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "shadow topic"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": "@root:weft.test"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bodies(&room_events(&alice, &room).await), ["before"]);
    let (status, _) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", urlencode(&ghost)))
        .await;
    assert_eq!(status, 404);
    let (_, topic) = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"))
        .await;
    assert_ne!(topic["topic"], "shadow topic");
    let synced = sync(&admin, None, "").await;
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");

    ok(
        &admin,
        Method::DELETE,
        "/_synapse/admin/v1/users/@bob:weft.test/shadow_ban",
        None,
    )
    .await;
    send_ok(&bob, &room, "3", "heard again").await;
    assert_eq!(bodies(&room_events(&alice, &room).await), ["before", "heard again"]);

    // Suspended: reads work, sends answer M_USER_SUSPENDED.
    let body = ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v1/suspend/@bob:weft.test",
        Some(json!({"suspend": true})),
    )
    .await;
    assert_eq!(body["user_@bob:weft.test_suspended"], true);
    let (status, body) = send_text(&bob, &room, "4", "suspended words").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_USER_SUSPENDED")),
        "{body}"
    );
    let (status, body) = bob.post("/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_USER_SUSPENDED")));
    assert_eq!(bodies(&room_events(&bob, &room).await), ["before", "heard again"]);
    sync(&bob, None, "").await;
    ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v1/suspend/@bob:weft.test",
        Some(json!({"suspend": false})),
    )
    .await;
    send_ok(&bob, &room, "5", "free again").await;
    assert_eq!(
        bodies(&room_events(&alice, &room).await),
        ["before", "heard again", "free again"]
    );
    server.stop().await;
});

// An override lifts (or sets) a user's rate limit in the limiter.
both_backends!(rate_limit_override, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.per_second = 0.01;
        c.rate_limits.burst = 4;
    })
    .await
    else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    ok(
        &admin,
        Method::PUT,
        "/_synapse/admin/v2/users/@bob:weft.test",
        Some(json!({"password": "pw"})),
    )
    .await;
    let bob = login_ok(&server, "bob", "pw").await;
    // whoami is one of the rate-limited endpoints.
    let whoami = "/_matrix/client/v3/account/whoami";
    let mut limited = false;
    for _ in 0..10 {
        let (status, body) = bob.get(whoami).await;
        if status == 429 {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
            limited = true;
            break;
        }
    }
    assert!(limited, "bob was never rate limited");

    let path = "/_synapse/admin/v1/users/@bob:weft.test/override_ratelimit";
    assert_eq!(ok(&admin, Method::GET, path, None).await, json!({}));
    let body = ok(&admin, Method::POST, path, Some(json!({"messages_per_second": 0}))).await;
    assert_eq!(body, json!({"messages_per_second": 0, "burst_count": 0}));
    for _ in 0..10 {
        assert_eq!(bob.get(whoami).await.0, 200);
    }
    assert_eq!(
        ok(&admin, Method::GET, path, None).await,
        json!({"messages_per_second": 0, "burst_count": 0})
    );
    ok(&admin, Method::DELETE, path, None).await;
    assert_eq!(ok(&admin, Method::GET, path, None).await, json!({}));
    assert_eq!(bob.get(whoami).await.0, 429);
    // A generous override of its own: a fresh burst of 20.
    ok(
        &admin,
        Method::POST,
        path,
        Some(json!({"messages_per_second": 1, "burst_count": 20})),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(bob.get(whoami).await.0, 200);
    }
    server.stop().await;
});

// A server notice creates the user's notices room, invites them, tags it `m.server_notice`,
// and arrives in their sync; the next notice uses the same room.
both_backends!(server_notices, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.server_notices.system_mxid_localpart = "notices".into();
        c.server_notices.room_name = "Notices from the server".into();
    })
    .await
    else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let bob = server.register("bob", "pw").await;
    let send = |text: &str| json!({"user_id": "@bob:weft.test", "content": {"msgtype": "m.text", "body": text}});
    let first = ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/send_server_notice",
        Some(send("first")),
    )
    .await;
    assert!(first["event_id"].as_str().unwrap().starts_with('$'));
    let synced = sync(&bob, None, "").await;
    let invites = synced["rooms"]["invite"].as_object().unwrap();
    assert_eq!(invites.len(), 1, "{synced}");
    let room = invites.keys().next().unwrap().clone();
    ok(
        &bob,
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
    // Retried with one transaction ID, a notice is sent once.
    let path = "/_synapse/admin/v1/send_server_notice/txn-1";
    let second = ok(&admin, Method::PUT, path, Some(send("second"))).await;
    assert_eq!(ok(&admin, Method::PUT, path, Some(send("second"))).await, second);

    let filter = urlencode(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let synced = sync(&bob, None, &format!("filter={filter}")).await;
    let joined = &synced["rooms"]["join"][&room];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(bodies(events), ["first", "second"], "{joined}");
    assert!(events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .all(|e| e["sender"] == "@notices:weft.test"));
    let tags = joined["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.tag")
        .expect("the room's tags")
        .clone();
    assert!(tags["content"]["tags"].get("m.server_notice").is_some(), "{tags}");
    let (_, name) = bob
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"))
        .await;
    assert_eq!(name["name"], "Notices from the server");
    // The user cannot write in it.
    let (status, _) = send_text(&bob, &room, "x", "reply").await;
    assert_eq!(status, 403);
    // An unknown user is 404; a server without notices configured says so.
    let (status, _) = admin
        .post(
            "/_synapse/admin/v1/send_server_notice",
            json!({"user_id": "@ghost:weft.test", "content": {"body": "x"}}),
        )
        .await;
    assert_eq!(status, 404);
    server.stop().await;
    let Some(plain) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&plain, "root", true).await;
    let (status, _) = admin
        .post(
            "/_synapse/admin/v1/send_server_notice",
            json!({"user_id": "@root:weft.test", "content": {"body": "x"}}),
        )
        .await;
    assert_eq!(status, 400);
    plain.stop().await;
});

// Event reports: listed newest first with Synapse's fields, paged, filtered, read with the
// event, deleted.
both_backends!(event_reports, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat", "name": "Reported room"})).await;
    ok(
        &bob,
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
    let mut events = Vec::new();
    for i in 0..3 {
        events.push(send_ok(&alice, &room, &format!("{i}"), &format!("rude {i}")).await);
    }
    for (i, event) in events.iter().enumerate() {
        let path = format!("/_matrix/client/v3/rooms/{room}/report/{event}");
        ok(
            &bob,
            Method::POST,
            &path,
            Some(json!({"reason": format!("r{i}"), "score": -10})),
        )
        .await;
    }
    let body = ok(&admin, Method::GET, "/_synapse/admin/v1/event_reports?limit=2", None).await;
    assert_eq!(
        (&body["total"], &body["next_token"]),
        (&json!(3), &json!("2")),
        "{body}"
    );
    let first = &body["event_reports"][0];
    assert_eq!(first["event_id"], events[2].as_str());
    assert_eq!(first["reason"], "r2");
    assert_eq!(first["user_id"], "@bob:weft.test");
    assert_eq!(first["sender"], "@alice:weft.test");
    assert_eq!(first["name"], "Reported room");
    assert_eq!(first["room_id"], room.as_str());
    assert_eq!(first["score"], -10);
    assert!(first["received_ts"].as_i64().unwrap() > 0);
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/event_reports?from=2&limit=2",
        None,
    )
    .await;
    assert_eq!(body["event_reports"].as_array().unwrap().len(), 1);
    assert!(body.get("next_token").is_none(), "{body}");
    let body = ok(&admin, Method::GET, "/_synapse/admin/v1/event_reports?dir=f", None).await;
    assert_eq!(body["event_reports"][0]["event_id"], events[0].as_str());
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/event_reports?user_id=alice",
        None,
    )
    .await;
    assert_eq!(body["total"], 0);

    let id = first["id"].as_i64().unwrap();
    let path = format!("/_synapse/admin/v1/event_reports/{id}");
    let detail = ok(&admin, Method::GET, &path, None).await;
    assert_eq!(detail["event_json"]["content"]["body"], "rude 2");
    ok(&admin, Method::DELETE, &path, None).await;
    assert_eq!(admin.get(&path).await.0, 404);
    assert_eq!(admin.delete(&path, json!({})).await.0, 404);
    let body = ok(&admin, Method::GET, "/_synapse/admin/v1/event_reports", None).await;
    assert_eq!(body["total"], 2);
    server.stop().await;
});

// What the synapse-admin web UI requests for its users pages (list, one user, devices,
// connections, media, rooms, pushers, memberships), answered with the fields it reads; and
// what an admin does from there (rename and delete devices, delete media, log in as).
both_backends!(synapse_admin_user_pages, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| c.admin.allow_login_as_user = true).await else {
        return;
    };
    let admin = admin_register(&server, "root", true).await;
    let mut bob = server.register("bob", "pw").await;
    bob.http = reqwest::Client::builder()
        .user_agent("weft-test-agent/1.0")
        .build()
        .unwrap();
    let (_, who) = bob.get("/_matrix/client/v3/account/whoami").await;
    let device = who["device_id"].as_str().unwrap().to_owned();
    let room = create_room(&bob, json!({"name": "Bob's room"})).await;
    let pusher = json!({
        "app_id": "test.weft.app", "pushkey": "pk1", "kind": "http", "app_display_name": "Weft test",
        "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.test/_matrix/push/v1/notify"},
    });
    ok(&bob, Method::POST, "/_matrix/client/v3/pushers/set", Some(pusher)).await;
    ok(
        &bob,
        Method::PUT,
        "/_matrix/client/v3/user/@bob:weft.test/account_data/org.example.setting",
        Some(json!({"on": true})),
    )
    .await;
    for (i, size) in [10usize, 30, 20].iter().enumerate() {
        let res = bob
            .http
            .post(format!("{}/_matrix/media/v3/upload?filename=f{i}.bin", bob.base))
            .bearer_auth(bob.token.as_ref().unwrap())
            .header("content-type", "application/octet-stream")
            .body(vec![i as u8; *size])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }

    // The list page (the UI lists through v3 with these parameters).
    let body = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v3/users?from=0&limit=10&guests=true&order_by=name&dir=f",
        None,
    )
    .await;
    assert_eq!(body["total"], 2);
    let listed = &body["users"][0];
    assert_eq!(listed["name"], "@bob:weft.test");
    for field in ["is_guest", "admin", "deactivated", "shadow_banned", "locked", "erased"] {
        assert_eq!(listed[field], false, "{field}: {listed}");
    }
    assert!(listed["creation_ts"].as_i64().unwrap() > 0);
    assert!(listed["last_seen_ts"].as_i64().is_some(), "{listed}");
    assert!(listed.get("displayname").is_some() && listed.get("avatar_url").is_some());
    // The user's page.
    let user = ok(&admin, Method::GET, "/_synapse/admin/v2/users/%40bob%3Aweft.test", None).await;
    assert_eq!(user["name"], "@bob:weft.test");
    assert_eq!(user["threepids"], json!([]));
    assert_eq!(user["external_ids"], json!([]));
    // Devices tab.
    let devices = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v2/users/@bob:weft.test/devices",
        None,
    )
    .await;
    assert_eq!(devices["total"], 1);
    let d = &devices["devices"][0];
    assert_eq!(
        (&d["device_id"], &d["user_id"]),
        (&json!(device), &json!("@bob:weft.test"))
    );
    assert_eq!(d["last_seen_ip"], "127.0.0.1");
    assert!(d["last_seen_ts"].as_i64().unwrap() > 0);
    assert_eq!(d["last_seen_user_agent"], "weft-test-agent/1.0");
    // Connections tab.
    let whois = ok(&admin, Method::GET, "/_synapse/admin/v1/whois/@bob:weft.test", None).await;
    assert_eq!(whois["user_id"], "@bob:weft.test");
    let connection = &whois["devices"][&device]["sessions"][0]["connections"][0];
    assert_eq!(connection["ip"], "127.0.0.1");
    assert_eq!(connection["user_agent"], "weft-test-agent/1.0");
    assert!(connection["last_seen"].as_i64().unwrap() > 0);
    // Media tab: ordered, paged.
    let media_path = "/_synapse/admin/v1/users/@bob:weft.test/media";
    let media = ok(
        &admin,
        Method::GET,
        &format!("{media_path}?from=0&limit=2&order_by=media_length&dir=b"),
        None,
    )
    .await;
    assert_eq!((&media["total"], &media["next_token"]), (&json!(3), &json!("2")));
    let first = &media["media"][0];
    assert_eq!(first["media_length"], 30);
    assert_eq!(first["upload_name"], "f1.bin");
    assert_eq!(first["media_type"], "application/octet-stream");
    assert!(first["created_ts"].as_i64().is_some() && first.get("quarantined_by").is_some());
    assert_eq!(first["safe_from_quarantine"], false);
    // Rooms, memberships, pushers, account data.
    let rooms = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/users/@bob:weft.test/joined_rooms",
        None,
    )
    .await;
    assert_eq!(rooms, json!({"joined_rooms": [room], "total": 1}));
    let memberships = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/users/@bob:weft.test/memberships",
        None,
    )
    .await;
    assert_eq!(memberships["memberships"][&room], "join");
    let pushers = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/users/@bob:weft.test/pushers",
        None,
    )
    .await;
    assert_eq!(pushers["total"], 1);
    let p = &pushers["pushers"][0];
    assert_eq!(
        (&p["pushkey"], &p["kind"], &p["app_id"]),
        (&json!("pk1"), &json!("http"), &json!("test.weft.app"))
    );
    assert_eq!(p["data"]["url"], "https://push.test/_matrix/push/v1/notify");
    let data = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v1/users/@bob:weft.test/accountdata",
        None,
    )
    .await;
    assert_eq!(
        data["account_data"]["global"]["org.example.setting"],
        json!({"on": true})
    );

    // Deleting the largest media: it is gone for everyone.
    let deleted = ok(
        &admin,
        Method::DELETE,
        &format!("{media_path}?limit=1&order_by=media_length&dir=b"),
        None,
    )
    .await;
    assert_eq!(deleted["total"], 1);
    let gone = deleted["deleted_media"][0].as_str().unwrap().to_owned();
    let (status, _) = bob
        .get(&format!("/_matrix/client/v1/media/download/weft.test/{gone}"))
        .await;
    assert_eq!(status, 404);
    let media = ok(&admin, Method::GET, media_path, None).await;
    assert_eq!(media["total"], 2);

    // Login as bob: a token that acts as him, without a device of his.
    let token = ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v1/users/@bob:weft.test/login",
        Some(json!({})),
    )
    .await;
    let puppet = server.client().with_token(token["access_token"].as_str().unwrap());
    let (_, who) = puppet.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(who["user_id"], "@bob:weft.test");
    let (status, _) = admin
        .post("/_synapse/admin/v1/users/@root:weft.test/login", json!({}))
        .await;
    assert_eq!(status, 400);

    // Rename, then delete devices.
    let device_path = format!("/_synapse/admin/v2/users/@bob:weft.test/devices/{device}");
    ok(
        &admin,
        Method::PUT,
        &device_path,
        Some(json!({"display_name": "Renamed"})),
    )
    .await;
    let d = ok(&admin, Method::GET, &device_path, None).await;
    assert_eq!(d["display_name"], "Renamed");
    let (_, own) = bob.get(&format!("/_matrix/client/v3/devices/{device}")).await;
    assert_eq!(own["display_name"], "Renamed");
    let second = login_ok(&server, "bob", "pw").await;
    ok(&admin, Method::DELETE, &device_path, None).await;
    assert_eq!(bob.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert_eq!(admin.get(&device_path).await.0, 404);
    let (_, who) = second.get("/_matrix/client/v3/account/whoami").await;
    let second_device = who["device_id"].as_str().unwrap().to_owned();
    ok(
        &admin,
        Method::POST,
        "/_synapse/admin/v2/users/@bob:weft.test/delete_devices",
        Some(json!({"devices": [second_device]})),
    )
    .await;
    assert_eq!(second.get("/_matrix/client/v3/account/whoami").await.0, 401);
    let devices = ok(
        &admin,
        Method::GET,
        "/_synapse/admin/v2/users/@bob:weft.test/devices",
        None,
    )
    .await;
    assert_eq!(devices["total"], 0);
    server.stop().await;
});
