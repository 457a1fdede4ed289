//! Process-wide state shared by every handler.

use std::sync::Arc;

use futures::future::BoxFuture;
use ruma::OwnedServerName;
use weft_core::{Core, Db};

use crate::{config::Config, error::MatrixError, rate_limit::RateLimiter};

/// Checks another server's signature on a request (the X-Matrix `Authorization` header, over
/// method, URI, origin, destination and body) and answers which server sent it. The federation
/// crate provides it; without one, requests to endpoints that need server signatures are
/// refused.
pub trait ServerAuth: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<OwnedServerName, MatrixError>>;

    /// The provider itself, so that the crate that provided it reaches the rest of its state
    /// (the federation client, the key ring) through the app state.
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync);
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub core: Core,
    pub rate_limiter: RateLimiter,
    pub server_auth: Option<Arc<dyn ServerAuth>>,
    /// The CA certificates of `extra_ca_file`, read once, for outbound HTTPS clients.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl AppState {
    pub fn new(config: Config, core: Core) -> AppState {
        Self::with_server_auth(config, core, None)
    }

    /// An app state whose federation endpoints check request signatures with `server_auth`.
    pub fn with_server_auth(config: Config, core: Core, server_auth: Option<Arc<dyn ServerAuth>>) -> AppState {
        let rate_limiter = RateLimiter::new(&config.rate_limits);
        // Checked when the configuration was loaded.
        let extra_roots = config.extra_roots().unwrap_or_default();
        AppState(Arc::new(Inner {
            extra_roots,
            db: core.db.clone(),
            config,
            core,
            rate_limiter,
            server_auth,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
