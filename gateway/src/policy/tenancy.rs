//! The compiled form of what admission reads: `auth:`, the tenant limits (`tenants[].limits`,
//! `limits.anonymous`), where limits are kept (`limits.backend`, Redis, `instances`) and the
//! shared L2 prediction cache (`cache.shared`).
//!
//! Plain data, as the rest of the routing table: the live counters (token buckets, leases,
//! spend today) live in `admit::Limiter`, beside the table, keyed by tenant name so that they
//! survive reloads. The compile functions here report problems through a callback so that
//! `compile.rs` stays the one place that collects them.

use super::compile::{parse_duration, parse_size, TierId};
use super::raw;
use serde_saphyr::{Location, Spanned};
use std::time::Duration;

pub use super::raw::AuthMode;

/// Default `limits.redis_timeout`.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);
/// Default `cache.shared.timeout`.
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(5);
/// Default `cache.shared.max_entry_bytes`.
pub const DEFAULT_L2_MAX_ENTRY: usize = 256 * 1024;

/// One tenant's (or the anonymous callers') limits. `None`: no limit of that kind.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the sustained rate (at least 1).
    pub burst: u32,
    pub max_concurrency: Option<u32>,
    /// Input + output tokens per minute (a bucket of one minute's worth).
    pub tokens_per_minute: Option<u64>,
    pub spend_per_day_usd: Option<f64>,
    pub on_budget: OnBudget,
}

/// What happens to a request over its tenant's daily spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBudget {
    /// 429 `budget_exceeded`.
    Reject,
    /// Served under this tier instead (`x-switchyard-budget: downgraded`).
    Downgrade(TierId),
}

/// Where limits are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitsBackend {
    Local,
    Redis {
        url: String,
        prefix: String,
        timeout: Duration,
    },
}

/// The admission parts of the `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub backend: LimitsBackend,
    /// Instances sharing the limits: the local share while Redis is away is 1/N.
    pub instances: Option<u32>,
    pub anonymous: Option<TenantLimits>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            backend: LimitsBackend::Local,
            instances: None,
            anonymous: None,
        }
    }
}

/// `cache.shared`: the L2 in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCacheSettings {
    pub redis_url: String,
    pub prefix: String,
    pub max_entry_bytes: usize,
    pub timeout: Duration,
}

/// Problems found: (where, what); `compile.rs` adds them to its list.
#[derive(Default)]
pub struct Found(pub Vec<(Location, String)>);

impl Found {
    fn at(&mut self, loc: &Location, message: String) {
        self.0.push((*loc, message));
    }
}

type Report<'a> = &'a mut Found;
/// Resolves a tier name.
pub type TierLookup<'a> = &'a dyn Fn(&str) -> Option<TierId>;

fn redis_url(report: Report, node: &Spanned<String>, what: &str) -> String {
    if crate::redis::resp::parse_url(&node.value).is_none() {
        report.at(
            &node.referenced,
            format!(
                "{what}: expected `redis://host:port[/db]`, found `{}`",
                node.value
            ),
        );
    }
    node.value.clone()
}

fn prefix(report: Report, node: &Option<Spanned<String>>, what: &str) -> String {
    match node {
        None => "switchyard".to_string(),
        Some(n) => {
            if n.value.is_empty() || n.value.chars().any(|c| c.is_whitespace()) {
                report.at(
                    &n.referenced,
                    format!("{what}: must be non-empty and without spaces"),
                );
            }
            n.value.clone()
        }
    }
}

