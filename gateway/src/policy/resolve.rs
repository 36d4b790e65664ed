//! Host names in `pools[].endpoints`: resolved when a policy compiles, and again every
//! `upstream.resolve_every` while the gateway serves.
//!
//! What the rest of the gateway can rely on:
//! - **Every address of a name is an endpoint** (a Kubernetes headless service names its
//!   pods that way). Such an endpoint is labelled `host:port@ip` in metrics, headers and the
//!   admin API; its live state (EWMA, in-flight, ejections) is kept by that label in the
//!   `serving::state::Fleet` (attached when the table is published, `crate::serving`), so an
//!   address that stays across a re-resolution keeps its measurements, a new one starts from
//!   the pool's baseline, and a removed one simply leaves the table (requests already on it
//!   finish with the state they hold).
//! - **A failed lookup keeps the last good addresses** of that name (remembered for the
//!   process in [`LAST_GOOD`]), so a DNS outage never empties a pool.
//! - **A name that never resolved is not an error**: the policy loads, the name becomes one
//!   endpoint that is down (never chosen; `unresolved` in `/admin/pools`), and it is tried
//!   again at the next round. `check` reports it as a warning, so it works offline.
//!
//! The request path never resolves anything and takes no lock for it: a changed address set
//! is a new routing-table generation (the same policy text compiled again, published with
//! the usual `ArcSwap` store by [`crate::serving::control::ControlPlane::refresh_addresses`]). Lookups
//! use the system resolver (`getaddrinfo`, blocking), so they run on blocking threads.

use super::compile::{header_value, Endpoint};
use super::raw::EndpointEntry;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

/// `upstream.resolve_every` when the policy does not say.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// The last addresses each `host:port` resolved to in this process.
static LAST_GOOD: Mutex<Option<HashMap<String, Vec<SocketAddr>>>> = Mutex::new(None);

/// What one host name in the policy resolved to when the table was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameResolution {
    /// `host:port` as written.
    pub name: String,
    /// Sorted, without repeats; empty when the name has never resolved.
    pub addrs: Vec<SocketAddr>,
    /// Why the last lookup failed, when it did (the addresses are then the last good ones,
    /// or none).
    pub error: Option<String>,
}

/// How an endpoint as written is to be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAddrs {
    /// An `ip:port` literal: itself.
    Literal(SocketAddr),
    /// A `host:port`: looked up now (see [`lookup`]).
    Name(NameResolution),
}

/// Resolve an endpoint as written. `Err` only for text that is not `ip:port` / `host:port`
/// at all (a policy error); a host name that does not resolve is `Ok` with no addresses.
pub fn endpoint_addrs(written: &str) -> Result<EndpointAddrs, String> {
    endpoint_addrs_with(written, system_lookup)
}

/// [`endpoint_addrs`] with the lookup function given (tests).
pub fn endpoint_addrs_with(
    written: &str,
    resolve: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<EndpointAddrs, String> {
    if let Ok(addr) = written.parse::<SocketAddr>() {
        return Ok(EndpointAddrs::Literal(addr));
    }
    let port_ok = written
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err("expected `host:port` or `ip:port`".into());
    }
    Ok(EndpointAddrs::Name(lookup(written, resolve)))
}

pub fn system_lookup(hostport: &str) -> std::io::Result<Vec<SocketAddr>> {
    hostport.to_socket_addrs().map(|a| a.collect())
}

