//! Rollouts' state in Redis (`limits.backend: redis`, the server and prefix the limits and
//! the capacity demand use): the calls and their two Lua scripts. What is done with the
//! answers (adopt, decide, rejoin) is `mod.rs`'s.
//!
//! One hash per rolled-out model, `P:rollout:MODEL`: `canary` (the version rolled out: a hash
//! naming another canary is an earlier rollout's, replaced), `epoch` (+1 at every transition),
//! `step`, `phase`, `last` (why), `by` (the instance that applied it), the step's counts
//! summed over the instances (`c_n c_err c_slo c_cost` for the canary, `s_…` for the stable
//! version; cost in nano-USD) and `q:INSTANCE`, the last [`Batch`] of each instance added.
//! [`SYNC`] adds an instance's batch of deltas (only one counted under the hash's epoch: a
//! step's counts never leak into the next) and returns the state with the sums, seeding the
//! hash from the instance's own state when it has none. [`TRANSITION`] is the
//! compare-and-set: it applies a transition only if the epoch is still the one it was
//! decided on, and zeroes the counts. No TTL: the state outlives every instance.
//!
//! **A flush is idempotent.** A sync that times out on the client may still have run on
//! Redis, so resending its deltas as new ones would count that tick's requests twice (and
//! the SPRT would judge on them). So every batch an instance sends has a sequence number,
//! increasing over the process' life (one counter per [`Shared`], whatever the model), and
//! the script adds a batch only if its number is above the instance's `q:INSTANCE`, which it
//! then sets: a batch seen before is not added again but answered as added (`replayed`),
//! with the state. The caller sends the *same* batch (deltas, number, epoch) again until
//! one answer says it was added or refused (another epoch: those deltas are then the
//! caller's again); evidence counted meanwhile waits for a later batch, so no number ever
//! stands for two sets of deltas. Why this and not the alternatives: it is one field and
//! one comparison in the script already run, with no extra round trip (a two-phase
//! "reserve, then commit" would need one) and no TTL to tune (a set of applied batch ids
//! would). The cases: the script ran and the answer was late: the resend is replayed, added
//! once. It did not run (Redis paused or away, the connection dropped first): the resend
//! adds it. Redis lost the hash (a restart without persistence): the numbers went with the
//! counts they guard (one hash, written by one script), and the resend seeds a new hash and
//! is added there, once, as the only copy. An instance that restarts has a new random
//! instance id and so a new `q:` field starting from nothing; its old batches in flight
//! died with it (added once or not at all). The number needs no reset at a transition: a
//! batch of an earlier epoch is refused by the epoch check before its number is looked at,
//! so `q:` fields survive transitions and go only with the hash (a new canary): one small
//! field per instance start per rollout.

use super::{Counts, Phase};
use crate::redis::resp::Value;
use crate::redis::{Pool, RedisError, Script};
use crate::telemetry as t;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often each instance flushes its counts and reads the fleet's state.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// The sync's own timeout on Redis (no request waits for it), at least.
const SYNC_TIMEOUT: Duration = Duration::from_millis(500);

static SYNC: Script = Script::new(
    r#"
local F = {'c_n','c_err','c_slo','c_cost','s_n','s_err','s_slo','s_cost'}
local seeded = 0
if redis.call('HGET', KEYS[1], 'canary') ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'canary', ARGV[1], 'epoch', ARGV[14], 'step', ARGV[11],
    'phase', ARGV[12], 'last', ARGV[13], 'by', ARGV[15])
  seeded = 1
end
local added = 0
if seeded == 1 or redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  local q = 'q:' .. ARGV[15]
  if tonumber(ARGV[16]) <= tonumber(redis.call('HGET', KEYS[1], q) or '0') then
    added = 2
  else
    added = 1
    local any = false
    for i = 1, 8 do
      if ARGV[2 + i] ~= '0' then
        redis.call('HINCRBY', KEYS[1], F[i], ARGV[2 + i])
        any = true
      end
    end
    -- An empty batch is harmless twice: no write for it.
    if any then redis.call('HSET', KEYS[1], q, ARGV[16]) end
  end
end
local out = {seeded, added}
local got = redis.call('HMGET', KEYS[1], 'epoch', 'step', 'phase', 'last', 'by',
  F[1], F[2], F[3], F[4], F[5], F[6], F[7], F[8])
for i = 1, 13 do
  if got[i] then out[i + 2] = got[i] else out[i + 2] = '' end
end
return out
"#,
);

