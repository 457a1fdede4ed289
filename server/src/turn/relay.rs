//! Relayed ports: opened in the configured range for the user the listener's loop names,
//! counted against that user's quota while they live, each with a bandwidth cap and a last
//! check of its peers (the gate already refused permissions to denied ones; a relayed port
//! also never talks to one).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_trait::async_trait;
use rand::Rng;
use tokio::net::UdpSocket;
use turn::{relay::RelayAddressGenerator, Error};
use webrtc_util::Conn;

use super::Shared;

/// Ports tried at random in the range before giving up on an allocation.
const PORT_TRIES: usize = 20;

/// Allocations held per user.
pub(crate) struct Quotas {
    limit: u32,
    held: Arc<Mutex<HashMap<String, u32>>>,
}

impl Quotas {
    pub fn new(limit: u32) -> Self {
        Quotas {
            limit,
            held: Default::default(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn held(&self, user: &str) -> u32 {
        self.held.lock().expect("not poisoned").get(user).copied().unwrap_or(0)
    }

    /// One more allocation for `user`, released when the lease drops; `None` over quota.
    fn take(&self, user: &str) -> Option<Lease> {
        let mut held = self.held.lock().expect("not poisoned");
        let count = held.entry(user.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Lease {
            held: self.held.clone(),
            user: user.to_owned(),
        })
    }
}

struct Lease {
    held: Arc<Mutex<HashMap<String, u32>>>,
    user: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("not poisoned");
        if let Some(count) = held.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// The crate's source of relayed ports, one per listener loop.
pub(crate) struct Generator {
    pub shared: Arc<Shared>,
    /// The user of the Allocate request being handled (set by the listener's loop).
    pub pending_user: Arc<Mutex<Option<String>>>,
}

#[async_trait]
impl RelayAddressGenerator for Generator {
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), Error> {
        let shared = &self.shared;
        if use_ipv4 != shared.relay_ip.is_ipv4() {
            return Err(Error::Other("the relay has no address of that family".into()));
        }
        let user = self
            .pending_user
            .lock()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| Error::Other("allocation outside an Allocate request".into()))?;
        let lease = shared
            .quotas
            .take(&user)
            .ok_or_else(|| Error::Other("allocation quota reached".into()))?;
        let ports: Vec<u16> = if requested_port != 0 {
            vec![requested_port]
        } else {
            let mut rng = rand::thread_rng();
            (0..PORT_TRIES)
                .map(|_| rng.gen_range(shared.min_port..=shared.max_port))
                .collect()
        };
        for port in ports {
            if port < shared.min_port || port > shared.max_port {
                continue;
            }
            let Ok(socket) = UdpSocket::bind((shared.relay_ip, port)).await else {
                continue;
            };
            let relayed = SocketAddr::new(shared.external_ip, port);
            let conn = RelayConn {
                socket,
                shared: shared.clone(),
                to_peers: Mutex::new(Bucket::new(shared.max_bytes_per_second)),
                from_peers: Mutex::new(Bucket::new(shared.max_bytes_per_second)),
                lease: Mutex::new(Some(lease)),
            };
            return Ok((Arc::new(conn), relayed));
        }
        Err(Error::ErrMaxRetriesExceeded)
    }
}

/// A relayed port.
struct RelayConn {
    socket: UdpSocket,
    shared: Arc<Shared>,
    to_peers: Mutex<Bucket>,
    from_peers: Mutex<Bucket>,
    /// Held while the allocation lives; released on close (or drop).
    lease: Mutex<Option<Lease>>,
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("a relayed port is not connected".into()))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("a relayed port reads with recv_from".into()))
    }

    /// The next packet from an allowed peer within the cap; the others are dropped, as the
    /// network could have.
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if self.shared.policy.allows(from.ip()) && self.from_peers.lock().expect("not poisoned").take(n) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("a relayed port sends with send_to".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.shared.policy.allows(target.ip()) || !self.to_peers.lock().expect("not poisoned").take(buf.len()) {
            return Ok(buf.len()); // Dropped.
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.lease.lock().expect("not poisoned").take();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A token bucket of bytes: a second's worth at most, refilled at the rate; rate 0 is no cap.
struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate,
            tokens: rate as f64,
            at: Instant::now(),
        }
    }

    fn take(&mut self, bytes: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let rate = self.rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens < bytes as f64 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{Bucket, Quotas};

    #[test]
    fn the_cap_drops_what_goes_over_a_seconds_worth() {
        let mut bucket = Bucket::new(1000);
        assert!(bucket.take(600));
        assert!(!bucket.take(600), "over the second's budget");
        assert!(bucket.take(400));
        assert!(Bucket::new(0).take(usize::MAX), "0 is no cap");
    }

    #[test]
    fn a_quota_lease_is_returned_when_dropped() {
        let quotas = Quotas::new(2);
        let a = quotas.take("@a:x").unwrap();
        let _b = quotas.take("@a:x").unwrap();
        assert!(quotas.take("@a:x").is_none());
        assert!(quotas.take("@b:x").is_some(), "per user");
        drop(a);
        assert_eq!(quotas.held("@a:x"), 1);
        assert!(quotas.take("@a:x").is_some());
    }
}
