//! Foundation: discovery, registration, login, tokens, devices, profile, filters, account data,
//! admin registration, and Matrix errors for bad input. Each test runs on both backends.

use serde_json::{json, Value};

use crate::{both_backends, harness::*};

async fn uia_session(client: &Client, path: &str, body: Value) -> String {
    let (status, res) = client.post(path, body).await;
    assert_eq!(status, 401, "{res}");
    res["session"].as_str().expect("UIA session").to_owned()
}

fn password_auth(user: &str, password: &str, session: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "session": session})
}

async fn login(client: &Client, user: &str, password: &str) -> (u16, Value) {
    client
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
}

both_backends!(discovery, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let (status, body) = c.get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    assert!(
        body["versions"].as_array().unwrap().iter().any(|v| v == "v1.3"),
        "{body}"
    );
    let (status, body) = c.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200);
    assert_eq!(body["m.homeserver"]["base_url"], "http://127.0.0.1");
    // No delegation configured: nothing is served (federation.rs tests a configured one).
    let (status, body) = c.get("/.well-known/matrix/server").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // CORS for Element Web.
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", server.url()),
        )
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    server.stop().await;
});

both_backends!(register_and_login, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let (status, body) = c.get("/_matrix/client/v3/register/available?username=alice").await;
    assert_eq!((status, &body["available"]), (200, &json!(true)));

    // First request: the UIA challenge offers m.login.dummy.
    let (status, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "alice", "password": "pw1"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"][0]["stages"], json!(["m.login.dummy"]));
    let alice = server.register("alice", "pw1").await;

    let (status, body) = c.get("/_matrix/client/v3/register/available?username=alice").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "alice", "password": "x"}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "Bad Name!", "password": "x"}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")));
    // Guests are off by default.
    let (status, body) = c.post("/_matrix/client/v3/register?kind=guest", json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));

    let (status, body) = alice.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "@alice:weft.test");

    // Login by localpart and by full user ID; a wrong password is M_FORBIDDEN.
    let (status, body) = login(&c, "alice", "pw1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:weft.test");
    let (status, _) = login(&c, "@alice:weft.test", "pw1").await;
    assert_eq!(status, 200);
    let (status, body) = login(&c, "alice", "wrong").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = c.get("/_matrix/client/v3/login").await;
    assert_eq!(status, 200);
    assert_eq!(body["flows"][0]["type"], "m.login.password");
    server.stop().await;
});

