//! The model servers' own load: a Pingora background service that `GET`s each endpoint's
//! Prometheus metrics (`server_metrics.path`) at its pool's interval, through the upstream
//! connector (the pool's TLS settings included), and keeps requests waiting, running and
//! KV-cache use in the endpoint's live state (`serving::state::ServerLoad`).
//!
//! The router reads them with atomic loads: the server's queue replaces this instance's
//! in-flight count in the estimate and the endpoint choice (so several gateway instances
//! sharing a pool see the same load), and an endpoint over `max_waiting` / `max_kv_cache`
//! is avoided for tiers that may be shed or queued. A scrape that fails leaves the last
//! figures to go stale (`max_age`), after which the router counts in-flight again.
//!
//! Like the health checker it reads the current snapshot every round, so reloads take
//! effect at the next tick. Nothing here is on the request path.

use super::connect::{self, Timeouts};
use crate::policy::compile::{PoolId, ServerMetrics};
use crate::serving::state::{now_ms, LoadSample};
use crate::serving::{Serving, Snapshot};
use crate::telemetry as t;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the service looks for scrapes that are due.
const TICK: Duration = Duration::from_millis(10);
/// The largest metrics page read (vLLM's is tens of KB).
const MAX_PAGE: usize = 4 * 1024 * 1024;

/// The scraping service.
pub struct LoadScraper {
    pub snapshot: Snapshot,
}

#[async_trait]
impl BackgroundService for LoadScraper {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut due = crate::serving::ticker::Due::default();
        let mut ticker = crate::serving::ticker::Ticker::new(TICK, shutdown);
        loop {
            if !ticker.tick().await {
                break;
            }
            let table = self.snapshot.load_full();
            let now = Instant::now();
            for (id, pool) in table.pools.iter().enumerate() {
                let Some(m) = &pool.server_metrics else {
                    continue;
                };
                for (ep, endpoint) in pool.endpoints.iter().enumerate() {
                    if !endpoint.resolved {
                        continue;
                    }
                    if due.take(&pool.name, &endpoint.name, now, m.interval) {
                        tokio::spawn(scrape(table.clone(), id as PoolId, ep));
                    }
                }
            }
            due.forget_gone(table.pools.iter().map(|p| p.endpoints.len()).sum(), now);
        }
    }
}

/// One scrape of endpoint `ep` of pool `pool_id`.
async fn scrape(table: Arc<Serving>, pool_id: PoolId, ep: usize) {
    let pool = &table.pools[pool_id as usize];
    let (Some(m), Some(endpoint)) = (&pool.server_metrics, pool.endpoints.get(ep)) else {
        return;
    };
    let Some(tls) = table.resources.pool_tls.get(pool_id as usize) else {
        return;
    };
    // A scrape slower than its interval is late information: give up on it.
    let timeouts = Timeouts {
        connect: m.interval.max(Duration::from_millis(50)),
        io: m.interval.max(Duration::from_millis(50)),
    };
    let peer = connect::peer(pool, endpoint, tls, false, timeouts);
    let page = async {
        let mut req = RequestHeader::build("GET", m.path.as_bytes(), None).ok()?;
        req.insert_header(http::header::HOST, endpoint.authority.as_str())
            .ok()?;
        let (status, body) = connect::request_once(&peer, &req, &bytes::Bytes::new(), MAX_PAGE)
            .await
            .ok()?;
        (200..300).contains(&status).then_some(body)
    };
    let sample = match tokio::time::timeout(timeouts.io * 2, page).await {
        Ok(Some(body)) => parse(&String::from_utf8_lossy(&body), m),
        _ => None,
    };
    let result = match sample {
        Some(sample) => {
            let state = &table.live.endpoints(pool_id)[ep];
            state.server.set(sample, state.in_flight(), now_ms());
            "ok"
        }
        None => "error",
    };
    metrics::counter!(t::SERVER_SCRAPES, "pool" => pool.name.clone(), "result" => result)
        .increment(1);
}

/// The named gauges of a Prometheus text page, each summed over its label sets. `None` when
/// the page has neither the waiting nor the running gauge (not the server we were told).
pub fn parse(page: &str, m: &ServerMetrics) -> Option<LoadSample> {
    let (mut waiting, mut running, mut kv) = (None::<f64>, None::<f64>, None::<f64>);
    for line in page.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        let slot = if name == m.waiting {
            &mut waiting
        } else if name == m.running {
            &mut running
        } else if name == m.kv_cache {
            &mut kv
        } else {
            continue;
        };
        // `name{labels} value [timestamp]`: the value follows the labels.
        let rest = match line[name_end..].starts_with('{') {
            true => line.rfind('}').map_or("", |i| &line[i + 1..]),
            false => &line[name_end..],
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        {
            *slot = Some(slot.unwrap_or(0.0) + v);
        }
    }
    if waiting.is_none() && running.is_none() {
        return None;
    }
    let count = |v: Option<f64>| v.unwrap_or(0.0).clamp(0.0, f64::from(u32::MAX)).round() as u32;
    Some(LoadSample {
        waiting: count(waiting),
        running: count(running),
        kv_cache: kv.unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vllm() -> ServerMetrics {
        ServerMetrics {
            path: "/metrics".into(),
            interval: Duration::from_millis(200),
            max_age: Duration::from_secs(1),
            waiting: "vllm:num_requests_waiting".into(),
            running: "vllm:num_requests_running".into(),
            kv_cache: "vllm:kv_cache_usage_perc".into(),
            max_waiting: None,
            max_kv_cache: None,
        }
    }

    #[test]
    fn vllm_gauges_are_read_and_summed_over_label_sets() {
        let page = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"llama\"} 3.0\n\
vllm:num_requests_waiting{engine=\"1\",model_name=\"llama\"} 2.0\n\
vllm:num_requests_waiting_total 99\n\
vllm:num_requests_running{model_name=\"a}b\"} 7.0 1700000000000\n\
vllm:kv_cache_usage_perc{model_name=\"llama\"} 0.42\n";
        let s = parse(page, &vllm()).unwrap();
        assert_eq!(s.waiting, 5);
        assert_eq!(s.running, 7);
        assert!((s.kv_cache - 0.42).abs() < 1e-9);
    }

    #[test]
    fn other_servers_by_their_names_and_a_page_without_them_is_no_sample() {
        let mut tgi = vllm();
        tgi.waiting = "tgi_queue_size".into();
        tgi.running = "tgi_batch_current_size".into();
        let s = parse("tgi_queue_size 4\ntgi_batch_current_size 2\n", &tgi).unwrap();
        assert_eq!((s.waiting, s.running, s.kv_cache), (4, 2, 0.0));
        assert!(parse("tgi_queue_size 4\n", &vllm()).is_none());
    }
}
