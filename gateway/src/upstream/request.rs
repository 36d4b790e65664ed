//! The request a backend gets, decided in one place.
//!
//! [`Prepared::new`] builds it once from the client's request: HTTP/1.1 (an HTTP/2 client's
//! `:authority` becomes `Host`), the whole body's length (gRPC over HTTP/2 frames its
//! messages itself and sends none), none of the hop-by-hop fields ([`HOP_BY_HOP`] and those
//! `Connection` names, RFC 9110 §7.6.1) nor `Expect` (the gateway answered the client's
//! `100-continue` and holds the whole body), and the client in `X-Forwarded-For`.
//! Credentials follow two rules (`policy::hosted::CLIENT_CREDENTIALS`): a tenant key the
//! gateway consumed never leaves, whichever header it came in; and a pool that injects a
//! credential of its own gets none of the client's.
//!
//! [`Prepared::for_attempt`] finishes it for one attempt: the pool's rewriting (its headers,
//! `Host`, path prefix; built from the client's request each time, so a retry on another
//! pool never carries the first pool's credentials) and the time left before the deadline.
//! The first attempt on a pool that rewrites nothing edits the prepared header in place: no
//! copy on the common path.

use crate::observe::text::push_ip;
use crate::policy::compile::{Endpoint, Pool};
use crate::policy::hosted::CLIENT_CREDENTIALS;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

/// The hop-by-hop fields (RFC 9110 §7.6.1) and `Expect`, removed from every upstream
/// request; `TE` is kept only as `trailers` (gRPC needs it).
pub const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    header::EXPECT,
];

/// The connection-specific fields an answer loses on its way to the client (HTTP/2 has
/// none: `Transfer-Encoding` there is a protocol error; over HTTP/1 the gateway frames the
/// body itself).
pub const ANSWER_HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
];

/// The deadline header: milliseconds left, so the backend can give up early too.
const DEADLINE: HeaderName = HeaderName::from_static("x-switchyard-deadline-ms");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The upstream request, prepared once per client request.
pub struct Prepared {
    /// The client's request as every backend gets it (before a pool's rewriting).
    header: RequestHeader,
    /// Whether the prepared header has been handed to an attempt already (then later
    /// attempts copy it instead of editing it).
    used: bool,
}

impl Prepared {
    /// Prepare the upstream request for `client` with a body of `len` bytes. `peer`: the
    /// client's address (appended to `X-Forwarded-For`); `consumed_key`: the gateway
    /// authenticated the caller by a tenant key.
    pub fn new(
        client: &RequestHeader,
        len: usize,
        grpc: bool,
        peer: Option<IpAddr>,
        consumed_key: bool,
    ) -> Result<Prepared> {
        let mut req = client.clone();
        req.set_version(http::Version::HTTP_11);
        if !req.headers.contains_key(header::HOST) {
            if let Some(authority) = client.uri.authority() {
                req.insert_header(header::HOST, authority.as_str())?;
            }
        }
        // The fields `Connection` names are hop-by-hop too (but never `Host` or the body's
        // type, which a confused client may list).
        let named: Vec<HeaderName> = client
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| ![header::HOST, header::CONTENT_TYPE].contains(name))
            .collect();
        for name in named.iter().chain(&HOP_BY_HOP) {
            req.remove_header(name);
        }
        let te_trailers = |v: &HeaderValue| v.as_bytes().eq_ignore_ascii_case(b"trailers");
        if req.headers.get(header::TE).is_some_and(|v| !te_trailers(v)) {
            req.remove_header(&header::TE);
        }
        if consumed_key {
            strip_credentials(&mut req);
        }
        if grpc {
            req.remove_header(&header::CONTENT_LENGTH);
        } else {
            req.insert_header(header::CONTENT_LENGTH, HeaderValue::from(len))?;
        }
        if let Some(peer) = peer {
            // (Without `core::fmt`: `Ipv4Addr`'s `Display` was a quarter of this function.)
            let mut xff = String::with_capacity(48);
            if let Some(prev) = client.headers.get(X_FORWARDED_FOR) {
                xff.push_str(prev.to_str().unwrap_or(""));
                xff.push_str(", ");
            }
            push_ip(&mut xff, peer);
            req.insert_header(X_FORWARDED_FOR, xff)?;
        }
        Ok(Prepared {
            header: req,
            used: false,
        })
    }

    /// Set `name` on every attempt's request (the trace's `traceparent`).
    pub fn set_header(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.header.insert_header(name, value)
    }

    /// The request for one attempt on `endpoint` of `pool`, with `left` before the deadline.
    pub fn for_attempt(
        &mut self,
        pool: &Pool,
        endpoint: &Endpoint,
        left: Duration,
    ) -> Result<Cow<'_, RequestHeader>> {
        let rewrites = pool.hosted.rewrites() || endpoint.sni.is_some();
        let ms = HeaderValue::from(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        if !rewrites && !self.used {
            self.used = true;
            self.header.insert_header(DEADLINE, ms)?;
            return Ok(Cow::Borrowed(&self.header));
        }
        self.used = true;
        let mut req = self.header.clone();
        rewrite(&mut req, pool, endpoint)?;
        req.insert_header(DEADLINE, ms)?;
        Ok(Cow::Owned(req))
    }
}

