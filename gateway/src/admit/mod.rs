//! Admission: who may send this request now. Between classification and the cache:
//!
//! ```text
//! classify ─▶ auth (auth: required → 401) ─▶ rate, concurrency (429 rate_limited)
//!          ─▶ cache lookup ─hit─▶ answer (free: no spend check, no charge)
//!                          └miss─▶ spend today vs spend_per_day_usd
//!                                    (429 budget_exceeded, or downgrade the tier) ─▶ route
//! answered ─▶ charge the decision's estimated cost to the tenant's day
//! ```
//!
//! The rules come from the routing table (`tenants[].limits`, `limits.anonymous`, `auth`);
//! the live state lives here, in the [`Limiter`] held beside the table and keyed by tenant
//! name, so buckets, leases and spend survive reloads. Each request that has limits takes a
//! [`Ticket`], kept in the proxy's request context: its concurrency slot (and Redis lease) is
//! given back exactly once, when the ticket is dropped with the context, on every path
//! (answered, failed, client gone).
//!
//! With `limits.backend: redis` the state is shared by every instance (`shared.rs`); when
//! Redis is away, each instance enforces its local state (`local.rs`) with a 1/N share of
//! every limit when `limits.instances: N` is given.
//!
//! Anonymous callers (no known key, `auth: optional`) share one set of limits,
//! `limits.anonymous`. Requests with no limits at all take no ticket and touch no state.

pub mod local;
pub mod shared;

use crate::classify::{Class, TierSource};
use crate::error::GatewayError;
use crate::policy::compile::RoutingTable;
use crate::policy::tenancy::{AuthMode, LimitsBackend, OnBudget, TenantLimits};
use crate::telemetry as t;
use arc_swap::ArcSwap;
use local::{DailySpend, Gcra, InFlight};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The state key (and Redis key part) of anonymous callers; tenant names are prefixed with
/// `t:` so no tenant can collide with it.
const ANONYMOUS: &str = "-";

/// The live limit state of one tenant (or of the anonymous callers).
#[derive(Default)]
pub struct TenantState {
    rate: Gcra,
    in_flight: InFlight,
    /// This instance's spend today.
    spend: DailySpend,
    /// The shared spend today, as last read from Redis (micro-USD), and its day.
    shared_spend: AtomicU64,
    shared_day: AtomicU64,
}

/// The live limit state of every tenant, and the shared backend if there is one.
pub struct Limiter {
    /// Copy on write: a tenant's state is created once (first request), read lock-free after.
    states: ArcSwap<HashMap<String, Arc<TenantState>>>,
    shared: Option<Arc<shared::Shared>>,
}

impl Limiter {
    /// The limiter for `backend` (fixed at start-up; a reload that changes it needs a restart).
    pub fn new(backend: &LimitsBackend) -> Arc<Limiter> {
        let shared = match backend {
            LimitsBackend::Local => None,
            LimitsBackend::Redis {
                url,
                prefix,
                timeout,
            } => match shared::Shared::new(url, prefix, *timeout) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::error!(error = %e, "limits.redis_url unusable; limits are local");
                    None
                }
            },
        };
        Arc::new(Limiter {
            states: ArcSwap::from_pointee(HashMap::new()),
            shared,
        })
    }

    /// A limiter with local state only.
    pub fn local() -> Arc<Limiter> {
        Limiter::new(&LimitsBackend::Local)
    }

    fn state(&self, who: &str) -> Arc<TenantState> {
        if let Some(s) = self.states.load().get(who) {
            return s.clone();
        }
        // First request of this tenant since start-up: copy the map once.
        let mut made = None;
        self.states.rcu(|map| {
            let mut map = HashMap::clone(map);
            let s = map
                .entry(who.to_string())
                .or_insert_with(|| Arc::new(TenantState::default()))
                .clone();
            made = Some(s);
            map
        });
        made.unwrap_or_default()
    }

    /// Whether limits are served from Redis right now (`None`: local backend).
    pub fn shared_up(&self) -> Option<bool> {
        self.shared.as_ref().map(|s| s.is_up())
    }
}

