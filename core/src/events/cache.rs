//! Parsed events by ID, for the graph's hot reads (prev events, auth events, the state the auth
//! rules consult). A full event's JSON, its rejection and its state groups never change once it
//! is stored, so a parsed copy stays true, also across processes; only the mutable columns
//! (stream position, redaction) are left out. Outliers are not kept: they gain state later.
//!
//! Invariant: callers look up IDs they learned from the database (forward extremities, a state
//! map, a stored event's own references), never IDs taken from a request or a remote PDU. A row
//! read inside a transaction that later rolled back may linger here, but then nothing stored
//! refers to it, so such an entry is never asked for.

use std::sync::Arc;

use ruma::room_version_rules::RoomVersionRules;
use sqlx::AnyConnection;

use super::Pdu;
use crate::{storage::events, Db, Result};

/// A stored event as the graph needs it.
#[derive(Debug)]
pub struct GraphEvent {
    /// With `rejected` set from the stored row.
    pub pdu: Pdu,
    pub state_after: Option<i64>,
}

/// The events with these IDs (missing ones are absent), from the cache or one query.
pub async fn load(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    ids: &[String],
) -> Result<Vec<Arc<GraphEvent>>> {
    let cache = &db.caches().graph_events;
    let mut out = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match cache.get(id) {
            Some(e) => out.push(e),
            None => missing.push(id.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    for stored in events::get_many(conn, &missing).await? {
        out.push(parse_and_keep(db, &stored, rules)?);
    }
    Ok(out)
}

/// Like `load`, for IDs from outside (a remote PDU's references): the database says which
/// exist; only their parsing may come from the cache.
pub async fn load_checked(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    ids: &[String],
) -> Result<Vec<Arc<GraphEvent>>> {
    let mut out = Vec::with_capacity(ids.len());
    for stored in events::get_many(conn, ids).await? {
        match db.caches().graph_events.get(&stored.event_id) {
            Some(e) => out.push(e),
            None => out.push(parse_and_keep(db, &stored, rules)?),
        }
    }
    Ok(out)
}

/// Remembers an event this server just committed (the next local event's prev event).
pub fn remember(db: &Db, pdu: &Pdu, state_after: Option<i64>) {
    db.caches().graph_events.insert(
        pdu.event_id.to_string(),
        Arc::new(GraphEvent {
            pdu: pdu.clone(),
            state_after,
        }),
    );
}

/// Parses a stored event, and keeps it unless it is an outlier: an outlier's state is not
/// known yet and may be later, so its entry would not stay true.
fn parse_and_keep(db: &Db, stored: &events::StoredEvent, rules: &RoomVersionRules) -> Result<Arc<GraphEvent>> {
    let mut pdu = Pdu::from_stored(&stored.event_id, &stored.json, rules)?;
    pdu.rejected = stored.rejected;
    let event = Arc::new(GraphEvent {
        pdu,
        state_after: stored.state_after,
    });
    if !stored.outlier {
        db.caches().graph_events.insert(stored.event_id.clone(), event.clone());
    }
    Ok(event)
}

/// The cache behind `Caches::graph_events`, holding about `capacity` events.
///
/// Most events enter it once and are read once more soon after, as the next event's prev
/// event, while the auth events are read by every event of their room. quick_cache keeps 97%
/// of its space for entries read more than once by default, which leaves each shard room for
/// about one fresh event: rooms sending at the same time evicted each other's last event
/// before their next send read it, and that read went to the database inside the room's lock.
/// Half the space for fresh entries keeps them.
pub fn new_cache<V: Clone>(capacity: usize) -> quick_cache::sync::Cache<String, V> {
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(capacity)
        .weight_capacity(capacity as u64)
        .hot_allocation(0.5)
        .build()
        .expect("static cache options are valid");
    quick_cache::sync::Cache::with_options(options, Default::default(), Default::default(), Default::default())
}

#[cfg(test)]
mod tests {
    use super::new_cache;

    /// Sixteen rooms sending in turn, each send reading its room's auth events and last event
    /// and then adding its own: every last event is still there when its room sends again.
    #[test]
    fn each_rooms_last_event_outlives_other_rooms_sends() {
        let cache = new_cache::<u32>(crate::db::GRAPH_EVENTS_CACHED);
        let auth = |room: u32, i: u32| format!("auth-{room}-{i}");
        for room in 0..16 {
            for i in 0..3 {
                cache.insert(auth(room, i), i);
            }
        }
        let mut misses = Vec::new();
        for round in 0..50u32 {
            for room in 0..16u32 {
                for i in 0..3 {
                    assert!(
                        cache.get(&auth(room, i)).is_some(),
                        "auth event {i} of room {room} evicted"
                    );
                }
                if round > 0 && cache.get(&format!("{room}-{}", round - 1)).is_none() {
                    misses.push((room, round));
                }
                cache.insert(format!("{room}-{round}"), round);
            }
        }
        assert!(
            misses.is_empty(),
            "last events evicted before their room's next send: {misses:?}"
        );
    }
}
