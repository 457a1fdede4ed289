//! Requests this server makes to appservices besides transactions: whether a user or alias in
//! their namespaces exists (the appservice may create it as it answers), pings, and
//! third-party lookups.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{http_client, AppService};
use crate::Core;

/// How long a query may take: a client waits for the answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Asks the appservices whose user namespaces hold `user_id` whether it exists
/// (`GET /_matrix/app/v1/users/{userId}`); `true` when one answers 200 (it has then registered
/// the user).
pub async fn user_exists(core: &Core, user_id: &str) -> bool {
    for service in core
        .appservices
        .all()
        .iter()
        .filter(|s| s.users.iter().any(|n| n.is_match(user_id)))
    {
        if get(service, &format!("/_matrix/app/v1/users/{}", encode(user_id)))
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// Asks the appservices whose alias namespaces hold `alias` about it
/// (`GET /_matrix/app/v1/rooms/{roomAlias}`); `true` when one answers 200 (it has then created
/// the room and the alias).
pub async fn alias_exists(core: &Core, alias: &str) -> bool {
    for service in core.appservices.all().iter().filter(|s| s.is_alias_in_namespace(alias)) {
        if get(service, &format!("/_matrix/app/v1/rooms/{}", encode(alias)))
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// Why a request to an appservice failed.
#[derive(Debug)]
pub enum QueryError {
    /// The registration has no URL.
    NoUrl,
    /// No answer in time.
    Timeout,
    /// No connection.
    Connection(String),
    /// An answer other than 2xx: its status and body.
    Status(u16, String),
}

/// `GET {url}{path}` with the `hs_token`; the JSON answer of a 2xx.
pub async fn get(service: &AppService, path_and_query: &str) -> Result<Value, QueryError> {
    request(service, reqwest::Method::GET, path_and_query, None).await
}

/// `POST /_matrix/app/v1/ping`: how long the appservice took to answer.
pub async fn ping(service: &AppService, transaction_id: Option<&str>) -> Result<Duration, QueryError> {
    let body = match transaction_id {
        Some(id) => serde_json::json!({ "transaction_id": id }),
        None => serde_json::json!({}),
    };
    let started = Instant::now();
    request(service, reqwest::Method::POST, "/_matrix/app/v1/ping", Some(body)).await?;
    Ok(started.elapsed())
}

async fn request(
    service: &AppService,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> Result<Value, QueryError> {
    let Some(url) = &service.url else {
        return Err(QueryError::NoUrl);
    };
    let mut request = http_client()
        .request(method, format!("{url}{path_and_query}"))
        .bearer_auth(&service.hs_token)
        .timeout(QUERY_TIMEOUT);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            QueryError::Timeout
        } else {
            QueryError::Connection(e.to_string())
        }
    })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| {
        if e.is_timeout() {
            QueryError::Timeout
        } else {
            QueryError::Connection(e.to_string())
        }
    })?;
    if !status.is_success() {
        return Err(QueryError::Status(status.as_u16(), text.chars().take(500).collect()));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Object(Default::default())))
}
