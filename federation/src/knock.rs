//! A local user knocks on a room this server is not in: `make_knock` on a server in the room,
//! the template signed here, `send_knock`, and the knock kept as an out-of-band membership
//! with the room's stripped state from the answer, so that sync shows it.

use ruma::{
    api::federation::membership::{create_knock_event, prepare_knock_event, RawStrippedState},
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    OwnedRoomId, OwnedServerName, UserId,
};
use serde_json::Value;
use weft_core::{events::builder, rooms::out_of_band, util::now_ms};
use weft_http::error::MatrixError;

use crate::{
    join::{remote_error, supported_versions},
    membership::{template_membership, to_raw},
    receive::RoomVersion,
    Federation,
};

/// Knocks on `room_id` for `user` through the first of `servers` that answers.
pub async fn knock_remote(
    fed: &Federation,
    room_id: &OwnedRoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    let none = MatrixError::not_found("No server to knock through");
    crate::membership::through_first(fed, servers, "knock", none, |server| async move {
        knock_through(fed, &server, room_id, user, reason).await
    })
    .await
}

async fn knock_through(
    fed: &Federation,
    server: &OwnedServerName,
    room_id: &OwnedRoomId,
    user: &UserId,
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    let core = fed.client.core();
    let mut make = prepare_knock_event::v1::Request::new(room_id.clone(), user.to_owned());
    make.ver = supported_versions();
    let made = fed.client.send(server, make).await.map_err(remote_error)?;
    let room =
        RoomVersion::new(room_id.clone(), made.room_version.as_str()).map_err(MatrixError::unsupported_room_version)?;
    let mut object: CanonicalJsonObject = serde_json::from_str(made.event.get())
        .map_err(|e| MatrixError::unknown(format!("{server} sent a malformed knock template: {e}")))?;
    let ours = matches!(object.get("state_key"), Some(CanonicalJsonValue::String(s)) if s == user.as_str())
        && matches!(object.get("sender"), Some(CanonicalJsonValue::String(s)) if s == user.as_str())
        && template_membership(&object) == Some("knock");
    if !ours {
        return Err(MatrixError::unknown(format!(
            "{server} sent a knock template for something else"
        )));
    }
    if let (Some(reason), Some(CanonicalJsonValue::Object(content))) = (reason, object.get_mut("content")) {
        content.insert("reason".into(), CanonicalJsonValue::String(reason.to_owned()));
    }
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(now_ms().try_into().unwrap_or_default()),
    );
    let pdu = builder::sign(core, &room.rules, object)?;
    let answer = fed
        .client
        .send(
            server,
            create_knock_event::v1::Request::new(room_id.clone(), pdu.event_id.clone(), to_raw(&pdu.json)),
        )
        .await
        .map_err(remote_error)?;
    out_of_band::store(core, &pdu, stripped_values(&answer.knock_room_state)).await?;
    Ok(())
}

/// Stripped state as received (full PDUs, or the stripped events of servers before Matrix
/// 1.16), as JSON values.
pub fn stripped_values(state: &[RawStrippedState]) -> Vec<Value> {
    state
        .iter()
        .filter_map(|s| match s {
            RawStrippedState::Pdu(raw) => serde_json::from_str(raw.get()).ok(),
            #[allow(deprecated)]
            RawStrippedState::Stripped(raw) => serde_json::from_str(raw.json().get()).ok(),
            _ => None,
        })
        .collect()
}
