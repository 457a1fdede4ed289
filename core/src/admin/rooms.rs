//! Rooms as admins see them: the list with Synapse's orderings, details, members, state,
//! blocking, forward extremities, and making a user a room admin.

use std::{cmp::Ordering, collections::HashMap};

use ruma::UserId;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::Page;
use crate::{
    events::builder::EventTemplate,
    rooms::{client_format, current_state, current_state_content, room_rules, timeline},
    storage::{events, rooms as room_store},
    util, Core, Error, Result,
};

/// A room's summary, as the room list and details show it.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub room_id: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: i64,
    pub joined_local_members: i64,
    pub version: String,
    pub creator: String,
    pub encryption: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: i64,
    pub room_type: Option<String>,
}

impl Summary {
    /// The fields of Synapse's room list.
    pub fn to_json(&self) -> Value {
        json!({
            "room_id": self.room_id,
            "name": self.name,
            "canonical_alias": self.canonical_alias,
            "avatar": self.avatar,
            "joined_members": self.joined_members,
            "joined_local_members": self.joined_local_members,
            "version": self.version,
            "creator": self.creator,
            "encryption": self.encryption,
            "federatable": self.federatable,
            "public": self.public,
            "join_rules": self.join_rules,
            "guest_access": self.guest_access,
            "history_visibility": self.history_visibility,
            "state_events": self.state_events,
            "room_type": self.room_type,
        })
    }
}

/// The state types a summary reads (all with an empty state key).
const SUMMARY_TYPES: [&str; 9] = [
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.history_visibility",
];

/// Summaries of the rooms this server holds (`None`: all of them), in no particular order.
/// Each is read whole from current state: the admin list is occasional, and a room's counts
/// are exact this way.
pub async fn summaries(core: &Core, conn: &mut AnyConnection, room_id: Option<&str>) -> Result<Vec<Summary>> {
    let filter = if room_id.is_some() { "WHERE room_id = $1" } else { "" };
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT room_id, room_version, creator, is_public FROM rooms {filter}"
    ))
    .bind(room_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_room: HashMap<String, Summary> = rows
        .into_iter()
        .map(|(room_id, version, creator, public)| {
            let summary = Summary {
                room_id: room_id.clone(),
                version,
                creator,
                public: public != 0,
                federatable: true,
                ..Summary::default()
            };
            (room_id, summary)
        })
        .collect();
    let room_filter = if room_id.is_some() { "AND cs.room_id = $1" } else { "" };
    let types = SUMMARY_TYPES.map(|t| format!("'{t}'")).join(", ");
    let state: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT cs.room_id, cs.event_type, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
         WHERE cs.state_key = '' AND cs.event_type IN ({types}) {room_filter}"
    ))
    .bind(room_id)
    .fetch_all(&mut *conn)
    .await?;
    for (room, kind, json) in state {
        let Some(summary) = by_room.get_mut(&room) else {
            continue;
        };
        let event: Value = serde_json::from_str(&json).unwrap_or_default();
        let content = &event["content"];
        let text = |field: &str| content[field].as_str().map(str::to_owned);
        match kind.as_str() {
            "m.room.create" => {
                summary.federatable = content["m.federate"].as_bool().unwrap_or(true);
                summary.room_type = text("type");
                // Rooms since v11 name their creator only as the create event's sender.
                if summary.creator.is_empty() {
                    summary.creator = event["sender"].as_str().unwrap_or_default().to_owned();
                }
            }
            "m.room.name" => summary.name = text("name").filter(|n| !n.is_empty()),
            "m.room.topic" => summary.topic = text("topic"),
            "m.room.avatar" => summary.avatar = text("url"),
            "m.room.canonical_alias" => summary.canonical_alias = text("alias"),
            "m.room.encryption" => summary.encryption = text("algorithm"),
            "m.room.join_rules" => summary.join_rules = text("join_rule"),
            "m.room.guest_access" => summary.guest_access = text("guest_access"),
            "m.room.history_visibility" => summary.history_visibility = text("history_visibility"),
            _ => {}
        }
    }
    let room_filter = if room_id.is_some() { "WHERE room_id = $2" } else { "" };
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT room_id, COUNT(*),
                SUM(CASE WHEN SUBSTR(user_id, LENGTH(user_id) - LENGTH($1) + 1) = $1 THEN 1 ELSE 0 END)
         FROM room_memberships WHERE membership = 'join' {} GROUP BY room_id",
        room_filter.replace("WHERE", "AND")
    ))
    .bind(format!(":{}", core.server_name))
    .bind(room_id)
    .fetch_all(&mut *conn)
    .await?;
    for (room, joined, local) in counts {
        if let Some(summary) = by_room.get_mut(&room) {
            summary.joined_members = joined;
            summary.joined_local_members = local;
        }
    }
    let room_filter = if room_id.is_some() { "WHERE room_id = $1" } else { "" };
    let state_counts: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT room_id, COUNT(*) FROM current_state {room_filter} GROUP BY room_id"
    ))
    .bind(room_id)
    .fetch_all(&mut *conn)
    .await?;
    for (room, count) in state_counts {
        if let Some(summary) = by_room.get_mut(&room) {
            summary.state_events = count;
        }
    }
    Ok(by_room.into_values().collect())
}

