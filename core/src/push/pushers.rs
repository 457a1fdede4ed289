//! Pushers (where a user's notifications are sent) and the work the HTTP pusher does: which
//! notifications each pusher still has to send, and the Push Gateway API body for each.
//!
//! Each pusher remembers the `events` stream position it has been sent up to
//! (`last_stream_pos`); a sender claims a range by moving that position with a compare-and-set
//! before sending, so a restart resumes where it stopped and two processes never both send.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use super::notifications;
use crate::{rooms, storage::events, streams, util::now_ms, Core, Db, Error, Result};

/// The path every HTTP pusher URL must have (Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// A pusher exactly as its client set it (`pushkey`, `app_id`, `kind`, `data`, ...).
pub async fn list(db: &Db, user_id: &str) -> Result<Vec<Value>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT data FROM pushers WHERE user_id = $1 ORDER BY created_ts, app_id, pushkey")
            .bind(user_id)
            .fetch_all(db.pool())
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| serde_json::from_str(&r.0).ok())
        .collect())
}

fn field<'a>(pusher: &'a Value, key: &str) -> Result<&'a str> {
    pusher[key]
        .as_str()
        .ok_or_else(|| Error::BadJson(format!("Pusher field '{key}' must be a string")))
}

/// Checks what the spec and the pusher need: sizes, a supported kind, a push gateway URL.
fn validate(pusher: &Value) -> Result<()> {
    if field(pusher, "pushkey")?.len() > 512 {
        return Err(Error::InvalidParam("pushkey is longer than 512 bytes".into()));
    }
    if field(pusher, "app_id")?.len() > 64 {
        return Err(Error::InvalidParam("app_id is longer than 64 bytes".into()));
    }
    if field(pusher, "kind")? != "http" {
        return Err(Error::InvalidParam("Only 'http' pushers are supported".into()));
    }
    let url = pusher["data"]["url"]
        .as_str()
        .ok_or_else(|| Error::InvalidParam("HTTP pushers need data.url".into()))?;
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || !url.ends_with(NOTIFY_PATH) || url.contains(char::is_whitespace) {
        return Err(Error::InvalidParam(format!(
            "data.url must be an http(s) URL ending in {NOTIFY_PATH}"
        )));
    }
    Ok(())
}

/// Creates or updates a pusher. Without `append`, the same app ID and pushkey registered by
/// other users is removed (the device now belongs to this user). A new pusher starts at the
/// current stream position: it is not sent what happened before it existed.
pub async fn set(db: &Db, user_id: &str, device_id: &str, mut pusher: Value, append: bool) -> Result<()> {
    validate(&pusher)?;
    if let Some(obj) = pusher.as_object_mut() {
        obj.remove("append");
    }
    let (app_id, pushkey) = (
        field(&pusher, "app_id")?.to_owned(),
        field(&pusher, "pushkey")?.to_owned(),
    );
    let start = streams::current_pos(db, "events").await?;
    let mut tx = db.write().await?;
    sqlx::query(
        "INSERT INTO pushers (user_id, app_id, pushkey, kind, data, created_ts, last_stream_pos, device_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, data = excluded.data,
           created_ts = excluded.created_ts, device_id = excluded.device_id",
    )
    .bind(user_id)
    .bind(&app_id)
    .bind(&pushkey)
    .bind(field(&pusher, "kind")?)
    .bind(pusher.to_string())
    .bind(now_ms())
    .bind(start)
    .bind(device_id)
    .execute(&mut *tx)
    .await?;
    if !append {
        sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
            .bind(&app_id)
            .bind(&pushkey)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Removes a pusher; removing one that does not exist is not an error.
pub async fn delete(db: &Db, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
    let mut tx = db.write().await?;
    sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
        .bind(user_id)
        .bind(app_id)
        .bind(pushkey)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Identifies one pusher.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PusherKey {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
}

/// One notification one pusher still has to send.
#[derive(Clone, Debug)]
pub struct Job {
    pub pusher: PusherKey,
    /// The pusher as its client set it.
    pub pusher_json: Value,
    pub pushkey_ts_ms: i64,
    /// The pusher's position before this batch.
    pub pusher_pos: i64,
    pub room_id: String,
    pub event_id: String,
    pub stream_pos: i64,
    pub actions: Value,
}

type JobRow = (String, String, String, String, i64, i64, String, String, i64, String);

/// Up to `limit` pending notifications of HTTP pushers, oldest first, in one query.
pub async fn pending(db: &Db, limit: i64) -> Result<Vec<Job>> {
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT p.user_id, p.app_id, p.pushkey, p.data, p.created_ts, p.last_stream_pos, a.room_id, a.event_id, a.stream_pos, a.actions
         FROM pushers p JOIN event_push_actions a ON a.user_id = p.user_id AND a.stream_pos > p.last_stream_pos
         WHERE p.kind = 'http' AND a.notify = 1
         ORDER BY a.stream_pos LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Job {
            pusher: PusherKey {
                user_id: r.0,
                app_id: r.1,
                pushkey: r.2,
            },
            pusher_json: serde_json::from_str(&r.3).unwrap_or_default(),
            pushkey_ts_ms: r.4,
            pusher_pos: r.5,
            room_id: r.6,
            event_id: r.7,
            stream_pos: r.8,
            actions: serde_json::from_str(&r.9).unwrap_or_default(),
        })
        .collect())
}

/// Moves a pusher from `from` to `to`; false when someone else moved it first (or it is gone).
pub async fn claim(db: &Db, pusher: &PusherKey, from: i64, to: i64) -> Result<bool> {
    let mut tx = db.write().await?;
    let done = sqlx::query(
        "UPDATE pushers SET last_stream_pos = $1 WHERE user_id = $2 AND app_id = $3 AND pushkey = $4 AND last_stream_pos = $5",
    )
    .bind(to)
    .bind(&pusher.user_id)
    .bind(&pusher.app_id)
    .bind(&pusher.pushkey)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done == 1)
}

