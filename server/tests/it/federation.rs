//! The Server-Server API as another server sees it: the key server and the version endpoint on
//! a listener with the `federation` API, over TLS from a test CA on federated test servers, and
//! the `.well-known` delegation.

use ruma::{canonical_json::CanonicalJsonValue, signatures::PublicKeyMap};

use crate::{
    both_backends,
    harness::TestServer,
    harness_federation::{start_federation, FederatedServer, TestCa},
};

async fn start(backend: crate::harness::Backend) -> Option<TestServer> {
    TestServer::start_with(backend, |config| {
        config.listeners[0].apis.push(weft::config::Api::Federation);
    })
    .await
}

both_backends!(the_key_server_serves_a_self_signed_current_key, |backend| async move {
    let Some(server) = start(backend).await else {
        return;
    };
    let client = server.client();
    let (status, keys) = client.get("/_matrix/key/v2/server").await;
    assert_eq!(status, 200, "{keys}");
    let server_name = server.config.server_name.clone();
    assert_eq!(keys["server_name"], server_name.as_str());
    let now = weft_core::util::now_ms();
    let valid_until = keys["valid_until_ts"].as_i64().expect("valid_until_ts");
    assert!(
        valid_until > now + 60 * 60 * 1000,
        "valid for a while: {valid_until} vs {now}"
    );

    // The key in the answer verifies the answer's own signature, and it is the one in the
    // server's key file.
    let (key_id, key) = keys["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .expect("a verify key");
    let public = key["key"].as_str().unwrap();
    let on_disk = weft_core::signing_key::load_or_create(&server.config.signing_key_path).unwrap();
    assert_eq!(
        (key_id.as_str(), public),
        (on_disk.key_id.as_str(), on_disk.public_key_base64().as_str())
    );
    let CanonicalJsonValue::Object(object) = ruma::canonical_json::to_canonical_value(&keys).unwrap() else {
        panic!("an object");
    };
    let mut public_keys = PublicKeyMap::new();
    public_keys.insert(
        server_name.clone(),
        [(key_id.clone(), ruma::serde::Base64::parse(public).unwrap())].into(),
    );
    ruma::signatures::verify_json(&public_keys, &object).expect("self-signed");
    // A tampered answer does not verify.
    let mut tampered = object.clone();
    tampered.insert(
        "valid_until_ts".into(),
        CanonicalJsonValue::Integer((valid_until + 1).try_into().unwrap()),
    );
    assert!(ruma::signatures::verify_json(&public_keys, &tampered).is_err());
    server.stop().await;
});

both_backends!(the_federation_version_names_weft, |backend| async move {
    let Some(server) = start(backend).await else {
        return;
    };
    let (status, body) = server.client().get("/_matrix/federation/v1/version").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"]["name"], "Weft");
    assert_eq!(body["server"]["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
});

both_backends!(
    federation_endpoints_are_only_on_federation_listeners,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let (status, body) = server.client().get("/_matrix/federation/v1/version").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_UNRECOGNIZED")),
            "{body}"
        );
        server.stop().await;
    }
);

both_backends!(a_rotated_key_is_published_as_an_old_verify_key, |backend| async move {
    let Some(mut server) = start(backend).await else {
        return;
    };
    let (_, before) = server.client().get("/_matrix/key/v2/server").await;
    let (old_id, old_key) = before["verify_keys"].as_object().unwrap().iter().next().unwrap();
    let (old_id, old_key) = (old_id.clone(), old_key["key"].clone());

    // What `weft key rotate` does, then a restart.
    let rotated = weft_core::signing_key::rotate(&server.config.signing_key_path).unwrap();
    server.restart().await;
    let (status, after) = server.client().get("/_matrix/key/v2/server").await;
    assert_eq!(status, 200, "{after}");
    let current: Vec<&String> = after["verify_keys"].as_object().unwrap().keys().collect();
    assert_eq!(current, [&rotated.key_id]);
    assert_ne!(rotated.key_id, old_id);
    let old = &after["old_verify_keys"][&old_id];
    assert_eq!(old["key"], old_key, "{after}");
    assert!(old["expired_ts"].as_i64().unwrap() <= weft_core::util::now_ms());
    // Signed with the new key only.
    let signatures = after["signatures"][server.config.server_name.as_str()]
        .as_object()
        .unwrap();
    assert_eq!(signatures.keys().collect::<Vec<_>>(), [&rotated.key_id]);
    server.stop().await;
});

both_backends!(
    the_server_well_known_delegates_federation_when_configured,
    |backend| async move {
        let Some(server) = TestServer::start_with(backend, |config| {
            config.federation.well_known_server = "matrix.example.org:443".into();
        })
        .await
        else {
            return;
        };
        let (status, body) = server.client().get("/.well-known/matrix/server").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, serde_json::json!({"m.server": "matrix.example.org:443"}));
        server.stop().await;
    }
);

/// `GET <path>` on a server's federation listener with `http`; the JSON body, or the error.
async fn get_json(http: &reqwest::Client, server: &FederatedServer, path: &str) -> Result<serde_json::Value, String> {
    let response = http
        .get(format!("{}{path}", server.federation_url()))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.map_err(|e| e.to_string())
}

