//! `/sync` (v3): what changed for a user between a token and now, per stream, with long-polling
//! that waits on the notifier rather than polling the database.

mod batch;
pub(crate) mod lazy;
pub mod legacy;
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
        rooms::Membership,
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
    // us, one that landed before is below the positions we read next. The rooms may come from
    // the user's last sync here if that was built at or after `since`: a membership change
    // after it moved the stream past `since` (so this sync answers without waiting).
    let since_events = req.since.map_or(0, |s| s.events);
    let rooms = match core.memos.sync_rooms.get(&req.user_id) {
        Some((built_at, rooms)) if built_at >= since_events => rooms.to_vec(),
        _ => {
            let mut conn = core.db.conn().await?;
            let memberships = user_memberships(&mut conn, &req.user_id).await?;
            memberships.into_iter().map(|m| m.room_id).collect()
        }
    };
    let mut interest = core.notifier.interest(&req.user_id, rooms);
    let deadline = tokio::time::Instant::now() + req.timeout;
    loop {
        let now = SyncToken::current(core).await?;
        // Nothing reached any stream since the token, so the answer would be empty: wait before
        // building it (otherwise every long-poll builds once on arrival and again on wake-up).
        let idle = req.since == Some(now) && !req.full_state;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if idle && !remaining.is_zero() && core.notifier.wait(&mut interest, remaining).await {
            continue;
        }
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

/// The user's memberships less the invites of users they ignore, which no sync shows.
pub(crate) async fn without_ignored_invites(
    conn: &mut AnyConnection,
    user_id: &str,
    mut memberships: Vec<Membership>,
) -> Result<Vec<Membership>> {
    let invites: Vec<String> = memberships
        .iter()
        .filter(|m| m.membership == "invite")
        .map(|m| m.event_id.clone())
        .collect();
    if invites.is_empty() {
        return Ok(memberships);
    }
    let ignored = crate::account_data::ignored_users(conn, user_id).await?;
    if ignored.is_empty() {
        return Ok(memberships);
    }
    let from_ignored: HashSet<String> = events::get_many(conn, &invites)
        .await?
        .into_iter()
        .filter(|e| ignored.contains(&e.sender))
        .map(|e| e.event_id)
        .collect();
    memberships.retain(|m| !from_ignored.contains(&m.event_id));
    Ok(memberships)
}

/// The timeline events a sync shows the user: those they may see (`currently_joined` as for
/// `visibility::filter_visible_many`), less the non-state events of users they ignore (their
/// state events still make up the room's state).
pub(crate) async fn shown_events(
    core: &Core,
    conn: &mut AnyConnection,
    user_id: &str,
    currently_joined: &HashMap<String, String>,
    candidates: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    if candidates.is_empty() {
        return Ok(candidates);
    }
    // A joined room's current state shows in its timeline even where history visibility hides
    // the moment it was sent (as Synapse does): the user sees that state anyway.
    let hidden_state: Vec<StoredEvent> = candidates
        .iter()
        .filter(|e| e.state_key.is_some() && currently_joined.contains_key(&e.room_id))
        .cloned()
        .collect();
    let order: HashMap<String, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id.clone(), i))
        .collect();
    let mut visible = visibility::filter_visible_many(core, conn, user_id, currently_joined, candidates).await?;
    let shown: HashSet<String> = visible.iter().map(|e| e.event_id.clone()).collect();
    let mut added = false;
    for event in hidden_state.into_iter().filter(|e| !shown.contains(&e.event_id)) {
        let key = event.state_key.as_deref().unwrap_or_default();
        let current = crate::storage::rooms::current_state_event(conn, &event.room_id, &event.event_type, key).await?;
        if current.as_deref() == Some(event.event_id.as_str()) {
            visible.push(event);
            added = true;
        }
    }
    if added {
        visible.sort_by_key(|e| order.get(&e.event_id).copied());
    }
    let ignored = crate::account_data::ignored_users(conn, user_id).await?;
    if !ignored.is_empty() {
        visible.retain(|e| e.state_key.is_some() || !ignored.contains(&e.sender));
    }
    Ok(visible)
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
    // Messages up to `since` were acknowledged on arrival; none are pending unless the
    // to-device stream moved.
    let to_device = match req.since {
        Some(since) if since.to_device == now.to_device => Vec::new(),
        _ => crate::e2ee::to_device::for_sync(core, &req.user_id, &req.device_id, now.to_device).await?,
    };
    let keys = crate::e2ee::keys::device_key_state(core, &req.user_id, &req.device_id).await?;

    let mut conn = core.db.conn().await?;
    let memberships = user_memberships(&mut conn, &req.user_id).await?;
    core.memos.sync_rooms.set(
        req.user_id.clone(),
        (
            now.events,
            Arc::new(memberships.iter().map(|m| m.room_id.clone()).collect()),
        ),
    );
    let memberships = without_ignored_invites(&mut conn, &req.user_id, memberships).await?;
    // A read whose stream has not moved past the token would find nothing: skipped.
    let changed_account_data = if since.account_data == now.account_data {
        Vec::new()
    } else {
        account_data::changed_since(&mut conn, &req.user_id, since.account_data).await?
    };
    let mut changes = if initial {
        RoomChanges::default()
    } else {
        RoomChanges::read(core, &mut conn, since, now).await?
    };
    // Only a membership event can make users start or stop sharing a room.
    let memberships_moved = changes.events.values().any(|has_member| *has_member);
    let device_lists = match &req.since {
        None => Default::default(),
        Some(since) => {
            crate::e2ee::device_lists::changes(&mut conn, &req.user_id, since, &now, memberships_moved).await?
        }
    };
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

    let (mut joined, mut invite, mut leave, mut knock) = (Vec::new(), Map::new(), Map::new(), Map::new());
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
                    || changes.events.contains_key(&m.room_id)
                    || changes.receipts.contains_key(&m.room_id)
                    || typing.is_some()
                    || room_account_data.contains_key(&m.room_id);
                if has_changes {
                    joined.push(JoinedPlan {
                        m,
                        typing,
                        account_data: room_account_data.remove(&m.room_id).unwrap_or_default(),
                        newly_joined: changed_membership,
                    });
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
    let mut lazy_sent = lazy::SentMembers::for_request(core, req);
    let join = joined_rooms(
        core,
        &mut conn,
        req,
        since,
        now,
        joined,
        &mut changes,
        lazy_sent.as_mut(),
    )
    .await?;
    if let Some(sent) = lazy_sent {
        sent.store(core, req, now);
    }

    Ok(json!({
        "next_batch": now.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence_events(&mut conn, req, since, now, memberships_moved).await? },
        "to_device": { "events": to_device },
        "device_lists": device_lists,
        "device_one_time_keys_count": keys.one_time_key_counts,
        "device_unused_fallback_key_types": keys.unused_fallback_key_types,
    }))
}