fn timeout(
    report: Report,
    node: &Option<Spanned<String>>,
    what: &str,
    default: Duration,
) -> Duration {
    let Some(n) = node else { return default };
    match parse_duration(&n.value) {
        Some(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(10) => d,
        _ => {
            report.at(
                &n.referenced,
                format!(
                    "{what}: expected a duration from 1ms to 10s such as `20ms`, found `{}`",
                    n.value
                ),
            );
            default
        }
    }
}

/// The admission parts of `limits:`. `tier` resolves a tier name (reporting unknown ones).
pub fn compile_admission(
    report: Report,
    spanned: &Spanned<raw::Limits>,
    tier: TierLookup,
) -> Admission {
    let node = &spanned.value;
    let backend = match node.backend {
        raw::LimitsBackend::Local => LimitsBackend::Local,
        raw::LimitsBackend::Redis => match &node.redis_url {
            Some(url) => LimitsBackend::Redis {
                url: redis_url(report, url, "limits.redis_url"),
                prefix: prefix(report, &node.redis_prefix, "limits.redis_prefix"),
                timeout: timeout(
                    report,
                    &node.redis_timeout,
                    "limits.redis_timeout",
                    DEFAULT_REDIS_TIMEOUT,
                ),
            },
            None => {
                report.at(
                    &spanned.referenced,
                    "limits: `backend: redis` needs `redis_url`".to_string(),
                );
                LimitsBackend::Local
            }
        },
    };
    let instances = node.instances.as_ref().map(|n| {
        if n.value == 0 {
            report.at(&n.referenced, "limits.instances: at least 1".to_string());
        }
        n.value.max(1)
    });
    let anonymous = node
        .anonymous
        .as_ref()
        .map(|l| compile_tenant_limits(report, l, "limits.anonymous", tier));
    Admission {
        backend,
        instances,
        anonymous,
    }
}

/// A `limits:` block of a tenant (`what` names it in messages).
pub fn compile_tenant_limits(
    report: Report,
    node: &Spanned<raw::TenantLimits>,
    what: &str,
    tier: TierLookup,
) -> TenantLimits {
    let l = &node.value;
    let requests_per_second = l.requests_per_second.as_ref().map(|n| {
        if !(n.value > 0.0 && n.value <= 1e6) {
            report.at(
                &n.referenced,
                format!("{what}.requests_per_second: expected a number above 0, at most 1e6"),
            );
        }
        n.value.clamp(1e-6, 1e6)
    });
    let burst = match &l.burst {
        Some(n) => {
            if n.value == 0 {
                report.at(&n.referenced, format!("{what}.burst: at least 1"));
            }
            n.value.max(1)
        }
        None => requests_per_second.map_or(1, |r| r.ceil().max(1.0) as u32),
    };
    let max_concurrency = l.max_concurrency.as_ref().map(|n| {
        if n.value == 0 {
            report.at(&n.referenced, format!("{what}.max_concurrency: at least 1"));
        }
        n.value.max(1)
    });
    let tokens_per_minute = l.tokens_per_minute.as_ref().map(|n| {
        if n.value == 0 {
            report.at(
                &n.referenced,
                format!("{what}.tokens_per_minute: at least 1"),
            );
        }
        n.value.max(1)
    });
    let spend_per_day_usd = l.spend_per_day_usd.as_ref().map(|n| {
        if !(n.value >= 0.0 && n.value.is_finite()) {
            report.at(
                &n.referenced,
                format!("{what}.spend_per_day_usd: expected a number of USD, 0 or more"),
            );
        }
        n.value.max(0.0)
    });
    let on_budget = match &l.on_budget {
        None => OnBudget::Reject,
        Some(n) => match &n.value {
            raw::OnBudget::Reject => OnBudget::Reject,
            raw::OnBudget::Downgrade(name) => match tier(name) {
                Some(t) => OnBudget::Downgrade(t),
                None => {
                    report.at(
                        &n.referenced,
                        format!("{what}.on_budget.downgrade: unknown tier `{name}`"),
                    );
                    OnBudget::Reject
                }
            },
        },
    };
    if l.on_budget.is_some() && spend_per_day_usd.is_none() {
        if let Some(n) = &l.on_budget {
            report.at(
                &n.referenced,
                format!("{what}.on_budget: needs `spend_per_day_usd`"),
            );
        }
    }
    TenantLimits {
        requests_per_second,
        burst,
        max_concurrency,
        tokens_per_minute,
        spend_per_day_usd,
        on_budget,
    }
}

/// `cache.shared`.
pub fn compile_shared_cache(
    report: Report,
    node: &Spanned<raw::SharedCache>,
) -> SharedCacheSettings {
    let c = &node.value;
    let max_entry_bytes = match &c.max_entry_bytes {
        None => DEFAULT_L2_MAX_ENTRY,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s > 0 && s <= super::compile::MAX_BODY_LIMIT => s,
            _ => {
                report.at(
                    &n.referenced,
                    format!(
                        "cache.shared.max_entry_bytes: expected a size from 1 byte to 256MiB such as `256KiB`, found `{}`",
                        n.value
                    ),
                );
                DEFAULT_L2_MAX_ENTRY
            }
        },
    };
    SharedCacheSettings {
        redis_url: redis_url(report, &c.redis_url, "cache.shared.redis_url"),
        prefix: prefix(report, &c.redis_prefix, "cache.shared.redis_prefix"),
        max_entry_bytes,
        timeout: timeout(
            report,
            &c.timeout,
            "cache.shared.timeout",
            DEFAULT_L2_TIMEOUT,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{compile_str, CompileContext, RoutingTable};
    use crate::policy::PolicyErrors;
    use std::path::Path;

    fn compile(extra: &str, tenant_limits: &str) -> Result<RoutingTable, PolicyErrors> {
        let text = format!(
            r#"
regions: {{ default: us, map: [{{ name: us, continents: [NA] }}] }}
rtt_ms: {{ us: {{ us: 2 }} }}
tiers:
  standard: {{ deadline: 1s, pools: [gpu] }}
  batch: {{ deadline: 1h, pools: [gpu] }}
tenants:
  - name: acme
    key_sha256: {key}
    tier: standard
    limits: {tenant_limits}
pools:
  - {{ name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:1], models: ["*"], concurrency: 8, service_time: 20ms }}
routes:
  - {{ name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }}
{extra}
"#,
            key = "a".repeat(64)
        );
        compile_str(
            &text,
            &CompileContext {
                file: Path::new("t.yaml"),
                gateway_region: None,
            },
        )
    }

    #[test]
    fn tenant_limits_compile_with_their_defaults() {
        let t = compile(
            "auth: required\nlimits: { anonymous: { max_concurrency: 3 } }",
            "{ requests_per_second: 2.5, spend_per_day_usd: 10, on_budget: { downgrade: batch } }",
        )
        .unwrap();
        assert_eq!(t.auth, AuthMode::Required);
        let l = t.tenants[0].limits.as_ref().unwrap();
        assert_eq!(l.requests_per_second, Some(2.5));
        assert_eq!(l.burst, 3, "one second's worth, rounded up");
        assert_eq!(
            l.on_budget,
            OnBudget::Downgrade(t.tier_by_name("batch").unwrap())
        );
        let anon = t.limits.admission.anonymous.as_ref().unwrap();
        assert_eq!(anon.max_concurrency, Some(3));
        assert_eq!(anon.requests_per_second, None);
        assert_eq!(t.limits.admission.backend, LimitsBackend::Local);
        // The key lookup finds the tenant (and nothing else).
        assert_eq!(t.tenant_by_key_hash(&[0xaa; 32]), Some(0));
        assert_eq!(t.tenant_by_key_hash(&[0xab; 32]), None);
    }

    #[test]
    fn mistakes_are_reported_where_they_are() {
        let errs = compile(
            "limits: { backend: redis, redis_url: \"http://x\", instances: 0 }",
            "{ burst: 0, on_budget: { downgrade: gold } }",
        )
        .err()
        .unwrap()
        .to_string();
        for want in [
            "limits.redis_url: expected `redis://host:port[/db]`",
            "limits.instances: at least 1",
            "tenant `acme`: limits.burst: at least 1",
            "tenant `acme`: limits.on_budget.downgrade: unknown tier `gold`",
            "tenant `acme`: limits.on_budget: needs `spend_per_day_usd`",
        ] {
            assert!(errs.contains(want), "missing `{want}` in:\n{errs}");
        }
        assert!(errs.contains("t.yaml:"), "{errs}");
        let errs = compile("limits: { backend: redis }", "{}")
            .err()
            .unwrap()
            .to_string();
        assert!(
            errs.contains("`backend: redis` needs `redis_url`"),
            "{errs}"
        );
    }

    #[test]
    fn shared_cache_settings() {
        let t = compile(
            "cache: { shared: { backend: redis, redis_url: \"redis://127.0.0.1:6390/2\", max_entry_bytes: 64KiB } }",
            "{}",
        )
        .unwrap();
        let s = t.cache.shared.as_ref().unwrap();
        assert_eq!(s.max_entry_bytes, 64 * 1024);
        assert_eq!(s.timeout, DEFAULT_L2_TIMEOUT);
        assert_eq!(s.prefix, "switchyard");
    }
}
