//! Interop with Synapse (`harness_synapse`): a weft server and a Synapse on loopback, over TLS
//! from one test CA. Synapse's users join weft's rooms and weft's users Synapse's, by alias and
//! by ID; messages go both ways (read through /messages and /sync) and a topic set on Synapse
//! is weft's current state; invites go both ways, accepted and rejected; users leave each
//! other's rooms; each server answers profile lookups of the other's users. Each side is
//! checked through its own client API.
//!
//! Without `WEFT_TEST_SYNAPSE` (set by .ci/run) these tests print a SKIPPED line and pass.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{bodies, enc, eventually, membership, send_text},
    harness::{Backend, Client},
    harness_federation::{FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
    rooms::create_room,
};

/// A weft server and a Synapse federating, or `None` (said loudly) when Synapse or the backend
/// is not available.
async fn weft_and_synapse(backend: Backend) -> Option<(TestCa, FederatedServer, Synapse)> {
    let python = synapse_python()?;
    let ca = TestCa::new();
    let weft = FederatedServer::start(backend, &ca).await?;
    let synapse = Synapse::start(&python, &ca).await;
    Some((ca, weft, synapse))
}

async fn joined(client: &Client, room: &str, user: &str) -> bool {
    membership(client, room, user).await.as_deref() == Some("join")
}

/// The display name in `user`'s member event in `room`, as `client`'s server has it.
async fn member_name(client: &Client, room: &str, user: &str) -> Option<String> {
    let (status, member) = client
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(user)
        ))
        .await;
    (status == 200).then(|| member["displayname"].as_str().map(str::to_owned))?
}

async fn set_displayname(client: &Client, user: &str, name: &str) {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(user)),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, 200, "set {user}'s displayname: {body}");
}

/// `user`'s profile as `client`'s server answers it (over federation for a remote user).
async fn profile(client: &Client, user: &str) -> (u16, Value) {
    client.get(&format!("/_matrix/client/v3/profile/{}", enc(user))).await
}

/// An initial sync made now. Synapse answers a repeated identical sync from a cache for a
/// while, so each one carries a filter of its own (a timeline limit no other asked for).
async fn fresh_sync(client: &Client) -> Value {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let limit = 10 + SERIAL.fetch_add(1, Ordering::Relaxed);
    let filter = json!({ "room": { "timeline": { "limit": limit } } }).to_string();
    let (status, sync) = client
        .get(&format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&filter)))
        .await;
    if status == 200 {
        sync
    } else {
        Value::Null
    }
}

/// The room's entry under `rooms.invite` in `client`'s sync, once it is there.
async fn invite_in_sync(client: &Client, room: &str, what: &str) -> Value {
    eventually(what, || async {
        fresh_sync(client).await["rooms"]["invite"].get(room).cloned()
    })
    .await
}

