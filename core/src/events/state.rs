//! State before an event, and state resolution (v2, through ruma-state-res) when the prev
//! events' states differ.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionV2Rules, StateResolutionVersion},
    state_res, EventId, OwnedEventId,
};
use sqlx::AnyConnection;

use super::{auth_chain::auth_chain, cache::GraphEvent, Pdu, StateMap};
use crate::{
    storage::{events, state as state_store},
    Db, Error, Result,
};

/// The state before an event with these prev events.
#[derive(Debug)]
pub struct StateBefore {
    /// The stored group that is exactly this state, when the prev events agree on one.
    pub group: Option<i64>,
    /// A group to store a resolved state as a delta of.
    pub parent: Option<i64>,
    pub state: Arc<StateMap>,
}

/// The state before an event with these prev events (those that are stored).
/// With one distinct prev state, that group is reused; otherwise the states are resolved.
pub async fn state_before(
    db: &Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    prevs: &[Arc<GraphEvent>],
) -> Result<StateBefore> {
    // A rejected prev event counts with its state after, which is the state before it (a
    // rejected event changes nothing), as the spec has it: another server may well build on
    // an event this one rejected.
    let mut groups: Vec<i64> = prevs.iter().filter_map(|e| e.state_after).collect();
    groups.sort_unstable();
    groups.dedup();
    match groups.as_slice() {
        [] => Err(Error::NotFound("none of the prev events has known state".into())),
        [one] => Ok(StateBefore {
            group: Some(*one),
            parent: Some(*one),
            state: state_store::load(db, conn, *one).await?,
        }),
        many => {
            let mut states = Vec::new();
            for g in many {
                states.push(state_store::load(db, conn, *g).await?);
            }
            let resolved = resolve(conn, rules, &states).await?;
            Ok(StateBefore {
                group: None,
                parent: Some(many[0]),
                state: Arc::new(resolved),
            })
        }
    }
}

/// Resolves several states of one room into one.
pub async fn resolve(conn: &mut AnyConnection, rules: &RoomVersionRules, states: &[Arc<StateMap>]) -> Result<StateMap> {
    resolve_with(conn, rules, states, None).await
}

/// `resolve`, where the states may hold `pending`, an event being committed in the same
/// transaction and so not yet readable from the database. Left out, it would silently drop
/// out of the resolution (state resolution ignores events it cannot load), and the fork it
/// starts would resolve as if it had never happened.
pub async fn resolve_with(
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    states: &[Arc<StateMap>],
    pending: Option<&Pdu>,
) -> Result<StateMap> {
    // Room versions 1 uses state resolution v1, which ruma does not implement; v2 is a
    // strict improvement and is what those rooms get here.
    let v2_rules = match &rules.state_res {
        StateResolutionVersion::V2(r) => r.clone(),
        _ => StateResolutionV2Rules::V2_0,
    };
    // The pending event's auth chain: its auth events are stored, its own auth edges not yet.
    let pending_chain = match pending {
        Some(pdu) => {
            let auth: Vec<String> = pdu.auth_events.iter().map(|id| id.to_string()).collect();
            let mut chain = auth_chain(conn, auth.iter().cloned()).await?;
            chain.extend(auth);
            chain
        }
        None => HashSet::new(),
    };
    let mut chains = Vec::new();
    let mut needed: HashSet<String> = HashSet::new();
    for state in states {
        let mut chain = auth_chain(conn, state.values().cloned()).await?;
        if let Some(pdu) = pending {
            if state.values().any(|id| id == pdu.event_id.as_str()) {
                chain.extend(pending_chain.iter().cloned());
            }
        }
        needed.extend(state.values().cloned());
        needed.extend(chain.iter().cloned());
        chains.push(chain.into_iter().filter_map(|id| EventId::parse(id).ok()).collect());
    }
    let needed: Vec<String> = needed.into_iter().collect();
    let mut loaded: HashMap<OwnedEventId, Pdu> = HashMap::new();
    for stored in events::get_many(conn, &needed).await? {
        let mut pdu = Pdu::from_stored(&stored.event_id, &stored.json, rules)?;
        pdu.rejected = stored.rejected;
        loaded.insert(pdu.event_id.clone(), pdu);
    }
    if let Some(pdu) = pending {
        loaded.insert(pdu.event_id.clone(), pdu.clone());
    }
    let maps: Vec<state_res::StateMap<OwnedEventId>> = states.iter().map(|s| to_ruma(s)).collect();
    let fetch = |id: &EventId| loaded.get(id).cloned();
    let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| Some(conflicted_subgraph(conflicted, &loaded));
    let resolved = state_res::resolve(&rules.authorization, &v2_rules, maps.iter(), chains, fetch, subgraph)
        .map_err(|e| Error::Internal(format!("state resolution failed: {e}")))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

fn to_ruma(state: &StateMap) -> state_res::StateMap<OwnedEventId> {
    state
        .iter()
        .filter_map(|((t, k), id)| Some(((StateEventType::from(t.as_str()), k.clone()), EventId::parse(id).ok()?)))
        .collect()
}

/// The conflicted state subgraph (room v12): events on auth paths between conflicted events.
fn conflicted_subgraph(
    conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> ruma::state_res::utils::event_id_set::EventIdSet<OwnedEventId> {
    let targets: HashSet<&OwnedEventId> = conflicted.values().flatten().collect();
    // An event is in the subgraph when it reaches a conflicted event and is reached from one.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn reaches_target(
        id: &OwnedEventId,
        events: &HashMap<OwnedEventId, Pdu>,
        targets: &HashSet<&OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(r) = memo.get(id) {
            return *r;
        }
        memo.insert(id.clone(), false);
        let r = events.get(id).is_some_and(|pdu| {
            pdu.auth_events
                .iter()
                .any(|a| targets.contains(a) || reaches_target(a, events, targets, memo))
        });
        memo.insert(id.clone(), r);
        r
    }
    let mut out = ruma::state_res::utils::event_id_set::EventIdSet::new();
    let mut stack: Vec<OwnedEventId> = targets.iter().map(|t| (*t).clone()).collect();
    let mut visited = HashSet::new();
    while let Some(id) = stack.pop() {
        if !visited.insert(id.clone()) {
            continue;
        }
        if let Some(pdu) = events.get(&id) {
            for a in &pdu.auth_events {
                if targets.contains(a) || reaches_target(a, events, &targets, &mut reaches) {
                    out.extend([a.clone()]);
                    stack.push(a.clone());
                }
            }
        }
    }
    out.extend(targets.into_iter().cloned());
    out
}
