//! `/keys/*`: device, one-time and fallback keys; cross-signing keys and signatures; which
//! users' device lists changed between two sync tokens. Other servers' users' keys come from
//! their servers or the kept device lists (`weft_federation::e2ee`).

use std::{collections::BTreeMap, time::Duration};

use axum::Router;
use ruma::{
    api::client::keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt,
};
use serde_json::{json, Value};
use weft_core::{
    e2ee::{self, cross_signing, device_lists, keys},
    sync::SyncToken,
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
    uia,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(upload)
        .ruma(query)
        .ruma(claim)
        .ruma(changes)
        .ruma(upload_signing)
        .ruma(upload_sigs)
}

/// A ruma raw value as a JSON object, or M_BAD_JSON.
pub fn object<T>(raw: &Raw<T>, what: &str) -> ApiResult<Value> {
    Ok(e2ee::parse_object(raw.json().get(), what)?)
}

pub use weft_http::keys::raw;

/// Key maps of an upload as `(key ID, object)` pairs.
pub fn key_list<T>(map: &BTreeMap<OwnedOneTimeKeyId, Raw<T>>) -> ApiResult<Vec<(String, Value)>> {
    map.iter()
        .map(|(id, k)| {
            Ok((
                id.to_string(),
                serde_json::from_str(k.json().get()).map_err(|_| MatrixError::bad_json("invalid key"))?,
            ))
        })
        .collect()
}

pub fn counts(counts: BTreeMap<String, i64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts
        .into_iter()
        .map(|(alg, n)| {
            (
                OneTimeKeyAlgorithm::from(alg.as_str()),
                UInt::try_from(n).unwrap_or_default(),
            )
        })
        .collect()
}

async fn upload(state: AppState, req: Ruma<upload_keys::v3::Request>) -> ApiResult<upload_keys::v3::Response> {
    let user = req.sender()?;
    let upload = keys::Upload {
        device_keys: req.device_keys.as_ref().map(|k| object(k, "device_keys")).transpose()?,
        one_time_keys: key_list(&req.one_time_keys)?,
        fallback_keys: key_list(&req.fallback_keys)?,
    };
    let result = keys::upload(&state.core, user.user_id.as_str(), user.device_id.as_str(), &upload).await?;
    Ok(upload_keys::v3::Response::new(counts(result)))
}

