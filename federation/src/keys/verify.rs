//! Reading a key server's answer (`ServerSigningKeys`): it must name the expected server and be
//! signed by one of the keys it lists, else nothing in it is believed.

use ruma::{
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    serde::Base64,
    signatures::PublicKeyMap,
};
use weft_core::storage::server_keys::StoredKey;

/// Longest a fetched key is trusted for, whatever its answer claims: the spec's cap for rooms
/// that enforce key validity.
pub const MAX_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

fn int(value: Option<&CanonicalJsonValue>) -> Option<i64> {
    match value {
        Some(CanonicalJsonValue::Integer(i)) => Some(i64::from(*i)),
        _ => None,
    }
}

fn keys_of(object: &CanonicalJsonObject, field: &str) -> Vec<(String, String, Option<i64>)> {
    let Some(CanonicalJsonValue::Object(keys)) = object.get(field) else {
        return Vec::new();
    };
    keys.iter()
        .filter(|(id, _)| id.starts_with("ed25519:"))
        .filter_map(|(id, key)| {
            let CanonicalJsonValue::Object(key) = key else {
                return None;
            };
            let Some(CanonicalJsonValue::String(public)) = key.get("key") else {
                return None;
            };
            Some((id.clone(), public.clone(), int(key.get("expired_ts"))))
        })
        .collect()
}

/// The keys in `answer`, an answer about `server` fetched at `now`, if it is self-signed.
pub fn self_signed_keys(server: &str, answer: &CanonicalJsonObject, now: i64) -> Result<Vec<StoredKey>, String> {
    match answer.get("server_name") {
        Some(CanonicalJsonValue::String(name)) if name == server => {}
        _ => return Err(format!("the answer is not about {server}")),
    }
    let valid_until = int(answer.get("valid_until_ts")).ok_or("no valid_until_ts")?;
    let current = keys_of(answer, "verify_keys");
    if current.is_empty() {
        return Err("no ed25519 verify key".into());
    }
    let mut public_keys = PublicKeyMap::new();
    let mut set = std::collections::BTreeMap::new();
    for (id, public, _) in &current {
        set.insert(
            id.clone(),
            Base64::parse(public).map_err(|_| format!("{id} is not base64"))?,
        );
    }
    public_keys.insert(server.to_owned(), set);
    // Every signature of the server's own must verify against the keys listed. Others' (a
    // notary's countersignature) are not checked here: only the copy with the server's own
    // signatures is verified, since `verify_json` wants a key for every signer.
    let own = match answer.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => all.get(server).cloned(),
        _ => None,
    }
    .ok_or("not signed by the server itself")?;
    let mut self_signed = answer.clone();
    self_signed.insert(
        "signatures".into(),
        CanonicalJsonValue::Object([(server.to_owned(), own)].into()),
    );
    ruma::signatures::verify_json(&public_keys, &self_signed).map_err(|e| format!("not self-signed: {e}"))?;
    let key_json = serde_json::to_string(answer).map_err(|e| e.to_string())?;
    let valid_until = valid_until.min(now + MAX_VALIDITY_MS);
    let stored = |(key_id, public_key, expired_ts): (String, String, Option<i64>)| StoredKey {
        server_name: server.to_owned(),
        key_id,
        public_key,
        valid_until_ts: valid_until,
        expired_ts,
        fetched_ts: now,
        key_json: key_json.clone(),
    };
    let mut keys: Vec<StoredKey> = current
        .into_iter()
        .map(|(id, key, _)| stored((id, key, None)))
        .collect();
    keys.extend(
        keys_of(answer, "old_verify_keys")
            .into_iter()
            // An old key without `expired_ts` cannot say what it may verify: left out.
            .filter(|(_, _, expired)| expired.is_some())
            .map(stored),
    );
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;
    use serde_json::json;

    use super::*;

    fn signed(server: &str, key: &Ed25519KeyPair, value: serde_json::Value) -> CanonicalJsonObject {
        let CanonicalJsonValue::Object(mut object) = ruma::canonical_json::to_canonical_value(value).unwrap() else {
            panic!()
        };
        ruma::signatures::sign_json(server, key, &mut object).unwrap();
        object
    }

    fn keypair(version: &str) -> (Ed25519KeyPair, String) {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, version.into()).unwrap();
        let public = Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode();
        (pair, public)
    }

    #[test]
    fn a_self_signed_answer_gives_its_keys_with_capped_validity() {
        let (pair, public) = keypair("a");
        let now = 1_000_000;
        let answer = signed(
            "remote.test",
            &pair,
            json!({
                "server_name": "remote.test",
                "verify_keys": { "ed25519:a": { "key": public } },
                "old_verify_keys": { "ed25519:old": { "key": public, "expired_ts": 500 } },
                "valid_until_ts": now + 365 * 24 * 3600 * 1000_i64,
            }),
        );
        let keys = self_signed_keys("remote.test", &answer, now).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key_id, "ed25519:a");
        assert_eq!(keys[0].valid_until_ts, now + MAX_VALIDITY_MS);
        assert!(keys[0].valid_at(now) && !keys[0].valid_at(now + MAX_VALIDITY_MS + 1));
        assert_eq!(keys[1].expired_ts, Some(500));
        assert!(keys[1].valid_at(499) && !keys[1].valid_at(500));
    }

    #[test]
    fn answers_not_signed_by_their_own_keys_or_about_another_server_are_refused() {
        let (pair, public) = keypair("a");
        let (other, _) = keypair("a");
        let body = json!({
            "server_name": "remote.test",
            "verify_keys": { "ed25519:a": { "key": public } },
            "valid_until_ts": 2_000_000,
        });
        // Signed by a key that is not the one listed.
        let forged = signed("remote.test", &other, body.clone());
        assert!(self_signed_keys("remote.test", &forged, 1).is_err());
        // Unsigned.
        let CanonicalJsonValue::Object(unsigned) = ruma::canonical_json::to_canonical_value(&body).unwrap() else {
            panic!()
        };
        assert!(self_signed_keys("remote.test", &unsigned, 1).is_err());
        // About another server.
        let genuine = signed("remote.test", &pair, body);
        assert!(self_signed_keys("remote.test", &genuine, 1).is_ok());
        assert!(self_signed_keys("elsewhere.test", &genuine, 1).is_err());
        // Countersigned by a notary: still the server's own answer.
        let mut countersigned = genuine.clone();
        ruma::signatures::sign_json("notary.test", &other, &mut countersigned).unwrap();
        assert!(self_signed_keys("remote.test", &countersigned, 1).is_ok());
    }
}
