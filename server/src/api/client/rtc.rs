//! MatrixRTC: the transports this server offers (MSC4143), LiveKit tokens for its SFU
//! (MSC4195's `get_token`, asking the SFU's server over federation for another server's SFU),
//! and lk-jwt-service's own endpoints (`/sfu/get`, `/get_token` under `/livekit/jwt`), which
//! today's Element Call calls with an OpenID token, so that it needs no separate service.
//! Token logic is in `weft_core::rtc`.

use axum::{extract::State, routing::post, Json, Router};
use ruma::{
    api::{
        client::rtc::{
            livekit::{delegate_delayed_leave, get_token},
            transports, RtcTransport,
        },
        federation::{openid::get_openid_userinfo, rtc::livekit::get_token as federation_get_token},
    },
    OwnedUserId, UserId,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use weft_core::rtc::{self, livekit};

use crate::{
    config::LIVEKIT_SERVICE_PATH,
    error::{ApiResult, MatrixError},
    ruma_wrapper::{also_at, client_ip, read_body, Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = router.ruma(transports).ruma(get_token).ruma(delegate_leave);
    // The paths the proposals give for when they are stable, which ruma 0.17 does not name yet.
    let router = also_at(router, "/_matrix/client/v1/rtc/transports", transports);
    let router = also_at(router, "/_matrix/client/v1/rtc/livekit/get_token", get_token);
    let router = also_at(
        router,
        "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave",
        delegate_leave,
    );
    router
        .route(&format!("{LIVEKIT_SERVICE_PATH}/sfu/get"), post(service_sfu_get))
        .route(&format!("{LIVEKIT_SERVICE_PATH}/get_token"), post(service_get_token))
        .route(
            &format!("{LIVEKIT_SERVICE_PATH}/delegate_delayed_leave"),
            post(service_delegate_leave),
        )
}

/// # `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`
/// # `GET /_matrix/client/v1/rtc/transports`
///
/// The token service Element Call asks (`livekit`, as in `/.well-known/matrix/client`) and,
/// when this server issues tokens for an SFU itself, that SFU (`m.livekit`, MSC4195).
async fn transports(state: AppState, req: Ruma<transports::v1::Request>) -> ApiResult<transports::v1::Response> {
    req.sender()?;
    let mut offered = Vec::new();
    let service = state.config.livekit_service_url();
    if !service.is_empty() {
        offered.push(RtcTransport::livekit(service));
    }
    if state.config.livekit.enabled() {
        let mut data = Map::new();
        data.insert("url".into(), json!(state.config.livekit.url));
        offered
            .push(RtcTransport::new("m.livekit", data).map_err(|e| MatrixError::unknown(format!("transport: {e}")))?);
    }
    Ok(transports::v1::Response::new(offered))
}

/// # `POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token`
/// # `POST /_matrix/client/v1/rtc/livekit/get_token`
///
/// A token for the SFU at `url` of `server_name` (this server by default): issued here for
/// this server's SFU, else asked of that server over federation, whose refusals (403, 400)
/// reach the client as they are and anything else as 502.
async fn get_token(state: AppState, req: Ruma<get_token::v1::Request>) -> ApiResult<get_token::v1::Response> {
    let user = req.sender()?;
    let ours = &state.core.server_name;
    let server = req.server_name.clone().unwrap_or_else(|| ours.clone());
    if &server == ours {
        let sfu = own_sfu(&state, &req.url)?;
        let jwt = rtc::slot_token(
            &state.core,
            &sfu,
            &user.user_id,
            req.room_id.as_str(),
            &req.slot_id,
            &req.member_id,
        )
        .await?;
        return Ok(get_token::v1::Response::new(jwt));
    }
    // The user must be in the room here too: this server vouches for them to the other.
    rtc::check_may_join_call(&state.core, req.room_id.as_str(), user.user_id.as_str()).await?;
    let request = federation_get_token::msc4195::Request::new(
        user.user_id.clone(),
        req.url.clone(),
        req.room_id.clone(),
        req.slot_id.clone(),
        req.member_id.clone(),
    );
    let answer = weft_federation::of(&state)?
        .client
        .send(&server, request)
        .await
        .map_err(|e| match e.status() {
            Some(403) => MatrixError::forbidden(e.to_string()),
            Some(400) => MatrixError::invalid_param(e.to_string()),
            _ => MatrixError::unknown(e.to_string()).with_status(axum::http::StatusCode::BAD_GATEWAY),
        })?;
    Ok(get_token::v1::Response::new(answer.jwt))
}

/// # `POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave`
/// # `POST /_matrix/client/v1/rtc/livekit/delegate_delayed_leave`
///
/// The user's scheduled leave event for a member of a slot, handed to this server to restart
/// while the member is connected to this server's SFU and to send once it is not.
async fn delegate_leave(
    state: AppState,
    req: Ruma<delegate_delayed_leave::v1::Request>,
) -> ApiResult<delegate_delayed_leave::v1::Response> {
    let user = req.sender()?;
    let sfu = own_sfu(&state, &req.url)?;
    let identity = livekit::Identity::Member {
        user_id: user.user_id.as_str(),
        member_id: &req.member_id,
    }
    .derive();
    rtc::delegate_leave(
        &state.core,
        &sfu,
        &user.user_id,
        rtc::SlotMember {
            room_id: req.room_id.as_str(),
            slot_id: &req.slot_id,
            member_id: &req.member_id,
        },
        &req.delay_id,
        identity,
    )
    .await?;
    Ok(delegate_delayed_leave::v1::Response::new())
}

/// This server's SFU, if `url` names it (400 `M_INVALID_PARAM` otherwise, as MSC4195 says).
pub fn own_sfu(state: &AppState, url: &str) -> ApiResult<livekit::Sfu> {
    match state.config.livekit.sfu() {
        Some(sfu) if rtc::is_our_sfu(&sfu, url) => Ok(sfu),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "{url} is not an SFU of this server"
        ))),
        None => Err(MatrixError::invalid_param("This server has no LiveKit SFU")),
    }
}

