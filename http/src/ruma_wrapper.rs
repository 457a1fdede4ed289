//! The bridge between axum and ruma: `Ruma<T>` parses any ruma request type (authenticating
//! and rate limiting it as its metadata says), and `RumaRoute` mounts a handler on every path
//! the endpoint has ever had.

use std::{future::Future, net::SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, Path, Request},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::BytesMut;
use ruma::{
    api::{
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
        },
        error::{DeserializationError, FromHttpRequestError},
        federation::authentication::ServerSignatures,
        path_builder::PathBuilder,
        IncomingRequest, IncomingRequestExt, Metadata, OutgoingResponse, OutgoingResponseExt,
    },
    OwnedDeviceId, OwnedServerName, OwnedUserId,
};

use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// What authenticates a request to an endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AuthNeed {
    None,
    /// An access token, if the request has one.
    Optional,
    /// An access token.
    Required,
    /// Another server's signature (X-Matrix), checked by the state's `ServerAuth`.
    ServerSignatures,
}

pub trait AuthRequirement {
    const NEED: AuthNeed;
}

impl AuthRequirement for AccessToken {
    const NEED: AuthNeed = AuthNeed::Required;
}
impl AuthRequirement for AccessTokenOptional {
    const NEED: AuthNeed = AuthNeed::Optional;
}
impl AuthRequirement for AppserviceToken {
    const NEED: AuthNeed = AuthNeed::Required;
}
impl AuthRequirement for AppserviceTokenOptional {
    const NEED: AuthNeed = AuthNeed::Optional;
}
impl AuthRequirement for NoAuthentication {
    const NEED: AuthNeed = AuthNeed::None;
}
impl AuthRequirement for NoAccessToken {
    const NEED: AuthNeed = AuthNeed::None;
}
impl AuthRequirement for ServerSignatures {
    const NEED: AuthNeed = AuthNeed::ServerSignatures;
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
    pub is_guest: bool,
    /// Suspended by an admin: may read but not send (`M_USER_SUSPENDED`).
    pub suspended: bool,
    /// Shadow-banned by an admin: sends seem to succeed and reach no one.
    pub shadow_banned: bool,
    /// An admin's rate limit override: (actions per second, burst); 0 per second is none.
    pub ratelimit_override: Option<(i64, i64)>,
    /// The application service whose `as_token` authenticated the request (as its own user or
    /// one of its namespace's), if one did.
    pub appservice: Option<std::sync::Arc<weft_core::appservice::AppService>>,
}

impl AuthUser {
    /// Refuses a suspended user's writes (sending events, joining, inviting, creating rooms).
    pub fn may_write(&self) -> ApiResult<()> {
        if self.suspended {
            return Err(MatrixError::user_suspended("This account is suspended"));
        }
        Ok(())
    }

    /// Whether rate limits apply: admins and appservices (unless their registration asks for
    /// them) are exempt.
    pub fn rate_limited(&self) -> bool {
        !self.is_admin && self.appservice.as_ref().is_none_or(|s| s.rate_limited)
    }
}

/// A parsed ruma request with its caller.
pub struct Ruma<T> {
    pub body: T,
    pub user: Option<AuthUser>,
    /// The server that signed the request, for endpoints that need server signatures.
    pub origin: Option<OwnedServerName>,
    pub ip: Option<String>,
    /// The raw JSON body, for endpoints that need fields ruma does not model.
    pub json_body: Option<serde_json::Value>,
    /// The request's method and path, which a UIA session is bound to.
    pub http_method: http::Method,
    pub http_path: String,
    /// The raw query string, for parameters ruma's type of the endpoint does not model (the
    /// delay of a delayed event on the send endpoints, MSC4140).
    pub http_query: Option<String>,
}

impl<T> Ruma<T> {
    /// A query parameter's first value, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.http_query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The caller; only endpoints with optional auth can lack one.
    pub fn sender(&self) -> ApiResult<&AuthUser> {
        self.user
            .as_ref()
            .ok_or_else(|| MatrixError::missing_token("Missing access token"))
    }
}

impl<T> std::ops::Deref for Ruma<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

