//! Tenant limits shared by every instance through Redis (`limits.backend: redis`), kept off
//! the request path by leases.
//!
//! Each instance holds, per tenant, a [`Lease`]: requests it may admit (taken from the
//! shared GCRA bucket), tokens it may spend (from the shared tokens-per-minute bucket),
//! concurrency slots (its share of `max_concurrency`, recorded per instance in Redis) and the
//! day's shared spend with its own charges not yet sent. A request only touches these
//! atomics. A background loop ([`SYNC_EVERY`], or at once when a lease runs below half)
//! tops the leases up, sends the charges and reads the spend back, one Lua script per
//! tenant, on its own thread and runtime so that a busy proxy cannot starve it.
//!
//! Redis is on a request's path only when its lease is empty: the tenant's first request on
//! this instance, or one that outran the top-ups (then one refill per tenant at a time; the
//! other requests wait for it). Steady traffic never waits on Redis.
//!
//! What a lease costs in accuracy (documented in the README):
//! - rate and tokens are granted out of the shared bucket before use, so the fleet never
//!   admits more than the bucket allows, except that a lease held unused (an instance whose
//!   traffic stopped) may be spent later: at most one lease per instance beyond the limit in
//!   any window. A lease is [`LEASE_SECS`] of the tenant's rate, at most its burst;
//! - tokens are charged by estimate and corrected by `usage`: an instance may run into debt by
//!   the requests it has in flight, paid back (charged to the shared bucket) at its next sync;
//! - concurrency: an instance admits up to the slots it holds (twice its recent peak in
//!   flight, the peak halving each sync; at least a sixteenth of a large limit); it asks for
//!   more on the path, granted only while the fleet holds fewer than the limit, so never
//!   beyond the limit;
//! - spend: each instance checks the shared spend it last read plus its own charges since,
//!   so the fleet may overshoot a budget by what the other instances charge within one sync.
//!
//! Keys (prefix `P`, tenant `T`, anonymous callers `-`): `P:limits:T:rate` (TAT, µs),
//! `P:limits:T:tokens` (TAT, µs), `P:limits:T:slots` (instance → `slots:expiry_ms`),
//! `P:limits:T:spend:{utc day}` (USD, kept 2 days). An instance that dies loses its leases;
//! its slots expire after [`SLOT_TTL`].
//!
//! A request whose refill fails is admitted on local limits (alone). A sync of the loop
//! that fails marks the backend *away*: requests are then admitted on local limits
//! (`local.rs`), which is logged and counted; the loop keeps syncing every [`SYNC_EVERY`]
//! with its own timeout, and the first success returns the instance to the shared state.

use crate::policy::tenancy::TenantLimits;
use crate::redis::{Pool, RedisError, Script};
use crate::telemetry as t;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the background loop tops leases up and sends charges.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);
/// A lease: this many seconds of the tenant's rate (two syncs, so a top-up at half lands
/// before the lease is spent at the full rate).
pub const LEASE_SECS: f64 = 0.2;
/// A dead instance's concurrency slots are free again after this.
pub const SLOT_TTL: Duration = Duration::from_secs(3);
/// The background loop's own timeout on Redis (it waits for no request).
const SYNC_TIMEOUT: Duration = Duration::from_millis(500);
/// A tenant not seen for this long is no longer synced (its leases stay held).
const IDLE_MS: u64 = 60_000;

static SYNC: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function grant(key, interval, tol, want, owed)
  if interval <= 0 then return 0, 0 end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tat = tat + owed * interval
  local k = math.floor((now + tol - tat) / interval)
  if k > want then k = want end
  if k < 0 then k = 0 end
  tat = tat + k * interval
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  local wait = 0
  if k < want then wait = tat + interval - tol - now end
  return k, wait
end
local rk, rw = grant(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 0)
local tk, tw = grant(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local slots = 0
local limit = tonumber(ARGV[8])
if limit > 0 then
  local now_ms = math.floor(now / 1000)
  local ttl = tonumber(ARGV[11])
  local others = 0
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[9] then
      local n, exp = string.match(all[i + 1], '(%d+):(%d+)')
      if n == nil or tonumber(exp) < now_ms then
        redis.call('HDEL', KEYS[3], all[i])
      else
        others = others + tonumber(n)
      end
    end
  end
  slots = tonumber(ARGV[10])
  if slots > limit - others then slots = limit - others end
  if slots < 0 then slots = 0 end
  if slots > 0 then
    redis.call('HSET', KEYS[3], ARGV[9], slots .. ':' .. (now_ms + ttl))
    redis.call('PEXPIRE', KEYS[3], ttl)
  else
    redis.call('HDEL', KEYS[3], ARGV[9])
  end
end
if ARGV[12] ~= '0' then
  redis.call('INCRBYFLOAT', KEYS[4], ARGV[12])
  redis.call('EXPIRE', KEYS[4], 172800)
end
return {rk, rw, tk, tw, slots, redis.call('GET', KEYS[4]) or '0'}
"#,
);

