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

#[cfg(test)]
mod tests {
    use axum::{
        http::{header, HeaderMap, HeaderValue, StatusCode},
        response::{IntoResponse, Response},
        Router,
    };

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const HOUR: Duration = Duration::from_secs(60 * 60);

    #[test]
    fn the_cache_period_follows_cache_control_then_expires_then_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_3h = httpdate::fmt_http_date(now + 3 * HOUR);
        let cases: &[(&[(&'static str, &str)], Duration)] = &[
            (&[], DEFAULT_CACHE),
            (&[("cache-control", "public, max-age=7200")], 2 * HOUR),
            (&[("cache-control", "max-age=\"7200\"")], 2 * HOUR),
            // max-age wins over Expires.
            (&[("cache-control", "max-age=7200"), ("expires", &in_3h)], 2 * HOUR),
            (&[("expires", &in_3h)], 3 * HOUR),
            // Capped at 48 hours.
            (&[("cache-control", "max-age=999999999")], MAX_CACHE),
            // Never below the floor, however stale the answer says it is.
            (&[("cache-control", "no-store")], MIN_CACHE),
            (&[("cache-control", "max-age=7200, no-cache")], MIN_CACHE),
            (&[("cache-control", "max-age=0")], MIN_CACHE),
            (&[("cache-control", "max-age=soon")], MIN_CACHE),
            (&[("expires", "0")], MIN_CACHE),
            (&[("expires", &httpdate::fmt_http_date(now - HOUR))], MIN_CACHE),
        ];
        for (pairs, expected) in cases {
            assert_eq!(cache_period(&headers(pairs), now), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn the_body_must_name_a_server() {
        assert_eq!(
            parse(br#"{"m.server": "matrix.example.org:443"}"#).unwrap(),
            "matrix.example.org:443"
        );
        assert_eq!(parse(br#"{"m.server": "[::1]"}"#).unwrap(), "[::1]");
        for bad in [
            &b"not json"[..],
            br#"{"m.server": 42}"#,
            br#"{"m.homeserver": "example.org"}"#,
            br#"{"m.server": "https://example.org"}"#,
            br#"{"m.server": "example.org:99999"}"#,
            br#"["m.server"]"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// One HTTPS server for every test host (the client resolves them all to it), answering
    /// by Host header.
    async fn well_known(headers: HeaderMap) -> Response {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let json = |body: &str| ([(header::CONTENT_TYPE, "application/json")], body.to_owned());
        match host {
            "ok.test" => (
                [(header::CACHE_CONTROL, "max-age=7200")],
                json(r#"{"m.server": "matrix.ok.test:443"}"#),
            )
                .into_response(),
            "moved.test" => (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, "https://ok.test/.well-known/matrix/server")],
            )
                .into_response(),
            "loop.test" => (
                StatusCode::FOUND,
                [(header::LOCATION, "https://loop.test/.well-known/matrix/server")],
            )
                .into_response(),
            "bad.test" => json("<html>").into_response(),
            "huge.test" => json(&format!(
                r#"{{"m.server": "a.test", "pad": "{}"}}"#,
                "x".repeat(MAX_BODY)
            ))
            .into_response(),
            "teapot.test" => (StatusCode::IM_A_TEAPOT, json(r#"{"m.server": "a.test"}"#)).into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }

    const HOSTS: [&str; 7] = [
        "ok.test",
        "moved.test",
        "loop.test",
        "bad.test",
        "huge.test",
        "teapot.test",
        "missing.test",
    ];

    /// [`well_known`] over HTTPS, and a client that reaches every test host there.
    async fn https_server() -> reqwest::Client {
        let server = super::super::test_tls::serve(&HOSTS, Router::new().fallback(well_known));
        let mut client = server.client_builder();
        for host in HOSTS {
            // Port 443 is the URL's, implied; the address's port is used instead.
            client = client.resolve(host, server.addr);
        }
        client.build().unwrap()
    }

    #[tokio::test]
    async fn fetching_over_https_follows_redirects_and_refuses_what_is_not_a_delegation() {
        let source = HttpWellKnown {
            http: https_server().await,
        };
        let fetched = source.fetch("ok.test").await;
        assert_eq!(fetched.answer.unwrap(), "matrix.ok.test:443");
        assert_eq!(fetched.keep_for, 2 * HOUR);
        let fetched = source.fetch("moved.test").await;
        assert_eq!(fetched.answer.unwrap(), "matrix.ok.test:443", "redirect followed");
        for (host, why) in [
            ("loop.test", "redirect"),
            ("bad.test", "not JSON"),
            ("huge.test", "larger than"),
            ("teapot.test", "status 418"),
            ("missing.test", "status 404"),
        ] {
            let fetched = source.fetch(host).await;
            let error = fetched.answer.unwrap_err();
            assert!(error.contains(why), "{host}: {error}");
            assert_eq!(fetched.keep_for, ERROR_CACHE, "{host}");
        }
    }
}
