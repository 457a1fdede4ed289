//! Per-destination state: backoff after failed sends, the last success and error.
//!
//! After `n` failures in a row a destination waits `Backoff::delay(n)`: 5 s, doubling, capped
//! at a day (`Backoff::DEFAULT`), then is tried again. No jitter: the retry times of different
//! destinations already differ with when each failed. A success resets the count; so does
//! `wake_destination`, for a server that just showed it is back by contacting us.

use std::time::Duration;

use sqlx::Row;

use crate::{util, Core, Error, Result};

/// Exponential backoff: `first` after one failure, doubling with each further one, at most
/// `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(5),
        max: Duration::from_secs(24 * 60 * 60),
    };

    /// The wait after `failures` failures in a row (at least one).
    pub fn delay(&self, failures: i64) -> Duration {
        let doublings = failures.saturating_sub(1).clamp(0, 31) as u32;
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// When a failed destination will be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Failures in a row, this one included.
    pub retry_count: i64,
    /// Milliseconds since the epoch.
    pub retry_after_ts: i64,
}

/// A destination's row, as admins will list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationState {
    pub destination: String,
    pub retry_count: i64,
    pub retry_after_ts: i64,
    pub last_success_ts: Option<i64>,
    pub last_failure_ts: Option<i64>,
    pub last_error: Option<String>,
}

/// Records a failed send with the default backoff; see `record_failure_with`.
pub async fn record_failure(core: &Core, destination: &str, error: &str) -> Result<Retry> {
    record_failure_with(core, destination, error, &Backoff::DEFAULT).await
}

/// Records a failed send: one more failure in a row, the error, and the time before which the
/// destination is not tried again. The pinned transaction stays, to be resent as it is.
pub async fn record_failure_with(core: &Core, destination: &str, error: &str, backoff: &Backoff) -> Result<Retry> {
    let now = util::now_ms();
    let mut tx = core.db.write().await?;
    // The upsert locks the row (PostgreSQL), so concurrent failures count one each.
    let retry_count: i64 = sqlx::query_scalar(
        "INSERT INTO federation_destinations (destination, retry_count) VALUES ($1, 1)
         ON CONFLICT (destination) DO UPDATE SET retry_count = federation_destinations.retry_count + 1
         RETURNING retry_count",
    )
    .bind(destination)
    .fetch_one(&mut *tx)
    .await?;
    let delay_ms = i64::try_from(backoff.delay(retry_count).as_millis()).unwrap_or(i64::MAX);
    let retry_after_ts = now.saturating_add(delay_ms);
    sqlx::query(
        "UPDATE federation_destinations SET retry_after_ts = $2, last_failure_ts = $3, last_error = $4
         WHERE destination = $1",
    )
    .bind(destination)
    .bind(retry_after_ts)
    .bind(now)
    .bind(clip(error))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Retry {
        retry_count,
        retry_after_ts,
    })
}

/// Servers with queued rows that may be tried at `now` (ms since the epoch), sorted.
pub async fn ready_destinations(core: &Core, now: i64) -> Result<Vec<String>> {
    Ok(ready(core, now)
        .await?
        .into_iter()
        .filter(|d| !is_appservice(d))
        .collect())
}

/// Appservice destinations (`as/<id>`, see `appservice`) with queued rows that may be tried
/// at `now`, sorted.
pub async fn ready_appservices(core: &Core, now: i64) -> Result<Vec<String>> {
    Ok(ready(core, now)
        .await?
        .into_iter()
        .filter(|d| is_appservice(d))
        .collect())
}

/// Whether a destination is an appservice rather than a server: a `/` is never part of a
/// server name.
pub fn is_appservice(destination: &str) -> bool {
    destination.starts_with(crate::appservice::DESTINATION_PREFIX)
}

async fn ready(core: &Core, now: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT o.destination FROM federation_outbox o
         LEFT JOIN federation_destinations d ON d.destination = o.destination
         WHERE d.retry_after_ts IS NULL OR d.retry_after_ts <= $1
         ORDER BY o.destination",
    )
    .bind(now)
    .fetch_all(core.db.pool())
    .await?)
}

/// Ends a destination's backoff: it contacted us, so it is back. Returns whether it was
/// backed off. Reads first, so the common case (not backed off) writes nothing; when it was,
/// this process's sender is woken to try it now (others find it at their next poll).
pub async fn wake_destination(core: &Core, destination: &str) -> Result<bool> {
    let retry_count: Option<i64> =
        sqlx::query_scalar("SELECT retry_count FROM federation_destinations WHERE destination = $1")
            .bind(destination)
            .fetch_optional(core.db.pool())
            .await?;
    if retry_count.unwrap_or(0) == 0 {
        return Ok(false);
    }
    let mut tx = core.db.write().await?;
    sqlx::query("UPDATE federation_destinations SET retry_count = 0, retry_after_ts = 0 WHERE destination = $1")
        .bind(destination)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    core.notifier.wake([], []);
    Ok(true)
}

/// A destination's state, if it was ever sent to or failed.
pub async fn destination_state(core: &Core, destination: &str) -> Result<Option<DestinationState>> {
    let row = sqlx::query(
        "SELECT destination, retry_count, retry_after_ts, last_success_ts, last_failure_ts, last_error
         FROM federation_destinations WHERE destination = $1",
    )
    .bind(destination)
    .fetch_optional(core.db.pool())
    .await?;
    row.map(|r| {
        Ok(DestinationState {
            destination: r.try_get(0)?,
            retry_count: r.try_get(1)?,
            retry_after_ts: r.try_get(2)?,
            last_success_ts: r.try_get(3)?,
            last_failure_ts: r.try_get(4)?,
            last_error: r.try_get(5)?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| Error::from(e))
}

/// Error text as stored: a remote server's answer could be long.
pub(super) fn clip(error: &str) -> &str {
    const MAX: usize = 1000;
    if error.len() <= MAX {
        return error;
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}
