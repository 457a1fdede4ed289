//! A remote server is never trusted unsigned: forged traffic sent to a weft server (A) by hand,
//! signed as its peer (B) with B's real key read from B's key file, or with something else.
//! Each case checks what A's users would see: the answer to the request, and that nothing
//! forged reached A's room (its timeline, and the forged event's ID not found through A's
//! client API), while the good parts of a transaction still go in.

use reqwest::Method;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{bodies, eventually, membership, user_id},
    harness::{Backend, Client},
    harness_federation::{start_federation, FederatedServer, TestCa},
    harness_forge::{enc, Forger, RoomView},
    rooms::create_room,
};

/// Two servers sharing a public room: Alice (on A) created it, Bob (on B) joined through A.
pub(crate) struct Shared {
    pub ca: TestCa,
    pub servers: Vec<FederatedServer>,
    pub alice: Client,
    pub bob: Client,
    pub room: String,
}

impl Shared {
    pub(crate) async fn start(backend: Backend) -> Option<Shared> {
        let (ca, servers) = start_federation(backend, 2).await?;
        let alice = servers[0].register("alice", "password-alice").await;
        let bob = servers[1].register("bob", "password-bob").await;
        let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Forgeries" })).await;
        let (status, joined) = bob
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(&room),
                    enc(servers[0].server_name())
                ),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "bob joins: {joined}");
        let bob_id = user_id("bob", &servers[1]);
        eventually("bob joined, on A", || async {
            (membership(&alice, &room, &bob_id).await.as_deref() == Some("join")).then_some(())
        })
        .await;
        Some(Shared {
            ca,
            servers,
            alice,
            bob,
            room,
        })
    }

    pub(crate) fn a(&self) -> &FederatedServer {
        &self.servers[0]
    }

    pub(crate) fn b(&self) -> &FederatedServer {
        &self.servers[1]
    }

    /// B, as the attacker: its name and its real key.
    pub(crate) fn forger(&self) -> Forger {
        Forger::as_server(&self.ca, self.b())
    }

    pub(crate) async fn view(&self, forger: &Forger) -> RoomView {
        RoomView::read(forger, self.a(), &self.alice, &self.room).await
    }

    /// The status of `event_id` through Alice's client API on A (404: not there, or not
    /// accepted) and the event.
    pub(crate) async fn event_on_a(&self, event_id: &str) -> (u16, Value) {
        self.alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&self.room),
                enc(event_id)
            ))
            .await
    }

    pub(crate) async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }
}

/// A text message by `sender`, signed as the forger's server with its key.
pub(crate) fn message(view: &RoomView, forger: &Forger, sender: &str, body: &str) -> (String, Value) {
    let mut event = view.event(
        sender,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": body }),
    );
    view.sign(&mut event, &forger.origin, &forger.key);
    finish(view, event)
}

/// The event's ID and its JSON as it travels.
pub(crate) fn finish(view: &RoomView, event: CanonicalJsonObject) -> (String, Value) {
    (view.event_id(&event), serde_json::to_value(&event).unwrap())
}

/// The per-PDU results of a `/send` answer.
pub(crate) fn results(answer: &Value) -> &serde_json::Map<String, Value> {
    answer["pdus"].as_object().expect("a results map")
}

