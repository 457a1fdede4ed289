//! Server discovery: where requests to another homeserver go, exactly as the Server-Server
//! API's "Resolving server names" says, and which name its certificate must be valid for.
//!
//! The steps, for a server name `hostname[:port]`:
//! 1. an IP literal: that address, on the given port or 8448;
//! 2. a hostname with a port: that host and port;
//! 3. else `https://<hostname>/.well-known/matrix/server` (cached per its headers); if it
//!    delegates to `m.server`, steps 1 and 2 apply to that name, else its SRV records
//!    `_matrix-fed._tcp` then the deprecated `_matrix._tcp`, else its port 8448;
//! 4. with no delegation, the same SRV lookups and port 8448 for the hostname itself.
//!
//! Where SRV records or the 8448 default route a host, the Host header and certificate name
//! are the bare hostname while the connection goes elsewhere: [`Destination::connect_to`],
//! which the client's DNS resolver ([`Resolver::dns`]) honours.

mod connect;
mod dns;
#[cfg(test)]
mod test_tls;
#[cfg(test)]
mod tests;
mod well_known;

use std::{cmp::Reverse, net::SocketAddr, sync::Arc, time::Duration};

use ruma::{OwnedServerName, ServerName};
use tokio::time::Instant;

pub use dns::{Dns, DnsError, HickoryDns, SrvRecord};
pub use well_known::{Fetched, HttpWellKnown, WellKnownSource};

/// The federation port when none is given.
pub const DEFAULT_PORT: u16 = 8448;
/// SRV services, in the order the spec tries them (`_matrix._tcp` is deprecated).
const SRV_SERVICES: [&str; 2] = ["_matrix-fed._tcp", "_matrix._tcp"];
/// How long a whole resolution is reused: DNS answers may change, so not for long.
const RESOLUTION_CACHE: Duration = Duration::from_secs(5 * 60);
/// Bounds the caches: server names come from other servers.
const CACHE_CAPACITY: usize = 10_000;

/// Where requests to a server go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The URL authority ("host:port") requests go to: it sets the Host header and the name the
    /// TLS certificate must be valid for.
    pub authority: String,
    /// Where to connect when that differs from resolving `authority`'s host normally (an SRV
    /// target); None: resolve the host as usual.
    pub connect_to: Option<Vec<SocketAddr>>,
}

impl Destination {
    /// `https://<authority>`, to which request paths are appended.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.authority)
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("{0} has no address")]
    NoAddress(String),
}

/// Resolves server names; cheap to clone (the caches are shared).
#[derive(Clone)]
pub struct Resolver(Arc<Inner>);

struct Inner {
    dns: Arc<dyn Dns>,
    well_known: Arc<dyn WellKnownSource>,
    /// Hostname -> its delegation (or why none) and until when it holds.
    delegations: quick_cache::sync::Cache<String, (Result<OwnedServerName, String>, Instant)>,
    /// Server name -> its destination and until when it holds.
    resolutions: quick_cache::sync::Cache<OwnedServerName, (Destination, Instant)>,
    connect: Arc<connect::ConnectTable>,
}

impl Resolver {
    /// A resolver using the system's DNS configuration, fetching `.well-known` with `http`
    /// (configured with the TLS roots to trust; it must resolve names normally, not through
    /// [`Resolver::dns`]).
    pub fn new(http: reqwest::Client) -> Self {
        Self::with_sources(Arc::new(HickoryDns::from_system()), Arc::new(HttpWellKnown { http }))
    }

    /// A resolver asking `dns` and `well_known`: tests answer without a network.
    pub fn with_sources(dns: Arc<dyn Dns>, well_known: Arc<dyn WellKnownSource>) -> Self {
        Resolver(Arc::new(Inner {
            connect: Arc::new(connect::ConnectTable::new(dns.clone())),
            dns,
            well_known,
            delegations: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            resolutions: quick_cache::sync::Cache::new(CACHE_CAPACITY),
        }))
    }

    /// Where requests to `server_name` go.
    pub async fn resolve(&self, server_name: &ServerName) -> Result<Destination, DiscoveryError> {
        if let Some(destination) = direct(server_name) {
            return Ok(destination);
        }
        let now = Instant::now();
        if let Some((destination, until)) = self.0.resolutions.get(server_name) {
            if until > now {
                return Ok(destination);
            }
        }
        // DNS names are case-insensitive; URLs lowercase them too.
        let hostname = server_name.host().to_ascii_lowercase();
        let (destination, until) = self.discover(&hostname, now).await?;
        if let Some(addrs) = &destination.connect_to {
            self.0.connect.set(&destination.authority, addrs);
        }
        self.0
            .resolutions
            .insert(server_name.to_owned(), (destination.clone(), until));
        Ok(destination)
    }

