//! Readiness that another process cannot fake: `/readyz` says ready only once the proxy
//! listener answers with *this* process's instance id.
//!
//! Why: Pingora binds its listeners in the background when the server runs, and when the
//! address is taken it retries quietly for up to 30 s (then gives up on that service and the
//! process stays up). Meanwhile the admin listener answered `ready` and a client — a load
//! balancer, an orchestrator, a test — talked to whichever process held the port. Two
//! gateways started on the same port (the tests pick free ports by bind-and-release) thus
//! looked like one gateway whose jobs vanish: a job accepted (`202`) by the other process
//! was `404` once this one finally bound the port. Now:
//! - start-up refuses a listener address that is already in use (`server::check_listen`),
//!   with one clear error, instead of waiting;
//! - `/readyz` asks the proxy address for [`PATH`] and compares the answer with
//!   [`instance`] (128 random bits per process); anything else — nothing listening, another
//!   gateway, another program — is `503 not ready`. Once confirmed, the answer is kept: the
//!   listener does not change while the process lives.
//!
//! The proxy answers [`PATH`] before anything else (`proxy::request_filter`); it reveals
//! nothing but a random id.

use crate::queue::http::Outgoing;
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The path on the proxy listener that answers the instance id.
pub const PATH: &str = "/.well-known/switchyard/instance";

/// This process's instance id: 32 hex digits, random at start.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:032x}", fastrand::u128(..)))
}

/// The proxy's answer at [`PATH`].
pub fn body() -> Bytes {
    Bytes::from_static(instance().as_bytes())
}

/// Whether the process listening on the proxy address is this one.
pub struct Readiness {
    proxy: SocketAddr,
    confirmed: AtomicBool,
    /// Only a TLS listener: the probe speaks TLS to it (`tls::probe`).
    tls: Option<std::sync::Arc<crate::tls::ServingCert>>,
}

impl Readiness {
    pub fn new(proxy: SocketAddr) -> Self {
        // A wildcard listener is reached on loopback.
        let ip = match proxy.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Readiness {
            proxy: SocketAddr::new(ip, proxy.port()),
            // Port 0 (any free port, tests only) has no address to ask.
            confirmed: AtomicBool::new(proxy.port() == 0),
            tls: None,
        }
    }

    /// Probe the TLS listener at `addr`, which serves `cert` (no plain listener runs).
    pub fn tls(addr: SocketAddr, cert: std::sync::Arc<crate::tls::ServingCert>) -> Self {
        Readiness {
            tls: Some(cert),
            ..Readiness::new(addr)
        }
    }

    /// Ask the proxy address who it is (once it has answered correctly, not again).
    pub async fn proxy_is_ours(&self) -> bool {
        if self.confirmed.load(Ordering::Relaxed) {
            return true;
        }
        if let Some(cert) = &self.tls {
            let ours = crate::tls::probe(self.proxy, cert, Duration::from_secs(2)).await;
            if ours {
                self.confirmed.store(true, Ordering::Relaxed);
            }
            return ours;
        }
        let host = self.proxy.to_string();
        let req = Outgoing {
            method: "GET",
            path: PATH,
            host: &host,
            headers: &[],
            body: &[],
        };
        let second = Duration::from_secs(1);
        let ours = matches!(
            crate::queue::http::send(self.proxy, &req, second, second, 256).await,
            Ok(r) if r.status == 200 && r.body.as_ref() == instance().as_bytes()
        );
        if ours {
            self.confirmed.store(true, Ordering::Relaxed);
        }
        ours
    }

    /// The address probed.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }
}

/// Answer [`PATH`] on the proxy listener. Returns the status written.
pub async fn answer(session: &mut pingora::proxy::Session) -> pingora::Result<u16> {
    let body = body();
    let mut resp = pingora::http::ResponseHeader::build(200, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(200)
}