/// An admitted request's hold on its tenant's limits; see the module docs.
pub struct Ticket {
    who: String,
    state: Arc<TenantState>,
    limits: TenantLimits,
    /// The shared backend, if configured (charges go there while it is up).
    shared: Option<Arc<shared::Shared>>,
    /// The Redis lease id, when one was taken.
    lease: Option<String>,
    /// The day's spend before this request: shared when Redis answered, else local.
    spend_today: f64,
    /// Whether the local state decided (Redis away or not configured): then the budget is
    /// this instance's share.
    local_share: f64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.in_flight.release();
        if let (Some(shared), Some(id)) = (self.shared.clone(), self.lease.take()) {
            let who = std::mem::take(&mut self.who);
            // Drop is synchronous and the release is a Redis call: sent on a task. Without a
            // runtime (never on the request path) the lease simply expires.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { shared.release(&who, &id, now_ms()).await });
            }
        }
    }
}

fn now_ms() -> u64 {
    local::now_us() / 1000
}

/// Who the request counts against, and their limits.
fn subject<'a>(class: &Class, table: &'a RoutingTable) -> Option<(String, &'a TenantLimits)> {
    match class.tenant {
        Some(t) => {
            let tenant = &table.tenants[t as usize];
            let limits = tenant.limits.as_ref()?;
            Some((format!("t:{}", tenant.name), limits))
        }
        None => {
            let limits = table.limits.admission.anonymous.as_ref()?;
            Some((ANONYMOUS.to_string(), limits))
        }
    }
}

/// The tenant's name for metrics and the admin API.
fn label(who: &str) -> &str {
    who.strip_prefix("t:").unwrap_or("anonymous")
}

fn limited(who: &str, reason: &'static str) {
    metrics::counter!(t::TENANT_LIMITED, "tenant" => label(who).to_string(), "reason" => reason)
        .increment(1);
}