static TRANSITION: Script = Script::new(
    r#"
if redis.call('HGET', KEYS[1], 'canary') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return 0
end
local e = tonumber(ARGV[2]) + 1
redis.call('HSET', KEYS[1], 'epoch', e, 'step', ARGV[3], 'phase', ARGV[4], 'last', ARGV[5],
  'by', ARGV[6], 'c_n', 0, 'c_err', 0, 'c_slo', 0, 'c_cost', 0, 's_n', 0, 's_err', 0,
  's_slo', 0, 's_cost', 0)
return e
"#,
);

/// A step's counts of both versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair {
    pub canary: Counts,
    pub stable: Counts,
}

impl Pair {
    pub fn add(&mut self, other: &Pair) {
        self.canary.add(&other.canary);
        self.stable.add(&other.stable);
    }

    pub fn sum(&self, other: &Pair) -> Pair {
        let mut out = *self;
        out.add(other);
        out
    }

    fn fields(&self) -> [u64; 8] {
        let (c, s) = (&self.canary, &self.stable);
        [
            c.requests,
            c.errors,
            c.slo_misses,
            c.cost_nanousd,
            s.requests,
            s.errors,
            s.slo_misses,
            s.cost_nanousd,
        ]
    }

    fn from_fields(f: [u64; 8]) -> Pair {
        let counts = |i: usize| Counts {
            requests: f[i],
            errors: f[i + 1],
            slo_misses: f[i + 2],
            cost_nanousd: f[i + 3],
        };
        Pair {
            canary: counts(0),
            stable: counts(4),
        }
    }
}

/// A rollout's state as an instance proposes it (seed) or Redis holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub epoch: u64,
    pub step: usize,
    pub phase: Phase,
    pub last: String,
    /// The instance that applied it.
    pub by: String,
}

/// One instance's deltas as flushed to Redis: sent again, unchanged, until an answer says
/// whether they were added (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// This instance's number for it, above every earlier batch's.
    pub seq: u64,
    /// The epoch the deltas were counted under (`None`: under no epoch Redis knows).
    pub counted: Option<u64>,
    pub deltas: Pair,
}

/// What one [`SYNC`] found.
#[derive(Debug)]
pub struct Synced {
    /// Redis had no state for this rollout and took the instance's.
    pub seeded: bool,
    /// The batch's deltas are in the counts (counted under the hash's epoch, or seeded):
    /// added now, or by an earlier call whose answer was lost (`replayed`).
    pub added: bool,
    /// The batch had been added before: nothing was added this time.
    pub replayed: bool,
    pub held: Held,
    /// The step's counts summed over the instances (this one's deltas included if added).
    pub fleet: Pair,
}

/// The Redis backend of the rollouts and whether it answers.
pub struct Shared {
    pool: Pool,
    prefix: String,
    /// This instance's name in the state (`by`).
    pub instance: String,
    up: AtomicBool,
    /// The last batch number given out.
    seq: AtomicU64,
}

impl Shared {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Shared, RedisError> {
        metrics::gauge!(t::ROLLOUT_SHARED).set(1.0);
        Ok(Shared {
            pool: Pool::new(url, SYNC_TIMEOUT.max(timeout))?,
            prefix: prefix.to_string(),
            instance: format!("{:016x}", fastrand::u64(..)),
            up: AtomicBool::new(true),
            seq: AtomicU64::new(0),
        })
    }

    fn key(&self, model: &str) -> String {
        format!("{}:rollout:{model}", self.prefix)
    }