    /// A reqwest DNS resolver that honours `connect_to` for authorities `resolve` answered
    /// (for `ClientBuilder::dns_resolver2`).
    pub fn dns(&self) -> Arc<dyn reqwest::dns::Resolve> {
        Arc::new(connect::ConnectResolver(self.0.connect.clone()))
    }

    /// Steps 3 to 6 for a hostname without a port; the destination holds until the
    /// delegation it followed expires, and not longer than [`RESOLUTION_CACHE`].
    async fn discover(&self, hostname: &str, now: Instant) -> Result<(Destination, Instant), DiscoveryError> {
        let (delegation, delegation_until) = self.delegation(hostname, now).await;
        let until = delegation_until.min(now + RESOLUTION_CACHE);
        let destination = match delegation {
            Some(delegated) => match direct(&delegated) {
                Some(destination) => destination,
                None => self.routed(&delegated.host().to_ascii_lowercase()).await?,
            },
            None => self.routed(hostname).await?,
        };
        Ok((destination, until))
    }

    /// The delegation of `hostname` from its `.well-known`, cached as long as the answer says.
    async fn delegation(&self, hostname: &str, now: Instant) -> (Option<OwnedServerName>, Instant) {
        let (answer, until) = match self.0.delegations.get(hostname) {
            Some((answer, until)) if until > now => (answer, until),
            _ => {
                let fetched = self.0.well_known.fetch(hostname).await;
                let until = Instant::now() + fetched.keep_for;
                self.0
                    .delegations
                    .insert(hostname.to_owned(), (fetched.answer.clone(), until));
                (fetched.answer, until)
            }
        };
        match answer {
            Ok(delegated) => (Some(delegated), until),
            Err(reason) => {
                tracing::debug!(%hostname, %reason, "no .well-known delegation");
                (None, until)
            }
        }
    }

    /// A hostname without a port: its SRV targets, else its addresses on port 8448; either
    /// way requests name the bare hostname.
    async fn routed(&self, hostname: &str) -> Result<Destination, DiscoveryError> {
        let addrs = match self.srv_targets(hostname).await? {
            Some(addrs) => addrs,
            None => {
                let ips = self.0.dns.ips(hostname).await?;
                ips.into_iter().map(|ip| SocketAddr::new(ip, DEFAULT_PORT)).collect()
            }
        };
        if addrs.is_empty() {
            return Err(DiscoveryError::NoAddress(hostname.to_owned()));
        }
        Ok(Destination {
            authority: hostname.to_owned(),
            connect_to: Some(addrs),
        })
    }

    /// The addresses of the first SRV service `hostname` has records for, best first; None
    /// when it has none.
    async fn srv_targets(&self, hostname: &str) -> Result<Option<Vec<SocketAddr>>, DiscoveryError> {
        for service in SRV_SERVICES {
            let name = format!("{service}.{hostname}");
            let mut records = self.0.dns.srv(&name).await?;
            // A target of "." says the service is not offered there.
            records.retain(|record| !record.target.is_empty());
            if records.is_empty() {
                continue;
            }
            // Lowest priority first; among equals the heavier first (RFC 2782 picks at random
            // in proportion to weight; the order only matters when a target fails).
            records.sort_by_key(|record| (record.priority, Reverse(record.weight)));
            let mut addrs = Vec::new();
            for record in &records {
                match self.0.dns.ips(&record.target).await {
                    Ok(ips) => addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, record.port))),
                    Err(e) => tracing::debug!(error = %e, %name, "SRV target not resolved"),
                }
            }
            if addrs.is_empty() {
                return Err(DiscoveryError::NoAddress(name));
            }
            return Ok(Some(addrs));
        }
        Ok(None)
    }
}

/// Steps 1 and 2 (and 3.1, 3.2 for a delegated name): an IP literal, or a hostname with an
/// explicit port, is its own destination.
fn direct(server_name: &ServerName) -> Option<Destination> {
    if server_name.is_ip_literal() {
        let port = server_name.port().unwrap_or(DEFAULT_PORT);
        return Some(Destination {
            authority: format!("{}:{port}", server_name.host()),
            connect_to: None,
        });
    }
    server_name.port().map(|_| Destination {
        authority: server_name.as_str().to_owned(),
        connect_to: None,
    })
}
