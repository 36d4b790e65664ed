//! The readiness id the proxy listener answers at [`PATH`], before anything else (not
//! traffic: no route, no record): `admin::ready` asks for it to prove that the process on
//! the proxy port is this one. It reveals nothing but 128 random bits.

use crate::reply::Reply;
use bytes::Bytes;
use std::sync::OnceLock;

/// The path on the proxy listener that answers the instance id.
pub const PATH: &str = "/.well-known/switchyard/instance";

/// This process's instance id: 32 hex digits, random at start.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:032x}", fastrand::u128(..)))
}

/// The answer at [`PATH`].
pub fn reply() -> Reply {
    Reply::new(200, "text/plain", Bytes::from_static(instance().as_bytes()))
        .with(http::header::CACHE_CONTROL, "no-store")
}
