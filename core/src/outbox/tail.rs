//! The tailer: queues committed live events of local senders for the servers in their rooms.
//!
//! Each round is one write transaction that locks the tailer's row, reads the events after its
//! position, inserts their outbox rows and moves the position past them: a crash before the
//! commit leaves both as they were, and two tailers (say, one whose lease expired while it
//! worked) take turns on the row, the second reading the position the first wrote.
//!
//! Destinations are the servers with a member joined at the event, plus, for a membership
//! event about a remote user other than an invite (which `/invite` delivered), that user's
//! server (a kicked or banned user's server learns of it even though nobody there is joined). They are found from the room's current
//! members: a server whose member's current join is at or before the event was joined at the
//! event; one whose joined members all changed membership since (the tailer lags, say after a
//! restart) is checked against the state after the event, so it is not sent history from
//! before it joined. A server whose members all left since the event is not sent it: it no
//! longer follows the room (its own leave still reaches it, by the rule above).

use std::collections::{BTreeSet, HashMap};

use sqlx::{AnyConnection, Row};

use crate::{Core, Error, Result};

/// Events read per transaction: bounds how long a round holds the tailer's row.
pub(crate) const EVENTS_PER_ROUND: i64 = 200;

/// Outbox rows inserted per statement (three parameters each).
const ROWS_PER_INSERT: usize = 200;

/// Queues every committed live event of a local sender not yet queued; returns how many outbox
/// rows (event × destination) were queued.
pub async fn tail(core: &Core) -> Result<usize> {
    if !behind(core).await? {
        return Ok(0);
    }
    let mut queued = 0;
    loop {
        let round = tail_round(core).await?;
        queued += round.queued;
        if !round.more {
            return Ok(queued);
        }
    }
}

/// Whether the `events` stream moved past the tailer: a read, so that a sender woken by every
/// commit opens no write transaction while there is nothing new.
async fn behind(core: &Core) -> Result<bool> {
    let row = sqlx::query(
        "SELECT t.events_pos, s.pos FROM federation_outbox_tail t, stream_positions s
         WHERE t.id = 0 AND s.stream = 'events'",
    )
    .fetch_optional(core.db.pool())
    .await?;
    let Some(row) = row else {
        return Err(Error::internal("the federation tailer's row is missing"));
    };
    let (tail, stream): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok(stream > tail)
}

struct Round {
    queued: usize,
    /// The round stopped at its limit: more events may follow.
    more: bool,
}

/// An event the tailer looks at.
pub(crate) struct Candidate {
    pub(crate) stream_pos: i64,
    pub(crate) event_id: String,
    pub(crate) room_id: String,
    pub(crate) sender: String,
    pub(crate) event_type: String,
    pub(crate) state_key: Option<String>,
    pub(crate) state_after: Option<i64>,
    /// Accepted into the timeline: not an outlier, rejected or soft-failed.
    pub(crate) live: bool,
}

/// A room's currently joined members, by server: (user, position of their membership).
type JoinedByServer = HashMap<String, Vec<(String, i64)>>;

async fn tail_round(core: &Core) -> Result<Round> {
    let mut tx = core.db.write().await?;
    // Locks the row (PostgreSQL): a concurrent tailer waits here, then reads this round's end.
    let from: i64 = sqlx::query_scalar(
        "UPDATE federation_outbox_tail SET events_pos = events_pos WHERE id = 0 RETURNING events_pos",
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::internal("the federation tailer's row is missing"))?;
    // Every event at or below the stream's committed position is committed (see `streams`),
    // so the range read below has no gap a late commit could fill.
    let upto: i64 = sqlx::query_scalar("SELECT pos FROM stream_positions WHERE stream = 'events'")
        .fetch_one(&mut *tx)
        .await?;
    let candidates = read_events(&mut tx, from, upto).await?;
    let more = candidates.len() as i64 == EVENTS_PER_ROUND;
    // A full round stops at its last event; otherwise everything up to `upto` was read (the
    // stream's positions may also have gaps no event fills).
    let new_pos = match (more, candidates.last()) {
        (true, Some(last)) => last.stream_pos,
        _ => upto.max(from),
    };

    let mut joined: HashMap<String, JoinedByServer> = HashMap::new();
    let mut queued_events: Vec<(String, BTreeSet<String>)> = Vec::new();
    for event in candidates {
        if !event.live || !sent_here(core, &event.sender) {
            continue;
        }
        let destinations = destinations(core, &mut tx, &mut joined, &event).await?;
        if !destinations.is_empty() {
            queued_events.push((event.event_id, destinations));
        }
    }
    let queued = insert_rows(&mut tx, &queued_events).await?;

    sqlx::query("UPDATE federation_outbox_tail SET events_pos = $1 WHERE id = 0")
        .bind(new_pos)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Round { queued, more })
}

