//! History visibility: which events a user may see, from the room's
//! `m.room.history_visibility` and the user's membership at each event.

use std::collections::HashMap;

use sqlx::AnyConnection;

use crate::{
    storage::{
        events::{self, StoredEvent},
        rooms, state as state_store,
    },
    Core, Result,
};

async fn content_of(conn: &mut AnyConnection, event_id: Option<&String>) -> Result<serde_json::Value> {
    let Some(id) = event_id else {
        return Ok(serde_json::Value::Null);
    };
    Ok(events::get(conn, id)
        .await?
        .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.json).ok())
        .map(|j| j["content"].clone())
        .unwrap_or_default())
}

/// Keeps the events `user` may see, in order.
pub async fn filter_visible(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    list: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let current = rooms::membership(conn, room_id, user).await?.map(|m| m.membership);
    let currently_joined = current.as_deref() == Some("join");
    // (history_visibility, membership) per state group, computed once per group.
    let mut per_group: HashMap<i64, (String, String)> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for event in list {
        // Users always see changes to their own membership (their kick, ban or invite).
        if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user) {
            out.push(event);
            continue;
        }
        let Some(group) = event.state_after else { continue };
        if !per_group.contains_key(&group) {
            let state = state_store::load(&core.db, conn, group).await?;
            let hv = content_of(conn, state.get(&("m.room.history_visibility".into(), String::new()))).await?;
            let member = content_of(conn, state.get(&("m.room.member".into(), user.to_owned()))).await?;
            per_group.insert(
                group,
                (
                    hv["history_visibility"].as_str().unwrap_or("shared").to_owned(),
                    member["membership"].as_str().unwrap_or("leave").to_owned(),
                ),
            );
        }
        let (hv, membership) = &per_group[&group];
        let visible = match hv.as_str() {
            "world_readable" => true,
            "shared" => membership == "join" || currently_joined,
            "invited" => membership == "join" || membership == "invite",
            _ => membership == "join",
        };
        if visible {
            out.push(event);
        }
    }
    Ok(out)
}

/// Whether the user may read the room's current state and timeline at all (joined, or the
/// room is world-readable, or previously joined for what they saw).
pub async fn can_read_room(conn: &mut AnyConnection, user: &str, room_id: &str) -> Result<bool> {
    if rooms::membership(conn, room_id, user)
        .await?
        .is_some_and(|m| m.membership == "join")
    {
        return Ok(true);
    }
    let hv = super::current_state_content(conn, room_id, "m.room.history_visibility", "").await?;
    Ok(hv.is_some_and(|c| c["history_visibility"] == "world_readable"))
}
