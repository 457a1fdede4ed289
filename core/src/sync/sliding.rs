//! Simplified sliding sync (MSC4186), what Element X uses: room lists sorted by recent
//! activity with ranges and filters, room subscriptions, required state, and extensions
//! (to_device, e2ee, account_data, receipts, typing). It reads the same streams as `/sync`.
//!
//! A connection (user, device, `conn_id`) remembers, per room, the position up to which the
//! client has been sent data, so each response carries only what is new. Connections live in
//! memory, each process with its own; a `pos` the process does not know (another process
//! handed it out, or this one before a restart) is answered with `M_UNKNOWN_POS`, on which
//! clients start a fresh connection.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use super::{receipt_content, shown_events, stripped_state, user_memberships, without_ignored_invites, SyncToken};
use crate::{
    ephemeral::receipts,
    rooms::{
        client_format::{self, Viewer},
        timeline,
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

pub struct Connections {
    /// Begins every `pos` handed out here. A `pos` from another process (or from an earlier
    /// run of this one) names what that process sent, unknown here: it must be answered with
    /// `M_UNKNOWN_POS`, not taken for the `pos` with the same number here.
    issuer: String,
    map: Mutex<HashMap<(String, String, String), Connection>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            issuer: crate::util::random_string(8),
            map: Mutex::default(),
        }
    }
}

impl Connections {
    fn pos(&self, id: u64) -> String {
        format!("{}.{id}", self.issuer)
    }

    /// The id of a `pos` this process handed out.
    fn id(&self, pos: &str) -> Result<u64> {
        pos.strip_prefix(self.issuer.as_str())
            .and_then(|id| id.strip_prefix('.'))
            .and_then(|id| id.parse().ok())
            .ok_or(Error::UnknownPos)
    }
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
                let id = connections.id(pos)?;
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
    response["pos"] = json!(connections.pos(id));
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
            .persistent(crate::storage::keep_prepared(chunk.len()))
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
    let memberships = without_ignored_invites(&mut conn, session.user_id, memberships).await?;
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

    let mut jobs = Vec::new();
    for (room_id, config) in &wanted {
        let m = by_room[room_id.as_str()];
        let seen = conn_state.rooms.get(room_id).copied();
        let latest = positions.get(room_id).map(|(_, latest)| *latest).unwrap_or(0);
        if seen.is_some_and(|s| s >= latest) && !(m.stream_pos > since.map(|s| s.events).unwrap_or(0)) {
            continue;
        }
        jobs.push(RoomJob {
            room_id,
            m,
            config,
            seen,
            bump_stamp: stamps.get(room_id).copied(),
            is_dm: dms.contains(room_id),
        });
    }
    let rooms = {
        let mut conn = core.db.conn().await?;
        rooms_data(core, &mut conn, session, &jobs, now).await?
    };
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

/// A room the response carries, with what the list pass found out about it.
struct RoomJob<'a> {
    room_id: &'a str,
    m: &'a Membership,
    config: &'a RoomConfig,
    /// Up to where the connection has seen the room (`None`: never).
    seen: Option<i64>,
    bump_stamp: Option<i64>,
    is_dm: bool,
}

