//! TLS for listeners that configure `tls_cert` and `tls_key` (PEM files).

use std::{path::Path, sync::Arc};

use anyhow::Context;

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) from PEM files.
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert_path).with_context(|| format!("tls_cert {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("tls_cert {}: not PEM certificates", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls_cert {}: no certificate found", cert_path.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_path).with_context(|| format!("tls_key {}", key_path.display()))?,
    ))
    .with_context(|| format!("tls_key {}: not a PEM private key", key_path.display()))?
    .with_context(|| format!("tls_key {}: no private key found", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls_cert and tls_key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
