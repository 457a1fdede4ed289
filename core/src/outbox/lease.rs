//! Leases: named work that one process at a time does (the tailer, a destination's sender),
//! among processes sharing one database.
//!
//! A lease is a row (name, holder, expiry). Taking it is one upsert that succeeds when the row
//! is new, already the holder's (a renewal), or expired: PostgreSQL's `ON CONFLICT DO UPDATE
//! ... WHERE` decides on the row as committed, locked, so of two processes racing for a lease
//! one gets it; SQLite has one writer. A holder renews well before expiry and stops working
//! when a renewal fails. Expiry is read from each process's clock, so clocks must agree to
//! well within a lease's length (seconds).

use std::time::Duration;

use crate::{util, Core, Result};

/// Takes or renews the lease `name` for `holder` (a random ID per process) until `ttl` from
/// now; `false` if another holder has it and it has not expired.
pub async fn try_acquire(core: &Core, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
    acquire_at(core, name, holder, ttl, util::now_ms()).await
}

/// `try_acquire` at a given time (ms since the epoch).
pub(crate) async fn acquire_at(core: &Core, name: &str, holder: &str, ttl: Duration, now: i64) -> Result<bool> {
    let expires_ts = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let mut tx = core.db.write().await?;
    let taken: Option<String> = sqlx::query_scalar(
        "INSERT INTO leases (name, holder, expires_ts) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ts = excluded.expires_ts
         WHERE leases.holder = excluded.holder OR leases.expires_ts <= $4
         RETURNING holder",
    )
    .bind(name)
    .bind(holder)
    .bind(expires_ts)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken.is_some())
}

/// Gives the lease up, if `holder` still has it, so another process need not wait for expiry.
pub async fn release(core: &Core, name: &str, holder: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Drops every lease. Only for a database that one process uses (SQLite), at that process's
/// start: any lease found then was left by its previous run, which ended without releasing it
/// (a crash or SIGKILL), and waiting for it to expire would hold the work (tailing the outbox,
/// sending to a destination) back for up to a lease's length. Answers how many there were.
pub async fn clear_all(core: &Core) -> Result<u64> {
    let mut tx = core.db.write().await?;
    let cleared = sqlx::query("DELETE FROM leases")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(cleared)
}
