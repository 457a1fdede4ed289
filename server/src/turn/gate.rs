//! Requests the relay refuses before webrtc-rs's handler sees them: a permission or channel
//! to a denied peer (403 Forbidden) and an allocation over the user's quota (486 Allocation
//! Quota Reached). The crate has no hook for either; without the gate a denied peer would
//! get a permission whose packets `relay.rs` then drops silently, and a user over quota a
//! 508 that reads as the server being full.
//!
//! Only requests whose MESSAGE-INTEGRITY checks are judged here (and answered with integrity,
//! as RFC 8489 asks of an authenticated request's error); any other packet goes on to the
//! crate, which answers 401 or 400 as usual.

use std::net::SocketAddr;

use stun::{
    attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_REALM, ATTR_USERNAME},
    error_code::{ErrorCode, ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN},
    integrity::MessageIntegrity,
    message::{
        Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, METHOD_ALLOCATE,
        METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    },
    textattrs::TextAttribute,
};
use turn::proto::peeraddr::PeerAddress;

use super::{auth::user_of, Shared};

pub(crate) enum Verdict {
    /// On to the crate; for an authenticated Allocate request, the user it allocates for.
    Pass { allocating_user: Option<String> },
    /// Answered here with this error response.
    Refuse(Vec<u8>),
}

pub(crate) fn check(shared: &Shared, packet: &[u8], src: SocketAddr) -> Verdict {
    let pass = Verdict::Pass { allocating_user: None };
    if !stun::message::is_message(packet) {
        return pass; // ChannelData: its channel was checked when it was bound.
    }
    let mut m = Message::new();
    if m.unmarshal_binary(packet).is_err() || m.typ.class != CLASS_REQUEST {
        return pass;
    }
    let method = m.typ.method;
    if ![METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND].contains(&method) {
        return pass;
    }
    let Some((username, integrity)) = authenticated(shared, &m) else {
        return pass;
    };
    let user = user_of(&username);
    let refusal = if method == METHOD_ALLOCATE {
        if shared.quotas.held(user) >= shared.quotas.limit() {
            tracing::info!(%src, user, "TURN allocation refused: quota reached");
            Some((CODE_ALLOC_QUOTA_REACHED, "Allocation Quota Reached"))
        } else {
            return Verdict::Pass {
                allocating_user: Some(user.to_owned()),
            };
        }
    } else {
        // The crate reads one XOR-PEER-ADDRESS per request (the first), so that is the one
        // checked.
        let mut peer = PeerAddress::default();
        match peer.get_from(&m) {
            Ok(()) if !shared.policy.allows(peer.ip) => {
                tracing::info!(%src, user, peer = %peer.ip, "TURN permission refused: denied peer address");
                Some((CODE_FORBIDDEN, "Forbidden: peer address not relayed to"))
            }
            _ => None,
        }
    };
    match refusal {
        Some((code, reason)) => match error_response(&m, method, code, reason, integrity) {
            Some(answer) => Verdict::Refuse(answer),
            None => pass,
        },
        None => pass,
    }
}

/// The request's username and integrity, when its MESSAGE-INTEGRITY is right for valid
/// credentials.
fn authenticated(shared: &Shared, m: &Message) -> Option<(String, MessageIntegrity)> {
    if !m.contains(ATTR_MESSAGE_INTEGRITY) {
        return None;
    }
    let username = TextAttribute::get_from_as(m, ATTR_USERNAME).ok()?.text;
    let realm = TextAttribute::get_from_as(m, ATTR_REALM).ok()?.text;
    let key = shared.auth.key(&username, &realm).ok()?;
    let integrity = MessageIntegrity(key);
    integrity.check(&mut m.clone()).ok()?;
    Some((username, integrity))
}

fn error_response(
    request: &Message,
    method: stun::message::Method,
    code: ErrorCode,
    reason: &str,
    integrity: MessageIntegrity,
) -> Option<Vec<u8>> {
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: request.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
        Box::new(integrity),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}
