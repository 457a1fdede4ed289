//! End-to-end encryption for other servers' users, on behalf of local clients: their keys
//! (`query_keys`: from the kept device lists of `e2ee::remote` when current, else from their
//! servers), their one-time keys (`claim_keys`), and fetching a user's whole device list
//! (`resync`), which starts keeping it and repairs it when an update was missed.
//!
//! Servers are asked side by side, each within the client's `timeout`; one that fails is named
//! in `failures` and the others' answers still count.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId,
};
use serde_json::{json, Value};
use weft_core::e2ee::{
    keys::{Claimed, QueryResult},
    remote::{self, DeviceList, RemoteDevice},
};

use crate::{client::FederationError, Federation};

/// How long a resync started by an EDU waits for the user's server.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A `failures` entry for a server that did not answer as asked.
fn failure(e: &FederationError) -> Value {
    json!({ "status": e.status().unwrap_or(503), "message": e.to_string() })
}

fn parse<T: serde::de::DeserializeOwned>(raw: &ruma::serde::Raw<T>) -> Option<Value> {
    serde_json::from_str(raw.json().get()).ok()
}

/// Whether device keys are what they claim to be: the user's and the device's own.
fn keys_match(keys: &Value, user_id: &str, device_id: &str) -> bool {
    keys["user_id"].as_str() == Some(user_id) && keys["device_id"].as_str() == Some(device_id)
}

/// Keys of other servers' users (all their devices when a list is empty), added to `result`.
pub async fn query_keys(
    fed: &Federation,
    requester: &str,
    requested: &BTreeMap<OwnedUserId, Vec<String>>,
    timeout: Duration,
    result: &mut QueryResult,
) -> weft_core::Result<()> {
    let core = fed.client.core();
    let mut by_server: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>> = BTreeMap::new();
    for (user_id, wanted) in requested {
        if core.is_local(user_id) {
            continue;
        }
        if let Some(list) = remote::current(core, user_id.as_str()).await? {
            add_cached(result, user_id.as_str(), wanted, list);
            continue;
        }
        by_server.entry(user_id.server_name().to_owned()).or_default().insert(
            user_id.clone(),
            wanted.iter().map(|d| OwnedDeviceId::from(d.as_str())).collect(),
        );
    }
    let asks = by_server.into_iter().map(|(server, users)| async move {
        let answer = fed
            .client
            .send_with_timeout(&server, get_keys::v1::Request::new(users), timeout)
            .await;
        (server, answer)
    });
    for (server, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(answer) => add_answer(fed, result, &server, answer).await,
            Err(e) => {
                tracing::info!(%server, "keys query failed: {e}");
                result.failures.insert(server.to_string(), failure(&e));
            }
        }
    }
    // The requester's own signatures on these users' master keys are kept only here.
    let local_suffix = format!(":{}", core.server_name);
    let mut remote_masters: BTreeMap<String, Value> = result
        .master_keys
        .iter()
        .filter(|(user, _)| !user.ends_with(&local_suffix))
        .map(|(u, k)| (u.clone(), k.clone()))
        .collect();
    remote::add_own_signatures(core, requester, &mut remote_masters).await?;
    result.master_keys.extend(remote_masters);
    Ok(())
}

fn add_cached(result: &mut QueryResult, user_id: &str, wanted: &[String], list: DeviceList) {
    let mut out = BTreeMap::new();
    for device in list.devices {
        if !wanted.is_empty() && !wanted.contains(&device.device_id) {
            continue;
        }
        let mut keys = device.keys;
        if !keys["unsigned"].is_object() {
            keys["unsigned"] = json!({});
        }
        if let Some(name) = device.display_name {
            keys["unsigned"]["device_display_name"] = json!(name);
        }
        out.insert(device.device_id, keys);
    }
    result.device_keys.insert(user_id.to_owned(), out);
    if let Some(master) = list.master_key {
        result.master_keys.insert(user_id.to_owned(), master);
    }
    if let Some(self_signing) = list.self_signing_key {
        result.self_signing_keys.insert(user_id.to_owned(), self_signing);
    }
}

