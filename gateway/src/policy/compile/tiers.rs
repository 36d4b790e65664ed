//! The `tiers:` section: SLO tiers with their deadline, cost/latency weight, allowed pool
//! kinds, timeout and hedging.

use super::{duration_field, header_value, parse_duration, Pool, Problems, TierId};
use crate::policy::raw::{self, OnSloMiss, PoolKind};
use http::HeaderValue;
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::time::Duration;

pub struct Tier {
    pub name: String,
    /// `name` as a ready header value: responses carry it without re-validating it.
    pub header: HeaderValue,
    pub deadline: Duration,
    pub weight: f64,
    pub kinds: KindSet,
    pub on_slo_miss: OnSloMiss,
    pub timeout: Duration,
    /// Hedge after this many times the pool's service-time estimate (`None`: never).
    pub hedge_after: Option<f64>,
    /// A streamed request's time-to-first-token objective (`None`: streams are judged on
    /// the deadline), and its time per output token.
    pub ttft: Option<Duration>,
    pub tpot: Option<Duration>,
}

/// A set of pool kinds as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u8);

impl KindSet {
    pub fn insert(&mut self, kind: PoolKind) {
        self.0 |= kind_bit(kind);
    }
    pub fn contains(self, kind: PoolKind) -> bool {
        self.0 & kind_bit(kind) != 0
    }
}

fn kind_bit(kind: PoolKind) -> u8 {
    match kind {
        PoolKind::Edge => 1,
        PoolKind::Gpu => 2,
        PoolKind::Batch => 4,
    }
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Edge => "edge",
            PoolKind::Gpu => "gpu",
            PoolKind::Batch => "batch",
        }
    }
}

/// The compiled tiers and their index by name.
pub(super) struct Tiers {
    pub list: Vec<Tier>,
    pub by_name: HashMap<String, TierId>,
}

impl Tiers {
    /// The tier `node` names; an unknown name is reported (as `what`) and reads as 0.
    pub fn id(&self, p: &mut Problems, node: &Spanned<String>, what: &str) -> TierId {
        let tier_by_name = &self.by_name;
        match tier_by_name.get(&node.value) {
            Some(id) => *id,
            None => {
                let mut names: Vec<&str> = tier_by_name.keys().map(String::as_str).collect();
                names.sort_unstable();
                p.on(
                    node,
                    format!(
                        "{what}: unknown tier `{}` (tiers: {})",
                        node.value,
                        names.join(", ")
                    ),
                );
                0
            }
        }
    }
}

/// `tiers:`.
pub(super) fn compile(p: &mut Problems, raw: &raw::Policy) -> Tiers {
    let mut tiers = Vec::new();
    let mut tier_by_name = HashMap::new();
    for (name, tier) in &raw.tiers {
        let t = &tier.value;
        let deadline = duration_field(p, &t.deadline, "deadline");
        if deadline.is_zero() && parse_duration(&t.deadline.value).is_some() {
            p.on(&t.deadline, "deadline must be greater than zero");
        }
        if !(0.0..=1.0).contains(&t.weight.value) {
            p.on(
                &t.weight,
                format!(
                    "weight: expected a number from 0.0 (cost only) to 1.0 (latency only), found {}",
                    t.weight.value
                ),
            );
        }
        let mut kinds = KindSet::default();
        for k in &t.pools {
            kinds.insert(k.value);
        }
        if t.pools.is_empty() {
            p.on(
                tier,
                format!("tier `{name}`: `pools` must name at least one pool kind"),
            );
        }
        let timeout = match &t.timeout {
            Some(node) => duration_field(p, node, "timeout"),
            None => (deadline * 4).clamp(Duration::from_secs(5), Duration::from_secs(600)),
        };
        let objective = |p: &mut Problems, node: &Option<Spanned<String>>, what: &str| {
            let node = node.as_ref()?;
            let d = duration_field(p, node, what);
            if d.is_zero() {
                p.on(
                    node,
                    format!("tier `{name}`: {what} must be greater than zero"),
                );
                return None;
            }
            Some(d)
        };
        let ttft = objective(p, &t.ttft, "ttft");
        let tpot = objective(p, &t.tpot, "tpot");
        if let (Some(node), None) = (&t.tpot, &t.ttft) {
            p.on(
                node,
                format!("tier `{name}`: tpot applies with a `ttft` objective; add one"),
            );
        }
        if let (Some(node), Some(ttft)) = (&t.ttft, ttft) {
            if ttft > deadline {
                p.on(
                    node,
                    format!(
                        "tier `{name}`: ttft ({} ms) is longer than the deadline ({} ms)",
                        ttft.as_millis(),
                        deadline.as_millis()
                    ),
                );
            }
        }
        tier_by_name.insert(name.clone(), tiers.len() as TierId);
        tiers.push(Tier {
            header: header_value(name),
            name: name.clone(),
            deadline,
            weight: t.weight.value,
            kinds,
            on_slo_miss: t.on_slo_miss,
            timeout,
            ttft,
            tpot,
            hedge_after: t.hedge_after.as_ref().and_then(|h| {
                if h.value.is_finite() && (1.0..=100.0).contains(&h.value) {
                    Some(h.value)
                } else {
                    p.on(
                        h,
                        format!("tier `{name}`: hedge_after: expected 1.0 to 100"),
                    );
                    None
                }
            }),
        });
    }
    Tiers {
        list: tiers,
        by_name: tier_by_name,
    }
}

/// Every tier can use at least one pool: a kind no pool has is a typo or a missing pool.
pub(super) fn check_kinds_served(p: &mut Problems, raw: &raw::Policy, pools: &[Pool]) {
    for tier in &raw.tiers {
        let (name, t) = tier;
        if !pools
            .iter()
            .any(|pool| t.value.pools.iter().any(|k| k.value == pool.kind))
        {
            let kinds: Vec<&str> = t.value.pools.iter().map(|k| k.value.as_str()).collect();
            p.on(
                t,
                format!(
                    "tier `{name}` can use pool kinds [{}] but no pool has one of those kinds",
                    kinds.join(", ")
                ),
            );
        }
    }
}
