//! `weft-bench`: a Client-Server API load generator for comparing homeservers (Weft and
//! Synapse) on the same workload. Loopback targets only.
//!
//! `weft-bench run --base http://127.0.0.1:PORT --server NAME --secret S [--pid PID] [--quick]`
//! prints one JSON line per scenario; `weft-bench compare A.jsonl B.jsonl` prints a table of
//! two servers, `weft-bench table R.jsonl` one of a single result file. With `--second-base`
//! (a second process of the same server on the same database) the `two_process_*` scenarios
//! spread their clients over both. `weft-bench federation` measures two federating servers,
//! `weft-bench big-join` a federated join into a room of N members,
//! `weft-bench turn` a TURN relay.

mod big_join;
mod client;
mod compare;
mod federation;
mod scenarios;
mod stats;
mod turn;
mod two_process;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "weft-bench", about = "Client-Server API load generator (Weft vs Synapse)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios against one server; one JSON line per scenario on stdout.
    Run(RunArgs),
    /// Compare two result files (JSON lines): a table with A/B ratios.
    Compare {
        /// Results of the server under study (e.g. Weft).
        a: PathBuf,
        /// Results of the reference server (e.g. Synapse).
        b: PathBuf,
    },
    /// Two servers of one kind federating (bench/federation.sh): delay from a send on one to
    /// its arrival in a long-poll on the other, and inbound throughput for one busy room.
    Federation(federation::FedArgs),
    /// A federated join into a room of N members (see bench/big_join.sh).
    BigJoin(big_join::BigJoinArgs),
    /// A TURN relay under load (bench/turn.sh): relayed packets/s, added latency and memory
    /// per allocation, for 1 allocation and for many at once.
    Turn(turn::TurnArgs),
    /// A Markdown table of one result file (no comparison): e.g. the two-process scenarios.
    Table {
        /// Results (JSON lines).
        file: PathBuf,
    },
}

const ALL: &str = "send,fanout,initial_sync,join,messages,sliding_sync";
/// The scenarios that need `--second-base` (not in the default list).
const TWO_PROCESS: &str = "two_process_fanout,two_process_send";

#[derive(Args)]
struct RunArgs {
    /// Base URL of the server (loopback only), e.g. http://127.0.0.1:8008
    #[arg(long, alias = "url")]
    base: String,
    /// Base URL of a second process of the same server, on the same database (loopback
    /// only); the two_process_* scenarios need it.
    #[arg(long, alias = "second-url")]
    second_base: Option<String>,
    /// Name written in the results ("weft", "synapse").
    #[arg(long)]
    server: String,
    /// The server's registration shared secret.
    #[arg(long, env = "BENCH_SHARED_SECRET")]
    secret: String,
    /// PID of the server process: its peak RSS (VmHWM) is printed after the scenarios.
    #[arg(long)]
    pid: Option<u32>,
    /// Small parameters (a few minutes for both servers).
    #[arg(long)]
    quick: bool,
    /// Comma-separated scenarios to run (default: all single-server ones; the two-process
    /// ones are two_process_fanout and two_process_send).
    #[arg(long, default_value = ALL)]
    scenarios: String,
    /// Upper bound on each scenario's timed part, in seconds.
    #[arg(long)]
    scenario_timeout: Option<u64>,
    /// Timeout of one HTTP request, in seconds.
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    #[arg(long)]
    send_concurrency: Option<usize>,
    #[arg(long)]
    send_total: Option<usize>,
    #[arg(long)]
    fanout_receivers: Option<usize>,
    #[arg(long)]
    fanout_messages: Option<usize>,
    #[arg(long)]
    fanout_gap_ms: Option<u64>,
    /// Receivers held on the second process in two_process_fanout.
    #[arg(long)]
    cross_receivers: Option<usize>,
    /// Messages sent in each variant of two_process_fanout (spaced by --fanout-gap-ms).
    #[arg(long)]
    cross_messages: Option<usize>,
    #[arg(long)]
    isync_rooms: Option<usize>,
    #[arg(long)]
    isync_messages: Option<usize>,
    #[arg(long)]
    isync_reps: Option<usize>,
    #[arg(long)]
    join_users: Option<usize>,
    #[arg(long)]
    messages_events: Option<usize>,
    #[arg(long)]
    sliding_reps: Option<usize>,
}

/// Resolved scenario parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub scenario_timeout: u64,
    pub send_concurrency: usize,
    pub send_total: usize,
    pub fanout_receivers: usize,
    pub fanout_messages: usize,
    pub fanout_gap_ms: u64,
    pub cross_receivers: usize,
    pub cross_messages: usize,
    pub isync_rooms: usize,
    pub isync_messages: usize,
    pub isync_reps: usize,
    pub join_users: usize,
    pub messages_events: usize,
    pub sliding_reps: usize,
}

