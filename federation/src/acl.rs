//! Server ACLs (`m.room.server_acl`) on what other servers send: the one place inbound
//! requests about a room ask `rooms::acl` whether the room lets their origin take part.
//!
//! Applied to `/send` PDUs (per room, on the transaction's origin, as the spec says: not on
//! each PDU's sender), `make_join`/`send_join`, `make_leave`/`send_leave` and `/invite`; the
//! reads of `rooms::for_servers` check it themselves; EDUs naming a room (typing, receipts)
//! pass `allowed` for the transaction's origin or are dropped (`edu.rs`).

use ruma::ServerName;
use weft_core::{rooms::acl, Core};
use weft_http::error::MatrixError;

/// Whether the room's current ACL lets `origin` take part (every server may in a room with no
/// ACL, or one this server does not know).
pub async fn allowed(core: &Core, room_id: &str, origin: &ServerName) -> weft_core::Result<bool> {
    let mut conn = core.db.conn().await?;
    acl::server_allowed(&mut conn, room_id, origin.as_str()).await
}

/// `allowed`, as a request's answer: 403 M_FORBIDDEN (and a log line) when the ACL denies
/// `origin`.
pub async fn ensure_allowed(core: &Core, room_id: &str, origin: &ServerName, what: &str) -> Result<(), MatrixError> {
    if allowed(core, room_id, origin).await? {
        return Ok(());
    }
    tracing::info!(%origin, %room_id, "refused {what}: the room's server ACL denies the server");
    Err(MatrixError::forbidden(format!("The room's server ACL denies {origin}")))
}
