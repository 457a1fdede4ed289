//! `/_matrix/federation/v1/event/...`, `/event_auth/...` and `/get_missing_events/...`: events
//! other servers read one by one or by walking the graph. The logic is in
//! `weft_core::rooms::for_servers`.

use axum::Router;
use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events},
    },
    MilliSecondsSinceUnixEpoch,
};
use weft_core::rooms::for_servers;
use weft_http::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use super::{origin, pdus};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(event).ruma(event_auth).ruma(missing_events)
}

/// # `GET /_matrix/federation/v1/event/{eventId}`
async fn event(state: AppState, req: Ruma<get_event::v1::Request>) -> ApiResult<get_event::v1::Response> {
    let served = for_servers::event(&state.core, origin(&req)?.as_str(), req.event_id.as_str()).await?;
    Ok(get_event::v1::Response::new(
        state.core.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        served.pdu,
    ))
}

/// # `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
async fn event_auth(
    state: AppState,
    req: Ruma<get_event_authorization::v1::Request>,
) -> ApiResult<get_event_authorization::v1::Response> {
    let chain = for_servers::event_auth(
        &state.core,
        origin(&req)?.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
    )
    .await?;
    Ok(get_event_authorization::v1::Response::new(pdus(chain)))
}

/// # `POST /_matrix/federation/v1/get_missing_events/{roomId}`
async fn missing_events(
    state: AppState,
    req: Ruma<get_missing_events::v1::Request>,
) -> ApiResult<get_missing_events::v1::Response> {
    let ids = |list: &[ruma::OwnedEventId]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    let events = for_servers::missing_events(
        &state.core,
        origin(&req)?.as_str(),
        req.room_id.as_str(),
        &ids(&req.earliest_events),
        &ids(&req.latest_events),
        req.limit.into(),
        req.min_depth.into(),
    )
    .await?;
    Ok(get_missing_events::v1::Response::new(pdus(events)))
}
