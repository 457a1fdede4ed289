//! The one pipeline every PDU takes, local or remote, in the order of the spec's checks on
//! receipt: format, signatures and hashes, auth against the event's auth events, auth against
//! the state before the event, soft-fail against current state; then persistence of the event,
//! its state, the forward extremities, current state and memberships, and last its stream
//! position.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
    state_res, EventId, OwnedEventId,
};
use serde_json::Value;
use sqlx::AnyConnection;

use super::{
    cache::{self, GraphEvent},
    state::{resolve, state_before, StateBefore},
    Pdu, StateMap,
};
use crate::{
    db::batch::Batch,
    storage::{
        events,
        rooms::{self, Head},
        state as state_store,
    },
    Core, Error, Result,
};

/// Where a PDU comes from.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// Built here, under the room lock held by this transaction; `txn` is
    /// `(user, device, txn_id)` for idempotent sends.
    Local {
        txn: Option<(&'a str, &'a str, &'a str)>,
        /// The room's head the event was built on, so the pipeline need not read it again:
        /// read under the room's lock in this transaction (nothing else can move it), or,
        /// when `unlocked`, remembered from this process's last send into the room, and then
        /// set only if the room still has it (see `rooms::turns`). An unlocked send may run
        /// outside a transaction: its writes must then go in one statement.
        head: &'a Head,
        unlocked: bool,
        /// SQL the accepted event's write batch ends with (see `WriteTx::release_sql`).
        closing: Option<&'static str>,
    },
    Remote,
}

