//! `/versions`, `/.well-known/matrix/client` and `/.well-known/matrix/server`.

use std::collections::BTreeMap;

use ruma::{
    api::{
        client::discovery::{discover_homeserver, get_supported_versions},
        federation::discovery::discover_homeserver as discover_federation_server,
    },
    ServerName,
};
use serde_json::{json, Value};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// Spec versions whose Client-Server API this server speaks.
const VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

pub async fn versions(
    state: AppState,
    _: Ruma<get_supported_versions::Request>,
) -> ApiResult<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect());
    response.unstable_features = BTreeMap::from([
        ("org.matrix.msc2918.refresh_token".to_owned(), true),
        // Simplified sliding sync: Element X only uses a server that announces it.
        ("org.matrix.simplified_msc3575".to_owned(), true),
        // Delayed events (MSC4140), which Element Call needs to leave a call for a vanished client.
        ("org.matrix.msc4140".to_owned(), state.config.delayed_events.enabled),
        // MatrixRTC transports (MSC4143) and LiveKit tokens issued here (MSC4195).
        ("org.matrix.msc4143".to_owned(), true),
        ("io.element.msc4195".to_owned(), state.config.livekit.enabled()),
    ]);
    Ok(response)
}

/// # `GET /.well-known/matrix/client`
///
/// The homeserver's base URL, and the MatrixRTC transport (a LiveKit token service) when one
/// is configured, under the unstable name Element Call reads (MSC4143).
pub async fn client_well_known(state: AppState, _: Ruma<discover_homeserver::Request>) -> ApiResult<Value> {
    let mut body = json!({ "m.homeserver": { "base_url": state.config.base_url() } });
    let livekit = state.config.livekit_service_url();
    if !livekit.is_empty() {
        body["org.matrix.msc4143.rtc_foci"] = json!([{ "type": "livekit", "livekit_service_url": livekit }]);
    }
    Ok(body)
}

/// # `GET /.well-known/matrix/server`
///
/// Delegates federation to `federation.well_known_server` when that is set; otherwise there is
/// nothing to say (404), and other servers find this one by DNS (SRV, else port 8448).
pub async fn server_well_known(
    state: AppState,
    _: Ruma<discover_federation_server::Request>,
) -> ApiResult<discover_federation_server::Response> {
    let delegated = &state.config.federation.well_known_server;
    if delegated.is_empty() {
        return Err(MatrixError::not_found("No federation delegation is configured"));
    }
    // Checked when the configuration was loaded.
    let server = ServerName::parse(delegated)
        .map_err(|_| MatrixError::not_found("No valid federation delegation is configured"))?;
    Ok(discover_federation_server::Response::new(server))
}
