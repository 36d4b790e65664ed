//! A hedged request's losing attempt, cut short in the simulator as it is live: when the
//! first answer arrives, `hedge::run` drops the other attempt's future, which closes its
//! upstream connection and gives its in-flight slots back. Here the loser leaves its
//! endpoint's FIFO if it is still waiting, or frees its server at that moment (the server
//! time it would have had after the cut is taken back out of the pool's utilisation, and its
//! pending `Done` is void). A loser whose server finished before the winner's answer arrived
//! has nothing left to cut. What a loser is billed is what `hedge.rs` counts: the hedge's
//! estimated cost when the hedge is sent (see `System::hedge`), whichever attempt loses.

use super::{us, Engine, InFlight, PolicySystem, Request, Workload};
use std::collections::{HashMap, HashSet};
use switchyard_gateway::policy::compile::PoolId;

/// An attempt of a hedged request at an endpoint.
struct Entry {
    /// Fleet pool and endpoint.
    target: (usize, usize),
    /// Policy pool and endpoint (whose slots the attempt holds) and its overdue-tracking slot.
    policy: (PoolId, u16),
    slot: Option<u8>,
    /// When its server started and will finish; `None` while it waits in the FIFO.
    serving: Option<(u64, u64)>,
}

/// The attempts that may still be cut.
#[derive(Default)]
pub(super) struct Races {
    /// Per hedged request: its attempts still at an endpoint.
    at_endpoint: HashMap<u64, Vec<Entry>>,
    /// Attempts cut while a server worked on them, (request, fleet pool, endpoint): their
    /// `Done` is void.
    cut: HashSet<(u64, usize, usize)>,
}

impl Races {
    /// `f`, an attempt of a hedged request, is sent to its endpoint.
    pub(super) fn enter(&mut self, f: &InFlight) {
        let Some(&policy) = f.tried.last() else {
            return;
        };
        self.at_endpoint.entry(f.id).or_default().push(Entry {
            target: f.target,
            policy,
            slot: f.slot,
            serving: None,
        });
    }

    /// A server starts on `f` now, done at `end`.
    pub(super) fn started(&mut self, f: &InFlight, now: u64, end: u64) {
        if self.at_endpoint.is_empty() {
            return;
        }
        let entry = self
            .at_endpoint
            .get_mut(&f.id)
            .and_then(|v| v.iter_mut().find(|e| e.target == f.target));
        if let Some(e) = entry {
            e.serving = Some((now, end));
        }
    }

    /// `f`'s server is done: true if `f` was cut meanwhile (its server is free already).
    pub(super) fn void(&mut self, f: &InFlight) -> bool {
        if self.at_endpoint.is_empty() && self.cut.is_empty() {
            return false;
        }
        if self.cut.remove(&(f.id, f.target.0, f.target.1)) {
            return true;
        }
        if let Some(v) = self.at_endpoint.get_mut(&f.id) {
            v.retain(|e| e.target != f.target);
            if v.is_empty() {
                self.at_endpoint.remove(&f.id);
            }
        }
        false
    }
}

/// Take a server's time from `from` to `end` back out of `pool`'s busy time.
fn unbusy(w: &Workload, eng_stats: &mut [super::PhaseStats], pool: usize, from: u64, end: u64) {
    for (phase, s) in w.phases.iter().zip(eng_stats) {
        let (a, b) = (us(phase.start), us(phase.start + phase.len));
        let overlap = end.min(b).saturating_sub(from.max(a));
        s.busy_us[pool] = s.busy_us[pool].saturating_sub(overlap);
    }
}

impl PolicySystem {
    /// Request `req` (number `id`) has its answer: cut its other attempts still at an
    /// endpoint and give their slots back, as dropping `hedge::run`'s losing future does.
    pub(super) fn cut_losers(&mut self, eng: &mut Engine, req: &Request, id: u64, now: u64) {
        let Some(losers) = eng.races.at_endpoint.remove(&id) else {
            return;
        };
        let mut cut = 0u8;
        for l in losers {
            let (p, e) = l.target;
            match l.serving {
                None => {
                    let fifo = &mut eng.queues[p][e].waiting;
                    let Some(i) = fifo.iter().position(|f| f.id == id) else {
                        continue;
                    };
                    fifo.remove(i);
                }
                Some((_, end)) => {
                    eng.races.cut.insert((id, p, e));
                    unbusy(eng.w, &mut eng.stats, p, now, end);
                    let q = &mut eng.queues[p][e];
                    q.busy = q.busy.saturating_sub(1);
                    if let Some(next) = q.waiting.pop_front() {
                        eng.start(next, now);
                    }
                }
            }
            let pool = self.table.live.pool(l.policy.0);
            if let Some(slot) = l.slot {
                pool.untrack(slot);
            }
            pool.release();
            self.table
                .live
                .endpoint(l.policy.0, l.policy.1 as usize)
                .release();
            cut += 1;
        }
        eng.phase(req).hedges_cut += u64::from(cut);
        if let Some(state) = self.hedged.get_mut(&id) {
            state.1 = state.1.saturating_sub(cut);
            if state.1 == 0 {
                self.hedged.remove(&id);
            }
        }
    }
}
