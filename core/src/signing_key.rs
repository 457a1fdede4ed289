//! The server's ed25519 signing key: created on first start, kept at the configured path in
//! Synapse's format (`ed25519 <version> <unpadded base64 seed>`), so keys move between servers.
//! `rotate` replaces it; the public halves of former keys stay in `<path>.old`, one per line
//! (`ed25519 <version> <unpadded base64 public key> <expired_ts>`), so that other servers can
//! still verify what they signed.

use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use rand::RngCore;
use ruma::signatures::Ed25519KeyPair;

use crate::{Error, Result};

pub struct ServerKey {
    pub keypair: Ed25519KeyPair,
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Keys this server signed with before, newest last.
    pub old_keys: Vec<OldKey>,
}

/// A key this server used to sign with: its public half and when it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub expired_ts: i64,
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

/// Where the public halves of a key file's former keys are kept.
pub fn old_keys_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

/// Writes a new random key to `path`, replacing any there.
fn create(path: &Path) -> Result<String> {
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let version = format!("a_{}", crate::util::random_string(4));
    let text = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(seed));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Config(format!("cannot create {dir:?}: {e}")))?;
    }
    std::fs::write(path, &text).map_err(|e| Error::Config(format!("cannot write signing key {path:?}: {e}")))?;
    Ok(text)
}

/// Replaces the key at `path` with a new one; the current key's public half is kept in
/// `<path>.old` as expired now. A running server signs with the new key once restarted.
pub fn rotate(path: &Path) -> Result<ServerKey> {
    let current = load_or_create(path)?;
    let line = format!(
        "ed25519 {} {} {}\n",
        current.key_id.trim_start_matches("ed25519:"),
        current.public_key_base64(),
        crate::util::now_ms()
    );
    let old_path = old_keys_path(path);
    let mut old = std::fs::read_to_string(&old_path).unwrap_or_default();
    old.push_str(&line);
    std::fs::write(&old_path, old).map_err(|e| Error::Config(format!("cannot write {old_path:?}: {e}")))?;
    create(path)?;
    load_or_create(path)
}

/// The former keys listed in `<path>.old`, if any.
fn load_old_keys(path: &Path) -> Result<Vec<OldKey>> {
    let old_path = old_keys_path(path);
    let text = match std::fs::read_to_string(&old_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Config(format!("cannot read {old_path:?}: {e}"))),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["ed25519", version, public_key, expired_ts] => Ok(OldKey {
                key_id: format!("ed25519:{version}"),
                public_key: public_key.to_owned(),
                expired_ts: expired_ts
                    .parse()
                    .map_err(|_| Error::Config(format!("{old_path:?}: bad expiry in {line:?}")))?,
            }),
            _ => Err(Error::Config(format!(
                "{old_path:?}: expected `ed25519 <version> <base64 public key> <expired_ts>`, got {line:?}"
            ))),
        })
        .collect()
}

pub fn load_or_create(path: &Path) -> Result<ServerKey> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
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
        old_keys: load_old_keys(path)?,
    })
}
