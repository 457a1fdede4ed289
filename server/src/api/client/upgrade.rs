//! `POST /rooms/{roomId}/upgrade`.

use axum::Router;
use ruma::{api::client::room::upgrade_room, OwnedRoomId};
use weft_core::rooms::upgrade::{self, Upgrade};

use super::capabilities::supported_room_versions;
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(upgrade_room)
}

pub async fn upgrade_room(
    state: AppState,
    req: Ruma<upgrade_room::v3::Request>,
) -> ApiResult<upgrade_room::v3::Response> {
    let user = req.sender()?;
    if !supported_room_versions().contains(&req.new_version) {
        return Err(MatrixError::unsupported_room_version(format!(
            "Room version {} is not supported",
            req.new_version
        )));
    }
    let new_room = upgrade::upgrade_room(
        &state.core,
        &user.user_id,
        req.room_id.as_str(),
        Upgrade {
            new_version: req.new_version.clone(),
            additional_creators: req.additional_creators.clone(),
        },
    )
    .await?;
    let replacement_room = OwnedRoomId::try_from(new_room).map_err(|_| MatrixError::unknown("Invalid room ID"))?;
    Ok(upgrade_room::v3::Response::new(replacement_room))
}