/// One tenant's leases on this instance; see the module docs. Atomics only: the request
/// path never waits on another request here (the refill lock is taken only with an empty
/// lease).
#[derive(Default)]
pub struct Lease {
    /// Requests this instance may still admit.
    rate: AtomicI64,
    /// Until when (µs, local clock) the shared bucket said no more requests.
    rate_wait_until: AtomicU64,
    /// Tokens this instance may still spend (negative: in debt, owed at the next sync).
    tokens: AtomicI64,
    tokens_wait_until: AtomicU64,
    /// Concurrency slots this instance holds, and its most in flight since the last sync.
    slots: AtomicU32,
    peak: AtomicU32,
    /// Charges not yet sent (micro-USD) and the day's shared spend as last read.
    unsent_spend: AtomicU64,
    shared_spend: AtomicU64,
    /// When the lease was last synced (0: never) and last used (ms, local clock), and how
    /// many syncs it has had (a request that waited for another's refill needs none).
    synced_ms: AtomicU64,
    syncs: AtomicU64,
    used_ms: AtomicU64,
    /// The tenant's limits as last seen by a request (the loop syncs by them).
    limits: ArcSwapOption<TenantLimits>,
    /// One refill at a time (the loop's, or a request's with an empty lease).
    refill: tokio::sync::Mutex<()>,
}

/// What a request got from its tenant's lease.
pub enum Take {
    Ok,
    /// Empty, and the shared bucket said so: retry after this many microseconds.
    Limited(u64),
    /// Empty; a refill may help.
    Empty,
}

impl Lease {
    /// A request of a tenant with `limits` at `now_ms`: remembered for the loop.
    pub fn touch(&self, limits: &TenantLimits, now_ms: u64) {
        if self.used_ms.load(Ordering::Relaxed) != now_ms {
            self.used_ms.store(now_ms, Ordering::Relaxed);
        }
        // Compared, not cloned, on every request: a clone only when a reload changed them.
        if self.limits.load().as_deref() != Some(limits) {
            self.limits.store(Some(Arc::new(limits.clone())));
        }
    }

    pub fn synced(&self) -> bool {
        self.synced_ms.load(Ordering::Acquire) > 0
    }

    /// Take one request from the rate lease.
    pub fn take_rate(&self, now_us: u64) -> Take {
        let taken = self
            .rate
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n - 1)
            });
        match taken {
            Ok(_) => Take::Ok,
            Err(_) => waiting(&self.rate_wait_until, now_us),
        }
    }

    /// Whether the tokens lease has any left (the request is charged by [`Lease::spend_tokens`]).
    pub fn has_tokens(&self, now_us: u64) -> Take {
        if self.tokens.load(Ordering::Acquire) > 0 {
            Take::Ok
        } else {
            waiting(&self.tokens_wait_until, now_us)
        }
    }

    /// Spend `n` tokens of the lease (negative: give back an over-estimate).
    pub fn spend_tokens(&self, n: i64) {
        self.tokens.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn slots(&self) -> u32 {
        self.slots.load(Ordering::Acquire)
    }

    /// A request is in flight with `in_flight` others of the tenant's on this instance.
    pub fn saw_in_flight(&self, in_flight: u32) {
        self.peak.fetch_max(in_flight, Ordering::AcqRel);
    }

    pub fn charge(&self, usd: f64) {
        let micros = (usd.max(0.0) * 1e6).round() as u64;
        self.unsent_spend.fetch_add(micros, Ordering::AcqRel);
    }

    /// The day's spend as this instance knows it: the shared figure last read plus its own
    /// charges since.
    pub fn spend_today(&self) -> f64 {
        (self.shared_spend.load(Ordering::Acquire) + self.unsent_spend.load(Ordering::Acquire))
            as f64
            / 1e6
    }

    /// Whether the loop should sync this tenant.
    pub fn active(&self, now_ms: u64) -> bool {
        self.limits.load().is_some()
            && (now_ms.saturating_sub(self.used_ms.load(Ordering::Relaxed)) < IDLE_MS
                || self.slots() > 0
                || self.unsent_spend.load(Ordering::Acquire) > 0)
    }

    /// Whether a request has spent a lease below half since the last sync (wake the loop).
    pub fn low(&self, limits: &TenantLimits) -> bool {
        let half = |size: i64, have: &AtomicI64| have.load(Ordering::Acquire) < (size + 1) / 2;
        limits
            .requests_per_second
            .is_some_and(|r| half(rate_lease(r, limits.burst), &self.rate))
            || limits
                .tokens_per_minute
                .is_some_and(|t| half(tokens_lease(t), &self.tokens))
    }
}

