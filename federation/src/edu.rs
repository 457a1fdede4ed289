//! EDUs received in transactions: typing notifications (`m.typing`) and read receipts
//! (`m.receipt`), each about a user of the sending server in a room it is in and whose ACL lets
//! it take part; anything else is dropped with a log line. Other kinds (presence, device
//! lists, to-device) are not handled yet.

use ruma::{api::federation::transactions::edu::Edu, serde::Raw, ServerName, UserId};
use serde_json::Value;
use weft_core::{
    ephemeral::receipts::{self, Receipt},
    storage::{events, rooms},
    Core,
};

use crate::Federation;

/// How long a remote user shows as typing without a new typing EDU (the spec's suggestion).
const REMOTE_TYPING_MS: i64 = 30_000;

/// Applies a transaction's EDUs; a bad one is logged and skipped.
pub async fn process(fed: &Federation, origin: &ServerName, edus: &[Raw<Edu>]) {
    for raw in edus {
        let Ok(edu) = serde_json::from_str::<Value>(raw.json().get()) else {
            tracing::info!(%origin, "dropped an EDU that is not JSON");
            continue;
        };
        let result = match edu["edu_type"].as_str() {
            Some("m.typing") => typing(fed, origin, &edu["content"]).await,
            Some("m.receipt") => receipt(fed, origin, &edu["content"]).await,
            _ => Ok(()),
        };
        if let Err(why) = result {
            tracing::info!(%origin, edu_type = ?edu["edu_type"], "dropped an EDU: {why}");
        }
    }
}

/// Whether `user` (named by an EDU from `origin`) is one of origin's users joined to the room,
/// which lets origin in.
async fn may_speak_for(core: &Core, origin: &ServerName, room_id: &str, user: &str) -> Result<(), String> {
    let user_id = UserId::parse(user).map_err(|_| format!("{user} is not a user ID"))?;
    if user_id.server_name() != origin {
        return Err(format!("{user} is not a user of {origin}"));
    }
    if !crate::acl::allowed(core, room_id, origin)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!("the server ACL of {room_id} denies {origin}"));
    }
    let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
    let joined = rooms::membership(&mut conn, room_id, user)
        .await
        .map_err(|e| e.to_string())?
        .is_some_and(|m| m.membership == "join");
    if joined {
        Ok(())
    } else {
        Err(format!("{user} is not in {room_id}"))
    }
}

async fn typing(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let core = fed.client.core();
    let (Some(room_id), Some(user)) = (content["room_id"].as_str(), content["user_id"].as_str()) else {
        return Err("a typing EDU without room_id or user_id".into());
    };
    may_speak_for(core, origin, room_id, user).await?;
    let typing = content["typing"].as_bool().unwrap_or(false);
    core.typing
        .set(&core.notifier, room_id, user, typing.then_some(REMOTE_TYPING_MS));
    Ok(())
}

async fn receipt(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let core = fed.client.core();
    let Some(by_room) = content.as_object() else {
        return Err("a receipt EDU whose content is not an object".into());
    };
    for (room_id, by_type) in by_room {
        // Only public read receipts travel between servers.
        let Some(by_user) = by_type["m.read"].as_object() else {
            continue;
        };
        for (user, receipt) in by_user {
            may_speak_for(core, origin, room_id, user).await?;
            let Some(event_id) = receipt["event_ids"]
                .as_array()
                .and_then(|ids| ids.first())
                .and_then(Value::as_str)
            else {
                continue;
            };
            let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
            let Some(event) = events::get(&mut conn, event_id)
                .await
                .map_err(|e| e.to_string())?
                .filter(|e| e.room_id == *room_id)
            else {
                continue;
            };
            drop(conn);
            let stored = Receipt {
                room_id: room_id.clone(),
                receipt_type: "m.read".into(),
                user_id: user.clone(),
                thread_id: receipt["data"]["thread_id"].as_str().unwrap_or_default().to_owned(),
                event_id: event_id.to_owned(),
                event_stream_pos: event.stream_pos.unwrap_or_default(),
                ts: receipt["data"]["ts"].as_i64().unwrap_or_default(),
            };
            let mut tx = core.db.write().await.map_err(|e| e.to_string())?;
            let changed = receipts::put(&mut tx, &stored).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            if changed {
                core.notifier.room_changed(room_id);
            }
        }
    }
    Ok(())
}
