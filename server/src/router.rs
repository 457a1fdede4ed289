//! Builds the axum app of one listener from the APIs it serves.

use axum::{
    http::{header, Method},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::json;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{api, config::Api, error::MatrixError, state::AppState};

pub fn build(state: AppState, apis: &[Api]) -> Router {
    let mut router = Router::new();
    if apis.contains(&Api::Client) {
        router = router
            .merge(api::client::router())
            .route("/.well-known/matrix/server", get(server_well_known));
    }
    if apis.contains(&Api::Media) {
        router = router.merge(api::media::router());
    }
    if apis.contains(&Api::Admin) {
        router = router.merge(api::admin::router());
    }
    if apis.contains(&Api::Federation) {
        router = router.merge(weft_federation::router());
    } else if apis.contains(&Api::Keys) {
        router = router.merge(weft_federation::keys_router());
    }
    router
        .fallback(|| async { MatrixError::unrecognized("Unrecognized request") })
        .method_not_allowed_fallback(|| async { MatrixError::unrecognized_method() })
        .layer(CatchPanicLayer::custom(|_| {
            MatrixError::unknown("Internal server error").into_response()
        }))
        .layer(cors())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Element Web runs on another origin; it needs these CORS answers on every endpoint.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::DATE,
        ])
}

async fn server_well_known(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let server = &state.config.server_name;
    // A server name without a port delegates to port 443 of the same host.
    let delegated = if server.contains(':') && !server.ends_with(']') {
        server.clone()
    } else {
        format!("{server}:443")
    };
    Json(json!({ "m.server": delegated }))
}
