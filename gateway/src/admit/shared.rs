//! Tenant limits shared by every instance through Redis (`limits.backend: redis`).
//!
//! One Lua script per admission, so one round trip: GCRA on the tenant's theoretical arrival
//! time (Redis's own clock, `TIME`, so instances' clocks do not matter), a concurrency lease
//! in a sorted set scored by its expiry (a lease of an instance that died expires by itself)
//! and the day's spend read back for the budget check made after the cache lookup. A charge
//! (`INCRBYFLOAT`) and a lease release (`ZREM`) are sent after the answer, off the request's
//! critical path.
//!
//! Keys (prefix `P`, tenant `T`, anonymous callers `-`): `P:limits:T:rate` (TAT, µs),
//! `P:limits:T:leases` (lease id → expiry ms), `P:limits:T:spend:{utc day}` (USD, kept 2 days).
//!
//! Any error or a call slower than `limits.redis_timeout` marks the backend *away*: requests
//! are then admitted on local limits (see `local.rs`), which is logged and counted; one
//! request a second probes Redis again, and the first success returns every instance to the
//! shared state. A Redis outage therefore never becomes a gateway outage.

use crate::redis::{Pool, RedisError, Script};
use crate::telemetry as t;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static ADMIT: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local nxt = 0
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  nxt = tat + interval
  if nxt - now > tolerance then
    return {0, nxt - tolerance - now, '0'}
  end
end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local now_ms = math.floor(now / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    return {1, 0, '0'}
  end
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if interval > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
end
return {2, 0, redis.call('GET', KEYS[3]) or '0'}
"#,
);

static CHARGE: Script = Script::new(
    r#"
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return v
"#,
);

/// How long a backend that failed is left alone before one request probes it again.
const PROBE_EVERY_MS: u64 = 1000;

/// What the shared state said.
pub enum Verdict {
    /// Over the rate: retry after this many microseconds.
    Rate(u64),
    Concurrency,
    /// Admitted (a lease was taken if the tenant has a concurrency limit); the day's spend.
    Admitted {
        spend_today: f64,
    },
}

/// The Redis backend and whether it is reachable.
pub struct Shared {
    pool: Pool,
    prefix: String,
    up: AtomicBool,
    /// While away: when the next probe may go (ms since the epoch).
    next_probe_ms: AtomicU64,
}

/// What one admission asks the script.
pub struct Ask<'a> {
    pub who: &'a str,
    /// GCRA (interval, tolerance) in µs, if the tenant has a rate.
    pub rate: Option<(u64, u64)>,
    pub max_concurrency: Option<u32>,
    pub lease_id: &'a str,
    pub lease_ttl: Duration,
    pub day: u64,
}

impl Shared {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Shared, RedisError> {
        metrics::gauge!(t::LIMITS_SHARED).set(1.0);
        Ok(Shared {
            pool: Pool::new(url, timeout)?,
            prefix: prefix.to_string(),
            up: AtomicBool::new(true),
            next_probe_ms: AtomicU64::new(0),
        })
    }

    pub fn key(&self, who: &str, what: &str) -> String {
        format!("{}:limits:{who}:{what}", self.prefix)
    }

    pub fn spend_key(&self, who: &str, day: u64) -> String {
        format!("{}:limits:{who}:spend:{day}", self.prefix)
    }

    /// Whether to ask Redis now: always while it is up; while away, one caller per probe
    /// interval.
    pub fn available(&self, now_ms: u64) -> bool {
        if self.up.load(Ordering::Acquire) {
            return true;
        }
        let next = self.next_probe_ms.load(Ordering::Acquire);
        now_ms >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now_ms + PROBE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Whether the shared state is serving (for the admin API).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!(t::LIMITS_SHARED).set(1.0);
            tracing::info!("redis is back: tenant limits are shared again");
        }
    }

    fn failed(&self, op: &'static str, err: &RedisError, now_ms: u64) {
        metrics::counter!(t::LIMITS_DEGRADED, "op" => op).increment(1);
        self.next_probe_ms
            .store(now_ms + PROBE_EVERY_MS, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(t::LIMITS_SHARED).set(0.0);
            tracing::warn!(error = %err, op, "redis unreachable: tenant limits fall back to local limits");
        }
    }

    /// The admission script. `None`: Redis did not answer (in time); use local limits.
    pub async fn admit(&self, ask: &Ask<'_>, now_ms: u64) -> Option<Verdict> {
        let (interval, tolerance) = ask.rate.unwrap_or((0, 0));
        let keys = [
            self.key(ask.who, "rate"),
            self.key(ask.who, "leases"),
            self.spend_key(ask.who, ask.day),
        ];
        let args = [
            interval.to_string(),
            tolerance.to_string(),
            ask.max_concurrency.unwrap_or(0).to_string(),
            ask.lease_id.to_string(),
            ask.lease_ttl.as_millis().to_string(),
        ];
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let arg_refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.pool.eval(&ADMIT, &key_refs, &arg_refs).await {
            Ok(v) => {
                self.succeeded();
                let v = v.into_array();
                let code = v.first().and_then(|x| x.as_int());
                let n = v.get(1).and_then(|x| x.as_int()).unwrap_or(0).max(0) as u64;
                let spend = v
                    .get(2)
                    .and_then(|x| x.as_str())
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
                match code {
                    Some(0) => Some(Verdict::Rate(n)),
                    Some(1) => Some(Verdict::Concurrency),
                    Some(2) => Some(Verdict::Admitted { spend_today: spend }),
                    _ => {
                        tracing::warn!("unexpected reply from the admission script");
                        None
                    }
                }
            }
            Err(e) => {
                self.failed("admit", &e, now_ms);
                None
            }
        }
    }

    /// Add `usd` to the day's shared spend.
    pub async fn charge(&self, who: &str, day: u64, usd: f64, now_ms: u64) {
        let key = self.spend_key(who, day);
        let amount = format!("{usd:.9}");
        match self
            .pool
            .eval(&CHARGE, &[key.as_bytes()], &[amount.as_bytes()])
            .await
        {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed("charge", &e, now_ms),
        }
    }

    /// Give a concurrency lease back (it would expire by itself otherwise).
    pub async fn release(&self, who: &str, lease_id: &str, now_ms: u64) {
        let key = self.key(who, "leases");
        if let Err(e) = self
            .pool
            .cmd(&[b"ZREM", key.as_bytes(), lease_id.as_bytes()])
            .await
        {
            self.failed("release", &e, now_ms);
        }
    }

    /// The day's shared spend of each of `who` (admin API; `None` when Redis is away).
    pub async fn spend_of(&self, who: &[String], day: u64) -> Option<Vec<f64>> {
        if who.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = who.iter().map(|w| self.spend_key(w, day)).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let v = self
            .pool
            .cmd_within(&args, Duration::from_secs(1))
            .await
            .ok()?;
        Some(
            v.into_array()
                .iter()
                .map(|x| x.as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0))
                .collect(),
        )
    }
}