    /// Whether the last call answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!(t::ROLLOUT_SHARED).set(1.0);
            tracing::info!("redis is back: rollouts rejoin the fleet's state");
        }
    }

    fn failed(&self, op: &'static str, err: &RedisError) {
        metrics::counter!(t::ROLLOUT_REDIS_ERRORS, "op" => op).increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(t::ROLLOUT_SHARED).set(0.0);
            tracing::warn!(error = %err, op,
                "redis unreachable: rollouts decide on this instance's state (and state file) until it is back");
        }
    }

    /// A new batch of `deltas` counted under `counted`, numbered after every earlier one.
    pub fn batch(&self, counted: Option<u64>, deltas: Pair) -> Batch {
        Batch {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            counted,
            deltas,
        }
    }

    /// Add `batch` to `model`'s rollout of `canary` unless it was added before, seeding the
    /// rollout with `seed` when Redis has none; the state and sums.
    pub async fn sync(
        &self,
        model: &str,
        canary: &str,
        batch: &Batch,
        seed: &Held,
    ) -> Result<Synced, RedisError> {
        let key = self.key(model);
        let counted = batch
            .counted
            .map_or_else(|| "none".to_string(), |e| e.to_string());
        let deltas = batch.deltas.fields().map(|d| d.to_string());
        let seq = batch.seq.to_string();
        let (step, epoch) = (seed.step.to_string(), seed.epoch.to_string());
        let mut args: Vec<&[u8]> = vec![canary.as_bytes(), counted.as_bytes()];
        args.extend(deltas.iter().map(|d| d.as_bytes()));
        args.extend([
            step.as_bytes(),
            seed.phase.as_str().as_bytes(),
            seed.last.as_bytes(),
            epoch.as_bytes(),
            self.instance.as_bytes(),
            seq.as_bytes(),
        ]);
        let answer = match self.pool.eval(&SYNC, &[key.as_bytes()], &args).await {
            Ok(v) => v.into_array(),
            Err(e) => {
                self.failed("sync", &e);
                return Err(e);
            }
        };
        let parsed = parse_synced(&answer);
        match parsed {
            Some(s) => {
                self.succeeded();
                Ok(s)
            }
            None => {
                let e = RedisError::Resp(crate::redis::resp::RespError::Protocol(
                    "unexpected rollout sync reply".into(),
                ));
                self.failed("sync", &e);
                Err(e)
            }
        }
    }

    /// Apply `to` to `model`'s rollout of `canary` if its epoch is still `expected`: the new
    /// epoch, or `None` when another instance moved it first.
    pub async fn transition(
        &self,
        model: &str,
        canary: &str,
        expected: u64,
        to: (usize, Phase),
        why: &str,
    ) -> Result<Option<u64>, RedisError> {
        let key = self.key(model);
        let (expected, step) = (expected.to_string(), to.0.to_string());
        let args: [&[u8]; 6] = [
            canary.as_bytes(),
            expected.as_bytes(),
            step.as_bytes(),
            to.1.as_str().as_bytes(),
            why.as_bytes(),
            self.instance.as_bytes(),
        ];
        match self.pool.eval(&TRANSITION, &[key.as_bytes()], &args).await {
            Ok(v) => {
                self.succeeded();
                Ok(v.as_int().filter(|e| *e > 0).map(|e| e as u64))
            }
            Err(e) => {
                self.failed("transition", &e);
                Err(e)
            }
        }
    }
}

fn parse_synced(v: &[Value]) -> Option<Synced> {
    if v.len() != 15 {
        return None;
    }
    let int = |i: usize| -> Option<u64> {
        match &v[i] {
            Value::Int(n) => u64::try_from(*n).ok(),
            other => other.as_str()?.parse().ok(),
        }
    };
    let text = |i: usize| v[i].as_str().unwrap_or_default().to_string();
    let mut fields = [0u64; 8];
    for (i, f) in fields.iter_mut().enumerate() {
        // A count never written is 0.
        *f = int(7 + i).unwrap_or(0);
    }
    let added = int(1)?;
    Some(Synced {
        seeded: int(0)? == 1,
        added: added >= 1,
        replayed: added == 2,
        held: Held {
            epoch: int(2)?,
            step: int(3)? as usize,
            phase: Phase::parse(v[4].as_str()?)?,
            last: text(5),
            by: text(6),
        },
        fleet: Pair::from_fields(fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_reply_is_parsed_and_a_short_one_refused() {
        let b = |s: &str| Value::Bytes(s.as_bytes().to_vec());
        let mut reply = vec![
            Value::Int(0),
            Value::Int(1),
            b("4"),
            b("1"),
            b("running"),
            b("next step"),
            b("abc"),
        ];
        reply.extend((0..8).map(|i| b(&i.to_string())));
        let s = parse_synced(&reply).unwrap();
        assert!(!s.seeded && s.added && !s.replayed);
        assert_eq!(
            (s.held.epoch, s.held.step, s.held.phase),
            (4, 1, Phase::Running)
        );
        assert_eq!(s.fleet.canary.errors, 1);
        assert_eq!(s.fleet.stable.cost_nanousd, 7);
        reply[1] = Value::Int(2);
        let s = parse_synced(&reply).unwrap();
        assert!(s.added && s.replayed);
        assert!(parse_synced(&reply[..10]).is_none());
        reply[4] = b("sideways");
        assert!(parse_synced(&reply).is_none());
    }
}
