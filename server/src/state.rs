//! Process-wide state shared by every handler.

use std::sync::Arc;

use weft_core::{Core, Db};

use crate::{config::Config, rate_limit::RateLimiter};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub core: Core,
    pub rate_limiter: RateLimiter,
}

impl AppState {
    pub fn new(config: Config, core: Core) -> AppState {
        let rate_limiter = RateLimiter::new(&config.rate_limits);
        AppState(Arc::new(Inner {
            db: core.db.clone(),
            config,
            core,
            rate_limiter,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
