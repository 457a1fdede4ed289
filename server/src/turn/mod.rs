//! The built-in STUN/TURN relay (`[turn]`, off by default): a small deployment's calls get a
//! relay without a coturn beside the server. The protocol is webrtc-rs's `turn` crate; this
//! module gives it what a homeserver's relay needs around it:
//! - `auth.rs`: the credentials `/voip/turnServer` hands out (coturn's shared-secret scheme),
//!   refused once expired;
//! - `gate.rs`: requests refused before the crate sees them (relaying to denied peers, a user
//!   over quota), answered with the TURN error codes a client understands;
//! - `relay.rs`: relayed ports from the configured range, counted per user, each with a
//!   bandwidth cap and a last check of its peers;
//! - `tcp.rs`: TURN over TCP (the crate reads datagrams; this frames a stream into them).
//!
//! Each listener (a UDP socket, or one accepted TCP connection) runs one loop that hands its
//! packets to the crate's request handler in order, so a request's checks and the allocation
//! it makes cannot interleave with another request of the same listener.

mod auth;
mod gate;
mod policy;
mod relay;
mod tcp;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::UdpSocket, sync::watch, task::JoinHandle};
use turn::{
    allocation::allocation_manager::{Manager, ManagerConfig},
    auth::AuthHandler,
    server::request::Request,
};
use webrtc_util::Conn;

use crate::config::Config;

pub use policy::PeerPolicy;

/// Largest datagram read from a client: a UDP datagram, or one frame of a TCP stream (media
/// packets stay under the path MTU, about 1500 bytes).
const MAX_PACKET: usize = 4096;
/// How long the crate accepts a nonce it issued (its own constant, RFC 8656's hour).
const NONCE_LIFETIME: Duration = Duration::from_secs(3600);
/// Nonces kept at most: every unauthenticated request gets one, and the crate forgets only
/// those presented again; past this many the oldest go (their clients get 438 Stale Nonce
/// and retry with a new one).
const MAX_NONCES: usize = 100_000;
/// How long a channel binding lasts unless refreshed (RFC 8656's ten minutes).
const CHANNEL_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// The running relay: where it listens and the URIs clients are told.
#[derive(Clone, Debug)]
pub struct Relay {
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
    pub uris: Vec<String>,
}

/// What every listener shares.
pub(crate) struct Shared {
    pub auth: Arc<auth::SecretAuth>,
    pub realm: String,
    pub policy: PeerPolicy,
    pub quotas: relay::Quotas,
    pub relay_ip: IpAddr,
    pub external_ip: IpAddr,
    pub min_port: u16,
    pub max_port: u16,
    pub max_bytes_per_second: u64,
    /// The crate's nonces (issued with 401 answers), shared so that any listener accepts them.
    pub nonces: Arc<tokio::sync::Mutex<HashMap<String, tokio::time::Instant>>>,
}

/// Binds the relay's listeners and starts serving them until `stop`; `None` when disabled.
/// The listeners' tasks go into `tasks`, which the server awaits on shutdown.
pub async fn start(
    config: &Config,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Option<Relay>> {
    let turn = &config.turn;
    if !turn.enabled {
        return Ok(None);
    }
    let realm = if turn.realm.is_empty() {
        config.server_name.clone()
    } else {
        turn.realm.clone()
    };
    let external_ip = if turn.external_ip.is_empty() {
        turn.relay_ip
    } else {
        turn.external_ip.parse()?
    };
    let shared = Arc::new(Shared {
        auth: Arc::new(auth::SecretAuth::new(
            config.voip.turn_shared_secret.clone(),
            realm.clone(),
        )),
        realm,
        policy: PeerPolicy::new(turn.allow_loopback_peers, &turn.allowed_peer_ranges).map_err(anyhow::Error::msg)?,
        quotas: relay::Quotas::new(turn.user_quota),
        relay_ip: turn.relay_ip,
        external_ip,
        min_port: turn.min_port,
        max_port: turn.max_port,
        max_bytes_per_second: turn.max_bytes_per_second,
        nonces: Default::default(),
    });
    let mut relay = Relay {
        udp_addrs: Vec::new(),
        tcp_addrs: Vec::new(),
        uris: turn.uris.clone(),
    };
    // A loop handles its packets one at a time, so one UDP socket per core shares each
    // listener's port: the kernel spreads clients over them by address, and a client's
    // packets always reach the same socket, hence the same loop and its allocations.
    let loops = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    for addr in &turn.udp_listeners {
        let mut addr: SocketAddr = addr.parse()?;
        for i in 0..loops {
            let socket = reuse_port_udp(addr).map_err(|e| anyhow::anyhow!("turn: cannot listen on udp {addr}: {e}"))?;
            if i == 0 {
                // Port 0 (any): the other sockets take the port the first one got.
                addr = socket.local_addr()?;
                relay.udp_addrs.push(addr);
                tracing::info!(%addr, loops, "TURN relay listening (UDP)");
            }
            tasks.push(tokio::spawn(serve(Arc::new(socket), shared.clone(), stop.clone())));
        }
    }
    for addr in &turn.tcp_listeners {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("turn: cannot listen on tcp {addr}: {e}"))?;
        let local = listener.local_addr()?;
        relay.tcp_addrs.push(local);
        tracing::info!(addr = %local, "TURN relay listening (TCP)");
        tasks.push(tokio::spawn(tcp::accept(listener, shared.clone(), stop.clone())));
    }
    tasks.push(tokio::spawn(sweep_nonces(shared.clone(), stop.clone())));
    if relay.uris.is_empty() {
        let host = |listener: &SocketAddr| {
            let ip = if !turn.external_ip.is_empty() {
                external_ip
            } else if !listener.ip().is_unspecified() {
                listener.ip()
            } else {
                return server_host(&config.server_name);
            };
            match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            }
        };
        for a in &relay.udp_addrs {
            relay.uris.push(format!("turn:{}:{}?transport=udp", host(a), a.port()));
        }
        for a in &relay.tcp_addrs {
            relay.uris.push(format!("turn:{}:{}?transport=tcp", host(a), a.port()));
        }
    }
    Ok(Some(relay))
}