impl RunArgs {
    fn params(&self) -> Params {
        let qf = |explicit: Option<usize>, quick: usize, full: usize| {
            explicit.unwrap_or(if self.quick { quick } else { full }).max(1)
        };
        Params {
            scenario_timeout: self.scenario_timeout.unwrap_or(if self.quick { 120 } else { 300 }),
            send_concurrency: qf(self.send_concurrency, 4, 10),
            send_total: qf(self.send_total, 300, 2000),
            fanout_receivers: qf(self.fanout_receivers, 10, 50),
            fanout_messages: qf(self.fanout_messages, 20, 50),
            fanout_gap_ms: self.fanout_gap_ms.unwrap_or(100),
            cross_receivers: qf(self.cross_receivers, 10, 20),
            cross_messages: qf(self.cross_messages, 20, 50),
            isync_rooms: qf(self.isync_rooms, 20, 50),
            isync_messages: qf(self.isync_messages, 10, 20),
            isync_reps: qf(self.isync_reps, 3, 5),
            join_users: qf(self.join_users, 50, 200),
            messages_events: qf(self.messages_events, 500, 2000),
            sliding_reps: qf(self.sliding_reps, 3, 5),
        }
    }
}

fn emit(v: &serde_json::Value) {
    println!("{v}");
}

async fn run(args: RunArgs) -> Result<()> {
    let srv = client::Server::new(&args.base, &args.secret, Duration::from_secs(args.request_timeout))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let run_id = format!("{:x}", nanos % 0xffff_ffff);
    let second = match &args.second_base {
        Some(b) => Some(client::Server::new(
            b,
            &args.secret,
            Duration::from_secs(args.request_timeout),
        )?),
        None => None,
    };
    let ctx = scenarios::Ctx {
        srv,
        second,
        server: args.server.clone(),
        run_id,
        p: args.params(),
    };
    eprintln!("[{}] params: {:?}", ctx.server, ctx.p);
    let wanted: Vec<&str> = args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut many = None;
    for name in wanted {
        eprintln!("[{}] scenario {name} ...", ctx.server);
        let t = std::time::Instant::now();
        let result = match name {
            "send" => {
                match scenarios::send(&ctx, false).await {
                    Ok(l) => emit(&l),
                    Err(e) => emit(&failed("send", &ctx.server, &e)),
                }
                scenarios::send(&ctx, true).await
            }
            "fanout" => scenarios::fanout(&ctx).await,
            "initial_sync" | "sliding_sync" => {
                if many.is_none() {
                    match scenarios::many_rooms(&ctx).await {
                        Ok(m) => many = Some(m),
                        Err(e) => {
                            emit(&failed(name, &ctx.server, &e));
                            continue;
                        }
                    }
                }
                let m = many.as_ref().expect("set above");
                if name == "initial_sync" {
                    scenarios::initial_sync(&ctx, m).await
                } else {
                    scenarios::sliding_sync(&ctx, m).await
                }
            }
            "two_process_fanout" | "two_process_send" => {
                let lines = if name == "two_process_fanout" {
                    two_process::fanout(&ctx).await
                } else {
                    two_process::send(&ctx).await
                };
                match lines {
                    Ok(lines) => lines.iter().for_each(emit),
                    Err(e) => emit(&failed(name, &ctx.server, &e)),
                }
                eprintln!(
                    "[{}] scenario {name} done in {:.1}s",
                    ctx.server,
                    t.elapsed().as_secs_f64()
                );
                continue;
            }
            "join" => scenarios::join(&ctx).await,
            "messages" => scenarios::messages(&ctx).await,
            other => Err(anyhow::anyhow!("unknown scenario {other} (known: {ALL},{TWO_PROCESS})")),
        };
        match result {
            Ok(l) => emit(&l),
            Err(e) => emit(&failed(name, &ctx.server, &e)),
        }
        eprintln!(
            "[{}] scenario {name} done in {:.1}s",
            ctx.server,
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(pid) = args.pid {
        emit(&scenarios::peak_rss(&ctx.server, pid));
    }
    Ok(())
}

/// A scenario that could not run (its setup failed): still one line, with the reason.
pub(crate) fn failed(scenario: &str, server: &str, e: &anyhow::Error) -> serde_json::Value {
    json!({ "scenario": scenario, "server": server, "failed": format!("{e:#}"), "errors": 1 })
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args).await,
        Cmd::Compare { a, b } => compare::compare(&a, &b),
        Cmd::Table { file } => compare::table(&file),
        Cmd::Federation(args) => federation::run(args).await,
        Cmd::BigJoin(args) => big_join::run(args).await,
        Cmd::Turn(args) => turn::run(args).await,
    }
}
