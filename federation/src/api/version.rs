//! `/_matrix/federation/v1/version`.

use axum::Router;
use ruma::api::federation::discovery::get_server_version;
use weft_http::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(version)
}

/// # `GET /_matrix/federation/v1/version`
async fn version(_: AppState, _: Ruma<get_server_version::v1::Request>) -> ApiResult<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Weft".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
