//! Each pool's `price:` (how it is billed, and its prices) and `egress_usd_per_gb:`, compiled
//! into plain numbers. What a request costs under them is `route::cost`'s.

use super::{duration_field, Problems};
use crate::policy::raw::{self, Billing as Written};
use serde_saphyr::{Location, Spanned};
use std::time::Duration;

/// The `safe_utilisation` of a provisioned pool when the policy names none.
pub const DEFAULT_SAFE_UTILISATION: f64 = 0.7;
/// A serverless pool's `idle_timeout` when the policy names none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How a pool is paid for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Billing {
    /// `replicas` × `per_replica_hour`, busy or idle. `replicas: None`: as many as the pool
    /// has endpoints (resolved), counted when the table is published.
    Provisioned {
        per_replica_hour: f64,
        replicas: Option<u32>,
        safe_utilisation: f64,
    },
    /// Per request, per token and per GPU-hour of service.
    PerUse,
    /// Per use, scaled to zero after `idle_timeout`; a `cold_start` first.
    Serverless {
        cold_start: Duration,
        idle_timeout: Duration,
    },
    /// Per GPU-hour of work.
    Batch,
}

impl Billing {
    /// As written in the policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            Billing::Provisioned { .. } => "provisioned",
            Billing::PerUse => "per_use",
            Billing::Serverless { .. } => "serverless",
            Billing::Batch => "batch",
        }
    }
}

/// A pool's compiled `price:`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub billing: Billing,
    pub per_request: f64,
    pub per_gpu_hour: f64,
    pub per_1k_input_tokens: f64,
    pub per_1k_output_tokens: f64,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            billing: Billing::PerUse,
            per_request: 0.0,
            per_gpu_hour: 0.0,
            per_1k_input_tokens: 0.0,
            per_1k_output_tokens: 0.0,
        }
    }
}

impl Pricing {
    /// Whether the pool bills per token (the spend then waits for the answer's `usage`).
    pub fn per_token(&self) -> bool {
        self.per_1k_input_tokens > 0.0 || self.per_1k_output_tokens > 0.0
    }

    /// Whether each request is billed (every model but `provisioned`).
    pub fn per_use(&self) -> bool {
        !matches!(self.billing, Billing::Provisioned { .. })
    }
}

impl Pricing {
    /// How the pool is billed and what a request costs there at the margin, in one
    /// sentence (`switchyard check`). `replicas` is the pool's (`Pool::replicas`).
    pub fn describe(&self, replicas: Option<u32>) -> String {
        let mut per_use = Vec::new();
        if self.per_request > 0.0 {
            per_use.push(format!("${} per request", self.per_request));
        }
        if self.per_1k_input_tokens > 0.0 || self.per_1k_output_tokens > 0.0 {
            per_use.push(format!(
                "${} / ${} per 1k input / output tokens",
                self.per_1k_input_tokens, self.per_1k_output_tokens
            ));
        }
        if self.per_gpu_hour > 0.0 {
            per_use.push(format!("${} per GPU-hour of service", self.per_gpu_hour));
        }
        let per_use = if per_use.is_empty() {
            "free".to_string()
        } else {
            per_use.join(" + ")
        };
        match self.billing {
            Billing::Provisioned {
                per_replica_hour,
                safe_utilisation,
                ..
            } => {
                let n = replicas.unwrap_or(1);
                format!(
                    "provisioned: {n} replica(s) × ${per_replica_hour}/hour = ${:.4}/hour, busy or idle; a request costs nothing more below {:.0}% utilisation, then up to its share of the replicas at saturation",
                    per_replica_hour * f64::from(n),
                    safe_utilisation * 100.0
                )
            }
            Billing::PerUse => format!("per use: {per_use}"),
            Billing::Serverless {
                cold_start,
                idle_timeout,
            } => format!(
                "serverless: {per_use}; scales to zero after {} s idle, and the first request after that waits a {} ms cold start",
                idle_timeout.as_secs(),
                cold_start.as_millis()
            ),
            Billing::Batch => format!("batch: {per_use}"),
        }
    }
}

