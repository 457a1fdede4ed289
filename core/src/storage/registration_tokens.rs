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
    let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} ORDER BY created_ts"))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

type Row = (String, Option<i64>, i64, Option<i64>);
const SELECT: &str = "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens";

fn from_row(r: Row) -> RegistrationToken {
    RegistrationToken {
        token: r.0,
        uses_allowed: r.1,
        pending: 0,
        completed: r.2,
        expiry_time: r.3,
    }
}

impl RegistrationToken {
    /// Unexpired, with uses left.
    pub fn is_valid(&self) -> bool {
        self.uses_allowed.is_none_or(|u| self.completed < u) && self.expiry_time.is_none_or(|e| e > now_ms())
    }
}

pub async fn get(db: &Db, token: &str) -> Result<Option<RegistrationToken>> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE token = $1"))
        .bind(token)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(from_row))
}

/// A field of an update: left as it is, or set (`None` removes the limit).
pub type Change = Option<Option<i64>>;

/// Changes a token's limits; false when there is no such token.
pub async fn update(conn: &mut AnyConnection, token: &str, uses_allowed: Change, expiry_ts: Change) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE registration_tokens SET
           uses_allowed = CASE WHEN $2 = 1 THEN $3 ELSE uses_allowed END,
           expiry_ts = CASE WHEN $4 = 1 THEN $5 ELSE expiry_ts END
         WHERE token = $1",
    )
    .bind(token)
    .bind(i64::from(uses_allowed.is_some()))
    .bind(uses_allowed.flatten())
    .bind(i64::from(expiry_ts.is_some()))
    .bind(expiry_ts.flatten())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a token; false when there is no such token.
pub async fn delete(conn: &mut AnyConnection, token: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM registration_tokens WHERE token = $1")
        .bind(token)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the token exists, is unexpired and has uses left.
pub async fn is_valid(db: &Db, token: &str) -> Result<bool> {
    Ok(get(db, token).await?.is_some_and(|t| t.is_valid()))
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
