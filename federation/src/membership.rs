//! Membership events of other servers' users in rooms this server is in (the serving side of
//! `make_join`/`send_join`, `make_leave`/`send_leave`): templates built on this server's view of
//! the room, and the signed events received back through the pipeline.

use ruma::{
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    OwnedEventId, OwnedRoomId, ServerName, UserId,
};
use serde_json::value::RawValue;
use weft_core::{events::Pdu, rooms::templates};
use weft_http::error::MatrixError;

use crate::{
    receive::{parse_pdu, Receiver, RoomVersion},
    Federation,
};

/// The unsigned `membership` event for `user`, asked by `origin`, with the room's version.
pub async fn template(
    fed: &Federation,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    user: &UserId,
    membership: &str,
    supported_versions: Option<&[ruma::RoomVersionId]>,
) -> Result<(String, CanonicalJsonObject), MatrixError> {
    if user.server_name() != origin {
        return Err(MatrixError::forbidden(format!("{user} is not a user of {origin}")));
    }
    let core = fed.client.core();
    crate::acl::ensure_allowed(core, room_id.as_str(), origin, &format!("make_{membership}")).await?;
    let (version, object) = templates::membership_template(core, room_id.as_str(), user, membership).await?;
    if let Some(supported) = supported_versions {
        if !supported.iter().any(|v| v.as_str() == version) {
            return Err(MatrixError {
                status: http::StatusCode::BAD_REQUEST,
                errcode: "M_INCOMPATIBLE_ROOM_VERSION".into(),
                message: format!("The room is of version {version}, which {origin} does not support"),
                extra: Some(serde_json::json!({ "room_version": version })),
            });
        }
    }
    Ok((version, object))
}

/// Receives `origin`'s signed `membership` event (`send_join`, `send_leave`): it must be the
/// one named in the path, of a user of `origin`, and pass the auth rules. A restricted join
/// this server authorised is countersigned first. Answers the event as stored.
pub async fn receive(
    fed: &Federation,
    origin: &ServerName,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    raw: &RawValue,
    membership: &str,
) -> Result<Pdu, MatrixError> {
    let core = fed.client.core();
    let room = RoomVersion::of_known(fed, room_id)
        .await
        .map_err(MatrixError::unknown)?
        .ok_or_else(|| MatrixError::not_found("This server is not in the room"))?;
    crate::acl::ensure_allowed(core, room_id.as_str(), origin, &format!("send_{membership}")).await?;
    let mut pdu = parse_pdu(raw, &room).map_err(MatrixError::bad_json)?;
    if &pdu.event_id != event_id {
        return Err(MatrixError::bad_json("The event is not the one named in the path"));
    }
    let content: serde_json::Value = pdu.content_value();
    if pdu.kind.to_string() != "m.room.member"
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || content["membership"] != membership
    {
        return Err(MatrixError::bad_json(format!("Not a {membership} of its sender")));
    }
    if pdu.sender.server_name() != origin {
        return Err(MatrixError::forbidden(format!(
            "{} is not a user of {origin}",
            pdu.sender
        )));
    }
    // A restricted join this server authorised needs its signature too before it verifies;
    // the sender's own signature is still checked against the same event.
    let authoriser = content["join_authorised_via_users_server"]
        .as_str()
        .and_then(|u| UserId::parse(u).ok());
    if membership == "join" && authoriser.is_some_and(|u| core.is_local(&u)) {
        pdu = countersign(core, &room, pdu)?;
    }
    verify_signed(fed, &pdu, &room, membership).await?;
    let receiver = Receiver {
        fed,
        from: origin,
        room,
    };
    let outcome = receiver.receive(pdu).await.map_err(MatrixError::bad_json)?;
    if let Some(reason) = outcome.rejected {
        return Err(MatrixError::forbidden(format!(
            "The room does not allow this {membership}: {reason}"
        )));
    }
    if outcome.soft_failed {
        return Err(MatrixError::forbidden(format!(
            "The room's current state does not allow this {membership}"
        )));
    }
    forward(core, room_id.as_str(), origin, outcome.pdu.event_id.as_str()).await?;
    Ok(outcome.pdu)
}

