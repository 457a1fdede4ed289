//! Latency samples, error counts, and the one-line JSON result.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{json, Map, Value};

use crate::client::ApiError;

/// Latencies (ms) and errors of one scenario, or of one task to be merged.
#[derive(Default)]
pub struct Rec {
    pub lat_ms: Vec<f64>,
    pub errors: u64,
    /// Error kind -> (count, first message).
    pub kinds: BTreeMap<String, (u64, String)>,
}

impl Rec {
    pub fn ok(&mut self, d: Duration) {
        self.lat_ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn err(&mut self, e: &ApiError) {
        self.errors += 1;
        let entry = self.kinds.entry(e.kind()).or_insert_with(|| (0, e.message.clone()));
        entry.0 += 1;
    }

    pub fn err_msg(&mut self, kind: &str, msg: &str) {
        self.errors += 1;
        let entry = self.kinds.entry(kind.to_owned()).or_insert_with(|| (0, msg.to_owned()));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: Rec) {
        self.lat_ms.extend(other.lat_ms);
        self.errors += other.errors;
        for (k, (n, m)) in other.kinds {
            let entry = self.kinds.entry(k).or_insert((0, m));
            entry.0 += n;
        }
    }

    fn error_samples(&self) -> Value {
        Value::Array(
            self.kinds
                .iter()
                .map(|(k, (n, m))| json!({ "kind": k, "count": n, "first": m }))
                .collect(),
        )
    }
}

/// Nearest-rank percentile of unsorted samples; `None` when empty.
pub fn pct(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

pub fn mean(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

fn r(x: Option<f64>) -> Value {
    match x {
        Some(x) => json!((x * 100.0).round() / 100.0),
        None => Value::Null,
    }
}

/// The result line: `ops` operations done in `elapsed`, latencies and errors from `rec`, plus
/// `extra` fields.
pub fn line(
    scenario: &str,
    variant: Option<&str>,
    server: &str,
    params: Value,
    rec: &Rec,
    ops: u64,
    elapsed: Duration,
    extra: Value,
) -> Value {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    if let Some(v) = variant {
        m.insert("variant".into(), json!(v));
    }
    m.insert("server".into(), json!(server));
    m.insert("params".into(), params);
    m.insert("ops".into(), json!(ops));
    m.insert("elapsed_s".into(), r(Some(elapsed.as_secs_f64())));
    let secs = elapsed.as_secs_f64();
    m.insert("ops_per_sec".into(), r((secs > 0.0).then(|| ops as f64 / secs)));
    m.insert("p50_ms".into(), r(pct(&rec.lat_ms, 50.0)));
    m.insert("p90_ms".into(), r(pct(&rec.lat_ms, 90.0)));
    m.insert("p99_ms".into(), r(pct(&rec.lat_ms, 99.0)));
    m.insert("mean_ms".into(), r(mean(&rec.lat_ms)));
    m.insert("max_ms".into(), r(pct(&rec.lat_ms, 100.0)));
    m.insert("samples".into(), json!(rec.lat_ms.len()));
    m.insert("errors".into(), json!(rec.errors));
    if !rec.kinds.is_empty() {
        m.insert("error_samples".into(), rec.error_samples());
    }
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    Value::Object(m)
}

pub fn round2(x: Option<f64>) -> Value {
    r(x)
}
