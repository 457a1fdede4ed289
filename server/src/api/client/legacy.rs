//! Deprecated endpoints that bots still use: `GET /events` (long-polling like `/sync`),
//! `GET /initialSync`, `GET /rooms/{roomId}/initialSync`, `GET /events/{eventId}` and
//! `POST /rooms/{roomId}/send/{eventType}` (a send without a transaction ID). Ruma's request
//! type where it has one; otherwise a small handler with the same authentication.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, FromRequestParts, Path, RawQuery, State},
    routing::{get, post},
    Json, Router,
};
use ruma::{api::client::peeking::get_current_state, OwnedEventId, OwnedRoomId};
use serde_json::{json, Value};
use weft_core::{
    rooms::{
        self,
        client_format::{self, Viewer},
        timeline,
    },
    sync::{legacy, SyncToken},
};

use super::message::message_template;
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{authenticate, read_body, AuthNeed, AuthUser, Ruma, RumaJsonRoute},
    state::AppState,
};

/// Long-polls are capped as `/sync`'s are; `/events` waits 30 s unless told (as Synapse).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages per room in an initial sync unless told.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

pub fn routes(mut router: Router<AppState>) -> Router<AppState> {
    router = router.ruma_json(room_initial_sync);
    for v in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/client/{v}/events"), get(events))
            .route(&format!("/_matrix/client/{v}/events/{{event_id}}"), get(event_by_id))
            .route(&format!("/_matrix/client/{v}/initialSync"), get(initial_sync))
            .route(
                &format!("/_matrix/client/{v}/rooms/{{room_id}}/send/{{event_type}}"),
                post(send_without_txn),
            );
    }
    router
}

/// The caller of an endpoint ruma has no type for, authenticated as `Ruma` does.
pub struct Authed(pub AuthUser);

impl FromRequestParts<AppState> for Authed {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, parts, AuthNeed::Required)
            .await?
            .map(Authed)
            .ok_or_else(|| MatrixError::missing_token("Missing access token"))
    }
}

fn viewer(user: &AuthUser) -> Viewer<'_> {
    Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    }
}

/// The query's parameters, the last of each name winning.
fn query_param(query: &Option<String>, name: &str) -> Option<String> {
    let query = query.as_deref()?;
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .last()
}

fn parsed_param<T: std::str::FromStr>(query: &Option<String>, name: &str) -> ApiResult<Option<T>> {
    query_param(query, name)
        .map(|v| {
            v.parse()
                .map_err(|_| MatrixError::invalid_param(format!("Invalid {name}")))
        })
        .transpose()
}

fn room_id_param(value: &str) -> ApiResult<OwnedRoomId> {
    OwnedRoomId::try_from(value).map_err(|_| MatrixError::invalid_param("Invalid room ID"))
}

fn path_error(err: PathRejection) -> MatrixError {
    MatrixError::invalid_param(format!("Invalid path parameter: {err}"))
}

/// `GET /events?from=&timeout=&room_id=`.
async fn events(
    State(state): State<AppState>,
    Authed(user): Authed,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let from = query_param(&query, "from").map(|t| SyncToken::parse(&t)).transpose()?;
    let timeout = parsed_param::<u64>(&query, "timeout")?
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let room_id = query_param(&query, "room_id").map(|r| room_id_param(&r)).transpose()?;
    // Guests follow one room at a time, as Synapse lets them.
    if user.is_guest && room_id.is_none() {
        return Err(MatrixError::guest_access_forbidden("Guests must name a room_id"));
    }
    let page = legacy::events(
        &state.core,
        viewer(&user),
        from,
        room_id.as_ref().map(|r| r.as_str()),
        timeout,
    )
    .await?;
    Ok(Json(
        json!({ "chunk": page.chunk, "start": page.start, "end": page.end }),
    ))
}

/// `GET /initialSync?limit=&archived=`.
async fn initial_sync(
    State(state): State<AppState>,
    Authed(user): Authed,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let limit = parsed_param::<usize>(&query, "limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT);
    let archived = parsed_param::<bool>(&query, "archived")?.unwrap_or(false);
    Ok(Json(
        legacy::initial_sync(&state.core, viewer(&user), limit, archived).await?,
    ))
}

/// `GET /rooms/{roomId}/initialSync`.
async fn room_initial_sync(state: AppState, req: Ruma<get_current_state::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    Ok(legacy::room_initial_sync(&state.core, viewer(user), req.room_id.as_str(), DEFAULT_LIMIT).await?)
}

/// `GET /events/{eventId}`: an event the user may see, found by ID alone.
async fn event_by_id(
    State(state): State<AppState>,
    Authed(user): Authed,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(event_id) = path.map_err(path_error)?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| MatrixError::invalid_param("Invalid event ID"))?;
    let mut conn = state.db.conn().await?;
    let event = timeline::visible_event_by_id(&state.core, &mut conn, user.user_id.as_str(), event_id.as_str()).await?;
    let formatted = client_format::format(&state.core, &mut conn, &[event], Some(viewer(&user)))
        .await?
        .pop()
        .ok_or_else(|| MatrixError::unknown("Failed to format event"))?;
    Ok(Json(formatted))
}

/// `POST /rooms/{roomId}/send/{eventType}`: a send with no transaction ID, so not idempotent.
async fn send_without_txn(
    State(state): State<AppState>,
    Authed(user): Authed,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let Path((room_id, event_type)) = path.map_err(path_error)?;
    let room_id = room_id_param(&room_id)?;
    user.may_write()?;
    if user.shadow_banned {
        return Ok(Json(json!({ "event_id": super::message::shadow_banned_event_id() })));
    }
    if !user.is_admin {
        state
            .rate_limiter
            .check(user.user_id.as_str())
            .map_err(MatrixError::limit_exceeded)?;
    }
    let bytes = read_body(body, state.config.max_request_size).await?;
    // As for every endpoint, no body is `{}`.
    let json_body = if bytes.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&bytes).map_err(|_| MatrixError::not_json("Content not JSON"))?)
    };
    let template = message_template(&event_type, &json_body)?;
    let sent = rooms::send(&state.core, room_id.as_str(), &user.user_id, template, None).await?;
    Ok(Json(json!({ "event_id": sent.event_id })))
}