/// A split model's version as the backend knows it (`models.NAME.versions[]`): the path of
/// an OIP v2 or TF-Serving request with its model and version segments replaced, `None`
/// when the path is not one of theirs or nothing changes. `prefix` is `/v2/models/` or
/// `/v1/models/`; the query string is kept.
pub fn version_path(
    path_and_query: &str,
    prefix: &str,
    model: Option<&str>,
    version: Option<&str>,
) -> Option<String> {
    if model.is_none() && version.is_none() {
        return None;
    }
    let rest = path_and_query.strip_prefix(prefix)?;
    // The model segment ends at `/` (OIP v2: `/infer`, `/versions/…`) or `:` (TF-Serving:
    // `:predict`), or at the query.
    let end = rest.find(['/', ':', '?']).unwrap_or(rest.len());
    let (asked, mut tail) = rest.split_at(end);
    if let Some(after) = tail.strip_prefix("/versions/") {
        let v_end = after.find(['/', ':', '?']).unwrap_or(after.len());
        let client_version = &after[..v_end];
        tail = &after[v_end..];
        let v = version.unwrap_or(client_version);
        return Some(format!(
            "{prefix}{}/versions/{v}{tail}",
            model.unwrap_or(asked)
        ));
    }
    Some(match version {
        Some(v) => format!("{prefix}{}/versions/{v}{tail}", model.unwrap_or(asked)),
        None => format!("{prefix}{}{tail}", model.unwrap_or(asked)),
    })
}

/// An OpenAI JSON body with `model` replaced (`None`: not a JSON object). Re-serialised:
/// only for a split model's version that names an `upstream_model`.
pub fn version_body(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), serde_json::Value::String(model.into()));
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

impl Prepared {
    /// The path and query the backend gets.
    pub fn path_and_query(&self) -> &str {
        self.header
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
    }

    /// Send the request to this path (and query) instead of the client's.
    pub fn set_path(&mut self, path_and_query: &str) -> Result<()> {
        let uri = http::Uri::builder()
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| Error::because(ErrorType::InternalError, "upstream path", e))?;
        self.header.set_uri(uri);
        Ok(())
    }

    /// The body's length changed (a rewritten `model`).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if self.header.headers.contains_key(header::CONTENT_LENGTH) {
            self.header
                .insert_header(header::CONTENT_LENGTH, HeaderValue::from(len))?;
        }
        Ok(())
    }
}

/// Remove every client credential header.
fn strip_credentials(req: &mut RequestHeader) {
    for name in &CLIENT_CREDENTIALS {
        req.remove_header(name);
    }
}

