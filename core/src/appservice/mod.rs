//! Application services: the bridges and bots registered with this server by a registration
//! file (see docs/appservices.md).
//!
//! - `registration`: the files, parsed and checked together at start (`Registry`), and the
//!   namespaces (regexes) that say which users, aliases and rooms an appservice is about.
//! - `tail`: what each appservice must be sent (events of its rooms, and with MSC2409 receipts,
//!   typing and to-device messages), queued in the outbox under the appservice's destination
//!   (`as/<id>`), from persisted stream positions.
//! - `sender`: delivers those rows as transactions, with the outbox's pinning, per-destination
//!   backoff and leases (an appservice is a destination of its own kind).
//! - `query`: user and alias queries, pings and third-party lookups sent to appservices.

pub mod query;
pub mod registration;
pub mod sender;
pub mod tail;

use std::sync::OnceLock;

pub use registration::{AppService, Namespace, Registry, DESTINATION_PREFIX};
pub use tail::{enqueue_typing, skip_to_now, tail};

/// Refuses an alias that an appservice claims exclusively to anyone but that appservice's
/// users (its own user, its puppets).
pub fn check_alias_claim(core: &crate::Core, alias: &str, user_id: &str) -> crate::Result<()> {
    match core.appservices.exclusive_alias_owner(alias) {
        Some(owner) if !owner.is_user_in_namespace(user_id) => Err(crate::Error::Exclusive(format!(
            "{alias} is reserved by an application service"
        ))),
        _ => Ok(()),
    }
}

/// The HTTP client for requests to appservices (they usually run next to the server, over
/// plain HTTP).
pub(crate) fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}
