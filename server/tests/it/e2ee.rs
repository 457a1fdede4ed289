//! End-to-end encryption on the server: device and one-time keys, claims (also concurrent),
//! device-list changes, to-device messages, cross-signing, signatures, key backup.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use ruma::{
    canonical_json::CanonicalJsonObject,
    serde::{base64::Standard, Base64},
    signatures::Ed25519KeyPair,
};
use serde_json::{json, Value};

use crate::{both_backends, harness::*, rooms::create_room, sync::sync};

/// An ed25519 key whose key ID is `ed25519:<name>`.
pub(crate) struct Key {
    pair: Ed25519KeyPair,
    pub(crate) public: String,
}

impl Key {
    /// A device key named by the device ID.
    pub(crate) fn named(name: &str) -> Key {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, name.to_owned()).unwrap();
        let public = Base64::<Standard>::new(pair.public_key().to_vec()).encode();
        Key { pair, public }
    }

    /// A cross-signing key: named by its own public key.
    pub(crate) fn cross_signing() -> Key {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, String::new()).unwrap();
        let public = Base64::<Standard>::new(probe.public_key().to_vec()).encode();
        Key {
            pair: Ed25519KeyPair::from_der(&der, public.clone()).unwrap(),
            public,
        }
    }

    pub(crate) fn sign(&self, user: &str, object: &mut Value) {
        let mut canonical: CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
        ruma::signatures::sign_json(user, &self.pair, &mut canonical).unwrap();
        *object = serde_json::to_value(canonical).unwrap();
    }
}

pub(crate) async fn whoami(client: &Client) -> (String, String) {
    let (_, me) = client.get("/_matrix/client/v3/account/whoami").await;
    (
        me["user_id"].as_str().unwrap().to_owned(),
        me["device_id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn login(server: &TestServer, user: &str, password: &str) -> Client {
    let (status, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "initial_device_display_name": "second"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.client().with_token(body["access_token"].as_str().unwrap())
}

/// Signed device keys for the client's device, with its ed25519 key.
pub(crate) async fn device_keys(client: &Client) -> (Value, Key) {
    let (user, device) = whoami(client).await;
    let key = Key::named(&device);
    let mut keys = json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleQ", format!("ed25519:{device}"): key.public },
    });
    key.sign(&user, &mut keys);
    (keys, key)
}

async fn upload_device_keys(client: &Client) -> (Value, Key) {
    let (keys, key) = device_keys(client).await;
    let (status, body) = client
        .post("/_matrix/client/v3/keys/upload", json!({ "device_keys": keys }))
        .await;
    assert_eq!(status, 200, "{body}");
    (keys, key)
}

pub(crate) fn otks(prefix: &str, n: usize) -> Value {
    let mut map = serde_json::Map::new();
    for i in 0..n {
        map.insert(
            format!("signed_curve25519:{prefix}{i:03}"),
            json!({ "key": format!("otk-{prefix}-{i}"), "signatures": {} }),
        );
    }
    Value::Object(map)
}

async fn claim(client: &Client, user: &str, device: &str) -> Value {
    let (status, body) = client
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { user: { device: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["one_time_keys"][user][device].clone()
}

both_backends!(device_keys_upload_query_and_counts, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_dev) = whoami(&alice).await;

    // Keys claiming another user, or another device, are refused.
    let (mut keys, key) = device_keys(&alice).await;
    keys["user_id"] = json!("@bob:weft.test");
    key.sign("@bob:weft.test", &mut keys);
    let (status, body) = alice
        .post("/_matrix/client/v3/keys/upload", json!({ "device_keys": keys }))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (mut keys, key) = device_keys(&alice).await;
    keys["device_id"] = json!("OTHERDEVICE");
    key.sign(&alice_id, &mut keys);
    let (status, body) = alice
        .post("/_matrix/client/v3/keys/upload", json!({ "device_keys": keys }))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (_, body) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(
        body["device_keys"][&alice_id],
        json!({}),
        "nothing stored after refusals: {body}"
    );

    let (keys, _) = upload_device_keys(&alice).await;
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": otks("A", 5) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 5);
    // The same keys again change nothing; a known key ID with other content is an error.
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": otks("A", 5) }),
        )
        .await;
    assert_eq!(
        (status, body["one_time_key_counts"]["signed_curve25519"].as_i64()),
        (200, Some(5)),
        "{body}"
    );
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": { "signed_curve25519:A000": { "key": "different" } } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Bob sees Alice's keys as uploaded, with her device's display name.
    let (status, body) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = &body["device_keys"][&alice_id][&alice_dev];
    assert_eq!(got["keys"], keys["keys"]);
    assert_eq!(got["signatures"], keys["signatures"]);
    assert!(got["unsigned"].is_object(), "{got}");
    // Asking for a device that does not exist gives nothing for it; remote users fail.
    let (_, body) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: ["NOPE"], "@x:remote.example": [] } }),
        )
        .await;
    assert_eq!(body["device_keys"][&alice_id], json!({}));
    assert!(body["failures"]["remote.example"].is_object(), "{body}");

    // Sync reports the device's one-time key count and fallback key state.
    let s = sync(&alice, None, "").await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 5, "{s}");
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
    let s = sync(&bob, None, "").await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0, "{s}");

    // Deleting the device removes its keys.
    let (_, body) = alice.post("/_matrix/client/v3/logout", json!({})).await;
    assert!(body.is_object());
    let (_, body) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(body["device_keys"][&alice_id], json!({}), "{body}");
    server.stop().await;
});

