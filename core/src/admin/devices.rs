//! A user's devices as admins manage them (`/_synapse/admin/v2/users/{userId}/devices`):
//! listed with where they were last seen, renamed and deleted (other users' clients are told,
//! as after the user's own change).

use serde_json::{json, Value};

use super::seen;
use crate::{e2ee::device_lists, storage::devices, Core, Result};

fn device_json(user_id: &str, d: devices::Device, user_agent: Option<String>) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_user_agent": user_agent,
        "user_id": user_id,
    })
}

pub async fn list(core: &Core, user_id: &str) -> Result<Vec<Value>> {
    let mut agents = seen::last_user_agents(&core.db, user_id).await?;
    Ok(devices::list(&core.db, user_id)
        .await?
        .into_iter()
        .map(|d| {
            let agent = agents.remove(&d.device_id);
            device_json(user_id, d, agent)
        })
        .collect())
}

pub async fn get(core: &Core, user_id: &str, device_id: &str) -> Result<Option<Value>> {
    let Some(device) = devices::get(&core.db, user_id, device_id).await? else {
        return Ok(None);
    };
    let agent = seen::last_user_agents(&core.db, user_id).await?.remove(device_id);
    Ok(Some(device_json(user_id, device, agent)))
}

/// Renames a device; `false` when it does not exist.
pub async fn rename(core: &Core, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let found = devices::set_display_name(&mut tx, user_id, device_id, name).await?;
    tx.commit().await?;
    if found {
        device_lists::notify(core, user_id).await?;
    }
    Ok(found)
}

/// Deletes devices with their tokens (unknown ones are skipped).
pub async fn delete(core: &Core, user_id: &str, device_ids: &[String]) -> Result<()> {
    let mut tx = core.db.write().await?;
    for device_id in device_ids {
        devices::delete(&mut tx, user_id, device_id).await?;
    }
    tx.commit().await?;
    device_lists::notify(core, user_id).await
}