/// Authentication, rate and concurrency: before the cache lookup. On success `slot` holds
/// the ticket (if the caller has limits).
pub async fn check(
    limiter: &Limiter,
    table: &RoutingTable,
    class: &Class,
    slot: &mut Option<Ticket>,
) -> Result<(), GatewayError> {
    if table.auth == AuthMode::Required && class.tenant.is_none() {
        let reason = if class.credential.is_some() {
            "unknown_key"
        } else {
            "missing_key"
        };
        metrics::counter!(t::AUTH_FAILURES, "reason" => reason).increment(1);
        return Err(GatewayError::Unauthenticated(reason));
    }
    // Allocation, only for callers with limits: the state key (one short string) and, with
    // Redis, the lease id and the script's key and argument strings.
    let Some((who, limits)) = subject(class, table) else {
        return Ok(());
    };
    let state = limiter.state(&who);
    let now_us = local::now_us();
    let rate = limits
        .requests_per_second
        .map(|r| local::gcra_params(r, limits.burst));

    // The in-flight count is this instance's, kept whichever state decides.
    if let Some(shared) = limiter
        .shared
        .as_ref()
        .filter(|s| s.available(now_us / 1000))
    {
        let lease_id = format!("{:016x}{:016x}", fastrand::u64(..), now_us);
        let tier_timeout = table.tiers[class.tier as usize].timeout;
        let ask = shared::Ask {
            who: &who,
            rate,
            max_concurrency: limits.max_concurrency,
            lease_id: &lease_id,
            // A lease outlives any request (its tier's timeout, with retries) and expires if
            // the instance holding it dies.
            lease_ttl: tier_timeout * 2 + Duration::from_secs(5),
            day: local::utc_day(now_us),
        };
        match shared.admit(&ask, now_us / 1000).await {
            Some(shared::Verdict::Rate(wait_us)) => {
                limited(&who, "rate");
                return Err(rate_limited(&who, wait_us));
            }
            Some(shared::Verdict::Concurrency) => {
                limited(&who, "concurrency");
                return Err(concurrency_limited(&who));
            }
            Some(shared::Verdict::Admitted { spend_today }) => {
                state.in_flight.try_acquire(None);
                state
                    .shared_spend
                    .store((spend_today * 1e6).round() as u64, Ordering::Release);
                state
                    .shared_day
                    .store(local::utc_day(now_us), Ordering::Release);
                let lease = limits.max_concurrency.map(|_| lease_id);
                *slot = Some(Ticket {
                    who,
                    state,
                    limits: limits.clone(),
                    shared: Some(shared.clone()),
                    lease,
                    spend_today,
                    local_share: 1.0,
                });
                return Ok(());
            }
            None => {} // Redis away: local limits below.
        }
    }

    // Local state: the whole limit, or this instance's share while the shared state is away.
    let share = match (&limiter.shared, table.limits.admission.instances) {
        (Some(_), Some(n)) => 1.0 / f64::from(n.max(1)),
        _ => 1.0,
    };
    if let Some(rps) = limits.requests_per_second {
        let burst = ((f64::from(limits.burst) * share).floor() as u32).max(1);
        let (interval, tolerance) = local::gcra_params(rps * share, burst);
        if let Err(wait_us) = state.rate.check(now_us, interval, tolerance) {
            limited(&who, "rate");
            return Err(rate_limited(&who, wait_us));
        }
    }
    let max = limits
        .max_concurrency
        .map(|c| ((f64::from(c) * share).floor() as u32).max(1));
    if !state.in_flight.try_acquire(max) {
        limited(&who, "concurrency");
        return Err(concurrency_limited(&who));
    }
    let spend_today = state.spend.today(now_us);
    *slot = Some(Ticket {
        who,
        state,
        limits: limits.clone(),
        shared: limiter.shared.clone(),
        lease: None,
        spend_today,
        local_share: share,
    });
    Ok(())
}

fn rate_limited(who: &str, wait_us: u64) -> GatewayError {
    GatewayError::RateLimited {
        tenant: label(who).to_string(),
        what: "request rate",
        retry_after: wait_us.div_ceil(1_000_000).max(1) as u32,
    }
}

fn concurrency_limited(who: &str) -> GatewayError {
    GatewayError::RateLimited {
        tenant: label(who).to_string(),
        what: "concurrent requests",
        retry_after: 1,
    }
}

/// The day's spend against the budget: after the cache lookup, for requests that will cost
/// something. Over budget: an error (`on_budget: reject`), or the class moves to the
/// downgrade tier (its deadline with it) and `tier_source` says so.
pub fn spend(
    ticket: Option<&Ticket>,
    table: &RoutingTable,
    class: &mut Class,
) -> Result<(), GatewayError> {
    let Some(ticket) = ticket else {
        return Ok(());
    };
    let Some(budget) = ticket.limits.spend_per_day_usd else {
        return Ok(());
    };
    let budget = budget * ticket.local_share;
    if ticket.spend_today < budget {
        return Ok(());
    }
    match ticket.limits.on_budget {
        OnBudget::Reject => {
            limited(&ticket.who, "budget");
            Err(GatewayError::BudgetExceeded {
                tenant: label(&ticket.who).to_string(),
                budget_usd: budget,
                retry_after: (local::until_midnight_us(local::now_us()) / 1_000_000).max(1) as u32,
            })
        }
        OnBudget::Downgrade(tier) => {
            limited(&ticket.who, "budget_downgrade");
            class.tier = tier;
            class.deadline = table.tiers[tier as usize].deadline;
            class.tier_source = TierSource::Budget;
            Ok(())
        }
    }
}

