//! Runtime resources a routing table names but does not hold: the GeoIP reader, the TLS
//! listener's certificate and the pools' upstream TLS material (CA roots, client
//! certificates). The table (`policy`) is plain data with the files' paths and where the
//! policy names them; [`Resources::load`] opens and checks them when a table is about to be
//! published (and `check` does the same), so a file that does not load rejects the policy
//! at its line and column, and the table serving keeps serving.
//!
//! The TLS listener's certificate is then served through [`ServingCert`] (one `ArcSwap` read
//! per handshake), which `tls::CertWatcher` replaces when the files change.

use super::geo::GeoDb;
use crate::policy::compile::{FileRef, GeoSource, RoutingTable, TlsListener};
use crate::policy::{PolicyError, PolicyErrors};
use crate::telemetry as t;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert, RootCertStore,
};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a published table uses beside its data.
pub struct Resources {
    /// The GeoIP database (`geoip.database`).
    pub geo: Arc<GeoDb>,
    /// The TLS listener's certificate pair as loaded for this table (`listeners.tls`).
    pub listener_cert: Option<Arc<CertifiedKey>>,
    /// Per pool, by index: the TLS material for its `https://` endpoints.
    pub pool_tls: Vec<Arc<PoolTls>>,
}

/// A pool's TLS material, loaded from its `tls:` files.
#[derive(Debug, Default)]
pub struct PoolTls {
    /// Roots to trust instead of the system's.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// Client certificate and key for mTLS.
    pub client: Option<Arc<CertKey>>,
}

impl Resources {
    /// Open every file `table` names; each one that does not load is an error at the place
    /// the policy names it.
    pub fn load(table: &RoutingTable) -> Result<Resources, PolicyErrors> {
        let mut errors = Vec::new();
        let geo = match &table.geoip {
            GeoSource::Embedded(at) => GeoDb::embedded().map_err(|e| match at {
                Some(at) => at.error(format!("geoip.database: {e}")),
                None => PolicyError {
                    file: table.source.clone(),
                    line: 1,
                    column: 1,
                    message: format!("geoip: {e}"),
                },
            }),
            GeoSource::File(f) => {
                GeoDb::open(&f.path).map_err(|e| f.error(format!("geoip.database: {e}")))
            }
        };
        let listener_cert = match &table.tls_listener {
            Some(l) => match load_certified(&l.cert.path, &l.key.path) {
                Ok(c) => Some(c),
                Err(why) => {
                    errors.push(l.cert.error(format!("listeners.tls: {why}")));
                    None
                }
            },
            None => None,
        };
        let mut pool_tls = Vec::with_capacity(table.pools.len());
        for pool in &table.pools {
            let spec = &pool.hosted.tls;
            let mut out = PoolTls::default();
            if let Some(ca) = &spec.ca {
                match load_ca(&ca.path) {
                    Ok(certs) => out.ca = Some(certs),
                    Err(why) => {
                        errors.push(ca.error(format!("pool `{}`: tls.ca: {why}", pool.name)))
                    }
                }
            }
            if let Some((cert, key)) = &spec.client {
                match load_client(cert, key) {
                    Ok(ck) => out.client = Some(Arc::new(ck)),
                    Err(why) => errors.push(cert.error(format!(
                        "pool `{}`: tls.client_cert/client_key: {why}",
                        pool.name
                    ))),
                }
            }
            pool_tls.push(Arc::new(out));
        }
        match geo {
            Ok(geo) if errors.is_empty() => Ok(Resources {
                geo: Arc::new(geo),
                listener_cert,
                pool_tls,
            }),
            Ok(_) => Err(PolicyErrors(errors)),
            Err(e) => {
                errors.push(e);
                Err(PolicyErrors(errors))
            }
        }
    }
}

/// A client certificate and key, as Pingora's connector takes them.
fn load_client(cert: &FileRef, key: &FileRef) -> Result<CertKey, String> {
    let (certs, key) = load_pair(&cert.path, &key.path)?;
    let ders = certs.iter().map(|c| c.as_ref().to_vec()).collect();
    let key = key.secret_der().to_vec();
    std::panic::catch_unwind(|| CertKey::new(ders, key))
        .map_err(|_| "not a certificate Pingora can use".to_string())
}

/// The CA certificates of a PEM file, each checked the way the handshake will use it.
pub fn load_ca(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
    let mut out = Vec::new();
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
        let cert = cert.map_err(|e| pem_error(path, e))?;
        store
            .add(cert.clone())
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
        let der = cert.as_ref().to_vec();
        let wrapped =
            std::panic::catch_unwind(|| WrappedX509::new(der, pingora::utils::tls::parse_x509))
                .map_err(|_| format!("{}: a certificate could not be parsed", path.display()))?;
        out.push(wrapped);
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(out.into())
}

/// A certificate chain and its private key, from PEM files.
pub fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    Ok((certs, key))
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM item of the expected kind", path.display())
        }
        _ => format!("{}: not valid PEM", path.display()),
    }
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
    /// Serve `cert`, loaded from the files `listener` names.
    pub fn new(listener: &TlsListener, cert: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(ServingCert {
            current: ArcSwap::new(cert),
            status: Mutex::new(CertStatus {
                cert_path: listener.cert.path.clone(),
                key_path: listener.key.path.clone(),
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
