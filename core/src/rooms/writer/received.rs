//! The room writer for events from other servers: `prepare` on a pooled connection with no
//! lock held, then `commit` in a write transaction that locks the room's row, the same lock
//! local sends take (`rooms::send`), so received and local events never fork a room between
//! them, in this process or another on the same database.
//!
//! What a caller does between attempts (fetching keys, missing events, the state at an event)
//! happens outside any lock: `receive` answers `Missing` and stores nothing.

use ruma::{events::TimelineEventType, signatures::PublicKeyMap};
use sqlx::AnyConnection;

use super::{super::steps::RoomSteps, notify_committed};
use crate::{
    events::{
        pipeline::{self, Missing, Outcome, Prepared, StateAt, Trust, Write},
        rules_for, Pdu,
    },
    storage::{events, rooms},
    Core, Error, Result,
};

/// What became of a received PDU.
#[derive(Debug)]
pub enum Received {
    /// Stored (accepted, rejected, soft-failed or as an outlier), now or before.
    Stored(Outcome),
    /// Its checks need events that are not stored: nothing was written.
    Missing(Missing),
}

/// Checks and stores a PDU received from another server, in a room of `version`, verified
/// against `keys`. With `StateAt::Unknown` it is stored as an outlier; otherwise it joins the
/// room's graph, with the state before it from its prev events or as supplied.
pub async fn receive(core: &Core, version: &str, pdu: Pdu, keys: &PublicKeyMap, state_at: StateAt) -> Result<Received> {
    store(core, version, pdu, keys, state_at, false).await
}

/// `receive` for history fetched from another server (backfill): the event joins the graph
/// below every live position (see `Write::backfilled`), and nobody is woken for it.
pub async fn backfill(
    core: &Core,
    version: &str,
    pdu: Pdu,
    keys: &PublicKeyMap,
    state_at: StateAt,
) -> Result<Received> {
    store(core, version, pdu, keys, state_at, true).await
}

async fn store(
    core: &Core,
    version: &str,
    pdu: Pdu,
    keys: &PublicKeyMap,
    state_at: StateAt,
    backfilled: bool,
) -> Result<Received> {
    let rules = rules_for(version)?;
    let outlier = matches!(state_at, StateAt::Unknown);
    // At most twice: a second attempt only when another writer stored the event between the
    // checks and the lock.
    for _ in 0..2 {
        let checked = {
            let mut conn = core.db.conn().await?;
            match pipeline::prepare(
                core,
                &mut conn,
                &rules,
                pdu.clone(),
                Trust::Remote(keys),
                state_at.clone(),
            )
            .await?
            {
                Prepared::Known(outcome) => return Ok(Received::Stored(outcome)),
                Prepared::Missing(missing) => return Ok(Received::Missing(missing)),
                Prepared::Checked(checked) => checked,
            }
        };
        let mut tx = core.db.write().await?;
        let room_id = checked.pdu.room_id.to_string();
        let head = if outlier {
            None
        } else {
            Some(lock_or_create(&mut tx, &room_id, version, &checked.pdu).await?)
        };
        // Under the room's lock, nothing else stores this event now; check whether something
        // did before.
        let stored = events::get(&mut tx, checked.pdu.event_id.as_str()).await?;
        if stored.map(|row| row.outlier) != checked.stored_as_outlier() {
            continue;
        }
        let outcome = match &head {
            None => pipeline::store_outlier(core, &mut tx, checked).await?,
            Some(head) => {
                let write = Write {
                    backfilled,
                    ..Write::default()
                };
                pipeline::commit(core, &mut tx, &rules, checked, head, write, &RoomSteps).await?
            }
        };
        tx.commit().await?;
        if outcome.stream_pos.is_some() {
            if backfilled {
                crate::metrics::event_persisted(core, &outcome.pdu);
            } else {
                notify_committed(core, &outcome.pdu);
            }
        }
        return Ok(Received::Stored(outcome));
    }
    Err(Error::Internal("the event kept changing while it was stored".into()))
}

/// Locks the room's row, creating it for the first event of a room known here: its create
/// event, or an event whose state was supplied (a join into a room hosted elsewhere, whose
/// create event was stored as an outlier before).
async fn lock_or_create(conn: &mut AnyConnection, room_id: &str, version: &str, pdu: &Pdu) -> Result<rooms::Head> {
    if let Some(head) = rooms::lock(conn, room_id).await? {
        return Ok(head);
    }
    let creator = if pdu.kind == TimelineEventType::RoomCreate {
        pdu.sender.to_string()
    } else {
        events::create_event_sender(conn, room_id)
            .await?
            .ok_or_else(|| Error::NotFound("the room's create event is not stored".into()))?
    };
    rooms::insert(&mut *conn, room_id, version, &creator).await?;
    rooms::lock(conn, room_id)
        .await?
        .ok_or_else(|| Error::Internal("a room just created is gone".into()))
}