both_backends!(
    requests_without_a_good_x_matrix_signature_are_refused,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let (a, b) = (s.a(), s.b());
        let forger = s.forger();
        let view = s.view(&forger).await;
        let bob = user_id("bob", b);
        let (event_id, pdu) = message(&view, &forger, &bob, "signed right");
        let body = serde_json::to_vec(&forger.transaction_body(vec![pdu.clone()], Vec::new())).unwrap();
        let other = serde_json::to_vec(&forger.transaction_body(vec![pdu, json!({})], Vec::new())).unwrap();
        let path = |txn: &str| format!("/_matrix/federation/v1/send/{txn}");
        let put = Method::PUT;
        let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
            ("no Authorization header", None, body.clone()),
            ("not an X-Matrix header", Some("Bearer abc".into()), body.clone()),
            (
                "a malformed X-Matrix header",
                Some(format!("X-Matrix origin=\"{}\"", forger.origin)),
                body.clone(),
            ),
            (
                "signed with another key of the same ID",
                Some(Forger::authorization(
                    &forger.origin,
                    a.server_name(),
                    &forger.other_key(),
                    &put,
                    &path("t1"),
                    &body,
                )),
                body.clone(),
            ),
            (
                "the body changed after signing",
                Some(Forger::authorization(
                    &forger.origin,
                    a.server_name(),
                    &forger.key,
                    &put,
                    &path("t1"),
                    &other,
                )),
                body.clone(),
            ),
            (
                "signed for another path",
                Some(Forger::authorization(
                    &forger.origin,
                    a.server_name(),
                    &forger.key,
                    &put,
                    &path("t2"),
                    &body,
                )),
                body.clone(),
            ),
            (
                "signed for another destination",
                Some(Forger::authorization(
                    &forger.origin,
                    b.server_name(),
                    &forger.key,
                    &put,
                    &path("t1"),
                    &body,
                )),
                body.clone(),
            ),
            (
                // Nothing listens there: its keys cannot be fetched.
                "from a server whose keys cannot be found",
                Some(Forger::authorization(
                    "127.0.0.1:1",
                    a.server_name(),
                    &forger.other_key(),
                    &put,
                    &path("t1"),
                    &body,
                )),
                body.clone(),
            ),
        ];
        for (what, authorization, sent) in cases {
            let (status, answer) = forger.send_raw(a, Method::PUT, &path("t1"), authorization, sent).await;
            assert_eq!(
                (status, answer["errcode"].as_str()),
                (401, Some("M_UNAUTHORIZED")),
                "{what}: {answer}"
            );
        }
        // Nothing of it was stored.
        assert_eq!(s.event_on_a(&event_id).await.0, 404);
        assert!(bodies(&s.alice, &s.room).await.is_empty());

        // The same transaction signed properly goes in: the refusals were the signatures'.
        let (status, answer) = forger
            .send_raw(
                a,
                Method::PUT,
                &path("t1"),
                Some(Forger::authorization(
                    &forger.origin,
                    a.server_name(),
                    &forger.key,
                    &put,
                    &path("t1"),
                    &body,
                )),
                body.clone(),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(results(&answer)[&event_id], json!({}), "{answer}");
        assert_eq!(bodies(&s.alice, &s.room).await, ["signed right"]);

        // A transaction whose body names another origin than the signature's.
        let mut lying = forger.transaction_body(Vec::new(), Vec::new());
        lying["origin"] = json!(a.server_name());
        let (status, answer) = forger.request(a, Method::PUT, &path("t3"), Some(&lying)).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{answer}"
        );
        s.stop().await;
    }
);

both_backends!(
    a_replayed_transaction_is_answered_as_before_and_processed_once,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let view = s.view(&forger).await;
        let bob = user_id("bob", s.b());
        let (first_id, first) = message(&view, &forger, &bob, "once");
        let (first_status, first_answer) = forger.transaction(s.a(), "replayed", vec![first.clone()]).await;
        assert_eq!(first_status, 200, "{first_answer}");
        assert_eq!(results(&first_answer)[&first_id], json!({}));

        // The same transaction again, as a sender retrying: the same answer, one copy.
        let again = forger.transaction(s.a(), "replayed", vec![first]).await;
        assert_eq!(again, (first_status, first_answer.clone()));
        // The same origin and transaction ID with other PDUs: answered as the first time, and
        // the new PDU is not processed (the ID names the transaction, whatever it carries).
        let (second_id, second) = message(&view, &forger, &bob, "smuggled in a replay");
        let replay = forger.transaction(s.a(), "replayed", vec![second]).await;
        assert_eq!(replay, (first_status, first_answer));
        assert_eq!(s.event_on_a(&second_id).await.0, 404);
        assert_eq!(bodies(&s.alice, &s.room).await, ["once"]);

        // A new transaction ID is a new transaction.
        let (third_id, third) = message(&view, &forger, &bob, "a new transaction");
        let (status, answer) = forger.transaction(s.a(), "replayed-2", vec![third]).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(results(&answer)[&third_id], json!({}));
        assert_eq!(bodies(&s.alice, &s.room).await.len(), 2);
        s.stop().await;
    }
);

