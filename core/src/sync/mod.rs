//! `/sync` (v3): what changed for a user between a token and now, per stream, with long-polling
//! that waits on the notifier rather than polling the database.

pub mod sliding;
pub mod token;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

pub use self::token::SyncToken;
use crate::{
    ephemeral::receipts,
    events::StateMap,
    rooms::{
        client_format::{self, Viewer},
        filter, timeline, visibility,
    },
    storage::{
        account_data,
        events::{self, StoredEvent},
        rooms::{self as room_store, Membership},
        state as state_store,
    },
    Core, Result,
};

#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub user_id: String,
    pub device_id: String,
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: FilterDefinition,
    pub timeout: Duration,
}

/// Answers one `/sync`, waiting up to `timeout` for something to report.
pub async fn sync(core: &Core, req: &SyncRequest) -> Result<Value> {
    // A `since` token proves the device received the to-device messages up to its position.
    if let Some(since) = &req.since {
        crate::e2ee::to_device::acknowledge(core, &req.user_id, &req.device_id, since.to_device).await?;
    }
    // Register interest before reading positions: a change that lands after this point wakes
    // us, one that landed before is below the positions we read next.
    let mut conn = core.db.conn().await?;
    let memberships = user_memberships(&mut conn, &req.user_id).await?;
    drop(conn);
    let mut interest = core
        .notifier
        .interest(&req.user_id, memberships.iter().map(|m| m.room_id.clone()).collect());
    let deadline = tokio::time::Instant::now() + req.timeout;
    loop {
        let now = SyncToken::current(core).await?;
        let response = build(core, req, now).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A wake-up for something this filter leaves out gives an empty answer: keep waiting.
        if req.since.is_none()
            || req.full_state
            || !is_empty(&response)
            || remaining.is_zero()
            || !core.notifier.wait(&mut interest, remaining).await
        {
            return Ok(response);
        }
    }
}

pub(crate) async fn user_memberships(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<Membership>> {
    let rows: Vec<(String, String, String, String, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT room_id, user_id, membership, event_id, stream_pos, displayname, avatar_url FROM room_memberships
         WHERE user_id = $1 AND forgotten = 0 ORDER BY room_id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Membership {
            room_id: r.0,
            user_id: r.1,
            membership: r.2,
            event_id: r.3,
            stream_pos: r.4,
            displayname: r.5,
            avatar_url: r.6,
        })
        .collect())
}

fn is_empty(response: &Value) -> bool {
    let rooms = &response["rooms"];
    ["join", "invite", "leave", "knock"]
        .iter()
        .all(|k| rooms[k].as_object().is_none_or(|o| o.is_empty()))
        && response["account_data"]["events"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        && response["to_device"]["events"].as_array().is_none_or(|a| a.is_empty())
        && response["device_lists"]["changed"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        && response["device_lists"]["left"].as_array().is_none_or(|a| a.is_empty())
        && response["presence"]["events"].as_array().is_none_or(|a| a.is_empty())
}

fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let room = &filter.room;
    !room.not_rooms.iter().any(|r| r.as_str() == room_id)
        && room
            .rooms
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r.as_str() == room_id))
}

