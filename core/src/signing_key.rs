//! The server's ed25519 signing key: created on first start, kept at the configured path in
//! Synapse's format (`ed25519 <version> <unpadded base64 seed>`), so keys move between servers.

use std::path::Path;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use rand::RngCore;
use ruma::signatures::Ed25519KeyPair;

use crate::{Error, Result};

pub struct ServerKey {
    pub keypair: Ed25519KeyPair,
    /// `ed25519:<version>`.
    pub key_id: String,
}

impl ServerKey {
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.keypair.public_key())
    }
}

/// PKCS#8 v1 prefix of an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn keypair_from_seed(seed: &[u8], version: &str) -> Result<Ed25519KeyPair> {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(seed);
    Ed25519KeyPair::from_der(&der, version.to_owned()).map_err(|e| Error::Config(format!("signing key: {e}")))
}

pub fn load_or_create(path: &Path) -> Result<ServerKey> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut seed);
            let version = format!("a_{}", crate::util::random_string(4));
            let text = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(seed));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::Config(format!("cannot create {dir:?}: {e}")))?;
            }
            std::fs::write(path, &text)
                .map_err(|e| Error::Config(format!("cannot write signing key {path:?}: {e}")))?;
            text
        }
        Err(e) => return Err(Error::Config(format!("cannot read signing key {path:?}: {e}"))),
    };
    let mut parts = text.split_whitespace();
    let (Some("ed25519"), Some(version), Some(seed)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Config(format!(
            "signing key {path:?}: expected `ed25519 <version> <base64 seed>`"
        )));
    };
    let seed = STANDARD_NO_PAD
        .decode(seed.trim_end_matches('='))
        .map_err(|e| Error::Config(format!("signing key {path:?}: {e}")))?;
    Ok(ServerKey {
        keypair: keypair_from_seed(&seed, version)?,
        key_id: format!("ed25519:{version}"),
    })
}
