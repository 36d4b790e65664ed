//! Each pool's `capacity:` block: the bounds and objectives its desired replicas are
//! computed under (`capacity::` does the computing, at run time, from what is measured).

use super::tiers::Tiers;
use super::{duration_field, Pool, Problems};
use crate::policy::raw;
use std::time::Duration;

/// `max_replicas` when the policy names none.
pub const DEFAULT_MAX_REPLICAS: u32 = 10;
/// `scale_up_time` when the policy names none.
pub const DEFAULT_SCALE_UP_TIME: Duration = Duration::from_secs(60);
/// `scale_down_window` when the policy names none (Kubernetes' HPA default).
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// `percentile` when the policy names none.
pub const DEFAULT_PERCENTILE: f64 = 0.99;

/// A pool's compiled `capacity:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub concurrency_per_replica: u32,
    pub scale_up_time: Duration,
    pub scale_down_window: Duration,
    pub percentile: f64,
    /// The deadline sized for, and the tier it is from (`None`: written in `capacity:`).
    pub deadline: Duration,
    pub deadline_tier: Option<String>,
}

impl Capacity {
    /// One line for `switchyard check`.
    pub fn describe(&self) -> String {
        format!(
            "capacity: {}–{} replicas of {} in flight each, sized for {} ms at p{} ({}), {} s ahead, scale-down window {} s",
            self.min_replicas,
            self.max_replicas,
            self.concurrency_per_replica,
            self.deadline.as_millis(),
            self.percentile * 100.0,
            self.deadline_tier
                .as_deref()
                .map_or("written".to_string(), |t| format!("tier `{t}`")),
            self.scale_up_time.as_secs(),
            self.scale_down_window.as_secs()
        )
    }
}

/// Compile every pool's `capacity:` into `pools` (after tiers and pools).
pub(super) fn compile(p: &mut Problems, raw: &raw::Policy, tiers: &Tiers, pools: &mut [Pool]) {
    for (written, pool) in raw.pools.iter().zip(pools.iter_mut()) {
        let Some(node) = &written.value.capacity else {
            continue;
        };
        let c = &node.value;
        let name = &pool.name;
        let min_replicas = c.min_replicas.as_ref().map_or(1, |n| n.value);
        let max_replicas = match &c.max_replicas {
            Some(n) if n.value == 0 => {
                p.on(
                    n,
                    format!("pool `{name}`: capacity.max_replicas: at least 1"),
                );
                1
            }
            Some(n) => n.value,
            None => DEFAULT_MAX_REPLICAS.max(min_replicas),
        };
        if min_replicas > max_replicas {
            p.on(
                node,
                format!("pool `{name}`: capacity.min_replicas ({min_replicas}) is more than max_replicas ({max_replicas})"),
            );
        }
        let replicas = pool
            .replicas()
            .unwrap_or(pool.endpoints.len().max(1) as u32)
            .max(1);
        let concurrency_per_replica = match &c.concurrency_per_replica {
            Some(n) if n.value == 0 => {
                p.on(
                    n,
                    format!("pool `{name}`: capacity.concurrency_per_replica: at least 1"),
                );
                1
            }
            Some(n) => n.value,
            None => pool.concurrency.div_ceil(replicas).max(1),
        };
        let dur = |p: &mut Problems, n: &Option<serde_saphyr::Spanned<String>>, what, default| {
            n.as_ref().map_or(default, |n| duration_field(p, n, what))
        };
        let scale_up_time = dur(
            p,
            &c.scale_up_time,
            "capacity.scale_up_time",
            DEFAULT_SCALE_UP_TIME,
        );
        let scale_down_window = dur(
            p,
            &c.scale_down_window,
            "capacity.scale_down_window",
            DEFAULT_SCALE_DOWN_WINDOW,
        );
        let percentile = match &c.percentile {
            Some(v) if v.value >= 0.5 && v.value < 1.0 => v.value,
            Some(v) => {
                p.on(
                    v,
                    format!("pool `{name}`: capacity.percentile: a share of at least 0.5 and below 1, e.g. 0.99"),
                );
                DEFAULT_PERCENTILE
            }
            None => DEFAULT_PERCENTILE,
        };
        let (deadline, deadline_tier) = match &c.deadline {
            Some(d) => (duration_field(p, d, "capacity.deadline"), None),
            None => {
                match tiers
                    .list
                    .iter()
                    .filter(|t| t.kinds.contains(pool.kind))
                    .min_by_key(|t| t.deadline)
                {
                    Some(t) => (t.deadline, Some(t.name.clone())),
                    None => {
                        p.on(
                        node,
                        format!("pool `{name}`: capacity: no tier uses a `{}` pool; name a `deadline`", pool.kind.as_str()),
                    );
                        (Duration::ZERO, None)
                    }
                }
            }
        };
        if deadline.is_zero() && c.deadline.is_some() {
            if let Some(d) = &c.deadline {
                p.on(d, format!("pool `{name}`: capacity.deadline: more than 0"));
            }
        }
        pool.capacity = Some(Capacity {
            min_replicas,
            max_replicas,
            concurrency_per_replica,
            scale_up_time,
            scale_down_window,
            percentile,
            deadline,
            deadline_tier,
        });
    }
}
