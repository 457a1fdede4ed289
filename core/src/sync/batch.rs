//! Set-based reads for `/sync`: each function answers for many rooms in a fixed number of
//! statements (one per chunk of rooms), so a sync's query count does not grow with the number
//! of rooms it reports.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{
    storage::{
        events::{self, StoredEvent},
        placeholders, IN_CHUNK,
    },
    Result,
};

/// Rooms per `UNION ALL` statement: SQLite allows at most 500 terms in a compound select.
const UNION_CHUNK: usize = 100;

/// `SELECT * FROM (arm) AS t0 UNION ALL SELECT * FROM (arm) AS t1 ...`, one arm per room with
/// the room's placeholder starting at `$first`. Unlike a window function over all rooms, each
/// arm reads its room through the `(room_id, stream_pos)` index and stops at its `LIMIT`, so a
/// long room costs no more than a short one.
fn union_per_room(first: usize, rooms: usize, arm: impl Fn(usize) -> String) -> String {
    (0..rooms)
        .map(|i| format!("SELECT * FROM ({}) AS t{i}", arm(first + i)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Up to `limit` newest timeline events per room with positions in `(from, to]`, newest first
/// within each room.
pub(super) async fn latest_events(
    conn: &mut AnyConnection,
    room_ids: &[String],
    from: i64,
    to: i64,
    limit: i64,
) -> Result<HashMap<String, Vec<StoredEvent>>> {
    let mut out: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for chunk in room_ids.chunks(UNION_CHUNK) {
        let sql = union_per_room(4, chunk.len(), |p| {
            format!(
                "SELECT {} FROM events WHERE room_id = ${p} AND stream_pos > $1 AND stream_pos <= $2
                 AND stream_pos IS NOT NULL ORDER BY stream_pos DESC LIMIT $3",
                events::COLUMNS
            )
        });
        let mut q = sqlx::query(&sql)
            .persistent(crate::storage::keep_prepared(chunk.len()))
            .bind(from)
            .bind(to)
            .bind(limit);
        for room in chunk {
            q = q.bind(room);
        }
        for row in q.fetch_all(&mut *conn).await? {
            let event = events::from_row(&row)?;
            out.entry(event.room_id.clone()).or_default().push(event);
        }
    }
    for list in out.values_mut() {
        // The arms come back in any order the database likes; each room's rows keep theirs,
        // but make it explicit.
        list.sort_by_key(|e| std::cmp::Reverse(e.stream_pos));
    }
    Ok(out)
}

/// The state group after each room's last event at or before `pos` (rooms without one are
/// absent).
pub(super) async fn state_groups_at(
    conn: &mut AnyConnection,
    room_ids: &[String],
    pos: i64,
) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for chunk in room_ids.chunks(UNION_CHUNK) {
        let sql = union_per_room(2, chunk.len(), |p| {
            format!(
                "SELECT room_id, state_after FROM events WHERE room_id = ${p} AND stream_pos <= $1
                 AND stream_pos IS NOT NULL ORDER BY stream_pos DESC LIMIT 1"
            )
        });
        let mut q = sqlx::query_as::<_, (String, Option<i64>)>(&sql)
            .persistent(crate::storage::keep_prepared(chunk.len()))
            .bind(pos);
        for room in chunk {
            q = q.bind(room);
        }
        out.extend(
            q.fetch_all(&mut *conn)
                .await?
                .into_iter()
                .filter_map(|(room, group)| Some((room, group?))),
        );
    }
    Ok(out)
}

/// Rooms with timeline events in `(since, now]`, each with whether one of them is a
/// membership event (which may change the room's summary).
pub(super) async fn rooms_with_events(conn: &mut AnyConnection, since: i64, now: i64) -> Result<HashMap<String, bool>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT room_id, MAX(CASE WHEN event_type = 'm.room.member' THEN 1 ELSE 0 END) FROM events
         WHERE stream_pos > $1 AND stream_pos <= $2 GROUP BY room_id",
    )
    .bind(since)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(room, member)| (room, member != 0)).collect())
}

/// The rooms' summaries (`m.heroes`, joined and invited member counts): counted in SQL rather
/// than by loading member lists, and at most five heroes read per room.
pub(super) async fn summaries(
    conn: &mut AnyConnection,
    room_ids: &[String],
    user_id: &str,
) -> Result<HashMap<String, Value>> {
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    let mut heroes: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in room_ids.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT room_id, membership, COUNT(*) FROM room_memberships
             WHERE membership IN ('join', 'invite') AND room_id IN ({}) GROUP BY room_id, membership",
            placeholders(1, chunk.len())
        );
        let mut q =
            sqlx::query_as::<_, (String, String, i64)>(&sql).persistent(crate::storage::keep_prepared(chunk.len()));
        for room in chunk {
            q = q.bind(room);
        }
        for (room, membership, n) in q.fetch_all(&mut *conn).await? {
            let entry = counts.entry(room).or_default();
            if membership == "join" {
                entry.0 = n;
            } else {
                entry.1 = n;
            }
        }
        // Heroes: joined members, then invited ones, each by user ID, leaving out the user.
        let sql = format!(
            "SELECT room_id, user_id FROM (
                 SELECT room_id, user_id, ROW_NUMBER() OVER (
                     PARTITION BY room_id ORDER BY CASE WHEN membership = 'join' THEN 0 ELSE 1 END, user_id) AS rn
                 FROM room_memberships
                 WHERE membership IN ('join', 'invite') AND user_id <> $1 AND room_id IN ({})
             ) AS h WHERE rn <= 5 ORDER BY room_id, rn",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql)
            .persistent(crate::storage::keep_prepared(chunk.len()))
            .bind(user_id);
        for room in chunk {
            q = q.bind(room);
        }
        for (room, user) in q.fetch_all(&mut *conn).await? {
            heroes.entry(room).or_default().push(user);
        }
    }
    Ok(room_ids
        .iter()
        .map(|room| {
            let (joined, invited) = counts.get(room).copied().unwrap_or_default();
            let summary = json!({
                "m.heroes": heroes.remove(room).unwrap_or_default(),
                "m.joined_member_count": joined,
                "m.invited_member_count": invited,
            });
            (room.clone(), summary)
        })
        .collect())
}
