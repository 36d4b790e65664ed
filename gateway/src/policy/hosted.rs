//! What a pool needs to reach a hosted model endpoint: TLS to `https://` endpoints (CA,
//! client certificate, verification) and the per-pool request rewriting (`headers:` with
//! credentials from the environment, `host:`, `path_prefix:`), compiled once per policy.
//!
//! It owns two promises operators rely on:
//! - **Credentials are never shown.** Header values are kept as [`Redacted`] (printed `***`)
//!   and marked sensitive on the wire side; the admin API, `check`, `explain` and errors only
//!   ever see the header names.
//! - **A client's credential does not leak to a third party.** A pool that injects any
//!   credential (a [`CLIENT_CREDENTIALS`] header, or any header whose value comes from the
//!   environment) gets none of the client's credential headers; and a tenant key the gateway
//!   consumed never leaves, whichever header it came in (`upstream::request`). `check`
//!   warns about an `https://` pool that would forward clients' credentials.
//!
//! Everything here is built at load so the request path only copies prepared values. The
//! certificate files are named here and loaded when the table is published
//! (`serving::resources`); the TLS handshake itself happens when a new upstream connection
//! is opened, and pooled connections keep it off the request path.

use super::compile::FileRef;
use super::raw;
use super::secret::{expand_template, Redacted};
use http::{HeaderName, HeaderValue};
use serde_saphyr::{Location, Spanned};
use std::path::Path;
use std::sync::Arc;

/// The request headers that carry a caller's credential (OpenAI's `Authorization: Bearer`,
/// Anthropic's and others' `x-api-key`, Azure OpenAI's `api-key`, and a proxy's): never
/// forwarded to a pool that brings its own, nor after the gateway consumed a tenant key.
pub const CLIENT_CREDENTIALS: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

/// A pool's compiled edge settings (all empty for a plain in-house pool).
#[derive(Default)]
pub struct Hosted {
    /// Set (replacing) on every upstream request. Values are secrets.
    pub headers: Vec<(HeaderName, Redacted, HeaderValue)>,
    /// `Host` / `:authority` of upstream requests.
    pub host: Option<HeaderValue>,
    /// Prepended to the upstream path.
    pub path_prefix: Option<String>,
    /// The pool injects a credential of its own: none of the client's
    /// [`CLIENT_CREDENTIALS`] are forwarded to it.
    pub injects_credential: bool,
    /// TLS to the pool's `https://` endpoints.
    pub tls: Arc<UpstreamTls>,
}

/// TLS settings for a pool's `https://` endpoints. The files are loaded when the table is
/// published (`serving::resources::PoolTls`).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// A PEM file of roots to trust instead of the system's.
    pub ca: Option<FileRef>,
    /// Client certificate and key files, for mTLS.
    pub client: Option<(FileRef, FileRef)>,
    pub verify: bool,
    /// Keeps the connections of pools with different trust settings apart in the upstream
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
    file: &Path,
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
                    // A named credential header, or any value taken from the environment
                    // (`${VAR}`: a secret), makes the pool bring its own credential.
                    if CLIENT_CREDENTIALS.contains(&header) || value.value.contains("${") {
                        hosted.injects_credential = true;
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
        hosted.tls = Arc::new(compile_tls(pool, tls, file, problem));
    }
    hosted
}

fn compile_tls(
    pool: &str,
    node: &Spanned<raw::PoolTls>,
    file: &Path,
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
        out.ca = Some(FileRef::beside(file, &ca.value, &ca.referenced));
        out.ca_file = Some(ca.value.clone());
    }
    match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            out.client = Some((
                FileRef::beside(file, &cert.value, &cert.referenced),
                FileRef::beside(file, &key.value, &key.referenced),
            ))
        }
        (None, None) => {}
        _ => problem(
            &node.referenced,
            format!("pool `{pool}`: tls: `client_cert` and `client_key` go together"),
        ),
    }
    out
}
