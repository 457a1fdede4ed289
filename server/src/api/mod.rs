//! HTTP endpoints, one module per area. Handlers stay thin: parse (ruma), check, call the
//! logic in weft-core, answer.

pub mod admin;
pub mod client;
pub mod media;
