//! The space hierarchy (`/hierarchy`): a depth-first walk over `m.space.child` state from a
//! root, showing the rooms the user may peek at. Rooms this server is not in are asked of the
//! servers their `m.space.child` event names (`via`), through the `RemoteSpaces` the caller
//! passes (federation's, which caches answers briefly); `for_server` is what this server
//! answers such a question about its own rooms.
//!
//! Pagination is stateless: a token is how many rooms earlier pages returned, plus the
//! parameters it was made for; the walk is repeated and those rooms skipped.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
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

#[derive(Clone)]
pub struct HierarchyQuery<'a> {
    pub root: &'a str,
    pub user: &'a str,
    pub from: Option<&'a str>,
    pub limit: usize,
    pub max_depth: Option<usize>,
    pub suggested_only: bool,
    /// Where rooms this server is not in are asked about; without it they are left out.
    pub remote: Option<&'a dyn RemoteSpaces>,
}

/// A room this server is not in, as a server in it summarised it.
#[derive(Clone, Debug)]
pub struct RemoteRoom {
    /// Its summary, with `children_state`.
    pub room: Value,
    /// Summaries (without `children_state`) of those of its children that server knows.
    pub children: Vec<Value>,
}

/// Asks other servers about rooms this server is not in.
pub trait RemoteSpaces: Send + Sync {
    /// The room as one of the `via` servers summarises it (children limited to suggested ones
    /// with `suggested_only`); `None` when none of them would.
    fn room<'a>(
        &'a self,
        room_id: &'a str,
        via: &'a [String],
        suggested_only: bool,
    ) -> BoxFuture<'a, Option<RemoteRoom>>;
}

/// What this server answers another server asking about one of its rooms (`for_server`).
#[derive(Debug)]
pub struct ServedHierarchy {
    /// The room's summary, with `children_state`.
    pub room: Value,
    /// Its children known here that the asking server may peek at, without `children_state`.
    pub children: Vec<Value>,
    /// Its children known here that the asking server may not peek at.
    pub inaccessible_children: Vec<String>,
}

#[derive(Debug, Default)]
pub struct HierarchyPage {
    /// Room summaries with `children_state`, as the spec's rooms chunk.
    pub rooms: Vec<Value>,
    pub next_batch: Option<String>,
}

/// One room of the walk: where it sits, and the servers its parent's `m.space.child` names.
struct Entry {
    room_id: String,
    depth: usize,
    via: Vec<String>,
}

/// The walk. No pooled connection is held while another server is asked.
pub async fn hierarchy(core: &Core, q: &HierarchyQuery<'_>) -> Result<HierarchyPage> {
    let max_depth = q.max_depth.unwrap_or(DEPTH_CAP).min(DEPTH_CAP);
    let skip = match q.from {
        Some(t) => parse_token(t, q)?,
        None => 0,
    };
    {
        let mut conn = core.db.conn().await?;
        if !is_accessible(core, &mut conn, q.user, q.root).await? {
            return Err(Error::Forbidden("You may not view this room".into()));
        }
    }
    let mut stack = vec![Entry {
        room_id: q.root.to_owned(),
        depth: 0,
        via: Vec::new(),
    }];
    let mut seen: HashSet<String> = HashSet::from([q.root.to_owned()]);
    // Summaries of remote rooms' children that their servers gave along with them: what is
    // shown of a child whose own servers do not answer.
    let mut learned: HashMap<String, Value> = HashMap::new();
    let mut index = 0usize;
    let mut out = Vec::new();
    let mut more = false;
    while let Some(entry) = stack.pop() {
        if seen.len() > VISIT_CAP {
            break;
        }
        let Some(Visited {
            summary,
            children,
            children_summaries,
        }) = visit(core, q, &entry, &learned).await?
        else {
            continue;
        };
        if out.len() == q.limit {
            more = true;
            break;
        }
        learned.extend(children_summaries);
        if entry.depth < max_depth {
            // Reversed so that the first child is walked first.
            for (child, stripped) in children.iter().rev() {
                if seen.insert(child.clone()) {
                    stack.push(Entry {
                        room_id: child.clone(),
                        depth: entry.depth + 1,
                        via: via_of(stripped),
                    });
                }
            }
        }
        if index >= skip {
            let mut summary = summary;
            summary["children_state"] = Value::Array(children.into_iter().map(|(_, stripped)| stripped).collect());
            out.push(summary);
        }
        index += 1;
    }
    let next_batch = more.then(|| token(skip + out.len(), q));
    Ok(HierarchyPage { rooms: out, next_batch })
}

