//! `weft-bench compare A B`: a Markdown table of two result files with A/B ratios.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

/// Metrics shown per scenario: (field, label, which direction is better).
const METRICS: &[(&str, &str, Better)] = &[
    ("ops_per_sec", "ops/s", Better::Higher),
    ("events_per_sec", "events/s", Better::Higher),
    ("p50_ms", "p50 ms", Better::Lower),
    ("p90_ms", "p90 ms", Better::Lower),
    ("p95_ms", "p95 ms", Better::Lower),
    ("p99_ms", "p99 ms", Better::Lower),
    ("delivery_max_ms", "max ms", Better::Lower),
    ("received_per_sec", "received events/s", Better::Higher),
    ("sent_per_sec", "sent events/s", Better::Higher),
    ("lag_after_last_send_ms", "lag after last send ms", Better::Lower),
    ("join_ms", "join over federation ms", Better::Lower),
    ("first_ms", "first (cold) ms", Better::Lower),
    ("first_tenth_mean_ms", "first 10% mean ms", Better::Lower),
    ("last_tenth_mean_ms", "last 10% mean ms", Better::Lower),
    ("last_over_first", "last/first 10%", Better::Lower),
    ("missing", "missing deliveries", Better::Lower),
    ("peak_rss_mb", "peak RSS MB", Better::Lower),
    ("packets_per_sec", "relayed packets/s", Better::Higher),
    ("added_p50_ms", "added latency p50 ms", Better::Lower),
    ("rss_kb_per_allocation", "RSS kB per allocation", Better::Lower),
    ("cpu_us_per_packet", "relay CPU µs per packet", Better::Lower),
    ("lost", "lost packets", Better::Lower),
    ("errors", "errors", Better::Lower),
];

fn load(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["scenario"].is_string())
        .collect())
}