// As Synapse, the server does not verify the device's self-signature: the clients that
// query the keys do.
both_backends!(
    device_keys_without_a_valid_self_signature_are_stored,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let alice = server.register("alice", "pw").await;
        let bob = server.register("bob", "pw").await;
        let (alice_id, alice_dev) = whoami(&alice).await;
        let (mut keys, _) = device_keys(&alice).await;
        keys["keys"][format!("curve25519:{alice_dev}")] = json!("dGFtcGVyZWQ");
        let (status, body) = alice
            .post("/_matrix/client/v3/keys/upload", json!({ "device_keys": keys }))
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = bob
            .post(
                "/_matrix/client/v3/keys/query",
                json!({ "device_keys": { &alice_id: [] } }),
            )
            .await;
        assert_eq!(
            body["device_keys"][&alice_id][&alice_dev]["keys"], keys["keys"],
            "{body}"
        );
        // Unsigned keys too.
        let second = login(&server, "alice", "pw").await;
        let (_, second_dev) = whoami(&second).await;
        let unsigned = json!({
            "user_id": alice_id, "device_id": second_dev,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { format!("curve25519:{second_dev}"): "Y3VydmU", format!("ed25519:{second_dev}"): "ZWQ" },
        });
        let (status, body) = second
            .post("/_matrix/client/v3/keys/upload", json!({ "device_keys": unsigned }))
            .await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
);

both_backends!(claim_then_fallback, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_dev) = whoami(&alice).await;
    upload_device_keys(&alice).await;
    let fallback = json!({ "signed_curve25519:FB1": { "key": "fallback-1", "fallback": true, "signatures": {} } });
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": otks("C", 2), "fallback_keys": fallback }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let s = sync(&alice, None, "").await;
    assert_eq!(
        s["device_unused_fallback_key_types"],
        json!(["signed_curve25519"]),
        "{s}"
    );

    let first = claim(&bob, &alice_id, &alice_dev).await;
    let second = claim(&bob, &alice_id, &alice_dev).await;
    let ids: Vec<String> = [&first, &second]
        .iter()
        .map(|k| k.as_object().unwrap().keys().next().unwrap().clone())
        .collect();
    assert_eq!(ids, vec!["signed_curve25519:C000", "signed_curve25519:C001"]);
    assert_eq!(first["signed_curve25519:C000"]["key"], "otk-C-0");
    // Exhausted: the fallback key, which stays and is marked used.
    for _ in 0..2 {
        let third = claim(&bob, &alice_id, &alice_dev).await;
        assert_eq!(third["signed_curve25519:FB1"]["key"], "fallback-1", "{third}");
    }
    let s = sync(&alice, None, "").await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(s["device_unused_fallback_key_types"], json!([]), "{s}");
    // A new fallback key is unused again; claiming for an unknown device gives nothing.
    let fallback = json!({ "signed_curve25519:FB2": { "key": "fallback-2", "fallback": true, "signatures": {} } });
    alice
        .post("/_matrix/client/v3/keys/upload", json!({ "fallback_keys": fallback }))
        .await;
    let s = sync(&alice, None, "").await;
    assert_eq!(s["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
    assert_eq!(claim(&bob, &alice_id, "NODEVICE").await, Value::Null);
    server.stop().await;
});

