//! The outbound federation queue: what this server must send to each other server, persisted,
//! so that every PDU and EDU reaches each destination exactly once across crashes and restarts.
//!
//! - `tail`: the tailer reads committed live events of local senders from the `events` stream
//!   and queues each for the servers that must receive it, advancing its persisted position in
//!   the same transaction (nothing lost, nothing queued twice).
//! - `queue`: the rows per destination: `enqueue_edu`, `next_batch` (one transaction's worth,
//!   pinned until acknowledged so a resend carries the same transaction ID), `ack`, `discard`.
//! - `destinations`: per-destination backoff after failures (`record_failure`,
//!   `ready_destinations`, `wake_destination`) and what admins will list.
//! - `device_lists`: the `device_lists` stream tailed into `m.device_list_update` and
//!   `m.signing_key_update` EDUs for the servers sharing a room with each local user who changed.
//! - `lease`: named leases in the database, so one process at a time tails and one process at
//!   a time sends to a destination.
//!
//! The sender that drives this (`weft_federation::sender`) runs in any number of processes
//! sharing one PostgreSQL; only lease holders act.

pub mod destinations;
pub mod device_lists;
pub mod lease;
pub mod queue;
mod room_edus;
pub mod tail;

#[cfg(test)]
mod tests;

pub use destinations::{
    destination_state, ready_destinations, record_failure, record_failure_with, wake_destination, Backoff,
    DestinationState, Retry,
};
pub use queue::{ack, discard, enqueue_edu, enqueue_pdu, next_batch, Batch, MAX_EDUS, MAX_PDUS};
pub use room_edus::{enqueue_for_room, enqueue_for_users_servers};
pub use tail::tail;

/// The lease name of the tailer.
pub const TAIL_LEASE: &str = "federation_tail";

/// The lease name of a destination's sender.
pub fn destination_lease(destination: &str) -> String {
    format!("federation_destination:{destination}")
}
