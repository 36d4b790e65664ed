//! Wiring: a Pingora server with the proxy service, the admin service and the background
//! tasks, built from a compiled policy.
//!
//! This is start-up code: it may fail (bad listener address, metrics recorder already set)
//! and report why, but it holds nothing the request path needs beyond the snapshot.

use crate::admin::{AdminApp, ControlPlane};
use crate::pipeline::Gateway;
use crate::policy::{self, RoutingTable};
use crate::serving::reload::{HangupReloader, PolicyWatcher};
use crate::serving::resources::ServingCert;
use crate::serving::state::Fleet;
use crate::telemetry;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyErrors),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot create the server: {0}")]
    Pingora(String),
    #[error("cannot open the job queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, String),
}

/// Refuse a listener address that is already taken, at once and in one line: Pingora would
/// retry the bind quietly for 30 s while the admin API answered (see `admin::ready`).
/// Port 0 (any free port) cannot be taken.
fn check_listen(addr: SocketAddr) -> Result<(), ServerError> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| ServerError::Listen(addr, e.to_string()))
}

/// How to start a gateway.
pub struct Options {
    /// Where the policy came from (reloads read it again); `None` for an embedded policy.
    pub policy_path: Option<PathBuf>,
    /// Overrides for the listeners the policy names.
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// The region this instance runs in (`--region` / `SWITCHYARD_REGION`), overriding the
    /// policy's `gateway_region`; must name a region of the policy.
    pub region: Option<String>,
}

/// A gateway ready to run.
pub struct Built {
    pub server: Server,
    pub control: Arc<ControlPlane>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The trace exporter, flushed by [`Built::run_forever`] once the server has stopped.
    pub traces: crate::trace::Tracer,
    /// `listeners.shutdown_grace`, which also bounds that flush.
    pub shutdown_grace: Duration,
}

/// The longest the queued spans are waited for at shutdown (less when the grace period is).
const TRACE_FLUSH: Duration = Duration::from_secs(2);

impl Built {
    /// Serve until a shutdown signal, then drain as Pingora does (SIGTERM: stop accepting,
    /// the grace period, the runtimes stopped), export the spans still queued within
    /// `min(2 s, shutdown_grace)` (no wait when none is), and exit.
    pub fn run_forever(self) -> ! {
        self.server.run(pingora::server::RunArgs::default());
        self.traces.flush(TRACE_FLUSH.min(self.shutdown_grace));
        std::process::exit(0)
    }
}

/// Load the policy file and build the server.
pub fn build_from_file(opts: Options) -> Result<Built, ServerError> {
    let fleet = Fleet::new();
    let path = opts
        .policy_path
        .clone()
        .ok_or_else(|| ServerError::Pingora("no policy file".into()))?;
    // Kept in the fleet so that every reload compiles with the same instance region.
    fleet.set_gateway_region(opts.region.clone());
    let table = policy::load_file(&path, fleet.gateway_region())?;
    build(table, fleet, opts)
}