both_backends!(registration_disabled_and_tokens, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| c.registration.enabled = false).await else {
        return;
    };
    let c = server.client();
    let (status, body) = c
        .post("/_matrix/client/v3/register", json!({"username": "x", "password": "x"}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    server.stop().await;

    let Some(server) = TestServer::start_with(backend, |c| c.registration.require_token = true).await else {
        return;
    };
    let c = server.client();
    let admin = admin_register(&server, "root", true).await;
    let (status, body) = admin
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            json!({"token": "letmein", "uses_allowed": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let session = uia_session(
        &c,
        "/_matrix/client/v3/register",
        json!({"username": "bob", "password": "pw"}),
    )
    .await;
    let (status, body) = c
        .post("/_matrix/client/v3/register", json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );
    let (status, body) = c
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, 401, "dummy must not satisfy a token flow: {body}");
    let (status, body) = c
        .post("/_matrix/client/v3/register", json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": session}}))
        .await;
    assert_eq!(status, 200, "{body}");
    // The token had one use.
    let session = uia_session(
        &c,
        "/_matrix/client/v3/register",
        json!({"username": "carol", "password": "pw"}),
    )
    .await;
    let (status, _) = c
        .post("/_matrix/client/v3/register", json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": session}}))
        .await;
    assert_eq!(status, 401);

    // The admin finds it used up, gives it another use, and carol gets in; then deletes it.
    let tokens = "/_synapse/admin/v1/registration_tokens";
    let listed = |body: &serde_json::Value| -> Vec<String> {
        body["registration_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["token"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, body) = admin.get(&format!("{tokens}?valid=false")).await;
    assert_eq!((status, listed(&body)), (200, vec!["letmein".to_owned()]), "{body}");
    let (_, body) = admin.get(&format!("{tokens}?valid=true")).await;
    assert!(listed(&body).is_empty(), "{body}");
    let (status, body) = admin.get(&format!("{tokens}/letmein")).await;
    assert_eq!((status, &body["completed"]), (200, &json!(1)), "{body}");
    let (status, body) = admin
        .put(&format!("{tokens}/letmein"), json!({"uses_allowed": 2}))
        .await;
    assert_eq!((status, &body["uses_allowed"]), (200, &json!(2)), "{body}");
    let (status, body) = admin
        .put(&format!("{tokens}/letmein"), json!({"uses_allowed": -1}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = c
        .post("/_matrix/client/v3/register", json!({"username": "carol", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": session}}))
        .await;
    assert_eq!(status, 200, "another use: {body}");
    let (status, _) = c.put(&format!("{tokens}/letmein"), json!({"uses_allowed": 5})).await;
    assert_eq!(status, 401, "not without an admin's token");
    let (status, body) = admin.delete(&format!("{tokens}/letmein"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin.get(&format!("{tokens}/letmein")).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, _) = admin.delete(&format!("{tokens}/letmein"), json!({})).await;
    assert_eq!(status, 404);
    server.stop().await;
});

/// Registers through `/_synapse/admin/v1/register` with the shared secret.
async fn admin_register(server: &TestServer, user: &str, admin: bool) -> Client {
    use hmac::{Hmac, Mac};
    let c = server.client();
    let (status, body) = c.get("/_synapse/admin/v1/register").await;
    assert_eq!(status, 200);
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

both_backends!(shared_secret_registration, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let admin = admin_register(&server, "admin", true).await;
    let (_, body) = admin.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(body["user_id"], "@admin:weft.test");
    // A bad MAC is refused, a nonce is single-use.
    let (_, body) = c.get("/_synapse/admin/v1/register").await;
    let nonce = body["nonce"].as_str().unwrap().to_owned();
    let bad = json!({"nonce": nonce, "username": "eve", "password": "pw", "admin": true, "mac": "00"});
    let (status, body) = c.post("/_synapse/admin/v1/register", bad.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, _) = c.post("/_synapse/admin/v1/register", bad).await;
    assert_eq!(status, 400);
    // Non-admins may not manage registration tokens.
    let user = admin_register(&server, "plain", false).await;
    let (status, _) = user.post("/_synapse/admin/v1/registration_tokens/new", json!({})).await;
    assert_eq!(status, 403);
    server.stop().await;
});

both_backends!(logout_and_devices, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let first = server.register("dave", "pw").await;
    let (_, body) = c
        .post("/_matrix/client/v3/login", json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dave"}, "password": "pw", "device_id": "PHONE", "initial_device_display_name": "Dave's phone"}))
        .await;
    let phone = c.with_token(body["access_token"].as_str().unwrap());
    assert_eq!(body["device_id"], "PHONE");

    let (status, body) = first.get("/_matrix/client/v3/devices").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"PHONE"));
    let (status, body) = first.get("/_matrix/client/v3/devices/PHONE").await;
    assert_eq!((status, body["display_name"].as_str()), (200, Some("Dave's phone")));
    let (status, _) = first
        .put("/_matrix/client/v3/devices/PHONE", json!({"display_name": "Old phone"}))
        .await;
    assert_eq!(status, 200);
    let (_, body) = phone.get("/_matrix/client/v3/devices/PHONE").await;
    assert_eq!(body["display_name"], "Old phone");
    let (status, body) = first.get("/_matrix/client/v3/devices/NOPE").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));

    // Deleting a device needs the password (UIA) and kills its token.
    let session = {
        let (status, body) = first.delete("/_matrix/client/v3/devices/PHONE", json!({})).await;
        assert_eq!(status, 401);
        body["session"].as_str().unwrap().to_owned()
    };
    let (status, body) = first
        .delete(
            "/_matrix/client/v3/devices/PHONE",
            json!({"auth": password_auth("dave", "wrong", &session)}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    let (status, _) = first
        .delete(
            "/_matrix/client/v3/devices/PHONE",
            json!({"auth": password_auth("dave", "pw", &session)}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = phone.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));

    // /delete_devices
    let (_, body) = login(&c, "dave", "pw").await;
    let extra = body["device_id"].as_str().unwrap().to_owned();
    let session = uia_session(&first, "/_matrix/client/v3/delete_devices", json!({"devices": [extra]})).await;
    let (status, _) = first
        .post(
            "/_matrix/client/v3/delete_devices",
            json!({"devices": [extra], "auth": password_auth("@dave:weft.test", "pw", &session)}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = first.get("/_matrix/client/v3/devices").await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);

    // /logout kills only this token; /logout/all kills every one.
    let (_, body) = login(&c, "dave", "pw").await;
    let other = c.with_token(body["access_token"].as_str().unwrap());
    let (status, _) = other.post("/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(other.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert_eq!(first.get("/_matrix/client/v3/account/whoami").await.0, 200);
    let (_, body) = login(&c, "dave", "pw").await;
    let other = c.with_token(body["access_token"].as_str().unwrap());
    assert_eq!(first.post("/_matrix/client/v3/logout/all", json!({})).await.0, 200);
    assert_eq!(first.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert_eq!(other.get("/_matrix/client/v3/account/whoami").await.0, 401);
    server.stop().await;
});

both_backends!(uia_session_is_bound_to_its_request, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let alice = server.register("alice", "pw").await;
    for device in ["DEVA", "DEVB"] {
        let (status, body) = c
            .post("/_matrix/client/v3/login", json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "device_id": device}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = alice.delete("/_matrix/client/v3/devices/DEVA", json!({})).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();

    // The session begun to delete DEVA cannot delete DEVB, nor several devices.
    let auth = json!({"auth": password_auth("alice", "pw", &session)});
    let (status, body) = alice.delete("/_matrix/client/v3/devices/DEVB", auth.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let mut many = auth.clone();
    many["devices"] = json!(["DEVB"]);
    let (status, body) = alice.post("/_matrix/client/v3/delete_devices", many).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(
        alice.get("/_matrix/client/v3/devices/DEVB").await.0,
        200,
        "DEVB still exists"
    );

    // A session for one list of devices does not delete another list.
    let session_b = uia_session(
        &alice,
        "/_matrix/client/v3/delete_devices",
        json!({"devices": ["DEVA"]}),
    )
    .await;
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/delete_devices",
            json!({"devices": ["DEVB"], "auth": password_auth("alice", "pw", &session_b)}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(
        alice.get("/_matrix/client/v3/devices/DEVB").await.0,
        200,
        "DEVB still exists"
    );

    // The operation it was begun for still completes.
    let (status, body) = alice.delete("/_matrix/client/v3/devices/DEVA", auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.get("/_matrix/client/v3/devices/DEVA").await.0, 404);
    server.stop().await;
});

both_backends!(password_change_and_deactivation, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let main = server.register("erin", "old").await;
    let (_, body) = login(&c, "erin", "old").await;
    let other = c.with_token(body["access_token"].as_str().unwrap());

    let session = uia_session(
        &main,
        "/_matrix/client/v3/account/password",
        json!({"new_password": "new"}),
    )
    .await;
    let (status, _) = main
        .post(
            "/_matrix/client/v3/account/password",
            json!({"new_password": "new", "auth": password_auth("erin", "old", &session)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(login(&c, "erin", "old").await.0, 403);
    assert_eq!(login(&c, "erin", "new").await.0, 200);
    assert_eq!(
        main.get("/_matrix/client/v3/account/whoami").await.0,
        200,
        "the changing device stays logged in"
    );
    assert_eq!(
        other.get("/_matrix/client/v3/account/whoami").await.0,
        401,
        "other devices are logged out"
    );

    // logout_devices: false keeps the others.
    let (_, body) = login(&c, "erin", "new").await;
    let kept = c.with_token(body["access_token"].as_str().unwrap());
    let session = uia_session(
        &main,
        "/_matrix/client/v3/account/password",
        json!({"new_password": "newer", "logout_devices": false}),
    )
    .await;
    let (status, _) = main
        .post(
            "/_matrix/client/v3/account/password",
            json!({"new_password": "newer", "logout_devices": false, "auth": password_auth("erin", "new", &session)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(kept.get("/_matrix/client/v3/account/whoami").await.0, 200);

    // Deactivation: tokens stop working, login is refused, profile is gone.
    let session = uia_session(&main, "/_matrix/client/v3/account/deactivate", json!({})).await;
    let (status, body) = main
        .post(
            "/_matrix/client/v3/account/deactivate",
            json!({"auth": password_auth("erin", "newer", &session)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(main.get("/_matrix/client/v3/account/whoami").await.0, 401);
    assert_eq!(kept.get("/_matrix/client/v3/account/whoami").await.0, 401);
    let (status, body) = login(&c, "erin", "newer").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(c.get("/_matrix/client/v3/profile/@erin:weft.test").await.0, 404);
    // The name stays taken.
    let (status, _) = c.get("/_matrix/client/v3/register/available?username=erin").await;
    assert_eq!(status, 400);
    server.stop().await;
});

both_backends!(refresh_tokens, |backend| async move {
    let Some(server) =
        TestServer::start_with(backend, |c| c.access_token_lifetime = std::time::Duration::from_secs(1)).await
    else {
        return;
    };
    let c = server.client();
    server.register("frank", "pw").await;
    let (status, body) = c
        .post("/_matrix/client/v3/login", json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "frank"}, "password": "pw", "refresh_token": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in_ms"], 1000);
    let access = c.with_token(body["access_token"].as_str().unwrap());
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(access.get("/_matrix/client/v3/account/whoami").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, body) = access.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, &body["soft_logout"]), (401, &json!(true)), "{body}");

    let (status, body) = c
        .post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200, "{body}");
    let renewed = c.with_token(body["access_token"].as_str().unwrap());
    assert!(body["refresh_token"].is_string());
    assert_eq!(renewed.get("/_matrix/client/v3/account/whoami").await.0, 200);
    // A refresh token works once.
    let (status, body) = c
        .post("/_matrix/client/v3/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    server.stop().await;
});

both_backends!(profile_capabilities_filters_account_data, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let gina = server.register("gina", "pw").await;
    let hank = server.register("hank", "pw").await;

    let (_, body) = c.get("/_matrix/client/v3/profile/@gina:weft.test").await;
    assert_eq!(
        body["displayname"], "gina",
        "registration sets the localpart as display name"
    );
    assert_eq!(
        gina.put(
            "/_matrix/client/v3/profile/@gina:weft.test/displayname",
            json!({"displayname": "Gina G"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        gina.put(
            "/_matrix/client/v3/profile/@gina:weft.test/avatar_url",
            json!({"avatar_url": "mxc://weft.test/abc"})
        )
        .await
        .0,
        200
    );
    let (_, body) = c.get("/_matrix/client/v3/profile/@gina:weft.test/displayname").await;
    assert_eq!(body["displayname"], "Gina G");
    let (_, body) = c.get("/_matrix/client/v3/profile/@gina:weft.test").await;
    assert_eq!(
        (body["displayname"].as_str(), body["avatar_url"].as_str()),
        (Some("Gina G"), Some("mxc://weft.test/abc"))
    );
    let (status, body) = hank
        .put(
            "/_matrix/client/v3/profile/@gina:weft.test/displayname",
            json!({"displayname": "pwned"}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    assert_eq!(c.get("/_matrix/client/v3/profile/@nobody:weft.test").await.0, 404);

    let (status, body) = gina.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(status, 200);
    // Absent means enabled (the spec's default); ruma omits defaults.
    assert_ne!(body["capabilities"]["m.change_password"]["enabled"], false, "{body}");
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "11");
    assert_eq!(body["capabilities"]["m.room_versions"]["available"]["12"], "stable");

    let filter = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}}});
    let (status, body) = gina
        .post("/_matrix/client/v3/user/@gina:weft.test/filter", filter)
        .await;
    assert_eq!(status, 200);
    let id = body["filter_id"].as_str().unwrap().to_owned();
    let (status, body) = gina
        .get(&format!("/_matrix/client/v3/user/@gina:weft.test/filter/{id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["room"]["timeline"]["limit"], 10);
    assert_eq!(
        hank.get(&format!("/_matrix/client/v3/user/@gina:weft.test/filter/{id}"))
            .await
            .0,
        403
    );
    assert_eq!(
        gina.get("/_matrix/client/v3/user/@gina:weft.test/filter/999999")
            .await
            .0,
        404
    );

    let path = "/_matrix/client/v3/user/@gina:weft.test/account_data/org.example.settings";
    assert_eq!(gina.get(path).await.0, 404);
    assert_eq!(gina.put(path, json!({"theme": "dark"})).await.0, 200);
    assert_eq!(gina.put(path, json!({"theme": "light"})).await.0, 200);
    let (status, body) = gina.get(path).await;
    assert_eq!((status, &body), (200, &json!({"theme": "light"})));
    assert_eq!(hank.get(path).await.0, 403);
    let room_path = "/_matrix/client/v3/user/@gina:weft.test/rooms/!room:weft.test/account_data/m.tag.x";
    assert_eq!(gina.put(room_path, json!({"a": 1})).await.0, 200);
    assert_eq!(gina.get(room_path).await.1, json!({"a": 1}));
    let (status, body) = gina.raw(reqwest::Method::PUT, path, "[1,2]").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    server.stop().await;
});

both_backends!(matrix_errors_for_bad_requests, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let (status, body) = c.get("/_matrix/client/v3/no/such/endpoint").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    let (status, body) = c.delete("/_matrix/client/v3/login", json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (405, Some("M_UNRECOGNIZED")));
    let (status, body) = c
        .raw(reqwest::Method::POST, "/_matrix/client/v3/login", "{not json")
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")));
    let (status, body) = c
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "password": 5}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (status, body) = c.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let (status, body) = c.with_token("bogus").get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let (status, _) = c
        .get(&format!("/_matrix/client/v3/account/whoami?access_token=bogus"))
        .await;
    assert_eq!(status, 401);
    let big = "x".repeat(2 * 1024 * 1024);
    let res = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", server.url()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    server.stop().await;
});

both_backends!(rate_limits, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.burst = 3;
        c.rate_limits.per_second = 0.5;
    })
    .await
    else {
        return;
    };
    let c = server.client();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(login(&c, "nobody", "pw").await);
    }
    assert!(statuses[..3].iter().all(|(s, _)| *s == 403), "{statuses:?}");
    let (status, body) = &statuses[4];
    assert_eq!((*status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")));
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    server.stop().await;
});

both_backends!(everything_survives_restart, |backend| async move {
    let Some(mut server) = TestServer::start(backend).await else {
        return;
    };
    let ivy = server.register("ivy", "pw").await;
    ivy.put(
        "/_matrix/client/v3/profile/@ivy:weft.test/displayname",
        json!({"displayname": "Ivy"}),
    )
    .await;
    ivy.put(
        "/_matrix/client/v3/user/@ivy:weft.test/account_data/x.y",
        json!({"k": "v"}),
    )
    .await;
    let (_, body) = ivy
        .post(
            "/_matrix/client/v3/user/@ivy:weft.test/filter",
            json!({"room": {"timeline": {"limit": 3}}}),
        )
        .await;
    let filter_id = body["filter_id"].as_str().unwrap().to_owned();
    let token = ivy.token.clone().unwrap();

    server.restart().await;
    let ivy = server.client().with_token(&token);
    let (status, body) = ivy.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some("@ivy:weft.test")));
    assert_eq!(
        server
            .client()
            .get("/_matrix/client/v3/profile/@ivy:weft.test/displayname")
            .await
            .1["displayname"],
        "Ivy"
    );
    assert_eq!(
        ivy.get("/_matrix/client/v3/user/@ivy:weft.test/account_data/x.y")
            .await
            .1,
        json!({"k": "v"})
    );
    assert_eq!(
        ivy.get(&format!("/_matrix/client/v3/user/@ivy:weft.test/filter/{filter_id}"))
            .await
            .1["room"]["timeline"]["limit"],
        3
    );
    assert_eq!(login(&server.client(), "ivy", "pw").await.0, 200);
    let (_, body) = ivy.get("/_matrix/client/v3/devices").await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);
    server.stop().await;
});

both_backends!(tls_listener, |backend| async move {
    let Some(db) = TestDb::new(backend).await else { return };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (db.dir.join("tls.crt"), db.dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = test_config(&db);
    config.listeners[0].tls_cert = Some(cert_path);
    config.listeners[0].tls_key = Some(key_path);
    let running = weft::server::start(config).await.expect("starts with TLS");
    let port = running.addrs[0].port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let res = client
        .get(format!("https://localhost:{port}/_matrix/client/versions"))
        .send()
        .await
        .expect("TLS request");
    assert_eq!(res.status(), 200);
    // Plain HTTP to a TLS listener does not get an answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/_matrix/client/versions")).await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    running.shutdown().await;
    db.drop_db().await;
});

both_backends!(login_without_a_type_is_a_bad_request, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    server.register("frank", "pw").await;
    for body in [
        json!({}),
        json!({"identifier": {"type": "m.id.user", "user": "frank"}, "password": "pw"}),
        json!({"type": 5, "password": "pw"}),
    ] {
        let (status, res) = c.post("/_matrix/client/v3/login", body.clone()).await;
        assert_eq!(status, 400, "{body}: {res}");
        assert!(
            matches!(res["errcode"].as_str(), Some("M_BAD_JSON" | "M_UNKNOWN")),
            "{body}: {res}"
        );
    }
    let (status, res) = c.raw(reqwest::Method::POST, "/_matrix/client/v3/login", "").await;
    assert_eq!(status, 400, "no body: {res}");
    assert!(
        matches!(res["errcode"].as_str(), Some("M_BAD_JSON" | "M_UNKNOWN")),
        "{res}"
    );
    server.stop().await;
});

both_backends!(devices_without_a_name_omit_it, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let gail = server.register("gail", "pw").await;
    let (_, body) = login(&c, "gail", "pw").await;
    let unnamed = body["device_id"].as_str().unwrap().to_owned();
    let (status, body) = gail.get("/_matrix/client/v3/devices").await;
    assert_eq!(status, 200, "{body}");
    let device = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == unnamed.as_str())
        .unwrap();
    assert!(device.get("display_name").is_none(), "{device}");
    let (status, device) = gail.get(&format!("/_matrix/client/v3/devices/{unnamed}")).await;
    assert_eq!(status, 200, "{device}");
    assert!(device.get("display_name").is_none(), "{device}");
    server.stop().await;
});

both_backends!(registration_with_inhibit_login_makes_no_session, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let c = server.client();
    let body = json!({"username": "hana", "password": "pw", "inhibit_login": true});
    let session = uia_session(&c, "/_matrix/client/v3/register", body.clone()).await;
    let mut authed = body;
    authed["auth"] = json!({"type": "m.login.dummy", "session": session});
    let (status, res) = c.post("/_matrix/client/v3/register", authed).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["user_id"], "@hana:weft.test");
    assert!(res.get("access_token").is_none(), "{res}");
    assert!(res.get("device_id").is_none(), "{res}");
    // The account works, and the login is its only device.
    let (status, res) = login(&c, "hana", "pw").await;
    assert_eq!(status, 200, "{res}");
    let hana = c.with_token(res["access_token"].as_str().unwrap());
    let (_, res) = hana.get("/_matrix/client/v3/devices").await;
    assert_eq!(res["devices"].as_array().unwrap().len(), 1, "{res}");
    server.stop().await;
});
