//! History visibility: which events a user, or another server, may see, from the room's
//! `m.room.history_visibility` and the memberships at each event.

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
    // Each event is judged at the state after it; a history visibility change also at the
    // state before it (the spec: the user sees the change if either setting lets them).
    let groups: Vec<(i64, &str)> = list
        .iter()
        .flat_map(|e| {
            let before = is_visibility_change(e).then_some(e.state_before).flatten();
            e.state_after.into_iter().chain(before).map(|g| (g, e.room_id.as_str()))
        })
        .collect();
    let per_group = group_visibility(core, conn, user, currently_joined, &groups).await?;
    let allows = |group: Option<i64>, room_id: &str| {
        let Some((hv, membership)) = group.and_then(|g| per_group.get(&g)) else {
            return false;
        };
        match hv.as_str() {
            "world_readable" => true,
            "shared" => membership == "join" || currently_joined.contains_key(room_id),
            "invited" => membership == "join" || membership == "invite",
            _ => membership == "join",
        }
    };
    Ok(list
        .into_iter()
        .filter(|event| {
            // Users always see changes to their own membership (their kick, ban or invite).
            if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user) {
                return true;
            }
            allows(event.state_after, &event.room_id)
                || (is_visibility_change(event) && allows(event.state_before, &event.room_id))
        })
        .collect())
}

fn is_visibility_change(event: &StoredEvent) -> bool {
    event.event_type == "m.room.history_visibility" && event.state_key.as_deref() == Some("")
}

