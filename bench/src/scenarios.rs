//! The scenarios. Each one sets up its own users and rooms (not timed), runs a bounded
//! workload, and returns one JSON result line.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::{
    client::{q, seg, Server, User},
    stats::{line, mean, pct, round2, Rec},
    Params,
};

pub struct Ctx {
    pub srv: Server,
    /// A second process of the same server on the same database (`--second-base`).
    pub second: Option<Server>,
    pub server: String,
    /// Unique per run, so user names never collide with an earlier run on the same database.
    pub run_id: String,
    pub p: Params,
}

impl Ctx {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.p.scenario_timeout)
    }

    fn users(&self, tag: &str) -> String {
        format!("b{}{}", self.run_id, tag)
    }

    /// Sends `n` setup messages into `room` from `user`, a few at a time; not timed.
    async fn fill_room(&self, user: &User, room: &str, n: usize, tag: &str) -> Result<()> {
        let results: Vec<_> = stream::iter(0..n)
            .map(|i| {
                let txn = format!("{}-{tag}-fill-{i}", self.run_id);
                async move {
                    self.srv
                        .send_text(user, room, &txn, &format!("filler {i} lorem ipsum dolor sit amet"))
                        .await
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(anyhow!("filling room: {e}"));
        }
        Ok(())
    }
}

/// `send`: `C` concurrent senders, `N` messages in all, into one room or into a room each.
pub async fn send(ctx: &Ctx, room_each: bool) -> Result<Value> {
    let variant = if room_each { "room_each" } else { "one_room" };
    let tag = format!("s{}", &variant[..1]);
    send_on(ctx, &[&ctx.srv], room_each, "send", variant, &tag, false).await
}

/// The send workload with sender `k` on `servers[k % servers.len()]` (several processes
/// serving one database); rooms are made on the first. With `verify`, every room is paged
/// back with /messages through each server afterwards (not timed), and an acknowledged event
/// missing or seen twice, or a message in the room nobody was told was sent, is an error.
pub async fn send_on(
    ctx: &Ctx,
    servers: &[&Server],
    room_each: bool,
    scenario: &str,
    variant: &str,
    tag: &str,
    verify: bool,
) -> Result<Value> {
    let (c, n) = (ctx.p.send_concurrency, ctx.p.send_total);
    let on = |k: usize| servers[k % servers.len()];
    let users = on(0).register_many(&ctx.users(tag), c).await?;
    let mut rooms = Vec::new();
    if room_each {
        for (k, u) in users.iter().enumerate() {
            rooms.push(on(k).create_room(u, "send bench").await?);
        }
    } else {
        let room = on(0).create_room(&users[0], "send bench").await?;
        for (k, u) in users.iter().enumerate().skip(1) {
            on(k).join(u, &room).await?;
        }
        rooms = vec![room; c];
    }
    let deadline = ctx.deadline();
    let start = Instant::now();
    let tasks = users.iter().zip(&rooms).enumerate().map(|(k, (u, room))| {
        let per = n / c + usize::from(k < n % c);
        let srv = on(k);
        async move {
            let mut rec = Rec::default();
            let mut acked = Vec::new();
            for i in 0..per {
                if Instant::now() > deadline {
                    rec.err_msg("deadline", "scenario time bound reached");
                    break;
                }
                let txn = format!("{}-{tag}-{k}-{i}", ctx.run_id);
                let t = Instant::now();
                match srv
                    .send_text(u, room, &txn, &format!("message {i} from sender {k}"))
                    .await
                {
                    Ok(id) => {
                        rec.ok(t.elapsed());
                        acked.push(id);
                    }
                    Err(e) => rec.err(&e),
                }
            }
            (rec, room.clone(), acked)
        }
    });
    let mut rec = Rec::default();
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for (r, room, ids) in futures::future::join_all(tasks).await {
        rec.merge(r);
        acked.entry(room).or_default().extend(ids);
    }
    let elapsed = start.elapsed();
    let ops = rec.lat_ms.len() as u64;
    let mut extra = json!({});
    if verify {
        extra = verify_rooms(servers, &users[0], &acked, n, &mut rec).await;
    }
    Ok(line(
        scenario,
        Some(variant),
        &ctx.server,
        json!({ "senders": c, "messages": n, "processes": servers.len() }),
        &rec,
        ops,
        elapsed,
        extra,
    ))
}

/// Pages each room of `acked` (room -> acknowledged event IDs) back with /messages through
/// every server, as `reader` (a member of every room: sender 0 is in the shared room, and a
/// room each is public, so it joins first), and counts each acknowledged event: it must be
/// there exactly once, and no other message may be. Mismatches go into `rec` as errors.
async fn verify_rooms(
    servers: &[&Server],
    reader: &User,
    acked: &HashMap<String, Vec<String>>,
    n: usize,
    rec: &mut Rec,
) -> Value {
    let (mut missing, mut duplicates, mut unacked, mut read) = (0u64, 0u64, 0u64, 0u64);
    let acked_total: usize = acked.values().map(Vec::len).sum();
    for (s, srv) in servers.iter().enumerate() {
        for (room, ids) in acked {
            if let Err(e) = srv.join(reader, room).await {
                rec.err_msg("verify", &format!("joining {room} to read it: {e}"));
                continue;
            }
            let mut count: HashMap<String, u64> = HashMap::new();
            let mut from: Option<String> = None;
            let mut complete = false;
            for _ in 0..n / 100 + 20 {
                let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", seg(room));
                if let Some(f) = &from {
                    path.push_str(&format!("&from={}", q(f)));
                }
                let v = match srv.get(&path, &reader.token).await {
                    Ok(v) => v,
                    Err(e) => {
                        rec.err_msg("verify", &format!("paging {room} on server {s}: {e}"));
                        break;
                    }
                };
                let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
                for ev in &chunk {
                    if ev["type"] == "m.room.message" {
                        if let Some(id) = ev["event_id"].as_str() {
                            *count.entry(id.to_owned()).or_default() += 1;
                        }
                    }
                }
                match v["end"].as_str() {
                    Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                    _ => {
                        complete = true;
                        break;
                    }
                }
            }
            if !complete {
                rec.err_msg(
                    "verify",
                    &format!("paging {room} on server {s} did not reach its start"),
                );
            }
            read += count.values().sum::<u64>();
            for id in ids {
                match count.remove(id) {
                    None => missing += 1,
                    Some(1) => {}
                    Some(k) => duplicates += k - 1,
                }
            }
            // What is left was not acknowledged by any send into this room.
            unacked += count.values().sum::<u64>();
        }
    }
    for (kind, k, what) in [
        ("verify_missing", missing, "acknowledged events absent from /messages"),
        (
            "verify_duplicates",
            duplicates,
            "extra copies of acknowledged events in /messages",
        ),
        (
            "verify_unacked",
            unacked,
            "messages in the room that no send acknowledged",
        ),
    ] {
        if k > 0 {
            rec.err_msg(kind, &format!("{k} {what} (summed over {} servers)", servers.len()));
            rec.errors += k - 1;
        }
    }
    json!({
        "acked": acked_total,
        "messages_read": read,
        "verify_reads": servers.len(),
        "verify_missing": missing,
        "verify_duplicates": duplicates,
        "verify_unacked": unacked,
        "verified": missing == 0 && duplicates == 0 && unacked == 0 && read == (acked_total * servers.len()) as u64,
    })
}

fn timeline_events<'a>(sync: &'a Value, room: &str) -> impl Iterator<Item = &'a Value> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
}

