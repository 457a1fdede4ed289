//! Cross-signing: the master, self-signing and user-signing keys, and the signatures users
//! upload to vouch for their own devices and for other users.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::AnyConnection;

use super::{device_lists, has_valid_signature, keys, signable, single_ed25519_key};
use crate::{Core, Error, Result};

/// One `/keys/device_signing/upload`.
#[derive(Clone, Debug, Default)]
pub struct SigningKeys {
    pub master: Option<Value>,
    pub self_signing: Option<Value>,
    pub user_signing: Option<Value>,
}

impl SigningKeys {
    fn entries(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        [
            ("master", &self.master),
            ("self_signing", &self.self_signing),
            ("user_signing", &self.user_signing),
        ]
        .into_iter()
        .filter_map(|(t, k)| k.as_ref().map(|k| (t, k)))
    }
}

/// `(key type, public key, key JSON)` of the user's cross-signing keys.
pub async fn keys_of(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<(String, String, Value)>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT key_type, public_key, key_json FROM e2e_cross_signing_keys WHERE user_id = $1 ORDER BY key_type",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, p, k)| Some((t, p, serde_json::from_str(&k).ok()?)))
        .collect())
}

async fn key_of(conn: &mut AnyConnection, user_id: &str, key_type: &str) -> Result<Option<(String, Value)>> {
    Ok(keys_of(conn, user_id)
        .await?
        .into_iter()
        .find(|(t, _, _)| t == key_type)
        .map(|(_, p, k)| (p, k)))
}

/// Checks one key's owner, usage and single ed25519 key; returns its public key.
fn validate_key(key: &Value, user_id: &str, usage: &str) -> Result<String> {
    if key["user_id"].as_str() != Some(user_id) {
        return Err(Error::InvalidParam(format!("{usage} key must belong to {user_id}")));
    }
    if !key["usage"].as_array().is_some_and(|u| u.iter().any(|x| x == usage)) {
        return Err(Error::InvalidParam(format!("{usage} key must have usage {usage}")));
    }
    match single_ed25519_key(key) {
        Some((name, public)) if name == public => Ok(public),
        _ => Err(Error::InvalidParam(format!(
            "{usage} key must have exactly one ed25519 key, named by its public key"
        ))),
    }
}

/// Validates an upload against the stored keys. Returns whether it needs user-interactive
/// auth: not for the user's first master key, nor for an exact replay of stored keys.
pub async fn check_upload(core: &Core, user_id: &str, upload: &SigningKeys) -> Result<bool> {
    let mut conn = core.db.conn().await?;
    let stored = keys_of(&mut conn, user_id).await?;
    let master_public = match &upload.master {
        Some(m) => Some(validate_key(m, user_id, "master")?),
        None => stored.iter().find(|(t, _, _)| t == "master").map(|(_, p, _)| p.clone()),
    };
    for (usage, key) in upload.entries().filter(|(t, _)| *t != "master") {
        validate_key(key, user_id, usage)?;
        let Some(master) = &master_public else {
            return Err(Error::InvalidParam("upload a master key first".into()));
        };
        if !has_valid_signature(key, user_id, master, master) {
            return Err(Error::InvalidParam(format!(
                "{usage} key is not signed by the master key"
            )));
        }
    }
    let has_master = stored.iter().any(|(t, _, _)| t == "master");
    let replay = upload
        .entries()
        .all(|(t, k)| stored.iter().any(|(st, _, sk)| st == t && sk == k));
    Ok(has_master && !replay)
}

