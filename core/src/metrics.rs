//! What the server measures, recorded through the `metrics` facade: nothing here knows how
//! the numbers leave the process (the binary installs a Prometheus exporter when a listener
//! serves `metrics`; without one every call is a no-op). Names and labels are Synapse's where
//! Synapse measures the same thing, so that dashboards built for it keep working; the rest
//! are `weft_*`. docs/metrics.md lists them all.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::{events::pdu::Pdu, Core, Db};

/// Event types Synapse labels by name in `synapse_storage_events_persisted_events_sep`; every
/// other type is `*other*`, which keeps the label's values few.
const TRACKED_EVENT_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.encrypted",
    "m.room.member",
    "m.room.message",
    "m.room.power_levels",
    "m.room.redaction",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.name",
    "m.room.topic",
    "m.reaction",
];

/// An event committed to a room's timeline (live or backfilled), after its transaction
/// committed.
pub fn event_persisted(core: &Core, pdu: &Pdu) {
    let kind = pdu.kind.to_string();
    let kind = TRACKED_EVENT_TYPES
        .iter()
        .find(|t| **t == kind)
        .copied()
        .unwrap_or("*other*");
    let origin = if core.is_local(&pdu.sender) { "local" } else { "remote" };
    // The version is cached by every send and receive before it commits; `peek` leaves the
    // cache's hit counts to real lookups.
    let version = core
        .db
        .caches()
        .room_versions
        .peek(pdu.room_id.as_str())
        .unwrap_or_else(|| "unknown".into());
    counter!("synapse_storage_events_persisted_events_total").increment(1);
    counter!("synapse_storage_events_persisted_events_sep_total", "type" => kind, "origin_type" => origin).increment(1);
    counter!("weft_storage_events_persisted_total", "room_version" => version).increment(1);
}

/// Time spent waiting for a database connection (a pooled one, or SQLite's writer).
pub fn db_scheduled(wait: Duration) {
    histogram!("synapse_storage_schedule_time").record(wait.as_secs_f64());
}

/// A write transaction's life, from its start to its commit (or rollback).
pub fn db_transaction(elapsed: Duration, outcome: &'static str) {
    histogram!("synapse_storage_transaction_time", "desc" => "write", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A waiter (a long-polling sync, the pusher's wait) started or stopped waiting; the guard
/// counts it out when dropped, also when the request is cancelled.
pub struct Waiting(());

impl Waiting {
    pub fn start() -> Waiting {
        gauge!("synapse_notifier_listeners").increment(1.0);
        Waiting(())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        gauge!("synapse_notifier_listeners").decrement(1.0);
    }
}

/// The notifier bumped its counters for a change (`kind`: room, user or everyone).
pub fn notifier_wakeup(kind: &'static str) {
    counter!("weft_notifier_wakeups_total", "kind" => kind).increment(1);
}

/// A waiter woke because something it watches changed (not by its timeout).
pub fn waiter_woken() {
    counter!("synapse_notifier_users_woken_by_stream_total", "stream" => "any").increment(1);
}

/// A federation transaction was delivered to (or refused for good by) `destination`.
pub fn transaction_sent(destination: &str, pdus: usize, edus: usize) {
    counter!("synapse_federation_client_sent_transactions_total").increment(1);
    counter!("synapse_federation_client_sent_pdu_destinations_total").increment(pdus as u64);
    counter!("synapse_federation_client_sent_edus_total").increment(edus as u64);
    counter!("weft_federation_transactions_total", "destination" => destination.to_owned(), "outcome" => "sent")
        .increment(1);
}

/// Sending a federation transaction to `destination` failed (`permanent`: it was dropped).
pub fn transaction_failed(destination: &str, permanent: bool) {
    let outcome = if permanent { "refused" } else { "failed" };
    counter!("weft_federation_transactions_total", "destination" => destination.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Sets the gauges that are read rather than counted: the database pool's use, the caches'
/// and memos' sizes and hit counts. Called just before each scrape.
pub fn record_gauges(core: &Core) {
    record_pool(&core.db);
    let caches = core.db.caches();
    cache(
        "state_groups",
        caches.state_groups.len(),
        caches.state_groups.hits(),
        caches.state_groups.misses(),
    );
    cache(
        "room_versions",
        caches.room_versions.len(),
        caches.room_versions.hits(),
        caches.room_versions.misses(),
    );
    cache(
        "graph_events",
        caches.graph_events.len(),
        caches.graph_events.hits(),
        caches.graph_events.misses(),
    );
    for (name, stats) in core.memos.stats() {
        cache(name, stats.len, stats.hits, stats.misses);
    }
}

fn record_pool(db: &Db) {
    let pool = db.pool();
    let size = pool.size() as f64;
    let idle = pool.num_idle() as f64;
    gauge!("weft_storage_pool_connections", "state" => "idle").set(idle);
    gauge!("weft_storage_pool_connections", "state" => "in_use").set(size - idle);
    gauge!("weft_storage_pool_max_connections").set(pool.options().get_max_connections() as f64);
}

/// A cache's size and its lookups so far, as Synapse exposes them (`cache` is the lookups,
/// `cache_hits` the hits among them; both only grow).
fn cache(name: &'static str, len: usize, hits: u64, misses: u64) {
    gauge!("synapse_util_caches_cache_size", "name" => name).set(len as f64);
    gauge!("synapse_util_caches_cache_hits", "name" => name).set(hits as f64);
    gauge!("synapse_util_caches_cache", "name" => name).set((hits + misses) as f64);
}

/// How much the federation outbox holds (read from the database, just before a scrape).
pub async fn record_federation_queue(core: &Core) -> crate::Result<()> {
    let depth = crate::outbox::queue::depth(core).await?;
    gauge!("synapse_federation_transaction_queue_pending_pdus").set(depth.pdus as f64);
    gauge!("synapse_federation_transaction_queue_pending_edus").set(depth.edus as f64);
    gauge!("synapse_federation_transaction_queue_pending_destinations").set(depth.destinations as f64);
    Ok(())
}
