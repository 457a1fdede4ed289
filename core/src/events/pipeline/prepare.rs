//! The checks that need no lock: format, signatures and hashes, auth against the event's auth
//! events, the state before the event and auth against it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
    state_res, EventId, OwnedEventId,
};
use sqlx::AnyConnection;

use super::Outcome;
use crate::{
    events::{
        cache::{self, GraphEvent},
        state::{state_before, StateBefore},
        Pdu, StateMap,
    },
    storage::events,
    Core, Db, Error, Result,
};

/// How far a PDU is trusted.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// Built and signed here just now, on references read from the database: its signature
    /// is not checked again, and its references may come from the parsed-event cache as they
    /// are (see `cache`).
    Local,
    /// From elsewhere: verified against these keys, and its references checked against the
    /// database first.
    Remote(&'a PublicKeyMap),
}

/// Where the state before the event comes from.
#[derive(Clone, Debug)]
pub enum StateAt {
    /// From its stored prev events, resolved when they differ.
    PrevEvents,
    /// Learned elsewhere (another server's state at the event), for an event whose prev
    /// events are not all known here. Every event it names must be stored, as outliers at
    /// least.
    Supplied(Arc<StateMap>),
    /// Unknown: the event can only be stored as an outlier.
    Unknown,
}

/// What `prepare` found.
#[derive(Debug)]
pub enum Prepared {
    /// Already stored (with its state, or as an outlier when no state was given): nothing to
    /// do.
    Known(Outcome),
    /// Events the checks need are not stored: fetch them and prepare again.
    Missing(Missing),
    /// Checked: `commit` it under the room's lock, or `store_outlier` it.
    Checked(Checked),
}

/// The events a PDU's checks need that are not stored here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Auth events: fetch them (with their own auth chains, as outliers) first.
    pub auth_events: Vec<OwnedEventId>,
    /// Prev events that are unknown, or known without state (outliers): fetch them
    /// (`get_missing_events`), or supply the state before the event.
    pub prev_events: Vec<OwnedEventId>,
    /// Events of a supplied state.
    pub state_events: Vec<OwnedEventId>,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.auth_events.is_empty() && self.prev_events.is_empty() && self.state_events.is_empty()
    }
}

/// A PDU that passed `prepare`'s checks, or failed the auth rules (then it is stored as
/// rejected, or refused when local).
#[derive(Debug)]
pub struct Checked {
    pub pdu: Pdu,
    /// Why the auth rules reject the event, if they do.
    pub rejected: Option<String>,
    /// The state before the event; `None` when unknown (an outlier).
    pub(super) before: Option<StateBefore>,
    pub(super) prev: Vec<String>,
    pub(super) auth: Vec<String>,
    /// Already stored as an outlier: committing it turns that row into a full event.
    pub(super) was_outlier: bool,
    pub(super) local: bool,
}

impl Checked {
    /// How the event was stored when it was checked: `None` when it was not, `Some(true)` as
    /// an outlier. A writer that finds otherwise under the room's lock prepares it again.
    pub fn stored_as_outlier(&self) -> Option<bool> {
        self.was_outlier.then_some(true)
    }
}