fn waiting(until: &AtomicU64, now_us: u64) -> Take {
    let until = until.load(Ordering::Acquire);
    if until > now_us {
        Take::Limited(until - now_us)
    } else {
        Take::Empty
    }
}

/// A rate lease: [`LEASE_SECS`] of the rate, at least 1, at most the burst.
pub fn rate_lease(rps: f64, burst: u32) -> i64 {
    ((rps * LEASE_SECS).ceil() as i64).clamp(1, i64::from(burst.max(1)))
}

/// A tokens lease: [`LEASE_SECS`] of the tokens per minute, at least 1.
pub fn tokens_lease(tokens_per_minute: u64) -> i64 {
    ((tokens_per_minute as f64 * LEASE_SECS / 60.0).ceil() as i64).max(1)
}

/// The Redis backend and whether it is reachable.
pub struct Shared {
    /// Refills on a request's path (`limits.redis_timeout`).
    pool: Pool,
    /// The background loop's connections (its own runtime, [`SYNC_TIMEOUT`]).
    sync_pool: Pool,
    prefix: String,
    /// This instance's name in the slots hash.
    instance: String,
    up: AtomicBool,
    /// Wakes the loop early (a lease below half).
    pub wake: tokio::sync::Notify,
}

/// Where a refill comes from (the metric's label): the loop, or a request whose lease was
/// empty (which one).
#[derive(Clone, Copy)]
pub enum Caller {
    Background,
    Request(&'static str),
}

impl Shared {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Shared, RedisError> {
        metrics::gauge!(t::LIMITS_SHARED).set(1.0);
        Ok(Shared {
            pool: Pool::new(url, timeout)?,
            sync_pool: Pool::new(url, SYNC_TIMEOUT.max(timeout))?,
            prefix: prefix.to_string(),
            instance: format!("{:016x}", fastrand::u64(..)),
            up: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn key(&self, who: &str, what: &str) -> String {
        format!("{}:limits:{who}:{what}", self.prefix)
    }

    pub fn spend_key(&self, who: &str, day: u64) -> String {
        format!("{}:limits:{who}:spend:{day}", self.prefix)
    }

    /// Whether the shared state is serving.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!(t::LIMITS_SHARED).set(1.0);
            tracing::info!("redis is back: tenant limits are shared again");
        }
    }

    pub fn failed(&self, op: &'static str, err: &RedisError) {
        metrics::counter!(t::LIMITS_DEGRADED, "op" => op).increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(t::LIMITS_SHARED).set(0.0);
            tracing::warn!(error = %err, op, "redis unreachable: tenant limits fall back to local limits");
        }
    }