/// How the room list is sorted (Synapse's `order_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderBy {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl OrderBy {
    pub fn parse(value: Option<&str>) -> Result<OrderBy> {
        Ok(match value.unwrap_or("name") {
            "name" | "alphabetical" => OrderBy::Name,
            "canonical_alias" => OrderBy::CanonicalAlias,
            "joined_members" | "size" => OrderBy::JoinedMembers,
            "joined_local_members" => OrderBy::JoinedLocalMembers,
            "version" => OrderBy::Version,
            "creator" => OrderBy::Creator,
            "encryption" => OrderBy::Encryption,
            "federatable" => OrderBy::Federatable,
            "public" => OrderBy::Public,
            "join_rules" => OrderBy::JoinRules,
            "guest_access" => OrderBy::GuestAccess,
            "history_visibility" => OrderBy::HistoryVisibility,
            "state_events" => OrderBy::StateEvents,
            other => return Err(Error::InvalidParam(format!("Unknown value for order_by: {other}"))),
        })
    }

    /// `a` before `b` in the forward direction. As Synapse: counts and versions largest
    /// first, everything else ascending; rooms without the value last.
    fn compare(self, a: &Summary, b: &Summary) -> Ordering {
        fn text(a: &Option<String>, b: &Option<String>) -> Ordering {
            match (a, b) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
        match self {
            OrderBy::Name => text(&a.name, &b.name),
            OrderBy::CanonicalAlias => text(&a.canonical_alias, &b.canonical_alias),
            OrderBy::JoinedMembers => b.joined_members.cmp(&a.joined_members),
            OrderBy::JoinedLocalMembers => b.joined_local_members.cmp(&a.joined_local_members),
            OrderBy::Version => b.version.cmp(&a.version),
            OrderBy::Creator => a.creator.cmp(&b.creator),
            OrderBy::Encryption => text(&a.encryption, &b.encryption),
            OrderBy::Federatable => a.federatable.cmp(&b.federatable),
            OrderBy::Public => a.public.cmp(&b.public),
            OrderBy::JoinRules => text(&a.join_rules, &b.join_rules),
            OrderBy::GuestAccess => text(&a.guest_access, &b.guest_access),
            OrderBy::HistoryVisibility => text(&a.history_visibility, &b.history_visibility),
            OrderBy::StateEvents => b.state_events.cmp(&a.state_events),
        }
    }
}

/// `GET /_synapse/admin/v1/rooms`'s query.
#[derive(Clone, Debug)]
pub struct ListQuery {
    pub page: Page,
    pub order_by: OrderBy,
    pub backwards: bool,
    /// Matched, case-insensitively, against the name, canonical alias and room ID.
    pub search_term: Option<String>,
}

