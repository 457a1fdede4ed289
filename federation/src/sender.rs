//! The outbound federation sender: delivers what `weft_core::outbox` queued, as
//! `PUT /_matrix/federation/v1/send/{txnId}` transactions, through a `Transport`.
//!
//! One loop per process, woken by every commit the notifier hears of (this process's, and on
//! PostgreSQL the others' too) and at least every `poll_interval`: it runs the tailer if it
//! holds the tailer's lease, then starts a task for each destination that has rows, is out of
//! backoff, has no task here yet, and whose lease it gets. A destination's task sends its
//! batches one at a time (one transaction in flight per destination) until the queue is empty
//! or a send fails: a retryable failure records backoff and ends the task (the loop starts a
//! new one once the destination is ready again); a permanent one drops that transaction. Each
//! destination has its own task, so a slow or dead server never delays the others.
//!
//! Leases keep the work in one process at a time; correctness does not rest on them: the
//! tailer serialises itself on its row, and a transaction sent twice (a lease taken over from a
//! stalled holder) carries the same transaction ID both times, which the receiver
//! deduplicates.
//!
//! Wiring it (the server, once the HTTP client exists):
//!
//! ```ignore
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let sender = weft_federation::sender::spawn(core.clone(), Arc::new(http_transport), stop_rx);
//! // ... on shutdown:
//! let _ = stop_tx.send(true);
//! let _ = sender.await; // leases released; an unfinished send is resent after restart
//! ```
//!
//! and call `weft_core::outbox::wake_destination` when a request from a server is verified.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use ruma::{OwnedServerName, ServerName};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use weft_core::{
    outbox::{self, lease, Backoff},
    util, Core, Result,
};

/// Why a transaction was not delivered.
#[derive(Clone, Debug)]
pub struct SendError {
    pub message: String,
    /// Whether sending the same transaction later may succeed (network errors, timeouts, 5xx,
    /// 429). `false` only when resending it can never succeed: it is then dropped.
    pub retry: bool,
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            retry: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            retry: false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Sends one transaction to a destination: the federation HTTP client (signing, discovery,
/// TLS) implements it. `Ok` means the destination answered 200 (per-PDU errors in its answer
/// are its business).
pub trait Transport: Send + Sync + 'static {
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), SendError>>;
}

/// The sender's timings.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Longest wait between two looks at the queue when no commit wakes the sender (changes
    /// nothing announces: another process's backoff reset, a lease that expired).
    pub poll_interval: Duration,
    /// How long a lease lasts; holders renew it every third of that.
    pub lease_ttl: Duration,
    pub backoff: Backoff,
    /// Who this process is to the leases. A name that stays the same when the same process
    /// restarts lets it take back at once the leases its killed run left (they are "already
    /// ours"), where a random one waits for them to expire; two live processes must never
    /// share one. `None`: a random name.
    pub holder: Option<String>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            poll_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            backoff: Backoff::DEFAULT,
            holder: None,
        }
    }
}

/// Starts the sender with the default timings; it runs until `stop` turns true (or its sender
/// is dropped), then releases its leases and ends.
pub fn spawn(core: Core, transport: Arc<dyn Transport>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    spawn_with(core, transport, stop, SenderConfig::default())
}

/// `spawn` with chosen timings.
pub fn spawn_with(
    core: Core,
    transport: Arc<dyn Transport>,
    stop: watch::Receiver<bool>,
    config: SenderConfig,
) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        core,
        transport,
        holder: config.holder.clone().unwrap_or_else(|| util::random_string(24)),
        config,
    });
    tokio::spawn(run(shared, stop))
}

/// What the loop and its destination tasks share.
struct Shared {
    core: Core,
    transport: Arc<dyn Transport>,
    config: SenderConfig,
    /// This sender's name in the leases table.
    holder: String,
}

impl Shared {
    fn renew_every(&self) -> Duration {
        self.config.lease_ttl / 3
    }

    async fn acquire(&self, name: &str) -> Result<bool> {
        lease::try_acquire(&self.core, name, &self.holder, self.config.lease_ttl).await
    }
}

/// Waits until `stop` is true or can no longer change.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// The tailer's lease as this sender last saw it.
#[derive(Default)]
struct TailLease {
    held: bool,
    tried: Option<Instant>,
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut wake = shared.core.notifier.subscribe();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tail_lease = TailLease::default();
    while !is_stopped(&stop) {
        if let Err(e) = round(&shared, &mut tail_lease, &mut tasks, &done_tx, &stop).await {
            tracing::warn!("federation sender: {e}");
        }
        tokio::select! {
            _ = stopped(&mut stop) => {}
            _ = wake.changed() => {}
            // A destination's task ended: its destination may have more by now. (Finished tasks
            // are removed by `round`: a message may arrive after its destination's next task
            // started, and must not make this loop forget that one.)
            Some(_) = done_rx.recv() => {}
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
        }
        while done_rx.try_recv().is_ok() {}
    }
    // Each destination's task sees `stop` too and ends without waiting for its send.
    for (_, task) in tasks {
        let _ = task.await;
    }
    if tail_lease.held {
        if let Err(e) = lease::release(&shared.core, outbox::TAIL_LEASE, &shared.holder).await {
            tracing::debug!("federation sender: releasing the tailer's lease: {e}");
        }
    }
}

