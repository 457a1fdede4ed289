//! `PUT /rooms/{roomId}/typing/{userId}`.

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};
use weft_core::storage::rooms;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

pub async fn set_typing(
    state: AppState,
    req: Ruma<create_typing_event::v3::Request>,
) -> ApiResult<create_typing_event::v3::Response> {
    let user = req.sender()?;
    if user.user_id != req.user_id {
        return Err(MatrixError::forbidden("You cannot set typing for another user"));
    }
    let mut conn = state.db.conn().await?;
    if !rooms::membership(&mut conn, req.room_id.as_str(), user.user_id.as_str())
        .await?
        .is_some_and(|m| m.membership == "join")
    {
        return Err(MatrixError::forbidden("You are not in this room"));
    }
    let timeout = match &req.state {
        Typing::Yes(info) => Some(info.timeout.as_millis() as i64),
        _ => None,
    };
    state.core.typing.set(
        &state.core.notifier,
        req.room_id.as_str(),
        user.user_id.as_str(),
        timeout,
    );
    let edu = serde_json::json!({
        "edu_type": "m.typing",
        "content": { "room_id": req.room_id, "user_id": user.user_id, "typing": timeout.is_some() },
    });
    weft_core::outbox::enqueue_for_room(&state.core, req.room_id.as_str(), &edu).await?;
    weft_core::appservice::enqueue_typing(&state.core, req.room_id.as_str()).await?;
    Ok(create_typing_event::v3::Response::new())
}
