//! The TLS listener (`listeners.tls`): the certificate it serves, reloading that
//! certificate without a restart, and the readiness probe that talks TLS to it.
//!
//! Pingora terminates TLS (its `rustls` feature: no C TLS library to build). Its listener
//! takes a rustls certificate resolver (`TlsSettings::set_cert_resolver`), so the gateway
//! hands it [`ServingCert`]: one `ArcSwap` of the certified key, read once per handshake
//! (never a lock the reload can hold). [`CertWatcher`] polls the certificate and key files
//! like the policy watcher polls the policy (same `Fingerprint`, same interval); a changed
//! pair is loaded and checked (PEM parses, the key signs, it matches the leaf certificate)
//! before it replaces the old one. A bad pair is refused: logged, counted
//! (`switchyard_tls_cert_reloads_total{result="error"}`) and shown in `/admin/policy`,
//! while the old certificate keeps serving. New connections get the new certificate;
//! established ones keep theirs.
//!
//! The listen address itself is fixed at start-up (a change is reported as needing a
//! restart, like the other listeners). TLS towards pools lives in [`upstream`].

pub mod upstream;

use crate::policy::hosted::load_pair;
use crate::policy::raw;
use crate::policy::reload::Fingerprint;
use crate::serving::Snapshot;
use crate::telemetry as t;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use serde_saphyr::{Location, Spanned};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The compiled `listeners.tls`.
#[derive(Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The pair as loaded (and checked) when the policy compiled.
    pub cert: Arc<CertifiedKey>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("listen", &self.listen)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Compile `listeners.tls`: the address, and the certificate pair loaded and checked (a
/// policy naming a pair that does not load is refused, like any other error in it).
pub fn compile(
    node: &Spanned<raw::TlsListener>,
    base: &Path,
    problem: &mut dyn FnMut(&Location, String),
) -> Option<TlsListener> {
    let t = &node.value;
    let listen = match t.listen.value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problem(
                &t.listen.referenced,
                format!(
                    "listeners.tls.listen: expected `ip:port`, found `{}`",
                    t.listen.value
                ),
            );
            None
        }
    };
    let cert_path = base.join(&t.cert.value);
    let key_path = base.join(&t.key.value);
    let cert = match load_certified(&cert_path, &key_path) {
        Ok(c) => Some(c),
        Err(why) => {
            problem(&t.cert.referenced, format!("listeners.tls: {why}"));
            None
        }
    };
    Some(TlsListener {
        listen: listen?,
        cert_path,
        key_path,
        cert: cert?,
    })
}

/// Load a certificate chain and its key and check that they belong together and that the
/// key can sign the handshake.
pub fn load_certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let (chain, key_der) = load_pair(cert, key)?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no TLS crypto provider installed".to_string())?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
        format!(
            "{} and {} are not a usable certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// What the certificate reloads did, for `/admin/policy`.
#[derive(Debug, Clone, Default)]
pub struct CertStatus {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// When the serving pair was loaded.
    pub loaded_at: Option<SystemTime>,
    /// Why the last attempt to load a changed pair failed (cleared by a good one).
    pub last_error: Option<String>,
}

/// The certificate the TLS listener serves: swapped whole on reload, read per handshake.
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    status: Mutex<CertStatus>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    pub fn new(listener: &TlsListener) -> Arc<Self> {
        Arc::new(ServingCert {
            current: ArcSwap::new(listener.cert.clone()),
            status: Mutex::new(CertStatus {
                cert_path: listener.cert_path.clone(),
                key_path: listener.key_path.clone(),
                loaded_at: Some(SystemTime::now()),
                last_error: None,
            }),
        })
    }

    /// The end-entity certificate being served (DER).
    pub fn leaf(&self) -> Option<Vec<u8>> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
    }

    pub fn status(&self) -> CertStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Load the pair at these paths; serve it when it is good, else keep the old one.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let result = load_certified(cert, key);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(pair) => {
                self.current.store(pair);
                *status = CertStatus {
                    cert_path: cert.to_path_buf(),
                    key_path: key.to_path_buf(),
                    loaded_at: Some(SystemTime::now()),
                    last_error: None,
                };
                metrics::counter!(t::TLS_CERT_RELOADS, "result" => "ok").increment(1);
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(why) => {
                status.last_error = Some(why.clone());
                metrics::counter!(t::TLS_CERT_RELOADS, "result" => "error").increment(1);
                tracing::error!(error = %why, "TLS certificate refused; the previous one keeps serving");
                Err(why)
            }
        }
    }

    /// Pingora's listener settings: this certificate, TLS 1.2 and 1.3, ALPN `h2` then
    /// `http/1.1`.
    pub fn settings(self: &Arc<Self>) -> pingora::Result<TlsSettings> {
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        Ok(settings)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Background service: reloads the TLS certificate when its files change (or when a policy
/// reload names other files).
pub struct CertWatcher {
    pub serving: Arc<ServingCert>,
    pub snapshot: Snapshot,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let paths = |s: &Snapshot| {
            s.load()
                .tls_listener
                .as_ref()
                .map(|l| (l.cert_path.clone(), l.key_path.clone()))
        };
        let print = |(c, k): &(PathBuf, PathBuf)| (Fingerprint::of(c), Fingerprint::of(k));
        let mut watched = paths(&self.snapshot);
        let mut seen = watched.as_ref().map(print);
        let mut tick = tokio::time::interval(crate::policy::reload::POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let now_paths = paths(&self.snapshot);
            let Some(current) = now_paths.clone() else {
                continue; // the policy dropped `tls`: the listener stays until a restart
            };
            let now = Some(print(&current));
            let files_missing = now
                .as_ref()
                .is_some_and(|(c, k)| c.is_none() || k.is_none());
            if (now_paths == watched && now == seen) || files_missing {
                continue;
            }
            // Let a writer that needs several writes (cert, then key) finish.
            tokio::time::sleep(crate::policy::reload::DEBOUNCE).await;
            seen = Some(print(&current));
            watched = now_paths;
            let serving = self.serving.clone();
            let _ =
                tokio::task::spawn_blocking(move || serving.reload(&current.0, &current.1)).await;
        }
    }
}

/// Whether the TLS listener at `addr` is this process: a TLS handshake that must present
/// exactly the certificate being served (the probe trusts nothing else, and needs no CA),
/// then `GET` [`crate::admin::ready::PATH`] and compare the instance id.
pub async fn probe(addr: SocketAddr, serving: &ServingCert, timeout: Duration) -> bool {
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
        crate::admin::ready::PATH
    );
    if tls.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = (&mut tls).take(4096).read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.starts_with("HTTP/1.1 200") && text.ends_with(crate::admin::ready::instance())
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
