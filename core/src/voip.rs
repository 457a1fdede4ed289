//! TURN credentials in coturn's shared-secret scheme (its "REST API"): the username is
//! `<expiry in Unix seconds>:<user ID>` and the password the base64 HMAC-SHA1 of the username
//! under the shared secret, so the TURN server checks them without asking this server.

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Credentials for `user_id` valid until `expiry_secs` (Unix seconds).
pub fn turn_credentials(shared_secret: &str, user_id: &str, expiry_secs: u64) -> (String, String) {
    let username = format!("{expiry_secs}:{user_id}");
    let password = turn_password(shared_secret, &username);
    (username, password)
}

/// The password of a username in this scheme, as the TURN server (built-in or coturn)
/// recomputes it to check a client.
pub fn turn_password(shared_secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(shared_secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// When a username of this scheme expires (Unix seconds), `None` when it is not of the scheme.
pub fn turn_username_expiry(username: &str) -> Option<u64> {
    let (expiry, user) = username.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    expiry.parse().ok()
}

#[cfg(test)]
mod tests {
    /// The password is what coturn computes from the username and its secret: checked against
    /// `echo -n USERNAME | openssl dgst -binary -sha1 -hmac SECRET | base64`.
    #[test]
    fn matches_coturns_scheme() {
        let (username, password) = super::turn_credentials("north", "@alice:example.org", 1_700_000_000);
        assert_eq!(username, "1700000000:@alice:example.org");
        assert_eq!(password, "b7c/MWmorxmLryRFjaJYkUW5nOo=");
    }
}
