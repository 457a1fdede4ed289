//! The pipeline's two steps with events from another server, built and signed here by a
//! stand-in for that server (see `testing`), on SQLite and, when `WEFT_TEST_POSTGRES` names a
//! server, on PostgreSQL.

use std::sync::Arc;

use ruma::user_id;
use serde_json::json;

use super::StateAt;
use crate::{
    events::builder::{self, EventTemplate},
    rooms::{
        self,
        writer::{receive, Received},
    },
    storage::rooms as room_store,
    testing::{bob, join, message, on_each_backend, stored, Scene, REMOTE, VERSION},
};

#[tokio::test]
async fn a_remote_join_and_message_enter_the_timeline() {
    on_each_backend(async |s: &Scene| {
        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        let outcome = stored(s.receive(join.clone(), StateAt::PrevEvents).await);
        assert!(outcome.rejected.is_none() && !outcome.soft_failed, "{outcome:?}");
        assert!(outcome.stream_pos.is_some());
        assert_eq!(s.membership(bob()).await.as_deref(), Some("join"));

        let msg = s.remote_event(bob(), message("hello"), |_, _| {}).await;
        let outcome = stored(s.receive(msg.clone(), StateAt::PrevEvents).await);
        assert!(outcome.stream_pos > s.row(&join).await.unwrap().stream_pos);
        assert_eq!(s.extremities().await, vec![msg.event_id.to_string()]);

        // Received again: answered from what is stored, nothing written twice.
        let again = stored(s.receive(msg.clone(), StateAt::PrevEvents).await);
        assert_eq!(again.stream_pos, outcome.stream_pos);
    })
    .await;
}

#[tokio::test]
async fn unknown_prev_and_auth_events_are_reported_and_nothing_is_stored() {
    on_each_backend(async |s: &Scene| {
        let unknown_prev = "$unknownprevevent0000000000000000000000000000";
        let pdu = s
            .remote_event(bob(), join(), |head, _| head.extremities = vec![unknown_prev.into()])
            .await;
        match s.receive(pdu.clone(), StateAt::PrevEvents).await {
            Received::Missing(m) => {
                assert_eq!(
                    m.prev_events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
                    [unknown_prev]
                );
                assert!(m.auth_events.is_empty());
            }
            other => panic!("expected missing prev events, got {other:?}"),
        }
        assert!(s.row(&pdu).await.is_none());

        let unknown_auth = "$unknownauthevent0000000000000000000000000000";
        let pdu = s
            .remote_event(bob(), join(), |_, state| {
                state.insert(("m.room.join_rules".into(), String::new()), unknown_auth.into());
            })
            .await;
        match s.receive(pdu.clone(), StateAt::PrevEvents).await {
            Received::Missing(m) => {
                assert_eq!(
                    m.auth_events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
                    [unknown_auth]
                );
            }
            other => panic!("expected missing auth events, got {other:?}"),
        }
        assert!(s.row(&pdu).await.is_none());
        assert_eq!(s.membership(bob()).await, None);
    })
    .await;
}

#[tokio::test]
async fn an_outlier_becomes_a_full_event_once_its_state_is_known() {
    on_each_backend(async |s: &Scene| {
        let before = s.extremities().await;
        // Bob's join on an event this server has not seen: its state is unknown.
        let unknown_prev = "$unseenpreveventoftheotherserver000000000000";
        let pdu = s
            .remote_event(bob(), join(), |head, _| head.extremities = vec![unknown_prev.into()])
            .await;
        let outcome = stored(s.receive(pdu.clone(), StateAt::Unknown).await);
        assert!(outcome.outlier && outcome.stream_pos.is_none() && outcome.rejected.is_none());
        let row = s.row(&pdu).await.expect("stored as an outlier");
        assert!(row.outlier && row.stream_pos.is_none() && row.state_after.is_none());
        assert_eq!(s.extremities().await, before, "an outlier does not move the room");
        assert_eq!(s.membership(bob()).await, None);
        // Received again without state: nothing changes.
        assert!(stored(s.receive(pdu.clone(), StateAt::Unknown).await).outlier);

        // The other server tells the state at the event (here: the room as this server has it).
        let state = {
            let mut conn = s.local.db.conn().await.unwrap();
            rooms::current_state(&s.local, &mut conn, &s.room_id).await.unwrap()
        };
        let outcome = stored(s.receive(pdu.clone(), StateAt::Supplied(Arc::clone(&state))).await);
        assert!(!outcome.outlier && outcome.rejected.is_none(), "{outcome:?}");
        let row = s.row(&pdu).await.unwrap();
        assert!(!row.outlier && row.stream_pos.is_some() && row.state_after.is_some());
        assert_eq!(s.membership(bob()).await.as_deref(), Some("join"));
        let mut expected = before.clone();
        expected.push(pdu.event_id.to_string());
        expected.sort();
        assert_eq!(s.extremities().await, expected, "a fork until someone builds on both");
    })
    .await;
}

