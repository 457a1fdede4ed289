//! Local sends: build an event on the room's head, check it and commit it, in the write mode
//! of the backend. SQLite: under the one writer, the room's row locked and the savepoint
//! opened in one call. PostgreSQL: the room's turn in this process first (`turns`), then
//! either the head this process last committed, with no transaction and a compare-and-set in
//! the write statement, or the room's row lock in a transaction.

use ruma::{room_version_rules::RoomVersionRules, UserId};
use sqlx::AnyConnection;

use super::super::{room_rules, steps};
use crate::{
    db::Backend,
    events::{
        builder::{self, EventTemplate},
        pipeline::{self, Prepared, StateAt, Trust, Write},
        Pdu,
    },
    storage::{events, rooms, state as state_store},
    Core, Error, Result,
};

/// A local event that was accepted and committed.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event_id: String,
    pub stream_pos: i64,
}

/// Builds, checks and persists a local event in an existing room, inside `conn`'s transaction
/// (which must have locked the room), on top of `head` as the lock returned it or the previous
/// event in this transaction left it; returns the room's head after the event too. A rejected
/// event is an error and persists nothing.
pub async fn send_in_tx(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    sender: &UserId,
    template: &EventTemplate,
    head: &rooms::Head,
) -> Result<(Pdu, i64, rooms::Head)> {
    match send_at(core, conn, room_id, sender, template, head, Write::default()).await? {
        Persisted::Sent { pdu, pos, head } => {
            let head = head.ok_or_else(|| Error::Internal("an accepted event left no head".into()))?;
            Ok((pdu, pos, head))
        }
        Persisted::HeadMoved => Err(Error::Internal("a locked room's head moved".into())),
    }
}

/// What `send_at` did.
enum Persisted {
    Sent {
        pdu: Pdu,
        pos: i64,
        head: Option<rooms::Head>,
    },
    /// Built on an unlocked head that had moved: nothing was written.
    HeadMoved,
}

/// `send_in_tx` with the backend's write mode: on top of `head`, as read under the room's lock
/// in this transaction, or, when `write.unlocked`, as the last send here left it (see `turns`).
async fn send_at(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    sender: &UserId,
    template: &EventTemplate,
    head: &rooms::Head,
    write: Write<'_>,
) -> Result<Persisted> {
    let (_, rules) = room_rules(core, conn, room_id).await?;
    let current = state_store::load_or_empty(&core.db, conn, head.current_group).await?;
    let pdu = builder::build(core, conn, &rules, Some(room_id), sender, template, head, &current).await?;
    let checked = prepare_local(core, conn, &rules, pdu).await?;
    let outcome = pipeline::commit(core, conn, &rules, checked, head, write, &steps::RoomSteps).await?;
    if outcome.head_moved {
        return Ok(Persisted::HeadMoved);
    }
    let pos = outcome
        .stream_pos
        .ok_or_else(|| Error::Internal("local event got no stream position".into()))?;
    Ok(Persisted::Sent {
        pdu: outcome.pdu,
        pos,
        head: outcome.head,
    })
}

/// Checks an event built here; one the auth rules reject is an error for its sender.
pub(crate) async fn prepare_local(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: Pdu,
) -> Result<pipeline::Checked> {
    match pipeline::prepare(core, conn, rules, pdu, Trust::Local, StateAt::PrevEvents).await? {
        Prepared::Checked(checked) => match checked.rejected {
            Some(reason) => Err(Error::Forbidden(reason)),
            None => Ok(checked),
        },
        Prepared::Missing(missing) => Err(Error::Internal(format!(
            "a local event refers to events that are not stored: {missing:?}"
        ))),
        Prepared::Known(_) => Err(Error::Internal("a new local event was already stored".into())),
    }
}

/// Sends one local event: serialised per room, idempotent per (device, transaction ID), and
/// checked first as a client's (`rooms::checks`), so state that would not change is not sent
/// again.
pub async fn send(
    core: &Core,
    room_id: &str,
    sender: &UserId,
    template: EventTemplate,
    txn: Option<(&str, &str, &str)>,
) -> Result<Sent> {
    if let Some(current) = super::super::checks::before_send(core, room_id, sender, &template).await? {
        return Ok(current);
    }
    match send_once(core, room_id, sender, &template, txn).await {
        // A retry that raced its first attempt past the lock (see `rooms::Locked`) is refused
        // by the unique index on transaction IDs: the first attempt's event is the answer.
        Err(Error::Database(e)) if txn.is_some() && is_unique_violation(&e) => {
            let (user, device, txn_id) = txn.expect("checked above");
            let mut conn = core.db.conn().await?;
            match events::by_txn(&mut conn, user, device, txn_id, room_id).await? {
                Some(event_id) => sent_earlier(&mut conn, event_id).await,
                None => Err(Error::Database(e)),
            }
        }
        other => other,
    }
}