async fn query(state: AppState, req: Ruma<get_keys::v3::Request>) -> ApiResult<get_keys::v3::Response> {
    let user = req.sender()?;
    let requested: BTreeMap<String, Vec<String>> = req
        .device_keys
        .iter()
        .map(|(u, ds)| (u.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    let mut result = keys::query(&state.core, user.user_id.as_str(), &requested).await?;
    let remote: BTreeMap<OwnedUserId, Vec<String>> = req
        .device_keys
        .iter()
        .filter(|(u, _)| !state.core.is_local(u))
        .map(|(u, ds)| (u.clone(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    if !remote.is_empty() {
        match weft_federation::of(&state) {
            Ok(fed) => {
                weft_federation::e2ee::query_keys(
                    fed,
                    user.user_id.as_str(),
                    &remote,
                    timeout(req.timeout),
                    &mut result,
                )
                .await?
            }
            Err(e) => unreachable_servers(remote.keys(), &e, &mut result.failures),
        }
    }
    let typed = weft_http::keys::typed(&result)?;
    let mut response = get_keys::v3::Response::new();
    response.failures = result.failures;
    response.device_keys = typed.device_keys;
    response.master_keys = typed.master_keys;
    response.self_signing_keys = typed.self_signing_keys;
    response.user_signing_keys = typed.user_signing_keys;
    Ok(response)
}

async fn claim(state: AppState, req: Ruma<claim_keys::v3::Request>) -> ApiResult<claim_keys::v3::Response> {
    req.sender()?;
    let requested: BTreeMap<String, BTreeMap<String, String>> = req
        .one_time_keys
        .iter()
        .map(|(u, ds)| {
            (
                u.to_string(),
                ds.iter().map(|(d, alg)| (d.to_string(), alg.to_string())).collect(),
            )
        })
        .collect();
    let mut claimed = keys::claim(&state.core, &requested).await?;
    let remote: BTreeMap<_, _> = req
        .one_time_keys
        .iter()
        .filter(|(u, _)| !state.core.is_local(u))
        .map(|(u, ds)| (u.clone(), ds.clone()))
        .collect();
    let mut failures = BTreeMap::new();
    if !remote.is_empty() {
        match weft_federation::of(&state) {
            Ok(fed) => {
                let (remote_claimed, remote_failures) =
                    weft_federation::e2ee::claim_keys(fed, &remote, timeout(req.timeout)).await;
                claimed.extend(remote_claimed);
                failures = remote_failures;
            }
            Err(e) => unreachable_servers(remote.keys(), &e, &mut failures),
        }
    }
    let mut out = BTreeMap::new();
    for (user_id, devices) in claimed {
        let Ok(user_id) = OwnedUserId::try_from(user_id) else {
            continue;
        };
        let mut per_device = BTreeMap::new();
        for (device_id, keys) in devices {
            let mut per_key = BTreeMap::new();
            for (key_id, key) in keys {
                if let Ok(key_id) = OwnedOneTimeKeyId::try_from(key_id) {
                    per_key.insert(key_id, raw(&key)?);
                }
            }
            per_device.insert(OwnedDeviceId::from(device_id), per_key);
        }
        out.insert(user_id, per_device);
    }
    let mut response = claim_keys::v3::Response::new(out);
    response.failures = failures;
    Ok(response)
}

/// How long other servers are given to answer a key query or claim: the client's `timeout`,
/// else 10 s (the spec's default), at most a minute.
fn timeout(asked: Option<Duration>) -> Duration {
    asked.unwrap_or(Duration::from_secs(10)).min(Duration::from_secs(60))
}

/// `failures` for every server of `users` when federation is off.
fn unreachable_servers<'a>(
    users: impl Iterator<Item = &'a OwnedUserId>,
    why: &MatrixError,
    failures: &mut BTreeMap<String, Value>,
) {
    for user in users {
        failures.insert(
            user.server_name().to_string(),
            json!({ "status": 503, "message": why.message }),
        );
    }
}

async fn changes(state: AppState, req: Ruma<get_key_changes::v3::Request>) -> ApiResult<get_key_changes::v3::Response> {
    let user = req.sender()?;
    let from = SyncToken::parse(&req.from)?;
    let to = SyncToken::parse(&req.to)?;
    let mut conn = state.db.conn().await?;
    let result = device_lists::changes(&mut conn, user.user_id.as_str(), &from, &to, true).await?;
    let ids = |list: Vec<String>| list.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
    Ok(get_key_changes::v3::Response::new(
        ids(result.changed),
        ids(result.left),
    ))
}

async fn upload_signing(
    state: AppState,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> ApiResult<upload_signing_keys::v3::Response> {
    let user = req.sender()?;
    let upload = cross_signing::SigningKeys {
        master: req.master_key.as_ref().map(|k| object(k, "master_key")).transpose()?,
        self_signing: req
            .self_signing_key
            .as_ref()
            .map(|k| object(k, "self_signing_key"))
            .transpose()?,
        user_signing: req
            .user_signing_key
            .as_ref()
            .map(|k| object(k, "user_signing_key"))
            .transpose()?,
    };
    let needs_auth = cross_signing::check_upload(&state.core, user.user_id.as_str(), &upload).await?;
    if needs_auth {
        uia::check(
            &state,
            &req,
            req.auth.as_ref(),
            &[&[uia::PASSWORD]],
            Some(user.user_id.as_str()),
        )
        .await?;
    }
    cross_signing::store_upload(&state.core, user.user_id.as_str(), &upload).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

async fn upload_sigs(
    state: AppState,
    req: Ruma<upload_signatures::v3::Request>,
) -> ApiResult<upload_signatures::v3::Response> {
    let user = req.sender()?;
    let mut signed = Vec::new();
    for (target, keys) in &req.signed_keys {
        for (key_id, object) in keys.iter() {
            let object = e2ee::parse_object(object.get(), "signed key")?;
            signed.push((target.to_string(), key_id.to_owned(), object));
        }
    }
    let failures = cross_signing::upload_signatures(&state.core, user.user_id.as_str(), &signed).await?;
    let mut response = upload_signatures::v3::Response::new();
    for (target, per_key) in failures {
        let Ok(target) = OwnedUserId::try_from(target) else {
            continue;
        };
        let mut out = BTreeMap::new();
        for (key_id, f) in per_key {
            let failure = serde_json::from_value(json!({ "errcode": f.errcode, "error": f.error }))
                .map_err(|e| MatrixError::unknown(e.to_string()))?;
            out.insert(key_id, failure);
        }
        response.failures.insert(target, out);
    }
    Ok(response)
}
