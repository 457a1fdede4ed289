//! Empty stand-in for matrix-sdk-sqlite; see Cargo.toml.