/// The request was answered at an estimated `usd`: add it to the tenant's day (locally at
/// once; in Redis on a task, so the access log is not held up).
pub fn charge(ticket: Option<&Ticket>, usd: f64) {
    let Some(ticket) = ticket else { return };
    if usd <= 0.0 {
        return;
    }
    let now_us = local::now_us();
    ticket.state.spend.add(now_us, usd);
    // While Redis is away the charge stays local (this instance's share is checked
    // against it); the shared day misses it.
    let shared = ticket.shared.clone().filter(|s| s.is_up());
    if let (Some(shared), Ok(rt)) = (shared, tokio::runtime::Handle::try_current()) {
        let who = ticket.who.clone();
        rt.spawn(async move {
            shared
                .charge(&who, local::utc_day(now_us), usd, now_us / 1000)
                .await
        });
    }
}

/// One tenant's limits and live state, for `GET /admin/tenants` and the gauges.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantReport {
    /// The tenant's name (`anonymous` for `limits.anonymous`).
    pub name: String,
    pub tier: String,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub spend_per_day_usd: Option<f64>,
    /// `reject` or `downgrade:TIER`.
    pub on_budget: Option<String>,
    /// Requests of the tenant in flight on this instance.
    pub in_flight: u32,
    /// Estimated spend today (UTC): the shared figure when Redis serves, else this instance's.
    pub spend_today_usd: f64,
    pub budget_remaining_usd: Option<f64>,
}

impl Limiter {
    /// Every tenant of `table` (and the anonymous callers when they have limits).
    pub async fn report(&self, table: &RoutingTable) -> Vec<TenantReport> {
        let mut subjects: Vec<(String, String, String, Option<&TenantLimits>)> = table
            .tenants
            .iter()
            .map(|t| {
                (
                    format!("t:{}", t.name),
                    t.name.clone(),
                    table.tiers[t.tier as usize].name.clone(),
                    t.limits.as_ref(),
                )
            })
            .collect();
        if let Some(l) = &table.limits.admission.anonymous {
            subjects.push((ANONYMOUS.into(), "anonymous".into(), "-".into(), Some(l)));
        }
        let now_us = local::now_us();
        let day = local::utc_day(now_us);
        let shared_spend = match self.shared.as_ref().filter(|s| s.is_up()) {
            Some(s) => {
                let who: Vec<String> = subjects.iter().map(|s| s.0.clone()).collect();
                s.spend_of(&who, day).await
            }
            None => None,
        };
        let states = self.states.load();
        subjects
            .iter()
            .enumerate()
            .map(|(i, (who, name, tier, limits))| {
                let state = states.get(who);
                let local_spend = state.map_or(0.0, |s| s.spend.today(now_us));
                let spend = shared_spend
                    .as_ref()
                    .and_then(|v| v.get(i).copied())
                    .unwrap_or(local_spend);
                let budget = limits.and_then(|l| l.spend_per_day_usd);
                TenantReport {
                    name: name.clone(),
                    tier: tier.clone(),
                    requests_per_second: limits.and_then(|l| l.requests_per_second),
                    burst: limits
                        .filter(|l| l.requests_per_second.is_some())
                        .map(|l| l.burst),
                    max_concurrency: limits.and_then(|l| l.max_concurrency),
                    spend_per_day_usd: budget,
                    on_budget: limits.filter(|l| l.spend_per_day_usd.is_some()).map(|l| {
                        match l.on_budget {
                            OnBudget::Reject => "reject".to_string(),
                            OnBudget::Downgrade(t) => {
                                format!("downgrade:{}", table.tiers[t as usize].name)
                            }
                        }
                    }),
                    in_flight: state.map_or(0, |s| s.in_flight.get()),
                    spend_today_usd: spend,
                    budget_remaining_usd: budget.map(|b| (b - spend).max(0.0)),
                }
            })
            .collect()
    }

    /// The backend, for the admin API: `local`, `redis`, or `redis (away: local limits)`.
    pub fn backend(&self) -> &'static str {
        match self.shared_up() {
            None => "local",
            Some(true) => "redis",
            Some(false) => "redis (away: local limits)",
        }
    }
}
