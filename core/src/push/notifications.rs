//! `/notifications`: the events that notified a user, newest first, with whether they have
//! been read; and the unread count a push gateway is told.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::AnyConnection;

use crate::{
    ephemeral::receipts,
    rooms::{
        client_format::{self, Viewer},
        visibility,
    },
    storage::events,
    Core, Error, Result,
};

#[derive(Clone, Debug)]
pub struct Notification {
    pub actions: Value,
    /// The event in client format.
    pub event: Value,
    pub read: bool,
    pub room_id: String,
    pub ts: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Page {
    pub notifications: Vec<Notification>,
    /// Where the next (older) page starts; `None` at the end.
    pub next_token: Option<String>,
}

pub struct Query<'a> {
    pub user_id: &'a str,
    pub device_id: Option<&'a str>,
    /// A `next_token` from an earlier page.
    pub from: Option<&'a str>,
    pub limit: usize,
    pub only_highlight: bool,
}

type Row = (String, String, i64, String, i64);

/// One page of the user's notifications. Every stored row notified when it was stored (only
/// notifying outcomes are stored); `notify` may since have been cleared by a later join, which
/// only stops it counting as unread.
pub async fn list(core: &Core, q: &Query<'_>) -> Result<Page> {
    let before = match q.from {
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| Error::InvalidParam("Invalid 'from' token".into()))?,
        None => i64::MAX,
    };
    let mut conn = core.db.conn().await?;
    let highlight_only = if q.only_highlight { "AND highlight = 1" } else { "" };
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT room_id, event_id, stream_pos, actions, ts FROM event_push_actions
         WHERE user_id = $1 AND stream_pos < $2 {highlight_only}
         ORDER BY stream_pos DESC LIMIT $3"
    ))
    .bind(q.user_id)
    .bind(before)
    .bind(q.limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    let next_token = (rows.len() == q.limit)
        .then(|| rows.last().map(|r| r.2.to_string()))
        .flatten();

    let ids: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    let mut stored: HashMap<String, events::StoredEvent> = events::get_many(&mut conn, &ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let mut read_pos: HashMap<String, i64> = HashMap::new();
    let viewer = Viewer {
        user_id: q.user_id,
        device_id: q.device_id,
    };
    let mut notifications = Vec::with_capacity(rows.len());
    for (room_id, event_id, pos, actions, ts) in rows {
        let Some(event) = stored.remove(&event_id) else {
            continue;
        };
        let Some(event) = visible(core, &mut conn, q.user_id, &room_id, event).await? else {
            continue;
        };
        if !read_pos.contains_key(&room_id) {
            read_pos.insert(
                room_id.clone(),
                receipts::read_up_to(&mut conn, &room_id, q.user_id).await?,
            );
        }
        let event = client_format::format(core, &mut conn, std::slice::from_ref(&event), Some(viewer))
            .await?
            .pop()
            .unwrap_or_default();
        notifications.push(Notification {
            actions: serde_json::from_str(&actions).unwrap_or_else(|_| Value::Array(Vec::new())),
            event,
            read: pos <= read_pos[&room_id],
            room_id,
            ts,
        });
    }
    Ok(Page {
        notifications,
        next_token,
    })
}

async fn visible(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    event: events::StoredEvent,
) -> Result<Option<events::StoredEvent>> {
    Ok(visibility::filter_visible(core, conn, user, room_id, vec![event])
        .await?
        .pop())
}

/// The number of unread notifying events across all the user's rooms (each room counted from
/// the user's read receipt there), as push gateways show it as a badge.
pub async fn unread_count(conn: &mut AnyConnection, user_id: &str) -> Result<i64> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM event_push_actions a
         WHERE a.user_id = $1 AND a.notify = 1 AND a.stream_pos > COALESCE((
           SELECT MAX(r.event_stream_pos) FROM receipts r
           WHERE r.room_id = a.room_id AND r.user_id = a.user_id AND r.receipt_type IN ('m.read', 'm.read.private')
         ), 0)",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(count)
}
