//! The step under the room's lock: soft fail against current state, then the writes of the
//! event, its state, the room's head, memberships and the writer's own steps, in one batch.

use std::{future::Future, sync::Arc};

use ruma::{events::TimelineEventType, room_version_rules::RoomVersionRules};
use serde_json::Value;
use sqlx::AnyConnection;

use super::{prepare::auth_against, Checked, Outcome};
use crate::{
    db::batch::Batch,
    events::{cache, state::resolve_with, Pdu, StateMap},
    storage::{
        events::{self, Slot},
        rooms::{self, Head},
        state as state_store,
    },
    Core, Error, Result,
};

/// How an accepted event's writes reach the database; chosen by the room writer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Write<'a> {
    /// `(user, device, txn_id)` of a local send, for idempotence.
    pub txn: Option<(&'a str, &'a str, &'a str)>,
    /// The head was not read under the room's lock but remembered from this process's last
    /// send into the room: it is set only if the room still has it (see `rooms::turns`), and
    /// the writes may run outside a transaction, so they must go in one statement.
    pub unlocked: bool,
    /// SQL the write batch ends with (see `WriteTx::release_sql`).
    pub closing: Option<&'static str>,
    /// History fetched from another server (backfill): the event goes below every live stream
    /// position (`Slot::Backfilled`) and leaves the room's head, current state and memberships
    /// as they are; it is never soft-failed, since current state says nothing about the past.
    pub backfilled: bool,
}

/// An accepted event as the writer's steps see it.
pub struct Accepted<'a> {
    /// The state before the event.
    pub before: &'a StateMap,
    /// The room's current state after the event (for a backfilled event, which does not
    /// change it, the state before the event).
    pub current: &'a StateMap,
    /// The room's head the event was committed on.
    pub head: &'a Head,
    /// Old history fetched from another server: nobody is notified of it.
    pub backfilled: bool,
}

