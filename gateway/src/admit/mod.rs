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
//! With `limits.backend: redis` the state is shared by every instance through leases
//! refilled in the background (`shared.rs`: Redis stays off the request path); when Redis is
//! away, each instance enforces its local state (`local.rs`) with a 1/N share of every limit
//! when `limits.instances: N` is given.
//!
//! `tokens_per_minute` counts input + output tokens: a request is admitted while its
//! tenant's bucket is not empty and charged its body's bytes / 4 as an estimate; the answer's
//! `usage` (or its bytes) corrects the charge ([`used_tokens`]).
//!
//! Anonymous callers (no known key, `auth: optional`) share one set of limits,
//! `limits.anonymous`. Requests with no limits at all take no ticket and touch no state.

pub mod local;
pub mod shared;

use crate::classify::{Class, TierSource};
use crate::error::GatewayError;
use crate::policy::compile::RoutingTable;
use crate::policy::tenancy::{AuthMode, LimitsBackend, OnBudget, TenantLimits};
use crate::serving::by_name::{self, ByName};
use crate::telemetry as t;
use arc_swap::ArcSwap;
use local::{DailySpend, Gcra, InFlight, TokenBucket};
use std::collections::HashMap;
use std::sync::Arc;

/// The state key (and Redis key part) of anonymous callers; tenant names are prefixed with
/// `t:` so no tenant can collide with it.
const ANONYMOUS: &str = "-";

/// The live limit state of one tenant (or of the anonymous callers).
#[derive(Default)]
pub struct TenantState {
    rate: Gcra,
    tokens: TokenBucket,
    in_flight: InFlight,
    /// This instance's spend today.
    spend: DailySpend,
    /// This instance's leases of the shared limits (`limits.backend: redis`).
    lease: shared::Lease,
}

/// The live limit state of every tenant, and the shared backend if there is one.
pub struct Limiter {
    /// Copy on write: a tenant's state is created once (first request), read lock-free after.
    states: ByName<TenantState>,
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
        let limiter = Arc::new(Limiter {
            states: ArcSwap::from_pointee(HashMap::new()),
            shared,
        });
        if limiter.shared.is_some() {
            spawn_sync(Arc::downgrade(&limiter));
        }
        limiter
    }

    /// A limiter with local state only.
    pub fn local() -> Arc<Limiter> {
        Limiter::new(&LimitsBackend::Local)
    }

    /// A tenant's state (made at its first request since start-up).
    fn state(&self, who: &str) -> Arc<TenantState> {
        by_name::get_or_make(&self.states, who, |_| true, TenantState::default)
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
    /// Whether the shared leases admitted it (charges and tokens go to the lease).
    leased: bool,
    /// Tokens charged at admission (bytes / 4), corrected by [`used_tokens`].
    estimated_tokens: i64,
    /// The day's spend before this request: shared (as last synced) or local.
    spend_today: f64,
    /// Whether the local state decided (Redis away or not configured): then the budget is
    /// this instance's share.
    local_share: f64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A shared slot is the instance's; the loop gives unused ones back.
        self.state.in_flight.release();
    }
}

/// The shared limits' sync loop, on a thread and runtime of its own (a busy proxy runtime
/// must not delay the return to shared limits): every tenant seen lately, every
/// [`shared::SYNC_EVERY`] or when a request spent a lease below half. Ends with the limiter.
fn spawn_sync(limiter: std::sync::Weak<Limiter>) {
    let run = move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::error!("cannot start the tenant limits' sync loop: limits stay local");
            return;
        };
        rt.block_on(async move {
            loop {
                let Some(l) = limiter.upgrade() else { return };
                let Some(shared) = l.shared.clone() else {
                    return;
                };
                let now_us = local::now_us();
                let states = l.states.load_full();
                drop(l);
                let mut synced = false;
                for (who, state) in states.iter() {
                    if !state.lease.active(now_us / 1000) {
                        continue;
                    }
                    synced = true;
                    let caller = shared::Caller::Background;
                    if shared
                        .sync(who, &state.lease, &state.in_flight, now_us, caller)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if !synced {
                    let _ = shared.ping().await;
                }
                let _ = tokio::time::timeout(shared::SYNC_EVERY, shared.wake.notified()).await;
            }
        });
    };
    if let Err(e) = std::thread::Builder::new()
        .name("limits-sync".into())
        .spawn(run)
    {
        tracing::error!(error = %e, "cannot start the tenant limits' sync loop");
    }
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

