//! `weft-bench federation`: two servers of one kind federating on loopback (started by
//! `bench/federation.sh`). User A on server 1 makes a public room, user B on server 2 joins it
//! over federation and long-polls /sync on server 2. Two result lines:
//!
//! - `federation_latency`: A sends N messages one at a time (the next once the last has
//!   reached B, then a short gap); the delay from each send's 200 on server 1 to the event in
//!   B's long-poll on server 2.
//! - `federation_throughput`: C senders on server 1 send K messages each as fast as they can
//!   into the same room; how long until B's server has all C×K, i.e. the events per second
//!   server 2 takes in (and the send rate, the lag after the last send, the per-event delay).
//!
//! Only the Client-Server API is spoken (and the shared-secret registration); the servers do
//! the federation between themselves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{
    client::{q, seg, Server, User},
    stats::{line, pct, round2, Rec},
};

#[derive(Args)]
pub struct FedArgs {
    /// Client API of server 1 (the room's creator), loopback only.
    #[arg(long)]
    base: String,
    /// Client API of server 2 (the joining server), loopback only.
    #[arg(long)]
    second_base: String,
    /// Server 1's server name (`127.0.0.1:PORT`), given as `via` to the join.
    #[arg(long)]
    via: String,
    /// Name written in the results ("weft", "synapse").
    #[arg(long)]
    server: String,
    /// Both servers' registration shared secret.
    #[arg(long, env = "BENCH_SHARED_SECRET")]
    secret: String,
    /// Small parameters.
    #[arg(long)]
    quick: bool,
    /// Messages sent one at a time in federation_latency (after the warm-up ones).
    #[arg(long)]
    latency_messages: Option<usize>,
    /// Unmeasured messages sent first the same way (connections, key caches).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Pause after each latency message has arrived, before the next send.
    #[arg(long, default_value_t = 50)]
    gap_ms: u64,
    /// Concurrent senders in federation_throughput.
    #[arg(long)]
    burst_senders: Option<usize>,
    /// Messages per sender in federation_throughput.
    #[arg(long)]
    burst_per_sender: Option<usize>,
    /// How long one latency message may take to arrive before it counts as missing, in seconds.
    #[arg(long, default_value_t = 30)]
    arrival_timeout: u64,
    /// Upper bound on each scenario's timed part, in seconds.
    #[arg(long)]
    scenario_timeout: Option<u64>,
    /// Timeout of one HTTP request, in seconds.
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
}

/// Arrivals seen in B's long-poll: event ID -> when the /sync answer holding it came back.
#[derive(Default)]
struct Seen {
    at: HashMap<String, Instant>,
    sync_errors: Rec,
    /// /sync answers with `limited: true` (a gap filled from /messages).
    gaps: u64,
}

struct Receiver {
    srv: Server,
    user: User,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    fn arrival(&self, id: &str) -> Option<Instant> {
        self.seen.lock().unwrap().at.get(id).copied()
    }

    /// Waits until every ID in `ids` has arrived, or `until`, or `idle` without any new
    /// arrival; answers how many have.
    async fn wait_all(&mut self, ids: &[String], until: Instant, idle: Duration) -> usize {
        loop {
            self.changed.borrow_and_update();
            let have = {
                let seen = self.seen.lock().unwrap();
                ids.iter().filter(|id| seen.at.contains_key(*id)).count()
            };
            if have == ids.len() {
                return have;
            }
            let left = until.saturating_duration_since(Instant::now()).min(idle);
            // Gives up at `until`, or if the long-poll task has ended.
            if left.is_zero() || !matches!(tokio::time::timeout(left, self.changed.changed()).await, Ok(Ok(()))) {
                return have;
            }
        }
    }
}

