//! The `queue:` section: the batch queue's backend, limits, retry backoff, callback
//! allow-list and per-pool dispatch windows; and what the queue changes elsewhere (batch
//! pools become queue-fed, `on_slo_miss: queue` needs it).

use super::{duration_field, parse_size, Pool, Problems, MAX_BODY_LIMIT};
use crate::policy::raw::{self, OnSloMiss, PoolKind};
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The compiled `queue:` section (see `policy::raw::Queue` for what each field means).
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub max_jobs: u64,
    pub max_attempts: u32,
    pub result_ttl: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_body: usize,
    pub lease: Duration,
    /// Lower-case host names / addresses, or `*.suffix` patterns.
    pub callback_allow: Vec<String>,
    /// Dispatch rules by pool name.
    pub pools: HashMap<String, PoolDispatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// A redb file (absolute, or relative to the policy file when written).
    Embedded {
        path: PathBuf,
    },
    Redis {
        url: String,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolDispatch {
    /// Daily UTC window in minutes after midnight, `[start, end)`; wraps if start > end.
    pub window: Option<(u32, u32)>,
    pub max_utilisation: f64,
}

impl PoolDispatch {
    /// Whether batch work may be sent at `minute_of_day` (UTC).
    pub fn open_at(&self, minute_of_day: u32) -> bool {
        match self.window {
            None => true,
            Some((a, b)) if a <= b => (a..b).contains(&minute_of_day),
            Some((a, b)) => minute_of_day >= a || minute_of_day < b,
        }
    }
}

impl QueueSettings {
    /// Whether a callback may go to `host` (already lower-case).
    pub fn callback_allowed(&self, host: &str) -> bool {
        self.callback_allow
            .iter()
            .any(|pat| match pat.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }
                None => pat == host,
            })
    }
}

/// `queue:`, then marks batch pools as queue-fed and checks the tiers that fall back to it.
pub(super) fn compile(
    p: &mut Problems,
    raw: &raw::Policy,
    pools: &mut [Pool],
    file: &Path,
) -> Option<QueueSettings> {
    let queue = raw.queue.as_ref().map(|q| compile_queue(p, q, pools, file));
    if raw.queue.is_some() {
        for pool in pools.iter_mut().filter(|pool| pool.kind == PoolKind::Batch) {
            // (The dispatcher's attempts are the request path's: TLS and the pool's rewriting
            // apply to batch pools too, `upstream::fetch`.)
            pool.queue_fed = true;
        }
    }
    for (name, tier) in &raw.tiers {
        if tier.value.on_slo_miss == OnSloMiss::Queue && queue.is_none() {
            p.on(
                tier,
                format!("tier `{name}`: `on_slo_miss: queue` needs a `queue:` section"),
            );
        }
    }
    queue
}

fn compile_queue(
    p: &mut Problems,
    node: &Spanned<raw::Queue>,
    pools: &[Pool],
    file: &Path,
) -> QueueSettings {
    let q = &node.value;
    let dur = |p: &mut Problems, f: &Option<Spanned<String>>, what: &str, default: Duration| match f
    {
        Some(n) => duration_field(p, n, what),
        None => default,
    };
    let backend = match q.backend {
        raw::QueueBackend::Embedded => {
            if let Some(url) = &q.redis_url {
                p.on(url, "queue.redis_url: only used with `backend: redis`");
            }
            let written = q
                .path
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "switchyard-queue.redb".into());
            let path = Path::new(&written);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                file.parent().unwrap_or_else(|| Path::new(".")).join(path)
            };
            QueueBackend::Embedded { path }
        }
        raw::QueueBackend::Redis => {
            let url = match &q.redis_url {
                Some(n) if n.value.starts_with("redis://") => n.value.clone(),
                Some(n) => {
                    p.on(
                        n,
                        format!(
                            "queue.redis_url: expected `redis://host:port[/db]`, found `{}`",
                            n.value
                        ),
                    );
                    String::new()
                }
                None => {
                    p.on(node, "queue: `backend: redis` needs `redis_url`");
                    String::new()
                }
            };
            let prefix = q
                .redis_prefix
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "switchyard".into());
            QueueBackend::Redis { url, prefix }
        }
    };
    if q.max_jobs.value == 0 {
        p.on(&q.max_jobs, "queue.max_jobs must be at least 1");
    }
    if q.max_attempts.value == 0 || q.max_attempts.value > 100 {
        p.on(&q.max_attempts, "queue.max_attempts: expected 1 to 100");
    }
    let result_ttl = dur(
        p,
        &q.result_ttl,
        "queue.result_ttl",
        Duration::from_secs(24 * 3600),
    );
    let backoff_base = dur(
        p,
        &q.backoff.base,
        "queue.backoff.base",
        Duration::from_millis(500),
    );
    let backoff_max = dur(
        p,
        &q.backoff.max,
        "queue.backoff.max",
        Duration::from_secs(30),
    );
    if backoff_max < backoff_base {
        if let Some(n) = &q.backoff.max {
            p.on(n, "queue.backoff.max must not be below queue.backoff.base");
        }
    }
    let lease = dur(p, &q.lease, "queue.lease", Duration::from_secs(300));
    let max_body = match &q.max_body {
        None => 1024 * 1024,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s > 0 && s <= MAX_BODY_LIMIT => s,
            _ => {
                p.on(n, format!("queue.max_body: expected a size up to {MAX_BODY_LIMIT} bytes such as `1MiB`, found `{}`", n.value));
                0
            }
        },
    };
    let mut callback_allow = Vec::new();
    for host in &q.callback_allow {
        let h = host.value.trim().to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        if bare.is_empty()
            || (bare.contains(['/', ':', '*', ' ']) && bare.parse::<std::net::IpAddr>().is_err())
        {
            p.on(host, format!("queue.callback_allow: expected a host name, an address or `*.domain`, found `{}`", host.value));
            continue;
        }
        callback_allow.push(h);
    }
    let mut dispatch = HashMap::new();
    for (name, rule) in &q.pools {
        if !pools.iter().any(|pool| &pool.name == name) {
            p.on(rule, format!("queue.pools: unknown pool `{name}`"));
        }
        let window = rule.value.window.as_ref().and_then(|w| {
            let parsed = parse_window(&w.value);
            if parsed.is_none() {
                p.on(
                    w,
                    format!(
                        "queue.pools.{name}.window: expected `HH:MM-HH:MM` (UTC), found `{}`",
                        w.value
                    ),
                );
            }
            parsed
        });
        let max_utilisation = match &rule.value.max_utilisation {
            Some(u) if (0.0..=1.0).contains(&u.value) && u.value > 0.0 => u.value,
            Some(u) => {
                p.on(u, format!("queue.pools.{name}.max_utilisation: expected a fraction in (0, 1], found {}", u.value));
                1.0
            }
            None => 1.0,
        };
        dispatch.insert(
            name.clone(),
            PoolDispatch {
                window,
                max_utilisation,
            },
        );
    }
    QueueSettings {
        backend,
        max_jobs: q.max_jobs.value.max(1),
        max_attempts: q.max_attempts.value.clamp(1, 100),
        result_ttl,
        backoff_base,
        backoff_max,
        max_body,
        lease,
        callback_allow,
        pools: dispatch,
    }
}

/// `HH:MM-HH:MM` → minutes after midnight.
fn parse_window(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once('-')?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = (minutes(a)?, minutes(b)?);
    (a != b).then_some((a, b))
}
