//! Unread notification and highlight counts of a room for a user, relative to their read
//! receipts: the unthreaded receipt covers everything, a threaded receipt covers its thread.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{storage::InList, storage::IN_CHUNK, Result};

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

/// A room's counts, and with `by_thread` its counts per thread root.
pub type RoomCounts = (Counts, BTreeMap<String, Counts>);

/// Counts for the room. With `by_thread`, events in threads are counted per thread root
/// (the second value) and left out of the room's counts, as clients that asked for
/// `unread_thread_notifications` expect.
pub async fn unread(conn: &mut AnyConnection, room_id: &str, user_id: &str, by_thread: bool) -> Result<RoomCounts> {
    let mut all = unread_many(conn, &[room_id.to_owned()], user_id, by_thread).await?;
    Ok(all.remove(room_id).unwrap_or_default())
}

/// `unread` for many rooms in one query per `IN_CHUNK` rooms; rooms with nothing unread are
/// absent. The read positions are joined in SQL, so only unread actions are counted.
pub async fn unread_many(
    conn: &mut AnyConnection,
    room_ids: &[String],
    user_id: &str,
    by_thread: bool,
) -> Result<HashMap<String, RoomCounts>> {
    let mut out: HashMap<String, RoomCounts> = HashMap::new();
    for chunk in room_ids.chunks(IN_CHUNK) {
        let list = InList::new(conn, 2, chunk.len());
        let rooms = list.sql();
        // A threaded receipt only covers its own thread, and only when counting by thread.
        let thread_join = if by_thread {
            format!(
                "LEFT JOIN (SELECT room_id, thread_id, MAX(event_stream_pos) AS read_pos FROM receipts
                   WHERE user_id = $1 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id <> ''
                   AND room_id IN ({rooms}) GROUP BY room_id, thread_id) t
                 ON t.room_id = a.room_id AND t.thread_id = a.thread_id AND a.stream_pos <= t.read_pos"
            )
        } else {
            String::new()
        };
        let thread_cond = if by_thread { "AND t.read_pos IS NULL" } else { "" };
        let sql = format!(
            "SELECT a.room_id, a.thread_id, COUNT(*), COUNT(CASE WHEN a.highlight <> 0 THEN 1 END)
             FROM event_push_actions a
             LEFT JOIN (SELECT room_id, MAX(event_stream_pos) AS read_pos FROM receipts
                 WHERE user_id = $1 AND receipt_type IN ('m.read', 'm.read.private') AND room_id IN ({rooms})
                 GROUP BY room_id) r ON r.room_id = a.room_id
             {thread_join}
             WHERE a.user_id = $1 AND a.room_id IN ({rooms}) AND a.notify = 1
               AND a.stream_pos > COALESCE(r.read_pos, 0) {thread_cond}
             GROUP BY a.room_id, a.thread_id"
        );
        let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(&sql).bind(user_id);
        for room in list.binds(chunk) {
            q = q.bind(room);
        }
        for (room, thread, notifications, highlights) in q.fetch_all(&mut *conn).await? {
            let (room_counts, threads) = out.entry(room).or_default();
            let target = if by_thread && thread != "main" {
                threads.entry(thread).or_default()
            } else {
                room_counts
            };
            target.notifications += notifications;
            target.highlights += highlights;
        }
    }
    Ok(out)
}
