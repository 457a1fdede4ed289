//! Server discovery: where requests to a server name go (`Resolver::resolve`). This first
//! version handles names with a port and bare hosts on 8448; well-known delegation and SRV
//! records follow.

use std::{net::SocketAddr, sync::Arc};

use ruma::ServerName;

/// Where requests for a server name go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The URL authority ("host:port"): the Host header and the name the certificate must be
    /// valid for.
    pub authority: String,
    /// Where to connect when that differs from resolving `authority`'s host; None: as usual.
    pub connect_to: Option<Vec<SocketAddr>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiscoveryError(String);

#[derive(Clone)]
pub struct Resolver {
    _http: reqwest::Client,
}

impl Resolver {
    pub fn new(http: reqwest::Client) -> Resolver {
        Resolver { _http: http }
    }

    pub async fn resolve(&self, server_name: &ServerName) -> Result<Destination, DiscoveryError> {
        let authority = match server_name.port() {
            Some(_) => server_name.to_string(),
            None => format!("{}:8448", server_name.host()),
        };
        Ok(Destination {
            authority,
            connect_to: None,
        })
    }

    /// The DNS resolver for the federation HTTP client: it honours `connect_to`.
    pub fn dns(&self) -> Arc<Dns> {
        Arc::new(Dns)
    }
}

pub struct Dns;

impl reqwest::dns::Resolve for Dns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.collect::<Vec<_>>().into_iter());
            Ok(addrs)
        })
    }
}
