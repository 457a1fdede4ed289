//! Every branch of the resolution, with DNS and `.well-known` answered by stand-ins that count
//! the questions; the clock is tokio's, paused, so the tests move it to expire caches.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use ruma::{server_name, OwnedServerName};

use super::*;

#[derive(Default)]
struct FakeDns {
    srv: HashMap<String, Vec<SrvRecord>>,
    ips: HashMap<String, Vec<IpAddr>>,
    /// Names whose lookups fail (no answer from the name servers).
    failing: Vec<String>,
    asked: Mutex<Vec<String>>,
}

impl FakeDns {
    fn srv(mut self, name: &str, records: &[(u16, u16, u16, &str)]) -> Self {
        let records = records
            .iter()
            .map(|&(priority, weight, port, target)| SrvRecord {
                priority,
                weight,
                port,
                target: target.to_owned(),
            })
            .collect();
        self.srv.insert(name.to_owned(), records);
        self
    }

    fn host(mut self, name: &str, ips: &[&str]) -> Self {
        self.ips
            .insert(name.to_owned(), ips.iter().map(|ip| ip.parse().unwrap()).collect());
        self
    }

    fn failing(mut self, name: &str) -> Self {
        self.failing.push(name.to_owned());
        self
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    fn answer<T: Clone>(&self, kind: &str, name: &str, table: &HashMap<String, Vec<T>>) -> Result<Vec<T>, DnsError> {
        self.asked.lock().unwrap().push(format!("{kind} {name}"));
        if self.failing.iter().any(|n| n == name) {
            return Err(DnsError {
                name: name.to_owned(),
                reason: "SERVFAIL".into(),
            });
        }
        Ok(table.get(name).cloned().unwrap_or_default())
    }
}

impl Dns for FakeDns {
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move { self.answer("SRV", name, &self.srv) })
    }
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move { self.answer("A", host, &self.ips) })
    }
}

#[derive(Default)]
struct FakeWellKnown {
    /// Hostname -> `m.server` and how long to keep it; any other host fails.
    answers: HashMap<String, (String, Duration)>,
    fetched: Mutex<Vec<String>>,
}

impl FakeWellKnown {
    fn delegates(mut self, hostname: &str, to: &str) -> Self {
        self.answers
            .insert(hostname.to_owned(), (to.to_owned(), well_known::DEFAULT_CACHE));
        self
    }

    fn delegates_for(mut self, hostname: &str, to: &str, keep_for: Duration) -> Self {
        self.answers.insert(hostname.to_owned(), (to.to_owned(), keep_for));
        self
    }

    fn fetched(&self) -> Vec<String> {
        self.fetched.lock().unwrap().clone()
    }
}

impl WellKnownSource for FakeWellKnown {
    fn fetch<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            self.fetched.lock().unwrap().push(hostname.to_owned());
            match self.answers.get(hostname) {
                Some((to, keep_for)) => Fetched {
                    answer: OwnedServerName::try_from(to.as_str()).map_err(|e| e.to_string()),
                    keep_for: *keep_for,
                },
                None => Fetched {
                    answer: Err("404".into()),
                    keep_for: well_known::ERROR_CACHE,
                },
            }
        })
    }
}

fn resolver(dns: FakeDns, well_known: FakeWellKnown) -> (Resolver, Arc<FakeDns>, Arc<FakeWellKnown>) {
    let dns = Arc::new(dns);
    let well_known = Arc::new(well_known);
    (Resolver::with_sources(dns.clone(), well_known.clone()), dns, well_known)
}

fn addrs(list: &[&str]) -> Option<Vec<SocketAddr>> {
    Some(list.iter().map(|a| a.parse().unwrap()).collect())
}

fn direct_to(authority: &str) -> Destination {
    Destination {
        authority: authority.to_owned(),
        connect_to: None,
    }
}

fn routed(authority: &str, to: &[&str]) -> Destination {
    Destination {
        authority: authority.to_owned(),
        connect_to: addrs(to),
    }
}

#[tokio::test]
async fn ip_literals_are_used_as_they_are_with_8448_by_default() {
    let (r, dns, wk) = resolver(FakeDns::default(), FakeWellKnown::default());
    for (name, authority) in [
        ("1.2.3.4", "1.2.3.4:8448"),
        ("1.2.3.4:8000", "1.2.3.4:8000"),
        ("[2001:db8::1]", "[2001:db8::1]:8448"),
        ("[::1]:8000", "[::1]:8000"),
    ] {
        let name = <&ServerName>::try_from(name).unwrap();
        assert_eq!(r.resolve(name).await.unwrap(), direct_to(authority), "{name}");
    }
    assert!(dns.asked().is_empty() && wk.fetched().is_empty());
}

