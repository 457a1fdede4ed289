//! Delayed events (MSC4140): an event a user schedules now, which this server sends as them
//! once its delay runs out, unless it is restarted (the delay counts again from now), sent at
//! once or cancelled first. Element Call schedules its "left the call" membership this way and
//! keeps restarting it, so that a client that vanishes leaves the call.
//!
//! They are rows in `delayed_events`, so they outlive a restart. A row is scheduled while its
//! `outcome` is NULL and due at `send_ts`; whoever fires it (the timer, `timer.rs` in the
//! server, or a `send` action) first claims it with one conditional UPDATE (`claimed_until`, a
//! lease), so that of several processes on one database exactly one sends it. The event goes
//! through the room writer like a client's send, with the auth rules of the moment it fires,
//! and under a transaction ID made from the `delay_id`, so that a process that died after
//! sending but before recording it cannot make the next claimant send it twice.

use serde_json::Value;

use crate::{
    events::builder::EventTemplate,
    rooms,
    util::{now_ms, random_string},
    Core, Error, Result,
};

/// The device name under which fired events are sent, with the `delay_id` as transaction ID
/// (which `client_format` shows their sender as `unsigned.org.matrix.msc4140.delay_id`).
pub const TXN_DEVICE: &str = "org.matrix.msc4140";

/// How long a claim holds before another process may take the row over (a claimant that died).
const CLAIM_MS: i64 = 60_000;

/// One delayed event, as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Delayed {
    pub delay_id: String,
    pub user_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    /// The content as the client gave it (JSON text).
    pub content: String,
    pub delay_ms: i64,
    /// When it was scheduled or last restarted.
    pub running_since: i64,
    pub send_ts: i64,
    /// NULL while scheduled; then `send`, `cancel` or `error`.
    pub outcome: Option<String>,
    pub event_id: Option<String>,
    /// The Matrix error (JSON text, `{errcode, error}`) that stopped it being sent.
    pub error: Option<String>,
    pub finalised_ts: Option<i64>,
}

const COLUMNS: &str = "delay_id, user_id, room_id, event_type, state_key, content, delay_ms, running_since, \
                       send_ts, outcome, event_id, error, finalised_ts";

/// What a client asked to schedule.
pub struct NewDelayed<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// Only the message form has one; a retry with the same one answers the first `delay_id`.
    pub txn_id: Option<&'a str>,
    pub room_id: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: &'a Value,
    pub delay_ms: i64,
}

/// Stores a delayed event and wakes the timer; answers its `delay_id`.
pub async fn schedule(core: &Core, new: NewDelayed<'_>) -> Result<String> {
    let delay_id = random_string(24);
    let now = now_ms();
    let mut tx = core.db.write().await?;
    let inserted = sqlx::query(
        "INSERT INTO delayed_events (delay_id, user_id, device_id, txn_id, room_id, event_type, state_key, content, \
         delay_ms, running_since, send_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
    )
    .bind(&delay_id)
    .bind(new.user_id)
    .bind(new.device_id)
    .bind(new.txn_id)
    .bind(new.room_id)
    .bind(new.event_type)
    .bind(new.state_key)
    .bind(new.content.to_string())
    .bind(new.delay_ms)
    .bind(now)
    .bind(now + new.delay_ms)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let delay_id = if inserted == 1 {
        delay_id
    } else {
        sqlx::query_scalar("SELECT delay_id FROM delayed_events WHERE user_id = $1 AND device_id = $2 AND txn_id = $3")
            .bind(new.user_id)
            .bind(new.device_id)
            .bind(new.txn_id)
            .fetch_one(&mut *tx)
            .await?
    };
    tx.commit().await?;
    core.delayed_wake.notify_one();
    Ok(delay_id)
}

/// How many delayed events `user_id` has scheduled, and when the next of them is due.
pub async fn scheduled_of(core: &Core, user_id: &str) -> Result<(i64, Option<i64>)> {
    let row: (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(send_ts) FROM delayed_events WHERE user_id = $1 AND outcome IS NULL")
            .bind(user_id)
            .fetch_one(core.db.pool())
            .await?;
    Ok(row)
}

/// One of `user_id`'s delayed events.
pub async fn get(core: &Core, user_id: &str, delay_id: &str) -> Result<Option<Delayed>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE delay_id = $1 AND user_id = $2"
    ))
    .bind(delay_id)
    .bind(user_id)
    .fetch_optional(core.db.pool())
    .await?)
}

/// Which of a user's delayed events to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Scheduled,
    Finalised,
}

