//! Federation destinations as admins see them, in Synapse's terms: backoff (`retry_last_ts`,
//! `retry_interval`, `failure_ts`), the last acknowledged position, the rooms shared with each.
//!
//! Weft keeps the time of the last failure, not of the first of a run of failures, so
//! `failure_ts` is the last failure's time while the destination is backed off.

use serde_json::{json, Value};

use super::Page;
use crate::{outbox::destinations::wake_destination, Core, Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub destination: String,
    pub retry_last_ts: i64,
    pub retry_interval: i64,
    pub failure_ts: Option<i64>,
    pub last_successful_stream_ordering: Option<i64>,
    pub last_error: Option<String>,
}

impl Destination {
    pub fn to_json(&self) -> Value {
        json!({
            "destination": self.destination,
            "retry_last_ts": self.retry_last_ts,
            "retry_interval": self.retry_interval,
            "failure_ts": self.failure_ts,
            "last_successful_stream_ordering": self.last_successful_stream_ordering,
            "last_error": self.last_error,
        })
    }
}

type Row = (String, i64, i64, Option<i64>, Option<i64>, Option<String>);

const COLUMNS: &str = "destination, retry_count, retry_after_ts, last_failure_ts, last_success_pos, last_error";

fn from_row(
    (destination, retry_count, retry_after_ts, last_failure_ts, last_success_pos, last_error): Row,
) -> Destination {
    let failing = retry_count > 0;
    let retry_last_ts = if failing { last_failure_ts.unwrap_or(0) } else { 0 };
    Destination {
        destination,
        retry_last_ts,
        retry_interval: if failing {
            (retry_after_ts - retry_last_ts).max(0)
        } else {
            0
        },
        failure_ts: if failing { last_failure_ts } else { None },
        last_successful_stream_ordering: last_success_pos,
        last_error,
    }
}

/// How the list is sorted (Synapse's `order_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Destination,
    RetryLastTs,
    RetryInterval,
    FailureTs,
    LastSuccessfulStreamOrdering,
}

impl Order {
    pub fn parse(value: Option<&str>) -> Result<Order> {
        Ok(match value.unwrap_or("destination") {
            "destination" => Order::Destination,
            "retry_last_ts" => Order::RetryLastTs,
            "retry_interval" => Order::RetryInterval,
            "failure_ts" => Order::FailureTs,
            "last_successful_stream_ordering" => Order::LastSuccessfulStreamOrdering,
            other => return Err(Error::InvalidParam(format!("Unknown value for order_by: {other}"))),
        })
    }
}

/// A page of the destinations (those whose name contains `search`, when given), and how
/// many match in all.
pub async fn list(
    core: &Core,
    page: Page,
    order: Order,
    backwards: bool,
    search: Option<&str>,
) -> Result<(Vec<Destination>, usize)> {
    let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM federation_destinations"))
        .fetch_all(core.db.pool())
        .await?;
    let mut all: Vec<Destination> = rows.into_iter().map(from_row).collect();
    if let Some(term) = search.filter(|t| !t.is_empty()) {
        let term = term.to_lowercase();
        all.retain(|d| d.destination.to_lowercase().contains(&term));
    }
    all.sort_by(|a, b| {
        let primary = match order {
            Order::Destination => a.destination.cmp(&b.destination),
            Order::RetryLastTs => a.retry_last_ts.cmp(&b.retry_last_ts),
            Order::RetryInterval => a.retry_interval.cmp(&b.retry_interval),
            Order::FailureTs => a.failure_ts.cmp(&b.failure_ts),
            Order::LastSuccessfulStreamOrdering => a
                .last_successful_stream_ordering
                .cmp(&b.last_successful_stream_ordering),
        };
        let primary = if backwards { primary.reverse() } else { primary };
        primary.then_with(|| a.destination.cmp(&b.destination))
    });
    let total = all.len();
    let (items, _) = page.slice(all);
    Ok((items, total))
}

pub async fn get(core: &Core, destination: &str) -> Result<Destination> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM federation_destinations WHERE destination = $1"
    ))
    .bind(destination)
    .fetch_optional(core.db.pool())
    .await?;
    row.map(from_row)
        .ok_or_else(|| Error::NotFound("Unknown destination".into()))
}

/// The rooms a destination shares with this server (one of its users is joined), with the
/// room's latest stream position, sorted by room ID; and how many there are.
pub async fn rooms(core: &Core, destination: &str, page: Page, backwards: bool) -> Result<(Vec<(String, i64)>, usize)> {
    get(core, destination).await?;
    let mut rooms: Vec<(String, i64)> = sqlx::query_as(
        "SELECT r.room_id, r.last_stream_pos FROM rooms r WHERE EXISTS (
             SELECT 1 FROM room_memberships m WHERE m.room_id = r.room_id AND m.membership = 'join'
             AND SUBSTR(m.user_id, LENGTH(m.user_id) - LENGTH($1) + 1) = $1)
         ORDER BY r.room_id",
    )
    .bind(format!(":{destination}"))
    .fetch_all(core.db.pool())
    .await?;
    if backwards {
        rooms.reverse();
    }
    let total = rooms.len();
    let (items, _) = page.slice(rooms);
    Ok((items, total))
}

/// Ends a destination's backoff so it is tried at once. Unknown destinations are NotFound;
/// one not backed off is refused (nothing to reset), as Synapse does.
pub async fn reset_connection(core: &Core, destination: &str) -> Result<()> {
    let known = get(core, destination).await?;
    if known.retry_last_ts == 0 {
        return Err(Error::InvalidParam(
            "The retry timing does not need to be reset for a destination.".into(),
        ));
    }
    wake_destination(core, destination).await?;
    Ok(())
}