#[tokio::test]
async fn rejected_events_are_kept_out_and_reject_what_builds_on_them() {
    on_each_backend(async |s: &Scene| {
        // Bob is not in the room: his message fails the auth rules.
        let msg = s.remote_event(bob(), message("let me in"), |_, _| {}).await;
        let outcome = stored(s.receive(msg.clone(), StateAt::PrevEvents).await);
        assert!(
            outcome.rejected.is_some() && outcome.stream_pos.is_none(),
            "{outcome:?}"
        );
        assert!(s.row(&msg).await.unwrap().rejected);
        assert!(!s.extremities().await.contains(&msg.event_id.to_string()));

        // Alice makes the room invite-only; bob's join then is rejected, and so is a message
        // that names that join among its auth events.
        rooms::send(
            &s.local,
            &s.room_id,
            user_id!("@alice:local.test"),
            EventTemplate::state("m.room.join_rules", "", json!({"join_rule": "invite"})),
            None,
        )
        .await
        .unwrap();
        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        assert!(stored(s.receive(join.clone(), StateAt::PrevEvents).await)
            .rejected
            .is_some());
        let join_id = join.event_id.to_string();
        let msg = s
            .remote_event(bob(), message("on a rejected join"), |_, state| {
                state.insert(("m.room.member".into(), bob().to_string()), join_id);
            })
            .await;
        assert!(msg.auth_events.contains(&join.event_id));
        let outcome = stored(s.receive(msg, StateAt::PrevEvents).await);
        let reason = outcome.rejected.expect("rejected");
        assert!(reason.contains("rejected"), "{reason}");
        assert_eq!(s.membership(bob()).await, None);
    })
    .await;
}

#[tokio::test]
async fn an_event_that_fails_against_current_state_is_soft_failed() {
    on_each_backend(async |s: &Scene| {
        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        stored(s.receive(join.clone(), StateAt::PrevEvents).await);
        let joined_head = s.extremities().await;
        // Alice bans bob; bob, not having seen the ban, speaks on the state before it.
        rooms::send(
            &s.local,
            &s.room_id,
            user_id!("@alice:local.test"),
            EventTemplate::state("m.room.member", bob().as_str(), json!({"membership": "ban"})),
            None,
        )
        .await
        .unwrap();
        let after_ban = s.extremities().await;
        let late = s
            .remote_event(bob(), message("too late"), |head, state| {
                head.extremities = joined_head;
                state.insert(("m.room.member".into(), bob().to_string()), join.event_id.to_string());
            })
            .await;
        let outcome = stored(s.receive(late.clone(), StateAt::PrevEvents).await);
        assert!(outcome.soft_failed && outcome.rejected.is_none(), "{outcome:?}");
        assert!(
            s.row(&late).await.unwrap().stream_pos.is_none(),
            "never in the timeline"
        );
        assert_eq!(s.extremities().await, after_ban, "nor among the forward extremities");
        assert_eq!(s.membership(bob()).await.as_deref(), Some("ban"));
    })
    .await;
}