/// Checks the signatures and hashes of an event its sender's server sent here itself (a
/// membership through `send_join`/`send_leave`, an invite): 403 when they fail, rather than the
/// 400 the pipeline's error would give. Its own server just signed it, so a hash mismatch is
/// refused too, not kept redacted as a relayed event would be.
pub async fn verify_signed(fed: &Federation, pdu: &Pdu, room: &RoomVersion, what: &str) -> Result<(), MatrixError> {
    let keys = fed.keys.keys_for_pdu(&pdu.json, &room.rules).await;
    let why = match ruma::signatures::verify_event(&keys, &pdu.json, &room.rules) {
        Ok(ruma::signatures::Verified::All) => return Ok(()),
        Ok(ruma::signatures::Verified::Signatures) => "its content hash does not match".to_owned(),
        Err(e) => format!("it is not signed by its sender's server: {e}"),
    };
    tracing::info!(event_id = %pdu.event_id, sender = %pdu.sender, "refused {what}: {why}");
    Err(MatrixError::forbidden(format!("The {what} was refused: {why}")))
}

/// Passes an event another server sent here alone (a membership through `send_join` or
/// `send_leave`) on to the other servers in the room, as the server it chose to go through.
async fn forward(
    core: &weft_core::Core,
    room_id: &str,
    origin: &ServerName,
    event_id: &str,
) -> Result<(), MatrixError> {
    let mut tx = core.db.write().await?;
    let destinations: Vec<String> = weft_core::storage::rooms::servers_in_room(&mut tx, room_id)
        .await?
        .into_iter()
        .filter(|s| s != origin.as_str() && s != core.server_name.as_str())
        .collect();
    weft_core::outbox::enqueue_pdu(&mut tx, &destinations, event_id).await?;
    tx.commit().await?;
    // Wakes the sender (it listens to the notifier).
    core.notifier.room_changed(room_id);
    Ok(())
}

/// Adds this server's signature to another server's event: a restricted join it authorised, an
/// invite of one of its users.
pub fn countersign(core: &weft_core::Core, room: &RoomVersion, pdu: Pdu) -> Result<Pdu, MatrixError> {
    let mut json = pdu.json.clone();
    ruma::signatures::sign_event(
        core.server_name.as_str(),
        &core.key.keypair,
        &mut json,
        &room.rules.redaction,
    )
    .map_err(|e| MatrixError::bad_json(format!("cannot sign the event: {e}")))?;
    Pdu::from_json(pdu.event_id, json, &room.rules).map_err(|e| MatrixError::bad_json(e.to_string()))
}

/// Tries `attempt` through each of `servers` but this one, in order, until one succeeds;
/// otherwise the last refusal (or `none` when there was no server to try). `what` names the
/// attempt in the log line of each failure.
pub async fn through_first<T, F, Fut>(
    fed: &Federation,
    servers: &[ruma::OwnedServerName],
    what: &str,
    none: MatrixError,
    mut attempt: F,
) -> Result<T, MatrixError>
where
    F: FnMut(ruma::OwnedServerName) -> Fut,
    Fut: std::future::Future<Output = Result<T, MatrixError>>,
{
    let own = &fed.client.core().server_name;
    let mut last_error = none;
    for server in servers.iter().filter(|s| *s != own) {
        match attempt(server.clone()).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::info!(%server, error = %e.message, "cannot {what} through this server");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// A PDU's JSON as it travels.
pub fn to_raw(json: &CanonicalJsonObject) -> Box<RawValue> {
    serde_json::value::to_raw_value(json).unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON"))
}

/// The `membership` of a template event's content.
pub fn template_membership(object: &CanonicalJsonObject) -> Option<&str> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}