/// Extracts the access token from `Authorization: Bearer` or the `access_token` query.
pub fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Resolves the request's access token, if any, to its user.
pub async fn authenticate(
    state: &AppState,
    parts: &http::request::Parts,
    need: AuthNeed,
) -> ApiResult<Option<AuthUser>> {
    if matches!(need, AuthNeed::None | AuthNeed::ServerSignatures) {
        return Ok(None);
    }
    let Some(token) = access_token(parts) else {
        return match need {
            AuthNeed::Required => Err(MatrixError::missing_token("Missing access token")),
            _ => Ok(None),
        };
    };
    if let Some(service) = state.core.appservices.by_as_token(&token) {
        return appservice_user(state, parts, service.clone()).await.map(Some);
    }
    let owner = weft_core::accounts::authenticate(&state.db, &token).await?;
    if let Some(ip) = client_ip(parts) {
        let agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Sessions last seen, for admins (whois); a failed write costs the request nothing.
        if let Err(e) = state
            .core
            .seen
            .record(&state.db, &owner.user_id, &owner.device_id, &ip, agent)
            .await
        {
            tracing::warn!(error = %e, "could not record where a session was seen");
        }
    }
    let user_id = OwnedUserId::try_from(owner.user_id).map_err(|_| MatrixError::unknown_token(false))?;
    Ok(Some(AuthUser {
        user_id,
        device_id: owner.device_id.into(),
        is_admin: owner.is_admin,
        is_guest: owner.is_guest,
        suspended: owner.suspended,
        shadow_banned: owner.shadow_banned,
        ratelimit_override: owner.ratelimit_override,
        appservice: None,
    }))
}