#[tokio::test]
async fn an_event_signed_with_another_key_is_refused() {
    on_each_backend(async |s: &Scene| {
        let pdu = s.remote_event(bob(), join(), |_, _| {}).await;
        // The keys this server knows for remote.test are not the ones that signed it.
        let mut wrong = rooms::own_keys(&s.local);
        let local_keys = wrong.remove("local.test").unwrap();
        wrong.insert(REMOTE.into(), local_keys);
        let err = receive(&s.local, VERSION, pdu.clone(), &wrong, StateAt::PrevEvents)
            .await
            .expect_err("refused");
        assert!(matches!(err, crate::Error::Forbidden(_)), "{err:?}");
        assert!(s.row(&pdu).await.is_none());
    })
    .await;
}

#[tokio::test]
async fn backfilled_history_sits_in_topological_order_below_live_positions() {
    on_each_backend(async |s: &Scene| {
        let alice = user_id!("@alice:local.test");
        let core = &s.local;
        let (early_head, early_state) = {
            let mut conn = core.db.conn().await.unwrap();
            let head = room_store::head(&mut conn, &s.room_id).await.unwrap();
            let state = rooms::current_state(core, &mut conn, &s.room_id).await.unwrap();
            (head, state)
        };
        let mut live = Vec::new();
        for i in 0..3 {
            let sent = rooms::send(core, &s.room_id, alice, message(&format!("live {i}")), None)
                .await
                .unwrap();
            live.push(sent.event_id);
        }
        let head_before = s.extremities().await;
        let since = crate::sync::token::SyncToken::current(core).await.unwrap();

        // History this server missed: an event on the room as it was before the live ones,
        // as another server would hand it over (here signed by this server's own key).
        let old = {
            let mut conn = core.db.conn().await.unwrap();
            builder::build(
                core,
                &mut conn,
                &s.rules,
                Some(&s.room_id),
                alice,
                &message("old"),
                &early_head,
                &early_state,
            )
            .await
            .unwrap()
        };
        let outcome =
            match rooms::writer::backfill(core, VERSION, old.clone(), &rooms::own_keys(core), StateAt::PrevEvents)
                .await
                .unwrap()
            {
                Received::Stored(outcome) => outcome,
                other => panic!("{other:?}"),
            };
        let pos = outcome.stream_pos.expect("in the timeline");
        assert!(pos < 0, "a backfilled event sits below every live position: {pos}");
        assert_eq!(
            s.extremities().await,
            head_before,
            "history does not move the room's head"
        );

        // /messages order: the live events, then the old one at its depth, before the older
        // events of the room (not after all of them, as stream order would have it).
        let mut conn = core.db.conn().await.unwrap();
        let page = rooms::timeline::page(
            &mut conn,
            &s.room_id,
            rooms::timeline::Key::END,
            None,
            rooms::timeline::Dir::Backward,
            5,
        )
        .await
        .unwrap();
        let ids: Vec<&str> = page.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(
            ids[..4],
            [
                live[2].as_str(),
                live[1].as_str(),
                live[0].as_str(),
                old.event_id.as_str()
            ]
        );
        assert_eq!(Some(ids[4]), early_head.extremities.first().map(String::as_str));
        drop(conn);

        // An incremental sync does not take it for a new event.
        let response = crate::sync::sync(
            core,
            &crate::sync::SyncRequest {
                user_id: alice.to_string(),
                device_id: "DEVICE".into(),
                since: Some(since),
                full_state: false,
                filter: Default::default(),
                timeout: std::time::Duration::ZERO,
            },
        )
        .await
        .unwrap();
        assert!(!response.to_string().contains(old.event_id.as_str()), "{response}");
    })
    .await;
}