/// Builds the response for changes in `(since, now]`.
async fn build(core: &Core, req: &SyncRequest, now: SyncToken) -> Result<Value> {
    let since = req.since.unwrap_or_default();
    let initial = req.since.is_none();
    // Everything that takes its own pooled connection runs before this request holds one:
    // holding one while waiting for another deadlocks once the pool is shared by many syncs.
    let to_device = crate::e2ee::to_device::for_sync(core, &req.user_id, &req.device_id, now.to_device).await?;
    let device_lists = crate::e2ee::device_lists::for_sync(core, &req.user_id, req.since.as_ref(), &now).await?;
    let otk_counts = crate::e2ee::keys::counts_for_sync(core, &req.user_id, &req.device_id).await?;
    let fallback_types = crate::e2ee::keys::fallback_types_for_sync(core, &req.user_id, &req.device_id).await?;

    let mut conn = core.db.conn().await?;
    let memberships = user_memberships(&mut conn, &req.user_id).await?;
    let changed_account_data = account_data::changed_since(&mut conn, &req.user_id, since.account_data).await?;

    // Rooms with new timeline events or receipts since the token: one query each.
    let rooms_with_events: HashSet<String> = if initial {
        HashSet::new()
    } else {
        sqlx::query_as::<_, (String,)>("SELECT DISTINCT room_id FROM events WHERE stream_pos > $1 AND stream_pos <= $2")
            .bind(since.events)
            .bind(now.events)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect()
    };
    let rooms_with_receipts: HashSet<String> = sqlx::query_as::<_, (String,)>(
        "SELECT DISTINCT room_id FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2",
    )
    .bind(since.receipts)
    .bind(now.receipts)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| r.0)
    .collect();
    let mut room_account_data: HashMap<String, Vec<Value>> = HashMap::new();
    let mut global_account_data = Vec::new();
    for (room_id, data_type, content) in changed_account_data {
        let event =
            json!({ "type": data_type, "content": serde_json::from_str::<Value>(&content).unwrap_or_default() });
        if room_id.is_empty() {
            global_account_data.push(event);
        } else {
            room_account_data.entry(room_id).or_default().push(event);
        }
    }

    // An initial sync always carries the push rules, changed or not.
    if initial && !global_account_data.iter().any(|e| e["type"] == "m.push_rules") {
        if let Ok(user) = ruma::UserId::parse(&req.user_id) {
            let ruleset = crate::push::rules::load(&mut conn, &user).await?;
            global_account_data
                .push(json!({ "type": "m.push_rules", "content": crate::push::rules::account_data_content(&ruleset) }));
        }
    }

    let (mut join, mut invite, mut leave, mut knock) = (Map::new(), Map::new(), Map::new(), Map::new());
    for m in &memberships {
        if !room_allowed(&req.filter, &m.room_id) || m.stream_pos > now.events {
            continue;
        }
        let changed_membership = m.stream_pos > since.events;
        match m.membership.as_str() {
            "join" => {
                let typing = core
                    .typing
                    .changed_since(&m.room_id, if initial { 0 } else { since.typing });
                let has_changes = initial
                    || req.full_state
                    || changed_membership
                    || rooms_with_events.contains(&m.room_id)
                    || rooms_with_receipts.contains(&m.room_id)
                    || typing.is_some()
                    || room_account_data.contains_key(&m.room_id);
                if has_changes {
                    let ad = room_account_data.remove(&m.room_id).unwrap_or_default();
                    let room = joined_room(core, &mut conn, req, m, since, now, typing, ad, changed_membership).await?;
                    join.insert(m.room_id.clone(), room);
                }
            }
            "invite" if initial || changed_membership => {
                invite.insert(m.room_id.clone(), json!({ "invite_state": { "events": stripped_state(core, &mut conn, &m.room_id, &m.event_id).await? } }));
            }
            "knock" if initial || changed_membership => {
                knock.insert(m.room_id.clone(), json!({ "knock_state": { "events": stripped_state(core, &mut conn, &m.room_id, &m.event_id).await? } }));
            }
            "leave" | "ban"
                if (changed_membership && !initial)
                    || (req.filter.room.include_leave && (initial || changed_membership)) =>
            {
                leave.insert(m.room_id.clone(), left_room(core, &mut conn, req, m, since).await?);
            }
            _ => {}
        }
    }

    Ok(json!({
        "next_batch": now.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence_events(&mut conn, req, since, now).await? },
        "to_device": { "events": to_device },
        "device_lists": device_lists,
        "device_one_time_keys_count": otk_counts,
        "device_unused_fallback_key_types": fallback_types,
    }))
}

/// Presence of users sharing a room with the user, changed since the token.
async fn presence_events(
    conn: &mut AnyConnection,
    req: &SyncRequest,
    since: SyncToken,
    now: SyncToken,
) -> Result<Vec<Value>> {
    if req
        .filter
        .presence
        .not_types
        .iter()
        .any(|t| t == "*" || t == "m.presence")
        || req.filter.presence.limit.is_some_and(|l| u64::from(l) == 0)
    {
        return Ok(Vec::new());
    }
    let changes = crate::presence::changes_for(conn, &req.user_id, since.presence, now.presence).await?;
    Ok(changes.iter().map(|p| p.to_event()).collect())
}