/// Finalised events kept per user for the listing (MSC4140 suggests up to 1000 or a week).
const KEEP_FINALISED: i64 = 1000;
const KEEP_FINALISED_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// `user_id`'s delayed events, the scheduled ones by when they are due, then the finalised ones
/// by when they were finalised, newest first.
pub async fn list(core: &Core, user_id: &str, status: Option<Status>) -> Result<Vec<Delayed>> {
    let mut found = Vec::new();
    if status != Some(Status::Finalised) {
        let scheduled: Vec<Delayed> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM delayed_events WHERE user_id = $1 AND outcome IS NULL ORDER BY send_ts"
        ))
        .bind(user_id)
        .fetch_all(core.db.pool())
        .await?;
        found.extend(scheduled);
    }
    if status != Some(Status::Scheduled) {
        let finalised: Vec<Delayed> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM delayed_events WHERE user_id = $1 AND outcome IS NOT NULL AND finalised_ts > $2 \
             ORDER BY finalised_ts DESC LIMIT $3"
        ))
        .bind(user_id)
        .bind(now_ms() - KEEP_FINALISED_MS)
        .bind(KEEP_FINALISED)
        .fetch_all(core.db.pool())
        .await?;
        found.extend(finalised);
    }
    Ok(found)
}

/// The management actions (`POST .../delayed_events/{delay_id}/{action}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
    Cancel,
    Send,
}

