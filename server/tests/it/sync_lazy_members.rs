//! `/sync` with lazy-loaded members: which membership events incremental and gappy syncs
//! carry, with and without `include_redundant_members`.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text, urlencode},
    sync::sync,
};

fn members_in_state(res: &Value, room: &str) -> Vec<String> {
    let mut out: Vec<String> = res["rooms"]["join"][room]["state"]["events"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn next(res: &Value) -> String {
    res["next_batch"].as_str().unwrap().to_owned()
}

both_backends!(lazy_members_are_not_sent_twice_to_a_device, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    for c in [&bob, &carol] {
        let (status, res) = c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "{res}");
    }
    for i in 0..3 {
        send_text(&bob, &room, &format!("b{i}"), "from bob").await;
    }
    send_text(&carol, &room, "c0", "from carol").await;
    let lazy = |redundant: bool| {
        format!(
            "filter={}",
            urlencode(
                &json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": redundant},
                        "timeline": {"limit": 4}}})
                .to_string()
            )
        )
    };
    let (ll, ll_redundant) = (lazy(false), lazy(true));
    let at = |user: &str| format!("@{user}:weft.test");

    let first = sync(&alice, None, &ll).await;
    assert_eq!(members_in_state(&first, &room), [at("alice"), at("bob"), at("carol")]);

    // New messages from the same senders: the device holds their members already.
    send_text(&bob, &room, "b9", "again").await;
    send_text(&carol, &room, "c9", "again").await;
    let second = sync(&alice, Some(&next(&first)), &ll).await;
    assert_eq!(
        second["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{second}"
    );
    assert_eq!(members_in_state(&second, &room), Vec::<String>::new(), "{second}");

    // Asked for redundant members, they come again (the user's own only on a full state).
    let redundant = sync(&alice, Some(&next(&first)), &ll_redundant).await;
    assert_eq!(members_in_state(&redundant, &room), [at("bob"), at("carol")]);

    // A sync repeated from the same token (its answer lost) is answered alike: only what the
    // answers the device did receive carried counts.
    let repeated = sync(&alice, Some(&next(&first)), &ll).await;
    assert_eq!(
        members_in_state(&repeated, &room),
        Vec::<String>::new(),
        "same token, same answer"
    );

    // A member's new event is not the one the device holds.
    let (status, _) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", at("bob")),
            json!({"membership": "join", "displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200);
    send_text(&bob, &room, "b10", "renamed").await;
    let third = sync(&alice, Some(&next(&second)), &ll).await;
    let timeline = &third["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"),
        "{third}"
    );

    // A gappy sync: Dave joins in the gap and only Carol speaks after; Dave's join is a
    // change across the gap, Carol's member is held already.
    let (status, _) = dave.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    for i in 0..6 {
        send_text(&carol, &room, &format!("g{i}"), "filler").await;
    }
    let gappy = sync(&alice, Some(&next(&third)), &ll).await;
    assert_eq!(gappy["rooms"]["join"][&room]["timeline"]["limited"], true, "{gappy}");
    assert_eq!(members_in_state(&gappy, &room), [at("dave")], "{gappy}");
    server.stop().await;
});
