//! The space hierarchy (`/hierarchy`): a depth-first walk over `m.space.child` state from a
//! root, over the rooms this server has, showing the rooms the user may peek at.
//!
//! Pagination is stateless: a token is how many rooms earlier pages returned, plus the
//! parameters it was made for; the walk is repeated and those rooms skipped.

use std::collections::HashSet;

use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{current_state, current_state_content};
use crate::{
    events::StateMap,
    storage::{events, rooms},
    Core, Error, Result,
};

/// No walk goes deeper than this, whatever the client asks for.
const DEPTH_CAP: usize = 50;
/// Nor visits more rooms than this in one request.
const VISIT_CAP: usize = 5000;

#[derive(Clone, Debug)]
pub struct HierarchyQuery<'a> {
    pub root: &'a str,
    pub user: &'a str,
    pub from: Option<&'a str>,
    pub limit: usize,
    pub max_depth: Option<usize>,
    pub suggested_only: bool,
}

#[derive(Debug, Default)]
pub struct HierarchyPage {
    /// Room summaries with `children_state`, as the spec's rooms chunk.
    pub rooms: Vec<Value>,
    pub next_batch: Option<String>,
}

pub async fn hierarchy(core: &Core, conn: &mut AnyConnection, q: &HierarchyQuery<'_>) -> Result<HierarchyPage> {
    let max_depth = q.max_depth.unwrap_or(DEPTH_CAP).min(DEPTH_CAP);
    let skip = match q.from {
        Some(t) => parse_token(t, q)?,
        None => 0,
    };
    if !is_accessible(core, conn, q.user, q.root).await? {
        return Err(Error::Forbidden("You may not view this room".into()));
    }
    let mut stack = vec![(q.root.to_owned(), 0usize)];
    let mut seen: HashSet<String> = HashSet::from([q.root.to_owned()]);
    let mut index = 0usize;
    let mut out = Vec::new();
    let mut more = false;
    while let Some((room_id, depth)) = stack.pop() {
        if seen.len() > VISIT_CAP {
            break;
        }
        // The root was checked above; children are shown only when the user may peek.
        if depth > 0 && !is_accessible(core, conn, q.user, &room_id).await? {
            continue;
        }
        if out.len() == q.limit {
            more = true;
            break;
        }
        let state = current_state(core, conn, &room_id).await?;
        let children = children_of(conn, &state, q.suggested_only).await?;
        if depth < max_depth {
            // Reversed so that the first child is walked first.
            for (child, _) in children.iter().rev() {
                if seen.insert(child.clone()) {
                    stack.push((child.clone(), depth + 1));
                }
            }
        }
        if index >= skip {
            let children_state = children.into_iter().map(|(_, stripped)| stripped).collect();
            out.push(summary(core, conn, &room_id, &state, children_state).await?);
        }
        index += 1;
    }
    let next_batch = more.then(|| token(skip + out.len(), q));
    Ok(HierarchyPage { rooms: out, next_batch })
}

/// Tokens carry the parameters they were made for; reusing one with others is an error.
fn token(offset: usize, q: &HierarchyQuery<'_>) -> String {
    let depth = q.max_depth.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
    format!("{offset}_{depth}_{}", if q.suggested_only { "s" } else { "a" })
}

fn parse_token(t: &str, q: &HierarchyQuery<'_>) -> Result<usize> {
    let offset: usize = t
        .split('_')
        .next()
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| Error::InvalidParam(format!("invalid pagination token {t:?}")))?;
    if token(offset, q) != t {
        return Err(Error::InvalidParam(
            "The pagination token was made for other parameters".into(),
        ));
    }
    Ok(offset)
}

