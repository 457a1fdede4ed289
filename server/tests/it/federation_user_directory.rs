//! The user directory across servers: a user finds another server's users who share a room
//! with them, and those in public rooms, by the profile their member events carry, and finds
//! them by their new name once they change it.

use serde_json::json;

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, membership, user_id},
    harness::Client,
    harness_federation::start_federation,
    rooms::create_room,
};

/// The user IDs and display names a directory search of `client`'s answers.
async fn search(client: &Client, term: &str) -> Vec<(String, Option<String>)> {
    let (status, found) = client
        .post(
            "/_matrix/client/v3/user_directory/search",
            json!({ "search_term": term, "limit": 10 }),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap().to_owned(),
                u["display_name"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn set_displayname(client: &Client, user: &str, name: &str) {
    let (status, body) = client
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(user)),
            json!({ "displayname": name }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn join(client: &Client, room: &str, via: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

both_backends!(the_user_directory_finds_other_servers_users, |backend| async move {
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let [a, b] = &servers[..] else { unreachable!() };
    let alice = a.register("alice", "password-alice").await;
    let carol = a.register("carol", "password-carol").await;
    let bob = b.register("bob", "password-bob").await;
    let dave = b.register("dave", "password-dave").await;
    let (alice_id, bob_id, dave_id) = (user_id("alice", a), user_id("bob", b), user_id("dave", b));
    set_displayname(&bob, &bob_id, "Bobby Tables").await;
    set_displayname(&dave, &dave_id, "Dave Lister").await;

    // Bob shares a private room with Alice; Dave is in a public room of A's that no one else
    // here shares with Carol.
    let private = create_room(&alice, json!({ "preset": "private_chat", "invite": [bob_id] })).await;
    eventually("bob's invite", || async {
        let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
        sync["rooms"]["invite"].get(&private).map(|_| ())
    })
    .await;
    join(&bob, &private, a.server_name()).await;
    let public = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&dave, &public, a.server_name()).await;
    for (room, user) in [(&private, &bob_id), (&public, &dave_id)] {
        eventually(&format!("{user} joined, on A"), || async {
            (membership(&alice, room, user).await.as_deref() == Some("join")).then_some(())
        })
        .await;
    }

    // Alice finds Bob by his name and by his user ID; Carol, who shares no room with him,
    // does not. Both find Dave, in a public room.
    let bobby = vec![(bob_id.clone(), Some("Bobby Tables".to_owned()))];
    assert_eq!(search(&alice, "tables").await, bobby);
    assert_eq!(search(&alice, "@bob").await, bobby);
    assert!(search(&carol, "tables").await.is_empty());
    let dave_found = vec![(dave_id.clone(), Some("Dave Lister".to_owned()))];
    assert_eq!(search(&alice, "lister").await, dave_found);
    assert_eq!(search(&carol, "lister").await, dave_found);

    // Bob renames himself on B: the new member event reaches A and the directory with it.
    set_displayname(&bob, &bob_id, "Robert Paulson").await;
    eventually("bob's new name in A's directory", || async {
        (search(&alice, "paulson").await == [(bob_id.clone(), Some("Robert Paulson".to_owned()))]).then_some(())
    })
    .await;
    assert!(search(&alice, "tables").await.is_empty());
    // Alice does not find herself.
    assert!(!search(&alice, "alice").await.iter().any(|(id, _)| *id == alice_id));

    for server in servers {
        server.stop().await;
    }
});
