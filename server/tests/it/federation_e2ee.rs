//! End-to-end encryption across two weft servers: a remote user's keys queried and claimed
//! through their server, their new device seen in the local user's sync and keys (device list
//! updates kept in the local server's copy, which answers while their server is down), a
//! remote user leaving shows in `left`, and to-device messages delivered once across servers.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    both_backends,
    e2ee::{cross_signing_keys, device_keys, login, otks, whoami},
    federation_rooms::{enc, eventually, membership, user_id},
    harness::Client,
    harness_federation::start_federation,
    harness_forge::Forger,
    rooms::create_room,
    sync::sync,
};

async fn upload(client: &Client, body: Value) {
    let (status, answer) = client.post("/_matrix/client/v3/keys/upload", body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn query(client: &Client, user: &str) -> Value {
    let (status, answer) = client
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { user: [] }, "timeout": 5000 }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// `failures` is left out when empty.
fn no_failures(answer: &Value) -> bool {
    answer.get("failures").is_none_or(|f| f == &json!({}))
}

fn device_ids(answer: &Value, user: &str) -> Vec<String> {
    let mut ids: Vec<String> = answer["device_keys"][user]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

both_backends!(remote_keys_are_queried_claimed_and_kept_current, |backend| async move {
    let Some((_ca, mut servers)) = start_federation(backend, 2).await else {
        return;
    };
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let bob_id = user_id("bob", &b);
    let (_, bob_device) = whoami(&bob).await;
    let (keys, _) = device_keys(&bob).await;
    upload(&bob, json!({ "device_keys": keys, "one_time_keys": otks("b", 3) })).await;
    let (signing, ..) = cross_signing_keys(&bob_id);
    let (status, answer) = bob
        .post("/_matrix/client/v3/keys/device_signing/upload", signing.clone())
        .await;
    assert_eq!(status, 200, "{answer}");

    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, answer) = bob
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    eventually("bob joined, on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // Alice's server asks Bob's: his device and cross-signing keys, no failures.
    let answer = query(&alice, &bob_id).await;
    assert_eq!(device_ids(&answer, &bob_id), vec![bob_device.clone()], "{answer}");
    assert_eq!(
        answer["device_keys"][&bob_id][&bob_device]["keys"], keys["keys"],
        "{answer}"
    );
    assert_eq!(
        answer["master_keys"][&bob_id]["keys"], signing["master_key"]["keys"],
        "{answer}"
    );
    assert_eq!(
        answer["self_signing_keys"][&bob_id]["keys"], signing["self_signing_key"]["keys"],
        "{answer}"
    );
    assert!(answer["user_signing_keys"].get(&bob_id).is_none(), "{answer}");
    assert!(no_failures(&answer), "{answer}");

    // Alice verifies Bob: her user-signing key signs his master key (kept here from his
    // server), and her queries show her signature on it.
    let alice_id = user_id("alice", &a);
    let (alice_signing, _, _, alice_usk) = cross_signing_keys(&alice_id);
    let (status, answer) = alice
        .post("/_matrix/client/v3/keys/device_signing/upload", alice_signing)
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut bob_master = signing["master_key"].clone();
    alice_usk.sign(&alice_id, &mut bob_master);
    let master_id = bob_master["keys"].as_object().unwrap().keys().next().unwrap().clone();
    let master_public = master_id.trim_start_matches("ed25519:").to_owned();
    eventually("alice's signature on bob's master key accepted", || async {
        let (status, answer) = alice
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                json!({ &bob_id: { &master_public: bob_master.clone() } }),
            )
            .await;
        (status == 200 && answer["failures"].as_object().is_none_or(|f| f.is_empty())).then_some(())
    })
    .await;
    let answer = query(&alice, &bob_id).await;
    let usk_id = format!("ed25519:{}", alice_usk.public);
    assert!(
        answer["master_keys"][&bob_id]["signatures"][&alice_id]
            .get(&usk_id)
            .is_some(),
        "{answer}"
    );

    // Claims reach Bob's server: each claim takes another of his one-time keys.
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let (status, answer) = alice
            .post(
                "/_matrix/client/v3/keys/claim",
                json!({ "one_time_keys": { &bob_id: { &bob_device: "signed_curve25519" } } }),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let keys = answer["one_time_keys"][&bob_id][&bob_device]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(keys.len(), 1, "{answer}");
        claimed.extend(keys.keys().cloned());
    }
    assert_ne!(claimed[0], claimed[1]);
    // A server that cannot be reached is a failure of its own; the rest is still answered.
    let (status, answer) = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob_id: [], "@nobody:127.0.0.1:1": [] }, "timeout": 3000 }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["failures"].get("127.0.0.1:1").is_some(), "{answer}");
    assert_eq!(device_ids(&answer, &bob_id), vec![bob_device.clone()], "{answer}");

    // Bob signs in on a second device and publishes its keys: Alice's sync says his devices
    // changed, and her query shows the new device.
    let (_, first) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let bob2 = login(&b, "bob", "password-bob").await;
    let (_, bob_device2) = whoami(&bob2).await;
    let (keys2, _) = device_keys(&bob2).await;
    upload(&bob2, json!({ "device_keys": keys2 })).await;
    eventually("bob's new device, in alice's sync", || {
        let since = since.clone();
        let alice = alice.clone();
        let bob_id = bob_id.clone();
        async move {
            let answer = sync(&alice, Some(&since), "").await;
            let changed = answer["device_lists"]["changed"].as_array()?.clone();
            changed.contains(&json!(bob_id)).then_some(())
        }
    })
    .await;
    let mut both = vec![bob_device.clone(), bob_device2.clone()];
    both.sort();
    eventually("bob's new device, in alice's key query", || async {
        (device_ids(&query(&alice, &bob_id).await, &bob_id) == both).then_some(())
    })
    .await;
    let (status, answer) = alice
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            enc(&since),
            enc(sync(&alice, Some(&since), "").await["next_batch"].as_str().unwrap())
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["changed"].as_array().unwrap().contains(&json!(bob_id)),
        "{answer}"
    );

    // Bob renames the new device: the name travels with the update.
    let (status, answer) = bob2
        .put(
            &format!("/_matrix/client/v3/devices/{}", enc(&bob_device2)),
            json!({ "display_name": "Bob's tablet" }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    eventually("the new name, in alice's key query", || async {
        let answer = query(&alice, &bob_id).await;
        (answer["device_keys"][&bob_id][&bob_device2]["unsigned"]["device_display_name"] == "Bob's tablet")
            .then_some(())
    })
    .await;

    // Bob's server goes away: Alice's server still knows his devices, kept current by updates.
    let answer = query(&alice, &bob_id).await;
    since = sync(&alice, None, "").await["next_batch"].as_str().unwrap().to_owned();
    let (status, left) = bob
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{left}");
    eventually("bob's leave, in alice's device list changes", || {
        let since = since.clone();
        let alice = alice.clone();
        let bob_id = bob_id.clone();
        async move {
            let answer = sync(&alice, Some(&since), "").await;
            answer["device_lists"]["left"]
                .as_array()?
                .contains(&json!(bob_id))
                .then_some(())
        }
    })
    .await;
    b.stop().await;
    let cached = query(&alice, &bob_id).await;
    assert_eq!(device_ids(&cached, &bob_id), both, "{cached}");
    assert_eq!(cached["device_keys"], answer["device_keys"], "{cached}");
    assert!(no_failures(&cached), "{cached}");
    a.stop().await;
});