/// The caller of a request made with an appservice's `as_token`: its own user, or the user
/// its `user_id` parameter names (masquerading: a registered user in its namespaces), on the
/// device its `device_id` parameter names (MSC3202's, also under its unstable name), if any.
async fn appservice_user(
    state: &AppState,
    parts: &http::request::Parts,
    service: std::sync::Arc<weft_core::appservice::AppService>,
) -> ApiResult<AuthUser> {
    let param = |name: &str| {
        parts.uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let user_id = param("user_id").unwrap_or_else(|| service.sender.clone());
    if !service.is_user_in_namespace(&user_id) {
        return Err(MatrixError::forbidden(format!(
            "Application service cannot masquerade as this user ({user_id})"
        )));
    }
    let parsed = OwnedUserId::try_from(user_id.as_str())
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user_id {user_id:?}")))?;
    let mut user = weft_core::storage::users::get(&state.db, &user_id).await?;
    let mut parsed = parsed;
    // Bridges register a puppet with `user_id` naming it already: `/register` is made by the
    // appservice itself (as Synapse reads it).
    if user.is_none() && parts.uri.path().ends_with("/register") {
        parsed = OwnedUserId::try_from(service.sender.as_str())
            .map_err(|_| MatrixError::unknown("The application service's user ID is invalid"))?;
        user = weft_core::storage::users::get(&state.db, &service.sender).await?;
    }
    let Some(user) = user.filter(|u| !u.deactivated) else {
        return Err(MatrixError::forbidden(format!(
            "Application service has not registered this user ({user_id})"
        )));
    };
    let device_id = match param("device_id").or_else(|| param("org.matrix.msc3202.device_id")) {
        Some(device_id) => {
            if weft_core::storage::devices::get(&state.db, &user_id, &device_id)
                .await?
                .is_none()
            {
                return Err(MatrixError::forbidden(format!(
                    "Application service trying to use a device that doesn't exist ('{device_id}' for {user_id})"
                ))
                .with_status(http::StatusCode::BAD_REQUEST));
            }
            device_id
        }
        // Without one, the appservice acts on no device of its own (as with Synapse).
        None => String::new(),
    };
    // It is up: if its transactions were backing off, send them now.
    weft_core::outbox::wake_destination(&state.core, &service.destination).await?;
    tracing::Span::current().record("user", tracing::field::display(&user_id));
    Ok(AuthUser {
        user_id: parsed,
        device_id: device_id.into(),
        is_admin: user.is_admin,
        is_guest: false,
        suspended: user.suspended,
        shadow_banned: user.shadow_banned,
        // Its registration's `rate_limited` decides (`rate_limited`), not a per-user override.
        ratelimit_override: None,
        appservice: Some(service),
    })
}

pub fn client_ip(parts: &http::request::Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// The server that signed a request, as the state's `ServerAuth` finds it (for the few
/// endpoints ruma has no type for).
pub async fn verify_server(state: &AppState, parts: &http::request::Parts, body: &[u8]) -> ApiResult<OwnedServerName> {
    match &state.server_auth {
        Some(auth) => auth.verify(parts, body).await,
        None => Err(MatrixError::unauthorized(
            "This server does not take requests from other servers",
        )),
    }
}

/// Reads the whole body, refusing more than `limit` bytes with M_TOO_LARGE.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| MatrixError::too_large(format!("Request body is larger than {limit} bytes")))
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRequirement,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> = {
            use axum::extract::FromRequestParts;
            match Path::<Vec<String>>::from_request_parts(&mut parts, state).await {
                Ok(Path(args)) => args,
                Err(_) => Vec::new(),
            }
        };
        // `/state/{type}` and `/state/{type}/` address the empty state key.
        while path_args.len() < T::_path_parameters().len() {
            path_args.push(String::new());
        }
        let limit = body_limit::<T>(state);
        let bytes = read_body(body, limit).await?;
        let user = authenticate(state, &parts, T::Authentication::NEED).await?;
        let origin = match T::Authentication::NEED {
            AuthNeed::ServerSignatures => Some(verify_server(state, &parts, &bytes).await?),
            _ => None,
        };
        let ip = client_ip(&parts);
        let (http_method, http_path) = (parts.method.clone(), parts.uri.path().to_owned());
        let http_query = parts.uri.query().map(str::to_owned);

        if T::RATE_LIMITED {
            let key = match (&user, &ip) {
                (Some(u), _) => u.user_id.to_string(),
                (None, Some(ip)) => ip.clone(),
                (None, None) => String::new(),
            };
            let limits = user.as_ref().and_then(|u| u.ratelimit_override);
            if let (Err(wait), true) = (
                state.rate_limiter.check_with(&key, limits),
                user.as_ref().is_none_or(AuthUser::rate_limited),
            ) {
                return Err(MatrixError::limit_exceeded(wait));
            }
        }

        // As with Synapse, no body means `{}`: an endpoint whose body fields are all optional
        // needs none, and one with a required field still answers M_BAD_JSON.
        let bytes = if bytes.is_empty() && takes_body(&parts.method) && expects_json::<T>() {
            bytes::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        let json_body = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let http_req = http::Request::from_parts(parts, &bytes[..]);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        // Some of ruma's hand-written deserialisers panic on input they do not expect (a login
        // without `type` indexes a map by a missing key): that is the client's error, not ours.
        // The request is consumed by the call, so nothing half-parsed is seen after a panic.
        let parse = std::panic::AssertUnwindSafe(|| T::try_from_http_request(http_req, &args));
        let parsed = std::panic::catch_unwind(parse).map_err(|_| MatrixError::bad_json("Invalid request"))?;
        let body = parsed.map_err(|err| {
            if !bytes.is_empty() && json_body.is_none() && expects_json::<T>() {
                MatrixError::not_json("Content not JSON")
            } else {
                parse_error(err)
            }
        })?;
        Ok(Ruma {
            body,
            user,
            origin,
            ip,
            json_body,
            http_method,
            http_path,
            http_query,
        })
    }
}

/// Methods whose requests carry a body.
fn takes_body(method: &http::Method) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// A path or query parameter that does not parse (a room ID without its sigil, a number that
/// is not one) is M_INVALID_PARAM; ruma reports both as query errors (serde_html_form's error
/// is serde's plain value error, which the path parser uses too). Anything else is the body's.
fn parse_error(err: FromHttpRequestError) -> MatrixError {
    match err {
        FromHttpRequestError::Deserialization(DeserializationError::Query(_) | DeserializationError::Ident(_)) => {
            MatrixError::invalid_param(format!("Invalid parameter: {err}"))
        }
        _ => MatrixError::bad_json(format!("Invalid request: {err}")),
    }
}

/// Media uploads carry raw bytes; every other endpoint takes JSON (or nothing).
fn expects_json<T: Metadata>() -> bool {
    !T::PATH_BUILDER
        .all_paths()
        .any(|p| p.contains("/upload") || p.contains("/media/"))
}

fn body_limit<T: Metadata>(state: &AppState) -> usize {
    if T::PATH_BUILDER
        .all_paths()
        .any(|p| p.contains("/upload") || p.contains("/media/"))
    {
        state.config.media.max_upload_size
    } else {
        state.config.max_request_size
    }
}

/// Serialises a ruma response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|body| Body::from(body.freeze())).into_response(),
            Err(err) => {
                tracing::error!(error = %err, "failed to serialise response");
                MatrixError::unknown("Failed to serialise response").into_response()
            }
        }
    }
}

/// `path`, and for a path ending in a state key also the forms that address the empty one
/// (`/state/{type}` and `/state/{type}/`).
fn with_empty_state_key(path: &str) -> Vec<String> {
    let mut paths = vec![path.to_owned()];
    if let Some(base) = path.strip_suffix("/{state_key}") {
        paths.push(base.to_owned());
        paths.push(format!("{base}/"));
    }
    paths
}

/// Mounts a ruma handler at one more `path` than its endpoint's own (the stable path of a
/// proposal ruma names only the unstable one of).
pub fn also_at<Req, F, Fut>(router: Router<AppState>, path: &str, handler: F) -> Router<AppState>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthRequirement,
    Req::OutgoingResponse: Send + 'static,
    F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult<Req::OutgoingResponse>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
    router.route(
        path,
        on(
            filter,
            move |axum::extract::State(state): axum::extract::State<AppState>, req: Ruma<Req>| async move {
                handler(state, req).await.map(RumaResponse)
            },
        ),
    )
}

