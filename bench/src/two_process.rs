//! Two Weft processes serving one server name from one PostgreSQL database (`--second-base`):
//! how fast a change made through one reaches long-polls held on the other (the notifier's
//! relay over LISTEN/NOTIFY), and sends taken by both at once. The workloads are `fanout` and
//! `send` from `scenarios`, run with the clients spread over the two processes; each is also
//! run on the first process alone with the same parameters, for comparison.

use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::{client::Server, scenarios};

fn second(ctx: &scenarios::Ctx) -> Result<&Server> {
    ctx.second
        .as_ref()
        .ok_or_else(|| anyhow!("needs a second process of the same server: pass --second-base"))
}

/// `two_process_fanout`: R receivers long-poll on one process while one sender sends M
/// messages through it (`same_process`), then the same with the receivers on the second
/// process (`cross_process`). One result line each.
pub async fn fanout(ctx: &scenarios::Ctx) -> Result<Vec<Value>> {
    let b = second(ctx)?;
    let (r, m) = (ctx.p.cross_receivers, ctx.p.cross_messages);
    let name = "two_process_fanout";
    let mut lines = Vec::new();
    for (recv, variant, tag) in [(&ctx.srv, "same_process", "xfs"), (b, "cross_process", "xfc")] {
        let l = scenarios::fanout_on(ctx, &ctx.srv, recv, r, m, name, Some(variant), tag).await;
        lines.push(l.unwrap_or_else(|e| failed(ctx, name, variant, &e)));
    }
    Ok(lines)
}

fn failed(ctx: &scenarios::Ctx, name: &str, variant: &str, e: &anyhow::Error) -> Value {
    let mut f = crate::failed(name, &ctx.server, e);
    f["variant"] = variant.into();
    f
}

/// `two_process_send`: C senders, half on each process (sender k on process k mod 2), into
/// one room and into a room each; then the same on the first process alone. Every room is
/// paged back through both processes afterwards and each acknowledged event must be there
/// exactly once.
pub async fn send(ctx: &scenarios::Ctx) -> Result<Vec<Value>> {
    let b = second(ctx)?;
    let both = [&ctx.srv, b];
    let one = [&ctx.srv];
    let name = "two_process_send";
    let mut lines = Vec::new();
    for (servers, room_each, variant, tag) in [
        (&both[..], false, "one_room, A+B", "xso"),
        (&both[..], true, "room_each, A+B", "xsr"),
        (&one[..], false, "one_room, A only", "xao"),
        (&one[..], true, "room_each, A only", "xar"),
    ] {
        let l = scenarios::send_on(ctx, servers, room_each, name, variant, tag, true).await;
        lines.push(l.unwrap_or_else(|e| failed(ctx, name, variant, &e)));
    }
    Ok(lines)
}
