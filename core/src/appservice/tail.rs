//! The appservice tailer: queues what each appservice must be sent, from the `events`,
//! `receipts` and `to_device` streams, into the outbox under the appservice's destination.
//!
//! As with federation's tailer (`outbox::tail`), each round is one write transaction that locks
//! the tailer's row (`appservice_tail`), reads each stream after its position up to the
//! stream's committed position, inserts the outbox rows and moves the positions past what it
//! read: a crash before the commit leaves both as they were, so nothing is queued twice or
//! skipped, and two tailers take turns on the row.
//!
//! An appservice is sent (as Synapse decides it):
//! - an event whose sender is in its user namespaces (or is its own user), a membership event
//!   about such a user, and any event of a room it is interested in: a room whose ID is in its
//!   room namespaces, with an alias in its alias namespaces, or with a joined member in its
//!   user namespaces (the members as of the round, as Synapse reads them when it sends);
//! - when its registration asks for ephemeral events (MSC2409): read receipts of those rooms
//!   (not private ones), typing (queued as it happens, `enqueue_typing`: typing is not stored),
//!   and to-device messages to its users' devices.
//!
//! Appservices without a URL are sent nothing.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::{AppService, Registry};
use crate::{
    ephemeral::receipts,
    outbox::tail::{read_events, Candidate, EVENTS_PER_ROUND},
    Core, Error, Result,
};

/// Events read per round: bounds how long a round holds the tailer's row.
/// Positions of the `receipts` and `to_device` streams read per round.
const POSITIONS_PER_ROUND: i64 = 100;

/// The tailer's positions.
#[derive(Clone, Copy, Debug)]
struct Positions {
    events: i64,
    receipts: i64,
    to_device: i64,
}

/// Queues everything committed since the last round for the appservices that must receive
/// it; returns how many outbox rows were queued.
pub async fn tail(core: &Core) -> Result<usize> {
    let registry = core.appservices.clone();
    if !registry.all().iter().any(|s| s.url.is_some()) || !behind(core).await? {
        return Ok(0);
    }
    let mut queued = 0;
    loop {
        let (rows, more) = round(core, &registry).await?;
        queued += rows;
        if !more {
            return Ok(queued);
        }
    }
}

/// Moves the tailer to the streams' current positions without queuing anything: at start when
/// no appservice is configured, so that one configured later is sent what happens from then on
/// rather than everything since the tailer last ran.
pub async fn skip_to_now(core: &Core) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query(
        "UPDATE appservice_tail SET
           events_pos = (SELECT pos FROM stream_positions WHERE stream = 'events'),
           receipts_pos = (SELECT pos FROM stream_positions WHERE stream = 'receipts'),
           to_device_pos = (SELECT pos FROM stream_positions WHERE stream = 'to_device')
         WHERE id = 0",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether a stream moved past the tailer: a read, so that a loop woken by every commit opens
/// no write transaction while there is nothing new.
async fn behind(core: &Core) -> Result<bool> {
    let mut conn = core.db.conn().await?;
    let at = read_positions(&mut conn, false).await?;
    let now = stream_positions(&mut conn).await?;
    Ok(now.events > at.events || now.receipts > at.receipts || now.to_device > at.to_device)
}

async fn read_positions(conn: &mut AnyConnection, lock: bool) -> Result<Positions> {
    // The no-op UPDATE locks the row (PostgreSQL): a concurrent tailer waits for this round.
    let sql = if lock {
        "UPDATE appservice_tail SET events_pos = events_pos WHERE id = 0
         RETURNING events_pos, receipts_pos, to_device_pos"
    } else {
        "SELECT events_pos, receipts_pos, to_device_pos FROM appservice_tail WHERE id = 0"
    };
    let row = sqlx::query(sql)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::internal("the appservice tailer's row is missing"))?;
    Ok(Positions {
        events: row.try_get(0)?,
        receipts: row.try_get(1)?,
        to_device: row.try_get(2)?,
    })
}

/// The streams' committed positions: everything at or below them is committed (see
/// `streams`), so the ranges read have no gap a late commit could fill.
async fn stream_positions(conn: &mut AnyConnection) -> Result<Positions> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream, pos FROM stream_positions WHERE stream IN ('events', 'receipts', 'to_device')")
            .fetch_all(conn)
            .await?;
    let get = |name: &str| rows.iter().find(|(s, _)| s == name).map_or(0, |(_, p)| *p);
    Ok(Positions {
        events: get("events"),
        receipts: get("receipts"),
        to_device: get("to_device"),
    })
}

