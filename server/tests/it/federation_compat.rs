//! What other implementations send that Weft's own peers do not: the deprecated endpoints
//! older servers still call (key paths with a key ID, v1 `send_join`/`send_leave`/`invite`
//! with their `[200, answer]` wrapping), bodies that are JSON but not canonical JSON, events
//! built on an event this server rejected, and redactions aimed across rooms. Each is sent by
//! hand to a weft server (A) as its peer (B), and checked by what A's users see.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_forged::{finish, message, results, Shared},
    federation_rooms::{bodies, eventually, membership, user_id},
    harness_forge::enc,
    rooms::create_room,
};

both_backends!(
    deprecated_key_paths_answer_like_the_current_ones,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let (a, b) = (s.a(), s.b());

        // `/key/v2/server/{keyId}`: the server's keys, whatever key ID is named.
        let (status, keys) = forger
            .send_raw(
                a,
                Method::GET,
                "/_matrix/key/v2/server/ed25519%3Aanything",
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(status, 200, "{keys}");
        assert_eq!(keys["server_name"], a.server_name(), "{keys}");
        assert!(keys["verify_keys"].as_object().is_some_and(|k| !k.is_empty()), "{keys}");
        assert!(keys["signatures"][a.server_name()].is_object(), "signed: {keys}");

        // `/key/v2/query/{serverName}/{keyId}`: A as a notary for B's key, countersigned.
        let path = format!("/_matrix/key/v2/query/{}/{}", b.server_name(), enc(&forger.key_id));
        let (status, answer) = forger.send_raw(a, Method::GET, &path, None, Vec::new()).await;
        assert_eq!(status, 200, "{answer}");
        let vouched = &answer["server_keys"][0];
        assert_eq!(vouched["server_name"], b.server_name(), "{answer}");
        assert!(vouched["verify_keys"].get(&forger.key_id).is_some(), "{answer}");
        assert!(
            vouched["signatures"][a.server_name()].is_object(),
            "countersigned: {answer}"
        );
        s.stop().await;
    }
);

both_backends!(v1_joins_leaves_and_invites_are_served_wrapped, |backend| async move {
    let Some(s) = Shared::start(backend).await else {
        return;
    };
    let forger = s.forger();
    let a = s.a();
    let carol = user_id("carol", s.b());

    // v1 send_join: Carol (on B) joins with an event B signed; the answer is `[200, {...}]`
    // with the room's state and auth chain.
    let view = s.view(&forger).await;
    let mut join = view.event(&carol, "m.room.member", Some(&carol), json!({ "membership": "join" }));
    view.sign(&mut join, &forger.origin, &forger.key);
    let (join_id, join) = finish(&view, join);
    let (status, answer) = forger
        .request(
            a,
            Method::PUT,
            &format!("/_matrix/federation/v1/send_join/{}/{}", enc(&s.room), enc(&join_id)),
            Some(&join),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0], 200, "wrapped: {answer}");
    let state = answer[1]["state"].as_array().expect("the room's state");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{answer}");
    assert!(
        answer[1]["auth_chain"].as_array().is_some_and(|c| !c.is_empty()),
        "{answer}"
    );
    eventually("Carol joined, on A", || async {
        (membership(&s.alice, &s.room, &carol).await.as_deref() == Some("join")).then_some(())
    })
    .await;

    // v1 send_leave: `[200, {}]`, and Carol has left.
    let view = s.view(&forger).await;
    let mut leave = view.event(&carol, "m.room.member", Some(&carol), json!({ "membership": "leave" }));
    // A leave names no join rules among its auth events: the sender's own membership, the
    // power levels and the create event, as for a message.
    leave.insert(
        "auth_events".into(),
        serde_json::from_value(json!(view.auth_events(&carol, "m.room.message", None))).unwrap(),
    );
    view.sign(&mut leave, &forger.origin, &forger.key);
    let (leave_id, leave) = finish(&view, leave);
    let (status, answer) = forger
        .request(
            a,
            Method::PUT,
            &format!("/_matrix/federation/v1/send_leave/{}/{}", enc(&s.room), enc(&leave_id)),
            Some(&leave),
        )
        .await;
    assert_eq!((status, &answer), (200, &json!([200, {}])));
    eventually("Carol left, on A", || async {
        (membership(&s.alice, &s.room, &carol).await.as_deref() == Some("leave")).then_some(())
    })
    .await;

    // v1 invite: Bob invites Dora (on A); the body is the event itself, the answer
    // `[200, {"event": ...}]` with A's signature added.
    let dora = a.register("dora", "password-dora").await;
    let dora_id = user_id("dora", a);
    let view = s.view(&forger).await;
    let bob_id = user_id("bob", s.b());
    let mut invite = view.event(
        &bob_id,
        "m.room.member",
        Some(&dora_id),
        json!({ "membership": "invite" }),
    );
    view.sign(&mut invite, &forger.origin, &forger.key);
    let (invite_id, invite) = finish(&view, invite);
    let (status, answer) = forger
        .request(
            a,
            Method::PUT,
            &format!("/_matrix/federation/v1/invite/{}/{}", enc(&s.room), enc(&invite_id)),
            Some(&invite),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0], 200, "wrapped: {answer}");
    assert!(
        answer[1]["event"]["signatures"][a.server_name()].is_object(),
        "countersigned by A: {answer}"
    );
    // As in v2, the inviting server then sends the countersigned invite into the room.
    let (status, sent) = forger
        .transaction(a, "v1-invite", vec![answer[1]["event"].clone()])
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(results(&sent)[&invite_id], json!({}), "{sent}");
    eventually("Dora is invited", || async {
        let (_, sync) = dora.get("/_matrix/client/v3/sync?timeout=0").await;
        sync["rooms"]["invite"].get(&s.room).map(|_| ())
    })
    .await;
    s.stop().await;
});

