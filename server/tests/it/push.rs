//! Push notifications: push rules, notification counts in `/sync`, `/notifications`, and
//! pushers delivering to a real push gateway.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text, urlencode},
    sync::sync,
};

const RULES: &str = "/_matrix/client/v3/pushrules";

fn rule_ids(ruleset: &Value, kind: &str) -> Vec<String> {
    ruleset[kind]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `m.push_rules` content from a sync response's global account data, if present.
fn push_rules_in_sync(body: &Value) -> Option<Value> {
    body["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| e["content"].clone())
}

both_backends!(default_and_custom_rules, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;

    // Defaults, including the newer mention and reaction rules.
    let (status, body) = alice.get(&format!("{RULES}/")).await;
    assert_eq!(status, 200, "{body}");
    let global = &body["global"];
    let overrides = rule_ids(global, "override");
    for id in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.suppress_edits",
    ] {
        assert!(overrides.contains(&id.to_owned()), "{id} missing from {overrides:?}");
    }
    assert_eq!(overrides[0], ".m.rule.master");
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(rule_ids(global, "underride").contains(&id.to_owned()), "{id} missing");
    }
    let mention = global["override"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.is_user_mention")
        .unwrap();
    assert_eq!(mention["conditions"][0]["value"], "@alice:weft.test", "{mention}");
    assert_eq!(mention["default"], true);
    let (status, scope) = alice.get(&format!("{RULES}/global/")).await;
    assert_eq!(status, 200);
    assert_eq!(
        rule_ids(&scope, "override"),
        overrides,
        "GET /pushrules/global/ is the same ruleset"
    );
    assert_eq!(server.client().get(&format!("{RULES}/")).await.0, 401);

    // Nothing changed yet: the first sync carries no m.push_rules account data from us.
    let first = sync(&alice, None, "").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Add a custom override rule.
    let rule = json!({
        "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "cake*"}],
        "actions": ["notify", {"set_tweak": "sound", "value": "default"}],
    });
    let (status, body) = alice.put(&format!("{RULES}/global/override/cake"), rule).await;
    assert_eq!(status, 200, "{body}");
    let (status, got) = alice.get(&format!("{RULES}/global/override/cake")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["rule_id"], "cake");
    assert_eq!(got["default"], false);
    assert_eq!(got["enabled"], true);
    assert_eq!(got["conditions"][0]["pattern"], "cake*");
    assert_eq!(got["actions"][1]["set_tweak"], "sound");
    // User rules come after .m.rule.master and before the other defaults.
    let (_, all) = alice.get(&format!("{RULES}/")).await;
    assert_eq!(&rule_ids(&all["global"], "override")[..2], [".m.rule.master", "cake"]);

    // The change reaches /sync as m.push_rules account data.
    let inc = sync(&alice, Some(&since), "").await;
    let content = push_rules_in_sync(&inc).expect("m.push_rules in sync");
    assert!(
        rule_ids(&content["global"], "override").contains(&"cake".to_owned()),
        "{content}"
    );
    let since = inc["next_batch"].as_str().unwrap().to_owned();

    // Replace it: new actions and conditions, same place.
    let (status, _) = alice
        .put(
            &format!("{RULES}/global/override/cake"),
            json!({"conditions": [], "actions": []}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, got) = alice.get(&format!("{RULES}/global/override/cake")).await;
    assert_eq!(got["actions"], json!([]));
    assert_eq!(got["conditions"], json!([]));

    // Content rules, placed with before/after.
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/content/pie"),
                json!({"pattern": "pie", "actions": ["notify"]})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/content/tart?before=pie"),
                json!({"pattern": "tart", "actions": ["notify"]})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/content/flan?after=pie"),
                json!({"pattern": "flan", "actions": ["notify"]})
            )
            .await
            .0,
        200
    );
    let (_, all) = alice.get(&format!("{RULES}/")).await;
    let content_ids = rule_ids(&all["global"], "content");
    let user_content: Vec<&String> = content_ids.iter().filter(|id| !id.starts_with('.')).collect();
    assert_eq!(user_content, ["tart", "pie", "flan"], "{content_ids:?}");
    // A placement relative to a rule that does not exist fails and changes nothing.
    let (status, _) = alice
        .put(
            &format!("{RULES}/global/content/eclair?before=nope"),
            json!({"pattern": "e", "actions": []}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(alice.get(&format!("{RULES}/global/content/eclair")).await.0, 404);
    // Room and sender rules need room and user IDs.
    assert_eq!(
        alice
            .put(&format!("{RULES}/global/room/not-a-room"), json!({"actions": []}))
            .await
            .0,
        400
    );
    let room_rule = urlencode("!abc:weft.test");
    assert_eq!(
        alice
            .put(&format!("{RULES}/global/room/{room_rule}"), json!({"actions": []}))
            .await
            .0,
        200
    );
    assert_eq!(
        alice.get(&format!("{RULES}/global/room/{room_rule}")).await.1["rule_id"],
        "!abc:weft.test"
    );

    // Enable / disable.
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/override/cake/enabled"),
                json!({"enabled": false})
            )
            .await
            .0,
        200
    );
    let (status, body) = alice.get(&format!("{RULES}/global/override/cake/enabled")).await;
    assert_eq!((status, body["enabled"].clone()), (200, json!(false)));
    // Replacing a rule keeps its enabled flag.
    alice
        .put(
            &format!("{RULES}/global/override/cake"),
            json!({"conditions": [], "actions": ["notify"]}),
        )
        .await;
    assert_eq!(
        alice.get(&format!("{RULES}/global/override/cake/enabled")).await.1["enabled"],
        false
    );
    // Server-default rules can be switched too.
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/override/.m.rule.master/enabled"),
                json!({"enabled": true})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        alice
            .get(&format!("{RULES}/global/override/.m.rule.master/enabled"))
            .await
            .1["enabled"],
        true
    );

    // Actions.
    let actions = json!(["notify", {"set_tweak": "highlight"}]);
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/override/cake/actions"),
                json!({"actions": actions})
            )
            .await
            .0,
        200
    );
    let (status, body) = alice.get(&format!("{RULES}/global/override/cake/actions")).await;
    assert_eq!(status, 200);
    assert_eq!(body["actions"][0], "notify");
    assert_eq!(body["actions"][1]["set_tweak"], "highlight");
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/underride/.m.rule.message/actions"),
                json!({"actions": []})
            )
            .await
            .0,
        200
    );
    assert_eq!(
        alice
            .get(&format!("{RULES}/global/underride/.m.rule.message/actions"))
            .await
            .1["actions"],
        json!([])
    );

    // Server-default rules can be neither created nor deleted; unknown rules are 404.
    let (status, body) = alice
        .put(
            &format!("{RULES}/global/override/.m.rule.mine"),
            json!({"conditions": [], "actions": []}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        alice
            .delete(&format!("{RULES}/global/override/.m.rule.master"), json!({}))
            .await
            .0,
        400
    );
    assert_eq!(
        alice.get(&format!("{RULES}/global/override/.m.rule.master")).await.0,
        200
    );
    assert_eq!(alice.get(&format!("{RULES}/global/override/nope")).await.0, 404);
    assert_eq!(
        alice
            .put(
                &format!("{RULES}/global/override/nope/enabled"),
                json!({"enabled": true})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        alice
            .put(&format!("{RULES}/global/override/nope/actions"), json!({"actions": []}))
            .await
            .0,
        404
    );
    assert_eq!(
        alice.get(&format!("{RULES}/global/sender/cake")).await.0,
        404,
        "rules are looked up within their kind"
    );

    // Delete.
    assert_eq!(
        alice
            .delete(&format!("{RULES}/global/override/cake"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(alice.get(&format!("{RULES}/global/override/cake")).await.0, 404);
    assert_eq!(
        alice
            .delete(&format!("{RULES}/global/override/cake"), json!({}))
            .await
            .0,
        404
    );

    // Sync shows the latest ruleset; another user's rules are untouched.
    let inc = sync(&alice, Some(&since), "").await;
    let content = push_rules_in_sync(&inc).expect("m.push_rules in sync");
    assert!(
        !rule_ids(&content["global"], "override").contains(&"cake".to_owned()),
        "{content}"
    );
    assert!(content["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == ".m.rule.master" && r["enabled"] == true));
    let bob = server.register("bob", "pw").await;
    let (_, bobs) = bob.get(&format!("{RULES}/")).await;
    assert!(bobs["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == ".m.rule.master" && r["enabled"] == false));
    assert_eq!(rule_ids(&bobs["global"], "content"), [".m.rule.contains_user_name"]);
    server.stop().await;
});

fn counts(body: &Value, room: &str) -> (i64, i64) {
    let n = &body["rooms"]["join"][room]["unread_notifications"];
    (
        n["notification_count"].as_i64().unwrap_or(-1),
        n["highlight_count"].as_i64().unwrap_or(-1),
    )
}

async fn send(client: &Client, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn receipt(client: &Client, room: &str, event_id: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", urlencode(event_id)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A room where alice talks and bob ("Bobby Tables") listens.
async fn two_user_room(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    assert_eq!(
        bob.put(
            "/_matrix/client/v3/profile/@bob:weft.test/displayname",
            json!({"displayname": "Bobby Tables"})
        )
        .await
        .0,
        200
    );
    let room = create_room(&alice, json!({"preset": "private_chat", "invite": ["@bob:weft.test"]})).await;
    let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    (alice, bob, room)
}

both_backends!(counts_and_notifications, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let (alice, bob, room) = two_user_room(&server).await;
    let first = sync(&bob, None, "").await;
    assert_eq!(counts(&first, &room), (0, 0), "joining does not notify the joiner");

    let e1 = send_text(&alice, &room, "t1", "hello").await.1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e2 = send_text(&alice, &room, "t2", "how are you").await.1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (2, 0));
    assert_eq!(
        counts(&sync(&alice, None, "").await, &room),
        (0, 0),
        "senders are not notified of their own messages"
    );

    // Intentional mention.
    let e3 = send(
        &alice,
        &room,
        "t3",
        json!({"msgtype": "m.text", "body": "ping", "m.mentions": {"user_ids": ["@bob:weft.test"]}}),
    )
    .await;
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (3, 1));
    // Display name in the body of a message without m.mentions (legacy mention).
    let e4 = send(
        &alice,
        &room,
        "t4",
        json!({"msgtype": "m.text", "body": "over to you, Bobby Tables"}),
    )
    .await;
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (4, 2));
    // With m.mentions present the body is not searched for mentions.
    let e5 = send(
        &alice,
        &room,
        "t5",
        json!({"msgtype": "m.text", "body": "Bobby Tables again", "m.mentions": {}}),
    )
    .await;
    let since = sync(&bob, None, "").await;
    assert_eq!(counts(&since, &room), (5, 2));
    // Notices do not notify.
    send(
        &alice,
        &room,
        "t6",
        json!({"msgtype": "m.notice", "body": "bot says hi Bobby Tables"}),
    )
    .await;
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (5, 2));

    // /notifications: newest first, with actions, events and read flags.
    let (status, body) = bob.get("/_matrix/client/v3/notifications").await;
    assert_eq!(status, 200, "{body}");
    let list = body["notifications"].as_array().unwrap().clone();
    let ids: Vec<&str> = list.iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids[..5], [e5.as_str(), &e4, &e3, &e2, &e1]);
    // The oldest is bob's invite, which stopped counting as unread when he joined.
    assert_eq!(list.len(), 6, "{body}");
    assert_eq!(
        (
            list[5]["event"]["type"].as_str(),
            list[5]["event"]["content"]["membership"].as_str()
        ),
        (Some("m.room.member"), Some("invite"))
    );
    assert!(
        list.iter()
            .all(|n| n["read"] == false && n["room_id"] == room.as_str() && n["ts"].is_number()),
        "{body}"
    );
    assert!(list
        .iter()
        .all(|n| n["actions"].as_array().unwrap().iter().any(|a| a == "notify")));
    assert_eq!(list[0]["event"]["content"]["body"], "Bobby Tables again");
    assert_eq!(list[0]["event"]["sender"], "@alice:weft.test");
    assert!(
        list[1]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["set_tweak"] == "highlight"),
        "{}",
        list[1]
    );
    assert!(body.get("next_token").is_none(), "{body}");
    let (_, highlights) = bob.get("/_matrix/client/v3/notifications?only=highlight").await;
    let ids: Vec<&str> = highlights["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [e4.as_str(), &e3]);
    // Pagination.
    let (_, page1) = bob.get("/_matrix/client/v3/notifications?limit=2").await;
    assert_eq!(page1["notifications"].as_array().unwrap().len(), 2);
    let token = page1["next_token"].as_str().expect("next_token").to_owned();
    let (_, page2) = bob
        .get(&format!("/_matrix/client/v3/notifications?limit=2&from={token}"))
        .await;
    let ids: Vec<&str> = page2["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [e3.as_str(), &e2]);
    assert_eq!(bob.get("/_matrix/client/v3/notifications?from=bogus").await.0, 400);
    let (_, alices) = alice.get("/_matrix/client/v3/notifications").await;
    assert_eq!(alices["notifications"], json!([]), "alice was not notified");

    // A read receipt on the third event: counts fall to what is after it.
    receipt(&bob, &room, &e3).await;
    let inc = sync(&bob, Some(since["next_batch"].as_str().unwrap()), "").await;
    assert_eq!(counts(&inc, &room), (2, 1), "{}", inc["rooms"]["join"][&room]);
    let (_, body) = bob.get("/_matrix/client/v3/notifications").await;
    let read: Vec<bool> = body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["read"].as_bool().unwrap())
        .collect();
    assert_eq!(read, [false, false, true, true, true, true]);
    receipt(&bob, &room, &e5).await;
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (0, 0));

    // Rules are the user's: with .m.rule.master enabled nothing notifies bob any more.
    assert_eq!(
        bob.put(
            &format!("{RULES}/global/override/.m.rule.master/enabled"),
            json!({"enabled": true})
        )
        .await
        .0,
        200
    );
    send(
        &alice,
        &room,
        "t7",
        json!({"msgtype": "m.text", "body": "anyone?", "m.mentions": {"user_ids": ["@bob:weft.test"]}}),
    )
    .await;
    assert_eq!(counts(&sync(&bob, None, "").await, &room), (0, 0));
    // An invite notifies the invitee (.m.rule.invite_for_me) before they join.
    let carol = server.register("carol", "pw").await;
    assert_eq!(
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                json!({"user_id": "@carol:weft.test"})
            )
            .await
            .0,
        200
    );
    let (_, body) = carol.get("/_matrix/client/v3/notifications").await;
    let list = body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["event"]["type"], "m.room.member");
    assert_eq!(list[0]["event"]["state_key"], "@carol:weft.test");
    server.stop().await;
});