/// Apply a pool's rewriting: the client's credentials dropped when the pool brings its own,
/// the pool's headers set, `Host` overridden (the pool's `host:`, else an `https://`
/// endpoint's own host), the path prefixed. An HTTP/2 upstream takes `:authority` from the
/// URI when it has one, else from `Host`: the URI becomes path-only and `Host` says where the
/// request goes.
fn rewrite(req: &mut RequestHeader, pool: &Pool, endpoint: &Endpoint) -> Result<()> {
    let hosted = &pool.hosted;
    if hosted.injects_credential {
        strip_credentials(req);
    }
    for (name, _, value) in &hosted.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    let host = match (&hosted.host, &endpoint.sni) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(_)) => HeaderValue::from_str(&endpoint.authority).ok(),
        (None, None) => None,
    };
    if host.is_none() && hosted.path_prefix.is_none() {
        return Ok(());
    }
    let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = match &hosted.path_prefix {
        Some(prefix) => format!("{prefix}{pq}"),
        None => pq.to_string(),
    };
    let host = host.or_else(|| {
        req.headers.get(header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
    });
    let uri = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InternalError, "upstream path", e))?;
    req.set_uri(uri);
    if let Some(host) = host {
        req.insert_header(header::HOST, host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_paths() {
        let oip = "/v2/models/";
        assert_eq!(
            version_path("/v2/models/m/infer", oip, None, Some("2")).as_deref(),
            Some("/v2/models/m/versions/2/infer")
        );
        assert_eq!(
            version_path(
                "/v2/models/m/versions/1/infer?x=1",
                oip,
                Some("up"),
                Some("2")
            )
            .as_deref(),
            Some("/v2/models/up/versions/2/infer?x=1")
        );
        assert_eq!(
            version_path("/v2/models/m/versions/1/infer", oip, Some("up"), None).as_deref(),
            Some("/v2/models/up/versions/1/infer")
        );
        let tf = "/v1/models/";
        assert_eq!(
            version_path("/v1/models/m:predict", tf, None, Some("7")).as_deref(),
            Some("/v1/models/m/versions/7:predict")
        );
        assert_eq!(
            version_path("/v1/models/m/versions/3:predict", tf, Some("n"), Some("7")).as_deref(),
            Some("/v1/models/n/versions/7:predict")
        );
        assert_eq!(version_path("/v1/models/m:predict", tf, None, None), None);
        assert_eq!(version_path("/other", tf, Some("n"), None), None);
    }

    #[test]
    fn version_body_replaces_model_only() {
        let b = version_body(br#"{"model":"chat","messages":[],"user":"u"}"#, "llama").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "llama");
        assert_eq!(v["user"], "u");
        assert!(version_body(b"[1]", "x").is_none());
    }

    fn client(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_never_leave() {
        let req = client(&[
            ("connection", "keep-alive, x-secret-hop, content-type"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "gzip"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-kept", "yes"),
        ]);
        let p = Prepared::new(&req, 12, false, Some([10, 0, 0, 9].into()), false).unwrap();
        let h = &p.header.headers;
        for gone in [
            "connection",
            "keep-alive",
            "x-secret-hop",
            "te",
            "expect",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["content-length"], "12");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        // `TE: trailers` is end-to-end for gRPC.
        let grpc = Prepared::new(&client(&[("te", "trailers")]), 5, true, None, false).unwrap();
        assert_eq!(grpc.header.headers["te"], "trailers");
        assert!(!grpc.header.headers.contains_key("content-length"));
    }

    #[test]
    fn a_consumed_tenant_key_never_leaves_whatever_header_it_came_in() {
        let creds = [
            ("authorization", "Bearer tenant-key"),
            ("x-api-key", "tenant-key"),
            ("api-key", "tenant-key"),
            ("proxy-authorization", "Basic abc"),
        ];
        let p = Prepared::new(&client(&creds), 0, false, None, true).unwrap();
        for (name, _) in creds {
            assert!(!p.header.headers.contains_key(name), "{name} was forwarded");
        }
        // Without a consumed key, an in-house pool gets the client's headers as sent.
        let p = Prepared::new(&client(&creds), 0, false, None, false).unwrap();
        assert_eq!(p.header.headers["authorization"], "Bearer tenant-key");
    }
}