async fn send_once(
    core: &Core,
    room_id: &str,
    sender: &UserId,
    template: &EventTemplate,
    txn: Option<(&str, &str, &str)>,
) -> Result<Sent> {
    // Push evaluation of a membership event reads only members with rules of their own.
    let push_members = template.kind != "m.room.member";
    if core.db.backend() == Backend::Sqlite {
        // The one writer serialises everything; the lock statement reads the head, and opens
        // this writer's savepoint in the same call.
        let (mut tx, savepoint) = core.db.write_deferred().await?;
        let locked = rooms::lock_for_send(&core.db, &mut tx, room_id, txn, push_members, true, savepoint).await?;
        let Some(locked) = locked else {
            return Err(Error::NotFound("Unknown room".into()));
        };
        if let Some(event_id) = locked.txn_event {
            return sent_earlier(&mut tx, event_id).await;
        }
        // The event's write batch also releases the savepoint: one hand-off fewer.
        let write = Write {
            txn,
            closing: tx.release_sql(),
            ..Write::default()
        };
        return match send_at(core, &mut tx, room_id, sender, template, &locked.head, write).await? {
            Persisted::Sent { pdu, pos, .. } => {
                tx.released();
                commit_sent(core, tx, pdu, pos).await
            }
            Persisted::HeadMoved => Err(Error::Internal("a locked room's head moved".into())),
        };
    }
    // PostgreSQL: what the send reads besides the head is read before taking the room's turn,
    // so the turn is held for the write batch and the commit only (see `turns`).
    let mut conn = core.db.conn().await?;
    let Some(read) = rooms::lock_for_send(&core.db, &mut conn, room_id, txn, push_members, false, "").await? else {
        return Err(Error::NotFound("Unknown room".into()));
    };
    if let Some(event_id) = read.txn_event {
        return sent_earlier(&mut conn, event_id).await;
    }
    let mut turn = core.room_turns.take(room_id).await;
    // On the head this process last committed, a message needs no transaction: its writes go
    // in one statement, atomic on its own, whose compare-and-set fails it whole if the room
    // moved (no BEGIN and COMMIT round trips while the turn is held). Not for a state event,
    // whose groups are written before the batch, nor on a forked head, whose state would be
    // resolved and stored first.
    let unlocked_head = turn
        .head()
        .filter(|h| template.state_key.is_none() && h.extremities.len() == 1)
        .cloned();
    if let Some(mut head) = unlocked_head {
        head.members_from(&read.head);
        let write = Write {
            txn,
            unlocked: true,
            ..Write::default()
        };
        match send_at(core, &mut conn, room_id, sender, template, &head, write).await? {
            Persisted::Sent { pdu, pos, head } => {
                // Committed by the statement itself.
                turn.remember(head);
                return Ok(committed(core, &pdu, pos));
            }
            // Moved by another process or by a path that takes no turn: start again, this
            // time under the row lock.
            Persisted::HeadMoved => {}
        }
    }
    drop(conn);
    let mut tx = core.db.write().await?;
    turn.remember(None);
    let Some(locked) = rooms::lock_for_send(&core.db, &mut tx, room_id, txn, false, true, "").await? else {
        return Err(Error::NotFound("Unknown room".into()));
    };
    if let Some(event_id) = locked.txn_event {
        return sent_earlier(&mut tx, event_id).await;
    }
    let mut head = locked.head;
    // Otherwise push evaluation reads the members itself.
    head.members_from(&read.head);
    let write = Write {
        txn,
        ..Write::default()
    };
    match send_at(core, &mut tx, room_id, sender, template, &head, write).await? {
        Persisted::Sent { pdu, pos, head } => {
            // Held through the commit: a next sender waiting on the row lock instead costs
            // PostgreSQL more than it saves.
            let sent = commit_sent(core, tx, pdu, pos).await;
            turn.remember(if sent.is_ok() { head } else { None });
            sent
        }
        Persisted::HeadMoved => Err(Error::Internal("a locked room's head moved".into())),
    }
}

async fn commit_sent(core: &Core, tx: crate::WriteTx, pdu: Pdu, pos: i64) -> Result<Sent> {
    tx.commit().await?;
    Ok(committed(core, &pdu, pos))
}

/// Wakes the syncs waiting for a committed event and answers its sender.
fn committed(core: &Core, pdu: &Pdu, pos: i64) -> Sent {
    notify_committed(core, pdu);
    Sent {
        event_id: pdu.event_id.to_string(),
        stream_pos: pos,
    }
}

/// The answer to a send whose transaction ID already sent `event_id`.
async fn sent_earlier(conn: &mut AnyConnection, event_id: String) -> Result<Sent> {
    let pos = events::get(conn, &event_id)
        .await?
        .and_then(|e| e.stream_pos)
        .unwrap_or_default();
    Ok(Sent {
        event_id,
        stream_pos: pos,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Wakes syncs for a committed event: the room's members, and the target of a membership
/// change (who may not be a member yet, e.g. an invitee).
pub fn notify_committed(core: &Core, pdu: &Pdu) {
    crate::metrics::event_persisted(core, pdu);
    core.notifier.room_changed(pdu.room_id.as_str());
    if let (ruma::events::TimelineEventType::RoomMember, Some(target)) = (&pdu.kind, &pdu.state_key) {
        core.notifier.user_changed(target);
    }
}