/// The tweaks of a rule's actions (`set_tweak` entries) as the gateway wants them.
fn tweaks(actions: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for a in actions.as_array().into_iter().flatten() {
        if let Some(name) = a["set_tweak"].as_str() {
            out.insert(name.to_owned(), a.get("value").cloned().unwrap_or(Value::Bool(true)));
        }
    }
    out
}

/// The Push Gateway API `/notify` body for one job; `None` when the event is gone.
pub async fn notify_body(core: &Core, job: &Job) -> Result<Option<Value>> {
    let mut conn = core.db.conn().await?;
    let Some(stored) = events::get(&mut conn, &job.event_id).await? else {
        return Ok(None);
    };
    let event: Value = serde_json::from_str(&stored.json).unwrap_or_default();
    let tweaks = tweaks(&job.actions);
    let high = stored.event_type == "m.room.encrypted"
        || tweaks.contains_key("sound")
        || tweaks.get("highlight") == Some(&Value::Bool(true));
    let mut data = job.pusher_json["data"].as_object().cloned().unwrap_or_default();
    data.remove("url");
    let device = json!({
        "app_id": job.pusher.app_id,
        "pushkey": job.pusher.pushkey,
        "pushkey_ts": job.pushkey_ts_ms / 1000,
        "data": data,
        "tweaks": tweaks,
    });
    let mut n = json!({
        "event_id": job.event_id,
        "room_id": job.room_id,
        "prio": if high { "high" } else { "low" },
        "counts": { "unread": notifications::unread_count(&mut conn, &job.pusher.user_id).await? },
        "devices": [device],
    });
    if job.pusher_json["data"]["format"] != "event_id_only" {
        full_fields(&mut conn, &mut n, &stored, &event, &job.pusher.user_id).await?;
    }
    Ok(Some(json!({ "notification": n })))
}

/// What the full format adds: the event's type, sender and content, names for display.
async fn full_fields(
    conn: &mut AnyConnection,
    n: &mut Value,
    stored: &events::StoredEvent,
    event: &Value,
    user_id: &str,
) -> Result<()> {
    n["type"] = json!(stored.event_type);
    n["sender"] = json!(stored.sender);
    if stored.redacted_by.is_none() {
        n["content"] = event["content"].clone();
    }
    if let Some(name) = rooms::current_state_content(conn, &stored.room_id, "m.room.name", "")
        .await?
        .and_then(|c| c["name"].as_str().map(str::to_owned))
    {
        n["room_name"] = json!(name);
    }
    if let Some(alias) = rooms::current_state_content(conn, &stored.room_id, "m.room.canonical_alias", "")
        .await?
        .and_then(|c| c["alias"].as_str().map(str::to_owned))
    {
        n["room_alias"] = json!(alias);
    }
    let sender = crate::storage::rooms::membership(conn, &stored.room_id, &stored.sender).await?;
    if let Some(name) = sender.and_then(|m| m.displayname) {
        n["sender_display_name"] = json!(name);
    }
    if stored.event_type == "m.room.member" {
        n["user_is_target"] = json!(stored.state_key.as_deref() == Some(user_id));
    }
    Ok(())
}

/// Removes the pushers a gateway said are no longer valid.
pub async fn delete_rejected(db: &Db, pusher: &PusherKey, rejected: &[String]) -> Result<bool> {
    if !rejected.contains(&pusher.pushkey) {
        return Ok(false);
    }
    delete(db, &pusher.user_id, &pusher.app_id, &pusher.pushkey).await?;
    Ok(true)
}

/// Groups jobs by pusher, keeping each pusher's jobs in stream order.
pub fn by_pusher(jobs: Vec<Job>) -> BTreeMap<PusherKey, Vec<Job>> {
    let mut out: BTreeMap<PusherKey, Vec<Job>> = BTreeMap::new();
    for job in jobs {
        out.entry(job.pusher.clone()).or_default().push(job);
    }
    out
}