/// The room name in an invite's stripped state.
fn room_name_in(invite: &Value) -> Option<String> {
    invite["invite_state"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .and_then(|e| e["content"]["name"].as_str())
        .map(str::to_owned)
}

// Both backends: Synapse starts in a few seconds, which the two halves pay once each.
both_backends!(synapse_and_weft_join_each_others_rooms, |backend| async move {
    let Some((_ca, weft, synapse)) = weft_and_synapse(backend).await else {
        return;
    };
    let alice = weft.register("alice", "password-alice").await;
    let bob = weft.register("bob", "password-bob").await;
    let sam = synapse.register("sam").await;
    let alice_id = format!("@alice:{}", weft.server_name());
    let bob_id = format!("@bob:{}", weft.server_name());
    let sam_id = synapse.user_id("sam");

    // Sam (Synapse) joins a weft room by its alias.
    let weft_room = create_room(
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "weftroom", "name": "Weft room" }),
    )
    .await;
    let alias = format!("#weftroom:{}", weft.server_name());
    let (status, body) = sam
        .post(&format!("/_matrix/client/v3/join/{}", enc(&alias)), json!({}))
        .await;
    assert_eq!(status, 200, "Synapse's user joins weft's room by alias: {body}");
    assert_eq!(body["room_id"], weft_room.as_str());
    eventually("sam's join seen on weft", || async {
        joined(&alice, &weft_room, &sam_id).await.then_some(())
    })
    .await;
    eventually("alice's membership seen on Synapse", || async {
        joined(&sam, &weft_room, &alice_id).await.then_some(())
    })
    .await;

    // Alice (weft) joins a Synapse room by its alias, Bob (weft) by its ID.
    let synapse_room = create_room(
        &sam,
        json!({ "preset": "public_chat", "room_alias_name": "synroom", "name": "Synapse room" }),
    )
    .await;
    let alias = format!("#synroom:{}", synapse.server_name);
    let (status, body) = alice
        .post(&format!("/_matrix/client/v3/join/{}", enc(&alias)), json!({}))
        .await;
    assert_eq!(status, 200, "weft's user joins Synapse's room by alias: {body}");
    assert_eq!(body["room_id"], synapse_room.as_str());
    let (status, body) = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&synapse_room),
                enc(&synapse.server_name)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "weft's user joins Synapse's room by ID: {body}");
    for user in [&alice_id, &bob_id] {
        eventually(&format!("{user}'s join seen on Synapse"), || async {
            joined(&sam, &synapse_room, user).await.then_some(())
        })
        .await;
    }
    eventually("sam's membership seen on weft", || async {
        joined(&alice, &synapse_room, &sam_id).await.then_some(())
    })
    .await;

    // Messages both ways, in both rooms, in one order on both servers.
    for (room, first, first_name, second, second_name) in [
        (&weft_room, &alice, "weft", &sam, "Synapse"),
        (&synapse_room, &sam, "Synapse", &alice, "weft"),
    ] {
        send_text(first, room, &format!("hello from {first_name}")).await;
        eventually(&format!("{first_name}'s message on {second_name}"), || async {
            (bodies(second, room).await == [format!("hello from {first_name}")]).then_some(())
        })
        .await;
        send_text(second, room, &format!("hello from {second_name}")).await;
        let expected = [format!("hello from {first_name}"), format!("hello from {second_name}")];
        for (who, client) in [(first_name, first), (second_name, second)] {
            eventually(&format!("both messages in order on {who}"), || async {
                (bodies(client, room).await == expected).then_some(())
            })
            .await;
        }
    }
    // Bob, who joined by ID, reads both too.
    eventually("bob sees the Synapse room's messages", || async {
        (bodies(&bob, &synapse_room).await.len() == 2).then_some(())
    })
    .await;
    // Each side's sync shows the other side's message in the room's timeline.
    for (who, client, room, body) in [
        ("alice", &alice, &synapse_room, "hello from Synapse"),
        ("sam", &sam, &weft_room, "hello from weft"),
    ] {
        eventually(&format!("{body:?} in {who}'s sync"), || async {
            let sync = fresh_sync(client).await;
            let timeline = sync["rooms"]["join"][room.as_str()]["timeline"]["events"]
                .as_array()?
                .clone();
            timeline.iter().any(|e| e["content"]["body"] == body).then_some(())
        })
        .await;
    }

    // A state change on Synapse is the room's current state on weft.
    let (status, body) = sam
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&synapse_room)),
            json!({ "topic": "set on Synapse" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("Synapse's topic on weft", || async {
        let (status, topic) = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic",
                enc(&synapse_room)
            ))
            .await;
        (status == 200 && topic["topic"] == "set on Synapse").then_some(())
    })
    .await;

    // Profiles of the other server's users, asked of each server. Each change (a new member
    // event in both rooms) is seen on the other server before the next is made, so that each
    // lookup below has one answer; changes made at once (forks) are `federation_forks`'s.
    set_displayname(&alice, &alice_id, "Alice of Weft").await;
    for room in [&weft_room, &synapse_room] {
        eventually("Alice's new name on Synapse", || async {
            (member_name(&sam, room, &alice_id).await.as_deref() == Some("Alice of Weft")).then_some(())
        })
        .await;
    }
    set_displayname(&sam, &sam_id, "Sam of Synapse").await;
    for room in [&weft_room, &synapse_room] {
        eventually("Sam's new name on weft", || async {
            (member_name(&alice, room, &sam_id).await.as_deref() == Some("Sam of Synapse")).then_some(())
        })
        .await;
    }
    let (status, body) = profile(&alice, &sam_id).await;
    assert_eq!(status, 200, "weft looks up Synapse's user: {body}");
    assert_eq!(body["displayname"], "Sam of Synapse", "{body}");
    let (status, body) = profile(&sam, &alice_id).await;
    assert_eq!(status, 200, "Synapse looks up weft's user: {body}");
    assert_eq!(body["displayname"], "Alice of Weft", "{body}");
    let (status, body) = alice
        .get(&format!("/_matrix/client/v3/profile/{}/displayname", enc(&sam_id)))
        .await;
    assert_eq!(
        (status, &body["displayname"]),
        (200, &json!("Sam of Synapse")),
        "{body}"
    );
    // A user neither server has.
    let (status, body) = profile(&alice, &synapse.user_id("nobody")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = profile(&sam, &format!("@nobody:{}", weft.server_name())).await;
    assert_eq!(status, 404, "{body}");

    // Leaves both ways: Sam leaves the weft room, Bob the Synapse room; both servers see it.
    let (status, body) = sam
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&weft_room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "Synapse's user leaves weft's room: {body}");
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&synapse_room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "weft's user leaves Synapse's room: {body}");
    for (what, client, room, user) in [
        ("sam's leave on weft", &alice, &weft_room, &sam_id),
        ("bob's leave on Synapse", &sam, &synapse_room, &bob_id),
        ("bob's leave on weft", &alice, &synapse_room, &bob_id),
    ] {
        eventually(what, || async {
            (membership(client, room, user).await.as_deref() == Some("leave")).then_some(())
        })
        .await;
    }

    drop(synapse);
    weft.stop().await;
});