/// Long-polls /sync for `user` on `srv` (timeline of `room` only) and records when each
/// m.room.message arrives. A `limited` timeline is completed from /messages so no event is
/// missed in a burst.
async fn start_receiver(srv: Server, user: User, room: String) -> Result<Receiver> {
    let filter = q(&json!({
        "room": { "rooms": [room], "timeline": { "limit": 200 }, "state": { "lazy_load_members": true } },
        "presence": { "not_types": ["*"] },
        "account_data": { "not_types": ["*"] },
    })
    .to_string());
    let first = srv
        .sync(&user, &format!("filter={filter}&timeout=0"))
        .await
        .context("B's first /sync")?;
    let mut token = first["next_batch"]
        .as_str()
        .ok_or_else(|| anyhow!("no next_batch"))?
        .to_owned();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, rx) = watch::channel(0u64);
    let seen2 = seen.clone();
    let (srv_out, user_out) = (srv.clone(), user.clone());
    let task = tokio::spawn(async move {
        loop {
            let path = format!("filter={filter}&timeout=10000&since={}", q(&token));
            let s = match srv.sync(&user, &path).await {
                Ok(s) => s,
                Err(e) => {
                    seen2.lock().unwrap().sync_errors.err(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let now = Instant::now();
            let tl = &s["rooms"]["join"][&room]["timeline"];
            let mut ids: Vec<String> = message_ids(tl["events"].as_array());
            if tl["limited"] == true {
                if let Some(prev) = tl["prev_batch"].as_str() {
                    ids.extend(fill_gap(&srv, &user, &room, prev, &seen2).await);
                }
                seen2.lock().unwrap().gaps += 1;
            }
            if !ids.is_empty() {
                let mut g = seen2.lock().unwrap();
                for id in ids {
                    g.at.entry(id).or_insert(now);
                }
                drop(g);
                tx.send_modify(|n| *n += 1);
            }
            if let Some(next) = s["next_batch"].as_str() {
                token = next.to_owned();
            }
        }
    });
    Ok(Receiver {
        srv: srv_out,
        user: user_out,
        seen,
        changed: rx,
        task,
    })
}

fn message_ids(events: Option<&Vec<Value>>) -> Vec<String> {
    events
        .into_iter()
        .flatten()
        .filter(|ev| ev["type"] == "m.room.message")
        .filter_map(|ev| ev["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Pages /messages back from a limited timeline's `prev_batch` until a page holds an event
/// already seen (or 50 pages): the events the /sync answer left out.
async fn fill_gap(srv: &Server, user: &User, room: &str, prev: &str, seen: &Mutex<Seen>) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = prev.to_owned();
    for _ in 0..50 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&from={}",
            seg(room),
            q(&from)
        );
        let v = match srv.get(&path, &user.token).await {
            Ok(v) => v,
            Err(e) => {
                seen.lock().unwrap().sync_errors.err(&e);
                break;
            }
        };
        let ids = message_ids(v["chunk"].as_array());
        let known = {
            let g = seen.lock().unwrap();
            ids.iter().any(|id| g.at.contains_key(id))
        };
        let empty = v["chunk"].as_array().is_none_or(Vec::is_empty);
        out.extend(ids);
        match v["end"].as_str() {
            Some(end) if !known && !empty => from = end.to_owned(),
            _ => break,
        }
    }
    out
}

/// Every m.room.message ID in the room's /messages (dir=b), up to `pages` pages of 100.
async fn all_message_ids(srv: &Server, user: &User, room: &str, pages: usize) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut from: Option<String> = None;
    for _ in 0..pages {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", seg(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", q(f)));
        }
        let Ok(v) = srv.get(&path, &user.token).await else {
            break;
        };
        out.extend(message_ids(v["chunk"].as_array()));
        match v["end"].as_str() {
            Some(end) if v["chunk"].as_array().is_some_and(|c| !c.is_empty()) => from = Some(end.to_owned()),
            _ => break,
        }
    }
    out
}

