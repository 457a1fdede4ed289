//! User-interactive authentication sessions, kept in the database so that any process can
//! continue a session another one started.

use sqlx::AnyConnection;

use crate::{util::now_ms, Db, Result};

#[derive(Clone, Debug)]
pub struct Session {
    pub completed: Vec<String>,
    pub user_id: Option<String>,
    /// The hash of the request the session was started for (see `weft::uia::operation`).
    pub operation: Option<String>,
    /// The account a completed registration session created.
    pub registered_user_id: Option<String>,
    pub created_ts: i64,
    /// A registration's first request body, less `auth` (JSON).
    pub params: Option<String>,
}

pub async fn create(
    conn: &mut AnyConnection,
    session_id: &str,
    user_id: Option<&str>,
    operation: &str,
    params: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO uia_sessions (session_id, completed, user_id, created_ts, operation, params)
         VALUES ($1, '[]', $2, $3, $4, $5)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(now_ms())
    .bind(operation)
    .bind(params)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, session_id: &str) -> Result<Option<Session>> {
    #[allow(clippy::type_complexity)]
    let row: Option<(
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        Option<String>,
    )> = sqlx::query_as(
        "SELECT completed, user_id, operation, registered_user_id, created_ts, params FROM uia_sessions
         WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(
        |(completed, user_id, operation, registered_user_id, created_ts, params)| Session {
            completed: serde_json::from_str(&completed).unwrap_or_default(),
            user_id,
            operation,
            registered_user_id,
            created_ts,
            params,
        },
    ))
}

pub async fn set_completed(conn: &mut AnyConnection, session_id: &str, completed: &[String]) -> Result<()> {
    let json = serde_json::to_string(completed).map_err(crate::Error::internal)?;
    sqlx::query("UPDATE uia_sessions SET completed = $2 WHERE session_id = $1")
        .bind(session_id)
        .bind(json)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the account a registration session created (the session stays, so that the
/// same request repeated gets that account).
pub async fn set_registered(conn: &mut AnyConnection, session_id: &str, user_id: &str) -> Result<()> {
    sqlx::query("UPDATE uia_sessions SET registered_user_id = $2 WHERE session_id = $1")
        .bind(session_id)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, session_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}