both_backends!(invites_between_synapse_and_weft, |backend| async move {
    let Some((_ca, weft, synapse)) = weft_and_synapse(backend).await else {
        return;
    };
    let alice = weft.register("alice", "password-alice").await;
    let erin = weft.register("erin", "password-erin").await;
    let sam = synapse.register("sam").await;
    let tess = synapse.register("tess").await;
    let alice_id = format!("@alice:{}", weft.server_name());
    let erin_id = format!("@erin:{}", weft.server_name());
    let sam_id = synapse.user_id("sam");
    let tess_id = synapse.user_id("tess");

    // Weft invites Synapse's users to a private room; Sam accepts, Tess rejects.
    let weft_room = create_room(&alice, json!({ "preset": "private_chat", "name": "Weft secret" })).await;
    for invitee in [&sam_id, &tess_id] {
        let (status, body) = alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&weft_room)),
                json!({ "user_id": invitee }),
            )
            .await;
        assert_eq!(status, 200, "weft invites Synapse's {invitee}: {body}");
    }
    for (who, client) in [("sam", &sam), ("tess", &tess)] {
        let invite = invite_in_sync(client, &weft_room, &format!("{who}'s invite in his sync on Synapse")).await;
        assert_eq!(room_name_in(&invite).as_deref(), Some("Weft secret"), "{invite}");
    }
    let (status, body) = sam
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&weft_room)), json!({}))
        .await;
    assert_eq!(status, 200, "Synapse's user accepts: {body}");
    let (status, body) = tess
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&weft_room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "Synapse's user rejects: {body}");
    eventually("sam joined, on weft", || async {
        joined(&alice, &weft_room, &sam_id).await.then_some(())
    })
    .await;
    eventually("tess's rejection, on weft", || async {
        (membership(&alice, &weft_room, &tess_id).await.as_deref() == Some("leave")).then_some(())
    })
    .await;

    // Synapse invites weft's users to a private room; Alice accepts, Erin rejects.
    let synapse_room = create_room(&sam, json!({ "preset": "private_chat", "name": "Synapse secret" })).await;
    for invitee in [&alice_id, &erin_id] {
        let (status, body) = sam
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&synapse_room)),
                json!({ "user_id": invitee }),
            )
            .await;
        assert_eq!(status, 200, "Synapse invites weft's {invitee}: {body}");
    }
    for (who, client) in [("alice", &alice), ("erin", &erin)] {
        let invite = invite_in_sync(client, &synapse_room, &format!("{who}'s invite in her sync on weft")).await;
        assert_eq!(room_name_in(&invite).as_deref(), Some("Synapse secret"), "{invite}");
    }
    let (status, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&synapse_room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "weft's user accepts: {body}");
    let (status, body) = erin
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&synapse_room)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "weft's user rejects: {body}");
    eventually("alice joined, on Synapse", || async {
        joined(&sam, &synapse_room, &alice_id).await.then_some(())
    })
    .await;
    eventually("erin's rejection, on Synapse", || async {
        (membership(&sam, &synapse_room, &erin_id).await.as_deref() == Some("leave")).then_some(())
    })
    .await;
    // The rejected invites leave the invitees' syncs.
    for (who, client, room) in [("tess", &tess, &weft_room), ("erin", &erin, &synapse_room)] {
        eventually(&format!("{who}'s invite gone from her sync"), || async {
            let sync = fresh_sync(client).await;
            (sync.is_object() && sync["rooms"]["invite"].get(room.as_str()).is_none()).then_some(())
        })
        .await;
    }

    // The members who accepted receive each other's messages in both rooms.
    send_text(&alice, &weft_room, "welcome from weft").await;
    send_text(&sam, &synapse_room, "welcome from Synapse").await;
    eventually("weft's message on Synapse", || async {
        (bodies(&sam, &weft_room).await == ["welcome from weft"]).then_some(())
    })
    .await;
    eventually("Synapse's message on weft", || async {
        (bodies(&alice, &synapse_room).await == ["welcome from Synapse"]).then_some(())
    })
    .await;
    send_text(&sam, &weft_room, "thanks from Synapse").await;
    eventually("Synapse's reply on weft", || async {
        (bodies(&alice, &weft_room).await == ["welcome from weft", "thanks from Synapse"]).then_some(())
    })
    .await;

    drop(synapse);
    weft.stop().await;
});
