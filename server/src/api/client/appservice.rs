//! What application services ask of the Client-Server API besides acting as their users:
//! `POST /appservice/{appserviceId}/ping`, their networks' room directories
//! (`PUT /directory/list/appservice/{networkId}/{roomId}`), and the `/thirdparty/...` lookups,
//! which this server forwards to the appservices that bridge the protocol.

use std::sync::Arc;

use axum::{http::StatusCode, Router};
use ruma::api::client::{
    appservice::{request_ping, set_room_visibility},
    room::Visibility,
    thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
        get_user_for_user_id,
    },
};
use serde_json::{json, Map, Value};
use weft_core::appservice::{query, AppService};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaJsonRoute, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(ping)
        .ruma(set_network_visibility)
        .ruma_json(protocols)
        .ruma_json(protocol)
        .ruma_json(locations_for_protocol)
        .ruma_json(users_for_protocol)
        .ruma_json(locations_for_alias)
        .ruma_json(users_for_user_id)
}

/// The appservice that made the request (with its `as_token`).
fn caller<T>(req: &Ruma<T>) -> ApiResult<Arc<AppService>> {
    req.sender()?
        .appservice
        .clone()
        .ok_or_else(|| MatrixError::forbidden("Only an application service may do this"))
}

/// # `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
///
/// The server pings the appservice (`POST /_matrix/app/v1/ping`) and says how long it took.
pub async fn ping(_: AppState, req: Ruma<request_ping::v1::Request>) -> ApiResult<request_ping::v1::Response> {
    let service = caller(&req)?;
    if service.id != req.appservice_id {
        return Err(MatrixError::forbidden("An application service may only ping itself"));
    }
    let txn_id = req.transaction_id.as_ref().map(|t| t.to_string());
    match query::ping(&service, txn_id.as_deref()).await {
        Ok(duration) => Ok(request_ping::v1::Response::new(duration)),
        Err(e) => Err(ping_error(e)),
    }
}

fn ping_error(e: query::QueryError) -> MatrixError {
    let error = |status: StatusCode, errcode: &'static str, message: String| MatrixError {
        status,
        errcode: errcode.into(),
        message,
        extra: None,
    };
    match e {
        query::QueryError::NoUrl => error(
            StatusCode::BAD_REQUEST,
            "M_URL_NOT_SET",
            "The application service has no URL".into(),
        ),
        query::QueryError::Timeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            "M_CONNECTION_TIMEOUT",
            "The application service did not answer in time".into(),
        ),
        query::QueryError::Connection(m) => error(
            StatusCode::BAD_GATEWAY,
            "M_CONNECTION_FAILED",
            format!("Cannot reach the application service: {m}"),
        ),
        query::QueryError::Status(status, body) => {
            let mut e = error(
                StatusCode::BAD_GATEWAY,
                "M_BAD_STATUS",
                format!("The application service answered {status}"),
            );
            e.extra = Some(json!({ "status": status, "body": body }));
            e
        }
    }
}

/// # `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`
///
/// Lists (or withdraws) a room in the directory of one of the appservice's networks, which
/// `/publicRooms` shows under `third_party_instance_id` `<appservice ID>|<network ID>`.
pub async fn set_network_visibility(
    state: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let service = caller(&req)?;
    let known = {
        let mut conn = state.db.conn().await?;
        weft_core::storage::rooms::version(&state.db, &mut conn, req.room_id.as_str()).await?
    };
    if known.is_none() {
        return Err(MatrixError::not_found("Unknown room"));
    }
    let mut tx = state.db.write().await?;
    weft_core::storage::rooms::set_appservice_published(
        &mut tx,
        &service.id,
        &req.network_id,
        req.room_id.as_str(),
        req.visibility == Visibility::Public,
    )
    .await?;
    tx.commit().await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// The appservices that bridge `protocol`.
fn bridging<'a>(state: &'a AppState, protocol: &'a str) -> impl Iterator<Item = &'a Arc<AppService>> + 'a {
    state
        .core
        .appservices
        .all()
        .iter()
        .filter(move |s| s.protocols.iter().any(|p| p == protocol))
}

