//! Memberships in rooms this server is not in: an invite from another server, and the
//! rejection of one. Such an event is stored as an outlier (its auth events are elsewhere), and
//! the user's membership row points at it with a new timeline position, so that /sync and
//! sliding sync show it like any membership change. The room's stripped state, which the
//! inviting server sent along, travels in the event's `unsigned.invite_room_state`, where
//! `sync::stripped_state` finds it.

use ruma::canonical_json::CanonicalJsonValue;
use serde_json::Value;

use crate::{
    events::Pdu,
    storage::{events, rooms},
    Core, Error, Result,
};

/// Stores `pdu`, a membership event of a local user in a room this server is not in, already
/// verified by the caller (signed by its sender's server), with the stripped state to show.
pub async fn store(core: &Core, pdu: &Pdu, stripped_state: Vec<Value>) -> Result<()> {
    let Some(target) = pdu.state_key.clone() else {
        return Err(Error::BadJson("not a membership event".into()));
    };
    let membership = pdu.content_value()["membership"]
        .as_str()
        .ok_or_else(|| Error::BadJson("no membership".into()))?
        .to_owned();
    let mut json = pdu.json.clone();
    if !stripped_state.is_empty() {
        let mut unsigned = match json.remove("unsigned") {
            Some(CanonicalJsonValue::Object(u)) => u,
            _ => Default::default(),
        };
        let state = ruma::canonical_json::to_canonical_value(stripped_state).map_err(Error::internal)?;
        unsigned.insert("invite_room_state".into(), state);
        json.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
    }
    let text = serde_json::to_string(&json).map_err(Error::internal)?;
    let event_id = pdu.event_id.to_string();
    let room_id = pdu.room_id.to_string();
    let kind = pdu.kind.to_string();
    let mut tx = core.db.write().await?;
    if events::get(&mut tx, &event_id).await?.is_none() {
        let row = events::NewEventRow {
            event_id: &event_id,
            room_id: &room_id,
            depth: pdu.depth,
            event_type: &kind,
            state_key: pdu.state_key.as_deref(),
            sender: pdu.sender.as_str(),
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: &text,
            outlier: true,
            rejected_reason: None,
            soft_failed: false,
            state_before: None,
            state_after: None,
            txn: None,
        };
        let mut batch = core.db.batch();
        events::insert(&mut batch, &row, events::Slot::None);
        batch.run(&mut tx).await?;
    }
    set_membership(core, &mut tx, &room_id, &target, &membership, &event_id).await?;
    tx.commit().await?;
    core.notifier.user_changed(&target);
    Ok(())
}

/// Marks a local user's invite to a room this server is not in as rejected, when the inviting
/// server cannot be told (it is unreachable): the invite leaves the user's sync.
pub async fn reject_locally(core: &Core, room_id: &str, user_id: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    let Some(current) = rooms::membership(&mut tx, room_id, user_id).await? else {
        return Err(Error::NotFound("No invite to this room".into()));
    };
    set_membership(core, &mut tx, room_id, user_id, "leave", &current.event_id).await?;
    tx.commit().await?;
    core.notifier.user_changed(user_id);
    Ok(())
}

async fn set_membership(
    core: &Core,
    conn: &mut sqlx::AnyConnection,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
) -> Result<()> {
    let mut batch = core.db.batch();
    rooms::set_membership(
        &mut batch,
        rooms::NewMembership {
            room_id,
            user_id: user_id.to_owned(),
            membership: membership.to_owned(),
            event_id: event_id.to_owned(),
            displayname: None,
            avatar_url: None,
        },
    );
    batch.allocate_position("events");
    batch.run(conn).await?;
    Ok(())
}

/// Whether this server is in the room (has a joined member), as opposed to knowing of it only
/// through an invite.
pub async fn is_in_room(core: &Core, room_id: &str) -> Result<bool> {
    let mut conn = core.db.conn().await?;
    rooms::server_in_room(&mut conn, room_id, core.server_name.as_str()).await
}
