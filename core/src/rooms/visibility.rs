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

/// Keeps the events `user` may see, in order.
pub async fn filter_visible(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    list: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    if list.is_empty() {
        return Ok(list);
    }
    let currently_joined: HashMap<String, String> = rooms::membership(conn, room_id, user)
        .await?
        .filter(|m| m.membership == "join")
        .map(|m| (m.room_id, m.event_id))
        .into_iter()
        .collect();
    filter_visible_many(core, conn, user, &currently_joined, list).await
}

/// Keeps the events `user` may see, in order, for events of any number of rooms at once:
/// `currently_joined` maps the rooms the user is joined to now to their join event (which the
/// caller usually knows already). Costs at most one query for the whole list.
pub async fn filter_visible_many(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    currently_joined: &HashMap<String, String>,
    list: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let per_group = group_visibility(core, conn, user, currently_joined, &list).await?;
    Ok(list
        .into_iter()
        .filter(|event| {
            // Users always see changes to their own membership (their kick, ban or invite).
            if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user) {
                return true;
            }
            let Some((hv, membership)) = event.state_after.and_then(|g| per_group.get(&g)) else {
                return false;
            };
            match hv.as_str() {
                "world_readable" => true,
                "shared" => membership == "join" || currently_joined.contains_key(&event.room_id),
                "invited" => membership == "join" || membership == "invite",
                _ => membership == "join",
            }
        })
        .collect())
}

/// `(history_visibility, user's membership)` after each state group the events lead to: the
/// groups come from the cache, the contents of the events they name from one query.
async fn group_visibility(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    currently_joined: &HashMap<String, String>,
    list: &[StoredEvent],
) -> Result<HashMap<i64, (String, String)>> {
    let hv_key = ("m.room.history_visibility".to_owned(), String::new());
    let member_key = ("m.room.member".to_owned(), user.to_owned());
    let mut known: HashMap<i64, (String, String)> = HashMap::new();
    let mut ids_per_group: HashMap<i64, (Option<String>, Option<String>)> = HashMap::new();
    for event in list {
        let Some(group) = event.state_after else { continue };
        if known.contains_key(&group) || ids_per_group.contains_key(&group) {
            continue;
        }
        let state = state_store::load(&core.db, conn, group).await?;
        let member = state.get(&member_key);
        // Joined at the group by the very join that still holds: every history visibility
        // shows the event, so neither content needs reading (the common case in a sync).
        if member.is_some() && member == currently_joined.get(&event.room_id) {
            known.insert(group, ("joined".to_owned(), "join".to_owned()));
            continue;
        }
        ids_per_group.insert(group, (state.get(&hv_key).cloned(), member.cloned()));
    }
    if ids_per_group.is_empty() {
        return Ok(known);
    }
    let mut ids: Vec<String> = ids_per_group
        .values()
        .flat_map(|(hv, member)| hv.iter().chain(member.iter()).cloned())
        .collect();
    ids.sort();
    ids.dedup();
    let contents: HashMap<String, serde_json::Value> = events::get_many(conn, &ids)
        .await?
        .into_iter()
        .filter_map(|e| {
            let json = serde_json::from_str::<serde_json::Value>(&e.json).ok()?;
            Some((e.event_id, json["content"].clone()))
        })
        .collect();
    let field = |id: &Option<String>, name: &str, default: &str| {
        id.as_ref()
            .and_then(|id| contents.get(id))
            .and_then(|c| c[name].as_str())
            .unwrap_or(default)
            .to_owned()
    };
    known.extend(ids_per_group.into_iter().map(|(group, (hv, member))| {
        (
            group,
            (
                field(&hv, "history_visibility", "shared"),
                field(&member, "membership", "leave"),
            ),
        )
    }));
    Ok(known)
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
