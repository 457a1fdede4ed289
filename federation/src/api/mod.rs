//! Server-Server API endpoints, one module per area of their path.

pub mod invite;
pub mod keys;
pub mod membership;
pub mod openid;
pub mod send;
pub mod version;
