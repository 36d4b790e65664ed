//! The decision log (`observe.decision_log`): one JSON line per request describing what
//! was asked and what the gateway decided — the trace an operator keeps to ask later what
//! another policy would have done with the same traffic.
//!
//! Like the access log it is written off the request path: the proxy moves a small
//! [`DecisionRecord`] (indices into the snapshot it already holds, numbers, the model string
//! it no longer needs) into a bounded queue; a writer thread formats the lines and writes
//! them in batches. A full queue drops the record and counts it
//! (`switchyard_decision_log_dropped_total`), never waits. The file is rotated by size: when
//! a write would take it past `observe.decision_log_max` (default 64 MiB) it is renamed to
//! `PATH.1` (replacing the previous one) and a new file is started, so at most twice the
//! limit is kept on disk.
//!
//! **The format is stable** (version 1); fields are only ever added, and a change of meaning
//! takes a new `v`. One object per line:
//!
//! | field | meaning |
//! |---|---|
//! | `v` | format version, `1` |
//! | `ts` | when the request ended, RFC 3339 UTC with µs |
//! | `unix_ms` | the same, milliseconds since the Unix epoch (a replay's clock) |
//! | `route`, `protocol` | the route's name and protocol (`openai`, `oip-v2`, …) |
//! | `region`, `tier` | the client's region and the request's tier (names) |
//! | `tenant` | the tenant's **name** (never its key), or `null` |
//! | `model` | the model asked for |
//! | `body_bytes` | request body size |
//! | `cacheable`, `cache` | whether the request could be cached; `hit` / `miss` / `bypass` / `coalesced` / `null` |
//! | `pool`, `reason` | where it went (`null`: nowhere) and why (`meets-deadline`, `slo-miss-fastest`, …) |
//! | `estimate_ms`, `estimate_usd` | the chosen candidate's estimate at decision time |
//! | `attempts` | upstream attempts made |
//! | `upstream_ms` | time to the answering attempt's response header (`null` if none) |
//! | `elapsed_ms`, `status` | the request's whole time in the gateway and its status |
//! | `spend_usd` | what it was billed: usage and egress (0 when not charged; capacity is billed by the hour) |
//! | `egress_usd` | the egress part of `spend_usd` |
//! | `tokens` | `{"input", "output"}` tokens the answer used, on a pool priced per token (else `null`) |

use super::access::NONE;
use crate::serving::Serving;
use crate::telemetry as t;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The format version written in `v`.
pub const VERSION: u32 = 1;
/// Records waiting for the writer at most; beyond it they are dropped.
const QUEUE: usize = 16 * 1024;
/// Rotation size when the policy names none.
pub const DEFAULT_MAX_BYTES: u64 = crate::policy::compile::DEFAULT_DECISION_LOG_BYTES;

/// What is logged about one request's decision.
pub struct DecisionRecord {
    pub at: SystemTime,
    pub table: Arc<Serving>,
    pub route: u16,
    pub region: u16,
    pub tier: u16,
    /// Index into the table's tenants, or [`NONE`].
    pub tenant: u16,
    pub model: String,
    pub body_bytes: u64,
    pub cacheable: bool,
    pub cache: Option<&'static str>,
    pub pool: u16,
    pub reason: Option<&'static str>,
    pub estimate: Option<crate::route::Estimate>,
    pub attempts: u8,
    pub upstream: Option<Duration>,
    pub elapsed: Duration,
    pub status: u16,
    pub spend_usd: f64,
    /// The part of `spend_usd` that is egress.
    pub egress_usd: f64,
    /// Tokens the answer used (input, output), on a pool priced per token.
    pub tokens: Option<(u64, u64)>,
}

/// The protocol as written in the policy.
fn protocol_name(p: crate::policy::raw::Protocol) -> &'static str {
    use crate::policy::raw::Protocol;
    match p {
        Protocol::OpenAi => "openai",
        Protocol::OipV2 => "oip-v2",
        Protocol::TfServing => "tf-serving",
        Protocol::OipV2Grpc => "oip-v2-grpc",
    }
}

fn json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON needs; names and models are short.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn opt_name(out: &mut String, name: Option<&str>) {
    match name {
        Some(n) => json_str(out, n),
        None => out.push_str("null"),
    }
}

