//! `/.well-known/matrix/server`: how a server delegates federation to another host, and how
//! long its answer is kept (Server-Server API, "Resolving server names", step 3).

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, CACHE_CONTROL, EXPIRES};
use ruma::{OwnedServerName, ServerName};

/// How long an answer is kept when it says nothing about caching (the spec's recommendation).
pub const DEFAULT_CACHE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest an answer is kept, whatever it asks (the spec's recommendation).
pub const MAX_CACHE: Duration = Duration::from_secs(48 * 60 * 60);
/// The shortest: an answer asking not to be cached would otherwise be fetched again before
/// every request to that server.
pub const MIN_CACHE: Duration = Duration::from_secs(5 * 60);
/// How long a failure (no answer, not 200, not the expected JSON) is kept.
pub const ERROR_CACHE: Duration = Duration::from_secs(60 * 60);
/// A delegation is a short JSON object; a larger body is not one.
const MAX_BODY: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What asking a host for its delegation gave, and how long to keep it.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The delegated server name (`m.server`), or why there is none.
    pub answer: Result<OwnedServerName, String>,
    pub keep_for: Duration,
}

impl Fetched {
    fn failed(reason: impl Into<String>) -> Fetched {
        Fetched {
            answer: Err(reason.into()),
            keep_for: ERROR_CACHE,
        }
    }
}

/// Where delegations come from: HTTPS in the server, a stand-in in tests.
pub trait WellKnownSource: Send + Sync + 'static {
    fn fetch<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Fetched>;
}

/// Fetches `https://<hostname>/.well-known/matrix/server` with a reqwest client. The client's
/// redirect policy applies (reqwest's default follows up to 10 redirects, which also ends
/// loops); it must resolve names normally, not through [`super::Resolver::dns`], since the
/// well-known lives on port 443 of the host itself.
pub struct HttpWellKnown {
    pub http: reqwest::Client,
}

impl WellKnownSource for HttpWellKnown {
    fn fetch<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            let url = format!("https://{hostname}/.well-known/matrix/server");
            let response = match self.http.get(&url).timeout(TIMEOUT).send().await {
                Ok(response) => response,
                Err(e) => return Fetched::failed(format!("{url}: {e}")),
            };
            if response.status() != reqwest::StatusCode::OK {
                return Fetched::failed(format!("{url}: status {}", response.status()));
            }
            let keep_for = cache_period(response.headers(), SystemTime::now());
            let body = match read_limited(response, MAX_BODY).await {
                Ok(body) => body,
                Err(e) => return Fetched::failed(format!("{url}: {e}")),
            };
            match parse(&body) {
                Ok(server) => Fetched {
                    answer: Ok(server),
                    keep_for,
                },
                Err(e) => Fetched::failed(format!("{url}: {e}")),
            }
        })
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `m.server` of a well-known body, which must be a server name (`host[:port]`).
pub fn parse(body: &[u8]) -> Result<OwnedServerName, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let server = value
        .get("m.server")
        .and_then(|s| s.as_str())
        .ok_or("no m.server string")?;
    ServerName::parse(server).map_err(|e| format!("m.server {server:?}: {e}"))
}

/// How long a successful answer is kept: as its `Cache-Control` (`max-age`; `no-store` and
/// `no-cache` as nothing) or else its `Expires` says, else a day, within
/// [`MIN_CACHE`]..=[`MAX_CACHE`].
pub fn cache_period(headers: &HeaderMap, now: SystemTime) -> Duration {
    let asked = cache_control(headers)
        .or_else(|| expires(headers, now))
        .unwrap_or(DEFAULT_CACHE);
    asked.clamp(MIN_CACHE, MAX_CACHE)
}

fn cache_control(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(seconds) = directive.strip_prefix("max-age=") {
                // A malformed max-age is treated as stale (RFC 9111 4.2.1).
                let seconds = seconds.trim_matches('"').parse::<u64>().unwrap_or(0);
                max_age = Some(Duration::from_secs(seconds));
            }
        }
    }
    max_age
}

fn expires(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(EXPIRES)?;
    // An invalid date means "already expired" (RFC 9111 5.3).
    let Some(at) = value.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return Some(Duration::ZERO);
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
