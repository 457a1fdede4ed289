//! Parsed events by ID, for the graph's hot reads (prev events, auth events, the state the auth
//! rules consult). An event's JSON, its rejection and its state groups never change once it is
//! stored, so a parsed copy stays true; only the mutable columns (stream position, redaction)
//! are left out.
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

fn parse_and_keep(db: &Db, stored: &events::StoredEvent, rules: &RoomVersionRules) -> Result<Arc<GraphEvent>> {
    let mut pdu = Pdu::from_stored(&stored.event_id, &stored.json, rules)?;
    pdu.rejected = stored.rejected;
    let event = Arc::new(GraphEvent {
        pdu,
        state_after: stored.state_after,
    });
    db.caches().graph_events.insert(stored.event_id.clone(), event.clone());
    Ok(event)
}