both_backends!(
    forged_pdus_are_refused_and_the_rest_of_the_transaction_goes_in,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let view = s.view(&forger).await;
        let (alice_id, bob, mallory) = (
            user_id("alice", s.a()),
            user_id("bob", s.b()),
            user_id("mallory", s.b()),
        );
        let text = |body: &str| json!({ "msgtype": "m.text", "body": body });

        // Signed by B's name with a key that is not B's.
        let mut event = view.event(&bob, "m.room.message", None, text("bad signature"));
        view.sign(&mut event, &forger.origin, &forger.other_key());
        let (bad_signature, bad_signature_pdu) = finish(&view, event);
        // Content changed after signing: the hash no longer matches.
        let mut event = view.event(&bob, "m.room.message", None, text("as signed"));
        view.sign(&mut event, &forger.origin, &forger.key);
        if let Some(CanonicalJsonValue::Object(content)) = event.get_mut("content") {
            content.insert("body".into(), CanonicalJsonValue::String("tampered".into()));
        }
        let (tampered, tampered_pdu) = finish(&view, event);
        // Mallory is not in the room.
        let (not_member, not_member_pdu) = message(&view, &forger, &mallory, "not a member");
        // Bob has no power to change power levels.
        let mut levels = json!({ "users": { &alice_id: 100, &bob: 100 }, "users_default": 0 });
        levels["events_default"] = json!(0);
        let mut event = view.event(&bob, "m.room.power_levels", Some(""), levels);
        view.sign(&mut event, &forger.origin, &forger.key);
        let (power_grab, power_grab_pdu) = finish(&view, event);
        // Alice's name, B's signature.
        let (impostor, impostor_pdu) = message(&view, &forger, &alice_id, "I am alice");
        // After events nobody has: A asks B for them, and for the state there, in vain.
        let mut event = view.event(&bob, "m.room.message", None, text("after nothing"));
        event.insert(
            "prev_events".into(),
            CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(
                "$nobodyhasthiseventnobodyhasthiseventnobodyha".into(),
            )]),
        );
        view.sign(&mut event, &forger.origin, &forger.key);
        let (dangling, dangling_pdu) = finish(&view, event);
        // A room A is not in: dropped without an answer.
        let mut event = view.event(&bob, "m.room.message", None, text("elsewhere"));
        event.insert(
            "room_id".into(),
            CanonicalJsonValue::String(format!("!elsewhere:{}", forger.origin)),
        );
        view.sign(&mut event, &forger.origin, &forger.key);
        let (elsewhere, elsewhere_pdu) = finish(&view, event);
        let (good, good_pdu) = message(&view, &forger, &bob, "legit");

        let (status, answer) = forger
            .transaction(
                s.a(),
                "forged",
                vec![
                    bad_signature_pdu,
                    tampered_pdu,
                    not_member_pdu,
                    power_grab_pdu,
                    impostor_pdu,
                    dangling_pdu,
                    elsewhere_pdu,
                    good_pdu,
                ],
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let results = results(&answer);
        for (what, id, why) in [
            ("a bad signature", &bad_signature, "signature"),
            ("a sender of another server", &impostor, "signature"),
            ("after unknown events", &dangling, ""),
        ] {
            let error = results[id]["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty() && error.contains(why), "{what}: {answer}");
            assert_eq!(s.event_on_a(id).await.0, 404, "{what} is not shown");
        }
        // Events that fail the auth rules were handled (stored as rejected, which the sender's
        // retrying would not change), as Synapse answers them, but nobody sees them.
        for (what, id) in [
            ("a sender not in the room", &not_member),
            ("a power level change without power", &power_grab),
        ] {
            assert_eq!(results[id], json!({}), "{what}: {answer}");
            assert_eq!(s.event_on_a(id).await.0, 404, "{what} is not shown");
        }
        assert!(results.get(&elsewhere).is_none(), "{answer}");
        assert_eq!(results[&good], json!({}), "{answer}");
        // A hash mismatch keeps the event, redacted, per the spec: clients see it without its
        // content.
        assert_eq!(results[&tampered], json!({}), "{answer}");
        let (status, seen) = s.event_on_a(&tampered).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["content"], json!({}), "{seen}");

        // Alice's timeline has the good message only; the power levels are unchanged.
        assert_eq!(bodies(&s.alice, &s.room).await, ["legit"]);
        let (status, levels) = s
            .alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
                enc(&s.room)
            ))
            .await;
        assert_eq!(status, 200, "{levels}");
        assert!(levels["users"].get(&bob).is_none(), "{levels}");
        s.stop().await;
    }
);

