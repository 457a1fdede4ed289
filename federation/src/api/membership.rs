//! Joins, leaves and knocks of other servers' users: `make_join`/`send_join` (v2, and the
//! deprecated v1), `make_leave`/`send_leave` (v2 and v1), `make_knock`/`send_knock`.

use axum::{extract::State, routing::put, Router};
use ruma::{
    api::federation::membership::{
        create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
        prepare_leave_event, RawStrippedState,
    },
    RoomVersionId,
};
use weft_core::rooms::for_servers;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use crate::membership::{self, to_raw};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(make_join)
        .ruma(send_join)
        .ruma(make_leave)
        .ruma(send_leave)
        .ruma(make_knock)
        .ruma(send_knock)
        // v1 differs from v2 only in wrapping its answer in `[200, answer]` (a historical bug
        // the spec kept); older servers still use it. ruma no longer has the v1 types, and the
        // request is the same, so v2's parses it.
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(
                |State(state): State<AppState>, req: Ruma<create_join_event::v2::Request>| async move {
                    super::v1_wrapped(send_join(state, req).await?)
                },
            ),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(
                |State(state): State<AppState>, req: Ruma<create_leave_event::v2::Request>| async move {
                    super::v1_wrapped(send_leave(state, req).await?)
                },
            ),
        )
}

fn version_id(version: &str) -> ApiResult<RoomVersionId> {
    RoomVersionId::try_from(version).map_err(|e| MatrixError::unknown(e.to_string()))
}

/// # `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
async fn make_join(
    state: AppState,
    req: Ruma<prepare_join_event::v1::Request>,
) -> ApiResult<prepare_join_event::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    // A server that names no version supports only v1, per the spec.
    let supported = if req.ver.is_empty() {
        vec![RoomVersionId::V1]
    } else {
        req.ver.clone()
    };
    let (version, event) =
        membership::template(fed, &origin, &req.room_id, &req.user_id, "join", Some(&supported)).await?;
    let mut response = prepare_join_event::v1::Response::new(to_raw(&event));
    response.room_version = Some(version_id(&version)?);
    Ok(response)
}

/// # `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
///
/// The state before the join and its auth chain, in full (`omit_members` is not honoured yet:
/// the spec lets a server answer in full).
async fn send_join(
    state: AppState,
    req: Ruma<create_join_event::v2::Request>,
) -> ApiResult<create_join_event::v2::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    let pdu = membership::receive(fed, &origin, &req.room_id, &req.event_id, &req.pdu, "join").await?;
    // The joining server now has a member in the room, so it may read the state before its
    // join like any server in the room.
    let before = for_servers::state(
        &state.core,
        origin.as_str(),
        req.room_id.as_str(),
        pdu.event_id.as_str(),
    )
    .await?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = super::pdus(before.state);
    room_state.auth_chain = super::pdus(before.auth_chain);
    room_state.event = Some(to_raw(&pdu.json));
    let mut conn = state.db.conn().await?;
    room_state.servers_in_room =
        Some(weft_core::storage::rooms::servers_in_room(&mut conn, req.room_id.as_str()).await?);
    Ok(create_join_event::v2::Response::new(room_state))
}

/// # `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
async fn make_leave(
    state: AppState,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> ApiResult<prepare_leave_event::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    let (version, event) = membership::template(fed, &origin, &req.room_id, &req.user_id, "leave", None).await?;
    Ok(prepare_leave_event::v1::Response::new(
        Some(version_id(&version)?),
        to_raw(&event),
    ))
}

/// # `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
async fn send_leave(
    state: AppState,
    req: Ruma<create_leave_event::v2::Request>,
) -> ApiResult<create_leave_event::v2::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    membership::receive(fed, &origin, &req.room_id, &req.event_id, &req.pdu, "leave").await?;
    Ok(create_leave_event::v2::Response::new())
}

/// # `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
async fn make_knock(
    state: AppState,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> ApiResult<prepare_knock_event::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    let (version, event) =
        membership::template(fed, &origin, &req.room_id, &req.user_id, "knock", Some(&req.ver)).await?;
    Ok(prepare_knock_event::v1::Response::new(
        version_id(&version)?,
        to_raw(&event),
    ))
}

/// # `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
///
/// Answers the room's stripped state, which the knocker's server shows them.
async fn send_knock(
    state: AppState,
    req: Ruma<create_knock_event::v1::Request>,
) -> ApiResult<create_knock_event::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    membership::receive(fed, &origin, &req.room_id, &req.event_id, &req.pdu, "knock").await?;
    let stripped = weft_core::rooms::membership::current_stripped_state(&state.core, req.room_id.as_str()).await?;
    Ok(create_knock_event::v1::Response::new(
        stripped
            .into_iter()
            .filter_map(|json| serde_json::value::RawValue::from_string(json).ok())
            .map(RawStrippedState::Pdu)
            .collect(),
    ))
}
