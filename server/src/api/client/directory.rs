//! The public room directory: `/directory/list/room/{roomId}` (visibility) and
//! `/publicRooms` (GET and the filtered POST).

use axum::Router;
use ruma::{
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
    },
    directory::RoomNetwork,
    ServerName, UInt,
};
use weft_core::rooms::directory::{self as core_directory, Query};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(get_visibility)
        .ruma(set_visibility)
        .ruma(public_rooms)
        .ruma(public_rooms_filtered)
}

pub async fn get_visibility(
    state: AppState,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    let public = core_directory::is_published(&state.core, req.room_id.as_str()).await?;
    Ok(get_room_visibility::v3::Response::new(if public {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

pub async fn set_visibility(
    state: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let user = req.sender()?;
    let public = match &req.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown visibility {}",
                other.as_str()
            )))
        }
    };
    core_directory::set_published(&state.core, req.room_id.as_str(), &user.user_id, user.is_admin, public).await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// Whether a `/publicRooms` request names another server's directory.
fn other_server<'a>(state: &AppState, server: Option<&'a ServerName>) -> Option<&'a ServerName> {
    server.filter(|s| *s != state.core.server_name)
}

/// Another server's directory, asked over federation with the client's query.
async fn remote_directory(
    state: &AppState,
    server: &ServerName,
    limit: Option<UInt>,
    since: Option<String>,
    filter: ruma::directory::Filter,
    room_network: RoomNetwork,
) -> ApiResult<ruma::api::federation::directory::get_public_rooms_filtered::v1::Response> {
    let mut request = ruma::api::federation::directory::get_public_rooms_filtered::v1::Request::new();
    request.limit = limit;
    request.since = since;
    request.filter = filter;
    request.room_network = room_network;
    weft_federation::query::public_rooms(weft_federation::of(state)?, server, request).await
}

pub async fn public_rooms(
    state: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<get_public_rooms::v3::Response> {
    if let Some(server) = other_server(&state, req.server.as_deref()) {
        let answer = remote_directory(
            &state,
            server,
            req.limit,
            req.since.clone(),
            Default::default(),
            RoomNetwork::Matrix,
        )
        .await?;
        let mut res = get_public_rooms::v3::Response::new(answer.chunk);
        (res.next_batch, res.prev_batch, res.total_room_count_estimate) =
            (answer.next_batch, answer.prev_batch, answer.total_room_count_estimate);
        return Ok(res);
    }
    let query = Query::from_request(req.limit, req.since.clone(), &Default::default());
    let page = core_directory::public_rooms(&state.core, &query).await?;
    let mut res = get_public_rooms::v3::Response::new(Vec::new());
    res.total_room_count_estimate = page.total_estimate();
    (res.chunk, res.next_batch, res.prev_batch) = (page.chunk, page.next_batch, page.prev_batch);
    Ok(res)
}

pub async fn public_rooms_filtered(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<get_public_rooms_filtered::v3::Response> {
    req.sender()?;
    let mut res = get_public_rooms_filtered::v3::Response::new();
    if let Some(server) = other_server(&state, req.server.as_deref()) {
        let answer = remote_directory(
            &state,
            server,
            req.limit,
            req.since.clone(),
            req.filter.clone(),
            req.room_network.clone(),
        )
        .await?;
        (res.chunk, res.next_batch, res.prev_batch, res.total_room_count_estimate) = (
            answer.chunk,
            answer.next_batch,
            answer.prev_batch,
            answer.total_room_count_estimate,
        );
        return Ok(res);
    }
    let mut query = Query::from_request(req.limit, req.since.clone(), &req.filter);
    query.network = match &req.room_network {
        RoomNetwork::ThirdParty(instance) => core_directory::Network::Instance(instance.clone()),
        RoomNetwork::All => core_directory::Network::All,
        _ => core_directory::Network::Matrix,
    };
    let page = core_directory::public_rooms(&state.core, &query).await?;
    res.total_room_count_estimate = page.total_estimate();
    (res.chunk, res.next_batch, res.prev_batch) = (page.chunk, page.next_batch, page.prev_batch);
    Ok(res)
}
