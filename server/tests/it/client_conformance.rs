//! Client-Server behaviours that clients (and the Matrix project's sytest) rely on, beyond
//! the spec's letter: custom join content, per-kind push rule listing, capabilities written
//! out, UIA with another user's password, `/messages` tokens, the deprecated `/events` and
//! `/initialSync`, incremental syncs that leave out rooms whose changes were filtered out,
//! and guest access in created and upgraded rooms.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, messages, send_text, urlencode},
    sync::sync,
};

fn state_types(res: &Value) -> Vec<String> {
    res.as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(join_content_push_kinds_capabilities_and_uia, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;

    // A join keeps the client's custom content under the membership.
    let (status, res) = bob
        .post(&format!("/_matrix/client/v3/join/{room}"), json!({"foo": "bar"}))
        .await;
    assert_eq!(status, 200, "{res}");
    let (_, member) = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:weft.test"
        ))
        .await;
    assert_eq!(member["foo"], "bar", "{member}");
    assert_eq!(member["membership"], "join");

    // The rules of one kind, as a list.
    let (status, res) = alice
        .put(
            "/_matrix/client/v3/pushrules/global/sender/@bob:weft.test",
            json!({"actions": ["notify"]}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let (status, list) = alice.get("/_matrix/client/v3/pushrules/global/sender/").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["rule_id"], "@bob:weft.test");
    let (status, _) = alice.get("/_matrix/client/v3/pushrules/global/nonsense/").await;
    assert_eq!(status, 400);

    // Capabilities at their default are still written out.
    let (_, caps) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true, "{caps}");
    assert!(caps["capabilities"]["m.room_versions"]["default"].is_string(), "{caps}");

    // Bob's password does not authorise deleting Alice's device: 403, and it stays.
    let (_, devices) = alice.get("/_matrix/client/v3/devices").await;
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    let (status, res) = alice
        .delete(&format!("/_matrix/client/v3/devices/{device}"), json!({}))
        .await;
    assert_eq!(status, 401, "{res}");
    let auth = json!({"auth": {"type": "m.login.password", "session": res["session"],
        "identifier": {"type": "m.id.user", "user": "@bob:weft.test"}, "password": "pw"}});
    let (status, res) = alice
        .delete(&format!("/_matrix/client/v3/devices/{device}"), auth)
        .await;
    assert_eq!(status, 403, "{res}");
    let (status, _) = alice.get(&format!("/_matrix/client/v3/devices/{device}")).await;
    assert_eq!(status, 200, "the device is still there");
    server.stop().await;
});

both_backends!(messages_events_and_initial_sync, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| c.registration.allow_guests = true).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let eve = server.register("eve", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    send_text(&alice, &room, "1", "hello").await;

    // A page with events says where the next starts, even when that one is empty; only an
    // empty page has no `end`.
    let (status, page) = messages(&alice, &room, "dir=b&limit=50").await;
    assert_eq!(status, 200, "{page}");
    let end = page["end"].as_str().expect("end on a page with events").to_owned();
    let (_, next) = messages(&alice, &room, &format!("dir=b&limit=50&from={end}")).await;
    assert_eq!(next["chunk"].as_array().unwrap().len(), 0, "{next}");
    assert!(next.get("end").is_none(), "{next}");

    // /events on a room one was never in, without world-readable history: refused at once.
    let started = std::time::Instant::now();
    let (status, res) = eve
        .get(&format!(
            "/_matrix/client/v3/events?room_id={}&timeout=5000",
            urlencode(&room)
        ))
        .await;
    assert_eq!(status, 403, "{res}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // Guests name a room.
    let (_, guest) = server
        .client()
        .post("/_matrix/client/v3/register?kind=guest", json!({}))
        .await;
    let guest = server.client().with_token(guest["access_token"].as_str().unwrap());
    let (status, res) = guest.get("/_matrix/client/v3/events?timeout=0").await;
    assert_eq!(status, 403, "{res}");
    assert_eq!(res["errcode"], "M_GUEST_ACCESS_FORBIDDEN");

    // /initialSync carries the user's own presence, set or not, and each room its members'.
    let (status, initial) = alice.get("/_matrix/client/v3/initialSync?limit=1").await;
    assert_eq!(status, 200, "{initial}");
    let mine = initial["presence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content"]["user_id"] == "@alice:weft.test")
        .unwrap_or_else(|| panic!("own presence: {initial}"));
    assert_eq!(mine["type"], "m.presence");
    let (status, room_sync) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync")).await;
    assert_eq!(status, 200, "{room_sync}");
    assert!(
        room_sync["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["sender"] == "@alice:weft.test"),
        "{room_sync}"
    );
    server.stop().await;
});

both_backends!(filtered_out_rooms_and_guest_access_state, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;

    // A public room's guest access is forbidden by its absence.
    let (_, state) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/state")).await;
    assert!(
        !state_types(&state).contains(&"m.room.guest_access".to_owned()),
        "{state}"
    );

    // An incremental sync whose filter leaves out every change of a room leaves the room out.
    let filter = format!(
        "filter={}",
        urlencode(&json!({"room": {"timeline": {"types": ["a.madeup.test.state"]}, "state": {"types": ["a.madeup.test.state"]}}}).to_string())
    );
    let first = sync(&alice, None, &filter).await;
    send_text(&alice, &room, "x", "filtered out").await;
    let next = sync(&alice, first["next_batch"].as_str(), &filter).await;
    assert!(next["rooms"]["join"].get(&room).is_none(), "{next}");

    // An upgrade of such a room says guest access is forbidden in the new room.
    let (status, res) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/upgrade"),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let new_room = res["replacement_room"].as_str().unwrap();
    let (_, guest) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{new_room}/state/m.room.guest_access"
        ))
        .await;
    assert_eq!(guest["guest_access"], "forbidden", "{guest}");
    server.stop().await;
});

both_backends!(summary_heroes_and_a_zero_timeline_limit, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let named = create_room(&alice, json!({"preset": "public_chat", "name": "A room name"})).await;
    let unnamed = create_room(&alice, json!({"preset": "public_chat"})).await;
    for room in [&named, &unnamed] {
        let (status, _) = bob.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200);
    }
    let filter = format!(
        "filter={}",
        urlencode(&json!({"room": {"timeline": {"limit": 0}, "state": {"types": ["m.room.member"]}}}).to_string())
    );
    let res = sync(&alice, None, &filter).await;
    let rooms = &res["rooms"]["join"];
    // A named room is called by its name; an unnamed one by its members.
    assert!(rooms[&named]["summary"].get("m.heroes").is_none(), "{res}");
    assert_eq!(rooms[&named]["summary"]["m.joined_member_count"], 2);
    assert_eq!(
        rooms[&unnamed]["summary"]["m.heroes"],
        json!(["@bob:weft.test"]),
        "{res}"
    );
    // A timeline limit of 0: no events, the state alone.
    for room in [&named, &unnamed] {
        assert_eq!(rooms[room]["timeline"]["events"].as_array().unwrap().len(), 0, "{res}");
        assert_eq!(rooms[room]["state"]["events"].as_array().unwrap().len(), 2, "{res}");
    }
    server.stop().await;
});