/// Runs every check that needs no lock. Nothing is written.
pub async fn prepare(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    mut pdu: Pdu,
    trust: Trust<'_>,
    state_at: StateAt,
) -> Result<Prepared> {
    let db = &core.db;
    let local = matches!(trust, Trust::Local);
    let supplied = matches!(state_at, StateAt::Supplied(_));
    // A local event was just built on the current extremities: its ID is new. Only a received
    // one may already be here; an outlier given its state now becomes a full event.
    let mut was_outlier = false;
    if !local {
        if let Some(existing) = events::get(conn, pdu.event_id.as_str()).await? {
            if !existing.outlier || matches!(state_at, StateAt::Unknown) {
                return Ok(Prepared::Known(Outcome::stored(pdu, &existing)));
            }
            was_outlier = true;
        }
    }

    // 1. Format.
    state_res::check_pdu_format(&pdu.json, &rules.event_format).map_err(|e| {
        if e.contains("larger than maximum") {
            Error::TooLarge(e)
        } else {
            Error::BadJson(e)
        }
    })?;

    // 2. Signatures and hashes.
    if let Trust::Remote(keys) = trust {
        pdu = verify(keys, rules, pdu)?;
    }

    // What the checks read, with what is missing of it.
    let is_create = pdu.kind == TimelineEventType::RoomCreate;
    let auth: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    let mut missing = Missing::default();
    let mut auth_ids = auth.clone();
    if rules.authorization.room_create_event_id_as_room_id && !is_create {
        // From v12 the create event is not listed in auth_events; its ID is the room ID's.
        auth_ids.push(format!("${}", &pdu.room_id.as_str()[1..]));
    }
    let auth_events = load_refs(db, conn, rules, local, &auth_ids).await?;
    missing.auth_events = absent(&auth_ids, &auth_events);
    let prevs = match (&state_at, is_create) {
        (StateAt::PrevEvents, false) => {
            let prevs = load_refs(db, conn, rules, local, &prev).await?;
            // A prev event without state is an outlier: the state after it is not known.
            let with_state: Vec<Arc<GraphEvent>> = prevs
                .into_iter()
                .filter(|e| e.state_after.is_some() || e.pdu.rejected)
                .collect();
            missing.prev_events = absent(&prev, &with_state);
            with_state
        }
        _ => Vec::new(),
    };
    if let StateAt::Supplied(state) = &state_at {
        let ids: Vec<String> = state.values().cloned().collect();
        let known = events::known(conn, &ids).await?;
        missing.state_events = ids
            .iter()
            .filter(|id| !known.contains(*id))
            .filter_map(|id| EventId::parse(id).ok())
            .collect();
    }
    if !missing.is_empty() {
        return Ok(Prepared::Missing(missing));
    }

    // 3. Auth against the event's own auth events.
    let by_id: HashMap<OwnedEventId, Pdu> = auth_events
        .iter()
        .map(|e| (e.pdu.event_id.clone(), e.pdu.clone()))
        .collect();
    let mut rejected = state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| {
        by_id.get(id).cloned()
    })
    .err();

    // 4. The state before the event.
    let before = match state_at {
        _ if is_create => Some(StateBefore {
            group: None,
            parent: None,
            state: Arc::new(StateMap::new()),
        }),
        StateAt::PrevEvents => Some(state_before(db, conn, rules, &prevs).await?),
        StateAt::Supplied(state) => Some(StateBefore {
            group: None,
            parent: None,
            state,
        }),
        StateAt::Unknown => None,
    };

    // 5. Auth against the state before the event.
    if let (None, Some(before), false) = (&rejected, &before, is_create) {
        rejected = auth_against(db, conn, rules, &pdu, &before.state, supplied).await?;
    }
    // 6. A redaction of a known event of another room: the auth rules cannot see the target,
    // but such a redaction redacts nothing and has no place in this room's timeline.
    if let (None, Some(target)) = (&rejected, &pdu.redacts) {
        if let Some(stored) = events::get(conn, target.as_str()).await? {
            if stored.room_id != pdu.room_id.as_str() {
                rejected = Some(format!("redacts {target} of another room"));
            }
        }
    }
    Ok(Prepared::Checked(Checked {
        pdu,
        rejected,
        before,
        prev,
        auth,
        was_outlier,
        local,
    }))
}

/// Verifies a received event's signatures and hashes; on a hash mismatch the event is kept,
/// redacted, as the spec says.
pub(super) fn verify(keys: &PublicKeyMap, rules: &RoomVersionRules, pdu: Pdu) -> Result<Pdu> {
    match ruma::signatures::verify_event(keys, &pdu.json, rules) {
        Ok(Verified::All) => Ok(pdu),
        Ok(Verified::Signatures) => {
            let redacted = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
                .map_err(|e| Error::BadJson(e.to_string()))?;
            Pdu::from_json(pdu.event_id.clone(), redacted, rules)
        }
        Err(e) => Err(Error::Forbidden(format!("signature check failed: {e}"))),
    }
}

/// Stored events by ID: for a local event, IDs read from the database moments ago; a received
/// event's are checked against the database first (see `cache`).
async fn load_refs(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    local: bool,
    ids: &[String],
) -> Result<Vec<Arc<GraphEvent>>> {
    if local {
        cache::load(db, conn, rules, ids).await
    } else {
        cache::load_checked(db, conn, rules, ids).await
    }
}

/// The IDs in `wanted` that are not among `found`.
fn absent(wanted: &[String], found: &[Arc<GraphEvent>]) -> Vec<OwnedEventId> {
    let found: HashSet<&str> = found.iter().map(|e| e.pdu.event_id.as_str()).collect();
    wanted
        .iter()
        .filter(|id| !found.contains(id.as_str()))
        .filter_map(|id| EventId::parse(id).ok())
        .collect()
}

/// Why the auth rules reject `pdu` against `state`, if they do. `checked` loads the state's
/// events only after checking them against the database (a supplied state's IDs came from
/// outside).
pub(crate) async fn auth_against(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
    checked: bool,
) -> Result<Option<String>> {
    let relevant = load_relevant_state(db, conn, rules, pdu, state, checked).await?;
    Ok(
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
            relevant.get(&(t.to_string(), k.to_owned())).cloned()
        })
        .err(),
    )
}

/// Loads the state events the auth rules may consult for this event.
async fn load_relevant_state(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
    checked: bool,
) -> Result<HashMap<(String, String), Pdu>> {
    let mut types = state_res::auth_types_for_event(
        &pdu.kind,
        &pdu.sender,
        pdu.state_key.as_deref(),
        &pdu.content,
        &rules.authorization,
    )
    .unwrap_or_default()
    .into_iter()
    .map(|(t, k)| (t.to_string(), k))
    .collect::<Vec<_>>();
    // The create event is consulted even where it is not an auth event (v12).
    types.push(("m.room.create".into(), String::new()));
    let ids: Vec<String> = types.iter().filter_map(|k| state.get(k).cloned()).collect();
    let mut out = HashMap::new();
    for e in load_refs(db, conn, rules, !checked, &ids).await? {
        if let Some(key) = &e.pdu.state_key {
            out.insert((e.pdu.kind.to_string(), key.clone()), e.pdu.clone());
        }
    }
    Ok(out)
}