both_backends!(
    oversized_and_malformed_pdus_are_refused_and_the_rest_goes_in,
    |backend| async move {
        let Some(s) = Shared::start(backend).await else {
            return;
        };
        let forger = s.forger();
        let view = s.view(&forger).await;
        let bob = user_id("bob", s.b());
        // ruma will not sign an event that large, so the body grows after signing: the size is
        // what a receiver checks first, before the hashes.
        let (_, mut oversized_pdu) = message(&view, &forger, &bob, "big");
        oversized_pdu["content"]["body"] = json!("x".repeat(70_000));
        let oversized = view.event_id(&serde_json::from_value(oversized_pdu.clone()).unwrap());
        assert!(serde_json::to_string(&oversized_pdu).unwrap().len() > 65_536);
        let (good, good_pdu) = message(&view, &forger, &bob, "still here");
        let malformed = vec![
            json!("not an object"),
            json!(42),
            json!(null),
            json!([1, 2]),
            json!({ "room_id": s.room, "type": "m.room.message" }),
            json!({ "room_id": "not a room ID", "sender": bob }),
            json!({ "room_id": s.room, "sender": 7, "type": [], "content": "x", "depth": "deep",
                    "prev_events": {}, "auth_events": null, "origin_server_ts": -1 }),
        ];
        let mut pdus = vec![oversized_pdu];
        pdus.extend(malformed);
        pdus.push(good_pdu);
        let (status, answer) = forger.transaction(s.a(), "sizes", pdus).await;
        assert_eq!(status, 200, "{answer}");
        let results = results(&answer);
        assert_eq!(results[&good], json!({}), "{answer}");
        assert!(
            results.get(&oversized).is_none_or(|r| r["error"].is_string()),
            "{answer}"
        );
        assert_eq!(s.event_on_a(&oversized).await.0, 404);
        assert_eq!(bodies(&s.alice, &s.room).await, ["still here"]);

        // More than 50 PDUs, or 100 EDUs: the whole transaction is refused.
        let many: Vec<Value> = (0..51)
            .map(|i| message(&view, &forger, &bob, &format!("flood {i}")).1)
            .collect();
        let (status, answer) = forger.transaction(s.a(), "too-many", many).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (400, Some("M_BAD_JSON")),
            "{answer}"
        );
        let edus: Vec<Value> = (0..101)
            .map(|_| json!({ "edu_type": "m.typing", "content": {} }))
            .collect();
        let body = forger.transaction_body(Vec::new(), edus);
        let (status, answer) = forger
            .request(
                s.a(),
                Method::PUT,
                "/_matrix/federation/v1/send/too-many-edus",
                Some(&body),
            )
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(bodies(&s.alice, &s.room).await, ["still here"]);

        // Transactions that are not transactions.
        for (what, body) in [
            ("no pdus", json!({ "origin": forger.origin, "origin_server_ts": 1 })),
            (
                "pdus not a list",
                json!({ "origin": forger.origin, "origin_server_ts": 1, "pdus": "x" }),
            ),
            ("an array", json!([])),
        ] {
            let (status, answer) = forger
                .request(s.a(), Method::PUT, "/_matrix/federation/v1/send/bad", Some(&body))
                .await;
            assert_eq!(status, 400, "{what}: {answer}");
        }
        s.stop().await;
    }
);

