//! What other servers may read of a room: single events, the state and auth chain at an
//! event, the events a server is missing, and history to backfill. The federation handlers
//! call these with the server that signed the request.
//!
//! Every read about a room refuses (M_FORBIDDEN) a server with no joined member in the room
//! or one the room's server ACL denies. Events are served as stored, which is the PDU as it
//! was signed; an event redacted here is served redacted, as the receiver would redact it
//! itself, so that its content does not spread after the redaction.

use std::collections::HashSet;

use ruma::{
    canonical_json::{redact, CanonicalJsonObject},
    room_version_rules::RoomVersionRules,
    RoomAliasId,
};
use serde_json::value::RawValue;
use sqlx::AnyConnection;

use super::{acl, visibility};
use crate::{
    events::auth_chain::auth_chain,
    storage::{
        events::{self, StoredEvent},
        rooms, state as state_store,
    },
    Core, Error, Result,
};

/// At most this many events answer one `/get_missing_events`: a receiver asks to fill small
/// gaps (Synapse asks for 10), and for a larger one it should ask for the state instead
/// (`/state_ids`) than walk the graph here without bound. Synapse answers at most 20 too.
pub const MAX_MISSING_EVENTS: u64 = 20;

/// At most this many events answer one `/backfill`, what Synapse asks for and answers.
pub const MAX_BACKFILL: u64 = 100;

/// An event as served to another server: its ID (not in the PDU from room version 3) and the
/// PDU.
#[derive(Debug)]
pub struct ServedPdu {
    pub event_id: String,
    pub pdu: Box<RawValue>,
}

/// The room's state at an event, and the auth chain of that state.
#[derive(Debug)]
pub struct StateAt<T> {
    pub state: Vec<T>,
    pub auth_chain: Vec<T>,
}

/// `GET /event/{eventId}`: one event, if `origin` may see it.
///
/// An event the server may not see is NotFound, like an unknown one (Synapse answers the
/// same), so a server learns nothing of it. Events without known state (outliers) have no
/// history visibility to apply: their state events are served, as they are part of the room's
/// state every member server reads through `/state` anyway; other outliers are not.
pub async fn event(core: &Core, origin: &str, event_id: &str) -> Result<ServedPdu> {
    let mut conn = core.db.conn().await?;
    let not_found = || Error::NotFound(format!("Event {event_id} not found"));
    let stored = events::get(&mut conn, event_id).await?.ok_or_else(not_found)?;
    ensure_may_read(&mut conn, &stored.room_id, origin).await?;
    if stored.rejected {
        return Err(not_found());
    }
    let room_id = stored.room_id.clone();
    let visible = if stored.outlier {
        stored.state_key.is_some()
    } else {
        !visibility::filter_visible_to_server(core, &mut conn, origin, vec![stored.clone()])
            .await?
            .is_empty()
    };
    if !visible {
        return Err(not_found());
    }
    let rules = room_rules(core, &mut conn, &room_id).await?;
    serve(&stored, &rules)
}

/// `GET /state_ids/{roomId}?event_id=`: the IDs of the room's state at an event and of its
/// auth chain.
///
/// "The state at an event" is the state *before* it: the event itself is not part of it,
/// even when it is a state event. That is what a receiver needs when it asks (it asks for the
/// state at a prev event it is missing, then applies that event on top, as the spec's
/// handling of missing prev events describes), and what Synapse answers, which servers rely
/// on. The state is not filtered by history visibility: any server in the room needs the
/// room's state to authorise events, as Synapse also serves it.
pub async fn state_ids(core: &Core, origin: &str, room_id: &str, event_id: &str) -> Result<StateAt<String>> {
    let mut conn = core.db.conn().await?;
    let (state, chain) = state_and_chain_ids(core, &mut conn, origin, room_id, event_id).await?;
    Ok(StateAt {
        state,
        auth_chain: chain,
    })
}

