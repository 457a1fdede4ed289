//! `/register`: repeating a completed registration with its UIA session.

use serde_json::json;

use crate::{both_backends, harness::*};

both_backends!(
    a_completed_registration_repeated_gets_the_same_account,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let c = server.client();
        for (i, body) in [
            json!({"username": "ivy", "password": "pw1"}),
            json!({"password": "pw2"}),
        ]
        .into_iter()
        .enumerate()
        {
            let (status, res) = c.post("/_matrix/client/v3/register", body.clone()).await;
            assert_eq!(status, 401, "{res}");
            let mut authed = body.clone();
            authed["auth"] = json!({"type": "m.login.dummy", "session": res["session"]});
            let (status, first) = c.post("/_matrix/client/v3/register", authed.clone()).await;
            assert_eq!(status, 200, "{first}");
            let (status, again) = c.post("/_matrix/client/v3/register", authed.clone()).await;
            assert_eq!(status, 200, "case {i}: {again}");
            assert_eq!(again["user_id"], first["user_id"]);
            // A fresh login of that account: both tokens work.
            assert_ne!(again["access_token"], first["access_token"]);
            for token in [&first["access_token"], &again["access_token"]] {
                let (status, me) = c
                    .with_token(token.as_str().unwrap())
                    .get("/_matrix/client/v3/account/whoami")
                    .await;
                assert_eq!(status, 200, "{me}");
                assert_eq!(me["user_id"], first["user_id"]);
            }
            // The session with another password does not hand out the account.
            let mut other = authed.clone();
            other["password"] = json!("not the password");
            let (status, res) = c.post("/_matrix/client/v3/register", other).await;
            assert_eq!(status, 403, "{res}");
        }
        // A new session for a taken name is still refused.
        let body = json!({"username": "ivy", "password": "pw1"});
        let (status, res) = c.post("/_matrix/client/v3/register", body).await;
        assert_eq!(status, 400, "{res}");
        assert_eq!(res["errcode"], "M_USER_IN_USE");
        server.stop().await;
    }
);

both_backends!(
    registration_remembers_the_first_requests_parameters,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let c = server.client();
        let body = json!({"username": "Juno", "password": "pw", "device_id": "xyzzy",
                      "initial_device_display_name": "phone"});
        let (status, res) = c.post("/_matrix/client/v3/register", body).await;
        assert_eq!(status, 401, "{res}");
        // The last stage sends only `auth`: the username (lowered), password and device come
        // from the first request.
        let auth = json!({"auth": {"type": "m.login.dummy", "session": res["session"]}});
        let (status, res) = c.post("/_matrix/client/v3/register", auth).await;
        assert_eq!(status, 200, "{res}");
        assert_eq!(res["user_id"], "@juno:weft.test");
        assert_eq!(res["device_id"], "xyzzy");
        let juno = c.with_token(res["access_token"].as_str().unwrap());
        let (status, device) = juno.get("/_matrix/client/v3/devices/xyzzy").await;
        assert_eq!(status, 200, "{device}");
        assert_eq!(device["display_name"], "phone");
        let (status, res) = c
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "juno"}, "password": "pw"}),
        )
        .await;
        assert_eq!(status, 200, "{res}");

        // inhibit_login asked for first holds at the end too.
        let body = json!({"username": "kay", "password": "pw", "inhibit_login": true});
        let (_, res) = c.post("/_matrix/client/v3/register", body).await;
        let auth = json!({"auth": {"type": "m.login.dummy", "session": res["session"]}});
        let (status, res) = c.post("/_matrix/client/v3/register", auth).await;
        assert_eq!(status, 200, "{res}");
        assert!(
            res.get("access_token").is_none() && res.get("device_id").is_none(),
            "{res}"
        );
        server.stop().await;
    }
);