both_backends!(a_server_acl_refuses_the_servers_it_denies, |backend| async move {
    let Some(s) = Shared::start(backend).await else {
        return;
    };
    let forger = s.forger();
    let view = s.view(&forger).await;
    let (a, b) = (s.a(), s.b());
    let (bob, carl) = (user_id("bob", b), user_id("carl", b));
    let make_join = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver={}",
        enc(&s.room),
        enc(&carl),
        view.version
    );
    let (status, template) = forger.request(a, Method::GET, &make_join, None).await;
    assert_eq!(status, 200, "before the ACL, B may join: {template}");

    // Both test servers are IP literals on 127.0.0.1 (their ports differ, and ACLs ignore
    // ports), so no ACL can deny one by name and not the other. An ACL refusing IP literals
    // denies both: A is this room's own server, to which its ACL does not apply, so what it
    // shows is what A refuses of B. (B refuses A's later events too, by the same ACL.)
    let (status, sent) = s
        .alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl", enc(&s.room)),
            json!({ "allow": ["*"], "deny": [], "allow_ip_literals": false }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    // The ACL event itself reaches B, allowed by the state before it.
    eventually("the ACL on B", || async {
        let (status, _) = s
            .bob
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl",
                enc(&s.room)
            ))
            .await;
        (status == 200).then_some(())
    })
    .await;

    // B's PDUs are refused, whoever sent them (the check is on the transaction's origin).
    let (denied, denied_pdu) = message(&view, &forger, &bob, "after the ACL");
    let (status, answer) = forger.transaction(a, "acl", vec![denied_pdu]).await;
    assert_eq!(status, 200, "{answer}");
    let error = results(&answer)[&denied]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("ACL"), "{answer}");
    assert_eq!(s.event_on_a(&denied).await.0, 404);
    assert!(bodies(&s.alice, &s.room).await.is_empty());

    // Joins, leaves and invites through A are refused.
    let forbidden = |what: &str, (status, answer): (u16, Value)| {
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{what}: {answer}"
        );
    };
    forbidden("make_join", forger.request(a, Method::GET, &make_join, None).await);
    let make_leave = format!("/_matrix/federation/v1/make_leave/{}/{}", enc(&s.room), enc(&bob));
    forbidden("make_leave", forger.request(a, Method::GET, &make_leave, None).await);
    // Carl's join from the template A gave before the ACL, signed.
    let mut join: CanonicalJsonObject = serde_json::from_value(template["event"].clone()).unwrap();
    join.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(weft_core::util::now_ms().try_into().unwrap()),
    );
    view.sign(&mut join, &forger.origin, &forger.key);
    let (join_id, join_pdu) = finish(&view, join);
    forbidden(
        "send_join",
        forger
            .request(
                a,
                Method::PUT,
                &format!("/_matrix/federation/v2/send_join/{}/{}", enc(&s.room), enc(&join_id)),
                Some(&join_pdu),
            )
            .await,
    );
    let mut leave = view.event(&bob, "m.room.member", Some(&bob), json!({ "membership": "leave" }));
    view.sign(&mut leave, &forger.origin, &forger.key);
    let (leave_id, leave_pdu) = finish(&view, leave);
    forbidden(
        "send_leave",
        forger
            .request(
                a,
                Method::PUT,
                &format!("/_matrix/federation/v2/send_leave/{}/{}", enc(&s.room), enc(&leave_id)),
                Some(&leave_pdu),
            )
            .await,
    );
    let dora = a.register("dora", "password-dora").await;
    let dora_id = user_id("dora", a);
    let mut invite = view.event(&bob, "m.room.member", Some(&dora_id), json!({ "membership": "invite" }));
    view.sign(&mut invite, &forger.origin, &forger.key);
    let (invite_id, invite_pdu) = finish(&view, invite);
    forbidden(
        "invite",
        forger
            .request(
                a,
                Method::PUT,
                &format!("/_matrix/federation/v2/invite/{}/{}", enc(&s.room), enc(&invite_id)),
                Some(&json!({ "room_version": view.version, "event": invite_pdu, "invite_room_state": [] })),
            )
            .await,
    );
    // And what B reads of the room.
    forbidden(
        "state_ids",
        forger
            .request(
                a,
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    enc(&s.room),
                    enc(&view.prev)
                ),
                None,
            )
            .await,
    );

    // Nothing of it changed the room on A: Carl never joined, Bob is still in, Dora was
    // not invited.
    assert_eq!(membership(&s.alice, &s.room, &carl).await, None);
    assert_eq!(membership(&s.alice, &s.room, &bob).await.as_deref(), Some("join"));
    let (_, sync) = dora.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&s.room).is_none(), "{sync}");
    s.stop().await;
});

