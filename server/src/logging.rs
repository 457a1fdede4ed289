//! Logs through tracing: text or JSON lines on stderr, a filter (`log.level`) that can change
//! while the server runs (on SIGHUP from the configuration file, or by an admin at
//! `/_weft/admin/v1/log_level`), and a request ID on every request's span.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, OnceLock,
};

use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
use tracing_subscriber::{fmt, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry};

use crate::config::LogConfig;

/// The response header that carries a request's ID, as its log lines do.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

struct Reloadable {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The level as last set (the filter keeps no text of its own).
    level: Mutex<String>,
}

static RELOAD: OnceLock<Reloadable> = OnceLock::new();

/// Starts logging for the process (once; later calls change nothing).
pub fn init(config: &LogConfig) {
    let filter = filter(&config.level).unwrap_or_else(|_| filter("info").expect("a valid filter"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = config.format == "json";
    // Colours only for a terminal: a log written to a file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text_layer = (!json).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    let json_layer = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .try_init()
        .is_ok();
    if installed {
        let _ = RELOAD.set(Reloadable {
            handle,
            level: Mutex::new(config.level.clone()),
        });
    }
}

/// The filter for a level: ruma's auth checks log every event at info, so they stay quiet
/// unless named.
fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut directives = level.trim().to_owned();
    if !directives.contains("ruma_state_res") {
        directives.push_str(",ruma_state_res=warn");
    }
    EnvFilter::try_new(&directives).map_err(|e| format!("{level:?} is not a log filter: {e}"))
}

/// Checks a level without applying it.
pub fn validate(level: &str) -> Result<(), String> {
    filter(level).map(|_| ())
}

/// The level in force, when this process set up logging.
pub fn level() -> Option<String> {
    RELOAD
        .get()
        .map(|r| r.level.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Applies a new level at once.
pub fn set_level(level: &str) -> Result<(), String> {
    let reloadable = RELOAD
        .get()
        .ok_or_else(|| "logging is not managed by this process".to_owned())?;
    let new = filter(level)?;
    reloadable.handle.reload(new).map_err(|e| e.to_string())?;
    *reloadable.level.lock().unwrap_or_else(|e| e.into_inner()) = level.trim().to_owned();
    tracing::info!(level = level.trim(), "log level changed");
    Ok(())
}

/// A request's ID: its method and a per-process sequence number (Synapse's shape, e.g.
/// `PUT-42`), recorded on the request's span and answered in `X-Request-Id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Gives each request its ID, before the access log opens the request's span.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = format!("{}-{}", req.method(), NEXT_REQUEST.fetch_add(1, Ordering::Relaxed));
    let header = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    if let Some(header) = header {
        res.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    res
}
