//! Which peers the relay sends to. A TURN relay sends wherever its clients ask, from inside
//! the host's network: unchecked, any user holding credentials could reach the host's own
//! services (its database on loopback, the LAN behind it, cloud metadata on link-local).
//! So internal ranges are refused unless configured otherwise.

use std::net::IpAddr;

use weft_core::media::preview::IpRange;

/// Refused unless allowed: loopback, private, shared (CGNAT), link-local, multicast,
/// reserved, and their IPv6 counterparts (IPv4-mapped addresses count as IPv4).
const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

#[derive(Debug)]
pub struct PeerPolicy {
    denied: Vec<IpRange>,
    allowed: Vec<IpRange>,
}

impl PeerPolicy {
    pub fn new(allow_loopback: bool, allowed_ranges: &[String]) -> Result<Self, String> {
        let parse = |r: &str| r.parse::<IpRange>();
        let mut allowed = allowed_ranges.iter().map(|r| parse(r)).collect::<Result<Vec<_>, _>>()?;
        if allow_loopback {
            allowed.extend(LOOPBACK.iter().map(|r| parse(r).expect("valid range")));
        }
        let denied = DENIED.iter().map(|r| parse(r).expect("valid range")).collect();
        Ok(PeerPolicy { denied, allowed })
    }

    /// Whether the relay may exchange packets with `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|r| r.contains(ip)) || !self.denied.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::PeerPolicy;

    #[test]
    fn internal_ranges_are_denied_unless_allowed() {
        let strict = PeerPolicy::new(false, &[]).unwrap();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.10",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!strict.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.7", "8.8.8.8", "2001:4860::8888"] {
            assert!(strict.allows(ip.parse().unwrap()), "{ip}");
        }
        let tests = PeerPolicy::new(true, &["192.168.1.0/24".into()]).unwrap();
        assert!(tests.allows("127.0.0.1".parse().unwrap()));
        assert!(tests.allows("192.168.1.9".parse().unwrap()));
        assert!(!tests.allows("192.168.2.9".parse().unwrap()));
        assert!(!tests.allows("10.0.0.1".parse().unwrap()));
    }
}