both_backends!(forged_joins_leaves_and_invites_are_refused, |backend| async move {
    let Some(s) = Shared::start(backend).await else {
        return;
    };
    let forger = s.forger();
    let view = s.view(&forger).await;
    let (a, b) = (s.a(), s.b());
    let (alice_id, bob, carl) = (user_id("alice", a), user_id("bob", b), user_id("carl", b));
    let room = enc(&s.room);
    let dora = a.register("dora", "password-dora").await;
    let dora_id = user_id("dora", a);
    let refused = |what: &str, (status, answer): (u16, Value), expected: (u16, &str)| {
        assert_eq!(
            (status, answer["errcode"].as_str().unwrap_or_default()),
            expected,
            "{what}: {answer}"
        );
    };
    let put = |path: String, body: Value| {
        let forger = &forger;
        async move { forger.request(a, Method::PUT, &path, Some(&body)).await }
    };
    let membership_event = |sender: &str, target: &str, membership: &str| {
        view.event(
            sender,
            "m.room.member",
            Some(target),
            json!({ "membership": membership }),
        )
    };

    // make_join: only for the asking server's users, only for rooms A knows.
    let make_join = |user: &str, room: &str| {
        format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver={}",
            enc(room),
            enc(user),
            view.version
        )
    };
    refused(
        "make_join for a user of A",
        forger
            .request(a, Method::GET, &make_join(&dora_id, &s.room), None)
            .await,
        (403, "M_FORBIDDEN"),
    );
    refused(
        "make_join for an unknown room",
        forger
            .request(
                a,
                Method::GET,
                &make_join(&carl, &format!("!unknown:{}", a.server_name())),
                None,
            )
            .await,
        (404, "M_NOT_FOUND"),
    );

    // send_join of forged joins.
    let send_join = |id: &str| format!("/_matrix/federation/v2/send_join/{room}/{}", enc(id));
    let mut join = membership_event(&carl, &carl, "join");
    view.sign(&mut join, &forger.origin, &forger.other_key());
    let (id, pdu) = finish(&view, join);
    refused(
        "a join signed with another key",
        put(send_join(&id), pdu).await,
        (403, "M_FORBIDDEN"),
    );
    let mut join = membership_event(&carl, &carl, "join");
    view.sign(&mut join, &forger.origin, &forger.key);
    if let Some(CanonicalJsonValue::Object(content)) = join.get_mut("content") {
        content.insert("displayname".into(), CanonicalJsonValue::String("changed".into()));
    }
    let (id, pdu) = finish(&view, join);
    refused(
        "a join changed after signing",
        put(send_join(&id), pdu).await,
        (403, "M_FORBIDDEN"),
    );
    let mut join = membership_event(&dora_id, &dora_id, "join");
    view.sign(&mut join, &forger.origin, &forger.key);
    let (id, pdu) = finish(&view, join);
    refused(
        "a join of A's user, signed by B",
        put(send_join(&id), pdu).await,
        (403, "M_FORBIDDEN"),
    );
    let mut join = membership_event(&carl, &carl, "join");
    view.sign(&mut join, &forger.origin, &forger.key);
    let (_, pdu) = finish(&view, join);
    refused(
        "a join under another event's ID",
        put(send_join(&view.prev), pdu).await,
        (400, "M_BAD_JSON"),
    );
    let (id, pdu) = message(&view, &forger, &carl, "not a join");
    refused(
        "a message as a join",
        put(send_join(&id), pdu).await,
        (400, "M_BAD_JSON"),
    );
    for garbage in [json!("x"), json!([]), json!({}), json!({ "room_id": s.room })] {
        let (status, answer) = put(send_join("$garbage"), garbage.clone()).await;
        assert!(
            (400..500).contains(&status),
            "send_join of {garbage}: {status} {answer}"
        );
    }
    // send_leave of someone else: Alice's leave, signed by B.
    let mut leave = membership_event(&alice_id, &alice_id, "leave");
    view.sign(&mut leave, &forger.origin, &forger.key);
    let (id, pdu) = finish(&view, leave);
    refused(
        "a leave of A's user",
        put(format!("/_matrix/federation/v2/send_leave/{room}/{}", enc(&id)), pdu).await,
        (403, "M_FORBIDDEN"),
    );

    // Invites: a bad signature, an unknown user, an unknown room version.
    let invite = |target: &str, key: &ruma::signatures::Ed25519KeyPair, version: &str| {
        let mut event = membership_event(&bob, target, "invite");
        view.sign(&mut event, &forger.origin, key);
        let (id, pdu) = finish(&view, event);
        (
            format!("/_matrix/federation/v2/invite/{room}/{}", enc(&id)),
            json!({ "room_version": version, "event": pdu, "invite_room_state": [] }),
        )
    };
    let (path, body) = invite(&dora_id, &forger.other_key(), &view.version);
    refused(
        "an invite with a bad signature",
        put(path, body).await,
        (403, "M_FORBIDDEN"),
    );
    let nobody = format!("@nobody:{}", a.server_name());
    let (path, body) = invite(&nobody, &forger.key, &view.version);
    refused(
        "an invite of an unknown user",
        put(path, body).await,
        (404, "M_NOT_FOUND"),
    );
    let (path, body) = invite(&dora_id, &forger.key, "999");
    refused(
        "an invite in an unknown room version",
        put(path, body).await,
        (400, "M_INCOMPATIBLE_ROOM_VERSION"),
    );

    // Nothing of it changed the room: Carl is not in, Alice still is, Dora was not invited.
    assert_eq!(membership(&s.alice, &s.room, &carl).await, None);
    assert_eq!(membership(&s.alice, &s.room, &dora_id).await, None);
    assert_eq!(membership(&s.alice, &s.room, &alice_id).await.as_deref(), Some("join"));
    let (_, sync) = dora.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"].get(&s.room).is_none(), "{sync}");
    s.stop().await;
});