/// At most `EVENTS_PER_ROUND` events of the timeline stream in `(from, upto]`, in order (also
/// what the appservice tailer reads).
pub(crate) async fn read_events(conn: &mut AnyConnection, from: i64, upto: i64) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(
        "SELECT stream_pos, event_id, room_id, sender, event_type, state_key, outlier, rejected_reason, soft_failed,
                state_after
         FROM events WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos LIMIT $3",
    )
    .bind(from)
    .bind(upto)
    .bind(EVENTS_PER_ROUND)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let outlier: i64 = r.try_get(6)?;
            let rejected: Option<String> = r.try_get(7)?;
            let soft_failed: i64 = r.try_get(8)?;
            Ok(Candidate {
                stream_pos: r.try_get(0)?,
                event_id: r.try_get(1)?,
                room_id: r.try_get(2)?,
                sender: r.try_get(3)?,
                event_type: r.try_get(4)?,
                state_key: r.try_get(5)?,
                state_after: r.try_get(9)?,
                live: outlier == 0 && rejected.is_none() && soft_failed == 0,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// Whether this server sent the event: only those are ours to send; the servers of the others
/// send their own.
fn sent_here(core: &Core, sender: &str) -> bool {
    ruma::UserId::parse(sender).is_ok_and(|user| core.is_local(&user))
}

/// The servers an event goes to (see the module's comment); never this server.
async fn destinations(
    core: &Core,
    conn: &mut AnyConnection,
    joined: &mut HashMap<String, JoinedByServer>,
    event: &Candidate,
) -> Result<BTreeSet<String>> {
    if !joined.contains_key(&event.room_id) {
        let members = joined_by_server(conn, &event.room_id).await?;
        joined.insert(event.room_id.clone(), members);
    }
    let mut out = BTreeSet::new();
    let mut state_after = None;
    for (server, members) in joined.get(&event.room_id).into_iter().flatten() {
        if server == core.server_name.as_str() {
            continue;
        }
        let joined_then = members.iter().any(|(_, pos)| *pos <= event.stream_pos)
            || joined_at_event(core, conn, &mut state_after, event, members).await?;
        if joined_then {
            out.insert(server.clone());
        }
    }
    if event.event_type == "m.room.member" {
        if let Some(target) = event.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) {
            // An invite reached the invitee's server through `/invite` already; in a
            // transaction it would be an event of a room that server does not know.
            if !core.is_local(&target) && membership_of(conn, &event.event_id).await?.as_deref() != Some("invite") {
                out.insert(target.server_name().to_string());
            }
        }
    }
    out.remove(core.server_name.as_str());
    Ok(out)
}

/// The `membership` of a stored membership event.
async fn membership_of(conn: &mut AnyConnection, event_id: &str) -> Result<Option<String>> {
    let json: Option<String> = sqlx::query_scalar("SELECT json FROM events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(conn)
        .await?;
    Ok(json
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|v| v["content"]["membership"].as_str().map(str::to_owned)))
}

async fn joined_by_server(conn: &mut AnyConnection, room_id: &str) -> Result<JoinedByServer> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, stream_pos FROM room_memberships WHERE room_id = $1 AND membership = 'join'")
            .bind(room_id)
            .fetch_all(conn)
            .await?;
    let mut out = JoinedByServer::new();
    for (user_id, pos) in rows {
        if let Some((_, server)) = user_id.split_once(':') {
            out.entry(server.to_owned()).or_default().push((user_id, pos));
        }
    }
    Ok(out)
}

/// Whether one of `members` (whose memberships all changed after the event) was joined at the
/// event, by the state after it. An event without a state group counts as joined.
async fn joined_at_event(
    core: &Core,
    conn: &mut AnyConnection,
    state_after: &mut Option<std::sync::Arc<crate::events::StateMap>>,
    event: &Candidate,
    members: &[(String, i64)],
) -> Result<bool> {
    let Some(group) = event.state_after else {
        return Ok(true);
    };
    if state_after.is_none() {
        *state_after = Some(crate::storage::state::load(&core.db, conn, group).await?);
    }
    let Some(state) = state_after.as_ref() else {
        return Ok(true);
    };
    for (user_id, _) in members {
        let Some(member_event) = state.get(&("m.room.member".to_owned(), user_id.clone())) else {
            continue;
        };
        let json: Option<String> = sqlx::query_scalar("SELECT json FROM events WHERE event_id = $1")
            .bind(member_event)
            .fetch_optional(&mut *conn)
            .await?;
        let membership = json
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v["content"]["membership"].as_str().map(str::to_owned));
        if membership.as_deref() == Some("join") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Inserts one row per (event, destination), each event at its own new position of the
/// `federation_outbox` stream, allocated in one statement; returns the number of rows.
async fn insert_rows(conn: &mut AnyConnection, events: &[(String, BTreeSet<String>)]) -> Result<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE stream_positions SET pos = pos + $1 WHERE stream = 'federation_outbox' RETURNING pos",
    )
    .bind(events.len() as i64)
    .fetch_one(&mut *conn)
    .await?;
    let first = last - events.len() as i64 + 1;
    let rows: Vec<(&str, i64, &str)> = events
        .iter()
        .zip(first..)
        .flat_map(|((event_id, destinations), pos)| {
            destinations.iter().map(move |d| (d.as_str(), pos, event_id.as_str()))
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values = (0..chunk.len())
            .map(|i| format!("(${}, ${}, 'pdu', ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("INSERT INTO federation_outbox (destination, pos, kind, event_id) VALUES {values}");
        let mut q = sqlx::query(&sql).persistent(chunk.len() == 1);
        for (destination, pos, event_id) in chunk {
            q = q.bind(*destination).bind(*pos).bind(*event_id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(rows.len())
}
