//! `weft-bench turn`: a TURN relay under load (bench/turn.sh runs it against Weft's built-in
//! relay and against coturn). The same driver for both: webrtc-rs's TURN client allocates on
//! the relay, and each allocation sends numbered, timestamped UDP packets through it to an
//! echo peer in this process, which sends them back through the relay. Every echoed packet
//! crossed the relay twice.
//!
//! For 1 allocation and for `--concurrent` ones at once:
//! - latency: each allocation one packet in flight; the round trip through the relay, and the
//!   same minus a direct round trip to the echo peer (what the relay adds, both ways);
//! - throughput: each allocation `--window` packets in flight; packets relayed per second;
//! - memory: the relay process's RSS before the allocations and once they are all made (and
//!   carried a packet), per allocation;
//! - CPU: the relay process's CPU time during the throughput measurement, per relayed packet.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tokio::{net::UdpSocket, sync::Semaphore};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::stats::{pct, round2};

#[derive(Args)]
pub struct TurnArgs {
    /// Name written in the results ("weft", "coturn").
    #[arg(long)]
    server: String,
    /// The relay's UDP address (loopback), e.g. 127.0.0.1:3478.
    #[arg(long)]
    relay: String,
    /// Credentials in the shared-secret scheme, valid for the whole run.
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    #[arg(long)]
    realm: String,
    /// PID of the relay process, for the memory figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Allocations at once in the second round.
    #[arg(long, default_value_t = 100)]
    concurrent: usize,
    /// Seconds each measurement (latency, throughput) lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes per packet (an audio frame is about 160).
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Packets in flight per allocation in the throughput measurement.
    #[arg(long, default_value_t = 8)]
    window: usize,
}

/// One allocation: its client (kept alive) and its relayed conn.
struct Allocation {
    client: Client,
    relayed: Arc<dyn Conn + Send + Sync>,
}

pub async fn run(args: TurnArgs) -> Result<()> {
    let echo = UdpSocket::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let echo = Arc::new(echo);
    tokio::spawn({
        let echo = echo.clone();
        async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        }
    });
    let direct_p50 = direct_rtt_ms(echo_addr, args.size).await?;
    eprintln!(
        "[{}] direct round trip to the echo peer: p50 {direct_p50:.3} ms",
        args.server
    );
    for n in [1, args.concurrent] {
        let rss_before = rss_kb(args.pid);
        let mut allocations = Vec::with_capacity(n);
        for _ in 0..n {
            allocations.push(allocate(&args).await?);
        }
        // One packet each: permissions and channels are made before anything is measured.
        let warm = measure(&allocations, echo_addr, args.size, 1, Duration::from_millis(300)).await;
        let rss_after = rss_kb(args.pid);
        let latency = measure(&allocations, echo_addr, args.size, 1, Duration::from_secs(args.seconds)).await;
        let cpu_before = cpu_ticks(args.pid);
        let throughput = measure(
            &allocations,
            echo_addr,
            args.size,
            args.window,
            Duration::from_secs(args.seconds),
        )
        .await;
        let cpu_after = cpu_ticks(args.pid);
        // The relay's own CPU per relayed packet: what it costs, whatever bounds the rate
        // (on a small machine, often the driver).
        let cpu_us_per_packet = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if throughput.echoed > 0 => {
                Some((after - before) as f64 * 1e6 / ticks_per_sec() / (2.0 * throughput.echoed as f64))
            }
            _ => None,
        };
        let p50 = pct(&latency.rtt_ms, 50.0);
        let per_allocation_kb = match (rss_before, rss_after) {
            (Some(before), Some(after)) => Some((after as f64 - before as f64) / n as f64),
            _ => None,
        };
        let variant = if n == 1 {
            "1 allocation".to_owned()
        } else {
            format!("{n} allocations")
        };
        let line = json!({
            "scenario": "turn_relay",
            "variant": variant,
            "server": args.server,
            "params": { "allocations": n, "size": args.size, "window": args.window, "seconds": args.seconds },
            "packets_per_sec": round2(Some(throughput.relayed_per_sec())),
            "p50_ms": round2(p50),
            "p99_ms": round2(pct(&latency.rtt_ms, 99.0)),
            "added_p50_ms": round2(p50.map(|p| p - direct_p50)),
            "rss_kb_per_allocation": round2(per_allocation_kb),
            "cpu_us_per_packet": round2(cpu_us_per_packet),
            "lost": warm.lost + latency.lost + throughput.lost,
            "errors": 0,
        });
        println!("{line}");
        for a in allocations {
            let _ = a.relayed.close().await;
            let _ = a.client.close().await;
        }
        // Let the relay settle (deallocations) before the next round's baseline.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// The median round trip of `size`-byte packets straight to the echo peer.
