//! Small helpers: clocks, random identifiers, token hashing.

use rand::{distributions::Alphanumeric, Rng};
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A random alphanumeric string of `len` characters.
pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Device IDs look like Synapse's: ten upper-case letters.
pub fn random_device_id() -> String {
    let mut rng = rand::thread_rng();
    (0..10).map(|_| rng.gen_range(b'A'..=b'Z') as char).collect()
}

/// Tokens are stored only as this hash, so a leaked database does not leak sessions.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
