//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing, to-device messages, key backup.