both_backends!(concurrent_claims_never_share_a_key, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_dev) = whoami(&alice).await;
    upload_device_keys(&alice).await;
    let fallback = json!({ "signed_curve25519:FALLBACK": { "key": "fb", "signatures": {} } });
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "one_time_keys": otks("K", 10), "fallback_keys": fallback }),
        )
        .await;

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (bob, user, device) = (bob.clone(), alice_id.clone(), alice_dev.clone());
            tokio::spawn(async move { claim(&bob, &user, &device).await })
        })
        .collect();
    let mut otk_ids = Vec::new();
    let mut fallbacks = 0;
    for t in tasks {
        let got = t.await.unwrap();
        let id = got.as_object().unwrap().keys().next().unwrap().clone();
        if id == "signed_curve25519:FALLBACK" {
            fallbacks += 1
        } else {
            otk_ids.push(id)
        }
    }
    let unique: HashSet<&String> = otk_ids.iter().collect();
    assert_eq!(otk_ids.len(), 10, "{otk_ids:?}");
    assert_eq!(unique.len(), 10, "a one-time key was handed out twice: {otk_ids:?}");
    assert_eq!(fallbacks, 10);
    server.stop().await;
});

both_backends!(device_list_changes, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let (alice_id, _) = whoami(&alice).await;
    let (bob_id, _) = whoami(&bob).await;
    let (carol_id, _) = whoami(&carol).await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    let (status, _) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let from = sync(&bob, None, "").await["next_batch"].as_str().unwrap().to_owned();

    // A long-polling sync of Bob wakes when Alice's new device publishes keys.
    let alice2 = login(&server, "alice", "pw").await;
    let poller = {
        let (bob, from) = (bob.clone(), from.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let (_, body) = bob
                .get(&format!("/_matrix/client/v3/sync?timeout=10000&since={from}"))
                .await;
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload_device_keys(&alice2).await;
    upload_device_keys(&carol).await; // shares no room with Bob
    let (body, waited) = poller.await.unwrap();
    assert!(
        waited < Duration::from_secs(8),
        "sync was not woken ({waited:?}): {body}"
    );
    let s = sync(&bob, Some(&from), "").await;
    let changed = s["device_lists"]["changed"].as_array().unwrap();
    assert!(changed.contains(&json!(alice_id)), "{s}");
    assert!(!changed.contains(&json!(carol_id)), "{s}");
    let to = s["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = bob
        .get(&format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!([alice_id]));
    let (_, body) = bob
        .get(&format!("/_matrix/client/v3/keys/changes?from={to}&to={to}"))
        .await;
    assert_eq!(body["changed"], json!([]));
    let (status, _) = bob
        .get(&format!("/_matrix/client/v3/keys/changes?from=garbage&to={to}"))
        .await;
    assert_eq!(status, 400);

    // Carol joining makes her new to Bob; Alice leaving (no other shared room) puts her in `left`.
    let (status, _) = carol.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = alice
        .post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(status, 200);
    let s = sync(&bob, Some(&to), "").await;
    assert_eq!(s["device_lists"]["changed"], json!([carol_id]), "{s}");
    assert_eq!(s["device_lists"]["left"], json!([alice_id]), "{s}");
    assert!(!s["device_lists"]["left"].as_array().unwrap().contains(&json!(bob_id)));
    server.stop().await;
});

both_backends!(to_device_messages, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let alice2 = login(&server, "alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_dev) = whoami(&alice).await;
    let (bob_id, _) = whoami(&bob).await;
    let start1 = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let start2 = sync(&alice2, None, "").await["next_batch"].as_str().unwrap().to_owned();

    let send = |txn: &str, n: i64, target: &str| {
        let bob = bob.clone();
        let (path, body) = (
            format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            json!({ "messages": { &alice_id: { target: { "n": n } } } }),
        );
        async move { bob.put(&path, body).await }
    };
    assert_eq!(send("t1", 1, &alice_dev).await.0, 200);
    assert_eq!(send("t2", 2, "*").await.0, 200);
    // A retried transaction is not delivered twice.
    assert_eq!(send("t1", 1, &alice_dev).await.0, 200);

    let ns = |s: &Value| -> Vec<i64> {
        s["to_device"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["content"]["n"].as_i64().unwrap())
            .collect()
    };
    let s = sync(&alice, Some(&start1), "").await;
    assert_eq!(ns(&s), vec![1, 2], "{s}");
    assert_eq!(s["to_device"]["events"][0]["sender"], json!(bob_id));
    assert_eq!(s["to_device"]["events"][0]["type"], "m.test");
    // Not acknowledged yet: the same `since` gets them again.
    let again = sync(&alice, Some(&start1), "").await;
    assert_eq!(ns(&again), vec![1, 2]);
    let next = again["next_batch"].as_str().unwrap().to_owned();
    // Syncing from the next token acknowledges (deletes) them.
    let after = sync(&alice, Some(&next), "").await;
    assert_eq!(ns(&after), Vec::<i64>::new(), "{after}");
    let after = sync(&alice, Some(&start1), "").await;
    assert_eq!(
        ns(&after),
        Vec::<i64>::new(),
        "acknowledged messages came back: {after}"
    );
    // The other device got only the `*` message, and still has it.
    let s = sync(&alice2, Some(&start2), "").await;
    assert_eq!(ns(&s), vec![2], "{s}");

    // A waiting sync wakes up for a to-device message.
    let s = sync(&alice2, Some(s["next_batch"].as_str().unwrap()), "").await;
    let token = s["next_batch"].as_str().unwrap().to_owned();
    let poller = {
        let alice2 = alice2.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (_, body) = alice2
                .get(&format!("/_matrix/client/v3/sync?timeout=10000&since={token}"))
                .await;
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send("t3", 3, "*").await.0, 200);
    let (body, waited) = poller.await.unwrap();
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(ns(&body), vec![3], "{body}");
    server.stop().await;
});

/// Master, self-signing and user-signing keys for `user`, the latter two signed by the master.
pub(crate) fn cross_signing_keys(user: &str) -> (Value, Key, Key, Key) {
    let (master, ssk, usk) = (Key::cross_signing(), Key::cross_signing(), Key::cross_signing());
    let key = |usage: &str, k: &Key| json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{}", k.public): k.public } });
    let mut self_signing = key("self_signing", &ssk);
    master.sign(user, &mut self_signing);
    let mut user_signing = key("user_signing", &usk);
    master.sign(user, &mut user_signing);
    let body = json!({ "master_key": key("master", &master), "self_signing_key": self_signing, "user_signing_key": user_signing });
    (body, master, ssk, usk)
}

both_backends!(cross_signing_and_signatures, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, alice_dev) = whoami(&alice).await;
    let (bob_id, _) = whoami(&bob).await;
    let (device, _) = upload_device_keys(&alice).await;

    // A self-signing key not signed by the master key is refused.
    let (mut body, ..) = cross_signing_keys(&alice_id);
    body["self_signing_key"]["signatures"] = json!({});
    let (status, res) = alice.post("/_matrix/client/v3/keys/device_signing/upload", body).await;
    assert_eq!(status, 400, "{res}");

    // The first upload needs no UIA.
    let (body, master, ssk, _usk) = cross_signing_keys(&alice_id);
    let (status, res) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", body.clone())
        .await;
    assert_eq!(status, 200, "{res}");
    // Replacing them does: password UIA.
    let (body2, ..) = cross_signing_keys(&alice_id);
    let (status, res) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", body2.clone())
        .await;
    assert_eq!(status, 401, "{res}");
    let session = res["session"].as_str().unwrap().to_owned();
    let mut wrong = body2.clone();
    wrong["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "bad", "session": session});
    let (status, _) = alice.post("/_matrix/client/v3/keys/device_signing/upload", wrong).await;
    assert_eq!(status, 401);
    let (_, keys) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(
        keys["master_keys"][&alice_id]["keys"], body["master_key"]["keys"],
        "unchanged without UIA"
    );
    // The session begun for body2's keys does not upload other new keys.
    let (mut body3, ..) = cross_signing_keys(&alice_id);
    body3["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "session": session});
    let (status, res) = alice.post("/_matrix/client/v3/keys/device_signing/upload", body3).await;
    assert_eq!((status, res["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{res}");
    // Back to the first keys, authenticated.
    let mut authed = body.clone();
    authed["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "session": session});
    let (status, res) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", body2.clone())
        .await;
    assert_eq!(status, 401, "{res}");
    let (status, res) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", authed)
        .await;
    assert_eq!(status, 200, "{res}");

    // Bob sees the master and self-signing keys, not the user-signing key; Alice sees all.
    let (_, keys) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(
        keys["master_keys"][&alice_id]["keys"], body["master_key"]["keys"],
        "{keys}"
    );
    assert_eq!(
        keys["self_signing_keys"][&alice_id]["keys"],
        body["self_signing_key"]["keys"]
    );
    assert!(keys["user_signing_keys"].get(&alice_id).is_none(), "{keys}");
    let (_, keys) = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(
        keys["user_signing_keys"][&alice_id]["keys"],
        body["user_signing_key"]["keys"]
    );

    // Alice's self-signing key signs her device: valid, and shown to others.
    let mut signed_device = device.clone();
    ssk.sign(&alice_id, &mut signed_device);
    // A bad signature: a different key pretending to be the self-signing key.
    let mut forged = device.clone();
    let fake = Key {
        pair: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), ssk.public.clone()).unwrap(),
        public: ssk.public.clone(),
    };
    fake.sign(&alice_id, &mut forged);
    let (status, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice_id: { &alice_dev: forged } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        res["failures"][&alice_id][&alice_dev]["errcode"], "M_INVALID_SIGNATURE",
        "{res}"
    );
    let (status, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice_id: { &alice_dev: signed_device } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"].as_object().is_none_or(|f| f.is_empty()), "{res}");
    let (_, keys) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    let sigs = &keys["device_keys"][&alice_id][&alice_dev]["signatures"][&alice_id];
    assert!(sigs.get(format!("ed25519:{}", ssk.public)).is_some(), "{keys}");
    assert!(sigs.get(format!("ed25519:{alice_dev}")).is_some());

    // Bob's master key signed by Alice's user-signing key: seen by Alice only.
    let (bob_body, ..) = cross_signing_keys(&bob_id);
    let (status, _) = bob
        .post("/_matrix/client/v3/keys/device_signing/upload", bob_body.clone())
        .await;
    assert_eq!(status, 200);
    let mut bob_master = bob_body["master_key"].clone();
    let usk = _usk;
    usk.sign(&alice_id, &mut bob_master);
    let bob_master_id = bob_master["keys"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let (status, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &bob_id: { &bob_master_id: bob_master } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"].as_object().is_none_or(|f| f.is_empty()), "{res}");
    let (_, keys) = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob_id: [] } }),
        )
        .await;
    assert!(
        keys["master_keys"][&bob_id]["signatures"][&alice_id]
            .get(format!("ed25519:{}", usk.public))
            .is_some(),
        "{keys}"
    );
    let carol = server.register("carol", "pw").await;
    let (_, keys) = carol
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob_id: [] } }),
        )
        .await;
    assert!(
        keys["master_keys"][&bob_id]["signatures"].get(&alice_id).is_none(),
        "{keys}"
    );
    // Signing an unknown key fails per key.
    let (_, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice_id: { "NOSUCHKEY": { "keys": {} } } }),
        )
        .await;
    assert!(res["failures"][&alice_id]["NOSUCHKEY"]["errcode"].is_string(), "{res}");
    let _ = master;
    server.stop().await;
});

