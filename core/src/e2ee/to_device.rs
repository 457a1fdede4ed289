//! Send-to-device messages: stored per recipient device at a position of the `to_device`
//! stream, delivered by sync in order, and deleted only once a later sync's `since` token shows
//! the device received them.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use crate::{
    streams,
    util::{now_ms, random_string},
    Core, Result,
};

/// How long a received `m.direct_to_device`'s (origin, message ID) is remembered.
const INBOUND_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where one message goes: one device, or every device of the user (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Device(String),
    AllDevices,
}

/// One `/sendToDevice`: `(recipient user, target, content)`.
pub struct Send<'a> {
    pub sender: &'a str,
    pub sender_device: &'a str,
    pub txn_id: &'a str,
    pub event_type: &'a str,
    pub messages: Vec<(String, Target, Value)>,
}

/// Stores the messages of one send, once per (sender device, txn ID); returns whether this
/// call stored them (false for a retried transaction). Messages to other servers' users go
/// into one `m.direct_to_device` EDU per server, queued in the same transaction (their
/// servers deliver them); local devices that do not exist are skipped.
pub async fn send(core: &Core, send: &Send<'_>) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let fresh = sqlx::query(
        "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
    )
    .bind(send.sender)
    .bind(send.sender_device)
    .bind(send.txn_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        tx.commit().await?;
        return Ok(false);
    }
    let local_suffix = format!(":{}", core.server_name);
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut local = Vec::new();
    for (user, target, content) in &send.messages {
        if user.ends_with(&local_suffix) {
            local.push((user.clone(), target.clone(), content.clone()));
            continue;
        }
        let Some((_, server)) = user.split_once(':') else {
            continue;
        };
        let device = match target {
            Target::Device(d) => d.as_str(),
            Target::AllDevices => "*",
        };
        let per_user = remote.entry(server.to_owned()).or_default();
        let devices = per_user.entry(user.clone()).or_insert_with(|| json!({}));
        devices[device] = content.clone();
    }
    let users = deliver(&mut tx, send.sender, send.event_type, &local).await?;
    for (server, messages) in &remote {
        let edu = json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": send.sender,
                "type": send.event_type,
                "message_id": random_string(24),
                "messages": messages,
            },
        });
        crate::outbox::enqueue_edu(&mut tx, server, &edu).await?;
    }
    tx.commit().await?;
    for user in &users {
        core.notifier.user_changed(user);
    }
    if !remote.is_empty() {
        // Ticks the federation sender.
        core.notifier.user_changed(send.sender);
    }
    Ok(true)
}

/// Delivers an `m.direct_to_device` EDU from `origin` to local devices (other servers' users
/// in it are skipped), once per (origin, message ID); returns whether this call delivered it.
pub async fn receive(
    core: &Core,
    origin: &str,
    message_id: &str,
    sender: &str,
    event_type: &str,
    messages: &[(String, Target, Value)],
) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let fresh = sqlx::query(
        "INSERT INTO to_device_inbound (origin, message_id, received_ts) VALUES ($1, $2, $3)
         ON CONFLICT (origin, message_id) DO NOTHING",
    )
    .bind(origin)
    .bind(message_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        tx.commit().await?;
        return Ok(false);
    }
    // A sender retries a transaction for a day at most (its backoff's cap); a week is ample.
    sqlx::query("DELETE FROM to_device_inbound WHERE received_ts < $1")
        .bind(now_ms() - INBOUND_KEEP_MS)
        .execute(&mut *tx)
        .await?;
    let local_suffix = format!(":{}", core.server_name);
    let local: Vec<_> = messages
        .iter()
        .filter(|(user, _, _)| user.ends_with(&local_suffix))
        .cloned()
        .collect();
    let users = deliver(&mut tx, sender, event_type, &local).await?;
    tx.commit().await?;
    for user in &users {
        core.notifier.user_changed(user);
    }
    Ok(true)
}

