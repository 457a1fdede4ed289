//! The DNS resolver of the federation HTTP client: for a host that discovery routed elsewhere
//! (an SRV target, port 8448 with a Host header of the bare hostname) it answers those
//! addresses, for any other host a normal lookup.
//!
//! reqwest asks it for a host name only. It keeps the ports answered here when the URL has
//! none (`https://example.org/...`: the case of every routed authority), and puts the URL's
//! own port on them otherwise. So a host both routed (server name `example.org`) and named
//! with an explicit port by another server name (`example.org:8000`) reaches the routed
//! addresses on that port; the spec gives no way to tell the two apart by host.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::dns::Dns;

pub(super) struct ConnectTable {
    /// Host of a routed authority -> where to connect. Entries are replaced, never evicted:
    /// without one, requests to that authority would go to port 443 of the host.
    routes: RwLock<HashMap<String, Vec<SocketAddr>>>,
    dns: Arc<dyn Dns>,
}

impl ConnectTable {
    pub(super) fn new(dns: Arc<dyn Dns>) -> ConnectTable {
        ConnectTable {
            routes: RwLock::new(HashMap::new()),
            dns,
        }
    }

    /// Records where `host` is reached. Keys are lowercase: URLs lowercase their host.
    pub(super) fn set(&self, host: &str, addrs: &[SocketAddr]) {
        let host = host.to_ascii_lowercase();
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.get(&host).map(Vec::as_slice) != Some(addrs) {
            routes.insert(host, addrs.to_vec());
        }
    }

    pub(super) fn route(&self, host: &str) -> Option<Vec<SocketAddr>> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.get(&host.to_ascii_lowercase()).cloned()
    }
}

/// The handle given to reqwest.
pub(super) struct ConnectResolver(pub(super) Arc<ConnectTable>);

impl Resolve for ConnectResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let table = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if let Some(addrs) = table.route(&host) {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let ips = table.dns.ips(&host).await?;
            if ips.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            // Port 0: reqwest puts the URL's port (or the scheme's) on them.
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}
