//! Presence: online / unavailable / offline with a status message, on the `presence` stream.
//! Activity (requests, syncs) keeps a user online; a user idle for `IDLE_MS` reads as
//! unavailable and one not seen for `OFFLINE_MS` as offline.

use sqlx::AnyConnection;

use crate::{streams, util::now_ms, Core, Result};

const IDLE_MS: i64 = 5 * 60 * 1000;
const OFFLINE_MS: i64 = 30 * 60 * 1000;
/// Activity is written at most this often per user; presence is advisory.
const WRITE_INTERVAL_MS: i64 = 60 * 1000;

#[derive(Clone, Debug)]
pub struct Presence {
    pub user_id: String,
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
}

impl Presence {
    /// The state as others should see it now, decaying with inactivity.
    pub fn effective_state(&self) -> &str {
        let idle = now_ms() - self.last_active_ts;
        match self.state.as_str() {
            "online" if idle > OFFLINE_MS => "offline",
            "online" if idle > IDLE_MS => "unavailable",
            s => s,
        }
    }

    pub fn to_event(&self) -> serde_json::Value {
        let state = self.effective_state();
        let mut content = serde_json::json!({
            "presence": state,
            "last_active_ago": (now_ms() - self.last_active_ts).max(0),
            "currently_active": state == "online",
        });
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = serde_json::json!(msg);
        }
        serde_json::json!({ "type": "m.presence", "sender": self.user_id, "content": content })
    }

    /// The user's entry in an `m.presence` EDU's `push` list.
    pub fn to_edu_entry(&self) -> serde_json::Value {
        let mut entry = self.to_event()["content"].take();
        entry["user_id"] = serde_json::json!(self.user_id);
        entry
    }
    /// The event as the deprecated `/initialSync` and `/events` carry it: with the user also
    /// in the content, where clients of those endpoints read it.
    pub fn to_legacy_event(&self) -> serde_json::Value {
        let mut event = self.to_event();
        event["content"]["user_id"] = serde_json::json!(self.user_id);
        if event["content"].get("status_msg").is_none() {
            event["content"]["status_msg"] = serde_json::Value::Null;
        }
        event
    }
}

type Row = (String, String, Option<String>, i64);

/// The presence of each of `users`, `offline` for those who never set one.
pub async fn states_of(conn: &mut AnyConnection, users: &[String]) -> Result<Vec<Presence>> {
    let mut out = Vec::with_capacity(users.len());
    for user_id in users {
        out.push(get(conn, user_id).await?.unwrap_or_else(|| Presence {
            user_id: user_id.clone(),
            state: "offline".into(),
            status_msg: None,
            last_active_ts: 0,
        }));
    }
    Ok(out)
}

pub async fn get(conn: &mut AnyConnection, user_id: &str) -> Result<Option<Presence>> {
    let row: Option<Row> =
        sqlx::query_as("SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|r| Presence {
        user_id: r.0,
        state: r.1,
        status_msg: r.2,
        last_active_ts: r.3,
    }))
}

/// Sets a user's presence (`status_msg: None` keeps the current message).
pub async fn set(core: &Core, user_id: &str, state: &str, status_msg: Option<Option<&str>>) -> Result<()> {
    let now = now_ms();
    // Every sync calls this to mark activity; a row seen moments ago is enough to tell that
    // nothing needs writing. What to write is always decided on a fresh read, so a message
    // set meanwhile by another process is never written back over.
    if core
        .memos
        .presence
        .fresh(user_id)
        .is_some_and(|p| needs_no_write(&p, state, status_msg, now))
    {
        return Ok(());
    }
    let mut conn = core.db.conn().await?;
    let current = get(&mut conn, user_id).await?;
    drop(conn);
    if let Some(p) = &current {
        core.memos.presence.set(user_id.to_owned(), (p.clone(), now));
        if needs_no_write(p, state, status_msg, now) {
            return Ok(());
        }
    }
    let msg = match status_msg {
        Some(m) => m.map(str::to_owned),
        None => current.and_then(|c| c.status_msg),
    };
    let written = Presence {
        user_id: user_id.to_owned(),
        state: state.to_owned(),
        status_msg: msg,
        last_active_ts: now,
    };
    store(core, &written).await?;
    core.memos.presence.set(user_id.to_owned(), (written.clone(), now));
    // Other servers sharing a room with the user learn it too; they decay it from
    // `last_active_ago` as this server does.
    let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": [written.to_edu_entry()] } });
    crate::outbox::enqueue_for_users_servers(core, user_id, &edu).await
}