/// What committing an accepted event also writes besides the graph, the room's state and its
/// memberships (relations, search, push actions, redactions): supplied by the room writer,
/// so that the graph knows nothing of them.
pub trait Steps: Sync {
    fn accepted<'q>(
        &self,
        core: &Core,
        conn: &mut AnyConnection,
        rules: &RoomVersionRules,
        pdu: &'q Pdu,
        at: &Accepted<'_>,
        batch: &mut Batch<'q>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// No steps beyond the graph's own writes.
pub struct NoSteps;

impl Steps for NoSteps {
    async fn accepted<'q>(
        &self,
        _: &Core,
        _: &mut AnyConnection,
        _: &RoomVersionRules,
        _: &'q Pdu,
        _: &Accepted<'_>,
        _: &mut Batch<'q>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Commits a checked event on top of `head`, inside the caller's transaction, which holds the
/// room's lock (or, with `write.unlocked`, the room's turn; see `Write`).
pub async fn commit(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    checked: Checked,
    head: &Head,
    write: Write<'_>,
    steps: &impl Steps,
) -> Result<Outcome> {
    let db = &core.db;
    let Checked {
        mut pdu,
        rejected,
        before,
        prev,
        auth,
        was_outlier,
        local,
    } = checked;
    let Some(before) = before else {
        return Err(Error::Internal(
            "an event of unknown state can only be an outlier".into(),
        ));
    };
    let is_create = pdu.kind == TimelineEventType::RoomCreate;
    let before_state = before.state.clone();

    // 6. Soft fail: a received event that passes against its own history but not against the
    //    current state is kept out of the timeline and the forward extremities.
    let current_group = head.current_group;
    let soft_failed =
        rejected.is_none() && !local && !is_create && current_group.is_some() && current_group != before.group && {
            let current = state_store::load(db, conn, current_group.unwrap_or_default()).await?;
            auth_against(db, conn, rules, &pdu, &current, false).await?.is_some()
        };
    pdu.rejected = rejected.is_some();
    // A rejected local event is an error for its sender: nothing of it is kept.
    if local && rejected.is_some() {
        return Ok(Outcome::not_in_timeline(pdu, before.group, rejected, false));
    }

    // State groups before and after. A resolved or supplied state before the event is stored
    // once; an agreed one is reused as it is.
    let room_id = pdu.room_id.to_string();
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

    let accepted = rejected.is_none() && !soft_failed;
    let text = RowText::of(&pdu)?;
    let event_id = &text.event_id;
    let row = events::NewEventRow {
        rejected_reason: rejected.as_deref(),
        soft_failed,
        state_before: before_group,
        state_after: after_group,
        txn: write.txn,
        ..text.row(&pdu)
    };
    let slot = match (accepted, write.backfilled) {
        (false, _) => Slot::None,
        (true, false) => Slot::Live,
        (true, true) => Slot::Backfilled,
    };
    let mut batch = db.batch();
    if was_outlier {
        events::promote_outlier(&mut batch, &row, slot);
    } else {
        events::insert(&mut batch, &row, slot);
    }
    events::insert_edges(&mut batch, event_id, &prev, &auth);

    if !accepted {
        batch.run(conn).await?;
        cache::remember(db, &pdu, after_group);
        return Ok(Outcome::not_in_timeline(pdu, after_group, rejected, soft_failed));
    }
    if write.backfilled {
        // Old history: the writer's steps, then a position of the backfill stream, which sync
        // never reads as new; the room's head, current state and memberships stay.
        let at = Accepted {
            before: &before_state,
            current: &before_state,
            head,
            backfilled: true,
        };
        steps.accepted(core, conn, rules, &pdu, &at, &mut batch).await?;
        batch.allocate_position("backfill");
        let pos = batch
            .run(conn)
            .await?
            .ok_or_else(|| Error::Internal("the backfill batch allocated no position".into()))?;
        cache::remember(db, &pdu, after_group);
        let mut outcome = Outcome::not_in_timeline(pdu, after_group, None, false);
        outcome.stream_pos = Some(-pos);
        return Ok(outcome);
    }

    // Forward extremities: the event replaces its prev events, unless a known event already
    // builds on it (a received event arriving late; a local one was built just now).
    let referenced = !local && events::is_referenced(conn, event_id).await?;
    let mut extremities = head.extremities.clone();
    extremities.retain(|e| !prev.contains(e));
    if !referenced && !extremities.contains(event_id) {
        extremities.push(event_id.clone());
    }
    extremities.sort_unstable();

    // Current state: the event's own state, or the resolution of every extremity's.
    let old_current = state_store::load_or_empty(db, conn, current_group).await?;
    let new_current_group = current_group_after(core, conn, rules, &pdu, &extremities, after_group).await?;
    let new_current = state_store::load_or_empty(db, conn, new_current_group).await?;
    if new_current_group != current_group {
        rooms::apply_current_state_delta(&mut batch, &room_id, &old_current, &new_current);
    }
    // Before the rows that grow with the room (memberships, push actions): an unlocked head's
    // compare-and-set must be in the batch's first statement (`Batch::require_last`).
    rooms::set_head(
        &mut batch,
        &room_id,
        new_current_group,
        &extremities,
        write.unlocked.then_some(head),
    )?;
    update_memberships(conn, &pdu, &old_current, &new_current, &mut batch).await?;
    let at = Accepted {
        before: &before_state,
        current: &new_current,
        head,
        backfilled: false,
    };
    steps.accepted(core, conn, rules, &pdu, &at, &mut batch).await?;

    // Last: the stream position, allocated by the statement that writes it (see streams.rs
    // for why it must come last).
    batch.allocate_position("events");
    if let Some(closing) = write.closing {
        batch.close_with(closing)?;
    }
    // Outside a transaction only one statement is atomic: a bigger unlocked send is sent again
    // under the lock.
    let ran = if write.unlocked && !batch.is_one_statement() {
        None
    } else {
        match batch.run(conn).await {
            // The room is being written by a sender holding its row (see `rooms::set_head`).
            Err(Error::Database(sqlx::Error::Database(e)))
                if write.unlocked && e.code().as_deref() == Some(rooms::LOCK_NOT_AVAILABLE) =>
            {
                None
            }
            other => other?,
        }
    };
    let Some(pos) = ran else {
        if write.unlocked {
            let mut outcome = Outcome::not_in_timeline(pdu, after_group, None, false);
            outcome.head_moved = true;
            return Ok(outcome);
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
        outlier: false,
        head: Some(Head {
            current_group: new_current_group.or(current_group),
            extremities,
            push_members: None,
        }),
        head_moved: false,
    })
}

/// The room's current state group once `event_id` (whose state after is `after_group`) is
/// among `extremities`: its own state when it is the only one, else every extremity's state
/// resolved.
async fn current_group_after(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    extremities: &[String],
    after_group: Option<i64>,
) -> Result<Option<i64>> {
    let db = &core.db;
    let (room_id, event_id) = (pdu.room_id.as_str(), pdu.event_id.as_str());
    if extremities == [event_id] {
        return Ok(after_group);
    }
    let others: Vec<String> = extremities.iter().filter(|e| *e != event_id).cloned().collect();
    let mut groups: Vec<i64> = events::get_many(conn, &others)
        .await?
        .iter()
        .filter_map(|e| e.state_after)
        .collect();
    if extremities.iter().any(|e| e == event_id) {
        groups.extend(after_group);
    }
    groups.sort_unstable();
    groups.dedup();
    if groups.len() <= 1 {
        return Ok(groups.first().copied().or(after_group));
    }
    let mut states = Vec::new();
    for g in &groups {
        states.push(state_store::load(db, conn, *g).await?);
    }
    // The event is written with the rest of the batch, after this: it is not readable yet.
    let resolved = resolve_with(conn, rules, &states, Some(pdu)).await?;
    Ok(Some(
        state_store::store(db, conn, room_id, after_group, Arc::new(resolved)).await?,
    ))
}

/// Stores a checked event whose state is unknown as an outlier: its row and auth references,
/// no state, no stream position; the room's head does not move. Its prev references are added
/// when it becomes a full event, so that it makes no known event look referenced meanwhile.
pub async fn store_outlier(core: &Core, conn: &mut AnyConnection, checked: Checked) -> Result<Outcome> {
    let Checked {
        mut pdu,
        rejected,
        auth,
        ..
    } = checked;
    pdu.rejected = rejected.is_some();
    let text = RowText::of(&pdu)?;
    let row = events::NewEventRow {
        outlier: true,
        rejected_reason: rejected.as_deref(),
        ..text.row(&pdu)
    };
    let mut batch = core.db.batch();
    events::insert(&mut batch, &row, Slot::None);
    events::insert_edges(&mut batch, &text.event_id, &[], &auth);
    batch.run(conn).await?;
    let mut outcome = Outcome::not_in_timeline(pdu, None, rejected, false);
    outcome.outlier = true;
    Ok(outcome)
}

/// The strings an event's row is written from, owned here so that the row (and the write
/// batch) can borrow them.
pub(super) struct RowText {
    pub(super) event_id: String,
    room_id: String,
    event_type: String,
    json: String,
}

impl RowText {
    pub(super) fn of(pdu: &Pdu) -> Result<RowText> {
        Ok(RowText {
            event_id: pdu.event_id.to_string(),
            room_id: pdu.room_id.to_string(),
            event_type: pdu.kind.to_string(),
            json: serde_json::to_string(&pdu.json).map_err(Error::internal)?,
        })
    }

