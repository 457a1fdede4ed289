//! Server-Server API endpoints, one module per area of their path.

pub mod keys;
pub mod openid;
pub mod version;