/// Look `hostport` up; on failure (or no address) fall back to the last good addresses.
pub fn lookup(
    hostport: &str,
    resolve: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> NameResolution {
    let fresh = match resolve(hostport) {
        Ok(mut addrs) if !addrs.is_empty() => {
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Ok(_) => Err("the host name resolved to no address".to_string()),
        Err(e) => Err(format!("cannot resolve: {e}")),
    };
    let mut last = LAST_GOOD.lock().unwrap_or_else(|p| p.into_inner());
    let last = last.get_or_insert_with(HashMap::new);
    match fresh {
        Ok(addrs) => {
            last.insert(hostport.to_string(), addrs.clone());
            NameResolution {
                name: hostport.to_string(),
                addrs,
                error: None,
            }
        }
        Err(error) => NameResolution {
            name: hostport.to_string(),
            addrs: last.get(hostport).cloned().unwrap_or_default(),
            error: Some(error),
        },
    }
}

/// The endpoints for one entry of a pool's `endpoints` list: itself for
/// `ip:port`; one per address for `host:port` (with what the name resolved to), or one down
/// placeholder when the name has never resolved (`resolved: false`). Live state is attached
/// later by label (`serving::state::Fleet::attach`), so an address that stays keeps it.
/// `Err`: not an endpoint at all.
///
/// The entry's gRPC address (`{ http, grpc }`) follows its HTTP one: on the same host name,
/// each resolved address gets the gRPC port on the same IP (one server, two ports); on
/// another name, the first address that name resolves to (none while it has not resolved:
/// the endpoint then takes no gRPC).
pub fn endpoints(entry: &EndpointEntry) -> Result<(Vec<Endpoint>, Vec<NameResolution>), String> {
    let written = entry.http();
    let https = https_target(written)?;
    if https.is_some() && entry.grpc().is_some() {
        return Err("an `https://` endpoint takes no `grpc` address (gRPC upstream is h2c)".into());
    }
    let (hostport, sni, authority) = match &https {
        Some(t) => (
            t.hostport.as_str(),
            Some(t.host.clone()),
            t.authority.clone(),
        ),
        None => (written, None, written.to_string()),
    };
    let grpc = entry.grpc().map(|g| grpc_addr(written, g)).transpose()?;
    let endpoint = |label: String, addr: SocketAddr, resolved: bool| Endpoint {
        sni: sni.clone(),
        header: header_value(&label),
        grpc: grpc.as_ref().and_then(|g| g.for_http(addr)),
        name: label,
        addr,
        authority: authority.clone(),
        resolved,
    };
    let mut names: Vec<NameResolution> = grpc.iter().filter_map(GrpcAddr::resolution).collect();
    let found = match endpoint_addrs(hostport)? {
        EndpointAddrs::Literal(addr) => vec![endpoint(written.to_string(), addr, true)],
        EndpointAddrs::Name(n) if n.addrs.is_empty() => {
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            names.push(n);
            vec![endpoint(written.to_string(), unspecified, false)]
        }
        EndpointAddrs::Name(n) => {
            let found = n
                .addrs
                .iter()
                .map(|a| endpoint(label(written, a), *a, true))
                .collect();
            names.push(n);
            found
        }
    };
    Ok((found, names))
}

/// An `https://host[:port]` endpoint as written, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsTarget {
    /// `host:port` to look up (port 443 when none is written).
    pub hostport: String,
    /// The host, for SNI and the certificate check (no brackets for IPv6).
    pub host: String,
    /// `Host` of requests to it: the host, with the port when it is not 443.
    pub authority: String,
}

/// `Ok(None)` for a plain `host:port`; the parts of `https://host[:port]`; `Err` for another
/// scheme or an `https://` with a path, user or nothing after it.
pub fn https_target(written: &str) -> Result<Option<HttpsTarget>, String> {
    let Some(rest) = written.strip_prefix("https://") else {
        if written.contains("://") {
            return Err("the only scheme an endpoint takes is `https://`".into());
        }
        return Ok(None);
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return Err(
            "expected `https://host[:port]` (no path: see the pool's `path_prefix`)".into(),
        );
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').ok_or("expected `]:port`")?)),
            None => return Err("`[` without `]`".into()),
        },
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("`{p}` is not a port"))?,
        None => 443,
    };
    if host.is_empty() {
        return Err("expected `https://host[:port]`".into());
    }
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(Some(HttpsTarget {
        hostport: format!("{bracketed}:{port}"),
        host: host.to_string(),
        authority: match port {
            443 => bracketed,
            p => format!("{bracketed}:{p}"),
        },
    }))
}

/// Where an endpoint's gRPC requests go, relative to its HTTP address.
enum GrpcAddr {
    /// The same host as the HTTP address, on this port.
    SamePort(u16),
    /// Elsewhere: what that address resolved to.
    Other(EndpointAddrs),
}

impl GrpcAddr {
    fn for_http(&self, http: SocketAddr) -> Option<SocketAddr> {
        match self {
            GrpcAddr::SamePort(port) => Some(SocketAddr::new(http.ip(), *port)),
            GrpcAddr::Other(EndpointAddrs::Literal(a)) => Some(*a),
            GrpcAddr::Other(EndpointAddrs::Name(n)) => n.addrs.first().copied(),
        }
    }

    fn resolution(&self) -> Option<NameResolution> {
        match self {
            GrpcAddr::Other(EndpointAddrs::Name(n)) => Some(n.clone()),
            _ => None,
        }
    }
}