/// What one round queues, in order: (destination, event ID or EDU JSON).
enum Item {
    Pdu(String),
    Edu(Value),
}

async fn round(core: &Core, registry: &Registry) -> Result<(usize, bool)> {
    let mut tx = core.db.write().await?;
    let from = read_positions(&mut tx, true).await?;
    let upto = stream_positions(&mut tx).await?;
    let mut rooms = RoomFacts::default();
    let mut items: Vec<(String, Item)> = Vec::new();

    // Events.
    let events = read_events(&mut tx, from.events, upto.events).await?;
    let more_events = events.len() as i64 == EVENTS_PER_ROUND;
    for event in &events {
        if !event.live {
            continue;
        }
        for service in registry.all().iter().filter(|s| s.url.is_some()) {
            if interested_in_event(&mut tx, &mut rooms, service, event).await? {
                items.push((service.destination.clone(), Item::Pdu(event.event_id.clone())));
            }
        }
    }
    let events_pos = match (more_events, events.last()) {
        (true, Some(last)) => last.stream_pos,
        _ => upto.events.max(from.events),
    };

    // Receipts and to-device messages, for the appservices that asked for them.
    let ephemeral: Vec<_> = registry
        .all()
        .iter()
        .filter(|s| s.url.is_some() && s.receive_ephemeral)
        .collect();
    let (receipts_pos, to_device_pos, more_edus) = if ephemeral.is_empty() {
        (
            upto.receipts.max(from.receipts),
            upto.to_device.max(from.to_device),
            false,
        )
    } else {
        // Positions, not rows, bound a round: a position is never split between two rounds.
        let receipts_upto = upto.receipts.min(from.receipts.saturating_add(POSITIONS_PER_ROUND));
        let to_device_upto = upto.to_device.min(from.to_device.saturating_add(POSITIONS_PER_ROUND));
        let receipts = receipts::changed(&mut tx, from.receipts, receipts_upto).await?;
        let mut by_room: Vec<(String, Vec<receipts::Receipt>)> = Vec::new();
        for receipt in receipts.into_iter().filter(|r| r.receipt_type != "m.read.private") {
            match by_room.iter_mut().find(|(room, _)| *room == receipt.room_id) {
                Some((_, list)) => list.push(receipt),
                None => by_room.push((receipt.room_id.clone(), vec![receipt])),
            }
        }
        for (room_id, list) in &by_room {
            let Some(content) = crate::sync::receipt_content(list, "") else {
                continue;
            };
            for service in &ephemeral {
                if rooms.interested(&mut tx, service, room_id).await? {
                    let edu = json!({"type": "m.receipt", "room_id": room_id, "content": content});
                    items.push((service.destination.clone(), Item::Edu(ephemeral_edu(edu))));
                }
            }
        }
        for message in read_to_device(&mut tx, from.to_device, to_device_upto).await? {
            for service in ephemeral
                .iter()
                .filter(|s| s.is_user_in_namespace(&message.recipient_user))
            {
                let edu = json!({
                    "type": message.event_type,
                    "sender": message.sender,
                    "to_user_id": message.recipient_user,
                    "to_device_id": message.recipient_device,
                    "content": message.content,
                });
                items.push((
                    service.destination.clone(),
                    Item::Edu(json!({"edu_type": "to_device", "content": edu})),
                ));
            }
        }
        (
            receipts_upto.max(from.receipts),
            to_device_upto.max(from.to_device),
            receipts_upto < upto.receipts || to_device_upto < upto.to_device,
        )
    };

    let queued = insert(&mut tx, &items).await?;
    sqlx::query("UPDATE appservice_tail SET events_pos = $1, receipts_pos = $2, to_device_pos = $3 WHERE id = 0")
        .bind(events_pos)
        .bind(receipts_pos)
        .bind(to_device_pos)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((queued, more_events || more_edus))
}

/// An ephemeral event (MSC2409) as queued: the EDU the sender puts in `ephemeral`.
fn ephemeral_edu(event: Value) -> Value {
    json!({"edu_type": "ephemeral", "content": event})
}