both_backends!(
    a_body_that_is_json_but_not_canonical_is_verified_and_its_bad_event_refused,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let view = s.view(&forger).await;
        let bob = user_id("bob", s.b());
        // A float is JSON but not canonical JSON: the request's signature still verifies
        // (over what was sent), and the event carrying it is refused; the rest goes in.
        let (float_id, mut float_pdu) = message(&view, &forger, &bob, "with a float");
        float_pdu["content"]["weight"] = json!(1.5);
        let (good_id, good_pdu) = message(&view, &forger, &bob, "canonical");
        let body = forger.transaction_body(vec![float_pdu, good_pdu], Vec::new());
        let path = "/_matrix/federation/v1/send/floats";
        let authorization = forger.authorization_of_json(s.a().server_name(), &Method::PUT, path, &body);
        let (status, answer) = forger
            .send_raw(
                s.a(),
                Method::PUT,
                path,
                Some(authorization),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(status, 200, "verified, not 401: {answer}");
        assert_eq!(results(&answer)[&good_id], json!({}), "{answer}");
        assert_eq!(s.event_on_a(&float_id).await.0, 404, "the float event is not stored");
        eventually("the canonical message is shown", || async {
            bodies(&s.alice, &s.room)
                .await
                .contains(&"canonical".to_owned())
                .then_some(())
        })
        .await;
        s.stop().await;
    }
);

both_backends!(
    events_on_a_rejected_event_go_in_and_cross_room_redactions_do_not,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let bob = user_id("bob", s.b());

        // A message by someone not in the room is rejected, but handled: `{}`.
        let view = s.view(&forger).await;
        let stranger = user_id("stranger", s.b());
        let (rejected_id, rejected) = message(&view, &forger, &stranger, "not a member");
        let (status, answer) = forger.transaction(s.a(), "rejected", vec![rejected]).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(results(&answer)[&rejected_id], json!({}), "{answer}");
        assert_eq!(s.event_on_a(&rejected_id).await.0, 404, "nobody sees it");
        let (status, _) = forger
            .request(
                s.a(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    enc(&s.room),
                    enc(&rejected_id)
                ),
                None,
            )
            .await;
        assert_eq!(status, 404, "no state is served at a rejected event");

        // B's next event builds on it (B may not have rejected it): it goes in, with the
        // state before the rejected event.
        let mut next = view.event(
            &bob,
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "after" }),
        );
        next.insert(
            "prev_events".into(),
            serde_json::from_value(json!([rejected_id])).unwrap(),
        );
        next.insert("depth".into(), serde_json::from_value(json!(view.depth + 2)).unwrap());
        view.sign(&mut next, &forger.origin, &forger.key);
        let (next_id, next) = finish(&view, next);
        let (status, answer) = forger.transaction(s.a(), "after-rejected", vec![next]).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(results(&answer)[&next_id], json!({}), "{answer}");
        eventually("the message after the rejected one is shown", || async {
            bodies(&s.alice, &s.room)
                .await
                .contains(&"after".to_owned())
                .then_some(())
        })
        .await;

        // A redaction in the shared room of Alice's message in another room redacts nothing
        // and is not shown.
        let other = create_room(&s.alice, json!({ "preset": "private_chat" })).await;
        let (status, sent) = s
            .alice
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&other)),
                json!({ "msgtype": "m.text", "body": "elsewhere" }),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let target = sent["event_id"].as_str().unwrap().to_owned();
        let view = s.view(&forger).await;
        let mut redaction = view.event(&bob, "m.room.redaction", None, json!({ "redacts": target }));
        redaction.insert("redacts".into(), serde_json::from_value(json!(target)).unwrap());
        view.sign(&mut redaction, &forger.origin, &forger.key);
        let (redaction_id, redaction) = finish(&view, redaction);
        let (status, answer) = forger.transaction(s.a(), "cross-room", vec![redaction]).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(s.event_on_a(&redaction_id).await.0, 404, "the redaction is not shown");
        let (status, event) = s
            .alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&other),
                enc(&target)
            ))
            .await;
        assert_eq!(status, 200, "{event}");
        assert_eq!(event["content"]["body"], "elsewhere", "not redacted: {event}");
        s.stop().await;
    }
);

// A remote alias is looked up at its server; a local one lists the servers in the room.
both_backends!(a_remote_alias_resolves_through_its_server, |backend| async move {
    let Some(s) = Shared::start(backend).await else {
        return;
    };
    let alias = format!("#compat:{}", s.a().server_name());
    let (status, created) = s
        .alice
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            json!({ "room_id": s.room }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, found) = s
        .bob
        .get(&format!("/_matrix/client/v3/directory/room/{}", enc(&alias)))
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["room_id"], Value::String(s.room.clone()), "{found}");
    let servers: Vec<&str> = found["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        servers.contains(&s.a().server_name()) && servers.contains(&s.b().server_name()),
        "the servers in the room: {found}"
    );
    let (status, missing) = s
        .bob
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&format!("#nothing:{}", s.a().server_name()))
        ))
        .await;
    assert_eq!(
        (status, missing["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{missing}"
    );
    s.stop().await;
});
