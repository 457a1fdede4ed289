//! LiveKit access tokens: JWTs signed (HS256) with the secret the SFU shares with this server.
//!
//! LiveKit knows rooms by name and participants by identity. Both are derived, never chosen by
//! the client, and pseudonymous, so that the SFU learns neither the Matrix room nor the user
//! (MSC4195): a room name is the unpadded base64 SHA-256 of the canonical JSON array
//! `[room_id, slot_id]`, an identity that of `[user_id, member_id]`. lk-jwt-service's own
//! endpoints derive identities its way (see `Identity`), which Element Call's clients of those
//! endpoints expect.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{util::now_ms, Error, Result};

/// The slot Element Call's legacy `/sfu/get` clients are in: the room's one call.
pub const LEGACY_CALL_SLOT: &str = "m.call#ROOM";

/// An SFU this server issues tokens for.
#[derive(Clone, Debug)]
pub struct Sfu {
    /// Its WebSocket URL, as clients connect to it.
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    pub token_lifetime: Duration,
}

/// The unpadded base64 SHA-256 of the canonical JSON array of `parts` (an array of strings is
/// canonical as serde_json writes it: no spaces, strings escaped minimally).
fn pseudonym(parts: &[&str]) -> String {
    let json = serde_json::to_string(parts).expect("strings serialise");
    STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

/// The LiveKit room of a MatrixRTC slot in a Matrix room.
pub fn room_name(room_id: &str, slot_id: &str) -> String {
    pseudonym(&[room_id, slot_id])
}

/// How a participant's LiveKit identity is derived.
pub enum Identity<'a> {
    /// MSC4195: from the member event's sender and `member.id`.
    Member { user_id: &'a str, member_id: &'a str },
    /// lk-jwt-service's `/get_token`: from the user, their device and `member.id`.
    Device {
        user_id: &'a str,
        device_id: &'a str,
        member_id: &'a str,
    },
    /// lk-jwt-service's legacy `/sfu/get`: `<user_id>:<device_id>` in the clear, which older
    /// Element Call clients map back to the Matrix user.
    Legacy { user_id: &'a str, device_id: &'a str },
}

impl Identity<'_> {
    pub fn derive(&self) -> String {
        match self {
            Identity::Member { user_id, member_id } => pseudonym(&[user_id, member_id]),
            Identity::Device {
                user_id,
                device_id,
                member_id,
            } => pseudonym(&[user_id, device_id, member_id]),
            Identity::Legacy { user_id, device_id } => format!("{user_id}:{device_id}"),
        }
    }
}

/// What a token lets its holder do in its room, besides joining and subscribing, which every
/// token allows.
#[derive(Clone, Copy, Debug)]
pub struct Grants {
    /// Only a local user publishes on this server's SFU (MSC4195's multi-SFU model).
    pub can_publish: bool,
    pub can_update_own_metadata: bool,
}

/// LiveKit's `video` grant, in its JSON names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VideoGrant<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    room_join: bool,
    /// Never for clients: it also lets its holder delete any room (MSC4195). The server itself
    /// creates rooms (`create_room`).
    room_create: bool,
    /// For this server's own questions about a room (its participants).
    #[serde(skip_serializing_if = "Option::is_none")]
    room_admin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_subscribe: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_update_own_metadata: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden: Option<bool>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    nbf: i64,
    exp: i64,
    video: VideoGrant<'a>,
}

fn sign(sfu: &Sfu, claims: &Claims<'_>) -> Result<String> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(sfu.api_secret.as_bytes()),
    )
    .map_err(|e| Error::Internal(format!("signing a LiveKit token: {e}")))
}

