//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing, to-device messages, key backup;
//! other servers' users' device lists (`remote`).
//!
//! The server never decrypts anything: it stores what clients upload, checks the signatures
//! that say who vouches for which key, and hands keys and messages to the right devices.

pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod device_lists;
pub mod keys;
pub mod remote;
pub mod to_device;

use base64::{
    engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig},
    Engine,
};
use ruma::{canonical_json::CanonicalJsonObject, signatures::SigningKeyAlgorithm};
use serde_json::Value;

use crate::{Error, Result};

/// Clients send unpadded base64; accept padded too rather than fail on a detail.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JSON object from a raw request part, or M_BAD_JSON.
pub fn parse_object(raw: &str, what: &str) -> Result<Value> {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Error::BadJson(format!("{what} must be a JSON object"))),
    }
}

/// Whether `object` carries a valid ed25519 signature by `signer_user`'s key
/// `ed25519:<key_name>` whose public key is `public_key` (unpadded base64). The signed bytes
/// are the canonical JSON without `signatures` and `unsigned`.
pub fn has_valid_signature(object: &Value, signer_user: &str, key_name: &str, public_key: &str) -> bool {
    let key_id = format!("ed25519:{key_name}");
    let Some(signature) = object["signatures"][signer_user][&key_id].as_str() else {
        return false;
    };
    verify_signature(object, signature, public_key)
}

/// Checks one detached signature (unpadded base64) over `object`'s signable form.
pub fn verify_signature(object: &Value, signature: &str, public_key: &str) -> bool {
    let (Ok(sig), Ok(key)) = (BASE64.decode(signature), BASE64.decode(public_key)) else {
        return false;
    };
    let Ok(canonical) = serde_json::from_value::<CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Ok(bytes) = ruma::signatures::to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, &key, &sig, bytes.as_bytes()).is_ok()
}

/// The object without `signatures` and `unsigned`: what two uploads of one key must share.
pub fn signable(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    copy
}

/// The only ed25519 key of a cross-signing key object: `(key name, public key)`, where the
/// key name equals the public key by the spec's convention.
pub fn single_ed25519_key(object: &Value) -> Option<(String, String)> {
    let keys = object["keys"].as_object()?;
    let mut ed = keys.iter().filter(|(id, _)| id.starts_with("ed25519:"));
    let (id, key) = ed.next()?;
    if ed.next().is_some() {
        return None;
    }
    Some((id.trim_start_matches("ed25519:").to_owned(), key.as_str()?.to_owned()))
}

/// Adds `signature` by `signer_user`/`signer_key` to `object["signatures"]`.
pub fn merge_signature(object: &mut Value, signer_user: &str, signer_key: &str, signature: &str) {
    if !object["signatures"].is_object() {
        object["signatures"] = Value::Object(Default::default());
    }
    if !object["signatures"][signer_user].is_object() {
        object["signatures"][signer_user] = Value::Object(Default::default());
    }
    object["signatures"][signer_user][signer_key] = Value::String(signature.to_owned());
}
