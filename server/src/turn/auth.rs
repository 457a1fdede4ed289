//! The relay's long-term credentials: those `/voip/turnServer` makes from the shared secret
//! (`<expiry>:<user ID>`, password the base64 HMAC-SHA1 of the username), refused once the
//! expiry has passed, as coturn's `use-auth-secret` does.

use std::net::SocketAddr;

use turn::{
    auth::{generate_auth_key, AuthHandler},
    Error,
};

pub(crate) struct SecretAuth {
    secret: String,
    realm: String,
}

impl SecretAuth {
    pub fn new(secret: String, realm: String) -> Self {
        SecretAuth { secret, realm }
    }

    /// The key a request's MESSAGE-INTEGRITY is made with, if the username is valid now.
    pub fn key(&self, username: &str, realm: &str) -> Result<Vec<u8>, String> {
        if realm != self.realm {
            return Err(format!("unknown realm {realm:?}"));
        }
        let expiry = weft_core::voip::turn_username_expiry(username)
            .ok_or_else(|| format!("{username:?} is not an <expiry>:<user> username"))?;
        let now = (weft_core::util::now_ms() / 1000) as u64;
        if expiry <= now {
            return Err(format!("{username:?} has expired"));
        }
        let password = weft_core::voip::turn_password(&self.secret, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

impl AuthHandler for SecretAuth {
    fn auth_handle(&self, username: &str, realm: &str, src_addr: SocketAddr) -> Result<Vec<u8>, Error> {
        self.key(username, realm).map_err(|reason| {
            tracing::debug!(%src_addr, %reason, "TURN credentials refused");
            Error::Other(reason)
        })
    }
}

/// The Matrix user a username of this scheme belongs to: quotas count per user, whatever
/// credentials (with their different expiries) the user allocates with.
pub(crate) fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, user)| user)
}
