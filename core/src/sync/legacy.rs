//! The API that predates `/sync`, deprecated but still specified and used by bots: `/events`
//! (the user's new room events since a token, long-polling like a sync, on sync tokens) and
//! `/initialSync` and `/rooms/{roomId}/initialSync` (each room's state and latest messages).

use std::{collections::HashMap, time::Duration};

use ruma::api::client::filter::RoomEventFilter;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{batch, shown_events, user_memberships, without_ignored_invites, SyncToken};
use crate::{
    rooms::{
        client_format::{self, Viewer},
        timeline::{self, Dir, Key},
    },
    storage::{account_data, events, rooms::Membership, state as state_store},
    Core, Result,
};

/// Most events one `/events` answer carries; the rest come with the next request.
const EVENTS_LIMIT: i64 = 100;

/// One `/events` answer: `start` is the token asked from, `end` the one to ask from next.
#[derive(Debug)]
pub struct EventsPage {
    pub chunk: Vec<Value>,
    pub start: String,
    pub end: String,
}

/// `GET /events`: the room events after `from` (now when absent) that the user may see, in
/// the order they arrived, from the rooms they are joined to or just left (or `room_id` alone),
/// waiting up to `timeout` for one. Only the token's events position moves, so the token
/// still stands for the other streams as they were (a `/sync` from it reports them).
pub async fn events(
    core: &Core,
    viewer: Viewer<'_>,
    from: Option<SyncToken>,
    room_id: Option<&str>,
    timeout: Duration,
) -> Result<EventsPage> {
    let user_id = viewer.user_id;
    let start = match from {
        Some(token) => token,
        None => SyncToken::current(core).await?,
    };
    let mut conn = core.db.conn().await?;
    // Peeking at a room one was never in needs world-readable history; anything else would
    // wait out the timeout for events it may never show.
    if let Some(room_id) = room_id {
        if crate::storage::rooms::membership(&mut conn, room_id, user_id)
            .await?
            .is_none()
            && !crate::rooms::visibility::can_read_room(&mut conn, user_id, room_id).await?
        {
            return Err(crate::Error::Forbidden("You are not allowed to read this room".into()));
        }
    }
    let rooms = rooms_to_watch(&mut conn, user_id, room_id, start.events).await?;
    drop(conn);
    // Interest first: a change after this wakes the wait, one before is below `now`.
    let mut interest = core.notifier.interest(user_id, rooms.into_keys().collect());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut from = start;
    loop {
        let now = SyncToken::current(core).await?;
        if now.events > from.events {
            let mut conn = core.db.conn().await?;
            let rooms = rooms_to_watch(&mut conn, user_id, room_id, from.events).await?;
            let room_ids: Vec<String> = rooms.keys().cloned().collect();
            let mut batch: Vec<_> = batch::earliest_events(&mut conn, &room_ids, from.events, now.events, EVENTS_LIMIT)
                .await?
                .into_values()
                .flatten()
                .collect();
            batch.sort_by_key(|e| e.stream_pos);
            let more = batch.len() as i64 > EVENTS_LIMIT;
            batch.truncate(EVENTS_LIMIT as usize);
            from.events = match batch.last().and_then(|e| e.stream_pos) {
                Some(last) if more => last,
                _ => now.events,
            };
            let joined: HashMap<String, String> = rooms.into_iter().filter_map(|(r, join)| Some((r, join?))).collect();
            let shown = shown_events(core, &mut conn, user_id, &joined, batch).await?;
            if !shown.is_empty() {
                let chunk = with_user_id(client_format::format(core, &mut conn, &shown, Some(viewer)).await?);
                return Ok(EventsPage {
                    chunk,
                    start: start.to_string(),
                    end: from.to_string(),
                });
            }
            if more {
                continue;
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() || !core.notifier.wait(&mut interest, remaining).await {
            return Ok(EventsPage {
                chunk: Vec::new(),
                start: start.to_string(),
                end: from.to_string(),
            });
        }
    }
}

/// The rooms whose events `/events` reports, each with the user's join event if joined: the
/// rooms joined, and those left after `since` (for the events up to the leave), or only
/// `room_id` (which visibility then decides, as for a world-readable room peeked into).
async fn rooms_to_watch(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: Option<&str>,
    since: i64,
) -> Result<HashMap<String, Option<String>>> {
    let mut rooms: HashMap<String, Option<String>> = user_memberships(conn, user_id)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join" || m.stream_pos > since)
        .map(|m| {
            let join = (m.membership == "join").then_some(m.event_id);
            (m.room_id, join)
        })
        .collect();
    if let Some(room_id) = room_id {
        let join = rooms.remove(room_id).flatten();
        rooms = HashMap::from([(room_id.to_owned(), join)]);
    }
    Ok(rooms)
}

/// `GET /rooms/{roomId}/initialSync`: the room as the user sees it. A member gets its current
/// state and latest messages; a user who left, the room as it was when they left; anyone else
/// only a world-readable room (otherwise Forbidden, as for `/messages`).
pub async fn room_initial_sync(core: &Core, viewer: Viewer<'_>, room_id: &str, limit: usize) -> Result<Value> {
    let now = SyncToken::current(core).await?;
    let mut conn = core.db.conn().await?;
    let membership = crate::storage::rooms::membership(&mut conn, room_id, viewer.user_id).await?;
    let account_data = account_data::changed_since(&mut conn, viewer.user_id, 0).await?;
    let mut room = room_snapshot(core, &mut conn, viewer, room_id, membership.as_ref(), limit, now).await?;
    room["account_data"] = json!(room_account_data(&account_data, room_id));
    Ok(room)
}

/// `GET /initialSync`: every room the user is joined or invited to (and with `archived`, has
/// left) as `room_initial_sync` shows it, the presence of the user and their room-mates, their
/// global account data, and the token to follow with `/events`.
pub async fn initial_sync(core: &Core, viewer: Viewer<'_>, limit: usize, archived: bool) -> Result<Value> {
    let now = SyncToken::current(core).await?;
    let mut conn = core.db.conn().await?;
    let memberships = user_memberships(&mut conn, viewer.user_id).await?;
    let memberships = without_ignored_invites(&mut conn, viewer.user_id, memberships).await?;
    let account_data = account_data::changed_since(&mut conn, viewer.user_id, 0).await?;
    let mut rooms = Vec::new();
    for m in memberships.iter().filter(|m| m.stream_pos <= now.events) {
        let mut room = match m.membership.as_str() {
            "join" => room_snapshot(core, &mut conn, viewer, &m.room_id, Some(m), limit, now).await?,
            "leave" | "ban" if archived => {
                room_snapshot(core, &mut conn, viewer, &m.room_id, Some(m), limit, now).await?
            }
            "invite" => {
                let invite = events::get_many(&mut conn, std::slice::from_ref(&m.event_id)).await?;
                let inviter = invite.first().map(|e| e.sender.clone());
                let invite = client_format::format(core, &mut conn, &invite, Some(viewer)).await?;
                json!({
                    "room_id": m.room_id,
                    "membership": "invite",
                    "invite": invite.first(),
                    "inviter": inviter,
                    "state": super::stripped_state(core, &mut conn, &m.room_id, &m.event_id).await?,
                })
            }
            _ => continue,
        };
        room["account_data"] = json!(room_account_data(&account_data, &m.room_id));
        rooms.push(room);
    }
    // Everyone the user shares a room with, and the user, whether or not they ever set one.
    let mut users = crate::presence::users_sharing_rooms(&mut conn, viewer.user_id).await?;
    if !users.iter().any(|u| u == viewer.user_id) {
        users.push(viewer.user_id.to_owned());
    }
    let presence = crate::presence::states_of(&mut conn, &users).await?;
    let global: Vec<Value> = account_data
        .iter()
        .filter(|(room, _, _)| room.is_empty())
        .map(|(_, kind, content)| account_data_event(kind, content))
        .collect();
    Ok(json!({
        "end": now.to_string(),
        "rooms": rooms,
        "presence": presence.iter().map(|p| p.to_legacy_event()).collect::<Vec<_>>(),
        "account_data": global,
    }))
}

/// One room of an initial sync: membership, state and latest messages (chronological, with a
/// `start` token to page back from with `/messages` and an `end` token to follow with
/// `/events`), and whether the room directory lists it.
async fn room_snapshot(
    core: &Core,
    conn: &mut AnyConnection,
    viewer: Viewer<'_>,
    room_id: &str,
    membership: Option<&Membership>,
    limit: usize,
    now: SyncToken,
) -> Result<Value> {
    let joined = membership.is_some_and(|m| m.membership == "join");
    // A user who left sees the room up to their leave.
    let left_at = membership.filter(|m| m.membership != "join").map(|m| m.stream_pos);
    let from = left_at.map(timeline::token);
    let page = timeline::messages(
        core,
        conn,
        viewer.user_id,
        room_id,
        (from.as_deref(), None),
        Dir::Backward,
        limit.max(1),
        &RoomEventFilter::default(),
    )
    .await?;
    let mut messages = page.events;
    if limit == 0 {
        messages.clear();
    }
    messages.reverse();
    // Where `/messages` continues backwards; once the timeline ran out, before every event
    // (depths start at 1).
    let back_from = page.end.unwrap_or_else(|| Key { depth: 0, pos: 0 }.token());
    let end = match left_at {
        Some(pos) => SyncToken { events: pos, ..now },
        None => now,
    };

    let state_group = match (joined, left_at) {
        (false, Some(_)) => match membership {
            Some(m) => events::get(conn, &m.event_id).await?.and_then(|e| e.state_after),
            None => None,
        },
        _ => crate::storage::rooms::current_state_group(conn, room_id).await?,
    };
    let state = state_store::load_or_empty(&core.db, conn, state_group).await?;
    let state_ids: Vec<String> = state.values().cloned().collect();
    let mut state_events = events::get_many(conn, &state_ids).await?;
    state_events.sort_by_key(|e| e.stream_pos);

    let chunk = with_user_id(client_format::format(core, conn, &messages, Some(viewer)).await?);
    let state = with_user_id(client_format::format(core, conn, &state_events, Some(viewer)).await?);
    let public = crate::storage::rooms::is_public(conn, room_id).await?.unwrap_or(false);
    // The presence of the members joined in the state shown.
    let members: Vec<String> = state_events
        .iter()
        .filter(|e| e.event_type == "m.room.member")
        .filter(|e| serde_json::from_str::<Value>(&e.json).is_ok_and(|j| j["content"]["membership"] == "join"))
        .filter_map(|e| e.state_key.clone())
        .collect();
    let presence: Vec<Value> = crate::presence::states_of(conn, &members)
        .await?
        .iter()
        .map(|p| p.to_legacy_event())
        .collect();
    let mut room = json!({
        "room_id": room_id,
        "messages": { "chunk": chunk, "start": back_from, "end": end.to_string() },
        "state": state,
        "presence": presence,
        "visibility": if public { "public" } else { "private" },
    });
    if let Some(m) = membership {
        room["membership"] = json!(m.membership);
    }
    Ok(room)
}

/// Events as the deprecated endpoints' clients read them: the sender also as `user_id`, the
/// field's name before `sender` (Synapse still writes both there).
fn with_user_id(mut events: Vec<Value>) -> Vec<Value> {
    for event in &mut events {
        if let Some(sender) = event.get("sender").cloned() {
            event["user_id"] = sender;
        }
    }
    events
}

fn account_data_event(kind: &str, content: &str) -> Value {
    json!({ "type": kind, "content": serde_json::from_str::<Value>(content).unwrap_or_default() })
}

fn room_account_data(all: &[(String, String, String)], room_id: &str) -> Vec<Value> {
    all.iter()
        .filter(|(room, _, _)| room == room_id)
        .map(|(_, kind, content)| account_data_event(kind, content))
        .collect()
}
