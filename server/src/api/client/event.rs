//! `GET /rooms/{roomId}/event/{eventId}` and `GET /rooms/{roomId}/timestamp_to_event`.

use axum::Router;
use ruma::{
    api::{
        client::room::{get_event_by_timestamp, get_room_event},
        Direction,
    },
    MilliSecondsSinceUnixEpoch, UInt,
};
use weft_core::rooms::{
    client_format::{self, Viewer},
    timeline,
};

use super::{context::to_raw, message::parse_event_id};
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(get_event).ruma(timestamp_to_event)
}

pub async fn get_event(
    state: AppState,
    req: Ruma<get_room_event::v3::Request>,
) -> ApiResult<get_room_event::v3::Response> {
    let user = req.sender()?;
    let core = &state.core;
    let mut conn = state.db.conn().await?;
    let event = timeline::visible_event(
        core,
        &mut conn,
        user.user_id.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
    )
    .await?;
    let viewer = Some(Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    });
    let raw = to_raw(client_format::format(core, &mut conn, &[event], viewer).await?)
        .pop()
        .ok_or_else(|| MatrixError::unknown("Failed to format event"))?;
    Ok(get_room_event::v3::Response::new(raw))
}

pub async fn timestamp_to_event(
    state: AppState,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    let dir = match req.dir {
        Direction::Backward => timeline::Dir::Backward,
        Direction::Forward => timeline::Dir::Forward,
    };
    // UInt is at most 2^53 - 1, so it always fits an i64.
    let ts = i64::try_from(u64::from(req.ts.0)).unwrap_or(i64::MAX);
    let event = timeline::event_at_timestamp(
        &state.core,
        &mut conn,
        user.user_id.as_str(),
        req.room_id.as_str(),
        ts,
        dir,
    )
    .await?;
    let origin_ts = UInt::try_from(event.origin_server_ts.max(0)).unwrap_or_default();
    Ok(get_event_by_timestamp::v1::Response::new(
        parse_event_id(&event.event_id)?,
        MilliSecondsSinceUnixEpoch(origin_ts),
    ))
}
