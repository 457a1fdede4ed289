//! The tailer: queues committed live events of local senders for the servers in their rooms.
//!
//! Each round is one write transaction that locks the tailer's row, reads the events after its
//! position, inserts their outbox rows and moves the position past them: a crash before the
//! commit leaves both as they were, and two tailers (say, one whose lease expired while it
//! worked) take turns on the row, the second reading the position the first wrote.
//!
//! Destinations are read from the room's *current* membership, which may be later than the
//! event. A server that joined since then receives the event too (it would have fetched it
//! anyway); a server that left since then does not, except that a membership event about a
//! remote user always goes to that user's server, so a kicked or banned server's users (or an
//! invited one) learn of it even though nobody there is joined.

use std::collections::{BTreeSet, HashMap};

use sqlx::{AnyConnection, Row};

use crate::{storage::rooms as room_store, Core, Error, Result};

/// Events read per transaction: bounds how long a round holds the tailer's row.
const EVENTS_PER_ROUND: i64 = 200;

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
struct Candidate {
    stream_pos: i64,
    event_id: String,
    room_id: String,
    sender: String,
    event_type: String,
    state_key: Option<String>,
    live: bool,
}

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

    let mut servers_of_room: HashMap<String, Vec<String>> = HashMap::new();
    let mut queued_events: Vec<(String, BTreeSet<String>)> = Vec::new();
    for event in candidates {
        if !event.live || !sent_here(core, &event.sender) {
            continue;
        }
        let destinations = destinations(core, &mut tx, &mut servers_of_room, &event).await?;
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

async fn read_events(conn: &mut AnyConnection, from: i64, upto: i64) -> Result<Vec<Candidate>> {
    let rows = sqlx::query(
        "SELECT stream_pos, event_id, room_id, sender, event_type, state_key, outlier, rejected_reason, soft_failed
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

/// The servers an event goes to: those with a joined member in its room now, plus the server
/// of a remote user whose membership it is about; never this server.
async fn destinations(
    core: &Core,
    conn: &mut AnyConnection,
    servers_of_room: &mut HashMap<String, Vec<String>>,
    event: &Candidate,
) -> Result<BTreeSet<String>> {
    if !servers_of_room.contains_key(&event.room_id) {
        let servers = room_store::servers_in_room(conn, &event.room_id).await?;
        servers_of_room.insert(event.room_id.clone(), servers);
    }
    let mut out: BTreeSet<String> = servers_of_room
        .get(&event.room_id)
        .map(|servers| servers.iter().cloned().collect())
        .unwrap_or_default();
    if event.event_type == "m.room.member" {
        if let Some(target) = event.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) {
            out.insert(target.server_name().to_string());
        }
    }
    out.remove(core.server_name.as_str());
    Ok(out)
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
