//! The push notifications module: push rules (`rules`), their evaluation for every new event
//! and member (`evaluate`, called by the event pipeline inside the event's transaction), the
//! notifications list and unread counts (`notifications`), and pushers with the data the HTTP
//! pusher sends (`pushers`). Sending itself is HTTP and lives in the server crate.

pub mod counts;
pub mod evaluate;
pub mod notifications;
pub mod pushers;
pub mod rules;

pub use evaluate::evaluate;