/// Build the server around an already compiled table.
pub fn build(table: RoutingTable, fleet: Arc<Fleet>, opts: Options) -> Result<Built, ServerError> {
    let metrics = telemetry::install().map_err(|e| ServerError::Metrics(e.to_string()))?;
    let proxy_addr = opts.listen.unwrap_or(table.proxy_listener);
    let admin_addr = opts.admin_listen.unwrap_or(table.admin_listener);
    if table.plain_listener {
        check_listen(proxy_addr)?;
    }
    if let Some(tls) = &table.tls_listener {
        check_listen(tls.listen)?;
    }
    check_listen(admin_addr)?;
    let keda_addr = table.keda_listener;
    if let Some(addr) = keda_addr {
        check_listen(addr)?;
    }
    if !admin_addr.ip().is_loopback() && table.admin_token.is_none() {
        // The policy's own address is checked at load; this is `--admin-listen`.
        return Err(ServerError::Listen(
            admin_addr,
            "the admin listener is not on loopback and the policy sets no listeners.admin_token"
                .into(),
        ));
    }
    let threads = table.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    metrics::counter!(telemetry::POLICY_RELOADS, "result" => "ok").increment(1);
    telemetry::instance_info(
        table
            .gateway_region
            .map_or("unknown", |g| table.regions[g as usize].as_str()),
    );

    // SIGTERM: Pingora stops accepting, then sleeps `grace_period_seconds` while requests in
    // flight finish, then shuts the runtimes down (tasks still running after that are
    // dropped; `graceful_shutdown_timeout_seconds` only bounds that shutdown itself).
    let shutdown_grace = table.shutdown_grace;
    let grace = shutdown_grace.as_secs_f64().ceil() as u64;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: crate::upstream::connect::KEEPALIVE_POOL,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    // The queue's backend is fixed at start-up (a reload that changes it is reported as
    // needing a restart); opening it recovers jobs a crash left running.
    let queue = match &table.queue {
        Some(settings) => Some(crate::queue::Queue::open(settings)?),
        None => None,
    };
    // The prediction cache is built once and outlives reloads (its size limits are fixed
    // at start-up); the proxy fills it and the admin API purges it.
    let cache = crate::cache::Cache::new(&table.cache);
    let table_access = table.access_log.clone();
    let decision_log = match &table.decision_log {
        Some((path, max)) => Some(
            crate::observe::decision::DecisionLog::start(path, *max).map_err(|e| {
                ServerError::Pingora(format!(
                    "cannot open the decision log {}: {e}",
                    path.display()
                ))
            })?,
        ),
        None => None,
    };
    // Tenant limit state lives beside the table and survives reloads; its backend (local or
    // Redis) is fixed at start-up.
    let limiter = crate::admit::Limiter::new(&table.limits.admission.backend);
    // Rollouts' state likewise: shared by the fleet on the limits' Redis, else this
    // instance's (and its state files).
    let rollouts = crate::rollout::Rollouts::with_backend(&table.limits.admission.backend);
    let tls_listener = table.tls_listener.clone();
    let plain = table.plain_listener;
    let snapshot = crate::serving::snapshot(table, fleet)?;
    // The TLS listener's certificate: served through a resolver so it can be replaced
    // without a restart (`tls`).
    let serving = match (&tls_listener, &snapshot.load().resources.listener_cert) {
        (Some(listener), Some(cert)) => Some(ServingCert::new(listener, cert.clone())),
        _ => None,
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.listen);
    let mut control = ControlPlane::new(snapshot.clone(), opts.policy_path);
    control.tls = serving.clone();
    let control = Arc::new(control);

    let access = crate::observe::AccessLog::start(&table_access.0, table_access.1)
        .map_err(|e| ServerError::Pingora(format!("cannot open the access log: {e}")))?;
    let gateway = Gateway::new(snapshot.clone())
        .with_queue(queue.clone())
        .with_cache(Some(cache.clone()))
        .with_access_log(access)
        .with_decision_log(decision_log)
        .with_limiter(limiter.clone())
        .with_rollouts(rollouts.clone());
    let bodies = gateway.body_budget();
    let traces = gateway.tracer();
    let shadows = gateway.shadows();
    let mut proxy = Service::new("switchyard proxy".to_string(), gateway);
    if plain {
        proxy.add_tcp(&proxy_addr.to_string());
    }
    if let (Some(serving), Some(addr)) = (&serving, tls_addr) {
        let settings = serving
            .settings()
            .map_err(|e| ServerError::Pingora(e.to_string()))?;
        proxy.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    // `/readyz` asks the plain listener, or the TLS one when it is the only one.
    let readiness = match (&serving, tls_addr) {
        (Some(serving), Some(addr)) if !plain => {
            crate::admin::ready::Readiness::tls(addr, serving.clone())
        }
        _ => crate::admin::ready::Readiness::new(proxy_addr),
    };

    let demand = Arc::new(crate::capacity::shared::SharedDemand::new(
        &snapshot.load().table.limits.admission.backend,
    ));
    let mut admin = Service::new(
        "switchyard admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp {
            control: control.clone(),
            metrics: metrics.clone(),
            cache: Some(cache),
            bodies: Some(bodies),
            readiness: Arc::new(readiness),
            limiter: Some(limiter),
            demand: Some(demand.clone()),
            shadows: Some(shadows),
            rollouts: Some(rollouts.clone()),
        }),
    );
    admin.add_tcp(&admin_addr.to_string());
    admin.threads = Some(1);

    let upkeep = background_service("metrics upkeep", Upkeep(metrics));
    // Active health checks; reads the current snapshot every round, so it follows reloads.
    let health = background_service(
        "health checks",
        crate::route::health::HealthChecker {
            snapshot: snapshot.clone(),
        },
    );

    // The model servers' own load, for pools with `server_metrics:`.
    server.add_service(background_service(
        "server load scraper",
        crate::upstream::scrape::LoadScraper {
            snapshot: snapshot.clone(),
        },
    ));

    if let Some(serving) = serving {
        server.add_service(background_service(
            "tls certificate watcher",
            crate::tls::CertWatcher {
                serving,
                snapshot: snapshot.clone(),
            },
        ));
    }
    server.add_service(proxy);
    server.add_service(admin);
    // Provisioned capacity accrues with time, busy or idle; utilisation is sampled with it.
    server.add_service(background_service(
        "spend meter",
        crate::observe::spend::SpendMeter {
            snapshot: snapshot.clone(),
        },
    ));
    // Desired replicas per pool with `capacity:`, from the fleet's demand (Redis when the
    // limits are shared); the KEDA external scaler serves them when `listeners.keda` is set.
    server.add_service(background_service(
        "capacity meter",
        crate::capacity::CapacityMeter {
            snapshot: snapshot.clone(),
            shared: demand.clone(),
        },
    ));
    // The fleet's rollout state: counts flushed and state read every 250 ms.
    if rollouts.is_shared() {
        server.add_service(background_service(
            "rollout sync",
            crate::rollout::RolloutSync {
                snapshot: snapshot.clone(),
                rollouts,
            },
        ));
    }
    if let Some(addr) = keda_addr {
        let mut keda = Service::new(
            "switchyard keda scaler".to_string(),
            crate::capacity::keda::KedaScaler::new(snapshot.clone()),
        );
        keda.add_tcp(&addr.to_string());
        keda.threads = Some(1);
        server.add_service(keda);
    }
    server.add_service(upkeep);
    server.add_service(health);
    if let Some(queue) = queue {
        server.add_service(background_service(
            "job dispatcher",
            crate::queue::dispatcher::Dispatcher::new(queue, snapshot),
        ));
    }
    // Endpoint host names are looked up again every `upstream.resolve_every`.
    server.add_service(background_service(
        "endpoint resolver",
        crate::serving::resolve::Resolver {
            control: control.clone(),
        },
    ));
    if let Some(path) = control.policy_path.clone() {
        // Reload triggers besides `POST /admin/reload`: the file changing, and SIGHUP.
        server.add_service(background_service(
            "policy watcher",
            PolicyWatcher {
                control: control.clone(),
                path,
            },
        ));
        server.add_service(background_service(
            "sighup reload",
            HangupReloader {
                control: control.clone(),
            },
        ));
    }
    Ok(Built {
        server,
        control,
        proxy_addr,
        admin_addr,
        traces,
        shutdown_grace,
    })
}

/// Drains histogram buffers of the Prometheus recorder now and then, so memory stays flat
/// between scrapes.
struct Upkeep(metrics_exporter_prometheus::PrometheusHandle);

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.run_upkeep(),
                _ = shutdown.changed() => break,
            }
        }
    }
}
