//! Invites across servers. Inbound (`/invite` v2): a local user invited to a room of another
//! server; the invite is verified, countersigned, and, when this server is not in the room,
//! kept as an out-of-band membership with the room's stripped state. Outbound: a local user
//! invites a user of another server; their server countersigns first, then the invite enters
//! the room. Rejecting an invite to a room this server is not in goes through the inviting
//! server (`make_leave`/`send_leave`), or stays local when that server cannot be reached.

use ruma::{
    api::federation::membership::{create_invite, create_leave_event, prepare_leave_event, RawStrippedState},
    OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue;
use weft_core::{
    events::{builder, pipeline::StateAt},
    rooms::{membership, out_of_band, writer},
    storage::users,
    util::now_ms,
};
use weft_http::error::MatrixError;

use crate::{
    join::remote_error,
    membership::{template_membership, to_raw, verify_signed},
    receive::{parse_pdu, RoomVersion},
    Federation,
};

/// An invite from `origin` for a local user: checked, countersigned and answered.
pub async fn receive(
    fed: &Federation,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    version: &RoomVersionId,
    raw: &RawValue,
    invite_room_state: &[RawStrippedState],
) -> Result<Box<RawValue>, MatrixError> {
    let core = fed.client.core();
    // A room this server is not in has no ACL here: the invite is taken.
    crate::acl::ensure_allowed(core, room_id.as_str(), origin, "an invite").await?;
    let room = RoomVersion::new(room_id.clone(), version.as_str()).map_err(|_| MatrixError {
        status: http::StatusCode::BAD_REQUEST,
        errcode: "M_INCOMPATIBLE_ROOM_VERSION".into(),
        message: format!("Room version {version} is not supported here"),
        extra: Some(serde_json::json!({ "room_version": version })),
    })?;
    let pdu = parse_pdu(raw, &room).map_err(MatrixError::bad_json)?;
    if &pdu.event_id != event_id {
        return Err(MatrixError::bad_json("The event is not the one named in the path"));
    }
    let target = pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .filter(|_| pdu.kind.to_string() == "m.room.member" && template_membership(&pdu.json) == Some("invite"))
        .ok_or_else(|| MatrixError::bad_json("Not an invite"))?;
    if pdu.sender.server_name() != origin {
        return Err(MatrixError::forbidden(format!(
            "{} is not a user of {origin}",
            pdu.sender
        )));
    }
    if !core.is_local(&target)
        || users::get(&core.db, target.as_str())
            .await?
            .is_none_or(|u| u.deactivated)
    {
        return Err(MatrixError::not_found(format!("Unknown user {target}")));
    }
    verify_signed(fed, &pdu, &room, "invite").await?;
    let signed_pdu = crate::membership::countersign(core, &room, pdu)?;
    if !out_of_band::is_in_room(core, room_id.as_str()).await? {
        let stripped = crate::knock::stripped_values(invite_room_state);
        out_of_band::store(core, &signed_pdu, stripped).await?;
    }
    // When this server is in the room, the invite arrives in a transaction like any event.
    Ok(to_raw(&signed_pdu.json))
}

/// A local user invites `target`, a user of another server, into a room of this server.
pub async fn invite_remote(
    fed: &Federation,
    room_id: &OwnedRoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<(), MatrixError> {
    let core = fed.client.core();
    let (version, pdu, stripped) =
        membership::build_remote_invite(core, room_id.as_str(), sender, target, reason, is_direct).await?;
    let room = RoomVersion::new(room_id.clone(), &version).map_err(MatrixError::unknown)?;
    let request = create_invite::v2::Request::new(
        room_id.clone(),
        pdu.event_id.clone(),
        RoomVersionId::try_from(version.as_str()).map_err(|e| MatrixError::unknown(e.to_string()))?,
        to_raw(&pdu.json),
        stripped
            .into_iter()
            .filter_map(|json| RawValue::from_string(json).ok())
            .map(RawStrippedState::Pdu)
            .collect(),
    );
    let answer = fed
        .client
        .send(target.server_name(), request)
        .await
        .map_err(remote_error)?;
    let countersigned = parse_pdu(&answer.event, &room).map_err(MatrixError::bad_json)?;
    if countersigned.event_id != pdu.event_id {
        return Err(MatrixError::unknown(format!(
            "{} answered another event",
            target.server_name()
        )));
    }
    // Checked as any received event: both servers' signatures are verified.
    let keys = fed.keys.keys_for_pdu(&countersigned.json, &room.rules).await;
    match writer::receive(core, &version, countersigned, &keys, StateAt::PrevEvents).await? {
        writer::Received::Stored(outcome) if outcome.rejected.is_none() && !outcome.soft_failed => Ok(()),
        writer::Received::Stored(_) => Err(MatrixError::forbidden("The room no longer allows this invite")),
        writer::Received::Missing(m) => Err(MatrixError::unknown(format!(
            "the invite refers to unknown events: {m:?}"
        ))),
    }
}

/// A local user leaves a room this server is not in (rejects an invite, withdraws a knock)
/// through the server that invited them; when it cannot be reached, the rejection is only
/// local, so that the invite at least leaves the user's sync.
pub async fn reject_remote(
    fed: &Federation,
    room_id: &OwnedRoomId,
    user: &UserId,
    servers: &[ruma::OwnedServerName],
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    let core = fed.client.core();
    let none = MatrixError::not_found("No server to reject the invite through");
    let told = crate::membership::through_first(fed, servers, "reject an invite", none, |server| async move {
        leave_through(fed, &server, room_id, user, reason).await
    })
    .await;
    if told.is_err() {
        out_of_band::reject_locally(core, room_id.as_str(), user.as_str()).await?;
    }
    Ok(())
}

async fn leave_through(
    fed: &Federation,
    server: &ruma::OwnedServerName,
    room_id: &OwnedRoomId,
    user: &UserId,
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    let core = fed.client.core();
    let made = fed
        .client
        .send(
            server,
            prepare_leave_event::v1::Request::new(room_id.clone(), user.to_owned()),
        )
        .await
        .map_err(remote_error)?;
    let version = made.room_version.map(|v| v.to_string()).unwrap_or_else(|| "1".into());
    let room = RoomVersion::new(room_id.clone(), &version).map_err(MatrixError::unsupported_room_version)?;
    let mut object: ruma::canonical_json::CanonicalJsonObject = serde_json::from_str(made.event.get())
        .map_err(|e| MatrixError::unknown(format!("{server} sent a malformed leave template: {e}")))?;
    let ours = matches!(object.get("state_key"), Some(ruma::canonical_json::CanonicalJsonValue::String(s)) if s == user.as_str())
        && template_membership(&object) == Some("leave");
    if !ours {
        return Err(MatrixError::unknown(format!(
            "{server} sent a leave template for something else"
        )));
    }
    if let (Some(reason), Some(ruma::canonical_json::CanonicalJsonValue::Object(content))) =
        (reason, object.get_mut("content"))
    {
        content.insert(
            "reason".into(),
            ruma::canonical_json::CanonicalJsonValue::String(reason.to_owned()),
        );
    }
    object.insert(
        "origin_server_ts".into(),
        ruma::canonical_json::CanonicalJsonValue::Integer(now_ms().try_into().unwrap_or_default()),
    );
    let pdu = builder::sign(core, &room.rules, object)?;
    fed.client
        .send(
            server,
            create_leave_event::v2::Request::new(room_id.clone(), pdu.event_id.clone(), to_raw(&pdu.json)),
        )
        .await
        .map_err(remote_error)?;
    out_of_band::store(core, &pdu, Vec::new()).await?;
    Ok(())
}
