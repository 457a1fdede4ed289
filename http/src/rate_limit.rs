//! Per-user / per-IP token buckets for endpoints ruma marks as rate limited.
//! Limits are per process, as with Synapse's workers.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::config::RateLimitConfig;

pub struct RateLimiter {
    enabled: bool,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            enabled: config.enabled,
            per_second: config.per_second,
            burst: config.burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(ms)` says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_with(key, None)
    }

    /// `check` with an admin's override of the rate for this key: `(per_second, burst)`, where
    /// 0 per second exempts the key (Synapse's `override_ratelimit`).
    pub fn check_with(&self, key: &str, limits: Option<(i64, i64)>) -> Result<(), u64> {
        if !self.enabled || limits.is_some_and(|(per_second, _)| per_second <= 0) {
            return Ok(());
        }
        let (per_second, burst) = match limits {
            Some((per_second, burst)) => (per_second as f64, burst.max(1) as f64),
            None => (self.per_second, self.burst),
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled completely; they hold no information.
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        // An override has its own bucket, so that a new limit starts with its full burst.
        let key = match limits {
            Some((per_second, burst)) => format!("{key}\u{0}{per_second}/{burst}"),
            None => key.to_owned(),
        };
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / per_second) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;
    use crate::config::RateLimitConfig;

    fn limiter() -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            enabled: true,
            per_second: 0.001,
            burst: 2,
        })
    }

    #[test]
    fn overrides_replace_the_configured_rate() {
        let limiter = limiter();
        assert!(limiter.check("@a:x").is_ok() && limiter.check("@a:x").is_ok());
        assert!(limiter.check("@a:x").is_err());
        // 0 per second: no limit at all.
        assert!((0..50).all(|_| limiter.check_with("@a:x", Some((0, 0))).is_ok()));
        // An override's burst is its own, starting full.
        assert!((0..5).all(|_| limiter.check_with("@a:x", Some((1, 5))).is_ok()));
        assert!(limiter.check_with("@a:x", Some((1, 5))).is_err());
        // Without it, the user's own bucket is as it was.
        assert!(limiter.check("@a:x").is_err());
        assert!(limiter.check("@b:x").is_ok());
    }
}
