//! Generation served as it is judged (issue 26), on real sockets against mocks that generate
//! like a model server (the head at once, the first token after a time to first token, then
//! one token per time per output token): a tier with a `ttft` objective sends streams to the
//! pool that starts first and judges them on their first token, while requests that wait for
//! the whole answer go to the pool that finishes first.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;
use switchyard_testkit::fleet::MockSpec;
use switchyard_testkit::mock::{Generation, MockBackend};

/// A generating mock: first token after `ttft_ms`, then one every `tpot_ms`, 10 tokens.
async fn generating(name: &str, ttft_ms: u64, tpot_ms: u64) -> MockBackend {
    let mut spec = MockSpec::new(name, Duration::ZERO, Duration::ZERO);
    spec.config.generation = Some(Generation {
        ttft: Duration::from_millis(ttft_ms),
        tpot: Duration::from_millis(tpot_ms),
        tokens: 10,
    });
    spec.start().await.expect("start mock")
}

fn stream_body() -> String {
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}]}"#.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_go_where_the_first_token_comes_first_and_plain_answers_where_they_finish_first() {
    // `starts`: first token in 30 ms, then 60 ms a token (570 ms in all); `finishes`: first
    // token in 250 ms, then 5 ms a token (295 ms in all).
    let starts = generating("starts", 30, 60).await;
    let finishes = generating("finishes", 250, 5).await;
    let policy = Policy::new()
        .pool(
            Pool::gpu("starts")
                .endpoint(starts.addr())
                .service_time("100ms"),
        )
        .pool(
            Pool::gpu("finishes")
                .endpoint(finishes.addr())
                .service_time("200ms"),
        )
        .tier(
            Tier::new("chat", "2s", 1.0, ["gpu"])
                .on_slo_miss("fastest")
                .with("ttft", "200ms"),
        )
        .routes([Route::chat().tier("chat")]);
    let gw = Gateway::start(&policy.render()).await;

    let mut log = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let r = gw.post("/v1/chat/completions", &[], &stream_body()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let streamed_to = r.header("x-switchyard-pool").unwrap_or("").to_string();
        log.push(format!(
            "stream #{i} → {streamed_to} ({:.0} ms, {})",
            started.elapsed().as_secs_f64() * 1e3,
            r.header("x-switchyard-decision").unwrap_or("")
        ));
        assert!(r.text().contains("data: [DONE]"), "{}", r.text());
        let r = gw.post("/v1/chat/completions", &[], &chat("m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let plain_to = r.header("x-switchyard-pool").unwrap_or("").to_string();
        log.push(format!(
            "plain #{i} → {plain_to} ({})",
            r.header("x-switchyard-decision").unwrap_or("")
        ));
        // Every stream to the quick starter (its first token measured from the first one on);
        // plain requests to the quick finisher once `starts` has the five samples after which
        // its measured service time (the whole stream, or the whole answer) replaces the
        // policy's 100 ms baseline.
        assert_eq!(streamed_to, "starts", "{}", log.join("\n"));
        if i >= 3 {
            assert_eq!(plain_to, "finishes", "{}", log.join("\n"));
        }
    }

    // Judged on the first token: every stream met the 200 ms objective (each took ~570 ms to
    // its last byte, which a 2 s deadline would not have shown either way).
    let m = gw
        .metrics_when(|m| {
            metric_sum(
                m,
                "switchyard_time_to_first_token_seconds_count",
                &[("pool", "starts")],
            ) >= 10.0
        })
        .await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_time_to_first_token_seconds_count",
            &[("pool", "starts"), ("tier", "chat"), ("model", "*")]
        ),
        10.0,
        "{m}"
    );
    let ttft_sum = metric_sum(
        &m,
        "switchyard_time_to_first_token_seconds_sum",
        &[("pool", "starts")],
    );
    assert!(ttft_sum / 10.0 < 0.2, "mean TTFT {ttft_sum} / 10: {m}");
    let tpot_sum = metric_sum(
        &m,
        "switchyard_time_per_output_token_seconds_sum",
        &[("pool", "starts")],
    );
    assert!(
        (0.045..0.09).contains(&(tpot_sum / 10.0)),
        "mean TPOT {} s, the mock's 60 ms: {m}",
        tpot_sum / 10.0
    );
    let status: Value =
        serde_json::from_slice(&gw.admin_get("/admin/status").await.body).expect("status json");
    let chat = status["tiers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "chat"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        chat["met_total"], 20,
        "streams met on TTFT, plain answers on the deadline: {chat}"
    );

    // A client may tighten the objective; a bad value is a 400 in OpenAI's error shape.
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-ttft-ms", "soon")],
            &stream_body(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("x-slo-ttft-ms"), "{}", r.text());
    // 1 ms: nothing meets it; the tier sends it to the fastest first token anyway (and it
    // counts as a miss).
    let r = gw
        .post(
            "/v1/chat/completions",
            &[("x-slo-ttft-ms", "1")],
            &stream_body(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-pool"), Some("starts"));
    assert!(
        r.header("x-switchyard-decision")
            .is_some_and(|d| d.starts_with("slo-miss")),
        "{:?}",
        r.header("x-switchyard-decision")
    );
}

/// One run of [`scraped_queue`]: two gateway instances share a `gpu` pool whose one server
/// runs 2 requests at once and queues the rest (100 ms each), and a `spill` pool that answers
/// in 165 ms; six clients (three per instance) send chats back to back for `secs`.
async fn shared_pool_run(scrape: bool, secs: u64) -> Run {
    let mut spec = MockSpec::new("gpu", Duration::from_millis(100), Duration::ZERO);
    spec.config.max_running = Some(2);
    let gpu = spec.start().await.expect("start mock");
    let spill = MockSpec::new("spill", Duration::from_millis(165), Duration::ZERO)
        .start()
        .await
        .expect("start mock");
    // The pool is what the server is, two at a time. The estimates: gpu 10 ms of network +
    // 100 ms × its two-server wait, so 110 ms idle, 147 ms with one in flight, 539 ms with
    // two, against spill's 175 ms: each instance alone sends the gpu server two at a time,
    // which is all it runs; two instances counting only their own send it four.
    let mut gpu_pool = Pool::gpu("gpu")
        .endpoint(gpu.addr())
        .service_time("100ms")
        .concurrency(2);
    if scrape {
        gpu_pool = gpu_pool.with("server_metrics", "{ interval: 20ms, max_age: 200ms }");
    }
    let policy = Policy::new()
        .pool(gpu_pool)
        .pool(
            Pool::gpu("spill")
                .endpoint(spill.addr())
                .service_time("165ms")
                .concurrency(64),
        )
        .tier(Tier::new("chat", "1s", 1.0, ["gpu"]).on_slo_miss("fastest"))
        .routes([Route::chat().tier("chat")]);
    let a = Gateway::start(&policy.render()).await;
    let b = Gateway::start(&policy.render()).await;
    if scrape {
        // Both instances have scraped the server before the clients start.
        for gw in [&a, &b] {
            gw.metrics_when(|m| {
                metric_sum(
                    m,
                    "switchyard_server_metrics_scrapes_total",
                    &[("pool", "gpu"), ("result", "ok")],
                ) >= 1.0
            })
            .await;
        }
        // Operators see what routing sees: the server's own queue per endpoint, and
        // nothing for a pool that is not scraped.
        let pools = a.pools().await;
        let endpoint = |pool: usize| pools["pools"][pool]["endpoints"][0]["server"].clone();
        assert_eq!(pools["pools"][0]["server_metrics"]["interval_ms"], 20);
        assert!(endpoint(0)["waiting"].is_u64(), "{}", pools["pools"][0]);
        assert!(endpoint(0)["kv_cache"].is_number(), "{}", pools["pools"][0]);
        assert!(endpoint(1).is_null(), "{}", pools["pools"][1]);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for c in 0..6 {
        let proxy = if c % 2 == 0 { a.proxy } else { b.proxy };
        clients.push(tokio::spawn(async move {
            let (mut gpu, mut all) = (0u32, 0u32);
            while Instant::now() < until {
                let body = chat("m");
                let req = switchyard_testkit::client::Request::post(
                    "/v1/chat/completions",
                    body.as_bytes(),
                )
                .header("content-type", "application/json");
                let r = switchyard_testkit::client::send(proxy, &req)
                    .await
                    .expect("answer");
                assert_eq!(r.status, 200, "{}", r.text());
                all += 1;
                gpu += u32::from(r.header("x-switchyard-pool") == Some("gpu"));
            }
            (gpu, all)
        }));
    }
    let (mut on_gpu, mut all) = (0, 0);
    for c in clients {
        let (g, n) = c.await.unwrap();
        on_gpu += g;
        all += n;
    }
    let stats = gpu.stats();
    gpu.shutdown();
    spill.shutdown();
    Run {
        peak_waiting: stats.peak_waiting,
        queued: stats.queued as f64 / stats.chat.max(1) as f64,
        on_gpu: f64::from(on_gpu) / f64::from(all.max(1)),
    }
}

/// What the gpu server saw in one [`shared_pool_run`].
struct Run {
    /// Most requests waiting at once.
    peak_waiting: u64,
    /// Share of its requests that waited for a slot.
    queued: f64,
    /// Share of all requests the gpu pool served.
    on_gpu: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_see_the_servers_own_queue_where_in_flight_counting_overshoots() {
    let counted = shared_pool_run(false, 3).await;
    let scraped = shared_pool_run(true, 3).await;
    eprintln!(
        "gpu server: counting in-flight {:.0} % of its requests queued (at most {} waiting; \
         {:.0} % of requests on gpu); scraping its metrics {:.0} % queued (at most {}; {:.0} %)",
        counted.queued * 100.0,
        counted.peak_waiting,
        counted.on_gpu * 100.0,
        scraped.queued * 100.0,
        scraped.peak_waiting,
        scraped.on_gpu * 100.0,
    );
    // Each instance alone keeps the server within its two running; together, counting only
    // their own requests, they queue more. Seeing the server's own queue (plus what they
    // sent since the last scrape), they queue a fraction of that (two decisions made in the
    // same instant on two instances can still both take the last slot).
    assert!(
        counted.queued > 0.2,
        "in-flight counting queued {:.2}",
        counted.queued
    );
    assert!(
        scraped.queued < counted.queued / 2.0,
        "scraped {:.2} vs counted {:.2}",
        scraped.queued,
        counted.queued
    );
    assert!(
        scraped.on_gpu > 0.1,
        "the gpu pool still served: {:.2}",
        scraped.on_gpu
    );
}

/// One run of [`multi_turn`]: `conversations` chats of `turns` turns each (each turn sends
/// the whole conversation so far, as chat clients do), `parallel` conversations at a time,
/// to a pool of four generating mocks with a prefix cache (first token in 200 ms cold, 40 ms
/// when the server answered the conversation's previous turn). Returns the answers' times
/// (ms, sorted), the prefix-cache hits and the most requests any server had at once.
async fn multi_turn(
    affinity: bool,
    conversations: usize,
    turns: usize,
    parallel: usize,
) -> (Vec<f64>, u64, (u64, u64, u64)) {
    let mut mocks = Vec::new();
    for i in 0..4 {
        let mut spec = MockSpec::new(format!("llm-{i}"), Duration::ZERO, Duration::ZERO);
        spec.config.generation = Some(Generation {
            ttft: Duration::from_millis(200),
            tpot: Duration::from_millis(1),
            tokens: 1,
        });
        spec.config.prefix_cache = Some(Duration::from_millis(40));
        mocks.push(spec.start().await.expect("start mock"));
    }
    let addrs: Vec<_> = mocks.iter().map(|m| m.addr()).collect();
    let mut pool = Pool::gpu("llm")
        .endpoints(&addrs)
        .service_time("200ms")
        .concurrency(256);
    if affinity {
        pool = pool.with("affinity", "{ prefix: true, load_factor: 1.25 }");
    }
    let policy = Policy::new()
        .pool(pool)
        .tier(Tier::new("chat", "10s", 1.0, ["gpu"]).on_slo_miss("fastest"))
        .routes([Route::chat().tier("chat")]);
    let gw = std::sync::Arc::new(Gateway::start(&policy.render()).await);
    let shown = &gw.pools().await["pools"][0]["affinity"];
    assert_eq!(shown.is_null(), !affinity, "{shown}");
    let body = serde_json::json!({"path": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}});
    let explained = gw.admin_post("/admin/explain", &body.to_string()).await;
    let by = explained.json().expect("explain json")["decision"]["endpoint_by"].clone();
    let expected = if affinity {
        "affinity_prefix"
    } else {
        "power_of_two_choices"
    };
    assert_eq!(by, expected, "{}", explained.text());
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (gw, next) = (gw.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if c >= conversations {
                    return times;
                }
                let mut messages = vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant for a parcel delivery company."})];
                for t in 0..turns {
                    messages.push(serde_json::json!({"role": "user", "content": format!("conversation {c}, question {t}")}));
                    let body = serde_json::json!({"model": "m", "max_tokens": 1, "messages": messages}).to_string();
                    let started = Instant::now();
                    let r = gw.post("/v1/chat/completions", &[], &body).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                    messages.push(serde_json::json!({"role": "assistant", "content": format!("answer {t}")}));
                }
            }
        }));
    }
    let mut times = Vec::new();
    for w in workers {
        times.extend(w.await.unwrap());
    }
    times.sort_by(f64::total_cmp);
    let hits = mocks.iter().map(|m| m.stats().prefix_hits).sum();
    let peak = mocks
        .iter()
        .map(|m| m.stats().peak_in_flight)
        .max()
        .unwrap_or(0);
    // Endpoints taken out of the choice (ejected after failures) make the mean, and so the
    // bound, larger for the rest: the run reports them with its peak.
    let metrics = gw.metrics().await;
    let ejected = metric_sum(&metrics, "switchyard_endpoint_ejections_total", &[]) as u64;
    let retried = metric_sum(&metrics, "switchyard_upstream_retries_total", &[]) as u64;
    for m in &mocks {
        m.shutdown();
    }
    (times, hits, (peak, ejected, retried))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_stay_on_the_server_that_has_their_prefix_within_a_load_bound() {
    // `SWITCHYARD_AFFINITY_RUN=200x5x16` for the measured run (conversations × turns ×
    // at a time); the bound below assumes 8 at a time.
    let run = std::env::var("SWITCHYARD_AFFINITY_RUN").unwrap_or_default();
    let n: Vec<usize> = run.split('x').filter_map(|n| n.parse().ok()).collect();
    let (conversations, turns, parallel) = match n[..] {
        [c, t, p] => (c, t, p),
        _ => (24, 5, 8),
    };
    let (without, hits_without, _) = multi_turn(false, conversations, turns, parallel).await;
    let (with, hits_with, (peak, ejected, retried)) =
        multi_turn(true, conversations, turns, parallel).await;
    let p50 = |t: &[f64]| t[t.len() / 2];
    eprintln!(
        "{conversations} conversations x {turns} turns, {parallel} at a time, 4 servers: \
         p50 {:.0} ms without affinity ({hits_without} prefix-cache hits), {:.0} ms with \
         ({hits_with} hits; most in flight on one server: {peak}; ejections {ejected}, \
         retries {retried})",
        p50(&without),
        p50(&with)
    );
    // Turns after the first find their prefix warm when they return to the same server.
    assert!(
        p50(&with) <= 0.5 * p50(&without),
        "p50 {:.0} ms with affinity vs {:.0} ms without",
        p50(&with),
        p50(&without)
    );
    assert!(
        hits_with >= (conversations * (turns - 1)) as u64 * 3 / 4,
        "{hits_with} hits"
    );
    // Bounded load: `parallel` in flight over the servers in the choice, factor 1.25: at
    // most ceil(1.25 × parallel / 4) (3 for 8), or over 3 while one was ejected.
    let servers = if ejected > 0 { 3.0 } else { 4.0 };
    let bound = (1.25 * parallel as f64 / servers).ceil() as u64;
    assert!(
        peak <= bound,
        "a server had {peak} in flight (bound {bound})"
    );
}
