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
    ("p99_ms", "p99 ms", Better::Lower),
    ("first_ms", "first (cold) ms", Better::Lower),
    ("first_tenth_mean_ms", "first 10% mean ms", Better::Lower),
    ("last_tenth_mean_ms", "last 10% mean ms", Better::Lower),
    ("last_over_first", "last/first 10%", Better::Lower),
    ("missing", "missing deliveries", Better::Lower),
    ("peak_rss_mb", "peak RSS MB", Better::Lower),
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