/// `GET /state/{roomId}?event_id=`: as `state_ids`, with the events themselves.
pub async fn state(core: &Core, origin: &str, room_id: &str, event_id: &str) -> Result<StateAt<ServedPdu>> {
    let mut conn = core.db.conn().await?;
    let (state, chain) = state_and_chain_ids(core, &mut conn, origin, room_id, event_id).await?;
    let rules = room_rules(core, &mut conn, room_id).await?;
    Ok(StateAt {
        state: load_served(&mut conn, &rules, &state).await?,
        auth_chain: load_served(&mut conn, &rules, &chain).await?,
    })
}

/// `GET /event_auth/{roomId}/{eventId}`: the event's full auth chain (its auth events, theirs,
/// and so on; the event itself not included), oldest first.
pub async fn event_auth(core: &Core, origin: &str, room_id: &str, event_id: &str) -> Result<Vec<ServedPdu>> {
    let mut conn = core.db.conn().await?;
    ensure_may_read(&mut conn, room_id, origin).await?;
    event_in_room(&mut conn, room_id, event_id).await?;
    let chain = auth_chain(&mut conn, [event_id.to_owned()]).await?;
    let rules = room_rules(core, &mut conn, room_id).await?;
    load_served(&mut conn, &rules, &chain.into_iter().collect::<Vec<_>>()).await
}

/// `POST /get_missing_events/{roomId}`: the events before `latest` that the server is
/// missing, found breadth-first through prev events from `latest`, not past `earliest` (what
/// it has) nor below `min_depth`, at most `limit` (capped at `MAX_MISSING_EVENTS`), oldest
/// first. `latest` and `earliest` themselves are not returned; nor are the events `origin`
/// may not see, so fewer than `limit` may come back.
pub async fn missing_events(
    core: &Core,
    origin: &str,
    room_id: &str,
    earliest: &[String],
    latest: &[String],
    limit: u64,
    min_depth: u64,
) -> Result<Vec<ServedPdu>> {
    let mut conn = core.db.conn().await?;
    ensure_may_read(&mut conn, room_id, origin).await?;
    let limit = limit.min(MAX_MISSING_EVENTS) as usize;
    let min_depth = i64::try_from(min_depth).unwrap_or(i64::MAX);
    let earliest: HashSet<&String> = earliest.iter().collect();
    let mut seen: HashSet<String> = earliest.iter().copied().chain(latest).cloned().collect();
    // Only the latest events this server has, of this room, start the walk; one the server
    // also has (in `earliest`) has nothing missing behind it.
    let mut frontier: Vec<String> = events::get_many(&mut conn, &dedup(latest, MAX_MISSING_EVENTS as usize))
        .await?
        .into_iter()
        .filter(|e| e.room_id == room_id && !earliest.contains(&e.event_id))
        .map(|e| e.event_id)
        .collect();
    let mut found: Vec<StoredEvent> = Vec::new();
    while !frontier.is_empty() && found.len() < limit {
        let mut next = Vec::new();
        let mut prevs = events::prev_events_of(&mut conn, &frontier).await?;
        // The order within a level is the database's; make it the same on every backend.
        prevs.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| a.event_id.cmp(&b.event_id)));
        for prev in prevs {
            if prev.room_id != room_id || prev.depth < min_depth || !seen.insert(prev.event_id.clone()) {
                continue;
            }
            next.push(prev.event_id.clone());
            // A rejected event is walked through (what it built on is real) but not served.
            if !prev.rejected && found.len() < limit {
                found.push(prev);
            }
        }
        frontier = next;
    }
    found.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.event_id.cmp(&b.event_id)));
    let visible = visibility::filter_visible_to_server(core, &mut conn, origin, found).await?;
    let rules = room_rules(core, &mut conn, room_id).await?;
    visible.iter().map(|e| serve(e, &rules)).collect()
}

