//! The Redis job store: several gateway instances share one queue.
//!
//! Layout (every key under the policy's `redis_prefix`, `P` here):
//! - `P:job:{id}`: a hash with the job record (`rec`, the same binary encoding as the embedded
//!   store), its `status` and `scope`; it gets the result TTL when the job finishes, so Redis
//!   removes finished jobs itself;
//! - `P:stream:{pool}`: a stream per pool, one entry per dispatch of a job, read by the
//!   consumer group `dispatchers` (XREADGROUP); an entry is XACKed and XDELed when its
//!   attempt ends. Entries pending longer than `queue.lease` belonged to an instance that
//!   died: XAUTOCLAIM hands them to a live one;
//! - `P:delayed`: a sorted set of jobs backing off (score = when due), moved back into their
//!   stream when due;
//! - `P:idem:{scope hash}:{key}`: idempotency key → job id;
//! - `P:queued`, `P:running`: counters for `max_jobs` and the gauges.
//!
//! Every state change is one Lua script, so the status, the counters and the stream agree
//! even with several instances racing; a job only leaves `running` once (the first finisher
//! wins), which is what makes the result exactly-once from the client's view.
//!
//! Durability is Redis's: run it with `appendonly yes` (`appendfsync always` for the same
//! guarantee as the embedded store). Scripts touch keys they compute (one stream per pool),
//! so this backend targets a single Redis (or a primary with replicas), not Redis Cluster.
//! The dispatcher orders the jobs it reads by priority within each batch; across batches a
//! stream is first in, first out.

use super::resp::{Connection, RespError, Value};
use super::{unix_ms, Enqueued, Job, JobStatus, JobStore, QueueError, Stats};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

const GROUP: &str = "dispatchers";
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;

const ENQUEUE: &str = r#"
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {1, existing} end
end
local n = tonumber(redis.call('GET', KEYS[3]) or '0') + tonumber(redis.call('GET', KEYS[4]) or '0')
if n >= tonumber(ARGV[4]) then return {2, ''} end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'status', 'queued', 'scope', ARGV[3])
if ARGV[6] == '1' then redis.call('SET', KEYS[2], ARGV[5]) end
redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[5], '*', 'id', ARGV[5])
return {0, ARGV[5]}
"#;

const PROMOTE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
for _, m in ipairs(due) do
  if redis.call('ZREM', KEYS[1], m) == 1 then
    local nl = string.find(m, '\n', 1, true)
    if nl then
      redis.call('XADD', ARGV[2] .. string.sub(m, 1, nl - 1), '*', 'id', string.sub(m, nl + 1))
    end
  end
end
return #due
"#;

const CLAIM: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
  redis.call('DECR', KEYS[2])
  redis.call('INCR', KEYS[3])
  return 1
end
if st == 'running' and ARGV[1] == '1' then return 1 end
return 0
"#;

/// The running record of a job just claimed, written only while the job is still running:
/// between `CLAIM` and this write, the dispatcher whose lease ran out may have finished the
/// job, and an unconditional write would replace its result with a running record.
const SET_RUNNING_RECORD: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
return 1
"#;

const UPDATE: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if ARGV[6] ~= '' then
  redis.call('XACK', KEYS[5], ARGV[7], ARGV[6])
  redis.call('XDEL', KEYS[5], ARGV[6])
end
if st ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'status', ARGV[2])
redis.call('DECR', KEYS[3])
if ARGV[2] == 'queued' then
  redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  if ARGV[8] == '1' then redis.call('PEXPIRE', KEYS[6], ARGV[3]) end
end
return 1
"#;

