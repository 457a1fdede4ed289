//! The appservice sender: delivers what the tailer queued for each appservice as
//! `PUT /_matrix/app/v1/transactions/{txnId}` with its `hs_token`.
//!
//! It works like federation's sender (`weft_federation::sender`), on the same outbox: one loop
//! per process, woken by the notifier and at least every `POLL`, that tails if it holds the
//! tailer's lease and starts a task per appservice with queued rows, out of backoff and whose
//! lease it gets. Each appservice has its own task (a dead one never delays the others) with
//! one transaction in flight, pinned in the outbox until acknowledged: resent after a failure
//! or a restart, it is the same rows under the same transaction ID, which the appservice
//! deduplicates. A failure of any kind is retried with backoff (as Synapse does: an appservice
//! that refuses a transaction is expected to be fixed, not skipped).

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{http_client, AppService};
use crate::{
    outbox::{self, lease, Backoff},
    rooms::client_format,
    storage::events,
    util, Core, Result,
};

/// The tailer's lease.
pub const TAIL_LEASE: &str = "appservice_tail";
/// Longest wait between two looks when nothing wakes the loop.
const POLL: Duration = Duration::from_secs(5);
const LEASE_TTL: Duration = Duration::from_secs(30);
/// Appservices run next to the server: retried soon, and never left for long (Synapse's cap
/// is about as long).
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
};
/// How long one transaction may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The lease of an appservice's sender.
pub fn destination_lease(destination: &str) -> String {
    format!("appservice_destination:{destination}")
}

/// Starts the sender; it runs until `stop` turns true, then releases its leases and ends.
/// `holder` names this process to the leases (see `weft_federation::sender::SenderConfig`).
pub fn spawn(core: Core, holder: Option<String>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let holder = holder.map_or_else(|| util::random_string(24), |h| format!("{h}/appservices"));
    tokio::spawn(run(Arc::new(Shared { core, holder }), stop))
}

struct Shared {
    core: Core,
    holder: String,
}

impl Shared {
    async fn acquire(&self, name: &str) -> Result<bool> {
        lease::try_acquire(&self.core, name, &self.holder, LEASE_TTL).await
    }
}

fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut wake = shared.core.notifier.subscribe();
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tail_lease: (bool, Option<Instant>) = (false, None);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    while !is_stopped(&stop) {
        if let Err(e) = round(&shared, &mut tail_lease, &mut tasks, &stop, &done_tx).await {
            tracing::warn!("appservice sender: {e}");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = wake.changed() => {}
            Some(()) = done_rx.recv() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        while done_rx.try_recv().is_ok() {}
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
    if tail_lease.0 {
        let _ = lease::release(&shared.core, TAIL_LEASE, &shared.holder).await;
    }
}

async fn round(
    shared: &Arc<Shared>,
    tail_lease: &mut (bool, Option<Instant>),
    tasks: &mut HashMap<String, JoinHandle<()>>,
    stop: &watch::Receiver<bool>,
    done: &tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<()> {
    if tail_lease.1.is_none_or(|t| t.elapsed() >= LEASE_TTL / 3) {
        tail_lease.1 = Some(Instant::now());
        tail_lease.0 = false;
        tail_lease.0 = shared.acquire(TAIL_LEASE).await?;
    }
    if tail_lease.0 {
        super::tail(&shared.core).await?;
    }
    tasks.retain(|_, task| !task.is_finished());
    let registry = shared.core.appservices.clone();
    for destination in outbox::destinations::ready_appservices(&shared.core, util::now_ms()).await? {
        if tasks.contains_key(&destination) || is_stopped(stop) {
            continue;
        }
        let Some(service) = registry.by_destination(&destination).cloned() else {
            continue;
        };
        if service.url.is_none() || !shared.acquire(&destination_lease(&destination)).await? {
            continue;
        }
        let task = tokio::spawn(send_to(shared.clone(), service, stop.clone(), done.clone()));
        tasks.insert(destination, task);
    }
    Ok(())
}

async fn send_to(
    shared: Arc<Shared>,
    service: Arc<AppService>,
    stop: watch::Receiver<bool>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let lease_name = destination_lease(&service.destination);
    if let Err(e) = send_all(&shared, &service, &lease_name, stop).await {
        tracing::warn!(appservice = %service.id, "appservice sender: {e}");
    }
    let _ = lease::release(&shared.core, &lease_name, &shared.holder).await;
    let _ = done.send(());
}

/// Sends the appservice's batches one after the other until its queue is empty, a send fails,
/// the lease is lost or the sender stops.
async fn send_all(
    shared: &Shared,
    service: &AppService,
    lease_name: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let core = &shared.core;
    let destination = service.destination.as_str();
    let mut renewed = Instant::now();
    while !is_stopped(&stop) {
        let Some(batch) = outbox::next_batch(core, destination).await? else {
            return Ok(());
        };
        let txn_id = batch.txn_id();
        let body = transaction_body(core, service, &batch).await?;
        let send = send_transaction(service, &txn_id, &body);
        // A stop abandons the send: the batch stays pinned and goes again after the restart.
        let result = tokio::select! {
            result = send => result,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match result {
            Ok(()) => outbox::ack(core, destination, batch.last_pos).await?,
            Err(e) => {
                let retry = outbox::record_failure_with(core, destination, &e, &BACKOFF).await?;
                tracing::warn!(
                    appservice = %service.id,
                    txn_id,
                    failures = retry.retry_count,
                    "appservice: sending transaction failed: {e}; next attempt in {:.1}s",
                    (retry.retry_after_ts - util::now_ms()).max(0) as f64 / 1000.0,
                );
                return Ok(());
            }
        }
        if renewed.elapsed() >= LEASE_TTL / 3 {
            if !shared.acquire(lease_name).await? {
                return Ok(());
            }
            renewed = Instant::now();
        }
    }
    Ok(())
}

/// The transaction's body: its events in client format, in order, and (when the registration
/// asks) its ephemeral events and to-device messages, under the stable and MSC2409 names.
async fn transaction_body(core: &Core, service: &AppService, batch: &outbox::Batch) -> Result<Value> {
    let stored = {
        let mut conn = core.db.conn().await?;
        let mut found = events::get_many(&mut conn, &batch.pdu_ids).await?;
        // In the batch's order, which is the order the events were committed here.
        found.sort_by_key(|e| batch.pdu_ids.iter().position(|id| *id == e.event_id));
        client_format::format(core, &mut conn, &found, None).await?
    };
    let (mut ephemeral, mut to_device) = (Vec::new(), Vec::new());
    for edu in &batch.edus {
        let Ok(edu) = serde_json::from_str::<Value>(edu.get()) else {
            continue;
        };
        match edu["edu_type"].as_str() {
            Some("ephemeral") => ephemeral.push(edu["content"].clone()),
            Some("to_device") => to_device.push(edu["content"].clone()),
            _ => {}
        }
    }
    let mut body = json!({ "events": stored });
    if service.receive_ephemeral {
        body["ephemeral"] = json!(ephemeral);
        body["de.sorunome.msc2409.ephemeral"] = json!(ephemeral);
        body["to_device"] = json!(to_device);
        body["de.sorunome.msc2409.to_device"] = json!(to_device);
    }
    Ok(body)
}

async fn send_transaction(service: &AppService, txn_id: &str, body: &Value) -> std::result::Result<(), String> {
    let Some(url) = &service.url else {
        return Err("the appservice has no URL".into());
    };
    let txn = super::query::encode(txn_id);
    let response = http_client()
        .put(format!("{url}/_matrix/app/v1/transactions/{txn}"))
        .bearer_auth(&service.hs_token)
        .timeout(SEND_TIMEOUT)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!(
        "{url} answered {status}: {}",
        text.chars().take(300).collect::<String>()
    ))
}