/// The state after the room's last event at or before `pos`.
pub(crate) async fn state_at_pos(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    pos: i64,
) -> Result<Arc<StateMap>> {
    let row: Option<(Option<i64>,)> = sqlx::query_as(
        "SELECT state_after FROM events WHERE room_id = $1 AND stream_pos <= $2 AND stream_pos IS NOT NULL
         ORDER BY stream_pos DESC LIMIT 1",
    )
    .bind(room_id)
    .bind(pos)
    .fetch_optional(&mut *conn)
    .await?;
    match row.and_then(|r| r.0) {
        Some(g) => state_store::load(&core.db, conn, g).await,
        None => Ok(Arc::new(StateMap::new())),
    }
}

fn timeline_limit(filter: &RoomEventFilter) -> i64 {
    filter.limit.map(|l| u64::from(l) as i64).unwrap_or(10).clamp(1, 500)
}

/// The timeline between `from_pos` (exclusive) and `to_pos` (inclusive): up to `limit` newest
/// events the user may see, oldest first, and whether older ones were left out.
async fn timeline_events(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    room_id: &str,
    from_pos: i64,
    to_pos: i64,
) -> Result<(Vec<StoredEvent>, bool)> {
    let limit = timeline_limit(&req.filter.room.timeline);
    let mut batch = timeline::page(
        conn,
        room_id,
        to_pos,
        Some(from_pos),
        timeline::Dir::Backward,
        limit + 1,
    )
    .await?;
    let limited = batch.len() as i64 > limit;
    batch.truncate(limit as usize);
    batch.reverse();
    let visible = visibility::filter_visible(core, conn, &req.user_id, room_id, batch).await?;
    Ok((
        visible
            .into_iter()
            .filter(|e| filter::event_matches(&req.filter.room.timeline, e))
            .collect(),
        limited,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn joined_room(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    m: &Membership,
    since: SyncToken,
    now: SyncToken,
    typing: Option<Vec<String>>,
    account_data: Vec<Value>,
    newly_joined: bool,
) -> Result<Value> {
    let initial = req.since.is_none();
    let (timeline, limited) = timeline_events(
        core,
        conn,
        req,
        &m.room_id,
        if initial { 0 } else { since.events },
        now.events,
    )
    .await?;
    let first_pos = timeline.first().and_then(|e| e.stream_pos);
    let prev_batch = timeline::token(first_pos.map(|p| p - 1).unwrap_or(now.events));

    // State at the start of the timeline.
    let start_state = match timeline.first() {
        Some(first) => match first.state_before {
            Some(g) => state_store::load(&core.db, conn, g).await?,
            None => Arc::new(StateMap::new()),
        },
        None => state_at_pos(core, conn, &m.room_id, now.events).await?,
    };
    let mut state_ids: Vec<String> = if initial || req.full_state || newly_joined {
        start_state.values().cloned().collect()
    } else if limited {
        let at_since = state_at_pos(core, conn, &m.room_id, since.events).await?;
        start_state
            .iter()
            .filter(|(k, v)| at_since.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        Vec::new()
    };
    let state_filter = &req.filter.room.state;
    if !state_filter.lazy_load_options.is_disabled() {
        let mut wanted: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        wanted.insert(&req.user_id);
        let members: HashSet<String> = start_state
            .iter()
            .filter(|((t, k), _)| t == "m.room.member" && wanted.contains(k.as_str()))
            .map(|(_, v)| v.clone())
            .collect();
        let all_members: HashSet<&String> = start_state
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .map(|(_, v)| v)
            .collect();
        state_ids.retain(|id| !all_members.contains(id) || members.contains(id));
        state_ids.extend(members.into_iter());
        state_ids.sort();
        state_ids.dedup();
    }
    let in_timeline: HashSet<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
    state_ids.retain(|id| !in_timeline.contains(id.as_str()));
    let mut state_events = events::get_many(conn, &state_ids).await?;
    state_events.retain(|e| filter::event_matches(state_filter, e));
    state_events.sort_by_key(|e| e.stream_pos);

    let viewer = Viewer {
        user_id: &req.user_id,
        device_id: Some(&req.device_id),
    };
    let timeline_json = client_format::format(core, conn, &timeline, Some(viewer)).await?;
    let state_json = client_format::format(core, conn, &state_events, Some(viewer)).await?;

    let mut ephemeral = Vec::new();
    if let Some(users) = typing {
        ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }
    let receipts = receipts::room_since(conn, &m.room_id, if initial { 0 } else { since.receipts }).await?;
    if let Some(content) = receipt_content(&receipts, &req.user_id) {
        ephemeral.push(json!({ "type": "m.receipt", "content": content }));
    }

    let by_thread = req.filter.room.timeline.unread_thread_notifications;
    let (counts, thread_counts) = crate::push::counts::unread(conn, &m.room_id, &req.user_id, by_thread).await?;
    let thread_counts: Map<String, Value> = thread_counts.into_iter().map(|(t, c)| (t, c.to_json())).collect();

    Ok(json!({
        "timeline": { "events": timeline_json, "limited": limited, "prev_batch": prev_batch },
        "state": { "events": state_json },
        "ephemeral": { "events": ephemeral },
        "account_data": { "events": account_data },
        "summary": summary(conn, &m.room_id, &req.user_id).await?,
        "unread_notifications": counts.to_json(),
        "unread_thread_notifications": thread_counts,
    }))
}

/// `m.receipt` content; private receipts only for their owner.
pub(crate) fn receipt_content(list: &[receipts::Receipt], user_id: &str) -> Option<Value> {
    let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in list {
        if r.receipt_type == "m.read.private" && r.user_id != user_id {
            continue;
        }
        let mut data = json!({ "ts": r.ts });
        if !r.thread_id.is_empty() {
            data["thread_id"] = json!(r.thread_id);
        }
        let by_type = content.entry(r.event_id.clone()).or_default();
        let users = by_type.entry(r.receipt_type.clone()).or_insert_with(|| json!({}));
        users[&r.user_id] = data;
    }
    (!content.is_empty()).then(|| json!(content))
}

pub(crate) async fn summary(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> Result<Value> {
    let joined = room_store::members(conn, room_id, "join").await?;
    let invited = room_store::members(conn, room_id, "invite").await?;
    let heroes: Vec<&str> = joined
        .iter()
        .chain(invited.iter())
        .map(|m| m.user_id.as_str())
        .filter(|u| *u != user_id)
        .take(5)
        .collect();
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined.len(),
        "m.invited_member_count": invited.len(),
    }))
}

/// Stripped state for invites and knocks: the room's identifying state plus the user's own
/// membership event.
pub(crate) async fn stripped_state(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    member_event: &str,
) -> Result<Vec<Value>> {
    let state = crate::rooms::current_state(core, conn, room_id).await?;
    let mut ids: Vec<String> = [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
        "m.room.topic",
    ]
    .iter()
    .filter_map(|t| state.get(&((*t).to_owned(), String::new())).cloned())
    .collect();
    ids.push(member_event.to_owned());
    let list = events::get_many(conn, &ids).await?;
    Ok(list
        .iter()
        .filter_map(|e| {
            let json: Value = serde_json::from_str(&e.json).ok()?;
            Some(json!({ "type": e.event_type, "state_key": e.state_key, "content": json["content"], "sender": e.sender }))
        })
        .collect())
}

async fn left_room(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    m: &Membership,
    since: SyncToken,
) -> Result<Value> {
    let (timeline, limited) = timeline_events(core, conn, req, &m.room_id, since.events, m.stream_pos).await?;
    let first_pos = timeline.first().and_then(|e| e.stream_pos);
    let viewer = Viewer {
        user_id: &req.user_id,
        device_id: Some(&req.device_id),
    };
    let timeline_json = client_format::format(core, conn, &timeline, Some(viewer)).await?;
    Ok(json!({
        "timeline": { "events": timeline_json, "limited": limited, "prev_batch": timeline::token(first_pos.map(|p| p - 1).unwrap_or(m.stream_pos)) },
        "state": { "events": [] },
        "account_data": { "events": [] },
    }))
}