/// Whether the user may see a room's summary (as Synapse decides peeks): the room is public,
/// knockable or world-readable, the user is joined or invited, or a restricted room lets
/// members of a room the user is in join.
pub async fn is_accessible(core: &Core, conn: &mut AnyConnection, user: &str, room_id: &str) -> Result<bool> {
    if rooms::version(&core.db, conn, room_id).await?.is_none() {
        return Ok(false);
    }
    let join_rules = current_state_content(conn, room_id, "m.room.join_rules", "")
        .await?
        .unwrap_or_default();
    let join_rule = join_rules["join_rule"].as_str().unwrap_or("invite");
    if matches!(join_rule, "public" | "knock" | "knock_restricted") {
        return Ok(true);
    }
    let hv = current_state_content(conn, room_id, "m.room.history_visibility", "")
        .await?
        .unwrap_or_default();
    if hv["history_visibility"] == "world_readable" {
        return Ok(true);
    }
    if rooms::membership(conn, room_id, user)
        .await?
        .is_some_and(|m| m.membership == "join" || m.membership == "invite")
    {
        return Ok(true);
    }
    if join_rule == "restricted" {
        for allowed in allowed_room_ids(&join_rules) {
            if rooms::membership(conn, &allowed, user)
                .await?
                .is_some_and(|m| m.membership == "join")
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn allowed_room_ids(join_rules: &Value) -> Vec<String> {
    join_rules["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
        .collect()
}

/// A space's children in the spec's order (`order`, then the child event's timestamp, then
/// room ID), with their stripped `m.space.child` events. A child without `via` is removed.
async fn children_of(conn: &mut AnyConnection, state: &StateMap, suggested_only: bool) -> Result<Vec<(String, Value)>> {
    let create = state_event(conn, state, "m.room.create", "").await?;
    if create.as_ref().is_none_or(|c| c["content"]["type"] != "m.space") {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = state
        .keys()
        .filter(|(t, _)| t == "m.space.child")
        .map(|(_, k)| k.clone())
        .collect();
    let mut children = Vec::new();
    for key in keys {
        let Some(event) = state_event(conn, state, "m.space.child", &key).await? else {
            continue;
        };
        let content = &event["content"];
        if content["via"].as_array().is_none_or(|v| v.is_empty()) {
            continue;
        }
        if suggested_only && content["suggested"] != true {
            continue;
        }
        let stripped = json!({
            "type": "m.space.child",
            "state_key": key,
            "content": content,
            "sender": event["sender"],
            "origin_server_ts": event["origin_server_ts"],
        });
        children.push((key, stripped));
    }
    children.sort_by(|(a_id, a), (b_id, b)| {
        let order = |e: &Value| {
            e["content"]["order"]
                .as_str()
                .filter(|o| valid_order(o))
                .map(str::to_owned)
        };
        // Children with an order come first.
        let (ao, bo) = (order(a), order(b));
        (ao.is_none(), ao, a["origin_server_ts"].as_i64(), a_id).cmp(&(
            bo.is_none(),
            bo,
            b["origin_server_ts"].as_i64(),
            b_id,
        ))
    });
    Ok(children)
}

/// The spec ignores `order` values that are not 1 to 50 printable ASCII characters.
fn valid_order(order: &str) -> bool {
    !order.is_empty() && order.len() <= 50 && order.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

async fn state_event(conn: &mut AnyConnection, state: &StateMap, event_type: &str, key: &str) -> Result<Option<Value>> {
    let Some(id) = state.get(&(event_type.to_owned(), key.to_owned())) else {
        return Ok(None);
    };
    let Some(stored) = events::get(conn, id).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_str(&stored.json).ok())
}

async fn state_content(conn: &mut AnyConnection, state: &StateMap, event_type: &str) -> Result<Value> {
    Ok(state_event(conn, state, event_type, "")
        .await?
        .map(|e| e["content"].clone())
        .unwrap_or_default())
}

/// The room's summary in the spec's `SpaceHierarchyRoomsChunk` shape.
async fn summary(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    state: &StateMap,
    children_state: Vec<Value>,
) -> Result<Value> {
    let create = state_content(conn, state, "m.room.create").await?;
    let join_rules = state_content(conn, state, "m.room.join_rules").await?;
    let name = state_content(conn, state, "m.room.name").await?;
    let topic = state_content(conn, state, "m.room.topic").await?;
    let alias = state_content(conn, state, "m.room.canonical_alias").await?;
    let avatar = state_content(conn, state, "m.room.avatar").await?;
    let hv = state_content(conn, state, "m.room.history_visibility").await?;
    let guest = state_content(conn, state, "m.room.guest_access").await?;
    let encryption = state_content(conn, state, "m.room.encryption").await?;
    let joined = rooms::members(conn, room_id, "join").await?.len();
    let version = rooms::version(&core.db, conn, room_id).await?;
    let join_rule = join_rules["join_rule"].as_str().unwrap_or("invite");

    let mut out = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": hv["history_visibility"] == "world_readable",
        "guest_can_join": guest["guest_access"] == "can_join",
        "join_rule": join_rule,
        "children_state": children_state,
    });
    let strings = [
        ("name", &name["name"]),
        ("topic", &topic["topic"]),
        ("canonical_alias", &alias["alias"]),
        ("avatar_url", &avatar["url"]),
        ("room_type", &create["type"]),
        ("encryption", &encryption["algorithm"]),
    ];
    for (key, value) in strings {
        // A malformed alias in state is left out rather than failing the whole response.
        let valid = |s: &&str| !s.is_empty() && (key != "canonical_alias" || ruma::RoomAliasId::parse(*s).is_ok());
        if let Some(s) = value.as_str().filter(valid) {
            out[key] = json!(s);
        }
    }
    if let Some(v) = version {
        out["room_version"] = json!(v);
    }
    if join_rule == "restricted" || join_rule == "knock_restricted" {
        out["allowed_room_ids"] = json!(allowed_room_ids(&join_rules));
    }
    Ok(out)
}
