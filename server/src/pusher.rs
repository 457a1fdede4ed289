//! The HTTP pusher: sends each new notification (`event_push_actions` rows with notify) to the
//! user's HTTP pushers over the Push Gateway API.
//!
//! One background task polls for pending notifications whenever the notifier ticks, which
//! changes made by other processes on the same database do too (`notifier::relay`). For each
//! pusher it claims the batch in the database first (see `weft_core::push::pushers`), so a
//! restart or a second process does not send it again, then sends it in a task of its own so
//! a slow gateway delays only its own pusher. Failed requests are retried with exponential
//! backoff a few times and then dropped; a gateway that rejects a pushkey gets that pusher
//! deleted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    sync::{watch, Mutex},
    task::{JoinHandle, JoinSet},
};
use weft_core::push::pushers::{self, Job, PusherKey};

use crate::state::AppState;

/// How many pending notifications one poll reads.
const BATCH: i64 = 100;
/// How long a failed poll waits before trying again.
const RETRY: Duration = Duration::from_secs(5);
/// How long a tick waits for more before polling: the most a notification is delayed.
const COALESCE: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// How long a stopping pusher lets the sends it started finish: their batches are claimed, so
/// one cut short would not be sent again.
const DRAIN: Duration = Duration::from_secs(10);

/// Starts the pusher; it ends when `stop` turns true (or its sender goes away), once the sends
/// in flight have finished (within `DRAIN`).
pub fn spawn(state: AppState, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sends = JoinSet::new();
        run(state, stop, &mut sends).await;
        if !sends.is_empty() && tokio::time::timeout(DRAIN, sends.join_all()).await.is_err() {
            tracing::warn!("pusher: sends still in flight at shutdown were abandoned");
        }
    })
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(state: AppState, mut stop: watch::Receiver<bool>, sends: &mut JoinSet<()>) {
    let builder = state.extra_roots.iter().fold(reqwest::Client::builder(), |b, root| {
        b.add_root_certificate(root.clone())
    });
    let client = match builder.timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; pushers are disabled");
            return;
        }
    };
    let mut tick = state.core.notifier.subscribe();
    let mut locks: HashMap<PusherKey, Arc<Mutex<()>>> = HashMap::new();
    loop {
        while sends.try_join_next().is_some() {}
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        let polled = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = round(&state, &client, sends, &mut locks) => r,
        };
        match polled {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                // No tick may come for what is already pending: try again by itself.
                tracing::warn!(error = %e, "pusher poll failed");
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            changed = tick.changed() => {
                if changed.is_err() {
                    return; // the notifier is gone, and with it the server
                }
                // Every commit ticks; one poll per `COALESCE` serves all the changes of a busy
                // moment instead of one query per event.
                tokio::time::sleep(COALESCE).await;
            }
        }
    }
}

/// Claims and starts sending what is pending; true when a full batch was read (more may wait).
async fn round(
    state: &AppState,
    client: &reqwest::Client,
    sends: &mut JoinSet<()>,
    locks: &mut HashMap<PusherKey, Arc<Mutex<()>>>,
) -> weft_core::Result<bool> {
    let jobs = pushers::pending(&state.db, BATCH).await?;
    let more = jobs.len() as i64 == BATCH;
    for (key, jobs) in pushers::by_pusher(jobs) {
        let (Some(first), Some(last)) = (jobs.first(), jobs.last()) else {
            continue;
        };
        if !pushers::claim(&state.db, &key, first.pusher_pos, last.stream_pos).await? {
            continue; // another process took it
        }
        // One pusher's batches go out in order, one at a time.
        let lock = locks.entry(key).or_default().clone();
        let (state, client) = (state.clone(), client.clone());
        sends.spawn(async move {
            let _turn = lock.lock().await;
            send_batch(&state, &client, jobs).await;
        });
    }
    Ok(more)
}

/// Sends one pusher's claimed notifications. After one fails for good the rest of the batch is
/// dropped too: the gateway is down and the claim already moved past them.
async fn send_batch(state: &AppState, client: &reqwest::Client, jobs: Vec<Job>) {
    for job in &jobs {
        let Some(url) = job.pusher_json["data"]["url"].as_str() else {
            return;
        };
        let body = match pushers::notify_body(&state.core, job).await {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, event_id = %job.event_id, "cannot build push notification");
                continue;
            }
        };
        let Some(rejected) = send_with_retry(client, url, &body).await else {
            return;
        };
        match pushers::delete_rejected(&state.db, &job.pusher, &rejected).await {
            Ok(true) => {
                tracing::info!(user_id = %job.pusher.user_id, app_id = %job.pusher.app_id, "push gateway rejected pushkey; pusher removed");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove rejected pusher"),
        }
    }
}

/// POSTs the notification, retrying transient failures with exponential backoff. Returns the
/// gateway's `rejected` pushkeys, or `None` when it could not be delivered.
async fn send_with_retry(client: &reqwest::Client, url: &str, body: &Value) -> Option<Vec<String>> {
    let mut delay = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(body).send().await {
            Ok(res) if res.status().is_success() => {
                let answer: Value = res.json().await.unwrap_or_default();
                let rejected = answer["rejected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(str::to_owned));
                return Some(rejected.collect());
            }
            Ok(res) if res.status().is_client_error() && res.status() != reqwest::StatusCode::TOO_MANY_REQUESTS => {
                // The gateway refuses this request as such; sending it again will not help.
                tracing::warn!(%url, status = %res.status(), "push gateway refused notification");
                return None;
            }
            Ok(res) => tracing::debug!(%url, status = %res.status(), attempt, "push gateway failed"),
            Err(e) => tracing::debug!(%url, error = %e, attempt, "push gateway unreachable"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::warn!(%url, "push notification dropped after {ATTEMPTS} attempts");
    None
}
