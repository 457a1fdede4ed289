//! TURN for calls, with real clients and servers: a coturn (Debian's `coturn`, started here on
//! loopback with Weft's shared secret) takes the credentials `/voip/turnServer` hands out and
//! refuses wrong or expired ones; Weft's built-in relay (`[turn]`) serves webrtc-rs's TURN
//! client and coturn's `turnutils_uclient`, relays their UDP to peers on loopback, and refuses
//! bad credentials, denied peers and allocations over quota.
//!
//! `.ci/run` installs coturn and names the directory of its programs in `WEFT_TEST_COTURN`;
//! without it the tests that need them are skipped loudly, except in CI, where they fail.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket as StdUdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use tokio::net::UdpSocket;
use turn::client::{Client as TurnClient, ClientConfig};
use webrtc_util::Conn;

use crate::both_backends;
use crate::harness::{Backend, Client, TestServer};

const PATH: &str = "/_matrix/client/v3/voip/turnServer";
const SECRET: &str = "turn-test-secret";
const REALM: &str = "weft.test";

/// The directory of coturn's programs, or `None` after saying loudly that the test is skipped.
fn coturn_dir() -> Option<PathBuf> {
    match std::env::var_os("WEFT_TEST_COTURN") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("WEFT_TEST_COTURN is not set in CI: .ci/run installs coturn and sets it")
        }
        _ => {
            eprintln!(
                "!!! SKIPPED: WEFT_TEST_COTURN is not set (the directory of coturn's turnserver and \
                 turnutils_*, as .ci/run sets it): this TURN test did not run !!!"
            );
            None
        }
    }
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on loopback for both UDP and TCP, as far as can be told now.
fn free_port() -> u16 {
    loop {
        let udp = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A range of 200 relay ports starting somewhere random, so that relays of tests running side
/// by side rarely compete for ports.
fn relay_ports() -> (u16, u16) {
    let start = 20_000 + (rand::random::<u16>() % 150) * 200;
    (start, start + 199)
}

/// Waits until something accepts TCP connections on `port`.
async fn wait_for_tcp(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// coturn with `use-auth-secret`, on loopback, in the foreground, with its state in `dir`.
async fn start_coturn(bin: &Path, dir: &Path, port: u16) -> Killed {
    let (min, max) = relay_ports();
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new(bin.join("turnserver"))
        .args([
            "-n".to_owned(),
            "--listening-ip=127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            format!("--min-port={min}"),
            format!("--max-port={max}"),
            "--use-auth-secret".into(),
            format!("--static-auth-secret={SECRET}"),
            format!("--realm={REALM}"),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--allow-loopback-peers".into(),
            "--no-cli".into(),
            format!("--pidfile={}", dir.join("turnserver.pid").display()),
            format!("--db={}", dir.join("turndb").display()),
            "--log-file=stdout".into(),
            "--simple-log".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let child = Killed(child);
    wait_for_tcp(port).await;
    child
}

/// coturn's test peer, which echoes what reaches it, on `port`.
fn start_peer(bin: &Path, port: u16) -> Killed {
    let child = Command::new(bin.join("turnutils_peer"))
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    Killed(child)
}

/// What a `turnutils_uclient` run showed.
#[derive(Debug)]
struct Uclient {
    success: bool,
    sent: u64,
    received: u64,
    output: String,
}

/// Runs coturn's client against the TURN server on `port`: allocate, then send `messages`
/// packets through the relay to the echoing peer on `peer_port` and count the echoes.
/// `extra` adds flags (`-t` for TCP).
async fn uclient(bin: &Path, port: u16, username: &str, password: &str, peer_port: u16, extra: &[&str]) -> Uclient {
    let mut command = tokio::process::Command::new(bin.join("turnutils_uclient"));
    command
        .args(extra)
        .args(["-p", &port.to_string(), "-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-u", username, "-w", password, "-n", "20", "-l", "120", "-z", "5", "-c"])
        .arg("127.0.0.1")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("turnutils_uclient finishes")
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Its summary: "start_mclient: tot_send_msgs=20, tot_recv_msgs=20".
    let total = |key: &str| {
        text.lines()
            .rev()
            .find_map(|line| {
                let rest = line.split(&format!("{key}=")).nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            })
            .unwrap_or(0)
    };
    Uclient {
        success: output.status.success(),
        sent: total("tot_send_msgs"),
        received: total("tot_recv_msgs"),
        output: text,
    }
}

/// Credentials from `/voip/turnServer`: (username, password, uris).
async fn credentials(client: &Client) -> (String, String, Vec<String>) {
    let (status, body) = client.get(PATH).await;
    assert_eq!(status, 200, "{body}");
    let uris = body["uris"]
        .as_array()
        .expect("uris")
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    (
        body["username"].as_str().unwrap().to_owned(),
        body["password"].as_str().unwrap().to_owned(),
        uris,
    )
}

/// The port of the first advertised URI of `transport` (`turn:127.0.0.1:PORT?transport=udp`).
fn uri_port(uris: &[String], transport: &str) -> u16 {
    let uri = uris
        .iter()
        .find(|u| u.ends_with(&format!("?transport={transport}")))
        .unwrap_or_else(|| panic!("a {transport} URI in {uris:?}"));
    let authority = uri.trim_start_matches("turn:").split('?').next().unwrap();
    authority.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_weft_credentials_and_refuses_wrong_or_expired_ones() {
    let Some(bin) = coturn_dir() else { return };
    let port = free_port();
    let Some(server) = TestServer::start_with(Backend::Sqlite, |config| {
        config.voip.turn_uris = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
        config.voip.turn_shared_secret = SECRET.into();
        config.voip.turn_user_lifetime = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let coturn_dir = server.db.dir.join("coturn");
    let _coturn = start_coturn(&bin, &coturn_dir, port).await;
    let peer_port = free_port();
    let _peer = start_peer(&bin, peer_port);
    let alice = server.register("alice", "pw").await;

    let (username, password, uris) = credentials(&alice).await;
    assert_eq!(uri_port(&uris, "udp"), port);
    let run = uclient(&bin, port, &username, &password, peer_port, &[]).await;
    assert!(run.success, "coturn takes Weft's credentials: {}", run.output);
    assert!(
        run.sent > 0 && run.received == run.sent,
        "every packet relayed to the peer and back: {run:?}"
    );

    let wrong = uclient(&bin, port, &username, "bm90IHRoZSBwYXNzd29yZA==", peer_port, &[]).await;
    assert!(!wrong.success, "a wrong password is refused: {}", wrong.output);
    assert!(wrong.output.contains("Cannot complete Allocation"), "{}", wrong.output);
    assert_eq!(wrong.received, 0);

    // Credentials that lived their lifetime (2 s here) are refused.
    let (old_username, old_password, _) = credentials(&alice).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = uclient(&bin, port, &old_username, &old_password, peer_port, &[]).await;
    assert!(!expired.success, "expired credentials are refused: {}", expired.output);
    assert!(
        expired.output.contains("Cannot complete Allocation"),
        "{}",
        expired.output
    );
    server.stop().await;
}

/// A server with the built-in relay on loopback (any free ports), relaying to loopback peers.
async fn start_with_relay(backend: Backend, tweak: impl FnOnce(&mut weft::config::Config)) -> Option<TestServer> {
    let (min, max) = relay_ports();
    TestServer::start_with(backend, |config| {
        config.voip.turn_shared_secret = SECRET.into();
        config.turn.enabled = true;
        config.turn.udp_listeners = vec!["127.0.0.1:0".into()];
        config.turn.tcp_listeners = vec!["127.0.0.1:0".into()];
        config.turn.relay_ip = [127, 0, 0, 1].into();
        config.turn.min_port = min;
        config.turn.max_port = max;
        config.turn.allow_loopback_peers = true;
        tweak(config);
    })
    .await
}

/// webrtc-rs's TURN client, over UDP, to the relay at `port`.
async fn turn_client(port: u16, username: &str, password: &str) -> TurnClient {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = format!("127.0.0.1:{port}");
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: username.into(),
        password: password.into(),
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// Receives one datagram within two seconds.
async fn receive(conn: &(dyn Conn + Send + Sync)) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(Duration::from_secs(2), conn.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

both_backends!(builtin_relay_carries_udp_between_loopback_peers, |backend| async move {
    let Some(server) = start_with_relay(backend, |_| {}).await else {
        return;
    };
    let relay = server.running.as_ref().unwrap().turn.clone().expect("relay started");
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    assert_eq!(
        uris,
        vec![
            format!("turn:127.0.0.1:{}?transport=udp", relay.udp_addrs[0].port()),
            format!("turn:127.0.0.1:{}?transport=tcp", relay.tcp_addrs[0].port()),
        ],
        "/voip/turnServer offers the built-in relay"
    );

    let client = turn_client(uri_port(&uris, "udp"), &username, &password).await;
    let relayed = client.allocate().await.expect("allocation with Weft's credentials");
    let relayed_addr = relayed.local_addr().unwrap();
    assert_eq!(relayed_addr.ip().to_string(), "127.0.0.1");
    let (min, max) = (server.config.turn.min_port, server.config.turn.max_port);
    assert!(
        (min..=max).contains(&relayed_addr.port()),
        "{relayed_addr} in {min}..={max}"
    );

    // The peer on the far side: what the client sends through the relay reaches it from the
    // relayed address, and what it answers there reaches the client.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relayed.send_to(b"offer from alice", peer_addr).await.unwrap();
    let (data, from) = receive(&peer).await.expect("the peer gets the relayed packet");
    assert_eq!((data.as_slice(), from), (&b"offer from alice"[..], relayed_addr));
    peer.send_to(b"answer from the peer", relayed_addr).await.unwrap();
    let (data, from) = receive(&relayed).await.expect("the client gets the peer's answer");
    assert_eq!((data.as_slice(), from), (&b"answer from the peer"[..], peer_addr));
    // Many packets both ways, as a call sends.
    for i in 0..50u8 {
        relayed.send_to(&[i; 160], peer_addr).await.unwrap();
        let (data, _) = receive(&peer).await.expect("every packet arrives");
        assert_eq!(data, vec![i; 160]);
    }
    let _ = relayed.close().await;
    client.close().await.unwrap();
    server.stop().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_serves_coturns_client_over_udp_and_tcp() {
    let Some(bin) = coturn_dir() else { return };
    let Some(server) = start_with_relay(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let peer_port = free_port();
    let _peer = start_peer(&bin, peer_port);
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    for (transport, flags) in [("udp", &[][..]), ("tcp", &["-t"][..])] {
        let run = uclient(&bin, uri_port(&uris, transport), &username, &password, peer_port, flags).await;
        assert!(run.success, "{transport}: {}", run.output);
        assert!(
            run.sent > 0 && run.received == run.sent,
            "{transport}: every packet relayed to the peer and back: {run:?}"
        );
    }
    let wrong = uclient(&bin, uri_port(&uris, "udp"), &username, "d3Jvbmc=", peer_port, &[]).await;
    assert!(!wrong.success && wrong.received == 0, "{}", wrong.output);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_refuses_wrong_and_expired_credentials() {
    let Some(server) = start_with_relay(Backend::Sqlite, |config| {
        config.voip.turn_user_lifetime = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let port = uri_port(&uris, "udp");

    let wrong = turn_client(port, &username, "d3Jvbmc=").await;
    assert!(wrong.allocate().await.is_err(), "a wrong password is refused");
    wrong.close().await.unwrap();
    // A username for another user with alice's password.
    let other = username.replace("@alice:", "@bob:");
    let forged = turn_client(port, &other, &password).await;
    assert!(
        forged.allocate().await.is_err(),
        "a password is only good for its username"
    );
    forged.close().await.unwrap();
    // The same credentials once expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = turn_client(port, &username, &password).await;
    assert!(expired.allocate().await.is_err(), "expired credentials are refused");
    expired.close().await.unwrap();
    // Fresh ones work: the refusals were about the credentials.
    let (username, password, _) = credentials(&alice).await;
    let fresh = turn_client(port, &username, &password).await;
    fresh.allocate().await.expect("fresh credentials allocate");
    fresh.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_refuses_denied_peers() {
    // Loopback allowed (as in the other tests): private and link-local peers stay refused.
    let Some(server) = start_with_relay(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let client = turn_client(uri_port(&uris, "udp"), &username, &password).await;
    let relayed = client.allocate().await.unwrap();
    for denied in [
        "10.0.0.1:5000",
        "192.168.1.1:5000",
        "169.254.169.254:80",
        "0.0.0.0:5000",
    ] {
        let err = relayed
            .send_to(b"x", denied.parse().unwrap())
            .await
            .expect_err("permission refused");
        assert!(err.to_string().contains("403"), "{denied}: {err}");
    }
    client.close().await.unwrap();
    server.stop().await;

    // By default loopback is refused too: the peer on this host never hears from the relay.
    let Some(server) = start_with_relay(Backend::Sqlite, |config| {
        config.turn.allow_loopback_peers = false;
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let client = turn_client(uri_port(&uris, "udp"), &username, &password).await;
    let relayed = client.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let err = relayed
        .send_to(b"to the host's own services", peer.local_addr().unwrap())
        .await
        .expect_err("permission to a loopback peer refused");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(receive(&peer).await.is_none(), "nothing reached the loopback peer");
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_enforces_the_allocation_quota() {
    let Some(server) = start_with_relay(Backend::Sqlite, |config| {
        config.turn.user_quota = 2;
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let port = uri_port(&uris, "udp");
    let first = turn_client(port, &username, &password).await;
    let first_relayed = first.allocate().await.expect("first allocation");
    let second = turn_client(port, &username, &password).await;
    let _second_relayed = second.allocate().await.expect("second allocation");
    // Other credentials of the same user count too.
    let (username2, password2, _) = credentials(&alice).await;
    let third = turn_client(port, &username2, &password2).await;
    let err = third.allocate().await.err().expect("third allocation refused");
    assert!(err.to_string().contains("486"), "Allocation Quota Reached: {err}");
    third.close().await.unwrap();
    // Another user has their own quota.
    let (bob_username, bob_password, _) = credentials(&bob).await;
    let bobs = turn_client(port, &bob_username, &bob_password).await;
    bobs.allocate().await.expect("bob's allocation");
    bobs.close().await.unwrap();
    // A released allocation gives its place back.
    first_relayed.close().await.unwrap();
    first.close().await.unwrap();
    let fourth = turn_client(port, &username2, &password2).await;
    fourth.allocate().await.expect("an allocation after one was released");
    fourth.close().await.unwrap();
    second.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_caps_bandwidth_per_allocation() {
    let Some(server) = start_with_relay(Backend::Sqlite, |config| {
        config.turn.max_bytes_per_second = 10_000;
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let client = turn_client(uri_port(&uris, "udp"), &username, &password).await;
    let relayed = client.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // 50 kB at once against a cap of 10 kB/s: about a second's worth gets through.
    for _ in 0..50 {
        relayed.send_to(&[7u8; 1000], peer.local_addr().unwrap()).await.unwrap();
    }
    let mut received = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut [0u8; 2048])).await {
        received += 1;
    }
    assert!(
        (5..=15).contains(&received),
        "about 10 of 50 packets relayed, got {received}"
    );
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_relay_stops_with_the_server() {
    let Some(mut server) = start_with_relay(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let relay = server.running.as_ref().unwrap().turn.clone().unwrap();
    let alice = server.register("alice", "pw").await;
    let (username, password, uris) = credentials(&alice).await;
    let client = turn_client(uri_port(&uris, "udp"), &username, &password).await;
    let relayed = client.allocate().await.unwrap();
    let relayed_port = relayed.local_addr().unwrap().port();
    let running = server.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("the server stops with allocations open");
    // Its sockets are closed: listeners and relayed ports can be taken again.
    StdUdpSocket::bind(relay.udp_addrs[0]).expect("the UDP listener's port is free");
    assert!(
        TcpStream::connect(relay.tcp_addrs[0]).is_err(),
        "the TCP listener is closed"
    );
    let mut freed = false;
    for _ in 0..20 {
        if StdUdpSocket::bind(("127.0.0.1", relayed_port)).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the relayed port is released");
    client.close().await.unwrap();
    server.stop().await;
}