/// Authentication, rate, tokens and concurrency: before the cache lookup. On success `slot`
/// holds the ticket (if the caller has limits). `body_bytes`: the request body's length, the
/// tokens estimate (bytes / 4) until the answer's `usage` corrects it.
pub async fn check(
    limiter: &Limiter,
    table: &RoutingTable,
    class: &Class,
    body_bytes: usize,
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
    // Allocation, only for callers with limits: the state key (one short string).
    let Some((who, limits)) = subject(class, table) else {
        return Ok(());
    };
    let state = limiter.state(&who);
    let now_us = local::now_us();
    let estimated_tokens = limits.tokens_per_minute.map_or(0, |_| {
        (body_bytes as u64).div_ceil(crate::route::tokens::BYTES_PER_TOKEN) as i64
    });
    let ticket = |leased: bool, spend_today: f64, local_share: f64| Ticket {
        who: who.clone(),
        state: state.clone(),
        limits: limits.clone(),
        leased,
        estimated_tokens,
        spend_today,
        local_share,
    };

    // Shared limits: this instance's leases (atomics); Redis only when a lease is empty.
    if let Some(shared) = limiter.shared.as_ref().filter(|s| s.is_up()) {
        match leased(shared, &who, &state, limits, estimated_tokens, now_us).await {
            Some(Ok(())) => {
                *slot = Some(ticket(true, state.lease.spend_today(), 1.0));
                return Ok(());
            }
            Some(Err(e)) => return Err(e),
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
    if let Some(tpm) = limits.tokens_per_minute {
        if let Err(wait_us) = state.tokens.check(now_us) {
            limited(&who, "tokens");
            return Err(tokens_limited(&who, wait_us));
        }
        let tpm = tpm as f64 * share;
        state
            .tokens
            .charge(now_us, local::token_cost_us(estimated_tokens, tpm));
    }
    let max = limits
        .max_concurrency
        .map(|c| ((f64::from(c) * share).floor() as u32).max(1));
    if !state.in_flight.try_acquire(max) {
        limited(&who, "concurrency");
        return Err(concurrency_limited(&who));
    }
    *slot = Some(ticket(false, state.spend.today(now_us), share));
    Ok(())
}

/// Admission on the tenant's leases of the shared limits. `None`: Redis did not answer a
/// refill; the caller falls back to local limits. On success the request holds a slot of
/// `state.in_flight`.
async fn leased(
    shared: &shared::Shared,
    who: &str,
    state: &TenantState,
    limits: &TenantLimits,
    estimated_tokens: i64,
    now_us: u64,
) -> Option<Result<(), GatewayError>> {
    use shared::Take;
    let lease = &state.lease;
    lease.touch(limits, now_us / 1000);
    // A refill on the request's path: only for an empty lease, at most one Redis call per
    // request (one that waited for another request's refill may still make its own).
    let mut refilled = false;
    while !lease.synced() && !refilled {
        refill(shared, who, state, now_us, (&mut refilled, "first")).await?;
    }
    if limits.requests_per_second.is_some() {
        loop {
            match lease.take_rate(now_us) {
                Take::Ok => break,
                Take::Limited(wait_us) => {
                    limited(who, "rate");
                    return Some(Err(rate_limited(who, wait_us)));
                }
                Take::Empty if !refilled => {
                    refill(shared, who, state, now_us, (&mut refilled, "rate")).await?
                }
                Take::Empty => {
                    limited(who, "rate");
                    return Some(Err(rate_limited(who, 1_000_000)));
                }
            }
        }
    }
    if limits.tokens_per_minute.is_some() {
        loop {
            match lease.has_tokens(now_us) {
                Take::Ok => break,
                Take::Limited(wait_us) => {
                    limited(who, "tokens");
                    return Some(Err(tokens_limited(who, wait_us)));
                }
                Take::Empty if !refilled => {
                    refill(shared, who, state, now_us, (&mut refilled, "tokens")).await?
                }
                Take::Empty => {
                    limited(who, "tokens");
                    return Some(Err(tokens_limited(who, 1_000_000)));
                }
            }
        }
        lease.spend_tokens(estimated_tokens);
    }
    if let Some(max) = limits.max_concurrency {
        while !state.in_flight.try_acquire(Some(lease.slots())) {
            // More slots are worth asking for only while the fleet may hold more.
            if refilled || lease.slots() >= max {
                limited(who, "concurrency");
                return Some(Err(concurrency_limited(who)));
            }
            refill(shared, who, state, now_us, (&mut refilled, "slots")).await?;
        }
        lease.saw_in_flight(state.in_flight.get());
    } else {
        state.in_flight.try_acquire(None);
    }
    if lease.low(limits) {
        shared.wake.notify_one();
    }
    Some(Ok(()))
}

/// One refill of `state`'s lease on a request's path, for its empty `lease` (`first`,
/// `rate`, `tokens`, `slots`); `refilled` is set when it asked Redis.
/// `None`: Redis did not answer.
async fn refill(
    shared: &shared::Shared,
    who: &str,
    state: &TenantState,
    now_us: u64,
    (refilled, lease): (&mut bool, &'static str),
) -> Option<()> {
    let caller = shared::Caller::Request(lease);
    let asked = shared
        .sync(who, &state.lease, &state.in_flight, now_us, caller)
        .await
        .ok()?;
    *refilled |= asked;
    Some(())
}

fn tokens_limited(who: &str, wait_us: u64) -> GatewayError {
    GatewayError::RateLimited {
        tenant: label(who).to_string(),
        what: "tokens per minute",
        retry_after: wait_us.div_ceil(1_000_000).max(1) as u32,
    }
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
/// once; to Redis with the lease's next sync).
pub fn charge(ticket: Option<&Ticket>, usd: f64) {
    let Some(ticket) = ticket else { return };
    if usd <= 0.0 {
        return;
    }
    ticket.state.spend.add(local::now_us(), usd);
    // Admitted on local limits (Redis away): the charge stays local (this instance's share
    // is checked against it); the shared day misses it.
    if ticket.leased {
        ticket.state.lease.charge(usd);
    }
}

/// The answer's tokens (`usage`, or estimated from its bytes): correct the estimate the
/// request was charged at admission.
pub fn used_tokens(ticket: Option<&Ticket>, input: u64, output: u64) {
    let Some(ticket) = ticket else { return };
    let Some(tpm) = ticket.limits.tokens_per_minute else {
        return;
    };
    let extra = (input + output) as i64 - ticket.estimated_tokens;
    if ticket.leased {
        ticket.state.lease.spend_tokens(extra);
    } else {
        let tpm = tpm as f64 * ticket.local_share;
        let now = local::now_us();
        ticket
            .state
            .tokens
            .charge(now, local::token_cost_us(extra, tpm));
    }
}

impl Ticket {
    /// Whether the answer's tokens count against a limit (the pipeline meters them).
    pub fn meters_tokens(&self) -> bool {
        self.limits.tokens_per_minute.is_some()
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
    pub tokens_per_minute: Option<u64>,
    pub spend_per_day_usd: Option<f64>,
    /// `reject` or `downgrade:TIER`.
    pub on_budget: Option<String>,
    /// Requests of the tenant in flight on this instance.
    pub in_flight: u32,
    /// Estimated spend today (UTC) as this instance checks it: the shared figure (as last
    /// synced, plus this instance's charges since) when Redis serves, else this instance's.
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
        let states = self.states.load();
        // Redis serving: what this instance checks budgets against (its lease's view), or for
        // a tenant it has not synced, the shared figure read now.
        let shared = self.shared.as_ref().filter(|s| s.is_up());
        let shared_spend = match shared {
            Some(s) => {
                let who: Vec<String> = subjects.iter().map(|s| s.0.clone()).collect();
                s.spend_of(&who, local::utc_day(now_us)).await
            }
            None => None,
        };
        subjects
            .iter()
            .enumerate()
            .map(|(i, (who, name, tier, limits))| {
                let state = states.get(who);
                let read = shared_spend.as_ref().and_then(|v| v.get(i).copied());
                let spend = match (state, read) {
                    (Some(s), _) if shared.is_some() && s.lease.synced() => s.lease.spend_today(),
                    (_, Some(read)) => read,
                    (Some(s), None) => s.spend.today(now_us),
                    (None, None) => 0.0,
                };
                let budget = limits.and_then(|l| l.spend_per_day_usd);
                TenantReport {
                    name: name.clone(),
                    tier: tier.clone(),
                    requests_per_second: limits.and_then(|l| l.requests_per_second),
                    burst: limits
                        .filter(|l| l.requests_per_second.is_some())
                        .map(|l| l.burst),
                    max_concurrency: limits.and_then(|l| l.max_concurrency),
                    tokens_per_minute: limits.and_then(|l| l.tokens_per_minute),
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
