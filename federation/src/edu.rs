//! EDUs received in transactions: typing notifications (`m.typing`) and read receipts
//! (`m.receipt`), each about a user of the sending server in a room it is in and whose ACL lets
//! it take part; device list and cross-signing key updates (`m.device_list_update`,
//! `m.signing_key_update`) and to-device messages (`m.direct_to_device`) from the sending
//! server's own users; presence (`m.presence`) of the sending server's users who share a room
//! with a local user. Anything else is dropped with a log line.

use ruma::{api::federation::transactions::edu::Edu, serde::Raw, OwnedUserId, ServerName, UserId};
use serde_json::Value;
use weft_core::{
    e2ee::{remote, to_device},
    ephemeral::receipts::{self, Receipt},
    presence as presences,
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
            Some("m.device_list_update") => device_list_update(fed, origin, &edu["content"]).await,
            Some("m.signing_key_update") => signing_key_update(fed, origin, &edu["content"]).await,
            Some("m.direct_to_device") => direct_to_device(fed, origin, &edu["content"]).await,
            Some("m.presence") => presence(fed, origin, &edu["content"]).await,
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
    weft_core::appservice::enqueue_typing(core, room_id)
        .await
        .map_err(|e| e.to_string())?;
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

/// A user ID of `origin`'s, or why not.
fn origin_user(origin: &ServerName, user: Option<&str>) -> Result<OwnedUserId, String> {
    let user = user.ok_or("no user_id")?;
    let user_id = UserId::parse(user).map_err(|_| format!("{user} is not a user ID"))?;
    if user_id.server_name() != origin {
        return Err(format!("{user} is not a user of {origin}"));
    }
    Ok(user_id)
}

/// A device of the sender's user changed: applied on top of the kept list when it follows the
/// last update applied, else the list is fetched whole (here, before the next EDU, so that the
/// updates after it apply in order).
async fn device_list_update(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let user_id = origin_user(origin, content["user_id"].as_str())?;
    let device_id = content["device_id"].as_str().ok_or("no device_id")?;
    let stream_id = content["stream_id"].as_i64().ok_or("no stream_id")?;
    let keys = content.get("keys").filter(|k| k.is_object()).cloned();
    if keys
        .as_ref()
        .is_some_and(|k| k["user_id"] != content["user_id"] || k["device_id"].as_str() != Some(device_id))
    {
        return Err("keys of another user or device".into());
    }
    let update = remote::Update {
        user_id: user_id.to_string(),
        device_id: device_id.to_owned(),
        stream_id,
        prev_id: content["prev_id"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default(),
        deleted: content["deleted"].as_bool().unwrap_or(false),
        display_name: content["device_display_name"].as_str().map(str::to_owned),
        keys,
    };
    let core = fed.client.core();
    match remote::apply_update(core, &update).await.map_err(|e| e.to_string())? {
        remote::Outcome::Resync => crate::e2ee::resync(&fed.client, &user_id).await,
        remote::Outcome::Applied | remote::Outcome::Ignored => {}
    }
    Ok(())
}

/// The sender's user's master or self-signing key changed.
async fn signing_key_update(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let user_id = origin_user(origin, content["user_id"].as_str())?;
    let key = |name: &str| {
        content
            .get(name)
            .filter(|k| k.is_object() && k["user_id"].as_str() == Some(user_id.as_str()))
    };
    let core = fed.client.core();
    let kept = remote::apply_signing_keys(core, user_id.as_str(), key("master_key"), key("self_signing_key"))
        .await
        .map_err(|e| e.to_string())?;
    if !kept {
        let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
        if remote::shares_room_with_local(core, &mut conn, user_id.as_str())
            .await
            .map_err(|e| e.to_string())?
        {
            drop(conn);
            crate::e2ee::resync(&fed.client, &user_id).await;
        }
    }
    Ok(())
}

/// To-device messages from one of origin's users to local devices (`*`: all of a user's).
async fn direct_to_device(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let sender = origin_user(origin, content["sender"].as_str())?;
    let event_type = content["type"].as_str().ok_or("no type")?;
    let message_id = content["message_id"].as_str().ok_or("no message_id")?;
    let by_user = content["messages"].as_object().ok_or("no messages")?;
    let mut messages = Vec::new();
    for (user, by_device) in by_user {
        let Some(by_device) = by_device.as_object() else {
            continue;
        };
        for (device, message) in by_device {
            if !message.is_object() {
                continue;
            }
            let target = match device.as_str() {
                "*" => to_device::Target::AllDevices,
                d => to_device::Target::Device(d.to_owned()),
            };
            messages.push((user.clone(), target, message.clone()));
        }
    }
    to_device::receive(
        fed.client.core(),
        origin.as_str(),
        message_id,
        sender.as_str(),
        event_type,
        &messages,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Presence of origin's users; kept only for those who share a room with a local user (no one
/// here would see the others'). A bad entry is skipped, the others applied.
async fn presence(fed: &Federation, origin: &ServerName, content: &Value) -> Result<(), String> {
    let core = fed.client.core();
    let entries = content["push"].as_array().ok_or("no push list")?;
    for entry in entries {
        let user_id = match origin_user(origin, entry["user_id"].as_str()) {
            Ok(user_id) => user_id,
            Err(why) => {
                tracing::info!(%origin, "dropped a presence update: {why}");
                continue;
            }
        };
        let Some(state @ ("online" | "unavailable" | "offline")) = entry["presence"].as_str() else {
            tracing::info!(%origin, %user_id, "dropped a presence update without a known state");
            continue;
        };
        let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
        let shared = remote::shares_room_with_local(core, &mut conn, user_id.as_str())
            .await
            .map_err(|e| e.to_string())?;
        drop(conn);
        if !shared {
            continue;
        }
        presences::apply_remote(
            core,
            user_id.as_str(),
            state,
            entry["status_msg"].as_str(),
            entry["last_active_ago"].as_i64().unwrap_or(0),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
