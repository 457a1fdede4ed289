//! Receipts (`/rooms/{roomId}/receipt/{type}/{eventId}`) and read markers (`/read_markers`).

use ruma::api::client::{
    read_marker::set_read_marker,
    receipt::create_receipt::{self, v3::ReceiptType},
};
use ruma::events::receipt::ReceiptThread;
use serde_json::json;
use weft_core::{
    ephemeral::receipts::{self, Receipt},
    storage::{account_data, events, rooms},
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma},
    state::AppState,
};

/// Checks the event is in the room and the user joined, then stores the receipt.
async fn put_receipt(
    state: &AppState,
    user: &AuthUser,
    room_id: &str,
    receipt_type: &str,
    event_id: &str,
    thread_id: &str,
) -> ApiResult<()> {
    let mut conn = state.db.conn().await?;
    if !rooms::membership(&mut conn, room_id, user.user_id.as_str())
        .await?
        .is_some_and(|m| m.membership == "join")
    {
        return Err(MatrixError::forbidden("You are not in this room"));
    }
    let event = events::get(&mut conn, event_id)
        .await?
        .filter(|e| e.room_id == room_id)
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    drop(conn);
    if receipt_type == "m.fully_read" {
        let mut tx = state.db.write().await?;
        account_data::put(
            &mut tx,
            user.user_id.as_str(),
            room_id,
            "m.fully_read",
            &json!({ "event_id": event_id }).to_string(),
        )
        .await?;
        tx.commit().await?;
        state.core.notifier.user_changed(user.user_id.as_str());
        return Ok(());
    }
    let receipt = Receipt {
        room_id: room_id.to_owned(),
        receipt_type: receipt_type.to_owned(),
        user_id: user.user_id.to_string(),
        thread_id: thread_id.to_owned(),
        event_id: event_id.to_owned(),
        event_stream_pos: event.stream_pos.unwrap_or_default(),
        ts: 0,
    };
    let mut tx = state.db.write().await?;
    let stored = receipts::put(&mut tx, &receipt).await?;
    tx.commit().await?;
    if stored {
        state.core.notifier.room_changed(room_id);
        state.core.notifier.user_changed(user.user_id.as_str());
        // Public read receipts go to the room's other servers too.
        if receipt_type == "m.read" {
            let mut data = json!({ "ts": weft_core::util::now_ms() });
            if !thread_id.is_empty() {
                data["thread_id"] = json!(thread_id);
            }
            let edu = json!({
                "edu_type": "m.receipt",
                "content": { room_id: { "m.read": { user.user_id.as_str(): { "event_ids": [event_id], "data": data } } } },
            });
            weft_core::outbox::enqueue_for_room(&state.core, room_id, &edu).await?;
        }
    }
    Ok(())
}

pub async fn create(
    state: AppState,
    req: Ruma<create_receipt::v3::Request>,
) -> ApiResult<create_receipt::v3::Response> {
    let user = req.sender()?;
    let receipt_type = match &req.receipt_type {
        ReceiptType::Read => "m.read",
        ReceiptType::ReadPrivate => "m.read.private",
        ReceiptType::FullyRead => "m.fully_read",
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown receipt type {}",
                other.as_str()
            )))
        }
    };
    let thread_id = match &req.thread {
        ReceiptThread::Unthreaded => String::new(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(id) => id.to_string(),
        _ => String::new(),
    };
    if receipt_type == "m.fully_read" && !thread_id.is_empty() {
        return Err(MatrixError::invalid_param("m.fully_read cannot be threaded"));
    }
    put_receipt(
        &state,
        user,
        req.room_id.as_str(),
        receipt_type,
        req.event_id.as_str(),
        &thread_id,
    )
    .await?;
    Ok(create_receipt::v3::Response::new())
}

pub async fn read_markers(
    state: AppState,
    req: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    let user = req.sender()?;
    let room_id = req.room_id.as_str();
    if let Some(id) = &req.fully_read {
        put_receipt(&state, user, room_id, "m.fully_read", id.as_str(), "").await?;
    }
    if let Some(id) = &req.read_receipt {
        put_receipt(&state, user, room_id, "m.read", id.as_str(), "").await?;
    }
    if let Some(id) = &req.private_read_receipt {
        put_receipt(&state, user, room_id, "m.read.private", id.as_str(), "").await?;
    }
    Ok(set_read_marker::v3::Response::new())
}