/// A server's answer, keeping only what is about its own users and self-consistent; users
/// whose lists are not kept yet (or are stale) and share a room here are resynced in the
/// background, so later queries and updates find them.
async fn add_answer(
    fed: &Federation,
    result: &mut QueryResult,
    server: &OwnedServerName,
    answer: get_keys::v1::Response,
) {
    let ours = |user_id: &UserId| user_id.server_name() == server;
    for (user_id, devices) in answer.device_keys {
        if !ours(&user_id) {
            continue;
        }
        let out = devices
            .into_iter()
            .filter_map(|(device_id, keys)| {
                let keys = parse(&keys)?;
                keys_match(&keys, user_id.as_str(), device_id.as_str()).then(|| (device_id.to_string(), keys))
            })
            .collect();
        result.device_keys.insert(user_id.to_string(), out);
        start_keeping(fed, &user_id).await;
    }
    for (target, source) in [
        (&mut result.master_keys, answer.master_keys),
        (&mut result.self_signing_keys, answer.self_signing_keys),
    ] {
        for (user_id, key) in source {
            if let (true, Some(key)) = (ours(&user_id), parse(&key)) {
                if key["user_id"].as_str() == Some(user_id.as_str()) {
                    target.insert(user_id.to_string(), key);
                }
            }
        }
    }
}

/// Resyncs `user_id` in the background when their list is not kept current and they share a
/// room with a local user.
async fn start_keeping(fed: &Federation, user_id: &UserId) {
    let core = fed.client.core();
    let current = remote::is_current(core, user_id.as_str()).await.unwrap_or(true);
    if current {
        return;
    }
    let shares = match core.db.conn().await {
        Ok(mut conn) => remote::shares_room_with_local(core, &mut conn, user_id.as_str())
            .await
            .unwrap_or(false),
        Err(_) => false,
    };
    if shares {
        let client = fed.client.clone();
        let user_id = user_id.to_owned();
        tokio::spawn(async move { resync(&client, &user_id).await });
    }
}

/// One-time keys of other servers' users: user -> device -> algorithm. Returns what was
/// claimed and the servers that failed.
pub async fn claim_keys(
    fed: &Federation,
    requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    timeout: Duration,
) -> (Claimed, BTreeMap<String, Value>) {
    let core = fed.client.core();
    let mut by_server: BTreeMap<OwnedServerName, claim_keys::v1::OneTimeKeyClaims> = BTreeMap::new();
    for (user_id, devices) in requested {
        if !core.is_local(user_id) {
            by_server
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id.clone(), devices.clone());
        }
    }
    let asks = by_server.into_iter().map(|(server, claims)| async move {
        let answer = fed
            .client
            .send_with_timeout(&server, claim_keys::v1::Request::new(claims), timeout)
            .await;
        (server, answer)
    });
    let mut claimed = Claimed::new();
    let mut failures = BTreeMap::new();
    for (server, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(answer) => {
                for (user_id, devices) in answer.one_time_keys {
                    if user_id.server_name() != server {
                        continue;
                    }
                    for (device_id, keys) in devices {
                        for (key_id, key) in keys {
                            if let Some(key) = parse(&key) {
                                claimed
                                    .entry(user_id.to_string())
                                    .or_default()
                                    .entry(device_id.to_string())
                                    .or_default()
                                    .insert(key_id.to_string(), key);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::info!(%server, "keys claim failed: {e}");
                failures.insert(server.to_string(), failure(&e));
            }
        }
    }
    (claimed, failures)
}

/// Fetches a user's whole device list from their server and keeps it (`remote::replace`);
/// on failure a kept list is marked stale, so queries ask the server until a resync works.
pub async fn resync(client: &crate::client::Client, user_id: &UserId) {
    let core = client.core();
    let answer = client
        .send_with_timeout(
            user_id.server_name(),
            get_devices::v1::Request::new(user_id.to_owned()),
            RESYNC_TIMEOUT,
        )
        .await;
    let outcome = match answer {
        Ok(answer) if answer.user_id == user_id => {
            let list = DeviceList {
                stream_id: i64::try_from(u64::from(answer.stream_id)).unwrap_or(i64::MAX),
                devices: answer
                    .devices
                    .into_iter()
                    .filter_map(|d| {
                        let keys = parse(&d.keys)?;
                        keys_match(&keys, user_id.as_str(), d.device_id.as_str()).then(|| RemoteDevice {
                            device_id: d.device_id.to_string(),
                            display_name: d.device_display_name,
                            keys,
                        })
                    })
                    .collect(),
                master_key: answer.master_key.as_ref().and_then(parse),
                self_signing_key: answer.self_signing_key.as_ref().and_then(parse),
            };
            remote::replace(core, user_id.as_str(), &list)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Ok(answer) => Err(format!("the answer is about {}", answer.user_id)),
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = outcome {
        tracing::info!(%user_id, "device list resync failed: {why}");
        if let Err(e) = remote::mark_stale(core, user_id.as_str()).await {
            tracing::warn!(%user_id, "marking a device list stale: {e}");
        }
    }
}