    /// The event's row with nothing known beyond the event: a full event, accepted, without
    /// state groups or a transaction ID.
    pub(super) fn row<'a>(&'a self, pdu: &'a Pdu) -> events::NewEventRow<'a> {
        events::NewEventRow {
            event_id: &self.event_id,
            room_id: &self.room_id,
            depth: pdu.depth,
            event_type: &self.event_type,
            state_key: pdu.state_key.as_deref(),
            sender: pdu.sender.as_str(),
            origin_server_ts: i64::from(pdu.origin_server_ts.0),
            json: &self.json,
            outlier: false,
            rejected_reason: None,
            soft_failed: false,
            state_before: None,
            state_after: None,
            txn: None,
        }
    }
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
    // Usually the change is the event being persisted; others (from state resolution, or a
    // whole room's members when a join supplies its state) are read back, in one query.
    let others: Vec<String> = changed
        .iter()
        .filter(|(_, id)| id != pdu.event_id.as_str())
        .map(|(_, id)| id.clone())
        .collect();
    let mut stored: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    if !others.is_empty() {
        for event in events::get_many(conn, &others).await? {
            let content = serde_json::from_str::<Value>(&event.json)
                .ok()
                .map(|j| j["content"].clone())
                .unwrap_or_default();
            stored.insert(event.event_id, content);
        }
    }
    for (user_id, event_id) in changed {
        let content: Value = if event_id == pdu.event_id.as_str() {
            serde_json::from_str(pdu.content.get()).unwrap_or_default()
        } else {
            let Some(content) = stored.remove(&event_id) else {
                continue;
            };
            content
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
