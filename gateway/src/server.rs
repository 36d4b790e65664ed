//! Wiring: a Pingora server with the proxy service, the admin service and the background
//! tasks, built from a compiled policy.
//!
//! This is start-up code: it may fail (bad listener address, metrics recorder already set)
//! and report why, but it holds nothing the request path needs beyond the snapshot.

use crate::admin::{AdminApp, ControlPlane};
use crate::policy::{self, RoutingTable};
use crate::proxy::Gateway;
use crate::route::state::Fleet;
use crate::telemetry;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyErrors),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot create the server: {0}")]
    Pingora(String),
}

/// How to start a gateway.
pub struct Options {
    /// Where the policy came from (reloads read it again); `None` for an embedded policy.
    pub policy_path: Option<PathBuf>,
    /// Overrides for the listeners the policy names.
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

/// A gateway ready to run.
pub struct Built {
    pub server: Server,
    pub control: Arc<ControlPlane>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Load the policy file and build the server.
pub fn build_from_file(opts: Options) -> Result<Built, ServerError> {
    let fleet = Fleet::new();
    let path = opts
        .policy_path
        .clone()
        .ok_or_else(|| ServerError::Pingora("no policy file".into()))?;
    let table = policy::load_file(&path, &fleet)?;
    build(table, fleet, opts)
}

/// Build the server around an already compiled table.
pub fn build(table: RoutingTable, fleet: Arc<Fleet>, opts: Options) -> Result<Built, ServerError> {
    let metrics = telemetry::install().map_err(|e| ServerError::Metrics(e.to_string()))?;
    let proxy_addr = opts.listen.unwrap_or(table.proxy_listener);
    let admin_addr = opts.admin_listen.unwrap_or(table.admin_listener);
    let threads = table
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    metrics::counter!(telemetry::POLICY_RELOADS, "result" => "ok").increment(1);

    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(10),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let snapshot = policy::snapshot(table);
    let control = Arc::new(ControlPlane {
        snapshot: snapshot.clone(),
        fleet,
        policy_path: opts.policy_path,
        last_error: Mutex::new(None),
    });

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(snapshot),
        "switchyard proxy",
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    if let Some(logic) = proxy.app_logic_mut() {
        logic.server_options = Some(options);
    }
    proxy.add_tcp(&proxy_addr.to_string());

    let mut admin = Service::new(
        "switchyard admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp {
            control: control.clone(),
            metrics: metrics.clone(),
        }),
    );
    admin.add_tcp(&admin_addr.to_string());
    admin.threads = Some(1);

    let upkeep = background_service("metrics upkeep", Upkeep(metrics));

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(upkeep);
    Ok(Built {
        server,
        control,
        proxy_addr,
        admin_addr,
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