#[tokio::test]
async fn a_hostname_with_a_port_asks_neither_well_known_nor_srv() {
    let (r, dns, wk) = resolver(
        FakeDns::default().srv("_matrix-fed._tcp.example.org", &[(0, 0, 443, "other.example.org")]),
        FakeWellKnown::default().delegates("example.org", "elsewhere.org:443"),
    );
    let destination = r.resolve(server_name!("example.org:8000")).await.unwrap();
    assert_eq!(destination, direct_to("example.org:8000"));
    assert!(dns.asked().is_empty() && wk.fetched().is_empty());
}

#[tokio::test]
async fn a_delegation_with_a_port_is_used_as_it_is() {
    let (r, dns, _) = resolver(
        FakeDns::default().srv("_matrix-fed._tcp.example.org", &[(0, 0, 443, "other.example.org")]),
        FakeWellKnown::default().delegates("example.org", "matrix.example.org:443"),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(destination, direct_to("matrix.example.org:443"));
    assert!(dns.asked().is_empty(), "{:?}", dns.asked());
}

#[tokio::test]
async fn a_delegation_to_an_ip_literal_is_used_as_it_is() {
    let (r, dns, _) = resolver(
        FakeDns::default(),
        FakeWellKnown::default()
            .delegates("a.org", "10.0.0.1")
            .delegates("b.org", "[2001:db8::2]:9000"),
    );
    assert_eq!(
        r.resolve(server_name!("a.org")).await.unwrap(),
        direct_to("10.0.0.1:8448")
    );
    assert_eq!(
        r.resolve(server_name!("b.org")).await.unwrap(),
        direct_to("[2001:db8::2]:9000")
    );
    assert!(dns.asked().is_empty());
}

#[tokio::test]
async fn a_delegation_without_a_port_follows_the_delegated_names_srv_records() {
    let (r, dns, _) = resolver(
        FakeDns::default()
            .srv("_matrix-fed._tcp.example.org", &[(0, 0, 1111, "wrong.example.org")])
            .srv(
                "_matrix-fed._tcp.matrix.example.org",
                &[(10, 0, 8443, "fed.example.org")],
            )
            .srv("_matrix._tcp.matrix.example.org", &[(0, 0, 2222, "wrong.example.org")])
            .host("fed.example.org", &["192.0.2.1", "2001:db8::1"]),
        FakeWellKnown::default().delegates("example.org", "matrix.example.org"),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    // The certificate and Host header name the delegated host; the connection goes to the
    // SRV target.
    assert_eq!(
        destination,
        routed("matrix.example.org", &["192.0.2.1:8443", "[2001:db8::1]:8443"])
    );
    assert_eq!(
        dns.asked(),
        ["SRV _matrix-fed._tcp.matrix.example.org", "A fed.example.org"]
    );
}

#[tokio::test]
async fn a_delegation_without_a_port_falls_back_to_the_deprecated_srv_records() {
    let (r, dns, _) = resolver(
        FakeDns::default()
            .srv("_matrix._tcp.matrix.example.org", &[(0, 0, 8444, "legacy.example.org")])
            .host("legacy.example.org", &["192.0.2.2"]),
        FakeWellKnown::default().delegates("example.org", "matrix.example.org"),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(destination, routed("matrix.example.org", &["192.0.2.2:8444"]));
    assert_eq!(
        dns.asked(),
        [
            "SRV _matrix-fed._tcp.matrix.example.org",
            "SRV _matrix._tcp.matrix.example.org",
            "A legacy.example.org"
        ]
    );
}

#[tokio::test]
async fn a_delegation_without_a_port_or_srv_records_goes_to_port_8448() {
    let (r, _, _) = resolver(
        FakeDns::default().host("matrix.example.org", &["192.0.2.3"]),
        FakeWellKnown::default().delegates("example.org", "matrix.example.org"),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(destination, routed("matrix.example.org", &["192.0.2.3:8448"]));
}

#[tokio::test]
async fn without_a_delegation_the_hostnames_srv_records_are_used() {
    let (r, dns, wk) = resolver(
        FakeDns::default()
            .srv("_matrix-fed._tcp.example.org", &[(0, 0, 8443, "fed.example.org")])
            .srv("_matrix._tcp.example.org", &[(0, 0, 2222, "wrong.example.org")])
            .host("fed.example.org", &["192.0.2.1"]),
        FakeWellKnown::default(),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(destination, routed("example.org", &["192.0.2.1:8443"]));
    assert_eq!(wk.fetched(), ["example.org"]);
    assert_eq!(dns.asked(), ["SRV _matrix-fed._tcp.example.org", "A fed.example.org"]);
}

#[tokio::test]
async fn without_a_delegation_the_deprecated_srv_records_come_next() {
    let (r, _, _) = resolver(
        FakeDns::default()
            .srv("_matrix._tcp.example.org", &[(0, 0, 8444, "legacy.example.org")])
            .host("legacy.example.org", &["192.0.2.2"]),
        FakeWellKnown::default(),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(destination, routed("example.org", &["192.0.2.2:8444"]));
}

#[tokio::test]
async fn without_a_delegation_or_srv_records_the_hostname_is_reached_on_8448() {
    let (r, _, _) = resolver(
        FakeDns::default().host("example.org", &["192.0.2.4", "2001:db8::4"]),
        FakeWellKnown::default(),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(
        destination,
        routed("example.org", &["192.0.2.4:8448", "[2001:db8::4]:8448"])
    );
}

#[tokio::test]
async fn srv_targets_are_tried_by_priority_then_weight_and_dot_means_none() {
    let (r, _, _) = resolver(
        FakeDns::default()
            .srv(
                "_matrix-fed._tcp.example.org",
                &[
                    (20, 0, 3, "c.example.org"),
                    (10, 5, 2, "b.example.org"),
                    (10, 50, 1, "a.example.org"),
                    (10, 99, 4, "unresolvable.example.org"),
                ],
            )
            .host("a.example.org", &["192.0.2.1"])
            .host("b.example.org", &["192.0.2.2"])
            .host("c.example.org", &["192.0.2.3"])
            // Not offered over the current service: the deprecated one is used.
            .srv("_matrix-fed._tcp.legacy.org", &[(0, 0, 0, "")])
            .srv("_matrix._tcp.legacy.org", &[(0, 0, 8444, "a.example.org")]),
        FakeWellKnown::default(),
    );
    let destination = r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(
        destination,
        routed("example.org", &["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3"])
    );
    let destination = r.resolve(server_name!("legacy.org")).await.unwrap();
    assert_eq!(destination, routed("legacy.org", &["192.0.2.1:8444"]));
}

#[tokio::test]
async fn a_host_without_any_address_is_an_error() {
    let (r, _, _) = resolver(
        FakeDns::default().srv("_matrix-fed._tcp.srv.org", &[(0, 0, 8443, "gone.srv.org")]),
        FakeWellKnown::default(),
    );
    let e = r.resolve(server_name!("nowhere.org")).await.unwrap_err();
    assert!(
        matches!(e, DiscoveryError::NoAddress(ref name) if name == "nowhere.org"),
        "{e}"
    );
    let e = r.resolve(server_name!("srv.org")).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoAddress(_)), "{e}");
}

#[tokio::test]
async fn a_failed_dns_lookup_is_an_error_and_not_kept() {
    let (r, dns, _) = resolver(
        FakeDns::default().failing("_matrix-fed._tcp.example.org"),
        FakeWellKnown::default(),
    );
    for _ in 0..2 {
        let e = r.resolve(server_name!("example.org")).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::Dns(_)), "{e}");
    }
    // Asked twice: a failure is not a "no records" answer and is not cached.
    assert_eq!(
        dns.asked(),
        ["SRV _matrix-fed._tcp.example.org", "SRV _matrix-fed._tcp.example.org"]
    );
}

#[tokio::test(start_paused = true)]
async fn resolutions_are_reused_for_a_few_minutes() {
    let (r, dns, _) = resolver(
        FakeDns::default().host("example.org", &["192.0.2.4"]),
        FakeWellKnown::default(),
    );
    r.resolve(server_name!("example.org")).await.unwrap();
    let asked = dns.asked().len();
    tokio::time::advance(RESOLUTION_CACHE - Duration::from_secs(1)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(dns.asked().len(), asked, "reused");
    tokio::time::advance(Duration::from_secs(2)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(dns.asked().len(), 2 * asked, "asked again");
}

#[tokio::test(start_paused = true)]
async fn a_delegation_is_kept_as_long_as_its_answer_says() {
    let keep_for = Duration::from_secs(2 * 60 * 60);
    let (r, _, wk) = resolver(
        FakeDns::default(),
        FakeWellKnown::default().delegates_for("example.org", "matrix.example.org:443", keep_for),
    );
    r.resolve(server_name!("example.org")).await.unwrap();
    // Past the resolution's few minutes, within the delegation's two hours: not fetched again.
    tokio::time::advance(keep_for - Duration::from_secs(1)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(wk.fetched().len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(wk.fetched().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_delegation_shorter_than_the_resolution_cache_ends_the_resolution_too() {
    let keep_for = Duration::from_secs(60);
    let (r, _, wk) = resolver(
        FakeDns::default(),
        FakeWellKnown::default().delegates_for("example.org", "matrix.example.org:443", keep_for),
    );
    r.resolve(server_name!("example.org")).await.unwrap();
    tokio::time::advance(keep_for + Duration::from_secs(1)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(wk.fetched().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_well_known_is_kept_for_an_hour() {
    let (r, dns, wk) = resolver(
        FakeDns::default().host("example.org", &["192.0.2.4"]),
        FakeWellKnown::default(),
    );
    r.resolve(server_name!("example.org")).await.unwrap();
    tokio::time::advance(well_known::ERROR_CACHE - Duration::from_secs(1)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    // DNS was asked again (the resolution expired), the well-known was not.
    assert_eq!(dns.asked().len(), 6);
    assert_eq!(wk.fetched().len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(wk.fetched().len(), 2);
}

#[tokio::test]
async fn the_http_clients_dns_connects_routed_hosts_to_their_targets() {
    let (r, _, _) = resolver(
        FakeDns::default()
            .srv("_matrix-fed._tcp.example.org", &[(0, 0, 8443, "fed.example.org")])
            .host("fed.example.org", &["192.0.2.1"])
            .host("other.org", &["192.0.2.9"]),
        FakeWellKnown::default(),
    );
    let dns = r.dns();
    // Before any resolution, and for hosts never routed: a plain lookup, port left to the URL.
    let lookup = |name: &str| {
        let dns = dns.clone();
        let name: reqwest::dns::Name = name.parse().unwrap();
        async move { dns.resolve(name).await.map(|addrs| addrs.collect::<Vec<_>>()) }
    };
    assert!(lookup("example.org").await.is_err());
    assert_eq!(lookup("other.org").await.unwrap(), addrs(&["192.0.2.9:0"]).unwrap());
    assert!(lookup("unknown.org").await.is_err());

    r.resolve(server_name!("example.org")).await.unwrap();
    assert_eq!(
        lookup("example.org").await.unwrap(),
        addrs(&["192.0.2.1:8443"]).unwrap()
    );
    // URLs lowercase their host.
    r.resolve(server_name!("Example.org")).await.unwrap();
    assert_eq!(
        lookup("example.org").await.unwrap(),
        addrs(&["192.0.2.1:8443"]).unwrap()
    );
}

/// The federation client's way: a URL of the destination's authority, this resolver's DNS. An
/// SRV-routed host is reached on its target's port, with the Host header and certificate of
/// the bare hostname.
#[tokio::test]
async fn a_reqwest_client_reaches_an_srv_target_through_the_resolvers_dns() {
    use axum::{http::HeaderMap, Router};
    let echo_host = |headers: HeaderMap| async move {
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let server = super::test_tls::serve(&["fed.test"], Router::new().fallback(echo_host));
    let port = server.addr.port();
    let (r, _, _) = resolver(
        FakeDns::default()
            .srv("_matrix-fed._tcp.fed.test", &[(0, 0, port, "target.test")])
            .host("target.test", &["127.0.0.1"]),
        FakeWellKnown::default(),
    );
    let destination = r.resolve(server_name!("fed.test")).await.unwrap();
    assert_eq!(destination.base_url(), "https://fed.test");
    let http = server.client_builder().dns_resolver2(r.dns()).build().unwrap();
    let host = http
        .get(format!("{}/_matrix/federation/v1/version", destination.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(host, "fed.test");
}