/// What changed in `(since, now]` across all rooms, read once per incremental sync.
#[derive(Default)]
struct RoomChanges {
    /// Rooms with new timeline events, each with whether a membership changed.
    events: HashMap<String, bool>,
    /// New receipts by room, in stream order.
    receipts: HashMap<String, Vec<receipts::Receipt>>,
}

impl RoomChanges {
    async fn read(core: &Core, conn: &mut AnyConnection, since: SyncToken, now: SyncToken) -> Result<RoomChanges> {
        let window = (since.events, now.events);
        let events = if since.events == now.events {
            HashMap::new()
        } else if let Some(rooms) = core.memos.rooms_with_events.get(&window) {
            // Every sync woken by the same event asks about the same window.
            (*rooms).clone()
        } else {
            let rooms = batch::rooms_with_events(conn, since.events, now.events).await?;
            core.memos.rooms_with_events.set(window, Arc::new(rooms.clone()));
            rooms
        };
        let mut by_room: HashMap<String, Vec<receipts::Receipt>> = HashMap::new();
        if since.receipts != now.receipts {
            for r in receipts::changed(conn, since.receipts, now.receipts).await? {
                by_room.entry(r.room_id.clone()).or_default().push(r);
            }
        }
        Ok(RoomChanges {
            events,
            receipts: by_room,
        })
    }
}