/// The rooms of a response, read for all of them at once as `/sync` v3 does: a fixed number
/// of queries whatever the number of rooms (timelines per distinct starting point and limit).
async fn rooms_data(
    core: &Core,
    conn: &mut AnyConnection,
    session: &Session<'_>,
    jobs: &[RoomJob<'_>],
    now: SyncToken,
) -> Result<Vec<(String, Value)>> {
    let viewer = Viewer {
        user_id: session.user_id,
        device_id: Some(session.device_id),
    };
    let mut out = Vec::with_capacity(jobs.len());
    let mut joined = Vec::new();
    for job in jobs {
        let mut room = json!({ "bump_stamp": job.bump_stamp.unwrap_or(job.m.stream_pos) });
        if job.seen.is_none() {
            room["initial"] = json!(true);
        }
        if job.is_dm {
            room["is_dm"] = json!(true);
        }
        if job.m.membership == "join" {
            joined.push((job, room));
        } else {
            let stripped = stripped_state(core, conn, job.room_id, &job.m.event_id).await?;
            let key = if job.m.membership == "invite" {
                "invite_state"
            } else {
                "knock_state"
            };
            room[key] = json!(stripped);
            out.push((job.room_id.to_owned(), room));
        }
    }
    if joined.is_empty() {
        return Ok(out);
    }
    let room_ids: Vec<String> = joined.iter().map(|(j, _)| j.room_id.to_owned()).collect();
    let limit_of = |job: &RoomJob| job.config.timeline_limit.unwrap_or(0).clamp(0, 100);

    // Timelines: newest events after what the connection saw, one query per (start, limit).
    let mut by_start: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
    for (job, _) in &joined {
        by_start
            .entry((job.seen.unwrap_or(0), limit_of(job)))
            .or_default()
            .push(job.room_id.to_owned());
    }
    let mut batches: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for ((from, limit), rooms) in &by_start {
        batches.extend(super::batch::latest_events(conn, rooms, *from, now.events, limit + 1).await?);
    }
    let mut limited: HashMap<&str, bool> = HashMap::new();
    let mut candidates = Vec::new();
    for (job, _) in &joined {
        let mut batch = batches.remove(job.room_id).unwrap_or_default();
        let limit = limit_of(job) as usize;
        limited.insert(job.room_id, batch.len() > limit);
        batch.truncate(limit);
        batch.reverse();
        candidates.extend(batch);
    }
    let currently_joined: HashMap<String, String> = joined
        .iter()
        .map(|(job, _)| (job.room_id.to_owned(), job.m.event_id.clone()))
        .collect();
    let mut timelines: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for event in shown_events(core, conn, session.user_id, &currently_joined, candidates).await? {
        timelines.entry(event.room_id.clone()).or_default().push(event);
    }

    // Current state, summaries, then every wanted state event in one read.
    let groups = super::batch::state_groups_at(conn, &room_ids, now.events).await?;
    let mut summaries = super::batch::summaries(conn, &room_ids, session.user_id).await?;
    struct Plan {
        state_ids: HashSet<String>,
        name_id: Option<String>,
        avatar_id: Option<String>,
        heroes: Vec<(String, Option<String>)>,
        summary: Value,
    }
    let mut plans = Vec::with_capacity(joined.len());
    let mut wanted_ids: Vec<String> = Vec::new();
    for (job, _) in &joined {
        let current = crate::storage::state::load_or_empty(&core.db, conn, groups.get(job.room_id).copied()).await?;
        let timeline = timelines.get(job.room_id).map(Vec::as_slice).unwrap_or_default();
        let lazy: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        let state_ids: HashSet<String> = current
            .iter()
            .filter(|((t, k), _)| required(job.config, t, k, session.user_id, &lazy))
            .map(|(_, id)| id.clone())
            .collect();
        let summary = summaries.remove(job.room_id).unwrap_or_default();
        let key = |t: &str, k: &str| current.get(&(t.to_owned(), k.to_owned())).cloned();
        let heroes: Vec<(String, Option<String>)> = summary["m.heroes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str())
                    .map(|h| (h.to_owned(), key("m.room.member", h)))
                    .collect()
            })
            .unwrap_or_default();
        let plan = Plan {
            name_id: key("m.room.name", ""),
            avatar_id: key("m.room.avatar", ""),
            state_ids,
            heroes,
            summary,
        };
        wanted_ids.extend(plan.state_ids.iter().cloned());
        wanted_ids.extend(plan.name_id.iter().chain(plan.avatar_id.iter()).cloned());
        wanted_ids.extend(plan.heroes.iter().filter_map(|(_, id)| id.clone()));
        plans.push(plan);
    }
    wanted_ids.sort();
    wanted_ids.dedup();
    let fetched: HashMap<String, StoredEvent> = events::get_many(conn, &wanted_ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let content_of = |id: &Option<String>| -> Value {
        id.as_ref()
            .and_then(|id| fetched.get(id))
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .map(|j| j["content"].clone())
            .unwrap_or_default()
    };

    // Every room's required state and timeline formatted in one call, then split back.
    let mut to_format = Vec::new();
    let mut sections = Vec::with_capacity(joined.len());
    for ((job, _), plan) in joined.iter().zip(&plans) {
        let timeline = timelines.remove(job.room_id).unwrap_or_default();
        let lazy: HashSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        let mut state_events: Vec<StoredEvent> = plan
            .state_ids
            .iter()
            .filter_map(|id| fetched.get(id))
            .filter(|e| match job.seen {
                // Only state that changed since the client last saw the room.
                Some(seen) => {
                    e.stream_pos.is_some_and(|p| p > seen)
                        || e.event_type == "m.room.member" && lazy.contains(e.state_key.as_deref().unwrap_or(""))
                }
                None => true,
            })
            .cloned()
            .collect();
        state_events.sort_by_key(|e| e.stream_pos);
        let num_live = job
            .seen
            .map(|s| timeline.iter().filter(|e| e.stream_pos.is_some_and(|p| p > s)).count());
        let prev_batch = timeline
            .first()
            .and_then(|e| e.stream_pos)
            .map(|p| timeline::token(p - 1));
        sections.push((state_events.len(), timeline.len(), num_live, prev_batch));
        to_format.extend(state_events);
        to_format.extend(timeline);
    }
    let mut formatted = client_format::format(core, conn, &to_format, Some(viewer))
        .await?
        .into_iter();
    drop(to_format);
    let mut counts = crate::push::counts::unread_many(conn, &room_ids, session.user_id, false).await?;

    for (((job, mut room), plan), (n_state, n_timeline, num_live, prev_batch)) in
        joined.into_iter().zip(plans).zip(sections)
    {
        let name = content_of(&plan.name_id)["name"].as_str().map(str::to_owned);
        let avatar = content_of(&plan.avatar_id)["url"].as_str().map(str::to_owned);
        if let Some(name) = name {
            room["name"] = json!(name);
        } else {
            let heroes: Vec<Value> = plan
                .heroes
                .iter()
                .map(|(user, member_id)| {
                    let member = content_of(member_id);
                    let mut h = json!({ "user_id": user });
                    if let Some(n) = member["displayname"].as_str() {
                        h["displayname"] = json!(n);
                    }
                    if let Some(a) = member["avatar_url"].as_str() {
                        h["avatar_url"] = json!(a);
                    }
                    h
                })
                .collect();
            room["heroes"] = json!(heroes);
        }
        if let Some(avatar) = avatar {
            room["avatar"] = json!(avatar);
        }
        room["joined_count"] = plan.summary["m.joined_member_count"].clone();
        room["invited_count"] = plan.summary["m.invited_member_count"].clone();
        room["required_state"] = json!(formatted.by_ref().take(n_state).collect::<Vec<_>>());
        room["timeline"] = json!(formatted.by_ref().take(n_timeline).collect::<Vec<_>>());
        room["limited"] = json!(limited.get(job.room_id).copied().unwrap_or(false));
        if let Some(prev_batch) = prev_batch {
            room["prev_batch"] = json!(prev_batch);
        }
        if let Some(n) = num_live {
            room["num_live"] = json!(n);
        }
        let room_counts = counts.remove(job.room_id).map(|(c, _)| c).unwrap_or_default();
        room["notification_count"] = json!(room_counts.notifications);
        room["highlight_count"] = json!(room_counts.highlights);
        out.push((job.room_id.to_owned(), room));
    }
    Ok(out)
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