/// Stores messages for local devices at one new position of the `to_device` stream (taken
/// last, see streams.rs); returns the users who got some.
async fn deliver(
    conn: &mut AnyConnection,
    sender: &str,
    event_type: &str,
    messages: &[(String, Target, Value)],
) -> Result<Vec<String>> {
    let mut deliveries = Vec::new();
    for (user, target, content) in messages {
        for device in target_devices(&mut *conn, user, target).await? {
            deliveries.push((user.as_str(), device, content));
        }
    }
    if !deliveries.is_empty() {
        let pos = streams::next_pos(&mut *conn, "to_device").await?;
        for (seq, (user, device, content)) in deliveries.iter().enumerate() {
            sqlx::query(
                "INSERT INTO to_device_messages (recipient_user, recipient_device, stream_pos, seq, sender, event_type, content)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(*user)
            .bind(device)
            .bind(pos)
            .bind(seq as i64)
            .bind(sender)
            .bind(event_type)
            .bind(content.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    let mut users: Vec<String> = deliveries.iter().map(|d| d.0.to_owned()).collect();
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

async fn target_devices(conn: &mut AnyConnection, user_id: &str, target: &Target) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = match target {
        Target::AllDevices => {
            sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id")
                .bind(user_id)
                .fetch_all(conn)
                .await?
        }
        Target::Device(d) => {
            sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(d)
                .fetch_all(conn)
                .await?
        }
    };
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A stored message with its position.
#[derive(Clone, Debug)]
pub struct Message {
    pub stream_pos: i64,
    pub event: Value,
}

/// The device's undelivered-or-unacknowledged messages in `(after, up_to]`, oldest first, at
/// most `limit`.
pub async fn pending(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    after: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<Message>> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT stream_pos, sender, event_type, content FROM to_device_messages
         WHERE recipient_user = $1 AND recipient_device = $2 AND stream_pos > $3 AND stream_pos <= $4
         ORDER BY stream_pos, seq LIMIT $5",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(pos, sender, kind, content)| Message {
            stream_pos: pos,
            event: json!({ "sender": sender, "type": kind, "content": serde_json::from_str::<Value>(&content).unwrap_or_default() }),
        })
        .collect())
}

/// Deletes the device's messages at or below `up_to`: the client has shown it received them.
/// Reads first, so that a sync with nothing to acknowledge takes no write lock.
pub async fn acknowledge(core: &Core, user_id: &str, device_id: &str, up_to: i64) -> Result<()> {
    // Most syncs acknowledge what an earlier one already did.
    let key = (user_id.to_owned(), device_id.to_owned());
    let acked = core.memos.to_device_acked.get(&key);
    if acked.is_some_and(|a| a >= up_to) {
        return Ok(());
    }
    let mut conn = core.db.conn().await?;
    let any: Option<(i64,)> = sqlx::query_as(
        "SELECT stream_pos FROM to_device_messages WHERE recipient_user = $1 AND recipient_device = $2 AND stream_pos <= $3 LIMIT 1",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(up_to)
    .fetch_optional(&mut *conn)
    .await?;
    drop(conn);
    if any.is_some() {
        let mut tx = core.db.write().await?;
        sqlx::query(
            "DELETE FROM to_device_messages WHERE recipient_user = $1 AND recipient_device = $2 AND stream_pos <= $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(up_to)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    core.memos.to_device_acked.set(key, up_to.max(acked.unwrap_or(0)));
    Ok(())
}

/// The `to_device` events of a sync: every message not yet acknowledged up to `now`. All of
/// them, since the sync token's to_device position (which acknowledges them) is `now`.
pub async fn for_sync(core: &Core, user_id: &str, device_id: &str, now: i64) -> Result<Vec<Value>> {
    let mut conn = core.db.conn().await?;
    Ok(pending(&mut conn, user_id, device_id, 0, now, i64::MAX)
        .await?
        .into_iter()
        .map(|m| m.event)
        .collect())
}
