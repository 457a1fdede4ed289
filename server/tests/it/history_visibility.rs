//! History visibility as a joining user sees it in `/sync` and `/messages`: changes of the
//! setting at their boundaries, and a joined room's current state.

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{create_room, send_text},
    sync::sync,
};

async fn set_visibility(client: &Client, room: &str, hv: &str) {
    let (status, res) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility"),
            json!({"history_visibility": hv}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
}

async fn join(client: &Client, room: &str) {
    let (status, res) = client.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{res}");
}

/// Each event as `type:what` (the message body, the visibility, the membership and user).
fn described(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let what = match e["type"].as_str().unwrap() {
                "m.room.message" => e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                "m.room.history_visibility" => e["content"]["history_visibility"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                "m.room.member" => format!(
                    "{}/{}",
                    e["content"]["membership"].as_str().unwrap_or_default(),
                    e["state_key"].as_str().unwrap_or_default()
                ),
                _ => String::new(),
            };
            format!("{}:{what}", e["type"].as_str().unwrap())
        })
        .collect()
}

fn filter(limit: u32) -> String {
    format!(
        "filter={}",
        crate::rooms::urlencode(&json!({"room": {"timeline": {"limit": limit}}}).to_string())
    )
}

both_backends!(visibility_changes_show_where_either_side_allows, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    set_visibility(&alice, &room, "joined").await;
    send_text(&alice, &room, "1", "one").await;
    set_visibility(&alice, &room, "invited").await;
    send_text(&alice, &room, "2", "two").await;
    set_visibility(&alice, &room, "shared").await;
    send_text(&alice, &room, "3", "three").await;
    join(&bob, &room).await;

    // The change to `joined` shows (shared before it), the one to `invited` does not (Bob was
    // neither invited nor joined on either side of it), the one to `shared` does (after it).
    let expected = [
        "m.room.history_visibility:joined",
        "m.room.history_visibility:shared",
        "m.room.message:three",
        "m.room.member:join/@bob:weft.test",
    ];
    let res = sync(&bob, None, &filter(50)).await;
    let timeline = described(res["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap());
    let tail = &timeline[timeline.len() - 4..];
    assert_eq!(tail, expected, "{timeline:?}");
    assert!(!timeline
        .iter()
        .any(|e| e.ends_with(":one") || e.ends_with(":two") || e.ends_with(":invited")));

    let (status, res) = bob
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    assert_eq!(status, 200, "{res}");
    let mut messages = described(res["chunk"].as_array().unwrap());
    messages.reverse();
    assert_eq!(&messages[messages.len() - 4..], expected, "{messages:?}");
    server.stop().await;
});

both_backends!(
    current_state_shows_in_a_private_history_timeline,
    |backend| async move {
        let Some(server) = TestServer::start(backend).await else {
            return;
        };
        let creator = server.register("creator", "pw").await;
        let syncer = server.register("syncer", "pw").await;
        let invitee = server.register("invitee", "pw").await;
        let room = create_room(&creator, json!({"preset": "public_chat"})).await;
        join(&syncer, &room).await;
        set_visibility(&creator, &room, "joined").await;
        let (status, _) = creator
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                json!({"user_id": "@invitee:weft.test"}),
            )
            .await;
        assert_eq!(status, 200);
        let token = sync(&syncer, None, "").await["next_batch"].as_str().unwrap().to_owned();
        let (status, _) = syncer
            .post(&format!("/_matrix/client/v3/rooms/{room}/leave"), json!({}))
            .await;
        assert_eq!(status, 200);
        // Joined while the syncer was away, with joined-only history: a moment the syncer may not
        // see, but the invitee's join is the room's current state when the syncer is back.
        join(&invitee, &room).await;
        send_text(&creator, &room, "away", "while away").await;
        join(&syncer, &room).await;
        let res = sync(&syncer, Some(&token), "").await;
        let timeline = described(res["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap());
        assert!(
            timeline.contains(&"m.room.member:join/@invitee:weft.test".to_owned()),
            "{timeline:?}"
        );
        assert!(
            !timeline.contains(&"m.room.message:while away".to_owned()),
            "{timeline:?}"
        );
        server.stop().await;
    }
);
