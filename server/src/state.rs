//! Process-wide state shared by every handler.

use std::sync::Arc;

use weft_core::Db;

use crate::{config::Config, rate_limit::RateLimiter};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub rate_limiter: RateLimiter,
}

impl AppState {
    pub fn new(config: Config, db: Db) -> AppState {
        let rate_limiter = RateLimiter::new(&config.rate_limits);
        AppState(Arc::new(Inner { config, db, rate_limiter }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