/// A joined room the response reports, with what was already found out about it.
struct JoinedPlan<'a> {
    m: &'a Membership,
    typing: Option<Vec<String>>,
    account_data: Vec<Value>,
    newly_joined: bool,
}

/// Presence of the user and of users sharing a room with them, changed since the token, and
/// on an incremental sync in which memberships moved, that of users newly sharing a room.
async fn presence_events(
    conn: &mut AnyConnection,
    req: &SyncRequest,
    since: SyncToken,
    now: SyncToken,
    memberships_moved: bool,
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
    let mut list = if since.presence == now.presence {
        Vec::new()
    } else {
        crate::presence::changes_for(conn, &req.user_id, since.presence, now.presence).await?
    };
    if req.since.is_some() && memberships_moved {
        let new_mates = crate::presence::of_new_room_mates(conn, &req.user_id, since.events, now.events).await?;
        let known: HashSet<String> = list.iter().map(|p| p.user_id.clone()).collect();
        list.extend(new_mates.into_iter().filter(|p| !known.contains(&p.user_id)));
    }
    Ok(list.iter().map(|p| p.to_event()).collect())
}

fn timeline_limit(filter: &RoomEventFilter) -> i64 {
    // A limit of 0 asks for no timeline events (state alone); the room still shows as limited.
    filter.limit.map(|l| u64::from(l) as i64).unwrap_or(10).clamp(0, 500)
}

/// A room's timeline in a sync: the events the user may see, oldest first, and whether older
/// ones in the range were left out.
#[derive(Default)]
struct Timeline {
    events: Vec<StoredEvent>,
    limited: bool,
}

impl Timeline {
    fn prev_batch(&self, default_pos: i64) -> String {
        let first_pos = self.events.first().and_then(|e| e.stream_pos);
        timeline::token(first_pos.map(|p| p - 1).unwrap_or(default_pos))
    }
}

/// The timelines between `from_pos` (exclusive) and `to_pos` (inclusive) of many rooms: up to
/// the filter's limit of newest events per room, kept when the user may see them and the
/// filter matches. `currently_joined` maps the rooms the user is joined to now to their join.
async fn timelines(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    room_ids: &[String],
    currently_joined: &HashMap<String, String>,
    from_pos: i64,
    to_pos: i64,
) -> Result<HashMap<String, Timeline>> {
    let limit = timeline_limit(&req.filter.room.timeline);
    let mut out: HashMap<String, Timeline> = HashMap::new();
    let mut candidates = Vec::new();
    for (room_id, mut batch) in latest_events(core, conn, room_ids, from_pos, to_pos, limit + 1).await? {
        let limited = batch.len() as i64 > limit;
        batch.truncate(limit as usize);
        batch.reverse();
        candidates.extend(batch);
        out.insert(
            room_id,
            Timeline {
                events: Vec::new(),
                limited,
            },
        );
    }
    let visible = shown_events(core, conn, &req.user_id, currently_joined, candidates).await?;
    for event in visible {
        if filter::event_matches(&req.filter.room.timeline, &event) {
            if let Some(t) = out.get_mut(&event.room_id) {
                t.events.push(event);
            }
        }
    }
    Ok(out)
}

/// `batch::latest_events` through the timeline memo for an incremental window (an initial
/// one is read afresh: no other sync shares it). Rooms without events in the window are left
/// out, as there.
async fn latest_events(
    core: &Core,
    conn: &mut AnyConnection,
    room_ids: &[String],
    from: i64,
    to: i64,
    limit: i64,
) -> Result<HashMap<String, Vec<StoredEvent>>> {
    if from == 0 {
        return batch::latest_events(conn, room_ids, from, to, limit).await;
    }
    let key = |room: &str| (room.to_owned(), from, to, limit);
    let mut out = HashMap::new();
    let mut misses = Vec::new();
    for room in room_ids {
        match core.memos.timelines.get(&key(room)) {
            Some(events) => {
                if !events.is_empty() {
                    out.insert(room.clone(), events.to_vec());
                }
            }
            None => misses.push(room.clone()),
        }
    }
    if misses.is_empty() {
        return Ok(out);
    }
    let mut read = batch::latest_events(conn, &misses, from, to, limit).await?;
    for room in misses {
        let events = read.remove(&room).unwrap_or_default();
        core.memos.timelines.set(key(&room), Arc::new(events.clone()));
        if !events.is_empty() {
            out.insert(room, events);
        }
    }
    Ok(out)
}

