//! weft: the homeserver binary's library: configuration, HTTP router and the Client-Server,
//! admin and media APIs.

pub mod api;
pub mod appservices;
pub mod cli;
pub mod delayed_timer;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pusher;
pub mod router;
pub mod server;
pub mod tls;
pub mod turn;
pub mod uia;

// The HTTP glue, shared with the federation crate, under the paths the handlers use.
pub use weft_http::{config, error, media, rate_limit, ruma_wrapper, state};