fn backup_key(index: i64, forwarded: i64, verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": index, "forwarded_count": forwarded, "is_verified": verified,
        "session_data": { "ephemeral": tag, "ciphertext": tag, "mac": tag },
    })
}

both_backends!(backup_versions_must_be_readable, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let good =
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "cHVibGlja2V5" } });
    let refused = [
        (
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2" }),
            "M_BAD_JSON",
        ),
        (
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": 5 } }),
            "M_BAD_JSON",
        ),
        (
            json!({ "algorithm": "org.example.unknown", "auth_data": { "public_key": "x" } }),
            "M_INVALID_PARAM",
        ),
    ];
    for (body, errcode) in &refused {
        let (status, res) = alice.post("/_matrix/client/v3/room_keys/version", body.clone()).await;
        assert_eq!(
            (status, res["errcode"].as_str()),
            (400, Some(*errcode)),
            "{body}: {res}"
        );
    }
    // Nothing was stored: there is still no version.
    let (status, res) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!((status, res["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{res}");

    let (status, res) = alice.post("/_matrix/client/v3/room_keys/version", good.clone()).await;
    assert_eq!((status, res["version"].as_str()), (200, Some("1")), "{res}");
    for (body, errcode) in &refused {
        let (status, res) = alice.put("/_matrix/client/v3/room_keys/version/1", body.clone()).await;
        assert_eq!(
            (status, res["errcode"].as_str()),
            (400, Some(*errcode)),
            "{body}: {res}"
        );
    }
    let (status, res) = alice.get("/_matrix/client/v3/room_keys/version/1").await;
    assert_eq!((status, &res["auth_data"]), (200, &good["auth_data"]), "{res}");
    server.stop().await;
});

