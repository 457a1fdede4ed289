//! The DNS lookups server discovery needs (SRV records, a host's addresses), behind a trait so
//! that tests answer them without a network.

use std::net::IpAddr;

use futures::future::BoxFuture;
use hickory_resolver::{
    config::{LookupIpStrategy, ResolverConfig},
    name_server::TokioConnectionProvider,
    ResolveError, TokioResolver,
};

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// A host name, without the trailing dot; `"."` in DNS (the service is not offered) is
    /// given as an empty string.
    pub target: String,
}

/// A lookup that failed for another reason than the name having no such records.
#[derive(Clone, Debug, thiserror::Error)]
#[error("DNS lookup of {name} failed: {reason}")]
pub struct DnsError {
    pub name: String,
    pub reason: String,
}

/// The lookups of server discovery. A name without the records asked for is an empty answer,
/// not an error: discovery then goes on to its next step.
pub trait Dns: Send + Sync + 'static {
    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`).
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>>;
    /// The addresses of `host` (following CNAMEs; AAAA and A records).
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
}

/// [`Dns`] through hickory-resolver, which caches answers for their TTL and reads `/etc/hosts`.
pub struct HickoryDns {
    resolver: TokioResolver,
}

impl HickoryDns {
    /// The system's resolver configuration (`/etc/resolv.conf`), or hickory's default public
    /// resolvers when that cannot be read (a container without one), so that federation still
    /// works there.
    pub fn from_system() -> HickoryDns {
        let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the system's DNS configuration; using public resolvers");
            TokioResolver::builder_with_config(ResolverConfig::default(), TokioConnectionProvider::default())
        });
        // Both families, so that a connection can fall back from one to the other.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        HickoryDns {
            resolver: builder.build(),
        }
    }
}

impl Dns for HickoryDns {
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move {
            match self.resolver.srv_lookup(name).await {
                Ok(lookup) => Ok(lookup
                    .iter()
                    .map(|srv| SrvRecord {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        port: srv.port(),
                        target: srv.target().to_ascii().trim_end_matches('.').to_owned(),
                    })
                    .collect()),
                Err(e) => none_or_error(name, e),
            }
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            match self.resolver.lookup_ip(host).await {
                Ok(lookup) => Ok(lookup.iter().collect()),
                Err(e) => none_or_error(host, e),
            }
        })
    }
}

/// A name that does not exist or has no such records answers nothing; other failures (no
/// answer from the name servers, a malformed name) are errors.
fn none_or_error<T>(name: &str, e: ResolveError) -> Result<Vec<T>, DnsError> {
    if e.is_nx_domain() || e.is_no_records_found() {
        Ok(Vec::new())
    } else {
        Err(DnsError {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real resolver, without a network: `localhost` comes from the hosts file.
    #[tokio::test]
    async fn hickory_reads_the_hosts_file() {
        let ips = HickoryDns::from_system().ips("localhost").await.unwrap();
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
    }

    /// The resolver is made where the federation client is, perhaps before any runtime runs.
    #[test]
    fn a_resolver_is_made_outside_a_runtime() {
        let resolver = super::super::Resolver::new(reqwest::Client::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let destination = runtime
            .block_on(resolver.resolve(ruma::server_name!("127.0.0.1")))
            .unwrap();
        assert_eq!(destination.authority, "127.0.0.1:8448");
    }
}