impl<'a> Origin<'a> {
    /// A local event whose batch ends with its own writes.
    pub fn local(txn: Option<(&'a str, &'a str, &'a str)>, head: &'a Head, unlocked: bool) -> Origin<'a> {
        Origin::Local {
            txn,
            head,
            unlocked,
            closing: None,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub pdu: Pdu,
    /// The event's position in the timeline stream; `None` when rejected or soft-failed.
    pub stream_pos: Option<i64>,
    /// The state group after the event.
    pub state_after: Option<i64>,
    pub rejected: Option<String>,
    pub soft_failed: bool,
    /// The room's head after an accepted event.
    pub head: Option<Head>,
    /// The event was built on an unlocked head that had moved, or its writes did not fit one
    /// statement: nothing was written; send it again under the room's lock.
    pub head_moved: bool,
}

/// Runs every check and persists the PDU inside the caller's transaction.
pub async fn persist(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    mut pdu: Pdu,
    keys: &PublicKeyMap,
    origin: Origin<'_>,
) -> Result<Outcome> {
    let db = &core.db;
    let is_local = matches!(origin, Origin::Local { .. });
    // A local event was just built on the current extremities: its ID is new. Only a received
    // one may already be here.
    if !is_local {
        if let Some(existing) = events::get(conn, pdu.event_id.as_str()).await? {
            return Ok(Outcome {
                pdu,
                stream_pos: existing.stream_pos,
                state_after: existing.state_after,
                rejected: existing.rejected.then(|| "previously rejected".to_owned()),
                soft_failed: existing.soft_failed,
                head: None,
                head_moved: false,
            });
        }
    }
    // The references of a local event were read from the database moments ago; a received
    // event's references are checked against it (see `cache`).
    let load_refs = async |conn: &mut AnyConnection, ids: &[String]| -> Result<Vec<Arc<GraphEvent>>> {
        if is_local {
            cache::load(db, conn, rules, ids).await
        } else {
            cache::load_checked(db, conn, rules, ids).await
        }
    };

    // 1. Format.
    state_res::check_pdu_format(&pdu.json, &rules.event_format).map_err(|e| {
        if e.contains("larger than maximum") {
            Error::TooLarge(e)
        } else {
            Error::BadJson(e)
        }
    })?;

    // 2. Signatures and hashes; a hash mismatch keeps the event, redacted. A local event was
    //    hashed and signed by the builder just now, with the key that would verify it.
    let verified = if is_local {
        Ok(Verified::All)
    } else {
        ruma::signatures::verify_event(keys, &pdu.json, rules)
    };
    match verified {
        Ok(Verified::All) => {}
        Ok(Verified::Signatures) => {
            let redacted = ruma::canonical_json::redact(pdu.json.clone(), &rules.redaction, None)
                .map_err(|e| Error::BadJson(e.to_string()))?;
            pdu = Pdu::from_json(pdu.event_id.clone(), redacted, rules)?;
        }
        Err(e) => return Err(Error::Forbidden(format!("signature check failed: {e}"))),
    }

    // 3. Auth against the event's own auth events.
    let auth_ids: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
    let mut auth_events: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut to_load = auth_ids.clone();
    if rules.authorization.room_create_event_id_as_room_id {
        // From v12 the create event is not listed in auth_events; its ID is the room ID's.
        to_load.push(format!("${}", &pdu.room_id.as_str()[1..]));
    }
    for e in load_refs(conn, &to_load).await? {
        auth_events.insert(e.pdu.event_id.clone(), e.pdu.clone());
    }
    let mut rejected = state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| {
        auth_events.get(id).cloned()
    })
    .err();

    // 4. State before the event.
    let is_create = pdu.kind == TimelineEventType::RoomCreate;
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    let before = if is_create {
        StateBefore {
            group: None,
            parent: None,
            state: Arc::new(StateMap::new()),
        }
    } else {
        let prevs = load_refs(conn, &prev).await?;
        state_before(db, conn, rules, &prevs).await?
    };
    let before_state = before.state.clone();

    // 5. Auth against the state before the event.
    if rejected.is_none() && !is_create {
        let relevant = load_relevant_state(db, conn, rules, &pdu, &before_state).await?;
        rejected =
            state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
                relevant.get(&(t.to_string(), k.to_owned())).cloned()
            })
            .err();
    }

    // 6. Soft fail: a remote event that passes against its own history but not against the
    //    current state is kept out of the timeline and the forward extremities.
    let remote_head;
    let head = match origin {
        Origin::Local { head, .. } => head,
        Origin::Remote => {
            remote_head = rooms::head(conn, pdu.room_id.as_str()).await?;
            &remote_head
        }
    };
    let current_group = head.current_group;
    let mut soft_failed = false;
    if rejected.is_none()
        && matches!(origin, Origin::Remote)
        && !is_create
        && current_group.is_some()
        && current_group != before.group
    {
        let current = state_store::load(db, conn, current_group.unwrap_or_default()).await?;
        let relevant = load_relevant_state(db, conn, rules, &pdu, &current).await?;
        soft_failed =
            state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
                relevant.get(&(t.to_string(), k.to_owned())).cloned()
            })
            .is_err();
    }
    pdu.rejected = rejected.is_some();
    // A rejected local event is an error for its sender: nothing of it is kept.
    if is_local && rejected.is_some() {
        return Ok(Outcome {
            pdu,
            stream_pos: None,
            state_after: before.group,
            rejected,
            soft_failed,
            head: None,
            head_moved: false,
        });
    }

    // State groups before and after.
    let room_id = pdu.room_id.to_string();
    // A resolved state before the event is stored once; an agreed one is reused as it is.
    let before_group = match (is_create, before.group) {
        (true, _) => None,
        (false, Some(g)) => Some(g),
        (false, None) => Some(state_store::store(db, conn, &room_id, before.parent, before_state.clone()).await?),
    };
    let after_group = match (&pdu.state_key, rejected.is_some()) {
        (Some(key), false) => {
            let mut after = (*before_state).clone();
            after.insert((pdu.kind.to_string(), key.clone()), pdu.event_id.to_string());
            Some(state_store::store(db, conn, &room_id, before_group, Arc::new(after)).await?)
        }
        _ => before_group,
    };

    let json = serde_json::to_string(&pdu.json).map_err(Error::internal)?;
    let txn = match origin {
        Origin::Local { txn, .. } => txn,
        Origin::Remote => None,
    };
    let event_id = pdu.event_id.to_string();
    let accepted = rejected.is_none() && !soft_failed;
    let event_type = pdu.kind.to_string();
    // The writes are collected and sent at the end in one statement (see `db::batch`): what
    // is read below is the room as it was before this event.
    let mut batch = db.batch();
    events::insert(
        &mut batch,
        &events::NewEventRow {
            event_id: &event_id,
            room_id: &room_id,
            depth: pdu.depth,
            event_type: &event_type,
            state_key: pdu.state_key.as_deref(),
            sender: pdu.sender.as_str(),
            origin_server_ts: i64::from(pdu.origin_server_ts.0),
            json: &json,
            outlier: false,
            rejected_reason: rejected.as_deref(),
            soft_failed,
            state_before: before_group,
            state_after: after_group,
            txn,
        },
        accepted,
    );
    events::insert_edges(&mut batch, &event_id, &prev, &auth_ids);

    if !accepted {
        batch.run(conn).await?;
        cache::remember(db, &pdu, after_group);
        return Ok(Outcome {
            pdu,
            stream_pos: None,
            state_after: after_group,
            rejected,
            soft_failed,
            head: None,
            head_moved: false,
        });
    }

    // Forward extremities: the event replaces its prev events, unless a known event already
    // builds on it (a received event arriving late; a local one was built just now).
    let referenced = !is_local && events::is_referenced(conn, &event_id).await?;
    let mut extremities = head.extremities.clone();
    extremities.retain(|e| !prev.contains(e));
    if !referenced && !extremities.contains(&event_id) {
        extremities.push(event_id.clone());
    }
    extremities.sort_unstable();

    // Current state: the event's own state, or the resolution of every extremity's.
    let old_current = state_store::load_or_empty(db, conn, current_group).await?;
    let new_current_group = if extremities == [event_id.as_str()] {
        after_group
    } else {
        let others: Vec<String> = extremities.iter().filter(|e| **e != event_id).cloned().collect();
        let mut groups: Vec<i64> = events::get_many(conn, &others)
            .await?
            .iter()
            .filter_map(|e| e.state_after)
            .collect();
        if extremities.contains(&event_id) {
            groups.extend(after_group);
        }
        groups.sort_unstable();
        groups.dedup();
        if groups.len() <= 1 {
            groups.first().copied().or(after_group)
        } else {
            let mut states = Vec::new();
            for g in &groups {
                states.push(state_store::load(db, conn, *g).await?);
            }
            let resolved = resolve(conn, rules, &states).await?;
            Some(state_store::store(db, conn, &room_id, after_group, Arc::new(resolved)).await?)
        }
    };
    let new_current = state_store::load_or_empty(db, conn, new_current_group).await?;
    if new_current_group != current_group {
        rooms::apply_current_state_delta(&mut batch, &room_id, &old_current, &new_current);
    }

    if pdu.kind == TimelineEventType::RoomRedaction {
        apply_redaction(conn, rules, &pdu, &before_state, &mut batch).await?;
    }
    store_relation(&mut batch, &pdu);
    crate::rooms::search::index_event(&mut batch, &pdu);
    let unlocked = matches!(origin, Origin::Local { unlocked: true, .. });
    rooms::set_head(
        &mut batch,
        &room_id,
        new_current_group,
        &extremities,
        unlocked.then_some(head),
    )?;
    update_memberships(conn, &pdu, &old_current, &new_current, &mut batch).await?;
    crate::push::evaluate(
        core,
        conn,
        rules,
        &pdu,
        &new_current,
        head.push_members.as_deref(),
        &mut batch,
    )
    .await?;

    // Last: the stream position, allocated by the statement that writes it (see streams.rs
    // for why it must come last).
    batch.allocate_position("events");
    if let Origin::Local {
        closing: Some(closing), ..
    } = origin
    {
        batch.close_with(closing)?;
    }
    // Outside a transaction only one statement is atomic: a bigger unlocked send is sent again
    // under the lock.
    let ran = if unlocked && !batch.is_one_statement() {
        None
    } else {
        match batch.run(conn).await {
            // The room is being written by a sender holding its row (see `rooms::set_head`).
            Err(Error::Database(sqlx::Error::Database(e)))
                if unlocked && e.code().as_deref() == Some(rooms::LOCK_NOT_AVAILABLE) =>
            {
                None
            }
            other => other?,
        }
    };
    let Some(pos) = ran else {
        if unlocked {
            return Ok(Outcome {
                pdu,
                stream_pos: None,
                state_after: after_group,
                rejected: None,
                soft_failed: false,
                head: None,
                head_moved: true,
            });
        }
        return Err(Error::Internal("the event batch allocated no position".into()));
    };
    // The next local event builds on this one.
    cache::remember(db, &pdu, after_group);
    Ok(Outcome {
        pdu,
        stream_pos: Some(pos),
        state_after: after_group,
        rejected: None,
        soft_failed: false,
        head: Some(Head {
            current_group: new_current_group.or(current_group),
            extremities,
            push_members: None,
        }),
        head_moved: false,
    })
}

