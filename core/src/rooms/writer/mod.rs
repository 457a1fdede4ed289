//! The room writer: the one way events enter a room's graph. It owns the room's lock (the
//! `rooms` row, which also holds the room's head), this process's turn (`rooms::turns`) and the
//! backend's write mode, and runs the event pipeline's `commit` under them:
//! - `local`: events built here (sends, createRoom, upgrades), checked under the lock;
//! - `received`: events from other servers, checked with no lock held (`prepare` may ask for
//!   missing events, which the caller fetches), then committed under the same lock, or stored
//!   as outliers;
//! - `outliers`: many received events of unknown state at once (a room's state when joining it).

mod local;
mod outliers;
mod received;

pub(crate) use local::prepare_local;
pub use local::{notify_committed, send, send_in_tx, Sent};
pub use outliers::{store_outliers_batch, OutliersStored};
pub use received::{backfill, receive, Received};
