//! weft-core: storage, accounts, the event graph, streams and the notifier.
//!
//! Nothing here knows HTTP; the server and federation crates translate requests into calls on
//! these modules and their errors into Matrix errors.

pub mod account_data;
pub mod accounts;
pub mod admin;
pub mod appservice;
pub mod context;
pub mod db;
pub mod delayed_events;
pub mod e2ee;
pub mod ephemeral;
pub mod error;
pub mod events;
pub mod media;
pub mod memo;
pub mod metrics;
pub mod notifier;
pub mod openid;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod rooms;
pub mod rtc;
pub mod signing_key;
pub mod storage;
pub mod streams;
pub mod sync;
#[cfg(test)]
pub mod testing;
pub mod util;
pub mod voip;

pub use context::Core;
pub use db::{Backend, Db, WriteTx};
pub use error::{Error, Result};