pub async fn run(a: FedArgs) -> Result<()> {
    let timeout = Duration::from_secs(a.request_timeout);
    let s1 = Server::new(&a.base, &a.secret, timeout)?;
    let s2 = Server::new(&a.second_base, &a.secret, timeout)?;
    let qf = |x: Option<usize>, quick: usize, full: usize| x.unwrap_or(if a.quick { quick } else { full }).max(1);
    let n = qf(a.latency_messages, 50, 200);
    let (c, k) = (qf(a.burst_senders, 4, 4), qf(a.burst_per_sender, 50, 250));
    let scenario_timeout = Duration::from_secs(a.scenario_timeout.unwrap_or(if a.quick { 180 } else { 600 }));
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
            % 0xffff_ffff
    );
    eprintln!(
        "[{}] federation: latency N={n} (+{} warm-up, gap {} ms), throughput {c}x{k}",
        a.server, a.warmup, a.gap_ms
    );

    // Set-up (not timed): A and the other senders on server 1, B on server 2, B joins over
    // federation.
    let senders = s1.register_many(&format!("f{run_id}a"), c).await?;
    let user_a = senders[0].clone();
    let user_b = s2.register(&format!("f{run_id}b")).await?;
    let room = s1.create_room(&user_a, "federation bench").await?;
    let t = Instant::now();
    let mut tries = 0;
    loop {
        match s2.join_via(&user_b, &room, &[&a.via]).await {
            Ok(()) => break,
            Err(e) if tries < 5 => {
                eprintln!("[{}] join over federation failed ({e}); retrying", a.server);
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow!("B's join over federation: {e}")),
        }
    }
    let join_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!("[{}] B joined {room} through {} in {join_ms:.0} ms", a.server, a.via);
    for u in &senders[1..] {
        s1.join(u, &room).await?;
    }
    let mut recv = start_receiver(s2.clone(), user_b.clone(), room.clone()).await?;

    let lat = latency(&a, &s1, &user_a, &room, &mut recv, n, &run_id, join_ms).await;
    println!(
        "{}",
        lat.unwrap_or_else(|e| crate::failed("federation_latency", &a.server, &e))
    );
    let thr = throughput(&a, &s1, &senders, &room, &mut recv, k, &run_id, scenario_timeout).await;
    println!(
        "{}",
        thr.unwrap_or_else(|e| crate::failed("federation_throughput", &a.server, &e))
    );
    recv.task.abort();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    a: &FedArgs,
    s1: &Server,
    user_a: &User,
    room: &str,
    recv: &mut Receiver,
    n: usize,
    run_id: &str,
    join_ms: f64,
) -> Result<Value> {
    let mut rec = Rec::default();
    let mut from_start = Vec::new();
    let (mut missing, mut early) = (0u64, 0u64);
    let arrival_timeout = Duration::from_secs(a.arrival_timeout);
    let start = Instant::now();
    let mut timed_start = start;
    for i in 0..a.warmup + n {
        let measured = i >= a.warmup;
        if i == a.warmup {
            timed_start = Instant::now();
        }
        let txn = format!("{run_id}-lat-{i}");
        let before = Instant::now();
        let id = match s1.send_text(user_a, room, &txn, &format!("fedlat {i}")).await {
            Ok(id) => id,
            Err(e) => {
                if measured {
                    rec.err(&e);
                }
                continue;
            }
        };
        let ok = Instant::now();
        let got = recv
            .wait_all(std::slice::from_ref(&id), ok + arrival_timeout, arrival_timeout)
            .await;
        if measured {
            match recv.arrival(&id) {
                Some(at) if got == 1 => {
                    early += u64::from(at < ok);
                    rec.ok(at.saturating_duration_since(ok));
                    from_start.push(at.saturating_duration_since(before).as_secs_f64() * 1000.0);
                }
                _ => missing += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(a.gap_ms)).await;
    }
    let elapsed = timed_start.elapsed();
    if missing > 0 {
        rec.err_msg(
            "missing",
            &format!("{missing} messages did not reach B within {} s", a.arrival_timeout),
        );
        rec.errors += missing - 1;
    }
    let (sync_errors, gaps) = {
        let g = recv.seen.lock().unwrap();
        (g.sync_errors.errors, g.gaps)
    };
    let ops = rec.lat_ms.len() as u64;
    Ok(line(
        "federation_latency",
        None,
        &a.server,
        json!({ "messages": n, "warmup": a.warmup, "gap_ms": a.gap_ms }),
        &rec,
        ops,
        elapsed,
        json!({
            "p95_ms": round2(pct(&rec.lat_ms, 95.0)),
            "delivery_max_ms": round2(pct(&rec.lat_ms, 100.0)),
            "start_p50_ms": round2(pct(&from_start, 50.0)),
            "start_p95_ms": round2(pct(&from_start, 95.0)),
            "missing": missing,
            "early": early,
            "join_ms": round2(Some(join_ms)),
            "sync_errors": sync_errors,
            "limited_syncs": gaps,
            "ops_note": "messages per second, one at a time (each waits for the last to arrive, then gap_ms)",
        }),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn throughput(
    a: &FedArgs,
    s1: &Server,
    senders: &[User],
    room: &str,
    recv: &mut Receiver,
    k: usize,
    run_id: &str,
    scenario_timeout: Duration,
) -> Result<Value> {
    let c = senders.len();
    // Let the senders' joins reach server 2 before the burst.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let deadline = start + scenario_timeout;
    let tasks = senders.iter().enumerate().map(|(s, u)| async move {
        let mut rec = Rec::default();
        let mut acked = Vec::new();
        for i in 0..k {
            if Instant::now() > deadline {
                rec.err_msg("deadline", "scenario time bound reached while sending");
                break;
            }
            let txn = format!("{run_id}-burst-{s}-{i}");
            match s1.send_text(u, room, &txn, &format!("fedburst {s} {i}")).await {
                Ok(id) => acked.push((id, Instant::now())),
                Err(e) => rec.err(&e),
            }
        }
        (rec, acked)
    });
    let mut rec = Rec::default();
    let mut acked: Vec<(String, Instant)> = Vec::new();
    for (r, ids) in futures::future::join_all(tasks).await {
        rec.merge(r);
        acked.extend(ids);
    }
    let sent_all = Instant::now();
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    // Until all are in, the time bound, or 30 s without a new arrival.
    let idle = Duration::from_secs(30);
    let received = recv.wait_all(&ids, deadline.max(sent_all + idle), idle).await;
    let mut last_arrival = start;
    let mut missing = 0u64;
    for (id, ok) in &acked {
        match recv.arrival(id) {
            Some(at) => {
                last_arrival = last_arrival.max(at);
                rec.ok(at.saturating_duration_since(*ok));
            }
            None => missing += 1,
        }
    }
    // Events missing from B's long-poll: are they on server 2 at all? (Not timed.) An event
    // server 2 fetched as a missing prev_event or backfilled may be in /messages without
    // ever being in a /sync timeline.
    let mut missing_but_in_messages = Value::Null;
    if missing > 0 {
        let left: Vec<&String> = acked
            .iter()
            .map(|(id, _)| id)
            .filter(|id| recv.arrival(id).is_none())
            .collect();
        let in_room = all_message_ids(&recv.srv, &recv.user, room, acked.len() / 100 + 20).await;
        missing_but_in_messages = json!(left.iter().filter(|id| in_room.contains(**id)).count());
        rec.err_msg(
            "missing",
            &format!(
                "{missing} of {} acknowledged events never reached B's long-poll ({missing_but_in_messages} of them are in server 2's /messages)",
                acked.len()
            ),
        );
        rec.errors += missing - 1;
    }
    let all_in = last_arrival.saturating_duration_since(start);
    let send_s = sent_all.saturating_duration_since(start).as_secs_f64();
    let (sync_errors, gaps) = {
        let g = recv.seen.lock().unwrap();
        (g.sync_errors.errors, g.gaps)
    };
    Ok(line(
        "federation_throughput",
        None,
        &a.server,
        json!({ "senders": c, "per_sender": k, "messages": c * k }),
        &rec,
        received as u64,
        all_in,
        json!({
            "received_per_sec": round2((all_in.as_secs_f64() > 0.0).then(|| received as f64 / all_in.as_secs_f64())),
            "sent_per_sec": round2((send_s > 0.0).then(|| acked.len() as f64 / send_s)),
            "send_s": round2(Some(send_s)),
            "lag_after_last_send_ms": round2(Some(last_arrival.saturating_duration_since(sent_all).as_secs_f64() * 1000.0)),
            "p95_ms": round2(pct(&rec.lat_ms, 95.0)),
            "delivery_max_ms": round2(pct(&rec.lat_ms, 100.0)),
            "acked": acked.len(),
            "received": received,
            "missing": missing,
            "missing_but_in_messages": missing_but_in_messages,
            "sync_errors": sync_errors,
            "limited_syncs": gaps,
            "ops_note": "events received by server 2 per second, from the first send to the last arrival; latencies from each send's 200 to its arrival",
        }),
    ))
}