fn key(v: &Value) -> String {
    match v["variant"].as_str() {
        Some(var) => format!("{} ({var})", v["scenario"].as_str().unwrap_or("?")),
        None => v["scenario"].as_str().unwrap_or("?").to_owned(),
    }
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 && x.abs() < 1e12 {
                format!("{x:.0}")
            } else if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn compare(a: &Path, b: &Path) -> Result<()> {
    let (ra, rb) = (load(a)?, load(b)?);
    let name = |rows: &[Value], fallback: &str| {
        rows.first()
            .and_then(|r| r["server"].as_str())
            .unwrap_or(fallback)
            .to_owned()
    };
    let (na, nb) = (name(&ra, "A"), name(&rb, "B"));
    let bmap: HashMap<String, &Value> = rb.iter().map(|r| (key(r), r)).collect();
    let mut keys: Vec<String> = ra.iter().map(key).collect();
    for r in &rb {
        if !keys.contains(&key(r)) {
            keys.push(key(r));
        }
    }
    let amap: HashMap<String, &Value> = ra.iter().map(|r| (key(r), r)).collect();
    println!("| scenario | metric | better | {na} | {nb} | {na}/{nb} | verdict |");
    println!("|---|---|---|---:|---:|---:|---|");
    for k in keys {
        let (va, vb) = (amap.get(&k).copied(), bmap.get(&k).copied());
        let special = |v: Option<&Value>| -> Option<String> {
            let v = v?;
            if v["unsupported"] == true {
                Some("unsupported".into())
            } else {
                v["failed"]
                    .as_str()
                    .map(|f| format!("failed: {}", f.chars().take(60).collect::<String>()))
            }
        };
        let (sa, sb) = (special(va), special(vb));
        if sa.is_some() || sb.is_some() || va.is_none() || vb.is_none() {
            let cell = |s: Option<String>, v: Option<&Value>| {
                s.unwrap_or_else(|| if v.is_some() { "ok".into() } else { "not run".into() })
            };
            println!("| {k} | status | - | {} | {} | - | - |", cell(sa, va), cell(sb, vb));
            if va.is_none() || vb.is_none() || (special(va).is_some() && special(vb).is_some()) {
                continue;
            }
        }
        for (field, label, better) in METRICS {
            let (xa, xb) = (
                va.map_or(&Value::Null, |v| &v[*field]),
                vb.map_or(&Value::Null, |v| &v[*field]),
            );
            if xa.is_null() && xb.is_null() {
                continue;
            }
            let (fa, fb) = (xa.as_f64(), xb.as_f64());
            if *field == "errors" && fa == Some(0.0) && fb == Some(0.0) {
                continue;
            }
            let ratio = match (fa, fb) {
                (Some(x), Some(y)) if y != 0.0 => Some(x / y),
                _ => None,
            };
            let verdict = match (fa, fb) {
                (Some(x), Some(y)) if x == y => "same".to_owned(),
                (Some(x), Some(y)) => {
                    let a_better = if *better == Better::Higher { x > y } else { x < y };
                    let close = ratio.is_some_and(|r| (0.95..=1.05).contains(&r));
                    if close {
                        "≈".to_owned()
                    } else if a_better {
                        format!("{na} better")
                    } else {
                        format!("{nb} better")
                    }
                }
                _ => "-".to_owned(),
            };
            let dir = if *better == Better::Higher { "higher" } else { "lower" };
            let ratio = ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
            println!(
                "| {k} | {label} | {dir} | {} | {} | {ratio} | {verdict} |",
                fmt(xa),
                fmt(xb)
            );
        }
    }
    Ok(())
}

/// `weft-bench table R`: one row per result line (scenario and variant) with its throughput,
/// latency percentiles and errors, and what the scenario checked in the last column.
pub fn table(path: &Path) -> Result<()> {
    let rows = load(path)?;
    println!("| scenario | ops/s | p50 ms | p90 ms | p99 ms | max ms | samples | errors | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        if let Some(f) = r["failed"].as_str() {
            println!(
                "| {} | - | - | - | - | - | - | {} | failed: {} |",
                key(r),
                fmt(&r["errors"]),
                f.chars().take(120).collect::<String>()
            );
            continue;
        }
        let mut notes = Vec::new();
        if !r["delivered"].is_null() {
            notes.push(format!(
                "delivered {}/{}, missing {}; from just before the send: p50 {}, p90 {}, p99 {} ms; {} before the 200",
                fmt(&r["delivered"]),
                fmt(&r["expected"]),
                fmt(&r["missing"]),
                fmt(&r["start_p50_ms"]),
                fmt(&r["start_p90_ms"]),
                fmt(&r["start_p99_ms"]),
                fmt(&r["early"]),
            ));
        }
        if !r["verified"].is_null() {
            let reads = r["verify_reads"].as_u64().unwrap_or(1);
            notes.push(format!(
                "{} acknowledged; /messages through {} process{}: {} (missing {}, duplicates {}, unacknowledged {})",
                fmt(&r["acked"]),
                reads,
                if reads == 1 { "" } else { "es" },
                if r["verified"] == true {
                    "each exactly once"
                } else {
                    "MISMATCH"
                },
                fmt(&r["verify_missing"]),
                fmt(&r["verify_duplicates"]),
                fmt(&r["verify_unacked"]),
            ));
        }
        if r["scenario"] == "federation_latency" {
            notes.push(format!(
                "p95 {} ms; from just before the send p50 {}, p95 {} ms; missing {}; join over federation {} ms",
                fmt(&r["p95_ms"]),
                fmt(&r["start_p50_ms"]),
                fmt(&r["start_p95_ms"]),
                fmt(&r["missing"]),
                fmt(&r["join_ms"]),
            ));
        }
        if r["scenario"] == "federation_throughput" {
            notes.push(format!(
                "{}/{} received (ops/s = received per second); sent at {}/s over {} s; last arrival {} ms after the last 200; p95 {} ms",
                fmt(&r["received"]),
                fmt(&r["acked"]),
                fmt(&r["sent_per_sec"]),
                fmt(&r["send_s"]),
                fmt(&r["lag_after_last_send_ms"]),
                fmt(&r["p95_ms"]),
            ));
        }
        if !r["peak_rss_mb"].is_null() {
            notes.push(format!("peak RSS {} MB", fmt(&r["peak_rss_mb"])));
        }
        if let Some(kinds) = r["error_samples"].as_array() {
            for k in kinds {
                notes.push(format!(
                    "{} × {}: {}",
                    fmt(&k["count"]),
                    k["kind"].as_str().unwrap_or("?"),
                    k["first"].as_str().unwrap_or("").chars().take(80).collect::<String>()
                ));
            }
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            key(r),
            fmt(&r["ops_per_sec"]),
            fmt(&r["p50_ms"]),
            fmt(&r["p90_ms"]),
            fmt(&r["p99_ms"]),
            fmt(&r["max_ms"]),
            fmt(&r["samples"]),
            fmt(&r["errors"]),
            notes.join("; ").replace('|', "/"),
        );
    }
    Ok(())
}
