//! The `upstream:` section: connect timeout, attempts, outlier ejection, the retry budget
//! and how often endpoint host names are looked up again.

use super::{duration_field, parse_duration, Problems};
use crate::policy::raw;
use serde_saphyr::Spanned;
use std::time::Duration;

pub struct Upstream {
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub down_backoff: Duration,
    /// Outlier ejection: when and for how long.
    pub ejection: Ejection,
    /// The retry budget's settings (its shared bucket is live state: `serving::state::Live`).
    pub retry_budget: BudgetSettings,
    /// How often endpoint host names are looked up again (`policy::resolve`).
    pub resolve_every: Duration,
}

/// Outlier-ejection settings, from the policy's `upstream:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive 5xx / timeouts that eject an endpoint (a refused connect ejects at once).
    pub after: u32,
    /// First ejection back-off; the k-th in a row lasts `base × 2^k`, at most `max`.
    pub base: Duration,
    pub max: Duration,
}

impl Ejection {
    /// The back-off of the `k`-th ejection in a row (0-based).
    pub fn backoff(&self, k: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << k.min(16))
            .min(self.max.max(self.base))
    }
}

/// `upstream.down_backoff`, 5s when not written; compiled before the rest of the section
/// (see [`compile`]) so that problems are reported in the order they always were.
pub(super) fn down_backoff(p: &mut Problems, raw: &raw::Policy) -> Duration {
    match &raw.upstream.down_backoff {
        Some(node) => duration_field(p, node, "upstream.down_backoff"),
        None => Duration::from_secs(5),
    }
}

/// `upstream:`.
pub(super) fn compile(p: &mut Problems, raw: &raw::Policy, down_backoff: Duration) -> Upstream {
    Upstream {
        connect_timeout: match &raw.upstream.connect_timeout {
            Some(node) => duration_field(p, node, "upstream.connect_timeout"),
            None => Duration::from_secs(1),
        },
        max_attempts: raw.upstream.max_attempts.clamp(1, 10),
        down_backoff,
        ejection: Ejection {
            after: match &raw.upstream.eject_after {
                Some(node) if node.value == 0 => {
                    p.on(node, "upstream.eject_after: at least 1");
                    1
                }
                Some(node) => node.value,
                None => 5,
            },
            base: down_backoff,
            max: match &raw.upstream.max_backoff {
                Some(node) => duration_field(p, node, "upstream.max_backoff"),
                None => Duration::from_secs(60),
            },
        },
        retry_budget: compile_budget(p, raw.upstream.retry_budget.as_ref()),
        resolve_every: match &raw.upstream.resolve_every {
            Some(node) => {
                let d = duration_field(p, node, "upstream.resolve_every");
                if parse_duration(&node.value).is_some_and(|d| d < Duration::from_secs(1)) {
                    p.on(node, "upstream.resolve_every: at least `1s`");
                }
                d
            }
            None => crate::policy::resolve::DEFAULT_RESOLVE_EVERY,
        },
    }
}

fn compile_budget(p: &mut Problems, node: Option<&Spanned<raw::RetryBudget>>) -> BudgetSettings {
    let mut s = BudgetSettings::default();
    let Some(node) = node else { return s };
    if let Some(r) = &node.value.ratio {
        if (0.0..=1.0).contains(&r.value) {
            s.ratio = r.value;
        } else {
            p.on(r, "upstream.retry_budget.ratio: expected 0.0 to 1.0");
        }
    }
    if let Some(m) = &node.value.min_per_second {
        if m.value.is_finite() && (0.0..=1000.0).contains(&m.value) {
            s.min_per_second = m.value;
        } else {
            p.on(
                m,
                "upstream.retry_budget.min_per_second: expected 0 to 1000",
            );
        }
    }
    s
}

/// The retry budget's settings, from `upstream.retry_budget` (the bucket itself is live
/// state: `serving::budget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Tokens deposited per request (0.0 ..= 1.0).
    pub ratio: f64,
    /// Tokens that accrue per second regardless of traffic.
    pub min_per_second: f64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.2,
            min_per_second: 5.0,
        }
    }
}