/// Stores an upload that `check_upload` accepted (and UIA cleared).
pub async fn store_upload(core: &Core, user_id: &str, upload: &SigningKeys) -> Result<()> {
    let mut tx = core.db.write().await?;
    for (key_type, key) in upload.entries() {
        let public = single_ed25519_key(key).map(|(_, p)| p).unwrap_or_default();
        sqlx::query(
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = excluded.public_key, key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(key_type)
        .bind(&public)
        .bind(key.to_string())
        .execute(&mut *tx)
        .await?;
    }
    device_lists::record_changes(&mut tx, &[user_id]).await?;
    tx.commit().await?;
    device_lists::notify(core, user_id).await
}

/// Why one uploaded signature was refused.
#[derive(Clone, Debug)]
pub struct SignatureFailure {
    pub errcode: &'static str,
    pub error: String,
}

fn failure(errcode: &'static str, error: impl Into<String>) -> SignatureFailure {
    SignatureFailure {
        errcode,
        error: error.into(),
    }
}

/// A signature that checked out: `(target user, target key, signer key, signature)`.
type Valid = (String, String, String, String);

/// Stores the valid signatures of a `/keys/signatures/upload` and reports the others per
/// (user, key ID). Self-signing and master keys may sign the uploader's own devices, devices
/// may sign the uploader's master key, and the user-signing key signs other users' master keys.
pub async fn upload_signatures(
    core: &Core,
    signer: &str,
    signed: &[(String, String, Value)],
) -> Result<BTreeMap<String, BTreeMap<String, SignatureFailure>>> {
    let mut conn = core.db.conn().await?;
    let mut failures: BTreeMap<String, BTreeMap<String, SignatureFailure>> = BTreeMap::new();
    let mut valid: Vec<Valid> = Vec::new();
    for (target_user, key_id, object) in signed {
        match check_signed_object(&mut conn, signer, target_user, key_id, object).await? {
            Ok(mut found) => valid.append(&mut found),
            Err(f) => {
                failures
                    .entry(target_user.clone())
                    .or_default()
                    .insert(key_id.clone(), f);
            }
        }
    }
    drop(conn);
    if valid.is_empty() {
        return Ok(failures);
    }
    let mut tx = core.db.write().await?;
    let mut changed: Vec<&str> = vec![signer];
    for (target_user, target_key, signer_key, signature) in &valid {
        sqlx::query(
            "INSERT INTO e2e_signatures (target_user, target_key, signer_user, signer_key, signature) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (target_user, target_key, signer_user, signer_key) DO UPDATE SET signature = excluded.signature",
        )
        .bind(target_user)
        .bind(target_key)
        .bind(signer)
        .bind(signer_key)
        .bind(signature)
        .execute(&mut *tx)
        .await?;
        changed.push(target_user);
    }
    device_lists::record_changes(&mut tx, &changed).await?;
    tx.commit().await?;
    let mut notified: Vec<&str> = changed.clone();
    notified.sort_unstable();
    notified.dedup();
    for user in notified {
        device_lists::notify(core, user).await?;
    }
    Ok(failures)
}

/// The valid new signatures `signer` put on one object, or why there are none.
async fn check_signed_object(
    conn: &mut AnyConnection,
    signer: &str,
    target_user: &str,
    key_id: &str,
    object: &Value,
) -> Result<Result<Vec<Valid>, SignatureFailure>> {
    // Which stored object is being signed, and which of the signer's keys may sign it.
    let (stored, signing_keys): (Value, Vec<(String, String)>) = if target_user == signer {
        let own = keys_of(conn, signer).await?;
        let find = |t: &str| {
            own.iter()
                .find(|(kt, _, _)| kt == t)
                .map(|(_, p, k)| (p.clone(), k.clone()))
        };
        if let Some((device_keys, _)) = keys::device_ed25519(conn, signer, key_id).await? {
            let signers = [find("self_signing"), find("master")]
                .into_iter()
                .flatten()
                .map(|(p, _)| (p.clone(), p))
                .collect();
            (device_keys, signers)
        } else if let Some((_, master)) = find("master").filter(|(p, _)| p == key_id) {
            let mut signers = Vec::new();
            if let Some(devices) = object["signatures"][signer].as_object() {
                for name in devices.keys().filter_map(|k| k.strip_prefix("ed25519:")) {
                    if let Some((_, ed)) = keys::device_ed25519(conn, signer, name).await? {
                        signers.push((name.to_owned(), ed));
                    }
                }
            }
            (signable(&master), signers)
        } else {
            return Ok(Err(failure("M_NOT_FOUND", format!("unknown key {key_id}"))));
        }
    } else {
        // Another server's user's master key is the one kept with their device list.
        let master = match key_of(conn, target_user, "master").await? {
            Some(found) => Some(found),
            None => super::remote::master_key(conn, target_user).await?,
        };
        let Some((public, master)) = master else {
            return Ok(Err(failure("M_NOT_FOUND", format!("{target_user} has no master key"))));
        };
        if public != key_id {
            return Ok(Err(failure(
                "M_NOT_FOUND",
                format!("{key_id} is not the master key of {target_user}"),
            )));
        }
        let Some((usk, _)) = key_of(conn, signer, "user_signing").await? else {
            return Ok(Err(failure("M_INVALID_SIGNATURE", "upload a user-signing key first")));
        };
        (signable(&master), vec![(usk.clone(), usk)])
    };
    if signable(object) != signable(&stored) {
        return Ok(Err(failure(
            "M_INVALID_SIGNATURE",
            "the signed object does not match the stored key",
        )));
    }
    let mut found = Vec::new();
    for (name, public) in &signing_keys {
        let signer_key = format!("ed25519:{name}");
        let Some(signature) = object["signatures"][signer][&signer_key].as_str() else {
            continue;
        };
        if !has_valid_signature(object, signer, name, public) {
            return Ok(Err(failure(
                "M_INVALID_SIGNATURE",
                format!("invalid signature by {signer_key}"),
            )));
        }
        found.push((
            target_user.to_owned(),
            key_id.to_owned(),
            signer_key,
            signature.to_owned(),
        ));
    }
    if found.is_empty() {
        return Ok(Err(failure(
            "M_INVALID_SIGNATURE",
            "no signature by a key allowed to sign this object",
        )));
    }
    Ok(Ok(found))
}
