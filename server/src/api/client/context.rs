//! `GET /rooms/{roomId}/context/{eventId}`: an event with the visible events around it.

use axum::Router;
use ruma::{api::client::context::get_context, serde::Raw};
use serde_json::Value;
use weft_core::{
    rooms::{
        client_format::{self, Viewer},
        timeline,
    },
    storage::events,
};

use crate::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

/// Upper bound on `limit`, so one request cannot format an unbounded number of events.
const MAX_LIMIT: u64 = 1000;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(get_context)
}

pub fn to_raw<T>(values: Vec<Value>) -> Vec<Raw<T>> {
    values
        .into_iter()
        .filter_map(|v| Raw::from_json_string(v.to_string()).ok())
        .collect()
}

pub async fn get_context(state: AppState, req: Ruma<get_context::v3::Request>) -> ApiResult<get_context::v3::Response> {
    let user = req.sender()?;
    let core = &state.core;
    let mut conn = state.db.conn().await?;
    let limit = u64::from(req.limit).min(MAX_LIMIT) as usize;
    let ctx = timeline::context(
        core,
        &mut conn,
        user.user_id.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
        limit,
        &req.filter,
    )
    .await?;

    let viewer = Some(Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    });
    let state_events = events::get_many(&mut conn, &ctx.state).await?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(ctx.before.next.token());
    response.end = Some(ctx.after.next.token());
    response.events_before = to_raw(client_format::format(core, &mut conn, &ctx.before.events, viewer).await?);
    response.event = to_raw(client_format::format(core, &mut conn, &[ctx.event], viewer).await?).pop();
    response.events_after = to_raw(client_format::format(core, &mut conn, &ctx.after.events, viewer).await?);
    response.state = to_raw(client_format::format(core, &mut conn, &state_events, viewer).await?);
    Ok(response)
}
