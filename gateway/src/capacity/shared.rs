//! Demand across instances: each instance's arrivals per pool shared through Redis (the
//! `limits.backend: redis` server and prefix), so desired replicas come from the whole
//! fleet's demand, never one instance's slice.
//!
//! Each round every instance runs one script that stores its arrivals of the last round per
//! pool (`P:capacity:{pool}`, a hash of instance id → `count:redis ms`) and reads back the
//! sum of every instance's latest round that is at most [`FRESH_MS`] old (older ones are an
//! instance that stopped, and are deleted). One round trip per second per instance.
//!
//! When Redis is away (an error or a call slower than `limits.redis_timeout`), or the limits
//! are local, the demand is this instance's × `limits.instances` (1 when not written): an
//! even load balancer makes that the fleet's. The change either way is logged and counted
//! (`switchyard_capacity_shared`).

use crate::policy::tenancy::LimitsBackend;
use crate::redis::{Pool, Script};
use crate::serving::Serving;
use crate::telemetry as t;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

/// An instance's count older than this is not part of the sum (and is deleted).
pub const FRESH_MS: u64 = 3000;

static EXCHANGE: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, ARGV[1], ARGV[i + 2] .. ':' .. now)
  redis.call('PEXPIRE', key, 60000)
  local sum = 0
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local v = all[j + 1]
    local c = string.find(v, ':', 1, true)
    local at = c and tonumber(string.sub(v, c + 1)) or 0
    if now - at <= tonumber(ARGV[2]) then
      sum = sum + tonumber(string.sub(v, 1, c - 1))
    else
      redis.call('HDEL', key, all[j])
    end
  end
  out[i] = tostring(sum)
end
return out
"#,
);

/// Where the instances' demand is summed.
pub struct SharedDemand {
    redis: Option<(Pool, String)>,
    instance: String,
    up: AtomicBool,
}

impl SharedDemand {
    /// Shared when the limits are (`limits.backend: redis`), else local (fixed at start-up).
    pub fn new(backend: &LimitsBackend) -> SharedDemand {
        let redis = match backend {
            LimitsBackend::Local => None,
            LimitsBackend::Redis {
                url,
                prefix,
                timeout,
            } => match Pool::new(url, *timeout) {
                Ok(pool) => Some((pool, prefix.clone())),
                Err(e) => {
                    tracing::error!(error = %e, "limits.redis_url unusable; capacity demand is local");
                    None
                }
            },
        };
        metrics::gauge!(t::CAPACITY_SHARED).set(if redis.is_some() { 1.0 } else { 0.0 });
        SharedDemand {
            redis,
            instance: format!("{:016x}", fastrand::u64(..)),
            up: AtomicBool::new(true),
        }
    }

    /// Demand from this instance alone.
    pub fn local() -> SharedDemand {
        SharedDemand::new(&LimitsBackend::Local)
    }

    /// Whether the demand is the fleet's from Redis right now (`None`: local by policy).
    pub fn shared_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|_| self.up.load(Ordering::Acquire))
    }

    /// What `/admin/capacity` says about where demand comes from.
    pub fn describe(&self) -> Value {
        match self.shared_up() {
            None => json!({"source": "local"}),
            Some(true) => json!({"source": "redis", "instance": self.instance}),
            Some(false) => json!({"source": "local_estimate", "instance": self.instance,
                                 "why": "redis is away: this instance's demand × limits.instances"}),
        }
    }

    /// This instance's arrivals per pool this round (`counts`, by `pools` name) → the
    /// fleet's.
    pub async fn exchange(&self, table: &Serving, pools: &[&str], counts: &[u64]) -> Vec<f64> {
        let instances = f64::from(table.limits.admission.instances.unwrap_or(1).max(1));
        let local = || counts.iter().map(|n| *n as f64 * instances).collect();
        let Some((pool, prefix)) = &self.redis else {
            return local();
        };
        if pools.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = pools
            .iter()
            .map(|p| format!("{prefix}:capacity:{p}"))
            .collect();
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let values: Vec<String> = counts.iter().map(|n| n.to_string()).collect();
        let fresh = FRESH_MS.to_string();
        let mut args: Vec<&[u8]> = vec![self.instance.as_bytes(), fresh.as_bytes()];
        args.extend(values.iter().map(|v| v.as_bytes()));
        let answer = pool.eval(&EXCHANGE, &keys, &args).await;
        let sums = answer.ok().and_then(|v| match v {
            crate::redis::resp::Value::Array(items) if items.len() == counts.len() => items
                .iter()
                .map(|i| i.as_str().and_then(|s| s.parse::<f64>().ok()))
                .collect::<Option<Vec<f64>>>(),
            _ => None,
        });
        match sums {
            Some(sums) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    metrics::gauge!(t::CAPACITY_SHARED).set(1.0);
                    tracing::info!("redis is back: capacity demand is the fleet's again");
                }
                sums
            }
            None => {
                if self.up.swap(false, Ordering::AcqRel) {
                    metrics::gauge!(t::CAPACITY_SHARED).set(0.0);
                    tracing::warn!(
                        instances = instances,
                        "redis unreachable: capacity demand is this instance's × limits.instances"
                    );
                }
                local()
            }
        }
    }
}
