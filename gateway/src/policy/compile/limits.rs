//! The `limits:` section: the gateway-wide body-buffer bound and admission (tenant limit
//! storage and anonymous callers' limits, compiled in `policy::tenancy`).

use super::tiers::Tiers;
use super::{parse_size, Problems, DEFAULT_MAX_BUFFERED, INSPECT_LIMIT, MAX_CACHE_BYTES};
use crate::policy::raw;
use serde_saphyr::Spanned;

/// The compiled `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request-body bytes held in memory at once, over all requests; a large body that would
    /// go beyond it is refused with 503 (small bodies are always admitted).
    pub max_buffered_bytes: u64,
    /// Where tenant limits are kept, and the anonymous callers' limits.
    pub admission: crate::policy::tenancy::Admission,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_bytes: DEFAULT_MAX_BUFFERED,
            admission: Default::default(),
        }
    }
}

/// The `limits:` section.
pub(super) fn compile_limits(p: &mut Problems, node: &Spanned<raw::Limits>) -> Limits {
    let mut limits = Limits::default();
    if let Some(n) = &node.value.max_buffered_bytes {
        match parse_size(&n.value) {
            Some(s) if (INSPECT_LIMIT..=MAX_CACHE_BYTES).contains(&s) => {
                limits.max_buffered_bytes = s as u64
            }
            _ => p.on(
                n,
                format!(
                    "limits.max_buffered_bytes: expected a size from 64KiB to 64GiB such as `512MiB`, found `{}`",
                    n.value
                ),
            ),
        }
    }
    limits
}

/// `limits:` admission; compiled after the access log (see `compile`) so that problems are
/// reported in the order they always were.
pub(super) fn compile_admission(
    p: &mut Problems,
    raw: &raw::Policy,
    tiers: &Tiers,
    limits: &mut Limits,
) {
    if let Some(l) = &raw.limits {
        let mut found = crate::policy::tenancy::Found::default();
        limits.admission = crate::policy::tenancy::compile_admission(&mut found, l, &|n: &str| {
            tiers.by_name.get(n).copied()
        });
        for (loc, msg) in found.0 {
            p.at(&loc, msg);
        }
    }
}
