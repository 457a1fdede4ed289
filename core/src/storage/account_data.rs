//! Global and per-room account data. Each write takes a position on the `account_data` stream.

use sqlx::AnyConnection;

use crate::{streams, Result};

/// `room_id` is `""` for global account data.
pub async fn put(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
    data_type: &str,
    content: &str,
) -> Result<i64> {
    let pos = streams::next_pos(&mut *conn, "account_data").await?;
    sqlx::query(
        "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET
           content = excluded.content, stream_pos = excluded.stream_pos",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(data_type)
    .bind(content)
    .bind(pos)
    .execute(conn)
    .await?;
    Ok(pos)
}

pub async fn get(conn: &mut AnyConnection, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
            .bind(user_id)
            .bind(room_id)
            .bind(data_type)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|r| r.0))
}

/// Every entry changed after `since` (all when `since` is 0): `(room_id, type, content)`.
pub async fn changed_since(
    conn: &mut AnyConnection,
    user_id: &str,
    since: i64,
) -> Result<Vec<(String, String, String)>> {
    let rows = sqlx::query_as(
        "SELECT room_id, data_type, content FROM account_data
         WHERE user_id = $1 AND stream_pos > $2 ORDER BY stream_pos",
    )
    .bind(user_id)
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}
