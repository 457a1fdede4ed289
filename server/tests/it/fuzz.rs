//! Malformed and random bodies, queries and path parameters sent with a valid access token to
//! every route of the client router: no answer may be a 5xx, and the server still answers
//! afterwards.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_ok},
};

/// Every route the client router mounts (`api::client::router` and the areas' `routes`, at
/// their current version; ruma's request types give the paths), destructive ones last.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/_matrix/client/versions"),
    ("GET", "/.well-known/matrix/client"),
    ("GET", "/.well-known/matrix/server"),
    ("GET", "/_matrix/client/v3/capabilities"),
    ("GET", "/_matrix/client/v3/voip/turnServer"),
    ("POST", "/_matrix/client/v3/user/{user_id}/openid/request_token"),
    ("GET", "/_matrix/client/v3/sync"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    ("POST", "/_matrix/client/v3/keys/claim"),
    ("POST", "/_matrix/client/v3/search"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"),
    (
        "GET",
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
    ),
    (
        "GET",
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
    ),
    (
        "GET",
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
    ),
    (
        "PUT",
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
    ),
    (
        "POST",
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events",
    ),
    (
        "DELETE",
        "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
    ),
    ("GET", "/_matrix/client/v3/events"),
    ("GET", "/_matrix/client/v3/events/{event_id}"),
    ("GET", "/_matrix/client/v3/initialSync"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/send/{event_type}"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/extra"),
    ("PUT", "/_matrix/client/v3/room_keys/keys"),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{room_id}"),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/aliases"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/ban"),
    ("POST", "/_matrix/client/v3/account/password"),
    ("PUT", "/_matrix/client/v3/directory/room/{room_alias}"),
    ("POST", "/_matrix/client/v3/room_keys/version"),
    ("POST", "/_matrix/client/v3/user/{user_id}/filter"),
    (
        "POST",
        "/_matrix/client/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
    ),
    ("POST", "/_matrix/client/v3/createRoom"),
    ("PUT", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/tags/{tag}"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/typing/{user_id}"),
    ("DELETE", "/_matrix/client/v3/directory/room/{room_alias}"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{room_id}"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}"),
    ("DELETE", "/_matrix/client/v3/room_keys/version/{version}"),
    ("DELETE", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}"),
    ("DELETE", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/tags/{tag}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/forget"),
    ("GET", "/_matrix/client/v3/directory/room/{room_alias}"),
    ("GET", "/_matrix/client/v3/profile/{user_id}/avatar_url"),
    ("GET", "/_matrix/client/v3/room_keys/version/{version}"),
    ("GET", "/_matrix/client/v3/room_keys/keys"),
    ("GET", "/_matrix/client/v3/room_keys/keys/{room_id}"),
    ("GET", "/_matrix/client/v3/room_keys/keys/{room_id}/{session_id}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/context/{event_id}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/initialSync"),
    ("GET", "/_matrix/client/v3/devices/{device_id}"),
    ("GET", "/_matrix/client/v3/devices"),
    ("GET", "/_matrix/client/v3/profile/{user_id}/displayname"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event"),
    ("GET", "/_matrix/client/v3/user/{user_id}/filter/{filter_id}"),
    ("GET", "/_matrix/client/v3/user/{user_id}/account_data/{event_type}"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/hierarchy"),
    ("GET", "/_matrix/client/v3/keys/changes"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("GET", "/_matrix/client/v3/room_keys/version"),
    ("GET", "/_matrix/client/v3/login"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/members"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/messages"),
    ("GET", "/_matrix/client/v3/notifications"),
    ("GET", "/_matrix/client/v3/presence/{user_id}/status"),
    ("GET", "/_matrix/client/v3/profile/{user_id}"),
    ("GET", "/_matrix/client/v3/publicRooms"),
    ("POST", "/_matrix/client/v3/publicRooms"),
    ("GET", "/_matrix/client/v3/pushers"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/actions"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/enabled"),
    ("GET", "/_matrix/client/v3/pushrules/"),
    ("GET", "/_matrix/client/v3/pushrules/global/"),
    (
        "GET",
        "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{event_type}",
    ),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/event/{event_id}"),
    ("GET", "/_matrix/client/v3/directory/list/room/{room_id}"),
    (
        "GET",
        "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}",
    ),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/state"),
    ("GET", "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/tags"),
    ("GET", "/_matrix/client/v1/rooms/{room_id}/threads"),
    ("GET", "/_matrix/client/v3/register/available"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/invite"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/join"),
    ("POST", "/_matrix/client/v3/join/{room_id_or_alias}"),
    ("GET", "/_matrix/client/v3/rooms/{room_id}/joined_members"),
    ("GET", "/_matrix/client/v3/joined_rooms"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/kick"),
    ("POST", "/_matrix/client/v3/knock/{room_id_or_alias}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/leave"),
    ("POST", "/_matrix/client/v3/login"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/{txn_id}"),
    ("POST", "/_matrix/client/v3/refresh"),
    ("POST", "/_matrix/client/v3/register"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/report/{event_id}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/report"),
    ("POST", "/_matrix/client/v3/user_directory/search"),
    ("PUT", "/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}"),
    ("PUT", "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"),
    (
        "PUT",
        "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}",
    ),
    ("PUT", "/_matrix/client/v3/profile/{user_id}/avatar_url"),
    ("PUT", "/_matrix/client/v3/profile/{user_id}/displayname"),
    ("PUT", "/_matrix/client/v3/user/{user_id}/account_data/{event_type}"),
    ("PUT", "/_matrix/client/v3/presence/{user_id}/status"),
    ("POST", "/_matrix/client/v3/pushers/set"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/actions"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/enabled"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/read_markers"),
    (
        "PUT",
        "/_matrix/client/v3/user/{user_id}/rooms/{room_id}/account_data/{event_type}",
    ),
    ("PUT", "/_matrix/client/v3/directory/list/room/{room_id}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/unban"),
    ("PUT", "/_matrix/client/v3/room_keys/version/{version}"),
    ("PUT", "/_matrix/client/v3/devices/{device_id}"),
    ("POST", "/_matrix/client/v3/rooms/{room_id}/upgrade"),
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("POST", "/_matrix/client/v3/keys/signatures/upload"),
    ("POST", "/_matrix/client/v3/keys/device_signing/upload"),
    ("GET", "/_matrix/client/v3/account/whoami"),
    ("DELETE", "/_matrix/client/v3/devices/{device_id}"),
    ("POST", "/_matrix/client/v3/delete_devices"),
    ("POST", "/_matrix/client/v3/account/deactivate"),
    ("POST", "/_matrix/client/v3/logout/all"),
    ("POST", "/_matrix/client/v3/logout"),
];

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Keys the endpoints read, so that random bodies reach past the first field check.
    fn key(&mut self) -> String {
        const KEYS: &[&str] = &[
            "room_id",
            "user_id",
            "body",
            "msgtype",
            "membership",
            "timeout",
            "limit",
            "content",
            "device_keys",
            "one_time_keys",
            "fallback_keys",
            "auth",
            "type",
            "visibility",
            "preset",
            "initial_state",
            "invite",
            "filter",
            "actions",
            "conditions",
            "pattern",
            "enabled",
            "presence",
            "status_msg",
            "m.fully_read",
            "m.read",
            "reason",
            "score",
            "new_version",
            "displayname",
            "avatar_url",
            "search_term",
            "search_categories",
            "messages",
            "kind",
            "app_id",
            "pushkey",
            "data",
            "version",
            "auth_data",
            "algorithm",
            "rooms",
            "sessions",
            "lists",
            "ranges",
            "required_state",
            "timeline_limit",
            "extensions",
            "room",
            "state",
            "event_fields",
            "creation_content",
            "power_level_override",
            "room_version",
            "name",
            "topic",
            "room_alias_name",
            "is_direct",
            "third_party_signed",
            "server",
            "device_id",
            "devices",
            "identifier",
            "password",
            "refresh_token",
            "username",
            "master_key",
            "self_signing_key",
            "user_signing_key",
            "signatures",
            "keys",
            "tags",
            "order",
            "thread_id",
            "ts",
            "dir",
            "from",
            "to",
            "alias",
            "event_id",
            "key",
            "redacts",
            "m.relates_to",
            "rel_type",
            "first_message_index",
            "forwarded_count",
            "is_verified",
            "session_data",
            "device_data",
            "next_batch",
        ];
        KEYS[self.below(KEYS.len() as u64) as usize].to_owned()
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 3 { 8 } else { 11 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.next() as i64),
            3 => serde_json::from_str("18446744073709551616").unwrap(),
            4 => json!(-9.5e300),
            5 => json!(""),
            6 => json!("@x:weft.test"),
            7 => json!("!x:weft.test"),
            8 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(
                (0..self.below(6))
                    .map(|_| (self.key(), self.value(depth + 1)))
                    .collect(),
            ),
        }
    }
}

/// Bodies every route gets: not JSON, wrong types, huge numbers, deep nesting, empty.
fn fixed_bodies() -> Vec<Vec<u8>> {
    let wrong_types: Value = serde_json::from_str(
        r#"{
        "room_id": 5, "user_id": [], "body": {}, "msgtype": 1, "membership": null, "timeout": -1,
        "limit": -5, "content": "x", "device_keys": "x", "one_time_keys": [], "auth": "x", "type": 7,
        "visibility": 3, "preset": {}, "initial_state": "x", "invite": "x", "filter": 5, "actions": "x",
        "conditions": 5, "pattern": [], "enabled": "yes", "presence": 5, "m.fully_read": 5, "reason": 5,
        "score": "x", "new_version": 5, "displayname": 5, "avatar_url": 5, "search_term": 5,
        "search_categories": 5, "messages": 5, "kind": 5, "app_id": 5, "pushkey": 5, "data": 5,
        "version": 5, "auth_data": 5, "algorithm": 5, "rooms": 5, "sessions": 5, "lists": 5,
        "identifier": 5, "password": 5, "device_id": 5, "tags": 5, "order": "x"
        }"#,
    )
    .unwrap();
    let huge = "18446744073709551616123456789012345678901234567890";
    let huge_fields = Value::Object(
        wrong_types
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), serde_json::from_str::<Value>(huge).unwrap()))
            .collect(),
    )
    .to_string();
    let mut deep_object = String::from("1");
    for _ in 0..300 {
        deep_object = format!("{{\"content\":{deep_object}}}");
    }
    vec![
        Vec::new(),
        b"null".to_vec(),
        b"{not json".to_vec(),
        b"[]".to_vec(),
        b"\"a string\"".to_vec(),
        huge.as_bytes().to_vec(),
        b"{\"timeout\": 1e400}".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        deep_object.into_bytes(),
        wrong_types.to_string().into_bytes(),
        huge_fields.into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        format!("{{\"body\": \"{}\"}}", "x".repeat(200_000)).into_bytes(),
    ]
}

/// Query strings every route gets (only parameters whose bad values answer at once: a valid
/// long-poll timeout would just wait).
const QUERIES: &[&str] = &[
    "timeout=0",
    "timeout=-5&limit=99999999999999999999999&from=%00&since=s-1_x&dir=q&filter=%7B&to=t&ts=-1",
    "limit=-1&from=t-1-x&dir=f&filter=%5B%5D&version=x&search_term=&server=%2F&room_id=x&timeout=0",
    "since=s9223372036854775807_9223372036854775807&timeout=0&full_state=maybe&set_presence=x",
];

async fn send(client: &Client, method: &str, path: &str, body: Vec<u8>) -> Result<u16, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client
        .http
        .request(method, format!("{}{}", client.base, path))
        .body(body);
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    let res = req
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(res.status().as_u16())
}

both_backends!(malformed_requests_never_get_a_server_error, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (_, me) = alice.get("/_matrix/client/v3/account/whoami").await;
    let device = me["device_id"].as_str().unwrap().to_owned();
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let event = send_ok(&alice, &room, "1", "hello").await;
    let fill = |path: &str| {
        path.replace("{room_id}", &room)
            .replace("{room_id_or_alias}", &room)
            .replace("{event_id}", &event)
            .replace("{user_id}", "@alice:weft.test")
            .replace("{room_alias}", "%23fuzz:weft.test")
            .replace("{device_id}", &device)
            .replace("{kind}", "override")
            .replace("{rule_id}", "fuzz")
            .replace("{event_type}", "m.room.message")
            .replace("{state_key}", "")
            .replace("{txn_id}", "txn")
            .replace("{version}", "1")
            .replace("{session_id}", "session")
            .replace("{receipt_type}", "m.read")
            .replace("{tag}", "u.fuzz")
            .replace("{filter_id}", "0")
            .replace("{rel_type}", "m.annotation")
    };
    let bad_params = ["%FF%FE", "x", "!:", "%00", &"y".repeat(3000)];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut failures = Vec::new();
    let mut record = |what: String, result: Result<u16, String>| match result {
        Ok(status) if status < 500 => {}
        Ok(status) => failures.push(format!("{status} for {what}")),
        Err(e) => failures.push(format!("{e} for {what}")),
    };
    for (method, template) in ROUTES {
        let path = fill(template);
        let mut bodies = fixed_bodies();
        for _ in 0..6 {
            bodies.push(rng.value(0).to_string().into_bytes());
        }
        for body in bodies {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            let sep = if path.contains('?') { '&' } else { '?' };
            let result = send(&alice, method, &format!("{path}{sep}timeout=0"), body).await;
            record(format!("{method} {path} with {shown}"), result);
        }
        for query in QUERIES {
            let result = send(&alice, method, &format!("{path}?{query}"), b"{}".to_vec()).await;
            record(format!("{method} {path}?{query}"), result);
        }
        if template.contains('{') {
            for bad in bad_params {
                let path = template
                    .split('/')
                    .map(|seg| if seg.starts_with('{') { bad } else { seg })
                    .collect::<Vec<_>>()
                    .join("/");
                let result = send(&alice, method, &format!("{path}?timeout=0"), b"{}".to_vec()).await;
                record(format!("{method} {path}"), result);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} server errors:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Still answering, and still working.
    let (status, _) = server.client().get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    let (status, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let again = server.client().with_token(body["access_token"].as_str().unwrap());
    // The fuzzing may have made her leave the (public) room.
    let (status, body) = again.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    send_ok(&again, &room, "after", "still here").await;
    server.stop().await;
});