/// The OpenID token in lk-jwt-service's requests.
#[derive(Deserialize)]
struct OpenIdToken {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    matrix_server_name: String,
}

/// lk-jwt-service's legacy `/sfu/get` body.
#[derive(Deserialize)]
struct SfuGet {
    #[serde(default)]
    room: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    device_id: String,
}

/// The MatrixRTC member in lk-jwt-service's `/get_token` body.
#[derive(Deserialize)]
struct Member {
    #[serde(default)]
    id: String,
    #[serde(default)]
    claimed_user_id: String,
    #[serde(default)]
    claimed_device_id: String,
}

/// lk-jwt-service's `/delegate_delayed_leave` body.
#[derive(Deserialize)]
struct ServiceDelegate {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: OpenIdToken,
    member: Member,
    #[serde(default)]
    delay_id: String,
}

/// lk-jwt-service's `/get_token` body.
#[derive(Deserialize)]
struct ServiceGetToken {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: OpenIdToken,
    member: Member,
}

/// Reads an lk-jwt-service request: the service must be on, the caller within its rate, the
/// body JSON of the expected shape.
async fn service_request<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    request: axum::extract::Request,
) -> ApiResult<(livekit::Sfu, T)> {
    let sfu = state
        .config
        .livekit
        .sfu()
        .ok_or_else(|| MatrixError::unrecognized("This server issues no LiveKit tokens"))?;
    let (parts, body) = request.into_parts();
    let ip = client_ip(&parts).unwrap_or_default();
    state.rate_limiter.check(&ip).map_err(MatrixError::limit_exceeded)?;
    let bytes = read_body(body, state.config.max_request_size).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| MatrixError::not_json("Content not JSON"))?;
    let request = serde_json::from_value(value).map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))?;
    Ok((sfu, request))
}

/// The user an OpenID token stands for: asked of this server's own tokens, or of the user's
/// server over federation (`/openid/userinfo`). Any failure is lk-jwt-service's 401.
async fn openid_user(state: &AppState, token: &OpenIdToken) -> ApiResult<OwnedUserId> {
    let refused = || MatrixError::unauthorized("The request could not be authorised");
    if token.access_token.is_empty() || token.matrix_server_name.is_empty() {
        return Err(MatrixError::bad_json(
            "openid_token needs access_token and matrix_server_name",
        ));
    }
    if token.matrix_server_name == state.core.server_name.as_str() {
        let user = weft_core::openid::user_of(&state.db, &token.access_token)
            .await?
            .ok_or_else(refused)?;
        return UserId::parse(user).map_err(|_| refused());
    }
    let server = ruma::ServerName::parse(&token.matrix_server_name).map_err(|_| refused())?;
    let fed = weft_federation::of(state)?;
    let answer = fed
        .client
        .send(
            &server,
            get_openid_userinfo::v1::Request::new(token.access_token.clone()),
        )
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "an OpenID token could not be checked at its server");
            refused()
        })?;
    // A server vouches only for its own users.
    if answer.sub.server_name() != server {
        return Err(refused());
    }
    Ok(answer.sub)
}

