//! Simplified sliding sync (MSC4186), what Element X uses: room lists sorted by recent
//! activity with ranges and filters, room subscriptions, required state, and extensions
//! (to_device, e2ee, account_data, receipts, typing). It reads the same streams as `/sync`.
//!
//! A connection (user, device, `conn_id`) remembers, per room, the position up to which the
//! client has been sent data, so each response carries only what is new. Connections live in
//! memory; a `pos` the server does not know (e.g. after a restart) is answered with
//! `M_UNKNOWN_POS`, on which clients start a fresh connection.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use futures::{future::BoxFuture, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use super::{receipt_content, state_at_pos, stripped_state, summary, user_memberships, SyncToken};
use crate::{
    ephemeral::receipts,
    rooms::{
        client_format::{self, Viewer},
        timeline, visibility,
    },
    storage::{
        account_data,
        events::{self, StoredEvent},
        rooms::Membership,
    },
    Core, Error, Result,
};

#[derive(Debug, Default, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub lists: BTreeMap<String, ListConfig>,
    #[serde(default)]
    pub room_subscriptions: BTreeMap<String, RoomConfig>,
    #[serde(default)]
    pub extensions: Extensions,
}

#[derive(Debug, Default, Deserialize, Clone)]
pub struct RoomConfig {
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    #[serde(default)]
    pub timeline_limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListConfig {
    #[serde(default)]
    pub ranges: Vec<(u64, u64)>,
    #[serde(flatten)]
    pub room: RoomConfig,
    #[serde(default)]
    pub filters: ListFilters,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListFilters {
    pub is_dm: Option<bool>,
    pub is_invite: Option<bool>,
    #[serde(default)]
    pub room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    pub not_room_types: Vec<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Toggle {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// For `to_device`: the `next_batch` the client last received, acknowledging it.
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Extensions {
    #[serde(default)]
    pub to_device: Toggle,
    #[serde(default)]
    pub e2ee: Toggle,
    #[serde(default)]
    pub account_data: Toggle,
    #[serde(default)]
    pub receipts: Toggle,
    #[serde(default)]
    pub typing: Toggle,
}

impl Toggle {
    fn on(&self) -> bool {
        self.enabled == Some(true)
    }
}

/// What one connection has been sent: per room the events position it has seen, and for each
/// recent response its id (the `pos` handed out), its token and the rooms map as of it.
#[derive(Default, Clone)]
struct Connection {
    tokens: Vec<(u64, SyncToken, HashMap<String, i64>)>,
    rooms: HashMap<String, i64>,
    next_id: u64,
}

#[derive(Default)]
pub struct Connections {
    map: Mutex<HashMap<(String, String, String), Connection>>,
}

/// Events that move a room up the list (MSC4186's bump event types).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

pub struct Session<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub conn_id: &'a str,
    pub pos: Option<&'a str>,
    pub timeout: Duration,
}

pub async fn sync(core: &Core, connections: &Connections, session: Session<'_>, req: &Request) -> Result<Value> {
    let key = (
        session.user_id.to_owned(),
        session.device_id.to_owned(),
        session.conn_id.to_owned(),
    );
    let (conn_state, since) = {
        let map = connections.map.lock().unwrap_or_else(|e| e.into_inner());
        match session.pos {
            None => (Connection::default(), None),
            Some(pos) => {
                let id: u64 = pos.parse().map_err(|_| Error::UnknownPos)?;
                let mut state = map.get(&key).ok_or(Error::UnknownPos)?.clone();
                let (token, rooms) = state
                    .tokens
                    .iter()
                    .find(|(i, _, _)| *i == id)
                    .map(|(_, t, r)| (*t, r.clone()))
                    .ok_or(Error::UnknownPos)?;
                // A client that retries an older pos (it cancelled the request, or lost the
                // response) gets the rooms state as of that response: what later responses
                // carried is sent again.
                state.rooms = rooms;
                (state, Some(token))
            }
        }
    };

    let mut db_conn = core.db.conn().await?;
    let memberships = user_memberships(&mut db_conn, session.user_id).await?;
    drop(db_conn);
    let mut interest = core
        .notifier
        .interest(session.user_id, memberships.iter().map(|m| m.room_id.clone()).collect());
    let deadline = tokio::time::Instant::now() + session.timeout;
    loop {
        let now = SyncToken::current(core).await?;
        let mut attempt = conn_state.clone();
        let mut response = build(core, &session, req, &mut attempt, since, now).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Wake-ups for changes outside the requested windows give empty answers: keep waiting.
        if since.is_none()
            || !is_empty(&response)
            || remaining.is_zero()
            || !core.notifier.wait(&mut interest, remaining).await
        {
            remember(connections, key, attempt, now, &mut response);
            return Ok(response);
        }
    }
}

fn remember(
    connections: &Connections,
    key: (String, String, String),
    state: Connection,
    now: SyncToken,
    response: &mut Value,
) {
    let mut map = connections.map.lock().unwrap_or_else(|e| e.into_inner());
    // Ids and positions come from the stored connection, not from the copy this request
    // started with: a cancelled request can still be answering while its retry is, and each
    // response must get its own id.
    let stored = map.entry(key).or_default();
    stored.next_id += 1;
    let id = stored.next_id;
    stored.tokens.push((id, now, state.rooms.clone()));
    // Keep a few recent positions so a retried request still works.
    if stored.tokens.len() > 4 {
        stored.tokens.remove(0);
    }
    stored.rooms = state.rooms;
    response["pos"] = json!(id.to_string());
}

fn is_empty(response: &Value) -> bool {
    let none = |v: &Value| match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    };
    let ext = &response["extensions"];
    // One-time key counts are always present; they alone are no reason to answer.
    none(&response["rooms"])
        && none(&ext["to_device"]["events"])
        && none(&ext["e2ee"]["device_lists"]["changed"])
        && none(&ext["e2ee"]["device_lists"]["left"])
        && none(&ext["account_data"]["global"])
        && none(&ext["account_data"]["rooms"])
        && none(&ext["receipts"]["rooms"])
        && none(&ext["typing"]["rooms"])
}

/// Direct-message rooms, from the user's `m.direct` account data.
async fn dm_rooms(conn: &mut AnyConnection, user_id: &str) -> Result<HashSet<String>> {
    let content = account_data::get(conn, user_id, "", "m.direct").await?;
    let value: Value = content.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
    Ok(value
        .as_object()
        .map(|o| {
            o.values()
                .flat_map(|rooms| rooms.as_array().cloned().unwrap_or_default())
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Per room: `(bump stamp, latest position)` up to `up_to`, for all rooms in one query each
/// 200 rooms. The bump stamp counts only the bump event types; the latest position any event.
async fn positions(conn: &mut AnyConnection, rooms: &[String], up_to: i64) -> Result<HashMap<String, (i64, i64)>> {
    let mut out = HashMap::new();
    for chunk in rooms.chunks(200) {
        let room_ph: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let type_ph: Vec<String> = (0..BUMP_TYPES.len())
            .map(|i| format!("${}", i + 2 + chunk.len()))
            .collect();
        let sql = format!(
            "SELECT room_id, MAX(CASE WHEN event_type IN ({}) THEN stream_pos END), MAX(stream_pos) FROM events
             WHERE stream_pos <= $1 AND room_id IN ({}) GROUP BY room_id",
            type_ph.join(","),
            room_ph.join(",")
        );
        let mut q = sqlx::query_as::<_, (String, Option<i64>, Option<i64>)>(&sql)
            .persistent(false)
            .bind(up_to);
        for r in chunk {
            q = q.bind(r);
        }
        for t in BUMP_TYPES {
            q = q.bind(*t);
        }
        for (room, bump, latest) in q.fetch_all(&mut *conn).await? {
            out.insert(room, (bump.unwrap_or(0), latest.unwrap_or(0)));
        }
    }
    Ok(out)
}

async fn room_type(conn: &mut AnyConnection, room_id: &str) -> Result<Option<String>> {
    let create = crate::rooms::current_state_content(conn, room_id, "m.room.create", "").await?;
    Ok(create.and_then(|c| c["type"].as_str().map(str::to_owned)))
}

/// Rooms of one response read at the same time (each holds one pooled connection).
const ROOMS_IN_PARALLEL: usize = 4;

async fn build(
    core: &Core,
    session: &Session<'_>,
    req: &Request,
    conn_state: &mut Connection,
    since: Option<SyncToken>,
    now: SyncToken,
) -> Result<Value> {
    let mut conn = core.db.conn().await?;
    let memberships: Vec<Membership> = user_memberships(&mut conn, session.user_id)
        .await?
        .into_iter()
        .filter(|m| matches!(m.membership.as_str(), "join" | "invite" | "knock") && m.stream_pos <= now.events)
        .collect();
    let room_ids: Vec<String> = memberships.iter().map(|m| m.room_id.clone()).collect();
    let positions = positions(&mut conn, &room_ids, now.events).await?;
    let stamps: HashMap<String, i64> = positions
        .iter()
        .filter(|(_, (b, _))| *b > 0)
        .map(|(r, (b, _))| (r.clone(), *b))
        .collect();
    let dms = dm_rooms(&mut conn, session.user_id).await?;
    let by_room: HashMap<&str, &Membership> = memberships.iter().map(|m| (m.room_id.as_str(), m)).collect();

    // Sort by bump stamp (latest first), then room ID for stability.
    let mut sorted: Vec<&Membership> = memberships.iter().collect();
    sorted.sort_by(|a, b| {
        let (sa, sb) = (
            stamps.get(&a.room_id).copied().unwrap_or(a.stream_pos),
            stamps.get(&b.room_id).copied().unwrap_or(b.stream_pos),
        );
        sb.cmp(&sa).then_with(|| a.room_id.cmp(&b.room_id))
    });

    // Which rooms are wanted, with the widest config asked for them.
    let mut wanted: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut lists_json = Map::new();
    for (name, list) in &req.lists {
        let mut members = Vec::new();
        for m in &sorted {
            let f = &list.filters;
            if f.is_dm.is_some_and(|want| want != dms.contains(&m.room_id)) {
                continue;
            }
            if f.is_invite.is_some_and(|want| want != (m.membership == "invite")) {
                continue;
            }
            if f.room_types.is_some() || !f.not_room_types.is_empty() {
                let t = room_type(&mut conn, &m.room_id).await?;
                if f.room_types.as_ref().is_some_and(|types| !types.contains(&t)) || f.not_room_types.contains(&t) {
                    continue;
                }
            }
            members.push(m.room_id.clone());
        }
        lists_json.insert(name.clone(), json!({ "count": members.len() }));
        for (start, end) in &list.ranges {
            for room in members
                .iter()
                .skip(*start as usize)
                .take((end.saturating_sub(*start) + 1) as usize)
            {
                merge_config(wanted.entry(room.clone()).or_default(), &list.room);
            }
        }
    }
    for (room, config) in &req.room_subscriptions {
        if by_room.contains_key(room.as_str()) {
            merge_config(wanted.entry(room.clone()).or_default(), config);
        }
    }

    // What follows takes connections of its own; never hold one while it does.
    drop(conn);

    // Rooms are read a few at a time, each on its own pooled connection: a room costs several
    // round trips, which overlap instead of adding up (most on PostgreSQL).
    let mut jobs: Vec<BoxFuture<'_, Result<(String, Value)>>> = Vec::new();
    for (room_id, config) in &wanted {
        let m = by_room[room_id.as_str()];
        let seen = conn_state.rooms.get(room_id).copied();
        let latest = positions.get(room_id).map(|(_, latest)| *latest).unwrap_or(0);
        if seen.is_some_and(|s| s >= latest) && !(m.stream_pos > since.map(|s| s.events).unwrap_or(0)) {
            continue;
        }
        let (stamp, is_dm) = (stamps.get(room_id).copied(), dms.contains(room_id));
        jobs.push(Box::pin(async move {
            let mut conn = core.db.conn().await?;
            let room = room_data(core, &mut conn, session, room_id, m, config, seen, now, stamp, is_dm).await?;
            Ok((room_id.clone(), room))
        }));
    }
    let rooms: Vec<(String, Value)> = futures::stream::iter(jobs)
        .buffered(ROOMS_IN_PARALLEL)
        .try_collect()
        .await?;
    let mut rooms_json = Map::new();
    for (room_id, room) in rooms {
        conn_state.rooms.insert(room_id.clone(), now.events);
        rooms_json.insert(room_id, room);
    }

    let extensions = extensions(core, session, req, &wanted, since, now).await?;
    Ok(json!({ "pos": "", "lists": lists_json, "rooms": rooms_json, "extensions": extensions }))
}

fn merge_config(into: &mut RoomConfig, from: &RoomConfig) {
    into.timeline_limit = match (into.timeline_limit, from.timeline_limit) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for entry in &from.required_state {
        if !into.required_state.contains(entry) {
            into.required_state.push(entry.clone());
        }
    }
}

/// Whether a state key matches a required_state entry (`*`, `$ME`, `$LAZY` handled by the caller).
fn required(
    config: &RoomConfig,
    event_type: &str,
    state_key: &str,
    user_id: &str,
    lazy_senders: &HashSet<&str>,
) -> bool {
    config.required_state.iter().any(|(t, k)| {
        (t == "*" || t == event_type)
            && (k == "*"
                || k == state_key
                || (k == "$ME" && state_key == user_id)
                || (k == "$LAZY" && event_type == "m.room.member" && lazy_senders.contains(state_key)))
    })
}

#[allow(clippy::too_many_arguments)]
async fn room_data(
    core: &Core,
    conn: &mut AnyConnection,
    session: &Session<'_>,
    room_id: &str,
    m: &Membership,
    config: &RoomConfig,
    seen: Option<i64>,
    now: SyncToken,
    bump_stamp: Option<i64>,
    is_dm: bool,
) -> Result<Value> {
    let viewer = Viewer {
        user_id: session.user_id,
        device_id: Some(session.device_id),
    };
    let mut room = json!({ "bump_stamp": bump_stamp.unwrap_or(m.stream_pos) });
    if seen.is_none() {
        room["initial"] = json!(true);
    }
    if is_dm {
        room["is_dm"] = json!(true);
    }
    if m.membership != "join" {
        let stripped = stripped_state(core, conn, room_id, &m.event_id).await?;
        room[if m.membership == "invite" {
            "invite_state"
        } else {
            "knock_state"
        }] = json!(stripped);
        return Ok(room);
    }

    let limit = config.timeline_limit.unwrap_or(0).clamp(0, 100);
    let from = seen.unwrap_or(0);
    let mut batch = timeline::page(
        conn,
        room_id,
        now.events,
        Some(from),
        timeline::Dir::Backward,
        limit + 1,
    )
    .await?;
    let limited = batch.len() as i64 > limit;
    batch.truncate(limit as usize);
    batch.reverse();
    let timeline_events: Vec<StoredEvent> =
        visibility::filter_visible(core, conn, session.user_id, room_id, batch).await?;
    let num_live = seen.map(|s| {
        timeline_events
            .iter()
            .filter(|e| e.stream_pos.is_some_and(|p| p > s))
            .count()
    });

    let current = state_at_pos(core, conn, room_id, now.events).await?;
    let lazy: HashSet<&str> = timeline_events.iter().map(|e| e.sender.as_str()).collect();
    let state_ids: HashSet<String> = current
        .iter()
        .filter(|((t, k), _)| required(config, t, k, session.user_id, &lazy))
        .map(|(_, id)| id.clone())
        .collect();
    let summary = summary(conn, room_id, session.user_id).await?;
    let heroes: Vec<String> = summary["m.heroes"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    // The required state, the name, the avatar and the heroes' member events in one read.
    let key = |t: &str, k: &str| current.get(&(t.to_owned(), k.to_owned())).cloned();
    let (name_id, avatar_id) = (key("m.room.name", ""), key("m.room.avatar", ""));
    let mut wanted_ids: Vec<String> = state_ids.iter().cloned().collect();
    wanted_ids.extend(name_id.iter().chain(avatar_id.iter()).cloned());
    wanted_ids.extend(heroes.iter().filter_map(|h| key("m.room.member", h)));
    wanted_ids.sort();
    wanted_ids.dedup();
    let fetched = events::get_many(conn, &wanted_ids).await?;
    let content_of = |id: &Option<String>| -> Value {
        id.as_ref()
            .and_then(|id| fetched.iter().find(|e| &e.event_id == id))
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .map(|j| j["content"].clone())
            .unwrap_or_default()
    };
    let name = content_of(&name_id)["name"].as_str().map(str::to_owned);
    let avatar = content_of(&avatar_id)["url"].as_str().map(str::to_owned);
    let hero_contents: Vec<(String, Value)> = heroes
        .iter()
        .map(|h| (h.clone(), content_of(&key("m.room.member", h))))
        .collect();
    let mut state_events: Vec<StoredEvent> = fetched
        .iter()
        .filter(|e| state_ids.contains(&e.event_id))
        .cloned()
        .collect();
    if let Some(seen) = seen {
        // Only state that changed since the client last saw the room.
        state_events.retain(|e| {
            e.stream_pos.is_some_and(|p| p > seen)
                || e.event_type == "m.room.member" && lazy.contains(e.state_key.as_deref().unwrap_or(""))
        });
    }
    state_events.sort_by_key(|e| e.stream_pos);

    if let Some(name) = name {
        room["name"] = json!(name);
    } else {
        let mut heroes = Vec::new();
        for (user, member) in hero_contents {
            let mut h = json!({ "user_id": user });
            if let Some(n) = member["displayname"].as_str() {
                h["displayname"] = json!(n);
            }
            if let Some(a) = member["avatar_url"].as_str() {
                h["avatar_url"] = json!(a);
            }
            heroes.push(h);
        }
        room["heroes"] = json!(heroes);
    }
    if let Some(avatar) = avatar {
        room["avatar"] = json!(avatar);
    }
    room["joined_count"] = summary["m.joined_member_count"].clone();
    room["invited_count"] = summary["m.invited_member_count"].clone();
    room["required_state"] = json!(client_format::format(core, conn, &state_events, Some(viewer)).await?);
    room["timeline"] = json!(client_format::format(core, conn, &timeline_events, Some(viewer)).await?);
    room["limited"] = json!(limited);
    if let Some(first) = timeline_events.first().and_then(|e| e.stream_pos) {
        room["prev_batch"] = json!(timeline::token(first - 1));
    }
    if let Some(n) = num_live {
        room["num_live"] = json!(n);
    }
    let (counts, _) = crate::push::counts::unread(conn, room_id, session.user_id, false).await?;
    room["notification_count"] = json!(counts.notifications);
    room["highlight_count"] = json!(counts.highlights);
    Ok(room)
}

async fn extensions(
    core: &Core,
    session: &Session<'_>,
    req: &Request,
    rooms: &BTreeMap<String, RoomConfig>,
    since: Option<SyncToken>,
    now: SyncToken,
) -> Result<Value> {
    let since_token = since.unwrap_or_default();
    let mut ext = Map::new();
    if req.extensions.to_device.on() {
        // The extension has its own token: messages up to it were received and can go.
        if let Some(acked) = req
            .extensions
            .to_device
            .since
            .as_deref()
            .and_then(|s| s.parse::<i64>().ok())
        {
            crate::e2ee::to_device::acknowledge(core, session.user_id, session.device_id, acked).await?;
        }
        let events = crate::e2ee::to_device::for_sync(core, session.user_id, session.device_id, now.to_device).await?;
        ext.insert(
            "to_device".into(),
            json!({ "next_batch": now.to_device.to_string(), "events": events }),
        );
    }
    if req.extensions.e2ee.on() {
        let keys = crate::e2ee::keys::device_key_state(core, session.user_id, session.device_id).await?;
        ext.insert(
            "e2ee".into(),
            json!({
                "device_lists": crate::e2ee::device_lists::for_sync(core, session.user_id, since.as_ref(), &now).await?,
                "device_one_time_keys_count": keys.one_time_key_counts,
                "device_unused_fallback_key_types": keys.unused_fallback_key_types,
            }),
        );
    }
    let mut conn = core.db.conn().await?;
    let conn = &mut *conn;
    if req.extensions.account_data.on() {
        let mut global = Vec::new();
        let mut per_room: Map<String, Value> = Map::new();
        for (room_id, data_type, content) in
            account_data::changed_since(conn, session.user_id, since_token.account_data).await?
        {
            let event =
                json!({ "type": data_type, "content": serde_json::from_str::<Value>(&content).unwrap_or_default() });
            if room_id.is_empty() {
                global.push(event);
            } else if rooms.contains_key(&room_id) {
                per_room
                    .entry(room_id)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .map(|a| a.push(event));
            }
        }
        ext.insert("account_data".into(), json!({ "global": global, "rooms": per_room }));
    }
    if req.extensions.receipts.on() {
        let mut per_room = Map::new();
        for room_id in rooms.keys() {
            let list = receipts::room_since(conn, room_id, since_token.receipts).await?;
            if let Some(content) = receipt_content(&list, session.user_id) {
                per_room.insert(room_id.clone(), json!({ "type": "m.receipt", "content": content }));
            }
        }
        ext.insert("receipts".into(), json!({ "rooms": per_room }));
    }
    if req.extensions.typing.on() {
        let mut per_room = Map::new();
        for room_id in rooms.keys() {
            if let Some(users) = core
                .typing
                .changed_since(room_id, if since.is_some() { since_token.typing } else { 0 })
            {
                per_room.insert(
                    room_id.clone(),
                    json!({ "type": "m.typing", "content": { "user_ids": users } }),
                );
            }
        }
        ext.insert("typing".into(), json!({ "rooms": per_room }));
    }
    Ok(Value::Object(ext))
}