both_backends!(to_device_messages_cross_servers_once, |backend| async move {
    let Some((ca, mut servers)) = start_federation(backend, 2).await else {
        return;
    };
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let alice_id = user_id("alice", &a);
    let bob_id = user_id("bob", &b);
    let (_, bob_device) = whoami(&bob).await;
    let bob2 = login(&b, "bob", "password-bob").await;

    // Alice sends to one of Bob's devices, then to all of them; the first send is retried.
    for (txn, target, n) in [
        ("t1", bob_device.as_str(), 1),
        ("t1", bob_device.as_str(), 1),
        ("t2", "*", 2),
    ] {
        let (status, answer) = alice
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.test.ping/{txn}"),
                json!({ "messages": { &bob_id: { target: { "n": n } } } }),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let received = |client: Client| async move {
        let answer = sync(&client, None, "").await;
        answer["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == "m.test.ping")
            .collect::<Vec<Value>>()
    };
    let first = eventually("both messages on bob's first device", || async {
        let events = received(bob.clone()).await;
        (events.len() >= 2).then_some(events)
    })
    .await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|e| e["sender"] == alice_id), "{first:?}");
    assert_eq!(
        first.iter().map(|e| e["content"]["n"].clone()).collect::<Vec<_>>(),
        vec![json!(1), json!(2)]
    );
    let second = eventually("the message to all devices on bob's second device", || async {
        let events = received(bob2.clone()).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0]["content"]["n"], 2);

    // The same EDU in two transactions (a sender that lost its answers) is delivered once;
    // one speaking for a user of another server is dropped.
    let (_, alice_device) = whoami(&alice).await;
    let forger = Forger::as_server(&ca, &b);
    let edu = |sender: &str, message_id: &str| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.test.pong", "message_id": message_id,
            "messages": { &alice_id: { &alice_device: { "hello": message_id } } },
        }})
    };
    for (txn, edu) in [
        ("x1", edu(&bob_id, "m1")),
        ("x2", edu(&bob_id, "m1")),
        ("x3", edu(&format!("@mallory:{}", a.server_name()), "m2")),
    ] {
        let body = forger.transaction_body(Vec::new(), vec![edu]);
        let (status, answer) = forger
            .request(
                &a,
                Method::PUT,
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(&body),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let answer = sync(&alice, None, "").await;
    let pongs: Vec<&Value> = answer["to_device"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.test.pong")
        .collect();
    assert_eq!(pongs.len(), 1, "{answer}");
    assert_eq!(pongs[0]["sender"], bob_id);
    assert_eq!(pongs[0]["content"]["hello"], "m1");

    // The served endpoints answer for this server's users only.
    let (status, answer) = forger
        .request(
            &a,
            Method::GET,
            &format!("/_matrix/federation/v1/user/devices/{}", enc(&bob_id)),
            None,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = forger
        .request(
            &a,
            Method::GET,
            &format!("/_matrix/federation/v1/user/devices/{}", enc(&alice_id)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], alice_id);
    assert!(answer["stream_id"].is_u64(), "{answer}");
    a.stop().await;
    b.stop().await;
});

both_backends!(device_list_updates_follow_their_prev_id_chain, |backend| async move {
    let Some((ca, mut servers)) = start_federation(backend, 2).await else {
        return;
    };
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let bob_id = user_id("bob", &b);
    let (_, bob_device) = whoami(&bob).await;
    let (keys, _) = device_keys(&bob).await;
    upload(&bob, json!({ "device_keys": keys })).await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, answer) = bob
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a.server_name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    eventually("bob joined, on A", || async {
        (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // Where B's chain for bob stands, as B tells any server.
    let as_a = Forger::as_server(&ca, &a);
    let (status, devices) = as_a
        .request(
            &b,
            Method::GET,
            &format!("/_matrix/federation/v1/user/devices/{}", enc(&bob_id)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{devices}");
    let stream_id = devices["stream_id"].as_i64().unwrap();
    assert_eq!(devices["devices"][0]["device_id"], bob_device.as_str(), "{devices}");

    // Updates made here as B (with B's key) about a device B does not have, so that which
    // ones A applied shows in alice's queries.
    let as_b = Forger::as_server(&ca, &b);
    let update = |device: &str, stream: i64, prev: i64| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": bob_id, "device_id": device, "stream_id": stream, "prev_id": [prev], "deleted": false,
            "keys": { "user_id": bob_id, "device_id": device, "algorithms": ["m.megolm.v1.aes-sha2"],
                      "keys": { format!("ed25519:{device}"): "a2V5" } },
        }})
    };
    let serial = std::sync::atomic::AtomicU64::new(0);
    let send = |edu: Value| {
        let body = as_b.transaction_body(Vec::new(), vec![edu]);
        let txn = format!("chain-{}", serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let as_b = &as_b;
        let a = &a;
        async move {
            let (status, answer) = as_b
                .request(
                    a,
                    Method::PUT,
                    &format!("/_matrix/federation/v1/send/{txn}"),
                    Some(&body),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
        }
    };

    // One that follows the chain is applied on top of A's copy (the first may only make A
    // fetch bob's list, if A was not keeping it yet).
    eventually("the update that follows the chain, in alice's query", || async {
        send(update("CHAINED", stream_id + 1, stream_id)).await;
        device_ids(&query(&alice, &bob_id).await, &bob_id)
            .contains(&"CHAINED".to_owned())
            .then_some(())
    })
    .await;

    // One whose prev_id A never saw says updates were missed: A fetches bob's list from B
    // again, which has neither device made up here.
    let (_, first) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    send(update("AFTER_A_GAP", stream_id + 5, stream_id + 4)).await;
    let answer = query(&alice, &bob_id).await;
    assert_eq!(device_ids(&answer, &bob_id), vec![bob_device.clone()], "{answer}");
    assert!(no_failures(&answer), "{answer}");
    let changed = sync(&alice, Some(&since), "").await;
    assert!(
        changed["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .contains(&json!(bob_id)),
        "{changed}"
    );
    a.stop().await;
    b.stop().await;
});
