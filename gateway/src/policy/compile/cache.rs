//! The `cache:` section: the prediction cache's size limits, idle timeout and shared L2
//! (the L2 settings compile in `policy::tenancy`).

use super::{
    duration_field, parse_duration, parse_size, Problems, MAX_BODY_LIMIT, MAX_CACHE_BYTES,
};
use crate::policy::raw;
use serde_saphyr::Spanned;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
    pub idle: Option<Duration>,
    /// The L2 in Redis (`cache.shared`), if any.
    pub shared: Option<crate::policy::tenancy::SharedCacheSettings>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            idle: None,
            shared: None,
        }
    }
}

pub(super) fn compile_cache(p: &mut Problems, node: &Spanned<raw::CacheSection>) -> CacheSettings {
    let c = &node.value;
    let defaults = CacheSettings::default();
    let size = |p: &mut Problems, f: &Option<Spanned<String>>, what: &str, default: usize| {
        let Some(n) = f else { return default };
        match parse_size(&n.value) {
            Some(s) if s > 0 && s <= MAX_CACHE_BYTES => s,
            _ => {
                p.on(
                    n,
                    format!(
                        "cache.{what}: expected a size from 1 byte to 64GiB such as `256MiB`, found `{}`",
                        n.value
                    ),
                );
                default
            }
        }
    };
    let max_bytes = size(p, &c.max_bytes, "max_bytes", defaults.max_bytes as usize);
    let max_entry_bytes = size(
        p,
        &c.max_entry_bytes,
        "max_entry_bytes",
        defaults.max_entry_bytes.min(max_bytes),
    );
    if max_entry_bytes > max_bytes || max_entry_bytes > MAX_BODY_LIMIT {
        if let Some(n) = &c.max_entry_bytes {
            p.on(
                n,
                format!(
                    "cache.max_entry_bytes: at most cache.max_bytes ({max_bytes}) and {MAX_BODY_LIMIT} bytes"
                ),
            );
        }
    }
    let idle = c.idle.as_ref().map(|n| {
        let d = duration_field(p, n, "cache.idle");
        if d.is_zero() && parse_duration(&n.value).is_some() {
            p.on(
                n,
                "cache.idle must be greater than zero (omit it for no idle timeout)",
            );
        }
        d
    });
    CacheSettings {
        max_bytes: max_bytes as u64,
        max_entry_bytes: max_entry_bytes.min(MAX_BODY_LIMIT),
        idle,
        shared: c.shared.as_ref().map(|n| {
            let mut found = crate::policy::tenancy::Found::default();
            let shared = crate::policy::tenancy::compile_shared_cache(&mut found, n);
            for (loc, msg) in found.0 {
                p.at(&loc, msg);
            }
            shared
        }),
    }
}