/// A push gateway on loopback that records every notification, answers `rejected` for the
/// pushkeys in `reject`, and fails the first request for pushkeys in `flaky`.
struct Gateway {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(reject: &[&str], flaky: &[&str]) -> Gateway {
        let (app, received) = Self::app(reject, flaky);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gateway {
            url: format!("http://{addr}/_matrix/push/v1/notify"),
            received,
            task,
        }
    }

    /// The gateway over HTTPS as `localhost`, with a certificate from `tls` (a private CA's).
    async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Gateway {
        let (app, received) = Self::app(&[], &[]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
        let task = tokio::spawn(async move {
            let _ = axum_server::from_tcp_rustls(listener, config)
                .serve(app.into_make_service())
                .await;
        });
        Gateway {
            url: format!("https://localhost:{}/_matrix/push/v1/notify", addr.port()),
            received,
            task,
        }
    }

    fn app(reject: &[&str], flaky: &[&str]) -> (axum::Router, Arc<Mutex<Vec<Value>>>) {
        use axum::{routing::post, Json, Router};
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reject: Vec<String> = reject.iter().map(|s| (*s).to_owned()).collect();
        let failures: Arc<Mutex<HashMap<String, u32>>> =
            Arc::new(Mutex::new(flaky.iter().map(|k| ((*k).to_owned(), 1)).collect()));
        let log = received.clone();
        let app = Router::new().route(
            "/_matrix/push/v1/notify",
            post(move |Json(body): Json<Value>| {
                let (log, reject, failures) = (log.clone(), reject.clone(), failures.clone());
                async move {
                    let key = body["notification"]["devices"][0]["pushkey"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    log.lock().unwrap().push(body);
                    if let Some(left) = failures.lock().unwrap().get_mut(&key).filter(|n| **n > 0) {
                        *left -= 1;
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                    }
                    let rejected: Vec<&String> = reject.iter().filter(|k| **k == key).collect();
                    (axum::http::StatusCode::OK, Json(json!({ "rejected": rejected })))
                }
            }),
        );
        (app, received)
    }

    fn for_key(&self, pushkey: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["notification"]["devices"][0]["pushkey"] == pushkey)
            .cloned()
            .collect()
    }

    /// Waits until `pushkey` has received at least `n` requests.
    async fn wait_for(&self, pushkey: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.for_key(pushkey);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn pusher(pushkey: &str, url: &str, extra_data: Value) -> Value {
    let mut data = json!({ "url": url });
    if let (Some(d), Some(extra)) = (data.as_object_mut(), extra_data.as_object()) {
        d.extend(extra.clone());
    }
    json!({
        "app_id": "test.weft.app",
        "pushkey": pushkey,
        "kind": "http",
        "app_display_name": "Weft test",
        "device_display_name": "Phone",
        "lang": "en",
        "data": data,
    })
}

async fn pushkeys(client: &Client) -> Vec<String> {
    let (status, body) = client.get("/_matrix/client/v3/pushers").await;
    assert_eq!(status, 200, "{body}");
    body["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(pushers_and_gateway, |backend| async move {
    let Some(mut server) = TestServer::start(backend).await else {
        return;
    };
    let gateway = Gateway::start(&["bad-key"], &["good-key"]).await;
    let (alice, bob, room) = two_user_room(&server).await;
    // A message from before the pusher existed is never pushed.
    send_text(&alice, &room, "old", "before any pusher").await;

    // Validation: data.url must be a push gateway URL; only http pushers.
    let bad_url = pusher("x", "http://127.0.0.1:1/notify", json!({}));
    let (status, body) = bob.post("/_matrix/client/v3/pushers/set", bad_url).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let mut email = pusher("y", &gateway.url, json!({}));
    email["kind"] = json!("email");
    assert_eq!(bob.post("/_matrix/client/v3/pushers/set", email).await.0, 400);
    let mut no_url = pusher("z", &gateway.url, json!({}));
    no_url["data"] = json!({});
    assert_eq!(bob.post("/_matrix/client/v3/pushers/set", no_url).await.0, 400);
    assert!(pushkeys(&bob).await.is_empty());

    let (status, body) = bob
        .post(
            "/_matrix/client/v3/pushers/set",
            pusher("good-key", &gateway.url, json!({"custom": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = bob.get("/_matrix/client/v3/pushers").await;
    let listed = &body["pushers"][0];
    assert_eq!(
        (
            listed["pushkey"].as_str(),
            listed["kind"].as_str(),
            listed["app_id"].as_str()
        ),
        (Some("good-key"), Some("http"), Some("test.weft.app"))
    );
    assert_eq!(listed["data"]["url"], gateway.url.as_str());
    assert_eq!(listed["data"]["custom"], 1);
    assert!(pushkeys(&alice).await.is_empty(), "pushers are per user");

    // A message reaches the gateway in the full format (after one failed attempt: retried).
    let event_id = send_text(&alice, &room, "p1", "push me").await.1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = gateway.wait_for("good-key", 2).await;
    assert_eq!(got.len(), 2, "one failed attempt, then a retry: {got:?}");
    let n = &got[1]["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{n}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], "@alice:weft.test");
    assert_eq!(n["content"]["body"], "push me");
    assert_eq!(n["counts"]["unread"], 2, "both unread messages count");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "test.weft.app");
    assert_eq!(device["data"]["custom"], 1);
    assert!(device["data"].get("url").is_none(), "{device}");
    assert!(device["pushkey_ts"].is_number());
    assert!(gateway
        .for_key("good-key")
        .iter()
        .all(|b| b["notification"]["event_id"] != json!(null)));

    // Alice's own message is not pushed to her (she has no pusher) nor more than once to bob.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.for_key("good-key").len(), 2);

    // A second pusher in event_id_only format, whose pushkey the gateway rejects.
    let mut second = pusher("bad-key", &gateway.url, json!({"format": "event_id_only"}));
    second["append"] = json!(true);
    assert_eq!(bob.post("/_matrix/client/v3/pushers/set", second).await.0, 200);
    let mut keys = pushkeys(&bob).await;
    keys.sort();
    assert_eq!(keys, ["bad-key", "good-key"]);
    let event_id = send_text(&alice, &room, "p2", "again").await.1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = gateway.wait_for("bad-key", 1).await;
    assert_eq!(got.len(), 1);
    let n = &got[0]["notification"];
    assert_eq!(
        (n["event_id"].as_str(), n["room_id"].as_str()),
        (Some(event_id.as_str()), Some(room.as_str()))
    );
    assert!(
        n.get("type").is_none() && n.get("content").is_none() && n.get("sender").is_none(),
        "event_id_only: {n}"
    );
    assert!(n["counts"]["unread"].is_number());
    assert_eq!(gateway.wait_for("good-key", 3).await.len(), 3);
    // The rejected pusher is deleted; the other stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pushkeys(&bob).await.contains(&"bad-key".to_owned()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pushkeys(&bob).await, ["good-key"]);

    // A restart resumes where the pusher stopped: nothing is sent again.
    server.restart().await;
    let bob = Client {
        base: server.url(),
        ..bob
    };
    let alice = Client {
        base: server.url(),
        ..alice
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.for_key("good-key").len(), 3, "nothing resent after a restart");
    let event_id = send_text(&alice, &room, "p3", "after restart").await.1["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = gateway.wait_for("good-key", 4).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[3]["notification"]["event_id"], event_id.as_str());

    // kind: null deletes.
    let (status, _) = bob
        .post(
            "/_matrix/client/v3/pushers/set",
            json!({"app_id": "test.weft.app", "pushkey": "good-key", "kind": null}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(pushkeys(&bob).await.is_empty());
    send_text(&alice, &room, "p4", "nobody listens").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.for_key("good-key").len(), 4);

    // Without append, registering the same app ID and pushkey takes it from its other user.
    assert_eq!(
        alice
            .post(
                "/_matrix/client/v3/pushers/set",
                pusher("shared", &gateway.url, json!({}))
            )
            .await
            .0,
        200
    );
    assert_eq!(
        bob.post(
            "/_matrix/client/v3/pushers/set",
            pusher("shared", &gateway.url, json!({}))
        )
        .await
        .0,
        200
    );
    assert!(pushkeys(&alice).await.is_empty());
    assert_eq!(pushkeys(&bob).await, ["shared"]);

    gateway.task.abort();
    server.stop().await;
});

both_backends!(pushers_go_with_their_device, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let phone = server.register("alice", "pw").await;
    let (_, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}),
        )
        .await;
    let laptop = server.client().with_token(body["access_token"].as_str().unwrap());
    let pusher = json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": "phone-key", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    });
    assert_eq!(phone.post("/_matrix/client/v3/pushers/set", pusher).await.0, 200);
    let (_, list) = laptop.get("/_matrix/client/v3/pushers").await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 1, "{list}");
    // Logging the phone out removes its pusher; the laptop's session is untouched.
    assert_eq!(phone.post("/_matrix/client/v3/logout", json!({})).await.0, 200);
    let (status, list) = laptop.get("/_matrix/client/v3/pushers").await;
    assert_eq!(status, 200);
    assert_eq!(list["pushers"], json!([]), "a logged-out device keeps no pusher");
    server.stop().await;
});

both_backends!(rule_ids_with_sigils_and_malformed_rules, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    // Room and sender rules are named by room and user IDs, sent as they are or encoded.
    for (kind, id, path_id) in [
        ("room", "!abc:weft.test", "!abc:weft.test".to_owned()),
        ("room", "!def:weft.test", urlencode("!def:weft.test")),
        ("sender", "@bob:weft.test", "@bob:weft.test".to_owned()),
        ("sender", "@carol:weft.test", urlencode("@carol:weft.test")),
    ] {
        let (status, body) = alice
            .put(
                &format!("{RULES}/global/{kind}/{path_id}"),
                json!({"actions": ["notify"]}),
            )
            .await;
        assert_eq!(status, 200, "{kind} {path_id}: {body}");
        let (status, got) = alice.get(&format!("{RULES}/global/{kind}/{path_id}")).await;
        assert_eq!((status, got["rule_id"].as_str()), (200, Some(id)), "{got}");
    }
    // Override and underride rules may be named like IDs too.
    for (kind, path_id, id) in [
        ("override", "@user:weft.test".to_owned(), "@user:weft.test"),
        ("override", urlencode("!room:weft.test"), "!room:weft.test"),
        ("underride", urlencode("#alias:weft.test"), "#alias:weft.test"),
    ] {
        let rule = json!({
            "conditions": [{"kind": "event_match", "key": "room_id", "pattern": "!room:weft.test"}],
            "actions": ["notify"],
        });
        let (status, body) = alice.put(&format!("{RULES}/global/{kind}/{path_id}"), rule).await;
        assert_eq!(status, 200, "{kind} {path_id}: {body}");
        let (status, got) = alice.get(&format!("{RULES}/global/{kind}/{path_id}")).await;
        assert_eq!((status, got["rule_id"].as_str()), (200, Some(id)), "{got}");
        let (status, body) = alice
            .put(
                &format!("{RULES}/global/{kind}/{path_id}/enabled"),
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, all) = alice.get(&format!("{RULES}/")).await;
    assert!(
        rule_ids(&all["global"], "room").contains(&"!abc:weft.test".to_owned()),
        "{all}"
    );
    assert!(
        rule_ids(&all["global"], "override").contains(&"@user:weft.test".to_owned()),
        "{all}"
    );
    // Deleted, then gone.
    let (status, body) = alice
        .delete(&format!("{RULES}/global/room/!abc:weft.test"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice.get(&format!("{RULES}/global/room/!abc:weft.test")).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice
        .delete(&format!("{RULES}/global/room/!abc:weft.test"), json!({}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // Malformed rules are the request's fault: 400, never 404.
    let bad_bodies = [
        ("override", "x1", json!({"actions": "notify"})),
        ("override", "x2", json!({"conditions": "none", "actions": []})),
        ("override", "x3", json!({"conditions": [{"kind": 5}], "actions": []})),
        ("content", "x4", json!({"actions": ["notify"]})),
        ("room", "!r:weft.test", json!({})),
        ("sender", "@s:weft.test", json!({"actions": [{"set_tweak": 5}]})),
        ("underride", "x5", json!([])),
    ];
    for (kind, id, body) in bad_bodies {
        let (status, resp) = alice.put(&format!("{RULES}/global/{kind}/{id}"), body.clone()).await;
        assert_eq!(status, 400, "{kind}/{id} {body}: {resp}");
        let code = resp["errcode"].as_str().unwrap_or_default();
        assert!(
            ["M_BAD_JSON", "M_INVALID_PARAM", "M_NOT_JSON"].contains(&code),
            "{resp}"
        );
        assert_eq!(
            alice.get(&format!("{RULES}/global/{kind}/{id}")).await.0,
            404,
            "nothing stored"
        );
    }
    let (status, resp) = alice
        .raw(
            reqwest::Method::PUT,
            &format!("{RULES}/global/override/x6"),
            "{not json",
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    for method in [reqwest::Method::PUT, reqwest::Method::GET, reqwest::Method::DELETE] {
        let body = (method == reqwest::Method::PUT).then(|| json!({"actions": []}));
        let (status, resp) = alice
            .request(method.clone(), &format!("{RULES}/global/nonsense/x7"), body)
            .await;
        assert_eq!(status, 400, "{method} of an unknown kind: {resp}");
    }
    // Paths that name no rule: no or an unknown scope, kind or attribute, no rule ID, a slash.
    for (method, path) in [
        (reqwest::Method::PUT, "//override/x8"),
        (reqwest::Method::PUT, "/device/override/x8"),
        (reqwest::Method::PUT, "/global//x8"),
        (reqwest::Method::PUT, "/global/override/"),
        (reqwest::Method::PUT, "/global/override/x8/ham"),
        (reqwest::Method::PUT, "/global/override/x8/not_an_attr"),
        (reqwest::Method::GET, "/global/override/x8/not_an_attr"),
        (reqwest::Method::GET, "/global/nonsense/"),
        (reqwest::Method::GET, "/nonsense/"),
    ] {
        let body = (method == reqwest::Method::PUT).then(|| json!({"conditions": [], "actions": []}));
        let (status, resp) = alice.request(method.clone(), &format!("{RULES}{path}"), body).await;
        assert_eq!(status, 400, "{method} {path}: {resp}");
    }
    for path in ["/enabled", "/actions"] {
        let (status, resp) = alice.get(&format!("{RULES}/global/nonsense/x7{path}")).await;
        assert_eq!(status, 400, "{path} of an unknown kind: {resp}");
        let (status, resp) = alice.get(&format!("{RULES}/global/override/unknown{path}")).await;
        assert_eq!((status, resp["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{resp}");
    }
    server.stop().await;
});

// A push gateway of a private deployment, its certificate from a CA of its own: reached when
// `extra_ca_file` names that CA, and not otherwise.
both_backends!(a_push_gateway_behind_a_private_ca, |backend| async move {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let gateway = Gateway::start_tls(Arc::new(tls)).await;

    for trusted in [true, false] {
        let ca_pem = ca.pem();
        let Some(server) = TestServer::start_with(backend, |config| {
            if trusted {
                let path = std::env::temp_dir().join(format!("weft-ca-{}.pem", weft_core::util::random_string(8)));
                std::fs::write(&path, ca_pem).unwrap();
                config.extra_ca_file = path.display().to_string();
            }
        })
        .await
        else {
            return;
        };
        let pushkey = if trusted { "trusted" } else { "untrusted" };
        let alice = server.register("alice", "pw").await;
        let bob = server.register("bob", "pw").await;
        let room = create_room(&alice, json!({"preset": "public_chat"})).await;
        let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = bob
            .post(
                "/_matrix/client/v3/pushers/set",
                pusher(pushkey, &gateway.url, json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        send_text(&alice, &room, "t1", "over https").await;
        if trusted {
            let got = gateway.wait_for(pushkey, 1).await;
            assert_eq!(got.len(), 1, "the gateway behind the private CA is reached");
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(gateway.for_key(pushkey).is_empty(), "an unknown CA is not trusted");
        }
        server.stop().await;
    }
});