both_backends!(key_backup_lifecycle, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let algorithm = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "cHVibGlja2V5", "signatures": {} } });
    let (status, body) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = alice
        .put("/_matrix/client/v3/room_keys/keys?version=1", json!({ "rooms": {} }))
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = alice
        .post("/_matrix/client/v3/room_keys/version", algorithm.clone())
        .await;
    assert_eq!((status, body["version"].as_str()), (200, Some("1")), "{body}");
    let (_, body) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(
        (body["version"].as_str(), body["count"].as_i64()),
        (Some("1"), Some(0)),
        "{body}"
    );
    assert_eq!(body["auth_data"], algorithm["auth_data"]);
    let etag0 = body["etag"].as_str().unwrap().to_owned();

    let room = "!room:weft.test";
    let path = |q: &str| format!("/_matrix/client/v3/room_keys/keys/{room}/sess1?version={q}");
    let (status, body) = alice.put(&path("1"), backup_key(5, 1, false, "a")).await;
    assert_eq!((status, body["count"].as_i64()), (200, Some(1)), "{body}");
    let etag1 = body["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag0, etag1);
    // Replacement rules: a worse key (higher index) is ignored, the etag stays.
    let (_, body) = alice.put(&path("1"), backup_key(9, 0, false, "worse")).await;
    assert_eq!(body["etag"].as_str(), Some(etag1.as_str()));
    let (_, got) = alice.get(&path("1")).await;
    assert_eq!(got["session_data"]["ciphertext"], "a");
    // Same index, fewer forwards wins.
    alice.put(&path("1"), backup_key(5, 0, false, "b")).await;
    let (_, got) = alice.get(&path("1")).await;
    assert_eq!(got["session_data"]["ciphertext"], "b");
    // Verified beats a lower index; an unverified one never replaces a verified one.
    alice.put(&path("1"), backup_key(7, 3, true, "c")).await;
    alice.put(&path("1"), backup_key(0, 0, false, "d")).await;
    let (_, got) = alice.get(&path("1")).await;
    assert_eq!(
        (got["session_data"]["ciphertext"].as_str(), got["is_verified"].as_bool()),
        (Some("c"), Some(true)),
        "{got}"
    );

    // Bulk and per-room uploads, reads, counts.
    let (status, body) = alice
        .put(
            "/_matrix/client/v3/room_keys/keys?version=1",
            json!({ "rooms": { room: { "sessions": { "sess2": backup_key(0, 0, false, "e") } }, "!other:weft.test": { "sessions": { "s": backup_key(0, 0, false, "f") } } } }),
        )
        .await;
    assert_eq!((status, body["count"].as_i64()), (200, Some(3)), "{body}");
    let (_, all) = alice.get("/_matrix/client/v3/room_keys/keys?version=1").await;
    assert_eq!(all["rooms"][room]["sessions"].as_object().unwrap().len(), 2, "{all}");
    let (_, one_room) = alice
        .get(&format!("/_matrix/client/v3/room_keys/keys/{room}?version=1"))
        .await;
    assert_eq!(one_room["sessions"]["sess2"]["session_data"]["ciphertext"], "e");
    let (status, _) = alice
        .get(&format!("/_matrix/client/v3/room_keys/keys/{room}/nosuch?version=1"))
        .await;
    assert_eq!(status, 404);

    // A new version becomes current; writing to the old one is the wrong version.
    let (_, body) = alice
        .post("/_matrix/client/v3/room_keys/version", algorithm.clone())
        .await;
    assert_eq!(body["version"], "2");
    let (status, body) = alice.put(&path("1"), backup_key(0, 0, true, "x")).await;
    assert_eq!(
        (status, body["errcode"].as_str(), body["current_version"].as_str()),
        (403, Some("M_WRONG_ROOM_KEYS_VERSION"), Some("2")),
        "{body}"
    );
    let (_, body) = alice.get("/_matrix/client/v3/room_keys/version/1").await;
    assert_eq!(body["count"], 3, "old version still readable: {body}");

    // Updating auth data needs the same algorithm.
    let mut other = algorithm.clone();
    other["algorithm"] = json!("org.example.other");
    let (status, _) = alice.put("/_matrix/client/v3/room_keys/version/2", other).await;
    assert_eq!(status, 400);
    let mut updated = algorithm.clone();
    updated["auth_data"]["public_key"] = json!("bmV3a2V5");
    let (status, body) = alice
        .put("/_matrix/client/v3/room_keys/version/2", updated.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = alice.get("/_matrix/client/v3/room_keys/version/2").await;
    assert_eq!(body["auth_data"]["public_key"], "bmV3a2V5");

    // Deleting keys and versions.
    let (_, body) = alice
        .delete(
            &format!("/_matrix/client/v3/room_keys/keys/{room}?version=1"),
            json!({}),
        )
        .await;
    assert_eq!(body["count"], 1, "{body}");
    let (status, _) = alice.delete("/_matrix/client/v3/room_keys/version/2", json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(body["version"], "1", "current is the highest remaining: {body}");
    let (status, _) = alice.get("/_matrix/client/v3/room_keys/version/2").await;
    assert_eq!(status, 404);
    let (status, _) = alice.get("/_matrix/client/v3/room_keys/keys?version=2").await;
    assert_eq!(status, 404);
    let (_, body) = alice.post("/_matrix/client/v3/room_keys/version", algorithm).await;
    assert_eq!(body["version"], "3", "numbers are never reused");
    // Another user sees none of it.
    let bob = server.register("bob", "pw").await;
    let (status, _) = bob.get("/_matrix/client/v3/room_keys/version/1").await;
    assert_eq!(status, 404);
    server.stop().await;
});

both_backends!(dehydrated_device, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_id, _) = whoami(&alice).await;
    let base = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let (status, _) = alice.get(base).await;
    assert_eq!(status, 404);

    let key = Key::named("DEHYDRATED1");
    let mut keys = json!({
        "user_id": alice_id, "device_id": "DEHYDRATED1", "algorithms": ["m.olm.v1.curve25519-aes-sha2"], "dehydrated": true,
        "keys": { "curve25519:DEHYDRATED1": "Y3VydmU", "ed25519:DEHYDRATED1": key.public },
    });
    key.sign(&alice_id, &mut keys);
    let data = json!({ "algorithm": "org.matrix.msc3814.v2", "device_pickle": "pickle", "nonce": "nonce" });
    let mut bad = keys.clone();
    bad["user_id"] = json!("@bob:weft.test");
    let (status, _) = alice
        .put(
            base,
            json!({ "device_id": "DEHYDRATED1", "device_data": data, "device_keys": bad }),
        )
        .await;
    assert_eq!(status, 400, "another user's device keys are refused");
    let (status, body) = alice
        .put(base, json!({ "device_id": "DEHYDRATED1", "device_data": data, "device_keys": keys, "one_time_keys": otks("D", 1) }))
        .await;
    assert_eq!(
        (status, body["device_id"].as_str()),
        (200, Some("DEHYDRATED1")),
        "{body}"
    );
    let (_, body) = alice.get(base).await;
    assert_eq!(body["device_data"]["device_pickle"], "pickle", "{body}");
    let (_, q) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert_eq!(q["device_keys"][&alice_id]["DEHYDRATED1"]["dehydrated"], true, "{q}");
    assert_eq!(
        claim(&bob, &alice_id, "DEHYDRATED1").await["signed_curve25519:D000"]["key"],
        "otk-D-0"
    );

    // To-device messages wait for it and page with next_batch; a page acknowledges the last.
    for (txn, n) in [("a", 1), ("b", 2)] {
        let (status, _) = bob
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                json!({ "messages": { &alice_id: { "DEHYDRATED1": { "n": n } } } }),
            )
            .await;
        assert_eq!(status, 200);
    }
    let events = format!("{base}/DEHYDRATED1/events");
    let (status, page) = alice.post(&events, json!({})).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 2, "{page}");
    let next = page["next_batch"].as_str().unwrap().to_owned();
    let (_, page) = alice.post(&events, json!({ "next_batch": next })).await;
    assert_eq!(page["events"], json!([]), "{page}");
    let (status, _) = alice.post(&format!("{base}/OTHERDEVICE/events"), json!({})).await;
    assert_eq!(status, 403);

    let (status, body) = alice.delete(base, json!({})).await;
    assert_eq!((status, body["device_id"].as_str()), (200, Some("DEHYDRATED1")));
    let (status, _) = alice.get(base).await;
    assert_eq!(status, 404);
    let (_, q) = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice_id: [] } }),
        )
        .await;
    assert!(q["device_keys"][&alice_id].get("DEHYDRATED1").is_none(), "{q}");
    server.stop().await;
});

both_backends!(deleting_a_device_wakes_peers, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (_, room) = alice
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (_, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw"}),
        )
        .await;
    let second = server.client().with_token(body["access_token"].as_str().unwrap());
    // Only devices with published keys matter to other users' encryption.
    upload_device_keys(&second).await;
    let (_, synced) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    let token = synced["next_batch"].as_str().unwrap().to_owned();
    let poller = alice.clone();
    let path = format!("/_matrix/client/v3/sync?timeout=20000&since={token}");
    let handle = tokio::spawn(async move { poller.get(&path).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    assert_eq!(second.post("/_matrix/client/v3/logout", json!({})).await.0, 200);
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "alice's sync woke after {:?}",
        start.elapsed()
    );
    assert!(
        body["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == "@bob:weft.test"),
        "{body}"
    );
    server.stop().await;
});