/// `GET /backfill/{roomId}?v=&limit=`: the `from` events and those before them, deepest
/// first (the order a server paging back reads them), at most `limit` (capped at
/// `MAX_BACKFILL`), without the events `origin` may not see.
///
/// The answer is the `limit` deepest events reachable from `from`: exactly what a walk back
/// that always takes the deepest event not yet taken would give. It is read with one query
/// per depth window: the window is everything reachable at or above a depth, and it widens
/// until it holds `limit` events or reaches the room's start.
pub async fn backfill(core: &Core, origin: &str, room_id: &str, from: &[String], limit: u64) -> Result<Vec<ServedPdu>> {
    let mut conn = core.db.conn().await?;
    ensure_may_read(&mut conn, room_id, origin).await?;
    let limit = limit.min(MAX_BACKFILL) as i64;
    let from = dedup(from, MAX_BACKFILL as usize);
    let Some(top) = events::get_many(&mut conn, &from)
        .await?
        .iter()
        .filter(|e| e.room_id == room_id)
        .map(|e| e.depth)
        .max()
    else {
        return Ok(Vec::new());
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut window = limit;
    let found = loop {
        // Depths start at 1 (the create event): a window reaching 0 holds the whole history.
        let reaches_start = top.saturating_sub(window) <= 0;
        let min_depth = if reaches_start { i64::MIN } else { top - window };
        let found = events::ancestors_in_window(&mut conn, room_id, &from, min_depth, limit).await?;
        if found.len() as i64 >= limit || reaches_start {
            break found;
        }
        window = window.saturating_mul(4);
    };
    let visible = visibility::filter_visible_to_server(core, &mut conn, origin, found).await?;
    let rules = room_rules(core, &mut conn, room_id).await?;
    visible.iter().map(|e| serve(e, &rules)).collect()
}

/// `GET /query/directory?room_alias=`: the room an alias of this server names, and servers to
/// join it through: this one first (it holds the alias, and is in the room unless everyone
/// here left), then the others with a joined member.
pub async fn room_alias(core: &Core, alias: &RoomAliasId) -> Result<(String, Vec<String>)> {
    if alias.server_name() != core.server_name {
        return Err(Error::NotFound(format!("Room alias {alias} is not on this server")));
    }
    let mut conn = core.db.conn().await?;
    let (room_id, _) = rooms::alias_get(&mut conn, alias.as_str())
        .await?
        .ok_or_else(|| Error::NotFound(format!("Room alias {alias} not found")))?;
    let own = core.server_name.as_str();
    let mut servers = vec![own.to_owned()];
    servers.extend(
        rooms::servers_in_room(&mut conn, &room_id)
            .await?
            .into_iter()
            .filter(|s| s != own),
    );
    Ok((room_id, servers))
}

/// Refuses `origin` when it has no joined member in the room or the room's ACL denies it. An
/// unknown room has no members: refused the same, so a server cannot probe which rooms exist.
async fn ensure_may_read(conn: &mut AnyConnection, room_id: &str, origin: &str) -> Result<()> {
    if !rooms::server_in_room(conn, room_id, origin).await? {
        return Err(Error::Forbidden(format!("Server {origin} is not in room {room_id}")));
    }
    if !acl::server_allowed(conn, room_id, origin).await? {
        return Err(Error::Forbidden(format!(
            "Server {origin} is denied by the server ACL of room {room_id}"
        )));
    }
    Ok(())
}

/// The stored event, which must be in the room.
async fn event_in_room(conn: &mut AnyConnection, room_id: &str, event_id: &str) -> Result<StoredEvent> {
    events::get(conn, event_id)
        .await?
        .filter(|e| e.room_id == room_id)
        .ok_or_else(|| Error::NotFound(format!("Event {event_id} not found in room {room_id}")))
}

/// The state before the event (see `state_ids`) and its auth chain, as sorted IDs.
async fn state_and_chain_ids(
    core: &Core,
    conn: &mut AnyConnection,
    origin: &str,
    room_id: &str,
    event_id: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    ensure_may_read(conn, room_id, origin).await?;
    let stored = event_in_room(conn, room_id, event_id).await?;
    // A rejected event is not part of the room: its state is not served, as for an event
    // this server does not have.
    if stored.outlier || stored.rejected {
        return Err(Error::NotFound(format!(
            "The state at event {event_id} is not known here"
        )));
    }
    // Only the create event has no state before it.
    let state = state_store::load_or_empty(&core.db, conn, stored.state_before).await?;
    let mut state: Vec<String> = state.values().cloned().collect();
    state.sort();
    let mut chain: Vec<String> = auth_chain(conn, state.iter().cloned()).await?.into_iter().collect();
    chain.sort();
    Ok((state, chain))
}

async fn room_rules(core: &Core, conn: &mut AnyConnection, room_id: &str) -> Result<RoomVersionRules> {
    Ok(super::room_rules(core, conn, room_id).await?.1)
}

/// Loads stored events and serves them oldest first (by depth), which lets a receiver
/// process an auth chain in order.
async fn load_served(conn: &mut AnyConnection, rules: &RoomVersionRules, ids: &[String]) -> Result<Vec<ServedPdu>> {
    let mut stored = events::get_many(conn, ids).await?;
    stored.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.event_id.cmp(&b.event_id)));
    stored.iter().map(|e| serve(e, rules)).collect()
}