    /// Top up `who`'s lease, send its charges, read its spend back: one script. A request
    /// (`Caller::Request`) asks even for a lease that is not below half, and for twice the
    /// slots it has in flight; it asks nothing if another refill completed while it waited
    /// for its turn. `Ok(true)`: Redis was asked. Err: Redis did not answer (in time); the
    /// charges are kept for the next sync.
    pub async fn sync(
        &self,
        who: &str,
        lease: &Lease,
        in_flight: &super::local::InFlight,
        now_us: u64,
        caller: Caller,
    ) -> Result<bool, RedisError> {
        let Some(limits) = lease.limits.load_full() else {
            return Ok(false);
        };
        let urgent = matches!(caller, Caller::Request(_));
        let seen = lease.syncs.load(Ordering::Acquire);
        let _one = lease.refill.lock().await;
        if urgent && lease.syncs.load(Ordering::Acquire) != seen {
            return Ok(false);
        }
        let in_flight = in_flight.get();
        // Rate: top the lease up to its size when below half (or empty, for a request).
        let (r_interval, r_tol, r_want) = match limits.requests_per_second {
            Some(rps) => {
                let (i, tol) = super::local::gcra_params(rps, limits.burst);
                let size = rate_lease(rps, limits.burst);
                let have = lease.rate.load(Ordering::Acquire);
                let want = if have < (size + 1) / 2 || (urgent && have <= 0) {
                    size - have.max(0)
                } else {
                    0
                };
                (i as f64, tol as f64, want)
            }
            None => (0.0, 0.0, 0),
        };
        let (t_interval, t_want, t_owed) = match limits.tokens_per_minute {
            Some(tpm) => {
                let size = tokens_lease(tpm);
                let have = lease.tokens.load(Ordering::Acquire);
                let want = if have < (size + 1) / 2 {
                    size - have.max(0)
                } else {
                    0
                };
                (60e6 / tpm as f64, want, (-have).max(0))
            }
            None => (0.0, 0, 0),
        };
        let (limit, slots_want) = match limits.max_concurrency {
            Some(c) => {
                // Twice the most seen in flight lately (the peak halves each sync), so that
                // steady traffic never finds its slots short, and an idle instance gives
                // them all back within a few syncs.
                let peak = lease
                    .peak
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                        Some((p / 2).max(in_flight))
                    })
                    .unwrap_or(0)
                    .max(in_flight);
                // A floor of a sixteenth of a large limit: a burst after a pause does not
                // wait for Redis (a small limit is shared exactly, from zero).
                let mut want = (peak * 2).max(c / 16);
                if urgent {
                    want = want.max((in_flight + 1) * 2);
                }
                (c, want.min(c))
            }
            None => (0, 0),
        };
        let spend = lease.unsent_spend.swap(0, Ordering::AcqRel);
        let day = super::local::utc_day(now_us);
        let keys = [
            self.key(who, "rate"),
            self.key(who, "tokens"),
            self.key(who, "slots"),
            self.spend_key(who, day),
        ];
        let args = [
            r_interval.to_string(),
            r_tol.to_string(),
            r_want.to_string(),
            t_interval.to_string(),
            (super::local::TOKEN_WINDOW_US as f64).to_string(),
            t_want.to_string(),
            t_owed.to_string(),
            limit.to_string(),
            self.instance.clone(),
            slots_want.to_string(),
            SLOT_TTL.as_millis().to_string(),
            if spend == 0 {
                "0".to_string()
            } else {
                format!("{:.6}", spend as f64 / 1e6)
            },
        ];
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let arg_refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let pool = match caller {
            Caller::Background => &self.sync_pool,
            Caller::Request(_) => &self.pool,
        };
        let (label, lease_kind) = match caller {
            Caller::Background => ("background", "all"),
            Caller::Request(kind) => ("request", kind),
        };
        metrics::counter!(t::LIMITS_SYNCS, "caller" => label, "lease" => lease_kind).increment(1);
        let v = match pool.eval(&SYNC, &key_refs, &arg_refs).await {
            Ok(v) => v.into_array(),
            Err(e) => {
                lease.unsent_spend.fetch_add(spend, Ordering::AcqRel);
                match caller {
                    // The loop decides whether Redis is away; a request whose refill was
                    // slower than `redis_timeout` is admitted on local limits, alone.
                    Caller::Request(_) => {
                        metrics::counter!(t::LIMITS_DEGRADED, "op" => "refill").increment(1)
                    }
                    Caller::Background => self.failed("sync", &e),
                }
                return Err(e);
            }
        };
        self.succeeded();
        let int = |i: usize| v.get(i).and_then(|x| x.as_int()).unwrap_or(0).max(0);
        let now = super::local::now_us();
        lease.rate.fetch_add(int(0), Ordering::AcqRel);
        let until = |granted: i64, want: i64, wait: i64| match granted < want {
            true => now + wait.max(1) as u64,
            false => 0,
        };
        if r_want > 0 {
            let u = until(int(0), r_want, int(1));
            lease.rate_wait_until.store(u, Ordering::Release);
        }
        lease.tokens.fetch_add(int(2) + t_owed, Ordering::AcqRel);
        if t_want > 0 {
            let u = until(int(2), t_want, int(3));
            lease.tokens_wait_until.store(u, Ordering::Release);
        }
        lease.slots.store(int(4) as u32, Ordering::Release);
        let spent = v
            .get(5)
            .and_then(|x| x.as_str())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        lease
            .shared_spend
            .store((spent * 1e6).round() as u64, Ordering::Release);
        lease.synced_ms.store(now / 1000, Ordering::Release);
        lease.syncs.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// The day's shared spend of each of `who` (admin API, for tenants this instance has
    /// not synced; `None` when Redis does not answer).
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

    /// One `PING` (the loop's probe while no tenant is active).
    pub async fn ping(&self) -> Result<(), RedisError> {
        match self.sync_pool.cmd(&[b"PING"]).await {
            Ok(_) => {
                self.succeeded();
                Ok(())
            }
            Err(e) => {
                self.failed("ping", &e);
                Err(e)
            }
        }
    }
}