/// A token for `identity` to join `room` on `sfu`, named `name` to other participants.
pub fn join_token(sfu: &Sfu, room: &str, identity: &str, name: Option<&str>, grants: Grants) -> Result<String> {
    let now = now_ms() / 1000;
    sign(
        sfu,
        &Claims {
            iss: &sfu.api_key,
            sub: Some(identity),
            name,
            nbf: now,
            exp: now + sfu.token_lifetime.as_secs() as i64,
            video: VideoGrant {
                room: Some(room),
                room_join: true,
                room_create: false,
                room_admin: None,
                can_publish: Some(grants.can_publish),
                can_subscribe: Some(true),
                can_update_own_metadata: Some(grants.can_update_own_metadata),
                hidden: Some(false),
            },
        },
    )
}

/// The SFU's HTTP base (its API listens where its WebSocket does).
fn http_base(sfu: &Sfu) -> String {
    let url = sfu.url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        url.to_owned()
    }
}

/// A token for this server's own calls to the SFU's room service about `room`.
fn service_token(sfu: &Sfu, room: &str, create: bool) -> Result<String> {
    let now = now_ms() / 1000;
    sign(
        sfu,
        &Claims {
            iss: &sfu.api_key,
            sub: None,
            name: None,
            nbf: now,
            exp: now + 60,
            video: VideoGrant {
                room: Some(room),
                room_join: false,
                room_create: create,
                room_admin: Some(!create),
                can_publish: None,
                can_subscribe: None,
                can_update_own_metadata: None,
                hidden: None,
            },
        },
    )
}

/// Calls `method` of the SFU's room service (Twirp, JSON); its HTTP status and body.
async fn room_service(
    http: &reqwest::Client,
    sfu: &Sfu,
    method: &str,
    token: String,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    let url = format!("{}/twirp/livekit.RoomService/{method}", http_base(sfu));
    let response = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| Error::Internal(format!("asking the SFU at {url}: {e}")))?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or_default();
    Ok((status, body))
}

/// Whether `identity` is connected to `room` on the SFU (`RoomService.GetParticipant`, which
/// answers Twirp's `not_found` for a participant or room that is not there).
pub async fn is_connected(http: &reqwest::Client, sfu: &Sfu, room: &str, identity: &str) -> Result<bool> {
    let token = service_token(sfu, room, false)?;
    let body = serde_json::json!({ "room": room, "identity": identity });
    match room_service(http, sfu, "GetParticipant", token, body).await? {
        (200, _) => Ok(true),
        (404, _) => Ok(false),
        (_, answer) if answer["code"] == "not_found" => Ok(false),
        (status, answer) => Err(Error::Internal(format!("the SFU answered {status}: {answer}"))),
    }
}

/// How long an empty room stays open for its first participant (as lk-jwt-service).
const EMPTY_TIMEOUT_SECS: u64 = 5 * 60;

/// Creates `room` on the SFU (Twirp's `RoomService.CreateRoom`, which answers the existing room
/// when there is one): the holders of join tokens may not create rooms themselves.
pub async fn create_room(http: &reqwest::Client, sfu: &Sfu, room: &str) -> Result<()> {
    let token = service_token(sfu, room, true)?;
    let body = serde_json::json!({ "name": room, "empty_timeout": EMPTY_TIMEOUT_SECS });
    match room_service(http, sfu, "CreateRoom", token, body).await? {
        (200, _) => Ok(()),
        (status, answer) => Err(Error::Internal(format!(
            "creating the LiveKit room: the SFU answered {status}: {answer}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivations are those of MSC4195's and lk-jwt-service's: SHA-256 over the compact
    /// JSON array, unpadded base64. Checked with
    /// `printf '%s' '["!r:example.org","m.call#ROOM"]' | openssl dgst -binary -sha256 | base64 | tr -d =`.
    #[test]
    fn derivations() {
        assert_eq!(
            room_name("!r:example.org", LEGACY_CALL_SLOT),
            "Wo+x1mkuP6lfKFaewLo3cuhg3yvsg/b+emgRekpVe7Q"
        );
        assert_eq!(
            Identity::Legacy {
                user_id: "@a:example.org",
                device_id: "DEV"
            }
            .derive(),
            "@a:example.org:DEV"
        );
    }
}
