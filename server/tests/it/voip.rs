//! `/voip/turnServer`: what a calling client gets for each TURN configuration.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha1::Sha1;

use crate::{both_backends, harness::TestServer};

const PATH: &str = "/_matrix/client/v3/voip/turnServer";

both_backends!(
    no_turn_server_configured_answers_an_empty_object,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let alice = server.register("alice", "pw").await;
        let (status, body) = alice.get(PATH).await;
        assert_eq!((status, body), (200, json!({})));
        let (status, _) = server.client().get(PATH).await;
        assert_eq!(status, 401, "needs an access token");
        server.stop().await;
    }
);

both_backends!(shared_secret_credentials_are_what_coturn_checks, |backend| async move {
    let uris = vec!["turn:turn.example.org:3478?transport=udp".to_owned()];
    let Some(server) = TestServer::start_with(backend, |config| {
        config.voip.turn_uris = uris.clone();
        config.voip.turn_shared_secret = "coturn-secret".into();
        config.voip.turn_user_lifetime = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (status, body) = alice.get(PATH).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uris"], json!(uris));
    assert_eq!(body["ttl"], 600);
    let username = body["username"].as_str().unwrap();
    let (expiry, user_id) = username.split_once(':').unwrap();
    assert_eq!(user_id, format!("@alice:{}", server.config.server_name));
    let now = weft_core::util::now_ms() / 1000;
    let expiry: i64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "expires in the lifetime: {expiry} vs {now}"
    );
    // coturn's check: the password is the HMAC-SHA1 of the username under the secret.
    let mut mac = Hmac::<Sha1>::new_from_slice(b"coturn-secret").unwrap();
    mac.update(username.as_bytes());
    assert_eq!(body["password"], STANDARD.encode(mac.finalize().into_bytes()));
    server.stop().await;
});

both_backends!(fixed_credentials_and_guests, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |config| {
        config.voip.turn_uris = vec!["turns:turn.example.org:5349".into()];
        config.voip.turn_username = "calls".into();
        config.voip.turn_password = "s3cret".into();
        config.voip.turn_allow_guests = false;
        config.registration.allow_guests = true;
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (status, body) = alice.get(PATH).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["username"].as_str(), body["password"].as_str()),
        (Some("calls"), Some("s3cret"))
    );
    let (status, guest) = server
        .client()
        .post("/_matrix/client/v3/register?kind=guest", json!({}))
        .await;
    assert_eq!(status, 200, "{guest}");
    let guest = server.client().with_token(guest["access_token"].as_str().unwrap());
    let (status, body) = guest.get(PATH).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    server.stop().await;
});

both_backends!(
    the_livekit_service_is_advertised_as_the_rtc_transport,
    |backend| async move {
        let Some(server) = TestServer::start_with(backend, |config| {
            config.voip.livekit_service_url = "https://livekit-jwt.example.org".into();
        })
        .await
        else {
            return;
        };
        let (status, body) = server.client().get("/.well-known/matrix/client").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["m.homeserver"]["base_url"], server.config.base_url());
        assert_eq!(
            body["org.matrix.msc4143.rtc_foci"],
            json!([{ "type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org" }])
        );
        server.stop().await;
        // Without one, no transport is advertised.
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let (_, body) = server.client().get("/.well-known/matrix/client").await;
        assert!(body.get("org.matrix.msc4143.rtc_foci").is_none(), "{body}");
        server.stop().await;
    }
);