/// A room of the walk as the user may see it.
struct Visited {
    /// Without `children_state`.
    summary: Value,
    /// Its children, sorted, with their stripped `m.space.child` events.
    children: Vec<(String, Value)>,
    /// Summaries of children a remote room's server gave along with it, by room ID.
    children_summaries: Vec<(String, Value)>,
}

/// A room of the walk, or `None` when the user may not see it or no one could say what it is.
async fn visit(
    core: &Core,
    q: &HierarchyQuery<'_>,
    entry: &Entry,
    learned: &HashMap<String, Value>,
) -> Result<Option<Visited>> {
    let mut conn = core.db.conn().await?;
    if rooms::version(&core.db, &mut conn, &entry.room_id).await?.is_some() {
        // The root was checked already; children are shown only when the user may peek.
        if entry.depth > 0 && !is_accessible(core, &mut conn, q.user, &entry.room_id).await? {
            return Ok(None);
        }
        let state = current_state(core, &mut conn, &entry.room_id).await?;
        let children = children_of(&mut conn, &state, q.suggested_only).await?;
        let summary = summary(core, &mut conn, &entry.room_id, &state, Vec::new()).await?;
        return Ok(Some(Visited {
            summary,
            children,
            children_summaries: Vec::new(),
        }));
    }
    drop(conn);
    let Some(remote) = q.remote else {
        return Ok(None);
    };
    let (summary, children, children_summaries) = match remote.room(&entry.room_id, &entry.via, q.suggested_only).await
    {
        Some(RemoteRoom { mut room, children }) => {
            let stripped = room
                .get_mut("children_state")
                .map(Value::take)
                .and_then(|c| serde_json::from_value::<Vec<Value>>(c).ok())
                .unwrap_or_default();
            let summaries = children
                .into_iter()
                .filter_map(|c| Some((c["room_id"].as_str()?.to_owned(), c)))
                .collect();
            (room, remote_children_of(stripped, q.suggested_only), summaries)
        }
        // Its servers did not answer, but its parent's did: shown without its children.
        None => match learned.get(&entry.room_id) {
            Some(summary) => (summary.clone(), Vec::new(), Vec::new()),
            None => return Ok(None),
        },
    };
    if summary["room_id"] != entry.room_id.as_str() {
        return Ok(None);
    }
    let mut conn = core.db.conn().await?;
    if !remote_is_accessible(&mut conn, q.user, &entry.room_id, &summary).await? {
        return Ok(None);
    }
    Ok(Some(Visited {
        summary,
        children,
        children_summaries,
    }))
}