both_backends!(
    federated_servers_serve_the_federation_api_over_tls_from_the_test_ca,
    |backend| async move {
        let Some((ca, servers)) = start_federation(backend, 2).await else {
            return;
        };
        assert_ne!(servers[0].server_name(), servers[1].server_name());
        let trusting = ca.client();
        for server in &servers {
            assert_eq!(
                server.server_name(),
                format!("127.0.0.1:{}", server.federation_addr.port())
            );
            let version = get_json(&trusting, server, "/_matrix/federation/v1/version")
                .await
                .unwrap();
            assert_eq!(version["server"]["name"], "Weft");
            let keys = get_json(&trusting, server, "/_matrix/key/v2/server").await.unwrap();
            assert_eq!(keys["server_name"], server.server_name());
            // The client APIs stay on the plain listener.
            let (status, _) = server.client().get("/_matrix/client/versions").await;
            assert_eq!(status, 200);
        }
        // Certificates are checked: a client with only the public roots refuses them, and one
        // trusting another test CA too.
        let stranger = TestCa::new();
        for (who, http) in [
            ("public roots", reqwest::Client::new()),
            ("another CA", stranger.client()),
        ] {
            let e = get_json(&http, &servers[0], "/_matrix/key/v2/server")
                .await
                .unwrap_err();
            assert!(e.to_lowercase().contains("certificate"), "{who}: {e}");
        }
        for server in servers {
            server.stop().await;
        }
    }
);

both_backends!(
    a_federated_server_restarts_on_its_ports_with_its_key,
    |backend| async move {
        let ca = TestCa::new();
        let Some(mut server) = FederatedServer::start(backend, &ca).await else {
            return;
        };
        let alice = server.register("alice", "pw").await;
        let http = ca.client();
        let before = get_json(&http, &server, "/_matrix/key/v2/server").await.unwrap();
        server.restart().await;
        let after = get_json(&http, &server, "/_matrix/key/v2/server").await.unwrap();
        assert_eq!(before["verify_keys"], after["verify_keys"]);
        // Same database: the account is still there, reached at the same address.
        let (status, body) = alice.get("/_matrix/client/v3/account/whoami").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], format!("@alice:{}", server.server_name()));
        server.stop().await;
    }
);

/// The keys in a key answer that verify its signature by `server`, given the keys to check it
/// with.
fn signed_by(answer: &serde_json::Value, server: &str, keys: &serde_json::Value) -> bool {
    // Only `server`'s signature is checked: the others are left out.
    let mut answer = answer.clone();
    let own = answer["signatures"][server].clone();
    answer["signatures"] = serde_json::json!({ server: own });
    let CanonicalJsonValue::Object(object) = ruma::canonical_json::to_canonical_value(&answer).unwrap() else {
        return false;
    };
    let set = keys["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, k)| {
            (
                id.clone(),
                ruma::serde::Base64::parse(k["key"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut map = PublicKeyMap::new();
    map.insert(server.to_owned(), set);
    ruma::signatures::verify_json(&map, &object).is_ok()
}

both_backends!(
    a_server_vouches_for_another_servers_keys_as_a_notary,
    |backend| async move {
        let Some((ca, servers)) = start_federation(backend, 2).await else {
            return;
        };
        let [a, b] = &servers[..] else { unreachable!() };
        let http = ca.client();
        let a_keys = get_json(&http, a, "/_matrix/key/v2/server").await.unwrap();
        let b_keys = get_json(&http, b, "/_matrix/key/v2/server").await.unwrap();
        // A fetches B's keys from B and answers them signed by B and countersigned by A, by GET and
        // by POST with a validity wanted.
        let one = get_json(&http, a, &format!("/_matrix/key/v2/query/{}", b.server_name()))
            .await
            .unwrap();
        let batch: serde_json::Value = http
            .post(format!("{}/_matrix/key/v2/query", a.federation_url()))
            .json(&serde_json::json!({
                "server_keys": { b.server_name(): { b_keys["verify_keys"].as_object().unwrap().keys().next().unwrap(): {
                    "minimum_valid_until_ts": weft_core::util::now_ms() + 60_000
                } } }
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for answer in [&one, &batch] {
            let keys = answer["server_keys"].as_array().expect("server_keys");
            assert_eq!(keys.len(), 1, "{answer}");
            let vouched = &keys[0];
            assert_eq!(vouched["server_name"], b.server_name());
            assert_eq!(vouched["verify_keys"], b_keys["verify_keys"]);
            assert!(signed_by(vouched, b.server_name(), &b_keys), "signed by B: {vouched}");
            assert!(
                signed_by(vouched, a.server_name(), &a_keys),
                "countersigned by A: {vouched}"
            );
        }
        // A server it cannot reach and knows nothing of: no keys, not an error.
        let none = get_json(&http, a, "/_matrix/key/v2/query/127.0.0.1:1").await.unwrap();
        assert_eq!(none["server_keys"], serde_json::json!([]), "{none}");
        for server in servers {
            server.stop().await;
        }
    }
);
