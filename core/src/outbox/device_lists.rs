//! Device list updates for other servers: the `device_lists` stream tailed like the `events`
//! stream (`tail.rs`), so that every change of a local user's devices or cross-signing keys
//! reaches each server sharing a room with them, exactly once, across crashes.
//!
//! The stream says only *who* changed. What changed is found by comparing the user's devices
//! with keys (as `/keys/query` serves them) and cross-signing keys now against digests of what
//! other servers were last told (`device_list_outbound_devices`, `_users`): each device that
//! differs becomes one `m.device_list_update` (or a `deleted` one), a changed master or
//! self-signing key one `m.signing_key_update`. Each device update takes the user's next stream
//! ID with the previous one as its `prev_id`, the chain by which a receiver sees it missed
//! nothing; `/user/devices` answers the last ID sent (`stream_id`) with the devices as they are
//! now, so a receiver that resynced applies later updates on top.
//!
//! Each round reads, queues, updates the digests and moves its position in one transaction
//! that locks the position's row first, so two processes take turns and none sends twice.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{
    e2ee::{
        device_lists::sharing_users,
        keys::{self, QueryResult},
    },
    util::hash_token,
    Core, Error, Result,
};

/// Users read per transaction: bounds how long a round holds the row.
const USERS_PER_ROUND: i64 = 100;

/// Queues the device list updates of every local user whose change is not yet sent; returns
/// how many EDUs were queued.
pub async fn tail(core: &Core) -> Result<usize> {
    let (tail, stream): (i64, i64) = sqlx::query_as(
        "SELECT t.pos, s.pos FROM device_list_outbound_tail t, stream_positions s
         WHERE t.id = 0 AND s.stream = 'device_lists'",
    )
    .fetch_optional(core.db.pool())
    .await?
    .ok_or_else(|| Error::internal("the device list tailer's row is missing"))?;
    if stream <= tail {
        return Ok(0);
    }
    let mut queued = 0;
    loop {
        let (n, more) = round(core).await?;
        queued += n;
        if !more {
            return Ok(queued);
        }
    }
}

async fn round(core: &Core) -> Result<(usize, bool)> {
    let mut tx = core.db.write().await?;
    let from: i64 = sqlx::query_scalar("UPDATE device_list_outbound_tail SET pos = pos WHERE id = 0 RETURNING pos")
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::internal("the device list tailer's row is missing"))?;
    let upto: i64 = sqlx::query_scalar("SELECT pos FROM stream_positions WHERE stream = 'device_lists'")
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT stream_pos, user_id FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2
         ORDER BY stream_pos LIMIT $3",
    )
    .bind(from)
    .bind(upto)
    .bind(USERS_PER_ROUND)
    .fetch_all(&mut *tx)
    .await?;
    let more = rows.len() as i64 == USERS_PER_ROUND;
    let new_pos = match (more, rows.last()) {
        (true, Some((pos, _))) => *pos,
        _ => upto.max(from),
    };
    let local_suffix = format!(":{}", core.server_name);
    let users: BTreeSet<String> = rows
        .into_iter()
        .map(|(_, user)| user)
        .filter(|u| u.ends_with(&local_suffix))
        .collect();
    let mut edus = Vec::new();
    for user in &users {
        let destinations = destinations(core, &mut tx, user).await?;
        let updates = updates_for(&mut tx, user, !destinations.is_empty()).await?;
        for edu in updates {
            edus.push((destinations.clone(), edu));
        }
    }
    let mut queued = 0;
    for (destinations, edu) in &edus {
        for destination in destinations {
            super::enqueue_edu(&mut tx, destination, edu).await?;
            queued += 1;
        }
    }
    sqlx::query("UPDATE device_list_outbound_tail SET pos = $1 WHERE id = 0")
        .bind(new_pos)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((queued, more))
}

/// The other servers with a member in a room the user is joined to.
async fn destinations(core: &Core, conn: &mut AnyConnection, user_id: &str) -> Result<BTreeSet<String>> {
    Ok(sharing_users(conn, user_id)
        .await?
        .iter()
        .filter_map(|u| u.split_once(':').map(|(_, server)| server.to_owned()))
        .filter(|server| server != core.server_name.as_str())
        .collect())
}

/// The EDUs that bring other servers from what they were told of `user_id` to now, and the
/// digests updated to match. With `any_destination` false nothing is queued, but the digests
/// still move on, so that a server that later shares a room (and resyncs) is not sent stale
/// differences.
async fn updates_for(conn: &mut AnyConnection, user_id: &str, any_destination: bool) -> Result<Vec<Value>> {
    let mut now = QueryResult::default();
    keys::local_user_keys(&mut *conn, "", user_id, &[], &mut now).await?;
    let devices: BTreeMap<String, Value> = now.device_keys.remove(user_id).unwrap_or_default();
    let told: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT device_id, digest FROM device_list_outbound_devices WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let user_row: Option<(i64, String)> =
        sqlx::query_as("SELECT stream_id, signing_digest FROM device_list_outbound_users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (mut stream_id, told_signing) = user_row.unwrap_or((0, String::new()));

    let mut edus = Vec::new();
    let ids: BTreeSet<&String> = devices.keys().chain(told.keys()).collect();
    for device_id in ids {
        let keys = devices.get(device_id);
        let digest = keys.map(|k| hash_token(&k.to_string()));
        if digest.as_ref() == told.get(device_id) {
            continue;
        }
        let prev = stream_id;
        stream_id += 1;
        let mut content = json!({
            "user_id": user_id,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": if prev > 0 { vec![prev] } else { vec![] },
            "deleted": keys.is_none(),
        });
        if let Some(keys) = keys {
            content["keys"] = keys.clone();
            if let Some(name) = keys["unsigned"]["device_display_name"].as_str() {
                content["device_display_name"] = json!(name);
            }
        }
        edus.push(json!({ "edu_type": "m.device_list_update", "content": content }));
        match digest {
            Some(digest) => {
                sqlx::query(
                    "INSERT INTO device_list_outbound_devices (user_id, device_id, digest) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET digest = excluded.digest",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(digest)
                .execute(&mut *conn)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM device_list_outbound_devices WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *conn)
                    .await?
            }
        };
    }

    let master = now.master_keys.remove(user_id);
    let self_signing = now.self_signing_keys.remove(user_id);
    let signing = json!({ "master_key": master, "self_signing_key": self_signing });
    let signing_digest = if master.is_none() && self_signing.is_none() {
        String::new()
    } else {
        hash_token(&signing.to_string())
    };
    if signing_digest != told_signing && !signing_digest.is_empty() {
        let mut content = json!({ "user_id": user_id });
        if let Some(master) = master {
            content["master_key"] = master;
        }
        if let Some(self_signing) = self_signing {
            content["self_signing_key"] = self_signing;
        }
        edus.push(json!({ "edu_type": "m.signing_key_update", "content": content }));
    }
    if !edus.is_empty() || signing_digest != told_signing {
        sqlx::query(
            "INSERT INTO device_list_outbound_users (user_id, stream_id, signing_digest) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, signing_digest = excluded.signing_digest",
        )
        .bind(user_id)
        .bind(stream_id)
        .bind(&signing_digest)
        .execute(&mut *conn)
        .await?;
    }
    Ok(if any_destination { edus } else { Vec::new() })
}

/// The stream ID `/user/devices` answers for a local user: the last update sent about them.
pub async fn stream_id(conn: &mut AnyConnection, user_id: &str) -> Result<i64> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT stream_id FROM device_list_outbound_users WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map_or(0, |r| r.0))
}