/// Compile `price:` of pool `name` (`node` names the pool, for errors without a place).
/// Without `billing:`, the prices say which: `per_replica_hour` or `replicas` provisioned,
/// `cold_start` serverless, a batch pool (`batch_pool`) priced per GPU-hour alone batch,
/// anything else per use.
pub(super) fn compile<T>(
    p: &mut Problems,
    name: &str,
    node: &Spanned<T>,
    r: &raw::Price,
    batch_pool: bool,
) -> Pricing {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if ![
        r.per_request,
        r.per_gpu_hour,
        r.per_1k_input_tokens,
        r.per_1k_output_tokens,
        r.per_replica_hour,
    ]
    .into_iter()
    .all(ok)
    {
        p.on(
            node,
            format!("pool `{name}`: prices must be non-negative numbers"),
        );
    }
    let per_use_prices =
        r.per_request > 0.0 || r.per_1k_input_tokens > 0.0 || r.per_1k_output_tokens > 0.0;
    let written = r.billing.as_ref().map(|b| b.value);
    let billing = written.unwrap_or(if r.per_replica_hour > 0.0 || r.replicas.is_some() {
        Written::Provisioned
    } else if r.cold_start.is_some() {
        Written::Serverless
    } else if batch_pool && !per_use_prices {
        Written::Batch
    } else {
        Written::PerUse
    });
    let at: &Location = r
        .billing
        .as_ref()
        .map_or(&node.referenced, |b| &b.referenced);
    let mut wrong = |what: &str| {
        p.at(at, format!("pool `{name}`: price: {what}"));
    };
    let compiled = match billing {
        Written::Provisioned => {
            if per_use_prices || r.per_gpu_hour > 0.0 {
                wrong("a provisioned pool is paid per replica-hour: `per_request`, `per_gpu_hour` and per-token prices do not apply (use `per_replica_hour`)");
            }
            let replicas = r.replicas.as_ref().map(|n| {
                if n.value == 0 {
                    p.on(n, format!("pool `{name}`: price.replicas: at least 1"));
                }
                n.value.max(1)
            });
            let safe_utilisation = match &r.safe_utilisation {
                Some(u) if u.value > 0.0 && u.value <= 1.0 => u.value,
                Some(u) => {
                    p.on(
                        u,
                        format!("pool `{name}`: price.safe_utilisation: a share between 0 and 1, e.g. 0.7"),
                    );
                    DEFAULT_SAFE_UTILISATION
                }
                None => DEFAULT_SAFE_UTILISATION,
            };
            Billing::Provisioned {
                per_replica_hour: r.per_replica_hour,
                replicas,
                safe_utilisation,
            }
        }
        other => {
            if r.per_replica_hour > 0.0 || r.replicas.is_some() || r.safe_utilisation.is_some() {
                wrong(&format!(
                    "`per_replica_hour`, `replicas` and `safe_utilisation` are for provisioned pools, not `{}`",
                    written_str(other)
                ));
            }
            match other {
                Written::Serverless => {
                    let cold_start = match &r.cold_start {
                        Some(d) => duration_field(p, d, "price.cold_start"),
                        None => {
                            wrong(
                                "a serverless pool names its `cold_start`, e.g. `cold_start: 8s`",
                            );
                            Duration::ZERO
                        }
                    };
                    let idle_timeout = r.idle_timeout.as_ref().map_or(DEFAULT_IDLE_TIMEOUT, |d| {
                        duration_field(p, d, "price.idle_timeout")
                    });
                    Billing::Serverless {
                        cold_start,
                        idle_timeout,
                    }
                }
                _ => {
                    if r.cold_start.is_some() || r.idle_timeout.is_some() {
                        wrong(&format!(
                            "`cold_start` and `idle_timeout` are for serverless pools, not `{}`",
                            written_str(other)
                        ));
                    }
                    if other == Written::Batch {
                        Billing::Batch
                    } else {
                        Billing::PerUse
                    }
                }
            }
        }
    };
    Pricing {
        billing: compiled,
        per_request: r.per_request,
        per_gpu_hour: r.per_gpu_hour,
        per_1k_input_tokens: r.per_1k_input_tokens,
        per_1k_output_tokens: r.per_1k_output_tokens,
    }
}

fn written_str(b: Written) -> &'static str {
    match b {
        Written::Provisioned => "provisioned",
        Written::PerUse => "per_use",
        Written::Serverless => "serverless",
        Written::Batch => "batch",
    }
}

/// `egress_usd_per_gb:` as USD per byte, `[from * regions + to]`: a pair given one way holds
/// for both, anything not given (and a region to itself) is free.
pub(super) fn egress(p: &mut Problems, raw: &raw::Policy, regions: &[String]) -> Vec<f64> {
    let n = regions.len();
    let mut per_byte = vec![f64::NAN; n * n];
    for (from, row) in &raw.egress_usd_per_gb {
        for (to, usd) in row {
            let (Some(a), Some(b)) = (
                regions.iter().position(|r| r == from),
                regions.iter().position(|r| r == to),
            ) else {
                p.on(
                    usd,
                    format!("egress_usd_per_gb: unknown region in pair `{from}` → `{to}`"),
                );
                continue;
            };
            if !(usd.value.is_finite() && usd.value >= 0.0) {
                p.on(
                    usd,
                    "egress_usd_per_gb: expected a non-negative number of USD per GB",
                );
                continue;
            }
            per_byte[a * n + b] = usd.value / 1e9;
            if per_byte[b * n + a].is_nan() {
                per_byte[b * n + a] = usd.value / 1e9;
            }
        }
    }
    for v in &mut per_byte {
        if v.is_nan() {
            *v = 0.0;
        }
    }
    per_byte
}