/// Applies the presence another server sent about one of its users (the caller checked that
/// the user is the origin's and shares a room with a local user). `last_active_ago` is turned
/// into a time here, so the state decays as a local user's does.
pub async fn apply_remote(
    core: &Core,
    user_id: &str,
    state: &str,
    status_msg: Option<&str>,
    last_active_ago: i64,
) -> Result<()> {
    let presence = Presence {
        user_id: user_id.to_owned(),
        state: state.to_owned(),
        status_msg: status_msg.map(str::to_owned),
        last_active_ts: now_ms() - last_active_ago.max(0),
    };
    store(core, &presence).await
}

/// Writes `presence` at a new position of the `presence` stream and wakes the syncs of
/// everyone sharing a room with its user.
async fn store(core: &Core, presence: &Presence) -> Result<()> {
    let mut tx = core.db.write().await?;
    let pos = streams::next_pos(&mut tx, "presence").await?;
    sqlx::query(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_pos) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
           last_active_ts = excluded.last_active_ts, stream_pos = excluded.stream_pos",
    )
    .bind(&presence.user_id)
    .bind(&presence.state)
    .bind(&presence.status_msg)
    .bind(presence.last_active_ts)
    .bind(pos)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    core.notifier.user_changed(&presence.user_id);
    // Everyone sharing a room with the user may be waiting for this.
    let mut conn = core.db.conn().await?;
    for peer in users_sharing_rooms(&mut conn, &presence.user_id).await? {
        core.notifier.user_changed(&peer);
    }
    Ok(())
}

/// Whether `current` already says what a `set` would write: same state and message, and
/// activity recent enough.
fn needs_no_write(current: &Presence, state: &str, status_msg: Option<Option<&str>>, now: i64) -> bool {
    let msg = status_msg.unwrap_or(current.status_msg.as_deref());
    current.state == state && current.status_msg.as_deref() == msg && now - current.last_active_ts < WRITE_INTERVAL_MS
}

/// Users who share at least one joined room with `user_id` (including the user).
pub async fn users_sharing_rooms(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON a.room_id = b.room_id
         WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Presence changes in `(since, until]` of the user and of users sharing a room with them.
pub async fn changes_for(conn: &mut AnyConnection, user_id: &str, since: i64, until: i64) -> Result<Vec<Presence>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence p
         WHERE p.stream_pos > $2 AND p.stream_pos <= $3 AND (p.user_id = $1 OR p.user_id IN (
             SELECT b.user_id FROM room_memberships a JOIN room_memberships b ON a.room_id = b.room_id
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'))
         ORDER BY p.stream_pos",
    )
    .bind(user_id)
    .bind(since)
    .bind(until)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The presence of users the user newly shares a room with: those who joined one of the
/// user's rooms, and the members of rooms the user joined, with a membership event between
/// the `events` stream positions `since` and `until`. A sync reports them whether or not their
/// presence changed, since the user had not seen it.
pub async fn of_new_room_mates(
    conn: &mut AnyConnection,
    user_id: &str,
    since: i64,
    until: i64,
) -> Result<Vec<Presence>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence p
         WHERE p.user_id <> $1 AND p.user_id IN (
             SELECT b.user_id FROM room_memberships a JOIN room_memberships b ON a.room_id = b.room_id
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'
               AND ((b.stream_pos > $2 AND b.stream_pos <= $3) OR (a.stream_pos > $2 AND a.stream_pos <= $3)))
         ORDER BY p.stream_pos",
    )
    .bind(user_id)
    .bind(since)
    .bind(until)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

fn from_row(r: Row) -> Presence {
    Presence {
        user_id: r.0,
        state: r.1,
        status_msg: r.2,
        last_active_ts: r.3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(msg: Option<&str>, active_ago: i64, now: i64) -> Presence {
        Presence {
            user_id: "@a:x".into(),
            state: "online".into(),
            status_msg: msg.map(str::to_owned),
            last_active_ts: now - active_ago,
        }
    }

    #[test]
    fn only_an_identical_recent_presence_skips_the_write() {
        let now = 1_000_000_000;
        let seen = online(Some("lunch"), 1_000, now);
        // A sync's activity keeps the message: nothing to write.
        assert!(needs_no_write(&seen, "online", None, now));
        assert!(needs_no_write(&seen, "online", Some(Some("lunch")), now));
        // Another state, another or a cleared message, or old activity: write.
        assert!(!needs_no_write(&seen, "unavailable", None, now));
        assert!(!needs_no_write(&seen, "online", Some(Some("back")), now));
        assert!(!needs_no_write(&seen, "online", Some(None), now));
        assert!(!needs_no_write(
            &online(None, WRITE_INTERVAL_MS, now),
            "online",
            None,
            now
        ));
    }
}
