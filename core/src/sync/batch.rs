//! Set-based reads for `/sync`: each function answers for many rooms in a fixed number of
//! statements (one per chunk of rooms), so a sync's query count does not grow with the number
//! of rooms it reports.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{
    db::Backend,
    storage::{
        events::{self, StoredEvent},
        json_array, json_list, InList, IN_CHUNK,
    },
    Result,
};

/// For each room of the JSON array bound as `$list`, the `events` rows (as `x`) that `rest`
/// picks: its conditions besides the room, then `ORDER BY` and `LIMIT`. Unlike a window
/// function over all rooms, each room is read through the `(room_id, stream_pos)` index and
/// stops at its `LIMIT`, so a long room costs no more than a short one; and unlike one `UNION
/// ALL` arm per room, the statement's text is the same for any number of rooms, so it is
/// planned once per connection (see `InList`).
fn per_room(backend: Backend, list: usize, columns: &str, rest: &str) -> String {
    let rooms = json_array(backend, list);
    match backend {
        // No LATERAL: a correlated `IN` with its own LIMIT, run once per room.
        Backend::Sqlite => format!(
            "WITH r(room) AS ({rooms}) SELECT {columns} FROM r JOIN events ON events.event_id IN
             (SELECT x.event_id FROM events AS x WHERE x.room_id = r.room AND {rest})"
        ),
        Backend::Postgres => format!(
            "WITH r(room) AS ({rooms}) SELECT e.* FROM r CROSS JOIN LATERAL
             (SELECT {columns} FROM events AS x WHERE x.room_id = r.room AND {rest}) AS e"
        ),
    }
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
    window_events(conn, room_ids, (from, to), limit, true).await
}

/// Up to `limit` oldest timeline events per room with positions in `(from, to]`, oldest first
/// within each room.
pub(super) async fn earliest_events(
    conn: &mut AnyConnection,
    room_ids: &[String],
    from: i64,
    to: i64,
    limit: i64,
) -> Result<HashMap<String, Vec<StoredEvent>>> {
    window_events(conn, room_ids, (from, to), limit, false).await
}

async fn window_events(
    conn: &mut AnyConnection,
    room_ids: &[String],
    (from, to): (i64, i64),
    limit: i64,
    newest_first: bool,
) -> Result<HashMap<String, Vec<StoredEvent>>> {
    let mut out: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    let order = if newest_first { "DESC" } else { "ASC" };
    let sql = per_room(
        Backend::of(conn),
        4,
        events::COLUMNS,
        &format!(
            "x.stream_pos > $1 AND x.stream_pos <= $2 AND x.stream_pos IS NOT NULL
             ORDER BY x.stream_pos {order} LIMIT $3"
        ),
    );
    for chunk in room_ids.chunks(IN_CHUNK) {
        let q = sqlx::query(&sql).bind(from).bind(to).bind(limit).bind(json_list(chunk));
        for row in q.fetch_all(&mut *conn).await? {
            let event = events::from_row(&row)?;
            out.entry(event.room_id.clone()).or_default().push(event);
        }
    }
    for list in out.values_mut() {
        // Rows come back in any order the database likes.
        if newest_first {
            list.sort_by_key(|e| std::cmp::Reverse(e.stream_pos));
        } else {
            list.sort_by_key(|e| e.stream_pos);
        }
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
    let sql = per_room(
        Backend::of(conn),
        2,
        "room_id, state_after",
        "x.stream_pos <= $1 AND x.stream_pos IS NOT NULL ORDER BY x.stream_pos DESC LIMIT 1",
    );
    for chunk in room_ids.chunks(IN_CHUNK) {
        let q = sqlx::query_as::<_, (String, Option<i64>)>(&sql)
            .bind(pos)
            .bind(json_list(chunk));
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

/// The rooms' summaries (`m.heroes` for rooms without a name or canonical alias, joined and
/// invited member counts): counted in SQL rather than by loading member lists, and at most
/// five heroes read per room.
pub(super) async fn summaries(
    conn: &mut AnyConnection,
    room_ids: &[String],
    user_id: &str,
) -> Result<HashMap<String, Value>> {
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    let mut heroes: HashMap<String, Vec<String>> = HashMap::new();
    let mut named: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in room_ids.chunks(IN_CHUNK) {
        let list = InList::new(conn, 1, chunk.len());
        let sql = format!(
            "SELECT room_id, membership, COUNT(*) FROM room_memberships
             WHERE membership IN ('join', 'invite') AND room_id IN ({}) GROUP BY room_id, membership",
            list.sql()
        );
        let mut q = sqlx::query_as::<_, (String, String, i64)>(&sql);
        for room in list.binds(chunk) {
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
        let list = InList::new(conn, 2, chunk.len());
        let sql = format!(
            "SELECT room_id, user_id FROM (
                 SELECT room_id, user_id, ROW_NUMBER() OVER (
                     PARTITION BY room_id ORDER BY CASE WHEN membership = 'join' THEN 0 ELSE 1 END, user_id) AS rn
                 FROM room_memberships
                 WHERE membership IN ('join', 'invite') AND user_id <> $1 AND room_id IN ({})
             ) AS h WHERE rn <= 5 ORDER BY room_id, rn",
            list.sql()
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(user_id);
        for room in list.binds(chunk) {
            q = q.bind(room);
        }
        for (room, user) in q.fetch_all(&mut *conn).await? {
            heroes.entry(room).or_default().push(user);
        }
        // A room with a name or canonical alias is called by it: no heroes (as Synapse, whose
        // clients read their presence as "name the room from its members").
        let list = InList::new(conn, 1, chunk.len());
        let sql = format!(
            "SELECT DISTINCT room_id FROM current_state
             WHERE event_type IN ('m.room.name', 'm.room.canonical_alias') AND state_key = '' AND room_id IN ({})",
            list.sql()
        );
        let mut q = sqlx::query_as::<_, (String,)>(&sql);
        for room in list.binds(chunk) {
            q = q.bind(room);
        }
        for (room,) in q.fetch_all(&mut *conn).await? {
            named.insert(room);
        }
    }
    Ok(room_ids
        .iter()
        .map(|room| {
            let (joined, invited) = counts.get(room).copied().unwrap_or_default();
            let mut summary = json!({
                "m.joined_member_count": joined,
                "m.invited_member_count": invited,
            });
            if !named.contains(room) {
                summary["m.heroes"] = json!(heroes.remove(room).unwrap_or_default());
            }
            (room.clone(), summary)
        })
        .collect())
}
