//! The framework's ceiling, for the load benchmark: a Pingora proxy with no logic at all
//! (fixed upstream, default filters), built with the same allocator and thread count as the
//! gateway. `benches/load.sh` runs it beside the gateway and nginx so the report separates
//! what Pingora itself costs from what Switchyard's classification and routing add.
//!
//! With a `STATIC_BODY` file it answers every request itself from `request_filter`, after
//! reading the request body, with that file as a JSON body: the framework's ceiling for an
//! answer from memory, which `MODE=cache benches/load.sh` runs beside the cache hits.
//!
//! `bare_pingora LISTEN UPSTREAM [THREADS] [STATIC_BODY]`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(SocketAddr, Option<bytes::Bytes>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _c: &mut ()) -> Result<bool> {
        let Some(body) = &self.1 else {
            return Ok(false);
        };
        while session.read_request_body().await?.is_some() {}
        let mut resp = pingora::http::ResponseHeader::build(200, Some(2))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1).and_then(|a| a.parse().ok()))
    else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM [THREADS] [STATIC_BODY]");
        std::process::exit(2);
    };
    let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let static_body = match args.get(3).map(std::fs::read) {
        None => None,
        Some(Ok(body)) => Some(bytes::Bytes::from(body)),
        Some(Err(e)) => {
            eprintln!("bare_pingora: the static body: {e}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 1024,
        // Shutdown only (the benches stop it with SIGTERM): no effect on a request.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream, static_body));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