/// What an action came to, short of an error in sending.
#[derive(Debug, PartialEq, Eq)]
pub enum Acted {
    Done,
    NotFound,
    /// The event is finalised the other way (or being sent right now): 409.
    Conflict(&'static str),
}

/// Applies `action` to the delayed event `delay_id`, whoever asks: the `delay_id` is the
/// capability (MSC4140 lets a user hand it to a service such as the SFU). An action that finds
/// the event already finalised the way it asks succeeds, so that retries are safe.
pub async fn act(core: &Core, delay_id: &str, action: Action) -> Result<Acted> {
    let now = now_ms();
    let changed = match action {
        Action::Restart => {
            let mut tx = core.db.write().await?;
            let n = sqlx::query(
                "UPDATE delayed_events SET running_since = $2, send_ts = $2 + delay_ms \
                 WHERE delay_id = $1 AND outcome IS NULL AND (claimed_until IS NULL OR claimed_until < $2)",
            )
            .bind(delay_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            n == 1
        }
        Action::Cancel => finalise_unclaimed(core, delay_id, "cancel", now).await?,
        Action::Send => match claim(core, delay_id, false).await? {
            Some(delayed) => {
                // An error answers the client and leaves the event scheduled (MSC4140), so that
                // it can be retried or fire on time once the cause is gone.
                if let Err(e) = fire(core, &delayed).await {
                    release(core, delay_id).await?;
                    return Err(e);
                }
                true
            }
            None => false,
        },
    };
    if changed {
        return Ok(Acted::Done);
    }
    let outcome: Option<(Option<String>,)> = sqlx::query_as("SELECT outcome FROM delayed_events WHERE delay_id = $1")
        .bind(delay_id)
        .fetch_optional(core.db.pool())
        .await?;
    Ok(match (outcome, action) {
        (None, _) => Acted::NotFound,
        (Some((Some(o),)), Action::Send) if o == "send" => Acted::Done,
        (Some((Some(o),)), Action::Cancel) if o != "send" => Acted::Done,
        (Some((None,)), _) => Acted::Conflict("The delayed event is being sent"),
        (Some((Some(o),)), _) if o == "send" => Acted::Conflict("The delayed event was already sent"),
        _ => Acted::Conflict("The delayed event was cancelled"),
    })
}

/// Finalises a scheduled event nobody is sending; whether it did.
async fn finalise_unclaimed(core: &Core, delay_id: &str, outcome: &str, now: i64) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let n = sqlx::query(
        "UPDATE delayed_events SET outcome = $2, finalised_ts = $3 \
         WHERE delay_id = $1 AND outcome IS NULL AND (claimed_until IS NULL OR claimed_until < $3)",
    )
    .bind(delay_id)
    .bind(outcome)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

/// Takes the right to send `delay_id` (only when due, for the timer): one conditional UPDATE,
/// so that one claimant wins however many processes try.
async fn claim(core: &Core, delay_id: &str, only_due: bool) -> Result<Option<Delayed>> {
    let now = now_ms();
    let due_before = if only_due { now } else { i64::MAX };
    let mut tx = core.db.write().await?;
    let n = sqlx::query(
        "UPDATE delayed_events SET claimed_until = $2 \
         WHERE delay_id = $1 AND outcome IS NULL AND send_ts <= $3 AND (claimed_until IS NULL OR claimed_until < $4)",
    )
    .bind(delay_id)
    .bind(now + CLAIM_MS)
    .bind(due_before)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let delayed = if n == 1 {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM delayed_events WHERE delay_id = $1"))
            .bind(delay_id)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        None
    };
    tx.commit().await?;
    Ok(delayed)
}

async fn release(core: &Core, delay_id: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query("UPDATE delayed_events SET claimed_until = NULL WHERE delay_id = $1")
        .bind(delay_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Sends a claimed event as its user through the room writer, and records it as sent.
async fn fire(core: &Core, delayed: &Delayed) -> Result<String> {
    let content: Value =
        serde_json::from_str(&delayed.content).map_err(|e| Error::Internal(format!("stored content: {e}")))?;
    let mut template = match &delayed.state_key {
        Some(key) => EventTemplate::state(&delayed.event_type, key, content),
        None => EventTemplate::message(&delayed.event_type, content),
    };
    if delayed.event_type == "m.room.redaction" {
        template.redacts = template.content["redacts"].as_str().map(str::to_owned);
    }
    let sender = ruma::UserId::parse(&delayed.user_id).map_err(|e| Error::Internal(format!("stored sender: {e}")))?;
    let txn = (delayed.user_id.as_str(), TXN_DEVICE, delayed.delay_id.as_str());
    let sent = rooms::send(core, &delayed.room_id, &sender, template, Some(txn)).await?;
    let mut tx = core.db.write().await?;
    sqlx::query(
        "UPDATE delayed_events SET outcome = 'send', event_id = $2, finalised_ts = $3, claimed_until = NULL \
         WHERE delay_id = $1",
    )
    .bind(&delayed.delay_id)
    .bind(&sent.event_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(sent.event_id)
}

/// Records why a claimed event could not be sent; it is not tried again (MSC4140).
async fn record_error(core: &Core, delay_id: &str, errcode: &str, message: &str) -> Result<()> {
    let error = serde_json::json!({ "errcode": errcode, "error": message }).to_string();
    let mut tx = core.db.write().await?;
    sqlx::query(
        "UPDATE delayed_events SET outcome = 'error', error = $2, finalised_ts = $3, claimed_until = NULL \
         WHERE delay_id = $1",
    )
    .bind(delay_id)
    .bind(error)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How many due events one pass claims; the next pass takes the rest at once.
const BATCH: i64 = 50;

/// Fires the events that are due (those this process wins the claim of). `describe` turns a
/// failure into the Matrix error recorded with the event. Answers when the next scheduled
/// event is due, if any.
pub async fn fire_due(core: &Core, describe: impl Fn(Error) -> (String, String)) -> Result<Option<i64>> {
    loop {
        let now = now_ms();
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT delay_id FROM delayed_events WHERE outcome IS NULL AND send_ts <= $1 \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY send_ts LIMIT $2",
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(core.db.pool())
        .await?;
        let batch_full = due.len() as i64 == BATCH;
        for (delay_id,) in due {
            let Some(delayed) = claim(core, &delay_id, true).await? else {
                continue;
            };
            match fire(core, &delayed).await {
                Ok(event_id) => tracing::debug!(%delay_id, %event_id, "sent a delayed event"),
                Err(Error::Database(e)) => {
                    // Not the event's fault: the claim lapses and the event is tried again.
                    tracing::warn!(%delay_id, error = %e, "cannot send a delayed event yet");
                    return Err(Error::Database(e));
                }
                Err(e) => {
                    tracing::info!(%delay_id, error = %e, "a delayed event could not be sent");
                    let (errcode, message) = describe(e);
                    record_error(core, &delay_id, &errcode, &message).await?;
                }
            }
        }
        if !batch_full {
            break;
        }
    }
    Ok(
        sqlx::query_scalar("SELECT MIN(send_ts) FROM delayed_events WHERE outcome IS NULL")
            .fetch_one(core.db.pool())
            .await?,
    )
}

/// Forgets the events finalised longer ago than the listing shows them; how many.
pub async fn forget_finalised(core: &Core) -> Result<u64> {
    let mut tx = core.db.write().await?;
    let n = sqlx::query("DELETE FROM delayed_events WHERE outcome IS NOT NULL AND finalised_ts < $1")
        .bind(now_ms() - KEEP_FINALISED_MS)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// Whether `delay_id` is a scheduled delayed event of `user_id` in `room_id`.
pub async fn is_scheduled_by(core: &Core, delay_id: &str, user_id: &str, room_id: &str) -> Result<bool> {
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT delay_id FROM delayed_events WHERE delay_id = $1 AND user_id = $2 AND room_id = $3 AND outcome IS NULL",
    )
    .bind(delay_id)
    .bind(user_id)
    .bind(room_id)
    .fetch_optional(core.db.pool())
    .await?;
    Ok(found.is_some())
}
