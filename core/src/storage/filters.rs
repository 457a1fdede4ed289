//! Stored sync filters (`/user/{userId}/filter`).

use sqlx::AnyConnection;

use crate::{streams, Db, Result};

pub async fn create(conn: &mut AnyConnection, user_id: &str, content: &str) -> Result<i64> {
    // Filter IDs come from their own counter so concurrent creations never collide.
    let id = streams::next_pos(&mut *conn, "filters").await?;
    sqlx::query("INSERT INTO filters (user_id, filter_id, content) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(id)
        .bind(content)
        .execute(conn)
        .await?;
    Ok(id)
}

pub async fn get(db: &Db, user_id: &str, filter_id: i64) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT content FROM filters WHERE user_id = $1 AND filter_id = $2")
        .bind(user_id)
        .bind(filter_id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|r| r.0))
}
