//! OpenID tokens: a user proves who they are to a third party (an integration manager, Element
//! Call's SFU), which asks this server's federation listener who the token stands for.

use serde_json::json;

use crate::{both_backends, harness::TestServer};

both_backends!(an_openid_token_names_its_user_to_third_parties, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |config| {
        config.listeners[0].apis.push(weft::config::Api::Federation);
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let alice_id = format!("@alice:{}", server.config.server_name);
    let (status, token) = alice
        .post(
            &format!("/_matrix/client/v3/user/{alice_id}/openid/request_token"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["matrix_server_name"], server.config.server_name.as_str());
    assert_eq!(token["expires_in"], 3600);
    let access_token = token["access_token"].as_str().unwrap();

    // The third party has no account here: it only has the token.
    let third_party = server.client();
    let (status, info) = third_party
        .get(&format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={access_token}"
        ))
        .await;
    assert_eq!((status, info["sub"].as_str()), (200, Some(alice_id.as_str())), "{info}");
    // It is no access token: it opens no client endpoint.
    let (status, _) = server
        .client()
        .with_token(access_token)
        .get("/_matrix/client/v3/account/whoami")
        .await;
    assert_eq!(status, 401);

    let (status, body) = third_party
        .get("/_matrix/federation/v1/openid/userinfo?access_token=not-a-token")
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "{body}"
    );
    // Nobody gets a token in another user's name.
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/user/{alice_id}/openid/request_token"),
            json!({}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    server.stop().await;
});