#[tokio::test]
async fn a_received_event_that_forks_the_room_takes_part_in_resolving_it() {
    on_each_backend(async |s: &Scene| {
        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        stored(s.receive(join.clone(), StateAt::PrevEvents).await);
        let joined_head = s.extremities().await;
        // Alice sets the topic here while bob, on the state before it, changes his name.
        rooms::send(
            &s.local,
            &s.room_id,
            user_id!("@alice:local.test"),
            EventTemplate::state("m.room.topic", "", json!({"topic": "here"})),
            None,
        )
        .await
        .unwrap();
        let renamed = s
            .remote_event(
                bob(),
                EventTemplate::state(
                    "m.room.member",
                    bob().as_str(),
                    json!({"membership": "join", "displayname": "Bob"}),
                ),
                |head, state| {
                    head.extremities = joined_head;
                    state.remove(&("m.room.topic".into(), String::new()));
                },
            )
            .await;
        let outcome = stored(s.receive(renamed.clone(), StateAt::PrevEvents).await);
        assert!(outcome.rejected.is_none() && !outcome.soft_failed, "{outcome:?}");
        assert_eq!(s.extremities().await.len(), 2, "a fork");
        // The current state is both branches resolved, the received event included: the
        // event being committed takes part although it is written only after the resolution.
        let mut conn = s.local.db.conn().await.unwrap();
        let current = rooms::current_state(&s.local, &mut conn, &s.room_id).await.unwrap();
        assert_eq!(
            current.get(&("m.room.member".to_owned(), bob().to_string())),
            Some(&renamed.event_id.to_string()),
            "{current:?}"
        );
        assert!(current.contains_key(&("m.room.topic".to_owned(), String::new())));
    })
    .await;
}

/// A batch of outliers given out of order: each is stored after its auth events; one whose
/// signature does not verify is left out, and what needs it is reported missing.
#[tokio::test]
async fn a_batch_of_outliers_is_stored_in_auth_order_leaving_forgeries_out() {
    on_each_backend(async |s: &Scene| {
        use ruma::canonical_json::CanonicalJsonValue;

        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        let with_join = |_: &mut room_store::Head, state: &mut crate::events::StateMap| {
            state.insert(("m.room.member".into(), bob().to_string()), join.event_id.to_string());
        };
        let said = s.remote_event(bob(), message("after the join"), with_join).await;
        // Another message whose signature is altered: forged.
        let mut forged = s.remote_event(bob(), message("forged"), with_join).await;
        let Some(CanonicalJsonValue::Object(signatures)) = forged.json.get_mut("signatures") else {
            panic!("signed")
        };
        let Some(CanonicalJsonValue::Object(by_key)) = signatures.get_mut(REMOTE) else {
            panic!("signed by the remote")
        };
        for value in by_key.values_mut() {
            let CanonicalJsonValue::String(signature) = value else {
                panic!("a signature")
            };
            // A character in the middle: the last one may carry only padding bits.
            let flipped = if signature.as_bytes()[10] == b'A' { "B" } else { "A" };
            signature.replace_range(10..11, flipped);
        }
        // What builds on the forged event (it names it as an auth event) cannot be checked.
        let on_forged = s
            .remote_event(bob(), message("on the forged one"), |_, state| {
                state.insert(("m.room.member".into(), bob().to_string()), forged.event_id.to_string());
            })
            .await;
        let keys = rooms::own_keys(&s.remote);
        let batch = vec![on_forged.clone(), said.clone(), forged.clone(), join.clone()];
        let outcome = crate::rooms::writer::store_outliers_batch(
            &s.local,
            VERSION,
            batch,
            Arc::new(move |_: &crate::events::Pdu| keys.clone()),
        )
        .await
        .unwrap();
        assert_eq!(outcome.stored, 2, "the join and the message after it");
        assert_eq!(
            outcome.refused.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            [&forged.event_id]
        );
        assert_eq!(
            outcome.missing.iter().map(|(p, _)| &p.event_id).collect::<Vec<_>>(),
            [&on_forged.event_id]
        );
        for pdu in [&join, &said] {
            let row = s.row(pdu).await.expect("stored");
            assert!(row.outlier && !row.rejected, "{row:?}");
        }
        assert!(s.row(&forged).await.is_none());
        assert!(s.row(&on_forged).await.is_none());
        assert_eq!(s.membership(bob()).await, None, "outliers do not change the room");
    })
    .await;
}