/// Drops expired nonces every ten seconds, and the oldest when there are too many, so that a
/// flood of unauthenticated requests cannot grow the crate's nonce map without bound.
async fn sweep_nonces(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let mut nonces = shared.nonces.lock().await;
        let now = tokio::time::Instant::now();
        nonces.retain(|_, issued| now.duration_since(*issued) < NONCE_LIFETIME);
        if nonces.len() > MAX_NONCES {
            let mut issued: Vec<_> = nonces.values().copied().collect();
            issued.sort_unstable();
            let cutoff = issued[issued.len() - MAX_NONCES];
            nonces.retain(|_, at| *at >= cutoff);
        }
    }
}

/// A UDP socket bound to `addr` with SO_REUSEPORT, for a listener's several loops.
fn reuse_port_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The host part of a server name (`example.org:8448` -> `example.org`).
fn server_host(server_name: &str) -> String {
    match server_name.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((host, port)) if !port.contains(']') => host.to_owned(),
        _ => server_name.to_owned(),
    }
}

/// One listener's loop: every packet through the gate, then to the crate, one at a time. At
/// the end (stop, or the TCP connection closed) its allocations are released.
pub(crate) async fn serve(conn: Arc<dyn Conn + Send + Sync>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // The crate asks the generator for a relayed port without saying for whom; the loop
    // tells it (`pending_user`) while it handles an Allocate request.
    let pending_user = Arc::new(Mutex::new(None));
    let manager = Arc::new(Manager::new(ManagerConfig {
        relay_addr_generator: Box::new(relay::Generator {
            shared: shared.clone(),
            pending_user: pending_user.clone(),
        }),
        alloc_close_notify: None,
    }));
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let (n, src) = tokio::select! {
            read = conn.recv_from(&mut buf) => match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN listener stops reading");
                    break;
                }
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let packet = &buf[..n];
        let user = match gate::check(&shared, packet, src) {
            gate::Verdict::Pass { allocating_user } => allocating_user,
            gate::Verdict::Refuse(answer) => {
                let _ = conn.send_to(&answer, src).await;
                continue;
            }
        };
        *pending_user.lock().expect("not poisoned") = user;
        let mut request = Request {
            conn: conn.clone(),
            src_addr: src,
            buff: packet.to_vec(),
            allocation_manager: manager.clone(),
            nonces: shared.nonces.clone(),
            auth_handler: shared.auth.clone() as Arc<dyn AuthHandler + Send + Sync>,
            realm: shared.realm.clone(),
            channel_bind_timeout: CHANNEL_BIND_TIMEOUT,
        };
        if let Err(e) = request.handle_request().await {
            // A client's bad request (wrong credentials, no allocation...), already answered.
            tracing::debug!(error = %e, %src, "TURN request refused");
        }
        *pending_user.lock().expect("not poisoned") = None;
    }
    let _ = manager.close().await;
}