/// One look: tail if ours to do, then start a task for every ready destination that has none.
async fn round(
    shared: &Arc<Shared>,
    tail_lease: &mut TailLease,
    tasks: &mut HashMap<String, JoinHandle<()>>,
    done: &mpsc::UnboundedSender<String>,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    if tail_lease.tried.is_none_or(|t| t.elapsed() >= shared.renew_every()) {
        tail_lease.tried = Some(Instant::now());
        tail_lease.held = false;
        tail_lease.held = shared.acquire(outbox::TAIL_LEASE).await?;
    }
    if tail_lease.held {
        outbox::tail(&shared.core).await?;
        outbox::device_lists::tail(&shared.core).await?;
    }
    tasks.retain(|_, task| !task.is_finished());
    for destination in outbox::ready_destinations(&shared.core, util::now_ms()).await? {
        if tasks.contains_key(&destination) || is_stopped(stop) {
            continue;
        }
        if !shared.acquire(&outbox::destination_lease(&destination)).await? {
            continue;
        }
        let task = tokio::spawn(send_to(shared.clone(), destination.clone(), stop.clone(), done.clone()));
        tasks.insert(destination, task);
    }
    Ok(())
}

/// A destination's task: holds its lease (just acquired) and sends until done.
async fn send_to(
    shared: Arc<Shared>,
    destination: String,
    stop: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<String>,
) {
    let lease_name = outbox::destination_lease(&destination);
    if let Err(e) = send_all(&shared, &destination, &lease_name, stop).await {
        tracing::warn!(%destination, "federation sender: {e}");
    }
    if let Err(e) = lease::release(&shared.core, &lease_name, &shared.holder).await {
        tracing::debug!(%destination, "federation sender: releasing the lease: {e}");
    }
    let _ = done.send(destination);
}

/// Sends the destination's batches one after the other until its queue is empty, a send
/// fails, the lease is lost or the sender stops.
async fn send_all(shared: &Shared, destination: &str, lease_name: &str, mut stop: watch::Receiver<bool>) -> Result<()> {
    let core = &shared.core;
    let Ok(server_name) = OwnedServerName::try_from(destination) else {
        // Queued by a caller that did not check the name: it can never be delivered.
        while let Some(batch) = outbox::next_batch(core, destination).await? {
            outbox::discard(core, destination, batch.last_pos, "not a valid server name").await?;
        }
        return Ok(());
    };
    let mut renewed = Instant::now();
    let mut lease_held = true;
    while lease_held && !is_stopped(&stop) {
        let Some(batch) = outbox::next_batch(core, destination).await? else {
            return Ok(());
        };
        let txn_id = batch.txn_id();
        let body = batch.body(core.server_name.as_str(), util::now_ms());
        let mut send = std::pin::pin!(shared.transport.send_transaction(&server_name, &txn_id, body));
        // The lease is renewed while the send runs; a stop abandons the send, and the batch,
        // still pinned, is sent again with the same transaction ID after the restart.
        let result = loop {
            tokio::select! {
                result = &mut send => break result,
                _ = stopped(&mut stop) => return Ok(()),
                _ = tokio::time::sleep_until(renewed + shared.renew_every()) => {
                    // Lost: finish this send (a duplicate has the same ID) and stop after it.
                    lease_held = shared.acquire(lease_name).await.unwrap_or(false);
                    renewed = Instant::now();
                }
            }
        };
        match &result {
            Ok(()) => weft_core::metrics::transaction_sent(destination, batch.pdus.len(), batch.edus.len()),
            Err(e) => weft_core::metrics::transaction_failed(destination, !e.retry),
        }
        match result {
            Ok(()) => outbox::ack(core, destination, batch.last_pos).await?,
            Err(e) if e.retry => {
                let retry = outbox::record_failure_with(core, destination, &e.message, &shared.config.backoff).await?;
                let retry_in = Duration::from_millis(retry.retry_after_ts.saturating_sub(util::now_ms()).max(0) as u64);
                tracing::warn!(
                    %destination,
                    txn_id,
                    failures = retry.retry_count,
                    "federation: sending transaction failed: {}; next attempt in {:.1}s",
                    e.message,
                    retry_in.as_secs_f64(),
                );
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(
                    %destination,
                    txn_id,
                    pdus = batch.pdus.len(),
                    edus = batch.edus.len(),
                    "federation: destination refused transaction for good, dropping it: {}",
                    e.message,
                );
                outbox::discard(core, destination, batch.last_pos, &e.message).await?;
            }
        }
        if renewed.elapsed() >= shared.renew_every() {
            lease_held = shared.acquire(lease_name).await?;
            renewed = Instant::now();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
