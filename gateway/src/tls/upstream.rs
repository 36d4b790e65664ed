//! The gateway as a TLS client of its pools, and the request rewriting for hosted
//! endpoints: the two steps every upstream attempt shares (Pingora's proxy loop through
//! `proxy::http_peer` / `proxy::forward_headers`, the gateway's own sender in
//! `proxy::buffered`, and `hedge`).
//!
//! A TLS handshake that fails (the pool's certificate is not trusted, names another host,
//! or our client certificate is refused) is a configuration problem, not an outage: it is
//! answered as 502 `upstream_tls` saying why, and the endpoint is not ejected.

use crate::policy::compile::Endpoint;
use crate::policy::hosted::{Hosted, UpstreamTls};
use crate::serving::resources::PoolTls;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;

/// The peer for an `https://` endpoint: SNI and verification by `sni` (the host as
/// written), the pool's CA and client certificate, ALPN `h2` then `http/1.1`.
pub fn peer(addr: SocketAddr, sni: &str, tls: &UpstreamTls, material: &PoolTls) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, true, sni.to_string());
    peer.options.verify_cert = tls.verify;
    peer.options.verify_hostname = tls.verify;
    peer.options.ca = material.ca.clone();
    peer.client_cert_key = material.client.clone();
    peer.group_key = tls.group;
    peer.options.set_http_version(2, 1);
    peer
}

/// Apply a pool's rewriting to the upstream request `req`, built from the client's
/// `original` (so a second attempt, on the same or another pool, starts from the client's
/// request again): client credentials dropped when the pool brings its own, the pool's
/// headers set, `Host` overridden (the pool's `host:`, else an `https://` endpoint's own
/// host), the path prefixed.
pub fn rewrite(
    req: &mut RequestHeader,
    hosted: &Hosted,
    endpoint: &Endpoint,
    original: &RequestHeader,
) -> pingora::Result<()> {
    if hosted.strips_client_credentials {
        req.remove_header(&http::header::AUTHORIZATION);
        req.remove_header("x-api-key");
    }
    for (name, _, value) in &hosted.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    let host = match (&hosted.host, &endpoint.sni) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(_)) => http::HeaderValue::from_str(&endpoint.authority).ok(),
        (None, None) => None,
    };
    if host.is_none() && hosted.path_prefix.is_none() {
        return Ok(());
    }
    // An HTTP/2 upstream takes `:authority` from the URI when it has one, else from `Host`:
    // the URI becomes path-only and `Host` says where the request goes.
    let pq = original
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let path = match &hosted.path_prefix {
        Some(prefix) => format!("{prefix}{pq}"),
        None => pq,
    };
    let uri = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InternalError, "upstream path", e))?;
    let host = match host {
        Some(h) => Some(h),
        None => original
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                original
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            }),
    };
    req.set_uri(uri);
    if let Some(host) = host {
        req.insert_header(http::header::HOST, host)?;
    }
    Ok(())
}

/// Whether a failed connect was the TLS handshake (certificate or protocol), not TCP.
pub fn is_tls_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    )
}

/// What the client is told about a failed upstream TLS handshake (no secrets in it: the
/// peer address and rustls' reason).
pub fn reason(e: &Error) -> String {
    format!("TLS handshake with the pool failed: {e}")
}