/// The joined rooms of the response, read for all of them at once: a fixed number of queries
/// whatever the number of rooms, and nothing read for a room beyond what its section needs.
async fn joined_rooms(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    since: SyncToken,
    now: SyncToken,
    plans: Vec<JoinedPlan<'_>>,
    changes: &mut RoomChanges,
    mut lazy_sent: Option<&mut lazy::SentMembers>,
) -> Result<Map<String, Value>> {
    if plans.is_empty() {
        return Ok(Map::new());
    }
    let initial = req.since.is_none();
    let room_ids: Vec<String> = plans.iter().map(|p| p.m.room_id.clone()).collect();
    let joined_set: HashMap<String, String> = plans
        .iter()
        .map(|p| (p.m.room_id.clone(), p.m.event_id.clone()))
        .collect();
    // On an incremental sync only rooms with new events have a timeline to read.
    let with_events: Vec<String> = if initial {
        room_ids.clone()
    } else {
        room_ids
            .iter()
            .filter(|r| changes.events.contains_key(*r))
            .cloned()
            .collect()
    };
    let from = if initial { 0 } else { since.events };
    let mut timelines = timelines(core, conn, req, &with_events, &joined_set, from, now.events).await?;

    let held = lazy_sent.as_deref();
    let mut state_ids = room_state_ids(core, conn, req, since, now, &plans, &timelines, held).await?;
    let all_ids: Vec<String> = state_ids.values().flatten().cloned().collect();
    let mut state_events: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for event in events::get_many(conn, &all_ids).await? {
        if filter::event_matches(&req.filter.room.state, &event) {
            state_events.entry(event.room_id.clone()).or_default().push(event);
        }
    }
    state_ids.clear();
    if let Some(sent) = lazy_sent.as_deref_mut() {
        for plan in &plans {
            let room_id = &plan.m.room_id;
            if initial || req.full_state || plan.newly_joined {
                sent.forget_room(room_id);
            }
            let timeline = timelines.get(room_id).map(|t| t.events.as_slice()).unwrap_or_default();
            let state = state_events.get(room_id).map(Vec::as_slice).unwrap_or_default();
            for event in timeline.iter().chain(state) {
                if let (true, Some(user)) = (event.event_type == "m.room.member", &event.state_key) {
                    sent.record(room_id, user, &event.event_id);
                }
            }
        }
    }

    // Every room's timeline and state formatted in one call, then split back.
    let mut to_format = Vec::new();
    let mut sections = Vec::with_capacity(plans.len());
    for plan in &plans {
        let timeline = timelines.remove(&plan.m.room_id).unwrap_or_default();
        let mut state = state_events.remove(&plan.m.room_id).unwrap_or_default();
        state.sort_by_key(|e| e.stream_pos);
        sections.push((
            timeline.events.len(),
            state.len(),
            timeline.limited,
            timeline.prev_batch(now.events),
        ));
        to_format.extend(timeline.events);
        to_format.extend(state);
    }
    let viewer = Viewer {
        user_id: &req.user_id,
        device_id: Some(&req.device_id),
    };
    // The syncs woken by one event share its relations; an initial sync shares nothing.
    let formatted = if initial {
        client_format::format(core, conn, &to_format, Some(viewer)).await?
    } else {
        client_format::format_at(core, conn, &to_format, Some(viewer), now.events).await?
    };
    let mut formatted = formatted.into_iter();
    drop(to_format);

    let mut room_receipts = if initial {
        let mut by_room: HashMap<String, Vec<receipts::Receipt>> = HashMap::new();
        for r in receipts::rooms_since(conn, &room_ids, 0, now.receipts).await? {
            by_room.entry(r.room_id.clone()).or_default().push(r);
        }
        by_room
    } else {
        std::mem::take(&mut changes.receipts)
    };
    let by_thread = req.filter.room.timeline.unread_thread_notifications;
    let mut counts = crate::push::counts::unread_many(conn, &room_ids, &req.user_id, by_thread).await?;
    // The summary only changes with memberships, so it is left out otherwise (the spec lets
    // a server omit unchanged summary fields).
    let summary_rooms: Vec<String> = plans
        .iter()
        .filter(|p| initial || req.full_state || p.newly_joined || changes.events.get(&p.m.room_id) == Some(&true))
        .map(|p| p.m.room_id.clone())
        .collect();
    let mut summaries = batch::summaries(conn, &summary_rooms, &req.user_id).await?;

    let mut join = Map::new();
    for (plan, (n_timeline, n_state, limited, prev_batch)) in plans.into_iter().zip(sections) {
        let room_id = &plan.m.room_id;
        let timeline_json: Vec<Value> = formatted.by_ref().take(n_timeline).collect();
        let state_json: Vec<Value> = formatted.by_ref().take(n_state).collect();
        let mut ephemeral = Vec::new();
        if let Some(users) = plan.typing {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        let receipts = room_receipts.remove(room_id).unwrap_or_default();
        if let Some(content) = receipt_content(&receipts, &req.user_id) {
            ephemeral.push(json!({ "type": "m.receipt", "content": content }));
        }
        // An incremental sync leaves out a room whose changes the filter all left out.
        let nothing = timeline_json.is_empty() && state_json.is_empty() && ephemeral.is_empty();
        if nothing && plan.account_data.is_empty() && !initial && !req.full_state && !plan.newly_joined {
            continue;
        }
        let (room_counts, thread_counts) = counts.remove(room_id).unwrap_or_default();
        let thread_counts: Map<String, Value> = thread_counts.into_iter().map(|(t, c)| (t, c.to_json())).collect();
        join.insert(
            room_id.clone(),
            json!({
                "timeline": { "events": timeline_json, "limited": limited, "prev_batch": prev_batch },
                "state": { "events": state_json },
                "ephemeral": { "events": ephemeral },
                "account_data": { "events": plan.account_data },
                "summary": summaries.remove(room_id).unwrap_or_else(|| json!({})),
                "unread_notifications": room_counts.to_json(),
                "unread_thread_notifications": thread_counts,
            }),
        );
    }
    Ok(join)
}

/// The IDs of the state events each room's state section carries (not yet filtered by type):
/// the full state at the start of the timeline on an initial, full-state or first sync of a
/// room, what changed across a gap on a limited one, plus the members of the timeline's
/// senders when members are lazy-loaded (less, on an incremental sync, those the device
/// holds when `held` says). Rooms that need no state read none.
#[allow(clippy::too_many_arguments)]
async fn room_state_ids(
    core: &Core,
    conn: &mut AnyConnection,
    req: &SyncRequest,
    since: SyncToken,
    now: SyncToken,
    plans: &[JoinedPlan<'_>],
    timelines: &HashMap<String, Timeline>,
    held: Option<&lazy::SentMembers>,
) -> Result<HashMap<String, Vec<String>>> {
    let initial = req.since.is_none();
    let lazy = !req.filter.room.state.lazy_load_options.is_disabled();
    let empty = Timeline::default();
    let timeline_of = |room_id: &str| timelines.get(room_id).unwrap_or(&empty);
    let full = |p: &JoinedPlan| initial || req.full_state || p.newly_joined;
    let gap = |p: &JoinedPlan| !full(p) && timeline_of(&p.m.room_id).limited;
    let needed: Vec<&JoinedPlan> = plans.iter().filter(|p| full(p) || gap(p) || lazy).collect();

    // State at the start of the timeline; for an empty timeline, at `now`.
    let without_timeline: Vec<String> = needed
        .iter()
        .filter(|p| timeline_of(&p.m.room_id).events.is_empty())
        .map(|p| p.m.room_id.clone())
        .collect();
    let groups_at_now = batch::state_groups_at(conn, &without_timeline, now.events).await?;
    let gap_rooms: Vec<String> = needed.iter().filter(|p| gap(p)).map(|p| p.m.room_id.clone()).collect();
    let groups_at_since = batch::state_groups_at(conn, &gap_rooms, since.events).await?;

    let mut out = HashMap::new();
    for plan in needed {
        let room_id = &plan.m.room_id;
        let timeline = timeline_of(room_id);
        let start_group = match timeline.events.first() {
            Some(first) => first.state_before,
            None => groups_at_now.get(room_id).copied(),
        };
        let start_state = state_store::load_or_empty(&core.db, conn, start_group).await?;
        let mut ids: Vec<String> = if full(plan) {
            start_state.values().cloned().collect()
        } else if gap(plan) {
            let at_since = state_store::load_or_empty(&core.db, conn, groups_at_since.get(room_id).copied()).await?;
            start_state
                .iter()
                .filter(|(k, v)| at_since.get(*k) != Some(*v))
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            Vec::new()
        };
        if lazy {
            // The user's own membership comes with the room's full state; otherwise only when
            // they sent something, as for anyone.
            let own = full(plan).then_some(req.user_id.as_str());
            lazy_members(&mut ids, &start_state, &timeline.events, own, full(plan));
            if let (Some(held), false) = (held, full(plan)) {
                let held_members: HashSet<&String> = start_state
                    .iter()
                    .filter(|((t, user), id)| t == "m.room.member" && held.holds(room_id, user, id))
                    .map(|(_, id)| id)
                    .collect();
                ids.retain(|id| !held_members.contains(id));
            }
        }
        let in_timeline: HashSet<&str> = timeline.events.iter().map(|e| e.event_id.as_str()).collect();
        ids.retain(|id| !in_timeline.contains(id.as_str()));
        out.insert(room_id.clone(), ids);
    }
    Ok(out)
}

/// With lazy-loaded members, the state carries the member events of the timeline's senders
/// and of `own` user, whether or not they changed; of a room's full state, no other member
/// events (a gap's changes keep theirs: the client holds no earlier version of them).
fn lazy_members(
    ids: &mut Vec<String>,
    start_state: &StateMap,
    timeline: &[StoredEvent],
    own: Option<&str>,
    full: bool,
) {
    let mut wanted: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
    wanted.extend(own);
    let members: HashSet<String> = start_state
        .iter()
        .filter(|((t, k), _)| t == "m.room.member" && wanted.contains(k.as_str()))
        .map(|(_, v)| v.clone())
        .collect();
    if full {
        let all_members: HashSet<&String> = start_state
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .map(|(_, v)| v)
            .collect();
        ids.retain(|id| !all_members.contains(id) || members.contains(id));
    }
    ids.extend(members);
    ids.sort();
    ids.dedup();
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

/// Stripped state for invites and knocks: the room's identifying state plus the user's own
/// membership event.
pub(crate) async fn stripped_state(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    member_event: &str,
) -> Result<Vec<Value>> {
    let strip = |json: &Value| json!({ "type": json["type"], "state_key": json["state_key"], "content": json["content"], "sender": json["sender"] });
    // An invite from another server to a room this server is not in carries the room's
    // stripped state as its server sent it (see rooms::out_of_band).
    if let Some(member) = events::get(conn, member_event).await? {
        let json: Value = serde_json::from_str(&member.json).unwrap_or_default();
        if let Some(sent) = json["unsigned"]["invite_room_state"].as_array() {
            let mut list: Vec<Value> = sent
                .iter()
                .filter(|e| e["type"].is_string() && e["state_key"].is_string())
                .map(strip)
                .collect();
            list.push(strip(&json));
            return Ok(list);
        }
    }
    let state = crate::rooms::current_state(core, conn, room_id).await?;
    let mut ids: Vec<String> = crate::rooms::membership::INVITE_STATE_TYPES
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
    let room_ids = [m.room_id.clone()];
    let mut timelines = timelines(core, conn, req, &room_ids, &HashMap::new(), since.events, m.stream_pos).await?;
    let timeline = timelines.remove(&m.room_id).unwrap_or_default();
    let viewer = Viewer {
        user_id: &req.user_id,
        device_id: Some(&req.device_id),
    };
    let timeline_json = client_format::format(core, conn, &timeline.events, Some(viewer)).await?;
    Ok(json!({
        "timeline": { "events": timeline_json, "limited": timeline.limited, "prev_batch": timeline.prev_batch(m.stream_pos) },
        "state": { "events": [] },
        "account_data": { "events": [] },
    }))
}
