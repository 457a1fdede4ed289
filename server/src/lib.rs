//! weft: the homeserver binary's library: configuration, HTTP router and the Client-Server,
//! admin and media APIs.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod memory;
pub mod pusher;
pub mod rate_limit;
pub mod router;
pub mod ruma_wrapper;
pub mod server;
pub mod state;
pub mod tls;
pub mod uia;
