//! Unread notification and highlight counts of a room for a user, relative to their read
//! receipts: the unthreaded receipt covers everything, a threaded receipt covers its thread.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{ephemeral::receipts, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub notifications: i64,
    pub highlights: i64,
}

impl Counts {
    pub fn to_json(self) -> Value {
        json!({ "notification_count": self.notifications, "highlight_count": self.highlights })
    }
}

/// Counts for the room. With `by_thread`, events in threads are counted per thread root
/// (the second value) and left out of the room's counts, as clients that asked for
/// `unread_thread_notifications` expect.
pub async fn unread(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
    by_thread: bool,
) -> Result<(Counts, BTreeMap<String, Counts>)> {
    let read_pos = receipts::read_up_to(conn, room_id, user_id).await?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT thread_id, stream_pos, highlight FROM event_push_actions
         WHERE user_id = $1 AND room_id = $2 AND stream_pos > $3 AND notify = 1",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(read_pos)
    .fetch_all(&mut *conn)
    .await?;
    let thread_receipts: HashMap<String, i64> = if by_thread {
        sqlx::query_as::<_, (String, Option<i64>)>(
            "SELECT thread_id, MAX(event_stream_pos) FROM receipts WHERE room_id = $1 AND user_id = $2
             AND receipt_type IN ('m.read', 'm.read.private') AND thread_id <> '' GROUP BY thread_id",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(t, p)| (t, p.unwrap_or(0)))
        .collect()
    } else {
        HashMap::new()
    };
    let mut room = Counts::default();
    let mut threads: BTreeMap<String, Counts> = BTreeMap::new();
    for (thread, pos, highlight) in rows {
        if by_thread && thread_receipts.get(&thread).is_some_and(|read| pos <= *read) {
            continue;
        }
        let target = if by_thread && thread != "main" {
            threads.entry(thread).or_default()
        } else {
            &mut room
        };
        target.notifications += 1;
        target.highlights += highlight;
    }
    Ok((room, threads))
}