/// Loads the state events the auth rules may consult for this event.
async fn load_relevant_state(
    db: &crate::Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
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
    for e in cache::load(db, conn, rules, &ids).await? {
        if let Some(key) = &e.pdu.state_key {
            out.insert((e.pdu.kind.to_string(), key.clone()), e.pdu.clone());
        }
    }
    Ok(out)
}

/// Marks the target redacted when the redaction is allowed: same sender, or a sender with the
/// power to redact others (checked against the state before the redaction).
async fn apply_redaction<'q>(
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &'q Pdu,
    state: &StateMap,
    batch: &mut Batch<'q>,
) -> Result<()> {
    let Some(target_id) = &pdu.redacts else { return Ok(()) };
    let Some(target) = events::get(conn, target_id.as_str()).await? else {
        return Ok(());
    };
    if target.room_id != pdu.room_id.as_str() {
        return Ok(());
    }
    let allowed = target.sender == pdu.sender.as_str()
        || crate::rooms::power::user_level(conn, rules, state, pdu.sender.as_str()).await?
            >= crate::rooms::power::action_level(conn, rules, state, "redact").await?;
    if allowed {
        events::set_redacted_by(batch, target_id.as_str(), pdu.event_id.as_str());
    }
    Ok(())
}

fn store_relation<'q>(batch: &mut Batch<'q>, pdu: &'q Pdu) {
    let content = pdu.content_value();
    let Some(rel) = content.get("m.relates_to") else {
        return;
    };
    let (Some(rel_type), Some(target)) = (
        rel.get("rel_type").and_then(Value::as_str),
        rel.get("event_id").and_then(Value::as_str),
    ) else {
        return;
    };
    let key = rel.get("key").and_then(Value::as_str);
    batch
        .push(
            "INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, aggregation_key)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            5,
        )
        .bind(pdu.event_id.as_str())
        .bind(pdu.room_id.as_str())
        .bind(target.to_owned())
        .bind(rel_type.to_owned())
        .bind(key.map(str::to_owned));
}