/// The PDU to send for a stored event: as signed, or redacted if it was redacted here.
fn serve(stored: &StoredEvent, rules: &RoomVersionRules) -> Result<ServedPdu> {
    let json = if stored.redacted_by.is_some() {
        let object: CanonicalJsonObject = serde_json::from_str(&stored.json)
            .map_err(|e| Error::internal(format!("stored event {}: {e}", stored.event_id)))?;
        let redacted = redact(object, &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redacting {}: {e}", stored.event_id)))?;
        serde_json::to_string(&redacted).map_err(Error::internal)?
    } else {
        stored.json.clone()
    };
    Ok(ServedPdu {
        event_id: stored.event_id.clone(),
        pdu: RawValue::from_string(json)
            .map_err(|e| Error::internal(format!("stored event {}: {e}", stored.event_id)))?,
    })
}

/// The IDs without repeats, at most `max` of them (no server asks about more; a longer list
/// is someone trying to make this server work).
fn dedup(ids: &[String], max: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .take(max)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use ruma::{room_alias_id, user_id};
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        events::{builder::EventTemplate, pipeline::StateAt as Supplied},
        rooms,
        storage::rooms as room_store,
        testing::{bob, join, message, on_each_backend, stored, Scene, REMOTE},
        Error,
    };

    async fn send(s: &Scene, template: EventTemplate) -> String {
        rooms::send(&s.local, &s.room_id, user_id!("@alice:local.test"), template, None)
            .await
            .unwrap()
            .event_id
    }

    async fn bob_joins(s: &Scene) -> String {
        let join = s.remote_event(bob(), join(), |_, _| {}).await;
        stored(s.receive(join.clone(), Supplied::PrevEvents).await);
        join.event_id.to_string()
    }

    fn ids(served: &[ServedPdu]) -> Vec<String> {
        served.iter().map(|p| p.event_id.clone()).collect()
    }

    fn json_of(served: &ServedPdu) -> Value {
        serde_json::from_str(served.pdu.get()).unwrap()
    }

    async fn depth(s: &Scene, event_id: &str) -> u64 {
        let mut conn = s.local.db.conn().await.unwrap();
        events::get(&mut conn, event_id).await.unwrap().unwrap().depth as u64
    }

    fn forbidden<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(Error::Forbidden(_)))
    }

    #[tokio::test]
    async fn a_server_without_a_member_in_the_room_is_refused() {
        on_each_backend(async |s| {
            let m = send(s, message("hello")).await;
            let local = &s.local;
            let room = s.room_id.as_str();
            let only = std::slice::from_ref(&m);
            assert!(forbidden(event(local, REMOTE, &m).await));
            assert!(forbidden(state_ids(local, REMOTE, room, &m).await));
            assert!(forbidden(state(local, REMOTE, room, &m).await));
            assert!(forbidden(event_auth(local, REMOTE, room, &m).await));
            assert!(forbidden(missing_events(local, REMOTE, room, &[], only, 10, 0).await));
            assert!(forbidden(backfill(local, REMOTE, room, only, 10).await));
            // An unknown room is refused the same way (nothing says whether it exists).
            assert!(forbidden(state_ids(local, REMOTE, "!unknown:local.test", &m).await));
            assert!(matches!(
                event(local, REMOTE, "$unknown").await,
                Err(Error::NotFound(_))
            ));
        })
        .await;
    }

    /// A member server gets the state before an event (without the event itself), the auth
    /// chain of that state, the event, and its auth chain.
    #[tokio::test]
    async fn a_member_server_reads_the_state_and_auth_chain_at_an_event() {
        on_each_backend(async |s| {
            let joined = bob_joins(s).await;
            let topic = send(s, EventTemplate::state("m.room.topic", "", json!({"topic": "t"}))).await;
            let after = send(s, message("after the topic")).await;
            let room = s.room_id.as_str();

            let at_topic = state_ids(&s.local, REMOTE, room, &topic).await.unwrap();
            assert!(at_topic.state.contains(&joined));
            assert!(!at_topic.state.contains(&topic), "the state before the event");
            let at_after = state_ids(&s.local, REMOTE, room, &after).await.unwrap();
            assert!(at_after.state.contains(&topic));
            assert_eq!(at_after.state.len(), at_topic.state.len() + 1);

            // The auth chain closes the state: every auth event of a state event is in the
            // state or the chain.
            let mut conn = s.local.db.conn().await.unwrap();
            let known: HashSet<&String> = at_after.state.iter().chain(&at_after.auth_chain).collect();
            for stored in events::get_many(&mut conn, &at_after.state).await.unwrap() {
                let pdu: Value = serde_json::from_str(&stored.json).unwrap();
                for auth in pdu["auth_events"].as_array().unwrap() {
                    assert!(known.contains(&auth.as_str().unwrap().to_owned()), "{auth} missing");
                }
            }
            let create = room_store::current_state_event(&mut conn, room, "m.room.create", "")
                .await
                .unwrap()
                .unwrap();
            assert!(at_after.auth_chain.contains(&create));

            // The full events, the same ones.
            let full = state(&s.local, REMOTE, room, &after).await.unwrap();
            let mut state_ids_again = ids(&full.state);
            state_ids_again.sort();
            assert_eq!(state_ids_again, at_after.state);
            assert_eq!(full.auth_chain.len(), at_after.auth_chain.len());
            let topic_pdu = full.state.iter().find(|p| p.event_id == topic).unwrap();
            assert_eq!(json_of(topic_pdu)["content"]["topic"], "t");

            let served = event(&s.local, REMOTE, &after).await.unwrap();
            assert_eq!(json_of(&served)["content"]["body"], "after the topic");
            assert!(
                json_of(&served).get("event_id").is_none(),
                "room v10 PDUs carry no event ID"
            );

            let auth = event_auth(&s.local, REMOTE, room, &after).await.unwrap();
            assert!(ids(&auth).contains(&create) && !ids(&auth).contains(&after));
            assert_eq!(ids(&auth)[0], create, "oldest first");

            // An event of another room is not found through this one.
            assert!(matches!(
                state_ids(&s.local, REMOTE, room, "$nothere").await,
                Err(Error::NotFound(_))
            ));

            // The directory: this server first, then the others in the room.
            let alias = room_alias_id!("#place:local.test");
            room_store::alias_insert(&mut conn, alias.as_str(), room, "@alice:local.test")
                .await
                .unwrap();
            let (room_id, servers) = room_alias(&s.local, alias).await.unwrap();
            assert_eq!(
                (room_id.as_str(), servers),
                (room, vec!["local.test".to_owned(), REMOTE.to_owned()])
            );
            assert!(matches!(
                room_alias(&s.local, room_alias_id!("#nope:local.test")).await,
                Err(Error::NotFound(_))
            ));
        })
        .await;
    }

    /// The events between what a server has and what it received, oldest first, as many as it
    /// asked for (closest to the latest first), not below its minimum depth.
    #[tokio::test]
    async fn missing_events_and_backfill_walk_back_in_order() {
        on_each_backend(async |s| {
            bob_joins(s).await;
            let mut sent = Vec::new();
            for i in 0..6 {
                sent.push(send(s, message(&format!("m{i}"))).await);
            }
            let room = s.room_id.as_str();
            let missing = async |earliest: &[String], latest: &[String], limit, min_depth| {
                ids(
                    &missing_events(&s.local, REMOTE, room, earliest, latest, limit, min_depth)
                        .await
                        .unwrap(),
                )
            };
            let (first, last) = (&sent[..1], &sent[5..]);
            assert_eq!(missing(first, last, 10, 0).await, sent[1..5]);
            assert_eq!(
                missing(first, last, 2, 0).await,
                sent[3..5],
                "the limit keeps the closest"
            );
            let min = depth(s, &sent[3]).await;
            assert_eq!(missing(&[], last, 10, min).await, sent[3..5]);
            assert!(missing(first, first, 10, 0).await.is_empty());
            assert!(missing(&[], &["$unknown".to_owned()], 10, 0).await.is_empty());

            for i in 0..30 {
                send(s, message(&format!("more {i}"))).await;
            }
            let head = s.extremities().await;
            assert_eq!(missing(&[], &head, 1000, 0).await.len(), MAX_MISSING_EVENTS as usize);

            // Backfill: the given events and those before them, deepest first.
            let back = ids(&backfill(&s.local, REMOTE, room, last, 3).await.unwrap());
            assert_eq!(back, [sent[5].clone(), sent[4].clone(), sent[3].clone()]);
            // A limit beyond the room's length reaches the create event, through windows that
            // widen until they hold the whole history.
            let everything = backfill(&s.local, REMOTE, room, last, 1000).await.unwrap();
            assert_eq!(json_of(everything.last().unwrap())["type"], "m.room.create");
            let all = backfill(&s.local, REMOTE, room, &head, 1000).await.unwrap();
            assert_eq!(all.len(), everything.len() + 30, "the whole room, not past it");
            assert!(everything
                .windows(2)
                .all(|w| json_of(&w[0])["depth"].as_u64() > json_of(&w[1])["depth"].as_u64()));
            assert!(backfill(&s.local, REMOTE, room, last, 0).await.unwrap().is_empty());
        })
        .await;
    }

    /// With `joined` history visibility, what was said before the server's first member joined
    /// is not served, by `/event` nor by `/backfill`.
    #[tokio::test]
    async fn joined_history_before_the_servers_member_joined_is_not_served() {
        on_each_backend(async |s| {
            let hv = EventTemplate::state("m.room.history_visibility", "", json!({"history_visibility": "joined"}));
            send(s, hv).await;
            let before = send(s, message("before bob")).await;
            let joined = bob_joins(s).await;
            let after = send(s, message("after bob")).await;
            let room = s.room_id.as_str();

            assert!(matches!(
                event(&s.local, REMOTE, &before).await,
                Err(Error::NotFound(_))
            ));
            assert!(event(&s.local, REMOTE, &after).await.is_ok());
            let back = ids(&backfill(&s.local, REMOTE, room, std::slice::from_ref(&after), 100)
                .await
                .unwrap());
            assert!(back.contains(&after) && back.contains(&joined));
            assert!(!back.contains(&before));
            let missing = ids(
                &missing_events(&s.local, REMOTE, room, &[], std::slice::from_ref(&after), 10, 0)
                    .await
                    .unwrap(),
            );
            assert!(missing.contains(&joined) && !missing.contains(&before));
        })
        .await;
    }

    #[tokio::test]
    async fn a_server_the_acl_denies_is_refused() {
        on_each_backend(async |s| {
            bob_joins(s).await;
            let m = send(s, message("hello")).await;
            let room = s.room_id.as_str();
            assert!(event(&s.local, REMOTE, &m).await.is_ok());
            let acl = EventTemplate::state("m.room.server_acl", "", json!({"allow": ["*"], "deny": [REMOTE]}));
            send(s, acl).await;
            assert!(forbidden(event(&s.local, REMOTE, &m).await));
            assert!(forbidden(state_ids(&s.local, REMOTE, room, &m).await));
            assert!(forbidden(
                backfill(&s.local, REMOTE, room, std::slice::from_ref(&m), 10).await
            ));
        })
        .await;
    }
}