/// Queues the room's current typing users (`m.typing`) for the appservices interested in the
/// room that asked for ephemeral events. Typing is not stored, so it is queued as it changes.
pub async fn enqueue_typing(core: &Core, room_id: &str) -> Result<()> {
    let registry = core.appservices.clone();
    let ephemeral: Vec<_> = registry
        .all()
        .iter()
        .filter(|s| s.url.is_some() && s.receive_ephemeral)
        .collect();
    if ephemeral.is_empty() {
        return Ok(());
    }
    let mut interested = Vec::new();
    {
        let mut conn = core.db.conn().await?;
        let mut rooms = RoomFacts::default();
        for service in ephemeral {
            if rooms.interested(&mut conn, service, room_id).await? {
                interested.push(service.destination.clone());
            }
        }
    }
    if interested.is_empty() {
        return Ok(());
    }
    let user_ids = core.typing.changed_since(room_id, i64::MIN).unwrap_or_default();
    let edu = ephemeral_edu(json!({"type": "m.typing", "room_id": room_id, "content": {"user_ids": user_ids}}));
    let mut tx = core.db.write().await?;
    for destination in &interested {
        crate::outbox::enqueue_edu(&mut tx, destination, &edu).await?;
    }
    tx.commit().await?;
    // The appservice sender listens to the notifier.
    core.notifier.room_changed(room_id);
    Ok(())
}

/// A to-device message as stored for a local device.
struct ToDevice {
    recipient_user: String,
    recipient_device: String,
    sender: String,
    event_type: String,
    content: Value,
}

async fn read_to_device(conn: &mut AnyConnection, from: i64, upto: i64) -> Result<Vec<ToDevice>> {
    let rows: Vec<(i64, String, String, String, String, String)> = sqlx::query_as(
        "SELECT stream_pos, recipient_user, recipient_device, sender, event_type, content FROM to_device_messages
         WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos, seq",
    )
    .bind(from)
    .bind(upto)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(_, recipient_user, recipient_device, sender, event_type, content)| ToDevice {
                recipient_user,
                recipient_device,
                sender,
                event_type,
                content: serde_json::from_str(&content).unwrap_or_default(),
            },
        )
        .collect())
}

async fn interested_in_event(
    conn: &mut AnyConnection,
    rooms: &mut RoomFacts,
    service: &AppService,
    event: &Candidate,
) -> Result<bool> {
    if service.is_user_in_namespace(&event.sender) {
        return Ok(true);
    }
    if event.event_type == "m.room.member"
        && event
            .state_key
            .as_deref()
            .is_some_and(|k| service.is_user_in_namespace(k))
    {
        return Ok(true);
    }
    rooms.interested(conn, service, &event.room_id).await
}

/// Joined members and local aliases of the rooms a round looks at, read once per room.
#[derive(Default)]
struct RoomFacts {
    members: HashMap<String, Vec<String>>,
    aliases: HashMap<String, Vec<String>>,
}

impl RoomFacts {
    /// Whether the appservice is interested in the room: by its ID, an alias, or a member.
    async fn interested(&mut self, conn: &mut AnyConnection, service: &AppService, room_id: &str) -> Result<bool> {
        if service.is_room_in_namespace(room_id) {
            return Ok(true);
        }
        if !service.aliases.is_empty() {
            if !self.aliases.contains_key(room_id) {
                let aliases: Vec<String> = sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_all(&mut *conn)
                    .await?;
                self.aliases.insert(room_id.to_owned(), aliases);
            }
            if self.aliases[room_id].iter().any(|a| service.is_alias_in_namespace(a)) {
                return Ok(true);
            }
        }
        if !self.members.contains_key(room_id) {
            let members: Vec<String> =
                sqlx::query_scalar("SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = 'join'")
                    .bind(room_id)
                    .fetch_all(&mut *conn)
                    .await?;
            self.members.insert(room_id.to_owned(), members);
        }
        Ok(self.members[room_id].iter().any(|m| service.is_user_in_namespace(m)))
    }
}

/// Inserts the round's rows in order, each at its own new position of the `federation_outbox`
/// stream (allocated in one statement, last in the transaction but for the position update).
async fn insert(conn: &mut AnyConnection, items: &[(String, Item)]) -> Result<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE stream_positions SET pos = pos + $1 WHERE stream = 'federation_outbox' RETURNING pos",
    )
    .bind(items.len() as i64)
    .fetch_one(&mut *conn)
    .await?;
    let first = last - items.len() as i64 + 1;
    for ((destination, item), pos) in items.iter().zip(first..) {
        match item {
            Item::Pdu(event_id) => {
                sqlx::query(
                    "INSERT INTO federation_outbox (destination, pos, kind, event_id) VALUES ($1, $2, 'pdu', $3)",
                )
                .bind(destination)
                .bind(pos)
                .bind(event_id)
                .execute(&mut *conn)
                .await?;
            }
            Item::Edu(edu) => {
                sqlx::query(
                    "INSERT INTO federation_outbox (destination, pos, kind, edu_json) VALUES ($1, $2, 'edu', $3)",
                )
                .bind(destination)
                .bind(pos)
                .bind(edu.to_string())
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(items.len())
}