/// # `POST /livekit/jwt/sfu/get`
///
/// lk-jwt-service's legacy endpoint: `{room, openid_token, device_id}` to `{url, jwt}` for the
/// room's one call, identity `<user_id>:<device_id>`.
async fn service_sfu_get(State(state): State<AppState>, request: axum::extract::Request) -> ApiResult<Json<Value>> {
    let (sfu, req) = service_request::<SfuGet>(&state, request).await?;
    if req.room.is_empty() || req.device_id.is_empty() {
        return Err(MatrixError::bad_json("The request needs room and device_id"));
    }
    let user = openid_user(&state, &req.openid_token).await?;
    let room = livekit::room_name(&req.room, livekit::LEGACY_CALL_SLOT);
    let identity = livekit::Identity::Legacy {
        user_id: user.as_str(),
        device_id: &req.device_id,
    }
    .derive();
    let jwt = rtc::service_token(&state.core, &sfu, &user, &req.room, &room, &identity).await?;
    Ok(Json(json!({ "url": sfu.url, "jwt": jwt })))
}

/// # `POST /livekit/jwt/get_token`
///
/// lk-jwt-service's endpoint for MatrixRTC slots: `{room_id, slot_id, openid_token, member}`
/// to `{url, jwt}`; the member's claimed user must be the token's.
async fn service_get_token(State(state): State<AppState>, request: axum::extract::Request) -> ApiResult<Json<Value>> {
    let (sfu, req) = service_request::<ServiceGetToken>(&state, request).await?;
    if req.room_id.is_empty() || req.slot_id.is_empty() {
        return Err(MatrixError::bad_json("The request needs room_id and slot_id"));
    }
    let member = &req.member;
    if member.id.is_empty() || member.claimed_user_id.is_empty() || member.claimed_device_id.is_empty() {
        return Err(MatrixError::bad_json(
            "member needs id, claimed_user_id and claimed_device_id",
        ));
    }
    let user = openid_user(&state, &req.openid_token).await?;
    if user.as_str() != member.claimed_user_id {
        return Err(MatrixError::unauthorized("The request could not be authorised"));
    }
    let room = livekit::room_name(&req.room_id, &req.slot_id);
    let identity = livekit::Identity::Device {
        user_id: user.as_str(),
        device_id: &member.claimed_device_id,
        member_id: &member.id,
    }
    .derive();
    let jwt = rtc::service_token(&state.core, &sfu, &user, &req.room_id, &room, &identity).await?;
    Ok(Json(json!({ "url": sfu.url, "jwt": jwt })))
}

/// # `POST /livekit/jwt/delegate_delayed_leave`
///
/// lk-jwt-service's delegation, for a user of this server (the delayed event lives here; a
/// user of another server delegates to theirs): the member's scheduled leave event is
/// restarted while they are connected to the SFU and sent once they are not.
async fn service_delegate_leave(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let (sfu, req) = service_request::<ServiceDelegate>(&state, request).await?;
    let member = &req.member;
    if req.room_id.is_empty() || req.slot_id.is_empty() || req.delay_id.is_empty() {
        return Err(MatrixError::bad_json("The request needs room_id, slot_id and delay_id"));
    }
    if member.id.is_empty() || member.claimed_user_id.is_empty() || member.claimed_device_id.is_empty() {
        return Err(MatrixError::bad_json(
            "member needs id, claimed_user_id and claimed_device_id",
        ));
    }
    let user = openid_user(&state, &req.openid_token).await?;
    if user.as_str() != member.claimed_user_id {
        return Err(MatrixError::unauthorized("The request could not be authorised"));
    }
    if !state.core.is_local(&user) {
        return Err(MatrixError::bad_json(
            "Delayed events are delegated to the user's own server",
        ));
    }
    let identity = livekit::Identity::Device {
        user_id: user.as_str(),
        device_id: &member.claimed_device_id,
        member_id: &member.id,
    }
    .derive();
    rtc::delegate_leave(
        &state.core,
        &sfu,
        &user,
        rtc::SlotMember {
            room_id: &req.room_id,
            slot_id: &req.slot_id,
            member_id: &member.id,
        },
        &req.delay_id,
        identity,
    )
    .await?;
    Ok(Json(json!({})))
}
