//! Registration tokens (`m.login.registration_token`), managed through the admin API.

use sqlx::AnyConnection;

use crate::{util::now_ms, Db, Result};

#[derive(Clone, Debug, serde::Serialize)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub pending: i64,
    pub completed: i64,
    pub expiry_time: Option<i64>,
}

pub async fn create(
    conn: &mut AnyConnection,
    token: &str,
    uses_allowed: Option<i64>,
    expiry_ts: Option<i64>,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO registration_tokens (token, uses_allowed, expiry_ts, created_ts)
         VALUES ($1, $2, $3, $4) ON CONFLICT (token) DO NOTHING",
    )
    .bind(token)
    .bind(uses_allowed)
    .bind(expiry_ts)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list(db: &Db) -> Result<Vec<RegistrationToken>> {
    let rows: Vec<(String, Option<i64>, i64, Option<i64>)> =
        sqlx::query_as("SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens ORDER BY created_ts")
            .fetch_all(db.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| RegistrationToken {
            token: r.0,
            uses_allowed: r.1,
            pending: 0,
            completed: r.2,
            expiry_time: r.3,
        })
        .collect())
}

/// Whether the token exists, is unexpired and has uses left.
pub async fn is_valid(db: &Db, token: &str) -> Result<bool> {
    let row: Option<(Option<i64>, i64, Option<i64>)> =
        sqlx::query_as("SELECT uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = $1")
            .bind(token)
            .fetch_optional(db.pool())
            .await?;
    Ok(match row {
        None => false,
        Some((uses, completed, expiry)) => uses.is_none_or(|u| completed < u) && expiry.is_none_or(|e| e > now_ms()),
    })
}

/// Counts one completed registration against the token; false when it has no uses left.
pub async fn consume(conn: &mut AnyConnection, token: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE registration_tokens SET completed = completed + 1
         WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed)",
    )
    .bind(token)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