/// Mirrors changed `m.room.member` state into `room_memberships`, at the batch's position.
async fn update_memberships<'q>(
    conn: &mut AnyConnection,
    pdu: &'q Pdu,
    old: &StateMap,
    new: &StateMap,
    batch: &mut Batch<'q>,
) -> Result<()> {
    // Member entries are never removed from a state, only replaced.
    let changed: Vec<(String, String)> = state_store::diff(old, new)
        .into_iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .filter_map(|((_, user), id)| Some((user.clone(), id?.clone())))
        .collect();
    for (user_id, event_id) in changed {
        // Usually the change is the event being persisted; others (from state resolution) are
        // read back.
        let content: Value = if event_id == pdu.event_id.as_str() {
            serde_json::from_str(pdu.content.get()).unwrap_or_default()
        } else {
            let Some(stored) = events::get(conn, &event_id).await? else {
                continue;
            };
            serde_json::from_str::<Value>(&stored.json)
                .ok()
                .map(|j| j["content"].clone())
                .unwrap_or_default()
        };
        let text = |key: &str| content[key].as_str().map(str::to_owned);
        rooms::set_membership(
            batch,
            rooms::NewMembership {
                room_id: pdu.room_id.as_str(),
                user_id,
                membership: text("membership").unwrap_or_else(|| "leave".to_owned()),
                event_id,
                displayname: text("displayname"),
                avatar_url: text("avatar_url"),
            },
        );
    }
    Ok(())
}