/// A protocol's description as its appservices give it: the first answer's fields, with the
/// instances of all of them, each named `<appservice ID>|<network ID>` for `/publicRooms`.
async fn describe(state: &AppState, protocol: &str) -> Option<Value> {
    let mut merged: Option<Value> = None;
    for service in bridging(state, protocol) {
        let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", query::encode(protocol));
        let Ok(mut answer) = query::get(service, &path).await else {
            continue;
        };
        let mut instances = answer["instances"].as_array().cloned().unwrap_or_default();
        for instance in &mut instances {
            if let Some(network) = instance["network_id"].as_str().map(str::to_owned) {
                instance["instance_id"] = json!(format!("{}|{network}", service.id));
            }
        }
        match &mut merged {
            None => {
                answer["instances"] = json!(instances);
                merged = Some(answer);
            }
            Some(m) => {
                if let Some(list) = m["instances"].as_array_mut() {
                    list.extend(instances);
                }
            }
        }
    }
    merged
}

/// # `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn protocols(state: AppState, req: Ruma<get_protocols::v3::Request>) -> ApiResult<Value> {
    req.sender()?;
    let mut names: Vec<&str> = state
        .core
        .appservices
        .all()
        .iter()
        .flat_map(|s| s.protocols.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Map::new();
    for name in names {
        if let Some(description) = describe(&state, name).await {
            out.insert(name.to_owned(), description);
        }
    }
    Ok(Value::Object(out))
}

/// # `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn protocol(state: AppState, req: Ruma<get_protocol::v3::Request>) -> ApiResult<Value> {
    req.sender()?;
    describe(&state, &req.protocol)
        .await
        .ok_or_else(|| MatrixError::not_found(format!("No application service bridges {}", req.protocol)))
}

/// Asks the appservices of `protocol` (all of them with `None`) and joins their lists.
async fn lookup(state: &AppState, protocol: Option<&str>, path: &str, query_string: Option<&str>) -> Value {
    let mut out = Vec::new();
    let services: Vec<&Arc<AppService>> = match protocol {
        Some(p) => bridging(state, p).collect(),
        None => state
            .core
            .appservices
            .all()
            .iter()
            .filter(|s| !s.protocols.is_empty())
            .collect(),
    };
    let query_string = query_string.map(|q| format!("?{q}")).unwrap_or_default();
    for service in services {
        if let Ok(Value::Array(list)) = query::get(service, &format!("{path}{query_string}")).await {
            out.extend(list);
        }
    }
    Value::Array(out)
}

/// The client's query string without its access token (the appservice gets its own).
fn forwarded_query<T>(req: &Ruma<T>) -> Option<String> {
    let query = req.http_query.as_deref()?;
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "access_token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// # `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn locations_for_protocol(
    state: AppState,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> ApiResult<Value> {
    req.sender()?;
    let path = format!("/_matrix/app/v1/thirdparty/location/{}", query::encode(&req.protocol));
    Ok(lookup(&state, Some(&req.protocol), &path, forwarded_query(&req).as_deref()).await)
}

/// # `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn users_for_protocol(state: AppState, req: Ruma<get_user_for_protocol::v3::Request>) -> ApiResult<Value> {
    req.sender()?;
    let path = format!("/_matrix/app/v1/thirdparty/user/{}", query::encode(&req.protocol));
    Ok(lookup(&state, Some(&req.protocol), &path, forwarded_query(&req).as_deref()).await)
}

/// # `GET /_matrix/client/v3/thirdparty/location?alias=...`
pub async fn locations_for_alias(
    state: AppState,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> ApiResult<Value> {
    req.sender()?;
    let query = format!("alias={}", query::encode(req.alias.as_str()));
    Ok(lookup(&state, None, "/_matrix/app/v1/thirdparty/location", Some(&query)).await)
}

/// # `GET /_matrix/client/v3/thirdparty/user?userid=...`
pub async fn users_for_user_id(state: AppState, req: Ruma<get_user_for_user_id::v3::Request>) -> ApiResult<Value> {
    req.sender()?;
    let query = format!("userid={}", query::encode(req.userid.as_str()));
    Ok(lookup(&state, None, "/_matrix/app/v1/thirdparty/user", Some(&query)).await)
}
