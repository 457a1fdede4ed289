//! Membership events for users of other servers (`make_join`, `make_leave`, `make_knock`): this
//! server builds them on its head of the room and current state, unsigned; the user's server
//! signs and sends them back (`send_join`, ...), and they go through the pipeline like any
//! received event.

use ruma::{canonical_json::CanonicalJsonObject, OwnedEventId, UserId};
use serde_json::json;

use super::{current_state, membership::restricted_join_authoriser, room_rules};
use crate::{
    events::{builder, builder::EventTemplate, pipeline, Pdu},
    storage::rooms,
    Core, Error, Result,
};

/// The `membership` event `user` (of another server) would send into `room_id`, with the
/// room's version: refused when this server is not in the room or the auth rules would reject
/// the event now.
pub async fn membership_template(
    core: &Core,
    room_id: &str,
    user: &UserId,
    membership: &str,
) -> Result<(String, CanonicalJsonObject)> {
    let mut content = json!({ "membership": membership });
    if membership == "join" {
        if let Some(authoriser) = restricted_join_authoriser(core, room_id, user).await? {
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
    }
    let mut conn = core.db.conn().await?;
    let (version, rules) = room_rules(core, &mut conn, room_id).await?;
    if !rooms::server_in_room(&mut conn, room_id, core.server_name.as_str()).await? {
        return Err(Error::NotFound("This server is not in the room".into()));
    }
    let head = rooms::head(&mut conn, room_id).await?;
    let state = current_state(core, &mut conn, room_id).await?;
    let template = EventTemplate::state("m.room.member", user.as_str(), content);
    let object = builder::unsigned(core, &mut conn, &rules, Some(room_id), user, &template, &head, &state).await?;
    // The auth rules read no signature, so the unsigned event is checked as it will be sent.
    let placeholder = OwnedEventId::try_from(format!("$template:{}", core.server_name))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let pdu = Pdu::from_json(placeholder, object.clone(), &rules)?;
    if let Some(reason) = pipeline::auth_against(&core.db, &mut conn, &rules, &pdu, &state, false).await? {
        return Err(Error::Forbidden(format!(
            "The room does not allow this {membership}: {reason}"
        )));
    }
    Ok((version, object))
}
