//! The `listeners:` and `trusted_proxies:` sections: where the gateway listens (plain, TLS,
//! admin), the admin token, the shutdown grace and the proxies whose forwarding headers are
//! believed.

use super::{duration_field, FileRef, Problems};
use crate::policy::raw;
use crate::policy::secret::Secret;
use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The compiled `listeners.tls`: the address, and the certificate pair's files (loaded and
/// checked when the table is published, then watched: `serving::resources`, `tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: FileRef,
    pub key: FileRef,
}

/// The compiled `listeners:` section but `shutdown_grace` (see [`shutdown_grace`]).
pub(super) struct Listeners {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub keda: Option<SocketAddr>,
    pub admin_token: Option<Secret>,
    pub tls: Option<TlsListener>,
    pub plain: bool,
}

/// `listeners:`; relative certificate paths are read from beside the policy `file`.
pub(super) fn compile(p: &mut Problems, listeners: &raw::Listeners, file: &Path) -> Listeners {
    let proxy = socket_field(p, &listeners.proxy, "listeners.proxy");
    let admin = socket_field(p, &listeners.admin, "listeners.admin");
    let keda = listeners
        .keda
        .as_ref()
        .map(|k| socket_field(p, k, "listeners.keda"));
    let admin_token = compile_admin_token(p, listeners, admin);
    let tls = listeners.tls.as_ref().map(|node| {
        let t = &node.value;
        let listen = socket_field(p, &t.listen, "listeners.tls.listen");
        TlsListener {
            listen,
            cert: FileRef::beside(file, &t.cert.value, &t.cert.referenced),
            key: FileRef::beside(file, &t.key.value, &t.key.referenced),
        }
    });
    let plain = listeners.tls.is_none() || listeners.proxy.referenced != Location::UNKNOWN;
    Listeners {
        proxy,
        admin,
        keda,
        admin_token,
        tls,
        plain,
    }
}

/// `trusted_proxies:`: CIDRs or single addresses.
pub(super) fn trusted_proxies(p: &mut Problems, raw: &raw::Policy) -> Vec<IpNet> {
    let mut trusted_proxies = Vec::new();
    for cidr in &raw.trusted_proxies {
        let parsed = cidr
            .value
            .parse::<IpNet>()
            .or_else(|_| cidr.value.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => p.on(
                cidr,
                format!(
                    "trusted_proxies: expected a CIDR such as `10.0.0.0/8`, found `{}`",
                    cidr.value
                ),
            ),
        }
    }
    trusted_proxies
}

/// `listeners.shutdown_grace` (start-up only), 5s when not written.
pub(super) fn shutdown_grace(p: &mut Problems, listeners: &raw::Listeners) -> Duration {
    match &listeners.shutdown_grace {
        Some(node) => duration_field(p, node, "listeners.shutdown_grace"),
        None => Duration::from_secs(5),
    }
}

/// `listeners.admin_token`: expanded from the environment (an unset variable is an error
/// naming it, never showing a value); an admin listener off loopback without one is an
/// error, since reload, purge and the policy would be open to the network.
fn compile_admin_token(
    p: &mut Problems,
    listeners: &raw::Listeners,
    admin: SocketAddr,
) -> Option<Secret> {
    let token = match &listeners.admin_token {
        Some(node) => match crate::policy::secret::expand(&node.value, |n| std::env::var(n).ok()) {
            Ok((secret, _)) => Some(secret),
            Err(message) => {
                p.on(node, format!("listeners.admin_token: {message}"));
                return None;
            }
        },
        None => None,
    };
    let parsed = listeners.admin.value.parse::<SocketAddr>().is_ok();
    if token.is_none() && parsed && !admin.ip().is_loopback() {
        p.on(
            &listeners.admin,
            format!(
                "listeners.admin `{admin}` is not on loopback: set `listeners.admin_token: \"${{SWITCHYARD_ADMIN_TOKEN}}\"` (or bind 127.0.0.1) so that reload, cache purge and the policy are not open to the network"
            ),
        );
    }
    token
}

fn socket_field(p: &mut Problems, node: &Spanned<String>, what: &str) -> SocketAddr {
    match node.value.parse() {
        Ok(a) => a,
        Err(_) => {
            p.on(
                node,
                format!(
                    "{what}: expected `ip:port` such as `127.0.0.1:9090`, found `{}`",
                    node.value
                ),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}
