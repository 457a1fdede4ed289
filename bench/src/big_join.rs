//! `weft-bench big-join`: a federated join into a room of N members, in two steps that
//! `bench/big_join.sh` runs against servers it starts:
//!
//! - `grow`: on the host, makes the room (first time) and registers and joins members until it
//!   has N (real joins through the Client-Server API, so every membership is a signed event the
//!   host made as it makes any join); the room and the count are kept in a state file so that
//!   the next N grows the same room.
//! - `join`: on a fresh joining server, a user joins the room by ID through the host; the time
//!   of the join request, the joining process's peak RSS (`VmHWM`) and the joined member count
//!   the joining server then reports.

use std::{path::PathBuf, time::Duration, time::Instant};

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::client::{seg, Server, User};

#[derive(Args)]
pub struct BigJoinArgs {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    Grow(GrowArgs),
    Join(JoinArgs),
}

#[derive(Args)]
struct GrowArgs {
    /// Client API of the host (loopback only).
    #[arg(long)]
    base: String,
    #[arg(long, env = "BENCH_SHARED_SECRET")]
    secret: String,
    /// Members the room must have (its creator counted).
    #[arg(long)]
    members: usize,
    /// Where the room ID, the creator's token and the member count are kept between runs.
    #[arg(long)]
    state: PathBuf,
    /// Registrations and joins in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
}

#[derive(Args)]
struct JoinArgs {
    /// Client API of the joining server (loopback only).
    #[arg(long)]
    base: String,
    #[arg(long, env = "BENCH_SHARED_SECRET")]
    secret: String,
    /// The host's server name, given as `via`.
    #[arg(long)]
    via: String,
    /// The state file `grow` wrote.
    #[arg(long)]
    state: PathBuf,
    /// PID of the joining server, for its peak RSS.
    #[arg(long)]
    pid: u32,
    /// Name written in the results: the joining server's kind ("weft", "synapse").
    #[arg(long)]
    server: String,
    /// The host's kind, written in the results.
    #[arg(long)]
    host: String,
    #[arg(long, default_value_t = 900)]
    request_timeout: u64,
}

pub async fn run(args: BigJoinArgs) -> Result<()> {
    match args.step {
        Step::Grow(a) => grow(a).await,
        Step::Join(a) => join(a).await,
    }
}

async fn grow(a: GrowArgs) -> Result<()> {
    let srv = Server::new(&a.base, &a.secret, Duration::from_secs(a.request_timeout))?;
    let mut state: Value = match std::fs::read_to_string(&a.state) {
        Ok(text) => serde_json::from_str(&text)?,
        Err(_) => {
            let creator = srv.register("bigjoin_creator").await?;
            let room = srv.create_room(&creator, "big join").await?;
            json!({ "room_id": room, "members": 1 })
        }
    };
    let room = state["room_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no room_id"))?
        .to_owned();
    let have = state["members"].as_u64().unwrap_or(1) as usize;
    let started = Instant::now();
    let srv_ref = &srv;
    let room_ref = &room;
    stream::iter(have..a.members)
        .map(|i| async move {
            let user: User = srv_ref.register(&format!("bigjoin_member{i}")).await?;
            srv_ref
                .join(&user, room_ref)
                .await
                .map_err(|e| anyhow!("member {i} joins: {e:?}"))
        })
        .buffer_unordered(a.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    state["members"] = json!(a.members.max(have));
    std::fs::write(&a.state, state.to_string()).context("writing the state file")?;
    eprintln!(
        "== room {room}: {} members ({} added in {:.1} s)",
        a.members.max(have),
        a.members.saturating_sub(have),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `VmHWM` and `VmRSS` of a process, in kB.
fn rss_kb(pid: u32) -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

async fn join(a: JoinArgs) -> Result<()> {
    let srv = Server::new(&a.base, &a.secret, Duration::from_secs(a.request_timeout))?;
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&a.state)?)?;
    let room = state["room_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no room_id"))?
        .to_owned();
    let members = state["members"].as_u64().unwrap_or(0);
    let user = srv.register("bigjoin_joiner").await?;
    let (hwm_before, _) = rss_kb(a.pid);
    let started = Instant::now();
    let joined = srv.join_via(&user, &room, &[a.via.as_str()]).await;
    let join_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (hwm_after, rss_after) = rss_kb(a.pid);
    let (errors, error) = match &joined {
        Ok(()) => (0, Value::Null),
        Err(e) => (1, json!(format!("{e:?}"))),
    };
    // What the joining server then knows of the room. Synapse answers a room it joined with
    // partial state only once the whole state has arrived: it is asked with a short timeout,
    // and `null` means it did not know the members yet.
    let joined_members = match joined {
        Ok(()) => tokio::time::timeout(
            Duration::from_secs(10),
            srv.get(
                &format!("/_matrix/client/v3/rooms/{}/joined_members", seg(&room)),
                &user.token,
            ),
        )
        .await
        .ok()
        .and_then(|answer| answer.ok())
        .and_then(|v| v["joined"].as_object().map(|m| m.len())),
        Err(_) => None,
    };
    let mb = |kb: Option<u64>| kb.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
    println!(
        "{}",
        json!({
            "scenario": "federated_join",
            "variant": format!("N={members}, host {}", a.host),
            "server": a.server,
            "params": { "members": members, "host": a.host },
            "join_ms": (join_ms * 10.0).round() / 10.0,
            "peak_rss_mb": mb(hwm_after),
            "peak_rss_before_join_mb": mb(hwm_before),
            "rss_after_mb": mb(rss_after),
            "joined_members": joined_members,
            "errors": errors,
            "error": error,
        })
    );
    Ok(())
}
