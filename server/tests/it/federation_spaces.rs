//! Spaces across servers: a space on one server whose children live only on another shows
//! them in `/hierarchy` (asked of the child's servers over federation's `/hierarchy`, nested
//! spaces included, suggested-only passed on, rooms the asking server may not see left out),
//! and keeps showing them for a while once that server is gone.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    both_backends, federation_rooms::enc, harness::Client, harness_federation::start_federation, harness_forge::Forger,
    rooms::create_room,
};

async fn add_child(client: &Client, space: &str, child: &str, via: &str, order: &str, suggested: bool) {
    let (status, body) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(space),
                enc(child)
            ),
            json!({ "via": [via], "order": order, "suggested": suggested }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The names of the rooms of `space`'s hierarchy as `client` sees it, in order.
async fn hierarchy_names(client: &Client, space: &str, query: &str) -> Vec<String> {
    let (status, page) = client
        .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(space)))
        .await;
    assert_eq!(status, 200, "{page}");
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

both_backends!(
    a_space_shows_children_that_live_on_another_server,
    |backend| async move {
        let Some((ca, mut servers)) = start_federation(backend, 2).await else {
            return;
        };
        let b = servers.pop().unwrap();
        let a = servers.pop().unwrap();
        let alice = a.register("alice", "password-alice").await;
        let bob = b.register("bob", "password-bob").await;

        // On B only: a public room, a public space holding a public room and a private one.
        let garden = create_room(
            &bob,
            json!({ "preset": "public_chat", "name": "Garden", "topic": "Plants" }),
        )
        .await;
        let shed = create_room(
            &bob,
            json!({ "preset": "public_chat", "name": "Shed", "creation_content": { "type": "m.space" } }),
        )
        .await;
        let tools = create_room(&bob, json!({ "preset": "public_chat", "name": "Tools" })).await;
        let secret = create_room(&bob, json!({ "preset": "private_chat", "name": "Secret" })).await;
        add_child(&bob, &shed, &tools, b.server_name(), "a", false).await;
        add_child(&bob, &shed, &secret, b.server_name(), "b", false).await;
        // On A: a space whose children are B's.
        let space = create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Home", "creation_content": { "type": "m.space" } }),
        )
        .await;
        add_child(&alice, &space, &garden, b.server_name(), "a", true).await;
        add_child(&alice, &space, &shed, b.server_name(), "b", false).await;

        // Alice sees B's rooms in her space, depth first; not the private one.
        assert_eq!(
            hierarchy_names(&alice, &space, "").await,
            ["Home", "Garden", "Shed", "Tools"]
        );
        let (_, page) = alice
            .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space)))
            .await;
        let rooms = page["rooms"].as_array().unwrap();
        let garden_summary = rooms.iter().find(|r| r["room_id"] == garden.as_str()).unwrap();
        assert_eq!(garden_summary["topic"], "Plants", "{page}");
        assert_eq!(garden_summary["num_joined_members"], 1, "{page}");
        // (ruma leaves out a public join rule, the spec's default.)
        assert!(
            matches!(garden_summary["join_rule"].as_str(), None | Some("public")),
            "{page}"
        );
        let shed_summary = rooms.iter().find(|r| r["room_id"] == shed.as_str()).unwrap();
        assert_eq!(shed_summary["room_type"], "m.space", "{page}");
        let shed_children: Vec<&Value> = shed_summary["children_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["state_key"])
            .collect();
        assert_eq!(shed_children, [&json!(tools), &json!(secret)], "{page}");
        // Only suggested children, and pages of one room, as asked.
        assert_eq!(
            hierarchy_names(&alice, &space, "?suggested_only=true").await,
            ["Home", "Garden"]
        );
        let (_, first) = alice
            .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy?limit=2", enc(&space)))
            .await;
        let token = first["next_batch"].as_str().expect("a next page");
        let (_, second) = alice
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/hierarchy?limit=2&from={}",
                enc(&space),
                enc(token)
            ))
            .await;
        let names: Vec<&str> = second["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(names, ["Shed", "Tools"], "{second}");

        // What B answers A: the space, the child A may see, the one it may not by ID only; and
        // nothing about the private room itself.
        let forger = Forger::as_server(&ca, &a);
        let (status, answer) = forger
            .request(
                &b,
                Method::GET,
                &format!("/_matrix/federation/v1/hierarchy/{}", enc(&shed)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["room"]["name"], "Shed", "{answer}");
        assert_eq!(answer["children"][0]["room_id"], tools.as_str(), "{answer}");
        assert_eq!(answer["children"].as_array().unwrap().len(), 1, "{answer}");
        assert_eq!(answer["inaccessible_children"], json!([secret]), "{answer}");
        let (status, answer) = forger
            .request(
                &b,
                Method::GET,
                &format!("/_matrix/federation/v1/hierarchy/{}", enc(&secret)),
                None,
            )
            .await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{answer}"
        );

        // With B gone, the answers A kept still show the space whole for a while.
        b.stop().await;
        assert_eq!(
            hierarchy_names(&alice, &space, "").await,
            ["Home", "Garden", "Shed", "Tools"]
        );
        a.stop().await;
    }
);
