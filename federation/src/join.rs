//! A local user joins a room this server is not in: `make_join` on a server in the room, the
//! template signed here, `send_join`, and the room's state and auth chain from the answer
//! checked and stored, after which the join enters the graph with that state.

use std::sync::Arc;

use ruma::{
    api::federation::membership::{create_join_event, prepare_join_event},
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId, UserId,
};
use weft_core::{
    events::{builder, pipeline::StateAt, StateMap},
    rooms::writer::{self, Received},
    storage::{events, users},
    util::now_ms,
};
use weft_http::error::MatrixError;

use crate::{
    membership::{template_membership, to_raw},
    receive::{parse_pdu, parse_pdus, Receiver, RoomVersion},
    Federation,
};

/// The room versions this server can join.
pub fn supported_versions() -> Vec<RoomVersionId> {
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]
        .iter()
        .filter_map(|v| RoomVersionId::try_from(*v).ok())
        .collect()
}

/// Joins `user` to `room_id` through the first of `servers` that lets them; answers the join's
/// event ID.
pub async fn join_remote(
    fed: &Federation,
    room_id: &OwnedRoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<OwnedEventId, MatrixError> {
    let none = MatrixError::not_found("No server to join the room through");
    crate::membership::through_first(fed, servers, "join", none, |server| async move {
        join_through(fed, &server, room_id, user, reason).await
    })
    .await
}

async fn join_through(
    fed: &Federation,
    server: &OwnedServerName,
    room_id: &OwnedRoomId,
    user: &UserId,
    reason: Option<&str>,
) -> Result<OwnedEventId, MatrixError> {
    let core = fed.client.core();
    let mut make = prepare_join_event::v1::Request::new(room_id.clone(), user.to_owned());
    make.ver = supported_versions();
    let made = fed.client.send(server, make).await.map_err(remote_error)?;
    let version = made.room_version.map(|v| v.to_string()).unwrap_or_else(|| "1".into());
    let room = RoomVersion::new(room_id.clone(), &version).map_err(MatrixError::unsupported_room_version)?;

    let mut object: CanonicalJsonObject = serde_json::from_str(made.event.get())
        .map_err(|e| MatrixError::unknown(format!("{server} sent a malformed join template: {e}")))?;
    let is_ours = matches!(object.get("sender"), Some(CanonicalJsonValue::String(s)) if s == user.as_str())
        && matches!(object.get("state_key"), Some(CanonicalJsonValue::String(s)) if s == user.as_str())
        && matches!(object.get("room_id"), Some(CanonicalJsonValue::String(r)) if r == room_id.as_str())
        && template_membership(&object) == Some("join");
    if !is_ours {
        return Err(MatrixError::unknown(format!(
            "{server} sent a join template for something else"
        )));
    }
    fill_content(core, &mut object, user, reason).await?;
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(now_ms().try_into().unwrap_or_default()),
    );
    let pdu = builder::sign(core, &room.rules, object)?;

    let send = create_join_event::v2::Request::new(room_id.clone(), pdu.event_id.clone(), to_raw(&pdu.json));
    let answer = fed
        .client
        .send_with_timeout(server, send, std::time::Duration::from_secs(300))
        .await
        .map_err(remote_error)?
        .room_state;
    // A restricted join comes back countersigned by the server that authorised it.
    let pdu = match &answer.event {
        Some(raw) => match parse_pdu(raw, &room) {
            Ok(signed) if signed.event_id == pdu.event_id => signed,
            _ => pdu,
        },
        None => pdu,
    };

    let receiver = Receiver {
        fed,
        from: server,
        room: room.clone(),
    };
    // The answer is held once, as raw values; each is dropped once parsed, and each parsed
    // event once stored. Of the state, only the IDs are kept.
    let room_state = answer;
    let state_pdus = parse_pdus(room_state.state, &room).await;
    let state_ids: Vec<String> = state_pdus.iter().map(|p| p.event_id.to_string()).collect();
    let mut outliers = parse_pdus(room_state.auth_chain, &room).await;
    outliers.extend(state_pdus);
    let count = outliers.len();
    let started = std::time::Instant::now();
    if let Err(e) = receiver.store_outliers(outliers).await {
        tracing::info!(%room_id, %server, error = %e, "some of the room's state could not be stored");
    }
    tracing::info!(%room_id, %server, events = count, elapsed_ms = started.elapsed().as_millis() as u64, "stored the joined room's state and auth chain");
    // The state is what of the answer's state passed the checks.
    let mut conn = core.db.conn().await?;
    let accepted = events::accepted_state_keys(&mut conn, &state_ids).await?;
    drop(conn);
    let state: StateMap = accepted.into_iter().collect();
    if state.is_empty() {
        return Err(MatrixError::unknown(format!("{server} sent no usable room state")));
    }
    let keys = fed.keys.keys_for_pdu(&pdu.json, &room.rules).await;
    let event_id = pdu.event_id.clone();
    match writer::receive(core, &room.version, pdu, &keys, StateAt::Supplied(Arc::new(state))).await? {
        Received::Stored(outcome) => match outcome.rejected {
            None if !outcome.soft_failed => Ok(event_id),
            _ => Err(MatrixError::forbidden("The room's state does not allow the join")),
        },
        Received::Missing(missing) => Err(MatrixError::unknown(format!(
            "{server} sent an incomplete room state: {missing:?}"
        ))),
    }
}

/// The joining user's profile and reason in the join's content, beside what the template holds
/// (`join_authorised_via_users_server` for a restricted room).
async fn fill_content(
    core: &weft_core::Core,
    object: &mut CanonicalJsonObject,
    user: &UserId,
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") else {
        return Err(MatrixError::unknown("The join template has no content"));
    };
    if let Some(profile) = users::get(&core.db, user.as_str()).await? {
        if let Some(name) = profile.displayname {
            content.insert("displayname".into(), CanonicalJsonValue::String(name));
        }
        if let Some(url) = profile.avatar_url {
            content.insert("avatar_url".into(), CanonicalJsonValue::String(url));
        }
    }
    if let Some(reason) = reason {
        content.insert("reason".into(), CanonicalJsonValue::String(reason.to_owned()));
    }
    Ok(())
}

/// Another server's refusal as this server's error to its client.
/// A refusal (4xx with a Matrix error code) is passed on as the other server gave it, so the
/// client learns why (`M_FORBIDDEN`, `M_INCOMPATIBLE_ROOM_VERSION`...); anything else is the
/// other server failing, 502.
pub fn remote_error(e: crate::client::FederationError) -> MatrixError {
    match (e.status(), e.errcode()) {
        (Some(status @ 400..=499), Some(errcode)) if errcode.starts_with("M_") && errcode != "M_UNKNOWN" => {
            let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
            let mut error = MatrixError::from_remote(status, errcode.to_owned(), e.to_string());
            error.extra = e.extra().map(|extra| serde_json::Value::Object(extra.clone()));
            error
        }
        (Some(403), _) => MatrixError::forbidden(e.to_string()),
        (Some(404), _) => MatrixError::not_found(e.to_string()),
        _ => MatrixError::unknown(e.to_string()).with_status(http::StatusCode::BAD_GATEWAY),
    }
}
