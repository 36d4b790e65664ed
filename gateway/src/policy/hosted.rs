//! What a pool needs to reach a hosted model endpoint: TLS to `https://` endpoints (CA,
//! client certificate, verification) and the per-pool request rewriting (`headers:` with
//! credentials from the environment, `host:`, `path_prefix:`), compiled once per policy.
//!
//! It owns two promises operators rely on:
//! - **Credentials are never shown.** Header values are kept as [`Redacted`] (printed `***`)
//!   and marked sensitive on the wire side; the admin API, `check`, `explain` and errors only
//!   ever see the header names.
//! - **A tenant's key does not leak to a third party.** A pool that sets `authorization`
//!   gets neither the client's `Authorization` nor its `x-api-key`.
//!
//! Everything here is built at load (files read, PEM parsed, certificates checked) so the
//! request path only copies prepared values; the TLS handshake itself happens when Pingora
//! opens a new upstream connection, and pooled connections keep it off the request path.

use super::raw;
use super::secret::{expand_template, Redacted};
use http::{HeaderName, HeaderValue};
use pingora::tls::{CertificateDer, PrivateKeyDer, RootCertStore};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use serde_saphyr::{Location, Spanned};
use std::path::Path;
use std::sync::Arc;

/// A pool's compiled edge settings (all empty for a plain in-house pool).
#[derive(Default)]
pub struct Hosted {
    /// Set (replacing) on every upstream request. Values are secrets.
    pub headers: Vec<(HeaderName, Redacted, HeaderValue)>,
    /// `Host` / `:authority` of upstream requests.
    pub host: Option<HeaderValue>,
    /// Prepended to the upstream path.
    pub path_prefix: Option<String>,
    /// The pool injects its own `authorization`: the client's credentials are dropped.
    pub strips_client_credentials: bool,
    /// TLS to the pool's `https://` endpoints.
    pub tls: Arc<UpstreamTls>,
}

/// TLS settings for a pool's `https://` endpoints.
pub struct UpstreamTls {
    /// Roots to trust instead of the system's.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// Client certificate and key for mTLS.
    pub client: Option<Arc<CertKey>>,
    pub verify: bool,
    /// Keeps the connections of pools with different trust settings apart in Pingora's
    /// connection pool (its reuse key does not include the CA).
    pub group: u64,
    /// The CA file as written, for the admin API.
    pub ca_file: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            ca: None,
            client: None,
            verify: true,
            group: 0,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("headers", &self.header_names())
            .field("host", &self.host)
            .field("path_prefix", &self.path_prefix)
            .finish_non_exhaustive()
    }
}

impl Hosted {
    /// The injected headers' names, each with `***` for its value: what the admin API,
    /// `explain` and logs may show.
    pub fn header_names(&self) -> Vec<(String, &'static str)> {
        self.headers
            .iter()
            .map(|(n, _, _)| (n.as_str().to_string(), "***"))
            .collect()
    }

    /// Whether the upstream request needs rewriting at all.
    pub fn rewrites(&self) -> bool {
        !self.headers.is_empty() || self.host.is_some() || self.path_prefix.is_some()
    }
}

/// Compile a pool's `headers:`, `host:`, `path_prefix:` and `tls:`. Problems are reported
/// through `problem` at the node to fix; values never appear in them.
pub fn compile(
    pool: &str,
    r: &raw::Pool,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problem: &mut dyn FnMut(&Location, String),
) -> Hosted {
    let mut hosted = Hosted::default();
    for (name, value) in &r.headers {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            problem(
                &value.referenced,
                format!("pool `{pool}`: headers: `{name}` is not a header name"),
            );
            continue;
        };
        if matches!(
            header.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            problem(
                &value.referenced,
                format!("pool `{pool}`: headers: `{name}` cannot be set here (use `host:` for the Host)"),
            );
            continue;
        }
        match expand_template(&value.value, env) {
            Ok(secret) => match HeaderValue::from_str(secret.expose()) {
                Ok(mut wire) => {
                    wire.set_sensitive(true);
                    if header == http::header::AUTHORIZATION {
                        hosted.strips_client_credentials = true;
                    }
                    hosted.headers.push((header, secret, wire));
                }
                Err(_) => problem(
                    &value.referenced,
                    format!("pool `{pool}`: headers.{name}: the expanded value is not a valid header value"),
                ),
            },
            Err(why) => problem(
                &value.referenced,
                format!("pool `{pool}`: headers.{name}: {why}"),
            ),
        }
    }
    if let Some(host) = &r.host {
        match HeaderValue::from_str(&host.value) {
            Ok(v) if !host.value.is_empty() && !host.value.contains(['/', '@', ' ']) => {
                hosted.host = Some(v)
            }
            _ => problem(
                &host.referenced,
                format!("pool `{pool}`: host: expected `name` or `name:port`"),
            ),
        }
    }
    if let Some(prefix) = &r.path_prefix {
        let v = prefix.value.trim_end_matches('/');
        if !prefix.value.starts_with('/')
            || v.contains(['?', '#', ' '])
            || http::uri::PathAndQuery::try_from(v).is_err()
        {
            problem(
                &prefix.referenced,
                format!(
                    "pool `{pool}`: path_prefix: expected a path such as `/openai/deployments/x`"
                ),
            );
        } else if !v.is_empty() {
            hosted.path_prefix = Some(v.to_string());
        }
    }
    if let Some(tls) = &r.tls {
        hosted.tls = Arc::new(compile_tls(pool, tls, base, problem));
    }
    hosted
}

fn compile_tls(
    pool: &str,
    node: &Spanned<raw::PoolTls>,
    base: &Path,
    problem: &mut dyn FnMut(&Location, String),
) -> UpstreamTls {
    let t = &node.value;
    let mut out = UpstreamTls {
        verify: t.verify,
        ..UpstreamTls::default()
    };
    out.group = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (pool, t.ca.as_ref().map(|c| &c.value)).hash(&mut h);
        (t.client_cert.as_ref().map(|c| &c.value), t.verify).hash(&mut h);
        h.finish()
    };
    if let Some(ca) = &t.ca {
        match load_ca(&base.join(&ca.value)) {
            Ok(certs) => {
                out.ca = Some(certs);
                out.ca_file = Some(ca.value.clone());
            }
            Err(why) => problem(&ca.referenced, format!("pool `{pool}`: tls.ca: {why}")),
        }
    }
    match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            match load_pair(&base.join(&cert.value), &base.join(&key.value)) {
                Ok((certs, key)) => {
                    let ders = certs.iter().map(|c| c.as_ref().to_vec()).collect();
                    let key = key.secret_der().to_vec();
                    match std::panic::catch_unwind(|| CertKey::new(ders, key)) {
                        Ok(ck) => out.client = Some(Arc::new(ck)),
                        Err(_) => problem(
                            &cert.referenced,
                            format!(
                                "pool `{pool}`: tls.client_cert: not a certificate Pingora can use"
                            ),
                        ),
                    }
                }
                Err(why) => problem(
                    &cert.referenced,
                    format!("pool `{pool}`: tls.client_cert/client_key: {why}"),
                ),
            }
        }
        (None, None) => {}
        _ => problem(
            &node.referenced,
            format!("pool `{pool}`: tls: `client_cert` and `client_key` go together"),
        ),
    }
    out
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