impl DecisionRecord {
    /// Append the record as one JSON line to `out`.
    pub fn format(&self, out: &mut String) {
        let t = &*self.table;
        let route = t.routes.get(self.route as usize);
        let unix = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = write!(out, "{{\"v\":{VERSION},\"ts\":\"");
        super::access::timestamp(self.at, out);
        let _ = write!(out, "\",\"unix_ms\":{},\"route\":", unix.as_millis());
        opt_name(out, route.map(|r| r.name.as_str()));
        out.push_str(",\"protocol\":");
        opt_name(out, route.map(|r| protocol_name(r.protocol)));
        out.push_str(",\"region\":");
        opt_name(out, t.regions.get(self.region as usize).map(String::as_str));
        out.push_str(",\"tier\":");
        opt_name(
            out,
            t.tiers.get(self.tier as usize).map(|x| x.name.as_str()),
        );
        out.push_str(",\"tenant\":");
        let tenant = (self.tenant != NONE)
            .then(|| t.tenants.get(self.tenant as usize).map(|x| x.name.as_str()))
            .flatten();
        opt_name(out, tenant);
        out.push_str(",\"model\":");
        json_str(out, &self.model);
        let _ = write!(
            out,
            ",\"body_bytes\":{},\"cacheable\":{},\"cache\":",
            self.body_bytes, self.cacheable
        );
        opt_name(out, self.cache);
        out.push_str(",\"pool\":");
        opt_name(
            out,
            t.pools.get(self.pool as usize).map(|p| p.name.as_str()),
        );
        out.push_str(",\"reason\":");
        opt_name(out, self.reason);
        match self.estimate {
            Some(e) => {
                let _ = write!(
                    out,
                    ",\"estimate_ms\":{:.3},\"estimate_usd\":{:e}",
                    e.latency.as_secs_f64() * 1e3,
                    e.cost_usd
                );
            }
            None => out.push_str(",\"estimate_ms\":null,\"estimate_usd\":null"),
        }
        let _ = write!(out, ",\"attempts\":{},\"upstream_ms\":", self.attempts);
        match self.upstream {
            Some(u) => {
                let _ = write!(out, "{:.3}", u.as_secs_f64() * 1e3);
            }
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"elapsed_ms\":{:.3},\"status\":{},\"spend_usd\":{:e},\"egress_usd\":{:e},\"tokens\":",
            self.elapsed.as_secs_f64() * 1e3,
            self.status,
            self.spend_usd,
            self.egress_usd,
        );
        match self.tokens {
            Some((input, output)) => {
                let _ = writeln!(out, "{{\"input\":{input},\"output\":{output}}}}}");
            }
            None => out.push_str("null}\n"),
        }
    }
}

/// The sending side of the decision log, held by the proxy.
pub struct DecisionLog {
    tx: SyncSender<DecisionRecord>,
}

impl DecisionLog {
    /// Open (append to) `path` and start the writer thread.
    pub fn start(path: &Path, max_bytes: u64) -> std::io::Result<DecisionLog> {
        let file = Rotating::open(path.to_path_buf(), max_bytes)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_all(rx, file))?;
        Ok(DecisionLog { tx })
    }

    /// Queue `record` for the writer; dropped (and counted) when the queue is full.
    pub fn record(&self, record: DecisionRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            metrics::counter!(t::DECISION_LOG_DROPPED).increment(1);
        }
    }
}

/// A file that is renamed to `PATH.1` and started afresh when it would pass `max` bytes.
struct Rotating {
    path: PathBuf,
    max: u64,
    size: u64,
    out: BufWriter<File>,
}

impl Rotating {
    fn open(path: PathBuf, max: u64) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path,
            max: max.max(1),
            size,
            out: BufWriter::with_capacity(64 * 1024, file),
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max {
            self.out.flush()?;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.out = BufWriter::with_capacity(64 * 1024, file);
            self.size = 0;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

fn write_all(rx: Receiver<DecisionRecord>, mut file: Rotating) {
    let mut line = String::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            line.clear();
            record.format(&mut line);
            if let Err(e) = file.write_line(line.as_bytes()) {
                metrics::counter!(t::DECISION_LOG_DROPPED).increment(1);
                tracing::warn!(error = %e, path = %file.path.display(), "cannot write the decision log");
            }
            next = rx.try_recv().ok();
        }
        let _ = file.out.flush();
    }
    let _ = file.out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("decisions.jsonl");
        let mut f = Rotating::open(path.clone(), 100).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..5 {
            let line = format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "x".repeat(30));
            f.write_line(line.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let _ = f.out.flush();
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        let before =
            std::fs::read_to_string(dir.path().join("decisions.jsonl.1")).unwrap_or_default();
        assert!(
            now.len() <= 100 && before.len() <= 100,
            "{now:?} {before:?}"
        );
        assert!(
            now.contains("\"line\":4") && before.contains("\"line\":2"),
            "{now} / {before}"
        );
    }
}
