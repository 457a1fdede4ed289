//! MatrixRTC: who may join a room's call, and the LiveKit access tokens this server issues for
//! its own SFU (`livekit.rs`), so that Element Call needs no separate token service.

pub mod delegation;
pub mod livekit;

use crate::{storage::rooms, Core, Error, Result};

/// A user may take part in a room's call while joined to the room, as this server sees it. A
/// room this server is not in is refused like a room the user left: the server cannot vouch
/// for anyone there.
pub async fn check_may_join_call(core: &Core, room_id: &str, user_id: &str) -> Result<()> {
    let mut conn = core.db.conn().await?;
    match rooms::membership(&mut conn, room_id, user_id).await? {
        Some(m) if m.membership == "join" => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "{user_id} is not joined to {room_id}, so may not join its call"
        ))),
    }
}

/// The HTTP client for the SFU's API (room creation), made once.
pub(crate) fn sfu_http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Whether `url` names `sfu` (a trailing slash aside).
pub fn is_our_sfu(sfu: &livekit::Sfu, url: &str) -> bool {
    url.trim_end_matches('/') == sfu.url.trim_end_matches('/')
}

/// A token for `user_id` to join MatrixRTC slot `slot_id` of `room_id` on this server's SFU
/// (MSC4195): the user must be joined to the room; a local user may publish, another server's
/// only subscribe. The LiveKit room is created first, since the token may not create it.
pub async fn slot_token(
    core: &Core,
    sfu: &livekit::Sfu,
    user_id: &ruma::UserId,
    room_id: &str,
    slot_id: &str,
    member_id: &str,
) -> Result<String> {
    check_may_join_call(core, room_id, user_id.as_str()).await?;
    let room = livekit::room_name(room_id, slot_id);
    livekit::create_room(sfu_http(), sfu, &room).await?;
    let identity = livekit::Identity::Member {
        user_id: user_id.as_str(),
        member_id,
    }
    .derive();
    let grants = livekit::Grants {
        can_publish: core.is_local(user_id),
        can_update_own_metadata: false,
    };
    livekit::join_token(sfu, &room, &identity, None, grants)
}

/// A token as lk-jwt-service issues it, for a user whose OpenID token was checked: joined to
/// the room, publishing and subscribing. The room is created for this server's own users only
/// (lk-jwt-service's "full access" users); others join it once it exists.
pub async fn service_token(
    core: &Core,
    sfu: &livekit::Sfu,
    user_id: &ruma::UserId,
    room_id: &str,
    room: &str,
    identity: &str,
) -> Result<String> {
    check_may_join_call(core, room_id, user_id.as_str()).await?;
    if core.is_local(user_id) {
        livekit::create_room(sfu_http(), sfu, room).await?;
    }
    let grants = livekit::Grants {
        can_publish: true,
        can_update_own_metadata: true,
    };
    livekit::join_token(sfu, room, identity, None, grants)
}

/// A member of a MatrixRTC slot in a room.
pub struct SlotMember<'a> {
    pub room_id: &'a str,
    pub slot_id: &'a str,
    pub member_id: &'a str,
}

/// Hands the scheduled delayed leave event `delay_id` of `user_id` to this server (see
/// `delegation`), for `member` as the participant `identity` in the slot's LiveKit room. The
/// event must be one of the user's, in that room, still scheduled (400 `M_INVALID_PARAM`).
pub async fn delegate_leave(
    core: &Core,
    sfu: &livekit::Sfu,
    user_id: &ruma::UserId,
    member: SlotMember<'_>,
    delay_id: &str,
    identity: String,
) -> Result<()> {
    let room_id = member.room_id;
    if !crate::delayed_events::is_scheduled_by(core, delay_id, user_id.as_str(), room_id).await? {
        return Err(Error::InvalidParam(format!(
            "{delay_id} is no scheduled delayed event of yours in {room_id}"
        )));
    }
    let delegation = delegation::Delegation {
        user_id: user_id.to_string(),
        room_id: room_id.to_owned(),
        slot_id: member.slot_id.to_owned(),
        member_id: member.member_id.to_owned(),
        delay_id: delay_id.to_owned(),
        livekit_room: livekit::room_name(room_id, member.slot_id),
        livekit_identity: identity,
    };
    delegation::delegate(core, sfu, delegation).await
}
