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
//! The proxy answers [`PATH`] before anything else (`pipeline::ready`); it reveals nothing
//! but a random id.

pub use crate::pipeline::ready::{instance, PATH};
use crate::serving::resources::ServingCert;
use crate::upstream::connect::{self, Timeouts};
use bytes::Bytes;
use pingora::http::RequestHeader;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether the process listening on the proxy address is this one.
pub struct Readiness {
    proxy: SocketAddr,
    confirmed: AtomicBool,
    /// Only a TLS listener: the probe speaks TLS to it ([`probe_tls`]).
    tls: Option<Arc<ServingCert>>,
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
    pub fn tls(addr: SocketAddr, cert: Arc<ServingCert>) -> Self {
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
        let second = Duration::from_secs(1);
        let ours = match &self.tls {
            Some(cert) => probe_tls(self.proxy, cert, 2 * second).await,
            None => {
                let host = self.proxy.to_string();
                let ask = async {
                    let mut req = RequestHeader::build("GET", PATH.as_bytes(), None)?;
                    req.insert_header(http::header::HOST, host.as_str())?;
                    let timeouts = Timeouts {
                        connect: second,
                        io: second,
                    };
                    let peer = connect::plain_peer(self.proxy, timeouts);
                    connect::request_once(&peer, &req, &Bytes::new(), 256).await
                };
                matches!(
                    tokio::time::timeout(2 * second, ask).await,
                    Ok(Ok((200, body))) if body.as_ref() == instance().as_bytes()
                )
            }
        };
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

/// Whether the TLS listener at `addr` is this process: a TLS handshake that must present
/// exactly the certificate being served (the probe trusts nothing else, and needs no CA),
/// then `GET` [`PATH`] and compare the instance id.
pub async fn probe_tls(addr: SocketAddr, serving: &ServingCert, timeout: Duration) -> bool {
    let Some(leaf) = serving.leaf() else {
        return false;
    };
    tokio::time::timeout(timeout, probe_inner(addr, leaf))
        .await
        .unwrap_or(false)
}

async fn probe_inner(addr: SocketAddr, leaf: Vec<u8>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    pingora::tls::install_default_crypto_provider();
    // Signatures are checked by rustls' own verifier (its roots do not matter for that).
    let mut roots = pingora::tls::RootCertStore::empty();
    if roots
        .add(pingora::tls::CertificateDer::from(leaf.clone()))
        .is_err()
    {
        return false;
    }
    let Ok(signatures) = pingora::tls::WebPkiServerVerifier::builder(Arc::new(roots)).build()
    else {
        return false;
    };
    let verifier = Arc::new(Pinned { leaf, signatures });
    let config = pingora::tls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connector = pingora::tls::TlsConnector::from(Arc::new(config));
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let name = pingora::tls::ServerName::IpAddress(addr.ip().into());
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        PATH
    );
    if tls.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = (&mut tls).take(4096).read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.starts_with("HTTP/1.1 200") && text.ends_with(instance())
}

/// Accepts exactly one certificate (the one this process serves); signatures are still
/// checked, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    leaf: Vec<u8>,
    signatures: Arc<pingora::tls::WebPkiServerVerifier>,
}

impl pingora::tls::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &pingora::tls::CertificateDer<'_>,
        _intermediates: &[pingora::tls::CertificateDer<'_>],
        _server_name: &pingora::tls::ServerName<'_>,
        _ocsp: &[u8],
        _now: pingora::tls::UnixTime,
    ) -> Result<pingora::tls::ServerCertVerified, pingora::tls::RusTlsError> {
        if end_entity.as_ref() == self.leaf.as_slice() {
            Ok(pingora::tls::ServerCertVerified::assertion())
        } else {
            Err(pingora::tls::RusTlsError::General(
                "not the certificate this gateway serves".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pingora::tls::CertificateDer<'_>,
        dss: &pingora::tls::DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pingora::tls::CertificateDer<'_>,
        dss: &pingora::tls::DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<pingora::tls::SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}