fn grpc_addr(http: &str, grpc: &str) -> Result<GrpcAddr, String> {
    let host = |hp: &str| hp.rsplit_once(':').map(|(h, _)| h.to_string());
    if let (Some(h), Some((g, port))) = (host(http), grpc.rsplit_once(':')) {
        if h == g && http.parse::<SocketAddr>().is_err() {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("grpc: expected `host:port`, found `{grpc}`"))?;
            return Ok(GrpcAddr::SamePort(port));
        }
    }
    endpoint_addrs(grpc)
        .map(GrpcAddr::Other)
        .map_err(|why| format!("grpc: {why}"))
}

/// The label of the endpoint `addr` of the name `written`.
pub fn label(written: &str, addr: &SocketAddr) -> String {
    format!("{written}@{}", addr.ip())
}

/// Whether looking the names up again gives address sets other than those `compiled`.
pub fn changed(compiled: &[NameResolution], fresh: &[NameResolution]) -> bool {
    compiled
        .iter()
        .zip(fresh)
        .any(|(a, b)| a.name != b.name || a.addrs != b.addrs)
        || compiled.len() != fresh.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_endpoints_default_to_443_and_keep_the_host_for_sni() {
        let t = https_target("https://api.example.com").unwrap().unwrap();
        assert_eq!(t.hostport, "api.example.com:443");
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("api.example.com", "api.example.com")
        );
        let t = https_target("https://127.0.0.1:8443/").unwrap().unwrap();
        assert_eq!(
            (t.hostport.as_str(), t.authority.as_str()),
            ("127.0.0.1:8443", "127.0.0.1:8443")
        );
        let t = https_target("https://[::1]:9443").unwrap().unwrap();
        assert_eq!(
            (t.hostport.as_str(), t.host.as_str()),
            ("[::1]:9443", "::1")
        );
        assert_eq!(https_target("10.0.0.1:80").unwrap(), None);
        assert!(https_target("http://x:80").is_err());
        assert!(https_target("https://x/openai").is_err());
        assert!(https_target("https://user@x").is_err());
        assert!(https_target("https://x:notaport").is_err());
    }

    #[test]
    fn a_grpc_port_on_the_same_host_name_follows_every_address() {
        let same = grpc_addr("model-server:8000", "model-server:8001").unwrap();
        let a: SocketAddr = "10.0.0.7:8000".parse().unwrap();
        assert_eq!(same.for_http(a), Some("10.0.0.7:8001".parse().unwrap()));
        let literal = grpc_addr("10.0.0.7:8000", "10.0.0.9:9001").unwrap();
        assert_eq!(literal.for_http(a), Some("10.0.0.9:9001".parse().unwrap()));
        assert!(grpc_addr("model-server:8000", "model-server:port").is_err());
    }
    use std::io::Error;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literals_names_and_bad_text() {
        let ok = |_: &str| {
            Ok(vec![
                addr("10.0.0.2:80"),
                addr("10.0.0.1:80"),
                addr("10.0.0.2:80"),
            ])
        };
        assert_eq!(
            endpoint_addrs_with("127.0.0.1:9000", ok),
            Ok(EndpointAddrs::Literal(addr("127.0.0.1:9000")))
        );
        match endpoint_addrs_with("svc.test-literals:80", ok) {
            Ok(EndpointAddrs::Name(n)) => {
                assert_eq!(
                    n.addrs,
                    [addr("10.0.0.1:80"), addr("10.0.0.2:80")],
                    "all, sorted, once"
                );
                assert_eq!(n.error, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(endpoint_addrs_with("no-port", ok).is_err());
        assert!(endpoint_addrs_with("host:http", ok).is_err());
        assert!(endpoint_addrs_with(":80", ok).is_err());
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_good_addresses() {
        let name = "svc.test-last-good:9000";
        let first = lookup(name, |_| Ok(vec![addr("10.1.0.1:9000")]));
        assert_eq!(first.addrs, [addr("10.1.0.1:9000")]);
        let outage = lookup(name, |_| Err(Error::other("resolver down")));
        assert_eq!(
            outage.addrs, first.addrs,
            "a DNS outage never empties the pool"
        );
        assert!(outage
            .error
            .as_deref()
            .is_some_and(|e| e.contains("resolver down")));
        assert!(!changed(
            std::slice::from_ref(&first),
            std::slice::from_ref(&outage)
        ));
        let scaled = lookup(name, |_| {
            Ok(vec![addr("10.1.0.2:9000"), addr("10.1.0.1:9000")])
        });
        assert!(changed(&[first], &[scaled]));
    }

    #[test]
    fn a_name_that_never_resolved_has_no_addresses() {
        let n = lookup("never.test-never:9000", |_| Ok(vec![]));
        assert!(n.addrs.is_empty());
        assert!(n.error.is_some());
    }
}