/// A page of the room list.
#[derive(Debug)]
pub struct RoomList {
    pub rooms: Vec<Summary>,
    pub total: usize,
    pub next_batch: Option<usize>,
    pub prev_batch: Option<usize>,
}

pub async fn list(core: &Core, query: &ListQuery) -> Result<RoomList> {
    let mut conn = core.db.conn().await?;
    let mut all = summaries(core, &mut conn, None).await?;
    if let Some(term) = query.search_term.as_deref().filter(|t| !t.is_empty()) {
        let term = term.to_lowercase();
        let matches = |s: &Option<String>| s.as_deref().is_some_and(|s| s.to_lowercase().contains(&term));
        all.retain(|r| matches(&r.name) || matches(&r.canonical_alias) || r.room_id.to_lowercase().contains(&term));
    }
    // Ties in room ID order, whatever the direction, so pages never overlap.
    all.sort_by(|a, b| {
        let primary = query.order_by.compare(a, b);
        let primary = if query.backwards { primary.reverse() } else { primary };
        primary.then_with(|| a.room_id.cmp(&b.room_id))
    });
    let total = all.len();
    let (rooms, next_batch) = query.page.slice(all);
    let prev_batch = (query.page.from > 0).then(|| query.page.from.saturating_sub(query.page.limit));
    Ok(RoomList {
        rooms,
        total,
        next_batch,
        prev_batch,
    })
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`: the list's fields and a few more.
pub async fn details(core: &Core, room_id: &str) -> Result<Value> {
    let mut conn = core.db.conn().await?;
    let summary = summaries(core, &mut conn, Some(room_id))
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound("Room not found".into()))?;
    let local_devices: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM devices d JOIN room_memberships m ON m.user_id = d.user_id
         WHERE m.room_id = $1 AND m.membership = 'join'",
    )
    .bind(room_id)
    .fetch_one(&mut *conn)
    .await?;
    // Forgotten: every local user who was in it has forgotten it (as Synapse reports it).
    let (local_rows, remembered): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN forgotten = 0 THEN 1 ELSE 0 END), 0) FROM room_memberships
         WHERE room_id = $1 AND SUBSTR(user_id, LENGTH(user_id) - LENGTH($2) + 1) = $2",
    )
    .bind(room_id)
    .bind(format!(":{}", core.server_name))
    .fetch_one(&mut *conn)
    .await?;
    let mut details = summary.to_json();
    details["topic"] = json!(summary.topic);
    details["joined_local_devices"] = json!(local_devices);
    details["forgotten"] = json!(local_rows > 0 && remembered == 0);
    Ok(details)
}

/// The joined members of a room.
pub async fn members(core: &Core, room_id: &str) -> Result<Vec<String>> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    let mut members: Vec<String> = room_store::members(&mut conn, room_id, "join")
        .await?
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    members.sort();
    Ok(members)
}

/// A room's current state, as clients see events.
pub async fn state(core: &Core, room_id: &str) -> Result<Vec<Value>> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    let state = current_state(core, &mut conn, room_id).await?;
    let ids: Vec<String> = state.values().cloned().collect();
    let stored = events::get_many(&mut conn, &ids).await?;
    client_format::format(core, &mut conn, &stored, None).await
}

/// Who blocked a room, if it is blocked.
pub async fn blocked_by(conn: &mut AnyConnection, room_id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM blocked_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Refuses a local user's join, invite or knock into a blocked room (admins are exempt).
pub async fn check_not_blocked(core: &Core, room_id: &str) -> Result<()> {
    let mut conn = core.db.conn().await?;
    if blocked_by(&mut conn, room_id).await?.is_some() {
        return Err(Error::Forbidden("This room has been blocked on this server".into()));
    }
    Ok(())
}

/// Blocks a room (by `admin`) or unblocks it. A room need not be known here to be blocked.
pub async fn set_blocked(core: &Core, room_id: &str, admin: &str, block: bool) -> Result<()> {
    let mut tx = core.db.write().await?;
    set_blocked_in(&mut tx, room_id, admin, block).await?;
    tx.commit().await
}

pub(super) async fn set_blocked_in(conn: &mut AnyConnection, room_id: &str, admin: &str, block: bool) -> Result<()> {
    if block {
        sqlx::query(
            "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES ($1, $2, $3)
             ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room_id)
        .bind(admin)
        .bind(util::now_ms())
        .execute(conn)
        .await?;
    } else {
        sqlx::query("DELETE FROM blocked_rooms WHERE room_id = $1")
            .bind(room_id)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A forward extremity, as admins see it.
#[derive(Clone, Debug)]
pub struct Extremity {
    pub event_id: String,
    pub state_group: Option<i64>,
    pub depth: i64,
    pub received_ts: i64,
}

pub async fn forward_extremities(core: &Core, room_id: &str) -> Result<Vec<Extremity>> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    let head = room_store::head(&mut conn, room_id).await?;
    let stored = events::get_many(&mut conn, &head.extremities).await?;
    Ok(stored
        .into_iter()
        .map(|e| Extremity {
            event_id: e.event_id,
            state_group: e.state_after,
            depth: e.depth,
            // Weft does not record when an event arrived; its timestamp stands in.
            received_ts: e.origin_server_ts,
        })
        .collect())
}

/// Drops the forward extremities that do not carry the room's current state (as Synapse
/// does; when none does, the deepest one stays), under the room's lock. The next event then
/// merges fewer branches. Answers how many were dropped.
pub async fn delete_forward_extremities(core: &Core, room_id: &str) -> Result<usize> {
    let mut tx = core.db.write().await?;
    let Some(head) = room_store::lock(&mut tx, room_id).await? else {
        return Err(Error::NotFound("Room not found".into()));
    };
    if head.extremities.len() <= 1 {
        return Ok(0);
    }
    let stored = events::get_many(&mut tx, &head.extremities).await?;
    let mut keep: Vec<String> = stored
        .iter()
        .filter(|e| e.state_after.is_some() && e.state_after == head.current_group)
        .map(|e| e.event_id.clone())
        .collect();
    if keep.is_empty() {
        if let Some(deepest) = stored
            .iter()
            .max_by_key(|e| (e.depth, e.stream_pos.unwrap_or_default()))
        {
            keep.push(deepest.event_id.clone());
        }
    }
    keep.sort();
    let dropped = head.extremities.len() - keep.len();
    if dropped == 0 {
        return Ok(0);
    }
    sqlx::query("UPDATE rooms SET forward_extremities = $2 WHERE room_id = $1")
        .bind(room_id)
        .bind(serde_json::to_string(&keep).map_err(Error::internal)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(dropped)
}

/// Makes `target` (a local user) an admin of a room: a local member with the highest power
/// level there sends power levels giving `target` the same level, and invites `target` when
/// they are not joined and the room is not public.
pub async fn make_room_admin(core: &Core, room_id: &str, target: &UserId) -> Result<()> {
    if !core.is_local(target) {
        return Err(Error::InvalidParam("Only local users can be admins of rooms".into()));
    }
    let (power, granter, level, join_rule, target_joined) = {
        let mut conn = core.db.conn().await?;
        let (_, rules) = room_rules(core, &mut conn, room_id).await?;
        let state = current_state(core, &mut conn, room_id).await?;
        let mut best: Option<(i64, String)> = None;
        for member in room_store::members(&mut conn, room_id, "join").await? {
            let Ok(user) = UserId::parse(&member.user_id) else {
                continue;
            };
            if !core.is_local(&user) {
                continue;
            }
            let level = crate::rooms::power::user_level(&mut conn, &rules, &state, user.as_str()).await?;
            if best.as_ref().is_none_or(|(l, _)| level > *l) {
                best = Some((level, user.to_string()));
            }
        }
        let Some((level, granter)) = best else {
            return Err(Error::InvalidParam("No local admin user in room".into()));
        };
        let power = current_state_content(&mut conn, room_id, "m.room.power_levels", "")
            .await?
            .unwrap_or_else(|| json!({}));
        let needed = crate::rooms::power::event_level(&mut conn, &rules, &state, "m.room.power_levels", true).await?;
        if level < needed {
            return Err(Error::InvalidParam("No local admin user in room".into()));
        }
        let join_rule = current_state_content(&mut conn, room_id, "m.room.join_rules", "")
            .await?
            .and_then(|c| c["join_rule"].as_str().map(str::to_owned));
        let target_joined = room_store::membership(&mut conn, room_id, target.as_str())
            .await?
            .is_some_and(|m| m.membership == "join");
        (power, granter, level, join_rule, target_joined)
    };
    let granter = UserId::parse(&granter).map_err(Error::internal)?;
    if granter != target {
        let mut content = power;
        if !content["users"].is_object() {
            content["users"] = json!({});
        }
        // A creator of a v12 room has unlimited power, which no power level can say: the
        // highest level given in the room (at least 100) is what an admin gets there.
        let grant = if level == i64::MAX {
            content["users"]
                .as_object()
                .into_iter()
                .flat_map(|u| u.values().filter_map(Value::as_i64))
                .max()
                .unwrap_or(100)
                .max(100)
        } else {
            level
        };
        content["users"][target.as_str()] = json!(grant);
        crate::rooms::send(
            core,
            room_id,
            &granter,
            EventTemplate::state("m.room.power_levels", "", content),
            None,
        )
        .await?;
    }
    if !target_joined && join_rule.as_deref() != Some("public") {
        crate::rooms::membership::invite(core, room_id, &granter, target, None, false).await?;
    }
    Ok(())
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: the room's timeline as `/messages` pages
/// it, with every accepted event (no history visibility for admins). Answers the events in
/// client format, `start` and `end`.
pub async fn messages(
    core: &Core,
    room_id: &str,
    (from, to): (Option<&str>, Option<&str>),
    dir: timeline::Dir,
    limit: usize,
    filter: &ruma::api::client::filter::RoomEventFilter,
) -> Result<(Vec<Value>, String, Option<String>)> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    let from_key = match (from, dir) {
        (Some(token), _) => timeline::parse_key(&mut conn, room_id, token).await?,
        (None, timeline::Dir::Backward) => timeline::page(&mut conn, room_id, timeline::Key::END, None, dir, 1)
            .await?
            .first()
            .map_or(timeline::Key::START, timeline::Key::of),
        (None, timeline::Dir::Forward) => timeline::Key::START,
    };
    let to = match to {
        Some(token) => Some(timeline::parse_key(&mut conn, room_id, token).await?),
        None => None,
    };
    let window = timeline::visible_window(
        core,
        &mut conn,
        crate::rooms::visibility::Reader::Admin,
        room_id,
        (from_key, to),
        dir,
        limit,
        filter,
    )
    .await?;
    let chunk = client_format::format(core, &mut conn, &window.events, None).await?;
    let start = from.map_or_else(|| from_key.token(), str::to_owned);
    let end = (!window.events.is_empty()).then(|| window.next.token());
    Ok((chunk, start, end))
}

/// The event closest to `ts` in the room: the first at or after it (forward) or the last at
/// or before it (backward), whoever may see it. Answers its ID and timestamp.
pub async fn event_at_timestamp(core: &Core, room_id: &str, ts: i64, dir: timeline::Dir) -> Result<(String, i64)> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    let cursor = (
        ts,
        if dir == timeline::Dir::Forward {
            i64::MIN
        } else {
            i64::MAX
        },
    );
    let found = timeline::by_timestamp(&mut conn, room_id, cursor, dir, 1).await?;
    found
        .into_iter()
        .next()
        .map(|e| (e.event_id, e.origin_server_ts))
        .ok_or_else(|| Error::NotFound(format!("Unable to find event from {ts} in direction {dir:?}")))
}