/// The servers a stripped `m.space.child` event names.
fn via_of(stripped: &Value) -> Vec<String> {
    stripped["content"]["via"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Whether the user may see a room this server is not in, from its summary: as for a local
/// room, with the user's membership as this server knows it (an invite, say).
async fn remote_is_accessible(conn: &mut AnyConnection, user: &str, room_id: &str, summary: &Value) -> Result<bool> {
    // A summary leaves out the join rule when it is public (the spec's default).
    let join_rule = summary["join_rule"].as_str().unwrap_or("public");
    if matches!(join_rule, "public" | "knock" | "knock_restricted") || summary["world_readable"] == true {
        return Ok(true);
    }
    if rooms::membership(conn, room_id, user)
        .await?
        .is_some_and(|m| m.membership == "join" || m.membership == "invite")
    {
        return Ok(true);
    }
    if join_rule == "restricted" {
        let allowed = summary["allowed_room_ids"].as_array().into_iter().flatten();
        for allowed in allowed.filter_map(Value::as_str) {
            if rooms::membership(conn, allowed, user)
                .await?
                .is_some_and(|m| m.membership == "join")
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// What this server answers another server asking about `room_id` (federation's
/// `/hierarchy`): `None` when the room is not known here or `server` may not peek at it (the
/// room is not public, knockable or world-readable, no member of `server`'s is in it, and no
/// room its restricted join rule allows has one).
pub async fn for_server(
    core: &Core,
    server: &str,
    room_id: &str,
    suggested_only: bool,
) -> Result<Option<ServedHierarchy>> {
    let mut conn = core.db.conn().await?;
    if !server_may_peek(core, &mut conn, server, room_id).await? {
        return Ok(None);
    }
    let state = current_state(core, &mut conn, room_id).await?;
    let children = children_of(&mut conn, &state, suggested_only).await?;
    let mut served = ServedHierarchy {
        room: Value::Null,
        children: Vec::new(),
        inaccessible_children: Vec::new(),
    };
    for (child, _) in &children {
        if rooms::version(&core.db, &mut conn, child).await?.is_none() {
            // The spec leaves out what this server cannot describe.
            continue;
        }
        if server_may_peek(core, &mut conn, server, child).await? {
            let child_state = current_state(core, &mut conn, child).await?;
            let mut child_summary = summary(core, &mut conn, child, &child_state, Vec::new()).await?;
            if let Some(object) = child_summary.as_object_mut() {
                object.remove("children_state");
            }
            served.children.push(child_summary);
        } else {
            served.inaccessible_children.push(child.clone());
        }
    }
    let children_state = children.into_iter().map(|(_, stripped)| stripped).collect();
    served.room = summary(core, &mut conn, room_id, &state, children_state).await?;
    Ok(Some(served))
}

/// Whether another server may see a room's summary (as Synapse decides it): the room is
/// known here, its ACL lets the server in, and it is public, knockable or world-readable, or
/// the server has a member joined to it, or to a room its restricted join rule allows.
async fn server_may_peek(core: &Core, conn: &mut AnyConnection, server: &str, room_id: &str) -> Result<bool> {
    if rooms::version(&core.db, conn, room_id).await?.is_none() {
        return Ok(false);
    }
    if !super::acl::server_allowed(conn, room_id, server).await? {
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
    if rooms::servers_in_room(conn, room_id).await?.iter().any(|s| s == server) {
        return Ok(true);
    }
    if matches!(join_rule, "restricted" | "knock_restricted") {
        for allowed in allowed_room_ids(&join_rules) {
            if rooms::servers_in_room(conn, &allowed)
                .await?
                .iter()
                .any(|s| s == server)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
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
    sort_children(&mut children);
    Ok(children)
}

/// A remote room's children from its stripped `m.space.child` events, checked and sorted as a
/// local room's.
fn remote_children_of(stripped: Vec<Value>, suggested_only: bool) -> Vec<(String, Value)> {
    let mut children: Vec<(String, Value)> = stripped
        .into_iter()
        .filter(|e| e["type"] == "m.space.child")
        .filter(|e| e["content"]["via"].as_array().is_some_and(|v| !v.is_empty()))
        .filter(|e| !suggested_only || e["content"]["suggested"] == true)
        .filter_map(|e| Some((e["state_key"].as_str()?.to_owned(), e)))
        .collect();
    sort_children(&mut children);
    children
}

/// The spec's order: `order`, then the child event's timestamp, then room ID.
fn sort_children(children: &mut [(String, Value)]) {
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
