//! Delegated delayed leave events (MSC4195's `delegate_delayed_leave`): a client that joined a
//! call hands this server the `delay_id` of its delayed "left the call" event, and the server
//! restarts that event while the participant is connected to the SFU and sends it as soon as
//! the participant is gone, which is more reliable than a client's own restarts.
//!
//! Each delegation is a row (`rtc_delegations`, one per user, room, slot and member: a new
//! `delay_id` replaces the old) watched by a task of the process that took it, or of any
//! process after a restart (`resume`). The watcher asks the SFU whether the participant is
//! connected (`RoomService.GetParticipant`) every `poll_interval`. Several processes watching
//! one row do no harm: restarting twice is restarting, and a send is claimed once.

use std::time::Duration;

use super::livekit::{self, Sfu};
use crate::{
    delayed_events::{self, Action},
    util::now_ms,
    Core, Result,
};

/// What a delegation is about.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Delegation {
    pub user_id: String,
    pub room_id: String,
    pub slot_id: String,
    pub member_id: String,
    pub delay_id: String,
    pub livekit_room: String,
    pub livekit_identity: String,
}

/// How long the watcher waits for the participant to connect before leaving the event to its
/// own delay (restarting it meanwhile).
const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// How many reads in a row may fail before the watcher stops (a restart resumes it).
const MAX_FAILURES: u32 = 30;

/// How often the SFU is asked: often enough to send the leave event promptly and to restart
/// the event well within its delay.
fn poll_interval(delay_ms: i64) -> Duration {
    Duration::from_millis((delay_ms / 4).clamp(200, 5_000) as u64)
}

/// Records a delegation (replacing an earlier one for the same member) and starts watching it.
pub async fn delegate(core: &Core, sfu: &Sfu, delegation: Delegation) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query(
        "INSERT INTO rtc_delegations (user_id, room_id, slot_id, member_id, delay_id, livekit_room, \
         livekit_identity, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (user_id, room_id, slot_id, member_id) DO UPDATE SET delay_id = excluded.delay_id, \
         livekit_room = excluded.livekit_room, livekit_identity = excluded.livekit_identity, \
         created_ts = excluded.created_ts",
    )
    .bind(&delegation.user_id)
    .bind(&delegation.room_id)
    .bind(&delegation.slot_id)
    .bind(&delegation.member_id)
    .bind(&delegation.delay_id)
    .bind(&delegation.livekit_room)
    .bind(&delegation.livekit_identity)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tokio::spawn(watch(core.clone(), sfu.clone(), delegation));
    Ok(())
}

/// Starts watching every recorded delegation (at start-up).
pub async fn resume(core: &Core, sfu: &Sfu) -> Result<usize> {
    let all: Vec<Delegation> = sqlx::query_as(
        "SELECT user_id, room_id, slot_id, member_id, delay_id, livekit_room, livekit_identity FROM rtc_delegations",
    )
    .fetch_all(core.db.pool())
    .await?;
    let count = all.len();
    for delegation in all {
        tokio::spawn(watch(core.clone(), sfu.clone(), delegation));
    }
    Ok(count)
}

/// The delegated event's delay and when it last (re)started, while it is still this
/// delegation's and scheduled.
async fn still_ours(core: &Core, d: &Delegation) -> Result<Option<(i64, i64)>> {
    let current: Option<(String,)> = sqlx::query_as(
        "SELECT delay_id FROM rtc_delegations WHERE user_id = $1 AND room_id = $2 AND slot_id = $3 AND member_id = $4",
    )
    .bind(&d.user_id)
    .bind(&d.room_id)
    .bind(&d.slot_id)
    .bind(&d.member_id)
    .fetch_optional(core.db.pool())
    .await?;
    if current.map(|(id,)| id) != Some(d.delay_id.clone()) {
        return Ok(None);
    }
    let scheduled: Option<(i64, i64)> =
        sqlx::query_as("SELECT delay_ms, running_since FROM delayed_events WHERE delay_id = $1 AND outcome IS NULL")
            .bind(&d.delay_id)
            .fetch_optional(core.db.pool())
            .await?;
    Ok(scheduled)
}

async fn forget(core: &Core, d: &Delegation) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query("DELETE FROM rtc_delegations WHERE delay_id = $1")
        .bind(&d.delay_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Watches one delegation until its event is sent, finalised otherwise, or replaced.
async fn watch(core: Core, sfu: Sfu, d: Delegation) {
    let http = super::sfu_http();
    let started = now_ms();
    let mut seen = false;
    let mut failures = 0;
    loop {
        let (delay_ms, running_since) = match still_ours(&core, &d).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                let _ = forget(&core, &d).await;
                return;
            }
            Err(e) => {
                // The database away (or this server shut down): the row stays for `resume`.
                failures += 1;
                if failures > MAX_FAILURES {
                    return;
                }
                tracing::warn!(error = %e, delay_id = %d.delay_id, "cannot read a delegated leave event");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures = 0;
        let connected = livekit::is_connected(http, &sfu, &d.livekit_room, &d.livekit_identity).await;
        let waited = Duration::from_millis((now_ms() - started).max(0) as u64);
        let restart_due = now_ms() - running_since > delay_ms / 3;
        match connected {
            Ok(true) => {
                seen = true;
                if restart_due {
                    let _ = delayed_events::act(&core, &d.delay_id, Action::Restart).await;
                }
            }
            Ok(false) if seen => {
                tracing::debug!(delay_id = %d.delay_id, "participant left the SFU: sending its leave event");
                if let Err(e) = delayed_events::act(&core, &d.delay_id, Action::Send).await {
                    tracing::info!(error = %e, delay_id = %d.delay_id, "a delegated leave event could not be sent");
                }
                let _ = forget(&core, &d).await;
                return;
            }
            Ok(false) if waited < CONNECT_WAIT => {
                if restart_due {
                    let _ = delayed_events::act(&core, &d.delay_id, Action::Restart).await;
                }
            }
            Ok(false) => {
                // Never connected: the event is left to its own delay.
                let _ = forget(&core, &d).await;
                return;
            }
            Err(e) => {
                // Without an answer, nothing says the participant is still there: the event is
                // not restarted, so it fires on its delay if the SFU stays away.
                tracing::info!(error = %e, "cannot ask the SFU about a participant");
            }
        }
        tokio::time::sleep(poll_interval(delay_ms)).await;
    }
}
