//! Questions to other servers on behalf of local clients: what room an alias of theirs names,
//! and their users' profiles.

use ruma::{
    api::federation::{
        directory::get_public_rooms_filtered,
        query::{get_profile_information, get_room_information},
    },
    OwnedRoomId, OwnedServerName, RoomAliasId, UserId,
};
use weft_http::error::MatrixError;

use crate::{join::remote_error, Federation};

/// The room an alias of another server names, with servers to join it through.
pub async fn room_alias(
    fed: &Federation,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError> {
    let answer = fed
        .client
        .send(
            alias.server_name(),
            get_room_information::v1::Request::new(alias.to_owned()),
        )
        .await
        .map_err(remote_error)?;
    Ok((answer.room_id, answer.servers))
}

/// A user's profile (or one field of it) from their server.
pub async fn profile(
    fed: &Federation,
    user: &UserId,
    field: Option<&str>,
) -> Result<get_profile_information::v1::Response, MatrixError> {
    let mut request = get_profile_information::v1::Request::new(user.to_owned());
    request.field = field.map(Into::into);
    fed.client.send(user.server_name(), request).await.map_err(remote_error)
}

/// Another server's room directory, for a local user browsing it (`/publicRooms?server=`).
pub async fn public_rooms(
    fed: &Federation,
    server: &ruma::ServerName,
    request: get_public_rooms_filtered::v1::Request,
) -> Result<get_public_rooms_filtered::v1::Response, MatrixError> {
    fed.client.send(server, request).await.map_err(remote_error)
}