async fn direct_rtt_ms(echo: SocketAddr, size: usize) -> Result<f64> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let packet = vec![0u8; size];
    let mut buf = vec![0u8; 2048];
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        socket.send_to(&packet, echo).await?;
        tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
            .await
            .context("the echo peer answers")??;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    pct(&samples, 50.0).context("samples")
}

async fn allocate(args: &TurnArgs) -> Result<Allocation> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: args.relay.clone(),
        turn_serv_addr: args.relay.clone(),
        username: args.username.clone(),
        password: args.password.clone(),
        realm: args.realm.clone(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relayed = client.allocate().await.context("allocate")?;
    Ok(Allocation {
        client,
        relayed: Arc::new(relayed),
    })
}

#[derive(Default)]
struct Measured {
    rtt_ms: Vec<f64>,
    echoed: u64,
    /// Echoed before the measurement's end (the rest are drained, for the loss count).
    echoed_in_time: u64,
    lost: u64,
    elapsed: Duration,
}

impl Measured {
    /// Each echoed packet crossed the relay twice (to the peer and back).
    fn relayed_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            2.0 * self.echoed_in_time as f64 / secs
        } else {
            0.0
        }
    }
}

/// Every allocation keeps `window` packets in flight for `duration`; a packet not back
/// within a second counts as lost and frees its place.
async fn measure(
    allocations: &[Allocation],
    echo: SocketAddr,
    size: usize,
    window: usize,
    duration: Duration,
) -> Measured {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in allocations {
        let relayed = a.relayed.clone();
        tasks.push(tokio::spawn(one_allocation(
            relayed, echo, size, window, start, duration,
        )));
    }
    let mut total = Measured::default();
    for t in tasks {
        if let Ok(m) = t.await {
            total.rtt_ms.extend(m.rtt_ms);
            total.echoed += m.echoed;
            total.echoed_in_time += m.echoed_in_time;
            total.lost += m.lost;
        }
    }
    total.elapsed = duration;
    total
}

async fn one_allocation(
    relayed: Arc<dyn Conn + Send + Sync>,
    echo: SocketAddr,
    size: usize,
    window: usize,
    start: Instant,
    duration: Duration,
) -> Measured {
    let places = Arc::new(Semaphore::new(window));
    let sent = Arc::new(AtomicU64::new(0));
    let receiver = tokio::spawn({
        let relayed = relayed.clone();
        let places = places.clone();
        async move {
            let mut m = Measured::default();
            let mut buf = vec![0u8; 2048];
            loop {
                let deadline = (start + duration + Duration::from_secs(1)).saturating_duration_since(Instant::now());
                match tokio::time::timeout(deadline, relayed.recv_from(&mut buf)).await {
                    Ok(Ok((n, _))) if n >= 8 => {
                        let sent_at = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                        let now = start.elapsed().as_nanos() as u64;
                        m.rtt_ms.push(now.saturating_sub(sent_at) as f64 / 1e6);
                        m.echoed += 1;
                        if now <= duration.as_nanos() as u64 {
                            m.echoed_in_time += 1;
                        }
                        places.add_permits(1);
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            m
        }
    });
    let mut packet = vec![0u8; size.max(8)];
    while start.elapsed() < duration {
        // No place within a second: a packet is not coming back, and its place is free again.
        if let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(1), places.acquire()).await {
            permit.forget();
        }
        packet[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        if relayed.send_to(&packet, echo).await.is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut m = receiver.await.unwrap_or_default();
    m.lost = sent.load(Ordering::Relaxed).saturating_sub(m.echoed);
    m
}

/// User plus system CPU time of process `pid` (all threads), in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The resident set of process `pid`, in kB.
fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