/// `(history_visibility, user's membership)` after each state group the events lead to: the
/// groups come from the cache, the contents of the events they name from one query.
async fn group_visibility(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    currently_joined: &HashMap<String, String>,
    groups: &[(i64, &str)],
) -> Result<HashMap<i64, (String, String)>> {
    let hv_key = ("m.room.history_visibility".to_owned(), String::new());
    let member_key = ("m.room.member".to_owned(), user.to_owned());
    let mut known: HashMap<i64, (String, String)> = HashMap::new();
    let mut ids_per_group: HashMap<i64, (Option<String>, Option<String>)> = HashMap::new();
    for &(group, room_id) in groups {
        if known.contains_key(&group) || ids_per_group.contains_key(&group) {
            continue;
        }
        let state = state_store::load(&core.db, conn, group).await?;
        let member = state.get(&member_key);
        // Joined at the group by the very join that still holds: every history visibility
        // shows the event, so neither content needs reading (the common case in a sync).
        if member.is_some() && member == currently_joined.get(room_id) {
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
    let contents = contents_of(conn, &ids).await?;
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

/// Who reads a room's events: a user (Client-Server API), or another server (`/backfill`,
/// `/event`, `/get_missing_events`).
#[derive(Clone, Copy, Debug)]
pub enum Reader<'a> {
    User(&'a str),
    Server(&'a str),
    /// A server admin (the admin API): every accepted event.
    Admin,
}

/// Keeps the events `reader` may see, in order.
pub async fn filter_visible_to(
    core: &Core,
    conn: &mut AnyConnection,
    reader: Reader<'_>,
    room_id: &str,
    list: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    match reader {
        Reader::User(user) => filter_visible(core, conn, user, room_id, list).await,
        Reader::Server(server) => filter_visible_to_server(core, conn, server, list).await,
        Reader::Admin => Ok(list),
    }
}

/// Keeps the events another server may see, in order: with history visibility
/// `world_readable` or `shared` every event; `invited`, those at which one of its users was
/// invited or joined; `joined`, those at which one of them was joined.
pub async fn filter_visible_to_server(
    core: &Core,
    conn: &mut AnyConnection,
    server: &str,
    list: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let hv_key = ("m.room.history_visibility".to_owned(), String::new());
    let suffix = format!(":{server}");
    // Per state group: the history visibility event and the server's users' member events.
    let mut per_group: HashMap<i64, (Option<String>, Vec<String>)> = HashMap::new();
    for event in &list {
        let Some(group) = event.state_after else { continue };
        if per_group.contains_key(&group) {
            continue;
        }
        let state = state_store::load(&core.db, conn, group).await?;
        let members = state
            .range(("m.room.member".to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == "m.room.member")
            .filter(|((_, user), _)| user.ends_with(&suffix))
            .map(|(_, id)| id.clone())
            .collect();
        per_group.insert(group, (state.get(&hv_key).cloned(), members));
    }
    let mut ids: Vec<String> = per_group
        .values()
        .flat_map(|(hv, members)| hv.iter().chain(members))
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    let contents = contents_of(conn, &ids).await?;
    let content_str = |id: &str, field: &str| contents.get(id).and_then(|c| c[field].as_str()).map(str::to_owned);
    let visible_groups: HashMap<i64, bool> = per_group
        .iter()
        .map(|(group, (hv, members))| {
            let hv = hv
                .as_deref()
                .and_then(|id| content_str(id, "history_visibility"))
                .unwrap_or_else(|| "shared".to_owned());
            let has = |wanted: &[&str]| {
                members
                    .iter()
                    .any(|id| content_str(id, "membership").is_some_and(|m| wanted.contains(&m.as_str())))
            };
            let visible = match hv.as_str() {
                "world_readable" | "shared" => true,
                "invited" => has(&["join", "invite"]),
                _ => has(&["join"]),
            };
            (*group, visible)
        })
        .collect();
    Ok(list
        .into_iter()
        .filter(|e| {
            e.state_after
                .and_then(|g| visible_groups.get(&g))
                .copied()
                .unwrap_or(false)
        })
        .collect())
}

/// The contents of these events, by ID, in one query.
async fn contents_of(conn: &mut AnyConnection, ids: &[String]) -> Result<HashMap<String, serde_json::Value>> {
    Ok(events::get_many(conn, ids)
        .await?
        .into_iter()
        .filter_map(|e| {
            let json = serde_json::from_str::<serde_json::Value>(&e.json).ok()?;
            Some((e.event_id, json["content"].clone()))
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::json;

    use super::{filter_visible_to, Reader};
    use crate::{
        events::{builder::EventTemplate, pipeline::StateAt},
        rooms::{self, timeline},
        testing::{join, on_each_backend, stored},
    };

    /// What another server may read of a room's history depends on the room's history
    /// visibility and on its own users' memberships at each event.
    #[tokio::test]
    async fn another_server_sees_history_as_its_users_membership_allows() {
        on_each_backend(async |s| {
            let alice = user_id!("@alice:local.test");
            let send = async |template: EventTemplate| {
                rooms::send(&s.local, &s.room_id, alice, template, None)
                    .await
                    .unwrap()
                    .event_id
            };
            let say = |body: &str| EventTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body}));
            let visibility =
                |hv: &str| EventTemplate::state("m.room.history_visibility", "", json!({"history_visibility": hv}));
            let shared = send(say("while shared")).await;
            send(visibility("joined")).await;
            let before_join = send(say("before bob joined")).await;
            let join = s.remote_event(crate::testing::bob(), join(), |_, _| {}).await;
            stored(s.receive(join, StateAt::PrevEvents).await);
            let after_join = send(say("after bob joined")).await;

            let mut conn = s.local.db.conn().await.unwrap();
            let all = timeline::page(
                &mut conn,
                &s.room_id,
                timeline::Key::END,
                None,
                timeline::Dir::Backward,
                100,
            )
            .await
            .unwrap();
            let seen = async |conn: &mut sqlx::AnyConnection, reader: Reader<'_>| -> Vec<String> {
                filter_visible_to(&s.local, conn, reader, &s.room_id, all.clone())
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.event_id)
                    .collect()
            };
            let remote = seen(&mut conn, Reader::Server("remote.test")).await;
            assert!(remote.contains(&shared), "history shared before the change");
            assert!(
                !remote.contains(&before_join),
                "joined-only history before its users joined"
            );
            assert!(remote.contains(&after_join));
            let stranger = seen(&mut conn, Reader::Server("elsewhere.test")).await;
            assert!(stranger.contains(&shared) && !stranger.contains(&after_join));
            // A user's view goes through the same entry point.
            assert!(seen(&mut conn, Reader::User(alice.as_str()))
                .await
                .contains(&before_join));
        })
        .await;
    }
}