const CANCEL: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'status', 'cancelled')
redis.call('DECR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return 1
"#;

fn err(e: RespError) -> QueueError {
    QueueError::Store(e.to_string())
}

/// The Redis-backed store.
pub struct RedisStore {
    url: String,
    prefix: String,
    /// This instance's consumer name in the group.
    consumer: String,
    idle: Mutex<Vec<Connection>>,
    /// Stream entry of each job this instance is running, to XACK when it finishes.
    entries: Mutex<HashMap<String, String>>,
    /// Pools seen, for the oldest-job statistic; groups already created.
    pools: Mutex<HashSet<String>>,
}

impl RedisStore {
    /// Connections are made lazily, so the gateway starts (and answers 503 for queued work)
    /// while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, QueueError> {
        super::resp::parse_url(url)
            .ok_or_else(|| QueueError::Store(format!("bad redis URL `{url}`")))?;
        Ok(RedisStore {
            url: url.to_string(),
            prefix: prefix.to_string(),
            consumer: format!("{}-{:08x}", std::process::id(), fastrand::u32(..)),
            idle: Mutex::new(Vec::new()),
            entries: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashSet::new()),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn idem_key(&self, job: &Job) -> String {
        let scope: [u8; 32] = Sha256::digest(job.scope.as_bytes()).into();
        let scope: String = scope[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.key(&[
            "idem",
            &scope,
            job.idempotency_key.as_deref().unwrap_or("-"),
        ])
    }

    /// Run one command on a pooled connection (a broken connection is dropped).
    async fn cmd(&self, args: &[&[u8]]) -> Result<Value, QueueError> {
        let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut conn = match conn {
            Some(c) => c,
            None => Connection::connect(&self.url).await.map_err(err)?,
        };
        match conn.cmd(args).await {
            Ok(v) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Ok(v)
            }
            // A server error leaves the connection usable; an I/O error does not.
            Err(RespError::Server(e)) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Err(QueueError::Store(format!("redis: {e}")))
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn eval(&self, script: &str, keys: &[&str], args: &[&[u8]]) -> Result<Value, QueueError> {
        let n = keys.len().to_string();
        let mut all: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), n.as_bytes()];
        all.extend(keys.iter().map(|k| k.as_bytes()));
        all.extend_from_slice(args);
        self.cmd(&all).await
    }

    async fn ensure_group(&self, pool: &str) -> Result<(), QueueError> {
        if self.pools.lock().map(|p| p.contains(pool)).unwrap_or(false) {
            return Ok(());
        }
        let stream = self.key(&["stream", pool]);
        match self
            .cmd(&[
                b"XGROUP",
                b"CREATE",
                stream.as_bytes(),
                GROUP.as_bytes(),
                b"0",
                b"MKSTREAM",
            ])
            .await
        {
            Ok(_) => {}
            Err(QueueError::Store(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        if let Ok(mut p) = self.pools.lock() {
            p.insert(pool.to_string());
        }
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<Job>, QueueError> {
        let key = self.key(&["job", id]);
        let v = self
            .cmd(&[b"HMGET", key.as_bytes(), b"rec", b"status"])
            .await?
            .into_array();
        let Some(rec) = v.first().and_then(Value::as_bytes) else {
            return Ok(None);
        };
        let mut job = Job::decode(rec)?;
        job.status = match v.get(1).and_then(Value::as_str) {
            Some("queued") => JobStatus::Queued,
            Some("running") => JobStatus::Running,
            Some("succeeded") => JobStatus::Succeeded,
            Some("failed") => JobStatus::Failed,
            Some("cancelled") => JobStatus::Cancelled,
            _ => job.status,
        };
        Ok(Some(job))
    }

    /// (entry id, job id) pairs of a stream reply's entries.
    fn entries_of(list: Vec<Value>) -> Vec<(String, String)> {
        list.into_iter()
            .filter_map(|e| {
                let mut e = e.into_array().into_iter();
                let entry = e.next()?.as_str()?.to_string();
                let fields = e.next()?.into_array();
                let pos = fields.iter().position(|f| f.as_str() == Some("id"))?;
                let id = fields.get(pos + 1)?.as_str()?.to_string();
                Some((entry, id))
            })
            .collect()
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn enqueue(&self, job: Job, max_jobs: u64) -> Result<Enqueued, QueueError> {
        self.ensure_group(&job.class.pool).await?;
        let rec = job.encode();
        let has_idem = if job.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        };
        let keys = [
            self.key(&["job", &job.id]),
            self.idem_key(&job),
            self.key(&["queued"]),
            self.key(&["running"]),
            self.key(&["stream", &job.class.pool]),
        ];
        let max = max_jobs.to_string();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let r = self
            .eval(
                ENQUEUE,
                &keys,
                &[
                    &rec,
                    b"queued",
                    job.scope.as_bytes(),
                    max.as_bytes(),
                    job.id.as_bytes(),
                    has_idem.as_bytes(),
                ],
            )
            .await?
            .into_array();
        match (
            r.first().and_then(Value::as_int),
            r.get(1).and_then(Value::as_str),
        ) {
            (Some(0), _) => Ok(Enqueued::Created(job)),
            (Some(1), Some(id)) => match self.load(id).await? {
                Some(existing) => Ok(Enqueued::Existing(existing)),
                None => Err(QueueError::Store("idempotency key points nowhere".into())),
            },
            (Some(2), _) => Err(QueueError::Full(max_jobs)),
            _ => Err(QueueError::Store("unexpected enqueue reply".into())),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, QueueError> {
        self.load(id).await
    }

    async fn cancel(
        &self,
        id: &str,
        scope: &str,
        ttl: Duration,
    ) -> Result<Option<Job>, QueueError> {
        let Some(mut job) = self.load(id).await? else {
            return Ok(None);
        };
        if job.scope != scope {
            return Ok(None);
        }
        if job.status != JobStatus::Queued {
            return Ok(Some(job));
        }
        let now = unix_ms();
        let before = job.clone();
        job.status = JobStatus::Cancelled;
        job.finished_ms = Some(now);
        job.expires_ms = Some(now + ttl.as_millis() as u64);
        let keys = [
            self.key(&["job", id]),
            self.key(&["queued"]),
            self.idem_key(&job),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let has_idem = if job.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        };
        let done = self
            .eval(
                CANCEL,
                &keys,
                &[&job.encode(), ttl_ms.as_bytes(), has_idem.as_bytes()],
            )
            .await?;
        if done.as_int() == Some(1) {
            Ok(Some(job))
        } else {
            // It started meanwhile.
            Ok(self.load(id).await?.or(Some(before)))
        }
    }

    async fn claim(&self, pool: &str, max: usize, lease: Duration) -> Result<Vec<Job>, QueueError> {
        self.ensure_group(pool).await?;
        let stream = self.key(&["stream", pool]);
        let prefix = self.key(&["stream", ""]);
        let now = unix_ms().to_string();
        self.eval(
            PROMOTE,
            &[&self.key(&["delayed"])],
            &[now.as_bytes(), prefix.as_bytes()],
        )
        .await?;
        let count = max.to_string();
        let lease_ms = lease.as_millis().max(1).to_string();
        // Entries a dead dispatcher left pending, then new ones.
        let mut found: Vec<(String, String, bool)> = Vec::new();
        let reclaimed = self
            .cmd(&[
                b"XAUTOCLAIM",
                stream.as_bytes(),
                GROUP.as_bytes(),
                self.consumer.as_bytes(),
                lease_ms.as_bytes(),
                b"0-0",
                b"COUNT",
                count.as_bytes(),
            ])
            .await?
            .into_array();
        if let Some(list) = reclaimed.into_iter().nth(1) {
            found.extend(
                Self::entries_of(list.into_array())
                    .into_iter()
                    .map(|(e, id)| (e, id, true)),
            );
        }
        if found.len() < max {
            let left = (max - found.len()).to_string();
            let read = self
                .cmd(&[
                    b"XREADGROUP",
                    b"GROUP",
                    GROUP.as_bytes(),
                    self.consumer.as_bytes(),
                    b"COUNT",
                    left.as_bytes(),
                    b"STREAMS",
                    stream.as_bytes(),
                    b">",
                ])
                .await?;
            // [[stream, [entries…]]] or nil
            for s in read.into_array() {
                if let Some(list) = s.into_array().into_iter().nth(1) {
                    found.extend(
                        Self::entries_of(list.into_array())
                            .into_iter()
                            .map(|(e, id)| (e, id, false)),
                    );
                }
            }
        }
        let mut jobs = Vec::new();
        let (queued, running) = (self.key(&["queued"]), self.key(&["running"]));
        for (entry, id, reclaimed) in found {
            let job_key = self.key(&["job", &id]);
            let flag: &[u8] = if reclaimed { b"1" } else { b"0" };
            let ok = self
                .eval(CLAIM, &[&job_key, &queued, &running], &[flag])
                .await?
                .as_int()
                == Some(1);
            let job = if ok { self.load(&id).await? } else { None };
            let Some(mut job) = job else {
                // Cancelled, finished or expired: this entry has nothing left to do.
                self.cmd(&[
                    b"XACK",
                    stream.as_bytes(),
                    GROUP.as_bytes(),
                    entry.as_bytes(),
                ])
                .await?;
                self.cmd(&[b"XDEL", stream.as_bytes(), entry.as_bytes()])
                    .await?;
                continue;
            };
            if reclaimed {
                tracing::warn!(job = %id, "taking over a job whose dispatcher did not finish it within the lease");
            }
            job.status = JobStatus::Running;
            job.attempts += 1;
            job.started_ms = Some(unix_ms());
            let still_running = self
                .eval(SET_RUNNING_RECORD, &[&job_key], &[&job.encode()])
                .await?
                .as_int()
                == Some(1);
            if !still_running {
                // Finished meanwhile by the dispatcher it was taken from: nothing to run.
                continue;
            }
            if let Ok(mut m) = self.entries.lock() {
                m.insert(id, entry);
            }
            jobs.push(job);
        }
        jobs.sort_by_key(|j| (j.priority, j.created_ms));
        Ok(jobs)
    }

    async fn update(&self, job: &Job) -> Result<(), QueueError> {
        let entry = self
            .entries
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&job.id))
            .unwrap_or_default();
        let keys = [
            self.key(&["job", &job.id]),
            self.key(&["queued"]),
            self.key(&["running"]),
            self.key(&["delayed"]),
            self.key(&["stream", &job.class.pool]),
            self.idem_key(job),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ttl_ms = job
            .expires_ms
            .map(|e| e.saturating_sub(unix_ms()).max(1))
            .unwrap_or(1)
            .to_string();
        let member = format!("{}\n{}", job.class.pool, job.id);
        let score = job.not_before_ms.to_string();
        let has_idem = if job.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        };
        self.eval(
            UPDATE,
            &keys,
            &[
                &job.encode(),
                job.status.as_str().as_bytes(),
                ttl_ms.as_bytes(),
                member.as_bytes(),
                score.as_bytes(),
                entry.as_bytes(),
                GROUP.as_bytes(),
                has_idem.as_bytes(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let q = self
            .cmd(&[b"GET", self.key(&["queued"]).as_bytes()])
            .await?;
        let r = self
            .cmd(&[b"GET", self.key(&["running"]).as_bytes()])
            .await?;
        let pools: Vec<String> = self
            .pools
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        let mut oldest: Option<u64> = None;
        for pool in pools {
            let stream = self.key(&["stream", &pool]);
            let head = self
                .cmd(&[b"XRANGE", stream.as_bytes(), b"-", b"+", b"COUNT", b"1"])
                .await?
                .into_array();
            let ms = head
                .into_iter()
                .next()
                .and_then(|e| e.into_array().into_iter().next())
                .and_then(|id| {
                    id.as_str()
                        .and_then(|s| s.split('-').next()?.parse::<u64>().ok())
                });
            if let Some(ms) = ms {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        Ok(Stats {
            queued: q.as_int().unwrap_or(0).max(0) as u64,
            running: r.as_int().unwrap_or(0).max(0) as u64,
            oldest_created_ms: oldest,
        })
    }

    async fn sweep(&self) -> Result<usize, QueueError> {
        Ok(0) // finished jobs carry a TTL; Redis removes them
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