/// Mounts a handler `async fn(AppState, Ruma<Req>) -> ApiResult<Req::OutgoingResponse>` on
/// every path of `Req`.
pub trait RumaRoute {
    fn ruma<Req, F, Fut>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthRequirement,
        Req::OutgoingResponse: Send + 'static,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ApiResult<Req::OutgoingResponse>> + Send + 'static;
}

/// Mounts a handler that answers with its own JSON instead of the ruma response type (for
/// responses the server builds directly, like `/sync`).
pub trait RumaJsonRoute {
    fn ruma_json<Req, F, Fut>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthRequirement,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ApiResult<serde_json::Value>> + Send + 'static;
}

impl RumaJsonRoute for Router<AppState> {
    fn ruma_json<Req, F, Fut>(mut self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthRequirement,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ApiResult<serde_json::Value>> + Send + 'static,
    {
        let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
        for path in Req::PATH_BUILDER.all_paths() {
            for path in with_empty_state_key(path) {
                let handler = handler.clone();
                self = self.route(
                    &path,
                    on(
                        filter,
                        move |axum::extract::State(state): axum::extract::State<AppState>, req: Ruma<Req>| async move {
                            handler(state, req).await.map(axum::Json)
                        },
                    ),
                );
            }
        }
        self
    }
}

impl RumaRoute for Router<AppState> {
    fn ruma<Req, F, Fut>(mut self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: AuthRequirement,
        Req::OutgoingResponse: Send + 'static,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ApiResult<Req::OutgoingResponse>> + Send + 'static,
    {
        let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
        for path in Req::PATH_BUILDER.all_paths() {
            for path in with_empty_state_key(path) {
                let handler = handler.clone();
                self = self.route(
                    &path,
                    on(
                        filter,
                        move |axum::extract::State(state): axum::extract::State<AppState>, req: Ruma<Req>| async move {
                            handler(state, req).await.map(RumaResponse)
                        },
                    ),
                );
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::{body::Body, Router};
    use futures::future::BoxFuture;
    use ruma::{api::federation::event::get_event, owned_server_name, MilliSecondsSinceUnixEpoch, OwnedServerName};
    use tower::ServiceExt;

    use super::RumaRoute;
    use crate::{
        config::Config,
        error::MatrixError,
        state::{AppState, ServerAuth},
    };

    /// Takes every request as signed by one server.
    struct TrustsOne(OwnedServerName);

    impl ServerAuth for TrustsOne {
        fn verify<'a>(
            &'a self,
            _: &'a http::request::Parts,
            _: &'a [u8],
        ) -> BoxFuture<'a, Result<OwnedServerName, MatrixError>> {
            Box::pin(async move { Ok(self.0.clone()) })
        }

        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }
    }

    async fn state(server_auth: Option<Arc<dyn ServerAuth>>) -> AppState {
        let dir = std::env::temp_dir().join(format!("weft-http-{}", weft_core::util::random_string(12)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = weft_core::Db::connect(&format!("sqlite://{}/weft.db", dir.display()), 2)
            .await
            .unwrap();
        let key = weft_core::signing_key::load_or_create(&dir.join("signing.key")).unwrap();
        let core = weft_core::Core::new(db, owned_server_name!("local.test"), key);
        AppState::with_server_auth(Config::default(), core, server_auth)
    }

    /// A federation endpoint answering with the server that signed the request.
    async fn get_event(state: AppState) -> http::Response<Body> {
        let router = Router::new()
            .ruma(|_: AppState, req: super::Ruma<get_event::v1::Request>| async move {
                let origin = req.origin.clone().expect("a signed request has an origin");
                let pdu = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
                Ok(get_event::v1::Response::new(
                    origin,
                    MilliSecondsSinceUnixEpoch::now(),
                    pdu,
                ))
            })
            .with_state(state);
        let request = http::Request::get("/_matrix/federation/v1/event/$abc")
            .header(
                http::header::AUTHORIZATION,
                "X-Matrix origin=\"remote.test\",key=\"ed25519:1\",sig=\"x\"",
            )
            .body(Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn server_signed_endpoints_need_a_verifier_and_get_the_origin() {
        let refused = get_event(state(None).await).await;
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);

        let verified = get_event(state(Some(Arc::new(TrustsOne(owned_server_name!("remote.test"))))).await).await;
        assert_eq!(verified.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(verified.into_body(), 1 << 16).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["origin"], "remote.test");
    }
}
