//! weft-http: the HTTP glue every API layer shares: the Client-Server, federation and admin
//! APIs, and the media repository.
//!
//! - `config`: the configuration every layer reads (TOML file + `WEFT_*` environment).
//! - `state`: `AppState`, what every handler gets (configuration, core, rate limiter).
//! - `ruma_wrapper`: `Ruma<T>`, the extractor that parses any ruma request and authenticates
//!   it as its metadata says (access tokens today; X-Matrix request signatures are the
//!   federation branch), and `RumaRoute`, which mounts a handler on every path of an endpoint.
//! - `error`: `MatrixError`, the Matrix error every handler answers with, and the mapping from
//!   core's errors.
//! - `keys`: core's device and cross-signing keys as ruma's key-query responses carry them.
//! - `rate_limit`: per-user and per-IP token buckets.
//! - `media`: the configured media repository and file streams, for the client and
//!   federation media endpoints.
//!
//! Nothing here knows a particular API: the binary (`weft`) and the federation crate build
//! their routers from it.

pub mod config;
pub mod error;
pub mod keys;
pub mod media;
pub mod rate_limit;
pub mod ruma_wrapper;
pub mod state;
