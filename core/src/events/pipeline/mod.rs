//! The one pipeline every PDU takes, local or remote, in two steps.
//!
//! `prepare` runs the spec's checks on receipt that depend only on the event and the graph
//! behind it: format, signatures and hashes (a hash mismatch keeps the event, redacted), auth
//! against its own auth events, the state before it, and auth against that state. It holds no
//! lock, so a caller that must fetch from other servers (keys, missing prev or auth events,
//! the state at an event) does so between two `prepare` calls: when the graph behind the event
//! is incomplete, `prepare` says which events are missing instead of guessing.
//!
//! `commit` runs under the room's lock, held by the room writer (`rooms::writer` for received
//! events, `rooms::send` for local ones): the soft-fail check against current state, then the
//! writes: the event, its state groups, forward extremities, current state, memberships, what
//! the writer's `Steps` add (relations, search, push, redactions), and last the stream
//! position.
//!
//! Outliers are events whose state is not known (auth events fetched for another event, an
//! invite from another server): they pass the checks that need no state and are stored by
//! `store_outlier` with no place in the timeline, the state or the forward extremities.
//! Preparing an outlier again with its state known and committing it makes it a full event.

mod commit;
mod outliers;
mod prepare;
#[cfg(test)]
mod tests;

pub use commit::{commit, store_outlier, Accepted, NoSteps, Steps, Write};
pub use outliers::{prepare_outliers, store_outliers, KeysFor, PreparedOutliers};
pub(crate) use prepare::auth_against;
pub use prepare::{prepare, Checked, Missing, Prepared, StateAt, Trust};

use super::Pdu;
use crate::storage::{events::StoredEvent, rooms::Head};

/// What happened to a PDU.
#[derive(Debug)]
pub struct Outcome {
    pub pdu: Pdu,
    /// The event's position in the timeline stream; `None` when rejected, soft-failed or an
    /// outlier.
    pub stream_pos: Option<i64>,
    /// The state group after the event; `None` for an outlier.
    pub state_after: Option<i64>,
    pub rejected: Option<String>,
    pub soft_failed: bool,
    pub outlier: bool,
    /// The room's head after an accepted event.
    pub head: Option<Head>,
    /// The event was built on an unlocked head that had moved, or its writes did not fit one
    /// statement: nothing was written; send it again under the room's lock.
    pub head_moved: bool,
}

impl Outcome {
    /// The outcome of an event that was already stored.
    fn stored(pdu: Pdu, row: &StoredEvent) -> Outcome {
        Outcome {
            pdu,
            stream_pos: row.stream_pos,
            state_after: row.state_after,
            rejected: row.rejected.then(|| "previously rejected".to_owned()),
            soft_failed: row.soft_failed,
            outlier: row.outlier,
            head: None,
            head_moved: false,
        }
    }

    /// An outcome that wrote nothing, or nothing that enters the timeline.
    fn not_in_timeline(pdu: Pdu, state_after: Option<i64>, rejected: Option<String>, soft_failed: bool) -> Outcome {
        Outcome {
            pdu,
            stream_pos: None,
            state_after,
            rejected,
            soft_failed,
            outlier: false,
            head: None,
            head_moved: false,
        }
    }
}
