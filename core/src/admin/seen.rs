//! Where sessions were last seen: each device's address, user agent and time, recorded as
//! authenticated requests arrive, for the admin API's whois and device lists.

use std::{collections::HashMap, sync::Mutex};

use serde_json::{json, Map, Value};

use crate::{util::now_ms, Db, Result};

/// How often one session's sighting is written again: Synapse's `last_seen` is as coarse.
const REFRESH_MS: i64 = 60_000;

/// The sightings this process wrote lately, so that a busy client costs a write a minute.
#[derive(Default)]
pub struct Seen {
    written: Mutex<HashMap<(String, String, String, String), i64>>,
}

impl Seen {
    /// Records that `device_id` of `user_id` made a request from `ip` with `user_agent`.
    /// Written at once the first time, then at most once per `REFRESH_MS`.
    pub async fn record(&self, db: &Db, user_id: &str, device_id: &str, ip: &str, user_agent: &str) -> Result<()> {
        let now = now_ms();
        let key = (
            user_id.to_owned(),
            device_id.to_owned(),
            ip.to_owned(),
            user_agent.to_owned(),
        );
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if written.get(&key).is_some_and(|at| now - at < REFRESH_MS) {
                return Ok(());
            }
            if written.len() > 100_000 {
                written.retain(|_, at| now - *at < REFRESH_MS);
            }
            written.insert(key, now);
        }
        let mut tx = db.write().await?;
        sqlx::query(
            "INSERT INTO user_ips (user_id, device_id, ip, user_agent, last_seen) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, device_id, ip, user_agent) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(ip)
        .bind(user_agent)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(now)
            .bind(ip)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// The last user agent each device of `user_id` was seen with.
pub async fn last_user_agents(db: &Db, user_id: &str) -> Result<HashMap<String, String>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT device_id, user_agent, last_seen FROM user_ips WHERE user_id = $1 ORDER BY last_seen")
            .bind(user_id)
            .fetch_all(db.pool())
            .await?;
    Ok(rows.into_iter().map(|(d, ua, _)| (d, ua)).collect())
}

/// Synapse's whois answer: per device, one session with its connections (address, user agent,
/// last seen). Devices that never made a request since sightings were recorded have none.
pub async fn whois(db: &Db, user_id: &str) -> Result<Value> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT device_id, ip, user_agent, last_seen FROM user_ips WHERE user_id = $1
         ORDER BY device_id, last_seen DESC",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    let mut devices = Map::new();
    for (device_id, ip, user_agent, last_seen) in rows {
        let entry = devices
            .entry(device_id)
            .or_insert_with(|| json!({ "sessions": [{ "connections": [] }] }));
        if let Some(connections) = entry["sessions"][0]["connections"].as_array_mut() {
            connections.push(json!({ "ip": ip, "last_seen": last_seen, "user_agent": user_agent }));
        }
    }
    Ok(json!({ "user_id": user_id, "devices": devices }))
}