/// `fanout`: `R` receivers long-poll /sync in one room; one sender sends `M` messages; the
/// latency is from the sender's 200 to each receiver's /sync returning the event.
pub async fn fanout(ctx: &Ctx) -> Result<Value> {
    let (r, m) = (ctx.p.fanout_receivers, ctx.p.fanout_messages);
    fanout_on(ctx, &ctx.srv, &ctx.srv, r, m, "fanout", None, "f").await
}

/// The fanout workload with the sender on `send_srv` and the receivers (their joins and
/// long-polls) on `recv_srv`: the same server, or another process on the same database.
/// Besides the delay from the sender's 200 (`p50_ms`...), gives the delay from just before
/// the send (`start_p50_ms`...) and how many deliveries came before the 200 (`early`).
#[allow(clippy::too_many_arguments)]
pub async fn fanout_on(
    ctx: &Ctx,
    send_srv: &Server,
    recv_srv: &Server,
    r: usize,
    m: usize,
    scenario: &str,
    variant: Option<&str>,
    tag: &str,
) -> Result<Value> {
    let users = send_srv.register_many(&ctx.users(tag), r + 1).await?;
    let sender = users[0].clone();
    let room = send_srv.create_room(&sender, "fanout bench").await?;
    for u in &users[1..] {
        recv_srv.join(u, &room).await?;
    }
    let filter = q(
        &json!({ "room": { "rooms": [room], "timeline": { "limit": 100 } }, "presence": { "not_types": ["*"] } })
            .to_string(),
    );
    let deadline = ctx.deadline();
    let ready = Arc::new(Barrier::new(r + 1));
    let mut handles = Vec::new();
    for u in users.into_iter().skip(1) {
        let (srv, room, filter, ready) = (recv_srv.clone(), room.clone(), filter.clone(), ready.clone());
        handles.push(tokio::spawn(async move {
            let mut rec = Rec::default();
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let mut since = match srv.sync(&u, &format!("filter={filter}&timeout=0")).await {
                Ok(s) => s["next_batch"].as_str().map(str::to_owned),
                Err(e) => {
                    rec.err(&e);
                    None
                }
            };
            ready.wait().await;
            let Some(mut token) = since.take() else {
                return (rec, seen);
            };
            let mut failures = 0;
            while seen.len() < m && Instant::now() < deadline && failures < 20 {
                match srv
                    .sync(&u, &format!("filter={filter}&timeout=10000&since={}", q(&token)))
                    .await
                {
                    Ok(s) => {
                        let now = Instant::now();
                        for ev in timeline_events(&s, &room) {
                            if ev["type"] == "m.room.message"
                                && ev["content"]["body"].as_str().is_some_and(|b| b.starts_with("fanout "))
                            {
                                if let Some(id) = ev["event_id"].as_str() {
                                    seen.entry(id.to_owned()).or_insert(now);
                                }
                            }
                        }
                        if let Some(next) = s["next_batch"].as_str() {
                            token = next.to_owned();
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        rec.err(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (rec, seen)
        }));
    }
    ready.wait().await;
    // Let every receiver get its first long-poll in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rec = Rec::default();
    // Event ID -> (just before the send, the sender's 200).
    let mut sent: HashMap<String, (Instant, Instant)> = HashMap::new();
    let start = Instant::now();
    for i in 0..m {
        if Instant::now() > deadline {
            break;
        }
        let txn = format!("{}-{tag}-{i}", ctx.run_id);
        let before = Instant::now();
        match send_srv.send_text(&sender, &room, &txn, &format!("fanout {i}")).await {
            Ok(id) => {
                sent.insert(id, (before, Instant::now()));
            }
            Err(e) => rec.err(&e),
        }
        tokio::time::sleep(Duration::from_millis(ctx.p.fanout_gap_ms)).await;
    }
    let mut delivered = 0u64;
    let mut missing = 0u64;
    let mut early = 0u64;
    let mut from_start = Vec::new();
    for h in handles {
        let (r_rec, seen) = h.await?;
        rec.merge(r_rec);
        for (id, (t_before, t_sent)) in &sent {
            match seen.get(id) {
                // A /sync may return before the sender's 200 arrives: count that as 0 ms.
                Some(t_recv) => {
                    delivered += 1;
                    early += u64::from(t_recv < t_sent);
                    rec.ok(t_recv.saturating_duration_since(*t_sent));
                    from_start.push(t_recv.saturating_duration_since(*t_before).as_secs_f64() * 1000.0);
                }
                None => missing += 1,
            }
        }
    }
    let elapsed = start.elapsed();
    if missing > 0 {
        rec.err_msg(
            "missing",
            &format!("{missing} (receiver, event) deliveries never arrived"),
        );
        rec.errors += missing - 1;
    }
    let extra = json!({
        "delivered": delivered,
        "expected": (r * sent.len()) as u64,
        "missing": missing,
        "early": early,
        "start_p50_ms": round2(pct(&from_start, 50.0)),
        "start_p90_ms": round2(pct(&from_start, 90.0)),
        "start_p99_ms": round2(pct(&from_start, 99.0)),
        "ops_note": "deliveries per second over the whole send window; start_* from just before each send",
    });
    Ok(line(
        scenario,
        variant,
        &ctx.server,
        json!({ "receivers": r, "messages": m, "gap_ms": ctx.p.fanout_gap_ms }),
        &rec,
        delivered,
        elapsed,
        extra,
    ))
}

/// A user in `k` rooms with `m` messages each (set up once, shared by initial_sync and sliding_sync).
pub struct ManyRooms {
    pub user: User,
    pub rooms: Vec<String>,
}

pub async fn many_rooms(ctx: &Ctx) -> Result<ManyRooms> {
    let (k, m) = (ctx.p.isync_rooms, ctx.p.isync_messages);
    let user = ctx.srv.register_many(&ctx.users("i"), 1).await?.remove(0);
    let mut rooms = Vec::new();
    for i in 0..k {
        let room = ctx.srv.create_room(&user, &format!("room {i}")).await?;
        ctx.fill_room(&user, &room, m, &format!("i{i}")).await?;
        rooms.push(room);
    }
    Ok(ManyRooms { user, rooms })
}

/// `initial_sync`: initial /sync of a user in `K` rooms with `M` messages each, repeated.
pub async fn initial_sync(ctx: &Ctx, setup: &ManyRooms) -> Result<Value> {
    let deadline = ctx.deadline();
    let mut rec = Rec::default();
    let mut first = None;
    let mut rooms_seen = 0;
    let start = Instant::now();
    for rep in 0..ctx.p.isync_reps {
        if Instant::now() > deadline {
            rec.err_msg("deadline", "scenario time bound reached");
            break;
        }
        // A filter unique to each repetition, so no server answers from a response cache.
        let filter = json!({ "room": { "timeline": { "limit": 10, "not_types": [format!("bench.rep.{rep}")] } } });
        let t = Instant::now();
        match ctx
            .srv
            .sync(&setup.user, &format!("filter={}", q(&filter.to_string())))
            .await
        {
            Ok(s) => {
                let d = t.elapsed();
                first.get_or_insert(d.as_secs_f64() * 1000.0);
                rooms_seen = s["rooms"]["join"].as_object().map_or(0, |o| o.len());
                rec.ok(d);
            }
            Err(e) => rec.err(&e),
        }
    }
    let elapsed = start.elapsed();
    if rooms_seen != setup.rooms.len() {
        rec.err_msg(
            "rooms",
            &format!(
                "initial sync listed {rooms_seen} joined rooms, expected {}",
                setup.rooms.len()
            ),
        );
    }
    let ops = rec.lat_ms.len() as u64;
    Ok(line(
        "initial_sync",
        None,
        &ctx.server,
        json!({ "rooms": ctx.p.isync_rooms, "messages_per_room": ctx.p.isync_messages, "reps": ctx.p.isync_reps }),
        &rec,
        ops,
        elapsed,
        json!({ "first_ms": round2(first), "rooms_returned": rooms_seen }),
    ))
}

/// `join`: `U` users join one room in turn; first tenth vs last tenth of join latencies.
pub async fn join(ctx: &Ctx) -> Result<Value> {
    let u = ctx.p.join_users;
    let users = ctx.srv.register_many(&ctx.users("j"), u + 1).await?;
    let room = ctx.srv.create_room(&users[0], "join bench").await?;
    let deadline = ctx.deadline();
    let mut rec = Rec::default();
    let mut ordered = Vec::new();
    let start = Instant::now();
    for user in &users[1..] {
        if Instant::now() > deadline {
            rec.err_msg("deadline", "scenario time bound reached");
            break;
        }
        let t = Instant::now();
        match ctx.srv.join(user, &room).await {
            Ok(()) => {
                let d = t.elapsed();
                ordered.push(d.as_secs_f64() * 1000.0);
                rec.ok(d);
            }
            Err(e) => rec.err(&e),
        }
    }
    let elapsed = start.elapsed();
    let tenth = (ordered.len() / 10).max(1);
    let first = &ordered[..tenth.min(ordered.len())];
    let last = &ordered[ordered.len().saturating_sub(tenth)..];
    let (fm, lm) = (mean(first), mean(last));
    let ratio = match (fm, lm) {
        (Some(f), Some(l)) if f > 0.0 => Some(l / f),
        _ => None,
    };
    let ops = rec.lat_ms.len() as u64;
    Ok(line(
        "join",
        None,
        &ctx.server,
        json!({ "users": u }),
        &rec,
        ops,
        elapsed,
        json!({
            "first_tenth_mean_ms": round2(fm),
            "last_tenth_mean_ms": round2(lm),
            "first_tenth_p50_ms": round2(pct(first, 50.0)),
            "last_tenth_p50_ms": round2(pct(last, 50.0)),
            "last_over_first": round2(ratio),
        }),
    ))
}

/// `messages`: paginate `N` events back with /messages limit=100; per-page latency.
pub async fn messages(ctx: &Ctx) -> Result<Value> {
    let n = ctx.p.messages_events;
    let user = ctx.srv.register_many(&ctx.users("m"), 1).await?.remove(0);
    let room = ctx.srv.create_room(&user, "messages bench").await?;
    ctx.fill_room(&user, &room, n, "m").await?;
    let deadline = ctx.deadline();
    let mut rec = Rec::default();
    let mut from: Option<String> = None;
    let mut events = 0usize;
    let mut pages = 0usize;
    let start = Instant::now();
    while events < n && pages < n / 100 + 10 && Instant::now() < deadline {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", seg(&room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", q(f)));
        }
        let t = Instant::now();
        match ctx.srv.get(&path, &user.token).await {
            Ok(v) => {
                rec.ok(t.elapsed());
                pages += 1;
                let got = v["chunk"].as_array().map_or(0, Vec::len);
                events += got;
                match v["end"].as_str() {
                    Some(end) if got > 0 => from = Some(end.to_owned()),
                    _ => break,
                }
            }
            Err(e) => {
                rec.err(&e);
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    if events < n {
        rec.err_msg("short", &format!("paginated only {events} of {n} events"));
    }
    Ok(line(
        "messages",
        None,
        &ctx.server,
        json!({ "events": n, "limit": 100 }),
        &rec,
        pages as u64,
        elapsed,
        json!({ "events_read": events, "pages": pages, "events_per_sec": round2(Some(events as f64 / elapsed.as_secs_f64().max(1e-9))), "ops_note": "pages per second" }),
    ))
}

/// `sliding_sync`: the room list (range [0, 19]) of the many-rooms user via simplified
/// sliding sync (MSC4186); "unsupported" when the server does not know the endpoint.
pub async fn sliding_sync(ctx: &Ctx, setup: &ManyRooms) -> Result<Value> {
    let params = json!({ "rooms": setup.rooms.len(), "range": [0, 19], "reps": ctx.p.sliding_reps });
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let deadline = ctx.deadline();
    let mut rec = Rec::default();
    let mut listed = 0usize;
    let mut first = None;
    let start = Instant::now();
    for rep in 0..ctx.p.sliding_reps {
        if Instant::now() > deadline {
            rec.err_msg("deadline", "scenario time bound reached");
            break;
        }
        let body = json!({
            "conn_id": format!("bench-{}-{rep}", ctx.run_id),
            "lists": { "all": {
                "ranges": [[0, 19]],
                "timeline_limit": 1,
                "required_state": [["m.room.name", ""], ["m.room.create", ""]],
            } },
        });
        let t = Instant::now();
        match ctx.srv.post(path, &setup.user.token, &body).await {
            Ok(v) => {
                let d = t.elapsed();
                first.get_or_insert(d.as_secs_f64() * 1000.0);
                rec.ok(d);
                listed = v["lists"]["all"]["ops"]
                    .as_array()
                    .and_then(|ops| ops.first())
                    .and_then(|op| op["room_ids"].as_array())
                    .map(Vec::len)
                    .unwrap_or_else(|| v["rooms"].as_object().map_or(0, |o| o.len()));
            }
            Err(e) if e.status == 404 || e.errcode == "M_UNRECOGNIZED" => {
                let mut l = line(
                    "sliding_sync",
                    None,
                    &ctx.server,
                    params,
                    &Rec::default(),
                    0,
                    Duration::ZERO,
                    json!({}),
                );
                l["unsupported"] = json!(true);
                l["status"] = json!(e.status);
                l["errcode"] = json!(e.errcode);
                return Ok(l);
            }
            Err(e) => rec.err(&e),
        }
    }
    let elapsed = start.elapsed();
    let expect = setup.rooms.len().min(20);
    if listed != expect && rec.errors == 0 {
        rec.err_msg("rooms", &format!("room list had {listed} rooms, expected {expect}"));
    }
    let ops = rec.lat_ms.len() as u64;
    Ok(line(
        "sliding_sync",
        None,
        &ctx.server,
        params,
        &rec,
        ops,
        elapsed,
        json!({ "first_ms": round2(first), "rooms_listed": listed, "unsupported": false }),
    ))
}

/// Peak RSS (VmHWM) and current RSS of the server process.
pub fn peak_rss(server: &str, pid: u32) -> Value {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    };
    let (hwm, rss) = (kb("VmHWM:"), kb("VmRSS:"));
    json!({
        "scenario": "peak_rss",
        "server": server,
        "params": { "pid": pid },
        "vm_hwm_kb": hwm,
        "vm_rss_kb": rss,
        "peak_rss_mb": hwm.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        "errors": u64::from(hwm.is_none()),
    })
}
